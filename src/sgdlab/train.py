"""The training loop that the command line, the instruments and the experiments all use.

Read it top to bottom: :func:`build` turns a :class:`~sgdlab.config.TrainConfig` into data,
model, loss, optimizer, schedule and sampler; :class:`Trainer` runs the loop

    for each step:  draw a batch (SPEC §1 sampling) → forward → loss → backward
                    → callbacks.after_backward → optimizer.step → scheduler.step
                    → callbacks.after_step → averaging (SWA/EMA) → log / eval / checkpoint

and writes a run directory::

    RUN/config.yaml      the fully resolved configuration
    RUN/metrics.jsonl    one JSON record per log / eval / probe event
    RUN/summary.json     status (completed | diverged | interrupted), final metrics, versions
    RUN/checkpoints/     last.pt (atomic; weights_only-loadable)
    RUN/plots/*.png      loss, accuracy, learning rate

A run interrupted at step k (SIGINT/SIGTERM, or killed after a checkpoint) and resumed with
:meth:`Trainer.resume` ends with exactly the parameters and losses of an uninterrupted run.
Under ``torchrun`` (WORLD_SIZE > 1) the model is wrapped in DistributedDataParallel, each rank
takes its slice of the same global batch, and only rank 0 writes.
"""

from __future__ import annotations

import math
import os
import platform
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sgdlab import __version__, checkpoint, data, models, optim, schedules
from sgdlab.config import ConfigError, TrainConfig
from sgdlab.metrics_log import MetricsWriter, atomic_write_json, atomic_write_text, truncate_to

EXIT_DIVERGED = 3

#: Examples used for the train-split loss at each evaluation unless ``full_train_loss``.
TRAIN_EVAL_SUBSET = 4096


class Callback:
    """Hooks the loop calls at defined points; instruments subclass this.

    Each hook receives the :class:`Trainer`, whose attributes (``step``, ``model``,
    ``optimizer``, ``batch``, ``loss``, ``config``) describe the current state. Use
    :meth:`Trainer.log` to append records to metrics.jsonl.
    """

    def on_train_start(self, trainer: Trainer) -> None:
        """Before the first step (also after a resume)."""

    def after_backward(self, trainer: Trainer) -> None:
        """Gradients of the current batch are in ``p.grad``; the step has not happened."""

    def after_step(self, trainer: Trainer) -> None:
        """The optimizer and the schedule have stepped; ``trainer.step`` counts done steps."""

    def on_eval(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """After an evaluation; ``metrics`` is the record written to metrics.jsonl."""

    def on_train_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        """After the loop ends, whatever the status."""


# --------------------------------------------------------------------------- building a run


def loss_functions(task: str) -> tuple[Callable, Callable]:
    """(mean loss, per-example loss) for a data set's task.

    classification: cross-entropy of the logits; regression: ½‖f(x) − y‖² (so that the
    least-squares optimum and the Hessian are those of SPEC §4.2).
    """
    if task == "classification":
        return (F.cross_entropy,
                lambda out, y: F.cross_entropy(out, y, reduction="none"))
    if task == "regression":
        def per_example(out, y):
            return 0.5 * (out - y).pow(2).sum(dim=-1)
        return (lambda out, y: per_example(out, y).mean()), per_example
    raise ConfigError(f"dataset task {task!r} cannot be trained by the trainer "
                      "(allowed: classification, regression)")


@dataclass
class Run:
    """The components :func:`build` makes from a config."""

    config: TrainConfig
    data: data.Dataset
    model: nn.Module
    loss_fn: Callable
    per_example_loss_fn: Callable
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    schedule: schedules.Schedule
    sampler: data.BatchSampler
    total_steps: int
    device: torch.device


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device must be one of auto, cpu (no CUDA device is available), "
                          "got 'cuda'")
    return torch.device(name)


