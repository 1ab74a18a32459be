"""Fault injection: what survives kill -9, signals, concurrent writers, a full disk and
damaged checkpoints (issue 10). Run alone with ``pytest -m faults``.

Every run here is a real ``sgdlab train`` process. "Bit-identical" means: the final
checkpoint's model and optimizer tensors are ``torch.equal`` to an uninterrupted run's, and
metrics.jsonl holds the same records once the wall-clock fields are dropped. The kill points
are drawn from a fixed seed (``random.Random(10)``) so a failure names a reproducible step.
"""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from sgdlab import checkpoint
from sgdlab.cli import main
from sgdlab.metrics_log import read_metrics

pytestmark = pytest.mark.faults

STEPS, EVAL = 120, 20  # a checkpoint at every evaluation: steps 20, 40, …, 120
TRAIN = ["train", "--dataset", "digits", "--model", "mlp", "--optimizer", "momentum",
         "--lr", "0.05", "--opt", "beta=0.9", "--batch-size", "32", "--seed", "3",
         "--steps", str(STEPS), "--eval-every", str(EVAL), "--log-every", "5", "--quiet"]
WALL_CLOCK = {"wall_time", "examples_per_s", "elapsed", "steps_per_s"}
KILLS = sorted(random.Random(10).sample(range(EVAL + 1, STEPS), 2))  # after a checkpoint

USER_FILE = '''
import torch
from torch.utils.data import Dataset
from sgdlab.data import MapData

class Pairs(Dataset):
    """A map-style set the trainer can only read through a DataLoader."""
    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 6, generator=g)
        self.y = (self.x[:, 0] + self.x[:, 1] > 0).long()
    def __len__(self):
        return len(self.x)
    def __getitem__(self, i):
        return self.x[i], self.y[i]

def data(seed=0):
    return MapData(Pairs(200, seed), Pairs(50, seed + 1), num_classes=2, num_workers=1)

class Net(torch.nn.Module):
    def __init__(self, spec):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(),
                                        torch.nn.Linear(16, 2))
    def forward(self, x):
        return self.body(x)
'''


def _env(**extra) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", **{k: str(v) for k, v in extra.items()}}


def run(args, timeout=240, **env):
    return subprocess.run([sys.executable, "-m", "sgdlab.cli", *args], capture_output=True,
                          text=True, env=_env(**env), timeout=timeout)


