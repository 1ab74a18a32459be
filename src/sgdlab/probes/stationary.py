"""Learning rate as temperature: the stationary loss of SGD and the heat capacity dL/dη
(SPEC §4.1, §4.2).

Notation of SPEC §1: ℓ_b(Φ) is the loss of training example b, L(Φ) = mean_b ℓ_b(Φ) over the
*full* training set, g_b = ∇ℓ_b, Σ = Cov_b(g_b), Φ* a minimum of L, B the batch size, η the
learning rate.

**Stationary loss (SPEC §4.1).** At a fixed η, SGD Φ ← Φ − η ĝ reaches a stationary
distribution Q_η, and L(η) = E_{Φ∼Q_η} L(Φ). :func:`stationary_loss` runs K independent chains
(same start, independent batch streams) and records the full-training-set loss L(Φ_t) every
``record_every`` steps. Stationarity is *detected*, not assumed. With M records per chain
(record j at step j·r) and a cut d = ⌊f·(M − 1)⌋, f = ``burn_in`` = ½ by default:

1. burn-in: the first half of the records is discarded — a rule fixed before the records
   are seen. MSER-5 (White 1997) on the chain-averaged series s_j = mean_k L(Φ_{k, t_j}) of
   *all* records is a diagnostic: with Z_i the means of consecutive groups of 5 records, its
   truncation point d* minimises Σ_{i≥d}(Z_i − Z̄_{≥d})²/(M − d)² over d ≤ M/2; the transient
   counts as over when d* ≤ d (not at the boundary M/2). Else the run is extended.
2. estimate: the mean of the kept records j ≥ d over all chains; se from batch means — with
   K ≥ ``n_batches`` chains every batch is a whole chain, i.e. the se of K *independent
   replicas*, se² = s²(chain means)/K, exact for any run length once the chains are
   stationary; ``dof`` = batches − 1, and intervals use Student's t (:func:`t_interval`,
   :meth:`StationaryLoss.ci`). With fewer chains each chain is cut into ⌈n_batches/K⌉
   consecutive batches, valid when a batch is much longer than τ_int.
3. run length: the batch-length test (batch ≥ ``batch_factor`` · τ_int) and the precision
   test (se ≤ max(rel_se · |mean − reference|, abs_se)) are decided on the records
   [⌊f·d⌋, d) — the last part of what the cut discards — predicting the kept part (1/f times
   as long: se_kept ≈ se_pilot·√f), not on the kept records themselves (with fewer chains
   than batches, where the se needs batches ≫ τ_int, the larger of the two τ_int estimates
   is used);
4. a Geweke (1992) check on the chain-averaged kept series: first 10 % against last 50 %,
   |z| ≤ ``geweke_z`` with variances from τ_int (catches a slow drift).

The run is extended (to the length the current estimates say is needed, at least ×1.3) until
all of these hold or ``max_steps`` is reached (then ``converged`` is False and ``reason``
says which test failed). τ_int is the integrated autocorrelation time of the kept records
(autocorrelation averaged over chains, Sokal's window W ≥ 5 τ_int).

**Why (the calibration of issue 11, ``benchmarks/stationary_calibration.py``).** Until
2026-12 the cut was the MSER-5 point d* itself and the stop was decided on the kept records;
on the claim-6 quadratic (exact excess known, z = (mean − exact)/se, K = 64) runs only a few
relaxation times long gave sd(z) 1.07–1.41 and mean z −0.1 to −0.7. The causes:

(a) *A cut chosen on the same records.* For a fixed d the K post-cut chain means are
    i.i.d., so z is Student-t with K − 1 dof (sd √((K − 1)/(K − 3)) = 1.016 at K = 64). But
    d* = d*(s) is a function of the records it then averages: on a record of a few τ the
    chain average's slow fluctuation looks like a transient, and the window that looks
    flattest (smallest Σ(Z_i − Z̄)²) is one that sits on one side of the mean; cutting the
    part on the other side inflates |mean − μ| against the se of the window, which does not
    see the selection. Measured on the same records (stationary start, n = 400): sd(z) 1.12
    with d*, 1.04 with no cut or a fixed cut.
(b) *A transient left in by construction.* MSER minimises an MSE proxy, bias² + variance,
    so where there is a real transient (chains from Φ*, zero momentum buffers at β = 0.99)
    the bias left after d* is of the order of the se: mean z ≈ −0.2 to −0.3 (n = 400; the
    −0.5 to −0.7 of the n = 40 torch table was this plus sampling error of rows sharing
    seeds). A transient A·e^{−t/T} leaves ≈ A·T·e^{−M/(2T)}/(M/2) in the mean over the second
    half, exponentially small once the diagnostic d* ≤ M/2 passes.
(c) *Stopping on the records that are kept.* The run stops the first time se ≤ target and
    batch ≥ 5 τ_int; ŝe² has relative sd √(2/(K − 1)) = 18 % at K = 64 and τ̂_int is
    positively correlated with it (both measure low-frequency power), so stopping at the first
    pass selects runs whose se happens to be low: E[ŝe | stop] < sd(mean). Measured with the
    fixed cut where the precision rule binds (η′ = 2e-3): sd(z) 1.06–1.08; deciding on
    [f·d, d) instead: 0.95–0.97.
(d) What remains: the studentised mean of skewed replicas has E[z] ≈ −γ₁/(2√K) (Hall 1992),
    γ₁ the skewness of a chain mean — a weighted χ² over a few independent stretches,
    γ₁ ≈ 0.3–0.5 here, so E[z] ≈ −0.02 to −0.04 — and t_{K−1} tails. τ̂_int of a chain
    centred on its own mean is biased low by ≈ 2Wτ/n (each lag's autocovariance loses
    Var(chain mean) ≈ σ²τ/n); with K ≥ n_batches the se does not use τ̂ at all.

``burn_in="mser"`` restores the old cut (and the old decisions) for comparison.

**Heat capacity (SPEC §4.2).** Near a minimum with H = ∇²L positive definite,
L(η) − L(Φ*) = η tr Σ(Φ*)/(4B) + O(η²), so dL/dη|₀ = E_b‖g_b(Φ*)‖²/(4B) (G(Φ*) = 0). For
commuting H and Σ with eigenvalues h_i, σ_i² the stationary excess is exactly
Σ_i ησ_i²/(B(4 − 2ηh_i)) (:func:`quadratic_excess_loss`). :func:`heat_capacity` finds Φ*,
predicts the slope from per-example gradients at Φ*, measures L(η) − L* on a ladder of small η
with :func:`stationary_loss`, fits c₁η + c₂η² and compares c₁ with the prediction.

Sampling without replacement ("shuffle"): one batch gradient has covariance
Σ/B · (N − B)/(N − 1) (SPEC §1), but the batches of an epoch are *negatively correlated*
(their noises sum to zero over the epoch). The stationary loss therefore is *not* the
with-replacement formula times (N − B)/(N − 1) in general: for a quadratic whose per-example
Hessians all equal H, :func:`quadratic_excess_loss` with ``sampling="shuffle"`` gives the
exact value, which equals the factor-corrected formula only where ηh_i = 1 (the iterate then
remembers a single batch) and is O(η²) as η → 0 — random reshuffling has no first-order
temperature (Mishchenko et al. 2020). :func:`heat_capacity` warns when asked for shuffle.

**Efficiency.** The K chains run as one model with parameters stacked along a leading
dimension (``torch.func.vmap`` over ``functional_call``, one backward, one optimizer over the
stacked tensors), so K = 64 chains of a small model cost about as much per step as one; models
vmap cannot batch (BatchNorm in training mode) fall back to one copy per chain. Batch indices
come from :class:`sgdlab.data.BatchSampler`, one per chain, drawn an epoch at a time.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from sgdlab.threads import torch_threads

__all__ = ["BURN_IN", "BatchMeans", "HeatCapacity", "HeatCapacityPrediction", "StationaryLoss",
           "analyse_records", "auto_record_every", "autocorrelation", "batch_means", "find_minimum",
           "heat_capacity", "integrated_autocorr_time", "mser_truncation", "noise_factor",
           "predict_heat_capacity", "quadratic_excess_loss", "run_adaptive", "stationary_loss",
           "t_interval"]

SAMPLING = ("replacement", "shuffle")
OBJECTIVES = ("regularised", "data")

_MARGIN = 1.0
_DECIDE_ON_PILOT = True
BURN_IN = 0.5   # default: the first half of the records is discarded (module docstring)

OptimizerFactory = Callable[[list[torch.Tensor], float], torch.optim.Optimizer]


# =========================================================================== statistics


def mser_truncation(series: np.ndarray | Sequence[float], batch: int = 5) -> tuple[int, bool]:
    """MSER-m burn-in truncation (White 1997; m = ``batch``, MSER-5 by default).

    The series is grouped into M = ⌊n/m⌋ consecutive means Z_1..Z_M (a trailing remainder
    is ignored); d* = argmin_{0 ≤ d ≤ M/2} Σ_{i>d}(Z_i − Z̄_{>d})²/(M − d)². Returns
    ``(m·d*, at_boundary)``: the number of leading records to drop, and whether d* hit the
    limit M/2, which means the series is too short to show where its transient ends.
    """
    s = np.asarray(series, dtype=np.float64)
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    m = s.size // batch
    if m < 4:
        return 0, True
    z = s[: m * batch].reshape(m, batch).mean(axis=1)
    z = z - z.mean()
    s1 = np.cumsum(z[::-1])[::-1]          # suffix sums Σ_{i≥d} z_i
    s2 = np.cumsum((z * z)[::-1])[::-1]
    cnt = np.arange(m, 0, -1, dtype=np.float64)
    ss = np.maximum(s2 - s1 * s1 / cnt, 0.0)
    dmax = m // 2
    stat = ss[: dmax + 1] / cnt[: dmax + 1] ** 2
    d = int(np.argmin(stat))
    return batch * d, d >= dmax


def autocorrelation(chains: np.ndarray) -> np.ndarray:
    """Normalised autocorrelation ρ(0..n−1) of one series (n,) or of K chains (K, n),
    averaged over chains (each chain centred on its own mean), by FFT."""
    a = np.atleast_2d(np.asarray(chains, dtype=np.float64))
    n = a.shape[1]
    a = a - a.mean(axis=1, keepdims=True)
    size = 1 << (2 * n - 1).bit_length()
    f = np.fft.rfft(a, size, axis=1)
    acov = np.fft.irfft(f * np.conj(f), size, axis=1)[:, :n].mean(axis=0)
    if acov[0] <= 0:
        out = np.zeros(n)
        out[0] = 1.0
        return out
    return acov / acov[0]


def integrated_autocorr_time(chains: np.ndarray, c: float = 5.0) -> float:
    """τ_int = 1 + 2 Σ_{t=1}^{W} ρ(t) with Sokal's self-consistent window: the smallest W with
    W ≥ c·τ_int(W). Units: records. Input (n,) or (K, n) (autocorrelation averaged over
    chains). The variance of a mean of n correlated records is var·τ_int/n."""
    rho = autocorrelation(chains)
    n = rho.size
    if n < 2:
        return 1.0
    taus = 2.0 * np.cumsum(rho) - 1.0   # τ(W) = 1 + 2 Σ_{t=1}^{W} ρ(t), W = 0..n−1
    ok = np.arange(n) >= c * taus
    w = int(np.argmax(ok)) if ok.any() else n - 1
    return float(taus[w])


@dataclass(frozen=True)
class BatchMeans:
    """Result of :func:`batch_means`: grand mean, its standard error, number of batches and
    the batch length (records)."""

    mean: float
    se: float
    n_batches: int
    batch_len: int


def batch_means(chains: np.ndarray, n_batches: int = 20) -> BatchMeans:
    """Batch-means standard error of the grand mean of K chains (K, n) (or one series (n,)).

    Each chain is cut into ⌈n_batches/K⌉ consecutive batches of equal length b (the first
    n − b·⌈n_batches/K⌉ records of each chain are dropped); se = sd(batch means)/√(#batches).
    With independent chains the batch means of different chains are independent; within a
    chain they are nearly so when b ≫ τ_int.
    """
    a = np.atleast_2d(np.asarray(chains, dtype=np.float64))
    k, n = a.shape
    per = max(1, math.ceil(n_batches / k))
    b = n // per
    if b < 1:
        raise ValueError(f"series of {n} records cannot be cut into {per} batches")
    used = a[:, n - per * b:]
    bm = used.reshape(k, per, b).mean(axis=2).ravel()
    nb = bm.size
    se = float(bm.std(ddof=1) / math.sqrt(nb)) if nb > 1 else math.inf
    return BatchMeans(float(used.mean()), se, nb, b)


def t_interval(mean: float, se: float, dof: int, level: float = 0.95) -> tuple[float, float]:
    """mean ± q·se with q Student's t quantile for ``dof`` degrees of freedom (the normal
    quantile when dof ≤ 0 is unknown, or ∞)."""
    from scipy import stats as sstats

    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    q = (sstats.t.ppf(0.5 + level / 2, dof) if dof and 0 < dof < math.inf
         else sstats.norm.ppf(0.5 + level / 2))
    return float(mean - q * se), float(mean + q * se)


# =========================================================================== results


@dataclass(frozen=True, eq=False)
class StationaryLoss:
    """Result of :func:`stationary_loss` (SPEC §4.1).

    mean, se: stationary mean of the recorded objective (full training loss, or its subset
        estimate, with (λ/2)‖Φ‖² when ``objective="regularised"`` and λ > 0) over all chains
        after burn-in, and its batch-means standard error.
    steps: optimizer steps per chain; burn_in: steps discarded as transient (the first half
        by default, a rule fixed before the records are seen; see the module docstring);
    mser_burn_in: the MSER-5 truncation point in steps (a diagnostic: ≤ burn_in when the
        transient is over by the cut);
    n_batches, batch_steps: batches used and their length in steps; dof = n_batches − 1,
        the degrees of freedom of se (with chains ≥ n_batches every batch is a whole chain:
        dof = chains − 1); ``ci(level)`` uses Student's t with them;
    tau_int: integrated autocorrelation time of the recorded series, in steps
        (≈ record_every when the records are nearly independent);
    converged: every test passed (see module docstring); reason: "ok" or the failed tests;
    geweke_z: the drift statistic; reference: subtracted for ``rel_se`` (``excess`` =
        mean − reference);
    trace_steps, trace: the chain-averaged recorded series (for figures);
    final_params: parameters at the end, stacked over chains (K, ...) — pass them as ``phi0``
        to continue the chains (e.g. at η/10, the step-decay curves of SPEC §4.1);
    seconds: wall time; engine: "vmap" (chains batched with torch.func) or "loop".
    """

    mean: float
    se: float
    steps: int
    burn_in: int
    n_batches: int
    batch_steps: int
    tau_int: float
    converged: bool
    reason: str
    geweke_z: float
    lr: float
    batch_size: int
    sampling: str
    chains: int
    record_every: int
    objective: str
    weight_decay: float
    reference: float
    trace_steps: np.ndarray
    trace: np.ndarray
    final_params: dict[str, torch.Tensor] = field(repr=False)
    seconds: float = 0.0
    engine: str = "vmap"
    dof: int = 0
    mser_burn_in: int = 0

    @property
    def excess(self) -> float:
        """mean − reference (e.g. L(η) − L* when reference = L*)."""
        return self.mean - self.reference

    @property
    def rel_se(self) -> float:
        """se / |mean − reference|."""
        ex = abs(self.excess)
        return self.se / ex if ex > 0 else math.inf

    def ci(self, level: float = 0.95, reference: bool = False) -> tuple[float, float]:
        """Two-sided ``level`` interval mean ± t_{dof}·se (of the excess when ``reference``)
        with Student's quantile for the ``dof`` = batches − 1 of the se (:func:`t_interval`)."""
        return t_interval(self.excess if reference else self.mean, self.se, self.dof, level)

    def load_into(self, model: nn.Module, chain: int = 0) -> nn.Module:
        """A deep copy of ``model`` holding chain ``chain``'s final parameters."""
        out = copy.deepcopy(model)
        with torch.no_grad():
            for name, p in out.named_parameters():
                if name in self.final_params:
                    p.copy_(self.final_params[name][chain])
        return out


