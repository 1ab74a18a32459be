"""Per-example squared norms and Σ_b g_b² (SPEC §3) against torch.func vmap(grad) in float64.

Tolerance: 1e-5 relative (the float64 results agree to ~1e-15; 1e-5 leaves room for the Gram
form's cancellations). Norms are compared per example, Σ_b g_b² per coordinate relative to
the largest coordinate of its parameter.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from sgdlab import models
from sgdlab.probes import per_example as pe
from sgdlab.probes.per_example import (
    BATCHNORM_MESSAGE,
    PerExampleStats,
    per_example_sq_norms,
    per_example_stats,
    per_example_sum_sq,
)

RTOL = 1e-5
B = 12


@pytest.fixture(autouse=True)
def _seed():
    """Hand-made modules below draw their initial weights from the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


def ce(out, y):
    return F.cross_entropy(out, y, reduction="none")


def sq_loss(out, y):
    return 0.5 * (out - y).pow(2).flatten(1).sum(1)


def reference(model, loss_fn, x, y):
    """Per-example gradients by vmap over grad of functional_call (float64)."""
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    buffers = dict(model.named_buffers())

    def loss_one(ps, xb, yb):
        out = functional_call(model, (ps, buffers), (xb.unsqueeze(0),))
        return loss_fn(out, yb.unsqueeze(0)).sum()

    g = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, x, y)
    norms = sum(v.flatten(1).square().sum(1) for v in g.values())
    return norms, {n: v.square().sum(0) for n, v in g.items()}, g


def assert_matches(model, loss_fn, x, y, norms=None, sum_sq=None):
    ref_norms, ref_sq, _ = reference(model, loss_fn, x, y)
    if norms is None and sum_sq is None:
        res = per_example_stats(model, loss_fn, x, y)
        norms, sum_sq = res.sq_norms, res.sum_sq
    if norms is not None:
        assert norms.shape == (x.shape[0],)
        torch.testing.assert_close(norms, ref_norms, rtol=RTOL, atol=0)
    if sum_sq is not None:
        assert set(sum_sq) == set(ref_sq)
        for n, v in ref_sq.items():
            assert sum_sq[n].shape == v.shape
            err = (sum_sq[n] - v).abs().max() / v.abs().max().clamp(min=1e-300)
            assert err < RTOL, (n, float(err))


def data(shape, classes=10, n=B, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


# ---------------------------------------------------------------------------------------------
# The model zoo
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, shape, options", [
    ("mlp", (40,), {}),
    ("mlp", (40,), {"residual": True, "activation": "tanh"}),
    ("cnn", (40,), {}),                       # Conv1d, stride 2, padding 1
    ("cnn", (1, 8, 8), {}),                   # Conv2d
    ("scale_invariant", (40,), {"width": 16}),
    ("linear", (40,), {}),
])
@pytest.mark.parametrize("loss", ["ce", "sq"])
def test_zoo_matches_vmap_grad(name, shape, options, loss):
    model = models.build(name, models.DataSpec(shape, 10), seed=1, **options).double()
    x, y = data(shape)
    if loss == "sq":
        y = torch.randn(B, 10, dtype=torch.float64)
    assert_matches(model, ce if loss == "ce" else sq_loss, x, y)


