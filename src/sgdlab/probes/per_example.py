"""Per-example gradient statistics from one forward and one backward (SPEC §3).

For a batch of B examples with per-example losses ℓ_b and per-example gradients g_b = ∇ℓ_b
(the gradient of the example's own loss, *not* of the batch mean; divide by B, or B², where a
caller needs the terms of the mean), this module computes

* ``‖g_b‖²`` for every example b (:func:`per_example_sq_norms`), and
* ``Σ_b g_b²`` per coordinate (:func:`per_example_sum_sq`),

without materialising a per-example gradient of the whole model. Module hooks see, for every
layer, its input and the gradient δ of Σ_b ℓ_b with respect to its output; since example b's
loss depends on example b's activations only, δ_b is the gradient of ℓ_b alone.

Per layer type (SPEC §3):

* ``nn.Linear`` on 2-D inputs, y = W x + c: g_b(W) = δ_b x_bᵀ, so ‖g_b(W)‖² = ‖δ_b‖²‖x_b‖² and
  Σ_b g_b(W)² = (δ²)ᵀ(x²); g_b(c) = δ_b. Nothing of size B·d_out·d_in is formed.
* ``nn.Linear`` on inputs (B, *, d_in) with S positions: g_b(W) = Σ_s δ_bs x_bsᵀ. The squared
  norm is taken in the Gram form ‖Σ_s δ_s x_sᵀ‖² = ⟨δδᵀ, xxᵀ⟩ (cost S²(d_in + d_out) per
  example) or from the materialised g_b (cost S·d_in·d_out), whichever is cheaper — the rule
  Opacus' ghost clipping uses. Σ_b g_b² needs g_b itself: it is formed one layer at a time, in
  chunks of examples, never for the whole model.
* ``nn.Conv1d`` / ``nn.Conv2d`` (any stride, padding, padding mode, dilation and groups): the
  input is unfolded (im2col) to X_b of shape (C_in/G · k, L) per group, so that the layer is a
  Linear over the L output positions, g_b(W) = δ_b X_bᵀ with δ_b of shape (C_out/G, L), and the
  same Gram-or-materialise choice applies per layer. g_b(bias) = Σ_positions δ_b.
* A layer used several times in one forward (the same module called twice, or one parameter
  shared by several Linear/Conv modules): g_b = Σ_uses δ_b^(u) X_b^(u)ᵀ. The uses are stacked
  along the position axis before the Gram form or the materialisation, so the cross terms of
  ‖g_b^(1) + g_b^(2)‖² are included (it is *not* the sum of the per-use norms).
* Any other module with parameters (LayerNorm or GroupNorm with affine, Embedding, BatchNorm in
  eval mode, custom modules): the fallback. Its recorded inputs and output gradients give the
  per-example gradients of its own parameters as ``vmap`` over examples of ``vjp`` of the
  module's forward (``torch.func.functional_call``) — a local vmap(grad) that re-runs only that
  module, once per example in a vectorised call, and materialises (B, *shape) for its parameters.
  Cost: one extra vectorised forward and backward of the module. Parameters of sub-modules that
  were not themselves called (e.g. ``nn.MultiheadAttention.out_proj``, used through its weight)
  are included in the nearest called fallback ancestor.
* BatchNorm in training mode (or without running statistics) couples the examples of a batch:
  per-example gradients are not defined, and a ``ValueError`` is raised (SPEC §3).

Two ways to use it:

* :func:`per_example_sq_norms`, :func:`per_example_sum_sq`, :func:`per_example_stats` run the
  forward and a backward of Σ_b ℓ_b themselves and only compute the statistics: the backward is
  taken with respect to the layer outputs, so autograd skips the weight gradients of the
  ordinary backward; the parameters' ``.grad`` are left untouched.
* :class:`PerExampleStats`, a context manager for a training step: the ordinary
  ``loss.backward()`` fills ``p.grad`` as usual *and* the statistics, in one backward::

      with PerExampleStats(model, reduction="mean") as stats:
          loss = loss_fn(model(x), y).mean()      # loss_fn returns per-example losses
          loss.backward()                         # p.grad = mean gradient, as usual
          norms = stats.sq_norms()                # (B,): ‖∇ℓ_b‖²
          s = stats.sum_sq()                      # {name: Σ_b (∇ℓ_b)²}

Requirements: the batch dimension comes first in every hooked module's input and output, and
the model treats the examples of a batch independently (true for every model of
:mod:`sgdlab.models` except the ResNet in training mode). A parameter used *directly* outside the
forward of the module that owns it (``F.linear(h, self.emb.weight)``) is not seen by the hooks;
:func:`per_example_stats` detects a parameter that receives a gradient without its module being
called and raises.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils import _pytree as pytree

__all__ = [
    "BATCHNORM_MESSAGE",
    "PerExampleResult",
    "PerExampleStats",
    "per_example_sq_norms",
    "per_example_stats",
    "per_example_sum_sq",
]

BATCHNORM_MESSAGE = (
    "per-example gradients are not defined under BatchNorm in training mode: the examples of a "
    "batch are coupled (SPEC §3); put the model in eval mode or use a model without BatchNorm"
)

_HOOKED = (nn.Linear, nn.Conv1d, nn.Conv2d)

#: Elements of temporary storage per chunk of examples (per-example gradients, Gram matrices,
#: unfolded inputs): 2**24 floats = 64 MiB in float32.
_CHUNK_ELEMENTS = 1 << 24


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------


class _Use:
    """One call of a module in the current batch."""

    __slots__ = ("inputs", "in_version", "outputs", "out_version", "deltas", "pending")

    def __init__(self, inputs, in_version, outputs, out_version) -> None:
        self.inputs = inputs            # Linear/Conv: the input tensor; fallback: flat arg leaves
        self.in_version = in_version
        self.outputs = outputs          # list of output tensors that require grad
        self.out_version = out_version  # their _version at the end of the forward
        self.deltas: list[torch.Tensor | None] = [None] * len(outputs)
        self.pending = len(outputs)     # output gradients still to arrive


class _Layer:
    """State of one module with parameters during one batch."""

    __slots__ = ("module", "name", "fallback", "uses", "finished", "spec", "in_dims")

    def __init__(self, module: nn.Module, name: str, fallback: bool) -> None:
        self.module = module
        self.name = name
        self.fallback = fallback
        self.uses: list[_Use] = []
        self.finished = False
        self.spec = None       # fallback: pytree spec of (args, kwargs) per use (list)
        self.in_dims = None


@dataclass
class PerExampleResult:
    """What :func:`per_example_stats` returns (SPEC §3).

    ``losses``: the per-example losses ℓ_b, detached, shape (B,). ``sq_norms``: ‖∇ℓ_b‖², shape
    (B,), or None when not requested. ``sq_norms_by_param``: the same split over parameters
    (name → (B,)). ``sum_sq``: Σ_b (∇ℓ_b)² per coordinate (name → tensor of the parameter's
    shape), or None when not requested.
    """

    losses: torch.Tensor
    sq_norms: torch.Tensor | None = None
    sq_norms_by_param: dict[str, torch.Tensor] = field(default_factory=dict)
    sum_sq: dict[str, torch.Tensor] | None = None


# ---------------------------------------------------------------------------------------------
# Linear / conv factors
# ---------------------------------------------------------------------------------------------


def _dims(m: nn.Module) -> tuple[int, int, int]:
    """(G, O', I'): groups, output rows and input columns per group of the weight matrix."""
    if isinstance(m, nn.Linear):
        return 1, m.out_features, m.in_features
    g = m.groups
    return g, m.out_channels // g, (m.in_channels // g) * math.prod(m.kernel_size)


def _positions(m: nn.Module, x: torch.Tensor, d: torch.Tensor) -> int:
    """Number of positions S of one use (per example)."""
    if isinstance(m, nn.Linear):
        return x[0].numel() // m.in_features
    return d[0].numel() // m.out_channels


def _unfold(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """im2col of a Conv1d/Conv2d input: (b, C_in·prod(k), L), channel-major like the weight."""
    nd = len(m.kernel_size)
    padding = m.padding
    if isinstance(padding, str) or m.padding_mode != "zeros":
        mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
        x = F.pad(x, m._reversed_padding_repeated_twice, mode=mode)
        padding = (0,) * nd
    if nd == 1:
        return F.unfold(x.unsqueeze(2), (1, m.kernel_size[0]), dilation=(1, m.dilation[0]),
                        padding=(0, padding[0]), stride=(1, m.stride[0]))
    return F.unfold(x, m.kernel_size, dilation=m.dilation, padding=padding, stride=m.stride)


def _factors(m: nn.Module, x: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel-first factors of one use: D (b, G, O', S) and X (b, G, I', S), g = D Xᵀ."""
    b = x.shape[0]
    if isinstance(m, nn.Linear):
        X = x.reshape(b, -1, m.in_features).transpose(1, 2).unsqueeze(1)
        D = d.reshape(b, -1, m.out_features).transpose(1, 2).unsqueeze(1)
        return D, X
    g, o, _ = _dims(m)
    U = _unfold(m, x)
    D = d.reshape(b, g, o, -1)
    if U.shape[-1] != D.shape[-1]:  # pragma: no cover - would be a bug in _unfold
        raise RuntimeError(f"unfolded input of {type(m).__name__} has {U.shape[-1]} positions, "
                           f"its output gradient {D.shape[-1]}")
    return D, U.reshape(b, g, -1, U.shape[-1])


