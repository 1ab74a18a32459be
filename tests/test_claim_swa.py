"""Claim 10 (SWA, SPEC §4.10): the judge on hand-made numbers (PASS, FAIL, INCONCLUSIVE), the
smoke run, and the exact parts against independent references."""

import math

import numpy as np
import pytest
import torch

from _checks import non_finite
from sgdlab.experiments import swa
from sgdlab.experiments.base import VERDICTS, Context
from sgdlab.experiments.kit.verdicts import bonferroni_z
from sgdlab.probes.stationary import quadratic_excess_loss

NAMES = ["quadratic: E L(Φ_t) − L* stays at the stationary value",
         "quadratic: L(mean of last W iterates) − L* = AR(1) closed form",
         "quadratic: the averaged iterate's excess shrinks toward 0",
         "network: SWA beats the last iterate in train loss",
         "network: the average differs from every iterate"]


def _run(d: float, beats: bool, diverged: bool = False) -> dict:
    """One network run's record as :func:`swa.train_network` returns it: the last iterate
    ``d`` above SWA in train loss; SWA below every sampled iterate when ``beats``."""
    if diverged:
        return {"status": "diverged", "diverged": True}
    swa_loss = 0.3
    return {"diverged": False, "last_train_loss": swa_loss + d, "swa_train_loss": swa_loss,
            "snap_train_loss": [swa_loss + (0.05 if beats else -0.01), swa_loss + 0.2],
            "last_test_acc": 0.6, "swa_test_acc": 0.62, "last_test_loss": 1.0,
            "swa_test_loss": 0.95, "dist_swa_to_snap_min": 1.0, "dist_swa_to_snap_median": 2.0,
            "snap_rms_radius": 2.5, "snap_pairwise_median": 3.0,
            "dist_swa_to_snap_mean_point": 0.1, "dist_swa_to_last": 2.0, "swa_norm": 10.0}


def _measurement(*, scale=1.0, se_rel=0.01, last_ratio=None, runs=None, n_windows=13):
    """m as :func:`swa.measure` returns it, the quadratic at ``scale`` × its exact values with
    relative se ``se_rel`` over W = 1 … 2^(n_windows − 1); ``last_ratio`` sets the largest
    window's (L(Φ̄) − L*)/stationary."""
    prob = swa.problem()
    h, s2 = prob["h"], prob["sigma2"]
    windows = [2**k for k in range(n_windows)]
    stat = quadratic_excess_loss(swa.ETA, h, s2, swa.BATCH)
    pred = [swa.averaged_excess_exact(swa.ETA, h, s2, swa.BATCH, w) for w in windows]
    excess = [scale * p for p in pred]
    if last_ratio is not None:
        excess[-1] = last_ratio * scale * stat
    sim = {"windows": windows, "excess": excess, "se": [se_rel * x for x in excess],
           "time_avg_excess": scale * stat, "time_avg_se": se_rel * scale * stat,
           "avg_beats_all_snapshots_fraction": 0.9, "median_avg_over_min_snapshot": 0.5,
           "snapshots": 8, "chains": 1000, "steps": windows[-1], "lr": swa.ETA,
           "seconds": 0.0}
    runs = [_run(0.1, True), _run(0.11, True), _run(0.12, True)] if runs is None else runs
    return {"chains": 1000, "steps_q": windows[-1], "windows": windows, "seeds": len(runs),
            "steps_n": 3000, "snapshots": 8, "sim": sim, "stat": stat,
            "first": swa.ETA * float(s2.sum()) / 4, "tr_sigma": float(s2.sum()), "pred": pred,
            "pr": [swa.polyak_ruppert_limit(h, s2, swa.BATCH, w) for w in windows],
            "runs": runs, "net_seconds": 0.0}


def _verdicts(m):
    checks = swa.judge(m)
    assert [c.name for c in checks] == NAMES
    return [c.verdict for c in checks]


def test_judge_pass():
    assert _verdicts(_measurement()) == ["PASS"] * 5


def test_judge_fail():
    # the quadratic 30 % above its exact values (se 1 %), the largest window at half the
    # stationary excess; SWA worse than the last iterate and than a sampled iterate
    m = _measurement(scale=1.3, last_ratio=0.5,
                     runs=[_run(-0.1, False), _run(-0.11, False), _run(-0.12, False)])
    assert _verdicts(m) == ["FAIL"] * 5
    # a diverged network run fails (b) even when the others pass
    m = _measurement(runs=[_run(0.1, True), _run(0.11, True), _run(0.12, True),
                           _run(0.0, True, diverged=True)])
    checks = swa.judge(m)
    assert checks[3].verdict == "FAIL" and checks[3].numbers["diverged"] == 1


def test_judge_inconclusive():
    # se 20 % of the value: the z-tests lack power; at W = 64 the exact ratio 0.082 ± 0.023
    # straddles 0.1; one seed has no se; (c) holds in one seed of two
    m = _measurement(se_rel=0.2, n_windows=7, runs=[_run(0.1, True)])
    assert _verdicts(m) == ["INCONCLUSIVE"] * 4 + ["PASS"]
    assert swa.judge(m)[3].numbers["d_se"] is None
    m = _measurement(runs=[_run(0.1, True), _run(0.1, False)])
    assert _verdicts(m)[4] == "INCONCLUSIVE"


