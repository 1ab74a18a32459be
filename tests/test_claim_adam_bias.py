"""Claim 7 (Adam bias correction, SPEC §4.7): the judge on hand-made numbers and the smoke
run. The notes' two checks are exact tests with a PASS/FAIL rule: neither has an
INCONCLUSIVE outcome (an undefined number fails); the derived overshoot check abstains on a
stream too short to see the ratio fall below 2."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sgdlab.experiments import adam_bias
from sgdlab.experiments.base import Context


def _measurement(ratio_dev=0.0, shift=0.0, spread=0.01, streams=8, steps=20):
    t = np.arange(1, steps + 1)
    measured = adam_bias.predicted_ratio(t) * (1 + ratio_dev)
    rng = np.random.default_rng(0)
    agg = 1 + shift + spread * rng.standard_normal((streams, min(steps, 100)))
    return {"measured": measured.tolist(), "normalised_second_moment": agg.tolist(),
            "steps": steps, "streams": streams}


def test_predicted_ratio():
    assert adam_bias.predicted_ratio(np.array([1]))[0] == pytest.approx(0.1 / math.sqrt(1e-3))
    assert adam_bias.predicted_ratio(np.array([10**5]))[0] == pytest.approx(1.0, abs=1e-9)


def test_judge_pass():
    checks = adam_bias.judge(_measurement(steps=300))
    assert [c.name for c in checks] == ["update ratio", "second moment", "early overshoot"]
    assert [c.verdict for c in checks] == ["PASS", "PASS", "PASS"]
    assert [c.basis for c in checks] == ["notes", "notes", "derived"]
    over = checks[2].numbers["measured"]
    assert (over["t_peak"], over["last_t_above"]) == (12, 287)
    assert over["peak"] == pytest.approx(0.718 / math.sqrt(1 - 0.999**12), rel=1e-3)
    assert checks[0].numbers["t1_predicted"] == pytest.approx(3.16227766, rel=1e-8)
    assert checks[1].numbers["streams"] == 8


def test_judge_fail():
    # update ratio off by 1e-5 (tolerance 1e-6); s_t 5 % above (1 − β₂ᵗ)E[ĝ²] with se ≈ 0.35 %
    checks = adam_bias.judge(_measurement(ratio_dev=1e-5, shift=0.05, steps=300))
    assert [c.verdict for c in checks] == ["FAIL", "FAIL", "FAIL"]
    assert checks[1].numbers["max_z"] > 4


def test_judge_has_no_inconclusive_outcome():
    # a small deviation within noise passes; an undefined ratio fails rather than abstains
    assert adam_bias.judge(_measurement(shift=0.002))[1].verdict == "PASS"
    m = _measurement()
    m["measured"][3] = math.nan
    assert adam_bias.judge(m)[0].verdict == "FAIL"


def test_overshoot_needs_a_stream_long_enough_to_see_it_end():
    checks = adam_bias.judge(_measurement(steps=20))   # r_t ≥ 2 for all 20 steps
    assert checks[2].verdict == "INCONCLUSIVE"
    assert checks[2].numbers["measured"]["last_t_above"] is None
    prof = adam_bias.overshoot_profile(np.array([1.0, 3.0, 2.5, 1.9, 1.0]))
    assert prof == {"peak": 3.0, "t_peak": 2, "last_t_above": 3}


def test_smoke_run(tmp_path):
    res = adam_bias.run(Context(tmp_path, mode="smoke"))
    assert res.claim.id == "7-adam-bias-correction" and res.claim.spec == "§4.7"
    assert res.error is None and res.verdict == "PASS"
    n = res.checks[0].numbers
    assert n["t1_measured"] == pytest.approx(n["t1_predicted"], rel=1e-6)
    assert res.checks[1].numbers["streams"] == adam_bias.BUDGETS["smoke"]["streams"]
    assert len(res.notes) == 2
    assert res.figures == ["figures/7-adam-bias-correction_ratio.png"]
    assert (tmp_path / res.figures[0]).is_file()
    # a second run reads the cache: same numbers
    again = adam_bias.run(Context(tmp_path, mode="smoke"))
    assert [c.numbers for c in again.checks] == [c.numbers for c in res.checks]
