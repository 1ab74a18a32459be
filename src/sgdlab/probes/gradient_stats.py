"""Cockpit's cheap quantities: distance from initialisation, update size, gradient norms, the
norm / inner-product / orthogonality tests, mean GSNR and histograms (Schneider, Dangel &
Hennig 2021, "Cockpit"; Byrd et al. 2012; Bollapragada, Byrd & Nocedal 2018; Liu et al. 2020).

Notation: a batch of B examples with per-example gradients g_b = ∇ℓ_b (of the example's own
loss), the mini-batch gradient ĝ = (1/B) Σ_b g_b, and the Gram matrix of the per-example
gradients K[a, b] = ⟨g_a, g_b⟩ (from the user's backward through
:class:`~sgdlab.probes.per_example.PerExampleStats` with ``gram=True``). In terms of K,

    ‖g_b‖² = K[b, b],   ⟨g_b, ĝ⟩ = (K 1)_b / B,   ‖ĝ‖² = 1ᵀ K 1 / B².

The three tests (each the largest constant for which the test passes, as Cockpit reports
them; a value ≤ 1, or below the test's θ / ν, says the batch is large enough):

    norm test (Byrd 2012)          θ_max = √( Σ_b ‖g_b − ĝ‖² / ((B − 1)·B·‖ĝ‖²) )
    inner product (Bollapragada)   θ_max = √( Σ_b (⟨g_b, ĝ⟩ − ‖ĝ‖²)² / ((B − 1)·B·‖ĝ‖⁴) )
    orthogonality (Bollapragada)   ν_max = √( Σ_b ‖g_b − (⟨g_b, ĝ⟩/‖ĝ‖²) ĝ‖² / ((B − 1)·B·‖ĝ‖²) )

with the sums expanded as Σ_b‖g_b − ĝ‖² = Σ_b ‖g_b‖² − B‖ĝ‖², Σ_b (⟨g_b, ĝ⟩ − ‖ĝ‖²)² =
Σ_b ⟨g_b, ĝ⟩² − B‖ĝ‖⁴ and Σ_b ‖g_b^⊥‖² = Σ_b ‖g_b‖² − Σ_b ⟨g_b, ĝ⟩²/‖ĝ‖² (these are Cockpit's
``NormTest``, ``InnerTest`` and ``OrthoTest`` written for g_b instead of BackPACK's g_b/B).
Where ‖ĝ‖² ≤ TINY · (1/B) Σ_b ‖g_b‖² (TINY = 1e-10: ĝ is at the roundoff level of the
per-example gradients, e.g. at a stationary point, and the tests would be ≳ 1e5/√B of
roundoff) they are undefined: ``nan`` here (an instrument writes ``None``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

__all__ = [
    "distance_from", "grad_norms", "histogram", "inner_test", "mean_gsnr", "norm_test",
    "ortho_test", "update_size",
]


def _per_param_distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]
                        ) -> dict[str, float]:
    names = [n for n in a if n in b]
    if not names:
        return {}
    diffs = [(a[n].detach() - b[n].detach()).double() for n in names]
    norms = torch.stack(torch._foreach_norm(diffs)).tolist()
    return dict(zip(names, norms, strict=True))


def distance_from(model: nn.Module, reference: dict[str, torch.Tensor]) -> dict[str, float]:
    """‖θ_p − θ_p^ref‖₂ per parameter name (Cockpit's ``Distance`` when ``reference`` holds
    the parameters at initialisation), and ``"total"`` = √(Σ_p ‖θ_p − θ_p^ref‖²)."""
    out = _per_param_distance(dict(model.named_parameters()), reference)
    out["total"] = math.sqrt(sum(v * v for v in out.values()))
    return out


def update_size(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]
                ) -> dict[str, float]:
    """‖θ_p^(t+1) − θ_p^(t)‖₂ per parameter name, one optimizer step (Cockpit's
    ``UpdateSize``), and ``"total"`` over all parameters."""
    out = _per_param_distance(after, before)
    out["total"] = math.sqrt(sum(v * v for v in out.values()))
    return out


def grad_norms(grads: dict[str, torch.Tensor]) -> dict[str, float]:
    """‖ĝ_p‖₂ per parameter name (Cockpit's ``GradNorm``) and ``"total"`` = ‖ĝ‖₂."""
    names = list(grads)
    norms = (torch.stack(torch._foreach_norm([grads[n].detach().double() for n in names]))
             .tolist() if names else [])
    out = dict(zip(names, norms, strict=True))
    out["total"] = math.sqrt(sum(v * v for v in norms))
    return out


def _check_gram(gram: torch.Tensor) -> tuple[torch.Tensor, int]:
    if gram.dim() != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"gram must be a square (B, B) matrix, got {tuple(gram.shape)}")
    bsz = int(gram.shape[0])
    if bsz < 2:
        raise ValueError(f"the gradient tests need a batch of at least 2 examples, got {bsz}")
    return gram.detach().double(), bsz


#: ‖ĝ‖² at or below TINY times the mean ‖g_b‖² is roundoff: the tests are undefined there.
TINY = 1e-10


def _vanishing(g_hat_sq: float, sq_norm_sum: float, bsz: int) -> bool:
    return not g_hat_sq > TINY * max(sq_norm_sum, 0.0) / bsz


def _safe_sqrt(num: float, den: float) -> float:
    """√(num/den): nan where den ≤ 0 (undefined); a negative num from roundoff counts as 0."""
    if not den > 0:
        return math.nan
    return math.sqrt(max(num, 0.0) / den)


