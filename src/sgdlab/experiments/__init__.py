"""The claims of the notes as experiments with verdicts (SPEC §4); one module per claim.

``CLAIMS`` maps a claim id to its module (exposing ``CLAIM`` and ``run(ctx)``).
"""

from __future__ import annotations

from types import ModuleType

from sgdlab.experiments import (
    adam_bias,
    adam_rmsprop,
    batch_size,
    best_lr_momentum,
    fast_equilibrium,
    gd_weight_decay,
    gradient_flow,
    heat_capacity,
    intrinsic_lr,
    last_decay,
    leaves_optimum,
    linear_scaling,
    momentum,
    progress_per_example,
    recipe_claim,
    rise_after_decay,
    robbins_monro,
    sgd_vs_gd,
    small_lr_longer,
    small_steps,
    snr_sgd,
    stationarity_identity,
    swa,
    temperature,
)

CLAIMS: dict[str, ModuleType] = {
    m.CLAIM.id: m
    for m in (temperature, heat_capacity, batch_size, linear_scaling, intrinsic_lr, momentum,
              adam_bias, robbins_monro, snr_sgd, swa, recipe_claim, leaves_optimum,
              small_steps, stationarity_identity, progress_per_example,
              adam_rmsprop, fast_equilibrium, last_decay, gradient_flow, small_lr_longer,
              gd_weight_decay, rise_after_decay, best_lr_momentum, sgd_vs_gd)
}


def available() -> list[str]:
    """Claim ids, in the order of the notes."""
    return sorted(CLAIMS, key=lambda c: int(c.split("-")[0]))
