"""The training loop that the command line, the instruments and the experiments all use.

Read it top to bottom: :func:`build` turns a :class:`~sgdlab.config.TrainConfig` into data,
model, loss, optimizer, schedule and sampler; :class:`Trainer` runs the loop

    for each step:  draw a batch (SPEC §1 sampling) → monitor.begin → forward → loss
                    → backward → monitor.gradients_ready (the instruments, sgdlab.Monitor)
                    → callbacks.after_backward → optimizer.step → scheduler.step
                    → callbacks.after_step → averaging (SWA/EMA) → log / eval / checkpoint

and writes a run directory::

    RUN/config.yaml      the fully resolved configuration
    RUN/metrics.jsonl    one JSON record per log / eval / probe event (strict JSON)
    RUN/summary.json     status (completed | diverged | interrupted), final metrics, versions
    RUN/checkpoints/     last.pt (atomic; weights_only-loadable)
    RUN/plots/*.png      loss, accuracy, learning rate
    RUN/.lock            the writer's lock (:mod:`sgdlab.runlock`; one writer per directory)

Checkpoints bound what a crash loses: with ``checkpoint_every: 0`` (the default) one is
written after every evaluation and at the end, with ``checkpoint_every: N`` every N steps and
at the end. A run stopped at step k (SIGINT/SIGTERM, a checkpoint at k) or killed (kill -9:
back to the last checkpoint) and resumed with :meth:`Trainer.resume` ends with exactly the
parameters, optimizer state and metrics.jsonl of an uninterrupted run (wall-clock fields
apart). Resuming a completed run changes nothing; a run directory without a checkpoint (its
run died before the first one) starts again from step 0. Only ``steps``/``epochs`` (longer,
when nothing else depends on them), ``eval_every``, ``log_every`` and ``checkpoint_every`` may
differ on resume (recorded in config.yaml and as a ``kind: resume`` record); anything else
raises :class:`~sgdlab.config.ConfigError`.

Non-finite values are written as ``null`` and named in the record's ``"nonfinite"`` entry
(:func:`sgdlab.metrics_log.strict_json`), so that every file is strict JSON.

Under ``torchrun`` (WORLD_SIZE > 1) the model is wrapped in DistributedDataParallel, each rank
takes its slice of the same global batch, and only rank 0 writes; a signal to any rank stops
every rank at the same step (one small all-reduce per step).

Fault injection for the test suite: ``SGDLAB_FAULT_KILL_AT_STEP=k`` makes rank 0 kill itself
with SIGKILL right after step k (before that step's log, evaluation and checkpoint); see also
:mod:`sgdlab.checkpoint` for a kill inside a checkpoint write.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
import platform
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sgdlab import __version__, checkpoint, data, models, optim, runlock, schedules
from sgdlab import config as config_mod
from sgdlab import data as data_mod
from sgdlab.config import ConfigError, TrainConfig
from sgdlab.metrics_log import (
    MetricsWriter,
    atomic_write_json,
    atomic_write_text,
    read_metrics,
    restore_nonfinite,
    strict_json,
    truncate_to,
    write_scalars,
)

EXIT_DIVERGED = 3

#: Examples used for the train-split loss at each evaluation unless ``full_train_loss``.
TRAIN_EVAL_SUBSET = 4096

#: Config fields that may differ when a run is resumed (everything else must match).
RESUMABLE_CHANGES = ("steps", "epochs", "eval_every", "log_every", "checkpoint_every")


class CheckpointWriteError(ConfigError):
    """A checkpoint could not be written (disk full, file-size limit); the previous one is
    intact. One line naming the file, the reason and how to continue."""


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
    """The components :func:`build` makes from a config (and the user's objects).

    ``data`` is an sgdlab :class:`~sgdlab.data.Dataset` or a :class:`~sgdlab.data.MapData`
    (map-style torch Datasets); ``loss_fn`` returns the mean batch loss and
    ``per_example_loss_fn`` the per-example losses, shape (B,).
    """

    config: TrainConfig
    data: data.Dataset | data.MapData
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


def per_example_loss(loss_fn: Callable) -> tuple[Callable, Callable]:
    """(mean loss, per-example loss) from a user's ``loss_fn(out, y)`` that returns
    per-example losses ℓ_b, shape (B,); the mean is (1/B) Σ_b ℓ_b (SPEC §1). A result of any
    other shape raises :class:`ConfigError` (a mean-reduced loss would make every
    per-example quantity and the evaluation silently wrong)."""

    def checked(out, y):
        per = loss_fn(out, y)
        if not isinstance(per, torch.Tensor) or per.dim() != 1 or per.shape[0] != out.shape[0]:
            shape = tuple(per.shape) if isinstance(per, torch.Tensor) else type(per).__name__
            raise ConfigError(f"loss_fn: must return per-example losses of shape "
                              f"({out.shape[0]},) (reduction='none'), got {shape}")
        return per

    return (lambda out, y: checked(out, y).mean()), checked


def _load_data(cfg: TrainConfig, user_data: Any) -> data.Dataset | data.MapData:
    """The run's data: the user's object, an import string's result or a registry name."""
    if user_data is None and not config_mod.is_import_string(cfg.dataset):
        if cfg.dataset.startswith(config_mod.OBJECT_PREFIX):
            raise ConfigError(f"dataset: {cfg.dataset} was a Python object passed to "
                              "Trainer(data=...); pass it again")
        try:
            return data.load(cfg.dataset, seed=cfg.seed, **cfg.dataset_options)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    made = user_data
    if user_data is None:
        fn = config_mod.import_callable(cfg.dataset, "dataset")
        kwargs = dict(cfg.dataset_options)
        if "seed" in _parameters(fn):
            kwargs["seed"] = cfg.seed
        made = config_mod.call_user(fn, "dataset", cfg.dataset, **kwargs)
        if not isinstance(made, (data.Dataset, data.MapData, dict, tuple,
                                 torch.utils.data.Dataset)):
            raise ConfigError(f"dataset: {cfg.dataset!r} returned {type(made).__name__}; "
                              "expected an sgdlab Dataset or MapData, a dict of x_train, "
                              "y_train, x_test, y_test (+ task), or map-style torch Datasets "
                              "(train, test)")
    try:
        return data.as_data(made)
    except ValueError as err:
        where = "" if user_data is not None else f"{cfg.dataset!r} returned bad data: "
        raise ConfigError(f"dataset: {where}{str(err).removeprefix('data: ')}") from None


def _parameters(fn: Callable) -> Any:
    try:
        return inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {}


def _make_model(cfg: TrainConfig, ds: Any, user_model: Any) -> nn.Module:
    """The run's model: the user's module, an import string's callable or a registry name."""
    if user_model is not None:
        if not isinstance(user_model, nn.Module):
            raise ConfigError(f"model: must be a torch.nn.Module, got {type(user_model).__name__}")
        return user_model
    if config_mod.is_import_string(cfg.model):
        fn = config_mod.import_callable(cfg.model, "model")
        args: tuple = ()
        if models.takes_spec(fn):
            if ds.task == "classification" and ds.num_classes is None:
                raise ConfigError("model: the data's num_classes is unknown; give it with the "
                                  "data (MapData(..., num_classes=C))")
            args = (models.DataSpec(ds.input_shape, ds.num_classes),)
        with torch.random.fork_rng(devices=[]):  # seeded as models.build does
            torch.manual_seed(cfg.seed)
            made = config_mod.call_user(fn, "model", cfg.model, *args, **cfg.model_options)
        if not isinstance(made, nn.Module):
            raise ConfigError(f"model: {cfg.model!r} returned {type(made).__name__}; "
                              "expected a torch.nn.Module")
        return made
    if cfg.model.startswith(config_mod.OBJECT_PREFIX):
        raise ConfigError(f"model: {cfg.model} was a Python object passed to "
                          "Trainer(model=...); pass it again")
    try:
        return models.build(cfg.model, ds, seed=cfg.seed, **cfg.model_options)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"model: {err}") from None


