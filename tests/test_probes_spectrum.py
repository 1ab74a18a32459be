"""Top-k eigenvalues (Lanczos, eigsh), Hutchinson trace and SLQ density against the dense
Hessian (torch.func.hessian, float64) on small models: a tanh MLP, an attention block, a
tied-weight model (each ≤ 2000 parameters), fixed seeds."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sgdlab import models
from sgdlab.probes.curvature import (
    HessianOperator,
    hessian_trace,
    spectral_density,
    top_eigenvalues,
    top_hessian_eigenvalue,
)

from _zoo import dense_hessian


def ce(out, t):
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), t.reshape(-1), reduction="none")


class Attention(nn.Module):
    """One self-attention block (scaled_dot_product_attention) and a linear read-out."""

    def __init__(self, d: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        h = x + self.proj(F.scaled_dot_product_attention(q, k, v, is_causal=True))
        return self.head(torch.tanh(h)).mean(1)


class Tied(nn.Module):
    """Embedding E used at the input and, transposed, as the output layer."""

    def __init__(self, vocab: int = 12, d: int = 6) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.mix = nn.Linear(d, d)

    def forward(self, tok):
        return torch.tanh(self.mix(self.emb(tok))) @ self.emb.weight.T


class Encoder(nn.Module):
    """nn.TransformerEncoderLayer (pre-norm: two LayerNorms, attention, feed-forward) and a
    read-out of the mean token: LayerNorm is where torch.func.hessian goes wrong (see
    tests/_zoo.dense_hessian), so the curvature code is checked through it too."""

    def __init__(self, d: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(d, 2, dim_feedforward=16, dropout=0.0,
                                                batch_first=True, norm_first=True)
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        return self.head(self.layer(x).mean(1))


def _problem(name: str):
    torch.manual_seed(0)
    if name == "mlp":
        model = models.build("mlp", models.DataSpec((6,), 4), depth=2, width=16,
                             activation="tanh")
        x, y = torch.randn(64, 6), torch.randint(0, 4, (64,))
    elif name == "attention":
        model = Attention()
        x, y = torch.randn(48, 5, 8), torch.randint(0, 3, (48,))
    elif name == "transformer":
        model = Encoder()
        x, y = torch.randn(32, 4, 8), torch.randint(0, 3, (32,))
    else:
        model = Tied()
        x = torch.randint(0, 12, (40, 4))
        y = torch.randint(0, 12, (40, 4))
    model = model.double()
    return model, x.double() if x.is_floating_point() else x, y


PROBLEMS = ["mlp", "attention", "tied", "transformer"]


@pytest.fixture(scope="module", params=PROBLEMS)
def problem(request):
    model, x, y = _problem(request.param)
    n = sum(p.numel() for p in model.parameters())
    assert n <= 2000
    h = dense_hessian(model, ce, x, y)
    return request.param, model, x, y, h, torch.linalg.eigvalsh(h)


def test_operator_against_dense(problem):
    _, model, x, y, h, _ = problem
    op = HessianOperator(model, ce, x, y, chunk_size=17)
    gen = torch.Generator().manual_seed(3)
    vs = torch.randn(3, op.n, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(op.matvec(vs[0]), h @ vs[0], rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(op.matmat(vs), vs @ h, rtol=1e-9, atol=1e-11)
    assert op.hvps == 4
    # an iterable of batches of unequal sizes: weighted by batch size
    batches = [(x[:5], y[:5]), (x[5:30], y[5:30]), (x[30:], y[30:])]
    op2 = HessianOperator(model, ce, batches, None)
    torch.testing.assert_close(op2.matvec(vs[1]), h @ vs[1], rtol=1e-9, atol=1e-11)
    for p in model.parameters():
        assert p.grad is None


@pytest.mark.parametrize("method", ["lanczos", "eigsh"])
def test_top_k_eigenvalues(problem, method):
    name, model, x, y, h, eigs = problem
    k = 5
    res = top_eigenvalues(model, ce, x, y, k=k, tol=1e-6, method=method, seed=1)
    want = eigs.flip(0)[:k]
    assert res.converged
    rel = ((res.eigenvalues - want).abs() / want.abs()).max()
    assert rel <= 1e-6, (name, rel)
    u = res.eigenvectors
    assert u.shape == (k, h.shape[0])
    # Ritz vectors: residuals as reported, and eigenvectors where the eigenvalue is isolated
    hu = u @ h
    r = (hu - res.eigenvalues[:, None] * u).norm(dim=1)
    torch.testing.assert_close(r, res.residuals, rtol=1e-3, atol=1e-9)
    vals, vecs = torch.linalg.eigh(h)
    gap = (want[0] - want[1]) / want[0]
    if gap > 1e-3:
        assert abs(float(u[0] @ vecs[:, -1])) == pytest.approx(1.0, abs=1e-6)
    print(f"{name} {method}: top-{k} max rel err {float(rel):.2e}, {res.hvps} HVPs")


@pytest.mark.parametrize("method", ["lanczos", "eigsh"])
def test_largest_magnitude(problem, method):
    _, model, x, y, h, eigs = problem
    res = top_eigenvalues(model, ce, x, y, k=3, which="LM", method=method, seed=4)
    want = eigs[eigs.abs().argsort(descending=True)[:3]]
    torch.testing.assert_close(res.eigenvalues, want, rtol=1e-6, atol=0)


def test_top_eigenvalue_matches_data_iterable(problem):
    _, model, x, y, h, eigs = problem
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, x.shape[0], 16)]
    a = top_eigenvalues(model, ce, x, y, k=1, seed=2)
    b = top_eigenvalues(model, ce, batches, None, k=1, seed=2)
    assert float(a.eigenvalues[0]) == pytest.approx(float(eigs[-1]), rel=1e-6)
    assert float(b.eigenvalues[0]) == pytest.approx(float(eigs[-1]), rel=1e-6)
    c = top_eigenvalues(model, ce, x, y, k=1, seed=2, retain_graphs=False)
    assert float(c.eigenvalues[0]) == pytest.approx(float(a.eigenvalues[0]), rel=1e-12)


def test_power_iteration_unchanged(problem):
    _, model, x, y, h, eigs = problem
    want = float(eigs[eigs.abs().argmax()])
    res = top_hessian_eigenvalue(model, ce, x, y, iters=3000, tol=1e-12)
    assert res.lambda_max == pytest.approx(want, rel=1e-6)
    old = top_hessian_eigenvalue(model, ce, x, y, iters=5, tol=1e-12, retain_graphs=False)
    new = top_hessian_eigenvalue(model, ce, x, y, iters=5, tol=1e-12)
    assert new.lambda_max == pytest.approx(old.lambda_max, rel=1e-12)


def test_hutchinson_within_three_se(problem):
    name, model, x, y, h, _ = problem
    res = hessian_trace(model, ce, x, y, samples=200, seed=0)
    tr, tr2 = float(torch.trace(h)), float((h * h).sum())
    z1, z2 = (res.trace - tr) / res.trace_se, (res.trace_sq - tr2) / res.trace_sq_se
    print(f"{name}: tr H {res.trace:.6g} ± {res.trace_se:.2g} (exact {tr:.6g}, z {z1:+.2f}); "
          f"tr H² {res.trace_sq:.6g} ± {res.trace_sq_se:.2g} (exact {tr2:.6g}, z {z2:+.2f})")
    assert abs(z1) <= 3 and abs(z2) <= 3
    assert res.samples == 200 and res.hvps == 200
    # the se is the real spread: Var vᵀHv = 2(‖H‖_F² − Σ H_jj²) for Rademacher v
    sd = math.sqrt(2 * (tr2 - float((torch.diagonal(h) ** 2).sum())))
    assert res.trace_se * math.sqrt(200) == pytest.approx(sd, rel=0.25)
    # side by side in vmapped backwards: the same vectors, the same numbers
    res7 = hessian_trace(model, ce, x, y, samples=200, seed=0, batch=7)
    assert res7.trace == pytest.approx(res.trace, rel=1e-10)
    assert res7.trace_sq == pytest.approx(res.trace_sq, rel=1e-10)


def test_slq_moments(problem):
    name, model, x, y, h, eigs = problem
    n = h.shape[0]
    res = spectral_density(model, ce, x, y, iters=40, runs=16, seed=0)
    side = spectral_density(model, ce, x, y, iters=40, runs=16, seed=0, batch=6)
    torch.testing.assert_close(side.moments, res.moments, rtol=1e-9, atol=1e-12)
    want1, want2 = float(eigs.mean()), float((eigs ** 2).mean())
    assert res.hvps == 40 * 16 and res.ritz_values.shape == (16, 40)
    torch.testing.assert_close(res.weights.sum(1), torch.ones(16, dtype=torch.float64))
    assert float(res.moments[0]) == pytest.approx(1.0, rel=1e-10)
    z1 = (float(res.moments[1]) - want1) / float(res.moments_se[1])
    z2 = (float(res.moments[2]) - want2) / float(res.moments_se[2])
    # stated tolerance: 3 reported standard errors (Hutchinson over 16 runs)
    assert abs(z1) <= 3 and abs(z2) <= 3, (z1, z2)
    # the broadened grid density: mean as the quadrature, second moment + s² (s² ≤ 1e-4 here)
    scale = float(eigs.abs().max())
    m1, m2 = res.density_moment(1), res.density_moment(2)
    assert m1 == pytest.approx(float(res.moments[1]), abs=1e-3 * scale)
    assert m2 == pytest.approx(float(res.moments[2]), abs=1e-3 * scale ** 2 + 1e-4)
    assert float(res.density.sum() * (res.grid[1] - res.grid[0])) == pytest.approx(1.0)
    # Ritz values of each run lie in the spectrum; the extreme ones converge to λ_max, λ_min
    assert float(res.ritz_values.max()) <= float(eigs[-1]) * (1 + 1e-9) + 1e-12
    assert float(res.ritz_values[:, -1].min()) == pytest.approx(float(eigs[-1]), rel=1e-6)
    print(f"{name}: n={n} ∫λφ {float(res.moments[1]):.5g} ± {float(res.moments_se[1]):.2g} "
          f"(exact {want1:.5g}, z {z1:+.2f}); ∫λ²φ {float(res.moments[2]):.5g} ± "
          f"{float(res.moments_se[2]):.2g} (exact {want2:.5g}, z {z2:+.2f}); grid "
          f"{m1:.5g}, {m2:.5g}")


def test_slq_full_dimension_is_exact():
    """With m = n Lanczos steps one run's Ritz values are the spectrum (distinct eigenvalues)
    and its weights the squared overlaps of the start with the eigenvectors."""
    model, x, y = _problem("mlp")
    h = dense_hessian(model, ce, x, y)
    n = h.shape[0]
    eigs = torch.linalg.eigvalsh(h)
    res = spectral_density(model, ce, x, y, iters=n, runs=1, seed=5, grid_size=100)
    ok = res.weights[0] > 1e-8
    # every Ritz node with weight is an eigenvalue
    nodes = res.ritz_values[0][ok]
    dist = (nodes[:, None] - eigs[None, :]).abs().min(1).values
    assert float(dist.max()) <= 1e-8 * float(eigs.abs().max())
    assert torch.isnan(res.moments_se).all()


def test_bad_arguments():
    model, x, y = _problem("mlp")
    with pytest.raises(ValueError, match="k must be"):
        top_eigenvalues(model, ce, x, y, k=0)
    with pytest.raises(ValueError, match="which must be"):
        top_eigenvalues(model, ce, x, y, which="SA")
    with pytest.raises(ValueError, match="method must be"):
        top_eigenvalues(model, ce, x, y, method="power")
    with pytest.raises(ValueError, match="samples must be"):
        hessian_trace(model, ce, x, y, samples=1)
    with pytest.raises(ValueError, match="runs must be"):
        spectral_density(model, ce, x, y, runs=0)
    with pytest.raises(ValueError, match="empty"):
        top_eigenvalues(model, ce, [], None)


def test_eigenpairs_name_their_coordinates(problem):
    """Eigenvectors come with the parameter names and shapes of their coordinates (the whole
    model in named_parameters order, or the block of params=), and unflatten() splits a row
    into one tensor per parameter: the row is an eigenvector of the dense Hessian."""
    name, model, x, y, h, _ = problem
    for method in ("lanczos", "eigsh"):
        res = top_eigenvalues(model, ce, x, y, k=2, method=method, seed=1)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        assert list(res.names) == [n for n, _ in named]
        parts = res.unflatten(0)
        assert [tuple(t.shape) for t in parts.values()] == [tuple(p.shape) for _, p in named]
        u = torch.cat([t.reshape(-1) for t in parts.values()])
        assert torch.equal(u, res.eigenvectors[0])
        resid = float((h @ u - res.eigenvalues[0] * u).norm())
        assert resid <= 1e-5 * abs(float(res.eigenvalues[0])), (name, method, resid)
    last = named[-1][0]
    block = top_eigenvalues(model, ce, x, y, k=1, params=[last])
    assert block.names == (last,) and block.unflatten()[last].shape == named[-1][1].shape
