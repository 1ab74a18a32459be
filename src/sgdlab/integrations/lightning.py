"""``MonitorCallback``: sgdlab's instruments on a ``lightning.Trainer`` (``sgdlab[lightning]``).

::

    from sgdlab.integrations.lightning import MonitorCallback
    cb = MonitorCallback(loss_fn=lambda out, y: F.cross_entropy(out, y, reduction="none"),
                         instruments=["noise_scale", "effective_lr"], every=50)
    lightning.Trainer(callbacks=[cb], accumulate_grad_batches=2).fit(module, loader)
    cb.records        # [{"kind": "probe", "name": "noise_scale", "step": t, ...}, ...]

A thin adapter over :class:`sgdlab.Monitor`; which Lightning hook drives which Monitor call:

* ``on_fit_start`` — the Monitor is built on the module (``model(pl_module)``, default the
  LightningModule itself) and ``trainer.optimizers[0]``; a state restored from a checkpoint
  before that is applied to it.
* ``on_train_batch_start`` — ``monitor.begin(x, y)`` with ``x, y = batch_to_xy(batch)``, before
  each micro-batch's ``training_step``.
* ``on_before_optimizer_step`` — ``monitor.gradients_ready()``: the gradients are final
  (summed over the ``accumulate_grad_batches`` micro-batches, unscaled under AMP, not yet
  clipped). A step's statistics are those of the whole accumulated batch.
* ``state_dict`` / ``load_state_dict`` — the Monitor's state and the records go into Lightning
  checkpoints (``checkpoint["callbacks"][cb.state_key]``); a resumed fit continues the step
  count, the instruments' state and the records.
* ``on_fit_end`` / ``on_exception`` — ``monitor.close()`` (plots when ``out`` is given).

Step numbers: the record of step t holds the numbers of the t-th optimizer step, measured at
the parameters its gradient was computed at; ``t`` equals ``trainer.global_step`` once that
step is done (at the first step of a fit the Monitor's count is aligned to the trainer's
``global_step``, so a fit resumed without this callback's state still numbers steps as
Lightning does). Requirements: automatic optimization, one optimizer (the first is measured),
``training_step`` computes its loss as ``c * loss_fn(module(x), y).sum()`` for some c (``.mean()``
is c = 1/B) from one call of the measured module per micro-batch.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sgdlab.integrations import require

_pl = require("lightning.pytorch", "lightning")

__all__ = ["MonitorCallback", "default_batch_to_xy"]


def default_batch_to_xy(batch: Any) -> tuple[Any, Any]:
    """``(batch[0], batch[1])`` for a tuple or list; for a mapping ``(batch, batch)`` (the whole
    dict is both the input and the target: write ``loss_fn(out, batch)`` to pick the labels);
    anything else raises ``TypeError``."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    if isinstance(batch, Mapping):
        return batch, batch
    raise TypeError(f"MonitorCallback: cannot split a batch of type {type(batch).__name__} into "
                    "(x, y); pass batch_to_xy=")


