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
* Any other module with parameters (LayerNorm, GroupNorm, RMSNorm, Embedding, BatchNorm in
  eval mode, GRU/LSTM/RNN, MultiheadAttention, custom modules): the fallback. Its recorded
  inputs and output gradients give the per-example gradients of its parameters as ``vmap``
  over examples of ``vjp`` of the module's forward (``torch.func.functional_call``) — a local
  vmap(grad) that re-runs only that module, once per example in a vectorised call, and
  materialises (B, *shape) for its parameters. Recurrent layers get their zero initial state
  spelt out and carry the batch in dim 1 of their hidden states. The re-run must reproduce
  the recorded batched output, else the module couples the examples and is refused.
* Attribution. During a recorded forward a ``TorchFunctionMode`` sees every torch call that
  receives a parameter, and the stack of module calls active at that moment. A parameter
  whose every use happens inside a call of a module that owns it is computed by those owners
  (several owners add up: tied layers). Any other parameter — ``out_proj`` of an
  ``nn.MultiheadAttention`` (used through its weight, never called), an embedding matrix
  read again by ``F.linear`` in the parent (tied input/output embeddings), a parameter passed
  as an argument, a parametrization's originals — is attributed to the innermost module call
  that encloses *all* its uses, contains it and receives the batch; that module's per-example
  ``vjp`` gives its whole gradient and nothing else contributes to it. So no gradient is
  counted twice or missed, whatever the nesting. Models whose parameters all belong to
  torch's Linear/Conv layers skip the ``TorchFunctionMode`` (its per-call cost dominates a
  small model's step): at the end of the forward one walk of the autograd graph counts the
  uses of every parameter that reach the outputs (edges into its AccumulateGrad node,
  through views and casts) and compares them with the calls of its owner layers; where they
  differ — a weight read elsewhere, e.g. ``F.linear(h, self.emb.weight)`` — the parameter is
  attributed to the model call itself (see ``PerExampleStats._graph_attribution``). Where the
  graph is one path — an MLP, a plain CNN — a cheaper walk proves the same
  (``PerExampleStats._chain_attribution``: along the path, every edge into a parameter must
  come from a call of a layer that owns it); it is redone on every forward, and nothing of
  one forward's verdict is kept for the next, so a forward that reads a weight elsewhere on
  its 3rd call is caught on that call. Anything that is not a single path goes to the full
  walk.
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

Cost (benchmarks/probes_overhead.py, batch 128, 1 CPU thread): squared norms take 1.1–1.2× the
plain forward+backward as a stats-only pass and 1.3–1.4× folded into a training step's backward
(MNIST-1D MLP, digits CNN, a 350k-parameter 32×32×3 CNN); torch.func vmap(grad), BackPACK and
Opacus ghost norms take 1.8–19×. For conv layers the extra work is about one more
weight-gradient computation: the im2col copy (channels-last for ≥ 8 input channels) and the
per-example products run in chunks of examples whose temporaries stay below a few MiB.

Requirements: the batch dimension comes first in every hooked module's input and output
(recurrent hidden states excepted), and the model treats the examples of a batch
independently. What cannot be computed exactly is refused with a ``ValueError`` naming the
module, never answered with numbers: BatchNorm in training mode, a re-run module whose
per-example output differs from its batched output or that draws random numbers (dropout
inside a fallback module), a PackedSequence, an output without the batch first, and a
parameter that receives a gradient although no torch call of the forward used it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.overrides import TorchFunctionMode
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

#: Elements of temporary storage per chunk of examples (per-example gradients, Gram matrices,
#: unfolded inputs): 2**19 floats = 2 MiB in float32. Small chunks stay in cache and below
#: malloc's mmap threshold (a fresh 40 MB temporary costs more in page faults than the
#: arithmetic on it).
_CHUNK_ELEMENTS = 1 << 20


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------


class _Use:
    """One call of a module in the current batch."""

    __slots__ = ("x", "x_version", "out_meta", "deltas", "pending", "spec", "in_dims",
                 "out_dims", "grad_idx", "outputs")

    def __init__(self, x, outputs: list[torch.Tensor]) -> None:
        self.x = x                      # Linear/Conv: the input; fallback: flat arg leaves
        self.x_version = x._version if isinstance(x, torch.Tensor) else None
        # not the outputs themselves: their tensor hooks refer to this record, and a reference
        # back would make a cycle that keeps every activation alive until the next gc run
        self.out_meta = [(t.shape, t.dtype, t.device) for t in outputs]
        self.deltas: list[torch.Tensor | None] = [None] * len(outputs)
        self.pending = len(outputs)     # output gradients still to arrive
        self.spec = self.in_dims = self.out_dims = self.grad_idx = None   # fallback only
        self.outputs: list | None = None


class _Layer:
    """A module with parameters that require grad, and its calls in the current batch."""

    __slots__ = ("module", "name", "fallback", "params", "shared", "uses", "finished")

    def __init__(self, module: nn.Module, name: str, fallback: bool, params: list) -> None:
        self.module = module
        self.name = name
        self.fallback = fallback
        self.params = params            # its own parameters that require grad
        self.shared = False             # one of its parameters is owned by another module too
        self.uses: list[_Use] = []
        self.finished = False

    def deferred(self) -> bool:
        """A 2-D Linear used once: its two dot products wait until the results are read
        (δ is small), which keeps the backward hook to a few Python operations."""
        return (not self.fallback and not self.shared and len(self.uses) == 1
                and isinstance(self.module, nn.Linear) and self.uses[0].x.dim() == 2)


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


def _layout(m: nn.Module) -> str:
    """Column order of the per-example weight matrix of one layer: ``"linear"`` (the weight's
    own), ``"cm"`` (channel-major patches, the conv weight's own order) or ``"cl"``
    (channels-last patches: kernel offsets, then input channels; used with ≥ 8 input channels
    and groups = 1, where it makes the im2col copy several times faster on CPU)."""
    if isinstance(m, nn.Linear):
        return "linear"
    return "cl" if m.groups == 1 and m.in_channels >= 8 else "cm"


