"""Toy problems with known optima that several claims share (SPEC §4.2, §4.3, §4.6, §4.10):
one place for the diagonal noisy quadratic.

The diagonal noisy quadratic: N points x_b ∈ R^d, x_b ~ N(0, I) (numpy ``default_rng(seed)``),
per-example losses ℓ_b(Φ) = ½ Σ_i h_i (Φ_i − x_{b,i})². Every per-example Hessian is
H = diag(h), so the gradient noise does not depend on Φ: Φ* = mean_b x_b, the per-example
gradient variance per coordinate is σ_i² = h_i² Var_b(x_{b,i}) (population variance over the N
points) and L* = ½ Σ_i h_i Var_b(x_{b,i}); the stationary laws of SGD and momentum on it are
exact (discrete Lyapunov equations per mode, :mod:`sgdlab.probes.stationary`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["DiagonalQuadratic", "diagonal_noisy_quadratic", "identity_loss"]


class DiagonalQuadratic(nn.Module):
    """Per-example losses ℓ_b(Φ) = ½ Σ_i h_i (Φ_i − x_{b,i})² as the forward's output
    (float64; use :func:`identity_loss` as the loss function)."""

    def __init__(self, h: Any, phi: Any) -> None:
        super().__init__()
        self.register_buffer("h", torch.as_tensor(np.asarray(h, dtype=np.float64)))
        self.phi = nn.Parameter(torch.as_tensor(phi, dtype=torch.float64).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((self.phi - x).pow(2) * self.h).sum(-1)


def identity_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The per-example losses a model such as :class:`DiagonalQuadratic` returns itself."""
    return out


def diagonal_noisy_quadratic(n: int, h: Any, seed: int = 0) -> dict[str, Any]:
    """The diagonal noisy quadratic of the module docstring with curvatures ``h`` (d = len(h))
    on ``n`` points: ``x`` (n × d, numpy float64), ``h``, ``sigma2`` = h²·Var_b x_b, ``phi_star``
    = mean_b x_b and ``L_star`` = ½ Σ_i h_i Var_b x_{b,i}."""
    h = np.asarray(h, dtype=np.float64)
    x = np.random.default_rng(seed).standard_normal((n, h.size))
    var = x.var(axis=0)                   # population variance over the n points
    return {"x": x, "h": h, "sigma2": h * h * var, "phi_star": x.mean(axis=0),
            "L_star": 0.5 * float(np.sum(h * var))}
