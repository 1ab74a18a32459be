"""Claim 15 (SPEC §4.15): the lag and ratio formulas against closed forms, the lr-1 shadow
update against stepping at η, the exact identities on a float64 stream, judge() on
constructed numbers, a smoke run."""

from __future__ import annotations

import copy
import math

import numpy as np
import torch

from sgdlab import optim
from sgdlab.experiments import adam_rmsprop as ar
from sgdlab.experiments.base import Context


def test_boost_ratio_and_lags_closed_forms():
    assert math.isclose(float(ar.boost(1)), 10.0, rel_tol=1e-12)              # 1/√(1 − .99)
    assert math.isclose(float(ar.correction_ratio(1)), 1.0, rel_tol=1e-12)    # 0.1/0.1
    assert math.isclose(float(ar.correction_ratio(1, 0.9, 0.999)), 0.1 / math.sqrt(0.001),
                        rel_tol=1e-12)                                         # §4.7: 3.16
    t = np.arange(1, 400)
    r = ar.correction_ratio(t)
    assert t[np.argmax(r)] == 13 and 2.13 < r.max() < 2.14
    lg = ar.lags()
    assert math.isclose(lg["adam_nc"], sum(0.9**k / math.sqrt(1 - 0.99**k)
                                           for k in range(1, 3000)), rel_tol=1e-12)
    assert math.isclose(lg["adam_bc"], sum(1 / math.sqrt(1 - 0.99**k) - 1
                                           for k in range(1, 200000)), rel_tol=1e-6)
    # without the boost (α → 0) the uncorrected lag is β₁/(1 − β₁), the corrected one 0
    lg0 = ar.lags(alpha=1e-12, horizon=2000)
    assert math.isclose(lg0["adam_nc"], 9.0, rel_tol=1e-9) and abs(lg0["adam_bc"]) < 1e-9
    # (1 − α)Δ_bc → 2 ln 2 as α → 1
    assert abs(ar.lags(alpha=0.9999, horizon=2000000)["adam_bc"] * 1e-4 - 2 * math.log(2)) < 0.02
    far = ar.lag_at([5000, 20000], "adam_nc")
    assert np.allclose(far, lg["adam_nc"], rtol=1e-3)
    assert np.allclose(ar.lag_at([20000], "adam_bc"), lg["adam_bc"], rtol=1e-3)
    assert np.all(np.diff(ar.lag_at([50, 100, 200, 400], "adam_bc")) > 0)     # still accruing


def test_step_lag_and_best_lr_on_constructed_curves():
    t = np.arange(0, 1001, 10.0)
    ref = np.exp(-t / 300) + 0.5
    other = np.exp(-np.maximum(t - 40, 0) / 300) + 0.5
    assert abs(ar.step_lag(t, ref, other, 500) - 40) < 0.1
    noisy = ref + 1e-4 * np.sin(t)                         # not monotone: envelope used
    assert abs(ar.step_lag(t, noisy, other, 500) - 40) < 1.0
    lr = np.arange(6.0)
    assert math.isclose(ar.best_log2_lr(lr, (lr - 2.3) ** 2 + 1), 2.3, rel_tol=1e-9)
    assert math.isnan(ar.best_log2_lr(lr, lr))                # minimum at the edge


def test_shadow_update_at_lr_one_equals_stepping_at_eta():
    """Each optimizer's moments do not depend on η: stepping a zeroed copy at lr 1 and moving
    by η times it is the optimizer stepped at η (float64, every variant)."""
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(7, generator=gen, dtype=torch.float64) for _ in range(25)]
    for v in ar.VARIANTS:
        eta = 3e-3
        p = torch.nn.Parameter(torch.ones(7, dtype=torch.float64))
        ref = (optim.RMSprop([p], lr=eta, alpha=ar.ALPHA, eps=ar.EPS) if v == "rmsprop" else
               optim.Adam([p], lr=eta, betas=(ar.BETA1, ar.ALPHA), eps=ar.EPS,
                          bias_correction=v == "adam_bc"))
        q = torch.ones(7, dtype=torch.float64)
        d = torch.zeros(7, dtype=torch.float64)
        opt = ar._make_optimizer(v, [d])
        for g in grads:
            p.grad = g.clone()
            ref.step()
            d.zero_()
            d.grad = g.clone()
            opt.step()
            q += eta * d
        assert torch.allclose(p.detach(), q, rtol=1e-13, atol=1e-15), v


