"""Instruments: what :class:`sgdlab.Monitor` measures, and when (Cockpit's split between
quantities, in :mod:`sgdlab.probes`, and instruments, here).

Each instrument has a cost tier — ``cheap`` (norms, effective LR, snr_sgd diagnostics, the
DDP two-batch noise scale), ``medium`` (per-example statistics gathered in the user's own
backward: noise scale), ``expensive`` (sharpness: HVP power iteration) — and a tracking
schedule (its own, or the Monitor's ``every``): every k steps, log-spaced (≈ 10 points per
decade, denser early where things change fast) or a callable of the step. A measurement
becomes ``{"kind": "probe", "name": NAME, "step": t, ...numbers}`` in the Monitor's records,
metrics.jsonl and ``plots/probe_NAME.png``.

The Monitor drives an instrument through ``setup`` (once), ``begin`` (first micro-batch of a
due step), ``measure`` (gradients final, before the optimizer step: returns the numbers),
``after_optimizer_step`` (extra numbers that need the updated parameters) and ``teardown``;
``needs_stats = (norms, sum_sq)`` asks for per-example statistics of the step's backward.
Instruments never touch the global RNG, so a monitored run resumes bit for bit.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from sgdlab.config import ConfigError
from sgdlab.probes import norms

if TYPE_CHECKING:
    from sgdlab.monitor import Monitor

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


class Instrument:
    """Base class: subclasses set ``name`` and ``tier`` and implement :meth:`measure`.

    ``schedule``: ``None`` (the Monitor's) or a callable step → bool. ``all_ranks``: measured
    on every DDP rank (collectives inside), recorded on rank 0.
    """

    name = "instrument"
    tier = "cheap"
    needs_stats: tuple[bool, bool] = (False, False)
    all_ranks = False

    def __init__(self, schedule: Callable[[int], bool] | None = None) -> None:
        self.schedule = schedule
        self.disabled = False

    def setup(self, monitor: Monitor) -> None:
        """Once, when the Monitor is built (and again after ``set_ddp_model``)."""

    def begin(self, monitor: Monitor) -> None:
        """At the first micro-batch of a step at which the instrument is due."""

    def measure(self, monitor: Monitor) -> dict[str, Any] | None:
        """The numbers of step ``monitor.step_count`` (gradients final, before the step)."""
        return {}

    def after_optimizer_step(self, monitor: Monitor) -> dict[str, Any] | None:
        """Numbers added to the record once ``optimizer.step()`` has returned."""
        return None

    def teardown(self, monitor: Monitor) -> None:
        """At :meth:`Monitor.close`."""

    def state_dict(self) -> dict[str, Any]:
        """State a resumed run needs to continue exactly."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


class EffectiveLR(Instrument):
    """Weight norms, effective LR η/‖w‖², angular update per step, ηλ and the predicted
    equilibrium ‖w‖⁴ of each scale-invariant weight (SPEC §4.5); ‖Φ‖ for every model.

    Everything but the angular update is taken at the weights the step's gradient was
    computed at (scale invariance ⟨∇L, w⟩ = 0 is tested on p.grad there); the angle between
    those weights and the ones after ``optimizer.step()`` is added by the optimizer's step
    post-hook (absent when no optimizer step follows the measurement).
    """

    name, tier = "effective_lr", "cheap"

    def __init__(self, schedule: Callable[[int], bool] | None = None) -> None:
        super().__init__(schedule)
        self._before: dict[str, torch.Tensor] = {}

    def measure(self, monitor: Monitor) -> dict[str, Any]:  # noqa: D102
        lr, wd = monitor.lr or 0.0, monitor.weight_decay
        model = monitor.model
        report = norms.scale_invariant_report(model, lr, wd)
        total = math.sqrt(sum(v**2 for v in norms.weight_norms(model).values()))
        rec: dict[str, Any] = {"lr": lr, "weight_decay": wd, "intrinsic_lr": lr * wd,
                               "weight_norm": total}
        for name, r in report.items():
            short = name.removesuffix(".weight")
            rec[f"{short}/effective_lr"] = r["effective_lr"]
            rec[f"{short}/norm4"] = r["norm4"]
            rec[f"{short}/predicted_norm4"] = r["predicted_norm4"]
        self._before = {n: p.detach().clone() for n, p in model.named_parameters()
                        if n in report}
        if report:
            rec["predicted_angular_update"] = math.sqrt(2 * lr * wd)
        return rec

    def after_optimizer_step(self, monitor: Monitor) -> dict[str, Any]:  # noqa: D102
        params = dict(monitor.model.named_parameters())
        rec: dict[str, Any] = {}
        angles = []
        for name, before in self._before.items():
            angle = norms.angular_update(before, params[name].detach())
            rec[f"{name.removesuffix('.weight')}/angular_update"] = angle
            angles.append(angle)
        if angles:
            rec["angular_update_mean"] = sum(angles) / len(angles)
        self._before = {}
        return rec


class NoiseScaleInstrument(Instrument):
    """tr Σ, ‖G‖², B_simple, per-layer values, B* quantiles and the CABS batch size of the
    step's batch, from per-example statistics of the user's own backward (SPEC §3), via
    :func:`sgdlab.probes.noise.noise_scale_from_stats`.

    By default only the per-example squared norms are gathered (tr Σ, ‖G‖², B_simple, per
    layer). ``quantiles=True`` (the ``noise_scale_bstar`` instrument) also gathers Σ_b g_b² per
    coordinate for the quantiles of B*[c] = 16σ²[c]/ĝ[c]² — on sequence and conv layers that
    forms each layer's per-example gradients, 1.5–2× the cost of the norms.

    Over a window of batches: ``tr_sigma_smoothed``, ``g_norm_sq_smoothed`` and
    ``b_simple_smoothed`` are bias-corrected moving averages (weight 1 − ``decay`` per measured
    step) of the per-batch unbiased estimates and their ratio
    (:class:`~sgdlab.probes.noise.SmoothedNoiseScale`; in :meth:`state_dict`, so a resumed run
    continues them). A B_simple whose ‖G‖² estimate is ≤ 0 is undefined: ``None``, its key
    listed in the record's ``undefined``. A batch of one example is skipped with one line.
    """

    name, tier = "noise_scale", "medium"

    def __init__(self, schedule: Callable[[int], bool] | None = None,
                 quantiles: bool = False, decay: float = 0.9) -> None:
        super().__init__(schedule)
        from sgdlab.probes.noise import SmoothedNoiseScale

        self.quantiles = quantiles
        self.needs_stats = (not quantiles, quantiles)
        self.smoothed = SmoothedNoiseScale(decay)
        self._warned_small = False

    def setup(self, monitor: Monitor) -> None:  # noqa: D102
        if monitor.world > 1:
            raise ValueError("under DDP p.grad is the all-reduced gradient of other ranks' "
                             "examples too; use ddp_noise_scale")
        if monitor.loss_fn is None:
            raise ValueError("needs the Monitor's loss_fn (per-example losses)")

    def measure(self, monitor: Monitor) -> dict[str, Any]:  # noqa: D102
        from sgdlab.probes.noise import noise_scale_from_stats

        st = monitor.example_stats(grads=self.quantiles)
        if st["batch_size"] < 2:          # e.g. a ragged last batch of one example
            if not self._warned_small and monitor.rank == 0:
                print(f"sgdlab: {self.name}: a batch of {st['batch_size']} example has no "
                      "gradient variance; such steps are skipped", file=sys.stderr)
            self._warned_small = True
            return None
        if self.quantiles:
            sums = {n: float(v.sum()) for n, v in st["sum_sq"].items()}
        else:
            sums = dict(st["sq_norms"])
            sums.update({n: 0.0 for n in st["grad_sq_norms"] if n not in sums})
        res = noise_scale_from_stats(sums, st.get("grads"), st["batch_size"], st["loss"],
                                     monitor.lr, st.get("sum_sq"),
                                     grad_sq_norms=st["grad_sq_norms"])
        rec = res.as_record()
        rec["backward_scale"] = st["scale"]
        for layer, vals in res.per_layer.items():
            rec[f"{layer}/tr_sigma"] = vals["tr_sigma"]
            rec[f"{layer}/g_norm_sq"] = vals["g_norm_sq"]
            rec[f"{layer}/b_simple"] = vals["b_simple"]
        sm = self.smoothed
        sm.add(res.tr_sigma, res.g_norm_sq)
        rec.update({"tr_sigma_smoothed": sm.tr_sigma, "g_norm_sq_smoothed": sm.g_norm_sq,
                    "b_simple_smoothed": sm.b_simple})
        # B_simple = tr Σ/‖G‖² is undefined where the unbiased ‖G‖² estimate is ≤ 0 (small
        # signal, one batch): null, and named in "undefined", never inf in a file
        undefined = [k for k, v in rec.items() if k.endswith("b_simple")
                     and isinstance(v, float) and not math.isfinite(v)]
        undefined += ["b_simple_smoothed"] if not math.isfinite(sm.b_simple) else []
        for k in undefined:
            rec[k] = None
        if undefined:
            rec["undefined"] = undefined
        return rec

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        return {"smoothed": self.smoothed.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: D102
        if "smoothed" in state:               # absent in checkpoints before 2026-12-03
            self.smoothed.load_state_dict(state["smoothed"])


class NoiseScaleBStar(NoiseScaleInstrument):
    """``noise_scale`` with the per-coordinate B* quantiles (SPEC §2.6, §3)."""

    name = "noise_scale_bstar"

    def __init__(self, schedule: Callable[[int], bool] | None = None) -> None:
        super().__init__(schedule, quantiles=True)


class DDPNoiseScale(Instrument):
    """Two-batch-size noise scale under DistributedDataParallel at no extra backward (SPEC §3).

    A DDP communication hook records ‖ĝ_rank‖² of each rank's local gradient (batch B/W)
    before the all-reduce; after the backward, p.grad holds the all-reduced gradient of the
    global batch B. The ranks' local norms are averaged (one scalar all-reduce on measured
    steps only), and :class:`~sgdlab.probes.noise.TwoBatchEstimator` turns the pair into
    unbiased ‖G‖², tr Σ and a smoothed B_simple (its state is in :meth:`state_dict`).
    Outside DDP it measures nothing.
    """

    name, tier = "ddp_noise_scale", "cheap"
    all_ranks = True

    def __init__(self, schedule: Callable[[int], bool] | None = None,
                 decay: float = 0.9) -> None:
        super().__init__(schedule)
        from sgdlab.probes.noise import TwoBatchEstimator

        self.estimator = TwoBatchEstimator(decay)
        self._local_sq = 0.0
        self._hooked: Any = None
        self._armed = False

    def setup(self, monitor: Monitor) -> None:  # noqa: D102
        ddp = monitor.ddp_model
        if ddp is None or ddp is self._hooked:
            return
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        def hook(state, bucket):
            if self._armed:
                self._local_sq += float(bucket.buffer().double().pow(2).sum())
            return allreduce_hook(state, bucket)

        ddp.register_comm_hook(None, hook)
        self._hooked = ddp

    def begin(self, monitor: Monitor) -> None:  # noqa: D102
        self._armed = self._hooked is not None
        self._local_sq = 0.0

    def measure(self, monitor: Monitor) -> dict[str, Any] | None:  # noqa: D102
        if not self._armed:
            return None
        self._armed = False
        local = torch.tensor(self._local_sq, dtype=torch.float64)
        torch.distributed.all_reduce(local)
        self._local_sq = 0.0
        world = monitor.world
        g_small = float(local) / world
        g_big = sum(float(p.grad.double().pow(2).sum()) for p in monitor.model.parameters()
                    if p.grad is not None)
        from sgdlab.monitor import _batch_len
        from sgdlab.probes.noise import two_batch_estimates

        b_small = _batch_len(monitor.batch[0])
        b_big = b_small * world
        g2, tr = two_batch_estimates(g_small, g_big, b_small, b_big)
        self.estimator.update(g_small, g_big, b_small, b_big)
        return {"g_small_norm_sq": g_small, "g_big_norm_sq": g_big, "b_small": b_small,
                "b_big": b_big, "g_norm_sq": g2, "tr_sigma": tr,
                "b_simple_smoothed": self.estimator.b_simple}

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        return self.estimator.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: D102
        self.estimator.load_state_dict(state)


class Sharpness(Instrument):
    """Top Hessian eigenvalue (HVP power iteration, :mod:`sgdlab.probes.curvature`) and 2/λ_max
    next to the current learning rate (SPEC §4.3).

    Data: the Monitor's ``hessian_data`` (its first ``subset`` examples), else the step's
    batch. The model is put in eval mode for the HVPs (BatchNorm: the Hessian of the deployed
    function; no dropout) and restored, the RNG state is forked, and attention runs on the
    math SDPA backend (the fused CPU kernels have no double backward).
    """

    name, tier = "sharpness", "expensive"

    def __init__(self, schedule: Callable[[int], bool] | None = None, subset: int = 1024,
                 iters: int = 20, tol: float = 1e-3) -> None:
        super().__init__(schedule)
        self.subset, self.iters, self.tol = subset, iters, tol

    def setup(self, monitor: Monitor) -> None:  # noqa: D102
        if monitor.loss_fn is None:
            raise ValueError("needs the Monitor's loss_fn (per-example losses)")

    def measure(self, monitor: Monitor) -> dict[str, Any]:  # noqa: D102
        from sgdlab.probes.curvature import top_hessian_eigenvalue

        x, y = monitor.hessian_data if monitor.hessian_data is not None else monitor.batch
        if monitor.hessian_data is not None:
            x, y = x[:self.subset], y[:self.subset]
        model = monitor.model
        was_training = model.training
        model.eval()
        try:
            with torch.random.fork_rng(devices=[]):
                res = top_hessian_eigenvalue(model, monitor.loss_fn, x, y, iters=self.iters,
                                             tol=self.tol, seed=monitor.step_count)
        finally:
            model.train(was_training)
        lr = monitor.lr or 0.0
        return {"lambda_max": res.lambda_max, "stability_bound": res.stability_bound,
                "lr_times_lambda": lr * res.lambda_max, "iterations": res.iterations}


class SNRDiagnostics(Instrument):
    """snr_sgd's own diagnostics (mean min(1, r), fraction r ≥ 1, mean window; SPEC §2.6)."""

    name, tier = "snr", "cheap"

    def measure(self, monitor: Monitor) -> dict[str, Any]:  # noqa: D102
        diag = getattr(monitor.optimizer, "diagnostics", None)
        if diag is None:
            raise ValueError("the snr probe needs the snr_sgd optimizer")
        return {k: v for k, v in diag().items() if k != "step"}


INSTRUMENTS: dict[str, type[Instrument]] = {
    "effective_lr": EffectiveLR,
    "noise_scale": NoiseScaleInstrument,
    "noise_scale_bstar": NoiseScaleBStar,
    "sharpness": Sharpness,
    "snr": SNRDiagnostics,
    "ddp_noise_scale": DDPNoiseScale,
}


def available() -> list[str]:
    """Names accepted by :func:`create`."""
    return list(INSTRUMENTS)


def create(items: Sequence[str | Instrument]) -> list[Instrument]:
    """Instruments from names or Instrument objects; an unknown name is a
    :class:`ConfigError` listing the known ones."""
    if isinstance(items, str):
        items = [items]
    out: list[Instrument] = []
    for item in items:
        if isinstance(item, Instrument):
            out.append(item)
        elif item in INSTRUMENTS:
            out.append(INSTRUMENTS[item]())
        else:
            raise ConfigError(f"probe must be one of {', '.join(INSTRUMENTS)}, got {item!r}")
    return out
