"""The curvature instruments (``sharpness`` with top-k and the edge-of-stability bounds,
``hessian_trace``) in a plain user loop and in ``sgdlab train``.

References: the functions of :mod:`sgdlab.probes.curvature` called directly on a copy of the
parameters and data the instrument saw (exact equality: the same operations on the same
numbers), the dense float64 Hessian of ``tests/_zoo.py`` (1e-9 relative), and the
stability bounds of SPEC §4.3, §4.4, §4.6 (2/η, 2(1 + β)/η, EMA 2(1 + β)/((1 − β)η′)).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import sgdlab
from sgdlab import instruments
from sgdlab.cli import main
from sgdlab.config import ConfigError
from sgdlab.metrics_log import read_metrics
from sgdlab.optim import create as create_optimizer
from sgdlab.probes.curvature import hessian_trace, top_eigenvalues

from _zoo import OwnParamAttention, TinyTransformer, dense_hessian, per_example_ce


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def _data(n: int = 24, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 6, generator=gen, dtype=torch.float64),
            torch.randint(0, 3, (n,), generator=gen))


def _loop(model, opt, x, y, steps, lrs=None, **monitor_kw):
    """A user's loop with a Monitor; returns (monitor, {step: (model copy, batch)}) with the
    parameters and batch each measured step's gradient was taken at."""
    mon = sgdlab.Monitor(model, opt, per_example_ce, **monitor_kw)
    seen = {}
    for t in range(1, steps + 1):
        if lrs is not None:
            for g in opt.param_groups:
                g["lr"] = lrs[t - 1]
        xb, yb = x[t % 3::3], y[t % 3::3]
        opt.zero_grad()
        with mon.step(xb, yb):
            per_example_ce(model(xb), yb).mean().backward()
        seen[t] = (copy.deepcopy(model), (xb, yb))
        opt.step()
    mon.close()
    return mon, seen


@pytest.mark.parametrize("fixed_data", [True, False])
def test_instruments_match_the_direct_calls(fixed_data):
    """Every record equals the curvature function called on the same parameters and data
    (the Monitor's hessian_data cut to ``subset``, or the step's batch), seed = the step."""
    x, y = _data()
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    lrs = [0.1, 0.1, 0.05, 0.05]               # a schedule: the bounds follow η per step
    insts = ["sharpness", "sharpness:k=3:subset=16", "hessian_trace:samples=8:subset=16"]
    mon, seen = _loop(model, opt, x, y, 4, lrs, instruments=insts, every=2,
                      hessian_data=(x, y) if fixed_data else None)
    assert [(r["name"], r["step"]) for r in mon.records] == [
        (n, s) for s in (2, 4) for n in ("sharpness", "sharpness", "hessian_trace")]
    for rec in mon.records:
        t = rec["step"]
        ref_model, (xb, yb) = seen[t]
        ref_model.eval()
        sub = 1024 if rec["name"] == "sharpness" and "eigenvalues" not in rec else 16
        xd, yd = (x[:sub], y[:sub]) if fixed_data else (xb, yb)
        lr = lrs[t - 1]
        if rec["name"] == "hessian_trace":
            ref = hessian_trace(ref_model, per_example_ce, xd, yd, samples=8, seed=t)
            assert {k: rec[k] for k in ("trace", "trace_se", "trace_sq", "trace_sq_se",
                                        "samples", "hvps")} == {
                "trace": ref.trace, "trace_se": ref.trace_se, "trace_sq": ref.trace_sq,
                "trace_sq_se": ref.trace_sq_se, "samples": 8, "hvps": ref.hvps}
            continue
        if "eigenvalues" in rec:
            ref = top_eigenvalues(ref_model, per_example_ce, xd, yd, k=3, tol=1e-3, seed=t)
            assert rec["eigenvalues"] == [float(v) for v in ref.eigenvalues]
            assert rec["eigenvalues"] == sorted(rec["eigenvalues"], reverse=True)
        else:                       # k = 1: Lanczos too, at most iters = 20 products
            ref = top_eigenvalues(ref_model, per_example_ce, xd, yd, k=1, tol=1e-3,
                                  max_iter=20, seed=t)
        lam, iterations = float(ref.eigenvalues[0]), ref.hvps
        assert rec["converged"] == ref.converged
        assert rec["stability_bound"] == 2 / lam
        assert rec["lambda_max"] == lam and rec["iterations"] == iterations
        assert rec["lr_times_lambda"] == lr * lam and rec["lr"] == lr
        assert rec["momentum_form"] == "heavy_ball" and rec["momentum_beta"] == 0.9
        assert rec["gd_threshold"] == 2 / lr
        assert rec["eos_threshold"] == pytest.approx(2 * 1.9 / lr, rel=1e-15)
        assert rec["lr_lambda_threshold"] == pytest.approx(3.8, rel=1e-15)
        assert rec["eos_ratio"] == pytest.approx(lr * lam / 3.8, rel=1e-15)


