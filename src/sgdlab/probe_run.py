"""Measure instruments at a run's last checkpoint (``sgdlab probe RUN_DIR``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sgdlab import checkpoint, instruments
from sgdlab import config as cfgmod
from sgdlab.monitor import Monitor
from sgdlab.train import Trainer


def probe_checkpoint(run_dir: str | Path, names: list[str],
                     batch_size: int | None = None) -> list[tuple[str, str, float]]:
    """Rebuild the run of ``run_dir`` at ``checkpoints/last.pt``, take one batch from its
    sampler at the checkpointed position, compute one forward/backward there under a
    :class:`~sgdlab.Monitor` measuring each instrument in ``names`` (no optimizer step, so no
    angular update). Returns (instrument, quantity, value) rows; nothing is written.
    """
    run_dir = Path(run_dir)
    cfg_path, ckpt_path = run_dir / "config.yaml", run_dir / "checkpoints" / "last.pt"
    if not cfg_path.is_file() or not ckpt_path.is_file():
        raise cfgmod.ConfigError(f"run_dir: {run_dir} holds no config.yaml and "
                                 "checkpoints/last.pt (is it a run directory?)")
    overrides: dict[str, Any] = {"out": None, "probes": []}
    if batch_size is not None:
        overrides["batch_size"] = batch_size
    cfg = cfgmod.resolve(cfg_path, **overrides)
    trainer = Trainer(cfg, progress=False)
    ckpt = checkpoint.load(ckpt_path, map_location=trainer.device)
    trainer.model.load_state_dict(ckpt["model"])
    trainer.step = ckpt["step"]
    hessian = trainer.monitor.hessian_data
    x, y = trainer.data.batch(trainer.sampler.next_batch())
    monitor = Monitor(trainer.model, trainer.optimizer, trainer.run.per_example_loss_fn,
                      instruments=instruments.create(names), every=1, hessian_data=hessian,
                      on_error="raise")
    monitor.step_count = trainer.step
    trainer.model.train()
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
