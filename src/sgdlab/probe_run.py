"""Measure instruments at a run's last checkpoint (``sgdlab probe RUN_DIR``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sgdlab import checkpoint, instruments
from sgdlab import config as cfgmod
from sgdlab.train import Trainer


def probe_checkpoint(run_dir: str | Path, names: list[str],
                     batch_size: int | None = None) -> list[tuple[str, str, float]]:
    """Rebuild the run of ``run_dir`` at ``checkpoints/last.pt``, take one batch from its
    sampler at the checkpointed position, compute one forward/backward there and measure each
    instrument in ``names``. Returns (instrument, quantity, value) rows; nothing is written.
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
    insts = instruments.build(names, every=1)
    x, y = trainer.data.batch(trainer.sampler.next_batch())
    trainer.batch = (x, y)
    trainer.model.train()
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.run.loss_fn(trainer.model(x), y).backward()
    rows: list[tuple[str, str, float]] = []
    for inst in insts:
        inst.after_backward(trainer)
        try:
            record = inst.measure(trainer)
        except ValueError as err:
            raise cfgmod.ConfigError(f"probe {inst.name}: {err}") from None
        rows += [(inst.name, k, float(v)) for k, v in record.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)
                 and "angular_update" not in k]  # no step is taken here
    return rows
