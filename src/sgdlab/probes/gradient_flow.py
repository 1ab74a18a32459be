"""Gradient flow: the ODE dΦ/dt = −∇L(Φ) solved accurately (SPEC §4.13; seed 002).

The notes (seed 002, "gradient flow") define gradient flow by dΦ/dt = −G(Φ), G = ∇L the
*full-batch* gradient of the training loss L(Φ) = E_b ℓ_b(Φ), and obtain Φ(t) as the limit
n → ∞ of nt/η updates Φ ← Φ − (η/n)·G (or of batch updates with ĝ). Time here is measured in
units of "learning rate × steps": K steps of size ε reach ODE time t = Kε.

Along the flow the loss never rises: dL/dt = ⟨∇L, dΦ/dt⟩ = −‖∇L(Φ)‖² ≤ 0. For a quadratic
L = ½(Φ − Φ*)ᵀH(Φ − Φ*) the solution is Φ(t) = Φ* + e^{−Ht}(Φ₀ − Φ*) (the closed form the
tests compare with).

:func:`gradient_flow` integrates the ODE for a torch model and data with
``scipy.integrate.solve_ivp`` (explicit Runge–Kutta DOP853 by default; ``rtol``/``atol`` are
the solver's local error tolerances, so the global error is a small multiple of them) in
float64: the right-hand side is the full-batch gradient of the mean loss over (x, y), computed
on a float64 copy of the model by ``torch.func.functional_call`` and autograd (the model
itself is untouched). Explicit solvers need ≈ t·h_max/(a few) steps: fine for the small
networks of the claims; for a stiff problem pass ``method="LSODA"``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

__all__ = ["GradientFlow", "flatten_params", "gradient_flow", "solve_flow"]


@dataclass
class GradientFlow:
    """Result of :func:`gradient_flow`: ``times`` (m,), ``params`` (m, P) the flattened
    parameters Φ(t) in ``model.named_parameters()`` order (``names``, ``shapes``), ``loss``
    (m,) L(Φ(t)), ``grad_norm`` (m,) ‖∇L(Φ(t))‖, ``nfev`` gradient evaluations, ``success``
    and ``message`` from the solver, ``rtol``/``atol``/``method`` used."""

    times: np.ndarray
    params: np.ndarray
    loss: np.ndarray
    grad_norm: np.ndarray
    nfev: int
    success: bool
    message: str
    rtol: float
    atol: float
    method: str
    names: list[str] = field(default_factory=list)
    shapes: list[tuple[int, ...]] = field(default_factory=list)

    def state(self, i: int) -> dict[str, torch.Tensor]:
        """Φ(times[i]) as name → float64 tensor (to load into the model)."""
        out, k = {}, 0
        for n, s in zip(self.names, self.shapes, strict=True):
            size = int(np.prod(s)) if s else 1
            out[n] = torch.as_tensor(self.params[i, k:k + size]).reshape(s)
            k += size
        return out


def flatten_params(params: dict[str, torch.Tensor] | Sequence[torch.Tensor]) -> np.ndarray:
    """Parameters (a name → tensor dict in model order, or a sequence) as one float64 vector."""
    ts = params.values() if isinstance(params, dict) else params
    return np.concatenate([t.detach().double().reshape(-1).cpu().numpy() for t in ts])


def solve_flow(grad: Callable[[np.ndarray], np.ndarray], phi0: np.ndarray,
               times: Sequence[float], *, rtol: float = 1e-9, atol: float = 1e-12,
               method: str = "DOP853"):
    """Integrate dΦ/dt = −grad(Φ) from Φ(0) = phi0 and return solve_ivp's result at
    ``times`` (sorted, ≥ 0). The generic solver behind :func:`gradient_flow`."""
    from scipy.integrate import solve_ivp

    times = np.asarray(times, dtype=np.float64)
    if times.ndim != 1 or times.size == 0 or np.any(times < 0) or np.any(np.diff(times) < 0):
        raise ValueError("solve_flow: times must be a non-empty sorted sequence of t >= 0")
    if not (rtol > 0 and atol > 0):
        raise ValueError("solve_flow: rtol and atol must be > 0")
    t_end = float(times[-1])
    phi0 = np.asarray(phi0, dtype=np.float64)
    if t_end == 0:
        return SimpleNamespace(t=times, y=np.repeat(phi0[:, None], times.size, 1), nfev=0,
                               success=True, message="t = 0")
    return solve_ivp(lambda t, y: -grad(y), (0.0, t_end), phi0, method=method, t_eval=times,
                     rtol=rtol, atol=atol)


def gradient_flow(model: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor],
                                                      torch.Tensor],
                  x: torch.Tensor, y: torch.Tensor, times: Sequence[float], *,
                  rtol: float = 1e-9, atol: float = 1e-12, method: str = "DOP853",
                  start: dict[str, torch.Tensor] | None = None,
                  chunk_size: int = 8192) -> GradientFlow:
    """Solve dΦ/dt = −∇L(Φ), L the mean of ``loss_fn(model(x), y)`` over all of (x, y) (the
    full-batch training loss), from the model's parameters (or ``start``: name → tensor) to
    the ``times``; float64 throughout. ``loss_fn`` may return per-example losses (averaged)
    or their mean. Every trainable parameter moves; buffers stay fixed (eval mode: a model
    with dropout or BatchNorm is integrated as its deterministic function). Returns a
    :class:`GradientFlow`."""
    from torch.func import functional_call

    base = copy.deepcopy(model).double().eval()
    names = [n for n, p in base.named_parameters() if p.requires_grad]
    shapes = [tuple(p.shape) for n, p in base.named_parameters() if p.requires_grad]
    sizes = [int(np.prod(s)) if s else 1 for s in shapes]
    frozen = {n: p.detach() for n, p in base.named_parameters() if not p.requires_grad}
    buffers = dict(base.named_buffers())
    src = start if start is not None else dict(base.named_parameters())
    phi0 = flatten_params({n: src[n] for n in names})
    xd = x.double() if x.is_floating_point() else x
    yd = y.double() if y.is_floating_point() else y
    n_ex = x.shape[0]

    def unflat(v: torch.Tensor) -> dict[str, torch.Tensor]:
        out, k = {}, 0
        for nm, s, size in zip(names, shapes, sizes, strict=True):
            out[nm] = v[k:k + size].reshape(s)
            k += size
        return out

    def loss_and_grad(v: np.ndarray, need_grad: bool = True) -> tuple[float, np.ndarray]:
        t = torch.as_tensor(v, dtype=torch.float64).requires_grad_(need_grad)
        p = {**unflat(t), **frozen}
        total = torch.zeros((), dtype=torch.float64)
        with torch.set_grad_enabled(need_grad):
            for lo in range(0, n_ex, chunk_size):
                xb, yb = xd[lo:lo + chunk_size], yd[lo:lo + chunk_size]
                out = functional_call(base, (p, buffers), (xb,))
                ell = loss_fn(out, yb)
                ell = ell.mean() if ell.dim() > 0 else ell
                total = total + ell * (xb.shape[0] / n_ex)
        if not need_grad:
            return float(total), np.empty(0)
        (g,) = torch.autograd.grad(total, t)
        return float(total.detach()), g.numpy()

    calls = [0]

    def grad(v: np.ndarray) -> np.ndarray:
        calls[0] += 1
        return loss_and_grad(v)[1]

    sol = solve_flow(grad, phi0, times, rtol=rtol, atol=atol, method=method)
    params = np.asarray(sol.y, dtype=np.float64).T
    if params.shape[0] != len(times):                     # the solver stopped early
        pad = np.full((len(times) - params.shape[0], phi0.size), np.nan)
        params = np.vstack([params, pad])
    losses, gnorms = [], []
    for row in params:
        if np.all(np.isfinite(row)):
            val, g = loss_and_grad(row)
            losses.append(val)
            gnorms.append(float(np.linalg.norm(g)))
        else:
            losses.append(np.nan)
            gnorms.append(np.nan)
    return GradientFlow(np.asarray(times, dtype=np.float64), params, np.asarray(losses),
                        np.asarray(gnorms), int(calls[0]), bool(sol.success), str(sol.message),
                        float(rtol), float(atol), method, names, shapes)
