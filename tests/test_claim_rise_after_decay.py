"""Claim 23 (SPEC §4.23): the rise fit on an exact exponential, judge() on constructed numbers
(PASS, FAIL, INCONCLUSIVE), a smoke run."""

from __future__ import annotations

import math

import numpy as np

from sgdlab.experiments import rise_after_decay as rd
from sgdlab.experiments.base import Context

GAMMA = 0.5
TAU = 1 / (4 * 0.005 * (1 - GAMMA / 2))          # 66.7 steps


def _rows():
    rows = []
    for el in rd.LADDER:
        eff = 0.02 * math.sqrt(el / 0.005)
        for layer in (0, 1):
            for seed in (0, 1):
                rows.append({"phase": "from init", "lr": 0.1, "weight_decay": el / 0.1,
                             "seed": seed, "layer": layer, "eff_lr": eff,
                             "G": 10.0 * (layer + 1) * eff ** -GAMMA})
    return rows


def _measured(tau=TAU, amp=0.1, noise=0.001, rise=True, t_post=900):
    steps = np.arange(0, t_post + 1, 10.0)
    rng = np.random.default_rng(0)
    curves = []
    for _ in range(6):
        t = steps
        base = (1.5 - amp * np.exp(-t / tau)) if rise else 1.5 + 0.3 * np.exp(-t / 300)
        c = base + noise * rng.standard_normal(len(t))
        c[0] = 1.9
        curves.append(c.tolist())
    return {"steps": steps.tolist(), "train_loss": curves, "rows": _rows(), "t_post": t_post,
            "el_post": 0.005}


def test_rise_fit_recovers_an_exponential():
    steps = np.arange(0, 1001, 5.0)
    loss = 1.0 - 0.2 * np.exp(-steps / 80.0)
    loss[0] = 1.5
    fit = rd.rise_fit(steps, loss)
    assert abs(fit["tau"] / 80.0 - 1) < 0.05 and fit["t_min"] == 5.0


def test_predicted_tau_from_the_ladder():
    assert abs(rd.predicted_tau(_rows(), 0.005)["tau"] / TAU - 1) < 1e-9


def test_judge_on_constructed_numbers():
    checks = rd.judge(_measured())
    assert [c.verdict for c in checks] == ["PASS", "PASS", "FAIL"]   # constant G: τ 50 vs 67
    assert [c.basis for c in checks] == ["notes", "derived", "derived"]
    assert rd.judge(_measured(tau=2.5 * TAU))[1].verdict == "FAIL"
    no_rise = rd.judge(_measured(rise=False))
    assert no_rise[0].verdict == "FAIL" and no_rise[0].finding
    assert no_rise[1].verdict == "INCONCLUSIVE"
    assert rd.judge(_measured(amp=0.01, noise=0.2))[0].verdict == "INCONCLUSIVE"
    short = rd.judge(_measured(t_post=300))                               # < 6 τ
    assert short[0].verdict == short[1].verdict == "INCONCLUSIVE"


def test_smoke_run(tmp_path):
    res = rd.run(Context(tmp_path, mode="smoke"))
    assert res.error is None and len(res.checks) == 3
    assert res.figures == ["figures/23-rise-after-decay_rise.png"]
    assert (tmp_path / res.figures[0]).is_file()
