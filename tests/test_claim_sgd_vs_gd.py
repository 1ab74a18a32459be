"""Claim 24 (SPEC §4.24): judge() on constructed numbers (PASS, FAIL, INCONCLUSIVE), the pure
helpers, a smoke run."""

from __future__ import annotations

import math

import numpy as np

from sgdlab.experiments import sgd_vs_gd as sg
from sgdlab.experiments.base import Context

N = 4000
LADDER = (8, 32, 128, 512, 2000, N)


def _measured(b_crit=300.0, b_simple=300.0, noise=0.02, seeds=4, edge_at=(), override=None):
    """E(B) = E_min(1 + B/B_crit) at the middle η of a 5-point grid (worse away from it, or
    best at the lowest η for B in ``edge_at``), per-seed multiplicative noise; ``override``:
    {B: epochs} replacing the model."""
    rng = np.random.default_rng(0)
    e_min = 15.0 * b_crit / N                   # S_min = 15 steps
    runs = {}
    for b in LADDER:
        e = (override or {}).get(b, e_min * (1 + b / b_crit))
        lrs = sg.lr_grid(b, [-2, -1, 0, 1, 2])
        z = rng.standard_normal(seeds)
        shape = ([1 + 0.3 * i for i in range(5)] if b in edge_at
                 else [1 + 0.3 * (i - 2) ** 2 for i in range(5)])
        runs[str(b)] = {"B": b, "cap": 3 * e, "lr": lrs,
                        "epochs": [list(e * f * np.exp(noise * z)) for f in shape]}
    return {"runs": runs, "n_train": N, "target": 1.70, "delta": 0.12, "seeds": seeds,
            "b_simple": {"median": b_simple, "start": 80.0, "at_target": 600.0}}


def test_pure_helpers():
    assert math.isclose(sg.epochs_to_target([0, 1, 2], [2.0, 1.8, 1.6], 1.7), 1.5)
    assert sg.epochs_to_target([0, 1, 2], [2.0, 1.8, 1.75], 1.7) == math.inf
    assert sg.epochs_to_target([0, 1, 2], [2.0, float("nan"), 1.0], 1.7) == math.inf
    g = sg.lr_grid(200, [-1, 0, 1])
    assert np.allclose(g, [0.5, 1.0, 2.0])          # η_c(B₀) = η_GD/2
    t = sg.tune({"lr": [0.1, 0.2, 0.4, 0.8],
                 "epochs": [[3, 3], [2, math.inf], [2.5, 2.4], [4, 4]]})
    assert t["index"] == 2 and not t["edge"] and not t["censored"]  # every seed must reach
    assert sg.tune({"lr": [0.1, 0.2], "epochs": [[1, 1], [2, 2]]})["edge"]
    assert sg.tune({"lr": [0.1], "epochs": [[math.inf]]})["censored"]


def test_judge_on_constructed_numbers():
    checks = sg.judge(_measured())
    assert [c.basis for c in checks] == ["notes", "derived", "derived"]
    assert [c.verdict for c in checks] == ["PASS", "PASS", "PASS"], [c.measured for c in checks]
    assert checks[0].numbers["judged"] == [8, 32]            # B ≤ B_simple/8 = 37.5
    assert checks[2].numbers["judged"] == [2000]             # B ≥ 4 B_simple, B < N
    # SGD slower than GD at small B: the notes' statement fails
    slow = sg.judge(_measured(override={8: 40.0}))
    assert slow[0].verdict == "FAIL"
    # B_crit a decade from B_simple: the derived fit fails
    far = sg.judge(_measured(b_crit=300.0, b_simple=30.0))
    assert far[1].verdict == "FAIL"
    # a large batch that needs many more steps than GD: check 3 fails
    assert sg.judge(_measured(override={2000: 40.0}))[2].verdict == "FAIL"


def test_judge_inconclusive():
    edge = sg.judge(_measured(edge_at=(8,)))
    assert edge[0].verdict == "INCONCLUSIVE" and "edge" in edge[0].measured
    assert edge[1].verdict == "INCONCLUSIVE"                 # the fit uses an untuned B
    assert sg.judge(_measured(noise=3.0))[0].verdict == "INCONCLUSIVE"   # no power
    none = sg.judge(_measured(b_simple=50.0))                # no B ≤ B_simple/8 on the ladder
    assert none[0].verdict == "INCONCLUSIVE"


def test_smoke_run(tmp_path):
    res = sg.run(Context(tmp_path, mode="smoke"))
    assert res.error is None and len(res.checks) == 3
    assert res.figures == ["figures/24-sgd-fewer-epochs_ladder.png"]
    assert (tmp_path / res.figures[0]).is_file()