def _weight_stats(contribs: list[tuple[nn.Module, torch.Tensor, torch.Tensor]],
                  shape: torch.Size, want_norms: bool, want_sum_sq: bool,
                  ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """‖g_b‖² and Σ_b g_b² of a Linear/Conv weight with g_b = Σ_uses D_b X_bᵀ (SPEC §3)."""
    m0, x0, d0 = contribs[0]
    B = x0.shape[0]
    G, O, I = _dims(m0)
    S = sum(_positions(m, x, d) for m, x, d in contribs)
    if len(contribs) == 1 and isinstance(m0, nn.Linear) and S == 1:
        # ‖δ_b‖²‖x_b‖² and (δ²)ᵀ(x²): nothing of size B·O·I is formed
        x2 = x0.reshape(B, I).square()
        d2 = d0.reshape(B, O).square()
        norms = d2.sum(1) * x2.sum(1) if want_norms else None
        sq = (d2.T @ x2).reshape(shape) if want_sum_sq else None
        return norms, sq
    materialise = want_sum_sq or S * O * I <= S * S * (O + I)
    unfolded = G * I * S if not isinstance(m0, nn.Linear) else 0
    per_example = unfolded + (G * O * I if materialise else G * S * S * 2)
    chunk = max(1, _CHUNK_ELEMENTS // max(per_example, 1))
    norms = x0.new_empty(B) if want_norms else None
    acc = x0.new_zeros(G, O, I) if want_sum_sq else None
    for lo in range(0, B, chunk):
        sl = slice(lo, min(B, lo + chunk))
        fs = [_factors(m, x[sl], d[sl]) for m, x, d in contribs]
        D = torch.cat([f[0] for f in fs], -1) if len(fs) > 1 else fs[0][0]
        X = torch.cat([f[1] for f in fs], -1) if len(fs) > 1 else fs[0][1]
        if materialise:
            M = torch.matmul(D, X.transpose(-1, -2))      # (b, G, O', I') per-example gradients
            M = M.square_()
            if want_norms:
                norms[sl] = M.sum((1, 2, 3))
            if want_sum_sq:
                acc += M.sum(0)
        else:
            gd = torch.matmul(D.transpose(-1, -2), D)     # (b, G, S, S)
            gx = torch.matmul(X.transpose(-1, -2), X)
            norms[sl] = gd.mul_(gx).sum((1, 2, 3))
    return norms, (acc.reshape(shape) if want_sum_sq else None)


def _materialise(contribs, shape) -> torch.Tensor:
    """Per-example gradients (B, *shape) of a Linear/Conv weight (used only when a parameter
    also receives fallback contributions)."""
    fs = [_factors(m, x, d) for m, x, d in contribs]
    D = torch.cat([f[0] for f in fs], -1)
    X = torch.cat([f[1] for f in fs], -1)
    M = torch.matmul(D, X.transpose(-1, -2))
    return M.reshape(M.shape[0], *shape)


# ---------------------------------------------------------------------------------------------
# The hooks
# ---------------------------------------------------------------------------------------------


class PerExampleStats:
    """Per-example gradient statistics of ``model`` from the ordinary backward (SPEC §3).

    While attached (``with PerExampleStats(model) as stats:`` or :meth:`attach` /
    :meth:`detach`), every call of ``model`` with gradients enabled starts a new batch: the
    inputs of its Linear/Conv1d/Conv2d layers (and of the other modules with parameters) are
    recorded, and the next backward through the outputs delivers the statistics — for a single
    Linear/Conv use already inside the backward, as the layer's output gradient arrives.

    ``reduction`` says what scalar is backpropagated, so that the statistics always refer to
    g_b = ∇ℓ_b: ``"sum"`` for Σ_b ℓ_b, ``"mean"`` for (1/B) Σ_b ℓ_b (then the output gradients
    are g_b/B and the results are multiplied by B²). ``p.grad`` is filled by the backward as
    usual: one backward gives the step's gradient and the statistics.

    ``norms`` / ``sum_sq`` select what is computed: ‖g_b‖² (cheap: no per-example gradient of a
    2-D Linear layer, and the cheaper of the Gram form ⟨δδᵀ, xxᵀ⟩ and the per-layer
    materialisation for sequence and conv inputs) and Σ_b g_b² per coordinate (one layer's
    per-example gradients at a time, except for 2-D Linear layers: (δ²)ᵀ(x²)).

    Raises ``ValueError`` on a forward through BatchNorm in training mode (the examples of a
    batch are coupled) and on a Linear/Conv input whose first dimension is not the batch.
    """

    def __init__(self, model: nn.Module, *, norms: bool = True, sum_sq: bool = True,
                 reduction: str = "sum") -> None:
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        if not (norms or sum_sq):
            raise ValueError("nothing to compute: norms and sum_sq are both False")
        self.model = model
        self.want_norms = bool(norms)
        self.want_sum_sq = bool(sum_sq)
        self.reduction = reduction
        self._handles: list = []
        self._recording = True
        self._batch = 0
        self.batch_size: int | None = None
        # static structure: parameters that require grad, their names and owner modules
        self._names: dict[int, str] = {}
        self._params: dict[int, nn.Parameter] = {}
        for name, p in model.named_parameters():
            if p.requires_grad:
                self._names[id(p)] = name
                self._params[id(p)] = p
        self._layers: dict[int, _Layer] = {}
        self._owners: dict[int, int] = {}
        self._modules: dict[str, nn.Module] = {}
        for mname, m in model.named_modules():
            self._modules[mname] = m
            own = [p for p in m.parameters(recurse=False) if id(p) in self._params]
            if not own:
                continue
            self._layers[id(m)] = _Layer(m, mname, fallback=not isinstance(m, _HOOKED))
            for p in own:
                self._owners[id(p)] = self._owners.get(id(p), 0) + 1
        self._reset()

    # ------------------------------------------------------------------ attach / detach

    def attach(self) -> PerExampleStats:
        """Register the hooks (idempotent use is an error: attach once)."""
        if self._handles:
            raise RuntimeError("PerExampleStats is already attached")
        self._handles.append(self.model.register_forward_pre_hook(self._root_pre_hook,
                                                                  with_kwargs=True))
        for m in self.model.modules():
            if isinstance(m, _BatchNorm):
                self._handles.append(m.register_forward_pre_hook(self._bn_pre_hook))
        for layer in self._layers.values():
            hook = self._fallback_hook if layer.fallback else self._layer_hook
            self._handles.append(layer.module.register_forward_hook(hook, with_kwargs=True))
        return self

    def detach(self) -> None:
        """Remove the hooks; results already computed stay readable."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> PerExampleStats:
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    # ------------------------------------------------------------------ results

    def sq_norms(self) -> torch.Tensor:
        """‖g_b‖² = Σ_params ‖∇_p ℓ_b‖² for each example of the last batch, shape (B,) (SPEC §3)."""
        by = self.sq_norms_by_param()
        if not by:
            raise RuntimeError("no parameter received per-example statistics: call the model "
                               "and backpropagate inside the PerExampleStats context first")
        return torch.stack(list(by.values())).sum(0)

    def sq_norms_by_param(self) -> dict[str, torch.Tensor]:
        """‖∇_p ℓ_b‖² per parameter name, each of shape (B,) (SPEC §3); parameters that did not
        take part in the forward are absent."""
        if not self.want_norms:
            raise RuntimeError("constructed with norms=False")
        self._finalize()
        return {self._names[k]: v for k, v in self._norms.items()}

    def sum_sq(self) -> dict[str, torch.Tensor]:
        """Σ_b (∇_p ℓ_b)² per coordinate, one tensor of p's shape per parameter name that
        requires grad (zeros for parameters not used by the forward) (SPEC §3)."""
        if not self.want_sum_sq:
            raise RuntimeError("constructed with sum_sq=False")
        self._finalize()
        return {name: self._sum_sq[k] if k in self._sum_sq else torch.zeros_like(self._params[k])
                for k, name in self._names.items()}

    # ------------------------------------------------------------------ internals

    def _reset(self) -> None:
        self._batch += 1
        for layer in self._layers.values():
            layer.uses = []
            layer.finished = False
            layer.spec = []
            layer.in_dims = []
        self._pending: dict[int, list] = {}
        self._done_owners: dict[int, int] = {}
        self._norms: dict[int, torch.Tensor] = {}
        self._sum_sq: dict[int, torch.Tensor] = {}
        self._finalized = False

    def _root_pre_hook(self, module, args, kwargs):
        if not self._recording or not torch.is_grad_enabled():
            return None
        self._reset()
        for t in pytree.tree_leaves((args, kwargs)):
            if isinstance(t, torch.Tensor) and t.dim() > 0:
                self.batch_size = t.shape[0]
                break
        return None

    def _bn_pre_hook(self, module, args):
        if self._recording and (module.training or module.running_mean is None):
            raise ValueError(BATCHNORM_MESSAGE)

    def _check_batch(self, layer: _Layer, x: torch.Tensor) -> None:
        if self.batch_size is None:
            self.batch_size = x.shape[0] if x.dim() > 0 else None
        if x.dim() < 2 or x.shape[0] != self.batch_size:
            raise ValueError(
                f"{type(layer.module).__name__} {layer.name!r} got an input of shape "
                f"{tuple(x.shape)}: per-example statistics need the batch dimension "
                f"(size {self.batch_size}) first"
            )

    def _layer_hook(self, module, args, kwargs, output):
        if not self._recording or not isinstance(output, torch.Tensor) or not output.requires_grad:
            return None
        layer = self._layers[id(module)]
        x = args[0] if args else kwargs["input"]
        self._check_batch(layer, x)
        use = _Use(x.detach(), x._version, [output], [output._version])
        layer.uses.append(use)
        output.register_hook(self._grad_hook(layer, use, 0))
        return None

    def _fallback_hook(self, module, args, kwargs, output):
        if not self._recording:
            return None
        outs = [t for t in pytree.tree_leaves(output)
                if isinstance(t, torch.Tensor) and t.requires_grad]
        if not outs:
            return None
        layer = self._layers[id(module)]
        flat, spec = pytree.tree_flatten((args, kwargs))
        B = self.batch_size
        in_dims = [0 if isinstance(t, torch.Tensor) and t.dim() > 0 and t.shape[0] == B
                   else None for t in flat]
        flat = [t.detach() if isinstance(t, torch.Tensor) else t for t in flat]
        use = _Use(flat, None, outs, [t._version for t in outs])
        layer.uses.append(use)
        layer.spec.append((spec, pytree.tree_flatten(output)[1],
                           [i for i, t in enumerate(pytree.tree_leaves(output))
                            if isinstance(t, torch.Tensor) and t.requires_grad]))
        layer.in_dims.append(in_dims)
        for i, t in enumerate(outs):
            t.register_hook(self._grad_hook(layer, use, i))
        return None

    def _grad_hook(self, layer: _Layer, use: _Use, i: int):
        batch = self._batch

        def hook(grad: torch.Tensor) -> None:
            if batch != self._batch:
                return None
            if use.deltas[i] is not None:
                raise RuntimeError(
                    f"a second backward through {layer.name!r} in the same batch: "
                    "PerExampleStats expects one backward per forward"
                )
            use.deltas[i] = grad.detach()
            use.pending -= 1
            if (not layer.fallback and not layer.finished
                    and all(u.pending == 0 for u in layer.uses)):
                self._finish_layer(layer)
            return None

        return hook

    def _finish_layer(self, layer: _Layer) -> None:
        """All output gradients of a Linear/Conv layer are in: hand its contributions over."""
        layer.finished = True
        m = layer.module
        uses = [u for u in layer.uses if u.deltas[0] is not None]
        for u in uses:
            if u.inputs._version != u.in_version:
                raise RuntimeError(f"the input of {layer.name!r} was modified in place after "
                                   "the forward; per-example statistics need it unchanged")
        w, b = m.weight, m.bias
        if id(w) in self._params:
            self._add(w, [("factor", (m, u.inputs, u.deltas[0])) for u in uses])
        if b is not None and id(b) in self._params:
            dense = None
            for u in uses:
                d = u.deltas[0]
                per = (d.reshape(d.shape[0], -1, m.out_features).sum(1) if isinstance(m, nn.Linear)
                       else d.reshape(d.shape[0], m.out_channels, -1).sum(2))
                dense = per if dense is None else dense + per
            self._add(b, [("dense", dense)] if dense is not None else [])
        layer.uses = []

    def _add(self, p: torch.Tensor, contribs: list, owner_done: bool = True) -> None:
        k = id(p)
        self._pending.setdefault(k, []).extend(contribs)
        if owner_done:
            self._done_owners[k] = self._done_owners.get(k, 0) + 1
            if self._done_owners[k] >= self._owners.get(k, 1):
                self._compute(k)

    def _compute(self, k: int) -> None:
        contribs = self._pending.pop(k, [])
        if not contribs:
            return
        p = self._params[k]
        if all(c[0] == "factor" for c in contribs):
            norms, sq = _weight_stats([c[1] for c in contribs], p.shape,
                                      self.want_norms, self.want_sum_sq)
        else:
            total = None
            for kind, c in contribs:
                g = _materialise([c], p.shape) if kind == "factor" else c
                g = g.reshape(g.shape[0], *p.shape)
                total = g if total is None else total + g
            g2 = total.square()
            norms = g2.flatten(1).sum(1) if self.want_norms else None
            sq = g2.sum(0) if self.want_sum_sq else None
        if self.reduction == "mean":
            scale = float(self.batch_size) ** 2
            norms = None if norms is None else norms * scale
            sq = None if sq is None else sq * scale
        if norms is not None:
            self._norms[k] = norms
        if sq is not None:
            self._sum_sq[k] = sq

    def _called(self) -> set[int]:
        return {k for k, layer in self._layers.items() if layer.uses or layer.finished}

    def _fallback_params(self, layer: _Layer, called: set[int]) -> dict[str, torch.Tensor]:
        """Functional parameters of a fallback module: its own, and those of descendants that
        were not called in this batch (used by the module through their weights)."""
        out = {}
        for name, sub in layer.module.named_modules():
            if sub is not layer.module and id(sub) in called:
                continue
            for pname, p in sub.named_parameters(recurse=False):
                if id(p) in self._params:
                    out[f"{name}.{pname}" if name else pname] = p
        return out

    def _finalize(self) -> None:
        if self._finalized:
            return
        self._finalized = True
        called = self._called()
        for layer in self._layers.values():
            if not layer.fallback and layer.uses and not layer.finished:
                self._finish_layer(layer)   # some output gradient never arrived: it is zero
        prev = self._recording
        self._recording = False
        try:
            for layer in self._layers.values():
                if layer.fallback and layer.uses:
                    self._finish_fallback(layer, called)
        finally:
            self._recording = prev
        for k in list(self._pending):
            self._compute(k)

    def _finish_fallback(self, layer: _Layer, called: set[int]) -> None:
        params = self._fallback_params(layer, called)
        if not params:
            return
        total: dict[str, torch.Tensor] = {}
        for use, (spec, _out_spec, grad_idx), in_dims in zip(layer.uses, layer.spec,
                                                              layer.in_dims, strict=True):
            deltas = [d if d is not None else torch.zeros_like(t)
                      for d, t in zip(use.deltas, use.outputs, strict=True)]
            if all(d is None for d in use.deltas):
                continue
            grads = _vmap_vjp(layer.module, params, use.inputs, in_dims, spec, grad_idx, deltas)
            for n, g in grads.items():
                total[n] = g if n not in total else total[n] + g
        layer.uses = []
        for n, g in total.items():
            self._add(params[n], [("dense", g)], owner_done=False)


def _vmap_vjp(module: nn.Module, params: dict[str, torch.Tensor], flat: list, in_dims: list,
              spec, grad_idx: list[int], deltas: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-example gradients of ``module``'s ``params``: vmap over examples of the vjp of the
    module's forward at (args_b, kwargs_b) with the output gradient δ_b (SPEC §3 fallback)."""
    from torch.func import functional_call, vjp, vmap

    detached = {n: p.detach() for n, p in params.items()}

    def one(flat_b, deltas_b):
        flat1 = [t.unsqueeze(0) if d == 0 else t for t, d in zip(flat_b, in_dims, strict=True)]
        args, kwargs = pytree.tree_unflatten(flat1, spec)

        def f(ps):
            out = pytree.tree_leaves(functional_call(module, ps, tuple(args), kwargs))
            return tuple(out[i] for i in grad_idx)

        _, pullback = vjp(f, detached)
        return pullback(tuple(d.unsqueeze(0) for d in deltas_b))[0]

    try:
        return vmap(one, in_dims=(in_dims, 0), randomness="error")(flat, tuple(deltas))
    except RuntimeError as e:
        raise RuntimeError(
            f"per-example gradients of {type(module).__name__} by torch.func failed ({e}); the "
            "fallback re-runs the module per example, which needs a deterministic forward "
            "that treats the examples of the batch independently"
        ) from e


# ---------------------------------------------------------------------------------------------
# Convenience functions
# ---------------------------------------------------------------------------------------------


def per_example_stats(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor,
                      *, norms: bool = True, sum_sq: bool = True) -> PerExampleResult:
    """‖g_b‖² and Σ_b g_b² for the batch (x, y) in one forward and one backward (SPEC §3).

    ``loss_fn(model(x), y)`` must return the per-example losses ℓ_b, shape (B,); g_b = ∇ℓ_b
    (per-example loss, not the mean). The backward of Σ_b ℓ_b is taken with respect to the
    layer outputs (not the parameters), so the weight gradients of the ordinary backward are
    not computed and ``p.grad`` is left untouched. See the module docstring for what is
    computed per layer type; BatchNorm in training mode raises ``ValueError``.
    """
    stats = PerExampleStats(model, norms=norms, sum_sq=sum_sq, reduction="sum")
    with stats:
        losses = loss_fn(model(x), y)
    B = x.shape[0]
    if losses.shape != (B,):
        raise ValueError(f"loss_fn must return per-example losses of shape ({B},) (use "
                         f"reduction='none'), got shape {tuple(losses.shape)}")
    # targets of the backward: every recorded output (its gradient is δ); where an output was
    # modified in place after the layer (ReLU(inplace=True)), its parameters instead, so that
    # the layer's own backward node runs and its tensor hook sees the right δ
    targets: list[torch.Tensor] = []
    called = stats._called()
    for layer in stats._layers.values():
        for use in layer.uses:
            for t, v in zip(use.outputs, use.out_version, strict=True):
                if t._version == v:
                    targets.append(t)
                else:
                    targets.extend(p for p in layer.module.parameters(recurse=False)
                                   if p.requires_grad)
    covered: set[int] = set()
    for k in called:
        layer = stats._layers[k]
        if layer.fallback:
            covered.update(id(p) for p in stats._fallback_params(layer, called).values())
        else:
            covered.update(id(p) for p in layer.module.parameters(recurse=False))
    unseen = [(n, p) for n, p in model.named_parameters()
              if p.requires_grad and id(p) not in covered]
    if targets or unseen:
        grads = torch.autograd.grad(losses.sum(), targets + [p for _, p in unseen],
                                    allow_unused=True)
        for (n, _), g in zip(unseen, grads[len(targets):], strict=True):
            if g is not None:
                raise ValueError(
                    f"parameter {n!r} receives a gradient, but the module that owns it was not "
                    "called in the forward (it is used directly, e.g. F.linear(h, m.weight)): "
                    "per-example statistics cannot see it"
                )
    out = PerExampleResult(losses=losses.detach())
    if norms:
        out.sq_norms_by_param = stats.sq_norms_by_param()
        out.sq_norms = (torch.stack(list(out.sq_norms_by_param.values())).sum(0)
                        if out.sq_norms_by_param else losses.new_zeros(B))
    if sum_sq:
        out.sum_sq = stats.sum_sq()
    return out


def per_example_sq_norms(model: nn.Module, loss_fn: Callable, x: torch.Tensor,
                         y: torch.Tensor) -> torch.Tensor:
    """‖g_b‖² = ‖∇ℓ_b‖² over all parameters that require grad, shape (B,) (SPEC §3).

    ``loss_fn(model(x), y)`` returns per-example losses ℓ_b (shape (B,)); g_b is the gradient
    of ℓ_b, not of the batch mean (the mean's per-example terms are g_b/B: divide by B²).
    One forward and one backward; no per-example gradient of a 2-D Linear layer is formed
    (‖δ_b‖²‖x_b‖²), sequence/conv layers use the cheaper of the Gram form ⟨δδᵀ, xxᵀ⟩ and a
    per-layer materialisation. ``p.grad`` is left untouched.
    """
    return per_example_stats(model, loss_fn, x, y, norms=True, sum_sq=False).sq_norms


def per_example_sum_sq(model: nn.Module, loss_fn: Callable, x: torch.Tensor,
                       y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Σ_b g_b² per coordinate, {parameter name: tensor of its shape} (SPEC §3).

    g_b = ∇ℓ_b with ``loss_fn`` returning per-example losses. 2-D Linear layers use
    (δ²)ᵀ(x²); sequence/conv layers form their per-example gradients one layer (and one chunk
    of examples) at a time. Parameters that require grad but take no part in the forward get
    zeros. One forward and one backward; ``p.grad`` is left untouched.
    """
    return per_example_stats(model, loss_fn, x, y, norms=False, sum_sq=True).sum_sq
