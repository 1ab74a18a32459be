"""Claim 16 (SPEC §4.16, §4.9 (ii)): expected progress against exact enumeration, the notes'
B* and η* against the bound's maximum, judge() on constructed numbers, a smoke run."""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np

from sgdlab.experiments import progress_per_example as pp
from sgdlab.experiments.base import Context


def test_expected_progress_and_best_step_by_enumeration():
    """All N^B batches of a tiny data set (with replacement): the mean loss reduction of
    ℓ_b = ½h(φ − x_b)² equals ηG² − ½hη²(G² + σ²/B) exactly; η_opt maximises it."""
    x, h, phi = np.array([-1.3, 0.2, 2.5]), 0.7, 0.9
    g = h * (phi - x)
    G, s2 = g.mean(), g.var()

    def L(p):
        return 0.5 * h * np.mean((p - x) ** 2)

    for B in (1, 2, 3):
        for eta in (0.1, 0.8):
            red = [L(phi) - L(phi - eta * g[list(i)].mean())
                   for i in itertools.product(range(3), repeat=B)]
            assert math.isclose(np.mean(red), pp.expected_progress(eta, B, G, s2, h),
                                rel_tol=1e-12)
        best = pp.best_step(B, G, s2, h)
        grid = best * np.array([0.9, 0.99, 1.0, 1.01, 1.1])
        assert np.argmax(pp.expected_progress(grid, B, G, s2, h)) == 2
    Bs = np.array([1, 4, 16, 64, 256, 1024])
    per = pp.expected_progress(pp.best_step(Bs, G, s2, h), Bs, G, s2, h) / Bs
    assert np.all(np.diff(per) < 0)                          # falls monotonically
    assert np.allclose(per, G**4 / (2 * h * (Bs * G * G + s2)), rtol=1e-12)


def test_notes_bstar_eta_star_and_the_ratio():
    G, s2, h = 0.125, 1.0, 1.0
    b, e = pp.maximise_guarantee(G, s2, h)
    assert math.isclose(b, pp.notes_bstar(G, s2), rel_tol=1e-6)
    assert math.isclose(e, 1 / (2 * h), rel_tol=1e-6)
    Bs = np.array([1.0, 8, 64, 512, 1024])
    ratio = pp.best_step(Bs, G, s2, h) / pp.notes_step(Bs, G, s2, h)
    assert np.allclose(ratio, pp.step_ratio(Bs, G, s2), rtol=1e-12)
    assert math.isclose(pp.step_ratio(64, G, s2), 16.0)     # B = B_noise: 16×, not 32×
    # below B*/4 the guarantee is negative at every positive step
    etas = np.geomspace(1e-6, 10, 200)
    assert np.all(pp.guarantee(etas, pp.notes_bstar(G, s2) / 4.5, G, s2, h) < 0)
    assert math.isclose(pp.notes_step(16, G, s2, h), 16 * G**2 / (32 * s2 * h), rel_tol=1e-12)


def _measured(shift=0.0, eta_shift=0.0, frac=0.977, flat=False):
    """A measure() output that agrees with the theory (arguments make it disagree)."""
    G, s2, h = 0.125, 1.0, 1.0
    rows = []
    for B in pp.LADDER:
        r = {"B": B, "chains": 10**5}
        for name, eta in (("opt", pp.best_step(B, G, s2, h)),
                          ("notes", pp.notes_step(B, G, s2, h))):
            pred = float(pp.expected_progress(eta, B, G, s2, h) / B)
            r[f"{name}_eta"], r[f"{name}_pred"] = float(eta), pred
            val = pp.expected_progress(eta, 1, G, s2, h) / 1 if flat else pred
            r[f"{name}_mean"], r[f"{name}_se"] = val * (1 + shift), 0.005 * pred
        r["eta_opt"] = float(pp.best_step(B, G, s2, h))
        r["eta_hat"], r["eta_hat_se"] = r["eta_opt"] * (1 + eta_shift), 0.005 * r["eta_opt"]
        r["ratio_pred"] = float(pp.step_ratio(B, G, s2))
        r["guarantee_frac"], r["guarantee_se"] = frac, 0.002
        r["guarantee_prob"] = 0.977
        rows.append(r)
    return {"G": G, "sigma2": s2, "h": h, "rows": rows, "bstar": 1024.0, "eta_star": 0.5,
            "bstar_num": 1024.00001, "eta_star_num": 0.5, "b_noise": 64.0}


def test_judge_on_constructed_numbers():
    checks = pp.judge(_measured())
    assert [c.verdict for c in checks] == ["PASS"] * 4
    assert [c.basis for c in checks] == ["notes", "notes", "derived", "derived"]
    assert checks[2].finding and checks[3].finding
    m = _measured()
    m["bstar_num"] = 900.0
    assert pp.judge(m)[0].verdict == "FAIL"                     # not the maximum
    assert pp.judge(_measured(frac=0.90))[1].verdict == "FAIL"     # guarantee fails often
    assert pp.judge(_measured(frac=0.952))[1].verdict == "INCONCLUSIVE"
    assert pp.judge(_measured(shift=0.05))[2].verdict == "FAIL"    # 10 se off
    assert pp.judge(_measured(flat=True))[2].verdict == "FAIL"     # does not fall
    assert pp.judge(_measured(eta_shift=0.05))[3].verdict == "FAIL"
    nan = copy.deepcopy(_measured())
    nan["rows"][-3]["guarantee_se"] = math.nan
    nan["rows"][-3]["guarantee_frac"] = math.nan
    assert pp.judge(nan)[1].verdict == "INCONCLUSIVE"


def test_smoke_run(tmp_path):
    res = pp.run(Context(tmp_path, mode="smoke"))
    assert res.error is None and len(res.checks) == 4
    assert res.checks[0].verdict == "PASS"                      # deterministic
    assert res.figures == ["figures/16-bstar-progress_progress.png"]
    assert all((tmp_path / f).is_file() for f in res.figures)
