"""Claim 8 (Robbins–Monro, SPEC §4.8): the judge on hand-made numbers (PASS, FAIL,
INCONCLUSIVE); at smoke budgets structure, finite numbers, and the exact parts (the
second-moment recursion and its closed forms) at their real tolerances."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sgdlab.experiments import robbins_monro as rm
from sgdlab.experiments.base import VERDICTS, Context

NAMES = ["simulation vs exact recursion", "1/t, 2ch = 1.5", "1/t, 2ch = 2", "1/t, 2ch = 4",
         "1/t, 2ch = 0.5", "1/t, 2ch = 0.8", "constant η = 0.1", "constant η = 0.01"]


def _asymptote(kind, v, ts):
    """The claim's predictions: c²σ²/((2ch − 1)t), t^(−2ch), the constant-η plateau."""
    if kind == "const":
        return np.full(ts.shape, v * rm.SIGMA**2 / (rm.H * (2 - v * rm.H)))
    if 2 * v * rm.H > 1:
        return v**2 * rm.SIGMA**2 / ((2 * v * rm.H - 1) * ts)
    return ts ** (-2.0 * v * rm.H)


def _measurement(curve, *, scale=1.0, se_rel=1e-3, slope_shift=0.0, T=20_000, t_lo=1_000):
    """m as :func:`rm.measure` returns it, every schedule at ``curve(kind, v, ts)`` (× scale;
    slopes of the t^(−2ch) curves shifted by ``slope_shift``), groups jittered by ±0.1 % and
    an se of ``se_rel`` of the value; constant-η plateaus with a relative se ``se_rel``."""
    groups, chains = rm.GROUPS, rm.GROUPS * 100
    ts = rm.record_points(T).astype(float)
    sched = rm.schedules()
    vals = []
    for kind, v in sched:
        y = curve(kind, v, ts) * (scale if kind != "const" else 1.0)
        if kind == "c/t" and 2 * v * rm.H < 1:
            y = y * ts**slope_shift
        vals.append(y)
    vals = np.array(vals)                                            # (S, n_t)
    jitter = 1 + 1e-3 * np.sin(np.arange(groups)[None, :, None] + ts[None, None, :])
    per_group = vals[:, None, :] * jitter                            # (S, groups, n_t)
    sd = vals * se_rel * math.sqrt(chains)                           # se = se_rel · value
    plateau = []
    for (kind, _v), y in zip(sched, vals, strict=True):
        level = y[-1] * (scale if kind == "const" else 1.0)
        # a spread over groups giving se = se_rel · level
        spread = se_rel * level * math.sqrt(groups) * np.linspace(-1, 1, groups) / np.std(
            np.linspace(-1, 1, groups), ddof=1)
        plateau.append((level + spread).tolist())
    sim = {"t": ts.astype(int).tolist(), "m": per_group.transpose(2, 0, 1).tolist(),
           "sd": sd.T.tolist(), "plateau": plateau, "schedules": [list(s) for s in sched]}
    return {"sim": sim, "T": T, "chains": chains, "groups": groups, "t_lo": t_lo,
            "seconds": 0.0}


def _verdicts(m):
    checks = rm.judge(m)
    assert [c.name for c in checks] == NAMES
    return [c.verdict for c in checks]


def test_judge_pass_on_the_predictions():
    v = _verdicts(_measurement(_asymptote))
    assert v[1:] == ["PASS"] * 7
    # measured = the exact recursion: the simulation check passes
    exact = _verdicts(_measurement(lambda k, c, ts: rm.exact_second_moment(ts.astype(int), k, c)))
    assert exact[0] == "PASS"


def test_judge_fail_far_from_the_predictions():
    v = _verdicts(_measurement(_asymptote, scale=1.3, slope_shift=0.2))
    assert v[0] == "FAIL"                                  # not the exact recursion
    assert v[1:6] == ["FAIL"] * 5                          # 30 % off; slopes 0.2 off
    m = _measurement(_asymptote)
    for row in m["sim"]["plateau"][-2:]:                   # plateaus 20 % high
        row[:] = [1.2 * x for x in row]
    assert _verdicts(m)[6:] == ["FAIL", "FAIL"]


def test_judge_inconclusive_when_the_se_straddles_the_tolerance():
    # 15 % off with a 5 % se: the ±2 se interval straddles the 15 % band; plateaus with a
    # 5 % se (> 2 %) cannot be told from the prediction
    v = _verdicts(_measurement(_asymptote, scale=1.15, se_rel=0.05))
    assert v[1:4] == ["INCONCLUSIVE"] * 3
    assert v[6:] == ["INCONCLUSIVE", "INCONCLUSIVE"]


def test_robbins_monro_claim_smoke(tmp_path):
    res = rm.run(Context(tmp_path, mode="smoke"))
    assert res.claim.id == "8-robbins-monro" and res.claim.spec == "§4.8"
    assert res.error is None
    assert [c.name for c in res.checks] == NAMES
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
    assert rm.exact_second_moment(ts, "c/t", 1.0) == pytest.approx(1 / ts, rel=1e-12)
    # constant η converges to ησ²/(h(2 − ηh))
    assert rm.exact_second_moment(ts, "const", 0.1)[-1] == pytest.approx(0.1 / 1.9, rel=1e-12)
