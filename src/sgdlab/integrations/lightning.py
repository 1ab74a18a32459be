"""``MonitorCallback``: sgdlab's instruments inside a ``lightning.Trainer`` (extra
``sgdlab[lightning]``).

::

    from sgdlab.integrations.lightning import MonitorCallback

    cb = MonitorCallback(loss_fn=lambda out, y: F.cross_entropy(out, y, reduction="none"),
                         instruments=["noise_scale", "effective_lr"], every=50)
    trainer = lightning.Trainer(max_steps=1000, callbacks=[cb])
    trainer.fit(module, loader)
    cb.records      # [{"kind": "probe", "name": "noise_scale", "step": t, ...}, ...]

A thin adapter over :class:`sgdlab.Monitor`; the contract of the hooks:

* ``on_fit_start`` — the Monitor is created on ``model(pl_module)`` (default: the
  LightningModule itself) and ``trainer.optimizers[0]``; a state restored from a checkpoint
  (``load_state_dict``, which Lightning calls before ``on_fit_start``) is applied to it.
* ``on_train_batch_start(trainer, pl_module, batch, batch_idx)`` — ``monitor.begin(x, y)``
  with ``(x, y) = batch_to_xy(batch)``, before the micro-batch's ``training_step``. Under
  ``accumulate_grad_batches=k`` it is called k times per optimizer step.
* ``on_before_optimizer_step`` — ``monitor.gradients_ready()``: Lightning calls it once the
  gradients of all k micro-batches are accumulated (and unscaled), before gradient clipping
  and ``optimizer.step()``. The statistics are those of the whole accumulated batch.
* ``on_fit_end`` / ``on_exception`` — ``monitor.close()``.

Step numbers: record ``"step": t`` belongs to the t-th optimizer step, measured at the
parameters at which that step's gradient was computed; after that step
``trainer.global_step == t`` (also after a resume, since the step count is checkpointed).

What the LightningModule must do: its ``training_step`` calls the monitored module once per
micro-batch (``self(x)``, i.e. ``forward``; pass ``model=lambda m: m.net`` to monitor a
submodule instead) and returns a loss whose backward is c·Σ_b loss_fn(output, y)_b, e.g.
``loss_fn(self(x), y).mean()``. Anything else (a different loss, per-example weights) is
detected by the Monitor, which then disables the instrument with one line.

Batches: ``batch_to_xy(batch)`` defaults to ``(batch[0], batch[1])`` for tuples and lists.
A dict batch (e.g. ``{"x": ..., "y": ...}``) needs an explicit ``batch_to_xy``, such as
``lambda b: (b["x"], b["y"])``; ``y`` may be any object ``loss_fn(output, y)`` understands,
and ``x`` is only used for its batch size (the first tensor leaf's first dimension).

State: ``state_dict()`` (the Monitor's state and the records so far) is stored by Lightning
in every checkpoint under this callback's ``state_key``; ``trainer.fit(..., ckpt_path=...)``
restores it, so the step count, the instruments' state and :attr:`records` continue.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sgdlab.integrations import _require

_pl = _require("lightning.pytorch", "lightning", "lightning")

__all__ = ["MonitorCallback", "default_batch_to_xy"]


def default_batch_to_xy(batch: Any) -> tuple[Any, Any]:
    """``(batch[0], batch[1])`` for a tuple or list batch; anything else is refused."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise TypeError(f"MonitorCallback: cannot split a {type(batch).__name__} batch into (x, y); "
                    "pass batch_to_xy=, e.g. lambda b: (b['x'], b['y']) for a dict batch")


