"""Claim 20 (SPEC §4.20): judge() on constructed numbers (PASS, FAIL, INCONCLUSIVE), a smoke
run."""

from __future__ import annotations

import numpy as np

from sgdlab.experiments import last_decay as ld
from sgdlab.experiments.base import Context


def _arm(acc, loss, norm, noise, n=8, seed=0):
    rng = np.random.default_rng(seed)
    e = rng.standard_normal(n) * noise
    return {"test_acc": list(acc + e), "test_loss": list(loss + 0 * e + loss * e),
            "train_loss": list(loss - 0.05 + loss * e), "sq_norm": list(norm * (1 + e))}


def _measured(gap=0.0, noise=0.002, t2=2000, pre_loss=2.0):
    a = _arm(0.6, 1.0, 0.05, noise, seed=1)
    b = _arm(0.6 + gap, 1.0 - gap, 0.05 * (1 + gap), noise, seed=2)
    pre = _arm(0.4, pre_loss, 0.03, noise, seed=3)
    return {"final_a": a, "final_b": b, "pre_last_decay_a": pre, "t2": t2, "tau_f": 50.0,
            "delta": 400, "seeds": 8}


def test_judge_on_constructed_numbers():
    checks = ld.judge(_measured())
    assert [c.verdict for c in checks] == ["PASS", "PASS", "PASS"]
    assert [c.basis for c in checks] == ["notes", "derived", "derived"]
    bad = ld.judge(_measured(gap=0.2))
    assert bad[0].verdict == "FAIL" and bad[2].verdict == "FAIL" and bad[0].finding
    assert ld.judge(_measured(noise=0.05))[0].verdict == "INCONCLUSIVE"   # no power
    assert ld.judge(_measured(t2=300))[0].verdict == "INCONCLUSIVE"       # window < 6 τ_f
    assert ld.judge(_measured(pre_loss=0.9))[1].verdict == "FAIL"         # no drop at decay


def test_smoke_run(tmp_path):
    res = ld.run(Context(tmp_path, mode="smoke"))
    assert res.error is None and len(res.checks) == 3
    assert res.figures == ["figures/20-last-decay_arms.png"]
    assert (tmp_path / res.figures[0]).is_file()
