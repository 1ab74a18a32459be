"""The command line as a user runs it: exit codes, one-line errors, signals, resume, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from sgdlab import checkpoint
from sgdlab.cli import main

TRAIN = ["train", "--dataset", "mnist1d", "--model", "mlp", "--optimizer", "sgd", "--lr",
         "0.05", "--batch-size", "32", "--seed", "1", "--quiet"]


def run_cli(args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "sgdlab.cli", *args], capture_output=True,
                          text=True, env=env, timeout=240, **kw)


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("sgdlab ")


@pytest.mark.parametrize(("args", "message"), [
    (["--optimizer", "adm"], "optimizer must be one of"),
    (["--batch-size", "0"], "batch_size must be an integer >= 1, got 0"),
    (["--opt", "beta=1.5", "--optimizer", "momentum"], "optimizer: beta must be in [0, 1)"),
    (["--lr", "fast"], "argument --lr: invalid float value: 'fast'"),
    (["--schedule", "cosine", "--warmup-steps", "500"], "warmup_steps must be smaller"),
])
def test_bad_value_is_one_line_exit_2_and_no_run_dir(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    argv = [*TRAIN, "--steps", "20", "--out", str(out)]
    for i in range(0, len(args), 2):  # later flags override earlier ones
        argv += args[i:i + 2]
    with pytest.raises(SystemExit) if "invalid float" in message else _nullcontext():
        code = main(argv)
        assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1
    assert not out.exists()


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_train_prints_accuracy_and_run_dir(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TRAIN, "--steps", "30", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "test_acc" in text and f"run directory: {out}" in text
    # the same directory is refused rather than overwritten
    assert main([*TRAIN, "--steps", "30", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already holds files" in err and "of a completed run" in err
    # resuming the completed run changes nothing and says so
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert main(["train", "--resume", str(out)]) == 0
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    # a summary that is not a JSON object is not a completed run
    (out / "summary.json").write_text("[1, 2]")
    assert main([*TRAIN, "--steps", "30", "--out", str(out)]) == 2
    assert "of an unfinished run" in capsys.readouterr().err


def test_divergence_exit_code_3(tmp_path, capsys):
    out = tmp_path / "run"
    code = main([*TRAIN, "--lr", "10000", "--steps", "50", "--out", str(out)])
    assert code == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "diverged at step" in err[0]
    assert json.loads((out / "summary.json").read_text())["status"] == "diverged"


def test_config_file_with_overrides(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("dataset: digits\nmodel: cnn\noptimizer: adam\nlr: 3e-3\nbatch_size: 64\n"
                   "epochs: 1\nseed: 2\noptimizer_options: {weight_decay: 1e-4}\n")
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--steps", "10", "--out", str(out),
                 "--quiet"]) == 0
    import yaml
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["dataset"] == "digits" and resolved["steps"] == 10
    assert resolved["epochs"] is None and resolved["lr"] == 0.003  # YAML's "3e-3" string
    assert resolved["optimizer_options"] == {"weight_decay": 1e-4}
    assert main(["train", "--config", str(cfg), "--steps", "5", "--out", str(tmp_path / "r2"),
                 "--quiet", "--opt", "weight_decay=5e-4"]) == 0
    assert yaml.safe_load((tmp_path / "r2" / "config.yaml").read_text())[
        "optimizer_options"] == {"weight_decay": 5e-4}


def test_sigint_checkpoints_and_resume_matches_uninterrupted(tmp_path):
    """A real SIGINT to a running `sgdlab train`: exit 130, status interrupted, a checkpoint;
    `--resume` then ends exactly where an uninterrupted run ends."""
    args = [*TRAIN, "--steps", "3000", "--log-every", "10", "--eval-every", "1000"]
    full = tmp_path / "full"
    assert run_cli([*args, "--out", str(full)]).returncode == 0

    cut = tmp_path / "cut"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "sgdlab.cli", *args, "--out", str(cut)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    metrics = cut / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size > 0):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, err
    summary = json.loads((cut / "summary.json").read_text())
    assert summary["status"] == "interrupted" and 0 < summary["steps"] < 3000
    assert "--resume" in err

    resumed = run_cli(["train", "--resume", str(cut), "--quiet"])
    assert resumed.returncode == 0, resumed.stderr
    a = checkpoint.load(full / "checkpoints" / "last.pt")
    b = checkpoint.load(cut / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 3000
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_two_rank_ddp_matches_single_process(tmp_path):
    """`--nproc 2` (gloo on loopback): both ranks hold identical parameters, equal to a
    single process with the same global batch to float tolerance (1e-5 relative)."""
    args = [*TRAIN, "--steps", "40", "--batch-size", "64", "--sampling", "replacement",
            "--optimizer", "momentum", "--opt", "beta=0.9", "--probe", "ddp_noise_scale",
            "--probe-every", "10"]
    single = run_cli([*args, "--out", str(tmp_path / "single")])
    assert single.returncode == 0, single.stderr
    ddp = run_cli([*args, "--out", str(tmp_path / "ddp"), "--nproc", "2"])
    assert ddp.returncode == 0, ddp.stderr[:3000]
    a = checkpoint.load(tmp_path / "single" / "checkpoints" / "last.pt")["model"]
    b = checkpoint.load(tmp_path / "ddp" / "checkpoints" / "last.pt")["model"]
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["ddp_max_param_diff"] == 0.0  # every rank holds rank 0's parameters
    # the two-batch noise scale from per-rank and all-reduced gradients (SPEC §3)
    from sgdlab.metrics_log import read_metrics
    probes = [r for r in read_metrics(tmp_path / "ddp" / "metrics.jsonl")
              if r["kind"] == "probe"]
    assert [r["step"] for r in probes] == [10, 20, 30, 40]
    for r in probes:
        assert r["b_small"] == 32 and r["b_big"] == 64
        assert r["g_small_norm_sq"] > r["g_big_norm_sq"] > 0  # smaller batch, more noise
        # the all-reduced norm is exactly ‖ĝ‖² of the global batch
        assert r["g_norm_sq"] == pytest.approx((64 * r["g_big_norm_sq"] - 32 *
                                                r["g_small_norm_sq"]) / 32)
    assert not [r for r in read_metrics(tmp_path / "single" / "metrics.jsonl")
                if r["kind"] == "probe"]
