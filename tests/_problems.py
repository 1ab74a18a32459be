"""Shared test problems for the optimizer tests: a noisy quadratic with a fixed noise stream.

The gradient of L(Φ) = ½ Σ_i h_i Φ_i² at Φ is hΦ plus noise drawn from a seeded numpy stream,
so an optimizer and a float64 reference that follow the same trajectory see the same noise.
"""

from __future__ import annotations

import numpy as np
import torch

SHAPES = [(7,), (3, 4)]          # two tensors: exercises the multi-tensor paths


def curvatures(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(0.2, 2.0, size=s) for s in SHAPES]


def initial(seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=s) for s in SHAPES]


def noise_stream(steps: int, sigma: float, seed: int = 2) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [[sigma * rng.normal(size=s) for s in SHAPES] for _ in range(steps)]


def grads(phi: list[np.ndarray], h: list[np.ndarray], noise: list[np.ndarray]) -> list:
    return [hi * p + n for p, hi, n in zip(phi, h, noise, strict=True)]


def run_torch(make_opt, steps: int, sigma: float = 0.1, dtype=torch.float64,
              lr_at=None) -> list[np.ndarray]:
    """Run ``make_opt(params)`` on the noisy quadratic; return Φ after each step (float64)."""
    h = curvatures()
    params = [torch.nn.Parameter(torch.tensor(p, dtype=dtype)) for p in initial()]
    opt = make_opt(params)
    out = []
    for k, noise in enumerate(noise_stream(steps, sigma)):
        if lr_at is not None:
            for group in opt.param_groups:
                group["lr"] = lr_at(k)
        phi = [p.detach().double().numpy() for p in params]
        for p, g in zip(params, grads(phi, h, noise), strict=True):
            p.grad = torch.tensor(g, dtype=dtype)
        opt.step()
        out.append(np.concatenate([p.detach().double().numpy().ravel() for p in params]))
    return out


def run_reference(step_fn, steps: int, sigma: float = 0.1, lr_at=None) -> list[np.ndarray]:
    """Run a float64 numpy update ``step_fn(phi, g, state, k, lr)`` (in place) the same way."""
    h = curvatures()
    phi = initial()
    state: list[dict] = [{} for _ in phi]
    out = []
    for k, noise in enumerate(noise_stream(steps, sigma)):
        g = grads(phi, h, noise)
        lr = None if lr_at is None else lr_at(k)
        for i in range(len(phi)):
            phi[i] = step_fn(phi[i], g[i], state[i], k + 1, lr)
        out.append(np.concatenate([p.ravel() for p in phi]))
    return out


def max_rel_err(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    a, b = np.stack(a), np.stack(b)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