def test_ggn_option_is_passed_through():
    """``curvature=ggn``: the records equal the curvature functions' GGN on the same
    parameters and data (exact), and say which matrix they measured."""
    x, y = _data()
    model = _mlp()
    mon, seen = _loop(model, torch.optim.SGD(model.parameters(), lr=0.1), x, y, 1,
                      instruments=["sharpness:curvature=ggn", "sharpness:k=2:curvature=ggn",
                                   "hessian_trace:samples=4:curvature=ggn"], every=1,
                      hessian_data=(x, y))
    one, two, trace = mon.records
    ref_model = seen[1][0].eval()
    ref = top_eigenvalues(ref_model, per_example_ce, x, y, k=1, tol=1e-3, max_iter=20,
                          seed=1, curvature="ggn")
    assert one["lambda_max"] == float(ref.eigenvalues[0]) and one["curvature"] == "ggn"
    ref2 = top_eigenvalues(ref_model, per_example_ce, x, y, k=2, tol=1e-3, seed=1,
                           curvature="ggn")
    assert two["eigenvalues"] == ref2.eigenvalues.tolist()
    ref_t = hessian_trace(ref_model, per_example_ce, x, y, samples=4, seed=1, curvature="ggn")
    assert (trace["trace"], trace["trace_sq"], trace["curvature"]) == (
        ref_t.trace, ref_t.trace_sq, "ggn")
    assert trace["trace"] > 0                    # G is positive semi-definite


def test_k_default_keeps_the_record_fields():
    x, y = _data()
    model = _mlp()
    mon, _ = _loop(model, torch.optim.SGD(model.parameters(), lr=0.1), x, y, 1,
                   instruments=["sharpness"], every=1)
    (rec,) = mon.records
    assert {"lambda_max", "stability_bound", "lr_times_lambda", "iterations"} <= set(rec)
    assert "eigenvalues" not in rec
    assert rec["momentum_form"] == "sgd" and rec["momentum_beta"] == 0.0
    assert rec["eos_threshold"] == rec["gd_threshold"] == 2 / 0.1


def test_top5_against_the_dense_hessian():
    x, y = _data(n=20)
    model = _mlp(3)
    mon, seen = _loop(model, torch.optim.SGD(model.parameters(), lr=0.05), x, y, 1,
                      instruments=["sharpness:k=5:tol=1e-10"], every=1, hessian_data=(x, y))
    (rec,) = mon.records
    ref_model = seen[1][0].eval()
    exact = torch.linalg.eigvalsh(dense_hessian(ref_model, per_example_ce, x, y))
    top = exact.flip(0)[:5].tolist()
    scale = float(exact.abs().max())
    assert len(rec["eigenvalues"]) == 5 and rec["converged"] is True
    for got, want in zip(rec["eigenvalues"], top, strict=True):
        assert abs(got - want) <= 1e-9 * scale
    assert rec["lambda_max"] == rec["eigenvalues"][0]
    assert rec["stability_bound"] == 2 / rec["lambda_max"]


