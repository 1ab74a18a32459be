"""Cockpit's cheap instruments and the windowed noise scale, against independent references.

Reference: tests/_zoo.per_example_reference (a float64 loop of one autograd backward per
example, on models sgdlab does not ship: attention, GRU, convs, tied embeddings); every
quantity is recomputed here from the per-example gradients g_b directly (not from the Gram
matrix or the statistics the instruments use). Tolerance 1e-8 relative (float64).
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

import sgdlab
from sgdlab import instruments
from sgdlab.instruments import NoiseScaleInstrument
from sgdlab.probes import gradient_stats
from sgdlab.probes.per_example import PerExampleStats

from _zoo import (
    TinyGRU,
    TinyTransformer,
    cases,
    per_example_ce,
    per_example_reference,
    train_watched,
)

REL = 1e-8
CHEAP = ["distance", "update_size", "grad_norm", "norm_test", "inner_test", "ortho_test",
         "mean_gsnr", "histogram"]


def _per_example(model, x, y):
    """(G (B, P) of per-example gradients g_b, names, sizes) in float64."""
    _, _, grads = per_example_reference(model, per_example_ce, x, y)
    names = list(grads[0])
    G = torch.stack([torch.cat([g[n].reshape(-1) for n in names]) for g in grads])
    return G, names, [grads[0][n].numel() for n in names], grads


def _reference_tests(G):
    """Norm, inner-product and orthogonality tests and mean GSNR straight from g_b."""
    B = G.shape[0]
    ghat = G.mean(0)
    g2 = float(ghat @ ghat)
    dev = G - ghat
    norm = math.sqrt(float((dev * dev).sum()) / (B - 1) / (B * g2))
    proj = G @ ghat                                   # ⟨g_b, ĝ⟩, mean ‖ĝ‖²
    inner = math.sqrt(float(((proj - g2) ** 2).sum()) / (B - 1) / (B * g2 * g2))
    orth = G - proj[:, None] * ghat[None, :] / g2     # components orthogonal to ĝ
    ortho = math.sqrt(float((orth * orth).sum()) / (B - 1) / (B * g2))
    var = (G * G).mean(0) - ghat ** 2                  # biased, as Cockpit
    gsnr = float((ghat ** 2 / (var + 1e-5)).mean())
    return {"norm_test": norm, "inner_test": inner, "ortho_test": ortho, "mean_gsnr": gsnr}


def _no_hooks(model: nn.Module) -> bool:
    return all(not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks)
               for m in model.modules())


def test_names_are_available():
    assert set(CHEAP) <= set(instruments.available())


@pytest.mark.parametrize("name", ["transformer_pre_norm", "mha_own_params", "gru",
                                  "conv1d_reflect", "conv2d_circular", "tied_embeddings",
                                  "twice_called"])
def test_gram_of_per_example_gradients_matches_the_loop(name):
    model, x, y = cases()[name]
    G, names, sizes, grads = _per_example(model, x, y)
    with PerExampleStats(model, norms=False, sum_sq=False, gram=True, reduction="mean") as st:
        per_example_ce(model(x), y).mean().backward()
    ref = G @ G.T
    got = st.gram()
    assert torch.allclose(got, ref, rtol=REL, atol=REL * float(ref.abs().max()))
    by_param = st.gram_by_param()
    for n in names:
        gp = torch.stack([g[n].reshape(-1) for g in grads])
        if n in by_param:
            k = gp @ gp.T
            assert torch.allclose(by_param[n], k, rtol=REL,
                                  atol=REL * max(float(ref.abs().max()), 1e-300)), n
        else:
            assert float(gp.abs().max()) == 0.0, n


@pytest.mark.parametrize("name", ["transformer_pre_norm", "gru", "conv1d_reflect",
                                  "tied_embeddings", "embedding_padding_idx"])
def test_cheap_instruments_match_the_per_example_loop(name):
    model, x, y = cases()[name]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    G, names, sizes, _ = _per_example(model, x, y)
    ref = _reference_tests(G)
    ghat = G.mean(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.5)
    mon = sgdlab.Monitor(model, opt, per_example_ce, instruments=CHEAP, every=1)
    opt.zero_grad()
    with mon.step(x, y):
        per_example_ce(model(x), y).mean().backward()
    opt.step()
    assert _no_hooks(model)
    recs = {r["name"]: r for r in mon.records}
    assert set(recs) == set(CHEAP)
    for key in ("norm_test", "inner_test", "ortho_test", "mean_gsnr"):
        assert recs[key][key] == pytest.approx(ref[key], rel=REL), key
    # per-parameter gradient norms: ĝ (the backward was of the mean)
    parts = dict(zip(names, torch.split(ghat, sizes), strict=True))
    gn = recs["grad_norm"]
    assert gn["grad_norm"] == pytest.approx(float(ghat.norm()), rel=REL)
    for n, v in parts.items():
        assert gn[f"{n}/grad_norm"] == pytest.approx(float(v.norm()), rel=REL, abs=1e-300), n
    # one SGD step with momentum from zero: θ' − θ = −η ĝ (measured at step 1: distance 0)
    assert recs["distance"]["distance"] == 0.0
    us = recs["update_size"]
    assert us["update_size"] == pytest.approx(0.3 * float(ghat.norm()), rel=REL)
    after = dict(model.named_parameters())
    for n in names:
        want = float((after[n].detach() - before[n]).norm())
        assert us[f"{n}/update_size"] == pytest.approx(want, rel=REL, abs=1e-300), n
    h = recs["histogram"]
    assert sum(h["grad_counts"]) == ghat.numel() == sum(h["param_counts"])
    assert h["grad_low"] == pytest.approx(float(ghat.min()), rel=REL)


def test_distance_from_init_accumulates_and_resumes():
    torch.manual_seed(0)
    model = TinyGRU().double()
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = sgdlab.Monitor(model, opt, per_example_ce, instruments=["distance"], every=3)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, 4, 3, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 5, (8,), generator=gen)
    for _ in range(3):
        opt.zero_grad()
        if mon.step_count == 2:     # the measurement is at the weights of step 3's gradient
            want = math.sqrt(sum(float((p.detach() - init[n]).pow(2).sum())
                                 for n, p in model.named_parameters()))
        with mon.step(x, y):
            per_example_ce(model(x), y).mean().backward()
        opt.step()
    (rec,) = mon.records
    assert rec["distance"] == pytest.approx(want, rel=REL) and want > 0
    # a Monitor built later (a resumed run) measures from the same θ_0 after load_state_dict
    mon2 = sgdlab.Monitor(model, opt, per_example_ce, instruments=["distance"], every=1)
    mon2.load_state_dict(mon.state_dict())
    assert all(torch.equal(mon2.instruments[0].init[n], init[n]) for n in init)


def test_gram_tests_refuse_gradient_accumulation_with_one_line(capsys):
    model, x, y = cases(batch=8)["gru"]
    mon = sgdlab.Monitor(model, None, per_example_ce, instruments=["inner_test", "norm_test"],
                         every=1)
    for xb, yb in ((x[:4], y[:4]), (x[4:], y[4:])):
        mon.begin(xb, yb)
        (per_example_ce(model(xb), yb).mean() / 2).backward()
    mon.gradients_ready()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "inner_test disabled" in err[0] and "accumulation" in err[0]
    # the norm test needs only the norms, which add up over micro-batches
    G, *_ = _per_example(model, x, y)
    (rec,) = mon.records
    assert rec["norm_test"] == pytest.approx(_reference_tests(G)["norm_test"], rel=REL)


def _zero_gradient_point():
    """ĝ = 0 exactly: zero weights, balanced labels, inputs in ± pairs."""
    model = nn.Linear(3, 2).double()
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    g = torch.Generator().manual_seed(0)
    half = torch.randn(4, 3, dtype=torch.float64, generator=g)
    return model, torch.cat([half, -half]), torch.tensor([0, 1, 0, 1] * 2)


def test_undefined_tests_are_null_never_nan_in_the_file(tmp_path):
    model, x, y = _zero_gradient_point()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    names = ["norm_test", "inner_test", "ortho_test",
             NoiseScaleInstrument(window=2)]
    mon = sgdlab.Monitor(model, opt, per_example_ce, instruments=names, every=2,
                         out=tmp_path / "run")
    for _ in range(2):
        opt.zero_grad()
        with mon.step(x, y):
            per_example_ce(model(x), y).mean().backward()
        opt.step()
    mon.close()
    recs = {r["name"]: r for r in mon.records}
    for key in ("norm_test", "inner_test", "ortho_test"):
        assert recs[key][key] is None and recs[key]["undefined"] == [key]
    ns = recs["noise_scale"]
    assert ns["g_norm_sq_window"] < 0 and ns["b_simple_window"] is None
    assert "b_simple_window" in ns["undefined"] and ns["window_batches"] == 2
    text = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert [json.loads(line)["name"] for line in text.splitlines()] == [
        "norm_test", "inner_test", "ortho_test", "noise_scale"]


def _reference_noise_scale(model, x, y):
    G, *_ = _per_example(model, x, y)
    B = G.shape[0]
    ghat = G.mean(0)
    g2 = float(ghat @ ghat)
    tr = float(((G - ghat) ** 2).sum()) / (B - 1)
    return tr, g2 - tr / B


def test_windowed_noise_scale_is_the_mean_over_k_batches():
    """window=3, every=4: measured at steps 2, 3, 4 and 6, 7, 8; the records of steps 4 and 8
    hold the means of those three batches' unbiased estimates, computed here by hand."""
    torch.manual_seed(0)
    model = TinyTransformer(vocab=8, d=4, heads=2).double()
    gen = torch.Generator().manual_seed(2)
    data = [(torch.randint(0, 8, (6, 5), generator=gen), torch.randint(0, 5, (6,), generator=gen))
            for _ in range(8)]
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mon = sgdlab.Monitor(model, opt, per_example_ce,
                         instruments=[NoiseScaleInstrument(window=3)], every=4)
    refs = {}
    for t, (xb, yb) in enumerate(data, start=1):
        refs[t] = _reference_noise_scale(copy.deepcopy(model), xb, yb)
        opt.zero_grad()
        with mon.step(xb, yb):
            per_example_ce(model(xb), yb).mean().backward()
        opt.step()
    assert [r["step"] for r in mon.records] == [4, 8]
    for rec in mon.records:
        t = rec["step"]
        trs = [refs[s][0] for s in (t - 2, t - 1, t)]
        g2s = [refs[s][1] for s in (t - 2, t - 1, t)]
        assert rec["window_batches"] == 3
        assert rec["tr_sigma_window"] == pytest.approx(sum(trs) / 3, rel=REL)
        assert rec["g_norm_sq_window"] == pytest.approx(sum(g2s) / 3, rel=REL)
        want = sum(trs) / sum(g2s)
        if want > 0:
            assert rec["b_simple_window"] == pytest.approx(want, rel=REL)
        assert rec["tr_sigma"] == pytest.approx(refs[t][0], rel=REL)   # this batch's own
    # a resumed instrument continues the window exactly
    inst = NoiseScaleInstrument(window=3)
    inst.load_state_dict(mon.instruments[0].state_dict())
    assert inst.windowed.entries == mon.instruments[0].windowed.entries