def test_swa_claim_smoke(tmp_path):
    res = swa.run(Context(tmp_path, mode="smoke"))
    assert res.claim.id == "10-swa"
    assert res.verdict in VERDICTS
    assert len(res.checks) == 5
    for c in res.checks:
        assert c.verdict in ("PASS", "FAIL", "INCONCLUSIVE")
        assert c.prediction and c.measured and c.tolerance and c.numbers
        assert not non_finite(c.numbers), non_finite(c.numbers)
    closed = res.checks[1].numbers
    assert len(closed["windows"]) == len(closed["measured"]) == len(closed["exact"])
    assert all(m > 0 and s > 0 for m, s in zip(closed["measured"], closed["se"], strict=True))
    for f in res.figures:
        assert (tmp_path / f).is_file()
    assert len(res.figures) == 2
    # the cache: a second run reads every measurement back
    again = swa.run(Context(tmp_path, mode="smoke"))
    assert again.checks[1].numbers["measured"] == closed["measured"]


@pytest.mark.parametrize("rho", [-0.6, 0.0, 0.3, 0.9, 0.99])
def test_window_factor_is_the_double_sum(rho):
    """f(ρ, W) against W⁻² Σ_{s,t} ρ^|s−t| summed directly (the Toeplitz covariance of W
    stationary AR(1) values, float64)."""
    for w in (1, 2, 3, 7, 50, 300):
        idx = np.arange(w)
        direct = float((rho ** np.abs(idx[:, None] - idx[None, :])).sum() / w**2)
        assert math.isclose(swa.window_factor(rho, w), direct, rel_tol=1e-9, abs_tol=1e-15)
    assert swa.window_factor(rho, 1) == pytest.approx(1.0, abs=1e-12)


def test_averaged_excess_limits():
    """W = 1 is the stationary excess of SPEC §4.2; W → ∞ is tr(H⁻¹Σ)/(2BW)."""
    h = np.array([1.0, 0.4, 0.1])
    s2 = np.array([0.8, 0.3, 0.02])
    for lr, b in ((0.5, 1), (0.1, 4), (1.5, 2)):
        assert math.isclose(swa.averaged_excess_exact(lr, h, s2, b, 1),
                            quadratic_excess_loss(lr, h, s2, b), rel_tol=1e-12)
        w = 10**6
        assert math.isclose(swa.averaged_excess_exact(lr, h, s2, b, w),
                            swa.polyak_ruppert_limit(h, s2, b, w), rel_tol=1e-3)
        # decreasing in W
        vals = [swa.averaged_excess_exact(lr, h, s2, b, 2**k) for k in range(12)]
        assert all(y < x for x, y in zip(vals, vals[1:], strict=False))


def test_simulation_matches_closed_form():
    """A small batched simulation (4000 chains, 64 steps) against the closed form: within 4
    se at every window (seeded)."""
    prob = swa.problem()
    windows = [1, 4, 16, 64]
    sim = swa.simulate_quadratic(prob, swa.ETA, 4000, 64, windows, 4, seed=3)
    for w, m, se in zip(windows, sim["excess"], sim["se"], strict=True):
        pred = swa.averaged_excess_exact(swa.ETA, prob["h"], prob["sigma2"], swa.BATCH, w)
        assert abs(m - pred) <= 4 * se, (w, m, pred, se)
    stat = quadratic_excess_loss(swa.ETA, prob["h"], prob["sigma2"], swa.BATCH)
    assert abs(sim["time_avg_excess"] - stat) <= 4 * sim["time_avg_se"]


def test_trainer_swa_is_the_mean_of_iterates():
    """The Trainer's SWA model (torch.optim.swa_utils) equals the float64 mean of the iterates
    after average_start, recorded by a callback."""
    from sgdlab.config import from_dict
    from sgdlab.train import Callback, Trainer

    cfg = from_dict({**swa.NET, "lr": 0.1, "steps": 40, "average_start": 0.5, "seed": 0,
                     "device": "cpu", "eval_every": 40, "log_every": 40})

    class Keep(Callback):
        def __init__(self):
            self.iterates = []

        def after_step(self, trainer):
            self.iterates.append(torch.nn.utils.parameters_to_vector(
                [p.detach() for p in trainer.model.parameters()]).double())

    keep = Keep()
    tr = Trainer(cfg, callbacks=[keep], progress=False)
    tr.fit()
    start = int(0.5 * 40)
    ref = torch.stack(keep.iterates[start:]).mean(0)
    got = torch.nn.utils.parameters_to_vector(
        [p.detach() for p in tr.averaged.module.parameters()]).double()
    assert len(keep.iterates) == 40
    assert float((got - ref).abs().max()) < 1e-5


def test_bonferroni_threshold_against_scipy():
    """z* = Φ⁻¹(1 − α/(2m)) against scipy's normal quantile; m = 1 is the two-sided 3σ."""
    from scipy.stats import norm

    assert bonferroni_z(1) == pytest.approx(3.0, abs=2e-3)
    assert bonferroni_z(0) == bonferroni_z(1)
    for m in (2, 10, 13, 15):
        assert bonferroni_z(m, swa.FAMILY_ALPHA) == pytest.approx(
            norm.isf(swa.FAMILY_ALPHA / (2 * m)), rel=1e-9)