@pytest.mark.parametrize("make, form, beta, factor", [
    (lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9), "heavy_ball", 0.9, 3.8),
    (lambda ps: create_optimizer("momentum", ps, lr=0.1, beta=0.9), "heavy_ball", 0.9, 3.8),
    (lambda ps: create_optimizer("sgd", ps, lr=0.1, momentum=0.5), "heavy_ball", 0.5, 3.0),
    (lambda ps: create_optimizer("momentum", ps, lr=0.1, beta=0.9, style="ema"), "ema", 0.9,
     3.8 / 0.1),
    (lambda ps: create_optimizer("sgd", ps, lr=0.1), "sgd", 0.0, 2.0),
    (lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True), None, None, None),
    (lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.1), None, None, None),
    (lambda ps: torch.optim.Adam(ps, lr=0.1), None, None, None),
], ids=["torch_sgd_momentum", "sgdlab_heavy_ball", "sgdlab_sgd_momentum", "sgdlab_ema",
        "sgdlab_sgd", "torch_nesterov", "torch_dampening", "adam"])
def test_momentum_beta_is_picked_up(make, form, beta, factor):
    """β of the first param group and SPEC's bound for its form: heavy ball ηλ < 2(1 + β)
    (§4.4), EMA η′λ < 2(1 + β)/(1 − β) (§4.6); unknown forms: β null, only 2/η."""
    x, y = _data()
    model = _mlp()
    opt = make(model.parameters())
    assert instruments.heavy_ball_momentum(opt) == (form, beta)
    mon, _ = _loop(model, opt, x, y, 1, instruments=["sharpness:iters=3"], every=1)
    (rec,) = mon.records
    assert rec["momentum_form"] == form and rec["momentum_beta"] == beta
    assert rec["gd_threshold"] == pytest.approx(2 / 0.1, rel=1e-15)
    if factor is None:
        assert rec["eos_threshold"] is None and rec["lr_lambda_threshold"] is None
    else:
        assert rec["lr_lambda_threshold"] == pytest.approx(factor, rel=1e-15)
        assert rec["eos_threshold"] == pytest.approx(factor / 0.1, rel=1e-15)


def test_sharpness_at_a_saddle_is_the_largest_eigenvalue():
    """At a saddle whose negative eigenvalue is the largest in magnitude, λ_max is the largest
    eigenvalue (power iteration, the k = 1 path until 2026-12-04, returned the negative
    one), against the dense Hessian: H = diag(−3, 1) of L = ½(−3u² + v²)."""

    class Saddle(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.tensor([0.3, -0.2], dtype=torch.float64))

        def forward(self, x):
            return x[:, :1] * 0 + (0.5 * (-3 * self.w[0] ** 2 + self.w[1] ** 2))

    model = Saddle()
    x = torch.zeros(4, 1, dtype=torch.float64)
    y = torch.zeros(4, dtype=torch.float64)

    def loss(out, t):
        return out[:, 0]

    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    mon = sgdlab.Monitor(model, opt, loss, instruments=["sharpness:tol=1e-10"], every=1)
    opt.zero_grad()
    with mon.step(x, y):
        loss(model(x), y).mean().backward()
    opt.step()
    (rec,) = mon.records
    assert rec["lambda_max"] == pytest.approx(1.0, rel=1e-9) and rec["converged"] is True
    assert rec["stability_bound"] == pytest.approx(2.0, rel=1e-9)


def test_weight_decay_lowers_the_thresholds():
    """Coupled weight decay ω makes a mode of curvature λ one of λ + ω: heavy ball is stable
    while η(λ + ω) < 2(1 + β). A direct simulation of torch's SGD on L = ½λw² finds the edge
    at the threshold the record gives."""
    lam, eta, beta, omega = 10.0, 0.1, 0.9, 0.5
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=eta, momentum=beta,
                          weight_decay=omega)
    rec = instruments.edge_of_stability(lam, eta, opt)
    assert rec["weight_decay"] == omega
    assert rec["eos_threshold"] == pytest.approx(2 * 1.9 / eta - omega, rel=1e-15)
    assert rec["gd_threshold"] == pytest.approx(2 / eta - omega, rel=1e-15)
    assert rec["eos_ratio"] == pytest.approx(eta * (lam + omega) / 3.8, rel=1e-15)

    def grows(curv):                         # torch's own step on ½·curv·w²
        w = torch.ones(1, requires_grad=True)
        o = torch.optim.SGD([w], lr=eta, momentum=beta, weight_decay=omega)
        for _ in range(400):
            o.zero_grad()
            (0.5 * curv * w ** 2).sum().backward()
            o.step()
        v = float(w)
        return not math.isfinite(v) or abs(v) > 1.0

    edge = rec["eos_threshold"]
    assert grows(edge * 1.01) and not grows(edge * 0.99)
    # decoupled decay with momentum has no SPEC threshold
    dec = create_optimizer("momentum", [torch.zeros(1, requires_grad=True)], lr=eta,
                           beta=beta, weight_decay=omega, decoupled=True)
    assert instruments.heavy_ball_momentum(dec) == (None, None)