@dataclass(frozen=True, eq=False)
class HeatCapacity:
    """Result of :func:`heat_capacity` (SPEC §4.2).

    predicted: c₁ = f · tr Σ(Φ*)/(4B), f = 1 (replacement) or (N − B)/(N − 1) (shuffle);
    measured, measured_se: c₁ from the weighted fit L(η) − L* = c₁η + c₂η²; c2, c2_se;
    ratio = measured/predicted; ci, ratio_ci: ``level`` confidence intervals of c₁ and of the
    ratio (the prediction is exact for the data set, so only c₁ carries error);
    chi2, dof, fit_pvalue: fit quality on the points kept (the covariance is inflated by
    χ²/dof when that exceeds 1);
    etas, losses (= L(η) − L*), ses, steps, converged: per measured η (sorted), in_fit: which
    of them the fit used;
    L_star, phi_star_grad_norm: L(Φ*) and ‖∇L(Φ*)‖ of the objective (with (λ/2)‖Φ‖²);
    tr_sigma = E_b‖g_b − G‖² of the data gradients at Φ*; mean_sq_grad = E_b‖g_b + λΦ*‖²
    (the per-example gradients of the regularised loss; equals tr_sigma + ‖∇L(Φ*)‖²);
    noise_factor f; h_max (top Hessian eigenvalue at Φ*, λ included); phi_star (float64);
    runs: the :class:`StationaryLoss` of each η.
    """

    predicted: float
    measured: float
    measured_se: float
    ratio: float
    ci: tuple[float, float]
    ratio_ci: tuple[float, float]
    c2: float
    c2_se: float
    chi2: float
    dof: int
    fit_pvalue: float
    level: float
    etas: np.ndarray
    losses: np.ndarray
    ses: np.ndarray
    in_fit: np.ndarray
    steps: np.ndarray
    converged: np.ndarray
    L_star: float
    phi_star_grad_norm: float
    tr_sigma: float
    mean_sq_grad: float
    noise_factor: float
    h_max: float
    batch_size: int
    sampling: str
    weight_decay: float
    per_example_method: str
    phi_star: dict[str, torch.Tensor] = field(repr=False)
    runs: tuple[StationaryLoss, ...] = field(repr=False, default=())
    seconds: float = 0.0

    def fit_curve(self, etas: np.ndarray | Sequence[float]) -> np.ndarray:
        """c₁η + c₂η² at ``etas`` (the fitted excess loss, for figures)."""
        e = np.asarray(etas, dtype=np.float64)
        return self.measured * e + self.c2 * e * e


