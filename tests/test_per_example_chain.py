"""The chain walk of PerExampleStats (SPEC §3): the cheap proof that every parameter use of a
Linear/Conv model is inside a layer that owns it must never give a wrong number.

Models whose forward changes from one call to the next — a weight read again in the parent,
a tied head, a layer called twice, a user hook that adds a use — on the same module call
sequence: every call must match the per-example autograd loop of ``_zoo`` to 1e-8 in float64,
whatever the earlier calls were, with one ``PerExampleStats`` kept attached across the calls
and with a fresh ``per_example_stats`` per call. Nothing is cached between forwards (the
proof is redone on every one); these tests hold any future cache to the same standard.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sgdlab import models
from sgdlab.probes import per_example as pe
from sgdlab.probes.per_example import PerExampleStats, per_example_stats

from _zoo import per_example_reference

TOL = 1e-8
B = 6


def ce(out, y):
    return F.cross_entropy(out, y, reduction="none")


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


class Switching(nn.Module):
    """An MLP whose forward takes another path on some calls, with the same module calls:
    0 plain; 1 fc2's weight read again by F.linear in the parent; 2 the head's weight tied
    into a second read in the parent; 3 fc2 called twice (local: a chain); 4 the head's bias
    added in the parent. ``path`` is set before each step (a forward that changed it by
    itself, counting its calls, would differ in the per-example re-run: see
    test_forward_that_counts_its_calls)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(5, 7), nn.Linear(7, 7), nn.Linear(7, 3)
        self.path = 0

    def forward(self, x):
        return self.run(x, self.path)

    def run(self, x, path):
        h = torch.relu(self.fc1(x))
        z = self.fc2(h)
        if path == 1:
            z = z + F.linear(h, self.fc2.weight)
        if path == 3:
            z = self.fc2(torch.tanh(z))
        out = self.head(torch.relu(z))
        if path == 2:
            out = out + F.linear(torch.relu(z), self.head.weight)
        if path == 4:
            out = out + self.head.bias
        return out


SCHEDULES = [[0, 1, 0], [0, 0, 2, 0], [0, 3, 1, 0], [0, 4, 0, 2], [1, 0, 0]]


def reference(model, path, x, y):
    model.path = path
    return per_example_reference(model, ce, x, y)


def batches(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(B, 5, generator=g, dtype=torch.float64),
             torch.randint(0, 3, (B,), generator=g)) for _ in range(n)]


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_attached_stats_exact_on_every_call(schedule, reduction):
    torch.manual_seed(0)
    model = Switching().double()
    with PerExampleStats(model, reduction=reduction) as stats:
        for path, (x, y) in zip(schedule + [0], batches(len(schedule) + 1), strict=True):
            model.path = path
            model.zero_grad(set_to_none=True)
            losses = ce(model(x), y)
            (losses.sum() if reduction == "sum" else losses.mean()).backward()
            norms, by, sum_sq = stats.sq_norms(), stats.sq_norms_by_param(), stats.sum_sq()
            ref_norms, ref_sq, _ = reference(model, path, x, y)   # its forwards come after
            assert rel(norms, ref_norms) < TOL, path
            assert rel(sum(by.values()), ref_norms) < TOL, path
            for n, v in sum_sq.items():
                assert rel(v, ref_sq[n]) < TOL, (path, n)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_fresh_stats_exact_on_every_call(schedule):
    torch.manual_seed(1)
    model = Switching().double()
    for path, (x, y) in zip(schedule + [0], batches(len(schedule) + 1, seed=1), strict=True):
        model.path = path
        res = per_example_stats(model, ce, x, y)
        ref_norms, ref_sq, _ = reference(model, path, x, y)
        assert rel(res.sq_norms, ref_norms) < TOL, path
        for n, v in res.sum_sq.items():
            assert rel(v, ref_sq[n]) < TOL, (path, n)


def count_walks(monkeypatch):
    """Counts of (chain walks that proved the attribution, full walks)."""
    counts = {"chain": 0, "full": 0}
    chain, full = PerExampleStats._chain_attribution, PerExampleStats._graph_attribution

    def spy_chain(self, output):
        ok = chain(self, output)
        counts["chain"] += ok
        return ok

    def spy_full(self, output):
        counts["full"] += 1
        return full(self, output)

    monkeypatch.setattr(PerExampleStats, "_chain_attribution", spy_chain)
    monkeypatch.setattr(PerExampleStats, "_graph_attribution", spy_full)
    return counts