def test_no_optimizer_gives_null_bounds():
    rec = instruments.edge_of_stability(3.0, None, None)
    assert rec["lr"] is None and rec["momentum_beta"] is None
    assert rec["gd_threshold"] is None and rec["undefined"] == ["gd_threshold"]


class _Noisy(nn.Module):
    """BatchNorm (running statistics change in training-mode forwards) and dropout (draws
    from the global RNG): the instruments must touch neither."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Tanh(),
                                 nn.Dropout(0.3), nn.Linear(8, 3))

    def forward(self, x):
        return self.net(x)


def test_monitoring_leaves_training_bit_identical():
    x, y = _data(n=32)

    def run(monitored):
        torch.manual_seed(5)
        model = _Noisy().double()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        mon = (sgdlab.Monitor(model, opt, per_example_ce, every=2, hessian_data=(x, y),
                              instruments=["sharpness:k=3", "hessian_trace:samples=4"])
               if monitored else None)
        for t in range(6):
            xb, yb = x[t % 2::2], y[t % 2::2]
            opt.zero_grad()
            with mon.step(xb, yb) if mon else torch.enable_grad():
                per_example_ce(model(xb), yb).mean().backward()
            assert model.training
            opt.step()
        if mon:
            mon.close()
            assert len(mon.records) == 6
        return model.state_dict(), opt.state_dict()["state"], torch.get_rng_state()

    plain, watched = run(False), run(True)
    assert plain[0].keys() == watched[0].keys()
    for k in plain[0]:
        assert torch.equal(plain[0][k], watched[0][k]), k
    for i in plain[1]:
        assert torch.equal(plain[1][i]["momentum_buffer"], watched[1][i]["momentum_buffer"])
    assert torch.equal(plain[2], watched[2])


def _attention_step(model, x, y, insts):
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = sgdlab.Monitor(model, opt, per_example_ce, every=1, instruments=insts)
    opt.zero_grad()
    with mon.step(x, y):
        per_example_ce(model(x), y).mean().backward()
    ref_model = copy.deepcopy(model).eval()
    opt.step()
    mon.close()
    return mon.records, ref_model


def test_attention_model_on_cpu_against_the_dense_hessian():
    """``nn.MultiheadAttention`` (SDPA inside: the math backend gives the double backward)
    against the dense float64 Hessian: the top 2 eigenvalues to 1e-8 relative, Hutchinson's
    tr H and tr H² within 4 standard errors (fixed seed)."""
    torch.manual_seed(0)
    model = OwnParamAttention(d=4, heads=2).double()
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(6, 4, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 5, (6,), generator=gen)
    (sharp, trace), ref_model = _attention_step(
        model, x, y, ["sharpness:k=2:tol=1e-10", "hessian_trace:samples=16"])
    h = dense_hessian(ref_model, per_example_ce, x, y)
    exact = torch.linalg.eigvalsh(h).flip(0)
    scale = float(exact.abs().max())
    for got, want in zip(sharp["eigenvalues"], exact[:2].tolist(), strict=True):
        assert abs(got - want) <= 1e-8 * scale
    ref = hessian_trace(ref_model, per_example_ce, x, y, samples=16, seed=1)
    assert trace["trace"] == ref.trace and trace["trace_sq"] == ref.trace_sq
    assert abs(trace["trace"] - float(h.trace())) <= 4 * trace["trace_se"]
    assert abs(trace["trace_sq"] - float((h * h).sum())) <= 4 * trace["trace_sq_se"]


def test_transformer_encoder_layer_on_cpu():
    """``nn.TransformerEncoderLayer`` (LayerNorm, SDPA, an embedding with padding_idx): the
    records equal the direct calls on the same parameters. (No dense reference here: the
    torch.func Hessian of ``_zoo.dense_hessian`` disagrees with finite differences of the
    gradient through LayerNorm in this torch, and with padding_idx the "Hessian" of the
    masked gradient is not symmetric.)"""
    torch.manual_seed(0)
    model = TinyTransformer(vocab=6, d=4, heads=2).double()
    gen = torch.Generator().manual_seed(4)
    x, y = torch.randint(0, 6, (6, 5), generator=gen), torch.randint(0, 5, (6,), generator=gen)
    (sharp, trace), ref_model = _attention_step(
        model, x, y, ["sharpness:k=2", "hessian_trace:samples=4"])
    ref = top_eigenvalues(ref_model, per_example_ce, x, y, k=2, tol=1e-3, seed=1)
    assert sharp["eigenvalues"] == ref.eigenvalues.tolist()
    assert all(math.isfinite(v) for v in sharp["eigenvalues"])
    ref_t = hessian_trace(ref_model, per_example_ce, x, y, samples=4, seed=1)
    assert (trace["trace"], trace["trace_sq"]) == (ref_t.trace, ref_t.trace_sq)
    assert model.training


def test_plots_are_written(tmp_path):
    x, y = _data()
    model = _mlp()
    opt = create_optimizer("momentum", model.parameters(), lr=0.1, beta=0.9, style="ema")
    mon, _ = _loop(model, opt, x, y, 4, [0.1, 0.1, 0.02, 0.02],
                   instruments=["sharpness:k=3", "hessian_trace:samples=4"], every=1,
                   out=tmp_path / "run")
    assert read_metrics(tmp_path / "run" / "metrics.jsonl") == mon.records
    for name in ("sharpness", "hessian_trace"):
        png = tmp_path / "run" / "plots" / f"probe_{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("spec, message", [
    ("sharpness:k=0", "k must be an integer >= 1, got 0"),
    ("sharpness:k=2.5", "k must be an integer >= 1, got 2.5"),
    ("sharpness:tol=0", "tol must be a number > 0, got 0"),
    ("hessian_trace:samples=1", "samples must be an integer >= 2, got 1"),
    ("hessian_trace:subset=0", "subset must be an integer >= 1, got 0"),
    ("hessian_trace:k=3", "unexpected keyword argument 'k'"),
    ("sharpness:curvature=fisher", "curvature must be one of hessian, ggn, got 'fisher'"),
])
def test_bad_option_is_one_clear_line(spec, message, tmp_path, capsys):
    with pytest.raises(ConfigError) as err:
        sgdlab.Monitor(_mlp(), None, per_example_ce, instruments=[spec])
    assert message in str(err.value) and spec in str(err.value)
    assert len(str(err.value).splitlines()) == 1
    out = tmp_path / "run"
    argv = ["train", "--dataset", "mnist1d", "--model", "mlp", "--steps", "2", "--quiet",
            "--probe", spec, "--out", str(out)]
    assert main(argv) == 2
    err_text = capsys.readouterr().err.strip()
    assert message in err_text and len(err_text.splitlines()) == 1
    assert not out.exists()


def test_cli_train_with_curvature_instruments(tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--dataset", "mnist1d", "--model", "mlp", "--model-opt", "width=8",
            "--data-opt", "n_train=128", "--optimizer", "sgd", "--opt", "momentum=0.9",
            "--lr", "0.05", "--batch-size", "16", "--steps", "4", "--seed", "1", "--quiet",
            "--probe", "sharpness:k=3,hessian_trace:samples=8", "--probe-every", "2",
            "--out", str(out)]
    assert main(argv) == 0
    probes = [r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "probe"]
    assert [(r["name"], r["step"]) for r in probes] == [
        ("sharpness", 2), ("hessian_trace", 2), ("sharpness", 4), ("hessian_trace", 4)]
    for r in probes:
        if r["name"] == "sharpness":
            assert len(r["eigenvalues"]) == 3 and r["momentum_beta"] == 0.9
            assert r["eos_threshold"] == pytest.approx(2 * 1.9 / 0.05)
            assert math.isfinite(r["lambda_max"])
        else:
            assert r["samples"] == 8 and r["hvps"] == 8 and r["trace_se"] > 0
    for name in ("sharpness", "hessian_trace"):
        assert (out / "plots" / f"probe_{name}.png").is_file()
