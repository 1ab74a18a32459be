"""Gradient accumulation under DDP (issue 13): 2 gloo ranks × ``accumulate 2`` against one
process with the same global batch, the gradient all-reduce once per optimizer step
(``no_sync``), ``--resume`` of an interrupted DDP + accumulate run, and the noise-scale
instruments under DDP + accumulate.

How a step's examples are split (src/sgdlab/data/loader.py ``BatchStream._draw``, train.py
``Trainer._accumulated_backward``): one sampler, seeded by the config and the same on every
rank, draws the global batch of B indices; rank r takes the contiguous slice
[r·B/W, (r+1)·B/W); accumulation splits that slice into N contiguous micro-batches of
b = B/(W·N). With W = 2, N = 2, B = 4b the step's micro-batches are, in global order,
[0, b) [b, 2b) on rank 0 and [2b, 3b) [3b, 4b) on rank 1 — every example of the global batch
exactly once, so the data order of a one-process run with batch 4b is the same. Each rank
backpropagates Σ_m loss_m/N = (1/(2b)) Σ_(its examples) ∇ℓ, DDP averages over ranks:
(1/(4b)) Σ_(global batch) ∇ℓ, the one-process mean gradient up to the order of float
summation. In float64 the trajectories agree to ≤ 1e-12·max|θ| after 12 momentum steps
(measured: ~1e-16, a few ulps).

Every distributed run happens in one launch of two worker processes (the module fixture;
each Trainer joins the process group the first one created), with a timeout that kills
both, so that a hang fails the test instead of the suite. The one-process references run in
the test process.

``microbatch_noise_scale`` refuses DDP by design (instruments.py ``MicrobatchNoiseScale.setup``:
after the last micro-batch's synchronised backward p.grad is the all-reduced gradient, so that
micro-batch's local increment cannot be read from p.grad): under DDP + accumulate it is
disabled with one line and writes no record, and the DDP counterpart, ``ddp_noise_scale``,
measures the rank's whole step (b_small = the 2b examples of its micro-batches, b_big = 4b).
The tests check that, that its records equal those of DDP without accumulation, and those of
one process's microbatch_noise_scale with batch 4b, accumulate 2 (whose micro-batches are the
ranks' slices) — to 1e-9 relative, measured ~2e-15. An undefined B_simple is null in
metrics.jsonl, and None (named in ``undefined``) in the in-memory records, as
microbatch_noise_scale has it.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sgdlab import checkpoint
from sgdlab.launch import free_port, rank_environment
from sgdlab.metrics_log import read_metrics

STEPS, INTERRUPT_AT = 12, 5
WALL_CLOCK = {"wall_time", "examples_per_s", "elapsed", "steps_per_s"}
TIMEOUT_S = 150

WORKER = r'''
"""Run by each of two ranks (WORLD_SIZE=2): every DDP run of tests/test_accumulate_ddp.py."""
import os
import signal
import sys
from pathlib import Path

import torch

from sgdlab.train import Callback, Trainer

STEPS, INTERRUPT_AT = @STEPS@, @INTERRUPT_AT@
B_MICRO = 4                      # b: examples of one micro-batch
N_TRAIN, N_TEST = 72, 24         # 4 full global batches of 16 per epoch, 8 dropped (shuffle)


def make_data(random_labels=False):
    """Learnable labels (argmax of the first 3 inputs), or random ones: no signal, so that
    the noise scale's unbiased ‖G‖² estimate is ≤ 0 and B_simple undefined."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N_TRAIN + N_TEST, 5, generator=gen, dtype=torch.float64)
    y = (torch.randint(0, 3, (N_TRAIN + N_TEST,), generator=gen) if random_labels
         else x[:, :3].argmax(dim=1))
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]


def make_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(),
                               torch.nn.Linear(8, 3)).double()


def config(**kw):
    base = dict(optimizer="momentum", lr=0.1,
                optimizer_options={"beta": 0.9, "weight_decay": 1e-3},
                batch_size=4 * B_MICRO, steps=STEPS, seed=0, sampling="shuffle",
                eval_every=4, log_every=1)
    base.update(kw)
    return base


#: ddp_noise_scale with microbatch_noise_scale's EMA decay, so the smoothed values compare
PROBES = {"probes": ["microbatch_noise_scale", "ddp_noise_scale:decay=0.95"], "probe_every": 2}


def trainer(cfg, callbacks=(), random_labels=False):
    return Trainer(cfg, callbacks, progress=False, model=make_model(),
                   data=make_data(random_labels))


