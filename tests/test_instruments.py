"""Instruments: tracking schedules, records in metrics.jsonl, resume, and `sgdlab probe`."""

from __future__ import annotations

import math
import signal

import pytest
import torch

from sgdlab import checkpoint, instruments
from sgdlab.cli import main
from sgdlab.config import ConfigError, from_dict
from sgdlab.metrics_log import read_metrics
from sgdlab.train import Callback, Trainer


def cfg(**kw):
    base = dict(dataset="mnist1d", model="scale_invariant", optimizer="sgd", lr=0.1,
                optimizer_options={"weight_decay": 5e-3}, batch_size=64, steps=40, seed=0,
                model_options={"width": 32})
    base.update(kw)
    return from_dict(base)


def test_log_spaced_steps():
    steps = sorted(instruments.log_spaced_steps(1000))
    assert steps[:10] == list(range(1, 11)) and steps[-1] == 1000
    assert 20 <= len(steps) <= 40
    ratios = [b / a for a, b in zip(steps[10:], steps[11:], strict=False)]
    assert max(ratios) < 1.5


def test_probe_records_and_schedule(tmp_path):
    t = Trainer(cfg(probes=["effective_lr", "sharpness"], probe_every=10,
                    out=str(tmp_path / "run")))
    t.fit()
    probes = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl")
              if r["kind"] == "probe"]
    assert [(r["name"], r["step"]) for r in probes] == [
        (n, s) for s in (10, 20, 30, 40) for n in ("effective_lr", "sharpness")]
    eff = [r for r in probes if r["name"] == "effective_lr"][-1]
    # every trainable weight of the scale-invariant MLP is found scale invariant
    assert {k for k in eff if k.endswith("/effective_lr")} == {"layers.0/effective_lr",
                                                               "layers.1/effective_lr"}
    w = dict(t.model.named_parameters())["layers.0.weight"].detach()
    assert eff["layers.0/norm4"] == pytest.approx(float(w.norm()) ** 4, rel=0.05)
    assert eff["predicted_angular_update"] == pytest.approx(math.sqrt(2 * 0.1 * 5e-3))
    sharp = [r for r in probes if r["name"] == "sharpness"][-1]
    assert sharp["lambda_max"] > 0
    assert sharp["stability_bound"] == pytest.approx(2 / sharp["lambda_max"])
    assert (tmp_path / "run" / "plots" / "probe_sharpness.png").is_file()


def test_log_spaced_probe_schedule():
    t = Trainer(cfg(probes=["effective_lr"], probe_schedule="log", steps=30))
    t.fit()
    steps = [r["step"] for r in t.history if r["kind"] == "probe"]
    assert steps == sorted(instruments.log_spaced_steps(30))


def test_snr_probe_reads_optimizer_diagnostics():
    t = Trainer(cfg(optimizer="snr_sgd", lr=0.05, optimizer_options={"warmup": 5},
                    probes=["snr"], probe_every=10, steps=20))
    t.fit()
    rec = [r for r in t.history if r["kind"] == "probe"][-1]
    assert 0 <= rec["ratio_mean"] <= 1 and rec["window_mean"] >= 10


class StopAt(Callback):
    def after_step(self, trainer):
        if trainer.step == 17:
            trainer._stop_signal = signal.SIGINT


def test_resume_with_instruments_is_bit_for_bit(tmp_path):
    extra = dict(probes=["effective_lr", "sharpness"], probe_every=5)
    Trainer(cfg(out=str(tmp_path / "full"), **extra)).fit()
    c = cfg(out=str(tmp_path / "cut"), **extra)
    Trainer(c, callbacks=[StopAt()]).fit()
    Trainer(c).resume()
    a = checkpoint.load(tmp_path / "full" / "checkpoints" / "last.pt")["model"]
    b = checkpoint.load(tmp_path / "cut" / "checkpoints" / "last.pt")["model"]
    for k in a:
        assert torch.equal(a[k], b[k])
    probes = lambda d: [(r["name"], r["step"], r.get("lambda_max"))
                        for r in read_metrics(d / "metrics.jsonl") if r["kind"] == "probe"]
    assert probes(tmp_path / "full") == probes(tmp_path / "cut")


def test_unknown_probe_is_a_config_error():
    with pytest.raises(ConfigError, match="probe must be one of effective_lr"):
        cfg(probes=["hessian"])


def test_probe_command_prints_a_table(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "mnist1d", "--model", "mlp", "--optimizer", "sgd",
                 "--lr", "0.05", "--steps", "20", "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["probe", str(run), "--probe", "sharpness,effective_lr"]) == 0
    out = capsys.readouterr().out
    assert "sharpness.lambda_max" in out and "effective_lr.weight_norm" in out
    assert main(["probe", str(tmp_path / "nope")]) == 2
    assert "run_dir:" in capsys.readouterr().err


def test_noise_scale_instrument_logs_b_simple():
    t = Trainer(cfg(model="mlp", probes=["noise_scale"], probe_every=10, steps=20))
    t.fit()
    rec = [r for r in t.history if r["kind"] == "probe"][-1]
    assert rec["name"] == "noise_scale" and rec["batch_size"] == 64
    assert rec["tr_sigma"] > 0 and "hidden.0.weight/b_simple" in rec
    assert "b_star_q50" not in rec                      # the quantiles are noise_scale_bstar's


def test_noise_scale_bstar_instrument_logs_quantiles():
    t = Trainer(cfg(model="mlp", probes=["noise_scale_bstar"], probe_every=10, steps=20))
    t.fit()
    rec = [r for r in t.history if r["kind"] == "probe"][-1]
    assert rec["name"] == "noise_scale_bstar"
    assert 0 < rec["b_star_q10"] <= rec["b_star_q50"] <= rec["b_star_q90"]


def test_noise_scale_instrument_disables_itself_under_batchnorm(capsys):
    t = Trainer(cfg(dataset="digits", model="resnet", model_options={"depth": 8, "width": 4},
                    probes=["noise_scale"], probe_every=5, steps=10))
    assert t.fit()["status"] == "completed"
    assert "sgdlab: instrument noise_scale disabled: " in capsys.readouterr().err
    assert not [r for r in t.history if r["kind"] == "probe"]
