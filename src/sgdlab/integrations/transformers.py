"""``MonitorCallback``: sgdlab's instruments on a Hugging Face ``transformers.Trainer``
(``sgdlab[hf]``).

::

    from sgdlab.integrations.transformers import MonitorCallback

    def per_example_ce(outputs, inputs):          # (B,) per-example losses
        return F.cross_entropy(outputs.logits, inputs["labels"], reduction="none")

    cb = MonitorCallback(loss_fn=per_example_ce, instruments=["noise_scale"], every=50)
    transformers.Trainer(model=model, args=args, train_dataset=ds, callbacks=[cb]).train()
    cb.records        # [{"kind": "probe", "name": "noise_scale", "step": t, ...}, ...]

``loss_fn(outputs, inputs)``: ``outputs`` is what ``model(**inputs)`` returned (a
``ModelOutput``), ``inputs`` the keyword arguments of that call (the collated micro-batch,
``labels`` included); it returns per-example losses of shape (B,). The loss the model computes
itself (``outputs.loss``, backpropagated by the Trainer) must be a multiple of their sum —
the mean cross-entropy of a classifier is (1/B)·Σ_b ℓ_b.

Which Trainer event drives which :class:`sgdlab.Monitor` call:

* ``on_train_begin`` — the Monitor is built on ``model`` and the (unwrapped) ``optimizer``
  given as keyword arguments; a forward pre-hook (``with_kwargs=True``) on the model sees
  each micro-batch's inputs.
* ``on_step_begin`` (first micro-batch of an optimizer step) and ``on_substep_end`` (each
  further micro-batch under ``gradient_accumulation_steps``) — ``monitor.begin``, before the
  micro-batch's forward; the pre-hook hands that forward's inputs to it.
* ``on_pre_optimizer_step`` — ``monitor.gradients_ready()``. The Trainer has clipped the
  gradients by then (``max_grad_norm``, default 1.0); on steps where something is due, the
  gradients as the backward left them are kept aside (one copy per micro-batch) and are in
  ``p.grad`` while the Monitor measures, then the clipped ones are put back: the statistics
  are of the unclipped gradient, training is unchanged.
* ``on_train_end`` — ``monitor.close()``.

How the Trainer scales the loss under accumulation does not matter: the Monitor infers the
scale c of each micro-batch's backward from the output gradients (loss / k, or the model's
``num_items_in_batch`` normalisation). Step numbers: the record of step t holds the numbers
of the t-th optimizer step at the parameters its gradient was computed at; t equals
``state.global_step`` after that step. The curvature instruments (``sharpness``, any k, and
``hessian_trace``) run their HVPs as ``model(**inputs)`` on the step's last micro-batch
(``Monitor.curvature_problem``; the Monitor's ``hessian_data`` and ``subset`` do not apply).
``curvature=ggn`` needs a model whose output is one tensor; a transformers model returns a
``ModelOutput``, so the instrument is disabled with one line. Single process (no DDP /
DataParallel).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from sgdlab.integrations import require

_tf = require("transformers", "hf")

__all__ = ["MonitorCallback"]


class _Inputs(list):
    """The micro-batch's inputs, filled in by the forward pre-hook (a list: a pytree node, so
    the Monitor finds the batch size among its tensors)."""


class _KwargsModel(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: _Batch):
        return self.model(**batch.inputs)


class _Batch:
    """Dict inputs with the ``shape[0]`` and slicing the HVP code uses."""

    def __init__(self, inputs: Mapping[str, Any]) -> None:
        self.inputs = dict(inputs)
        n = next(v.shape[0] for v in self.inputs.values()
                 if isinstance(v, torch.Tensor) and v.dim() > 0)
        self.shape = (n,)
        self.n = n

    def __getitem__(self, sl):
        return _Batch({k: v[sl] if isinstance(v, torch.Tensor) and v.dim() > 0
                       and v.shape[0] == self.n else v for k, v in self.inputs.items()})


class MonitorCallback(_tf.TrainerCallback):
    """Hugging Face callback running :class:`sgdlab.Monitor` (see the module docstring for the
    events, ``loss_fn(outputs, inputs)`` and what the step number means).

    Args:
        loss_fn: ``loss_fn(outputs, inputs)`` → per-example losses (B,).
        instruments, every, out: as :class:`sgdlab.Monitor`.
        **monitor_kwargs: passed to :class:`sgdlab.Monitor` (``total_steps``, ``on_error``, ...).
    """

    def __init__(self, loss_fn: Callable, instruments: Sequence[Any] = ("noise_scale",),
                 every: Any = 50, out: Any = None, **monitor_kwargs: Any) -> None:
        self.loss_fn = loss_fn
        self.instruments = list(instruments)
        self.every = every
        self.out = out
        self.monitor_kwargs = monitor_kwargs
        self.monitor = None
        self._hook = None
        self._holder: _Inputs | None = None
        self._measuring = False
        self._open = False
        self._clip = False
        self._stash: dict[int, torch.Tensor] = {}
        self._stash_handles: list = []

    @property
    def records(self) -> list[dict[str, Any]]:
        """The Monitor's records (``[]`` before training)."""
        return self.monitor.records if self.monitor is not None else []

    # -------------------------------------------------------------- the Monitor's loss

    def _monitor_loss(self, outputs, holder: _Inputs):
        """loss_fn(outputs, inputs), plus a zero-valued term giving ``outputs.loss`` (a leaf
        here: the Monitor evaluates this on detached outputs) the derivative Σℓ/loss, so the
        reference output gradient is c·δ for the model's own loss too."""
        if not holder:
            raise ValueError("the model's forward was not seen for this micro-batch")
        ell = self.loss_fn(outputs, holder[0])
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else None
        if (isinstance(ell, torch.Tensor) and ell.dim() == 1 and isinstance(loss, torch.Tensor)
                and loss.dim() == 0 and loss.requires_grad and loss.grad_fn is None):
            lv = loss.detach()
            if lv != 0:
                ell = ell + (loss - lv) * (ell.detach().sum() / lv) / ell.shape[0]
        return ell

    # -------------------------------------------------------------- hooks

    def _pre_hook(self, module, args, kwargs):
        holder = self._holder
        if (holder is None or holder or self._measuring or not module.training
                or not torch.is_grad_enabled()):
            return None
        holder.append(dict(kwargs))
        return None

    def _begin(self) -> None:
        self._holder = _Inputs()
        self.monitor.begin(self._holder, self._holder)

    def _keep_grad(self, p: torch.Tensor) -> None:
        self._stash[id(p)] = p.grad.detach().clone()

    # -------------------------------------------------------------- Trainer events

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        """Build the Monitor on ``model`` and ``optimizer``; hook the model's forward."""
        from sgdlab.monitor import Monitor

        if model is None:
            raise ValueError("MonitorCallback: the Trainer passed no model")
        self.monitor = Monitor(model, optimizer,
                               self._monitor_loss, instruments=self.instruments,
                               every=self.every, out=self.out, **self.monitor_kwargs)
        self.monitor.curvature_problem = self._curvature_problem
        self.monitor.step_count = state.global_step
        self._hook = model.register_forward_pre_hook(self._pre_hook, with_kwargs=True)
        self._clip = bool(args.max_grad_norm) and args.max_grad_norm > 0

    def _curvature_problem(self, monitor: Any) -> tuple[Any, Callable, _Batch, _Batch]:
        """The curvature instruments' problem (``sharpness``, ``hessian_trace``; not GGN):
        ``model(**inputs)`` of the step's last micro-batch, ``loss_fn(outputs, inputs)``."""
        holder = monitor.batch[0]
        if not holder:
            raise ValueError("no inputs were seen for this step")
        batch = _Batch(holder[0])
        return (_KwargsModel(monitor.model), lambda out, b: self.loss_fn(out, b.inputs),
                batch, batch)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        """First micro-batch of optimizer step ``state.global_step + 1``: ``begin``."""
        if self.monitor is None:
            return
        self.monitor.step_count = state.global_step
        t = state.global_step + 1
        if self._clip and self.monitor.due(t) and model is not None:
            self._stash = {}
            self._stash_handles = [p.register_post_accumulate_grad_hook(self._keep_grad)
                                   for p in model.parameters() if p.requires_grad]
        self._begin()
        self._open = True

    def on_substep_end(self, args, state, control, **kwargs):
        """A micro-batch's backward is done and another follows: ``begin`` for it."""
        if self.monitor is not None and self._open:
            self._begin()

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        """Gradients final (clipped ones swapped for the unclipped on due steps):
        ``gradients_ready``."""
        if self.monitor is None or not self._open:
            return
        self._open = False
        self._holder = None
        for h in self._stash_handles:
            h.remove()
        self._stash_handles = []
        swapped = []
        if self._stash and model is not None:
            for p in model.parameters():
                kept = self._stash.get(id(p))
                if kept is not None and p.grad is not None:
                    swapped.append((p, p.grad))
                    p.grad = kept
        self._stash = {}
        self._measuring = True
        try:
            self.monitor.gradients_ready()
        finally:
            self._measuring = False
            for p, g in swapped:
                p.grad = g

    def on_train_end(self, args, state, control, **kwargs):
        """Close the Monitor and remove the forward hook."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        for h in self._stash_handles:
            h.remove()
        self._stash_handles = []
        if self.monitor is not None:
            self.monitor.close()
