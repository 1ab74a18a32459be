"""Claim 1 (temperature, SPEC §4.1): smoke run structure; the stationarity analysis the
claim relies on is tested in test_probes_stationary.py and the K-at-once training in
test_sweep.py."""

from __future__ import annotations

import math

from sgdlab.experiments import temperature
from sgdlab.experiments.base import Context


def test_smoke_run_reports_every_check_with_finite_numbers(tmp_path):
    res = temperature.run(Context(tmp_path, mode="smoke"))
    assert res.error is None
    assert [c.name for c in res.checks] == ["stationarity detected", "L(η) strictly increasing",
                                           "×0.1 decay lowers the plateau"]
    ladder = res.checks[1].numbers
    assert len(ladder["mean_by_eta"]) >= 4
    assert all(math.isfinite(v) for v in ladder["mean_by_eta"].values())
    assert all(math.isfinite(d["z"]) for d in res.checks[2].numbers["drops"])
    for fig in res.figures:
        assert (tmp_path / fig).is_file()
    # an interrupted run resumes from the cache: same numbers, no retraining
    again = temperature.run(Context(tmp_path, mode="smoke"))
    assert again.checks[1].numbers == ladder