def build(cfg: TrainConfig) -> Run:
    """Make every component of a run; any bad value raises :class:`ConfigError` (one line)."""
    device = resolve_device(cfg.device)
    try:
        ds = data.load(cfg.dataset, seed=cfg.seed, **cfg.dataset_options)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    loss_fn, per_example = loss_functions(ds.task)
    try:
        model = models.build(cfg.model, ds, seed=cfg.seed, **cfg.model_options)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"model: {err}") from None
    model.to(device)
    ds = ds.to(device)
    hp = dict(cfg.optimizer_options)
    if cfg.lr is not None:
        hp["lr"] = cfg.lr
    try:
        opt = optim.create(cfg.optimizer, model.parameters(), **hp)
    except ValueError as err:
        raise ConfigError(f"optimizer: {err}") from None
    if cfg.batch_size > ds.n_train:
        raise ConfigError(f"batch_size must be at most the {ds.n_train} training examples, "
                          f"got {cfg.batch_size}")
    sampler = ds.sampler(cfg.batch_size, mode=cfg.sampling, seed=cfg.seed)
    total = cfg.steps if cfg.steps is not None else max(
        1, math.ceil(cfg.epochs * sampler.steps_per_epoch))
    if cfg.warmup_steps >= total:
        raise ConfigError(f"warmup_steps must be smaller than the {total} steps, "
                          f"got {cfg.warmup_steps}")
    sched_opts = dict(cfg.schedule_options)
    if cfg.schedule in ("cosine", "linear"):
        sched_opts.setdefault("total", total - cfg.warmup_steps)
    try:
        schedule = schedules.build(cfg.schedule, **sched_opts)
        if cfg.warmup_steps:
            schedule = schedules.warmup(schedule, cfg.warmup_steps)
    except ValueError as err:
        raise ConfigError(f"schedule: {err}") from None
    scheduler = schedules.to_torch(opt, schedule)
    return Run(cfg, ds, model, loss_fn, per_example, opt, scheduler, schedule, sampler, total,
               device)


# --------------------------------------------------------------------------- distributed


def _dist_info() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return world, rank


def init_distributed(device: str) -> None:
    """Join the process group torchrun describes: nccl with one GPU per local rank when
    training on CUDA, gloo on CPU. A no-op outside torchrun or when already joined."""
    dist = torch.distributed
    world, _ = _dist_info()
    if world <= 1 or dist.is_initialized():
        return
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if cuda else "gloo")


# --------------------------------------------------------------------------- the trainer