def test_convenience_functions_agree_and_leave_grad_alone():
    model = models.build("cnn", models.DataSpec((40,), 10), seed=0).double()
    x, y = data((40,))
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    norms = per_example_sq_norms(model, ce, x, y)
    sum_sq = per_example_sum_sq(model, ce, x, y)
    assert_matches(model, ce, x, y, norms=norms, sum_sq=sum_sq)
    assert all(bool((p.grad == 7.0).all()) for p in model.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    # Σ_b ‖g_b‖² = Σ_coordinates Σ_b g_b²
    total = sum(float(v.sum()) for v in sum_sq.values())
    assert float(norms.sum()) == pytest.approx(total, rel=1e-10)


def test_float32_close_to_float64():
    model = models.build("cnn", models.DataSpec((1, 8, 8), 10), seed=0)
    x, y = data((1, 8, 8))
    res = per_example_stats(model, ce, x.float(), y)
    ref_norms, ref_sq, _ = reference(model.double(), ce, x, y)
    torch.testing.assert_close(res.sq_norms.double(), ref_norms, rtol=1e-4, atol=0)
    for n, v in ref_sq.items():
        assert float((res.sum_sq[n].double() - v).abs().max() / v.abs().max()) < 1e-4


# ---------------------------------------------------------------------------------------------
# A layer used twice, shared weights, sequences
# ---------------------------------------------------------------------------------------------


class TwiceLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.shared = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        h = torch.tanh(self.shared(h))
        h = torch.tanh(self.shared(h))          # same module, second use
        return self.head(h)


class TwiceConv(nn.Module):
    """One Conv1d used at two resolutions (different numbers of positions per use)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(3, 3, 3, stride=2, padding=1)
        self.head = nn.Linear(3 * 5 + 3 * 3, 4)

    def forward(self, x):
        a = torch.tanh(self.conv(x))            # (B, 3, 5) from length 10
        b = torch.tanh(self.conv(a))            # (B, 3, 3)
        return self.head(torch.cat([a.flatten(1), b.flatten(1)], 1))


class Tied(nn.Module):
    """Two Linear modules sharing one weight (and an untied bias)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(5, 5)
        self.b = nn.Linear(5, 5)
        self.b.weight = self.a.weight
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        return self.head(torch.tanh(self.b(torch.tanh(self.a(x)))))


def test_layer_used_twice():
    model = TwiceLinear().double()
    x, y = data((6,), classes=3)
    assert_matches(model, ce, x, y)
    # the norm is ‖g¹ + g²‖² (per-example gradients accumulated over the uses), not
    # ‖g¹‖² + ‖g²‖²: untie the two uses into two copies to get g¹ and g² separately
    untied = TwiceLinear().double()
    untied.load_state_dict(model.state_dict())
    second = nn.Linear(8, 8).double()
    second.load_state_dict(model.shared.state_dict())
    untied.forward = lambda x: untied.head(torch.tanh(second(torch.tanh(
        untied.shared(torch.tanh(untied.inp(x)))))))
    untied.second = second
    _, _, g = reference(untied, ce, x, y)
    cross = sum((g[f"shared.{k}"] * g[f"second.{k}"]).flatten(1).sum(1) for k in ("weight", "bias"))
    sum_of_norms = sum(v.flatten(1).square().sum(1) for v in g.values())
    norms = per_example_sq_norms(model, ce, x, y)
    torch.testing.assert_close(norms, sum_of_norms + 2 * cross, rtol=RTOL, atol=0)
    assert float((cross / norms).abs().max()) > 1e-2     # the cross terms matter here


def test_conv_used_twice_at_two_resolutions():
    model = TwiceConv().double()
    x, y = data((3, 10), classes=4)
    assert_matches(model, ce, x, y)


def test_tied_weights():
    model = Tied().double()
    x, y = data((5,), classes=2)
    assert_matches(model, ce, x, y)


class SeqLinear(nn.Module):
    """Linear layers applied position-wise to a sequence (B, S, d)."""

    def __init__(self, d_in, d_hidden, seq):
        super().__init__()
        self.lin = nn.Linear(d_in, d_hidden)
        self.head = nn.Linear(d_hidden * seq, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.lin(x)).flatten(1))


@pytest.mark.parametrize("d_in, d_hidden, seq", [(16, 16, 3), (4, 4, 40)])
def test_sequence_linear_gram_and_materialised(d_in, d_hidden, seq):
    # (16, 16, 3): O·I = 256 > S(O+I) = 96, the Gram form; (4, 4, 40): materialised
    model = SeqLinear(d_in, d_hidden, seq).double()
    x, y = data((seq, d_in), classes=3)
    assert_matches(model, ce, x, y, norms=per_example_sq_norms(model, ce, x, y))
    assert_matches(model, ce, x, y)


