"""Sharpness: the top Hessian eigenvalue by Hessian-vector-product power iteration (SPEC §1,
§4.3).

H = ∇²L is never formed. Each iteration computes Hv with a double backward,
Hv = ∇(⟨∇L, v⟩), over the data in chunks, and the Rayleigh quotient λ = ⟨v, Hv⟩/⟨v, v⟩.
Power iteration converges to the eigenvalue of largest *magnitude*; near a minimum (H ⪰ 0)
that is h_max, the "L" of the notes' smoothness assumption, and full-batch gradient descent
is stable only for η < 2/h_max.

Attention: the fused scaled-dot-product-attention kernels (flash attention on CPU) have no
double backward, so every HVP runs under ``sdpa_kernel(SDPBackend.MATH)`` (:func:`math_sdpa`):
the same function, computed by the composite kernel that autograd can differentiate twice.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class TopEigenvalue:
    """Result of :func:`top_hessian_eigenvalue`.

    ``lambda_max`` is the Rayleigh quotient at the last iterate (signed), ``stability_bound``
    = 2/λ_max (inf when λ_max ≤ 0), ``iterations`` used, ``converged`` when the relative
    change fell below ``tol``, ``vector`` the unit eigenvector estimate (flattened).
    """

    lambda_max: float
    stability_bound: float
    iterations: int
    converged: bool
    vector: torch.Tensor


def math_sdpa():
    """Context manager forcing the math backend of ``scaled_dot_product_attention`` (the only
    one with a double backward on every device); a no-op context where torch lacks it."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - old torch
        import contextlib
        return contextlib.nullcontext()
    return sdpa_kernel(SDPBackend.MATH)


def _mean_loss(loss_fn: Callable, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    loss = loss_fn(out, y)
    return loss.mean() if loss.dim() > 0 else loss


def hessian_vector_product(model: nn.Module, loss_fn: Callable, x: torch.Tensor,
                           y: torch.Tensor, vecs: list[torch.Tensor],
                           chunk_size: int = 4096) -> list[torch.Tensor]:
    """Hv for the mean loss L = (1/N) Σ_b ℓ_b over (x, y), by double backward in chunks.

    ``loss_fn(output, y)`` may return per-example losses (averaged here) or their mean.
    ``vecs`` has one tensor per trainable parameter, in ``model.parameters()`` order.
    Runs under :func:`math_sdpa` (attention models: a double backward exists).
    """
    with math_sdpa():
        return _hvp(model, loss_fn, x, y, vecs, chunk_size)


def _hvp(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor,
         vecs: list[torch.Tensor], chunk_size: int) -> list[torch.Tensor]:
    params = [p for p in model.parameters() if p.requires_grad]
    n = x.shape[0]
    out = [torch.zeros_like(p) for p in params]
    for start in range(0, n, chunk_size):
        xb, yb = x[start:start + chunk_size], y[start:start + chunk_size]
        weight = xb.shape[0] / n
        loss = _mean_loss(loss_fn, model(xb), yb)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        dot = sum((g * v).sum() for g, v in zip(grads, vecs, strict=True))
        hv = torch.autograd.grad(dot, params)
        for acc, h in zip(out, hv, strict=True):
            acc.add_(h.detach(), alpha=weight)
    return out


def top_hessian_eigenvalue(model: nn.Module, loss_fn: Callable, x: torch.Tensor,
                           y: torch.Tensor, iters: int = 100, tol: float = 1e-4,
                           seed: int = 0, chunk_size: int = 4096) -> TopEigenvalue:
    """Largest-magnitude eigenvalue of the Hessian of the mean loss over (x, y).

    Power iteration v ← Hv/‖Hv‖ from a seeded Gaussian start, stopping when
    |λ_k − λ_{k−1}| ≤ tol·|λ_k| or after ``iters`` iterations. Models in training mode with
    BatchNorm use batch statistics of each chunk; put the model in eval mode for the
    Hessian of the deployed function. The model's parameters and gradients are untouched.
    """
    if iters < 1:
        raise ValueError(f"iters must be an integer >= 1, got {iters}")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    params = [p for p in model.parameters() if p.requires_grad]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    v = [torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) for p in params]
    norm = math.sqrt(sum(float((t * t).sum()) for t in v))
    v = [t / norm for t in v]
    lam, prev, converged, used = 0.0, None, False, 0
    for k in range(1, iters + 1):
        used = k
        hv = hessian_vector_product(model, loss_fn, x, y, v, chunk_size)
        lam = sum(float((a * b).sum()) for a, b in zip(v, hv, strict=True))
        norm = math.sqrt(sum(float((t * t).sum()) for t in hv))
        if norm == 0.0:
            converged = True
            break
        v = [t / norm for t in hv]
        if prev is not None and abs(lam - prev) <= tol * abs(lam):
            converged = True
            break
        prev = lam
    bound = 2.0 / lam if lam > 0 else math.inf
    return TopEigenvalue(lam, bound, used, converged, torch.cat([t.reshape(-1) for t in v]))
