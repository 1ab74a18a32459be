"""Synthetic data sets whose optimum is known exactly (SPEC §5).

- ``linreg``: least squares, L(Φ) = ½·mean_b (x_bᵀΦ − y_b)²; Φ* by a float64 ``lstsq``.
- ``logreg``: softmax (multinomial logistic) regression; the L2-regularised optimum for any λ
  by :func:`logreg_optimum` (float64 L-BFGS, then Newton polishing).
- ``quadratic_deep``: DeepOBS's noisy quadratic, ℓ_b(Φ) = ½(Φ − x_b)ᵀQ(Φ − x_b) with a
  100×100 Hessian Q of eigenvalues 90 × U(0, 1) and 10 × U(30, 60), randomly rotated (seed 42),
  and x_b ~ N(0, 0.6² I); Φ* = mean_b x_b.

All optima are computed in float64 from the float32 tensors that are handed out, so they are
the optima of exactly the data the trainer sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ._core import DataError, Dataset, check_float, check_int, register, to_tensor

# --------------------------------------------------------------------------- linreg


@dataclass(frozen=True)
class LinregOptimum:
    """Exact minimiser of L(Φ) = ½·mean_b (x_bᵀw + c − y_b)² (c = 0 unless ``bias``)."""

    weight: np.ndarray  # (d,) float64
    bias: float  # 0.0 when fitted without bias
    loss: float  # L(Φ*)
    hessian: np.ndarray  # ∇²L = mean_b x̃_b x̃_bᵀ (x̃ = [x, 1] with bias), float64


def linreg_optimum(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray,
                   bias: bool = False) -> LinregOptimum:
    """Least-squares minimiser of L(Φ) = ½·mean_b (x̃_bᵀΦ − y_b)², in float64 (SPEC §5).

    Φ* solves the normal equations (X̃ᵀX̃) Φ* = X̃ᵀy (``numpy.linalg.lstsq``, minimum-norm
    if singular); L* = ½·mean (X̃Φ* − y)² and the Hessian is X̃ᵀX̃ / N.
    """
    X = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    Y = np.asarray(y.detach().cpu() if isinstance(y, torch.Tensor) else y, dtype=np.float64)
    X = X.reshape(X.shape[0], -1)
    Y = Y.reshape(-1)
    if bias:
        X = np.hstack([X, np.ones((X.shape[0], 1))])
    phi, *_ = np.linalg.lstsq(X, Y, rcond=None)
    # one step of iterative refinement on the normal equations
    H = X.T @ X / X.shape[0]
    r = X @ phi - Y
    g = X.T @ r / X.shape[0]
    phi = phi - np.linalg.lstsq(H, g, rcond=None)[0]
    r = X @ phi - Y
    loss = 0.5 * float(np.mean(r * r))
    w, c = (phi[:-1], float(phi[-1])) if bias else (phi, 0.0)
    return LinregOptimum(weight=w, bias=c, loss=loss, hessian=H)


@register("linreg")
def load_linreg(seed: int, *, dim: int = 10, n_train: int = 1000, n_test: int = 1000,
                noise: float = 0.5, condition: float = 1.0) -> Dataset:
    """Least squares: y = xᵀw* + ε, ε ~ N(0, noise²), w* ~ N(0, I/d) (SPEC §5).

    Features x ~ N(0, diag(s²)) with s_j² spaced geometrically from 1 down to 1/condition,
    so ``condition`` is the condition number of the population Hessian E xxᵀ.
    Targets have shape (N, 1). ``meta``: ``w_true``, ``phi_star`` (float64 (d,) minimiser of
    the *empirical* training loss ½·mean (xᵀΦ − y)², no bias), ``loss_star`` = L(Φ*),
    ``hessian`` = mean xxᵀ (float64), ``test_loss_at_phi_star``.
    """
    ds = "linreg"
    dim = check_int(ds, "dim", dim, lo=1, hi=100_000)
    n_train = check_int(ds, "n_train", n_train, lo=1, hi=10_000_000)
    n_test = check_int(ds, "n_test", n_test, lo=1, hi=10_000_000)
    noise = check_float(ds, "noise", noise, lo=0.0)
    condition = check_float(ds, "condition", condition, lo=1.0)
    rng = np.random.default_rng([seed, 1])
    scales = np.sqrt(np.geomspace(1.0, 1.0 / condition, dim)) if dim > 1 else np.ones(1)
    w_true = rng.standard_normal(dim) / np.sqrt(dim)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        x = (rng.standard_normal((n, dim)) * scales).astype(np.float32)
        y = (x.astype(np.float64) @ w_true + noise * rng.standard_normal(n)).astype(np.float32)
        return x, y[:, None]

    xtr, ytr = draw(n_train)
    xte, yte = draw(n_test)
    opt = linreg_optimum(xtr, ytr)
    rte = xte.astype(np.float64) @ opt.weight - yte[:, 0].astype(np.float64)
    meta = {
        "w_true": w_true,
        "feature_scales": scales,
        "noise": noise,
        "phi_star": opt.weight,
        "loss_star": opt.loss,
        "hessian": opt.hessian,
        "test_loss_at_phi_star": 0.5 * float(np.mean(rte * rte)),
        "loss": "0.5*mean((x@phi - y)**2), no bias",
    }
    return Dataset(ds, to_tensor(xtr, torch.float32), to_tensor(ytr, torch.float32),
                   to_tensor(xte, torch.float32), to_tensor(yte, torch.float32),
                   task="regression", num_classes=None, input_shape=(dim,), meta=meta)


# --------------------------------------------------------------------------- logreg


@dataclass(frozen=True)
class LogregOptimum:
    """Minimiser of the L2-regularised softmax cross-entropy (layout of ``torch.nn.Linear``)."""

    weight: np.ndarray  # (k, d) float64
    bias: np.ndarray  # (k,) float64, zeros when fitted without bias
    loss: float  # L(Φ*) including the (λ/2)‖Φ‖² term
    data_loss: float  # mean cross-entropy at Φ*, without the penalty
    grad_norm: float  # ‖∇L(Φ*)‖₂ reached
    weight_decay: float


def _softmax_ce(theta: np.ndarray, X: np.ndarray, Y1: np.ndarray, k: int, lam: float,
                ) -> tuple[float, np.ndarray, np.ndarray]:
    """Value, gradient and probabilities of mean CE + (λ/2)‖θ‖², θ = vec of (k, D)."""
    W = theta.reshape(k, -1)
    Z = X @ W.T
    Z = Z - Z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(Z).sum(axis=1))
    P = np.exp(Z - lse[:, None])
    ce = float(np.mean(lse - (Z * Y1).sum(axis=1)))
    grad = ((P - Y1).T @ X) / X.shape[0] + lam * W
    return ce + 0.5 * lam * float(theta @ theta), grad.reshape(-1), P


def logreg_optimum(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray,
                   num_classes: int, weight_decay: float, bias: bool = True,
                   gtol: float = 1e-10, max_newton_params: int = 6000) -> LogregOptimum:
    """Minimise L(W, b) = mean_b CE(softmax(W x_b + b), y_b) + (λ/2)(‖W‖² + ‖b‖²) in float64.

    The penalty covers every parameter, as coupled weight decay does (SPEC §2). For λ > 0, L
    is strictly convex with a unique minimiser; it is found with scipy's L-BFGS-B and then
    polished by Newton steps (exact Hessian mean_b (diag p_b − p_b p_bᵀ) ⊗ x̃_b x̃_bᵀ + λI,
    least-squares solves) until ‖∇L‖ <= ``gtol``, when there are at most
    ``max_newton_params`` parameters. For λ = 0 the minimiser is defined only up to a common
    shift of the class scores and exists only for non-separable data.
    """
    from scipy.optimize import minimize

    X = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    X = X.reshape(X.shape[0], -1)
    yl = np.asarray(y.detach().cpu() if isinstance(y, torch.Tensor) else y).astype(np.int64)
    yl = yl.reshape(-1)
    k = check_int("logreg_optimum", "num_classes", num_classes, lo=2)
    lam = check_float("logreg_optimum", "weight_decay", weight_decay, lo=0.0)
    if yl.min() < 0 or yl.max() >= k:
        raise DataError(f"logreg_optimum: labels must be in [0, {k - 1}]")
    d = X.shape[1]
    if bias:
        X = np.hstack([X, np.ones((X.shape[0], 1))])
    D = X.shape[1]
    Y1 = np.eye(k)[yl]

    def fg(t: np.ndarray) -> tuple[float, np.ndarray]:
        f, g, _ = _softmax_ce(t, X, Y1, k, lam)
        return f, g

    newton = k * D <= max_newton_params
    # with Newton polishing to follow, L-BFGS only needs to get into the quadratic region
    lbfgs_gtol = max(gtol, 1e-6) if newton else gtol
    res = minimize(fg, np.zeros(k * D), jac=True, method="L-BFGS-B",
                   options={"maxiter": 20_000, "maxcor": 30, "gtol": lbfgs_gtol,
                            "ftol": 1e-30})
    theta = res.x
    f, g, P = _softmax_ce(theta, X, Y1, k, lam)
    if newton:
        n = X.shape[0]
        for _ in range(30):
            if np.linalg.norm(g) <= gtol:
                break
            H = np.empty((k, D, k, D))
            for a in range(k):
                for b in range(a, k):
                    w = P[:, a] * ((a == b) - P[:, b])
                    block = (X * w[:, None]).T @ X / n
                    H[a, :, b, :] = block
                    H[b, :, a, :] = block.T
            H = H.reshape(k * D, k * D) + lam * np.eye(k * D)
            if lam > 0:
                step = np.linalg.solve(H, g)
            else:  # singular along the common shift of the class scores
                step = np.linalg.lstsq(H, g, rcond=None)[0]
            t_new = theta - step
            f_new, g_new, P_new = _softmax_ce(t_new, X, Y1, k, lam)
            if not (f_new <= f + 1e-12 * max(1.0, abs(f))):
                break
            theta, f, g, P = t_new, f_new, g_new, P_new
    W = theta.reshape(k, D)
    Wd, b = (W[:, :d], W[:, d]) if bias else (W, np.zeros(k))
    data_loss = f - 0.5 * lam * float(theta @ theta)
    return LogregOptimum(weight=Wd.copy(), bias=b.copy(), loss=float(f),
                         data_loss=float(data_loss), grad_norm=float(np.linalg.norm(g)),
                         weight_decay=lam)


@register("logreg")
def load_logreg(seed: int, *, dim: int = 20, num_classes: int = 2, n_train: int = 1000,
                n_test: int = 1000, signal: float = 2.0) -> Dataset:
    """Softmax-regression data: x ~ N(0, I_d), y ~ Categorical(softmax(W* x)) (SPEC §5).

    Each row of W* ∈ R^{k×d} is drawn uniformly on the sphere of radius ``signal``, so each
    class score has standard deviation ``signal``; labels are *sampled*, so the data are not
    separable and the unregularised optimum is finite. ``meta``: ``w_true`` (k, d),
    ``bayes_accuracy`` on the test set (the accuracy of W*). The L2-regularised optimum for a
    given λ: ``logreg_optimum(d.x_train, d.y_train, d.num_classes, λ)``.
    """
    ds = "logreg"
    dim = check_int(ds, "dim", dim, lo=1, hi=100_000)
    k = check_int(ds, "num_classes", num_classes, lo=2, hi=1000)
    n_train = check_int(ds, "n_train", n_train, lo=1, hi=10_000_000)
    n_test = check_int(ds, "n_test", n_test, lo=1, hi=10_000_000)
    signal = check_float(ds, "signal", signal, lo=0.0)
    rng = np.random.default_rng([seed, 2])
    W = rng.standard_normal((k, dim))
    W *= signal / np.linalg.norm(W, axis=1, keepdims=True)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.standard_normal((n, dim)).astype(np.float32)
        z = x.astype(np.float64) @ W.T
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        u = rng.random(n)
        y = (p.cumsum(axis=1) < u[:, None]).sum(axis=1)
        return x, np.minimum(y, k - 1).astype(np.int64)

    xtr, ytr = draw(n_train)
    xte, yte = draw(n_test)
    bayes = float(np.mean((xte.astype(np.float64) @ W.T).argmax(axis=1) == yte))
    xt_t, yt_t = to_tensor(xtr, torch.float32), to_tensor(ytr, torch.int64)
    meta = {"w_true": W, "signal": signal, "bayes_accuracy": bayes,
            "loss": "mean cross-entropy of softmax(W x + b)"}
    return Dataset(ds, xt_t, yt_t, to_tensor(xte, torch.float32), to_tensor(yte, torch.int64),
                   task="classification", num_classes=k, input_shape=(dim,), meta=meta)


# --------------------------------------------------------------------------- quadratic_deep


def random_rotation(dim: int, rng: np.random.RandomState) -> np.ndarray:
    """A Haar-random rotation R ∈ SO(dim) by the subgroup algorithm of Diaconis & Shahshahani
    (1987), drawing from ``rng`` in the same order as DeepOBS's ``quadratic_deep``.

    Start with a random 2-D rotation; for each d = 2 … dim−1 embed R as diag(1, R) and apply
    the Householder reflection that maps e₁ to a uniform unit vector v ∈ S^d. The result is
    negated, as in DeepOBS.
    """
    t = 2.0 * np.pi * rng.uniform()
    R = np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])
    for d in range(2, dim):
        v = rng.normal(size=(d + 1, 1))
        v = v / np.sqrt((v.T @ v).item())
        e = np.zeros((d + 1, 1))
        e[0, 0] = 1.0
        h = (e - v) / np.sqrt(((e - v).T @ (e - v)).item())
        M = np.zeros((d + 1, d + 1))
        M[0, 0] = 1.0
        M[1:, 1:] = R
        R = M - 2.0 * np.outer(h, h.T @ M)
    return -R


def quadratic_deep_hessian() -> tuple[np.ndarray, np.ndarray]:
    """DeepOBS's fixed 100×100 Hessian Q = Rᵀ diag(λ) R and its eigenvalues λ (float64).

    From ``numpy.random.RandomState(42)``: λ = 90 draws of U(0, 1) then 10 of U(30, 60),
    then R = :func:`random_rotation` (100). Fixed properties of the problem (SPEC §5).
    """
    rng = np.random.RandomState(42)
    eig = np.concatenate([rng.uniform(0.0, 1.0, 90), rng.uniform(30.0, 60.0, 10)])
    R = random_rotation(100, rng)
    Q = R.T @ np.diag(eig) @ R
    return 0.5 * (Q + Q.T), eig


@register("quadratic_deep")
def load_quadratic_deep(seed: int, *, data_seed: int = 42, n_train: int = 1000,
                        n_test: int = 1000, noise_level: float = 0.6) -> Dataset:
    """DeepOBS ``quadratic_deep`` (SPEC §5): ℓ_b(Φ) = ½(Φ − x_b)ᵀQ(Φ − x_b), Φ ∈ R^100.

    Q from :func:`quadratic_deep_hessian`. Training points x_b ~ N(0, noise_level² I) from
    ``RandomState(data_seed)``, test points from ``RandomState(data_seed + 1)``, cast to
    float32; the defaults (42, 43, 1000 points, 0.6) are DeepOBS's, so ``seed`` does not
    change this problem. The training loss is L(Φ) = ½(Φ − x̄)ᵀQ(Φ − x̄) + ½ tr(Q S), with
    x̄ the mean and S the (1/N) covariance of the training points, hence
    Φ* = x̄ and L* = ½ tr(Q S), computed exactly in float64.

    ``y_*`` are empty (N, 0) tensors. ``meta``: ``hessian`` (Q), ``eigenvalues``,
    ``phi_star``, ``loss_star``, ``phi_init`` (DeepOBS starts at Φ = 1), ``test_loss_at_phi_star``.
    """
    ds = "quadratic_deep"
    data_seed = check_int(ds, "data_seed", data_seed, lo=0, hi=2**32 - 2)
    n_train = check_int(ds, "n_train", n_train, lo=1, hi=10_000_000)
    n_test = check_int(ds, "n_test", n_test, lo=1, hi=10_000_000)
    noise_level = check_float(ds, "noise_level", noise_level, lo=0.0)
    dim = 100
    Q, eig = quadratic_deep_hessian()
    xtr = np.float32(np.random.RandomState(data_seed).normal(0.0, noise_level, (n_train, dim)))
    xte = np.float32(np.random.RandomState(data_seed + 1).normal(0.0, noise_level,
                                                                 (n_test, dim)))
    X = xtr.astype(np.float64)
    phi_star = X.mean(axis=0)
    C = X - phi_star
    loss_star = 0.5 * float(np.einsum("ni,ij,nj->", C, Q, C) / X.shape[0])
    Ct = xte.astype(np.float64) - phi_star
    test_loss = 0.5 * float(np.einsum("ni,ij,nj->", Ct, Q, Ct) / Ct.shape[0])
    meta = {
        "hessian": Q,
        "eigenvalues": np.sort(eig),
        "phi_star": phi_star,
        "loss_star": loss_star,
        "test_loss_at_phi_star": test_loss,
        "phi_init": np.ones(dim),
        "loss": "0.5*(phi - x)^T Q (phi - x) per example",
    }
    empty = torch.zeros
    return Dataset(ds, to_tensor(xtr, torch.float32), empty(n_train, 0),
                   to_tensor(xte, torch.float32), empty(n_test, 0), task="quadratic",
                   num_classes=None, input_shape=(dim,), meta=meta)


def quadratic_loss(phi: torch.Tensor, x: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """Per-example losses ½(Φ − x_b)ᵀQ(Φ − x_b), shape (B,), for the ``quadratic_deep`` task."""
    diff = phi.unsqueeze(0) - x
    return 0.5 * ((diff @ Q) * diff).sum(dim=1)
