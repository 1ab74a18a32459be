"""Claim 8 (Robbins–Monro, SPEC §4.8) at smoke budgets: structure, finite numbers, and the
exact parts (the second-moment recursion and its closed forms) at their real tolerances."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sgdlab.experiments import robbins_monro as rm
from sgdlab.experiments.base import VERDICTS, Context


def test_robbins_monro_claim_smoke(tmp_path):
    res = rm.run(Context(tmp_path, mode="smoke"))
    assert res.claim.id == "8-robbins-monro" and res.claim.spec == "§4.8"
    assert res.error is None
    names = [c.name for c in res.checks]
    assert names == ["simulation vs exact recursion", "1/t, 2ch = 1.5", "1/t, 2ch = 2",
                     "1/t, 2ch = 4", "1/t, 2ch = 0.5", "1/t, 2ch = 0.8",
                     "constant η = 0.1", "constant η = 0.01"]
    for c in res.checks:
        assert c.verdict in VERDICTS and c.verdict != "ERROR"
        assert c.prediction and c.measured and c.tolerance
        for k, v in c.numbers.items():
            if isinstance(v, float):
                assert math.isfinite(v), (c.name, k)
    by = {c.name: c.numbers for c in res.checks}
    for name in ("1/t, 2ch = 1.5", "1/t, 2ch = 2", "1/t, 2ch = 4"):
        n = by[name]
        assert n["worst_ratio_se"] > 0 and len(n["ratios"]) == len(n["t"]) >= 5
        # the exact recursion is within 15% of c²σ²/((2ch − 1)t) at the end of the run
        assert abs(n["exact_ratio_at_T"] - 1) < 0.15
    for name in ("1/t, 2ch = 0.5", "1/t, 2ch = 0.8"):
        n = by[name]
        assert n["slope_se"] > 0 and n["slope"] < 0
        assert abs(n["exact_recursion_slope"] - n["predicted"]) < 0.05
    for name in ("constant η = 0.1", "constant η = 0.01"):
        n = by[name]
        assert n["se"] > 0 and n["ratio"] == pytest.approx(1, abs=0.05)
    assert (tmp_path / res.figures[0]).is_file()
    # resumes from the cache with identical numbers
    again = rm.run(Context(tmp_path, mode="smoke"))
    assert [c.numbers for c in again.checks] == [c.numbers for c in res.checks]


def test_exact_recursion_closed_forms():
    ts = np.array([1, 10, 100, 5000])
    # η = 1/t, h = σ = Φ_0 = 1: Φ_1 = −ξ_1, then m_t = 1/t exactly
    assert rm._exact(ts, "c/t", 1.0) == pytest.approx(1 / ts, rel=1e-12)
    # constant η converges to ησ²/(h(2 − ηh))
    assert rm._exact(ts, "const", 0.1)[-1] == pytest.approx(0.1 / 1.9, rel=1e-12)
