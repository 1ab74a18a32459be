"""Per-example statistics on architectures sgdlab does not ship, against a float64
per-example autograd loop (issue 9 §0; SPEC §3).

Every quantity — ‖g_b‖², ‖∇_p ℓ_b‖² per parameter, Σ_b g_b² per coordinate, and through them
tr Σ, ‖G‖², B_simple — must match the loop to 1e-8 relative, both as a stats-only pass and
folded into the training backward; what cannot be computed exactly is refused with a
ValueError naming the module.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sgdlab.probes.noise import noise_scale
from sgdlab.probes.per_example import PerExampleStats, per_example_stats

from _zoo import cases, per_example_ce, per_example_reference

RTOL = 1e-8
CASES = cases()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| / max |b| (0 when both vanish)."""
    scale = float(b.abs().max())
    err = float((a - b).abs().max())
    return err / scale if scale > 0 else err


def assert_stats(model, x, y, norms, by_param, sum_sq):
    ref_norms, ref_sum_sq, grads = per_example_reference(model, per_example_ce, x, y)
    assert rel(norms, ref_norms) < RTOL
    for name, ref in ref_sum_sq.items():
        assert rel(sum_sq[name], ref) < RTOL, name
    for name, v in by_param.items():
        ref = torch.stack([g[name].pow(2).sum() for g in grads])
        assert rel(v, ref) < RTOL, name
    used = {n for n, r in ref_sum_sq.items() if float(r.abs().max()) > 0}
    assert used <= set(by_param), used - set(by_param)


@pytest.mark.parametrize("name", list(CASES))
def test_stats_only_pass_matches_autograd_loop(name):
    model, x, y = CASES[name]
    res = per_example_stats(model, per_example_ce, x, y)
    assert_stats(model, x, y, res.sq_norms, res.sq_norms_by_param, res.sum_sq)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name", list(CASES))
def test_training_backward_matches_autograd_loop(name, reduction):
    model, x, y = CASES[name]
    params = [p for p in model.parameters() if p.requires_grad]
    loss = per_example_ce(model(x), y)
    plain = torch.autograd.grad(loss.mean() if reduction == "mean" else loss.sum(), params)
    with PerExampleStats(model, reduction=reduction) as stats:
        loss = per_example_ce(model(x), y)
        (loss.mean() if reduction == "mean" else loss.sum()).backward()
        norms, by_param, sum_sq = stats.sq_norms(), stats.sq_norms_by_param(), stats.sum_sq()
    for p, g in zip(params, plain, strict=True):     # the step's gradient is unchanged
        assert torch.equal(p.grad, g)
        p.grad = None
    assert_stats(model, x, y, norms, by_param, sum_sq)


@pytest.mark.parametrize("name", list(CASES))
def test_noise_scale_matches_autograd_loop(name):
    """tr Σ = B/(B−1)(mean‖g_b‖² − ‖ĝ‖²), ‖G‖² = ‖ĝ‖² − tr Σ/B, B_simple (SPEC §3)."""
    model, x, y = CASES[name]
    _, _, grads = per_example_reference(model, per_example_ce, x, y)
    B = x.shape[0]
    names = list(grads[0])
    g_hat = {n: sum(g[n] for g in grads) / B for n in names}
    mean_sq = sum(float(g[n].pow(2).sum()) for g in grads for n in names) / B
    g_hat_sq = sum(float(g_hat[n].pow(2).sum()) for n in names)
    tr = B / (B - 1) * (mean_sq - g_hat_sq)
    g2 = g_hat_sq - tr / B
    res = noise_scale(model, per_example_ce, x, y)
    assert math.isclose(res.tr_sigma, tr, rel_tol=RTOL)
    assert math.isclose(res.g_norm_sq, g2, rel_tol=RTOL, abs_tol=RTOL * g_hat_sq)
    assert math.isclose(res.b_simple, tr / g2, rel_tol=1e-6)


# ------------------------------------------------------------------ more attribution cases


