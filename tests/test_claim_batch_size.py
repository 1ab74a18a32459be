"""Claim 3 (batch size and temperature, SPEC §4.3) at smoke budgets: structure, finite numbers,
and the parts that are exact at any budget."""

from __future__ import annotations

import math

import numpy as np

from sgdlab.experiments import batch_size
from sgdlab.experiments.base import VERDICTS, Context
from sgdlab.probes.stationary import quadratic_excess_loss


def test_problem_is_the_exact_diagonal_quadratic():
    p = batch_size.problem()
    x, h = p["x"], p["h"]
    assert x.shape == (batch_size.N_TRAIN, batch_size.DIM)
    np.testing.assert_allclose(p["sigma2"], h * h * x.var(axis=0))
    # L* is the full loss at Φ* = mean x
    lstar = 0.5 * float(np.mean(np.sum(h * (p["phi_star"] - x) ** 2, axis=1)))
    assert math.isclose(lstar, p["L_star"], rel_tol=1e-12)
    # fixed η: the exact formula is exactly 1/B, so its log-log slope is −1
    eta = batch_size.FIXED_ETA_H / h.max()
    e1, e32 = (quadratic_excess_loss(eta, h, p["sigma2"], b) for b in (1, 32))
    assert math.isclose(e1 / e32, 32.0, rel_tol=1e-12)


def test_smoke_run(tmp_path):
    res = batch_size.run(Context(tmp_path, mode="smoke"))
    assert res.claim.id == "3-batch-size" and res.claim.spec == "§4.3"
    assert res.verdict in VERDICTS and res.error is None
    names = [c.name for c in res.checks]
    assert names == ["fixed η: slope", "η = Bη₀: flat", "η = Bη₀: blow-up near Bη₀h_max = 2",
                     "sum of gradients"]
    for c in res.checks:
        assert c.verdict in ("PASS", "FAIL", "INCONCLUSIVE")
        assert c.prediction and c.measured and c.tolerance and c.numbers
    by = {c.name: c for c in res.checks}
    slope = by["fixed η: slope"].numbers
    assert math.isfinite(slope["slope"]) and slope["slope_se"] > 0
    assert np.all(np.isfinite(slope["excess"])) and np.all(np.asarray(slope["excess"]) > 0)
    flat = by["η = Bη₀: flat"].numbers
    assert math.isfinite(flat["ratio"]) and flat["ratio"] >= 1.0
    blow = by["η = Bη₀: blow-up near Bη₀h_max = 2"].numbers
    assert np.all(np.isfinite(blow["ratio_to_exact"]))
    # beyond Bη₀h_max = 2 SGD must diverge (exact: |1 − ηh_max| > 1)
    assert blow["diverged"] and blow["diverge_B_eta0_hmax"] > 2
    # the sum-of-gradients update is the η = Bη₀ update (float64 round-off only)
    assert by["sum of gradients"].verdict == "PASS"
    assert by["sum of gradients"].numbers["max_abs_diff"] < 1e-10
    # the sharpness probe finds h_max of the diagonal quadratic
    assert math.isclose(slope["h_max"], 1.0, rel_tol=1e-6)
    assert res.figures == ["figures/3-batch-size_excess.png"]
    assert (tmp_path / res.figures[0]).is_file()
    # a second run reads the cache and gives the same numbers
    again = batch_size.run(Context(tmp_path, mode="smoke"))
    assert again.checks[0].numbers["slope"] == slope["slope"]
