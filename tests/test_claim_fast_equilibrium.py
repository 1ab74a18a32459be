"""Claim 19 (SPEC §4.19): judge() on constructed numbers (PASS, FAIL, INCONCLUSIVE for each
check), agreement_time, a smoke run."""

from __future__ import annotations

import math

import numpy as np

from sgdlab.experiments import fast_equilibrium as fe
from sgdlab.experiments.base import Context


def _rate(el, arms, *, gap=0.0, noise=0.002, agree=3.0, span=12.0, swa_ratio=5.0, n=8,
          seed=0):
    """A constructed run at ηλ = el: every arm's train loss is 1 + 0.3 until agree/el steps,
    then 1 (+ gap for the non-reference arms); test accuracy 0.6 (− gap)."""
    rng = np.random.default_rng(seed)
    steps = int(span / el)
    s = np.linspace(steps / 24, steps, 24)
    out = {"el": el, "window": [0.75 * steps, steps], "curve_steps": s.tolist(),
           "arms": {}, "final": {}, "swa_dist": {}, "last_dist": {}}
    for a in arms:
        g = 0.0 if a == "x1" else gap
        late = 0.0 if a == "x1" else 0.3 * (s < agree / el)
        e = rng.standard_normal((n, 1)) * noise
        loss = (1.0 + g + late + e + 0 * s).tolist()
        acc = (0.6 - g + e + 0 * s).tolist()
        out["arms"][a] = {"train_loss": loss, "test_acc": acc}
        out["final"][a] = {"train_loss": list(1.0 + g + e[:, 0]),
                           "test_acc": list(0.6 - g + e[:, 0])}
        out["swa_dist"][a] = list(0.1 * swa_ratio * (1 + 0.01 * rng.standard_normal(n)))
        out["last_dist"][a] = list(0.2 + 0 * e[:, 0])
    out["swa_ref"] = list(0.1 * (1 + 0.01 * rng.standard_normal(n)))
    return out


def _measured(span=12.0, agree2=3.0, **kw):
    return {"seeds": 8, "span": span,
            "rates": [_rate(0.05, fe.ARMS_1, span=span, **kw),
                      _rate(0.025, fe.ARMS_2, span=span, agree=agree2, seed=1, **kw)]}


def test_judge_on_constructed_numbers():
    checks = fe.judge(_measured())
    assert [c.verdict for c in checks] == ["PASS", "PASS", "PASS"]
    assert [c.basis for c in checks] == ["notes", "derived", "derived"]
    assert math.isclose(checks[2].numbers["t_agree"][1] / checks[2].numbers["t_agree"][0], 2.0,
                        rel_tol=0.15)
    bad = fe.judge(_measured(gap=0.2))
    assert bad[0].verdict == "FAIL" and bad[0].finding
    assert bad[2].verdict == "INCONCLUSIVE"                   # never agrees
    assert fe.judge(_measured(noise=0.05))[0].verdict == "INCONCLUSIVE"   # no power
    assert fe.judge(_measured(span=4.0))[0].verdict == "INCONCLUSIVE"     # window < 6/(ηλ)
    assert fe.judge(_measured(swa_ratio=1.0))[1].verdict == "FAIL"       # same parameters
    assert fe.judge(_measured(swa_ratio=2.0))[1].verdict == "INCONCLUSIVE"
    assert fe.judge(_measured(agree2=6.0))[2].verdict == "FAIL"          # ratio 4, not 2


def test_agreement_time():
    steps = [10.0, 20.0, 30.0, 40.0]
    ref = {"train_loss": [[1.0, 1.0, 1.0, 1.0]]}
    arm = {"train_loss": [[2.0, 1.0, 1.2, 1.01]]}
    assert fe.agreement_time(steps, ref, [arm]) == 40.0           # must stay within 5 %
    assert fe.agreement_time(steps, ref, [ref]) == 10.0
    assert math.isnan(fe.agreement_time(steps, ref, [{"train_loss": [[1, 1, 1, 2.0]]}]))


def test_smoke_run(tmp_path):
    res = fe.run(Context(tmp_path, mode="smoke"))
    assert res.error is None and len(res.checks) == 3
    assert res.figures == ["figures/19-fast-equilibrium_arms.png"]
    assert (tmp_path / res.figures[0]).is_file()
