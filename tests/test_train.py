"""The trainer: exact resume, divergence, averaging, callbacks and the run directory."""

from __future__ import annotations

import json
import signal

import pytest
import torch

from sgdlab import checkpoint
from sgdlab.config import ConfigError, TrainConfig, from_dict
from sgdlab.metrics_log import read_metrics
from sgdlab.train import Callback, Trainer, train


def small(**kw) -> TrainConfig:
    base = dict(dataset="mnist1d", model="mlp", optimizer="momentum", lr=0.05, batch_size=32,
                steps=60, schedule="cosine", eval_every=20, log_every=10, seed=3,
                optimizer_options={"beta": 0.9, "weight_decay": 1e-4})
    base.update(kw)
    return from_dict(base)


def _params(run_dir):
    return checkpoint.load(run_dir / "checkpoints" / "last.pt")["model"]


def _train_losses(run_dir):
    return [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train"]


class StopAt(Callback):
    """Simulates SIGINT arriving during step ``k``."""

    def __init__(self, k: int) -> None:
        self.k = k

    def after_step(self, trainer):
        if trainer.step == self.k:
            trainer._stop_signal = signal.SIGINT


@pytest.mark.parametrize(("stop", "sampling", "average"), [
    (30, "shuffle", "none"), (25, "replacement", "none"), (37, "shuffle", "swa")])
def test_interrupted_and_resumed_run_is_bit_for_bit(tmp_path, stop, sampling, average):
    """A run stopped at step k (mid-epoch, off the logging grid) and resumed ends with
    exactly the parameters and logged losses of an uninterrupted run."""
    extra = dict(sampling=sampling, average=average, average_start=0.5,
                 model_options={"depth": 2, "width": 32})
    full = Trainer(small(out=str(tmp_path / "full"), **extra)).fit()
    assert full["status"] == "completed"

    cfg = small(out=str(tmp_path / "cut"), **extra)
    first = Trainer(cfg, callbacks=[StopAt(stop)]).fit()
    assert first["status"] == "interrupted" and first["steps"] == stop
    second = Trainer(cfg).resume()
    assert second["status"] == "completed" and second["steps"] == 60

    a, b = _params(tmp_path / "full"), _params(tmp_path / "cut")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert _train_losses(tmp_path / "full") == _train_losses(tmp_path / "cut")
    evals = lambda d: [(r["step"], r["test_loss"]) for r in read_metrics(d / "metrics.jsonl")
                       if r["kind"] == "eval"]
    assert evals(tmp_path / "full") == evals(tmp_path / "cut")
    if average == "swa":
        ca = checkpoint.load(tmp_path / "full" / "checkpoints" / "last.pt")["averaged"]
        cb = checkpoint.load(tmp_path / "cut" / "checkpoints" / "last.pt")["averaged"]
        for key in ca:
            assert torch.equal(ca[key], cb[key]), key


def test_run_directory_contents(tmp_path):
    summary = train(small(out=str(tmp_path / "run"), full_train_loss=True))
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints/last.pt",
                 "plots/loss.png", "plots/accuracy.png", "plots/lr.png"):
        assert (run / name).is_file(), name
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk["status"] == "completed" and on_disk["steps"] == 60
    assert on_disk["versions"]["torch"] == torch.__version__
    records = read_metrics(run / "metrics.jsonl")
    trains = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in trains] == list(range(10, 61, 10))
    assert [r["step"] for r in evals] == [20, 40, 60]
    for key in ("lr", "loss", "grad_norm", "weight_norm", "examples_per_s", "wall_time",
                "epoch"):
        assert key in trains[0]
    assert evals[-1]["train_full_loss"] == evals[-1]["train_loss"]
    assert summary["final"]["test_acc"] == evals[-1]["test_acc"]
    # the cosine schedule reaches 0 at the last step
    assert trains[-1]["lr"] == pytest.approx(0.0, abs=1e-12)
    # the resolved config round-trips
    import yaml
    assert from_dict(yaml.safe_load((run / "config.yaml").read_text())) == small(
        out=str(run), full_train_loss=True)