def test_exact_identities_on_a_stream():
    st = ar._stream(30)
    assert st["identity_max_rel"] <= ar.IDENT_TOL
    ratio = np.asarray(st["ratio"])
    assert np.max(np.abs(ratio / ar.correction_ratio(np.arange(1, 31)) - 1)) <= ar.RATIO_TOL


def _measured(gap_nc=0.02, gap_bc=0.05, best_shift=0.1, lag_scale=1.0, se=0.002):
    lrs = [1e-4, 4e-4, 3.2e-3, 6.4e-3, 1.28e-2]
    rows = []
    for i, lr in enumerate(lrs):
        row = {"lr": lr, "small": i < 2}
        for v, gap in (("adam_nc", gap_nc), ("adam_bc", gap_bc)):
            row[f"{v}_gap"], row[f"{v}_gap_se"] = gap, se
            row[f"{v}_gaps"] = [gap - se, gap + se, gap]
            pred = 40.0 if v == "adam_nc" else 120.0
            row[f"{v}_lag"], row[f"{v}_lag_se"] = pred * lag_scale, 1.0
            row[f"{v}_lag_pred"] = pred
        rows.append(row)
    return {"rows": rows, "small": [0, 1], "i_best": 3, "steps": 1000, "lags": ar.lags(),
            "seeds": 3, "lrs": lrs,
            "best_log2": {"rmsprop": [2.0, 2.1, 1.9],
                          "adam_nc": [2.0 + best_shift, 2.1 + best_shift, 1.9 + best_shift],
                          "adam_bc": [2.0, 2.0, 2.0]},
            "stream": {"identity_max_rel": 0.0,
                       "ratio": ar.correction_ratio(np.arange(1, 50)).tolist()}}


def test_judge_on_constructed_numbers():
    checks = ar.judge(_measured())
    assert [c.verdict for c in checks] == ["PASS"] * 5
    assert [c.basis for c in checks] == ["notes"] * 3 + ["derived"] * 2
    assert checks[4].finding
    assert ar.judge(_measured(gap_nc=0.2))[0].verdict == "FAIL"         # curves differ
    assert ar.judge(_measured(gap_nc=0.048))[0].verdict == "INCONCLUSIVE"
    assert ar.judge(_measured(best_shift=2.0))[1].verdict == "FAIL"      # 4× apart
    m = _measured()
    m["best_log2"]["adam_nc"] = [2.8, 3.1, 3.1]                          # 1.0 ± 0.12 apart
    assert ar.judge(m)[1].verdict == "INCONCLUSIVE"
    assert ar.judge(_measured(gap_bc=0.0))[2].verdict == "FAIL"         # no bias-corr. gap
    assert ar.judge(_measured(lag_scale=2.0))[4].verdict == "FAIL"       # 100 % off
    m = _measured()
    m["best_log2"]["rmsprop"][0] = math.nan                              # edge of the ladder
    assert ar.judge(m)[1].verdict == "INCONCLUSIVE"
    bad = copy.deepcopy(_measured())
    bad["stream"]["ratio"][3] *= 1.01
    assert ar.judge(bad)[3].verdict == "FAIL"
    none = copy.deepcopy(_measured())
    none["small"] = []
    assert ar.judge(none)[0].verdict == "INCONCLUSIVE"


def test_smoke_run(tmp_path):
    res = ar.run(Context(tmp_path, mode="smoke"))
    assert res.error is None and len(res.checks) == 5
    assert res.checks[3].verdict == "PASS"                     # exact even at smoke size
    assert res.figures == ["figures/15-adam-is-rmsprop_curves.png"]
    assert all((tmp_path / f).is_file() for f in res.figures)
