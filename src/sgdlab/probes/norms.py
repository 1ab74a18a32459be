"""Weight norms, effective and intrinsic learning rate of scale-invariant layers (SPEC §4.5).

For a weight w with L(cw) = L(w) (c > 0), SGD with coupled weight decay λ changes only the
direction ŵ = w/‖w‖ in a way that depends on η through the *effective* learning rate
η/‖w‖², and ‖w‖ equilibrates at

    ‖w‖⁴ = η G / (λ (2 − ηλ)),   G = E‖∇L(ŵ)‖² at unit norm,

where effective LR → √(2ηλ/G) and the angular update per step → √(2ηλ). ηλ is the
*intrinsic* learning rate. Because ∇L(w) = ∇L(ŵ)/‖w‖, G is estimated from a gradient at the
current weights as ‖∇L(w)‖²·‖w‖².
"""

from __future__ import annotations

import math

import torch
from torch import nn


def weight_norms(model: nn.Module) -> dict[str, float]:
    """‖w‖₂ of every trainable parameter tensor, by name."""
    return {name: float(p.detach().norm()) for name, p in model.named_parameters()
            if p.requires_grad}


def effective_lr(lr: float, norm: float) -> float:
    """η/‖w‖²: the step on the unit sphere of a scale-invariant weight (SPEC §4.5)."""
    return lr / norm**2 if norm > 0 else math.inf


def intrinsic_lr(lr: float, weight_decay: float) -> float:
    """ηλ, the intrinsic learning rate of Li, Lyu & Arora 2020 (SPEC §4.5)."""
    return lr * weight_decay


def equilibrium_norm4(lr: float, weight_decay: float, grad_sq_unit: float) -> float:
    """Predicted ‖w‖⁴ = ηG/(λ(2 − ηλ)) with G = E‖∇L(ŵ)‖² at unit norm (SPEC §4.5)."""
    if weight_decay <= 0:
        return math.inf
    return lr * grad_sq_unit / (weight_decay * (2 - lr * weight_decay))


def equilibrium_effective_lr(lr: float, weight_decay: float, grad_sq_unit: float) -> float:
    """Predicted equilibrium effective LR √(2ηλ/G) (SPEC §4.5, to first order in ηλ)."""
    return math.sqrt(2 * lr * weight_decay / grad_sq_unit) if grad_sq_unit > 0 else math.inf


def angular_update(before: torch.Tensor, after: torch.Tensor) -> float:
    """Angle (radians) between a weight before and after a step; → √(2ηλ) at equilibrium."""
    a, b = before.reshape(-1).double(), after.reshape(-1).double()
    cos = float(torch.dot(a, b) / (a.norm() * b.norm()))
    return math.acos(max(-1.0, min(1.0, cos)))


def scale_invariance_defect(model: nn.Module) -> dict[str, float]:
    """|⟨∇L, w⟩| / (‖∇L‖‖w‖) per parameter from the gradients in ``p.grad``.

    Exactly 0 for a scale-invariant weight (Euler's theorem for degree-0 homogeneity); use it
    to find which layers the formulas of this module apply to.
    """
    out = {}
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        g, w = p.grad.detach().reshape(-1).double(), p.detach().reshape(-1).double()
        denom = float(g.norm() * w.norm())
        out[name] = abs(float(torch.dot(g, w))) / denom if denom > 0 else 0.0
    return out


def scale_invariant_report(model: nn.Module, lr: float, weight_decay: float,
                           tol: float = 1e-4) -> dict[str, dict[str, float]]:
    """For each parameter whose gradient (in ``p.grad``) is orthogonal to it within ``tol``:
    ‖w‖, ‖w‖⁴, effective LR, G = ‖∇L‖²‖w‖², the predicted equilibrium ‖w‖⁴ and effective LR,
    and ηλ (SPEC §4.5)."""
    defects = scale_invariance_defect(model)
    report = {}
    for name, p in model.named_parameters():
        if defects.get(name, 1.0) > tol:
            continue
        norm = float(p.detach().norm())
        g_unit = float(p.grad.detach().pow(2).sum()) * norm**2
        report[name] = {
            "norm": norm,
            "norm4": norm**4,
            "effective_lr": effective_lr(lr, norm),
            "grad_sq_unit": g_unit,
            "predicted_norm4": equilibrium_norm4(lr, weight_decay, g_unit),
            "predicted_effective_lr": equilibrium_effective_lr(lr, weight_decay, g_unit),
            "intrinsic_lr": intrinsic_lr(lr, weight_decay),
        }
    return report
