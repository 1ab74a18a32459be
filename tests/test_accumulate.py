"""Gradient accumulation in the Trainer (``accumulate``) and the micro-batch two-batch noise
scale (``microbatch_noise_scale``), against one-batch training and a hand computation from a
float64 per-example autograd loop (tests/_zoo.py).

Tolerances: the accumulated trajectory equals the one-batch trajectory up to the order of
float summation: max |Δθ| ≤ 1e-5·max|θ| after 30 float32 steps (measured: ≤ 1.2e-7), and
≤ 1e-12·max|θ| in float64. The estimator: 1e-8 relative (float64).
"""

from __future__ import annotations

import pytest
import torch

import sgdlab
from sgdlab.cli import build_parser
from sgdlab.config import ConfigError, from_dict
from sgdlab.probes.noise import two_batch_estimates
from sgdlab.train import Trainer

from _zoo import TinyGRU, cases, per_example_ce, per_example_reference

REL = 1e-8


def _cfg(**kw):
    base = dict(dataset="mnist1d", model="mlp", optimizer="momentum", lr=0.1,
                optimizer_options={"beta": 0.9, "weight_decay": 1e-3}, batch_size=64,
                steps=30, seed=0)
    base.update(kw)
    return from_dict(base)


def _flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_accumulated_steps_follow_the_one_batch_trajectory(model):
    one = Trainer(_cfg(model=model), progress=False)
    one.fit()
    acc = Trainer(_cfg(model=model, accumulate=4), progress=False)
    acc.fit()
    a, b = _flat(one.model), _flat(acc.model)
    assert float((a - b).abs().max()) <= 1e-5 * float(a.abs().max())
    la = [r["loss"] for r in one.history if r["kind"] == "train"]
    lb = [r["loss"] for r in acc.history if r["kind"] == "train"]
    assert lb == pytest.approx(la, rel=1e-5)


def test_accumulation_in_float64_is_exact_to_roundoff():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(96, 4, 3, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 5, (96,), generator=gen)
    out = []
    for acc in (1, 8):
        torch.manual_seed(0)
        t = Trainer({"optimizer": "sgd", "lr": 0.2, "batch_size": 16, "steps": 12, "seed": 0,
                     "accumulate": acc},
                    model=TinyGRU().double(), data=(x[:80], y[:80], x[80:], y[80:]),
                    loss_fn=per_example_ce, progress=False)
        assert t.fit()["status"] == "completed"
        out.append(_flat(t.model))
    assert out[0].dtype == torch.float64
    assert float((out[0] - out[1]).abs().max()) <= 1e-12 * float(out[0].abs().max())


def test_accumulate_config_and_cli():
    assert "accumulate" not in _cfg().to_dict()          # default 1: configs/keys unchanged
    assert _cfg(accumulate=4).to_dict()["accumulate"] == 4
    with pytest.raises(ConfigError, match="must be divisible by accumulate"):
        _cfg(accumulate=5)
    with pytest.raises(ConfigError, match="accumulate must be"):
        _cfg(accumulate=0)
    args = build_parser().parse_args(["train", "--accumulate", "4", "--steps", "3"])
    assert args.accumulate == 4


def _micro_reference(model, parts):
    """small, big, b_small, B from per-example gradients of each micro-batch (float64)."""
    means, sizes = [], []
    for xb, yb in parts:
        _, _, grads = per_example_reference(model, per_example_ce, xb, yb)
        g = torch.stack([torch.cat([d[n].reshape(-1) for n in d]) for d in grads])
        means.append(g.mean(0))
        sizes.append(g.shape[0])
    bsz = sum(sizes)
    big = sum(m * b for m, b in zip(means, sizes, strict=True)) / bsz
    small = sum(float(m @ m) for m in means) / len(means)
    b_small = len(sizes) / sum(1 / b for b in sizes)
    return small, float(big @ big), b_small, bsz


@pytest.mark.parametrize("split", [(3, 3, 3, 3), (5, 4, 3)])
def test_microbatch_noise_scale_matches_the_per_example_loop(split):
    model, x, y = cases(batch=12)["transformer_pre_norm"]
    bounds = torch.tensor((0,) + split).cumsum(0).tolist()
    parts = [(x[a:b], y[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    mon = sgdlab.Monitor(model, opt, per_example_ce, instruments=["microbatch_noise_scale"],
                         every=1)
    opt.zero_grad()
    for xb, yb in parts:             # (1/B) Σ_(b∈m) ℓ_b per micro-batch: p.grad = ĝ_B
        mon.begin(xb, yb)
        (per_example_ce(model(xb), yb).sum() / x.shape[0]).backward()
    mon.gradients_ready()
    opt.step()
    (rec,) = mon.records
    small, big, b_small, bsz = _micro_reference(model, parts)
    g2, tr = two_batch_estimates(small, big, b_small, bsz)
    assert rec["micro_batches"] == len(split) and rec["b_big"] == bsz
    assert rec["b_small"] == pytest.approx(b_small, rel=1e-14)
    assert rec["g_small_norm_sq"] == pytest.approx(small, rel=REL)
    assert rec["g_big_norm_sq"] == pytest.approx(big, rel=REL)
    assert rec["g_norm_sq"] == pytest.approx(g2, rel=REL)
    assert rec["tr_sigma"] == pytest.approx(tr, rel=REL)
    if g2 > 0:
        assert rec["b_simple"] == pytest.approx(tr / g2, rel=REL)
    else:
        assert rec["b_simple"] is None and "b_simple" in rec["undefined"]


def test_microbatch_noise_scale_in_the_trainer_and_without_accumulation(capsys):
    t = Trainer(_cfg(accumulate=4, steps=20, probes=["microbatch_noise_scale", "noise_scale"],
                     probe_every=5), progress=False)
    t.fit()
    recs = [r for r in t.history if r["kind"] == "probe"]
    micro = [r for r in recs if r["name"] == "microbatch_noise_scale"]
    assert [r["step"] for r in micro] == [5, 10, 15, 20]
    assert all(r["b_small"] == 16 and r["b_big"] == 64 and r["micro_batches"] == 4
               for r in micro)
    assert all(r["tr_sigma"] > 0 for r in micro)
    # the per-example instrument combines the 4 micro-batches into the step's batch of 64
    assert all(r["batch_size"] == 64 for r in recs if r["name"] == "noise_scale")
    assert "disabled" not in capsys.readouterr().err
    t = Trainer(_cfg(steps=5, probes=["microbatch_noise_scale"], probe_every=5),
                progress=False)
    t.fit()
    err = capsys.readouterr().err
    assert "instrument microbatch_noise_scale disabled: needs gradient accumulation" in err
    assert not [r for r in t.history if r["kind"] == "probe"]


def test_accumulation_with_instruments_never_changes_training():
    bare = Trainer(_cfg(accumulate=4, steps=12), progress=False)
    bare.fit()
    watched = Trainer(_cfg(accumulate=4, steps=12, probe_every=3,
                           probes=["microbatch_noise_scale", "noise_scale:window=2",
                                   "norm_test", "mean_gsnr", "update_size"]), progress=False)
    watched.fit()
    for a, b in zip(bare.model.state_dict().values(), watched.model.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
