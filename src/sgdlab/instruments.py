"""Instruments: trainer callbacks that decide *when* to compute a quantity of
:mod:`sgdlab.probes`, and log it (Cockpit's split between quantities and instruments).

Each instrument has a cost tier — ``cheap`` (norms, effective LR, snr_sgd diagnostics),
``medium`` (per-example statistics, noise scale), ``expensive`` (sharpness) — and a tracking
schedule: every k steps, or log-spaced (≈ 10 points per decade, denser early where things
change fast). A measurement is appended to metrics.jsonl as
``{"kind": "probe", "name": NAME, "step": t, ...numbers}`` and plotted into
``plots/probe_NAME.png`` at the end of the run.

Instruments never touch the global RNG, so a run with instruments resumes bit for bit.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any

import torch

from sgdlab.config import ConfigError
from sgdlab.probes import norms
from sgdlab.train import Callback, Trainer

TIERS = ("cheap", "medium", "expensive")


def log_spaced_steps(total: int, per_decade: int = 10) -> set[int]:
    """Every step up to 10, then ≈10^(k/per_decade), … up to ``total`` (distinct integers)."""
    steps, k = set(range(1, min(10, total) + 1)), 0
    while True:
        s = int(round(10 ** (k / per_decade)))
        if s > total:
            break
        steps.add(s)
        k += 1
    steps.add(total)
    return steps


class Instrument(Callback):
    """Base class: subclasses set ``name`` and ``tier`` and implement :meth:`measure`."""

    name = "instrument"
    tier = "cheap"

    def __init__(self, every: int = 50, log_spaced: bool = False) -> None:
        if every < 1:
            raise ConfigError(f"probe_every must be an integer >= 1, got {every}")
        self.every = every
        self.log_spaced = log_spaced
        self._log_steps: set[int] = set()
        self.disabled = False

    def on_train_start(self, trainer: Trainer) -> None:  # noqa: D102
        if self.log_spaced:
            self._log_steps = log_spaced_steps(trainer.total_steps)

    def due(self, step: int) -> bool:
        """Whether to measure after optimizer step ``step`` (1-based)."""
        if self.disabled:
            return False
        return step in self._log_steps if self.log_spaced else step % self.every == 0

    def after_step(self, trainer: Trainer) -> None:  # noqa: D102
        if not self.due(trainer.step) or trainer.rank != 0:
            return
        try:
            record = self.measure(trainer)
        except ValueError as err:  # e.g. per-example gradients under BatchNorm
            print(f"sgdlab: probe {self.name} disabled: {err}", file=sys.stderr)
            self.disabled = True
            return
        trainer.log({"kind": "probe", "name": self.name, "step": trainer.step, **record})

    def measure(self, trainer: Trainer) -> dict[str, Any]:
        """The numbers to log at this step."""
        return {}


class EffectiveLR(Instrument):
    """Weight norms, effective LR η/‖w‖², angular update per step, ηλ and the predicted
    equilibrium ‖w‖⁴ of each scale-invariant weight (SPEC §4.5); ‖Φ‖ for every model."""

    name, tier = "effective_lr", "cheap"

    def __init__(self, every: int = 50, log_spaced: bool = False) -> None:
        super().__init__(every, log_spaced)
        self._before: dict[str, torch.Tensor] = {}
        self._report: dict[str, dict[str, float]] = {}

    def after_backward(self, trainer: Trainer) -> None:
        """Before the step: weights and gradients agree here, so scale invariance
        (⟨∇L, w⟩ = 0) is tested and the step's effective LR is taken at the weights it acts on."""
        if not (self.due(trainer.step + 1) and trainer.rank == 0):
            return
        group = trainer.optimizer.param_groups[0]
        self._report = norms.scale_invariant_report(trainer.model, group["lr"],
                                                    group.get("weight_decay", 0.0))
        self._before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()
                        if n in self._report}

    def measure(self, trainer: Trainer) -> dict[str, Any]:  # noqa: D102
        group = trainer.optimizer.param_groups[0]
        lr, wd = group["lr"], group.get("weight_decay", 0.0)
        total = math.sqrt(sum(v**2 for v in norms.weight_norms(trainer.model).values()))
        rec: dict[str, Any] = {"lr": lr, "weight_decay": wd, "intrinsic_lr": lr * wd,
                               "weight_norm": total}
        params = dict(trainer.model.named_parameters())
        angles = []
        for name, r in self._report.items():
            short = name.removesuffix(".weight")
            rec[f"{short}/effective_lr"] = r["effective_lr"]
            rec[f"{short}/norm4"] = r["norm4"]
            rec[f"{short}/predicted_norm4"] = r["predicted_norm4"]
            angle = norms.angular_update(self._before[name], params[name].detach())
            rec[f"{short}/angular_update"] = angle
            angles.append(angle)
        if angles:
            rec["angular_update_mean"] = sum(angles) / len(angles)
            rec["predicted_angular_update"] = math.sqrt(2 * lr * wd)
        self._before, self._report = {}, {}
        return rec


class NoiseScaleInstrument(Instrument):
    """tr Σ, ‖G‖², B_simple, per-layer B_simple, B* quantiles and the CABS batch size on the
    current batch, from per-example statistics (SPEC §3)."""

    name, tier = "noise_scale", "medium"

    def measure(self, trainer: Trainer) -> dict[str, Any]:  # noqa: D102
        from sgdlab.probes.noise import noise_scale

        x, y = trainer.batch
        lr = trainer.optimizer.param_groups[0]["lr"]
        res = noise_scale(trainer.model, trainer.run.per_example_loss_fn, x, y, lr=lr)
        rec = res.as_record()
        for layer, vals in res.per_layer.items():
            rec[f"{layer}/b_simple"] = vals["b_simple"]
        return rec


