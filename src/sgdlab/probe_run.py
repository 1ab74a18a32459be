"""Measure instruments at a run's last checkpoint (``sgdlab probe RUN_DIR``)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from sgdlab import checkpoint, instruments
from sgdlab import config as cfgmod
from sgdlab.monitor import Monitor
from sgdlab.train import Trainer


def _warn(message: str) -> None:
    print(f"sgdlab: warning: {message}", file=sys.stderr)


def _run_files(run_dir: Path) -> tuple[Path, Path]:
    """``config.yaml`` and ``checkpoints/last.pt`` of ``run_dir``, or a one-line
    :class:`~sgdlab.config.ConfigError` saying what is missing."""
    if not run_dir.exists():
        raise cfgmod.ConfigError(f"run_dir: {run_dir} does not exist")
    if not run_dir.is_dir():
        raise cfgmod.ConfigError(f"run_dir: {run_dir} is a file, not a run directory")
    cfg_path, ckpt_path = run_dir / "config.yaml", run_dir / "checkpoints" / "last.pt"
    if not cfg_path.is_file():
        raise cfgmod.ConfigError(f"run_dir: {run_dir} holds no config.yaml (is it a run "
                                 "directory written by sgdlab train?)")
    if not ckpt_path.is_file():
        raise cfgmod.ConfigError(f"run_dir: {run_dir} holds no checkpoints/last.pt (the run "
                                 "stopped before its first checkpoint)")
    return cfg_path, ckpt_path


def _batchnorm_in_training(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
               for m in model.modules())


def measurable(model: nn.Module, items: list[instruments.Instrument],
               warn: Callable[[str], None] = _warn) -> list[instruments.Instrument]:
    """The instruments that are defined for ``model`` in training mode; each one that is not
    (per-example statistics under BatchNorm in training mode: the examples of a batch are
    coupled) is dropped with one ``warn`` line."""
    from sgdlab.probes.per_example import BATCHNORM_MESSAGE

    if not _batchnorm_in_training(model):
        return items
    kept = []
    for inst in items:
        if any(inst.needs_stats):
            warn(f"{inst.name} skipped: {BATCHNORM_MESSAGE}")
        else:
            kept.append(inst)
    return kept


def probe_checkpoint(run_dir: str | Path, names: list[str], batch_size: int | None = None,
                     warn: Callable[[str], None] = _warn) -> list[tuple[str, str, float]]:
    """Rebuild the run of ``run_dir`` at ``checkpoints/last.pt``, take the next batch of its
    sampler at the checkpointed position (with ``batch_size`` other than the run's: the
    first batch of a fresh sampler of that size), compute one forward/backward there under a
    :class:`~sgdlab.Monitor` measuring each instrument in ``names`` (no optimizer step, so no
    angular update). An instrument that is undefined for the model (per-example quantities
    under BatchNorm) is skipped with one ``warn`` line; the others are measured.
    Returns (instrument, quantity, value) rows; nothing is written.
    """
    if not names:
        raise cfgmod.ConfigError("probe: give at least one instrument, from "
                                 f"{', '.join(instruments.available())}")
    items = instruments.create(names)
    run_dir = Path(run_dir)
    cfg_path, ckpt_path = _run_files(run_dir)
    overrides: dict[str, Any] = {"out": None, "probes": []}
    if batch_size is not None:
        overrides["batch_size"] = batch_size
    cfg = cfgmod.resolve(cfg_path, **overrides)
    run_batch = cfgmod.resolve(cfg_path, out=None, probes=[]).batch_size
    trainer = Trainer(cfg, progress=False)
    ckpt = checkpoint.load(ckpt_path, map_location=trainer.device)
    try:
        trainer.model.load_state_dict(ckpt["model"])
        if cfg.batch_size == run_batch:
            trainer.batches.load_state_dict(ckpt["sampler"])
    except (KeyError, RuntimeError, ValueError, TypeError) as err:
        raise cfgmod.ConfigError(f"run_dir: {ckpt_path} does not fit the run of config.yaml "
                                 f"({cfgmod._first_line(err)})") from None
    trainer.step = int(ckpt.get("step", 0))
    trainer.model.train()
    items = measurable(trainer.model, items, warn)
    if not items:
        return []
    x, y = trainer.batches.next()
    trainer.batches.close()
    monitor = Monitor(trainer.model, trainer.optimizer, trainer.run.per_example_loss_fn,
                      instruments=items, every=1, hessian_data=trainer.monitor.hessian_data,
                      on_error="raise")
    monitor.step_count = trainer.step
    trainer.optimizer.zero_grad(set_to_none=True)
    try:
        with monitor.step(x, y):
            trainer.run.loss_fn(trainer.model(x), y).backward()
        monitor.close()  # no optimizer step: the records are emitted here
    except ValueError as err:
        raise cfgmod.ConfigError(f"probe: {err}") from None
    rows: list[tuple[str, str, float]] = []
    for record in monitor.records:
        rows += [(record["name"], k, float(v)) for k, v in record.items()
                 if k not in ("kind", "name", "step") and isinstance(v, (int, float))
                 and not isinstance(v, bool)]
    return rows