def norm_test(sq_norm_sum: float, g_hat_sq: float, batch_size: int) -> float:
    """Norm test (Byrd et al. 2012, eq. 3.9; Cockpit's ``NormTest``) from Σ_b ‖g_b‖² and
    ‖ĝ‖²::

        θ_max = √( (Σ_b ‖g_b‖² − B ‖ĝ‖²) / ((B − 1) · B · ‖ĝ‖²) )
              = √( tr Σ̂ / (B ‖ĝ‖²) ),   tr Σ̂ the unbiased sample trace of the covariance.

    ``nan`` where ‖ĝ‖² vanishes (≤ TINY · Σ_b ‖g_b‖²/B)."""
    bsz = int(batch_size)
    if bsz < 2:
        raise ValueError(f"the norm test needs a batch of at least 2 examples, got {bsz}")
    if _vanishing(float(g_hat_sq), float(sq_norm_sum), bsz):
        return math.nan
    return _safe_sqrt(float(sq_norm_sum) - bsz * float(g_hat_sq), (bsz - 1) * bsz * g_hat_sq)


def norm_test_from_gram(gram: torch.Tensor) -> float:
    """:func:`norm_test` from the Gram matrix K: Σ_b ‖g_b‖² = tr K, ‖ĝ‖² = 1ᵀK1/B²."""
    k, bsz = _check_gram(gram)
    return norm_test(float(k.diagonal().sum()), float(k.sum()) / bsz**2, bsz)


def inner_test(gram: torch.Tensor) -> float:
    """Inner-product test (Bollapragada et al. 2018, eq. 2.6; Cockpit's ``InnerTest``) from the
    Gram matrix K of the per-example gradients::

        p_b = ⟨g_b, ĝ⟩ = (K 1)_b / B,   ‖ĝ‖² = 1ᵀ K 1 / B²,
        θ_max = √( (Σ_b p_b² − B ‖ĝ‖⁴) / ((B − 1) · B · ‖ĝ‖⁴) )

    (the sample variance of the projections p_b, whose mean is ‖ĝ‖², over B‖ĝ‖⁴).
    ``nan`` where ‖ĝ‖² vanishes (≤ TINY · tr K/B)."""
    k, bsz = _check_gram(gram)
    proj = k.sum(1) / bsz
    g2 = float(proj.sum()) / bsz
    if _vanishing(g2, float(k.diagonal().sum()), bsz):
        return math.nan
    return _safe_sqrt(float(proj.square().sum()) - bsz * g2 * g2, (bsz - 1) * bsz * g2 * g2)


def ortho_test(gram: torch.Tensor) -> float:
    """Orthogonality test (Bollapragada et al. 2018, eq. 3.3; Cockpit's ``OrthoTest``) from
    the Gram matrix K::

        ν_max = √( (Σ_b ‖g_b‖² − Σ_b p_b²/‖ĝ‖²) / ((B − 1) · B · ‖ĝ‖²) )

    with p_b = ⟨g_b, ĝ⟩: the sample variance of the components of g_b orthogonal to ĝ
    (g_b − p_b ĝ/‖ĝ‖², whose mean is 0) over B‖ĝ‖². ``nan`` where ‖ĝ‖² vanishes
    (≤ TINY · tr K/B)."""
    k, bsz = _check_gram(gram)
    proj = k.sum(1) / bsz
    g2 = float(proj.sum()) / bsz
    if _vanishing(g2, float(k.diagonal().sum()), bsz):
        return math.nan
    return _safe_sqrt(float(k.diagonal().sum()) - float(proj.square().sum()) / g2,
                      (bsz - 1) * bsz * g2)


def mean_gsnr(sum_sq: dict[str, torch.Tensor], grads: dict[str, torch.Tensor],
              batch_size: int, epsilon: float = 1e-5) -> float:
    """Mean gradient signal-to-noise ratio (Liu et al. 2020; Cockpit's ``MeanGSNR``) from
    Σ_b g_b² and ĝ per coordinate::

        GSNR[c] = ĝ[c]² / (Σ_b g_b[c]²/B − ĝ[c]² + ε),     mean over all coordinates c

    (the per-coordinate second moment minus the squared mean is the biased (1/B) sample
    variance; ε = ``epsilon`` as in Cockpit). Parameters absent from ``sum_sq`` are skipped."""
    bsz = int(batch_size)
    if bsz < 1:
        raise ValueError(f"mean_gsnr needs a batch, got {bsz}")
    total, count = 0.0, 0
    for name, s in sum_sq.items():
        g = grads[name].detach().double()
        g2 = g * g
        var = s.detach().double() / bsz - g2
        total += float((g2 / (var + epsilon)).sum())
        count += g.numel()
    return total / count if count else math.nan


def histogram(tensors: Iterable[torch.Tensor], bins: int = 64,
              limits: tuple[float, float] | None = None) -> tuple[list[int], float, float]:
    """Counts of all elements of ``tensors`` in ``bins`` equal bins over ``limits`` (default:
    [min, max] of the values; a constant tensor gets the bin [v − ½, v + ½]); values outside
    ``limits`` are clipped into the end bins. Returns (counts, low, high)."""
    flat = [t.detach().reshape(-1).double() for t in tensors if t.numel()]
    if not flat:
        return [0] * bins, 0.0, 1.0
    v = torch.cat(flat)
    if limits is None:
        lo, hi = float(v.min()), float(v.max())
    else:
        lo, hi = float(limits[0]), float(limits[1])
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    counts = torch.histc(v.clamp(lo, hi), bins=bins, min=lo, max=hi)
    return [int(c) for c in counts.tolist()], lo, hi