def test_chain_walk_decides_only_chains(monkeypatch):
    """Paths 0 and 3 are chains (the cheap proof holds); 1, 2 and 4 branch into a parameter
    outside its layer and go to the full walk, which attributes it to the model call."""
    counts = count_walks(monkeypatch)
    torch.manual_seed(2)
    model = Switching().double()
    x, y = batches(1)[0]
    seen = []
    with PerExampleStats(model) as stats:
        for path in range(5):
            model.path = path
            before = dict(counts)
            ce(model(x), y).sum().backward()
            stats.sq_norms()
            seen.append((counts["chain"] - before["chain"], counts["full"] - before["full"],
                         sorted(stats._names[k] for k in stats._nonlocal)))
    assert seen == [(1, 0, []), (0, 1, ["fc2.weight"]), (0, 1, ["head.weight"]),
                    (1, 0, []), (0, 1, ["head.bias"])]


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_shipped_models_take_the_chain_walk(monkeypatch, name):
    """The MLP and the CNN of sgdlab.models (the benchmark's models) are proved by the chain
    walk, and the numbers are exact."""
    counts = count_walks(monkeypatch)
    data = "mnist1d" if name == "mlp" else "digits"
    model = models.build(name, data, seed=0).double()
    shape = (40,) if name == "mlp" else (1, 8, 8)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(B, *shape, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (B,), generator=g)
    res = per_example_stats(model, ce, x, y)
    ref_norms, ref_sq, _ = per_example_reference(model, ce, x, y)
    assert counts == {"chain": 1, "full": 0}
    assert rel(res.sq_norms, ref_norms) < TOL
    for n, v in res.sum_sq.items():
        assert rel(v, ref_sq[n]) < TOL, n


def test_user_forward_hooks_that_add_a_use(monkeypatch):
    """A forward hook on a layer that adds a use of another layer's weight, registered before
    and after the statistics' own hooks: never a chain, exact."""
    counts = count_walks(monkeypatch)
    torch.manual_seed(4)
    model = Switching().double()
    x, y = batches(1, seed=4)[0]

    def extra(m, args, out):
        return out + F.linear(args[0], model.fc2.weight)

    for when in ("before", "after"):
        handle = model.fc2.register_forward_hook(extra) if when == "before" else None
        with PerExampleStats(model) as stats:
            if when == "after":
                handle = model.fc2.register_forward_hook(extra)
            ce(model(x), y).sum().backward()
            norms = stats.sq_norms()
        ref_norms, _, _ = per_example_reference(model, ce, x, y)
        handle.remove()
        assert rel(norms, ref_norms) < TOL, when
    assert counts["chain"] == 0 and counts["full"] == 2


def test_inplace_relu_and_input_requiring_grad(monkeypatch):
    """ReLU(inplace=True) after a layer keeps the chain; an input that requires grad (a leaf
    edge) goes to the full walk; both exact."""
    counts = count_walks(monkeypatch)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(inplace=True), nn.Linear(7, 3)).double()
    x, y = batches(1, seed=5)[0]
    for leaf in (False, True):
        xi = x.clone().requires_grad_(leaf)
        res = per_example_stats(model, ce, xi, y)
        ref_norms, _, _ = per_example_reference(model, ce, x, y)
        assert rel(res.sq_norms, ref_norms) < TOL, leaf
    assert counts == {"chain": 1, "full": 1}


class Counting(Switching):
    """Takes path ``schedule[n]`` on its n-th call (0 after the schedule), whoever calls it."""

    def __init__(self, schedule) -> None:
        super().__init__()
        self.schedule, self.calls = list(schedule), 0

    def forward(self, x):
        n, self.calls = self.calls, self.calls + 1
        return self.run(x, self.schedule[n] if n < len(self.schedule) else 0)


@pytest.mark.parametrize("schedule", [[0, 1, 0], [0, 0, 2, 0], [0, 3, 1, 0]])
def test_forward_that_counts_its_calls(schedule):
    """The forward switches by itself on its 2nd/3rd call: every call gives the exact numbers
    of the path it took, or — where the per-example re-run of the model call takes another
    path than the batched call did — the clear refusal; never a wrong number."""
    torch.manual_seed(6)
    model = Counting(schedule).double()
    fixed = Switching().double()
    fixed.load_state_dict(model.state_dict())
    refused = 0
    for n, (x, y) in enumerate(batches(len(schedule) + 1, seed=6)):
        path = schedule[model.calls] if model.calls < len(schedule) else 0
        try:
            res = per_example_stats(model, ce, x, y)
        except ValueError as e:
            assert "does not treat the examples of a batch independently" in str(e)
            refused += 1
            model.calls = n + 1
            continue
        model.calls = n + 1                 # the re-runs, if any, counted too
        ref_norms, ref_sq, _ = reference(fixed, path, x, y)
        assert rel(res.sq_norms, ref_norms) < TOL, (n, path)
        for k, v in res.sum_sq.items():
            assert rel(v, ref_sq[k]) < TOL, (n, path, k)
    assert refused <= sum(p in (1, 2) for p in schedule)


def test_accumulate_class():
    assert pe._ACCUMULATE.__name__ == "AccumulateGrad"


def test_frozen_after_construction_is_left_to_the_full_walk(monkeypatch):
    """A weight frozen after the constructor: no edge where the chain walk expects one, so
    the full walk decides (whatever it decides, the chain walk does not)."""
    counts = count_walks(monkeypatch)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    x, y = batches(1, seed=7)[0]
    with PerExampleStats(model):
        model[0].weight.requires_grad_(False)
        try:
            ce(model(x), y).sum().backward()
        except RuntimeError:
            pass
    model[0].weight.requires_grad_(True)
    assert counts == {"chain": 0, "full": 1}
