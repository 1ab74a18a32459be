"""Claim 13 (SPEC §4.13): the exact quadratic deviation against its 1-D closed form and its
ε → 0 limit, the bootstrap slope, judge() on constructed numbers, a smoke run."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from sgdlab.experiments import gradient_flow as gf
from sgdlab.experiments.base import Context


def test_quadratic_deviation_closed_form_and_limit():
    """1-D: bias = ((1 − εh)^K − e^{−hT})δ₀, var = ε²σ²/B·(1 − ρ^{2K})/(1 − ρ²); in d
    dimensions var/ε → tr C(T) and the bias → (εT/2)‖H²e^{−HT}δ₀‖ as ε → 0."""
    h, s2, B, d0, T = 0.7, 2.0, 4, 1.5, 3.0
    for eps in (0.5, 0.1, 0.01):
        r = gf.quadratic_deviation(np.array([[h]]), np.array([[s2]]), B, np.array([d0]), eps, T)
        k = round(T / eps)
        rho = 1 - eps * h
        assert r["steps"] == k
        assert r["bias_sq"] == pytest.approx(((rho**k - math.exp(-h * T)) * d0) ** 2, rel=1e-10)
        assert r["var"] == pytest.approx(eps**2 * s2 / B * (1 - rho ** (2 * k)) / (1 - rho**2),
                                         rel=1e-10)
    prob = gf.quadratic_problem()
    tiny = gf.quadratic_deviation(prob["H"], prob["sigma"], 1, prob["delta0"], 1e-3, 2.0)
    assert tiny["var"] / 1e-3 == pytest.approx(tiny["trC"], rel=2e-3)
    assert math.sqrt(tiny["bias_sq"]) == pytest.approx(tiny["first_order_bias"], rel=2e-2)
    with pytest.raises(ValueError):
        gf.quadratic_deviation(prob["H"], prob["sigma"], 1, prob["delta0"], 0.3, 1.0)


def test_bootstrap_slope_recovers_a_power_law():
    rng = np.random.default_rng(0)
    eps = [0.4, 0.1, 0.025]
    sq = [(e * rng.chisquare(50, 64) / 50).tolist() for e in eps]      # E‖δ‖² ∝ ε
    s, se = gf.bootstrap_slope(eps, sq, reps=200)
    assert s == pytest.approx(0.5, abs=3 * se + 0.01) and 0 < se < 0.05


def _m(net_power=0.5, gd_power=1.0, quad_scale=1.0, chains=64, gd_scale=0.01, ratio=0.5,
       ref_err=1e-10, dof=40):
    """A measure() output that agrees with the theory; the arguments make it disagree."""
    rng = np.random.default_rng(1)
    rows = []
    for n in (1, 2, 4, 8, 16, 32):
        e = 0.4 / n
        ms = 2.0 * e ** (2 * net_power)
        sq = ms * rng.chisquare(dof, chains) / dof
        rows.append({"n": n, "eps": e, "steps": 25 * n, "sq": sq.tolist(), "ms": float(sq.mean()),
                     "ms_se": float(sq.std(ddof=1) / math.sqrt(chains)),
                     "gd_dev": gd_scale * e**gd_power, "diverged": 0})
    e0 = rows[-1]["eps"]
    net = {"rows": rows, "chains": chains, "T": 10.0, "n_train": 500, "flow_loss": [2.3, 1.9],
           "flow_times": [0, 10], "flow_displacement": 3.0, "flow_nfev": 200,
           "flow_success": True, "ref_err": ref_err, "tr_sigma": [6.0, 8.0],
           "int_tr_sigma_over_B": rows[-1]["ms"] / (ratio * e0), "lambda_max": [0.6, 1.5],
           "params": 2700}
    qrows = []
    for n in (1, 2, 4, 8):
        e = 0.5 / n
        ms = 3.0 * e
        qrows.append({"n": n, "eps": e, "steps": 10 * n, "bias_sq": 1e-4, "var": ms,
                      "ms": ms, "first_order_var": ms, "first_order_bias": 0.01, "trC": 3.0,
                      "measured": quad_scale * ms, "se": 0.01 * ms})
    quad = {"rows": qrows, "chains": 2000, "T": 5.0, "flow_norm": 1.0, "start_norm": 8.0}
    return {"network": net, "quadratic": quad}


def _v(m):
    return [c.verdict for c in gf.judge(m)]


def test_judge_on_constructed_numbers():
    checks = gf.judge(_m())
    assert [c.basis for c in checks] == ["notes"] + ["derived"] * 4
    assert _v(_m()) == ["PASS"] * 5
    assert checks[0].finding                                 # the notes give no rate
    assert _v(_m(net_power=-0.2))[0] == "FAIL"               # deviation grows with n
    assert _v(_m(net_power=0.0, chains=4, dof=1))[0] == "INCONCLUSIVE"
    assert _v(_m(net_power=1.0, gd_scale=1e-4))[1] == "FAIL"  # slope 1, not ½
    assert _v(_m(net_power=0.5, chains=4, dof=1))[1] == "INCONCLUSIVE"
    assert _v(_m(gd_scale=50.0))[1] == "INCONCLUSIVE"       # GD deviation dominates: no regime
    assert _v(_m(quad_scale=1.2))[2] == "FAIL"               # 20 se off the exact formula
    assert _v(_m(gd_power=1.5))[3] == "FAIL"
    assert _v(_m(ratio=2.0))[4] == "FAIL"                    # above the contracting bound
    assert _v(_m(ref_err=1e-4))[4] == "FAIL"                 # reference not accurate enough
    m = copy.deepcopy(_m())
    m["network"]["rows"][2]["diverged"] = 1
    assert _v(m)[0] == "INCONCLUSIVE"


def test_smoke_run(tmp_path):
    res = gf.run(Context(tmp_path, mode="smoke"))
    assert res.error is None and len(res.checks) == 5
    assert res.checks[0].verdict == "PASS"
    assert res.figures == ["figures/13-gradient-flow_deviation.png"]
    assert (tmp_path / res.figures[0]).is_file()
