"""Claim 4 (linear scaling rule in training, SPEC §4.4): the recipe against configs/, the
schedules against the closed form, the Trainer's steps against a bare torch.optim.SGD loop,
the theory and statistics by hand, judge() on hand-made numbers (PASS, FAIL, INCONCLUSIVE) and
a smoke run."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sgdlab import data, models
from sgdlab.experiments import CLAIMS
from sgdlab.experiments import linear_scaling as ls
from sgdlab.experiments.base import VERDICTS, Context
from sgdlab.train import Callback, Trainer

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["fixed epochs: flat in B inside the predicted range",
         "fixed epochs: the rule breaks well beyond the range",
         "fixed steps: no loss up to B_stab",
         "fixed steps: past B_stab the linear η is too large",
         "S(B) = S_min(1 + B_crit/B), B_crit ~ B_simple",
         "warmup matters only past the edge at the start"]


def test_registry_and_budgets():
    assert CLAIMS["4-linear-scaling"] is ls
    assert set(ls.BUDGETS) == {"smoke", "quick", "full"}
    for b in ls.BUDGETS.values():
        assert ls.B_REF in b["epoch_ladder"] and ls.B_REF in b["step_ladder"]
        assert set(b["no_warmup"]) <= set(b["epoch_ladder"])
        for batch in b["step_ladder"]:
            assert 1.0 in ls.eta_mults(b, batch)           # the linear η is always run
    full = ls.BUDGETS["full"]
    assert ls.eta_mults(full, 64) == [1.0, 2.0] and ls.eta_mults(full, 128) == [0.5, 1.0, 2.0]
    assert ls.eta_mults(full, 1024) == [0.25, 0.5, 1.0]
    quick = ls.BUDGETS["quick"]
    assert ls.eta_mults(quick, 512) == [1.0] and ls.eta_mults(quick, 512, 355.0) == [0.5, 1.0]
    assert ls.eta_mults(quick, 256, 355.0) == [1.0]


def test_reference_recipe_matches_the_config_file():
    cfg = yaml.safe_load((ROOT / "configs" / "mnist1d_cnn.yaml").read_text())
    assert (cfg["dataset"], cfg["model"], cfg["optimizer"]) == (ls.DATASET, ls.MODEL,
                                                                ls.OPTIMIZER)
    assert cfg["batch_size"] == ls.B_REF and float(cfg["lr"]) == ls.LR_REF
    assert float(cfg["optimizer_options"]["beta"]) == ls.BETA
    assert float(cfg["optimizer_options"]["weight_decay"]) == ls.WEIGHT_DECAY
    assert cfg["sampling"] == ls.SAMPLING and cfg["schedule"] == "cosine"


def test_linear_rule_run_length_and_schedule():
    for b in (32, 64, 128, 256, 512, 1024):
        assert math.isclose(ls.scaled_lr(b), 0.1 * b / 128, rel_tol=1e-15)
        t, w = ls.run_length(b, 40, 4000)
        assert abs(t * b - 40 * 4000) <= b / 2          # the same examples for every B
        assert abs(w - 40 * 4000 * 5 / 90 / b) <= 0.5 and 1 <= w < t
    # the schedule object train_many gets equals the closed form
    for warmup in (True, False):
        t_steps, w = 47, 3
        sched = ls.schedule(t_steps, w, warmup)
        for t in range(t_steps):
            assert math.isclose(sched(t), ls.lr_multiplier(t, t_steps, w, warmup),
                                rel_tol=1e-12, abs_tol=1e-15)


class _LrRecorder(Callback):
    def __init__(self):
        self.lrs = []

    def after_backward(self, trainer):
        self.lrs.append(trainer.optimizer.param_groups[0]["lr"])


@pytest.mark.parametrize("warmup", [True, False])
def test_trainer_applies_the_closed_form_schedule(warmup):
    b, epochs = 256, 3.0
    cfg = ls.train_config(b, epochs, warmup, 0, 4000)
    t_steps, w = ls.run_length(b, epochs, 4000)
    assert (t_steps, w) == (47, 3)
    rec = _LrRecorder()
    Trainer(cfg, callbacks=[rec], progress=False).fit()
    eta = 0.1 * b / 128
    expect = [eta * ((t / w if warmup else 1.0) if t < w
                     else 0.5 * (1 + math.cos(math.pi * (t - w) / (t_steps - w))))
              for t in range(t_steps)]
    np.testing.assert_allclose(rec.lrs, expect, rtol=1e-12, atol=1e-15)
    assert rec.lrs[0] == (0.0 if warmup else eta)


def test_trainer_steps_equal_torch_sgd_on_the_same_batches():
    """The reference run's update is torch.optim.SGD(momentum=0.9, weight_decay=5e-4) at the
    scheduled lr, on the shuffled batches of the seed, from the model's seeded init."""
    b, epochs, seed = 512, 2.0, 3
    cfg = ls.train_config(b, epochs, True, seed, 4000)
    t_steps, w = ls.run_length(b, epochs, 4000)
    tr = Trainer(cfg, progress=False)
    tr.fit()
    ds = data.load("mnist1d", seed=seed)
    ref = models.build("cnn", ds, seed=seed)
    opt = torch.optim.SGD(ref.parameters(), lr=0.0, momentum=0.9, weight_decay=5e-4)
    sampler = data.BatchSampler(ds.n_train, b, "shuffle", seed)
    eta = 0.1 * b / 128
    for t in range(t_steps):
        for g in opt.param_groups:
            g["lr"] = eta * ls.lr_multiplier(t, t_steps, w, True)
        idx = sampler.next_batch()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(ref(ds.x_train[idx]), ds.y_train[idx]).backward()
        opt.step()
    for (name, p), q in zip(tr.model.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6, msg=name)


