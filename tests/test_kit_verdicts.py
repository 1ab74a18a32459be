"""The claims' shared verdict rules (experiments/kit/verdicts.py) on constructed numbers:
each rule's PASS, FAIL and INCONCLUSIVE cases and its edges."""

from __future__ import annotations

import math

import pytest

from sgdlab.experiments.kit import verdicts as v


def test_at_most_band_and_near():
    assert v.at_most(0.9, 0.04, 1.0) == "PASS"          # 0.98 ≤ 1
    assert v.at_most(0.9, 0.06, 1.0) == "INCONCLUSIVE"  # 1.02 > 1 > 0.78
    assert v.at_most(1.2, 0.05, 1.0) == "FAIL"          # 1.1 > 1
    assert v.at_most(1.0, 0.0, 1.0) == "PASS"           # on the edge, no uncertainty
    assert v.band(-0.05, 0.01, 0.1) == "PASS"           # |dev|
    assert v.band(-0.2, 0.01, 0.1) == "FAIL"
    assert v.near(3.0, 0.1, 3.1, 0.5) == "PASS"
    assert v.near(3.0, 0.1, 4.0, 0.5) == "FAIL"
    assert v.at_most(0.9, 0.04, 1.0, k=3) == "INCONCLUSIVE"
    for bad in (math.nan, math.inf):
        assert v.band(bad, 0.01, 0.1) == "INCONCLUSIVE"
        assert v.band(0.0, bad, 0.1) == "INCONCLUSIVE"


def test_direction():
    assert v.direction(-1.0, 0.1, -1) == "PASS"
    assert v.direction(1.0, 0.1, -1) == "FAIL"
    assert v.direction(0.1, 0.1, -1) == "INCONCLUSIVE"
    assert v.direction(0.1, math.nan, 1) == "INCONCLUSIVE"
    assert v.direction(0.1, None, 1) == "INCONCLUSIVE"
    assert v.direction(math.inf, math.nan, 1) == "PASS"       # a diverged run decides
    assert v.direction(-math.inf, 0.0, 1) == "FAIL"


def test_z_test():
    assert v.z_test(1.02, 1.0, 0.01) == "PASS"                # 2 se < 3 se
    assert v.z_test(1.05, 1.0, 0.01) == "FAIL"
    assert v.z_test(1.0, 1.0, 0.5, se_rel_max=0.1) == "INCONCLUSIVE"   # no power
    assert v.z_test(1.05, 1.0, 0.01, z=6) == "PASS"
    assert v.z_test(math.nan, 1.0, 0.01) == "INCONCLUSIVE"


def test_interval():
    assert v.interval(1.02, 0.99, 1.05, 1.0, 0.05) == "PASS"
    assert v.interval(1.10, 1.08, 1.12, 1.0, 0.05) == "FAIL"
    assert v.interval(1.00, 0.80, 1.20, 1.0, 0.05) == "INCONCLUSIVE"  # too wide to judge
    assert v.interval(1.0, math.nan, 1.1, 1.0, 0.05) == "INCONCLUSIVE"


def test_mean_se():
    m, se = v.mean_se([1.0, 2.0, 3.0, 4.0])
    assert m == 2.5 and se == pytest.approx(math.sqrt(5 / 3) / 2, rel=1e-15)
    assert math.isnan(v.mean_se([1.0])[1]) and v.mean_se([1.0])[0] == 1.0
    assert all(math.isnan(x) for x in v.mean_se([]))
    assert math.isnan(v.mean_se([1.0, math.inf])[1])
