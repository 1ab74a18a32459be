"""``sgdlab.Monitor``: sgdlab's instruments in any training loop (SPEC §3, §4.3, §4.5).

::

    monitor = sgdlab.Monitor(model, optimizer, loss_fn, instruments=["noise_scale", "sharpness",
                             "effective_lr"], every=50, out="runs/mine")
    for x, y in loader:
        optimizer.zero_grad()
        with monitor.step(x, y):                    # loss_fn returns per-example losses
            loss_fn(model(x), y).mean().backward()  # the user's own backward
        optimizer.step()
    monitor.close()                                 # plots; monitor.records: list of dicts

See :class:`Monitor` for the low-level API (``begin`` / ``gradients_ready``) that framework
adapters and sgdlab's own Trainer drive.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

from sgdlab.metrics_log import write_scalars
from sgdlab.probes.per_example import PerExampleStats

__all__ = ["Monitor", "SCALE_RTOL"]

#: ‖δ_user − c·δ_ref‖ ≤ SCALE_RTOL·‖δ_user‖ is required of the user's backward.
SCALE_RTOL = 1e-4


class _SafeStats(PerExampleStats):
    """PerExampleStats whose hooks never raise into the user's forward or backward: the first
    error is kept (and all further hooks do nothing) until :meth:`check` raises it."""

    def _reset(self) -> None:
        super()._reset()
        self.failure: BaseException | None = None

    def _guard(self, fn, *args):
        if self.failure is not None:
            return None
        try:
            return fn(*args)
        except Exception as err:  # noqa: BLE001 - deferred to check()
            self.failure = err
            if self._mode is not None:
                with contextlib.suppress(Exception):
                    self._stop_tracking()
            return None

    def _push(self, module, args, kwargs):
        return self._guard(super()._push, module, args, kwargs)

    def _pop(self, module, args, kwargs, output):
        return self._guard(super()._pop, module, args, kwargs, output)

    def _layer_hook(self, module, args, kwargs, output):
        return self._guard(super()._layer_hook, module, args, kwargs, output)

    def _fallback_hook(self, module, args, kwargs, output):
        return self._guard(super()._fallback_hook, module, args, kwargs, output)

    def _bn_pre_hook(self, module, args):
        return self._guard(super()._bn_pre_hook, module, args)

    def _grad_hook(self, layer, use, i):
        hook = super()._grad_hook(layer, use, i)
        return lambda grad: self._guard(hook, grad)

    def check(self) -> None:
        """Raise the first error a hook met (ValueError/RuntimeError naming the module)."""
        if self.failure is not None:
            raise self.failure


def _batch_len(x: Any) -> int | None:
    """The first dimension of the first tensor (with a dimension) in ``x``."""
    if isinstance(x, torch.Tensor):         # the common case, without pytree
        return int(x.shape[0]) if x.dim() > 0 else None
    for leaf in pytree.tree_leaves(x):
        if isinstance(leaf, torch.Tensor) and leaf.dim() > 0:
            return int(leaf.shape[0])
    return None


_U64 = 1 << 64


def unwrap_optimizer(optimizer: Any) -> Any:
    """The torch optimizer inside a wrapper that steps it (accelerate's
    ``AcceleratedOptimizer``, Lightning's ``LightningOptimizer``: ``.optimizer`` /
    ``._optimizer``), else ``optimizer`` itself: its step post-hook and param_groups are the
    inner optimizer's."""
    for attr in ("optimizer", "_optimizer"):
        inner = getattr(optimizer, attr, None)
        if isinstance(inner, torch.optim.Optimizer) and inner is not optimizer:
            return inner
    return optimizer