# ----------------------------------------------------------------------------- theory by hand


REF = {"lambda_init": 0.3, "lambda_ref": 14.0, "lambda_max_all": 19.0, "max_lr_lambda": 1.3,
       "b_simple": 100.0, "b_simple_range": [30.0, 200.0], "target": 0.6, "steps": 312}


def test_predict_by_hand():
    p = ls.predict(REF, [128, 1024])
    assert math.isclose(p["B_stab"], 128 * 2 * 1.9 / (0.1 * 14.0))      # ≈ 347 (the audit)
    assert p["B_crit_pred"] == 100.0 and p["B_max"] == 100.0
    assert math.isclose(p["warmup_product"]["1024"], 0.8 * 0.3)
    assert p["warmup_matters"] == {"128": False, "1024": False}
    hot = ls.predict({**REF, "lambda_init": 10.0}, [128, 1024])
    assert hot["warmup_matters"] == {"128": False, "1024": True}          # 0.8·10 > 3.8
    assert ls.predict({**REF, "b_simple": 1e4}, [128])["B_max"] == p["B_stab"]


def test_summarise_reference_by_hand():
    raw = {"steps": 100, "sharp_step": [1, 10, 50, 90],
           "lambda": [0.5, 10.0, 12.0, 30.0],
           "lr_times_lambda": [0.0, 1.0, 0.6 * 12.0 * 0.1, 0.01 * 30.0],  # f = 1, .6, .1
           "noise_step": [1, 5, 10, 50, 90, 95], "b_simple_smoothed": [900, 50, 40, 80, 60, 5000],
           "b_simple": [None] * 6, "eval_step": [25, 50, 75, 100],
           "eval_test_acc": [0.3, 0.55, 0.7, 0.8]}
    s = ls.summarise_reference(raw)
    assert s["lambda_init"] == 0.5
    assert s["lambda_ref"] == 12.0             # the λ at f(t) = 0.1 is left out
    assert s["lambda_max_all"] == 30.0
    assert s["b_simple"] == 60.0               # median of 40, 80, 60 (10–90 % of the run)
    assert s["target"] == 0.55


def test_steps_to_target_and_sb_fit():
    assert ls.steps_to_target([0, 10, 20, 30], [0.1, 0.5, 0.7, 0.6], 0.65) == 20
    assert ls.steps_to_target([0, 10], [0.1, None], 0.65) is None
    bs = [32, 64, 128, 256, 512, 1024]
    exact = [100 * (1 + 256 / b) for b in bs]
    f = ls.fit_sb(bs, exact)
    assert math.isclose(f["S_min"], 100) and math.isclose(f["B_crit"], 256)
    assert f["log10_B_crit_se"] < 1e-6 and math.isclose(f["r2"], 1.0)
    rng = np.random.default_rng(0)
    noisy = [s * (1 + 0.03 * rng.standard_normal()) for s in exact]
    g = ls.fit_sb(bs, noisy)
    assert abs(math.log10(g["B_crit"] / 256)) < 2 * g["log10_B_crit_se"] + 0.05
    assert 0 < g["log10_B_crit_se"] < 0.2
    assert math.isnan(ls.fit_sb(bs[:2], exact[:2])["log10_B_crit_se"])   # no dof
    assert math.isnan(ls.fit_sb(bs, [100 - 1000 / b for b in bs])["B_crit"])  # S rises in B