# =========================================================================== helpers


def _check_problem(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                   sampling: str) -> int:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError("x and y must be tensors")
    n = x.shape[0]
    if y.shape[0] != n:
        raise ValueError(f"x has {n} examples but y has {y.shape[0]}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must be an integer in [1, {n}], got {batch_size!r}")
    if sampling not in SAMPLING:
        raise ValueError(f"sampling must be one of {', '.join(SAMPLING)}, got {sampling!r}")
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("model has no trainable parameters")
    return n


def noise_factor(n: int, batch_size: int, sampling: str) -> float:
    """Factor on Σ/B in the covariance of one batch gradient (SPEC §1): 1 with replacement,
    (N − B)/(N − 1) for epoch shuffling."""
    if sampling not in SAMPLING:
        raise ValueError(f"sampling must be one of {', '.join(SAMPLING)}, got {sampling!r}")
    if sampling == "replacement" or n == 1:
        return 1.0
    return (n - batch_size) / (n - 1)


def auto_record_every(n_eval: int, batch_size: int, chains: int, n_params: int) -> int:
    """Default steps between records: evaluating the loss should cost ≲ 25% of training.

    Cost model: one step costs ≈ 3·B·K example-passes plus a fixed overhead ω, one record
    ≈ N_eval·K example-passes plus ω, with ω ≈ 2·10⁶/P example-passes (Python/dispatch overhead
    of ~0.5 ms against ~2P flops per example at a few GFLOP/s). Returns
    ⌈4·cost(record)/cost(step)⌉ clipped to [1, 200] — deterministic, so runs are reproducible.
    """
    omega = 2e6 / max(int(n_params), 1)
    ratio = (n_eval * chains + omega) / (3 * batch_size * chains + omega)
    return int(min(200, max(1, math.ceil(4 * ratio))))


def _chain_seed(seed: int, k: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(k), 0x5717]).generate_state(1)[0])