CONVS = [  # (class, kwargs); in_channels and out_channels come from the test
    (nn.Conv2d, dict(kernel_size=3, stride=2, padding=1, groups=2)),
    (nn.Conv2d, dict(kernel_size=(3, 2), dilation=(2, 1), padding="same", padding_mode="reflect",
                     bias=False)),
    (nn.Conv2d, dict(kernel_size=3, padding=1, padding_mode="circular")),
    (nn.Conv2d, dict(kernel_size=(2, 3), stride=(1, 2), dilation=(1, 2), padding=(0, 2))),
    (nn.Conv1d, dict(kernel_size=4, stride=3, dilation=2, groups=4)),
    (nn.Conv1d, dict(kernel_size=4, padding="same", padding_mode="replicate")),
    (nn.Conv1d, dict(kernel_size=3, stride=2, padding=1)),
]


@pytest.mark.parametrize("channels", [4, 8])   # channel-major and channels-last patches
@pytest.mark.parametrize("cls, kwargs", CONVS)
def test_conv_options(cls, kwargs, channels):
    torch.manual_seed(0)
    conv = cls(channels, 8, **kwargs)
    spatial = (7, 9) if cls is nn.Conv2d else (11,)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = conv
            self.head = nn.LazyLinear(3)

        def forward(self, x):
            return self.head(torch.tanh(self.conv(x)).flatten(1))

    model = Net().double()
    x, y = data((channels, *spatial), classes=3)
    model(x)                                    # materialise the lazy head
    assert pe._layout(conv) == ("cl" if channels == 8 and conv.groups == 1 else "cm")
    assert_matches(model, ce, x, y)
    assert_matches(model, ce, x, y, norms=per_example_sq_norms(model, ce, x, y))


def test_chunked_computation(monkeypatch):
    monkeypatch.setattr(pe, "_CHUNK_ELEMENTS", 500)        # a few examples per chunk
    model = models.build("cnn", models.DataSpec((1, 8, 8), 10), seed=0).double()
    x, y = data((1, 8, 8))
    assert_matches(model, ce, x, y)
    assert_matches(model, ce, x, y, norms=per_example_sq_norms(model, ce, x, y))


def test_inplace_relu_after_conv():
    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU(inplace=True), nn.Flatten(),
                          nn.Linear(4 * 6, 3)).double()
    x, y = data((2, 8), classes=3)
    assert_matches(model, ce, x, y)
    with PerExampleStats(model) as stats:
        ce(model(x), y).sum().backward()
        assert_matches(model, ce, x, y, norms=stats.sq_norms(), sum_sq=stats.sum_sq())


# ---------------------------------------------------------------------------------------------
# Fallback (torch.func) and BatchNorm
# ---------------------------------------------------------------------------------------------


class WithLayerNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(10, 12)
        self.norm = nn.LayerNorm(12)                # affine: fallback
        self.b = nn.Linear(12, 4)

    def forward(self, x):
        return self.b(torch.relu(self.norm(self.a(x))))


class Tokens(nn.Module):
    """Embedding (fallback) → position-wise Linear (sequence) → scale parameter (custom)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 6)
        self.lin = nn.Linear(6, 6)
        self.scale = nn.Parameter(torch.tensor([1.5]))
        self.head = nn.Linear(6, 3)

    def forward(self, t):
        h = torch.tanh(self.lin(self.emb(t))).mean(1)
        return self.head(h) * self.scale


def test_fallback_layernorm():
    model = WithLayerNorm().double()
    x, y = data((10,), classes=4)
    assert_matches(model, ce, x, y)


def test_fallback_embedding_and_custom_parameter():
    torch.manual_seed(0)
    model = Tokens().double()
    t = torch.randint(0, 20, (B, 5))
    y = torch.randint(0, 3, (B,))
    assert_matches(model, ce, t, y)


@pytest.mark.filterwarnings("ignore:There is a performance drop")
def test_fallback_reaches_uncalled_submodule():
    """MultiheadAttention uses out_proj through its weight: covered by the MHA fallback."""
    torch.manual_seed(0)
    attn = nn.MultiheadAttention(8, 2, batch_first=True)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = attn
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.attn(x, x, x, need_weights=False)[0].mean(1))

    model = Net().double()
    x, y = data((4, 8), classes=3)
    assert_matches(model, ce, x, y)


def test_batchnorm_training_raises_and_eval_works():
    model = models.build("resnet", models.DataSpec((3, 8, 8), 10), depth=8, width=4, seed=0)
    model = model.double()
    x, y = data((3, 8, 8), n=4)
    with pytest.raises(ValueError) as e:
        per_example_sq_norms(model, ce, x, y)
    assert str(e.value) == BATCHNORM_MESSAGE
    with pytest.raises(ValueError, match="BatchNorm in training mode"):
        with PerExampleStats(model):
            model(x)
    model.eval()
    assert_matches(model, ce, x, y)


def test_parameter_used_outside_its_module_is_attributed_to_the_caller():
    """A Linear's weight read by F.linear in the parent (the module itself never called):
    attributed to the parent's call, exact."""

    class Sneaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x):
            return F.linear(x, self.lin.weight)

    x, y = data((4,), classes=3)
    assert_matches(Sneaky().double(), ce, x, y)