class CountAllReduce(Callback):
    """Counts DDP's gradient all-reduces (communication-hook calls, one per bucket) per
    optimizer step; the hook is the default all-reduce (allreduce_hook)."""

    def __init__(self):
        self.calls, self.per_step = 0, []

    def on_train_start(self, trainer):
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        def hook(state, bucket):
            self.calls += 1
            return allreduce_hook(state, bucket)

        trainer.train_model.register_comm_hook(None, hook)

    def after_step(self, trainer):
        self.per_step.append(self.calls)
        self.calls = 0


class InterruptAt(Callback):
    """SIGINT to rank 0 itself after step k (as a user's Ctrl-C): the ranks agree on the stop."""

    def __init__(self, step):
        self.step = step

    def after_step(self, trainer):
        if trainer.rank == 0 and trainer.step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


def flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def state(t, summary, counter=None):
    return {"params": flat(t.model), "summary": summary, "history": t.history,
            "optimizer": t.optimizer.state_dict(),
            "per_step": counter.per_step if counter is not None else None}


if __name__ == "__main__":
    out = Path(sys.argv[1])
    rank = int(os.environ["RANK"])
    res = {}
    c = CountAllReduce()
    t = trainer(config(accumulate=2, out=str(out / "full")), [c])
    res["acc2"] = state(t, t.fit(), c)
    c = CountAllReduce()
    t = trainer(config(), [c])
    res["acc1"] = state(t, t.fit(), c)
    t = trainer(config(accumulate=2, out=str(out / "cut")),
                [CountAllReduce(), InterruptAt(INTERRUPT_AT)])
    res["cut"] = state(t, t.fit())
    c = CountAllReduce()
    t = trainer(config(accumulate=2, out=str(out / "cut")), [c])
    res["resumed"] = state(t, t.resume(), c)
    t = trainer(config(accumulate=2, **PROBES))
    res["probes_acc2"] = state(t, t.fit())
    t = trainer(config(**PROBES))
    res["probes_acc1"] = state(t, t.fit())
    t = trainer(config(accumulate=2, out=str(out / "undefined"), **PROBES), random_labels=True)
    res["undefined"] = state(t, t.fit())
    torch.save(res, out / f"rank{rank}.pt")
