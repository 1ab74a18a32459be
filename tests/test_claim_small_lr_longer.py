"""Claim 21 (SPEC §4.21): judge() on constructed numbers (PASS, FAIL, INCONCLUSIVE), a smoke
run."""

from __future__ import annotations

import numpy as np

from sgdlab.experiments import small_lr_longer as sl
from sgdlab.experiments.base import Context


def _arm(acc, loss, train, noise, n=8, seed=0):
    e = np.random.default_rng(seed).standard_normal(n) * noise
    return {"test_acc": list(acc + e), "test_loss": list(loss * (1 + e)),
            "train_loss": list(train * (1 + e)), "sq_norm": list(np.ones(n))}


def _measured(gap=0.0, noise=0.002, T=300, train_gap=0.2):
    return {"final_l": _arm(0.6, 1.0, 1.0, noise, seed=1),
            "final_s": _arm(0.6 + gap, 1.0 - gap, 1.0 - train_gap, noise, seed=2),
            "final_ld": _arm(0.6, 1.0, 0.8, noise, seed=3),
            "T": T, "seeds": 8, "tau_l": 5.0, "tau_s": 50.0}


def test_judge_on_constructed_numbers():
    checks = sl.judge(_measured())
    assert [c.verdict for c in checks] == ["PASS", "PASS", "PASS"]
    assert [c.basis for c in checks] == ["notes", "derived", "derived"]
    bad = sl.judge(_measured(gap=0.2))
    assert bad[0].verdict == "FAIL" and bad[2].verdict == "FAIL" and bad[0].finding
    assert "better" in bad[2].finding
    assert sl.judge(_measured(noise=0.05))[0].verdict == "INCONCLUSIVE"   # no power
    assert sl.judge(_measured(T=30))[0].verdict == "INCONCLUSIVE"         # window < 6 τ_S
    assert sl.judge(_measured(train_gap=-0.2))[1].verdict == "FAIL"       # S hotter than L


def test_smoke_run(tmp_path):
    res = sl.run(Context(tmp_path, mode="smoke"))
    assert res.error is None and len(res.checks) == 3
    assert res.figures == ["figures/21-small-lr-longer_arms.png"]
    assert (tmp_path / res.figures[0]).is_file()