class PassedParam(nn.Module):
    """A parameter owned by one child and passed as an argument into another child."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Linear(6, 5)
        self.block = Mixer()

    def forward(self, x):
        return self.block(torch.tanh(self.emb(x)), self.emb.weight)


class Mixer(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 5)

    def forward(self, h, w):
        return self.lin(h) + F.linear(h @ w, w)


class SharedChild(nn.Module):
    """One submodule reached from two parents."""

    def __init__(self):
        super().__init__()
        shared = nn.Sequential(nn.Linear(6, 6), nn.LayerNorm(6))
        self.a = nn.Sequential(shared, nn.Tanh())
        self.b = nn.Sequential(nn.Linear(6, 6), shared)
        self.head = nn.Linear(6, 5)

    def forward(self, x):
        return self.head(self.b(self.a(x)))


def weight_normed():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 7), nn.Tanh(), nn.Linear(7, 5))
    nn.utils.parametrizations.weight_norm(model[0])
    return model


@pytest.mark.parametrize("make", [PassedParam, SharedChild, weight_normed])
def test_more_attribution_cases(make):
    torch.manual_seed(0)
    model = make().double()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 5, (5,), generator=gen)
    res = per_example_stats(model, per_example_ce, x, y)
    assert_stats(model, x, y, res.sq_norms, res.sq_norms_by_param, res.sum_sq)


def test_float32_transformer_close_to_float64():
    model, x, y = CASES["transformer_pre_norm"]
    ref = per_example_stats(model, per_example_ce, x, y)
    res = per_example_stats(model.float(), per_example_ce, x, y)
    model.double()
    assert rel(res.sq_norms.double(), ref.sq_norms) < 1e-4


# ------------------------------------------------------------------ refusals


class Centred(nn.Module):
    """Couples the examples: subtracts the batch mean (a custom module with a parameter)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(6))

    def forward(self, x):
        return (x - x.mean(0)) * self.scale


class DropoutScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(6))

    def forward(self, x):
        return F.dropout(x * self.scale, 0.5, self.training)


class NotBatchFirst(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(6))

    def forward(self, x):
        return (x * self.scale).T


def _refused(inner, match):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), inner, nn.Flatten(0) if False else nn.Identity())
    model = model.double()
    x = torch.randn(4, 6, dtype=torch.float64)
    y = torch.randint(0, 5, (4,))
    head = nn.Linear(6, 5).double()

    def loss_fn(out, y):
        return per_example_ce(head(out if out.shape[0] == 4 else out.T), y)

    with pytest.raises(ValueError, match=match):
        per_example_stats(model, loss_fn, x, y)


def test_refuses_a_module_that_couples_the_examples():
    _refused(Centred(), r"'1' does not treat the examples of a batch independently")


def test_refuses_randomness_in_a_rerun_module():
    _refused(DropoutScale(), r"DropoutScale '1' .*randomness")


def test_refuses_an_output_without_the_batch_first():
    _refused(NotBatchFirst(), r"NotBatchFirst '1' returns an output of shape \(6, 4\)")