class MonitorCallback(_pl.Callback):
    """Lightning callback running :class:`sgdlab.Monitor` (see the module docstring for which
    hook does what and what the step number means).

    Args:
        loss_fn: ``loss_fn(output, y)`` → per-example losses (B,), where ``output`` is what the
            measured module returns for ``x``.
        instruments, every, out: as :class:`sgdlab.Monitor`.
        batch_to_xy: ``batch -> (x, y)``; default :func:`default_batch_to_xy`.
        model: ``pl_module -> nn.Module`` measured (default: the LightningModule; give e.g.
            ``lambda m: m.net`` when ``training_step`` calls ``self.net(x)``).
        **monitor_kwargs: passed to :class:`sgdlab.Monitor` (``total_steps``, ``hessian_data``,
            ``tensorboard``, ``on_error``, ...).
    """

    def __init__(self, loss_fn: Callable, instruments: Sequence[Any] = ("noise_scale",),
                 every: Any = 50, out: Any = None, *,
                 batch_to_xy: Callable[[Any], tuple[Any, Any]] | None = None,
                 model: Callable[[Any], Any] | None = None, **monitor_kwargs: Any) -> None:
        super().__init__()
        self.loss_fn = loss_fn
        self.instruments = list(instruments)
        self.every = every
        self.out = out
        self.batch_to_xy = batch_to_xy or default_batch_to_xy
        self.model_fn = model
        self.monitor_kwargs = monitor_kwargs
        self.monitor = None
        self._past: list[dict[str, Any]] = []
        self._pending_state: dict[str, Any] | None = None
        self._open = False

    @property
    def records(self) -> list[dict[str, Any]]:
        """Every record so far (restored ones first), as :attr:`sgdlab.Monitor.records`."""
        return self._past + (self.monitor.records if self.monitor is not None else [])

    # -------------------------------------------------------------- Lightning hooks

    def on_fit_start(self, trainer, pl_module) -> None:
        """Build the Monitor on the module and ``trainer.optimizers[0]``."""
        from sgdlab.monitor import Monitor

        if self.monitor is not None:          # a second fit with the same callback
            self._pending_state = self._pending_state or self.state_dict()
            self.monitor.close()
            self.monitor = None
        if not trainer.optimizers:
            raise ValueError("MonitorCallback: the trainer has no optimizer")
        # precision="16-mixed" with a GradScaler: Lightning unscales p.grad before
        # on_before_optimizer_step while the output gradients the Monitor infers the scale c
        # from still carry the loss scale S, so ĝ = p.grad/(c·B) would be off by 1/S —
        # monitoring is switched off with one line instead (training goes on)
        if getattr(getattr(trainer, "precision_plugin", None), "scaler", None) is not None:
            print("sgdlab: MonitorCallback disabled: precision='16-mixed' with a GradScaler "
                  "is not supported (use 'bf16-mixed' or '32-true')", file=sys.stderr)
            return
        module = self.model_fn(pl_module) if self.model_fn is not None else pl_module
        self.monitor = Monitor(module, trainer.optimizers[0], self.loss_fn,
                               instruments=self.instruments, every=self.every, out=self.out,
                               **self.monitor_kwargs)
        self._open = False
        if self._pending_state is not None:
            state, self._pending_state = self._pending_state, None
            self._apply(state)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        """``monitor.begin(x, y)`` before the micro-batch's forward."""
        mon = self.monitor
        if mon is None:
            return
        if not self._open and mon.step_count != trainer.global_step:
            mon.step_count = trainer.global_step
        x, y = self.batch_to_xy(batch)
        mon.begin(x, y)
        self._open = True

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        """``monitor.gradients_ready()``: gradients final after accumulation, before clipping
        and the optimizer step."""
        if self.monitor is None or not self._open:
            return
        self._open = False
        self.monitor.gradients_ready()

    def on_fit_end(self, trainer, pl_module) -> None:
        """Close the Monitor (pending records emitted, hooks removed, plots drawn)."""
        if self.monitor is not None:
            self.monitor.close()

    def on_exception(self, trainer, pl_module, exception) -> None:
        """Drop a step in progress and close the Monitor."""
        if self.monitor is not None:
            self.monitor.cancel()
            self.monitor.close()

    # -------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, Any]:
        """The Monitor's state and all records (saved in Lightning checkpoints)."""
        if self.monitor is None:
            return dict(self._pending_state) if self._pending_state else {}
        return {"monitor": self.monitor.state_dict(), "records": list(self.records)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; applied when the Monitor is built if it does not exist
        yet (Lightning restores callbacks before or after ``on_fit_start``)."""
        if self.monitor is None:
            self._pending_state = dict(state_dict)
        else:
            self._apply(state_dict)

    def _apply(self, state: dict[str, Any]) -> None:
        self.monitor.load_state_dict(state["monitor"])
        self.monitor.records.clear()
        self._past = [dict(r) for r in state.get("records", [])]
