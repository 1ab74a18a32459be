"""Tests for sgdlab.models: shapes, published parameter counts, scale invariance (SPEC §4.5),
seeding and errors."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from sgdlab import models
from sgdlab.models import DataSpec, build, spec_of

MNIST1D = DataSpec((40,), 10)
DIGITS = DataSpec((1, 8, 8), 10)
MNIST = DataSpec((1, 28, 28), 10)
CIFAR = DataSpec((3, 32, 32), 10)
SYNTH = DataSpec((7,), 3)
SYNTH_REG = DataSpec((7,), None)
ALL_SPECS = [MNIST1D, DIGITS, MNIST, CIFAR, SYNTH, SYNTH_REG]
IMAGE_SPECS = [DIGITS, MNIST, CIFAR]

CASES = [
    (name, s) for name in ("linear", "logistic", "mlp", "cnn", "scale_invariant") for s in ALL_SPECS
]
CASES += [("resnet", s) for s in IMAGE_SPECS]


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_available_lists_all_names():
    assert models.available() == ["linear", "logistic", "mlp", "cnn", "scale_invariant", "resnet"]


@pytest.mark.parametrize(("name", "spec"), CASES, ids=lambda v: str(getattr(v, "input_shape", v)))
def test_builds_and_output_shape(name, spec):
    options = {"depth": 8} if name == "resnet" else {}
    model = build(name, spec, seed=0, **options)
    x = torch.randn(3, *spec.input_shape)
    out = model(x)
    k = spec.num_classes or 1
    assert out.shape == (3, k)
    assert torch.isfinite(out).all()
    # flattened inputs are accepted too and give the same result
    model.eval()
    torch.testing.assert_close(model(x.reshape(3, -1)), model(x))
    assert model.input_shape == spec.input_shape and model.num_outputs == k


def test_logistic_is_the_linear_layer():
    a, b = build("linear", MNIST1D, seed=3), build("logistic", MNIST1D, seed=3)
    assert type(a) is type(b)
    x = torch.randn(5, 40)
    torch.testing.assert_close(a(x), b(x))
    assert n_params(a) == 40 * 10 + 10
    assert n_params(build("linear", SYNTH_REG, bias=False)) == 7


def test_mnist1d_mlp_matches_published_architecture():
    model = build("mlp", MNIST1D, residual=True)
    # MLPBase (Greydanus 2020): 40 -> 100 -> 100 -> 10, all with bias
    assert n_params(model) == (40 * 100 + 100) + (100 * 100 + 100) + (100 * 10 + 10) == 15_210
    assert n_params(build("mlp", MNIST1D)) == 15_210  # the residual adds no parameters
    # forward pass h1 = relu(W1 x), h = h1 + relu(W2 h1), out = W3 h
    x = torch.randn(4, 40)
    l1, l2 = model.hidden
    h1 = F.relu(l1(x))
    torch.testing.assert_close(model(x), model.head(h1 + F.relu(l2(h1))))
    plain = build("mlp", MNIST1D, depth=3, width=20, activation="tanh")
    assert n_params(plain) == (40 * 20 + 20) + 2 * (20 * 20 + 20) + (20 * 10 + 10)


def test_mnist1d_cnn_matches_published_architecture():
    model = build("cnn", MNIST1D)
    assert isinstance(model, models.CNN1d)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv1d)]
    spec = [(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs]
    assert spec == [
        (1, 25, (5,), (2,), (1,)),
        (25, 25, (3,), (2,), (1,)),
        (25, 25, (3,), (2,), (1,)),
    ]
    # lengths 40 -> 19 -> 10 -> 5, so the linear head sees 25 * 5 = 125 features (ConvBase)
    assert model.head.in_features == 125
    expected = (1 * 25 * 5 + 25) + 2 * (25 * 25 * 3 + 25) + (125 * 10 + 10)
    assert n_params(model) == expected == 5_210
    # the channel dimension is added by the model: (N, 40) and (N, 1, 40) agree
    x = torch.randn(2, 40)
    torch.testing.assert_close(model(x), model(x.unsqueeze(1)))


def test_image_cnn_parameter_counts():
    mnist = build("cnn", MNIST)
    assert isinstance(mnist, models.CNN2d)
    conv = (1 * 32 * 9 + 32) + (32 * 64 * 9 + 64)
    assert n_params(mnist) == conv + (64 * 7 * 7 * 10 + 10)
    assert n_params(build("cnn", DIGITS)) == conv + (64 * 2 * 2 * 10 + 10)
    assert n_params(build("cnn", DIGITS, channels=[8])) == (9 * 8 + 8) + (8 * 4 * 4 * 10 + 10)


def _resnet_params(n: int, w: int, c_in: int = 3, k: int = 10) -> int:
    bn = lambda c: 2 * c
    total = c_in * w * 9 + bn(w)
    c_prev = w
    for stage in range(3):
        c = w * 2**stage
        for _ in range(n):
            total += c_prev * c * 9 + bn(c) + c * c * 9 + bn(c)
            c_prev = c
    return total + c_prev * k + k


def test_resnet_forward_backward_and_counts():
    model = build("resnet", CIFAR, seed=0)
    assert n_params(model) == _resnet_params(3, 16) == 269_722  # ResNet-20, "0.27M"
    assert n_params(build("resnet", CIFAR, depth=8)) == _resnet_params(1, 16)
    assert n_params(build("resnet", CIFAR, depth=8, width=8)) == _resnet_params(1, 8)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 1 + 2 * 9
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 7])
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    assert model(x).shape == (2, 10)


# ---------------------------------------------------------------------------------------------
# Scale invariance (SPEC §4.5)
# ---------------------------------------------------------------------------------------------


def _si_model_and_batch(seed: int = 0, depth: int = 3):
    model = build("scale_invariant", SYNTH, depth=depth, width=16, seed=seed).double()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(12, 7, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (12,), generator=g)
    return model, x, y


def _loss_and_grads(model, x, y):
    model.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    return loss.detach(), [p.grad.detach().clone() for p in model.parameters()]


def test_scale_invariant_structure():
    model, _, _ = _si_model_and_batch()
    params = dict(model.named_parameters())
    assert len(params) == 3  # bias-free hidden weights only
    assert all(p.dim() == 2 for p in params.values())
    # the last layer is fixed: a buffer, not a parameter, with no gradient
    assert "head" in dict(model.named_buffers())
    assert not model.head.requires_grad
    assert not any(p is model.head for p in model.parameters())


@pytest.mark.parametrize("c", [0.1, 3.0, 100.0])
def test_scale_invariance_of_outputs_and_gradients(c):
    model, x, y = _si_model_and_batch()
    out0 = model(x).detach()
    loss0, grads0 = _loss_and_grads(model, x, y)
    weights = [p.detach().clone() for p in model.parameters()]

    # <grad L, W> = 0 for every layer
    for w, g in zip(weights, grads0, strict=True):
        assert abs(torch.sum(w * g).item()) < 1e-10

    # all trainable parameters scaled jointly: same logits, gradient divided by c
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(c)
    torch.testing.assert_close(model(x).detach(), out0, rtol=0, atol=1e-10)
    loss_c, grads_c = _loss_and_grads(model, x, y)
    assert abs(loss_c.item() - loss0.item()) < 1e-10
    for g0, gc in zip(grads0, grads_c, strict=True):
        torch.testing.assert_close(gc, g0 / c, rtol=0, atol=1e-10)

    # each layer separately
    for i in range(len(weights)):
        with torch.no_grad():
            for p, w in zip(model.parameters(), weights, strict=True):
                p.copy_(w)
            list(model.parameters())[i].mul_(c)
        torch.testing.assert_close(model(x).detach(), out0, rtol=0, atol=1e-10)
        _, grads_i = _loss_and_grads(model, x, y)
        for j, (g0, gi) in enumerate(zip(grads0, grads_i, strict=True)):
            torch.testing.assert_close(gi, g0 / c if j == i else g0, rtol=0, atol=1e-10)


def test_scale_invariant_is_per_example():
    """No batch statistics: each output depends on its own example only, and the per-example
    gradients are orthogonal to the weights as well."""
    model, x, y = _si_model_and_batch(depth=2)
    full = model(x)
    singles = torch.cat([model(x[i : i + 1]) for i in range(len(x))])
    torch.testing.assert_close(full, singles, rtol=0, atol=1e-12)
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def loss_one(p, xi, yi):
        out = torch.func.functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return F.cross_entropy(out, yi.unsqueeze(0))

    per_ex = torch.func.vmap(torch.func.grad(loss_one), in_dims=(None, 0, 0))(params, x, y)
    for name, w in params.items():
        dots = torch.einsum("bij,ij->b", per_ex[name], w)
        assert dots.abs().max().item() < 1e-10


def test_scale_invariant_model_can_fit():
    """Sanity: the fixed head does not stop training (a few SGD steps reduce the loss)."""
    model, x, y = _si_model_and_batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    first = None
    for _ in range(50):
        loss = F.cross_entropy(model(x), y)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


# ---------------------------------------------------------------------------------------------
# Seeding
# ---------------------------------------------------------------------------------------------


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", ["mlp", "cnn", "scale_invariant"])
def test_seed_makes_init_deterministic_without_touching_global_rng(name):
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    a = _state(build(name, MNIST1D, seed=7))
    assert torch.equal(torch.get_rng_state(), before)
    b = _state(build(name, MNIST1D, seed=7))
    c = _state(build(name, MNIST1D, seed=8))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_seed_none_uses_global_rng():
    torch.manual_seed(5)
    a = _state(build("mlp", SYNTH))
    torch.manual_seed(5)
    b = _state(build("mlp", SYNTH))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(a[k], v) for k, v in _state(build("mlp", SYNTH, seed=5)).items())


# ---------------------------------------------------------------------------------------------
# Data specs
# ---------------------------------------------------------------------------------------------


def test_spec_of_accepts_objects_mappings_and_names():
    ds = SimpleNamespace(input_shape=torch.Size([1, 28, 28]), num_classes=10, other=1)
    assert spec_of(ds) == MNIST
    assert spec_of({"input_shape": (40,), "num_classes": 10}) == MNIST1D
    assert spec_of(SimpleNamespace(input_shape=(7,))) == SYNTH_REG
    assert spec_of("MNIST-1D") == MNIST1D and spec_of("cifar10") == CIFAR
    assert spec_of("digits") == DIGITS
    assert spec_of(MNIST) is MNIST
    assert DataSpec((5,), None).num_outputs == 1
    assert build("mlp", ds, width=8)(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize(
    ("dataset", "match"),
    [
        (object(), "input_shape"),
        ("imagenet", "known names"),
        ({"num_classes": 3}, "input_shape"),
        (SimpleNamespace(input_shape=(0, 3), num_classes=2), "positive"),
        (SimpleNamespace(input_shape=(4,), num_classes=0), "num_classes"),
        (SimpleNamespace(input_shape=(4,), num_classes=2.5), "num_classes"),
    ],
)
def test_spec_errors(dataset, match):
    with pytest.raises(ValueError, match=match):
        spec_of(dataset)


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def test_unknown_model_lists_known_names():
    with pytest.raises(ValueError, match="unknown model 'vgg'.*linear.*resnet"):
        build("vgg", MNIST1D)


@pytest.mark.parametrize(
    ("name", "spec", "options", "match"),
    [
        ("mlp", MNIST1D, {"depth": 0}, "depth must be an int >= 1"),
        ("mlp", MNIST1D, {"width": 0}, "width must be an int >= 1"),
        ("mlp", MNIST1D, {"depth": 2.5}, "depth"),
        ("mlp", MNIST1D, {"activation": "swish"}, "activation must be one of"),
        ("mlp", MNIST1D, {"widht": 10}, r"unknown option.*widht.*allowed.*width"),
        ("linear", MNIST1D, {"depth": 2}, "unknown option"),
        ("scale_invariant", MNIST1D, {"depth": 0}, "depth"),
        ("scale_invariant", MNIST1D, {"width": 1}, "width must be an int >= 2"),
        ("cnn", DataSpec((2, 3, 4, 5), 10), {}, r"cnn supports input_shape"),
        ("cnn", DIGITS, {"channels": [8, 8, 8, 8]}, "channels"),
        ("cnn", DIGITS, {"channels": 0}, "channels"),
        ("cnn", DIGITS, {"layers": 2}, "layers applies to 1-D"),
        ("cnn", DataSpec((2,), 10), {}, "length >= 3"),
        ("cnn", MNIST1D, {"channels": [4, 4], "layers": 3}, "disagree"),
        ("resnet", MNIST1D, {}, r"resnet needs an image input_shape"),
        ("resnet", CIFAR, {"depth": 9}, "6n\\+2"),
        ("resnet", CIFAR, {"width": 0}, "width"),
    ],
)
def test_bad_options(name, spec, options, match):
    with pytest.raises(ValueError, match=match):
        build(name, spec, **options)


def test_bad_seed():
    with pytest.raises(ValueError, match="seed"):
        build("mlp", MNIST1D, seed="0")


def test_cnn_1d_layers_and_multichannel():
    model = build("cnn", DataSpec((3, 40), 4), channels=[6, 7])
    assert model(torch.randn(2, 3, 40)).shape == (2, 4)
    assert len([m for m in model.modules() if isinstance(m, torch.nn.Conv1d)]) == 2
    assert build("cnn", MNIST1D, channels=10, layers=2).head.in_features == 10 * 10