class Trainer:
    """Runs one configuration to completion, divergence or interruption.

    Args:
        config: the run's configuration (``config.out`` is the run directory; ``None``
            keeps everything in memory, as the experiments do).
        callbacks: :class:`Callback` objects called at their hooks, in order, followed by
            the instruments the config names (``probes``).
        progress: show progress (a bar on a TTY, plain lines otherwise); ``None``: when
            writing a run directory.
    """

    def __init__(self, config: TrainConfig, callbacks: Sequence[Callback] = (),
                 progress: bool | None = None) -> None:
        from sgdlab import instruments

        self.config = config
        self.callbacks = list(callbacks) + instruments.build(
            config.probes, every=config.probe_every, log_spaced=config.probe_schedule == "log")
        self.world, self.rank = _dist_info()
        init_distributed(config.device)
        if self.world > 1 and config.batch_size % self.world:
            raise ConfigError(f"batch_size must be divisible by the {self.world} processes, "
                              f"got {config.batch_size}")
        self.run = build(config)
        self.model = self.run.model
        self.optimizer = self.run.optimizer
        self.scheduler = self.run.scheduler
        self.sampler = self.run.sampler
        self.data = self.run.data
        self.total_steps = self.run.total_steps
        self.device = self.run.device
        self.train_model: nn.Module = self.model
        self.run_dir = Path(config.out) if config.out else None
        self.is_writer = self.rank == 0 and self.run_dir is not None
        self.progress = self.is_writer if progress is None else (progress and self.rank == 0)
        self.step = 0
        self.batch: tuple[torch.Tensor, torch.Tensor] | None = None
        self.loss: torch.Tensor | None = None
        self.history: list[dict[str, Any]] = []
        self.averaged: torch.optim.swa_utils.AveragedModel | None = None
        self.writer: MetricsWriter | None = None
        self.tb = None
        self._elapsed_before = 0.0
        self._loss_sum = 0.0
        self._loss_count = 0
        self._stop_signal: int | None = None
        n_log = max(1, self.total_steps // 200)
        self.log_every = config.log_every or min(50, n_log)
        self.eval_every = config.eval_every or max(1, self.total_steps // 20)
        self.average_start = int(config.average_start * self.total_steps)

    # ----------------------------------------------------------------- public API

    def log(self, record: dict[str, Any]) -> None:
        """Append ``record`` to metrics.jsonl (rank 0) and to :attr:`history`."""
        self.history.append(record)
        if self.writer is not None:
            self.writer.write(record)
        if self.tb is not None:
            for key, value in record.items():
                if key not in ("kind", "step", "name") and isinstance(value, (int, float)):
                    tag = f"{record.get('name', record['kind'])}/{key}"
                    self.tb.add_scalar(tag, value, record.get("step", self.step))

    def fit(self) -> dict[str, Any]:
        """Train from step 0 (creating the run directory); returns the summary."""
        if self.is_writer:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / "config.yaml", self.config.to_yaml())
            (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
        return self._loop()

    def resume(self) -> dict[str, Any]:
        """Continue from ``RUN/checkpoints/last.pt`` bit for bit (see module docstring)."""
        if self.run_dir is None:
            raise ConfigError("resume needs the run directory (config.out)")
        path = self.run_dir / "checkpoints" / "last.pt"
        if not path.is_file():
            raise ConfigError(f"resume: no checkpoint at {path}")
        ckpt = checkpoint.load(path, map_location=self.device)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.sampler.load_state_dict(ckpt["sampler"])
        checkpoint.set_rng_state(ckpt["rng"])
        self.step = ckpt["step"]
        self._elapsed_before = ckpt["elapsed"]
        self._loss_sum = ckpt["loss_sum"]
        self._loss_count = ckpt["loss_count"]
        if ckpt.get("averaged") is not None:
            self._make_averaged()
            self.averaged.load_state_dict(ckpt["averaged"])
        if self.is_writer:
            truncate_to(self.run_dir / "metrics.jsonl", ckpt["metrics_lines"])
        return self._loop()

    # ----------------------------------------------------------------- the loop

    def _loop(self) -> dict[str, Any]:
        cfg = self.config
        self._setup_outputs()
        if self.world > 1:
            self.train_model = nn.parallel.DistributedDataParallel(self.model)
        old_handlers = self._install_signal_handlers()
        status, message = "completed", ""
        start = time.perf_counter()
        last_log_time, last_log_step = start, self.step
        for cb in self.callbacks:
            cb.on_train_start(self)
        self.train_model.train()  # evaluation restores the mode it found
        try:
            while self.step < self.total_steps:
                idx = self.sampler.next_batch()
                if self.world > 1:
                    per_rank = cfg.batch_size // self.world
                    idx = idx[self.rank * per_rank:(self.rank + 1) * per_rank]
                x, y = self.data.batch(idx)
                self.batch = (x, y)
                loss = self.run.loss_fn(self.train_model(x), y)
                self.loss = loss
                if self.world > 1:
                    mean_loss = loss.detach().clone()
                    torch.distributed.all_reduce(mean_loss)
                    loss_value = mean_loss.item() / self.world
                else:
                    loss_value = loss.item()  # one host sync per step (free on CPU)
                if not math.isfinite(loss_value):
                    status = "diverged"
                    message = (f"diverged at step {self.step}: loss is {loss_value} "
                               f"(lr {self.optimizer.param_groups[0]['lr']:.3g})")
                    break
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                for cb in self.callbacks:
                    cb.after_backward(self)
                log_now = (self.step + 1) % self.log_every == 0
                grad_norm = _global_norm([p.grad for p in self.model.parameters()
                                          if p.grad is not None]) if log_now else None
                self.optimizer.step()
                self.scheduler.step()
                self.step += 1
                self._loss_sum += loss_value
                self._loss_count += 1
                for cb in self.callbacks:
                    cb.after_step(self)
                if cfg.average != "none" and self.step > self.average_start:
                    if self.averaged is None:
                        self._make_averaged()
                    self.averaged.update_parameters(self.model)
                if log_now or self.step == self.total_steps:
                    now = time.perf_counter()
                    rate = ((self.step - last_log_step) * cfg.batch_size
                            / max(now - last_log_time, 1e-9))
                    last_log_time, last_log_step = now, self.step
                    self._log_train(grad_norm, rate, now - start)
                if self.step % self.eval_every == 0 or self.step == self.total_steps:
                    self.evaluate(now=time.perf_counter() - start)
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.save_checkpoint(time.perf_counter() - start)
                if self._stop_signal is not None:
                    status = "interrupted"
                    message = (f"interrupted by signal {self._stop_signal} at step {self.step}; "
                               f"resume with: sgdlab train --resume {self.run_dir}")
                    break
        finally:
            self._restore_signal_handlers(old_handlers)
        wall = time.perf_counter() - start
        if status != "diverged" and self.step > 0:
            self.save_checkpoint(wall)
        summary = self._summary(status, message, wall)
        if self.world > 1:
            summary["ddp_max_param_diff"] = _max_param_diff_across_ranks(self.model)
        for cb in self.callbacks:
            cb.on_train_end(self, summary)
        self._finish_outputs(summary)
        return summary

    # ----------------------------------------------------------------- pieces

    @torch.no_grad()
    def evaluate(self, now: float | None = None) -> dict[str, float]:
        """Loss (and accuracy) on the test split and on the train split (a fixed subset of
        ``TRAIN_EVAL_SUBSET`` examples, or all of it with ``full_train_loss``); logs a record."""
        ds = self.data
        n_train = ds.n_train if self.config.full_train_loss else min(ds.n_train,
                                                                     TRAIN_EVAL_SUBSET)
        record: dict[str, Any] = {"kind": "eval", "step": self.step, "epoch": self._epoch()}
        if now is not None:
            record["wall_time"] = self._elapsed_before + now
        for prefix, x, y in (("train", ds.x_train[:n_train], ds.y_train[:n_train]),
                             ("test", ds.x_test, ds.y_test)):
            record.update(self._eval_split(self.model, prefix, x, y))
        if self.config.full_train_loss:
            record["train_full_loss"] = record["train_loss"]
        if self.averaged is not None:
            if _has_batchnorm(self.averaged.module):
                self._update_bn()
            record.update(self._eval_split(self.averaged.module, "avg_test", ds.x_test,
                                           ds.y_test))
        self.log(record)
        for cb in self.callbacks:
            cb.on_eval(self, record)
        if self.progress:
            self._print_progress(record)
        return record

    def _eval_split(self, model: nn.Module, prefix: str, x: torch.Tensor,
                    y: torch.Tensor) -> dict[str, float]:
        was_training = model.training
        model.eval()
        total, correct = 0.0, 0
        for start in range(0, x.shape[0], 2048):
            out = model(x[start:start + 2048])
            yb = y[start:start + 2048]
            total += float(self.run.per_example_loss_fn(out, yb).sum())
            if self.data.task == "classification":
                correct += int((out.argmax(dim=1) == yb).sum())
        model.train(was_training)
        n = max(1, x.shape[0])
        result = {f"{prefix}_loss": total / n}
        if self.data.task == "classification":
            result[f"{prefix}_acc"] = correct / n
        return result

    def save_checkpoint(self, elapsed: float) -> None:
        """Write ``checkpoints/last.pt`` atomically (rank 0 with a run directory)."""
        if not self.is_writer:
            return
        payload = {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": checkpoint.rng_state(),
            "elapsed": self._elapsed_before + elapsed,
            "loss_sum": self._loss_sum,
            "loss_count": self._loss_count,
            "averaged": None if self.averaged is None else self.averaged.state_dict(),
            "metrics_lines": self.writer.lines if self.writer is not None else 0,
            "config": self.config.to_dict(),
        }
        checkpoint.save(self.run_dir / "checkpoints" / "last.pt", payload)

    def _make_averaged(self) -> None:
        swa = torch.optim.swa_utils
        fn = (swa.get_ema_multi_avg_fn(self.config.ema_decay) if self.config.average == "ema"
              else None)
        self.averaged = swa.AveragedModel(self.model, multi_avg_fn=fn,
                                          use_buffers=self.config.average == "ema")

    @torch.no_grad()
    def _update_bn(self) -> None:
        """Recompute BatchNorm statistics of the SWA model over the training set
        (``torch.optim.swa_utils.update_bn`` over batches of the in-memory data)."""
        x = self.data.x_train
        batches = [x[i:i + 256] for i in range(0, x.shape[0], 256)]
        torch.optim.swa_utils.update_bn(batches, self.averaged)

    def _log_train(self, grad_norm: torch.Tensor | None, rate: float, now: float) -> None:
        loss = self._loss_sum / max(1, self._loss_count)
        self._loss_sum = 0.0
        self._loss_count = 0
        record = {"kind": "train", "step": self.step, "epoch": self._epoch(),
                  "lr": self.optimizer.param_groups[0]["lr"], "loss": loss,
                  "grad_norm": float(grad_norm) if grad_norm is not None else None,
                  "weight_norm": float(_global_norm([p.detach() for p in self.model.parameters()])),
                  "examples_per_s": rate, "wall_time": self._elapsed_before + now}
        if record["grad_norm"] is None:
            del record["grad_norm"]
        self.log(record)

    def _epoch(self) -> float:
        return self.step / self.sampler.steps_per_epoch

    def _setup_outputs(self) -> None:
        if not self.is_writer:
            return
        self.writer = MetricsWriter(self.run_dir / "metrics.jsonl")
        if self.config.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError("tensorboard: the tensorboard package is not installed "
                                  "(pip install 'sgdlab[tensorboard]')") from None
            self.tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    def _finish_outputs(self, summary: dict[str, Any]) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.writer is not None:
            self.writer.close()
        if not self.is_writer:
            return
        atomic_write_json(self.run_dir / "summary.json", summary)
        try:
            from sgdlab.plots import plot_run
            plot_run(self.run_dir)
        except Exception as err:  # plots are a convenience; never fail a finished run
            print(f"sgdlab: plots not written ({err})", file=sys.stderr)

    def _summary(self, status: str, message: str, wall: float) -> dict[str, Any]:
        evals = [r for r in self.history if r["kind"] == "eval"]
        trains = [r for r in self.history if r["kind"] == "train"]
        return {
            "status": status,
            "message": message,
            "steps": self.step,
            "total_steps": self.total_steps,
            "epochs": self._epoch(),
            "wall_time": self._elapsed_before + wall,
            "final": {k: v for k, v in (evals[-1] if evals else {}).items()
                      if k not in ("kind", "step", "epoch", "wall_time")},
            "final_train_loss": trains[-1]["loss"] if trains else None,
            "world_size": self.world,
            "run_dir": str(self.run_dir) if self.run_dir else None,
            "versions": {"sgdlab": __version__, "torch": torch.__version__,
                         "python": platform.python_version()},
        }

    def _print_progress(self, record: dict[str, Any]) -> None:
        parts = [f"step {self.step}/{self.total_steps}"]
        for key in ("train_loss", "test_loss", "test_acc", "avg_test_acc"):
            if key in record:
                parts.append(f"{key} {record[key]:.4g}")
        line = "  ".join(parts)
        if sys.stderr.isatty():
            end = "\n" if self.step == self.total_steps else ""
            print(f"\r{_bar(self.step, self.total_steps)} {line}", end=end, file=sys.stderr,
                  flush=True)
        else:
            print(line, file=sys.stderr, flush=True)

    def _install_signal_handlers(self) -> dict[int, Any]:
        if self.run_dir is None or not _in_main_thread():
            return {}
        old = {}

        def handler(signum, frame):
            self._stop_signal = signum

        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, handler)
        return old

    @staticmethod
    def _restore_signal_handlers(old: dict[int, Any]) -> None:
        for sig, h in old.items():
            signal.signal(sig, h)

    def exit_code(self, summary: dict[str, Any]) -> int:
        """0 completed, 3 diverged, 128 + signal number when interrupted."""
        if summary["status"] == "diverged":
            return EXIT_DIVERGED
        if summary["status"] == "interrupted":
            return 128 + (self._stop_signal or signal.SIGINT)
        return 0


@torch.no_grad()
def _max_param_diff_across_ranks(model: nn.Module) -> float:
    """max |Φ_rank − Φ_rank0| over all parameters and ranks (0.0 when DDP kept them equal)."""
    dist = torch.distributed
    worst = torch.zeros((), dtype=torch.float64)
    for p in model.parameters():
        ref = p.detach().clone()
        dist.broadcast(ref, src=0)
        worst = torch.maximum(worst, (p.detach() - ref).abs().max().double().cpu())
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return float(worst)


def _in_main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _global_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """‖(t₁, …, t_n)‖₂ over all elements, one fused foreach norm."""
    if not tensors:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors)))


def _bar(step: int, total: int, width: int = 24) -> str:
    filled = int(width * step / max(1, total))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def train(config: TrainConfig, callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Build and run ``config`` from scratch; returns the summary dict."""
    return Trainer(config, callbacks).fit()