def test_divergence_is_a_result(tmp_path):
    summary = train(small(out=str(tmp_path / "run"), optimizer="sgd", lr=1e4,
                          optimizer_options={}))
    assert summary["status"] == "diverged"
    assert "diverged at step" in summary["message"] and "\n" not in summary["message"]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "diverged"


def test_callbacks_see_gradients_and_steps():
    seen = []

    class Spy(Callback):
        def after_backward(self, trainer):
            seen.append(("grad", trainer.step, all(p.grad is not None
                                                   for p in trainer.model.parameters())))

        def after_step(self, trainer):
            seen.append(("step", trainer.step, None))

        def on_eval(self, trainer, metrics):
            seen.append(("eval", trainer.step, "test_loss" in metrics))

    t = Trainer(small(steps=4, eval_every=2), callbacks=[Spy()])
    t.fit()
    assert seen == [("grad", 0, True), ("step", 1, None), ("grad", 1, True), ("step", 2, None),
                    ("eval", 2, True), ("grad", 2, True), ("step", 3, None), ("grad", 3, True),
                    ("step", 4, None), ("eval", 4, True)]


def test_in_memory_run_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    t = Trainer(small(steps=5))
    summary = t.fit()
    assert summary["status"] == "completed"
    assert list(tmp_path.iterdir()) == []
    assert any(r["kind"] == "eval" for r in t.history)


def test_ema_average_is_evaluated():
    t = Trainer(small(steps=40, average="ema", ema_decay=0.9, average_start=0.0))
    summary = t.fit()
    assert "avg_test_acc" in summary["final"]


@pytest.mark.parametrize(("field", "value", "message"), [
    ("optimizer", "adm", "optimizer must be one of"),
    ("batch_size", 0, "batch_size must be an integer >= 1, got 0"),
    ("sampling", "random", "sampling must be one of shuffle, replacement"),
    ("average", "polyak", "average must be one of none, swa, ema"),
    ("lr", -1.0, r"lr must be a number in \[0, inf\)"),
])
def test_bad_config_values(field, value, message):
    with pytest.raises(ConfigError, match=message):
        small(**{field: value})


def test_bad_values_found_when_building(tmp_path):
    with pytest.raises(ConfigError, match="optimizer: beta must be in"):
        Trainer(small(out=str(tmp_path / "x"), optimizer_options={"beta": 2.0}))
    with pytest.raises(ConfigError, match="batch_size must be at most"):
        Trainer(small(out=str(tmp_path / "x"), batch_size=10**6))
    with pytest.raises(ConfigError, match="unknown config field 'stepz'"):
        from_dict({"stepz": 3})
    assert not (tmp_path / "x").exists()


def test_tensorboard_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(small(out=str(tmp_path / "run"), steps=20, tensorboard=True))
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "train/loss" in tags and "eval/test_acc" in tags
    jsonl = [r["loss"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")
             if r["kind"] == "train"]
    assert [e.value for e in acc.Scalars("train/loss")] == pytest.approx(jsonl, rel=1e-6)


def test_swa_with_batchnorm_recomputes_statistics():
    """SWA of a BatchNorm ResNet: update_bn runs before the averaged model is evaluated, so
    its running statistics are those of the averaged weights (not the initial ones)."""
    t = Trainer(small(dataset="digits", model="resnet", model_options={"depth": 8, "width": 8},
                      steps=40, average="swa", average_start=0.5, eval_every=40))
    summary = t.fit()
    assert summary["final"]["avg_test_acc"] > 0.5
    bn = [m for m in t.averaged.module.modules()
          if isinstance(m, torch.nn.BatchNorm2d)][0]
    assert int(bn.num_batches_tracked) > 0
    assert not torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
