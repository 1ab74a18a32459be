"""Instruments: what :class:`sgdlab.Monitor` measures, and when (Cockpit's split between
quantities, in :mod:`sgdlab.probes`, and instruments, here).

Each instrument has a cost tier — ``cheap`` (from what the backward already gives: effective
LR, distance from initialisation, update size, gradient norms, histograms, snr_sgd
diagnostics, the DDP and micro-batch two-batch noise scales), ``medium`` (per-example
statistics gathered in the user's own backward: noise scale, the norm, inner-product and
orthogonality tests, mean GSNR), ``expensive`` (extra Hessian-vector products: ``sharpness``,
top-k eigenvalues against the edge-of-stability bounds, and ``hessian_trace``; either for
the GGN with ``curvature=ggn``) — and a tracking
schedule (its own, or the Monitor's ``every``): every k steps, log-spaced (≈ 10 points per
decade, denser early where things change fast) or a callable of the step. A measurement
becomes ``{"kind": "probe", "name": NAME, "step": t, ...numbers}`` in the Monitor's records,
metrics.jsonl and ``plots/probe_NAME.png``.

The Monitor drives an instrument through ``setup`` (once), ``begin`` (first micro-batch of a
due step), ``micro_batch_done`` (after each micro-batch's backward), ``measure`` (gradients
final, before the optimizer step: returns the numbers), ``after_optimizer_step`` (extra
numbers that need the updated parameters) and ``teardown``; ``needs_stats = (norms, sum_sq)``
or ``(norms, sum_sq, gram)`` asks for per-example statistics of the step's backward.
Instruments never touch the global RNG, so a monitored run resumes bit for bit.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from sgdlab.config import ConfigError
from sgdlab.optim._validate import check_int
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


def undefined_to_null(rec: dict[str, Any]) -> dict[str, Any]:
    """Every non-finite float of ``rec`` (an undefined ratio: B_simple with ‖G‖² ≤ 0, a test
    with ‖ĝ‖² = 0) becomes ``None`` and its key is listed in ``rec["undefined"]``: never inf or
    nan in a file. Keys already listed there (a part of the record nulled before) stay
    listed, first."""
    undefined = [k for k, v in rec.items() if isinstance(v, float) and not math.isfinite(v)]
    for k in undefined:
        rec[k] = None
    undefined = rec.get("undefined", []) + undefined
    if undefined:
        rec["undefined"] = undefined
    return rec


def _small_batch(inst: Instrument, monitor: Monitor, bsz: int) -> bool:
    """True (and one line on stderr, once) for a batch of fewer than 2 examples."""
    if bsz >= 2:
        return False
    if not getattr(inst, "_warned_small", False) and monitor.rank == 0:
        print(f"sgdlab: {inst.name}: a batch of {bsz} example has no gradient variance; "
              "such steps are skipped", file=sys.stderr)
    inst._warned_small = True
    return True


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

    def micro_batch_done(self, monitor: Monitor) -> None:
        """After each micro-batch's backward of a due step (at the next ``begin`` of the step
        and at ``gradients_ready``, before :meth:`measure`); ``monitor.micro_sizes`` holds the
        micro-batches' sizes so far."""

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

    ``window=k`` (k ≥ 2): the noise scale over the k consecutive batches of steps t − k + 1 … t
    (:class:`~sgdlab.probes.noise.WindowedNoiseScale`): the instrument is measured at every
    step of the window before each step t its schedule names, and the record of step t adds
    ``tr_sigma_window`` and ``g_norm_sq_window`` (the means of the k batches' unbiased
    estimates, unbiased too), ``b_simple_window`` = their ratio and ``window_batches`` (the
    batches that entered; fewer than k near the start, or where a batch of one was skipped).
    A single batch's ‖G‖² estimate is ≤ 0 often where the signal is small; the mean over k
    batches has k times less variance. The parameters move between the k batches (as for the
    moving averages): the window mixes k consecutive points of the trajectory.
    """

    name, tier = "noise_scale", "medium"

    def __init__(self, schedule: Callable[[int], bool] | None = None,
                 quantiles: bool = False, decay: float = 0.9, window: int = 1) -> None:
        super().__init__(schedule)
        from sgdlab.probes.noise import SmoothedNoiseScale, WindowedNoiseScale

        if not isinstance(window, int) or isinstance(window, bool) or window < 1:
            raise ValueError(f"window must be an integer >= 1, got {window!r}")
        self.quantiles = quantiles
        self.needs_stats = (not quantiles, quantiles)
        self.smoothed = SmoothedNoiseScale(decay)
        self.window = window
        self.windowed = WindowedNoiseScale(window) if window > 1 else None
        self._base: Callable[[int], bool] | None = None
        self._warned_small = False

    def setup(self, monitor: Monitor) -> None:  # noqa: D102
        if monitor.world > 1:
            raise ValueError("under DDP p.grad is the all-reduced gradient of other ranks' "
                             "examples too; use ddp_noise_scale")
        if monitor.loss_fn is None:
            raise ValueError("needs the Monitor's loss_fn (per-example losses)")
        if self.windowed is not None and self._base is None:
            # measured at the k − 1 steps before each scheduled step too
            base = self.schedule if self.schedule is not None else monitor.schedule
            k = self.window
            self._base = base
            self.schedule = lambda t: any(base(t + j) for j in range(k))

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
        # Σ_b g_b² may have been gathered for another instrument due at this step
        # (mean_gsnr): the quantiles are this instrument's only with quantiles=True
        res = noise_scale_from_stats(sums, st.get("grads"), st["batch_size"], st["loss"],
                                     monitor.lr, st.get("sum_sq") if self.quantiles else None,
                                     grad_sq_norms=st["grad_sq_norms"])
        rec = res.as_record()
        rec["backward_scale"] = st["scale"]
        for layer, vals in res.per_layer.items():
            rec[f"{layer}/tr_sigma"] = vals["tr_sigma"]
            rec[f"{layer}/g_norm_sq"] = vals["g_norm_sq"]
            rec[f"{layer}/b_simple"] = vals["b_simple"]
        sm = self.smoothed
        sm.add(res.tr_sigma, res.g_norm_sq)
        t = monitor.step_count
        if self.windowed is not None:
            self.windowed.add(t, res.tr_sigma, res.g_norm_sq, res.batch_size)
            if not self._base(t):
                return None                   # a batch for the window of a later step
            w = self.windowed.estimate(t)
            rec.update({"tr_sigma_window": w.tr_sigma, "g_norm_sq_window": w.g_norm_sq,
                        "b_simple_window": w.b_simple, "window_batches": w.batches})
        rec.update({"tr_sigma_smoothed": sm.tr_sigma, "g_norm_sq_smoothed": sm.g_norm_sq,
                    "b_simple_smoothed": sm.b_simple})
        # B_simple = tr Σ/‖G‖² is undefined where the unbiased ‖G‖² estimate is ≤ 0 (small
        # signal, one batch): null, and named in "undefined", never inf in a file
        return undefined_to_null(rec)

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        state: dict[str, Any] = {"smoothed": self.smoothed.state_dict()}
        if self.windowed is not None:
            state["windowed"] = self.windowed.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: D102
        if "smoothed" in state:               # absent in checkpoints before 2026-12-03
            self.smoothed.load_state_dict(state["smoothed"])
        if self.windowed is not None and "windowed" in state:
            self.windowed.load_state_dict(state["windowed"])


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

        sizes = monitor.micro_sizes
        b_small = (sum(sizes) if sizes and None not in sizes
                   else _batch_len(monitor.batch[0]))     # this rank's examples in the step
        b_big = b_small * world
        g2, tr = two_batch_estimates(g_small, g_big, b_small, b_big)
        self.estimator.update(g_small, g_big, b_small, b_big)
        # an undefined smoothed B_simple (its ‖G‖² estimate ≤ 0) is null and named in
        # "undefined", as in every noise-scale record — never inf in memory or in a file
        return undefined_to_null({"g_small_norm_sq": g_small, "g_big_norm_sq": g_big,
                                  "b_small": b_small, "b_big": b_big, "g_norm_sq": g2,
                                  "tr_sigma": tr, "b_simple_smoothed": self.estimator.b_simple})

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        return self.estimator.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: D102
        self.estimator.load_state_dict(state)


def _check_positive(name: str, value: Any) -> float:
    """``value`` as a number > 0, else a one-line :class:`ValueError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a number > 0, got {value!r}")
    return float(value)


def _check_curvature(curvature: Any) -> str:
    """``curvature`` if :mod:`sgdlab.probes.curvature` has it (``"hessian"``, ``"ggn"``),
    else a one-line :class:`ValueError`."""
    from sgdlab.probes.curvature import CURVATURES

    if curvature not in CURVATURES:
        raise ValueError(f"curvature must be one of {', '.join(CURVATURES)}, got "
                         f"{curvature!r}")
    return curvature


def _curvature_setup(monitor: Monitor) -> None:
    """The curvature instruments' requirement: the Monitor's per-example ``loss_fn``."""
    if monitor.loss_fn is None:
        raise ValueError("needs the Monitor's loss_fn (per-example losses)")


def curvature_measurement(monitor: Monitor, subset: int, fn: Callable[..., Any],
                          **kwargs: Any) -> Any:
    """``fn(model, loss_fn, x, y, seed=t, **kwargs)`` (a function of
    :mod:`sgdlab.probes.curvature`) the way every curvature instrument calls it (SPEC §1,
    §4.3): the Hessian of the mean loss L = (1/N) Σ_b ℓ_b over

    * data: the Monitor's ``hessian_data`` (its first ``subset`` examples), else the step's
      batch ``monitor.batch`` (all of it);
    * the model in eval mode (BatchNorm: the Hessian of the deployed function, running
      statistics; no dropout), its mode restored afterwards even when ``fn`` raises;
    * the global CPU RNG state forked (:func:`torch.random.fork_rng`): whatever ``fn`` draws
      leaves the training run's random stream untouched — the curvature functions draw their
      probe vectors from their own ``torch.Generator`` seeded with ``seed``;
    * ``seed`` = ``monitor.step_count`` (the step being measured): a rerun or a resumed run
      measures the same numbers, and two steps use independent probe vectors.

    Attention runs on the math SDPA backend inside ``fn`` (the fused CPU kernels have no
    double backward). The parameters and ``p.grad`` are not modified.

    A framework adapter whose model is not called as ``model(x)`` sets
    ``monitor.curvature_problem`` (monitor → ``(model, loss_fn, x, y)`` for ``fn``: the
    Hugging Face callback's ``model(**inputs)`` with ``loss_fn(outputs, inputs)``); eval mode,
    RNG and seed are as above, on ``monitor.model``, and ``hessian_data`` and ``subset`` do
    not apply (the problem gives the data).
    """
    fmodel, loss_fn = monitor.model, monitor.loss_fn
    if monitor.curvature_problem is not None:
        fmodel, loss_fn, x, y = monitor.curvature_problem(monitor)
    elif monitor.hessian_data is not None:
        x, y = monitor.hessian_data
        x, y = x[:subset], y[:subset]
    else:
        x, y = monitor.batch
    model = monitor.model
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]):
            return fn(fmodel, loss_fn, x, y, seed=monitor.step_count, **kwargs)
    finally:
        model.train(was_training)


def heavy_ball_momentum(optimizer: Any) -> tuple[str | None, float | None]:
    """The momentum form and β of ``optimizer``'s first parameter group (SPEC §2.2):
    ``(form, β)`` with form

    * ``"sgd"`` (β = 0): plain SGD, Φ ← Φ − ηĝ (``torch.optim.SGD`` with ``momentum=0``,
      sgdlab's ``sgd``);
    * ``"heavy_ball"``: v ← βv + ĝ, Φ ← Φ − ηv (``torch.optim.SGD(momentum=β)`` with
      ``dampening=0``, ``nesterov=False``; sgdlab's ``momentum`` with ``style="heavy_ball"``,
      β its group's ``beta``);
    * ``"ema"``: ḡ ← βḡ + (1 − β)ĝ, Φ ← Φ − η′ḡ (sgdlab's ``momentum`` with
      ``style="ema"``; the group's ``lr`` is η′);

    and ``(None, None)`` where SPEC gives no stability threshold: no optimizer, Nesterov,
    torch's ``dampening`` ≠ 0 or ``maximize``, decoupled weight decay with momentum, Adam,
    RMSProp, snr_sgd or any other optimizer.
    """
    if optimizer is None or not getattr(optimizer, "param_groups", None):
        return None, None
    from sgdlab.optim.sgd import SGD as SgdlabSGD
    from sgdlab.optim.sgd import Momentum

    group = optimizer.param_groups[0]
    if group.get("maximize"):
        return None, None
    if isinstance(optimizer, Momentum):
        if group.get("nesterov") or (group.get("decoupled") and group.get("weight_decay")
                                     and float(group["beta"]) > 0):
            return None, None
        beta = float(group["beta"])
        if group.get("style") == "ema":
            return "ema", beta
        return ("heavy_ball" if beta > 0 else "sgd"), beta
    if isinstance(optimizer, SgdlabSGD):
        return "sgd", 0.0
    if type(optimizer) is torch.optim.SGD:   # a subclass may step differently
        beta = float(group.get("momentum", 0.0))
        if beta == 0:
            return "sgd", 0.0
        if group.get("nesterov") or group.get("dampening", 0.0) != 0:
            return None, None
        return "heavy_ball", beta
    return None, None


def edge_of_stability(lambda_max: float, lr: float | None, optimizer: Any) -> dict[str, Any]:
    """The edge-of-stability comparison of a sharpness λ_max with the step size (SPEC §4.3,
    §4.4, §4.6), for the learning rate η of the optimizer's first group at this step.

    On a quadratic mode of curvature λ, gradient descent Φ ← Φ − ηλΦ is stable while
    ηλ < 2, i.e. λ < 2/η (``gd_threshold``); heavy ball v ← βv + ĝ, Φ ← Φ − ηv is stable
    while ηλ < 2(1 + β) (SPEC §4.4), the EMA form with η′ while η′λ < 2(1 + β)/(1 − β)
    (SPEC §4.6; the same bound, η = η′(1 − β)). Weight decay ω added to the gradient
    (torch's ``weight_decay``, sgdlab's coupled decay; for plain SGD the decoupled form is
    the same step) makes the mode's curvature λ + ω: the thresholds on the loss's λ_max are
    lowered by ω. Keys:

    * ``lr`` = η (``None`` without an optimizer), ``momentum_form`` and ``momentum_beta``
      (β; ``None`` where the form is unknown: :func:`heavy_ball_momentum`), ``weight_decay``
      = ω;
    * ``gd_threshold`` = 2/η − ω, ``eos_threshold`` = 2(1 + β)/η − ω (EMA:
      2(1 + β)/((1 − β)η′) − ω): λ_max beyond it means the step is unstable along the top
      eigenvector;
    * ``lr_lambda_threshold`` = 2(1 + β) (EMA: 2(1 + β)/(1 − β)), the bound on
      η(λ_max + ω); and ``eos_ratio`` = η(λ_max + ω)/``lr_lambda_threshold`` (≥ 1: at or past
      the edge).

    Undefined values (η = 0 or no optimizer: infinite thresholds; the form unknown) are
    ``None``; the non-finite ones are listed in ``undefined``.
    """
    form, beta = heavy_ball_momentum(optimizer)
    eta = float(lr) if lr is not None else 0.0
    omega = 0.0
    if form is not None:
        omega = float(optimizer.param_groups[0].get("weight_decay", 0.0) or 0.0)
    factor = None
    if beta is not None:
        factor = 2.0 * (1.0 + beta) / (1.0 - beta if form == "ema" else 1.0)
    rec: dict[str, Any] = {"lr": lr, "momentum_form": form, "momentum_beta": beta,
                           "weight_decay": omega if form is not None else None,
                           "gd_threshold": 2.0 / eta - omega if eta > 0 else math.inf,
                           "eos_threshold": None, "lr_lambda_threshold": factor,
                           "eos_ratio": None}
    if factor is not None:
        rec["eos_threshold"] = factor / eta - omega if eta > 0 else math.inf
        rec["eos_ratio"] = eta * (lambda_max + omega) / factor
    return undefined_to_null(rec)


class Sharpness(Instrument):
    """Top Hessian eigenvalue λ_max (or the top k), 2/λ_max and the edge-of-stability
    comparison with the current step size (SPEC §1, §4.3, §4.4, §4.6).

    The k largest (algebraic) eigenvalues by Lanczos with full re-orthogonalisation
    (:func:`~sgdlab.probes.curvature.top_eigenvalues`, ``which="LA"``: residual criterion
    ‖Hu − θu‖ ≤ ``tol``·|θ|; at most ``max_iter`` products, default ``iters`` for k = 1 and
    min(n, max(100, 30k)) otherwise). Record: ``lambda_max`` (the largest eigenvalue),
    ``stability_bound`` = 2/λ_max (null for λ_max ≤ 0), ``lr_times_lambda`` = η·λ_max (null
    without a learning rate), ``iterations`` (Hessian-vector products used) and
    ``converged``; with k > 1 also ``eigenvalues`` (descending). (Until 2026-12-04 k = 1 ran
    power iteration, whose answer is the eigenvalue of largest *magnitude*: at a saddle
    whose most negative eigenvalue outweighs the top one it recorded that negative value as
    λ_max, and with two eigenvalues of equal magnitude and opposite sign its Rayleigh
    quotient settles between them.)

    Every record adds :func:`edge_of_stability`: ``lr``, ``momentum_form``,
    ``momentum_beta``, ``weight_decay`` ω, ``gd_threshold`` = 2/η − ω, ``eos_threshold`` =
    2(1 + β)/η − ω (SPEC's heavy-ball bound; the EMA form's 2(1 + β)/((1 − β)η′) − ω),
    ``lr_lambda_threshold`` and ``eos_ratio``.

    ``curvature="ggn"``: the same for the generalised Gauss–Newton matrix G = Jᵀ H_ℓ J
    (positive semi-definite; ≈ H near a minimum) instead of H; the record then carries
    ``curvature``.

    Data, eval mode, forked RNG and seed: :func:`curvature_measurement` (the Monitor's
    ``hessian_data``, its first ``subset`` examples, else the step's batch).
    """

    name, tier = "sharpness", "expensive"

    def __init__(self, schedule: Callable[[int], bool] | None = None, subset: int = 1024,
                 iters: int = 20, tol: float = 1e-3, k: int = 1,
                 max_iter: int | None = None, curvature: str = "hessian") -> None:
        super().__init__(schedule)
        self.subset = check_int("subset", subset, 1)
        self.iters = check_int("iters", iters, 1)
        self.tol = _check_positive("tol", tol)
        self.k = check_int("k", k, 1)
        self.max_iter = None if max_iter is None else check_int("max_iter", max_iter, 1)
        self.curvature = _check_curvature(curvature)

    def setup(self, monitor: Monitor) -> None:  # noqa: D102
        _curvature_setup(monitor)

    def measure(self, monitor: Monitor) -> dict[str, Any]:  # noqa: D102
        from sgdlab.probes.curvature import top_eigenvalues

        max_iter = self.max_iter if self.max_iter is not None or self.k > 1 else self.iters
        res = curvature_measurement(monitor, self.subset, top_eigenvalues, k=self.k,
                                    tol=self.tol, max_iter=max_iter, which="LA",
                                    curvature=self.curvature)
        eigenvalues = [float(v) for v in res.eigenvalues]
        lam = eigenvalues[0]
        lr = monitor.lr
        rec: dict[str, Any] = {
            "lambda_max": lam, "stability_bound": 2.0 / lam if lam > 0 else math.inf,
            "lr_times_lambda": lr * lam if lr is not None else None,
            "iterations": res.hvps, "converged": res.converged}
        if self.k > 1:
            rec["eigenvalues"] = eigenvalues
        if self.curvature != "hessian":
            rec["curvature"] = self.curvature
        rec.update(edge_of_stability(lam, monitor.lr, monitor.optimizer))
        return undefined_to_null(rec)


class HessianTraceInstrument(Instrument):
    """Hutchinson's estimates of tr H and tr H² with their standard errors (SPEC §1), via
    :func:`sgdlab.probes.curvature.hessian_trace`.

    For ``samples`` = s Rademacher vectors vᵢ (E[vvᵀ] = I): tr H ≈ (1/s) Σᵢ vᵢᵀHvᵢ and
    tr H² ≈ (1/s) Σᵢ ‖Hvᵢ‖², each with standard error sd/√s (s − 1 degrees of freedom); one
    Hessian-vector product per sample. Record: ``trace``, ``trace_se``, ``trace_sq``,
    ``trace_sq_se``, ``samples``, ``hvps``. ``samples`` ≥ 2 (a standard error needs two).
    ``curvature="ggn"``: tr G and tr G² of the generalised Gauss–Newton matrix instead (the
    record then carries ``curvature``).

    Data, eval mode, forked RNG and seed (the probe vectors are seeded with the step):
    :func:`curvature_measurement`, as ``sharpness`` (the Monitor's ``hessian_data``, its
    first ``subset`` examples, else the step's batch).
    """

    name, tier = "hessian_trace", "expensive"

    def __init__(self, schedule: Callable[[int], bool] | None = None, samples: int = 32,
                 subset: int = 1024, curvature: str = "hessian") -> None:
        super().__init__(schedule)
        self.samples = check_int("samples", samples, 2)
        self.subset = check_int("subset", subset, 1)
        self.curvature = _check_curvature(curvature)

    def setup(self, monitor: Monitor) -> None:  # noqa: D102
        _curvature_setup(monitor)

    def measure(self, monitor: Monitor) -> dict[str, Any]:  # noqa: D102
        from sgdlab.probes.curvature import hessian_trace

        res = curvature_measurement(monitor, self.subset, hessian_trace,
                                    samples=self.samples, curvature=self.curvature)
        rec: dict[str, Any] = {"trace": res.trace, "trace_se": res.trace_se,
                               "trace_sq": res.trace_sq, "trace_sq_se": res.trace_sq_se,
                               "samples": res.samples, "hvps": res.hvps}
        if self.curvature != "hessian":
            rec["curvature"] = self.curvature
        return rec


class SNRDiagnostics(Instrument):
    """snr_sgd's own diagnostics (mean min(1, r), fraction r ≥ 1, mean window; SPEC §2.6)."""

    name, tier = "snr", "cheap"

    def measure(self, monitor: Monitor) -> dict[str, Any]:  # noqa: D102
        diag = getattr(monitor.optimizer, "diagnostics", None)
        if diag is None:
            raise ValueError("the snr probe needs the snr_sgd optimizer")
        return {k: v for k, v in diag().items() if k != "step"}


class MicrobatchNoiseScale(Instrument):
    """Two-batch-size noise scale from gradient accumulation at no extra backward (SPEC §3;
    McCandlish et al. 2018, appendix A; the estimator of ``ddp_noise_scale``, with the
    micro-batches of one step in place of the ranks).

    A step of N ≥ 2 micro-batches m of b_m examples (B = Σ_m b_m): after each micro-batch's
    backward the increment Δ_m of p.grad is read (one copy of the gradients, on measured
    steps only). With p.grad the mean gradient of the step's B examples at the end (each
    micro-batch backpropagating (1/B) Σ_(b∈m) ℓ_b — ``(loss_m.mean() · b_m/B).backward()``,
    as the Trainer's ``accumulate`` does), ĝ_m = Δ_m · B/b_m and ĝ_B = Σ_m Δ_m, and::

        small = mean_m ‖ĝ_m‖²   (E = ‖G‖² + tr Σ / b_s,  1/b_s = mean_m 1/b_m)
        big   = ‖ĝ_B‖²          (E = ‖G‖² + tr Σ / B)

    give the unbiased ‖G‖² and tr Σ of
    :func:`~sgdlab.probes.noise.two_batch_estimates`, their ratio ``b_simple`` and
    ``b_simple_smoothed`` (:class:`~sgdlab.probes.noise.TwoBatchEstimator`: numerator and
    denominator averaged separately, in :meth:`state_dict`). Another scale of the backward
    (``.sum()`` per micro-batch) scales ‖G‖² and tr Σ alike and leaves B_simple unchanged.
    p.grad must hold this step's gradients only (zero_grad before the first backward).
    Undefined values (‖G‖² ≤ 0) are ``None`` and listed in ``undefined``. One micro-batch per
    step: disabled with one line. Under DDP use ``ddp_noise_scale``."""

    name, tier = "microbatch_noise_scale", "cheap"

    def __init__(self, schedule: Callable[[int], bool] | None = None,
                 decay: float = 0.95) -> None:
        super().__init__(schedule)
        from sgdlab.probes.noise import TwoBatchEstimator

        self.estimator = TwoBatchEstimator(decay)
        self._prev: list[torch.Tensor] | None = None
        self._sq: list[float] = []

    def setup(self, monitor: Monitor) -> None:  # noqa: D102
        if monitor.world > 1:
            raise ValueError("under DDP p.grad is the all-reduced gradient; use "
                             "ddp_noise_scale")

    def begin(self, monitor: Monitor) -> None:  # noqa: D102
        self._prev, self._sq = None, []

    def micro_batch_done(self, monitor: Monitor) -> None:  # noqa: D102
        params = [p for _, p in monitor._named_params if p.requires_grad]
        cur = [torch.zeros_like(p) if p.grad is None else p.grad.detach() for p in params]
        delta = cur if self._prev is None else torch._foreach_sub(cur, self._prev)
        norms = torch.stack(torch._foreach_norm(delta)).double() if delta else None
        self._sq.append(float(norms.square().sum()) if norms is not None else 0.0)
        # p.grad is accumulated in place by the next backward: keep a copy
        self._prev = [c.clone() for c in cur]

    def measure(self, monitor: Monitor) -> dict[str, Any] | None:  # noqa: D102
        from sgdlab.probes.noise import two_batch_estimates

        sizes, sq = monitor.micro_sizes, self._sq
        total = self._prev
        self._prev, self._sq = None, []
        if len(sq) < 2 or len(sizes) != len(sq) or None in sizes:
            raise ValueError("needs gradient accumulation: at least 2 micro-batches (begin() "
                             "calls) per optimizer step")
        bsz = sum(sizes)
        g_small = sum(s * (bsz / b) ** 2 for s, b in zip(sq, sizes, strict=True)) / len(sq)
        g_big = sum(float(t.double().square().sum()) for t in total) if total else 0.0
        b_small = len(sizes) / sum(1.0 / b for b in sizes)
        g2, tr = two_batch_estimates(g_small, g_big, b_small, bsz)
        self.estimator.update(g_small, g_big, b_small, bsz)
        rec = {"micro_batches": len(sizes), "b_small": b_small, "b_big": bsz,
               "g_small_norm_sq": g_small, "g_big_norm_sq": g_big, "g_norm_sq": g2,
               "tr_sigma": tr, "b_simple": tr / g2 if g2 > 0 else math.inf,
               "tr_sigma_smoothed": self.estimator.tr_sigma,
               "g_norm_sq_smoothed": self.estimator.g_norm_sq,
               "b_simple_smoothed": self.estimator.b_simple}
        return undefined_to_null(rec)

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        return self.estimator.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: D102
        if state:
            self.estimator.load_state_dict(state)


# ------------------------------------------------------------------ Cockpit's cheap set


class Distance(Instrument):
    """Distance of the parameters from initialisation, ‖θ_t − θ_0‖ per parameter tensor and
    in total (Cockpit's ``Distance``; :func:`sgdlab.probes.gradient_stats.distance_from`).

    θ_0: the parameters when the Monitor was built (in :meth:`state_dict`, so a resumed run
    measures from the same θ_0). Taken at the weights the step's gradient was computed at.
    Keys: ``distance`` (total), ``NAME/distance``."""

    name, tier = "distance", "cheap"

    def __init__(self, schedule: Callable[[int], bool] | None = None) -> None:
        super().__init__(schedule)
        self.init: dict[str, torch.Tensor] = {}

    def setup(self, monitor: Monitor) -> None:  # noqa: D102
        if not self.init:
            self.init = {n: p.detach().clone() for n, p in monitor.model.named_parameters()
                         if p.requires_grad}

    def measure(self, monitor: Monitor) -> dict[str, Any]:  # noqa: D102
        from sgdlab.probes.gradient_stats import distance_from

        d = distance_from(monitor.model, self.init)
        rec: dict[str, Any] = {"distance": d.pop("total")}
        rec.update({f"{n}/distance": v for n, v in d.items()})
        return rec

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        return {"init": {n: t.clone() for n, t in self.init.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: D102
        if state.get("init"):
            self.init = {n: t.clone() for n, t in state["init"].items()}


class UpdateSize(Instrument):
    """Size of one optimizer step, ‖θ_(t+1) − θ_t‖ per parameter tensor and in total
    (Cockpit's ``UpdateSize``; :func:`sgdlab.probes.gradient_stats.update_size`): the weights
    are copied at the measurement and compared after ``optimizer.step()`` returns (no record
    numbers without an optimizer step). Keys: ``update_size``, ``NAME/update_size``."""

    name, tier = "update_size", "cheap"

    def __init__(self, schedule: Callable[[int], bool] | None = None) -> None:
        super().__init__(schedule)
        self._before: dict[str, torch.Tensor] = {}

    def measure(self, monitor: Monitor) -> dict[str, Any]:  # noqa: D102
        self._before = {n: p.detach().clone() for n, p in monitor.model.named_parameters()
                        if p.requires_grad}
        return {}

    def after_optimizer_step(self, monitor: Monitor) -> dict[str, Any]:  # noqa: D102
        from sgdlab.probes.gradient_stats import update_size

        after = dict(monitor.model.named_parameters())
        u = update_size(self._before, after)
        self._before = {}
        rec: dict[str, Any] = {"update_size": u.pop("total")}
        rec.update({f"{n}/update_size": v for n, v in u.items()})
        return rec


class GradNorm(Instrument):
    """‖p.grad‖ per parameter tensor and in total (Cockpit's ``GradNorm``): the gradient the
    optimizer is about to step with (for ``loss.mean().backward()`` the mini-batch gradient ĝ;
    for ``.sum()`` B·ĝ; under accumulation the accumulated one). No hook, no per-example
    statistics. Keys: ``grad_norm``, ``NAME/grad_norm``."""

    name, tier = "grad_norm", "cheap"

    def measure(self, monitor: Monitor) -> dict[str, Any]:  # noqa: D102
        from sgdlab.probes.gradient_stats import grad_norms

        g = grad_norms({n: p.grad for n, p in monitor.model.named_parameters()
                        if p.requires_grad and p.grad is not None})
        rec: dict[str, Any] = {"grad_norm": g.pop("total")}
        rec.update({f"{n}/grad_norm": v for n, v in g.items()})
        return rec


class NormTest(Instrument):
    """Norm test θ_max = √(tr Σ̂ / (B‖ĝ‖²)) (Byrd et al. 2012; Cockpit's ``NormTest``;
    :func:`sgdlab.probes.gradient_stats.norm_test`) from the per-example squared norms of the
    user's backward (the noise scale's statistics; works under gradient accumulation).
    ``None`` (listed in ``undefined``) where ‖ĝ‖² = 0; a batch of one is skipped."""

    name, tier = "norm_test", "medium"
    needs_stats = (True, False)

    def setup(self, monitor: Monitor) -> None:  # noqa: D102
        _per_example_setup(monitor)

    def measure(self, monitor: Monitor) -> dict[str, Any] | None:  # noqa: D102
        from sgdlab.probes.gradient_stats import norm_test

        st = monitor.example_stats(grads=False)
        if _small_batch(self, monitor, st["batch_size"]):
            return None
        theta = norm_test(sum(float(v) for v in st["sq_norms"].values()),
                          sum(st["grad_sq_norms"].values()), st["batch_size"])
        return undefined_to_null({"norm_test": theta, "batch_size": st["batch_size"]})


def _per_example_setup(monitor: Monitor) -> None:
    if monitor.world > 1:
        raise ValueError("under DDP p.grad is the all-reduced gradient of other ranks' "
                         "examples too: per-example statistics of this rank's batch do not "
                         "match it")
    if monitor.loss_fn is None:
        raise ValueError("needs the Monitor's loss_fn (per-example losses)")


class _GramTest(Instrument):
    """A test from the Gram matrix K[a, b] = ⟨g_a, g_b⟩ of the step's per-example gradients,
    gathered in the user's backward (one backward per step: not under gradient
    accumulation). Costs B² per 2-D Linear layer and one layer's per-example gradients at a
    time elsewhere."""

    tier = "medium"
    needs_stats = (False, False, True)
    key = ""

    def setup(self, monitor: Monitor) -> None:  # noqa: D102
        _per_example_setup(monitor)

    def value(self, gram: torch.Tensor) -> float:
        """The test's number from K."""
        raise NotImplementedError

    def measure(self, monitor: Monitor) -> dict[str, Any] | None:  # noqa: D102
        st = monitor.example_stats(grads=False, gram=True)
        if _small_batch(self, monitor, st["batch_size"]):
            return None
        return undefined_to_null({self.key: self.value(st["gram"]),
                                  "batch_size": st["batch_size"]})


class InnerTest(_GramTest):
    """Inner-product test θ_max (Bollapragada et al. 2018; Cockpit's ``InnerTest``;
    :func:`sgdlab.probes.gradient_stats.inner_test`). Key: ``inner_test``."""

    name = key = "inner_test"

    def value(self, gram: torch.Tensor) -> float:  # noqa: D102
        from sgdlab.probes.gradient_stats import inner_test

        return inner_test(gram)


class OrthoTest(_GramTest):
    """Orthogonality test ν_max (Bollapragada et al. 2018; Cockpit's ``OrthoTest``;
    :func:`sgdlab.probes.gradient_stats.ortho_test`). Key: ``ortho_test``."""

    name = key = "ortho_test"

    def value(self, gram: torch.Tensor) -> float:  # noqa: D102
        from sgdlab.probes.gradient_stats import ortho_test

        return ortho_test(gram)


class MeanGSNR(Instrument):
    """Mean gradient signal-to-noise ratio, mean over coordinates of ĝ²/(σ̂² + ε) with the
    biased per-coordinate variance σ̂² = Σ_b g_b²/B − ĝ² (Liu et al. 2020; Cockpit's
    ``MeanGSNR``, ε = 1e-5; :func:`sgdlab.probes.gradient_stats.mean_gsnr`), from Σ_b g_b² of
    the user's backward (as ``noise_scale_bstar``). Key: ``mean_gsnr``."""

    name, tier = "mean_gsnr", "medium"
    needs_stats = (False, True)

    def __init__(self, schedule: Callable[[int], bool] | None = None,
                 epsilon: float = 1e-5) -> None:
        super().__init__(schedule)
        self.epsilon = epsilon

    def setup(self, monitor: Monitor) -> None:  # noqa: D102
        _per_example_setup(monitor)

    def measure(self, monitor: Monitor) -> dict[str, Any] | None:  # noqa: D102
        from sgdlab.probes.gradient_stats import mean_gsnr

        st = monitor.example_stats(grads=True)
        if _small_batch(self, monitor, st["batch_size"]):
            return None
        value = mean_gsnr(st["sum_sq"], st["grads"], st["batch_size"], self.epsilon)
        return undefined_to_null({"mean_gsnr": value, "batch_size": st["batch_size"]})


class Histogram(Instrument):
    """Histograms of the gradient (p.grad, all parameters) and of the parameter values
    (Cockpit's ``GradHist1d`` shows per-example gradient elements; this one the step's
    gradient, at no cost beyond one pass over the parameters).

    Record: ``grad_counts`` / ``param_counts`` (``bins`` counts over
    [``grad_low``, ``grad_high``] and [``param_low``, ``param_high``], the values' range at
    that step). With the Monitor's TensorBoard sink on, also TensorBoard histograms
    ``histogram/gradients`` and ``histogram/parameters``. At :meth:`Monitor.close` with
    ``out``: ``plots/histograms.png`` (the densities of up to 6 measured steps)."""

    name, tier = "histogram", "cheap"

    def __init__(self, schedule: Callable[[int], bool] | None = None, bins: int = 64) -> None:
        super().__init__(schedule)
        if int(bins) < 1:
            raise ValueError(f"bins must be >= 1, got {bins}")
        self.bins = int(bins)
        self.history: list[dict[str, Any]] = []

    def measure(self, monitor: Monitor) -> dict[str, Any]:  # noqa: D102
        from sgdlab.probes.gradient_stats import histogram

        params = [p for _, p in monitor.model.named_parameters() if p.requires_grad]
        grads = [p.grad for p in params if p.grad is not None]
        gc, glo, ghi = histogram(grads, self.bins)
        pc, plo, phi = histogram(params, self.bins)
        rec = {"grad_counts": gc, "grad_low": glo, "grad_high": ghi,
               "param_counts": pc, "param_low": plo, "param_high": phi}
        tb = getattr(monitor, "_tb", None)
        if tb is not None:
            t = monitor.step_count
            if grads:
                tb.add_histogram("histogram/gradients",
                                 torch.cat([g.detach().reshape(-1).float().cpu()
                                            for g in grads]), t)
            tb.add_histogram("histogram/parameters",
                             torch.cat([p.detach().reshape(-1).float().cpu()
                                        for p in params]), t)
        self.history.append({"step": monitor.step_count, **rec})
        return rec

    def teardown(self, monitor: Monitor) -> None:  # noqa: D102
        out = getattr(monitor, "_out", None)
        if out is None or not self.history:
            return
        (out / "plots").mkdir(parents=True, exist_ok=True)
        histogram_figure(self.history, out / "plots" / "histograms.png")


def histogram_figure(history: list[dict[str, Any]], path: Any) -> Any:
    """Gradient and parameter densities (count / bin width / total) of up to 6 of the
    measured steps, evenly spaced, in two panels; written to ``path``."""
    import numpy as np

    from sgdlab.plots import new_figure, save_figure

    pick = history if len(history) <= 6 else [
        history[int(round(i))] for i in np.linspace(0, len(history) - 1, 6)]
    fig, axes = new_figure(1, 2, figsize=(10.0, 3.6))
    for ax, what, label in ((axes.flat[0], "grad", "gradient (p.grad)"),
                            (axes.flat[1], "param", "parameter value")):
        for h in pick:
            counts = np.asarray(h[f"{what}_counts"], dtype=float)
            lo, hi = h[f"{what}_low"], h[f"{what}_high"]
            width = (hi - lo) / counts.size
            centres = lo + width * (np.arange(counts.size) + 0.5)
            total = counts.sum()
            if total:
                ax.plot(centres, counts / (total * width), linewidth=1.0,
                        label=f"step {h['step']}")
        ax.set_xlabel(label)
        ax.set_ylabel("density")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("histograms")
    return save_figure(fig, path)



INSTRUMENTS: dict[str, type[Instrument]] = {
    "effective_lr": EffectiveLR,
    "noise_scale": NoiseScaleInstrument,
    "noise_scale_bstar": NoiseScaleBStar,
    "sharpness": Sharpness,
    "hessian_trace": HessianTraceInstrument,
    "snr": SNRDiagnostics,
    "ddp_noise_scale": DDPNoiseScale,
    "distance": Distance,
    "update_size": UpdateSize,
    "grad_norm": GradNorm,
    "norm_test": NormTest,
    "inner_test": InnerTest,
    "ortho_test": OrthoTest,
    "mean_gsnr": MeanGSNR,
    "histogram": Histogram,
    "microbatch_noise_scale": MicrobatchNoiseScale,
}


def available() -> list[str]:
    """Names accepted by :func:`create`."""
    return list(INSTRUMENTS)


def _option_value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse(spec: str) -> Instrument:
    """An instrument from ``NAME`` or ``NAME:KEY=VALUE[:KEY=VALUE…]`` (e.g.
    ``noise_scale:window=8``: the constructor's keyword options, numbers and true/false
    parsed); a :class:`ConfigError` for an unknown name or option."""
    name, *opts = spec.split(":")
    if name not in INSTRUMENTS:
        raise ConfigError(f"probe must be one of {', '.join(INSTRUMENTS)}, got {spec!r}")
    kwargs: dict[str, Any] = {}
    for opt in opts:
        key, eq, value = opt.partition("=")
        if not eq or not key.isidentifier() or key == "schedule":
            raise ConfigError(f"probe {spec!r}: options are KEY=VALUE, got {opt!r}")
        kwargs[key] = _option_value(value)
    try:
        return INSTRUMENTS[name](**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"probe {spec!r}: {err}") from None


def create(items: Sequence[str | Instrument]) -> list[Instrument]:
    """Instruments from names (``NAME`` or ``NAME:KEY=VALUE…``, see :func:`parse`) or
    Instrument objects; an unknown name is a :class:`ConfigError` listing the known ones."""
    if isinstance(items, str):
        items = [items]
    out: list[Instrument] = []
    for item in items:
        if isinstance(item, Instrument):
            out.append(item)
        elif isinstance(item, str):
            out.append(parse(item))
        else:
            raise ConfigError(f"probe must be one of {', '.join(INSTRUMENTS)}, got {item!r}")
    return out
