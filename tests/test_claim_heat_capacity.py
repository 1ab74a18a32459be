"""Claim 2 (heat capacity, SPEC §4.2) at smoke budgets: structure, finite numbers, and the
exact parts (predictions, optima) at their real tolerances; judge() on hand-made numbers
(PASS, FAIL, INCONCLUSIVE)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sgdlab.experiments import heat_capacity as hc
from sgdlab.experiments.base import VERDICTS, Context
from sgdlab.probes.stationary import predict_heat_capacity, quadratic_excess_loss


def test_heat_capacity_claim_smoke(tmp_path):
    res = hc.run(Context(tmp_path, mode="smoke"))
    assert res.claim.id == "2-heat-capacity" and res.claim.spec == "§4.2"
    assert res.error is None
    names = [c.name for c in res.checks]
    assert names == ["slope: least squares", "slope: quadratic_deep",
                     "slope: logistic (digits)", "closed form: diagonal quadratic"]
    for c in res.checks:
        assert c.verdict in VERDICTS and c.verdict != "ERROR"
        assert c.prediction and c.measured and c.tolerance
    for c in res.checks[:3]:
        n = c.numbers
        for k in ("predicted", "measured", "measured_se", "ratio", "L_star", "tr_sigma",
                  "h_max", "tolerance"):
            assert math.isfinite(n[k]), (c.name, k)
        assert n["predicted"] > 0 and n["measured_se"] > 0
        assert len(n["etas"]) == len(n["losses"]) == len(n["ses"]) >= 3
        assert all(math.isfinite(v) for v in n["losses"] + n["ses"] + n["ratio_ci"])
        assert n["ratio"] == pytest.approx(n["measured"] / n["predicted"], rel=1e-12)
        assert n["phi_star_grad_norm"] < 1e-8          # a real minimum
    by = {c.name: c.numbers for c in res.checks}
    ls, qd = by["slope: least squares"], by["slope: quadratic_deep"]
    assert ls["L_star"] == pytest.approx(ls["L_star_exact"], rel=1e-10)
    assert qd["L_star"] == pytest.approx(qd["L_star_exact"], rel=1e-10)
    pts = by["closed form: diagonal quadratic"]["points"]
    assert [p["eta"] for p in pts] == list(hc.DIAG_ETAS)
    for p in pts:
        assert math.isfinite(p["excess"]) and p["se"] > 0
        # the closed form is what quadratic_excess_loss computes, and exceeds the tangent
        assert p["exact"] == pytest.approx(
            sum(p["eta"] * hc.DIAG_H**2 * hc.DIAG_V / (hc.DIAG_B * (4 - 2 * p["eta"] * hc.DIAG_H))),
            rel=1e-12)
        assert p["exact"] > p["linear"]
    assert res.figures == ["figures/2-heat-capacity_ladder.png"]
    assert (tmp_path / res.figures[0]).stat().st_size > 0
    assert list((tmp_path / "cache").glob("*.json"))
    # a second run reads the cache and gives the same numbers
    again = hc.run(Context(tmp_path, mode="smoke"))
    assert [c.numbers.get("ratio") for c in again.checks] == \
        [c.numbers.get("ratio") for c in res.checks]


def test_diagonal_quadratic_prediction_is_exact():
    """The data are standardised so that σ_i² = h_i² v_i exactly: the probe's prediction
    tr Σ/(4B) equals the closed form's slope Σσ_i²/(4B) to rounding."""
    x = hc.diag_data()
    p = predict_heat_capacity(hc.diag_model(), hc.identity_loss, x,
                              torch.zeros(x.shape[0], dtype=torch.float64), hc.DIAG_B)
    s2 = hc.DIAG_H**2 * hc.DIAG_V
    assert p.predicted == pytest.approx(s2.sum() / (4 * hc.DIAG_B), rel=1e-10)
    eta = 1e-6
    assert quadratic_excess_loss(eta, hc.DIAG_H, s2, hc.DIAG_B) / eta == pytest.approx(
        p.predicted, rel=1e-6)


def test_fast_quadratic_form_equals_the_naive_loss():
    model, lf, xin, y, extra = hc.problem("quadratic_deep")
    from sgdlab import data

    ds = data.load("quadratic_deep", seed=0)
    Q = torch.as_tensor(ds.meta["hessian"])
    phi = torch.randn(100, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model.phi.copy_(phi)
    diff = phi[None] - ds.x_train.double()[:50]
    naive = 0.5 * ((diff @ Q) * diff).sum(1)
    torch.testing.assert_close(lf(model(xin[:50]), y[:50]), naive, rtol=1e-10, atol=1e-10)


def test_softmax_optimum_is_stationary():
    from sgdlab import data

    ds = data.load("digits", seed=0, flatten=True)
    star, h_max = hc.softmax_optimum(ds.x_train, ds.y_train, 1e-2)
    model = torch.nn.Linear(64, 10).double()
    with torch.no_grad():
        model.weight.copy_(star["weight"])
        model.bias.copy_(star["bias"])
    loss = torch.nn.functional.cross_entropy(model(ds.x_train.double()), ds.y_train)
    loss = loss + 0.5e-2 * sum((p * p).sum() for p in model.parameters())
    loss.backward()
    gnorm = math.sqrt(sum(float((p.grad**2).sum()) for p in model.parameters()))
    assert gnorm < 1e-10
    assert 1e-2 < h_max < 100 and np.isfinite(h_max)


def _slope(ratio, half_width, converged=True):
    """A hand-made slope result: the fit's ratio with a 95 % CI of ± ``half_width``."""
    return {"predicted": 1.0, "measured": ratio, "measured_se": half_width / 2, "ratio": ratio,
            "ratio_ci": [ratio - half_width, ratio + half_width], "in_fit": [True] * 4,
            "etas": [0.1, 0.2, 0.4, 0.8], "fit_pvalue": 0.5, "converged": [converged] * 4}


def _diag(ratio, ratio_se, converged=True):
    return [{"eta": eta, "exact": 1.0, "excess": ratio, "se": ratio_se, "ratio": ratio,
             "ratio_se": ratio_se, "converged": converged} for eta in hc.DIAG_ETAS]


def _measured(ratio=1.0, half_width=0.01, diag_ratio=1.0, diag_se=0.002, converged=True):
    return {"slopes": {n: _slope(ratio, half_width, converged) for n in hc.SLOPE_PROBLEMS},
            "diag": _diag(diag_ratio, diag_se, converged), "t0": 0.0}


def test_judge_pass():
    checks = hc.judge(_measured())
    assert [c.verdict for c in checks] == ["PASS"] * 4
    assert [c.basis for c in checks] == ["notes"] * 3 + ["derived"]


def test_judge_fail():
    # 20 % above the prediction with a tight interval: outside every tolerance (5, 5, 15 %)
    checks = hc.judge(_measured(ratio=1.2, diag_ratio=1.05))
    assert [c.verdict for c in checks] == ["FAIL"] * 4
    # within digits' 15 % but not the 5 % of the other two
    mid = hc.judge(_measured(ratio=1.1))
    assert [c.verdict for c in mid[:3]] == ["FAIL", "FAIL", "PASS"]


def test_judge_inconclusive():
    # a 95 % interval wider than the tolerance, or a run that is not stationary
    wide = hc.judge(_measured(half_width=0.3, diag_se=0.05))
    assert [c.verdict for c in wide] == ["INCONCLUSIVE"] * 4
    assert [c.verdict for c in hc.judge(_measured(converged=False))] == ["INCONCLUSIVE"] * 4