def _cross_entropy_output_grad(ell: torch.Tensor, inputs: list[torch.Tensor]
                               ) -> list[torch.Tensor] | None:
    """∂(Σ_b ℓ_b)/∂logits in closed form when ``ell`` is ``F.cross_entropy(logits, y,
    reduction="none")`` of a (B, C) leaf ``logits`` without class weights or label smoothing,
    read from ell's own autograd graph: softmax(logits) − onehot(y), i.e. exp of the log-softmax
    that the graph saved, minus 1 at the targets (what autograd's backward would compute, in
    two kernels instead of a pass of the autograd engine). ``None`` for anything else (then
    the caller backpropagates), including targets equal to ``ignore_index``."""
    if len(inputs) != 1 or ell.dim() != 1:
        return None
    nll = ell.grad_fn
    if type(nll).__name__ != "NllLossBackward0" or nll._saved_reduction != 0 or (
            nll._saved_weight is not None):
        return None
    (ls, _), = nll.next_functions
    if ls is None or type(ls).__name__ != "LogSoftmaxBackward0":
        return None
    (leaf, _), = ls.next_functions
    x = inputs[0]
    if getattr(leaf, "variable", None) is not x or x.dim() != 2 or ls._saved_dim not in (1, -1):
        return None
    ignore = nll._saved_ignore_index
    ignore = ignore - _U64 if ignore >= _U64 // 2 else ignore
    if 0 <= ignore < x.shape[1]:    # a class index that is ignored: let autograd mask it
        return None
    target = nll._saved_target
    g = ls._saved_result.detach().exp()    # no graph for what follows
    try:        # a target equal to ignore_index (out of range) raises: autograd masks it
        g.scatter_add_(1, target.reshape(-1, 1), g.new_full((g.shape[0], 1), -1.0))
    except (RuntimeError, IndexError):
        return None
    return [g]


class _Schedule:
    """When an instrument is due: every k steps, log-spaced, or a callable step → bool."""

    def __init__(self, every: int | str | Callable[[int], bool], total_steps: int | None) -> None:
        from sgdlab.instruments import log_spaced_steps

        self.every: int | None = None
        self.steps: set[int] | None = None
        self.fn: Callable[[int], bool] | None = None
        if callable(every):
            self.fn = every
        elif every == "log":
            self.steps = log_spaced_steps(total_steps if total_steps else 10**9)
        elif isinstance(every, int) and not isinstance(every, bool) and every >= 1:
            self.every = every
        else:
            raise ValueError(f"every must be an integer >= 1, 'log' or a callable step -> bool, "
                             f"got {every!r}")

    def __call__(self, step: int) -> bool:
        if self.every is not None:
            return step % self.every == 0
        if self.steps is not None:
            return step in self.steps
        return bool(self.fn(step))


class _Step:
    """What :meth:`Monitor.step` returns (a class, not a generator: cheaper per step)."""

    __slots__ = ("monitor",)

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    def __enter__(self) -> Monitor:
        return self.monitor

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.monitor.gradients_ready()
        else:
            self.monitor.cancel()