class MonitorCallback(_pl.Callback):
    """Run :class:`sgdlab.Monitor` inside ``lightning.Trainer.fit`` (see the module docstring
    for which hook does what, and when).

    Args:
        loss_fn: ``loss_fn(output, y)`` → per-example losses (B,), ``output`` being what the
            monitored module returns and ``y`` the second element of :func:`batch_to_xy`.
        instruments, every, out, **monitor_kwargs: as :class:`sgdlab.Monitor` (``every``
            counts optimizer steps from 1; ``out`` a directory for metrics.jsonl and plots).
        batch_to_xy: ``batch -> (x, y)``; default :func:`default_batch_to_xy`.
        model: ``pl_module -> nn.Module`` to monitor (default: the LightningModule).
    """

    def __init__(self, loss_fn: Callable, instruments: Sequence[Any] = ("noise_scale",),
                 every: Any = 50, out: str | Path | None = None, *,
                 batch_to_xy: Callable[[Any], tuple[Any, Any]] | None = None,
                 model: Callable[[Any], Any] | None = None, **monitor_kwargs: Any) -> None:
        super().__init__()
        self.loss_fn = loss_fn
        self.instruments = list(instruments)
        self.every = every
        self.out = out
        self.batch_to_xy = batch_to_xy if batch_to_xy is not None else default_batch_to_xy
        self.select_model = model
        self.monitor_kwargs = monitor_kwargs
        self.monitor = None
        self._records: list[dict[str, Any]] = []
        self._pending_state: dict[str, Any] | None = None

    # ------------------------------------------------------------------ results

    @property
    def records(self) -> list[dict[str, Any]]:
        """The Monitor's records (``{"kind": "probe", "name": ..., "step": t, ...}``)."""
        return self.monitor.records if self.monitor is not None else self._records

    @property
    def state_key(self) -> str:  # noqa: D102 - Lightning's key for this callback's state
        return self._generate_state_key(instruments=tuple(str(i) for i in self.instruments),
                                        every=str(self.every))

    # ------------------------------------------------------------------ hooks

    def on_fit_start(self, trainer, pl_module) -> None:
        """Create the Monitor on the module and ``trainer.optimizers[0]``."""
        from sgdlab.monitor import Monitor

        if self.monitor is not None:
            self.monitor.close()
        if not trainer.optimizers:
            raise ValueError("MonitorCallback: the LightningModule configured no optimizer")
        if len(trainer.optimizers) > 1:
            raise ValueError("MonitorCallback: one optimizer is supported (got "
                             f"{len(trainer.optimizers)}); manual optimization is not")
        if not pl_module.automatic_optimization:
            raise ValueError("MonitorCallback needs automatic optimization "
                             "(on_before_optimizer_step marks the end of the gradients)")
        net = self.select_model(pl_module) if self.select_model is not None else pl_module
        self.monitor = Monitor(net, trainer.optimizers[0], self.loss_fn,
                               instruments=self.instruments, every=self.every, out=self.out,
                               total_steps=trainer.max_steps if trainer.max_steps > 0 else None,
                               **self.monitor_kwargs)
        if self._pending_state is not None:
            self._apply_state(self._pending_state)
            self._pending_state = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        """``monitor.begin(x, y)`` before this micro-batch's ``training_step``."""
        x, y = self.batch_to_xy(batch)
        self.monitor.begin(x, y)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        """``monitor.gradients_ready()``: all micro-batches accumulated, not yet clipped."""
        self.monitor.gradients_ready()

    def on_fit_end(self, trainer, pl_module) -> None:
        """Emit pending records, remove the hooks, write plots when ``out`` was given."""
        if self.monitor is not None:
            self.monitor.close()

    def on_exception(self, trainer, pl_module, exception) -> None:  # noqa: D102
        if self.monitor is not None:
            self.monitor.close()

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """The Monitor's :meth:`~sgdlab.Monitor.state_dict` and the records so far."""
        if self.monitor is None:
            return dict(self._pending_state or {})
        return {"monitor": self.monitor.state_dict(),
                "records": [dict(r) for r in self.monitor.records]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue from a checkpoint (applied when the Monitor is created, at fit start)."""
        if self.monitor is None:
            self._pending_state = dict(state_dict)
        else:
            self._apply_state(state_dict)

    def _apply_state(self, state: dict[str, Any]) -> None:
        if "monitor" in state:
            self.monitor.load_state_dict(state["monitor"])
        self.monitor.records[:] = [dict(r) for r in state.get("records", [])]