def test_refuses_packed_sequences():
    rnn = nn.GRU(3, 4, batch_first=True).double()

    class Packed(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = rnn
            self.head = nn.Linear(4, 5).double()

        def forward(self, x):
            packed = nn.utils.rnn.pack_padded_sequence(x, [3] * x.shape[0], batch_first=True)
            _, h = self.rnn(packed)
            return self.head(h[-1])

    x = torch.randn(4, 3, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"GRU 'rnn'.*PackedSequence"):
        per_example_stats(Packed(), per_example_ce, x, torch.randint(0, 5, (4,)))


def test_training_backward_refuses_a_parameter_only_the_loss_uses():
    model = nn.Linear(6, 5).double()
    t = nn.Parameter(torch.tensor(1.5, dtype=torch.float64))
    holder = nn.Module()
    holder.lin = model
    holder.t = t
    holder.forward = lambda x: holder.lin(x)
    x = torch.randn(4, 6, dtype=torch.float64)
    with PerExampleStats(holder) as stats:
        (per_example_ce(holder(x) * t, torch.randint(0, 5, (4,)))).sum().backward()
        with pytest.raises(ValueError, match="'t' received a gradient"):
            stats.sq_norms()


class LossInside(nn.Module):
    """Computes its loss itself when given labels (as Hugging Face models do) and is called
    with keyword arguments only; its own parameter makes the whole model a re-run site."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 5)
        self.temp = nn.Parameter(torch.tensor(1.3))

    def forward(self, inputs=None, labels=None):
        logits = self.lin(inputs) * self.temp
        if labels is None:
            return {"logits": logits}
        return {"loss": per_example_ce(logits, labels).mean(), "logits": logits}


def test_model_called_with_keywords_that_returns_its_loss():
    torch.manual_seed(0)
    model = LossInside().double()
    x = torch.randn(5, 6, dtype=torch.float64)
    y = torch.randint(0, 5, (5,))
    ref_norms, ref_sum_sq, _ = per_example_reference(
        model, lambda out, y: per_example_ce(out["logits"], y), x, y)
    with PerExampleStats(model, reduction="mean") as stats:
        model(inputs=x, labels=y)["loss"].backward()
        assert rel(stats.sq_norms(), ref_norms) < RTOL
        s = stats.sum_sq()
    for name, ref in ref_sum_sq.items():
        assert rel(s[name], ref) < RTOL, name


def test_refuses_a_module_that_returns_only_a_reduced_loss():
    class Penalty(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(6, dtype=torch.float64))

        def forward(self, h):
            return (h * self.w).sum()

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(6, 5).double()
            self.pen = Penalty()

        def forward(self, x):
            return self.lin(x) + 0 * self.pen(x)

    x = torch.randn(4, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="Penalty 'pen' returns only a reduced"):
        per_example_stats(Model(), per_example_ce, x, torch.randint(0, 5, (4,)))


def test_a_failed_forward_leaves_no_tracking_behind():
    """After a refused forward the use tracker is gone: torch calls are not intercepted."""
    from torch.overrides import _get_current_function_mode_stack

    rnn = nn.GRU(3, 4, batch_first=True).double()
    packed = nn.utils.rnn.pack_padded_sequence(torch.randn(2, 3, 3, dtype=torch.float64),
                                               [3, 3], batch_first=True)
    with PerExampleStats(rnn):
        with pytest.raises(ValueError, match="PackedSequence"):
            rnn(packed)
    assert _get_current_function_mode_stack() == []


# ------------------------------------------------------------------ graph attribution
# Models made of torch Linear/Conv layers only are attributed from the autograd graph at the
# end of the forward, without the TorchFunctionMode; the tracker is the reference.


class FastTied(nn.Module):
    """One weight shared by two Linear modules (both are its owners)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 5)
        self.fc2.weight = self.fc1.weight

    def forward(self, x):
        return self.head(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


class FastReadAgain(nn.Module):
    """A Linear's weight also read by ``F.linear`` in the parent."""

    def __init__(self):
        super().__init__()
        self.fc, self.head = nn.Linear(6, 5), nn.Linear(5, 5)

    def forward(self, x):
        h = torch.tanh(self.fc(x))
        return self.head(h) + F.linear(h.flip(1), self.head.weight)


class FastDeadBranch(nn.Module):
    """A layer call whose output is discarded, and its weight used in the parent instead."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 5), nn.Linear(6, 5)

    def forward(self, x):
        self.b(x)
        return self.a(x) + F.linear(x, self.b.weight).tanh()


def fast_inplace():
    return nn.Sequential(nn.Linear(6, 7), nn.ReLU(inplace=True), nn.Linear(7, 5))


def fast_cnn():
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=2),
                         nn.Flatten(), nn.Linear(4 * 4 * 2, 5))


GRAPH_MODELS = {"tied": (FastTied, (6,)), "read_again": (FastReadAgain, (6,)),
                "dead_branch": (FastDeadBranch, (6,)), "inplace": (fast_inplace, (6,)),
                "cnn": (fast_cnn, (2, 6, 4)), "passed_param": (PassedParam, (6,)),
                "twice_called": (lambda: CASES["twice_called"][0], (6,))}


def _nonlocal_names(model, x, y, graph: bool) -> tuple[set[str], dict]:
    stats = PerExampleStats(model)
    assert stats._graph_mode
    stats._graph_mode = graph
    with stats:
        per_example_ce(model(x), y).sum().backward()
        norms = stats.sq_norms()
    for p in model.parameters():
        p.grad = None
    return {stats._names[k] for k in stats._nonlocal}, norms


@pytest.mark.parametrize("name", list(GRAPH_MODELS))
def test_graph_attribution_matches_the_loop_and_the_tracker(name):
    make, shape = GRAPH_MODELS[name]
    torch.manual_seed(0)
    model = make().double()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, *shape, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 5, (5,), generator=gen)
    res = per_example_stats(model, per_example_ce, x, y)
    assert_stats(model, x, y, res.sq_norms, res.sq_norms_by_param, res.sum_sq)
    graph, n_graph = _nonlocal_names(model, x, y, graph=True)
    tracked, n_tracked = _nonlocal_names(model, x, y, graph=False)
    assert graph == tracked
    assert rel(n_graph, n_tracked) < RTOL
    expected = {"read_again": {"head.weight"}, "dead_branch": {"b.weight"},
                "passed_param": {"emb.weight"}}.get(name, set())
    assert graph == expected


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_graph_attribution_on_the_shipped_models_finds_every_use_local(kind):
    from sgdlab import models

    dataset, shape = ("mnist1d", (40,)) if kind == "mlp" else ("digits", (1, 8, 8))
    model = models.build(kind, dataset, seed=0).double()
    stats = PerExampleStats(model)
    if not stats._graph_mode:
        pytest.skip(f"{kind} has layers other than Linear/Conv")
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, *shape, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (4,), generator=gen)
    graph, _ = _nonlocal_names(model, x, y, graph=True)
    assert graph == set()
