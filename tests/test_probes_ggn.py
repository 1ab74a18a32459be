"""The generalised Gauss–Newton matrix (``curvature="ggn"``) and per-layer blocks
(``params=``, ``layerwise``) against independent dense float64 references on small models we
do not ship (a tanh MLP, an attention block, a tied-embedding model; each ≤ 2000 parameters),
fixed seeds.

References: G = Jᵀ H_ℓ J with J by ``torch.func.jacrev`` and H_ℓ of the cross-entropy in
closed form, blockdiag (diag p − ppᵀ)/R (``_zoo.dense_ggn``); blocks cut out of the full dense
Hessian of ``torch.func.hessian`` (``_zoo.dense_hessian_block``); for a linear model with
squared error, H = G = (X̃ᵀX̃/N) ⊗ I in closed form.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sgdlab.probes.curvature import (
    HessianOperator,
    hessian_trace,
    layerwise,
    parameter_blocks,
    resolve_params,
    spectral_density,
    top_eigenvalues,
    top_hessian_eigenvalue,
)
from test_probes_spectrum import PROBLEMS, _problem, ce

from _zoo import (
    cases,
    cut_block,
    dense_ggn,
    dense_hessian,
    dense_hessian_block,
    per_example_ce,
)

# the block checked per problem: one layer's parameters, given three different ways
BLOCKS = {
    "mlp": ["hidden.1.weight", "hidden.1.bias"],
    "attention": ["qkv.weight", "qkv.bias"],
    "tied": ["emb.weight"],          # used at the input and, transposed, at the output
    "transformer": ["layer.norm1.weight", "layer.norm1.bias"],   # a LayerNorm's own block
}


@pytest.fixture(scope="module", params=PROBLEMS)
def problem(request):
    model, x, y = _problem(request.param)
    assert sum(p.numel() for p in model.parameters()) <= 2000
    g = dense_ggn(model, x, y, loss="ce")
    return request.param, model, x, y, g, torch.linalg.eigvalsh(g)


def test_ggn_operator_against_dense(problem):
    name, model, x, y, g, _ = problem
    gen = torch.Generator().manual_seed(3)
    op = HessianOperator(model, ce, x, y, chunk_size=17, curvature="ggn")
    vs = torch.randn(3, op.n, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(op.matvec(vs[0]), g @ vs[0], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(op.matmat(vs), vs @ g, rtol=1e-9, atol=1e-12)
    assert op.hvps == 4
    # batches of unequal sizes, weighted by size; graphs rebuilt per product
    batches = [(x[:5], y[:5]), (x[5:30], y[5:30]), (x[30:], y[30:])]
    op2 = HessianOperator(model, ce, batches, None, curvature="ggn", retain_graphs=False)
    torch.testing.assert_close(op2.matvec(vs[1]), g @ vs[1], rtol=1e-9, atol=1e-12)
    err = float((op.dense() - g).abs().max() / g.abs().max())
    print(f"{name}: GGN operator max abs err / max |G| = {err:.1e}")
    for p in model.parameters():
        assert p.grad is None


def test_ggn_positive_semidefinite_and_not_the_hessian(problem):
    """G ⪰ 0 for cross-entropy: the smallest eigenvalue of the operator's matrix is
    ≥ −1e-10·λ_max; and it is not H (the tests above could not pass with the Hessian)."""
    name, model, x, y, g, eigs = problem
    op = HessianOperator(model, ce, x, y, curvature="ggn")
    e = torch.linalg.eigvalsh(op.dense())
    print(f"{name}: λ_min(G)/λ_max(G) = {float(e[0] / e[-1]):.1e}")
    assert float(e[0]) >= -1e-10 * float(e[-1])
    h = HessianOperator(model, ce, x, y).dense()
    assert float((h - g).abs().max()) > 1e-3 * float(g.abs().max())


@pytest.mark.parametrize("method", ["lanczos", "eigsh"])
def test_ggn_top_k(problem, method):
    name, model, x, y, g, eigs = problem
    k = 5
    res = top_eigenvalues(model, ce, x, y, k=k, tol=1e-6, method=method, seed=1,
                          curvature="ggn")
    want = eigs.flip(0)[:k]
    assert res.converged
    rel = float(((res.eigenvalues - want).abs() / want.abs()).max())
    print(f"{name} {method}: GGN top-{k} max rel err {rel:.1e}, {res.hvps} products")
    assert rel <= 1e-6
    r = (res.eigenvectors @ g - res.eigenvalues[:, None] * res.eigenvectors).norm(dim=1)
    torch.testing.assert_close(r, res.residuals, rtol=1e-3, atol=1e-9)
    power = top_hessian_eigenvalue(model, ce, x, y, iters=3000, tol=1e-12, curvature="ggn")
    assert power.lambda_max == pytest.approx(float(eigs[-1]), rel=1e-6)


def test_ggn_trace_within_three_se(problem):
    name, model, x, y, g, eigs = problem
    res = hessian_trace(model, ce, x, y, samples=200, seed=0, curvature="ggn")
    tr, tr2 = float(torch.trace(g)), float((g * g).sum())
    z1, z2 = (res.trace - tr) / res.trace_se, (res.trace_sq - tr2) / res.trace_sq_se
    print(f"{name}: tr G {res.trace:.6g} ± {res.trace_se:.2g} (exact {tr:.6g}, z {z1:+.2f}); "
          f"tr G² {res.trace_sq:.6g} ± {res.trace_sq_se:.2g} (exact {tr2:.6g}, z {z2:+.2f})")
    assert abs(z1) <= 3 and abs(z2) <= 3
    side = hessian_trace(model, ce, x, y, samples=200, seed=0, batch=8, curvature="ggn")
    assert side.trace == pytest.approx(res.trace, rel=1e-10)
    dens = spectral_density(model, ce, x, y, iters=30, runs=8, seed=0, batch=4,
                            curvature="ggn", grid_size=200)
    z = (float(dens.moments[1]) - float(eigs.mean())) / float(dens.moments_se[1])
    assert abs(z) <= 3, z
    assert float(dens.ritz_values.min()) >= -1e-9 * float(eigs[-1])


def test_ggn_equals_hessian_for_linear_mse():
    """f = Wx + b, L = mean ½‖f − t‖²: f is linear in Φ, so H = G = (X̃ᵀX̃/N) ⊗ I_out with
    X̃ = [X, 1] (rows of W, then b), in closed form."""
    gen = torch.Generator().manual_seed(7)
    n, d, c = 50, 4, 3
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    t = torch.randn(n, c, generator=gen, dtype=torch.float64)
    torch.manual_seed(7)
    model = nn.Linear(d, c).double()

    def mse(out, target):
        return 0.5 * (out - target).pow(2).sum(-1)

    xt = torch.cat([x, torch.ones(n, 1, dtype=torch.float64)], 1)
    cov = xt.T @ xt / n                                        # (d+1, d+1)
    # Φ = (W row-major (c, d), b (c)): ∂²L/∂W_ij∂W_kl = δ_ik cov_jl, W–b: δ_ik mean x_j
    want = torch.zeros(c * d + c, c * d + c, dtype=torch.float64)
    for i in range(c):
        rows = list(range(i * d, (i + 1) * d)) + [c * d + i]
        want[torch.tensor(rows)[:, None], torch.tensor(rows)[None, :]] = cov
    for curv in ("hessian", "ggn"):
        got = HessianOperator(model, mse, x, t, chunk_size=16, curvature=curv).dense()
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-13)
    # every eigenvalue of cov appears c = 3 times, and H has only d + 1 = 5 distinct ones:
    # Lanczos exhausts its Krylov space after 5 steps and must restart in the complement to
    # find the other copies (before that fix it returned λ₁, λ₂, λ₃, λ₄ as "converged")
    lam = torch.linalg.eigvalsh(cov).flip(0)
    want = torch.stack([lam[0], lam[0], lam[0], lam[1]])
    for curv in ("hessian", "ggn"):
        for method in ("lanczos", "eigsh"):
            res = top_eigenvalues(model, mse, x, t, k=4, curvature=curv, method=method,
                                  seed=0)
            assert res.converged
            torch.testing.assert_close(res.eigenvalues, want, rtol=1e-8, atol=0)


def test_ggn_mse_regression_mlp():
    """A tanh MLP regressing 3 targets with ½‖f − t‖² (H_ℓ = I/N: J's Gram matrix)."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 10), nn.Tanh(), nn.Linear(10, 3)).double()
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(30, 4, generator=gen, dtype=torch.float64)
    t = torch.randn(30, 3, generator=gen, dtype=torch.float64)

    def mse(out, target):
        return 0.5 * (out - target).pow(2).sum(-1)

    want = dense_ggn(model, x, t, loss="mse")
    got = HessianOperator(model, mse, x, t, chunk_size=7, curvature="ggn").dense()
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("case", list(cases()))
def test_ggn_product_on_the_zoo(case):
    """One GGN product on every architecture of the zoo (attention, GRU/LSTM, convs with
    padding modes, embeddings with padding_idx, tied weights, norms, BatchNorm in eval,
    direct parameters, a module called twice) against the dense Jᵀ H_ℓ J."""
    model, x, y = cases()[case]
    op = HessianOperator(model, per_example_ce, x, y, curvature="ggn")
    v = torch.randn(op.n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    want = dense_ggn(model, x, y) @ v
    torch.testing.assert_close(op.matvec(v), want, rtol=1e-9, atol=1e-12)


def test_block_hessian_is_the_sub_block(problem):
    name, model, x, y, _, _ = problem
    names = BLOCKS[name]
    hb = dense_hessian_block(model, ce, x, y, names)
    module = dict(model.named_modules())[names[0].rsplit(".", 1)[0]]
    params = [dict(model.named_parameters())[n] for n in names]
    for sel in (names, module, params):
        op = HessianOperator(model, ce, x, y, chunk_size=23, params=sel)
        assert op.names == names and op.n == hb.shape[0]
        torch.testing.assert_close(op.dense(), hb, rtol=1e-9, atol=1e-12)
    eb = torch.linalg.eigvalsh(hb)
    res = top_eigenvalues(model, ce, x, y, k=3, params=names, seed=2)
    rel = float(((res.eigenvalues - eb.flip(0)[:3]).abs() / eb.flip(0)[:3].abs()).max())
    print(f"{name} block {names}: n={hb.shape[0]}, top-3 max rel err {rel:.1e}")
    assert rel <= 1e-6 and res.eigenvectors.shape == (3, hb.shape[0])
    tr = hessian_trace(model, ce, x, y, samples=50, seed=0, params=names)
    assert abs(tr.trace - float(torch.trace(hb))) <= 3 * tr.trace_se


def test_block_ggn_is_the_sub_block(problem):
    name, model, x, y, g, _ = problem
    names = BLOCKS[name]
    want = dense_ggn(model, x, y, loss="ce", names=names)
    # and it is the sub-block of the full G (names are in named_parameters order)
    torch.testing.assert_close(want, cut_block(g, model, names), rtol=1e-10, atol=1e-13)
    got = HessianOperator(model, ce, x, y, curvature="ggn", params=names).dense()
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_layerwise_top_eigenvalue_and_trace():
    model, x, y = _problem("attention")
    blocks = parameter_blocks(model)
    assert blocks == {"qkv": ["qkv.weight", "qkv.bias"], "proj": ["proj.weight", "proj.bias"],
                      "head": ["head.weight", "head.bias"]}
    per = parameter_blocks(model, "parameters")
    assert list(per) == [n for n, _ in model.named_parameters()]
    top = layerwise(top_eigenvalues, model, ce, x, y, k=2, seed=0)
    trace = layerwise(hessian_trace, model, ce, x, y, samples=50, seed=0, curvature="ggn")
    assert list(top) == list(blocks) == list(trace)
    h, g = dense_hessian(model, ce, x, y), dense_ggn(model, x, y)
    total = 0.0
    for key, names in blocks.items():
        hb, gb = cut_block(h, model, names), cut_block(g, model, names)
        torch.testing.assert_close(top[key].eigenvalues, torch.linalg.eigvalsh(hb).flip(0)[:2],
                                   rtol=1e-6, atol=0)
        assert abs(trace[key].trace - float(torch.trace(gb))) <= 3 * trace[key].trace_se
        op = HessianOperator(model, ce, x, y, curvature="ggn", params=names)
        total += float(torch.trace(op.dense()))
    # the blocks partition the parameters: the blocks' exact traces sum to tr G
    assert total == pytest.approx(float(torch.trace(g)), rel=1e-10)
    named = layerwise(hessian_trace, model, ce, x, y, blocks={"attn": ["qkv", "proj"]},
                      samples=2)
    assert list(named) == ["attn"]


def test_tied_weight_aliases_and_blocks():
    """TiedLM-style: a tied weight is one parameter under every alias."""
    model, x, y = _problem("tied")
    assert [n for n, _ in resolve_params(model, "emb")] == ["emb.weight"]
    assert [n for n, _ in resolve_params(model, [model.mix, "emb.weight"])] == [
        "emb.weight", "mix.weight", "mix.bias"]
    assert parameter_blocks(model) == {"emb": ["emb.weight"], "mix": ["mix.weight",
                                                                      "mix.bias"]}


class _Penalised:
    """A loss that uses a parameter directly (a penalty): not of the GGN's form."""

    def __init__(self, w):
        self.w = w

    def __call__(self, out, t):
        return ce(out, t) + 0.1 * self.w.pow(2).sum()


class _TupleOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 4)

    def forward(self, x):
        return self.lin(x), x


def test_bad_input():
    model, x, y = _problem("mlp")
    funcs = [
        lambda **kw: top_eigenvalues(model, ce, x, y, **kw),
        lambda **kw: hessian_trace(model, ce, x, y, samples=2, **kw),
        lambda **kw: spectral_density(model, ce, x, y, iters=2, **kw),
        lambda **kw: top_hessian_eigenvalue(model, ce, x, y, iters=2, **kw),
        lambda **kw: HessianOperator(model, ce, x, y, **kw),
    ]
    for f in funcs:
        with pytest.raises(ValueError, match=r"curvature must be 'hessian' or 'ggn', got "
                                             r"'fisher'"):
            f(curvature="fisher")
        with pytest.raises(ValueError, match=r"params: 'nope' is neither a parameter nor a "
                                             r"module of the model; allowed: None"):
            f(params=["nope"])
    with pytest.raises(ValueError, match="params: the Linear given is not a submodule"):
        HessianOperator(model, ce, x, y, params=nn.Linear(2, 2))
    with pytest.raises(ValueError, match="is not a parameter of the model"):
        HessianOperator(model, ce, x, y, params=[nn.Parameter(torch.zeros(3))])
    with pytest.raises(ValueError, match="params: cannot use a int"):
        HessianOperator(model, ce, x, y, params=[3])
    frozen = next(model.parameters())
    frozen.requires_grad_(False)
    try:
        with pytest.raises(ValueError, match="does not require grad"):
            HessianOperator(model, ce, x, y, params=[frozen])
    finally:
        frozen.requires_grad_(True)
    with pytest.raises(ValueError, match="params: the selection has no trainable parameter"):
        HessianOperator(model, ce, x, y, params=[])
    # losses the GGN cannot handle
    w = next(model.parameters())
    with pytest.raises(ValueError, match='curvature="ggn" needs a loss_fn.*only through the '
                                         'model output'):
        HessianOperator(model, _Penalised(w), x, y, curvature="ggn")
    HessianOperator(model, _Penalised(w), x, y)           # the Hessian is fine with it

    def accuracy(out, t):
        return (out.argmax(-1) == t).double()

    with pytest.raises(ValueError, match="differentiable in the model output"):
        hessian_trace(model, accuracy, x, y, samples=2, curvature="ggn")
    with pytest.raises(ValueError, match="output is one floating-point tensor"):
        HessianOperator(_TupleOut().double(), lambda o, t: o[0].sum(), x, y, curvature="ggn")
    with pytest.raises(ValueError, match="blocks must be"):
        layerwise(hessian_trace, model, ce, x, y, blocks="layers")
    with pytest.raises(ValueError, match="pass the blocks as blocks="):
        layerwise(hessian_trace, model, ce, x, y, params=["head"])


@pytest.mark.parametrize("curvature", ["hessian", "ggn"])
@pytest.mark.parametrize("retain", [True, False])
def test_batchnorm_statistics_are_untouched(curvature, retain):
    """A model in training mode with BatchNorm: the curvature functions' forwards (one per
    graph, one per product without retained graphs) leave running_mean, running_var and
    num_batches_tracked as they were, and the products equal those of an untouched copy."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3))
    model = model.double().train()
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,))
    before = {k: b.clone() for k, b in model.named_buffers()}
    twin = copy.deepcopy(model)
    op = HessianOperator(model, ce, x, y, curvature=curvature, retain_graphs=retain)
    v = torch.randn(op.n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    hv = op.matvec(v)
    hessian_trace(model, ce, x, y, samples=3, curvature=curvature, retain_graphs=retain)
    for k, b in model.named_buffers():
        assert torch.equal(b, before[k]), k
    ref = HessianOperator(twin, ce, x, y, curvature=curvature).matvec(v)
    torch.testing.assert_close(hv, ref, rtol=1e-12, atol=1e-14)
