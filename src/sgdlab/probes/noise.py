"""Gradient noise scale from per-example statistics, and from two batch sizes (SPEC §3).

With per-example gradients g_b of a batch of B examples and ĝ = mean_b g_b:

    tr Σ  ≈ B/(B − 1) · (mean_b ‖g_b‖² − ‖ĝ‖²)          (unbiased)
    ‖G‖² ≈ ‖ĝ‖² − tr Σ / B                               (unbiased; E‖ĝ‖² = ‖G‖² + tr Σ/B)
    B_simple = tr Σ / ‖G‖²                               (McCandlish et al. 2018)
    B*[c] = 16 σ²[c] / G[c]²  per coordinate             (the notes' optimal batch, SPEC §2.6)
    B_CABS = η tr Σ / L                                   (Balles et al. 2017)

Without per-example gradients, two batch sizes B_s < B_b give unbiased

    ‖G‖² ≈ (B_b‖ĝ_b‖² − B_s‖ĝ_s‖²)/(B_b − B_s),   tr Σ ≈ (‖ĝ_s‖² − ‖ĝ_b‖²)/(1/B_s − 1/B_b),

whose ratio is noisy: :class:`TwoBatchEstimator` smooths numerator and denominator
separately before dividing. Under data parallelism the per-rank and all-reduced gradients
are the two batch sizes at no extra backward.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


@dataclass(frozen=True)
class NoiseScale:
    """Result of :func:`noise_scale` (all from one batch of ``batch_size`` examples).

    ``g_norm_sq`` is the unbiased ‖G‖² (may be negative when the signal is below the noise:
    then ``b_simple`` is inf); ``g_hat_norm_sq`` the raw ‖ĝ‖²; ``per_layer`` maps parameter
    names to {tr_sigma, g_norm_sq, b_simple}; ``b_star_quantiles`` summarise
    16σ²[c]/ĝ[c]² over coordinates (ĝ² in the denominator, the plug-in estimate snr_sgd uses);
    ``b_cabs`` is η tr Σ / L when ``lr`` was given.
    """

    batch_size: int
    loss: float
    tr_sigma: float
    g_norm_sq: float
    g_hat_norm_sq: float
    b_simple: float
    per_layer: dict[str, dict[str, float]] = field(default_factory=dict)
    b_star_quantiles: dict[str, float] = field(default_factory=dict)
    b_cabs: float | None = None

    def as_record(self) -> dict[str, float]:
        """Flat numbers for metrics.jsonl."""
        rec = {"batch_size": self.batch_size, "loss": self.loss, "tr_sigma": self.tr_sigma,
               "g_norm_sq": self.g_norm_sq, "g_hat_norm_sq": self.g_hat_norm_sq,
               "b_simple": self.b_simple}
        rec.update({f"b_star_q{int(q * 100)}": v for q, v in
                    zip(QUANTILES, self.b_star_quantiles.values(), strict=False)})
        if self.b_cabs is not None:
            rec["b_cabs"] = self.b_cabs
        return rec


def _quantiles(values: np.ndarray, quantiles: Sequence[float]) -> list[float]:
    """Quantiles with linear interpolation between order statistics (numpy's and torch's
    default), from one vectorised sort (faster than either library's quantile here)."""
    v = np.sort(values)
    out = []
    for q in quantiles:
        pos = q * (v.size - 1)
        lo = int(math.floor(pos))
        hi = min(lo + 1, v.size - 1)
        out.append(float(v[lo] + (pos - lo) * (v[hi] - v[lo])))
    return out


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.inf


def noise_scale_from_stats(sq_norm_sums: dict[str, float | torch.Tensor],
                           grads: dict[str, torch.Tensor] | None, batch_size: int,
                           loss: float = math.nan, lr: float | None = None,
                           sum_sq: dict[str, torch.Tensor] | None = None,
                           quantiles: Sequence[float] = QUANTILES, *,
                           grad_sq_norms: dict[str, float] | None = None) -> NoiseScale:
    """The noise-scale estimator from per-example statistics of one batch (SPEC §3).

    Inputs, per parameter name: ``sq_norm_sums[name]`` = Σ_b ‖g_b‖² restricted to that
    parameter (a float or 0-d tensor), ``grads[name]`` = ĝ = (1/B) Σ_b g_b (the mean
    gradient), and optionally ``sum_sq[name]`` = Σ_b g_b² per coordinate (for the B*
    quantiles). With B = ``batch_size``::

        tr Σ_p  = B/(B − 1) · (Σ_b‖g_b,p‖²/B − ‖ĝ_p‖²)       (unbiased, per parameter)
        ‖G_p‖² = ‖ĝ_p‖² − tr Σ_p / B                           (unbiased)
        B_simple = Σ_p tr Σ_p / Σ_p ‖G_p‖²,   B*[c] = 16 σ²[c]/ĝ[c]²,   B_CABS = η tr Σ / loss

    where σ²[c] = B/(B − 1)(Σ_b g_b[c]²/B − ĝ[c]²). Parameters absent from ``sq_norm_sums``
    are skipped. The sums are taken in float64. ``grad_sq_norms`` ({name: ‖ĝ_p‖²}) may be
    given instead of ``grads`` when ``sum_sq`` is None (no B* quantiles).
    """
    bsz = int(batch_size)
    if bsz < 2:
        raise ValueError(f"noise_scale needs a batch of at least 2 examples, got {bsz}")
    tr_total = g_hat_total = 0.0
    per_layer: dict[str, dict[str, float]] = {}
    b_star: list[torch.Tensor] = []
    if grad_sq_norms is not None:
        names = [n for n in grad_sq_norms if n in sq_norm_sums]
        norms = [float(grad_sq_norms[n]) for n in names]
    elif grads is not None:
        names = [n for n in grads if n in sq_norm_sums]
        # ‖ĝ_p‖² of every parameter from one multi-tensor norm and one host sync
        norms = (torch.stack(torch._foreach_norm([grads[n].detach() for n in names]))
                 .double().square().tolist() if names else [])
    else:
        raise ValueError("noise_scale_from_stats needs grads or grad_sq_norms")
    if sum_sq is not None and grads is None:
        raise ValueError("the B* quantiles (sum_sq) need grads")
    for name, g2 in zip(names, norms, strict=True):
        tr = bsz / (bsz - 1) * (float(sq_norm_sums[name]) / bsz - g2)
        per_layer[name] = {"tr_sigma": tr, "g_norm_sq": g2 - tr / bsz,
                           "b_simple": _ratio(tr, g2 - tr / bsz)}
        tr_total += tr
        g_hat_total += g2
        if sum_sq is not None and name in sum_sq:
            gh = grads[name].detach().double()
            g_sq = gh * gh
            var = sum_sq[name].double().div(bsz).sub_(g_sq).mul_(bsz / (bsz - 1))  # σ²[c]
            b_star.append(var.clamp_(min=0).mul_(16).div_(g_sq).reshape(-1))
    g_unbiased = g_hat_total - tr_total / bsz
    qs = {}
    if b_star:
        allb = torch.cat(b_star).cpu().numpy()
        finite = allb[np.isfinite(allb)]
        if finite.size:
            vals = _quantiles(finite, quantiles)
            qs = {f"q{int(q * 100)}": float(v) for q, v in zip(quantiles, vals, strict=True)}
    cabs = None if lr is None or not math.isfinite(loss) else _ratio(lr * tr_total, loss)
    return NoiseScale(bsz, loss, tr_total, g_unbiased, g_hat_total,
                      _ratio(tr_total, g_unbiased), per_layer, qs, cabs)


def noise_scale(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor,
                lr: float | None = None, quantiles: Sequence[float] = QUANTILES) -> NoiseScale:
    """Gradient noise scale of the batch (x, y); ``loss_fn`` returns per-example losses.

    One pass for Σ_b g_b² per coordinate (:func:`sgdlab.probes.per_example.per_example_sum_sq`)
    and one backward for ĝ, then :func:`noise_scale_from_stats` (SPEC §3). Parameters'
    ``.grad`` are left as they were.
    """
    from sgdlab.probes.per_example import per_example_sum_sq

    bsz = x.shape[0]
    if bsz < 2:
        raise ValueError(f"noise_scale needs a batch of at least 2 examples, got {bsz}")
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    sum_sq = per_example_sum_sq(model, loss_fn, x, y)
    loss = loss_fn(model(x), y).mean()
    grads = torch.autograd.grad(loss, list(named.values()), allow_unused=True)
    ghat = {n: torch.zeros_like(p) if g is None else g.detach()
            for (n, p), g in zip(named.items(), grads, strict=True)}
    sums = {n: float(s.double().sum()) for n, s in sum_sq.items()}
    return noise_scale_from_stats(sums, ghat, bsz, float(loss.detach()), lr, sum_sq, quantiles)


def two_batch_estimates(g_small_sq: float, g_big_sq: float, b_small: float,
                        b_big: float) -> tuple[float, float]:
    """Unbiased (‖G‖², tr Σ) from ‖ĝ‖² at two batch sizes b_small < b_big (SPEC §3)."""
    if not 0 < b_small < b_big:
        raise ValueError(f"need 0 < b_small < b_big, got {b_small} and {b_big}")
    g2 = (b_big * g_big_sq - b_small * g_small_sq) / (b_big - b_small)
    tr = (g_small_sq - g_big_sq) / (1 / b_small - 1 / b_big)
    return g2, tr


class SmoothedNoiseScale:
    """B_simple over a window of batches: exponential moving averages (weight 1 − decay) of
    the per-batch unbiased tr Σ and ‖G‖², bias-corrected for their start at zero, and their
    ratio (SPEC §3; McCandlish et al. 2018, appendix A, smooth numerator and denominator
    separately). One batch's ‖G‖² estimate is often ≤ 0 where the signal is small (its
    B_simple is then undefined); the smoothed denominator is far less often.

    State: ``decay``, ``g2``, ``tr``, ``weight`` (see :meth:`state_dict`)."""

    def __init__(self, decay: float = 0.9) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.g2 = self.tr = 0.0
        self.weight = 0.0

    def add(self, tr_sigma: float, g_norm_sq: float) -> float:
        """Add one batch's unbiased (tr Σ, ‖G‖²); returns the smoothed B_simple."""
        d = self.decay
        self.g2 = d * self.g2 + (1 - d) * g_norm_sq
        self.tr = d * self.tr + (1 - d) * tr_sigma
        self.weight = d * self.weight + (1 - d)
        return self.b_simple

    @property
    def b_simple(self) -> float:
        """Smoothed tr Σ / ‖G‖² (inf while the smoothed ‖G‖² ≤ 0)."""
        return _ratio(self.tr, self.g2)

    @property
    def g_norm_sq(self) -> float:
        """Smoothed unbiased ‖G‖² (bias-corrected for the EMA's start at zero)."""
        return self.g2 / self.weight if self.weight else 0.0

    @property
    def tr_sigma(self) -> float:
        """Smoothed unbiased tr Σ (bias-corrected)."""
        return self.tr / self.weight if self.weight else 0.0

    def state_dict(self) -> dict[str, float]:
        """Everything a resumed run needs to continue the averages exactly."""
        return {"decay": self.decay, "g2": self.g2, "tr": self.tr, "weight": self.weight}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restore :meth:`state_dict`."""
        self.decay, self.g2, self.tr, self.weight = (float(state["decay"]), float(state["g2"]),
                                                     float(state["tr"]),
                                                     float(state["weight"]))


class TwoBatchEstimator(SmoothedNoiseScale):
    """B_simple from pairs of squared batch-gradient norms, numerator and denominator
    smoothed separately with an exponential moving average of weight ``1 − decay`` (SPEC §3;
    McCandlish et al. 2018, appendix A)."""

    def __init__(self, decay: float = 0.95) -> None:
        super().__init__(decay)

    def update(self, g_small_sq: float, g_big_sq: float, b_small: float,
               b_big: float) -> float:
        """Add one measurement; returns the smoothed B_simple (bias-corrected EMA)."""
        g2, tr = two_batch_estimates(g_small_sq, g_big_sq, b_small, b_big)
        return self.add(tr, g2)


@dataclass(frozen=True)
class WindowEstimate:
    """What :meth:`WindowedNoiseScale.estimate` returns."""

    tr_sigma: float
    g_norm_sq: float
    b_simple: float
    batches: int


class WindowedNoiseScale:
    """B_simple over a window of the last ``window`` consecutive batches (SPEC §3).

    Each batch i of the window contributes its unbiased per-batch estimates (tr Σ_i, ‖G‖²_i)
    (:func:`noise_scale_from_stats`); the window's are their means::

        tr Σ_w = (1/n) Σ_i tr Σ_i,   ‖G‖²_w = (1/n) Σ_i ‖G‖²_i,   B_simple,w = tr Σ_w / ‖G‖²_w

    over the n ≤ k batches of steps t − k + 1 … t that were measured. Each mean is unbiased
    (a mean of unbiased estimates) with ~1/n of one batch's variance, so the denominator is
    far less often ≤ 0 than a single batch's; where it still is, ``b_simple`` is inf
    (undefined; the instrument writes ``None``). Equal weights: the batches of a run have one
    size. State: the window's entries (:meth:`state_dict`)."""

    def __init__(self, window: int) -> None:
        if int(window) < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = int(window)
        self.entries: list[tuple[int, float, float, int]] = []

    def add(self, step: int, tr_sigma: float, g_norm_sq: float, batch_size: int) -> None:
        """One batch's unbiased estimates at ``step`` (entries older than the window go)."""
        self.entries.append((int(step), float(tr_sigma), float(g_norm_sq), int(batch_size)))
        self.entries = [e for e in self.entries if e[0] > step - self.window]

    def estimate(self, step: int) -> WindowEstimate:
        """The window ending at ``step``: means of the entries of steps step − k + 1 … step."""
        inside = [e for e in self.entries if step - self.window < e[0] <= step]
        if not inside:
            return WindowEstimate(math.nan, math.nan, math.nan, 0)
        n = len(inside)
        tr = sum(e[1] for e in inside) / n
        g2 = sum(e[2] for e in inside) / n
        return WindowEstimate(tr, g2, _ratio(tr, g2), n)

    def state_dict(self) -> dict[str, object]:
        """The window's entries, for a resumed run."""
        return {"window": self.window, "entries": [list(e) for e in self.entries]}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore :meth:`state_dict`."""
        self.window = int(state["window"])
        self.entries = [(int(a), float(b), float(c), int(d)) for a, b, c, d in state["entries"]]
