"""Claim 4 (linear scaling rule in training, SPEC §4.4): the recipe against configs/, the
schedules the Trainer applies against the closed form, the training steps against a bare
torch.optim.SGD loop, the statistics by hand, and a smoke run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sgdlab import data, models
from sgdlab.experiments import linear_scaling as ls
from sgdlab.experiments.base import VERDICTS, Context
from sgdlab.train import Callback, Trainer

ROOT = Path(__file__).resolve().parents[1]


def test_reference_recipe_matches_the_config_file():
    cfg = yaml.safe_load((ROOT / "configs" / "mnist1d_cnn.yaml").read_text())
    assert (cfg["dataset"], cfg["model"], cfg["optimizer"]) == (ls.DATASET, ls.MODEL,
                                                                ls.OPTIMIZER)
    assert cfg["batch_size"] == ls.B_REF and float(cfg["lr"]) == ls.LR_REF
    assert float(cfg["optimizer_options"]["beta"]) == ls.BETA
    assert float(cfg["optimizer_options"]["weight_decay"]) == ls.WEIGHT_DECAY
    assert cfg["sampling"] == ls.SAMPLING and cfg["schedule"] == "cosine"


def test_linear_rule_and_run_length():
    for b in (32, 64, 128, 256, 512, 1024):
        assert math.isclose(ls.scaled_lr(b), 0.1 * b / 128, rel_tol=1e-15)
        t, w = ls.run_length(b, 40, 4000)
        assert abs(t * b - 40 * 4000) <= b / 2          # the same examples for every B
        assert abs(w - 40 * 4000 * 5 / 90 / b) <= 0.5 and 1 <= w < t


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
    # independent re-derivation: ramp t/W (or flat) then ½(1 + cos(π(t − W)/(T − W)))
    expect = [eta * ((t / w if warmup else 1.0) if t < w
                     else 0.5 * (1 + math.cos(math.pi * (t - w) / (t_steps - w))))
              for t in range(t_steps)]
    np.testing.assert_allclose(rec.lrs, expect, rtol=1e-12, atol=1e-15)
    assert rec.lrs[0] == (0.0 if warmup else eta)
    for t in range(t_steps):
        assert math.isclose(ls.lr_multiplier(t, t_steps, w, warmup) * eta, expect[t],
                            rel_tol=1e-12, abs_tol=1e-15)


def test_trainer_steps_equal_torch_sgd_on_the_same_batches():
    """The run's update is torch.optim.SGD(momentum=0.9, weight_decay=5e-4) at the scheduled
    lr, on the shuffled batches of the seed, from the model's seeded initialisation."""
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
            g["lr"] = eta * (t / w if t < w else
                             0.5 * (1 + math.cos(math.pi * (t - w) / (t_steps - w))))
        idx = sampler.next_batch()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(ref(ds.x_train[idx]), ds.y_train[idx]).backward()
        opt.step()
    for (name, p), q in zip(tr.model.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6, msg=name)


def test_statistics_by_hand():
    a, b = [0.90, 0.86], [0.80, 0.70, 0.75]
    sa, sb = np.std(a, ddof=1), np.std(b, ddof=1)
    assert math.isclose(ls.diff_se(a, b, 1000), math.sqrt(sa**2 / 2 + sb**2 / 3))
    # two equal seeds: the se falls back to the binomial sd of the test accuracy
    p = 0.9
    assert math.isclose(ls.diff_se([p, p], [p, p], 1000),
                        math.sqrt(2 * p * (1 - p) / 1000 / 2))
    assert ls.diff_se([0.9], [0.8, 0.7], 1000) is None
    assert ls.band_verdict(0.005, 0.005) == "PASS"      # 0.5 + 1.0 ≤ 2 pp
    assert ls.band_verdict(-0.05, 0.01) == "FAIL"       # 5 − 2 > 2 pp
    assert ls.band_verdict(0.015, 0.01) == "INCONCLUSIVE"
    assert ls.band_verdict(0.0, None) == "INCONCLUSIVE"
    assert ls.gap_verdict(0.10, 0.03) == "PASS"
    assert ls.gap_verdict(0.0, 0.005) == "FAIL"         # 0 + 1 < 2 pp: no degradation
    assert ls.gap_verdict(0.01, 0.01) == "INCONCLUSIVE"
    # a finite run at the class prior (train loss ≈ ln 10) is flagged, a diverged one is not
    assert ls.at_chance({"diverged": False, "train_loss": 2.3026})
    assert not ls.at_chance({"diverged": False, "train_loss": 1.0})
    assert not ls.at_chance({"diverged": True, "train_loss": None})


def _finite_or_none(x):
    if isinstance(x, list):
        return all(_finite_or_none(v) for v in x)
    return x is None or isinstance(x, str) or (isinstance(x, (int, float))
                                               and math.isfinite(x))


def test_smoke_run(tmp_path):
    res = ls.run(Context(tmp_path, mode="smoke", seeds=2))
    assert res.claim.id == "4-linear-scaling" and res.claim.spec == "§4.4"
    assert res.verdict in VERDICTS and res.error is None
    assert [c.name for c in res.checks] == ["with warmup: accuracy flat in B",
                                           "without warmup: largest B degrades"]
    for c in res.checks:
        assert c.verdict in ("PASS", "FAIL", "INCONCLUSIVE")
        assert c.prediction and c.measured and c.tolerance and c.numbers
        assert all(_finite_or_none(v) for v in c.numbers.values()), c.numbers
    a, b = (c.numbers for c in res.checks)
    assert a["B"] == [128, 512] and a["seeds"] == 2
    assert all(len(r) == 2 for r in a["acc_runs"])
    assert all(0.0 <= x <= 1.0 for r in a["acc_runs"] for x in r)
    assert a["diff_vs_ref"][0] == 0.0 and a["diff_se"][1] > 0
    assert math.isfinite(b["gap"]) and b["gap_se"] > 0
    assert res.figures == ["figures/claim4_linear_scaling.png"]
    assert (tmp_path / res.figures[0]).is_file()
    assert any(n.startswith("B | η | steps") for n in res.notes)
    again = ls.run(Context(tmp_path, mode="smoke", seeds=2))   # read from the cache
    assert again.checks[0].numbers["acc_runs"] == a["acc_runs"]
    assert again.checks[1].numbers["gap"] == b["gap"]