def _check_loss_once(ds: Any, model: nn.Module, per_example: Callable,
                     device: torch.device) -> None:
    """One forward on two training examples (eval mode, no grad, RNG untouched) so that a
    loss of the wrong shape or a model that fails on the data is reported before the run
    directory is created."""
    x, y = ds.head(min(2, ds.n_train))
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            out = model(x)
            per_example(out, y)
    except ConfigError:
        raise
    except Exception as err:
        raise ConfigError(f"model: the forward (or loss_fn) fails on a batch of the data: "
                          f"{type(err).__name__}: {config_mod._first_line(err)}") from None
    finally:
        model.train(was)


def build(cfg: TrainConfig, *, model: nn.Module | None = None, data: Any = None,
          loss_fn: Callable | None = None) -> Run:
    """Make every component of a run; any bad value raises :class:`ConfigError` (one line).

    By default the data, model and loss come from the config: ``cfg.dataset`` is a registry
    name (:func:`sgdlab.data.load`) or an import string ``MODULE:CALLABLE`` /
    ``path/to/file.py:CALLABLE`` whose callable (given ``seed=`` when it takes it, and
    ``dataset_options``) returns an sgdlab Dataset or a dict of ``x_train, y_train, x_test,
    y_test`` (+ ``task``); ``cfg.model`` is a registry name or an import string whose
    callable receives the data's :class:`~sgdlab.models.DataSpec` (or nothing, when it takes
    no positional parameter) and ``model_options``, and returns an ``nn.Module``. The loss is
    that of the task (:func:`loss_functions`).

    ``model``, ``data`` (anything :func:`sgdlab.data.as_data` takes) and ``loss_fn``
    (``loss_fn(out, y)`` → per-example losses, shape (B,)) replace those of the config.
    """
    device = resolve_device(cfg.device)
    ds = _load_data(cfg, data)
    if loss_fn is not None:
        if not callable(loss_fn):
            raise ConfigError(f"loss_fn: must be callable, got {type(loss_fn).__name__}")
        mean_loss, per_example = per_example_loss(loss_fn)
    else:
        mean_loss, per_example = loss_functions(ds.task)
    net = _make_model(cfg, ds, model)
    net.to(device)
    ds = ds.to(device)
    if model is not None or data is not None or loss_fn is not None or any(
            config_mod.is_import_string(v) for v in (cfg.model, cfg.dataset)):
        _check_loss_once(ds, net, per_example, device)
    hp = dict(cfg.optimizer_options)
    if cfg.lr is not None:
        hp["lr"] = cfg.lr
    try:
        opt = optim.create(cfg.optimizer, net.parameters(), **hp)
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
    return Run(cfg, ds, net, mean_loss, per_example, opt, scheduler, schedule, sampler, total,
               device)


