"""Claim 12 (SPEC §4.12): the covariance recursion against closed forms, the logistic
problem's H and Σ against autograd, judge() on constructed numbers, a smoke run."""

from __future__ import annotations

import copy

import numpy as np
import torch

from sgdlab.experiments import leaves_optimum as lo
from sgdlab.experiments.base import Context


def test_covariance_path_closed_form_and_stationary_limit():
    """Diagonal H, Σ: s_t = η²σ²/B · (1 − ρ^{2t})/(1 − ρ²), ρ = 1 − ηh, per mode; a general
    pair: the path tends to the Lyapunov solution, which solves its equation."""
    h, s2, eta, B = np.array([0.2, 1.0, 1.5]), np.array([1.0, 2.0, 0.5]), 0.5, 4
    at = np.array([1, 2, 7, 40])
    path = lo.covariance_path(np.diag(h), np.diag(s2), eta, B, at)
    rho = 1 - eta * h
    for S, t in zip(path, at, strict=True):
        exact = eta**2 * s2 / B * (1 - rho ** (2 * t)) / (1 - rho**2)
        assert np.allclose(np.diag(S), exact, rtol=1e-13)
        assert np.allclose(S - np.diag(np.diag(S)), 0, atol=1e-15)
    prob = lo.quadratic_problem()
    H, sig = prob["H"], prob["sigma"]
    assert not np.allclose(H @ sig, sig @ H)                  # the case worth testing
    s_inf = lo.stationary_covariance(H, sig, lo.QUAD_ETA, lo.BATCH)
    A = np.eye(lo.DIM) - lo.QUAD_ETA * H
    assert np.allclose(A @ s_inf @ A + lo.QUAD_ETA**2 * sig / lo.BATCH, s_inf, rtol=1e-12)
    far = lo.covariance_path(H, sig, lo.QUAD_ETA, lo.BATCH, np.array([2000]))[0]
    assert np.allclose(far, s_inf, rtol=1e-10)


def test_logistic_problem_against_autograd():
    p = lo.logistic_problem()
    assert p["grad_norm"] < 1e-10
    X, y = torch.as_tensor(p["X"]), torch.as_tensor(p["y"])

    def per_example(phi):                      # regularised per-example losses
        z = X @ phi
        return torch.nn.functional.softplus(z) - y * z + 0.5 * lo.LAMBDA * phi @ phi

    phi = torch.as_tensor(p["phi_star"]).requires_grad_(True)
    H = torch.autograd.functional.hessian(lambda v: per_example(v).mean(), phi)
    assert np.allclose(H.numpy(), p["H"], rtol=1e-10, atol=1e-12)
    jac = torch.autograd.functional.jacobian(per_example, phi)        # (n, d)
    g = jac - jac.mean(0)
    assert np.allclose((g.T @ g / X.shape[0]).numpy(), p["sigma"], rtol=1e-9, atol=1e-13)


def _measured(scale=1.0, first=None, quad_shift=0.0, plateau=1.0):
    """A measure() output that agrees with the theory (scale, shifts make it disagree)."""
    at = lo.record_steps(400, 12)
    pred = 0.02 * (1 - np.exp(-at / 30.0))
    mean_l = scale * pred
    mean_l[at > 300] *= plateau
    common = {"h_min": 0.1, "h_max": 1.0, "stationary": 0.02, "eta": lo.QUAD_ETA}
    return {"at": at.tolist(), "chains": 1000,
            "quadratic": {**common, "mean": (pred + quad_shift).tolist(),
                          "se": (0.01 * pred).tolist(), "predicted": pred.tolist()},
            "logistic": {**common, "mean": mean_l.tolist(), "se": (0.005 * pred).tolist(),
                         "predicted": pred.tolist(), "first_step": 1e-3,
                         "first_mean": 1e-3 if first is None else first, "first_se": 2e-5,
                         "moved": 1.0, "grad_norm_at_star": 1e-14}}


def test_judge_on_constructed_numbers():
    names = [c.name for c in lo.judge(_measured())]
    assert len(names) == 4
    assert [c.verdict for c in lo.judge(_measured())] == ["PASS"] * 4
    assert [c.basis for c in lo.judge(_measured())] == ["notes", "notes", "derived", "derived"]
    assert lo.judge(_measured(first=1.2e-3))[0].verdict == "FAIL"          # 10 se off
    assert lo.judge(_measured(plateau=1.2))[1].verdict == "FAIL"           # still rising
    assert lo.judge(_measured(quad_shift=0.002))[2].verdict == "FAIL"      # off the path
    assert lo.judge(_measured(scale=1.3))[3].verdict == "FAIL"             # 30 % off
    m = _measured()
    m["logistic"]["se"] = (0.08 * np.asarray(m["logistic"]["predicted"])).tolist()
    assert lo.judge(m)[3].verdict == "INCONCLUSIVE"                        # too noisy
    short = copy.deepcopy(_measured())
    short["quadratic"]["h_min"] = 1e-3                       # run < 5 relaxation times
    assert lo.judge(short)[2].verdict == "INCONCLUSIVE"


def test_smoke_run(tmp_path):
    res = lo.run(Context(tmp_path, mode="smoke"))
    assert res.error is None and len(res.checks) == 4
    assert res.checks[0].verdict == "PASS"                   # exact even at smoke size
    assert all((tmp_path / f).is_file() for f in res.figures)
    assert res.figures == ["figures/12-leaves-the-optimum_spread.png"]
