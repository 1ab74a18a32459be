"""Choosing hyper-parameters (SPEC §4.11): the learning-rate range test and two sanity checks.

SPEC §4.11 gives a recipe for a new problem:

1. the loss at initialisation should be ≈ ln C for C balanced classes (an uninformed model
   predicts the uniform distribution, whose cross-entropy is ln C);
2. the model should be able to overfit a small sample to near-zero loss (otherwise the model,
   the loss or the optimizer is broken, or the learning rate is far off);
3. a learning-rate range test finds an η at which the loss drops quickly.

:func:`check` runs (1) and (2) (``sgdlab check``); :func:`lr_find` runs (3)
(``sgdlab lr-find``). Both work on the user's own model, optimizer, per-example loss and
data, and put the model and the optimizer back exactly as they were (:func:`preserved`,
torch-lr-finder's contract); given a :class:`TrainConfig` instead, they build a fresh run
with :func:`sgdlab.train.build` from a copy of it (the caller's config is never modified).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sgdlab import data as sgdata
from sgdlab import train
from sgdlab.config import ConfigError, TrainConfig, from_dict

__all__ = ["CheckResult", "LRFindResult", "STEP_MODES", "check", "lr_find", "preserved"]


# --------------------------------------------------------------------------- helpers


def _variant(cfg: TrainConfig, **changes: Any) -> TrainConfig:
    """A validated copy of ``cfg`` with ``changes`` (deep copy: ``cfg`` is untouched)."""
    if not isinstance(cfg, TrainConfig):
        raise ConfigError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    return from_dict({**cfg.to_dict(), **changes})


def _positive_number(name: str, value: Any) -> float:
    ok = (not isinstance(value, bool) and isinstance(value, (int, float))
          and math.isfinite(value) and value > 0)
    if not ok:
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _integer(name: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ConfigError(f"{name} must be an integer >= {lo}, got {value!r}")
    return value


def _write_json(path: Path, obj: Any) -> None:
    """Atomic JSON write (``sgdlab.metrics_log.atomic_write_json`` when available)."""
    try:
        from sgdlab.metrics_log import atomic_write_json
    except ImportError:  # pragma: no cover - the shared helper is part of the package
        import json
        import tempfile

        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(obj, fh, indent=2)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return
    atomic_write_json(path, obj)


# --------------------------------------------------------------------------- user objects


def _mean_loss(loss_fn: Callable) -> Callable:
    """The batch loss (1/B) Σ_b ℓ_b of a per-example ``loss_fn`` (a 0-d result is taken as
    the mean already, as torch-lr-finder's criteria are)."""

    def mean(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        per = loss_fn(out, y)
        return per if per.dim() == 0 else per.mean()

    return mean


def _sum_loss(loss_fn: Callable, out: torch.Tensor, y: torch.Tensor) -> float:
    """Σ_b ℓ_b over a batch (a 0-d mean is multiplied back by the batch size)."""
    per = loss_fn(out, y)
    return float(per.sum()) if per.dim() > 0 else float(per) * int(y.shape[0])


def _device_of(model: nn.Module) -> torch.device | None:
    p = next(iter(model.parameters()), None)
    return None if p is None else p.device


def _on(device: torch.device | None, x: torch.Tensor, y: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
    if device is not None and x.device != device:
        x, y = x.to(device), y.to(device)
    return x, y


def _pair(batch: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ConfigError(f"{name}: every batch must be an (x, y) pair, "
                          f"got {type(batch).__name__}")
    return batch[0], batch[1]


def _is_xy(data: Any) -> bool:
    return (isinstance(data, (tuple, list)) and len(data) == 2
            and all(isinstance(t, torch.Tensor) for t in data))


def _train_stream(data: Any, batch_size: int, seed: int, name: str = "data"
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """An endless stream of training batches from ``data``: tensors (x, y) or an sgdlab data
    set (epochs shuffled by a :class:`~sgdlab.data.BatchSampler` seeded with ``seed``), or
    an iterable of (x, y) batches (a DataLoader: passed over again when exhausted)."""
    if _is_xy(data) or isinstance(data, (sgdata.Dataset, sgdata.MapData)):
        source = data if not _is_xy(data) else None
        n = int(data[0].shape[0]) if source is None else source.n_train
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not (
                1 <= batch_size <= n):
            raise ConfigError(f"batch_size must be an integer in [1, {n}] (the examples), "
                              f"got {batch_size!r}")
        sampler = sgdata.BatchSampler(n, batch_size, "shuffle", seed)
        while True:
            idx = sampler.next_batch()
            yield source.batch(idx) if source is not None else (data[0][idx], data[1][idx])
    if not isinstance(data, Iterable):
        raise ConfigError(f"{name}: expected tensors (x, y), an sgdlab Dataset or an iterable "
                          f"of (x, y) batches (a DataLoader), got {type(data).__name__}")
    tensors = _tensor_loader(data)
    while True:
        empty = True
        if tensors is not None:
            # the batches of ``iter(data)``, read without its per-example fetch and collation
            # (which cost more than the step itself on small models): the same index lists,
            # then one gather per tensor. iter(DataLoader) draws its workers' base seed
            # after starting the sampler and before the first index; the same draw here
            # keeps a shuffling sampler on the random stream it would have seen.
            x, y = tensors
            indices = iter(data.batch_sampler)
            torch.empty((), dtype=torch.int64).random_(generator=data.generator)
            for idx in indices:
                empty = False
                i = torch.as_tensor(idx, dtype=torch.long)
                yield x[i], y[i]
        else:
            for batch in data:
                empty = False
                yield _pair(batch, name)
        if empty:
            raise ConfigError(f"{name}: ran out of batches (a generator can be read once; "
                              "give a DataLoader or more steps' worth of batches)")


def _tensor_loader(data: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The tensors (x, y) behind a plain ``DataLoader`` whose batches are exactly
    ``(x[idx], y[idx])`` for the index lists of its batch sampler: a ``TensorDataset`` of two
    tensors, read in the main process, default collation, no pinning. Else None."""
    from torch.utils.data import DataLoader, TensorDataset, default_collate

    if (type(data) is DataLoader and type(data.dataset) is TensorDataset
            and len(data.dataset.tensors) == 2 and data.num_workers == 0
            and data.batch_sampler is not None and data.collate_fn is default_collate
            and not data.pin_memory):
        return data.dataset.tensors
    return None


def _eval_batches(data: Any, name: str, split: str = "train"
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One pass over ``data`` in order: tensors (x, y) in chunks of 2048, an sgdlab data set's
    ``split``, or the batches of an iterable."""
    if _is_xy(data):
        x, y = data
        for lo in range(0, x.shape[0], 2048):
            yield x[lo:lo + 2048], y[lo:lo + 2048]
    elif isinstance(data, (sgdata.Dataset, sgdata.MapData)):
        yield from data.iter_batches(split)
    elif isinstance(data, Iterable):
        for batch in data:
            yield _pair(batch, name)
    else:
        raise ConfigError(f"{name}: expected tensors (x, y), an sgdlab Dataset or an iterable "
                          f"of (x, y) batches (a DataLoader), got {type(data).__name__}")


@contextlib.contextmanager
def preserved(model: nn.Module, optimizer: torch.optim.Optimizer | None = None
              ) -> Iterator[None]:
    """Run a block, then put the model and the optimizer back exactly as they were
    (torch-lr-finder's contract): parameters and buffers (``state_dict``, copied back in
    place, so the optimizer keeps referring to the same tensors), the gradients, every
    module's train/eval mode, the optimizer's state and param groups (learning rates
    included), and the global torch RNG (``torch.random.fork_rng``: dropout in the block does
    not shift the user's later random stream)."""
    saved = copy.deepcopy(model.state_dict())
    grads = [(p, None if p.grad is None else p.grad.detach().clone())
             for p in model.parameters()]
    modes = [(m, m.training) for m in model.modules()]
    opt_saved = copy.deepcopy(optimizer.state_dict()) if optimizer is not None else None
    cuda = sorted({p.device.index or 0 for p in model.parameters() if p.is_cuda})
    try:
        with torch.random.fork_rng(devices=cuda):
            yield
    finally:
        model.load_state_dict(saved)
        for p, g in grads:
            p.grad = g
        for m, mode in modes:
            m.training = mode
        if optimizer is not None:
            optimizer.load_state_dict(opt_saved)


# --------------------------------------------------------------------------- range test


@dataclass(frozen=True)
class LRFindResult:
    """Outcome of :func:`lr_find`.

    ``lrs[k]`` is the learning rate of step k and ``losses[k]`` the mini-batch loss computed
    just before that step (so it reflects steps 0..k−1; fastai's convention);
    ``val_losses[k]`` (with ``val_data``) the mean loss on the validation data just after
    step k. ``smoothed[k]`` is the bias-corrected exponential moving average of the curve
    the test follows (``val_losses`` when given, else ``losses``) up to k. Non-finite losses
    are never recorded: the test stops before them.

    ``min_loss``/``min_loss_lr``: the lowest smoothed loss and its learning rate.
    ``steepest_lr``: the learning rate of the most negative slope d smoothed / d ln η at or
    before the minimum. ``suggestion``: ``min_loss_lr / 10`` clipped to ``[start_lr, end_lr]``
    (see :func:`lr_find`). ``diverged``: the test stopped early because the loss blew up.
    """

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float
    min_loss: float
    min_loss_lr: float
    steepest_lr: float
    diverged: bool
    rule: str = "min_loss_lr / 10"
    val_losses: list[float] | None = None
    step_mode: str = "exp"

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (what ``lr_find.json`` holds, without the settings)."""
        record = {"lrs": list(self.lrs), "losses": list(self.losses),
                  "smoothed_losses": list(self.smoothed), "suggestion": self.suggestion,
                  "rule": self.rule, "min_loss": self.min_loss, "min_loss_lr": self.min_loss_lr,
                  "steepest_lr": self.steepest_lr, "diverged": self.diverged,
                  "step_mode": self.step_mode}
        if self.val_losses is not None:
            record["val_losses"] = list(self.val_losses)
        return record


STEP_MODES = ("exp", "linear")


def _range_settings(start_lr: Any, end_lr: Any, num_steps: Any, smoothing: Any,
                    diverge_factor: Any, step_mode: Any, accumulation_steps: Any
                    ) -> tuple[float, float, int, float, float, int]:
    start = _positive_number("start_lr", start_lr)
    end = _positive_number("end_lr", end_lr)
    if end <= start:
        raise ConfigError(f"end_lr must be greater than start_lr={start:g}, got {end_lr!r}")
    n = _integer("num_steps", num_steps, 10)
    ok = (not isinstance(smoothing, bool) and isinstance(smoothing, (int, float))
          and 0 <= smoothing < 1)
    if not ok:
        raise ConfigError(f"smoothing must be a number in [0, 1), got {smoothing!r}")
    ok = (not isinstance(diverge_factor, bool) and isinstance(diverge_factor, (int, float))
          and math.isfinite(diverge_factor) and diverge_factor > 1)
    if not ok:
        raise ConfigError(f"diverge_factor must be a finite number > 1, got {diverge_factor!r}")
    if step_mode not in STEP_MODES:
        raise ConfigError(f"step_mode must be one of {', '.join(STEP_MODES)}, got {step_mode!r}")
    acc = _integer("accumulation_steps", accumulation_steps, 1)
    return start, end, n, float(smoothing), float(diverge_factor), acc


@torch.no_grad()
def _mean_over(model: nn.Module, loss_fn: Callable, batches: Iterable) -> float:
    """Mean per-example loss of ``model`` in eval mode over one pass of ``batches``."""
    was = model.training
    model.eval()
    device = _device_of(model)
    total, count = 0.0, 0
    try:
        for xb, yb in batches:
            xb, yb = _on(device, xb, yb)
            total += _sum_loss(loss_fn, model(xb), yb)
            count += int(yb.shape[0])
    finally:
        model.train(was)
    if count == 0:
        raise ConfigError("val_data: holds no examples")
    return total / count


def _range_test(model: nn.Module, optimizer: torch.optim.Optimizer, mean_loss: Callable,
                batches: Iterator, settings: tuple, val: Callable[[], float] | None,
                ) -> LRFindResult:
    """The loop of :func:`lr_find` (see there for the maths)."""
    start, end, n, beta, diverge_factor, acc = settings[:6]
    step_mode = settings[6]
    device = _device_of(model)
    model.train()
    lrs: list[float] = []
    losses: list[float] = []
    vals: list[float] = []
    smoothed: list[float] = []
    avg, best, diverged = 0.0, math.inf, False
    for k in range(n):
        if step_mode == "exp":
            lr = start * (end / start) ** (k / (n - 1))
        else:
            lr = start + (end - start) * k / (n - 1)
        for group in optimizer.param_groups:
            group["lr"] = lr
        value, parts = 0.0, []
        for _ in range(acc):
            x, y = _on(device, *next(batches))
            loss = mean_loss(model(x), y)
            part = float(loss.detach())
            value += part / acc
            parts.append(loss)
            if not math.isfinite(part):
                break
        if not math.isfinite(value):
            if k == 0:
                raise ConfigError(f"lr_find: the loss at initialisation is {value}; "
                                  "check the data and the model")
            diverged = True
            break
        optimizer.zero_grad(set_to_none=True)
        for loss in parts:
            (loss / acc if acc > 1 else loss).backward()
        optimizer.step()
        tracked = value
        if val is not None:
            tracked = val()
            if not math.isfinite(tracked):
                diverged = True
                break
        avg = beta * avg + (1 - beta) * tracked
        smooth = avg / (1 - beta ** (k + 1))
        lrs.append(lr)
        losses.append(value)
        if val is not None:
            vals.append(tracked)
        smoothed.append(smooth)
        if k > 0 and smooth > diverge_factor * best:
            diverged = True
            break
        best = min(best, smooth)
    return _summarise(lrs, losses, smoothed, vals if val is not None else None, n, start, end,
                      diverged, step_mode)


def _summarise(lrs: list[float], losses: list[float], smoothed: list[float],
               vals: list[float] | None, n: int, start: float, end: float, diverged: bool,
               step_mode: str) -> LRFindResult:
    s = np.asarray(smoothed)
    # fastai skips the first tenth of the planned steps: the bias-corrected average of the
    # first few batches is one noisy batch loss, not yet a trend.
    skip = n // 10 if len(s) > n // 10 + 1 else 0
    i_min = skip + int(np.argmin(s[skip:]))
    if i_min - skip >= 1:
        seg = slice(skip, i_min + 1)
        slope = np.gradient(s[seg], np.log(np.asarray(lrs[seg])))
        i_steep = skip + int(np.argmin(slope))
    else:
        i_steep = i_min
    min_lr = lrs[i_min]
    return LRFindResult(lrs=lrs, losses=losses, smoothed=smoothed,
                        suggestion=min(max(min_lr / 10, start), end),
                        min_loss=float(s[i_min]), min_loss_lr=min_lr,
                        steepest_lr=lrs[i_steep], diverged=diverged, val_losses=vals,
                        step_mode=step_mode)


def _write_lr_find(out: str | os.PathLike, result: LRFindResult, settings: dict[str, Any],
                   config: dict[str, Any] | None = None) -> None:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = result.to_dict()
    record["settings"] = settings
    if config is not None:
        record["config"] = config
    _write_json(out_dir / "lr_find.json", record)
    try:
        from sgdlab.plots import plot_lr_find
        plot_lr_find(result.lrs, result.smoothed, result.suggestion, out_dir / "lr_find.png")
    except Exception as err:  # the plot is a convenience; the JSON holds the numbers
        print(f"sgdlab: lr_find plot not written ({err})", file=sys.stderr)


def lr_find(model: nn.Module | TrainConfig, optimizer: torch.optim.Optimizer | None = None,
            loss_fn: Callable | None = None, data: Any = None, *, batch_size: int = 64,
            start_lr: float = 1e-6, end_lr: float = 10.0, num_steps: int = 200,
            step_mode: str = "exp", smoothing: float = 0.98, diverge_factor: float = 4.0,
            val_data: Any = None, accumulation_steps: int = 1, seed: int = 0,
            out: str | os.PathLike | None = None) -> LRFindResult:
    r"""Learning-rate range test (SPEC §4.11 (3); Smith 2017, "Cyclical learning rates";
    fastai's ``lr_find``; torch-lr-finder's ``LRFinder.range_test``).

    Two forms:

    - ``lr_find(model, optimizer, loss_fn, data, batch_size=64, ...)``: on the user's own
      objects. ``loss_fn(out, y)`` returns per-example losses (shape (B,); a 0-d mean is
      accepted too); ``data`` is tensors ``(x, y)`` or an sgdlab Dataset (shuffled epochs of
      ``batch_size``, sampler seeded with ``seed``), or a DataLoader / iterable of (x, y)
      batches (passed over again when exhausted). The model's parameters, buffers,
      gradients and train/eval modes, the optimizer's state and learning rates and the
      global torch RNG are restored afterwards, bit for bit (:func:`preserved`), so the test
      can run just before training.
    - ``lr_find(cfg, ...)``: a fresh run built from the :class:`TrainConfig` (its model,
      optimizer, loss, batch size and sampling; the schedule is ignored): a thin wrapper
      over the first form.

    Step k = 0, …, num_steps − 1 sets every param group's learning rate to

        η_k = start_lr · (end_lr / start_lr)^{k / (num_steps − 1)}   (``step_mode="exp"``)
        η_k = start_lr + (end_lr − start_lr) · k / (num_steps − 1)   (``step_mode="linear"``)

    draws a mini-batch (``accumulation_steps`` of them, gradients accumulated: the loss is
    their mean), records its loss ℓ_k at the current parameters and takes one optimizer
    step. With ``val_data`` (tensors (x, y), a Dataset's test split, or an iterable of
    batches) the mean loss v_k on it after the step is recorded too, and the test follows
    v_k instead of ℓ_k (as torch-lr-finder does). The followed loss is smoothed as fastai
    does, with bias correction:

        a_k = β a_{k−1} + (1 − β) ℓ_k,  a_{−1} = 0,    s_k = a_k / (1 − β^{k+1}),

    β = ``smoothing``. The test stops, with ``diverged=True``, when a loss is not finite (that
    step is not recorded) or when s_k > ``diverge_factor`` · min_{j<k} s_j (that step is
    recorded).

    Reading the curve: s(η) is flat while η is too small to move, falls where η is useful
    and turns up where η exceeds the stability limit (≈ 2/λ_max of the Hessian for plain
    SGD on a quadratic). The rule used for ``suggestion`` is the classic one: one tenth of
    the learning rate at the lowest smoothed loss, ``min_loss_lr / 10``, clipped to
    ``[start_lr, end_lr]`` — the minimum sits just before the blow-up, and a factor 10 backs
    off into the region where the loss falls steadily. ``steepest_lr`` (argmin over k ≤ the
    minimum of ds/d ln η, central differences) is reported as the other common choice. Both
    look only past the first ``num_steps // 10`` steps (as fastai does: the bias-corrected
    average of the first few batches is one noisy batch loss), unless the test stopped
    there.

    Args:
        start_lr, end_lr: the range, 0 < start_lr < end_lr.
        num_steps: planned steps (at least 10).
        step_mode: ``exp`` (equal spacing in ln η) or ``linear``.
        smoothing: β in [0, 1).
        diverge_factor: stop when the smoothed loss exceeds this multiple (> 1) of its best.
        accumulation_steps: mini-batches per step (≥ 1).
        out: a directory; when given, ``out/lr_find.json`` (learning rates, raw and smoothed
            losses, suggestion, settings) is written atomically and ``out/lr_find.png`` is
            plotted (smoothed loss vs learning rate).

    Raises:
        ConfigError: a bad argument (one line naming it) or a bad config.
    """
    settings = _range_settings(start_lr, end_lr, num_steps, smoothing, diverge_factor,
                               step_mode, accumulation_steps)
    record = {"start_lr": settings[0], "end_lr": settings[1], "num_steps": settings[2],
              "smoothing": settings[3], "diverge_factor": settings[4], "step_mode": step_mode,
              "accumulation_steps": settings[5]}
    if out is not None:
        from sgdlab.paths import check_writable_dir

        check_writable_dir(out, "out")  # before the test runs, not when writing its result
    if isinstance(model, TrainConfig):
        if optimizer is not None or loss_fn is not None or data is not None:
            raise ConfigError("lr_find: give a TrainConfig alone, or model, optimizer, "
                              "loss_fn and data")
        run_cfg = _variant(model, lr=settings[0], steps=settings[2], epochs=None,
                           schedule="constant", schedule_options={}, warmup_steps=0,
                           average="none", out=None, tensorboard=False)
        run = train.build(run_cfg)
        stream = (run.data.batch(run.sampler.next_batch()) for _ in iter(int, 1))
        val = (None if val_data is None else
               lambda: _mean_over(run.model, run.per_example_loss_fn,
                                  _eval_batches(val_data, "val_data", "test")))
        result = _range_test(run.model, run.optimizer, run.loss_fn, stream,
                             (*settings, step_mode), val)
        record = {**record, "steps_run": len(result.lrs)}
        if out is not None:
            _write_lr_find(out, result, record, run_cfg.to_dict())
        return result
    _check_objects(model, optimizer, loss_fn, data)
    stream = _train_stream(data, batch_size, seed)
    val = (None if val_data is None else
           lambda: _mean_over(model, loss_fn, _eval_batches(val_data, "val_data", "test")))
    with preserved(model, optimizer):
        result = _range_test(model, optimizer, _mean_loss(loss_fn), stream,
                             (*settings, step_mode), val)
    if out is not None:
        _write_lr_find(out, result, {**record, "steps_run": len(result.lrs),
                                     "batch_size": batch_size})
    return result


def _check_objects(model: Any, optimizer: Any, loss_fn: Any, data: Any,
                   need_optimizer: bool = True) -> None:
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module (or a TrainConfig), "
                          f"got {type(model).__name__}")
    if (need_optimizer or optimizer is not None) and not isinstance(
            optimizer, torch.optim.Optimizer):
        raise ConfigError(f"optimizer must be a torch.optim.Optimizer, "
                          f"got {type(optimizer).__name__}")
    if not callable(loss_fn):
        raise ConfigError("loss_fn must be a callable loss_fn(out, y) returning per-example "
                          f"losses, got {type(loss_fn).__name__}")
    if data is None:
        raise ConfigError("data must be given: tensors (x, y), an sgdlab Dataset or an "
                          "iterable of (x, y) batches")


# --------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class CheckResult:
    """One sanity check of :func:`check`: its ``name``, whether it ``passed``, a one-line
    ``detail`` with the numbers behind the verdict, and those numbers in ``values``."""

    name: str
    passed: bool
    detail: str
    values: dict[str, Any] = field(default_factory=dict)


@torch.no_grad()
def _loss_and_acc(model: nn.Module, loss_fn: Callable, batches: Iterable,
                  classification: bool) -> tuple[float, float | None, int, list[torch.Tensor]]:
    """Mean loss, accuracy (classification), example count and the labels of ``batches``."""
    device = _device_of(model)
    total, correct, count, labels = 0.0, 0, 0, []
    for xb, yb in batches:
        xb, yb = _on(device, xb, yb)
        out = model(xb)
        total += _sum_loss(loss_fn, out, yb)
        count += int(yb.shape[0])
        if classification:
            correct += int((out.argmax(dim=-1) == yb).sum())
            labels.append(yb.detach().reshape(-1).cpu())
    n = max(1, count)
    return total / n, (correct / n if classification else None), count, labels


def _initial_loss_check(model: nn.Module, loss_fn: Callable, batches: Iterable,
                        classification: bool, num_classes: int | None,
                        tolerance: float) -> CheckResult:
    loss0, _, count, labels = _loss_and_acc(model, loss_fn, batches, classification)
    name = "initial loss"
    if not math.isfinite(loss0):
        return CheckResult(name, False, f"loss at initialisation is {loss0} on the "
                                        f"{count} training examples", {"loss": loss0})
    if not classification:
        return CheckResult(name, True, f"{loss0:.4f} on the {count} training examples; "
                                       f"the ln C comparison is not applicable to "
                                       f"regression", {"loss": loss0})
    c = int(num_classes)
    ln_c = math.log(c)
    gap = abs(loss0 - ln_c) / ln_c
    passed = gap <= tolerance
    counts = torch.bincount(torch.cat(labels), minlength=c).double()
    p = counts / counts.sum()
    entropy = float(-(p[p > 0] * p[p > 0].log()).sum())
    detail = (f"{loss0:.4f} vs ln {c} = {ln_c:.4f} (gap {100 * gap:.1f}%, "
              f"tolerance {100 * tolerance:g}%)")
    if abs(entropy - ln_c) > 0.01 * ln_c:
        detail += f"; classes are unbalanced (label entropy {entropy:.4f})"
    if not passed:
        detail += ("; far from ln C: check the output layer's initial scale, the labels and "
                   "the loss")
    return CheckResult(name, passed, detail, {"loss": loss0, "ln_c": ln_c, "gap": gap,
                                              "label_entropy": entropy})


def _overfit_check(model: nn.Module, opt: torch.optim.Optimizer, mean_loss: Callable,
                   per_example: Callable, x: torch.Tensor, y: torch.Tensor, steps: int,
                   threshold: float, classification: bool, opt_name: str) -> CheckResult:
    n = int(y.shape[0])
    lr = opt.param_groups[0]["lr"]
    name = f"overfit {n} examples"
    setting = f"{opt_name} lr {lr:.3g}, {steps} full-batch steps"
    first_below: int | None = None
    for k in range(steps):
        loss = mean_loss(model(x), y)
        value = float(loss.detach())
        if not math.isfinite(value):
            return CheckResult(name, False, f"loss became {value} at step {k} ({setting}); "
                                            "lower the learning rate",
                               {"final_loss": value, "diverged_step": k, "lr": lr})
        if first_below is None and value <= threshold:
            first_below = k
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    final, acc, _, _ = _loss_and_acc(model, per_example, _eval_batches((x, y), "data"),
                                     classification)
    if first_below is None and math.isfinite(final) and final <= threshold:
        first_below = steps
    passed = math.isfinite(final) and final <= threshold and (acc is None or acc == 1.0)
    below = (f"first <= {threshold:g} at step {first_below}" if first_below is not None
             else f"never <= {threshold:g}")
    acc_text = f", accuracy {100 * acc:.1f}%" if acc is not None else ""
    detail = f"final loss {final:.4g}{acc_text}; {below} ({setting})"
    if not passed:
        need = f"loss <= {threshold:g}" + (" and 100% accuracy" if acc is not None else "")
        detail += f"; needs {need}"
    return CheckResult(name, passed, detail, {"final_loss": final, "accuracy": acc,
                                              "first_below_step": first_below, "lr": lr})


def _first_examples(data: Any, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` training examples of ``data`` as one (x, y) pair."""
    if _is_xy(data):
        got = int(data[0].shape[0])
        x, y = data[0][:n], data[1][:n]
    elif isinstance(data, (sgdata.Dataset, sgdata.MapData)):
        got = data.n_train
        x, y = data.head(n)
    else:
        xs, ys, got = [], [], 0
        for xb, yb in _eval_batches(data, "data"):
            xs.append(xb)
            ys.append(yb)
            got += int(yb.shape[0])
            if got >= n:
                break
        if not xs:
            raise ConfigError("data: holds no examples")
        x, y = torch.cat(xs)[:n], torch.cat(ys)[:n]
    if got < n:
        raise ConfigError(f"overfit_examples must be at most the {got} training examples, "
                          f"got {n}")
    return x, y


def check(model: nn.Module | TrainConfig, loss_fn: Callable | None = None, data: Any = None,
          *, optimizer: torch.optim.Optimizer | None = None, lr: float | None = None,
          num_classes: int | None = None, overfit_examples: int = 50,
          overfit_steps: int = 500, init_tolerance: float = 0.1,
          overfit_loss: float = 0.05) -> list[CheckResult]:
    r"""Sanity checks of SPEC §4.11 (1)–(2).

    Two forms: ``check(model, loss_fn, data, optimizer=None, lr=None, ...)`` on the user's
    own objects (``loss_fn(out, y)`` → per-example losses, shape (B,); ``data``: tensors
    (x, y), an sgdlab Dataset (its training split) or an iterable of (x, y) batches, passed
    over once), restoring the model and the optimizer exactly afterwards (:func:`preserved`);
    and ``check(cfg, ...)``, a fresh run built from a :class:`TrainConfig` (a thin wrapper).

    1. *initial loss*: the mean training-set loss L₀ of the model at initialisation (in
       its current mode, as the first step sees it). A classifier that knows nothing
       predicts p = 1/C for each of C classes, so with balanced classes

           L₀ ≈ −ln(1/C) = ln C   (ln 10 ≈ 2.303).

       PASS when |L₀ − ln C| ≤ ``init_tolerance`` · ln C. The detail gives both numbers, the
       relative gap, and the label entropy −Σ p_c ln p_c when the classes are unbalanced
       (the right reference then). Classification is recognised by integer labels with
       outputs of one more dimension; C is ``num_classes`` or the outputs' last dimension.
       For regression the loss is reported and the comparison is marked not applicable.
    2. *overfit*: the first ``overfit_examples`` training examples, full batch, for
       ``overfit_steps`` steps of the optimizer at its learning rate (constant; ``lr``
       overrides it; without ``optimizer``: Adam at ``lr`` or 1e-3), from the same
       initialisation. A working model and optimizer drive the loss on so few examples to
       ≈ 0. PASS when the final loss ≤ ``overfit_loss`` and, for classification, the
       accuracy on them is 100 %. The detail gives the final loss, the accuracy and the first
       step at which the loss was ≤ ``overfit_loss``.

    Args:
        overfit_examples: size of the sample, 1 … N.
        overfit_steps: steps for the overfit check (≥ 1).
        init_tolerance: allowed relative gap to ln C, in (0, ∞).
        overfit_loss: the "near zero" loss threshold, in (0, ∞).

    Returns:
        ``[initial-loss result, overfit result]`` (:class:`CheckResult`).

    Raises:
        ConfigError: a bad argument (one line naming it) or a bad config.
    """
    n = _integer("overfit_examples", overfit_examples, 1)
    steps = _integer("overfit_steps", overfit_steps, 1)
    tol = _positive_number("init_tolerance", init_tolerance)
    threshold = _positive_number("overfit_loss", overfit_loss)
    if isinstance(model, TrainConfig):
        if loss_fn is not None or data is not None or optimizer is not None:
            raise ConfigError("check: give a TrainConfig alone, or model, loss_fn and data")
        run_cfg = _variant(model, steps=steps, epochs=None, schedule="constant",
                           schedule_options={}, warmup_steps=0, average="none", out=None,
                           tensorboard=False)
        run = train.build(run_cfg)
        if n > run.data.n_train:
            raise ConfigError(f"overfit_examples must be at most the {run.data.n_train} "
                              f"training examples, got {n}")
        run.model.train()
        classification = run.data.task == "classification"
        x, y = run.data.head(n)
        return [_initial_loss_check(run.model, run.per_example_loss_fn,
                                    run.data.iter_batches("train"), classification,
                                    run.data.num_classes, tol),
                _overfit_check(run.model, run.optimizer, run.loss_fn, run.per_example_loss_fn,
                               x, y, steps, threshold, classification, run_cfg.optimizer)]
    _check_objects(model, optimizer, loss_fn, data, need_optimizer=False)
    if lr is not None:
        lr = _positive_number("lr", lr)
    x, y = _on(_device_of(model), *_first_examples(data, n))
    with preserved(model, optimizer):
        with torch.no_grad():
            out = model(x)
        classification = (not y.is_floating_point()) and out.dim() == y.dim() + 1
        c = num_classes if num_classes is not None else (int(out.shape[-1]) if classification
                                                         else None)
        init = _initial_loss_check(model, loss_fn, _eval_batches(data, "data"),
                                   classification, c, tol)
        opt = optimizer
        if opt is None:
            from sgdlab import optim

            opt = optim.create("adam", model.parameters(), lr=1e-3 if lr is None else lr)
        elif lr is not None:
            for group in opt.param_groups:
                group["lr"] = lr
        name = type(opt).__name__ if optimizer is not None else "adam"
        overfit = _overfit_check(model, opt, _mean_loss(loss_fn), loss_fn, x, y, steps,
                                 threshold, classification, name)
    return [init, overfit]