def test_window_skips_a_batch_of_one():
    model, x, y = cases()["gru"]
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    mon = sgdlab.Monitor(model, opt, per_example_ce,
                         instruments=[NoiseScaleInstrument(window=3)], every=3)
    for xb, yb in ((x, y), (x[:1], y[:1]), (x, y)):
        opt.zero_grad()
        with mon.step(xb, yb):
            per_example_ce(model(xb), yb).mean().backward()
        opt.step()
    (rec,) = mon.records
    tr, g2 = _reference_noise_scale(model, x, y)
    assert rec["step"] == 3 and rec["window_batches"] == 2
    assert rec["tr_sigma_window"] == pytest.approx(tr, rel=REL)
    with pytest.raises(ValueError, match="window must be an integer >= 1"):
        NoiseScaleInstrument(window=0)


@pytest.mark.parametrize("arch", ["transformer", "gru"])
def test_cheap_instruments_never_change_training(arch, tmp_path):
    gen = torch.Generator().manual_seed(1)
    if arch == "transformer":
        fn, x = TinyTransformer, torch.randint(0, 20, (32, 5), generator=gen)
    else:
        fn, x = TinyGRU, torch.randn(32, 4, 3, generator=gen)
    y = torch.randint(0, 5, (32,), generator=gen)
    bare, _ = train_watched(fn, x, y, 6)
    insts = CHEAP + [NoiseScaleInstrument(window=2)]
    watched, mon = train_watched(fn, x, y, 6, {"instruments": insts, "every": 2,
                                                "out": tmp_path / "run", "tensorboard": True})
    for (n, a), b in zip(bare.state_dict().items(), watched.state_dict().values(), strict=True):
        assert torch.equal(a, b), n
    assert {r["name"] for r in mon.records} == set(CHEAP) | {"noise_scale"}
    assert [r["step"] for r in mon.records if r["name"] == "inner_test"] == [2, 4, 6]
    assert _no_hooks(watched)
    assert (tmp_path / "run" / "plots" / "histograms.png").is_file()
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_probe_functions_guard_degenerate_input():
    with pytest.raises(ValueError, match="at least 2 examples"):
        gradient_stats.inner_test(torch.ones(1, 1))
    assert math.isnan(gradient_stats.ortho_test(torch.zeros(3, 3)))
    assert math.isnan(gradient_stats.norm_test(1.0, 0.0, 4))
    counts, lo, hi = gradient_stats.histogram([torch.full((5,), 2.0)], bins=4)
    assert sum(counts) == 5 and lo < 2.0 < hi


def test_instrument_options_in_names_and_configs():
    from sgdlab.config import ConfigError, from_dict

    (inst,) = instruments.create(["noise_scale:window=8"])
    assert isinstance(inst, NoiseScaleInstrument) and inst.window == 8
    assert instruments.parse("mean_gsnr:epsilon=1e-8").epsilon == 1e-8
    assert instruments.parse("histogram:bins=16").bins == 16
    for bad, match in (("noise_scale:window=0", "window must be an integer >= 1"),
                       ("noise_scale:windw=3", "unexpected keyword"),
                       ("noise_scale:window", "options are KEY=VALUE"),
                       ("hessian:k=2", "probe must be one of")):
        with pytest.raises(ConfigError, match=match):
            instruments.parse(bad)
    cfg = from_dict({"dataset": "mnist1d", "model": "mlp", "steps": 5,
                     "probes": ["noise_scale:window=4"]})
    assert cfg.probes == ["noise_scale:window=4"]
    with pytest.raises(ConfigError, match="window must be"):
        from_dict({"dataset": "mnist1d", "model": "mlp", "steps": 5,
                   "probes": ["noise_scale:window=-1"]})
