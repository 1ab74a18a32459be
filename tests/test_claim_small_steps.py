"""Claim 17 (SPEC §4.17): the first-order term against an exact expansion, E[D] in closed
form, judge() on constructed numbers, a smoke run."""

from __future__ import annotations

import numpy as np
import torch

from sgdlab.experiments import small_steps as ss
from sgdlab.experiments.base import Context


def test_first_order_term_on_a_quadratic_is_the_eta_squared_coefficient():
    """With constant H the small steps are a polynomial in η₀: (Φ_B − Φ_big)/η₀² → D, the
    remainder O(η₀) (checked at two η₀ in float64)."""
    rng = np.random.default_rng(3)
    d, B = 5, 6
    A = rng.standard_normal((d, d))
    H = A @ A.T / d
    phi0 = rng.standard_normal(d)
    xs = rng.standard_normal((B, d))
    grads = [torch.as_tensor(H @ (phi0 - x)) for x in xs]
    D = ss.first_order_term(grads, lambda k, v: torch.as_tensor(H) @ v).numpy()
    errs = []
    for eta in (1e-3, 1e-4):
        phi = phi0.copy()
        for x in xs:
            phi = phi - eta * H @ (phi - x)
        big = phi0 - eta * sum(g.numpy() for g in grads)
        errs.append(np.linalg.norm((phi - big) / eta**2 - D) / np.linalg.norm(D))
    assert errs[1] < 1e-3 and 8 < errs[0] / errs[1] < 12            # O(η₀)
    # E[D] = B(B − 1)/2 HG: D is linear in the g_j, each with mean G
    G = H @ phi0
    Dm = ss.first_order_term([torch.as_tensor(G)] * B, lambda k, v: torch.as_tensor(H) @ v)
    assert np.allclose(Dm.numpy(), ss.expected_term(H, G, B), rtol=1e-13)


def _m(first=0.002, last=0.3, fo0=2e-3, slope_scale=1.0, proj_shift=0.0):
    frac = np.geomspace(0.01, 1.0, 5)
    eta = frac / 10
    rows = [{"eta": float(e), "rel_dev": float(first + (last - first) * i / 4),
             "fo_err": float(fo0 * (e / eta[0]) ** slope_scale), "relu_flips": 0}
            for i, e in enumerate(eta)]
    quad = {"rows": rows, "h_max": 1.0, "ED_norm": 255.0, "proj_mean": 255.0 + proj_shift,
            "proj_se": 0.7, "orth_mean_norm": 0.4, "orth_se": 0.6, "draws": 2000}
    return {"fraction": frac.tolist(), "mlp": {"lambda_max": 3.0, "rows": rows},
            "quadratic": quad}


def test_judge_on_constructed_numbers():
    assert [c.verdict for c in ss.judge(_m())] == ["PASS"] * 3
    assert [c.basis for c in ss.judge(_m())] == ["notes", "derived", "derived"]
    assert ss.judge(_m(first=0.08))[0].verdict == "FAIL"           # not small at small η₀
    assert ss.judge(_m(last=0.004))[0].verdict == "FAIL"           # does not grow
    assert ss.judge(_m(fo0=0.05))[1].verdict == "FAIL"             # η₀²D not the deviation
    assert ss.judge(_m(slope_scale=0.5))[1].verdict == "FAIL"      # error not ∝ η₀
    assert ss.judge(_m(proj_shift=5.0))[2].verdict == "FAIL"       # 7 se off


def test_smoke_run(tmp_path):
    res = ss.run(Context(tmp_path, mode="smoke"))
    assert res.error is None and len(res.checks) == 3
    assert res.checks[0].verdict == "PASS"
    assert res.figures == ["figures/17-small-steps_deviation.png"]
    assert (tmp_path / res.figures[0]).is_file()