class DDPNoiseScale(Instrument):
    """Two-batch-size noise scale under DistributedDataParallel at no extra backward (SPEC §3).

    A DDP communication hook records ‖ĝ_rank‖² of each rank's local gradient (batch B/W)
    before the all-reduce; after the backward, p.grad holds the all-reduced gradient of the
    global batch B. The ranks' local norms are averaged (one scalar all-reduce on measured
    steps only), and :class:`~sgdlab.probes.noise.TwoBatchEstimator` turns the pair into
    unbiased ‖G‖², tr Σ and a smoothed B_simple. Outside DDP it measures nothing.
    """

    name, tier = "ddp_noise_scale", "cheap"

    def __init__(self, every: int = 50, log_spaced: bool = False, decay: float = 0.9) -> None:
        super().__init__(every, log_spaced)
        from sgdlab.probes.noise import TwoBatchEstimator

        self.estimator = TwoBatchEstimator(decay)
        self._trainer: Trainer | None = None
        self._local_sq = 0.0
        self._last: dict[str, float] = {}

    def on_train_start(self, trainer: Trainer) -> None:  # noqa: D102
        super().on_train_start(trainer)
        ddp = trainer.train_model
        if not isinstance(ddp, torch.nn.parallel.DistributedDataParallel):
            self.disabled = True
            return
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        self._trainer = trainer

        def hook(state, bucket):
            if self.due(trainer.step + 1):
                self._local_sq += float(bucket.buffer().double().pow(2).sum())
            return allreduce_hook(state, bucket)

        ddp.register_comm_hook(None, hook)

    def after_backward(self, trainer: Trainer) -> None:  # noqa: D102
        if not self.due(trainer.step + 1):
            return
        dist = torch.distributed
        local = torch.tensor(self._local_sq, dtype=torch.float64)
        dist.all_reduce(local)
        self._local_sq = 0.0
        g_small = float(local) / trainer.world
        g_big = sum(float(p.grad.double().pow(2).sum()) for p in trainer.model.parameters()
                    if p.grad is not None)
        b_big = trainer.config.batch_size
        b_small = b_big // trainer.world
        from sgdlab.probes.noise import two_batch_estimates

        g2, tr = two_batch_estimates(g_small, g_big, b_small, b_big)
        self.estimator.update(g_small, g_big, b_small, b_big)
        self._last = {"g_small_norm_sq": g_small, "g_big_norm_sq": g_big,
                      "b_small": b_small, "b_big": b_big, "g_norm_sq": g2, "tr_sigma": tr,
                      "b_simple_smoothed": self.estimator.b_simple}

    def measure(self, trainer: Trainer) -> dict[str, Any]:  # noqa: D102
        return dict(self._last)


class Sharpness(Instrument):
    """Top Hessian eigenvalue on a fixed subset of the training set, and 2/λ_max next to the
    current learning rate (SPEC §4.3)."""

    name, tier = "sharpness", "expensive"

    def __init__(self, every: int = 50, log_spaced: bool = False, subset: int = 1024,
                 iters: int = 20, tol: float = 1e-3) -> None:
        super().__init__(every, log_spaced)
        self.subset, self.iters, self.tol = subset, iters, tol

    def measure(self, trainer: Trainer) -> dict[str, Any]:  # noqa: D102
        from sgdlab.probes.curvature import top_hessian_eigenvalue

        ds = trainer.data
        n = min(self.subset, ds.n_train)
        model = trainer.model
        was_training = model.training
        model.eval()  # BatchNorm: the Hessian of the deployed function
        try:
            res = top_hessian_eigenvalue(model, trainer.run.per_example_loss_fn,
                                         ds.x_train[:n], ds.y_train[:n], iters=self.iters,
                                         tol=self.tol, seed=trainer.step)
        finally:
            model.train(was_training)
        lr = trainer.optimizer.param_groups[0]["lr"]
        return {"lambda_max": res.lambda_max, "stability_bound": res.stability_bound,
                "lr_times_lambda": lr * res.lambda_max, "iterations": res.iterations}


class SNRDiagnostics(Instrument):
    """snr_sgd's own diagnostics (mean min(1, r), fraction r ≥ 1, mean window; SPEC §2.6)."""

    name, tier = "snr", "cheap"

    def measure(self, trainer: Trainer) -> dict[str, Any]:  # noqa: D102
        diag = getattr(trainer.optimizer, "diagnostics", None)
        if diag is None:
            raise ValueError("the snr probe needs the snr_sgd optimizer")
        return {k: v for k, v in diag().items() if k != "step"}


INSTRUMENTS: dict[str, type[Instrument]] = {
    "effective_lr": EffectiveLR,
    "noise_scale": NoiseScaleInstrument,
    "sharpness": Sharpness,
    "snr": SNRDiagnostics,
    "ddp_noise_scale": DDPNoiseScale,
}


def available() -> list[str]:
    """Names accepted by :func:`build`."""
    return list(INSTRUMENTS)


def build(names: Sequence[str], every: int = 50, log_spaced: bool = False) -> list[Instrument]:
    """Instruments by name; an unknown name is a :class:`ConfigError` listing the known ones."""
    out = []
    for name in names:
        if name not in INSTRUMENTS:
            raise ConfigError(f"probe must be one of {', '.join(INSTRUMENTS)}, got {name!r}")
        out.append(INSTRUMENTS[name](every=every, log_spaced=log_spaced))
    return out