def _padded(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input padded as the convolution pads it (any padding mode, 'same' included)."""
    if isinstance(m.padding, str) or m.padding_mode != "zeros":
        mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
        return F.pad(x, m._reversed_padding_repeated_twice, mode=mode)
    if any(m.padding):
        pads = []
        for p in reversed(m.padding):
            pads += [p, p]
        return F.pad(x, pads)
    return x


def _out_size(m: nn.Module, spatial) -> list[int]:
    k, st, dil = m.kernel_size, m.stride, m.dilation
    return [(spatial[i] - dil[i] * (k[i] - 1) - 1) // st[i] + 1 for i in range(len(k))]


def _patches_cl(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Channels-last im2col of a Conv1d/Conv2d input (groups = 1): (b, L, prod(k)·C_in),
    columns ordered (kernel offsets, channel): one strided copy whose innermost axis is the
    channel axis."""
    xc = _padded(m, x).movedim(1, -1).contiguous()      # (b, *spatial, C)
    nd = xc.dim() - 2
    out = _out_size(m, xc.shape[1:-1])
    st, dil = m.stride, m.dilation
    strides = xc.stride()
    view = xc.as_strided(
        (xc.shape[0], *out, *m.kernel_size, xc.shape[-1]),
        (strides[0], *(strides[1 + i] * st[i] for i in range(nd)),
         *(strides[1 + i] * dil[i] for i in range(nd)), strides[-1]),
    )
    return view.reshape(xc.shape[0], math.prod(out), -1)


def _patches_cm(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Channel-major im2col of a Conv1d/Conv2d input: (b, C_in·prod(k), L) in the order of
    F.unfold and of the weight, built from prod(k) strided slices of the padded input (faster
    than F.unfold on CPU for few channels)."""
    xp = _padded(m, x)
    out = _out_size(m, xp.shape[2:])
    k, st, dil = m.kernel_size, m.stride, m.dilation
    if len(k) == 1:
        slices = [xp[:, :, a * dil[0]: a * dil[0] + st[0] * (out[0] - 1) + 1: st[0]]
                  for a in range(k[0])]
    else:
        slices = [xp[:, :, a * dil[0]: a * dil[0] + st[0] * (out[0] - 1) + 1: st[0],
                     c * dil[1]: c * dil[1] + st[1] * (out[1] - 1) + 1: st[1]]
                  for a in range(k[0]) for c in range(k[1])]
    return torch.stack(slices, 2).reshape(xp.shape[0], -1, math.prod(out))


def _factors(m: nn.Module, x: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors of one use: D (b, G, O', S) and X (b, G, S, I'), per-example g = D X."""
    b = x.shape[0]
    if isinstance(m, nn.Linear):
        X = x.reshape(b, 1, -1, m.in_features)
        D = d.reshape(b, -1, m.out_features).transpose(1, 2).unsqueeze(1)
        return D, X
    g, o, i = _dims(m)
    D = d.reshape(b, g, o, -1)
    if _layout(m) == "cl":
        X = _patches_cl(m, x).unsqueeze(1)
    else:
        X = _patches_cm(m, x).reshape(b, g, i, -1).transpose(-1, -2)
    if X.shape[-2] != D.shape[-1]:  # pragma: no cover - would be a bug in the unfolding
        raise RuntimeError(f"unfolded input of {type(m).__name__} has {X.shape[-2]} positions, "
                           f"its output gradient {D.shape[-1]}")
    return D, X


def _to_param(M: torch.Tensor, m: nn.Module, shape: torch.Size) -> torch.Tensor:
    """(..., G, O', I') in ``m``'s column layout → (..., *shape) in the weight's order."""
    lead = M.shape[:-3]
    if _layout(m) == "cl":
        M = M.reshape(*lead, m.out_channels, *m.kernel_size, m.in_channels)
        M = M.movedim(-1, len(lead) + 1)                 # (..., O, C, *k)
    return M.reshape(*lead, *shape)


def _sq_norm(M: torch.Tensor) -> torch.Tensor:
    """Σ over all but the first axis of M², without an M-sized temporary."""
    return torch.linalg.vector_norm(M.reshape(M.shape[0], -1), dim=1).square()


def _weight_stats(contribs: list[tuple[nn.Module, torch.Tensor, torch.Tensor]],
                  shape: torch.Size, want_norms: bool, want_sum_sq: bool,
                  ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """‖g_b‖² and Σ_b g_b² of a Linear/Conv weight with g_b = Σ_uses D_b X_b (SPEC §3)."""
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
    materialise = want_sum_sq or O * I <= S * (O + I)   # S·O·I vs S²(O + I) per example
    per_example = G * S * (I + O) + (G * O * I if materialise else 2 * G * S * S)
    if not isinstance(m0, nn.Linear):
        per_example += x0[0].numel() * 2                 # padded, channels-last input
    chunk = max(1, _CHUNK_ELEMENTS // per_example)
    norms = x0.new_empty(B) if want_norms else None
    acc = x0.new_zeros(G, O, I) if want_sum_sq else None
    for lo in range(0, B, chunk):
        sl = slice(lo, min(B, lo + chunk))
        fs = [_factors(m, x[sl], d[sl]) for m, x, d in contribs]
        D = torch.cat([f[0] for f in fs], -1) if len(fs) > 1 else fs[0][0]
        X = torch.cat([f[1] for f in fs], -2) if len(fs) > 1 else fs[0][1]
        if materialise:
            M = torch.matmul(D, X)                       # (b, G, O', I') per-example gradients
            if want_norms:
                norms[sl] = _sq_norm(M)
            if want_sum_sq:
                acc += M.square_().sum(0)
        else:
            gd = torch.matmul(D.transpose(-1, -2), D)    # (b, G, S, S)
            gx = torch.matmul(X, X.transpose(-1, -2))
            norms[sl] = gd.mul_(gx).reshape(gd.shape[0], -1).sum(1)
    return norms, (_to_param(acc, m0, shape) if want_sum_sq else None)


def _materialise(contribs, shape) -> torch.Tensor:
    """Per-example gradients (B, *shape) of a Linear/Conv weight (used only when a parameter
    also receives fallback contributions, or its uses differ in layout)."""
    total = None
    for m, x, d in contribs:
        D, X = _factors(m, x, d)
        g = _to_param(torch.matmul(D, X), m, shape)
        total = g if total is None else total + g
    return total


def _gram_of(contribs: list, shape: torch.Size) -> torch.Tensor:
    """K[a, b] = ⟨g_a, g_b⟩ of one parameter from its contributions (factor or dense), via
    its per-example gradients G (B, P): G Gᵀ."""
    total = None
    for kind, c in contribs:
        g = _materialise([c], shape) if kind == "factor" else c
        g = g.reshape(g.shape[0], -1)
        total = g if total is None else total + g
    return total @ total.T


# ---------------------------------------------------------------------------------------------
# Where each parameter is used
# ---------------------------------------------------------------------------------------------

#: Calls that read a tensor's metadata or cut it from the graph: no gradient flows through
#: them, so they are not uses of a parameter.
_NOT_USES = frozenset(
    [torch.Tensor.size, torch.Tensor.dim, torch.Tensor.numel, torch.Tensor.stride,
     torch.Tensor.is_floating_point, torch.Tensor.is_complex, torch.Tensor.__len__,
     torch.Tensor.element_size, torch.Tensor.nelement, torch.Tensor.ndimension,
     torch.Tensor.get_device, torch.Tensor.is_contiguous, torch.Tensor.data_ptr,
     torch.Tensor.detach, torch.Tensor.__format__, torch.Tensor.__repr__,
     torch.Tensor.__hash__, torch.is_floating_point, torch.is_complex, torch.numel]
    + [getattr(torch.Tensor, a).__get__ for a in
       ("shape", "dtype", "device", "requires_grad", "is_cuda", "ndim", "data", "grad",
        "is_leaf", "layout", "grad_fn", "is_sparse", "is_meta")
       if hasattr(getattr(torch.Tensor, a, None), "__get__")]
)


_NO_TORCH_FUNCTION = torch._C.DisableTorchFunction

#: The class of autograd's AccumulateGrad nodes (a leaf's node; ``.variable`` is the leaf).
_ACCUMULATE = type(torch.empty(1, requires_grad=True).view(1).grad_fn.next_functions[0][0])


class _UseTracker(TorchFunctionMode):
    """Active during a recorded forward: every torch call that receives a parameter is a *use*
    of it, made inside the innermost module call active at that moment (SPEC §3)."""

    def __init__(self, stats: PerExampleStats) -> None:
        super().__init__()
        self.stats = stats

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if kwargs is None:
            kwargs = {}
        st = self.stats
        if st._stack and func not in _NOT_USES:
            P = st._params
            for a in args:
                if isinstance(a, torch.Tensor):
                    if id(a) in P:
                        st._note_use(id(a))
                elif isinstance(a, (list, tuple)):
                    for e in a:
                        if isinstance(e, torch.Tensor) and id(e) in P:
                            st._note_use(id(e))
            for a in kwargs.values():
                if isinstance(a, torch.Tensor) and id(a) in P:
                    st._note_use(id(a))
        return func(*args, **kwargs)


def _count_uses(node, roots: dict, consumers: dict, unary: set, memo: dict) -> int:
    """Uses of a unary autograd node or an AccumulateGrad node that reach the outputs: its
    edges into the outputs (``roots``) plus, per consumer, 1 — or, for a unary consumer (a
    view, a cast, ``p.t()``), that consumer's own count (a module-level function: a nested
    recursive closure would be a reference cycle per call, left to the garbage collector)."""
    n = memo.get(node)
    if n is None:
        n = roots.get(node, 0)
        for m in consumers.get(node, ()):
            n += _count_uses(m, roots, consumers, unary, memo) if m in unary else 1
        memo[node] = n
    return n


def _fast(m: nn.Module) -> bool:
    """Linear/Conv1d/Conv2d whose forward is torch's own and whose only parameters are
    ``weight`` and ``bias``: the factor formulas of the module docstring apply."""
    forwards = (nn.Linear.forward, nn.Conv1d.forward, nn.Conv2d.forward)
    return (isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)) and type(m).forward in forwards
            and set(m._parameters) <= {"weight", "bias"}
            and isinstance(m._parameters.get("weight"), nn.Parameter))


def _explicit_hidden(rnn: nn.RNNBase, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The call with its default zero initial state spelt out: a hidden state created inside
    the forward would not carry the batch dimension through ``vmap``."""
    if len(args) > 1 or kwargs.get("hx") is not None:
        return args, kwargs
    x = args[0] if args else kwargs.get("input")
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        return args, kwargs
    b = x.shape[0 if rnn.batch_first else 1]
    d = 2 if rnn.bidirectional else 1
    h_size = rnn.proj_size if getattr(rnn, "proj_size", 0) else rnn.hidden_size
    h0 = x.new_zeros(rnn.num_layers * d, b, h_size)
    hx = (h0, x.new_zeros(rnn.num_layers * d, b, rnn.hidden_size)) if isinstance(
        rnn, nn.LSTM) else h0
    kwargs = {k: v for k, v in kwargs.items() if k not in ("hx", "input")}
    return (x, hx), kwargs


def _io_dims(module: nn.Module, name: str, flat: list, out_leaves: list, grad_idx: list[int],
             B: int) -> tuple[list, list[int]]:
    """Batch dimension of each input leaf (None: shared by all examples) and of each output
    leaf that requires grad. Recurrent layers carry the batch in dim 1 of their hidden
    states (and of the sequence unless ``batch_first``); every other module in dim 0."""
    if isinstance(module, nn.RNNBase):
        x = flat[0] if flat else None
        if not isinstance(x, torch.Tensor) or x.dim() != 3:
            raise ValueError(f"{type(module).__name__} {name!r}: per-example statistics need a "
                             "batched 3-D tensor input (not a PackedSequence or an unbatched "
                             "sequence)")
        seq_dim = 0 if module.batch_first else 1
        in_dims = [seq_dim if i == 0 else (1 if isinstance(t, torch.Tensor) else None)
                   for i, t in enumerate(flat)]
        return in_dims, [seq_dim if i == 0 else 1 for i in grad_idx]
    in_dims = [0 if isinstance(t, torch.Tensor) and t.dim() > 0 and t.shape[0] == B
               and not isinstance(t, nn.Parameter) else None for t in flat]
    if not any(d is not None for d in in_dims):
        raise ValueError(f"{type(module).__name__} {name!r} has no input with the batch "
                         f"dimension (size {B}) first: its per-example gradients are not defined")
    for i in grad_idx:
        t = out_leaves[i]
        if t.dim() == 0 or t.shape[0] != B:
            raise ValueError(f"{type(module).__name__} {name!r} returns an output of shape "
                             f"{tuple(t.shape)}: per-example statistics need the batch "
                             f"dimension (size {B}) first")
    return in_dims, [0] * len(grad_idx)


# ---------------------------------------------------------------------------------------------
# The hooks
# ---------------------------------------------------------------------------------------------


class PerExampleStats:
    """Per-example gradient statistics of ``model`` from the ordinary backward (SPEC §3).

    While attached (``with PerExampleStats(model) as stats:`` or :meth:`attach` /
    :meth:`detach`), every call of ``model`` with gradients enabled starts a new batch: the
    inputs of its Linear/Conv1d/Conv2d layers (and of the other modules with parameters) are
    recorded, and the next backward through the outputs delivers the statistics — for
    sequence and conv layers already inside the backward, as the layer's output gradient
    arrives; reading a result finishes the rest.

    Attribution (what makes the numbers exact on any architecture): during a recorded forward
    a ``TorchFunctionMode`` notes every torch call that receives a parameter and the module
    calls active at that moment. A parameter used only inside the calls of modules that own
    it is handled by them (the factor formulas for Linear/Conv, a local per-example ``vjp``
    otherwise; several owners add up). A parameter used anywhere else — ``out_proj`` of an
    ``nn.MultiheadAttention``, a tied embedding read by ``F.linear`` in the parent, a
    parameter passed as an argument — is attributed to the innermost module call that
    encloses *all* its uses and contains it, whose per-example ``vjp`` then gives its whole
    gradient (and nothing else contributes to it).

    ``reduction`` says what scalar is backpropagated, so that the statistics always refer to
    g_b = ∇ℓ_b: ``"sum"`` for Σ_b ℓ_b, ``"mean"`` for (1/B) Σ_b ℓ_b (then the output gradients
    are g_b/B and the results are multiplied by B²). ``p.grad`` is filled by the backward as
    usual: one backward gives the step's gradient and the statistics.

    ``norms`` / ``sum_sq`` select what is computed: ‖g_b‖² (cheap: no per-example gradient of a
    2-D Linear layer, and the cheaper of the Gram form ⟨δδᵀ, xxᵀ⟩ and the per-layer
    materialisation for sequence and conv inputs) and Σ_b g_b² per coordinate (one layer's
    per-example gradients at a time, except for 2-D Linear layers: (δ²)ᵀ(x²)). ``gram``
    adds the B×B Gram matrix K[a, b] = ⟨g_a, g_b⟩ of the per-example gradients (Cockpit's
    ``BatchDotGrad``; :meth:`gram`): (δδᵀ)∘(xxᵀ) for a 2-D Linear weight, and G Gᵀ of the
    layer's per-example gradients G (B, P), formed one parameter at a time, otherwise.

    Refuses, with a ``ValueError`` naming the module, what it cannot compute exactly: a
    forward through BatchNorm in training mode (the examples of a batch are coupled), a
    Linear/Conv input or a module output whose first dimension is not the batch, a module
    whose per-example re-run differs from its batched output or uses randomness (dropout in
    a module without the factor formulas), and a parameter that receives a gradient without
    any recorded use.
    """

    def __init__(self, model: nn.Module, *, norms: bool = True, sum_sq: bool = True,
                 reduction: str = "sum", gram: bool = False) -> None:
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        if not (norms or sum_sq or gram):
            raise ValueError("nothing to compute: norms, sum_sq and gram are all False")
        self.model = model
        self.want_norms = bool(norms)
        self.want_sum_sq = bool(sum_sq)
        self.want_gram = bool(gram)
        self.reduction = reduction
        self._handles: list = []
        self._recording = True
        # (output, its _version after the layer, layer) while per_example_stats collects the
        # targets of its backward; None otherwise
        self._collect: list | None = None
        self._batch = 0
        self.batch_size: int | None = None
        # static structure: parameters that require grad, their names, owner modules and the
        # modules that contain them (one pass over the modules, in named_parameters' order)
        self._names: dict[int, str] = {}
        self._params: dict[int, nn.Parameter] = {}
        self._layers: dict[int, _Layer] = {}
        self._owners: dict[int, int] = {}
        self._owner_mods: dict[int, set[int]] = {}
        self._modules: dict[int, tuple[str, nn.Module]] = {}
        self._rel_names: dict[int, dict[int, str]] = {}
        self._batchnorms: list[nn.Module] = []
        for mname, m in model.named_modules(remove_duplicate=False):
            if id(m) in self._modules:
                continue
            self._modules[id(m)] = (mname, m)
            if isinstance(m, _BatchNorm):
                self._batchnorms.append(m)
            own = []
            for pname, p in m._parameters.items():
                if p is None or not p.requires_grad or any(p is q for q in own):
                    continue
                k = id(p)
                if k not in self._names:
                    self._names[k] = f"{mname}.{pname}" if mname else pname
                    self._params[k] = p
                self._owners[k] = self._owners.get(k, 0) + 1
                self._owner_mods.setdefault(k, set()).add(id(m))
                own.append(p)
            if own:
                self._layers[id(m)] = _Layer(m, mname, not _fast(m), own)
        for layer in self._layers.values():
            layer.shared = any(self._owners[id(p)] > 1 for p in layer.params)
        # models made of torch's own Linear/Conv layers only: uses are attributed from the
        # autograd graph at the end of the forward (no TorchFunctionMode, hooks on the root
        # and the layers only); see _graph_attribution
        self._graph_mode = all(not layer.fallback for layer in self._layers.values())
        self._graph_nodes: list[tuple[_Layer, object, object]] = []
        self._active = False
        self._stack: list[int] = []         # module calls active now (ids), innermost last
        self._batched: list[bool] = []      # whether each of them received the batch
        self._mode: _UseTracker | None = None
        self._reset()

    # ------------------------------------------------------------------ attach / detach

    def attach(self) -> PerExampleStats:
        """Register the hooks (once; :meth:`detach` removes them)."""
        if self._handles:
            raise RuntimeError("PerExampleStats is already attached")
        tracked = [self.model] if self._graph_mode else self._tracked()
        for m in tracked:
            self._handles.append(m.register_forward_pre_hook(self._push, prepend=True,
                                                             with_kwargs=True))
        for m in self._batchnorms:
            self._handles.append(m.register_forward_pre_hook(self._bn_pre_hook))
        for layer in self._layers.values():
            hook = self._fallback_hook if layer.fallback else self._layer_hook
            self._handles.append(layer.module.register_forward_hook(hook, with_kwargs=True))
        for m in tracked:
            self._handles.append(m.register_forward_hook(self._pop, with_kwargs=True,
                                                         always_call=True))
        return self

    def _tracked(self) -> list[nn.Module]:
        """The module calls that the use tracker follows: the model and the modules with a
        trainable parameter in their subtree (any other module can neither own a parameter
        nor be an attribution site; a use inside it counts as a use inside its innermost
        tracked ancestor). Found at attach time, and only without the graph mode (a walk of
        every subtree: half the constructor's time on a small MLP)."""
        tracked = [m for _, m in self._modules.values()
                   if any(p.requires_grad for p in m.parameters())]
        if self.model not in tracked:
            tracked.insert(0, self.model)
        return tracked

    def detach(self) -> None:
        """Remove the hooks; results already computed stay readable."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._clear_grad_watch()
        if self._mode is not None:      # detached in the middle of a forward
            self._stop_tracking()

    def __enter__(self) -> PerExampleStats:
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    # ------------------------------------------------------------------ results

    def sq_norms(self) -> torch.Tensor:
        """‖g_b‖² = Σ_params ‖∇_p ℓ_b‖² for each example of the last batch, shape (B,) (SPEC §3)."""
        self._check_norms()
        if not self._norms:
            return _sum_over_params({})
        # Σ_p in _norms' order, each 2-D Linear weight as one multiply-add of its factors
        # ‖δ_b‖²·‖x_b‖², one scale at the end: a third of the small kernels of summing
        # sq_norms_by_param (its value up to rounding)
        total = None
        for v in self._norms.values():
            if isinstance(v, tuple):
                total = v[0] * v[1] if total is None else total.addcmul_(v[0], v[1])
            else:
                total = v.clone() if total is None else total.add_(v)
        scale = self._scale()
        return total.mul_(scale) if scale != 1 else total

    def sq_norms_by_param(self) -> dict[str, torch.Tensor]:
        """‖∇_p ℓ_b‖² per parameter name, each of shape (B,) (SPEC §3); parameters that did not
        take part in the forward are absent."""
        self._check_norms()
        scale = self._scale()
        out = {}
        for k, v in self._norms.items():
            if isinstance(v, tuple):                    # ‖δ_b‖²‖x_b‖², kept as its factors
                v = v[0] * v[1]
            out[self._names[k]] = v * scale if scale != 1 else v
        return out

    def sq_norm_sums(self) -> dict[str, torch.Tensor]:
        """Σ_b ‖∇_p ℓ_b‖² per parameter name, 0-d tensors (SPEC §3: the numerator of tr Σ_p);
        for a 2-D Linear weight Σ_b ‖δ_b‖²‖x_b‖² is one dot product of the two factors (the
        per-example norms are not formed). Parameters that did not take part are absent."""
        self._check_norms()
        scale = self._scale()
        out = {}
        for k, v in self._norms.items():
            v = torch.dot(v[0], v[1]) if isinstance(v, tuple) else v.sum()
            out[self._names[k]] = v * scale if scale != 1 else v
        return out

    def gram_by_param(self) -> dict[str, torch.Tensor]:
        """K_p[a, b] = ⟨∇_p ℓ_a, ∇_p ℓ_b⟩ per parameter name, each (B, B); parameters that did
        not take part in the forward are absent. Its diagonal is :meth:`sq_norms_by_param`."""
        if not self.want_gram:
            raise RuntimeError("constructed with gram=False")
        self._finalize()
        scale = self._scale()
        return {self._names[k]: (v * scale if scale != 1 else v) for k, v in self._gram.items()}

    def gram(self) -> torch.Tensor:
        """K[a, b] = ⟨g_a, g_b⟩ = Σ_p K_p[a, b] over all parameters, shape (B, B)."""
        by_param = self.gram_by_param()
        return _sum_over_params(by_param)

    def sum_sq(self) -> dict[str, torch.Tensor]:
        """Σ_b (∇_p ℓ_b)² per coordinate, one tensor of p's shape per parameter name that
        requires grad (zeros for parameters not used by the forward) (SPEC §3)."""
        if not self.want_sum_sq:
            raise RuntimeError("constructed with sum_sq=False")
        self._finalize()
        scale = self._scale()
        out = {}
        for k, name in self._names.items():
            v = self._sum_sq.get(k)
            if v is None:
                out[name] = torch.zeros_like(self._params[k])
            else:
                out[name] = v * scale if scale != 1 else v
        return out

    # ------------------------------------------------------------------ internals

    def _check_norms(self) -> None:
        if not self.want_norms:
            raise RuntimeError("constructed with norms=False")
        self._finalize()

    def _scale(self) -> float:
        return float(self.batch_size) ** 2 if self.reduction == "mean" else 1.0

    def _reset(self) -> None:
        self._batch += 1
        for layer in self._layers.values():
            layer.uses = []
            layer.finished = False
        self._pending: dict[int, list] = {}
        self._done_owners: dict[int, int] = {}
        self._norms: dict[int, torch.Tensor | tuple[torch.Tensor, torch.Tensor]] = {}
        self._sum_sq: dict[int, torch.Tensor] = {}
        self._gram: dict[int, torch.Tensor] = {}
        self._finalized = False
        # use tracking: common prefix of the module stacks of each parameter's uses, the
        # parameters used outside their owners, calls of modules without own parameters
        # (possible attribution sites), the chosen sites
        self._use_prefix: dict[int, tuple[int, ...]] = {}
        self._nonlocal: set[int] = set()
        self._calls: dict[int, list] = {}
        self._site_of: dict[int, int] = {}
        self._unbatched: set[int] = set()
        self._scalar_calls: set[int] = set()    # modules with a call returning only 0-d outputs
        self._sites: dict[int, _Layer] = {}
        self._error: str | None = None
        self._clear_grad_watch()

    def _clear_grad_watch(self) -> None:
        for h in getattr(self, "_grad_watch", []):
            h.remove()
        self._grad_watch: list = []

    def _note_use(self, k: int) -> None:
        """A torch call received parameter ``k`` inside the current module stack."""
        stack = self._stack
        prev = self._use_prefix.get(k)
        if prev is None:
            self._use_prefix[k] = tuple(stack)
        else:
            n, top = 0, min(len(prev), len(stack))
            while n < top and prev[n] == stack[n]:
                n += 1
            if n < len(prev):
                self._use_prefix[k] = prev[:n]
        if stack[-1] not in self._owner_mods[k] or not self._batched[-1]:
            self._nonlocal.add(k)

    # The forward hooks run while the use tracker is active: their own torch calls
    # (x.detach(), register_hook, …) are kept out of it.

    def _push(self, module, args, kwargs):
        if self._mode is None:
            return self._push_body(module, args, kwargs)
        with _NO_TORCH_FUNCTION():
            return self._push_body(module, args, kwargs)

    def _pop(self, module, args, kwargs, output):
        if self._mode is None:
            return self._pop_body(module, args, kwargs, output)
        with _NO_TORCH_FUNCTION():
            return self._pop_body(module, args, kwargs, output)

    def _layer_hook(self, module, args, kwargs, output):
        if self._mode is None:
            return self._layer_hook_body(module, args, kwargs, output)
        with _NO_TORCH_FUNCTION():
            return self._layer_hook_body(module, args, kwargs, output)

    def _fallback_hook(self, module, args, kwargs, output):
        if self._mode is None:
            return self._fallback_hook_body(module, args, kwargs, output)
        with _NO_TORCH_FUNCTION():
            return self._fallback_hook_body(module, args, kwargs, output)

    def _push_body(self, module, args, kwargs):
        if module is self.model and not self._stack:
            if not self._recording or not torch.is_grad_enabled():
                self._active = False
                return None
            self._start_batch(args, kwargs)
        if self._active:
            batched = self._batched_call(module, args, kwargs)
            self._stack.append(id(module))
            self._batched.append(batched)
            if not batched:
                self._unbatched.add(id(module))
        return None

    def _batched_call(self, module, args, kwargs) -> bool:
        """Whether a call receives a tensor (not a parameter) with the batch dimension: only
        such calls can be re-run per example."""
        B = self.batch_size
        if isinstance(module, nn.RNNBase):
            x = args[0] if args else kwargs.get("input")
            if not isinstance(x, torch.Tensor) or x.dim() != 3:
                raise ValueError(f"{type(module).__name__} {self._modules[id(module)][0]!r}: "
                                 "per-example statistics need a batched 3-D tensor input (not "
                                 "a PackedSequence or an unbatched sequence)")
            return True
        for a in (*args, *kwargs.values()):
            if isinstance(a, torch.Tensor):
                if a.dim() > 0 and a.shape[0] == B and id(a) not in self._params:
                    return True
            elif isinstance(a, (list, tuple, dict)):
                for t in pytree.tree_leaves(a):
                    if (isinstance(t, torch.Tensor) and t.dim() > 0 and t.shape[0] == B
                            and id(t) not in self._params):
                        return True
        return False

    def _pop_body(self, module, args, kwargs, output):
        if not self._active:
            return None
        if not self._stack or self._stack[-1] != id(module):
            if module is self.model:        # the forward failed before the root was pushed
                self._stop_tracking()
            return None
        self._stack.pop()
        self._batched.pop()
        if id(module) not in self._layers:          # a possible attribution site
            versions = ([output._version] if isinstance(output, torch.Tensor) else
                        [t._version for t in pytree.tree_leaves(output)
                         if isinstance(t, torch.Tensor)])
            self._calls.setdefault(id(module), []).append((args, kwargs, output, versions))
        if not self._stack:
            self._stop_tracking()
            if output is not None:
                if self._graph_mode and not self._chain_attribution(output):
                    self._graph_attribution(output)
                self._forward_done()
            self._graph_nodes.clear()
        return None

    def _start_batch(self, args, kwargs) -> None:
        """A new batch: its size is the first dimension of the first tensor argument of the
        model (positional first, then keyword: ``model(**inputs)``)."""
        self._reset()
        self.batch_size = None
        first = args[0] if args else None
        if isinstance(first, torch.Tensor) and first.dim() > 0:
            self.batch_size = first.shape[0]
        else:
            for t in pytree.tree_leaves((args, kwargs)):
                if isinstance(t, torch.Tensor) and t.dim() > 0:
                    self.batch_size = t.shape[0]
                    break
        self._active = True
        if not self._graph_mode:
            self._mode = _UseTracker(self)
            self._mode.__enter__()

    def _stop_tracking(self) -> None:
        mode, self._mode = self._mode, None
        self._active = False
        self._stack.clear()
        self._batched.clear()
        if mode is not None:
            mode.__exit__(None, None, None)

    def _forward_done(self) -> None:
        """The recorded forward returned: attribute every parameter used outside its owners
        to the innermost module call that encloses all its uses and contains it, hook the
        outputs of those calls, and watch the parameters that had no use at all."""
        for k in self._nonlocal:
            site = None
            for mid in reversed(self._use_prefix[k]):
                if k in self._contained(mid) and mid not in self._unbatched:
                    site = mid
                    break
            if site is None:
                raise ValueError(f"parameter {self._names[k]!r} is used in no module call that "
                                 "receives the batch: its per-example gradients cannot be "
                                 "attributed")
            name, m = self._modules[site]
            layer = self._layers.get(site)
            if layer is not None and not layer.fallback:  # pragma: no cover - Linear.forward
                raise ValueError(f"parameter {self._names[k]!r} is used inside {name!r} "
                                 "without being its weight or bias: cannot attribute it")
            self._site_of[k] = site
            if layer is None and site not in self._sites:
                self._sites[site] = self._lazy_site(site)
        self._calls.clear()
        unused = [p for k, p in self._params.items() if k not in self._use_prefix]
        for p in unused:
            self._grad_watch.append(p.register_post_accumulate_grad_hook(self._unseen_grad))

    def _chain_attribution(self, output) -> bool:
        """The proof of :meth:`_graph_attribution` for a graph that is one chain (SPEC §3):
        True when it holds, False when the graph is not a chain (then the full walk decides).

        From the model's one output, follow the path of nodes: a node that is a recorded
        layer call's output node must have, besides the edge to the node of the layer's
        input (where the path goes on), exactly one edge — directly or through one-edge
        nodes such as ``W.t()`` — to each of the layer's own parameters that require grad,
        and none elsewhere; any other node must have at most one edge that carries a
        gradient, and it must not lead to a leaf (a parameter, or an input that requires
        grad). Then every node that reaches the outputs was visited (each has one
        predecessor on the path) and every edge into a parameter is a use inside a call of
        a layer that owns it: each use is local, exactly as the full walk would find. No
        verdict is kept from one forward to the next; a forward that uses a parameter
        anywhere else, on any call, branches or reaches a leaf and goes to the full walk.
        """
        if not isinstance(output, torch.Tensor) or output.grad_fn is None:
            return False
        layer_of: dict[object, tuple[_Layer, object]] = {}
        for layer, node, x_node in self._graph_nodes:
            if x_node is False or node is None or node in layer_of:
                return False
            layer_of[node] = (layer, x_node)
        counts: dict[int, int] = {}
        node = output.grad_fn
        while node is not None:
            entry = layer_of.pop(node, None)
            if entry is None:                       # between layers: one edge at most
                nxt = None
                for t, _ in node.next_functions:
                    if t is not None:
                        if nxt is not None:
                            return False
                        nxt = t
                if nxt is not None and type(nxt) is _ACCUMULATE:
                    return False                    # a leaf used outside the layers
                node = nxt
                continue
            layer, x_node = entry
            # its weight and bias as the constructor found them (requiring grad): a weight
            # replaced or frozen since then fails the test below, and the full walk decides
            own = [id(p) for p in layer.params]
            hit: list[int] = []
            nxt = None
            for t, _ in node.next_functions:
                if t is None:
                    continue
                if t is x_node and nxt is None:
                    nxt = t
                    continue
                while type(t) is not _ACCUMULATE:   # a view or cast of the parameter
                    tn = t.next_functions
                    if len(tn) != 1 or tn[0][0] is None:
                        return False
                    t = tn[0][0]
                k = id(t.variable)
                if k not in own or k in hit:
                    return False
                hit.append(k)
            if len(hit) != len(own) or (x_node is not None and nxt is None):
                return False
            for k in own:
                counts[k] = counts.get(k, 0) + 1
            node = nxt
        root = (id(self.model),)
        for k in counts:
            self._use_prefix[k] = root
        return True

    def _graph_attribution(self, output) -> None:
        """Attribution from the autograd graph of the forward (models whose layers are all
        torch Linear/Conv modules; SPEC §3).

        From the model's outputs, count the *uses* of every parameter p that reach them: the
        edges into p's AccumulateGrad node, where an edge from a unary node (one input:
        ``p.t()``, a cast, a view) counts as many uses as that node has itself. Each call of
        an owner layer whose output reaches the outputs is one use of its weight and one of
        its bias. Where the two counts agree, every use of p is inside its owners' calls (any
        other use — ``F.linear(h, emb.weight)`` in the parent, the weight read by another
        module — adds at least one); where they differ, p is attributed to the model call
        itself, whose per-example ``vjp`` gives its whole gradient.
        """
        leaves = [t for t in pytree.tree_leaves(output)
                  if isinstance(t, torch.Tensor) and t.requires_grad]
        uses: dict[int, int] = {}
        roots: dict[object, int] = {}
        for t in leaves:
            if t.grad_fn is None:
                if id(t) in self._params:           # the model returned a parameter
                    uses[id(t)] = uses.get(id(t), 0) + 1
            else:
                roots[t.grad_fn] = roots.get(t.grad_fn, 0) + 1
        # consumers of unary nodes and AccumulateGrad nodes, in one pass over the graph
        consumers: dict[object, list] = {}
        unary: set[object] = set()          # nodes with one input edge
        # next_functions of each node seen (read once: each read builds a new tuple)
        seen: dict[object, tuple] = {r: r.next_functions for r in roots}
        todo = list(roots)
        acc = []
        while todo:
            node = todo.pop()
            nexts = seen[node]
            if len(nexts) == 1:
                unary.add(node)
            for nxt, _ in nexts:
                if nxt is None:
                    continue
                nf = seen.get(nxt)
                if nf is None:
                    seen[nxt] = nf = nxt.next_functions
                    todo.append(nxt)
                if len(nf) <= 1:
                    lst = consumers.get(nxt)
                    if lst is None:
                        consumers[nxt] = lst = []
                        if not nf:
                            acc.append(nxt)
                    lst.append(node)
        memo: dict[object, int] = {}
        for node in acc:
            var = getattr(node, "variable", None)
            if var is not None and id(var) in self._params:
                uses[id(var)] = uses.get(id(var), 0) + _count_uses(node, roots, consumers,
                                                                   unary, memo)
        local: dict[int, int] = {}
        for layer, node, _ in self._graph_nodes:
            if node in seen:
                m = layer.module
                for p in (m.weight, m.bias):
                    if p is not None and id(p) in self._params:
                        local[id(p)] = local.get(id(p), 0) + 1
        root = (id(self.model),)
        for k in uses.keys() | local.keys():
            self._use_prefix[k] = root
            if uses.get(k, 0) != local.get(k, 0):
                self._nonlocal.add(k)

    def _unseen_grad(self, p: torch.Tensor) -> None:
        if self._error is None:
            self._error = (f"parameter {self._names[id(p)]!r} received a gradient, but no "
                           "torch call of the model's forward used it (used outside the "
                           "forward, e.g. in the loss): per-example statistics cannot see it")

    def _contained(self, mid: int) -> dict[int, str]:
        """Parameters (id → name relative to the module) inside module ``mid``."""
        names = self._rel_names.get(mid)
        if names is None:
            m = self._modules[mid][1]
            names = {}
            for n, p in m.named_parameters(remove_duplicate=False):
                names.setdefault(id(p), n)
            self._rel_names[mid] = names
        return names

    def _lazy_site(self, mid: int) -> _Layer:
        """A module without own parameters that encloses all uses of some parameter: its
        recorded calls become fallback uses, hooked now (before the backward)."""
        name, m = self._modules[mid]
        site = _Layer(m, name, True, [])
        for args, kwargs, output, versions in self._calls.get(mid, []):
            use = self._fallback_use(site, args, kwargs, output, versions)
            if use is not None:
                site.uses.append(use)
        return site

    def _bn_pre_hook(self, module, args):
        if self._active and (module.training or module.running_mean is None):
            raise ValueError(BATCHNORM_MESSAGE)

    def _bad_batch(self, layer: _Layer, x: torch.Tensor) -> None:
        raise ValueError(
            f"{type(layer.module).__name__} {layer.name!r} got an input of shape "
            f"{tuple(x.shape)}: per-example statistics need the batch dimension "
            f"(size {self.batch_size}) first"
        )

    def _layer_hook_body(self, module, args, kwargs, output):
        if not self._active or not isinstance(output, torch.Tensor) or not output.requires_grad:
            return None
        layer = self._layers[id(module)]
        x = args[0] if args else kwargs["input"]
        if self.batch_size is None:
            self.batch_size = x.shape[0] if x.dim() > 0 else None
        if x.dim() < 2 or x.shape[0] != self.batch_size:
            self._bad_batch(layer, x)
        use = _Use(x.detach(), [output])
        layer.uses.append(use)
        if self._graph_mode:
            # the node that the layer's output edge to its input leads to (False: an input
            # that is a leaf requiring grad, which the chain walk leaves to the full walk)
            x_node = x.grad_fn if x.grad_fn is not None or not x.requires_grad else False
            self._graph_nodes.append((layer, output.grad_fn, x_node))
        output.register_hook(self._grad_hook(layer, use, 0))
        if self._collect is not None:
            self._collect.append((output, output._version, layer))
        return None

    def _fallback_hook_body(self, module, args, kwargs, output):
        if not self._active or id(module) in self._unbatched:
            return None
        layer = self._layers[id(module)]
        use = self._fallback_use(layer, args, kwargs, output, None)
        if use is not None:
            layer.uses.append(use)
        return None

    def _fallback_use(self, layer: _Layer, args, kwargs, output, versions: list | None):
        """Record one call of a module whose per-example gradients come from a per-example
        ``vjp`` of its forward: its inputs, the batch dimension of each input and output,
        detached outputs (to check the per-example re-run against) and gradient hooks."""
        leaves = pytree.tree_leaves(output)
        # a 0-d output is a loss the module reduced itself (a model that computes its loss
        # when given labels): its gradient reaches the parameters through the batched
        # outputs it was computed from, whose δ already holds it
        grad_idx = [i for i, t in enumerate(leaves)
                    if isinstance(t, torch.Tensor) and t.requires_grad and t.dim() > 0]
        if not grad_idx:
            if any(isinstance(t, torch.Tensor) and t.requires_grad for t in leaves):
                self._scalar_calls.add(id(layer.module))
            return None
        if isinstance(layer.module, nn.RNNBase):
            args, kwargs = _explicit_hidden(layer.module, args, kwargs)
        flat, spec = pytree.tree_flatten((args, kwargs))
        in_dims, out_dims = _io_dims(layer.module, layer.name, flat, leaves, grad_idx,
                                     self.batch_size)
        outs = [leaves[i] for i in grad_idx]
        now = [t._version for t in leaves if isinstance(t, torch.Tensor)]
        if versions is not None and now != versions:
            raise ValueError(f"the output of {layer.name or 'the model'!r} was modified in "
                             "place after its call; per-example statistics need it unchanged")
        use = _Use(None, outs)
        use.in_dims, use.out_dims = in_dims, out_dims
        use.x = [t.detach() if isinstance(t, torch.Tensor) else t for t in flat]
        use.spec = spec
        use.grad_idx = grad_idx
        use.outputs = [(t.detach(), t._version) for t in outs]
        for i, t in enumerate(outs):
            t.register_hook(self._grad_hook(layer, use, i))
            if self._collect is not None:
                self._collect.append((t, t._version, layer))
        return use

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
            if (not layer.fallback and not layer.finished and not layer.deferred()
                    and all(u.pending == 0 for u in layer.uses)):
                self._finish_layer(layer)
            return None

        return hook

    def _local(self, p: torch.Tensor | None) -> bool:
        """Whether p requires grad and all its uses were inside its owners' calls."""
        return p is not None and id(p) in self._params and id(p) not in self._nonlocal

    def _finish_deferred(self, layer: _Layer) -> None:
        """2-D Linear used once: ‖g_b(W)‖² = ‖δ_b‖²‖x_b‖², ‖g_b(c)‖² = ‖δ_b‖²,
        Σ_b g_b(W)² = (δ²)ᵀ(x²), Σ_b g_b(c)² = Σ_b δ_b² (SPEC §3)."""
        layer.finished = True
        use = layer.uses[0]
        layer.uses = []
        d = use.deltas[0]
        if d is None:
            return
        x = use.x
        if x._version != use.x_version:
            self._modified(layer)
        m = layer.module
        w = m.weight if self._local(m.weight) else None
        b = m.bias if self._local(m.bias) else None
        if w is None and b is None:
            return
        if self.want_norms:
            dd = torch.linalg.vecdot(d, d)
            if w is not None:
                self._norms[id(w)] = (dd, torch.linalg.vecdot(x, x))
            if b is not None:
                self._norms[id(b)] = dd
        if self.want_sum_sq:
            d2 = d.square()
            if w is not None:
                self._sum_sq[id(w)] = d2.T @ x.square()
            if b is not None:
                self._sum_sq[id(b)] = d2.sum(0)
        if self.want_gram:
            kd = d @ d.T                    # ⟨g_a(c), g_b(c)⟩ = ⟨δ_a, δ_b⟩
            if w is not None:               # ⟨δ_a x_aᵀ, δ_b x_bᵀ⟩ = ⟨δ_a, δ_b⟩⟨x_a, x_b⟩
                self._gram[id(w)] = kd * (x @ x.T)
            if b is not None:
                self._gram[id(b)] = kd

    def _modified(self, layer: _Layer) -> None:
        raise RuntimeError(f"the input of {layer.name!r} was modified in place after the "
                           "forward; per-example statistics need it unchanged")

    def _finish_layer(self, layer: _Layer) -> None:
        """All output gradients of a Linear/Conv layer are in: hand its contributions over."""
        layer.finished = True
        m = layer.module
        uses = [u for u in layer.uses if u.deltas[0] is not None]
        layer.uses = []
        for u in uses:
            if u.x._version != u.x_version:
                self._modified(layer)
        w, b = m.weight, m.bias
        if self._local(w):
            self._add(w, [("factor", (m, u.x, u.deltas[0])) for u in uses])
        if self._local(b):
            dense = None
            for u in uses:
                d = u.deltas[0]
                per = (d.reshape(d.shape[0], -1, m.out_features).sum(1) if isinstance(m, nn.Linear)
                       else d.reshape(d.shape[0], m.out_channels, -1).sum(2))
                dense = per if dense is None else dense + per
            self._add(b, [("dense", dense)] if dense is not None else [])

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
        if self.want_gram:
            self._gram[k] = _gram_of(contribs, p.shape)
            if not (self.want_norms or self.want_sum_sq):
                return
        if (all(c[0] == "factor" for c in contribs)
                and len({_layout(c[1][0]) for c in contribs}) == 1):
            norms, sq = _weight_stats([c[1] for c in contribs], p.shape,
                                      self.want_norms, self.want_sum_sq)
        else:
            total = None
            for kind, c in contribs:
                g = _materialise([c], p.shape) if kind == "factor" else c
                g = g.reshape(g.shape[0], *p.shape)
                total = g if total is None else total + g
            norms = _sq_norm(total) if self.want_norms else None
            sq = total.square().sum(0) if self.want_sum_sq else None
        if norms is not None:
            self._norms[k] = norms
        if sq is not None:
            self._sum_sq[k] = sq

    def _site_params(self, layer: _Layer) -> dict[str, torch.Tensor]:
        """Parameters whose per-example gradients come from this module's ``vjp``: its own
        parameters used only inside their owners' calls, and the parameters attributed to it
        (names relative to the module, for ``functional_call``)."""
        mid = id(layer.module)
        names = self._contained(mid)
        out = {}
        for p in layer.params:
            k = id(p)
            if k in self._use_prefix and k not in self._nonlocal:
                out[names[k]] = p
        for k, site in self._site_of.items():
            if site == mid:
                out[names[k]] = self._params[k]
        return out

    def _finalize(self) -> None:
        if self._finalized:
            return
        self._finalized = True
        if self._error is not None:
            raise ValueError(self._error)
        for mid in self._scalar_calls:
            layer = self._layers.get(mid) or self._sites.get(mid)
            if layer is not None and self._site_params(layer):
                raise ValueError(f"{type(layer.module).__name__} {layer.name or '(the model)'!r} "
                                 "returns only a reduced (0-d) output: the per-example gradients "
                                 "of its parameters are not defined")
        fallbacks = [layer for layer in self._layers.values() if layer.fallback and layer.uses]
        fallbacks += [site for site in self._sites.values() if site.uses]
        for layer in self._layers.values():
            if layer.uses and not layer.finished and not layer.fallback:
                if layer.deferred():
                    self._finish_deferred(layer)
                else:   # some output gradient never arrived: it is zero
                    self._finish_layer(layer)
        if fallbacks:
            prev = self._recording
            self._recording = False
            try:
                for layer in fallbacks:
                    self._finish_fallback(layer)
            finally:
                self._recording = prev
        for k in list(self._pending):
            self._compute(k)

    def _finish_fallback(self, layer: _Layer) -> None:
        params = self._site_params(layer)
        uses, layer.uses = layer.uses, []
        layer.finished = True
        if not params:
            return
        total: dict[str, torch.Tensor] = {}
        for use in uses:
            if all(d is None for d in use.deltas):
                continue
            deltas = [d if d is not None else torch.zeros(meta[0], dtype=meta[1], device=meta[2])
                      for d, meta in zip(use.deltas, use.out_meta, strict=True)]
            grads = _vmap_vjp(layer, params, use, deltas)
            for n, g in grads.items():
                total[n] = g if n not in total else total[n] + g
        for n, g in total.items():
            self._add(params[n], [("dense", g.detach())], owner_done=False)


def _vmap_vjp(layer: _Layer, params: dict[str, torch.Tensor], use: _Use,
              deltas: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-example gradients of ``params`` from one recorded call of ``layer.module``: vmap
    over examples of the vjp of the module's forward at (args_b, kwargs_b) with the output
    gradients δ_b (SPEC §3 fallback). The per-example re-run must reproduce the recorded
    batched output (the module treats the examples independently); otherwise ValueError."""
    from torch.func import functional_call, vjp, vmap

    module = layer.module
    detached = {n: p.detach() for n, p in params.items()}
    in_dims, out_dims, spec, grad_idx = use.in_dims, use.out_dims, use.spec, use.grad_idx

    def one(flat_b, deltas_b):
        flat1 = [t.unsqueeze(d) if d is not None else t
                 for t, d in zip(flat_b, in_dims, strict=True)]
        args, kwargs = pytree.tree_unflatten(flat1, spec)

        def f(ps):
            out = pytree.tree_leaves(functional_call(module, ps, tuple(args), kwargs))
            return tuple(out[i] for i in grad_idx)

        outs, pullback = vjp(f, detached)
        grads = pullback(tuple(d.unsqueeze(od) for d, od in zip(deltas_b, out_dims,
                                                                  strict=True)))[0]
        return grads, tuple(o.squeeze(od) for o, od in zip(outs, out_dims, strict=True))

    what = f"{type(module).__name__} {layer.name or '(the model)'!r}"
    try:
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
            grads, outs = vmap(one, in_dims=(in_dims, tuple(out_dims)),
                               out_dims=(0, tuple(out_dims)), randomness="error")(
                use.x, tuple(deltas))
    except (RuntimeError, ValueError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        first = first.split(". ")[0].removesuffix(".")
        if "randomness" in first:
            raise ValueError(f"per-example gradients of {what} need a per-example re-run of "
                             "its forward, which uses randomness (dropout?): set its dropout "
                             "to 0 or use eval mode") from None
        raise ValueError(f"per-example gradients of {what} by torch.func failed: {first}; the "
                         "fallback re-runs the module per example, which needs a "
                         "deterministic forward that treats the examples of the batch "
                         "independently") from None
    for (ref, version), out in zip(use.outputs, outs, strict=True):
        if ref._version != version or not ref.is_floating_point():
            continue
        scale = float(ref.abs().max()) if ref.numel() else 0.0
        err = float((out.detach() - ref).abs().max()) if ref.numel() else 0.0
        if err > 1e4 * torch.finfo(ref.dtype).eps * max(scale, 1.0):
            raise ValueError(f"{what} does not treat the examples of a batch independently: "
                             f"its per-example re-run differs from the batched output by {err:.3g}"
                             " (per-example gradients are not defined)")
    return grads


# ---------------------------------------------------------------------------------------------
# Convenience functions
# ---------------------------------------------------------------------------------------------


def per_example_stats(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor,
                      *, norms: bool = True, sum_sq: bool = True,
                      by_param: bool = True) -> PerExampleResult:
    """‖g_b‖² and Σ_b g_b² for the batch (x, y) in one forward and one backward (SPEC §3).

    ``loss_fn(model(x), y)`` must return the per-example losses ℓ_b, shape (B,); g_b = ∇ℓ_b
    (per-example loss, not the mean). The backward of Σ_b ℓ_b is taken with respect to the
    layer outputs (not the parameters), so the weight gradients of the ordinary backward are
    not computed and ``p.grad`` is left untouched. See the module docstring for what is
    computed per layer type; BatchNorm in training mode raises ``ValueError``. ``norms`` /
    ``sum_sq`` / ``by_param`` select the parts of the :class:`PerExampleResult` to compute.
    """
    stats = PerExampleStats(model, norms=norms, sum_sq=sum_sq, reduction="sum")
    stats._collect = collected = []
    with stats:
        losses = loss_fn(model(x), y)
    stats._collect = None
    B = x.shape[0]
    if losses.shape != (B,):
        raise ValueError(f"loss_fn must return per-example losses of shape ({B},) (use "
                         f"reduction='none'), got shape {tuple(losses.shape)}")
    # targets of the backward: every recorded output (its gradient is δ); where an output was
    # modified in place after the layer (ReLU(inplace=True)), its parameters instead, so that
    # the layer's own backward node runs and its tensor hook sees the right δ
    targets: list[torch.Tensor] = []
    for t, version, layer in collected:
        if t._version == version:
            targets.append(t)
        else:
            targets.extend(p for p in layer.module.parameters(recurse=False) if p.requires_grad)
    collected.clear()
    unseen = [(stats._names[k], p) for k, p in stats._params.items()
              if k not in stats._use_prefix]
    stats._clear_grad_watch()       # checked here directly
    if targets or unseen:
        grads = torch.autograd.grad(losses.sum(), targets + [p for _, p in unseen],
                                    allow_unused=True)
        del targets
        for (n, _), g in zip(unseen, grads[len(grads) - len(unseen):], strict=True):
            if g is not None:
                raise ValueError(
                    f"parameter {n!r} receives a gradient, but no torch call of the model's "
                    "forward used it (used outside the forward, e.g. in the loss): "
                    "per-example statistics cannot see it"
                )
    out = PerExampleResult(losses=losses.detach())
    if norms:
        stats._finalize()
        out.sq_norms = stats.sq_norms() if stats._norms else losses.new_zeros(B)
        if by_param:
            out.sq_norms_by_param = stats.sq_norms_by_param()
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
    return per_example_stats(model, loss_fn, x, y, norms=True, sum_sq=False,
                             by_param=False).sq_norms


def per_example_sum_sq(model: nn.Module, loss_fn: Callable, x: torch.Tensor,
                       y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Σ_b g_b² per coordinate, {parameter name: tensor of its shape} (SPEC §3).

    g_b = ∇ℓ_b with ``loss_fn`` returning per-example losses. 2-D Linear layers use
    (δ²)ᵀ(x²); sequence/conv layers form their per-example gradients one layer (and one chunk
    of examples) at a time. Parameters that require grad but take no part in the forward get
    zeros. One forward and one backward; ``p.grad`` is left untouched.
    """
    return per_example_stats(model, loss_fn, x, y, norms=False, sum_sq=True).sum_sq


def _sum_over_params(by_param: dict[str, torch.Tensor]) -> torch.Tensor:
    """Σ_p of per-parameter statistics (‖∇_p ℓ_b‖² or K_p): the whole-model value; an empty
    dict (no parameter took part) is refused with one line."""
    if not by_param:
        raise RuntimeError("no parameter received per-example statistics: call the model "
                           "and backpropagate inside the PerExampleStats context first")
    total = None
    for v in by_param.values():
        total = v if total is None else total + v
    return total