def test_parameter_used_only_in_the_loss_is_refused():
    model = nn.Linear(4, 3).double()
    temp = nn.Parameter(torch.tensor(2.0, dtype=torch.float64))
    model.register_parameter("temperature", temp)
    x, y = data((4,), classes=3)
    with pytest.raises(ValueError, match="'temperature' receives a gradient"):
        per_example_sq_norms(model, lambda out, y: ce(out * model.temperature, y), x, y)


def test_unused_parameters_get_zero_sum_sq():
    model = nn.ModuleDict({"used": nn.Linear(4, 3), "unused": nn.Linear(4, 3)}).double()
    model.forward = lambda x: model["used"](x)
    x, y = data((4,), classes=3)
    s = per_example_sum_sq(model, ce, x, y)
    assert float(s["unused.weight"].abs().sum()) == 0 and float(s["used.weight"].sum()) > 0


def test_rejects_reduced_loss_and_batch_not_first():
    model = nn.Linear(4, 3).double()
    x, y = data((4,), classes=3)
    with pytest.raises(ValueError, match="per-example losses"):
        per_example_sq_norms(model, F.cross_entropy, x, y)

    class SeqFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x):                  # (B, S, d) → (S, B, d) layout
            return self.lin(x.transpose(0, 1)).mean(0)

    x = torch.randn(B, 5, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="batch dimension"):
        per_example_sq_norms(SeqFirst().double(), ce, x, y)


# ---------------------------------------------------------------------------------------------
# The training-step API: one backward gives p.grad and the statistics
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_context_manager_gives_grad_and_stats(reduction):
    model = models.build("cnn", models.DataSpec((1, 8, 8), 10), seed=0).double()
    x, y = data((1, 8, 8))
    ref_norms, ref_sq, g = reference(model, ce, x, y)
    with PerExampleStats(model, reduction=reduction) as stats:
        for step in range(2):                   # each forward starts a new batch
            xs, ys = (x, y) if step else data((1, 8, 8), seed=5)
            model.zero_grad(set_to_none=True)
            losses = ce(model(xs), ys)
            (losses.sum() if reduction == "sum" else losses.mean()).backward()
        torch.testing.assert_close(stats.sq_norms(), ref_norms, rtol=RTOL, atol=0)
        sq = stats.sum_sq()
        for n, v in ref_sq.items():
            assert float((sq[n] - v).abs().max() / v.abs().max()) < RTOL
        by = stats.sq_norms_by_param()
        assert set(by) == set(ref_sq)
    scale = 1.0 if reduction == "sum" else 1.0 / B
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, g[n].sum(0) * scale)
    # detached: a forward no longer records
    model(x)
    assert stats.sq_norms().shape == (B,)


def test_context_manager_ignores_no_grad_forward():
    model = TwiceLinear().double()
    x, y = data((6,), classes=3)
    with PerExampleStats(model, sum_sq=False) as stats:
        ce(model(x), y).sum().backward()
        with torch.no_grad():
            model(x[:3])                        # e.g. an evaluation inside the step
        norms = stats.sq_norms()
        with pytest.raises(RuntimeError, match="sum_sq=False"):
            stats.sum_sq()
    assert_matches(model, ce, x, y, norms=norms)


def test_second_backward_through_the_same_forward_raises():
    model = TwiceLinear().double()
    x, y = data((6,), classes=3)
    with PerExampleStats(model):
        loss = ce(model(x), y).sum()
        loss.backward(retain_graph=True)
        with pytest.raises(RuntimeError, match="one backward per forward"):
            loss.backward()