def start(args, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sgdlab.cli", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(**env))


def records(run_dir: Path) -> list[dict]:
    out = []
    for r in read_metrics(run_dir / "metrics.jsonl"):
        out.append({k: v for k, v in r.items() if k not in WALL_CLOCK})
    return out


def assert_bit_identical(a: Path, b: Path) -> None:
    ca = checkpoint.load(a / "checkpoints" / "last.pt")
    cb = checkpoint.load(b / "checkpoints" / "last.pt")
    assert ca["step"] == cb["step"]
    for key in ca["model"]:
        assert torch.equal(ca["model"][key], cb["model"][key]), key
    sa, sb = ca["optimizer"]["state"], cb["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k, v in sa[i].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(sb[i][k])), (i, k)
    assert records(a) == records(b)
    assert json.loads((b / "summary.json").read_text())["status"] == "completed"


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-2000:]
    return lines[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run every faulted run must end equal to."""
    out = tmp_path_factory.mktemp("ref") / "run"
    proc = run([*TRAIN, "--out", str(out)])
    assert proc.returncode == 0, proc.stderr
    return out


# --------------------------------------------------------------------------- kill -9


@pytest.mark.parametrize("step", KILLS)
def test_kill9_then_resume_is_bit_identical(tmp_path, reference, step):
    """SIGKILL right after step k (before its log/eval/checkpoint): the run keeps the last
    checkpoint (step ⌊(k − 1)/EVAL⌋·EVAL) and `--resume` ends bit-identical."""
    out = tmp_path / "run"
    proc = run([*TRAIN, "--out", str(out)], SGDLAB_FAULT_KILL_AT_STEP=step)
    assert proc.returncode == -signal.SIGKILL
    assert checkpoint.load(out / "checkpoints" / "last.pt")["step"] == (step - 1) // EVAL * EVAL
    again = run([*TRAIN, "--out", str(out)])  # a fresh run is refused, naming the remedy
    assert again.returncode == 2
    assert f"continue it with: sgdlab train --resume {out}" in one_error_line(again.stderr)
    resumed = run(["train", "--resume", str(out), "--quiet"])
    assert resumed.returncode == 0, resumed.stderr
    assert_bit_identical(reference, out)


def test_kill9_inside_a_checkpoint_write(tmp_path, reference):
    """SIGKILL while the 3rd checkpoint's temporary file exists (complete, not yet renamed):
    last.pt is still the 2nd (step 40), the temporary file is removed on resume, and the run
    ends bit-identical."""
    out = tmp_path / "run"
    proc = run([*TRAIN, "--out", str(out)], SGDLAB_FAULT_IN_CHECKPOINT=3)
    assert proc.returncode == -signal.SIGKILL
    temporaries = list((out / "checkpoints").glob(".last.pt.tmp-*"))
    assert len(temporaries) == 1 and temporaries[0].stat().st_size > 0
    assert checkpoint.load(out / "checkpoints" / "last.pt")["step"] == 2 * EVAL
    resumed = run(["train", "--resume", str(out), "--quiet"])
    assert resumed.returncode == 0, resumed.stderr
    assert not list((out / "checkpoints").glob(".last.pt.tmp-*"))
    assert_bit_identical(reference, out)


def test_kill9_before_the_first_checkpoint_restarts_from_zero(tmp_path, reference):
    """A run killed before its first checkpoint: the error line names `--resume`, which
    starts it again from step 0 and ends equal to the uninterrupted run."""
    out = tmp_path / "run"
    proc = run([*TRAIN, "--out", str(out)], SGDLAB_FAULT_KILL_AT_STEP=EVAL - 7)
    assert proc.returncode == -signal.SIGKILL
    assert (out / "config.yaml").is_file() and not (out / "checkpoints" / "last.pt").exists()
    again = run([*TRAIN, "--out", str(out)])
    line = one_error_line(again.stderr)
    assert again.returncode == 2 and f"sgdlab train --resume {out}" in line
    resumed = run(["train", "--resume", str(out), "--quiet"])
    assert resumed.returncode == 0, resumed.stderr
    assert "starting it again from step 0" in resumed.stderr
    assert_bit_identical(reference, out)


def test_kill9_user_model_with_a_dataloader(tmp_path):
    """The user's own model and map-style Dataset read by a DataLoader with a worker
    process: killed at step 23, resumed, bit-identical to the uninterrupted run."""
    user = tmp_path / "user_models.py"
    user.write_text(USER_FILE)
    args = ["train", "--dataset", f"{user}:data", "--model", f"{user}:Net", "--optimizer",
            "adam", "--lr", "0.01", "--batch-size", "16", "--steps", "40", "--eval-every",
            "10", "--log-every", "2", "--seed", "1", "--quiet"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert run([*args, "--out", str(full)]).returncode == 0
    assert run([*args, "--out", str(cut)], SGDLAB_FAULT_KILL_AT_STEP=23).returncode == -9
    assert checkpoint.load(cut / "checkpoints" / "last.pt")["step"] == 20
    resumed = run(["train", "--resume", str(cut), "--quiet"])
    assert resumed.returncode == 0, resumed.stderr
    assert_bit_identical(full, cut)


# --------------------------------------------------------------------------- signals


def _wait_for_training(run_dir: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    """Until metrics.jsonl has a train record (the loop holds the signal handlers)."""
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and b'"train"' in metrics.read_bytes():
            return
        time.sleep(0.05)
    raise AssertionError(f"no training within {timeout} s (exit {proc.poll()})")


def _survivors(tag: str) -> list[int]:
    """PIDs of live processes whose environment holds SGDLAB_TEST_TAG=tag."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = (d / "environ").read_bytes()
            state = (d / "stat").read_text().split()[2]
        except OSError:
            continue
        if f"SGDLAB_TEST_TAG={tag}".encode() in env and state != "Z":
            found.append(int(d.name))
    return found


LONG = [*TRAIN, "--steps", "1500", "--eval-every", "500", "--log-every", "10"]


@pytest.fixture(scope="module")
def long_references(tmp_path_factory):
    """Uninterrupted runs of LONG with 1 and 2 processes, made when first asked for."""
    made: dict[int, Path] = {}

    def get(nproc: int) -> Path:
        if nproc not in made:
            out = tmp_path_factory.mktemp(f"long{nproc}") / "run"
            extra = ["--nproc", "2"] if nproc == 2 else []
            done = run([*LONG, *extra, "--out", str(out)])
            assert done.returncode == 0, done.stderr[-3000:]
            made[nproc] = out
        return made[nproc]

    return get


@pytest.mark.parametrize("nproc", [1, 2])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_checkpoints_and_resumes_exactly(tmp_path, long_references, sig, nproc):
    """SIGINT/SIGTERM to `sgdlab train` (the launcher, under --nproc 2): exit 128 + N,
    status interrupted, no process left, and `--resume` (keeping the world size) ends
    bit-identical to an uninterrupted run with the same number of processes."""
    args = LONG
    extra = ["--nproc", "2"] if nproc == 2 else []
    cut = tmp_path / "cut"
    tag = uuid.uuid4().hex
    proc = start([*args, *extra, "--out", str(cut)], SGDLAB_TEST_TAG=tag)
    _wait_for_training(cut, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 128 + sig, err[-3000:]
    assert "Traceback" not in err
    assert not _survivors(tag)
    summary = json.loads((cut / "summary.json").read_text())
    assert summary["status"] == "interrupted" and 0 < summary["steps"] < 1500
    assert f"sgdlab train --resume {cut}" in err
    resumed = run(["train", "--resume", str(cut), "--quiet"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    if nproc == 2:
        assert "resuming with --nproc 2" in resumed.stderr
    assert_bit_identical(long_references(nproc), cut)


def test_killed_launcher_leaves_no_rank_behind(tmp_path):
    """SIGKILL to the `--nproc 2` launcher: its ranks get SIGTERM (PR_SET_PDEATHSIG), stop
    and checkpoint; nothing survives and the run resumes."""
    out = tmp_path / "run"
    tag = uuid.uuid4().hex
    proc = start([*TRAIN, "--steps", "3000", "--eval-every", "1000", "--nproc", "2",
                  "--out", str(out)], SGDLAB_TEST_TAG=tag)
    _wait_for_training(out, proc)
    proc.kill()
    # reads the output until the ranks, which hold the launcher's pipes, have exited (they
    # print while stopping: not reading would block them); generous on 2 busy shared cores
    try:
        proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        pass                                   # judged by the survivors check below
    deadline = time.time() + 60
    while _survivors(tag) and time.time() < deadline:
        time.sleep(0.1)
    assert not _survivors(tag)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert checkpoint.load(out / "checkpoints" / "last.pt")["step"] == summary["steps"]


# --------------------------------------------------------------------------- writers


def test_two_writers_started_together_exactly_one_runs(tmp_path):
    out = tmp_path / "run"
    procs = [start([*TRAIN, "--out", str(out)]) for _ in range(2)]
    results = [(p.wait(timeout=240), p.communicate()[1]) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    line = one_error_line(loser)
    assert "being written by another sgdlab process" in line or "already holds files" in line
    assert json.loads((out / "summary.json").read_text())["steps"] == STEPS


def test_resume_while_the_run_is_written_is_refused(tmp_path):
    out = tmp_path / "run"
    proc = start([*TRAIN, "--steps", "1000000", "--eval-every", "100000", "--out", str(out)])
    try:
        _wait_for_training(out, proc)
        second = run(["train", "--resume", str(out), "--quiet"])
        assert second.returncode == 2
        assert "being written by another sgdlab process" in one_error_line(second.stderr)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)


# --------------------------------------------------------------------------- disk full


def test_file_size_limit_keeps_the_previous_checkpoint(tmp_path, reference):
    """RLIMIT_FSIZE below the size of the checkpoints that hold the SWA average (which starts
    half-way): one line naming the file and the remedy, exit 2, the last smaller checkpoint
    intact and no temporary file; resumed without the limit, the run ends as uninterrupted."""
    args = [*TRAIN, "--average", "swa", "--average-start", "0.5"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert run([*args, "--out", str(full)]).returncode == 0
    big = (full / "checkpoints" / "last.pt").stat().st_size       # with the average
    small = (reference / "checkpoints" / "last.pt").stat().st_size  # without it
    assert big > 1.3 * small
    limit = (small + big) // 2  # robust to the few bytes a path in the config adds

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run([sys.executable, "-m", "sgdlab.cli", *args, "--out", str(cut)],
                          capture_output=True, text=True, env=_env(), timeout=240,
                          preexec_fn=small_files)
    assert proc.returncode == 2
    line = one_error_line(proc.stderr)
    assert f"cannot write {cut / 'checkpoints' / 'last.pt'}" in line
    assert "File too large" in line and "is intact" in line
    assert f"sgdlab train --resume {cut}" in line
    kept = checkpoint.load(cut / "checkpoints" / "last.pt")
    assert kept["step"] == STEPS // 2 and kept.get("averaged") is None
    assert not list((cut / "checkpoints").glob(".last.pt.tmp-*"))
    resumed = run(["train", "--resume", str(cut), "--quiet"])
    assert resumed.returncode == 0, resumed.stderr
    assert_bit_identical(full, cut)


# --------------------------------------------------------------------------- damaged files


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _damage(kind: str, path: Path, marker: Path) -> None:
    good = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "foreign":
        path.write_text("this is a text file, not a checkpoint\n")
    elif kind == "malicious":
        torch.save({"step": 1, "model": _Evil(marker)}, path)
    elif kind == "no-model-entry":
        ckpt = checkpoint.load(path)
        del ckpt["model"]
        torch.save(ckpt, path)
    elif kind == "a-list":
        torch.save([1, 2, 3], path)


@pytest.mark.parametrize("kind", ["truncated", "empty", "foreign", "malicious",
                                  "no-model-entry", "a-list"])
def test_damaged_checkpoint_is_one_line_and_runs_nothing(tmp_path, capsys, reference, kind):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    for name in ("config.yaml", "metrics.jsonl"):
        (run_dir / name).write_bytes((reference / name).read_bytes())
    ckpt = run_dir / "checkpoints" / "last.pt"
    ckpt.write_bytes((reference / "checkpoints" / "last.pt").read_bytes())
    marker = tmp_path / "marker"
    _damage(kind, ckpt, marker)
    before = ckpt.read_bytes()
    for args in (["train", "--resume", str(run_dir), "--quiet"],
                 ["probe", str(run_dir), "--probe", "sharpness"]):
        assert main(args) == 2  # in-process: nothing may be executed here either
        err = capsys.readouterr().err
        line = one_error_line(err)
        assert "damaged or not an sgdlab checkpoint" in line and str(ckpt) in line
        assert "weights_only" not in err
        assert not marker.exists()
        assert ckpt.read_bytes() == before


def test_stop_decision_is_the_all_reduced_flag_alone(monkeypatch):
    """A signal whose handler runs just after the stop-flag all-reduce must not make this rank
    stop alone (the others would wait for it in the next step's collectives forever): the
    decision is the reduced value; every rank sees the signal at the next step."""
    import torch.distributed as dist

    from sgdlab.train import Trainer

    trainer = Trainer.__new__(Trainer)
    trainer.world, trainer._stop_signal, trainer.device = 2, None, torch.device("cpu")
    seen = []

    def all_reduce(flag, op=None):
        seen.append(int(flag))
        trainer._stop_signal = signal.SIGTERM  # the handler runs right after the collective

    monkeypatch.setattr(dist, "get_backend", lambda *a: "gloo")
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    assert trainer._stop_requested() is False
    assert trainer._stop_requested() is True and seen == [0, int(signal.SIGTERM)]