def _with_objects(config: TrainConfig | dict[str, Any], model: Any, user_data: Any,
                  loss_fn: Any) -> TrainConfig:
    """The config as a validated :class:`TrainConfig` (a mapping is read with
    :func:`~sgdlab.config.from_dict`); ``model``/``dataset`` record the user's objects as
    ``<module.QualName>`` (the caller's config is not modified)."""
    if isinstance(config, dict):
        config = config_mod.from_dict(config)
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"config must be a TrainConfig or a mapping of its fields, "
                          f"got {type(config).__name__}")
    changes = {}
    if model is not None:
        changes["model"] = config_mod.object_name(model)
    if user_data is not None:
        changes["dataset"] = config_mod.object_name(user_data)
    return dataclasses.replace(config, **changes) if changes else config


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
        config: the run's configuration, a :class:`TrainConfig` or a mapping of its fields
            (optimizer, lr, schedule, batch size, steps or epochs, sampling, averaging,
            probes, out, ...). ``config.out`` is the run directory; ``None`` keeps everything
            in memory, as the experiments do.
        callbacks: :class:`Callback` objects called at their hooks, in order. The
            instruments the config names (``probes``) run in :attr:`monitor`, a
            :class:`sgdlab.Monitor` driven by the loop (its state is in the checkpoints).
        progress: show progress (a bar on a TTY, plain lines otherwise); ``None``: when
            writing a run directory.
        model: the user's ``nn.Module`` (instead of ``config.model``).
        data: the user's data (instead of ``config.dataset``): an sgdlab Dataset, tensors
            ``(x_train, y_train, x_test, y_test)`` as a tuple or a mapping (+ ``task``), or
            map-style torch Datasets ``(train, test)`` / :class:`~sgdlab.data.MapData`
            (read by a DataLoader over the resumable sampler; see :mod:`sgdlab.data.loader`).
            Integer inputs (token ids) are passed to the model as they are.
        loss_fn: ``loss_fn(out, y)`` → per-example losses, shape (B,) (instead of the task's
            cross-entropy or ½‖f(x) − y‖²); the training loss is their mean.

    With user objects, config.yaml records ``<module.QualName>`` for them; :meth:`resume`
    then needs the same objects again (a fresh model: its state comes from the checkpoint)::

        cfg = {"optimizer": "adam", "lr": 1e-3, "batch_size": 64, "steps": 2000,
               "out": "runs/mine"}
        Trainer(cfg, model=Net(), data=(x_tr, y_tr, x_te, y_te), loss_fn=per_example).fit()
        Trainer(cfg, model=Net(), data=(x_tr, y_tr, x_te, y_te), loss_fn=per_example).resume()
    """

    def __init__(self, config: TrainConfig | dict[str, Any], callbacks: Sequence[Callback] = (),
                 progress: bool | None = None, *, model: nn.Module | None = None,
                 data: Any = None, loss_fn: Callable | None = None) -> None:
        from sgdlab.monitor import Monitor

        config = _with_objects(config, model, data, loss_fn)
        self.config = config
        self.callbacks = list(callbacks)
        self.world, self.rank = _dist_info()
        init_distributed(config.device)
        if self.world > 1 and config.batch_size % self.world:
            raise ConfigError(f"batch_size must be divisible by the {self.world} processes, "
                              f"got {config.batch_size}")
        if (config.batch_size // self.world) % config.accumulate:
            raise ConfigError(f"each process's batch of {config.batch_size // self.world} "
                              f"must be divisible by accumulate ({config.accumulate})")
        self.run = build(config, model=model, data=data, loss_fn=loss_fn)
        self.model = self.run.model
        self.optimizer = self.run.optimizer
        self.scheduler = self.run.scheduler
        self.sampler = self.run.sampler
        self.data = self.run.data
        self.batches = data_mod.BatchStream(self.data, self.sampler, self.rank, self.world)
        self.total_steps = self.run.total_steps
        self.device = self.run.device
        # the instruments the config names, driven by the Monitor like in any user loop
        hessian = ((self.data.x_train, self.data.y_train) if hasattr(self.data, "x_train")
                   else None)
        self.monitor = Monitor(
            self.model, self.optimizer, self.run.per_example_loss_fn, instruments=config.probes,
            every="log" if config.probe_schedule == "log" else config.probe_every,
            total_steps=self.total_steps, hessian_data=hessian, log=self.log)
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
        self._last_checkpoint_step: int | None = None
        self._lock: runlock.RunLock | None = None
        self._resume_record: dict[str, Any] | None = None
        self._bar = None
        self.log_every, self.eval_every = _auto_every(config, self.total_steps)
        self.average_start = int(config.average_start * self.total_steps)

    # ----------------------------------------------------------------- public API

    def log(self, record: dict[str, Any]) -> None:
        """Append ``record`` to metrics.jsonl (rank 0) and to :attr:`history`."""
        self.history.append(record)
        if self.writer is not None:
            self.writer.write(strict_json(record))
        if self.tb is not None:
            write_scalars(self.tb, record, record.get("step", self.step))

    def fit(self, new_directory: bool = False) -> dict[str, Any]:
        """Train from step 0 (creating the run directory); returns the summary.

        ``new_directory``: refuse (one-line ``ConfigError``, nothing written) a directory
        that already holds files (:func:`occupied`), checked once this process holds its
        lock, so that of two writers started together exactly one runs.
        """
        if self.is_writer:
            self._lock_run_dir()
            problem = occupied(self.run_dir) if new_directory else None
            if problem:
                self._release_lock()
                raise ConfigError(problem)
            atomic_write_text(self.run_dir / "config.yaml", self.config.to_yaml())
            for stale in ("metrics.jsonl", "summary.json"):  # a restart of a dead run
                (self.run_dir / stale).unlink(missing_ok=True)
        return self._loop()

    def resume(self) -> dict[str, Any]:
        """Continue from ``RUN/checkpoints/last.pt`` bit for bit (see module docstring).

        A completed run is left as it is (the summary on disk is returned, with
        ``already_completed: True``); a directory without a checkpoint starts again from
        step 0. A damaged checkpoint raises :class:`~sgdlab.checkpoint.CheckpointError`, a
        config that differs in anything but :data:`RESUMABLE_CHANGES` a ``ConfigError``.
        """
        if self.run_dir is None:
            raise ConfigError("resume needs the run directory (config.out)")
        path = self.run_dir / "checkpoints" / "last.pt"
        if self.is_writer:
            self._lock_run_dir()
            checkpoint.remove_stale_temporaries(path.parent)  # of a writer killed mid-save
        if not path.exists():
            if self.rank == 0:
                print(f"sgdlab: {self.run_dir} has no checkpoint (its run stopped before the "
                      "first one); starting it again from step 0", file=sys.stderr)
            return self.fit()
        ckpt = checkpoint.load(path, map_location=self.device)
        try:
            self._resume_record = self._resume_changes(ckpt)
            done = self._already_completed(ckpt)
            if done is not None and self._resume_record is not None:
                changed = ", ".join(self._resume_record.get("changed", {})) or "world_size"
                raise ConfigError(f"resume: {self.run_dir} already completed; {changed} cannot "
                                  "change a finished run (only more --steps/--epochs can)")
        except ConfigError:
            self._release_lock()
            raise
        if done is not None:
            self._release_lock()
            return done
        self._load_state(ckpt, path)
        if self.is_writer:
            metrics = self.run_dir / "metrics.jsonl"
            truncate_to(metrics, self._metrics_lines)
            self.history = read_metrics(metrics) if metrics.exists() else []
            if self._resume_record is not None:
                atomic_write_text(self.run_dir / "config.yaml", self.config.to_yaml())
        return self._loop()

    # ----------------------------------------------------------------- resume pieces

    def _lock_run_dir(self) -> None:
        """Take the run directory's lock (:mod:`sgdlab.runlock`) unless this process holds it."""
        if self._lock is None and runlock.held(self.run_dir) is None:
            self._lock = runlock.acquire(self.run_dir)
        else:
            self.run_dir.mkdir(parents=True, exist_ok=True)

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _already_completed(self, ckpt: dict[str, Any]) -> dict[str, Any] | None:
        """The summary on disk when the checkpoint is the end of a completed run (nothing is
        written); ``None`` when there are steps left to train."""
        done = int(ckpt["step"])
        if done < self.total_steps:
            return None
        if done > self.total_steps:
            raise ConfigError(f"steps: {self.run_dir} has already trained {done} steps; give "
                              f"more than {done} to train longer")
        summary = read_summary(self.run_dir)
        if summary is None or summary.get("status") != "completed":
            return None  # e.g. killed after its last checkpoint: finish the outputs
        summary["already_completed"] = True
        return summary

    def _resume_changes(self, ckpt: dict[str, Any]) -> dict[str, Any] | None:
        """Compare the config with the checkpoint's: a ``kind: resume`` record of what
        changed (``None`` when nothing did); raises ``ConfigError`` for changes that would
        make the run something else than one run with one configuration."""
        old = dict(ckpt.get("config") or {})
        new = self.config.to_dict()
        changed = {k: [old[k], new[k]] for k in new
                   if k != "out" and k in old and old[k] != new[k]}
        refused = [k for k in changed if k not in RESUMABLE_CHANGES]
        if refused:
            what = ", ".join(f"{k} ({old[k]!r} -> {new[k]!r})" for k in refused)
            verb = "differ" if len(refused) > 1 else "differs"
            raise ConfigError(f"resume: {what} {verb} from the run in {self.run_dir}; only "
                              f"{', '.join(RESUMABLE_CHANGES)} can change when resuming")
        old_total = int(ckpt.get("total_steps", self.total_steps))
        if old_total != self.total_steps:
            self._check_longer(old_total, int(ckpt["step"]))
            self._pin_cadence(old_total, changed)
        world = int(ckpt.get("world_size", 1))
        record: dict[str, Any] = {"kind": "resume", "step": int(ckpt["step"])}
        if changed:
            record["changed"] = changed
        if world != self.world:
            record["world_size"] = [world, self.world]
            if self.rank == 0:
                print(f"sgdlab: resuming a run trained by {world} process(es) with "
                      f"{self.world}: it will differ from an uninterrupted run in the last "
                      "digits (float reduction order)", file=sys.stderr)
        return record if len(record) > 2 else None

    def _check_longer(self, old_total: int, done: int) -> None:
        """A new length is allowed when it is past the steps done and nothing else of the run
        was derived from the old length."""
        cfg = self.config
        if self.total_steps <= done:
            raise ConfigError(f"steps: {self.run_dir} has already trained {done} steps; give "
                              f"more than {done} to train longer")
        if cfg.schedule in ("cosine", "linear") and "total" not in cfg.schedule_options:
            raise ConfigError(f"steps: the {cfg.schedule} schedule of this run ends at its "
                              f"step {old_total}, so it cannot train longer (start a new run, "
                              "or give the schedule's total explicitly from the start)")
        if cfg.average != "none":
            raise ConfigError(f"steps: averaging ({cfg.average}) starts at a fraction of the "
                              "run's length, which cannot change when resuming")
        if cfg.probes and cfg.probe_schedule == "log":
            raise ConfigError("steps: the log-spaced probe schedule depends on the run's "
                              "length, which cannot change when resuming")

    def _pin_cadence(self, old_total: int, changed: dict[str, Any]) -> None:
        """Automatic log/eval intervals keep the values of the original length (recorded in
        config.yaml), so the log reads as one run."""
        self.log_every, self.eval_every = _auto_every(self.config, old_total)
        updates = {k: v for k, v in (("log_every", self.log_every),
                                     ("eval_every", self.eval_every))
                   if getattr(self.config, k) == 0}
        for key, value in updates.items():
            changed[key] = [0, value]
        self.config = dataclasses.replace(self.config, **updates)

    def _load_state(self, ckpt: dict[str, Any], path: Path) -> None:
        """Restore every piece of state from ``ckpt``; a checkpoint that does not fit this
        run raises :class:`~sgdlab.checkpoint.CheckpointError`."""
        try:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            self.batches.load_state_dict(ckpt["sampler"])
            checkpoint.set_rng_state(ckpt["rng"])
            self.step = int(ckpt["step"])
            self._elapsed_before = ckpt["elapsed"]
            self._loss_sum = ckpt["loss_sum"]
            self._loss_count = ckpt["loss_count"]
            self._metrics_lines = int(ckpt["metrics_lines"])
            if ckpt.get("averaged") is not None:
                self._make_averaged()
                self.averaged.load_state_dict(ckpt["averaged"])
            if ckpt.get("monitor") is not None:
                self.monitor.load_state_dict(ckpt["monitor"])
        except Exception as err:  # noqa: BLE001 - whatever does not fit, one line
            raise checkpoint.CheckpointError(
                f"{path}: does not fit this run ({type(err).__name__}: "
                f"{config_mod._first_line(err)[:200]})") from None
        self.monitor.step_count = self.step
        self._last_checkpoint_step = self.step

    # ----------------------------------------------------------------- the loop

    def _loop(self) -> dict[str, Any]:
        try:
            return self._run_loop()
        finally:
            self._release_lock()

    def _run_loop(self) -> dict[str, Any]:
        cfg = self.config
        self._setup_outputs()
        if self._resume_record is not None:
            self.log(self._resume_record)
        if self.world > 1:
            self.train_model = nn.parallel.DistributedDataParallel(self.model)
            self.monitor.set_ddp_model(self.train_model)
        old_handlers = self._install_signal_handlers()
        self._progress_start()
        kill_at = _fault_step() if self.rank == 0 else None
        status, message = "completed", ""
        start = time.perf_counter()
        last_log_time, last_log_step = start, self.step
        for cb in self.callbacks:
            cb.on_train_start(self)
        self.train_model.train()  # evaluation restores the mode it found
        try:
            while self.step < self.total_steps:
                x, y = self.batches.next()  # this rank's slice of the global batch
                self.batch = (x, y)
                if cfg.accumulate > 1:
                    loss = self._accumulated_backward(x, y)
                else:
                    self.monitor.begin(x, y)
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
                if cfg.accumulate == 1:
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                self.monitor.gradients_ready()
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
                if self._bar is not None:
                    self._bar.update(1)
                if kill_at == self.step:
                    os.kill(os.getpid(), signal.SIGKILL)
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
                evaluated = self.step % self.eval_every == 0 or self.step == self.total_steps
                if evaluated:
                    self.evaluate(now=time.perf_counter() - start)
                every = cfg.checkpoint_every
                if (self.step % every == 0) if every else evaluated:
                    self.save_checkpoint(time.perf_counter() - start)
                if self._stop_requested():
                    status = "interrupted"
                    message = (f"interrupted by signal {self._stop_signal} at step {self.step}; "
                               f"resume with: sgdlab train --resume {self.run_dir}")
                    break
        finally:
            self._restore_signal_handlers(old_handlers)
            self._progress_end()
            self.batches.close()  # DataLoader workers; the sampler rewinds to the last batch
            self.monitor.cancel()  # a step left armed by a divergence or an error
        wall = time.perf_counter() - start
        if status != "diverged" and self.step > 0 and self.step != self._last_checkpoint_step:
            self.save_checkpoint(wall)
        summary = self._summary(status, message, wall)
        if self.world > 1:
            summary["ddp_max_param_diff"] = _max_param_diff_across_ranks(self.model)
        for cb in self.callbacks:
            cb.on_train_end(self, summary)
        self._finish_outputs(summary)
        return summary

    # ----------------------------------------------------------------- pieces

    def _accumulated_backward(self, x: Any, y: Any) -> torch.Tensor:
        """Gradient accumulation (``accumulate`` N > 1): p.grad = Σ_m ∇(loss_m/N) over N
        micro-batches of b = B/N examples, loss_m their mean loss — (1/B) Σ_b ∇ℓ_b, the
        one-batch gradient up to the order of float summation. Each micro-batch is a
        ``monitor.begin`` (the instruments see the step's micro-batches); under DDP all but
        the last backward run in ``no_sync``. Returns the step's mean loss (detached)."""
        import contextlib

        from torch.utils import _pytree as pytree

        from sgdlab.monitor import _batch_len

        n = self.config.accumulate
        size = _batch_len(x)
        if size is None or size % n:
            raise ConfigError(f"accumulate: a batch of {size} examples does not split into "
                              f"{n} equal micro-batches")
        b = size // n

        def part(tree: Any, lo: int) -> Any:
            return pytree.tree_map(lambda t: t[lo:lo + b] if isinstance(t, torch.Tensor)
                                   and t.dim() > 0 else t, tree)

        self.optimizer.zero_grad(set_to_none=True)
        total = None
        for m in range(n):
            xm, ym = part(x, m * b), part(y, m * b)
            self.monitor.begin(xm, ym)
            sync = (self.train_model.no_sync() if self.world > 1 and m < n - 1
                    else contextlib.nullcontext())
            with sync:
                loss = self.run.loss_fn(self.train_model(xm), ym)
                (loss / n).backward()
            loss = loss.detach()
            total = loss if total is None else total + loss
        return total / n

    @torch.no_grad()
    def evaluate(self, now: float | None = None) -> dict[str, float]:
        """Loss (and accuracy) on the test split and on the train split (a fixed subset of
        ``TRAIN_EVAL_SUBSET`` examples, or all of it with ``full_train_loss``); logs a record."""
        ds = self.data
        n_train = None if self.config.full_train_loss else TRAIN_EVAL_SUBSET
        record: dict[str, Any] = {"kind": "eval", "step": self.step, "epoch": self._epoch()}
        if now is not None:
            record["wall_time"] = self._elapsed_before + now
        record.update(self._eval_split(self.model, "train", ds.iter_batches("train", n_train)))
        if ds.n_test:
            record.update(self._eval_split(self.model, "test", ds.iter_batches("test")))
        if self.config.full_train_loss:
            record["train_full_loss"] = record["train_loss"]
        if self.averaged is not None and ds.n_test:
            if _has_batchnorm(self.averaged.module):
                self._update_bn()
            record.update(self._eval_split(self.averaged.module, "avg_test",
                                           ds.iter_batches("test")))
        self.log(record)
        for cb in self.callbacks:
            cb.on_eval(self, record)
        if self.progress:
            self._progress_eval(record)
        return record

    def _eval_split(self, model: nn.Module, prefix: str,
                    batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
        """Mean per-example loss (and accuracy: argmax of the last dimension against integer
        labels) of ``model`` in eval mode over ``batches``."""
        was_training = model.training
        model.eval()
        total, correct, count = 0.0, 0, 0
        for xb, yb in batches:
            out = model(xb)
            total += float(self.run.per_example_loss_fn(out, yb).sum())
            count += int(yb.shape[0])
            if self.data.task == "classification":
                correct += int((out.argmax(dim=-1) == yb).sum())
        model.train(was_training)
        n = max(1, count)
        result = {f"{prefix}_loss": total / n}
        if self.data.task == "classification":
            result[f"{prefix}_acc"] = correct / n
        return result

    def save_checkpoint(self, elapsed: float) -> None:
        """Write ``checkpoints/last.pt`` atomically (rank 0 with a run directory); metrics.jsonl
        is fsynced first, so the lines the checkpoint counts are on disk. A failed write
        raises :class:`CheckpointWriteError` and leaves the previous checkpoint as it was."""
        if not self.is_writer:
            return
        path = self.run_dir / "checkpoints" / "last.pt"
        try:
            if self.writer is not None:
                self.writer.sync()
            checkpoint.save(path, self._checkpoint_payload(elapsed))
        except OSError as err:
            before = (f"the previous checkpoint (step {self._last_checkpoint_step}) is intact"
                      if self._last_checkpoint_step is not None else "no earlier checkpoint")
            raise CheckpointWriteError(
                f"checkpoint: cannot write {path} ({err.strerror or err}); {before}; free "
                f"space and continue with: sgdlab train --resume {self.run_dir}") from None
        self._last_checkpoint_step = self.step

    def _checkpoint_payload(self, elapsed: float) -> dict[str, Any]:
        """Everything :meth:`resume` restores (see :mod:`sgdlab.checkpoint`)."""
        payload = {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.batches.state_dict(),
            "rng": checkpoint.rng_state(),
            "elapsed": self._elapsed_before + elapsed,
            "loss_sum": self._loss_sum,
            "loss_count": self._loss_count,
            "averaged": None if self.averaged is None else self.averaged.state_dict(),
            "monitor": self.monitor.state_dict(),
            "metrics_lines": self.writer.lines if self.writer is not None else 0,
            "config": self.config.to_dict(),
            "total_steps": self.total_steps,
            "world_size": self.world,
        }
        return payload

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
        batches = (xb for xb, _ in self.data.iter_batches("train", batch_size=256))
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
        if self._bar is not None:
            self._bar.set_postfix_str(f"loss {loss:.4g}", refresh=False)

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
        atomic_write_json(self.run_dir / "summary.json", strict_json(summary))
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

    # ----------------------------------------------------------------- progress

    def _progress_start(self) -> None:
        """A tqdm bar on a TTY (rate, time left, latest loss); plain lines at each evaluation
        otherwise (no carriage returns)."""
        self._progress_t0 = time.perf_counter()
        self._progress_step0 = self.step
        if not self.progress or not sys.stderr.isatty():
            return
        from tqdm import tqdm

        self._bar = tqdm(total=self.total_steps, initial=self.step, unit="step",
                         file=sys.stderr, dynamic_ncols=True, mininterval=0.25,
                         smoothing=0.1, desc="train")

    def _progress_eval(self, record: dict[str, Any]) -> None:
        """Show an evaluation: in the bar's postfix, or as one plain line."""
        keys = ("train_loss", "test_loss", "test_acc", "avg_test_acc")
        parts = [f"{k} {record[k]:.4g}" for k in keys if k in record]
        if self._bar is not None:
            self._bar.set_postfix_str("  ".join(parts), refresh=True)
            return
        done = self.step - self._progress_step0
        elapsed = time.perf_counter() - self._progress_t0
        rate = done / elapsed if elapsed > 0 else 0.0
        left = (self.total_steps - self.step) / rate if rate > 0 else 0.0
        print(f"step {self.step}/{self.total_steps}  " + "  ".join(parts)
              + f"  {rate:.1f} steps/s  eta {_duration(left)}", file=sys.stderr, flush=True)

    def _progress_end(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _stop_requested(self) -> bool:
        """Whether a stop signal arrived, on any rank: under DDP the ranks agree (an
        all-reduce of the signal number), so that they all stop after the same step.

        The decision is the all-reduced value alone: a signal whose handler runs after the
        all-reduce (between it and the return) is seen by every rank at the next step. Reading
        ``self._stop_signal`` again after the collective let one rank stop while the others
        went on into the next step's collectives and waited for it forever."""
        if self.world == 1:
            return self._stop_signal is not None
        flag = torch.tensor([self._stop_signal or 0], dtype=torch.int64)
        if torch.distributed.get_backend() == "nccl":
            flag = flag.to(self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        agreed = int(flag)
        if agreed and self._stop_signal is None:
            self._stop_signal = agreed
        return agreed != 0

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


def read_summary(run_dir: str | Path) -> dict[str, Any] | None:
    """RUN/summary.json as a dict (non-finite numbers restored), or ``None`` when it is
    missing, unreadable or not a JSON object (a run killed before writing it)."""
    import json

    try:
        summary = json.loads((Path(run_dir) / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return restore_nonfinite(summary) if isinstance(summary, dict) else None


def occupied(run_dir: str | Path) -> str | None:
    """Why a new run cannot start in ``run_dir`` (one line naming the command that continues
    what is there), or ``None`` when it is missing or empty (its lock file aside)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return None
    names = {p.name for p in run_dir.iterdir()} - {runlock.LOCK_NAME}
    if not names:
        return None
    head = f"out: {run_dir} already holds files"
    if "config.yaml" not in names:
        return f"{head} that are not an sgdlab run; choose another --out"
    if not (run_dir / "checkpoints" / "last.pt").exists():
        return (f"{head} of a run that stopped before its first checkpoint; start it again "
                f"from step 0 with: sgdlab train --resume {run_dir} (or choose another --out)")
    summary = read_summary(run_dir)
    if summary is not None and summary.get("status") == "completed":
        return (f"{head} of a completed run; choose another --out (or train it longer with: "
                f"sgdlab train --resume {run_dir} --steps N)")
    return f"{head} of an unfinished run; continue it with: sgdlab train --resume {run_dir}"


def _duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h03m``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _auto_every(cfg: TrainConfig, total: int) -> tuple[int, int]:
    """(log_every, eval_every) of a run of ``total`` steps: the config's, or automatic for 0
    (about 200 log lines, at most every 50 steps; 20 evaluations)."""
    log_every = cfg.log_every or min(50, max(1, total // 200))
    eval_every = cfg.eval_every or max(1, total // 20)
    return log_every, eval_every


def _fault_step() -> int | None:
    """``SGDLAB_FAULT_KILL_AT_STEP`` (test suite): the step after which to SIGKILL rank 0."""
    value = os.environ.get("SGDLAB_FAULT_KILL_AT_STEP")
    return int(value) if value else None


def train(config: TrainConfig, callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Build and run ``config`` from scratch; returns the summary dict."""
    return Trainer(config, callbacks).fit()
