"""Claim 22 (SPEC §4.22): the first-spike-time formula against a case computed independently,
the spike detector, judge() on constructed numbers (PASS, FAIL, INCONCLUSIVE), a smoke run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sgdlab.experiments import gd_weight_decay as gw
from sgdlab.experiments.base import Context

ETA, LAM, T = 0.1, 0.04, 1200


def test_first_spike_time_counts_the_norm_recursion():
    """t* is where η s/x_t reaches 2 under x_{t+1} = (1 − ηλ)² x_t, counted step by step."""
    for x0, s, eta, lam in ((680.0, 630.0, 0.1, 0.04), (100.0, 50.0, 0.1, 0.05),
                            (3.0, 1.0, 0.5, 0.01)):
        x, t = x0, 0
        while eta * s / x < 2:
            x *= (1 - eta * lam) ** 2
            t += 1
        tp = gw.first_spike_time(x0, s, eta, lam)
        assert t - 1 < tp <= t
    assert gw.first_spike_time(1.0, 100.0, 0.1, 0.01) == 0.0      # already past the edge
    assert gw.first_spike_time(100.0, 1.0, 0.1, 0.0) == math.inf   # no weight decay
    assert math.isnan(gw.first_spike_time(0.0, 1.0, 0.1, 0.1))


def test_first_spike_time_on_a_scale_invariant_toy():
    """L(w) = ½ s (w₂/‖w‖)² is scale-invariant with unit-norm sharpness s at u = (1, 0): GD + WD
    from (10, 1e-6) spikes first within 2 steps of t*, then again and again."""
    torch.set_default_dtype(torch.float64)
    try:
        s, eta, lam = 50.0, 0.1, 0.05
        w = torch.tensor([10.0, 1e-6], requires_grad=True)
        losses = []
        for _ in range(1500):
            loss = 0.5 * s * w[1] ** 2 / (w * w).sum()
            (g,) = torch.autograd.grad(loss, w)
            losses.append(float(loss.detach()))
            with torch.no_grad():
                w.mul_(1 - eta * lam).sub_(eta * g)
    finally:
        torch.set_default_dtype(torch.float32)
    tp = gw.first_spike_time(100.0, s, eta, lam)
    sp = gw.spikes(losses)
    assert abs(sp[0]["onset"] - tp) <= 2, (sp[0]["onset"], tp)
    assert len(sp) >= 4


def test_spike_detector():
    base = list(np.linspace(0.2, 0.1, 300))
    curve = base[:100] + [0.3, 0.6, 0.4, 0.15, 0.12] + base[105:200] + [0.101, 0.1015] \
        + base[202:]
    sp = gw.spikes(curve)
    assert [e["onset"] for e in sp] == [100]       # the 1 % bump at 200 is no spike
    assert sp[0]["peak"] == 0.6 and sp[0]["peak_step"] == 101
    assert gw.spikes(base) == []
    assert [e["onset"] for e in gw.spikes(base[:50] + [float("nan")] * 3)] == [50]
    assert math.isclose(gw.interval_cv([0, 10, 20, 30]), 0.0)
    assert math.isnan(gw.interval_cv([0, 10]))


def _curve(onsets, T=T, height=5.0):
    """A slowly falling loss near 0.1 with a five-step spike at each onset."""
    loss = list(0.1 * (1 - 1e-5 * np.arange(T)))
    for t in onsets:
        for j, f in enumerate((0.5, 1.0, 0.7, 0.3)):
            if t + j < T:
                loss[t + j] = loss[t + j] * (1 + height * f)
    return loss


def _run(seed, t_pred, first, period, growth=10.0, control_spike=False, jitter=()):
    x0, s0 = 680.0, 600.0
    onsets, t = [], first
    k = 0
    while t < T:
        onsets.append(int(t))
        t += period + (jitter[k % len(jitter)] if jitter else 0)
        k += 1
    x = list(x0 * (1 - ETA * LAM) ** (2 * np.arange(T))) if first < T else [x0] * T
    ctrl = list(0.1 * (1 - 1e-6 * np.arange(T)))
    if control_spike:
        ctrl = _curve([500])
    return {"seed": seed, "x0": x0, "lambda_max0": s0 / x0, "s0": s0, "t_pred": t_pred,
            "loss_wd": _curve(onsets) if first < T else list(0.1 * np.ones(T)),
            "x_wd": x, "loss_control": ctrl, "x_control": [x0] * T, "pre_loss_end": 0.1,
            "t_snap": max(0, int(first) - 5) if first < T else math.nan,
            "lambda_max_snap": growth * s0 / x0 if first < T else math.nan,
            "s_snap": s0 if first < T else math.nan}


def _measured(firsts=(370, 380, 390), t_pred=380.0, period=60, steps=T, **kw):
    return {"runs": [_run(i, t_pred, f, period, **kw) for i, f in enumerate(firsts)],
            "eta": ETA, "lambda": LAM, "steps": steps, "pre": 600, "seeds": len(firsts),
            "n_train": 256, "seconds": 1.0}


def test_judge_on_constructed_numbers():
    checks = gw.judge(_measured())
    assert [c.basis for c in checks] == ["notes", "derived", "derived", "derived"]
    assert [c.verdict for c in checks] == ["PASS"] * 4, [c.measured for c in checks]
    assert checks[1].numbers["onset"] == [370, 380, 390]
    # the spikes come at half the predicted time
    assert gw.judge(_measured(firsts=(185, 190, 195)))[1].verdict == "FAIL"
    # no spike although the horizon is 3 t*: the notes' statement fails
    none = gw.judge(_measured(firsts=(T, T, T)))
    assert none[0].verdict == "FAIL"
    # the Hessian did not grow before the spike
    assert gw.judge(_measured(growth=1.2))[0].verdict == "FAIL"
    # irregular spikes: intervals alternate 20 / 140 steps
    irregular = gw.judge(_measured(period=20, jitter=(0, 120)))
    assert irregular[2].verdict == "FAIL", irregular[2].measured
    # a spike without weight decay
    assert gw.judge(_measured(control_spike=True))[3].verdict == "FAIL"


def test_judge_inconclusive():
    # no spike, but the horizon is shorter than 2 t*
    short = gw.judge(_measured(firsts=(T, T, T), t_pred=800.0))
    assert short[0].verdict == "INCONCLUSIVE" and short[1].verdict == "INCONCLUSIVE"
    # onsets scattered around t*: the mean is right but the se too large to tell
    assert gw.judge(_measured(firsts=(230, 380, 530)))[1].verdict == "INCONCLUSIVE"
    # too few spikes in the second half of the horizon to judge periodicity
    assert gw.judge(_measured(period=250))[2].verdict == "INCONCLUSIVE"


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_smoke_run(tmp_path):
    res = gw.run(Context(tmp_path, mode="smoke"))
    assert res.error is None and len(res.checks) == 4
    assert res.figures == ["figures/22-gd-wd-spikes_spikes.png"]
    assert (tmp_path / res.figures[0]).is_file()
    r = res.checks[1].numbers
    assert r["t_pred"][0] > 0