def test_paired_statistics_by_hand():
    a, b = [0.90, 0.80, 0.85], [0.88, 0.77, 0.84]
    d = np.array(a) - np.array(b)
    m, se = ls.paired_diff(a, b, 10**9)              # no correctness: binomial, negligible
    assert math.isclose(m, d.mean())
    assert math.isclose(se, d.std(ddof=1) / math.sqrt(3), rel_tol=1e-4)
    # identical differences, no correctness strings: the unpaired binomial term alone
    m, se = ls.paired_diff([0.9, 0.9], [0.8, 0.8], 1000)
    assert math.isclose(se, math.sqrt((0.09 + 0.16) / 1000))
    # with correctness strings: the McNemar term var_i(δ_i)/n from the per-example differences
    ca = ["1100", "1010"]
    cb = ["1000", "1000"]
    m, se = ls.paired_diff([0.5, 0.5], [0.25, 0.25], 4, ca, cb)
    delta = np.array([0.0, 0.5, 0.5, 0.0])
    assert math.isclose(se, math.sqrt(delta.var(ddof=1) / 4))
    assert ls.paired_diff([0.9], [0.8], 1000)[1] is None
    assert math.isclose(ls.paired_diff([0.9], [0.8], 1000, single=True)[1],
                        math.sqrt(0.25 / 1000))
    assert math.isclose(ls.t_k(1), 12.706, rel_tol=1e-3) and ls.t_k(100) == 2.0
    assert ls.at_chance({"diverged": False, "train_loss": 2.3026})
    assert not ls.at_chance({"diverged": False, "train_loss": 1.0})
    assert not ls.at_chance({"diverged": True, "train_loss": None})


# ----------------------------------------------------------------------------- judge()


def _correct(acc, n=1000):
    k = round(acc * n)
    return "1" * k + "0" * (n - k)


def _measurements(flat=0.0, beyond=-0.30, steps_gain=0.05, b_crit_fit=200.0, gap=0.0,
                  seeds=3, sb_points=(64, 128, 256, 512, 1024), small_eta_gain=0.10):
    """Hand-made measurements: B_simple = 128 = B_max (B_stab ≈ 347), so the anchor is
    B_ref; fixed-epochs accuracies with seed offsets common to every B (the pairing removes
    them); S(B) = 20(1 + B_crit/B) read off linear test-accuracy curves."""
    off = [0.0, -0.05, 0.03][:seeds]
    base = 0.85
    jitter = [0.002, -0.001, 0.0][:seeds]
    acc = {64: flat, 128: 0.0, 256: -0.01, 512: beyond, 1024: beyond - 0.1}
    er = {}
    for b, d in acc.items():
        a = [base + o + d + j * (b % 3) for o, j in zip(off, jitter, strict=True)]
        er[f"{b}/1"] = {"test_acc": a, "diverged": [False] * seeds,
                        "correct": [_correct(x) for x in a]}
    a = [x - gap + 0.002 * i for i, x in enumerate(er["1024/1"]["test_acc"])]
    er["1024/0"] = {"test_acc": a, "diverged": [False] * seeds,
                    "correct": [_correct(x) for x in a]}
    steps = list(range(0, 313))
    sr = {}
    for b in (64, 128, 256, 512, 1024):
        s_b = 20 * (1 + b_crit_fit / b)
        curve = [0.1 + 0.8 * min(1.0, t / (2 * s_b)) if b in sb_points else 0.2
                 for t in steps]
        final = base + (0.0 if b <= 128 else steps_gain)
        sr[str(b)] = {"lr": [ls.scaled_lr(b)], "test_acc": [final], "eval_step": steps,
                      "curve": [curve], "diverged": [False], "correct": [_correct(final)]}
        if b >= 512:          # past B_stab: a smaller η that never reaches the S(B) target
            alt = min(0.99, final + small_eta_gain)
            for k in ("lr", "test_acc", "curve", "diverged", "correct"):
                sr[str(b)][k].insert(0, {"lr": ls.scaled_lr(b) / 4, "test_acc": alt,
                                         "curve": [0.2] * len(steps), "diverged": False,
                                         "correct": _correct(alt)}[k])
    ref = {**REF, "b_simple": 128.0, "target": 0.5}
    return {"n_train": 4000, "n_test": 1000, "epochs": 10, "seeds": seeds, "T_ref": 312,
            "reference": ref, "prediction": ls.predict(ref, [64, 128, 256, 512, 1024]),
            "epochs_runs": er, "steps_runs": sr}


