"""Claim 6 (momentum, SPEC §4.6) runs end to end at smoke size."""

import math

from sgdlab.experiments import momentum
from sgdlab.experiments.base import VERDICTS, Context


def test_momentum_claim_smoke(tmp_path):
    res = momentum.run(Context(tmp_path, mode="smoke"))
    assert res.claim.id == "6-momentum"
    assert res.verdict in VERDICTS
    assert len(res.checks) == 5
    for c in res.checks:
        assert c.verdict in ("PASS", "FAIL", "INCONCLUSIVE")
        assert c.prediction and c.measured and c.tolerance and c.numbers
    names = [c.name for c in res.checks]
    traj = res.checks[names.index("heavy ball at η ≡ EMA at η/(1 − β): trajectories")]
    assert traj.verdict == "PASS"
    assert traj.numbers["max_dev"] < 1e-10
    for key in ("manual_heavy_ball", "sgdlab_ema", "sgdlab_heavy_ball"):
        assert traj.numbers["max_dev_vs_manual_ema"][key] < 1e-10
    table = res.checks[2].numbers["table"]
    for row in table.values():
        assert math.isfinite(row["excess"]) and row["excess"] > 0
        assert math.isfinite(row["se"]) and row["se"] > 0
        assert math.isfinite(row["exact"]) and row["exact"] > 0
    for check in res.checks[:2]:
        for r in check.numbers["ratio"].values():
            assert math.isfinite(r)
    assert (tmp_path / res.figures[0]).is_file()


def test_exact_theory_closed_form():
    """The Lyapunov solution equals (η′σ²/4B)/(1 − η′h(1 − β)/(2(1 + β))) per mode and the
    β = 0 value of quadratic_excess_loss."""
    import numpy as np

    from sgdlab.probes.stationary import quadratic_excess_loss

    h, s2 = np.array([0.3, 1.0]), np.array([2.0, 0.5])
    for lr in (1e-3, 0.1, 0.9):
        assert math.isclose(momentum.ema_excess_exact(lr, 0.0, h, s2, 4),
                            quadratic_excess_loss(lr, h, s2, 4), rel_tol=1e-10)
        for beta in (0.5, 0.9, 0.99):
            closed = sum(lr * s / 16 / (1 - lr * hi * (1 - beta) / (2 * (1 + beta)))
                         for hi, s in zip(h, s2, strict=True))
            assert math.isclose(momentum.ema_excess_exact(lr, beta, h, s2, 4), closed,
                                rel_tol=1e-8)