class Monitor:
    """Instruments on the user's model, optimizer and loop (SPEC §3, §4.3, §4.5).

    Args:
        model: the ``nn.Module`` trained (a ``DistributedDataParallel`` wrapper is accepted:
            its ``.module`` is measured).
        optimizer: the ``torch.optim.Optimizer`` stepping it (``None``: no learning rate, no
            angular update).
        loss_fn: ``loss_fn(model(x), y)`` → per-example losses, shape (B,).
        instruments: names (``effective_lr``, ``noise_scale``, ``sharpness``, ``snr``,
            ``ddp_noise_scale``; see :mod:`sgdlab.instruments`) or Instrument objects.
        every: schedule of the instruments without their own: an integer k (steps k, 2k, …),
            ``"log"`` (:func:`sgdlab.instruments.log_spaced_steps` up to ``total_steps``) or a
            callable ``step -> bool``. Steps count from 1.
        out: a directory for ``metrics.jsonl`` (via :class:`sgdlab.metrics_log.MetricsWriter`)
            and, at :meth:`close`, ``plots/probe_NAME.png``; ``None``: records stay in memory.
        total_steps: the run's length, for ``every="log"`` (else log-spaced without end).
        hessian_data: a fixed ``(x, y)`` for the curvature instruments (``sharpness``,
            ``hessian_trace``; default: the step's batch).
        tensorboard: also write scalars under ``out/tensorboard`` (needs tensorboard).
        log: a callable receiving each record (sgdlab's Trainer passes its own ``log``).
        on_error: ``"disable"`` (one line ``sgdlab: instrument NAME disabled: <reason>`` on
            stderr, training continues) or ``"raise"``.

    Records: ``{"kind": "probe", "name": NAME, "step": t, ...numbers}`` in :attr:`records`.
    The numbers of step t belong to the parameters at which the t-th batch's gradient was
    computed: they are measured in :meth:`gradients_ready`, before ``optimizer.step()``.
    The records of step t are emitted when ``optimizer.step()`` returns (a step post-hook,
    which also gives ``effective_lr`` its angular update), or at the next :meth:`begin` /
    :meth:`close` when no optimizer step followed.

    Low-level API (for framework adapters; :meth:`step` is ``begin`` + ``gradients_ready``):

    * ``begin(x, y)`` — before each micro-batch's forward. If something medium-tier is due
      at the coming step it arms hooks: :class:`~sgdlab.probes.per_example.PerExampleStats`
      (``reduction="sum"``), a forward hook on the root model capturing its output, tensor
      hooks on that output capturing δ_user = ∂(user's scalar)/∂output. Nothing due: no hook,
      O(1) Python.
    * ``gradients_ready()`` — the step's gradients are final (after accumulation), the
      optimizer has not stepped: measure, record, count the step (:attr:`step_count`).
    * ``step(x, y)`` — a context manager: ``begin`` on entry, ``gradients_ready`` on normal
      exit; if the body raised, nothing is measured. Hooks are always removed.
    * ``cancel()`` — drop an armed step (hooks removed, nothing measured or counted).
    * ``close()``, ``records``, ``step_count``, ``state_dict()`` / ``load_state_dict()``.

    Scale of the user's backward: with reduction="sum" the statistics are those of δ for
    the scalar actually backpropagated. If it is c·Σ_b ℓ_b (c = 1/B for ``.mean()``, 1 for
    ``.sum()``, 1/(B·k) under k-step accumulation), c is inferred per micro-batch as
    c = ⟨δ_user, δ_ref⟩/⟨δ_ref, δ_ref⟩ with δ_ref = ∂(Σ_b loss_fn(out, y)_b)/∂out on the
    detached output; ‖δ_user − c·δ_ref‖ ≤ 1e-4‖δ_user‖ is required, else the instrument is
    disabled (the backward is not c·Σ loss_fn(model(x), y)). Norms and Σ_b g_b² are divided
    by c², micro-batches are summed (B = total) and ĝ = p.grad / (c·B).

    Requirements of the medium tier (else the instrument is disabled with one line): the
    model is called once, with gradients enabled, per micro-batch; the backward is of
    c·Σ_b loss_fn(model(x), y)_b only. A penalty on the parameters added to the loss
    (``loss + λ‖w‖²``) cannot be seen at the output and would enter ĝ: use the optimizer's
    ``weight_decay`` instead.

    Monitoring never changes training: no RNG is drawn (sharpness runs in eval mode with the
    RNG state forked), ``p.grad`` is not modified.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                 loss_fn: Callable | None = None,
                 instruments: Sequence[Any] = ("noise_scale",), every: Any = 50,
                 out: str | Path | None = None, *, total_steps: int | None = None,
                 hessian_data: tuple[Any, Any] | None = None, tensorboard: bool = False,
                 log: Callable[[dict[str, Any]], None] | None = None,
                 on_error: str = "disable") -> None:
        from sgdlab import instruments as inst_mod

        if on_error not in ("disable", "raise"):
            raise ValueError(f"on_error must be 'disable' or 'raise', got {on_error!r}")
        ddp = nn.parallel.DistributedDataParallel
        self.ddp_model: nn.Module | None = model if isinstance(model, ddp) else None
        self.model: nn.Module = model.module if isinstance(model, ddp) else model
        self.optimizer = unwrap_optimizer(optimizer)
        self.loss_fn = loss_fn
        # read once (walking the module tree each step costs more than the statistics of a
        # small model); requires_grad is checked at each use
        self._named_params: list[tuple[str, nn.Parameter]] = list(self.model.named_parameters())
        self.hessian_data = hessian_data
        #: for framework adapters whose model is not ``model(x)`` with ``loss_fn(out, y)``
        #: (Hugging Face: ``model(**inputs)``): a callable ``monitor → (model, loss_fn, x, y)``
        #: giving the curvature instruments their problem (see
        #: :func:`sgdlab.instruments.curvature_measurement`); None: the Monitor's own
        self.curvature_problem: Callable[[Monitor], tuple[Any, Any, Any, Any]] | None = None
        self.on_error = on_error
        self.schedule = _Schedule(every, total_steps)
        self.total_steps = total_steps
        self.instruments = inst_mod.create(instruments)
        dist = torch.distributed
        self.rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        self.world = (dist.get_world_size() if dist.is_available() and dist.is_initialized()
                      else 1)
        self.records: list[dict[str, Any]] = []
        self.step_count = 0
        self.batch: tuple[Any, Any] | None = None
        #: examples in each micro-batch of the step in progress (due steps only)
        self.micro_sizes: list[int | None] = []
        self._log = log
        self._out = Path(out) if out is not None else None
        self._writer = None
        self._tb = None
        if self._out is not None:
            from sgdlab.metrics_log import MetricsWriter

            self._writer = MetricsWriter(self._out / "metrics.jsonl")
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError:
                    raise ValueError("tensorboard: the tensorboard package is not installed "
                                     "(pip install 'sgdlab[tensorboard]')") from None

                self._tb = SummaryWriter(log_dir=str(self._out / "tensorboard"))
        self._stats: dict[tuple[bool, bool, bool], _SafeStats] = {}
        self._in_step = False
        self._due: list = []
        self._pending: list[tuple[Any, dict[str, Any]]] = []
        self._armed: _SafeStats | None = None
        self._fwd_handle = None
        self._capture: dict[str, Any] = {}
        self._micro: list[dict[str, Any]] = []
        self._grad_before: dict[int, torch.Tensor] = {}
        self._snapped = False
        self._post_handle = None
        if (self.instruments and self.optimizer is not None
                and hasattr(self.optimizer, "register_step_post_hook")):
            self._post_handle = self.optimizer.register_step_post_hook(self._after_optimizer)
        self._closed = False
        for inst in self.instruments:
            self._guarded(inst, inst.setup, self)

    # ------------------------------------------------------------------ public API

    def step(self, x: Any, y: Any) -> _Step:
        """Context manager: ``begin(x, y)``; the body (forward and the user's backward);
        ``gradients_ready()`` on normal exit. If the body raises, nothing is measured, the
        step is not counted and the hooks are removed."""
        self.begin(x, y)
        return _Step(self)

    def begin(self, x: Any, y: Any) -> None:
        """Before a micro-batch's forward: starts step ``step_count + 1`` (or continues it,
        under gradient accumulation) and arms the hooks when a medium-tier instrument is due."""
        if self._pending:
            self._flush()
        if self._in_step:
            if self._due:
                self._micro_done()
                self.micro_sizes.append(_batch_len(x))
            if self._armed is not None:
                self._harvest()     # the previous micro-batch's backward is done
                self.batch = (x, y)
                self._arm()
            self.batch = (x, y)
            return
        self.batch = (x, y)
        self._in_step = True
        due = self._due_at(self.step_count + 1)
        self._due = due
        if not due:
            return
        self.micro_sizes = [_batch_len(x)]
        for inst in due:
            self._guarded(inst, inst.begin, self)
        self._micro = []
        self._grad_before, self._snapped = {}, False
        self._arm()

    def gradients_ready(self) -> None:
        """The step's gradients are final and the optimizer has not stepped: measure every
        due instrument, queue its record and count the step."""
        if not self._in_step:
            raise RuntimeError("gradients_ready() without begin(x, y) for this step")
        self._in_step = False
        if self._due:
            self._micro_done()
        if self._armed is not None:
            self._harvest()
        t = self.step_count + 1
        self.step_count = t
        due, self._due = self._due, []
        for inst in due:
            if inst.disabled or (self.rank != 0 and not inst.all_ranks):
                continue
            rec = self._guarded(inst, inst.measure, self)
            if rec is not None and self.rank == 0:
                self._pending.append((inst, {"kind": "probe", "name": inst.name, "step": t,
                                             **rec}))
        self._micro = []
        if self._pending and self._post_handle is None:
            self._flush()

    def cancel(self) -> None:
        """Drop the step in progress: hooks removed, nothing measured, the step not counted."""
        self._disarm(discard=True)
        self._in_step = False
        self._due, self._micro = [], []

    def close(self) -> None:
        """Emit pending records, remove every hook, close the sinks and draw
        ``plots/probe_NAME.png`` when ``out`` was given."""
        if self._closed:
            return
        self._closed = True
        self.cancel()
        self._flush()
        for inst in self.instruments:
            with contextlib.suppress(Exception):
                inst.teardown(self)
        if self._post_handle is not None:
            self._post_handle.remove()
            self._post_handle = None
        if self._tb is not None:
            self._tb.close()
        if self._writer is not None:
            self._writer.close()
            try:
                from sgdlab.plots import plot_run

                plot_run(self._out)
            except Exception as err:  # noqa: BLE001 - plots are a convenience
                print(f"sgdlab: plots not written ({err})", file=sys.stderr)

    def due(self, step: int | None = None) -> bool:
        """Whether an instrument is due at ``step`` (default: the coming step,
        ``step_count + 1``) — e.g. to skip work of one's own on the other steps."""
        return bool(self._due_at(self.step_count + 1 if step is None else int(step)))

    def set_ddp_model(self, ddp_model: nn.Module) -> None:
        """The DistributedDataParallel wrapper of :attr:`model` (for ``ddp_noise_scale``'s
        communication hook), when it is created after the Monitor."""
        self.ddp_model = ddp_model
        for inst in self.instruments:
            self._guarded(inst, inst.setup, self)

    def state_dict(self) -> dict[str, Any]:
        """Step count, disabled instruments and each instrument's own state."""
        return {"step_count": self.step_count,
                "instruments": [{"name": i.name, "disabled": i.disabled,
                                 "state": i.state_dict()} for i in self.instruments]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`: the same instruments, in the same order."""
        names = [s["name"] for s in state["instruments"]]
        if names != [i.name for i in self.instruments]:
            raise ValueError(f"state_dict instruments {names} differ from this Monitor's "
                             f"{[i.name for i in self.instruments]}")
        self.step_count = int(state["step_count"])
        for inst, s in zip(self.instruments, state["instruments"], strict=True):
            inst.disabled = bool(s["disabled"])
            inst.load_state_dict(s["state"])

    # ------------------------------------------------------------------ for instruments

    @property
    def lr(self) -> float | None:
        """The first parameter group's learning rate (``None`` without an optimizer)."""
        return None if self.optimizer is None else self.optimizer.param_groups[0]["lr"]

    @property
    def weight_decay(self) -> float:
        """The first parameter group's weight decay (0 without an optimizer)."""
        if self.optimizer is None:
            return 0.0
        return self.optimizer.param_groups[0].get("weight_decay", 0.0)

    def example_stats(self, grads: bool = True, gram: bool = False) -> dict[str, Any]:
        """Per-example statistics of this step's batch from the user's backward, summed over
        micro-batches and divided by c² (SPEC §3): ``batch_size``, ``scale`` (c), ``loss``
        (mean ℓ_b), ``sq_norms`` ({name: Σ_b ‖g_b,p‖²}, when norms were gathered), ``sum_sq``
        ({name: Σ_b g_b²}, when gathered), ``gram`` (with ``gram=True``: the (B, B) float64
        Gram matrix K[a, b] = ⟨g_a, g_b⟩, when gathered; one micro-batch only, else
        ValueError: the products between micro-batches are seen by no backward) and
        ``grad_sq_norms`` ({name: ‖ĝ_p‖²}, floats); ``grads=True`` also gives ``grads``
        ({name: ĝ = p.grad/(c·B)}, tensors)."""
        if not self._micro:
            raise ValueError("no per-example statistics were gathered for this step")
        micro = self._micro
        c = micro[0]["c"]
        for m in micro[1:]:
            if abs(m["c"] - c) > 1e-6 * abs(c):
                raise ValueError("micro-batches were backpropagated with different scales "
                                 f"({c:.6g} and {m['c']:.6g}): ĝ is not the mean gradient")
        bsz = sum(m["B"] for m in micro)
        out: dict[str, Any] = {"batch_size": bsz, "scale": c,
                               "loss": sum(m["loss_sum"] for m in micro) / bsz}
        for key in ("sq_norms", "sum_sq"):
            if micro[0].get(key) is not None:
                acc: dict[str, Any] = {}
                for m in micro:
                    for n, v in m[key].items():
                        acc[n] = v if n not in acc else acc[n] + v
                out[key] = acc
        if gram and micro[0].get("gram") is not None:
            if len(micro) > 1:
                raise ValueError("the Gram matrix of per-example gradients needs the step's "
                                 "batch in one backward (gradient accumulation hides the "
                                 "products between micro-batches)")
            out["gram"] = micro[0]["gram"]
        named = [(n, p) for n, p in self._named_params if p.requires_grad]
        before = self._grad_before
        # this step's Σ_b c·g_b in the parameters' own dtype (no float64 copies)
        step_grads = [torch.zeros_like(p) if p.grad is None else
                      p.grad.detach() - before[id(p)] if id(p) in before else p.grad.detach()
                      for _, p in named]
        # ‖ĝ_p‖² from one multi-tensor norm and one host sync
        norms = torch.stack(torch._foreach_norm(step_grads)).tolist() if named else []
        inv = 1.0 / (c * bsz)
        out["grad_sq_norms"] = {n: (v * inv) ** 2 for (n, _), v in zip(named, norms,
                                                                         strict=True)}
        if grads:
            ghat = torch._foreach_mul(step_grads, inv)
            out["grads"] = {n: g for (n, _), g in zip(named, ghat, strict=True)}
        return out

    # ------------------------------------------------------------------ internals

    def _micro_done(self) -> None:
        """A micro-batch's backward is done (the next ``begin`` of the step, or
        ``gradients_ready``): tell the due instruments."""
        for inst in self._due:
            if not inst.disabled and (self.rank == 0 or inst.all_ranks):
                self._guarded(inst, inst.micro_batch_done, self)

    def _due_at(self, t: int) -> list:
        sched = self.schedule
        return [i for i in self.instruments if not i.disabled
                and (i.schedule(t) if i.schedule is not None else sched(t))]

    def _guarded(self, inst, fn, *args):
        if inst.disabled:
            return None
        try:
            return fn(*args)
        except Exception as err:  # noqa: BLE001 - an instrument never kills the run
            if self.on_error == "raise":
                raise
            self._disable(inst, err)
            return None

    def _disable(self, inst, err: BaseException | str) -> None:
        if inst.disabled:
            return
        inst.disabled = True
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if self.rank == 0:
            print(f"sgdlab: instrument {inst.name} disabled: {reason}", file=sys.stderr)

    def _needs(self) -> tuple[bool, bool, bool]:
        """(norms, sum_sq, gram) wanted by the due instruments; ``needs_stats`` is
        ``(norms, sum_sq)`` or ``(norms, sum_sq, gram)``."""
        norms = sum_sq = gram = False
        for inst in self._due:
            if inst.disabled:
                continue
            n, s, *g = inst.needs_stats
            norms, sum_sq, gram = norms or n, sum_sq or s, gram or bool(g and g[0])
        return norms, sum_sq, gram

    def _arm(self) -> None:
        norms, sum_sq, gram = self._needs()
        if not (norms or sum_sq or gram):
            return
        key = (norms, sum_sq, gram)
        try:
            stats = self._stats.get(key)
            if stats is None:
                stats = self._stats[key] = _SafeStats(self.model, norms=norms, sum_sq=sum_sq,
                                                      reduction="sum", gram=gram)
            stats.failure = None
            stats.attach()
        except Exception as err:  # noqa: BLE001
            self._fail_stats(err)
            return
        self._armed = stats
        # this micro-batch's size, which begin() has just appended
        self._capture = {"calls": 0, "batch": stats._batch, "bsz": self.micro_sizes[-1]}
        self._fwd_handle = self.model.register_forward_hook(self._on_output)

    def _on_output(self, module, args, output) -> None:
        if not torch.is_grad_enabled():
            return
        cap = self._capture
        cap["calls"] += 1
        if cap["calls"] > 1:
            return
        # a tensor output without pytree (whose flatten makes a reference cycle per call)
        leaves, spec = (([output], None) if isinstance(output, torch.Tensor)
                        else pytree.tree_flatten(output))
        cap["leaves"], cap["spec"] = leaves, spec
        idx = [i for i, t in enumerate(leaves) if isinstance(t, torch.Tensor) and t.requires_grad]
        cap["idx"] = idx
        cap["deltas"] = deltas = {}
        for i in idx:
            # the hook holds ``deltas``, not ``cap``: cap holds the output, which holds the
            # hook — a cycle through a tensor's hooks that the garbage collector cannot see,
            # which would keep every measured step's output alive
            def hook(grad, i=i, deltas=deltas):
                if not self._snapped:
                    self._snap_grads()
                deltas[i] = grad.detach()
            leaves[i].register_hook(hook)

    def _snap_grads(self) -> None:
        """At the start of the step's first backward (the user's zero_grad is behind us):
        gradients already in p.grad are not this batch's — without zero_grad, or with
        ``zero_grad(set_to_none=False)`` — and are subtracted from ĝ."""
        self._snapped = True
        self._grad_before = {id(p): p.grad.detach().clone() for _, p in self._named_params
                             if p.requires_grad and p.grad is not None
                             and bool(p.grad.detach().any())}

    def _disarm(self, discard: bool = False) -> None:
        """Remove the hooks; ``discard``: forget the PerExampleStats object too (after an
        error or an interrupted step its bookkeeping may be mid-batch; a fresh one is built
        when needed)."""
        if self._fwd_handle is not None:
            self._fwd_handle.remove()
            self._fwd_handle = None
        if self._armed is not None:
            stats, self._armed = self._armed, None
            stats.detach()
            if discard:
                self._stats = {k: v for k, v in self._stats.items() if v is not stats}
        self._capture = {}

    def _fail_stats(self, err: BaseException | str) -> None:
        for inst in self._due:
            if any(inst.needs_stats):
                if self.on_error == "raise":
                    raise err if isinstance(err, BaseException) else ValueError(err)
                self._disable(inst, err)

    def _harvest(self) -> None:
        """Read the micro-batch's statistics after its backward, scaled by 1/c²."""
        stats, cap = self._armed, self._capture
        try:
            stats.check()
            if cap.get("calls", 0) == 0:
                raise ValueError("the model was not called with gradients enabled inside "
                                 "the step")
            if cap["calls"] > 1:
                raise ValueError("the model was called more than once in one micro-batch")
            if stats._batch == cap["batch"]:
                raise ValueError("the per-example hooks did not see the forward start: call "
                                 "begin(x, y) before the model's forward, not from inside it "
                                 "(e.g. from a forward pre-hook of the model)")
            c, bsz, loss_sum = self._infer_scale(cap)
            norms_wanted, sum_sq_wanted = stats.want_norms, stats.want_sum_sq
            entry: dict[str, Any] = {"c": c, "B": bsz, "loss_sum": loss_sum}
            inv = 1.0 / (c * c)
            if norms_wanted:
                by_param = stats.sq_norm_sums()
                sums = (torch.stack(list(by_param.values())).tolist()
                        if by_param else [])            # one host sync
                entry["sq_norms"] = {n: v * inv for n, v in zip(by_param, sums, strict=True)}
            if sum_sq_wanted:
                entry["sum_sq"] = {n: v.double() * inv for n, v in stats.sum_sq().items()}
            if stats.want_gram:
                entry["gram"] = stats.gram().double() * inv
            self._micro.append(entry)
        except Exception as err:  # noqa: BLE001
            self._disarm(discard=True)
            self._fail_stats(err)
            return
        self._disarm()

    def _infer_scale(self, cap: dict[str, Any]) -> tuple[float, int, float]:
        """c with δ_user = c·δ_ref, δ_ref = ∂(Σ_b ℓ_b)/∂out on the detached output.

        c = ⟨u, r⟩/⟨r, r⟩ (u = δ_user, r = δ_ref, all outputs flattened) and the relative
        residual ‖u − c·r‖/‖u‖, taken directly from e = u − c·r rather than from
        ⟨u, u⟩ − ⟨u, r⟩²/⟨r, r⟩ (whose cancellation in the dtype of u would be of the order of
        the (1e-4)² tested). A rounding error δc/c ~ 1e-6 of c in float32 moves the residual
        by that much, far below SCALE_RTOL."""
        leaves, idx, deltas = cap["leaves"], cap["idx"], cap["deltas"]
        if not idx or not deltas:
            raise ValueError("the backward did not reach the model's output")
        det = list(leaves)
        for i in idx:
            det[i] = leaves[i].detach().requires_grad_(True)
        with torch.enable_grad():
            out = det[0] if cap["spec"] is None else pytree.tree_unflatten(det, cap["spec"])
            ell = self.loss_fn(out, self.batch[1])
            bsz = cap.get("bsz")
            if not isinstance(ell, torch.Tensor) or ell.dim() != 1 or (
                    bsz is not None and ell.shape[0] != bsz):
                shape = tuple(ell.shape) if isinstance(ell, torch.Tensor) else type(ell).__name__
                raise ValueError(f"loss_fn must return per-example losses of shape (B,), got "
                                 f"{shape}")
            inputs = [det[i] for i in idx]
            refs = _cross_entropy_output_grad(ell, inputs)
            if refs is None:
                refs = torch.autograd.grad(ell.sum(), inputs, allow_unused=True)
        us, rs = [], []
        for i, r in zip(idx, refs, strict=True):
            u = deltas.get(i)
            u = torch.zeros_like(leaves[i]) if u is None else u
            r = torch.zeros_like(u) if r is None else r
            us.append(u.reshape(-1))
            rs.append(r.reshape(-1))
        u = torch.cat(us) if len(us) > 1 else us[0]
        if u.dtype not in (torch.float32, torch.float64):   # half precision: dots in float32
            u = u.float()
        r = torch.cat([t.to(u.dtype) for t in rs]) if len(rs) > 1 else rs[0].to(u.dtype)
        ur, rr, uu, loss_sum = torch.stack([torch.dot(u, r), torch.dot(r, r), torch.dot(u, u),
                                            ell.detach().sum()]).tolist()
        if rr == 0.0 or uu == 0.0:
            raise ValueError("the loss gradient at the output is zero: the scale of the "
                             "backward cannot be inferred")
        c = ur / rr
        e = torch.add(u, r, alpha=-c) if math.isfinite(c) else u
        rel = math.sqrt(float(torch.dot(e, e)) / uu)
        if not c > 0 or not rel <= SCALE_RTOL:
            raise ValueError("the backward is not c·Σ loss_fn(model(x), y) (relative residual "
                             f"{rel:.2g}); per-example statistics need the "
                             "gradient of a multiple of the summed per-example losses")
        return c, int(ell.shape[0]), loss_sum

    def _after_optimizer(self, optimizer, args, kwargs) -> None:
        if self._pending:
            self._flush(after_step=True)

    def _flush(self, after_step: bool = False) -> None:
        pending, self._pending = self._pending, []
        for inst, rec in pending:
            if after_step and not inst.disabled:
                extra = self._guarded(inst, inst.after_optimizer_step, self)
                if inst.disabled:
                    continue
                if extra:
                    rec.update(extra)
            self._emit(rec)

    def _emit(self, rec: dict[str, Any]) -> None:
        self.records.append(rec)
        if self._writer is not None:
            self._writer.write(rec)
        if self._tb is not None:
            write_scalars(self._tb, rec, rec["step"])
        if self._log is not None:
            self._log(rec)