'''


def _worker_module(path: Path):
    spec = importlib.util.spec_from_file_location("_accumulate_ddp_worker", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    """Both ranks' results of every DDP run, the worker module and rank 0's stderr."""
    out = tmp_path_factory.mktemp("accddp")
    script = out / "worker.py"
    script.write_text(WORKER.replace("@STEPS@", str(STEPS))
                      .replace("@INTERRUPT_AT@", str(INTERRUPT_AT)))
    port = free_port()
    procs, logs = [], []
    for rank in range(2):
        log = open(out / f"rank{rank}.log", "w+")  # noqa: SIM115 - closed below
        logs.append(log)
        env = rank_environment(rank, 2, port, extra={"OMP_NUM_THREADS": "1"})
        procs.append(subprocess.Popen(
            [sys.executable, str(script), str(out)],
            env=env, stdout=log, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + TIMEOUT_S
    try:  # a rank that fails leaves the other waiting in a collective: kill it, never hang
        while any(p.poll() is None for p in procs):
            if time.monotonic() > deadline or any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    text = []
    for log in logs:
        log.seek(0)
        text.append(log.read())
        log.close()
    codes = [p.returncode for p in procs]
    assert codes == [0, 0], f"exit codes {codes} (-9: killed after {TIMEOUT_S} s or " \
        "after the other rank failed)\n" + "\n".join(t[-3000:] for t in text)
    results = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]
    return {"out": out, "ranks": results, "worker": _worker_module(script), "log0": text[0]}


def _reference(worker, **kw):
    """A one-process run of the worker's config (world size 1, in this process)."""
    t = worker.trainer(worker.config(**kw))
    summary = t.fit()
    assert summary["status"] == "completed" and "world_size" in summary
    assert summary["world_size"] == 1
    return t


def _flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) / float(b.abs().max())


def _train_losses(history):
    return [r["loss"] for r in history if r["kind"] == "train"]


def test_two_ranks_times_accumulate_two_follow_the_one_process_trajectory(ddp):
    """2 ranks × accumulate 2 × b = 4, and 2 ranks × batch 8 without accumulation, both equal
    one process with batch 16 (same sampler, same data order) to 1e-12·max|θ| in float64,
    loss by loss; both ranks end on rank 0's parameters exactly."""
    rank0, rank1 = ddp["ranks"]
    one = _reference(ddp["worker"])
    ref = _flat(one.model)
    assert ref.dtype == torch.float64
    for name in ("acc2", "acc1"):
        run = rank0[name]
        assert run["summary"]["status"] == "completed" and run["summary"]["steps"] == STEPS
        assert run["summary"]["world_size"] == 2
        assert run["summary"]["ddp_max_param_diff"] == 0.0
        assert torch.equal(run["params"], rank1[name]["params"])
        assert _rel(run["params"], ref) <= 1e-12, name
        assert _train_losses(run["history"]) == pytest.approx(_train_losses(one.history),
                                                              rel=1e-12, abs=0)
    # accumulation changes only the float summation order, nothing else of the run
    assert _rel(rank0["acc2"]["params"], rank0["acc1"]["params"]) <= 1e-12


def test_gradient_all_reduce_once_per_optimizer_step(ddp):
    """DDP all-reduces the gradients once per optimizer step under accumulation (the first
    micro-batch's backward runs in ``no_sync``): as many communication-hook calls (one per
    bucket) in each step of 2 micro-batches as in a step of one batch — twice as many would
    mean a reduction per micro-batch."""
    for rank in ddp["ranks"]:
        acc2, acc1 = rank["acc2"]["per_step"], rank["acc1"]["per_step"]
        assert len(acc2) == len(acc1) == STEPS
        assert acc1[0] >= 1 and set(acc1) == {acc1[0]}
        assert acc2 == acc1
        # and so does the resumed run, in each of the steps after the checkpoint
        assert rank["resumed"]["per_step"] == acc1[INTERRUPT_AT:]


def _records(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK}
            for r in read_metrics(run_dir / "metrics.jsonl")]


def test_resume_of_an_interrupted_ddp_accumulate_run_is_bit_identical(ddp):
    """SIGINT to rank 0 after step 5 of a 2-rank accumulate-2 run: both ranks stop at step 5
    (status interrupted), ``resume`` trains steps 6–12 only, and ends with the parameters,
    optimizer state and metrics.jsonl of the uninterrupted run, bit for bit."""
    out = ddp["out"]
    for rank in ddp["ranks"]:
        cut = rank["cut"]["summary"]
        assert cut["status"] == "interrupted" and cut["steps"] == INTERRUPT_AT, cut
        resumed = rank["resumed"]
        assert resumed["summary"]["status"] == "completed"
        assert resumed["summary"]["steps"] == STEPS
        assert len(resumed["per_step"]) == STEPS - INTERRUPT_AT   # from the checkpoint on
        assert resumed["summary"]["ddp_max_param_diff"] == 0.0
        assert torch.equal(resumed["params"], rank["acc2"]["params"])
        sa, sb = rank["acc2"]["optimizer"]["state"], resumed["optimizer"]["state"]
        assert sa.keys() == sb.keys()
        for i in sa:
            for k, v in sa[i].items():
                assert torch.equal(torch.as_tensor(v), torch.as_tensor(sb[i][k])), (i, k)
    a = checkpoint.load(out / "full" / "checkpoints" / "last.pt")
    b = checkpoint.load(out / "cut" / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == STEPS
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert _records(out / "full") == _records(out / "cut")
    assert json.loads((out / "cut" / "summary.json").read_text())["status"] == "completed"


def _probes(history, name):
    return [r for r in history if r["kind"] == "probe" and r["name"] == name]


#: the fields ddp_noise_scale shares with microbatch_noise_scale
SHARED = ("g_small_norm_sq", "g_big_norm_sq", "g_norm_sq", "tr_sigma", "b_simple_smoothed")
REASON = ("sgdlab: instrument microbatch_noise_scale disabled: under DDP p.grad is the "
          "all-reduced gradient; use ddp_noise_scale")


def test_noise_scale_instruments_under_ddp_and_accumulation(ddp):
    """Under DDP + accumulate 2, microbatch_noise_scale is disabled with one line (rank 0)
    and writes no record; ddp_noise_scale measures each rank's whole step (b_small = 8: the
    rank's two micro-batches of 4; b_big = 16), with the same fields and values (1e-9) as DDP
    without accumulation. One process with batch 16 and accumulate 2 has micro-batches
    [0, 8) and [8, 16), exactly the ranks' slices, so its microbatch_noise_scale estimates
    the same ‖ĝ_8‖² (mean of two), ‖ĝ_16‖², ‖G‖², tr Σ and smoothed B_simple: equal to 1e-9
    (measured: ~1e-15), undefined at the same steps. Training is unchanged by the
    instruments (bit for bit)."""
    rank0, rank1 = ddp["ranks"]
    assert ddp["log0"].count(REASON) == 3      # one line per run with the probe, rank 0 only
    acc2 = _probes(rank0["probes_acc2"]["history"], "ddp_noise_scale")
    acc1 = _probes(rank0["probes_acc1"]["history"], "ddp_noise_scale")
    for run in (rank0, rank1):
        for name in ("probes_acc2", "probes_acc1", "undefined"):
            assert not _probes(run[name]["history"], "microbatch_noise_scale")
    assert not _probes(rank1["probes_acc2"]["history"], "ddp_noise_scale")  # rank 0 logs
    steps = list(range(2, STEPS + 1, 2))
    assert [r["step"] for r in acc2] == [r["step"] for r in acc1] == steps
    assert torch.equal(rank0["probes_acc2"]["params"], rank0["acc2"]["params"])
    worker = ddp["worker"]
    one = _reference(worker, accumulate=2, **worker.PROBES)
    micro = _probes(one.history, "microbatch_noise_scale")
    assert [r["step"] for r in micro] == steps
    for ra, rb, rm in zip(acc2, acc1, micro, strict=True):
        assert ra.keys() == rb.keys()
        assert ra["b_small"] == rb["b_small"] == rm["b_small"] == 8
        assert ra["b_big"] == rb["b_big"] == rm["b_big"] == 16
        assert ra["g_small_norm_sq"] > ra["g_big_norm_sq"] > 0
        for key in SHARED:
            assert math.isfinite(ra[key]), (ra["step"], key)
            assert ra[key] == pytest.approx(rb[key], rel=1e-9), (ra["step"], key)
            assert ra[key] == pytest.approx(rm[key], rel=1e-9), (ra["step"], key)
    # the learnable labels still give steps whose single-step ‖G‖² estimate is ≤ 0
    assert any(r["g_norm_sq"] <= 0 for r in acc2) and any(r["g_norm_sq"] > 0 for r in acc2)
    for rm in micro:
        if rm["g_norm_sq"] <= 0:
            assert rm["b_simple"] is None and "b_simple" in rm["undefined"]


def _strict_lines(path: Path) -> list[dict]:
    def refuse(name):
        raise ValueError(f"non-strict JSON constant {name} in {path}")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def undefined(ddp):
    """(DDP records of ddp_noise_scale, one-process records of microbatch_noise_scale) on
    random labels, where the smoothed ‖G‖² is ≤ 0 at every measured step."""
    worker = ddp["worker"]
    t = worker.trainer(worker.config(accumulate=2, **worker.PROBES), random_labels=True)
    t.fit()
    micro = _probes(t.history, "microbatch_noise_scale")
    recs = _probes(ddp["ranks"][0]["undefined"]["history"], "ddp_noise_scale")
    assert [r["step"] for r in recs] == [r["step"] for r in micro] == list(
        range(2, STEPS + 1, 2))
    return recs, micro


def test_undefined_noise_scale_is_null_in_metrics_jsonl(ddp, undefined):
    """Random labels: B_simple is undefined at every measured step. One process: None and
    listed in ``undefined``; DDP + accumulate: the other fields finite (equal to the
    one-process micro-batch estimates) and the undefined ``b_simple_smoothed`` ``null`` in
    metrics.jsonl (strict JSON), never inf."""
    recs, micro = undefined
    for rm in micro:
        assert rm["b_simple"] is None and rm["b_simple_smoothed"] is None
        assert {"b_simple", "b_simple_smoothed"} <= set(rm["undefined"])
    for ra, rm in zip(recs, micro, strict=True):
        assert ra["b_small"] == rm["b_small"] and ra["b_big"] == rm["b_big"]
        for key in ("g_small_norm_sq", "g_big_norm_sq", "g_norm_sq", "tr_sigma"):
            assert math.isfinite(ra[key])
            assert ra[key] == pytest.approx(rm[key], rel=1e-9), (ra["step"], key)
        assert ra["b_simple_smoothed"] is None or not math.isfinite(ra["b_simple_smoothed"])
    lines = [r for r in _strict_lines(ddp["out"] / "undefined" / "metrics.jsonl")
             if r["kind"] == "probe"]
    assert [r["name"] for r in lines] == ["ddp_noise_scale"] * len(recs)
    for line in lines:
        assert line["b_simple_smoothed"] is None
        assert all(line[k] is not None for k in ("g_small_norm_sq", "g_big_norm_sq",
                                                 "g_norm_sq", "tr_sigma"))


def test_undefined_ddp_noise_scale_is_none_in_records_as_single_process(undefined):
    """The in-memory records too: an undefined value is None and listed in ``undefined``,
    as microbatch_noise_scale does in one process."""
    recs, _ = undefined
    for ra in recs:
        assert ra["b_simple_smoothed"] is None and "b_simple_smoothed" in ra["undefined"]