def test_judge_pass_case():
    checks = ls.judge(_measurements())
    assert [c.name for c in checks] == NAMES
    assert [c.basis for c in checks] == ["notes"] + ["derived"] * 5
    assert [c.verdict for c in checks] == ["PASS"] * 6, [(c.name, c.measured) for c in checks]
    assert checks[0].numbers["judged"] == [64] and checks[0].numbers["anchor"] == 128
    assert checks[1].numbers["judged"] == [512, 1024]          # ≥ 4·B_max = 512
    assert checks[2].numbers["judged"] == [256]                # B_ref < B ≤ B_stab
    assert checks[3].numbers["judged"] == [512, 1024]          # B > B_stab
    sb = checks[4].numbers
    assert sb["B"] == [64, 128, 256, 512, 1024] and abs(sb["B_crit"] / 200 - 1) < 0.1
    assert all(c.finding for c in (checks[0], checks[1], checks[3], checks[5]))


def test_judge_fail_case():
    m = _measurements(flat=-0.10, beyond=0.0, steps_gain=-0.20, b_crit_fit=3000.0, gap=0.15,
                      small_eta_gain=-0.10)
    v = [c.verdict for c in ls.judge(m)]
    assert v == ["FAIL"] * 6, v


def test_judge_inconclusive_case():
    # one seed: no seed variance for the fixed-epochs differences; two S(B) points only
    m = _measurements(seeds=1, sb_points=(512, 1024), small_eta_gain=0.0)
    checks = ls.judge(m)
    assert [c.verdict for c in checks] == ["INCONCLUSIVE", "INCONCLUSIVE", "PASS",
                                           "INCONCLUSIVE", "INCONCLUSIVE", "INCONCLUSIVE"]
    assert checks[4].numbers["censored"] == [64, 128, 256]
    # a difference at the edge of the band is INCONCLUSIVE too
    edge = ls.judge(_measurements(flat=-0.02))[0]
    assert edge.verdict == "INCONCLUSIVE"
    # B_ref outside the range: the anchor is the largest ladder B inside, here the only one
    m2 = copy.deepcopy(_measurements())
    m2["prediction"]["B_max"] = 100.0
    c = ls.judge(m2)[0]
    assert c.verdict == "INCONCLUSIVE" and c.numbers["anchor"] == 64 and not c.numbers["judged"]


def test_judge_warmup_gap_predicted_where_past_the_edge():
    m = _measurements(gap=0.15)
    m["prediction"] = ls.predict({**m["reference"], "lambda_init": 10.0},
                                 [64, 128, 256, 512, 1024])
    assert ls.judge(m)[5].verdict == "PASS"                    # a gap, as predicted


# ----------------------------------------------------------------------------- smoke


def _finite_or_none(x):
    if isinstance(x, dict):
        return all(_finite_or_none(v) for v in x.values())
    if isinstance(x, (list, tuple)):
        return all(_finite_or_none(v) for v in x)
    return x is None or isinstance(x, (str, bool)) or (isinstance(x, (int, float)))


def test_smoke_run(tmp_path):
    res = ls.run(Context(tmp_path, mode="smoke", seeds=2))
    assert res.claim.id == "4-linear-scaling" and res.claim.spec == "§4.4"
    assert res.verdict in VERDICTS and res.error is None
    assert [c.name for c in res.checks] == NAMES
    for c in res.checks:
        assert c.verdict in ("PASS", "FAIL", "INCONCLUSIVE")
        assert c.prediction and c.measured and c.tolerance and c.numbers
        assert _finite_or_none(c.numbers)
    a = res.checks[0].numbers
    assert a["B"] == [128, 512] and all(len(r) == 2 for r in a["acc_runs"].values())
    # the stored per-example correctness reproduces the accuracies
    for f in (tmp_path / "cache").glob("*.json"):
        v = json.loads(f.read_text())["value"]
        for acc, cor in zip(v.get("test_acc", []), v.get("correct", []), strict=True):
            assert abs(cor.count("1") / len(cor) - acc) < 1e-9
    assert res.figures == ["figures/4-linear-scaling_ladders.png"]
    assert (tmp_path / res.figures[0]).is_file()
    assert any(n.startswith("Reference run") for n in res.notes)
    again = ls.run(Context(tmp_path, mode="smoke", seeds=2))   # read from the cache
    assert again.checks[0].numbers["acc_runs"] == a["acc_runs"]
    assert [c.measured for c in again.checks] == [c.measured for c in res.checks]
