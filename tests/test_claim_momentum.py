"""Claim 6 (momentum, SPEC §4.6): the exact theory against closed forms, the relaxation fit
against the recursion, judge() on constructed numbers (PASS, FAIL, INCONCLUSIVE), a smoke run."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from sgdlab.experiments import momentum as mo
from sgdlab.experiments.base import Context
from sgdlab.probes.stationary import quadratic_excess_loss


def test_exact_theory_closed_form():
    """The Lyapunov solution equals (η′σ²/4B)/(1 − η′h(1 − β)/(2(1 + β))) per mode and the
    β = 0 value of quadratic_excess_loss; beyond the stability edge the closed form is inf."""
    h, s2 = np.array([0.3, 1.0]), np.array([2.0, 0.5])
    for lr in (1e-3, 0.1, 0.9):
        assert math.isclose(mo.ema_excess_exact(lr, 0.0, h, s2, 4),
                            quadratic_excess_loss(lr, h, s2, 4), rel_tol=1e-10)
        for beta in (0.5, 0.9, 0.99):
            closed = sum(lr * s / 16 / (1 - lr * hi * (1 - beta) / (2 * (1 + beta)))
                         for hi, s in zip(h, s2, strict=True))
            assert math.isclose(mo.ema_excess_exact(lr, beta, h, s2, 4), closed, rel_tol=1e-8)
            assert math.isclose(mo.ema_excess_closed(lr, beta, h, s2, 4), closed,
                                rel_tol=1e-12)
    assert mo.stability_edge(0.9) == pytest.approx(38.0)
    assert mo.ema_excess_closed(2.0, 0.0, np.array([1.0]), np.array([1.0]), 1) == math.inf
    assert math.isfinite(mo.ema_excess_closed(2.0, 0.5, np.array([1.0]), np.array([1.0]), 1))


def test_relaxation_time_limits():
    """Plain SGD: −1/ln(1 − η′h); above critical damping: −2/ln β whatever η′; below it the
    slow real root; critical damping at (1 − √β)/(1 + √β)."""
    assert mo.relaxation_time(0.1, 0.0, 0.5) == pytest.approx(-1 / math.log(0.95))
    for beta in (0.5, 0.9, 0.99):
        crit = mo.critical_damping(beta)
        assert crit == pytest.approx((1 - math.sqrt(beta)) / (1 + math.sqrt(beta)))
        for x in (1.5 * crit, 10 * crit):
            assert mo.relaxation_time(x, beta, 1.0) == pytest.approx(-2 / math.log(beta),
                                                                    rel=1e-9)
        assert mo.relaxation_time(0.5 * crit, beta, 1.0) > -2 / math.log(beta)
    assert mo.relaxation_time(2.5, 0.0, 1.0) == math.inf            # unstable


def _impulses(lr, beta, h, steps):
    """Noise-free mean trajectories of EMA momentum: position and gradient impulses."""
    out = []
    for d0, kick in ((1.0, 0.0), (0.0, 1.0 / (lr * (1 - beta)))):
        d, g, tr = d0, 0.0, [d0]
        for t in range(steps):
            g = beta * g + (1 - beta) * (h * d + (kick if t == 0 else 0.0))
            d = d - lr * g
            tr.append(d)
        out.append(tr)
    return np.array(out)


def test_fit_relaxation_recovers_the_recursion():
    for lr, beta, h in ((0.1, 0.0, 0.5), (0.02, 0.5, 0.5), (0.5, 0.9, 1.0), (0.02, 0.99, 0.7)):
        tau = mo.relaxation_time(lr, beta, h)
        tr = _impulses(lr, beta, h, int(max(8, 4 * tau)))
        assert mo.fit_relaxation(tr) == pytest.approx(tau, rel=1e-6)


def test_vertex_of_a_parabola():
    x = np.arange(5.0)
    assert mo.vertex((x - 2.3) ** 2, 2) == pytest.approx(2.3)
    assert mo.vertex((x - 9.0) ** 2, 2) == pytest.approx(3.0)        # clipped
    assert mo.vertex(np.array([1.0, 0.0, 0.5, 2.0, 3.0]), 1) == pytest.approx(1.1667, abs=1e-3)


# ----------------------------------------------------------------------------- judge()


def _m(scale=1.0, beta_scale=None, unconverged=False, tau_scale=1.0, tau_noise=1e-4,
       shift=None, seeds=3, edge_beta=None, lam=2.0, rel_se=0.01):
    """A measure() output that agrees with the theory; the arguments make it disagree."""
    prob = mo._problem(0)
    h, s2 = prob["h"], prob["sigma2"]
    ladder, betas = [0.01, 0.3, 1.5], [0.0, 0.9, 0.99]
    runs = []
    for lr, b in mo.ladder_points(ladder, betas, 1.0):
        ex = mo.ema_excess_exact(lr, b, h, s2, 1)
        f = scale * (beta_scale if (beta_scale is not None and b > 0 and lr == ladder[0])
                     else 1.0)
        runs.append({"lr": lr, "beta": b, "excess": f * ex, "se": rel_se * ex, "steps": 1000,
                     "tau_int": 10.0, "converged": not unconverged, "reason": "ok",
                     "seconds": 1.0, "exact": ex, "first_order": lr * float(s2.sum()) / 4})
    rng = np.random.default_rng(0)
    relax = []
    for lr in (0.02, 0.5):
        for b in (0.0, 0.9):
            pred = np.array([mo.relaxation_time(lr, b, hi) for hi in h])
            groups = tau_scale * pred * (1 + tau_noise * rng.standard_normal((10, h.size)))
            relax.append({"lr": lr, "beta": b, "tau_groups": groups.tolist(),
                          "predicted": pred.tolist(), "steps": 100})
    etas = [0.1, 0.2, 0.4, 0.8, 1.6]
    nb = [0.0, 0.5, 0.9]
    shift = shift or {}
    net_runs = []
    for s in range(seeds):
        loss = []
        for b in nb:
            c = math.log2(0.4) + shift.get(b, 0.0) + 0.02 * rng.standard_normal()
            row = [0.5 + 0.1 * (math.log2(e) - c) ** 2 for e in etas]
            if b == edge_beta:
                row = [1.0 - 0.1 * i for i in range(len(etas))]    # minimum at the edge
            loss.append(row)
        best = [int(np.argmin(r)) for r in loss]
        net_runs.append({"loss": loss, "test_acc": [[0.6] * len(etas)] * len(nb),
                         "best_index": best, "lambda_max": [lam * (1 + 0.01 * s)] * len(nb),
                         "seconds": 1.0})
    return {"h": h.tolist(), "h_max": 1.0, "tr_sigma": float(s2.sum()), "batch": 1,
            "betas": betas, "ladder": ladder, "stationary": runs, "relax": relax,
            "trajectory": {"max_dev": 1e-16, "steps": 300, "beta": 0.9, "lr_ema": 0.5,
                           "scale": 1.0, "max_dev_vs_manual_ema": {}},
            "net": {"etas": etas, "betas": nb, "seeds": list(range(seeds)), "steps": 800,
                    "hess_examples": 1000, "hess_iters": 100, "runs": net_runs}}


def _v(m):
    return [c.verdict for c in mo.judge(m)]


def test_judge_on_constructed_numbers():
    checks = mo.judge(_m())
    assert [c.basis for c in checks] == ["notes", "notes", "notes", "derived", "derived",
                                         "derived"]
    assert _v(_m()) == ["PASS"] * 6
    assert checks[3].finding and checks[4].finding       # what the notes leave out
    assert _v(_m(beta_scale=0.7))[0] == "FAIL"          # β matters at small η′
    assert _v(_m(beta_scale=0.9, rel_se=0.03))[0] == "INCONCLUSIVE"
    bad = _m()
    bad["trajectory"]["max_dev"] = 1e-6
    assert _v(bad)[1] == "FAIL"
    assert _v(_m(shift={0.9: 1.2}))[2] == "FAIL"         # best η′ moves 1.2 octaves
    assert _v(_m(shift={0.5: 0.5}))[2] == "INCONCLUSIVE"
    assert _v(_m(edge_beta=0.9))[2] == "INCONCLUSIVE"    # minimum at the edge of the grid
    assert _v(_m(seeds=1))[2] == "INCONCLUSIVE"          # no se from one seed
    assert _v(_m(scale=1.3))[3] == "FAIL"                # off the exact formula
    assert _v(_m(scale=1.09))[3] == "INCONCLUSIVE"
    assert _v(_m(unconverged=True))[3] == "INCONCLUSIVE"
    assert _v(_m(tau_scale=1.2))[4] == "FAIL"            # relaxation 20 % slow
    assert _v(_m(tau_scale=1.03, tau_noise=0.03))[4] == "INCONCLUSIVE"
    assert _v(_m(lam=8.0))[5] == "FAIL"                  # at the edge: q ≈ 1.6 at β = 0
    assert _v(_m(lam=2.48))[5] == "INCONCLUSIVE"         # q ≈ 0.50 ± 0.003
    assert mo.judge(_m(lam=2.48))[5].finding and not checks[5].finding
    assert _v(_m(seeds=1))[5] == "INCONCLUSIVE"          # no se from one seed
    m = copy.deepcopy(_m())
    assert [c.verdict for c in mo.judge(m)] == _v(_m())  # pure: same input, same output


def test_smoke_run(tmp_path):
    res = mo.run(Context(tmp_path, mode="smoke"))
    assert res.claim.id == "6-momentum"
    assert res.error is None and len(res.checks) == 6
    for c in res.checks:
        assert c.verdict in ("PASS", "FAIL", "INCONCLUSIVE")
        assert c.prediction and c.measured and c.tolerance and c.numbers
    traj = res.checks[1]
    assert traj.verdict == "PASS" and traj.numbers["max_dev"] < 1e-10
    for key in ("manual_heavy_ball", "sgdlab_ema", "sgdlab_heavy_ball",
                "train_many_stacked_sgd"):
        assert traj.numbers["max_dev_vs_manual_ema"][key] < 1e-10
    assert res.checks[4].verdict == "PASS"               # the relaxation fit is exact enough
    for row in res.checks[3].numbers["runs"]:
        assert math.isfinite(row["ratio"]) and row["ratio"] > 0
    assert res.figures == ["figures/6-momentum_quadratic.png", "figures/6-momentum_grid.png"]
    assert all((tmp_path / f).is_file() for f in res.figures)


def test_ladder_points_stop_short_of_each_stability_edge():
    pts = mo.ladder_points([0.01, 1.5, 3.0, 10.0], [0.0, 0.5, 0.9], 1.0)
    assert (1.5, 0.0) in pts and (3.0, 0.0) not in pts        # SGD: edge 2, ¾ of it 1.5
    assert (3.0, 0.5) in pts and (10.0, 0.5) not in pts       # β = .5: edge 6
    assert (10.0, 0.9) in pts                                 # β = .9: edge 38


def test_best_etas_skips_diverged_runs_and_edges():
    net = _m()["net"]
    net["runs"][0]["loss"][0][-1] = None                      # β = 0 diverged at η′ = 1.6
    be = mo.best_etas(net)
    assert be["index"] == [2, 2, 2] and all(v is not None for v in be["vertex"])
    assert be["mean_loss"][0][-1] is None
    net["runs"][1]["loss"][0][1] = None                       # a hole next to the minimum
    assert mo.best_etas(net)["vertex"][0] is None
