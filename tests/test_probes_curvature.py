"""Sharpness by HVP power iteration against closed-form and dense-Hessian spectra."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sgdlab import models
from sgdlab.probes.curvature import hessian_vector_product, top_hessian_eigenvalue

from _zoo import dense_hessian


class Quadratic(nn.Module):
    """L(Φ) = ½ ΦᵀQΦ through a dummy forward (the data are ignored)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.phi = nn.Parameter(torch.randn(d, dtype=torch.float64))

    def forward(self, x):
        return self.phi.expand(x.shape[0], -1)


def test_quadratic_with_known_spectrum():
    torch.manual_seed(0)
    d = 30
    eig = torch.cat([torch.rand(d - 1, dtype=torch.float64), torch.tensor([7.5],
                                                                         dtype=torch.float64)])
    u, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))
    q = u @ torch.diag(eig) @ u.T
    model = Quadratic(d)
    loss_fn = lambda out, y: 0.5 * torch.einsum("bi,ij,bj->b", out, q, out)
    x = torch.zeros(4, 1, dtype=torch.float64)
    res = top_hessian_eigenvalue(model, loss_fn, x, x, iters=500, tol=1e-12)
    assert res.converged
    assert res.lambda_max == pytest.approx(7.5, rel=1e-8)
    assert res.stability_bound == pytest.approx(2 / 7.5, rel=1e-8)
    top = u[:, -1]
    assert abs(float(torch.dot(res.vector, top))) == pytest.approx(1.0, abs=1e-6)


def test_least_squares_hessian_is_data_covariance():
    """L = ½ mean (xᵀΦ − y)²: H = XᵀX/N exactly; chunking must not change the answer."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(300, 8, generator=gen, dtype=torch.float64) * torch.linspace(
        0.2, 3, 8, dtype=torch.float64)
    y = torch.randn(300, 1, generator=gen, dtype=torch.float64)
    model = nn.Linear(8, 1, bias=False).double()
    loss_fn = lambda out, t: 0.5 * (out - t).pow(2).sum(-1)
    want = float(torch.linalg.eigvalsh(x.T @ x / 300)[-1])
    res = top_hessian_eigenvalue(model, loss_fn, x, y, iters=1000, tol=1e-12, chunk_size=70)
    assert res.lambda_max == pytest.approx(want, rel=1e-8)


def test_mlp_against_dense_hessian():
    torch.manual_seed(2)
    model = models.build("mlp", models.DataSpec((5,), 3), depth=1, width=6,
                         activation="tanh").double()
    x = torch.randn(40, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (40,))
    loss_fn = lambda out, t: nn.functional.cross_entropy(out, t, reduction="none")
    h = dense_hessian(model, loss_fn, x, y)
    eigs = torch.linalg.eigvalsh(h)
    want = float(eigs[eigs.abs().argmax()])
    res = top_hessian_eigenvalue(model, loss_fn, x, y, iters=2000, tol=1e-12)
    assert res.lambda_max == pytest.approx(want, rel=1e-6)
    # one HVP against the dense Hessian
    v = [torch.randn_like(p) for p in model.parameters()]
    hv = torch.cat([t.reshape(-1) for t in hessian_vector_product(model, loss_fn, x, y, v)])
    torch.testing.assert_close(hv, h @ torch.cat([t.reshape(-1) for t in v]))
    for p in model.parameters():
        assert p.grad is None


def test_bad_arguments():
    model = nn.Linear(2, 1)
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="iters must be an integer >= 1"):
        top_hessian_eigenvalue(model, lambda o, t: o.sum(-1), x, x, iters=0)
    with pytest.raises(ValueError, match="tol must be > 0"):
        top_hessian_eigenvalue(model, lambda o, t: o.sum(-1), x, x, tol=0.0)