def _mean_loss(loss_fn: Callable, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    loss = loss_fn(out, y)
    return loss.mean() if loss.dim() > 0 else loss


def _sum_loss(loss_fn: Callable, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    loss = loss_fn(out, y)
    return loss.sum() if loss.dim() > 0 else loss * out.shape[0]


def _cast(t: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if t.is_floating_point():
        return t.to(device=device, dtype=dtype)
    return t.to(device=device)


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _initial_params(model: nn.Module, phi0: Any, chains: int) -> dict[str, torch.Tensor]:
    """Stacked (K, ...) starting parameters from ``phi0`` (None: the model's own; a module;
    or a mapping name → tensor of the parameter's shape or stacked (K, ...))."""
    named = _trainable(model)
    if phi0 is None:
        src: Mapping[str, torch.Tensor] = {n: p.detach() for n, p in named.items()}
    elif isinstance(phi0, nn.Module):
        src = {n: p.detach() for n, p in phi0.named_parameters()}
    elif isinstance(phi0, Mapping):
        src = phi0
    else:
        raise TypeError("phi0 must be None, a torch.nn.Module or a mapping name -> tensor")
    out = {}
    for name, p in named.items():
        if name not in src:
            raise ValueError(f"phi0 has no entry for parameter {name!r}")
        t = torch.as_tensor(src[name]).detach().to(device=p.device, dtype=p.dtype)
        if t.shape == p.shape:
            t = t.unsqueeze(0).expand(chains, *p.shape)
        elif t.shape != (chains, *p.shape):
            raise ValueError(f"phi0[{name!r}] has shape {tuple(t.shape)}; expected "
                             f"{tuple(p.shape)} or {(chains, *p.shape)}")
        out[name] = t.clone().contiguous()
    return out


def _make_optimizer(optimizer: str | OptimizerFactory, options: Mapping[str, Any] | None,
                    params: list[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    if callable(optimizer):
        if options:
            raise ValueError("optimizer_options apply to an optimizer given by name; "
                             "bind them into the factory instead")
        return optimizer(params, lr)
    from sgdlab.optim import create

    return create(optimizer, params, lr=lr, **dict(options or {}))


class _IndexStream:
    """Batch indices (K, B) for K chains, one :class:`sgdlab.data.BatchSampler` per chain.

    Each sampler draws m = ⌊N/B⌋ batches at once (a super-batch of m·B indices, which has the
    same distribution: i.i.d. indices with replacement; the first m·B entries of a fresh
    permutation per epoch for shuffle, exactly what ``BatchSampler(N, B, drop_last=True)``
    uses), which keeps the per-step Python cost low.
    """

    def __init__(self, n: int, batch_size: int, mode: str, seeds: Sequence[int],
                 device: torch.device) -> None:
        from sgdlab.data import BatchSampler

        self.b = batch_size
        self.m = max(1, n // batch_size)
        if mode == "replacement":
            self.m = min(self.m, max(1, 65536 // batch_size))
        self.samplers = [BatchSampler(n, self.m * batch_size, mode, s) for s in seeds]
        self.device = device
        self.buf: torch.Tensor | None = None
        self.pos = self.m

    def next(self) -> torch.Tensor:
        if self.pos >= self.m:
            idx = torch.stack([s.next_batch() for s in self.samplers])
            self.buf = idx.view(len(self.samplers), self.m, self.b).to(self.device)
            self.pos = 0
        out = self.buf[:, self.pos]  # type: ignore[index]
        self.pos += 1
        return out


class _VmapChains:
    """K chains with parameters stacked along a leading dimension; forward with
    ``torch.func.vmap(functional_call)``, gradients by one ordinary backward of the sum of the
    chains' batch losses (chains do not interact, so each stacked slice gets its own chain's
    gradient); one optimizer over the stacked tensors (valid for element-wise optimizers —
    every sgdlab optimizer is; Adam's step count is shared, which is exact as all chains step
    together)."""

    engine = "vmap"

    def __init__(self, model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor,
                 xe: torch.Tensor, ye: torch.Tensor, params: dict[str, torch.Tensor],
                 make_opt: Callable[[list[torch.Tensor]], torch.optim.Optimizer], l2: float,
                 eval_chunk: int) -> None:
        from torch.func import functional_call, vmap

        self.x, self.y, self.xe, self.ye = x, y, xe, ye
        self.P = {n: t.clone().requires_grad_(True) for n, t in params.items()}
        self.opt = make_opt(list(self.P.values()))
        self.l2 = l2
        self.eval_chunk = eval_chunk

        def train_loss(p, xb, yb):
            return _mean_loss(loss_fn, functional_call(model, p, (xb,)), yb)

        def eval_sum(p, xb, yb):
            return _sum_loss(loss_fn, functional_call(model, p, (xb,)), yb)

        self._train = vmap(train_loss, randomness="different")
        self._eval = vmap(eval_sum, in_dims=(0, None, None), randomness="different")

    def step(self, idx: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        self._train(self.P, self.x[idx], self.y[idx]).sum().backward()
        self.opt.step()

    def losses(self) -> np.ndarray:
        n = self.xe.shape[0]
        with torch.no_grad():
            p = {k: v.detach() for k, v in self.P.items()}
            tot = None
            for lo in range(0, n, self.eval_chunk):
                s = self._eval(p, self.xe[lo:lo + self.eval_chunk],
                               self.ye[lo:lo + self.eval_chunk]).double()
                tot = s if tot is None else tot + s
            out = tot / n  # type: ignore[operator]
            if self.l2:
                out = out + 0.5 * self.l2 * sum(
                    v.double().pow(2).reshape(v.shape[0], -1).sum(1) for v in p.values())
        return out.cpu().numpy()

    def params(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.P.items()}

    def probe(self) -> None:
        """One forward/backward and one evaluation on a few examples, without an update
        (raises where vmap cannot handle the model)."""
        idx = torch.arange(min(2, self.x.shape[0]), device=self.x.device)
        idx = idx.unsqueeze(0).expand(next(iter(self.P.values())).shape[0], -1)
        loss = self._train(self.P, self.x[idx], self.y[idx]).sum()
        loss.backward()
        self.opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            self._eval({k: v.detach() for k, v in self.P.items()}, self.xe[:2], self.ye[:2])


class _LoopChains:
    """K deep copies of the model, each with its own optimizer, stepped one after another
    (fallback for models torch.func cannot vectorise)."""

    engine = "loop"

    def __init__(self, model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor,
                 xe: torch.Tensor, ye: torch.Tensor, params: dict[str, torch.Tensor],
                 make_opt: Callable[[list[torch.Tensor]], torch.optim.Optimizer], l2: float,
                 eval_chunk: int) -> None:
        self.loss_fn, self.x, self.y, self.xe, self.ye = loss_fn, x, y, xe, ye
        self.l2, self.eval_chunk = l2, eval_chunk
        k = next(iter(params.values())).shape[0]
        self.models, self.opts, self.named = [], [], []
        for c in range(k):
            m = copy.deepcopy(model)
            named = _trainable(m)
            with torch.no_grad():
                for name, p in named.items():
                    p.copy_(params[name][c])
            self.models.append(m)
            self.named.append(named)
            self.opts.append(make_opt(list(named.values())))

    def step(self, idx: torch.Tensor) -> None:
        for c, (m, opt) in enumerate(zip(self.models, self.opts, strict=True)):
            opt.zero_grad(set_to_none=True)
            i = idx[c]
            _mean_loss(self.loss_fn, m(self.x[i]), self.y[i]).backward()
            opt.step()

    def losses(self) -> np.ndarray:
        n = self.xe.shape[0]
        out = np.empty(len(self.models))
        with torch.no_grad():
            for c, m in enumerate(self.models):
                tot = 0.0
                for lo in range(0, n, self.eval_chunk):
                    xb = self.xe[lo:lo + self.eval_chunk]
                    tot += float(_sum_loss(self.loss_fn, m(xb), self.ye[lo:lo + self.eval_chunk]))
                v = tot / n
                if self.l2:
                    v += 0.5 * self.l2 * sum(float(p.double().pow(2).sum())
                                             for p in self.named[c].values())
                out[c] = v
        return out

    def params(self) -> dict[str, torch.Tensor]:
        return {name: torch.stack([nm[name].detach().clone() for nm in self.named])
                for name in self.named[0]}


# =========================================================================== stationary loss


def stationary_loss(model: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor],
                                                        torch.Tensor],
                    x: torch.Tensor, y: torch.Tensor, lr: float, batch_size: int, *,
                    sampling: str = "replacement", optimizer: str | OptimizerFactory = "sgd",
                    optimizer_options: Mapping[str, Any] | None = None,
                    objective: str = "regularised", l2: float | None = None,
                    phi0: nn.Module | Mapping[str, torch.Tensor] | None = None,
                    chains: int = 8, seed: int = 0, reference: float = 0.0,
                    rel_se: float = 0.02, abs_se: float = 0.0, n_batches: int = 20,
                    batch_factor: float = 5.0, geweke_z: float = 3.0,
                    min_steps: int = 1000, max_steps: int = 200_000,
                    record_every: int | None = None, eval_subset: int | None = None,
                    eval_chunk: int | None = None, dtype: torch.dtype | None = None,
                    engine: str = "auto", num_threads: int | str | None = "auto",
                    burn_in: float | str = BURN_IN) -> StationaryLoss:
    """Stationary full-training-set loss of SGD at a fixed learning rate (SPEC §4.1).

    Runs ``chains`` independent chains Φ ← Φ − η ĝ (or the named optimizer) from ``phi0``
    with batches of ``batch_size`` drawn by :class:`sgdlab.data.BatchSampler` (``sampling``
    "replacement" or "shuffle"), records the objective on the full training set every
    ``record_every`` steps, discards the first half of the records (``burn_in``) and extends
    the run until the transient is over by then (MSER-5 diagnostic), batch means (with
    K ≥ ``n_batches`` chains: independent replicas) are predicted to give se ≤
    max(rel_se·|mean − reference|, abs_se) with batches ≥ ``batch_factor``·τ_int long, and
    there is no drift (Geweke |z| ≤ ``geweke_z``), or ``max_steps`` steps per chain have run.
    See the module docstring for the algorithm and why it is built so.

    Args:
        model: parameters Φ (its trainable parameters) and forward; never modified (the
            chains work on copies).
        loss_fn: ``loss_fn(output, y)`` → per-example losses ℓ_b (reduction "none"); a
            scalar mean is accepted too.
        x, y: the training set; L(Φ) = mean over all of it.
        lr: η > 0. batch_size: B.
        optimizer: a name for :func:`sgdlab.optim.create` (default plain SGD, SPEC §2.1) with
            ``optimizer_options`` (e.g. ``{"weight_decay": λ}``), or a factory
            ``f(params, lr) -> Optimizer``. With chains batched (engine "vmap") the optimizer
            sees the stacked (K, ...) tensors, so it must act element-wise (all of sgdlab's do).
        objective: what is recorded. ``"regularised"``: L(Φ) + (λ/2)‖Φ‖² — the objective that
            SGD with coupled weight decay λ descends (SPEC §2), and the one whose stationary
            excess SPEC §4.2 predicts; ``"data"``: L(Φ) alone (e.g. the training loss curves
            of SPEC §4.1). They coincide when λ = 0.
        l2: λ of the regularised objective; default ``optimizer_options["weight_decay"]``
            (0 when absent or with a factory).
        phi0: start (default: the model's parameters); a module, or a mapping name → tensor
            of each parameter's shape or stacked per chain (K, ...) — e.g. the
            ``final_params`` of an earlier result, to continue the chains at another η.
            Optimizer state (momentum buffers) starts fresh.
        chains: K independent chains (the same start, independent batch streams seeded from
            (seed, k)). seed: integer ≥ 0.
        reference: subtracted from the mean for the relative-precision target (L* for an
            excess loss).
        rel_se, abs_se: precision target (at least one > 0).
        n_batches: batches for the batch-means se (over all chains).
        batch_factor: minimum batch length in units of τ_int. geweke_z: drift threshold.
        min_steps, max_steps: first run length and hard limit, steps per chain.
        record_every: steps between records (default :func:`auto_record_every`; with
            shuffling raised to be coprime with the ⌊N/B⌋ steps of an epoch, so that the
            records sample every phase of the epoch — the loss is periodic in it).
        eval_subset: record L on a fixed random subset of this many training examples
            (seeded) instead of all N — cheaper for large sets; then ``mean`` is the
            stationary loss on that subset.
        eval_chunk: examples per evaluation forward pass (default max(256, 32768/K)).
        dtype: run in this floating dtype (default: the model's).
        engine: "vmap" (chains batched with torch.func), "loop" (one model copy per chain)
            or "auto" (vmap, falling back to loop where the model cannot be vectorised,
            e.g. BatchNorm in training mode).
        burn_in: records discarded as transient: a fraction f ∈ [0, 1) of them (default
            ``BURN_IN`` = 0.5, the first half — a rule that does not look at the records, so
            the estimate and its se are those of a fixed record set), or ``"mser"`` (the
            MSER-5 point on the same records, with the run-length decisions on the kept
            records: the rule used before 2026-12, whose selections make the se 5–15 % too
            small and leave a bias of order se on runs a few τ long; kept for comparison).
            With a fraction, MSER-5 is a diagnostic: the run is extended until its
            truncation point is ≤ the cut.
        num_threads: torch intra-op threads during the run (restored afterwards). "auto":
            1 when a step is small (K·3B·P ≤ 5·10⁷ multiply-adds, P parameters per chain),
            where thread synchronisation costs more than it saves — up to ten-fold on a busy
            machine; None: leave torch's setting alone.

    Returns:
        :class:`StationaryLoss`.
    """
    _check_problem(model, x, y, batch_size, sampling)
    work_size = int(chains) * 3 * batch_size * sum(p.numel() for p in model.parameters()
                                                   if p.requires_grad)
    with _thread_limit(num_threads, work_size):
        return _stationary_loss(
            model, loss_fn, x, y, lr, batch_size, sampling=sampling, optimizer=optimizer,
            optimizer_options=optimizer_options, objective=objective, l2=l2, phi0=phi0,
            chains=chains, seed=seed, reference=reference, rel_se=rel_se, abs_se=abs_se,
            n_batches=n_batches, batch_factor=batch_factor, geweke_z=geweke_z,
            min_steps=min_steps, max_steps=max_steps, record_every=record_every,
            eval_subset=eval_subset, eval_chunk=eval_chunk, dtype=dtype, engine=engine,
            burn_in=burn_in)


@contextlib.contextmanager
def _thread_limit(num_threads: int | str | None, work_size: int) -> Iterator[None]:
    if num_threads == "auto":
        num_threads = 1 if work_size <= 5e7 else None
    if num_threads is None:
        yield
        return
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"num_threads must be 'auto', None or an integer >= 1, "
                         f"got {num_threads!r}")
    with torch_threads(num_threads):
        yield


def _stationary_loss(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor,
                     lr: float, batch_size: int, *, sampling: str, optimizer: Any,
                     optimizer_options: Mapping[str, Any] | None, objective: str,
                     l2: float | None, phi0: Any, chains: int, seed: int, reference: float,
                     rel_se: float, abs_se: float, n_batches: int, batch_factor: float,
                     geweke_z: float, min_steps: int, max_steps: int,
                     record_every: int | None, eval_subset: int | None,
                     eval_chunk: int | None, dtype: torch.dtype | None,
                     engine: str, burn_in: float | str = BURN_IN) -> StationaryLoss:
    t_start = time.perf_counter()
    _check_burn_in(burn_in)
    n = _check_problem(model, x, y, batch_size, sampling)
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if isinstance(chains, bool) or not isinstance(chains, int) or chains < 1:
        raise ValueError(f"chains must be an integer >= 1, got {chains!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if not (rel_se >= 0 and abs_se >= 0 and (rel_se > 0 or abs_se > 0)):
        raise ValueError("need rel_se >= 0, abs_se >= 0 and at least one of them > 0")
    if n_batches < 2:
        raise ValueError(f"n_batches must be >= 2, got {n_batches}")
    if not 1 <= min_steps <= max_steps:
        raise ValueError(f"need 1 <= min_steps <= max_steps, got {min_steps}, {max_steps}")
    if engine not in ("auto", "vmap", "loop"):
        raise ValueError(f"engine must be auto, vmap or loop, got {engine!r}")
    lam = float(l2 if l2 is not None else
                (0.0 if callable(optimizer) else dict(optimizer_options or {}).get(
                    "weight_decay", 0.0)))
    if lam < 0:
        raise ValueError(f"l2 must be >= 0, got {lam}")
    l2_eval = lam if objective == "regularised" else 0.0

    work = copy.deepcopy(model)
    if dtype is not None:
        work = work.to(dtype)
    p0 = next(iter(_trainable(work).values()))
    dev, dt = p0.device, p0.dtype
    xw, yw = _cast(x.detach(), dt, dev), _cast(y.detach(), dt, dev)
    if eval_subset is not None and eval_subset < n:
        if eval_subset < 1:
            raise ValueError(f"eval_subset must be >= 1, got {eval_subset}")
        g = torch.Generator().manual_seed(_chain_seed(seed, 2**31))
        sub = torch.randperm(n, generator=g)[:eval_subset].to(dev)
        xe, ye = xw[sub], yw[sub]
    else:
        xe, ye = xw, yw
    n_eval = xe.shape[0]
    per_epoch = n // batch_size
    if record_every is None:
        record_every = auto_record_every(n_eval, batch_size, chains,
                                         sum(p.numel() for p in _trainable(work).values()))
        if sampling == "shuffle":    # records must visit every phase of the epoch equally
            while math.gcd(record_every, per_epoch) != 1:
                record_every += 1
    elif sampling == "shuffle" and math.gcd(int(record_every), per_epoch) != 1:
        warnings.warn(f"record_every={record_every} shares a factor with the {per_epoch} "
                      "steps of an epoch: the records see only some phases of the epoch, "
                      "and the loss depends on the phase under shuffling", stacklevel=2)
    if eval_chunk is None:
        eval_chunk = max(256, 32768 // chains)
    if isinstance(record_every, bool) or not isinstance(record_every, int) or record_every < 1:
        raise ValueError(f"record_every must be an integer >= 1, got {record_every!r}")
    r = record_every

    params = _initial_params(work, phi0, chains)

    def make_opt(ps: list[torch.Tensor]) -> torch.optim.Optimizer:
        return _make_optimizer(optimizer, optimizer_options, ps, float(lr))

    args = (work, loss_fn, xw, yw, xe, ye, params, make_opt, l2_eval, eval_chunk)
    runner: _VmapChains | _LoopChains
    if engine == "loop":
        runner = _LoopChains(*args)
    elif engine == "vmap":
        runner = _VmapChains(*args)
    else:
        try:
            runner = _VmapChains(*args)
            runner.probe()
        except Exception:   # noqa: BLE001 - any failure to vectorise: use the plain loop
            runner = _LoopChains(*args)

    stream = _IndexStream(n, batch_size, sampling, [_chain_seed(seed, k) for k in range(chains)],
                          dev)
    stats, steps, recs, rec_steps = run_adaptive(
        lambda: runner.step(stream.next()), runner.losses, r, min_steps=min_steps,
        max_steps=max_steps, n_batches=n_batches, batch_factor=batch_factor,
        geweke_z=geweke_z, reference=reference, rel_se=rel_se, abs_se=abs_se, burn_in=burn_in)

    trace = np.stack(recs, axis=1).mean(axis=0)
    return StationaryLoss(
        mean=stats["mean"], se=stats["se"], steps=steps, burn_in=stats["burn_in"] * r,
        n_batches=stats["n_batches"], batch_steps=stats["batch_len"] * r,
        tau_int=stats["tau"] * r, converged=bool(stats["ok"]), reason=stats["reason"],
        geweke_z=stats["z"], lr=float(lr), batch_size=batch_size, sampling=sampling,
        chains=chains, record_every=r, objective=objective, weight_decay=lam,
        reference=float(reference), trace_steps=np.asarray(rec_steps), trace=trace,
        final_params=runner.params(), seconds=time.perf_counter() - t_start,
        engine=runner.engine, dof=int(stats["dof"]),
        mser_burn_in=int(stats["mser_burn_in"]) * r)


def run_adaptive(step: Callable[[], None], losses: Callable[[], np.ndarray], record_every: int,
                 *, min_steps: int = 1000, max_steps: int = 200_000, n_batches: int = 20,
                 batch_factor: float = 5.0, geweke_z: float = 3.0, reference: float = 0.0,
                 rel_se: float = 0.02, abs_se: float = 0.0, burn_in: float | str = BURN_IN,
                 ) -> tuple[dict[str, Any], int, list[np.ndarray], list[int]]:
    """The run-length control of :func:`stationary_loss` for any K-chain simulator.

    ``step()`` advances every chain by one step; ``losses()`` returns the K recorded values
    now. Records at step 0 and every ``record_every`` steps; after ⌈max(min_steps,
    100·record_every)⌉ steps the records are analysed (:func:`analyse_records` with the
    precision target) and the run is extended (×1.3 at least, ×10 at most, to the length
    the estimates ask for) until every test passes or ``max_steps``. Returns ``(stats,
    steps, records, record_steps)``: the analysis dict, the steps run, the list of (K,)
    record arrays and their step numbers. Used by the calibration benchmark with a NumPy
    simulator of the same dynamics.
    """
    _check_burn_in(burn_in)
    r = int(record_every)
    rec_steps: list[int] = [0]
    recs: list[np.ndarray] = [np.asarray(losses(), dtype=np.float64)]
    steps = 0
    target = int(math.ceil(max(min_steps, 100 * r) / r) * r)
    target = min(target, max_steps)
    stats: dict[str, Any] = {}
    while True:
        while steps < target:
            step()
            steps += 1
            if steps % r == 0:
                recs.append(np.asarray(losses(), dtype=np.float64))
                rec_steps.append(steps)
                if not np.isfinite(recs[-1]).all():
                    break
        series = np.stack(recs, axis=1)      # (K, n_records)
        if not np.isfinite(series).all():
            stats = {"reason": "diverged (non-finite loss)", "ok": False, "need": None}
            stats.update(_nan_stats())
            break
        stats = _analyse(series, r, n_batches, batch_factor, geweke_z, reference, rel_se,
                         abs_se, burn_in)
        if stats["ok"] or steps >= max_steps:
            break
        need = max(int(1.3 * steps), min(int(stats["need"]), 10 * steps))
        target = min(max_steps, int(math.ceil(need / r) * r))
    return stats, steps, recs, rec_steps


def analyse_records(series: np.ndarray, record_every: int, *, n_batches: int = 20,
                    batch_factor: float = 5.0, geweke_z: float = 3.0,
                    burn_in: float | str = BURN_IN) -> dict[str, Any]:
    """The stationarity analysis of :func:`stationary_loss` applied to records that are
    already there (e.g. the loss curves of a fixed-length run, SPEC §4.1): ``series`` (K, n)
    — K chains, one record every ``record_every`` steps — or (n,).

    Returns a dict: ``mean``, ``se`` (batch means over all chains after the burn-in cut;
    with K ≥ ``n_batches`` chains every batch is a whole chain: the se of independent
    replicas), ``dof`` (batches − 1: use Student's t with it for intervals, see
    :func:`t_interval`), ``burn_in`` (records discarded: the first ``burn_in`` fraction,
    half by default, fixed before the records are seen; or the MSER-5 point with
    ``burn_in="mser"``), ``mser_burn_in`` (the MSER-5 point, a diagnostic: the transient
    must be over by the cut), ``tau`` (τ_int in records), ``n_batches``, ``batch_len``, ``z``
    (Geweke drift statistic), ``ok`` (burn-in over, batches ≥ ``batch_factor``·τ_int,
    |z| ≤ ``geweke_z``) and ``reason`` (the failed tests, or "ok").
    """
    _check_burn_in(burn_in)
    arr = np.atleast_2d(np.asarray(series, dtype=float))
    out = _analyse(arr, record_every, n_batches, batch_factor, geweke_z, 0.0, 0.0, math.inf,
                   burn_in)
    out.pop("need", None)
    return out


def _nan_stats() -> dict[str, Any]:
    return {"mean": math.nan, "se": math.nan, "burn_in": 0, "mser_burn_in": 0,
            "n_batches": 0, "dof": 0, "batch_len": 0, "tau": math.nan, "z": math.nan}


def _cut(nrec: int, burn_in: float | str, d_mser: int) -> int:
    """Records discarded at the start: ⌊f·(n − 1)⌋ for a fraction f (a rule fixed before the
    records are seen), or the MSER-5 truncation for ``burn_in="mser"``."""
    if burn_in == "mser":
        return d_mser
    return int(math.floor(float(burn_in) * (nrec - 1)))


def _check_burn_in(burn_in: float | str) -> None:
    if burn_in == "mser":
        return
    if isinstance(burn_in, bool) or not isinstance(burn_in, (int, float)) \
            or not 0 <= burn_in < 1:
        raise ValueError(f"burn_in must be a fraction in [0, 1) or 'mser', got {burn_in!r}")


def _analyse(series: np.ndarray, r: int, n_batches: int, batch_factor: float, zmax: float,
             reference: float, rel_se: float, abs_se: float,
             burn_in: float | str = BURN_IN) -> dict[str, Any]:
    """Burn-in, τ_int, batch means, drift and precision tests on the (K, n) records; ``need``
    is the run length (steps) the estimates say would pass.

    The records kept are those after the cut :func:`_cut` (the first half by default); MSER-5
    on the chain-averaged series of *all* records is only a diagnostic here: the transient
    must be over by the cut (truncation point ≤ cut and not at MSER's half-way limit), else
    the run is extended. With ``burn_in="mser"`` the MSER point itself is the cut (the
    pre-2026-12 rule, biased on short runs: see the module docstring)."""
    k, nrec = series.shape
    steps = (nrec - 1) * r
    avg = series.mean(axis=0)
    d_mser, boundary = mser_truncation(avg, 5)
    d = _cut(nrec, burn_in, d_mser)
    frac_kept = (nrec - d) / nrec if nrec else 1.0
    post = series[:, d:]
    m = post.shape[1]
    reasons = []
    need = 0.0
    per = max(1, math.ceil(n_batches / k))
    if boundary:
        reasons.append("burn-in not over (MSER truncation at the half-way limit)")
        need = max(need, 2.0 * steps)
    elif d_mser > _MARGIN * d:
        reasons.append(f"burn-in not over (MSER-5 truncation at record {d_mser}, after the "
                       f"cut at record {d})")
        need = max(need, 1.2 * steps * d_mser / max(d, 1))
    if m < max(4 * per, 8):
        # too few records for the tests: still an estimate (not converged) where at least
        # two batches of ≥ 4 records (or two chains) are there, else NaN
        out = _nan_stats()
        nb_small = min(n_batches, k * max(1, m // 4))
        if m >= 1 and nb_small >= 2:
            bm = batch_means(post, nb_small)
            out.update(mean=bm.mean, se=bm.se, n_batches=bm.n_batches, dof=bm.n_batches - 1,
                       batch_len=bm.batch_len,
                       tau=integrated_autocorr_time(post) if m >= 2 else math.nan)
        out.update(burn_in=d, mser_burn_in=d_mser, reason="; ".join(reasons + ["too few records"]),
                   ok=False, need=max(need, 2.0 * steps))
        return out
    tau = max(integrated_autocorr_time(post), 1e-12)
    bm = batch_means(post, n_batches)
    # Geweke: first 10% vs last 50% of the chain-averaged series
    pa = avg[d:]
    na, nb = max(1, m // 10), max(1, m // 2)
    va = float(pa.var()) * max(tau, 1.0)
    z = float((pa[:na].mean() - pa[-nb:].mean()) / math.sqrt(va / na + va / nb)) if va > 0 \
        else 0.0
    if not abs(z) <= zmax:
        reasons.append(f"drift (Geweke z = {z:.2f})")
        need = max(need, 1.5 * steps)
    # the run-length decisions (batch length against τ_int, precision) are taken on the
    # records *before* the cut when there are enough of them — the last (1 − f) of the
    # discarded part, i.e. records [M/4, M/2) for f = ½ — and predict the kept part's
    # (which is 1/f times as long); deciding on the kept records themselves would stop
    # preferentially when their se happens to be small (module docstring, cause 3).
    lo = int(math.floor(float(burn_in) * d)) if burn_in != "mser" else d
    pilot = series[:, lo:d]
    use_pilot = _DECIDE_ON_PILOT and burn_in != "mser" and pilot.shape[1] >= max(4 * per, 8)
    if use_pilot:
        tau_d = max(integrated_autocorr_time(pilot), 1e-12)
        if k < n_batches:
            # batches inside chains need batch ≫ τ_int for the se itself: take the larger
            # estimate (τ̂ of short records is biased low)
            tau_d = max(tau_d, tau)
        bm_d = batch_means(pilot, n_batches)
        se_d = bm_d.se * math.sqrt(pilot.shape[1] / m)   # predicted se of the kept part
        mean_d = bm_d.mean
    else:
        tau_d, se_d, mean_d = tau, bm.se, bm.mean
    if bm.batch_len < batch_factor * max(tau_d, 1.0):
        reasons.append(f"batches of {bm.batch_len} records shorter than "
                       f"{batch_factor:g} tau_int = {batch_factor * tau_d:.1f}")
        need = max(need, 1.2 * per * batch_factor * max(tau_d, 1.0) * r / frac_kept
                   if burn_in != "mser" else
                   d * r + 1.2 * per * batch_factor * max(tau_d, 1.0) * r)
    target = max(rel_se * abs(mean_d - reference), abs_se)
    if not se_d <= target:
        reasons.append(f"se {se_d:.3g} above target {target:.3g}"
                       + (" (predicted from the records before the cut)" if use_pilot else ""))
        factor = (se_d / target) ** 2 if target > 0 else 10.0
        need = max(need, 1.1 * factor * m * r / frac_kept if burn_in != "mser"
                   else d * r + 1.1 * factor * m * r)
    return {"mean": bm.mean, "se": bm.se, "burn_in": d, "mser_burn_in": d_mser,
            "n_batches": bm.n_batches, "dof": bm.n_batches - 1, "batch_len": bm.batch_len,
            "tau": tau, "z": z, "ok": not reasons,
            "reason": "; ".join(reasons) if reasons else "ok", "need": need}


# =========================================================================== theory


def quadratic_excess_loss(lr: float, h: Sequence[float] | np.ndarray,
                          sigma2: Sequence[float] | np.ndarray, batch_size: int,
                          sampling: str = "replacement", n: int | None = None) -> float:
    """Exact stationary L(η) − L* of SGD on a quadratic with commuting H and Σ (SPEC §4.2).

    With replacement: Σ_i η σ_i² / (B (4 − 2ηh_i)) (requires 0 < ηh_i < 2), where h_i and
    σ_i² are the eigenvalues of H and of the per-example gradient covariance Σ (population
    covariance over the N examples).

    ``sampling="shuffle"`` (needs ``n``, and B dividing N so that every epoch has m = N/B
    full batches): exact when every per-example Hessian equals H (ℓ_b = ½(Φ − x_b)ᵀH(Φ − x_b)
    + const), so the gradient noise does not depend on Φ. A batch has noise variance
    s_i² = σ_i²/B·(N − B)/(N − 1) per mode, batches of one epoch have covariance −s_i²/(m − 1)
    (they sum to zero), epochs are independent. With a_i = 1 − ηh_i, averaging over the phase
    within the epoch,

        L(η) − L* = Σ_i ½ h_i η² s_i² / (1 − a_i²) · [1 − 2/(m(m − 1)) Σ_{k=1}^{m−1} (m − k) a_i^k].

    The bracket is 1 at ηh_i = 1 (the factor-corrected with-replacement value) and → 0 as
    η → 0: the excess is then O(η²).
    """
    h = np.asarray(h, dtype=np.float64).ravel()
    s2 = np.asarray(sigma2, dtype=np.float64).ravel()
    if h.shape != s2.shape:
        raise ValueError("h and sigma2 must have the same length")
    eta = float(lr)
    if np.any(eta * h <= 0) or np.any(eta * h >= 2):
        raise ValueError("need 0 < lr*h_i < 2 for every mode (stationary distribution exists)")
    if sampling == "replacement":
        return float(np.sum(eta * s2 / (batch_size * (4 - 2 * eta * h))))
    if sampling != "shuffle":
        raise ValueError(f"sampling must be one of {', '.join(SAMPLING)}, got {sampling!r}")
    if n is None or n % batch_size:
        raise ValueError("shuffle needs n with batch_size dividing n")
    m = n // batch_size
    s2b = s2 / batch_size * noise_factor(n, batch_size, "shuffle")
    a = 1.0 - eta * h
    if m > 1:
        k = np.arange(1, m)
        corr = 2.0 / (m * (m - 1)) * ((m - k)[None, :] * a[:, None] ** k[None, :]).sum(1)
    else:
        corr = np.ones_like(a)
    return float(np.sum(0.5 * h * eta**2 * s2b / (1 - a * a) * (1 - corr)))


# =========================================================================== heat capacity


def find_minimum(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor, *,
                 weight_decay: float = 0.0, gtol: float = 1e-10, max_iter: int = 5000,
                 chunk_size: int = 8192, dtype: torch.dtype = torch.float64,
                 ) -> tuple[nn.Module, float, float]:
    """Φ* of L(Φ) + (λ/2)‖Φ‖² by full-batch L-BFGS (strong Wolfe line search) in ``dtype``.

    Starts from the model's parameters (a float64 copy; the model is untouched) and iterates
    until ‖∇‖ ≤ ``gtol`` or ``max_iter`` L-BFGS iterations. Returns (copy at Φ*, L(Φ*),
    ‖∇L(Φ*)‖), objective including the λ term.
    """
    m = copy.deepcopy(model).to(dtype)
    params = list(_trainable(m).values())
    dev = params[0].device
    xw, yw = _cast(x.detach(), dtype, dev), _cast(y.detach(), dtype, dev)
    numel = sum(p.numel() for p in params)
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=100, history_size=50,
                            tolerance_grad=gtol / math.sqrt(numel), tolerance_change=1e-300,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=False)
        val, _ = _full_objective(m, params, loss_fn, xw, yw, weight_decay, chunk_size,
                                 backward=True)
        return torch.tensor(val, dtype=dtype)

    gnorm = _grad_norm(m, params, loss_fn, xw, yw, weight_decay, chunk_size)
    done = 0
    while gnorm > gtol and done < max_iter:
        opt.step(closure)
        done += 100
        new = _grad_norm(m, params, loss_fn, xw, yw, weight_decay, chunk_size)
        if new >= gnorm and new > gtol:     # L-BFGS stalled (round-off): stop
            gnorm = new
            break
        gnorm = new
    val, _ = _full_objective(m, params, loss_fn, xw, yw, weight_decay, chunk_size,
                             backward=False)
    return m, val, gnorm


def _full_objective(m: nn.Module, params: list[torch.Tensor], loss_fn: Callable,
                    x: torch.Tensor, y: torch.Tensor, lam: float, chunk: int,
                    backward: bool) -> tuple[float, None]:
    n = x.shape[0]
    total = 0.0
    for lo in range(0, n, chunk):
        with torch.set_grad_enabled(backward):
            loss = _sum_loss(loss_fn, m(x[lo:lo + chunk]), y[lo:lo + chunk]) / n
            if backward:
                loss.backward()
        total += loss.item()
    if lam:
        with torch.set_grad_enabled(backward):
            reg = 0.5 * lam * sum((p * p).sum() for p in params)
            if backward:
                reg.backward()
        total += reg.item()
    return total, None


def _grad_norm(m: nn.Module, params: list[torch.Tensor], loss_fn: Callable, x: torch.Tensor,
               y: torch.Tensor, lam: float, chunk: int) -> float:
    for p in params:
        p.grad = None
    _full_objective(m, params, loss_fn, x, y, lam, chunk, backward=True)
    g = math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in params
                      if p.grad is not None))
    for p in params:
        p.grad = None
    return g


def _data_gradient(m: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor,
                   chunk: int) -> list[torch.Tensor]:
    params = list(_trainable(m).values())
    for p in params:
        p.grad = None
    _full_objective(m, params, loss_fn, x, y, 0.0, chunk, backward=True)
    out = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
           for p in params]
    for p in params:
        p.grad = None
    return out


def _per_example_sq_norms_vmap(model: nn.Module, loss_fn: Callable, x: torch.Tensor,
                               y: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """‖∇ℓ_b‖² for every example by torch.func (vmap over grad of functional_call)."""
    from torch.func import functional_call, grad, vmap

    params = {n: p.detach() for n, p in _trainable(model).items()}

    def one(p, xb, yb):
        out = functional_call(model, p, (xb.unsqueeze(0),))
        return _mean_loss(loss_fn, out, yb.unsqueeze(0))

    g = vmap(grad(one), in_dims=(None, 0, 0))
    res = []
    for lo in range(0, x.shape[0], chunk):
        gr = g(params, x[lo:lo + chunk], y[lo:lo + chunk])
        res.append(sum(v.reshape(v.shape[0], -1).double().pow(2).sum(1) for v in gr.values()))
    return torch.cat(res)


def _per_example_sq_norms(model: nn.Module, loss_fn: Callable, x: torch.Tensor,
                          y: torch.Tensor) -> tuple[torch.Tensor, str]:
    try:
        from sgdlab.probes.per_example import per_example_sq_norms
    except ImportError:
        per_example_sq_norms = None
    if per_example_sq_norms is not None:
        try:
            out = []
            for lo in range(0, x.shape[0], 4096):
                out.append(per_example_sq_norms(model, loss_fn, x[lo:lo + 4096],
                                                y[lo:lo + 4096]).detach().double())
            return torch.cat(out), "hooks"
        except Exception:  # noqa: BLE001 - unsupported layer etc.: use the generic path
            pass
    return _per_example_sq_norms_vmap(model, loss_fn, x, y), "vmap"


@dataclass(frozen=True, eq=False)
class HeatCapacityPrediction:
    """Result of :func:`predict_heat_capacity` (SPEC §4.2).

    predicted = noise_factor · tr_sigma/(4B): the first-order slope dL/dη|₀;
    tr_sigma = E_b‖g_b − G‖² (data gradients at Φ*); mean_sq_grad = E_b‖g_b + λΦ*‖²
    (per-example gradients of the regularised loss; = tr_sigma + ‖∇L(Φ*)‖²);
    L_star, phi_star_grad_norm: objective (with (λ/2)‖Φ‖²) and its gradient norm at Φ*;
    model: a copy of the model at Φ* (in ``dtype``); per_example_method: "hooks" or "vmap".
    """

    predicted: float
    tr_sigma: float
    mean_sq_grad: float
    L_star: float
    phi_star_grad_norm: float
    noise_factor: float
    batch_size: int
    sampling: str
    weight_decay: float
    per_example_method: str
    model: nn.Module = field(repr=False)


def predict_heat_capacity(model: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor],
                                                              torch.Tensor],
                          x: torch.Tensor, y: torch.Tensor, batch_size: int, *,
                          sampling: str = "replacement", weight_decay: float = 0.0,
                          phi_star: nn.Module | Mapping[str, torch.Tensor] | None = None,
                          gtol: float = 1e-10, dtype: torch.dtype = torch.float64,
                          ) -> HeatCapacityPrediction:
    """Predicted heat capacity dL/dη|₀ = f · E_b‖g_b(Φ*)‖²/(4B) (SPEC §4.2; f of SPEC §1).

    Φ*: :func:`find_minimum` (full-batch L-BFGS on L + (λ/2)‖Φ‖², float64) from the model's
    parameters, or ``phi_star`` (a module or mapping name → tensor) as given; its gradient
    norm is reported either way. With coupled weight decay λ the per-example gradients of the
    regularised loss are g_b + λΦ*; their covariance is Σ = Cov_b(g_b) and their mean is
    ∇L(Φ*) = 0, so E_b‖g_b + λΦ*‖² = tr Σ at the minimum. The prediction uses
    tr Σ = E_b‖g_b‖² − ‖E_b g_b‖², which does not depend on the residual gradient;
    ``mean_sq_grad`` (the SPEC's E_b‖g_b‖² literally, λΦ* included) exceeds it by
    ‖∇L(Φ*)‖². f = 1 with replacement, (N − B)/(N − 1) with shuffling (see the module
    docstring for why the latter does not give the measured small-η slope).
    """
    n = _check_problem(model, x, y, batch_size, sampling)
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if phi_star is None:
        star, l_star, gnorm = find_minimum(model, loss_fn, x, y, weight_decay=weight_decay,
                                           gtol=gtol, dtype=dtype)
    else:
        star = copy.deepcopy(model).to(dtype)
        init = _initial_params(star, phi_star, 1)
        with torch.no_grad():
            for name, p in _trainable(star).items():
                p.copy_(init[name][0])
        plist = list(_trainable(star).values())
        dev = plist[0].device
        xs, ys = _cast(x.detach(), dtype, dev), _cast(y.detach(), dtype, dev)
        l_star, _ = _full_objective(star, plist, loss_fn, xs, ys, weight_decay, 8192, False)
        gnorm = _grad_norm(star, plist, loss_fn, xs, ys, weight_decay, 8192)
    params = _trainable(star)
    dev = next(iter(params.values())).device
    xs, ys = _cast(x.detach(), dtype, dev), _cast(y.detach(), dtype, dev)
    sq, method = _per_example_sq_norms(star, loss_fn, xs, ys)
    gdata = _data_gradient(star, loss_fn, xs, ys, 8192)
    g2 = sum(float((g.double() ** 2).sum()) for g in gdata)
    mean_sq = float(sq.mean())
    tr_sigma = mean_sq - g2
    mean_sq_grad = mean_sq
    if weight_decay:
        # E‖g_b + λΦ‖² = E‖g_b‖² + 2λ⟨G, Φ⟩ + λ²‖Φ‖²
        dot = sum(float((g.double() * p.detach().double()).sum())
                  for g, p in zip(gdata, params.values(), strict=True))
        pn = sum(float((p.detach().double() ** 2).sum()) for p in params.values())
        mean_sq_grad += 2 * weight_decay * dot + weight_decay**2 * pn
    f = noise_factor(n, batch_size, sampling)
    return HeatCapacityPrediction(
        predicted=f * tr_sigma / (4 * batch_size), tr_sigma=tr_sigma, mean_sq_grad=mean_sq_grad,
        L_star=float(l_star), phi_star_grad_norm=float(gnorm), noise_factor=f,
        batch_size=batch_size, sampling=sampling, weight_decay=float(weight_decay),
        per_example_method=method, model=star)


def heat_capacity(model: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor],
                                                      torch.Tensor],
                  x: torch.Tensor, y: torch.Tensor, batch_size: int, *,
                  etas: Sequence[float] | None = None,
                  fractions: Sequence[float] = (0.005, 0.01, 0.02, 0.04, 0.08),
                  sampling: str = "replacement", weight_decay: float = 0.0,
                  phi_star: nn.Module | Mapping[str, torch.Tensor] | None = None,
                  h_max: float | None = None, chains: int = 64, seed: int = 0,
                  rel_se: float = 0.01, max_steps: int = 200_000, min_steps: int = 500,
                  record_every: int | None = None, level: float = 0.95,
                  gtol: float = 1e-10, dtype: torch.dtype = torch.float64,
                  eval_subset: int | None = None, engine: str = "auto",
                  adapt: bool = True, fit_pvalue: float = 0.01, max_extensions: int = 3,
                  **stationary_options: Any) -> HeatCapacity:
    """Heat capacity dL/dη at η → 0, predicted from per-example gradients and measured
    (SPEC §4.2).

    1. Φ*: full-batch L-BFGS in float64 on L(Φ) + (λ/2)‖Φ‖² (λ = ``weight_decay``, coupled:
       L2 in the loss, SPEC §2) from the model's parameters, or ``phi_star`` if given; the
       gradient norm reached is reported. L* = L(Φ*) (λ term included).
    2. Prediction: c₁ = f · tr Σ(Φ*)/(4B), f = 1 with replacement and (N − B)/(N − 1) with
       shuffling (SPEC §1). tr Σ = E_b‖g_b‖² − ‖E_b g_b‖² over the N data gradients g_b at Φ*.
       With L2 the per-example gradients of the regularised loss are g_b + λΦ*; their noise
       covariance is the same Σ, and since their mean vanishes at Φ*,
       E_b‖g_b + λΦ*‖² = tr Σ exactly there — the SPEC's E_b‖g_b(Φ*)‖²/(4B). Using tr Σ
       keeps the prediction insensitive to a residual gradient (reported as
       ``mean_sq_grad`` − ``tr_sigma`` = ‖∇L(Φ*)‖²). Per-example norms come from
       :func:`sgdlab.probes.per_example.per_example_sq_norms` when available, else from
       torch.func (``per_example_method``).
    3. Measurement: for each η of the ladder (default ``fractions`` × 2/h_max, h_max the top
       Hessian eigenvalue at Φ* by HVP power iteration, λ included, unless given),
       :func:`stationary_loss` of the regularised objective from Φ* (``chains`` chains,
       ``reference`` = L*, precision ``rel_se`` of L(η) − L*). The chains start at Φ*, so the
       rise to the stationary level is a (short) transient: the first half of the records
       is discarded and the run extended until MSER-5 puts the transient's end before it.
    4. Fit L(η) − L* = c₁η + c₂η² by weighted least squares (weights 1/se²) through the
       origin; the covariance of (c₁, c₂) is (XᵀWX)⁻¹, inflated by χ²/dof when that exceeds 1;
       the ``level`` interval uses Student's t with dof = #η − 2 when inflated, else the
       normal quantile. ratio = c₁/predicted.
    5. ``adapt``: while the fit is rejected (χ² p-value < ``fit_pvalue``, i.e. the O(η³)
       remainder is visible), drop the largest η (keeping ≥ 4 points), then add η_min/2 (at
       most ``max_extensions`` times) and refit. The curvature of L(η)/η is not set by h_max
       alone: on least squares the Φ-dependent part of the noise adds ≈ η(d + 1)/(2B) per unit
       η, so the ladder is kept small (default ηh_max ≤ 0.16) and checked.

    Shuffle sampling gets a warning: the batches of
    an epoch are anti-correlated and the excess loss is O(η²) at small η (see
    :func:`quadratic_excess_loss`), so the factor-corrected slope is not what is measured.

    Args:
        model, loss_fn, x, y, batch_size: the problem, as for :func:`stationary_loss`
            (``loss_fn`` per-example, reduction "none").
        etas: explicit ladder (sorted; ≥ 2 values), else ``fractions`` × 2/h_max.
        sampling: "replacement" (the theory) or "shuffle" (warns, see above).
        weight_decay: λ of coupled decay; the measured objective is L + (λ/2)‖Φ‖².
        phi_star: a known minimiser (module or name → tensor) instead of L-BFGS.
        h_max: top Hessian eigenvalue if known (skips the power iteration).
        chains, seed, rel_se, min_steps, max_steps, record_every, eval_subset, engine:
            passed to :func:`stationary_loss` (per η; chain seeds differ between η).
        level: confidence level of ``ci``. gtol: L-BFGS gradient tolerance. dtype: of Φ*
            and of the SGD runs (float64 by default).
        adapt, fit_pvalue, max_extensions: the ladder check of step 5.
        **stationary_options: further :func:`stationary_loss` options (n_batches,
            batch_factor, geweke_z, num_threads, ...).

    Cost: the smallest η dominates (relaxation ∝ 1/(ηh)); on problems this small K = 64
    vectorised chains cost little more per step than one. For a loss that costs O(d²) per
    example (e.g. ½(Φ − x_b)ᵀQ(Φ − x_b)), precompute Qx_b and write it as
    ½ΦᵀQΦ − Φᵀ(Qx_b) + const_b: the same function at O(d) per example.
    """
    from scipy import stats as sstats

    t0 = time.perf_counter()
    _check_problem(model, x, y, batch_size, sampling)
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if sampling == "shuffle":
        warnings.warn("heat_capacity with shuffle sampling: the batches of an epoch are "
                      "anti-correlated, so L(eta) - L* is O(eta^2) as eta -> 0 and the "
                      "factor-corrected first-order prediction does not describe the "
                      "measurement (see quadratic_excess_loss)", stacklevel=2)
    pred = predict_heat_capacity(model, loss_fn, x, y, batch_size, sampling=sampling,
                                 weight_decay=weight_decay, phi_star=phi_star, gtol=gtol,
                                 dtype=dtype)
    star, l_star, gnorm = pred.model, pred.L_star, pred.phi_star_grad_norm
    tr_sigma, mean_sq_grad, method = pred.tr_sigma, pred.mean_sq_grad, pred.per_example_method
    f, predicted = pred.noise_factor, pred.predicted
    params = _trainable(star)
    dev = next(iter(params.values())).device
    xs, ys = _cast(x.detach(), dtype, dev), _cast(y.detach(), dtype, dev)

    # 3. ladder
    if h_max is None:
        from sgdlab.probes.curvature import top_hessian_eigenvalue

        h_max = top_hessian_eigenvalue(star, loss_fn, xs, ys, iters=300, tol=1e-6,
                                       seed=seed).lambda_max + weight_decay
    if etas is None:
        if not h_max > 0:
            raise ValueError(f"h_max must be > 0 to build the eta ladder, got {h_max}")
        etas = [fr * 2.0 / h_max for fr in fractions]
    etas_a = np.asarray(sorted(float(e) for e in etas), dtype=np.float64)
    if etas_a.size < 2 or np.any(etas_a <= 0):
        raise ValueError("need at least two learning rates > 0 for the c1*eta + c2*eta^2 fit")
    phi0 = {k: v.detach() for k, v in params.items()}
    measured: dict[float, StationaryLoss] = {}

    def measure(eta: float) -> None:
        measured[eta] = stationary_loss(
            star, loss_fn, xs, ys, eta, batch_size, sampling=sampling,
            optimizer_options={"weight_decay": weight_decay} if weight_decay else None,
            objective="regularised", phi0=phi0, chains=chains,
            seed=seed * 1000 + len(measured), reference=l_star, rel_se=rel_se,
            min_steps=min_steps, max_steps=max_steps, record_every=record_every,
            eval_subset=eval_subset, engine=engine, **stationary_options)

    for eta in etas_a:
        measure(float(eta))
    used = sorted(measured)
    extensions = 0
    while True:
        ys_ = np.array([measured[e].mean - l_star for e in used])
        ses_ = np.array([measured[e].se for e in used])
        c1, c2, cov, chi2, dof = _fit_c1_c2(np.array(used), ys_, ses_)
        pval = float(sstats.chi2.sf(chi2, dof)) if dof > 0 else 1.0
        if not adapt or pval >= fit_pvalue:
            break
        if len(used) > 4:
            used = used[:-1]                 # the largest η carries the most O(η³)
        elif extensions < max_extensions:
            extensions += 1
            new_eta = used[0] / 2
            measure(new_eta)
            used = [new_eta] + used
        else:
            break

    # 4. weighted fit through the origin (on the points kept)
    inflate = chi2 / dof if dof > 0 and chi2 > dof else 1.0
    cov = cov * inflate
    q = (sstats.t.ppf(0.5 + level / 2, dof) if inflate > 1 and dof > 0
         else sstats.norm.ppf(0.5 + level / 2))
    s1, s2 = math.sqrt(max(cov[0, 0], 0.0)), math.sqrt(max(cov[1, 1], 0.0))
    ci = (c1 - q * s1, c1 + q * s1)
    ratio = c1 / predicted if predicted else math.nan
    rci = (ci[0] / predicted, ci[1] / predicted) if predicted else (math.nan, math.nan)
    all_etas = sorted(measured)
    runs = tuple(measured[e] for e in all_etas)
    return HeatCapacity(
        predicted=predicted, measured=c1, measured_se=s1, ratio=ratio, ci=ci, ratio_ci=rci,
        c2=c2, c2_se=s2, chi2=chi2, dof=dof, fit_pvalue=pval, level=level,
        etas=np.array(all_etas), losses=np.array([rr.mean - l_star for rr in runs]),
        ses=np.array([rr.se for rr in runs]), in_fit=np.array([e in used for e in all_etas]),
        steps=np.array([rr.steps for rr in runs]),
        converged=np.array([rr.converged for rr in runs]), L_star=l_star,
        phi_star_grad_norm=gnorm, tr_sigma=tr_sigma, mean_sq_grad=mean_sq_grad,
        noise_factor=f, h_max=float(h_max), batch_size=batch_size, sampling=sampling,
        weight_decay=float(weight_decay), per_example_method=method,
        phi_star={k: v.detach().clone() for k, v in params.items()}, runs=runs,
        seconds=time.perf_counter() - t0)


def _fit_c1_c2(etas: np.ndarray, y: np.ndarray, se: np.ndarray
               ) -> tuple[float, float, np.ndarray, float, int]:
    """Weighted least squares y ≈ c₁η + c₂η² (weights 1/se²): (c₁, c₂, cov, χ², dof)."""
    w = 1.0 / np.maximum(se, 1e-300) ** 2
    X = np.stack([etas, etas**2], axis=1)
    A = X.T @ (X * w[:, None])
    b = X.T @ (w * y)
    cov = np.linalg.inv(A)
    c = cov @ b
    res = y - X @ c
    chi2 = float(np.sum(w * res * res))
    return float(c[0]), float(c[1]), cov, chi2, int(etas.size - 2)
