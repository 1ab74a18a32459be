"""Optimizers by name: ``create(name, params, **hparams)``.

Names and hyper-parameters (SPEC §2): ``sgd`` (lr), ``momentum`` (lr, beta, style, nesterov),
``rmsprop`` (lr, alpha, eps), ``adam`` (lr, betas, eps, bias_correction), ``adamw`` (adam with
decoupled decay), ``snr_sgd`` (lr, lambda_b, warmup, w_min, w_max, eps); every one takes
``weight_decay`` and ``decoupled`` (adamw: always decoupled).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from .adam import Adam, AdamW
from .rmsprop import RMSprop
from .sgd import SGD, Momentum
from .snr_sgd import SNRSGD

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": SGD,
    "momentum": Momentum,
    "rmsprop": RMSprop,
    "adam": Adam,
    "adamw": AdamW,
    "snr_sgd": SNRSGD,
}


def available() -> list[str]:
    """Names accepted by :func:`create`."""
    return sorted(OPTIMIZERS)


def hyperparameters(name: str) -> dict[str, Any]:
    """The hyper-parameters of optimizer ``name`` with their defaults (``inspect.Parameter.empty``
    for required ones)."""
    cls = _lookup(name)
    sig = inspect.signature(cls.__init__)
    return {k: p.default for k, p in sig.parameters.items() if k not in ("self", "params")}


def create(name: str, params, **hparams: Any) -> torch.optim.Optimizer:
    """Build optimizer ``name`` on ``params`` with validated hyper-parameters.

    Raises ``ValueError`` for an unknown name (listing the known ones), an unknown or missing
    hyper-parameter (listing the accepted ones) or a value out of range (naming the
    parameter and the allowed range).
    """
    cls = _lookup(name)
    accepted = hyperparameters(name)
    unknown = sorted(set(hparams) - set(accepted))
    if unknown:
        raise ValueError(f"unknown hyper-parameter {unknown[0]!r} for optimizer {name!r}; "
                         f"allowed: {', '.join(accepted)}")
    missing = [k for k, v in accepted.items() if v is inspect.Parameter.empty and k not in hparams]
    if missing:
        raise ValueError(f"optimizer {name!r} needs {missing[0]!r}")
    return cls(params, **hparams)


def _lookup(name: str) -> type[torch.optim.Optimizer]:
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(available())}")
    return OPTIMIZERS[name]
