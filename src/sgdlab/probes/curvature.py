"""Curvature of the loss: Hessian- (and Gauss–Newton-) vector products, the top
eigenvalues, the trace and the spectral density (SPEC §1 for H = ∇²L and h_max, §4.3–§4.4
for where λ_max enters).

H = ∇²L is never formed. A Hessian-vector product is a double backward,
Hv = ∇(⟨∇L, v⟩) = Jᵀ_{∇L} v: the gradient graph of each batch is built once with
``create_graph=True`` and every product is one more backward through it
(:class:`HessianOperator`, the same re-use of the gradient graph that PyHessian makes).

* :func:`top_hessian_eigenvalue` — power iteration: the eigenvalue of largest *magnitude*;
  near a minimum (H ⪰ 0) that is h_max, the "L" of the notes' smoothness assumption, and
  full-batch gradient descent is stable only for η < 2/h_max.
* :func:`top_eigenvalues` — the k largest (algebraic) eigenvalues and their eigenvectors by
  Lanczos with full re-orthogonalisation (or ARPACK's implicitly restarted Lanczos,
  ``method="eigsh"``).
* :func:`hessian_trace` — Hutchinson's estimator of tr H and tr H² with standard errors.
* :func:`spectral_density` — stochastic Lanczos quadrature (SLQ) of the spectral density
  φ(t) = (1/n) Σᵢ δ(t − λᵢ), Gaussian-broadened on a grid, and its moments ∫ tᵖ φ(t) dt.
* :func:`layerwise` — any of these per layer: on the diagonal blocks H_SS of the parameter
  groups S (:func:`parameter_blocks`).

Each takes ``curvature="hessian"`` (default) or ``"ggn"``: the generalised Gauss–Newton
matrix G = Σ_b w_b J_bᵀ H_ℓ,b J_b (J the Jacobian of the model output in the parameters,
H_ℓ the Hessian of the mean loss in the output), H without the term of the model's own
second derivatives, positive semi-definite for a loss convex in the output (cross-entropy,
squared error); products Gv = Jᵀ(H_ℓ(Jv)) by three backwards through graphs kept per batch.
And ``params=`` (a submodule, names, parameters; :func:`resolve_params`): the operator on
the diagonal block C_SS of those parameters, the others held fixed.

The loss is the mean over the data, L = (1/N) Σ_b ℓ_b. Data are given as tensors ``x, y``
(split into chunks of ``chunk_size`` examples) or, with ``y=None``, as an iterable of
``(x_batch, y_batch)`` pairs: then L = Σ_batches (N_batch/N) L_batch, with ``loss_fn``
returning per-example losses or their mean per batch — the curvature of the full data set,
each batch weighted by its size.

Attention: the fused scaled-dot-product-attention kernels (flash attention on CPU) have no
double backward, so every gradient graph is built under ``sdpa_kernel(SDPBackend.MATH)``
(:func:`math_sdpa`): the same function, computed by the composite kernel that autograd can
differentiate twice.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class TopEigenvalue:
    """Result of :func:`top_hessian_eigenvalue`.

    ``lambda_max`` is the Rayleigh quotient at the last iterate (signed), ``stability_bound``
    = 2/λ_max (inf when λ_max ≤ 0), ``iterations`` used, ``converged`` when the relative
    change fell below ``tol``, ``vector`` the unit eigenvector estimate (flattened).
    """

    lambda_max: float
    stability_bound: float
    iterations: int
    converged: bool
    vector: torch.Tensor


def math_sdpa():
    """Context manager forcing the math backend of ``scaled_dot_product_attention`` (the only
    one with a double backward on every device); a no-op context where torch lacks it."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - old torch
        import contextlib
        return contextlib.nullcontext()
    return sdpa_kernel(SDPBackend.MATH)


@contextlib.contextmanager
def kept_norm_statistics(model: nn.Module):
    """Leave the running statistics of the model's BatchNorm layers as they were: a forward in
    training mode (where the Hessian is that of the batch statistics) would otherwise move
    ``running_mean``, ``running_var`` and ``num_batches_tracked`` once per graph built —
    once per product with ``retain_graphs=False``."""
    # the forward updates copies, swapped in for its duration: the graph it builds may have
    # saved them (an in-place restore would invalidate it), and the originals are put back
    saved = []
    for m in model.modules():
        if (isinstance(m, nn.modules.batchnorm._NormBase) and m.training
                and m.track_running_stats):
            bufs = {k: b for k, b in m._buffers.items() if b is not None}
            saved.append((m, bufs))
            for k, b in bufs.items():
                m._buffers[k] = b.clone()
    try:
        yield
    finally:
        for m, bufs in saved:
            m._buffers.update(bufs)


def _mean_loss(loss_fn: Callable, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    loss = loss_fn(out, y)
    return loss.mean() if loss.dim() > 0 else loss


def _batch_size(xb: Any, yb: Any) -> int:
    for t in (xb, yb):
        shape = getattr(t, "shape", None)
        if shape is not None and len(shape) > 0:
            return int(shape[0])
    return len(yb)


def _batches(x: Any, y: Any, chunk_size: int) -> list[tuple[Any, Any]]:
    """(x, y) tensors (anything with ``shape[0]`` and slicing) in chunks, or, for ``y=None``,
    the batches of the iterable ``x``."""
    if y is None:
        out = list(x)
        if not out:
            raise ValueError("the iterable of (x, y) batches is empty")
        return [tuple(b) for b in out]
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    n = int(x.shape[0])
    return [(x[s:s + chunk_size], y[s:s + chunk_size]) for s in range(0, n, chunk_size)]


CURVATURES = ("hessian", "ggn")


def _check_curvature(curvature: str) -> str:
    if curvature not in CURVATURES:
        raise ValueError(f"curvature must be 'hessian' or 'ggn', got {curvature!r}")
    return curvature


def resolve_params(model: nn.Module, params: Any = None) -> list[tuple[str, nn.Parameter]]:
    """The trainable parameters a curvature block S is restricted to, as (name, parameter)
    pairs in ``model.named_parameters()`` order (a tied weight under its first name).

    ``params`` is None (every trainable parameter), a submodule of ``model`` (its trainable
    parameters), a string (a parameter name — any alias of a tied weight too — or a module
    name: the trainable parameters under it; ``""`` is the whole model), a parameter of the
    model, or an iterable of these. A name or tensor that is not in the model, a frozen
    parameter named explicitly, or a selection with no trainable parameter raises one
    ``ValueError`` naming ``params`` and what it may be.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if params is None:
        if not named:
            raise ValueError("the model has no trainable parameters")
        return named
    trainable = {id(p) for _, p in named}
    alias = dict(model.named_parameters(remove_duplicate=False))
    modules = dict(model.named_modules(remove_duplicate=False))
    items = [params] if isinstance(params, (str, nn.Module, torch.Tensor)) else list(params)

    def allowed() -> str:
        names = [n for n, _ in named]
        shown = ", ".join(names[:12]) + (", …" if len(names) > 12 else "")
        return ("allowed: None, a submodule of the model, a module name, trainable parameter "
                f"names or parameters of the model, or a list of these (names: {shown})")

    chosen: set[int] = set()
    for item in items:
        if isinstance(item, str) and item in alias:
            explicit = [alias[item]]
        elif isinstance(item, str) and item in modules:
            chosen.update(id(p) for p in modules[item].parameters() if id(p) in trainable)
            continue
        elif isinstance(item, str):
            raise ValueError(f"params: {item!r} is neither a parameter nor a module of the "
                             f"model; {allowed()}")
        elif isinstance(item, nn.Module):
            if not any(m is item for m in modules.values()):
                raise ValueError(f"params: the {type(item).__name__} given is not a submodule "
                                 f"of the model; {allowed()}")
            chosen.update(id(p) for p in item.parameters() if id(p) in trainable)
            continue
        elif isinstance(item, torch.Tensor):
            explicit = [item]
        else:
            raise ValueError(f"params: cannot use a {type(item).__name__}; {allowed()}")
        for p in explicit:
            if id(p) not in trainable:
                what = ("does not require grad" if any(p is q for q in alias.values())
                        else "is not a parameter of the model")
                raise ValueError(f"params: the tensor of shape {tuple(p.shape)} {what}; "
                                 f"{allowed()}")
            chosen.add(id(p))
    out = [(n, p) for n, p in named if id(p) in chosen]
    if not out:
        raise ValueError(f"params: the selection has no trainable parameter; {allowed()}")
    return out


class HessianOperator:
    """The curvature of the mean loss over the data — the Hessian H or the generalised
    Gauss–Newton matrix G — as a linear map on flat vectors (SPEC §1: H = ∇²L).

    Vectors are flat, of length n = Σ_p numel(p) over the parameters of the block S
    (``params``; default every trainable parameter, :func:`resolve_params`) in
    ``model.named_parameters()`` order (``names``). For a block the map is the diagonal
    block C_SS of the full matrix: the curvature in the parameters of S with the others held
    fixed. The data term is L = Σ_batches w_b L_b with w_b = N_b/N and L_b the batch's mean
    loss.

    ``curvature="hessian"`` (default): for each batch the gradient g = ∇_S L_b is computed
    once with ``create_graph=True`` and kept (``retain_graphs=True``); a product is one
    backward through it, Hv = Σ_b w_b Jᵀ_g v (``torch.autograd.grad(g, params,
    grad_outputs=v)`` = ∇⟨g, v⟩ without building the dot product).

    ``curvature="ggn"``: G = Σ_b w_b J_bᵀ H_ℓ,b J_b with f = model(x_b) the batch's output,
    J_b = ∂f/∂Φ_S its Jacobian and H_ℓ,b = ∂²L_b/∂f² the Hessian of the batch's mean loss in
    the output (for cross-entropy over logits z: blockdiag_i (diag pᵢ − pᵢpᵢᵀ)/N_b with
    pᵢ = softmax zᵢ; for ½‖f − t‖²: I/N_b) — H without the term Σ_i ∂L/∂fᵢ ∇²fᵢ, and
    G ⪰ 0 whenever the loss is convex in the output. A product is three backwards through
    graphs kept per batch: Jv by the double-backward trick (with a dummy u, Jᵀu =
    ``grad(f, Φ_S, u, create_graph=True)`` is linear in u and J v = ∂⟨Jᵀu, v⟩/∂u), then
    H_ℓ(Jv) by a double backward of the loss in the (detached) output, then Jᵀ(·) by a
    vector–Jacobian product through the forward graph. H_ℓ is the Hessian of the whole
    batch loss in the whole output, so a loss that couples examples is handled. The loss
    must be a function of the output (and y) alone, differentiable in it — a loss that also
    uses the parameters directly (a penalty), a non-differentiable one (accuracy) or a model
    whose output is not one floating-point tensor raises ValueError; a loss linear in the
    output has H_ℓ = 0, so G = 0.

    :meth:`matmat` does B products in one vmapped backward each (``is_grads_batched``).
    ``retain_graphs=False`` rebuilds the graphs of every batch for every product: the
    memory of one batch's graphs instead of all of them, at ~1.5× the time. ``hvps`` counts
    the products (a B-column ``matmat``: B). The model's parameters, ``.grad`` and the
    BatchNorm running statistics are untouched (:func:`kept_norm_statistics`); the model's
    mode is left as it is (BatchNorm in training mode uses each batch's statistics).
    """

    def __init__(self, model: nn.Module, loss_fn: Callable, x: Any, y: Any = None,
                 chunk_size: int = 4096, retain_graphs: bool = True, *,
                 curvature: str = "hessian", params: Any = None) -> None:
        self.model, self.loss_fn, self.retain = model, loss_fn, retain_graphs
        self.curvature = _check_curvature(curvature)
        named = resolve_params(model, params)
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.shapes = [p.shape for p in self.params]
        self.numels = [p.numel() for p in self.params]
        self.n = sum(self.numels)
        self.dtype, self.device = self.params[0].dtype, self.params[0].device
        self.batches = _batches(x, y, chunk_size)
        sizes = [_batch_size(xb, yb) for xb, yb in self.batches]
        total = sum(sizes)
        self.weights = [s / total for s in sizes]
        self.hvps = 0
        build = self._graph if curvature == "hessian" else self._ggn_graph
        self._build = build
        self._graphs = [build(b) for b in self.batches] if retain_graphs else None

    def _graph(self, batch: tuple[Any, Any]) -> tuple[list[torch.Tensor], list[int]]:
        """g = ∇_S L_batch with its graph, restricted to the entries that depend on Φ_S."""
        xb, yb = batch
        with math_sdpa(), kept_norm_statistics(self.model):
            loss = _mean_loss(self.loss_fn, self.model(xb), yb)
            grads = torch.autograd.grad(loss, self.params, create_graph=True,
                                        allow_unused=True)
        keep = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        return [grads[i] for i in keep], keep

    def _ggn_graph(self, batch: tuple[Any, Any]) -> tuple[Any, list[int]]:
        """The graphs of one batch for G: the output f, Jᵀu (linear in the dummy u, built
        with ``create_graph``), and ∂L_b/∂f with its graph in the detached output."""
        xb, yb = batch
        bad = 'curvature="ggn" needs '
        with math_sdpa(), kept_norm_statistics(self.model):
            out = self.model(xb)
            if not isinstance(out, torch.Tensor) or not out.is_floating_point():
                raise ValueError(bad + "a model whose output is one floating-point tensor, "
                                 f"got {type(out).__name__}")
            f = out.detach().requires_grad_(True)
            loss = self.loss_fn(f, yb)
            if isinstance(loss, torch.Tensor) and loss.dim() > 0:
                loss = loss.mean()
            if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
                raise ValueError(bad + "a loss_fn(output, y) differentiable in the model "
                                 "output (its value has no gradient in the output)")
            direct = torch.autograd.grad(loss, self.params, retain_graph=True,
                                         allow_unused=True)
            if any(d is not None for d in direct):
                raise ValueError(bad + "a loss_fn(output, y) that depends on the parameters "
                                 "only through the model output (it uses them directly, "
                                 "e.g. a penalty); use curvature='hessian'")
            (g_out,) = torch.autograd.grad(loss, f, create_graph=True)
            if not out.requires_grad:
                return None, []
            u = torch.zeros_like(out, requires_grad=True)
            jtu = torch.autograd.grad(out, self.params, grad_outputs=u, create_graph=True,
                                      allow_unused=True)
        keep = [i for i, t in enumerate(jtu) if t is not None and t.requires_grad]
        return (out, f, g_out, u, [jtu[i] for i in keep]), keep

    def _split(self, v: torch.Tensor, keep: list[int]) -> list[torch.Tensor]:
        parts = torch.split(v, self.numels, dim=-1)
        lead = v.shape[:-1]
        return [parts[i].reshape(*lead, *self.shapes[i]) for i in keep]

    def _ggn_product(self, graph: Any, keep: list[int], v: torch.Tensor, batched: bool
                     ) -> tuple[torch.Tensor | None, ...]:
        out, f, g_out, u, jtu = graph
        with math_sdpa():
            (jv,) = torch.autograd.grad(jtu, u, grad_outputs=self._split(v, keep),
                                        retain_graph=True, is_grads_batched=batched)
            if not g_out.requires_grad:       # the loss is linear in the output: H_ℓ = 0
                return (None,) * len(self.params)
            (hjv,) = torch.autograd.grad(g_out, f, grad_outputs=jv, retain_graph=True,
                                         is_grads_batched=batched, allow_unused=True)
            if hjv is None:
                return (None,) * len(self.params)
            return torch.autograd.grad(out, self.params, grad_outputs=hjv.to(out.dtype),
                                       retain_graph=True, allow_unused=True,
                                       is_grads_batched=batched)

    def _apply(self, v: torch.Tensor, batched: bool) -> torch.Tensor:
        v = v.to(self.dtype)
        out = torch.zeros(v.shape, dtype=torch.float64, device=self.device)
        for j, batch in enumerate(self.batches):
            graph, keep = self._graphs[j] if self.retain else self._build(batch)
            if not keep:
                continue
            if self.curvature == "ggn":
                hv = self._ggn_product(graph, keep, v, batched)
            else:
                with math_sdpa():
                    hv = torch.autograd.grad(graph, self.params,
                                             grad_outputs=self._split(v, keep),
                                             retain_graph=self.retain, allow_unused=True,
                                             is_grads_batched=batched)
            flat = [h.reshape(*v.shape[:-1], -1) if h is not None else
                    torch.zeros(*v.shape[:-1], k, dtype=self.dtype, device=self.device)
                    for h, k in zip(hv, self.numels, strict=True)]
            out.add_(torch.cat(flat, dim=-1), alpha=self.weights[j])
        self.hvps += v.shape[0] if batched else 1
        return out

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """Cv (C = H or G) for a flat v of length n (float64 result)."""
        return self._apply(v.to(self.device), batched=False)

    def matmat(self, vs: torch.Tensor) -> torch.Tensor:
        """C vᵢ for the B rows of vs (B, n), in one vmapped backward per batch (float64)."""
        if vs.shape[0] == 1:
            return self.matvec(vs[0])[None]
        return self._apply(vs.to(self.device), batched=True)

    def unflatten(self, v: torch.Tensor) -> list[torch.Tensor]:
        """A flat vector as one tensor per parameter of the block (``names`` order)."""
        return self._split(v, list(range(len(self.params))))

    def dense(self) -> torch.Tensor:
        """The n × n matrix itself (n products, as one ``matmat`` of the identity; small
        blocks only)."""
        return self.matmat(torch.eye(self.n, dtype=torch.float64, device=self.device))


def hessian_vector_product(model: nn.Module, loss_fn: Callable, x: Any, y: Any,
                           vecs: list[torch.Tensor],
                           chunk_size: int = 4096) -> list[torch.Tensor]:
    """Hv for the mean loss L = (1/N) Σ_b ℓ_b over (x, y), by double backward in chunks.

    ``loss_fn(output, y)`` may return per-example losses (averaged here) or their mean.
    ``vecs`` has one tensor per trainable parameter, in ``model.parameters()`` order.
    Runs under :func:`math_sdpa` (attention models: a double backward exists). For many
    products use :class:`HessianOperator`, which builds the gradient graph once.
    """
    op = HessianOperator(model, loss_fn, x, y, chunk_size, retain_graphs=False)
    flat = torch.cat([v.reshape(-1) for v in vecs])
    return [t.to(p.dtype) for t, p in zip(op.unflatten(op.matvec(flat)), op.params,
                                          strict=True)]


def _unit_start(n: int, seed: int, rademacher: bool = False, rows: int | None = None
                ) -> torch.Tensor:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    shape = (n,) if rows is None else (rows, n)
    if rademacher:
        v = torch.randint(0, 2, shape, generator=gen).to(torch.float64) * 2 - 1
    else:
        v = torch.randn(shape, generator=gen, dtype=torch.float64)
    return v


def top_hessian_eigenvalue(model: nn.Module, loss_fn: Callable, x: Any, y: Any,
                           iters: int = 100, tol: float = 1e-4,
                           seed: int = 0, chunk_size: int = 4096,
                           retain_graphs: bool = True, *, curvature: str = "hessian",
                           params: Any = None) -> TopEigenvalue:
    """Largest-magnitude eigenvalue of the Hessian of the mean loss over (x, y).

    Power iteration v ← Hv/‖Hv‖ from a seeded Gaussian start, stopping when
    |λ_k − λ_{k−1}| ≤ tol·|λ_k| or after ``iters`` iterations; λ_k = ⟨v_k, Hv_k⟩ (v_k unit).
    It converges like |λ₂/λ₁|ᵏ; :func:`top_eigenvalues` (Lanczos) needs far fewer products
    for the same accuracy. The gradient graph is built once per chunk and re-used by every
    product (:class:`HessianOperator`). Models in training mode with BatchNorm use batch
    statistics of each chunk; put the model in eval mode for the Hessian of the deployed
    function. The model's parameters and gradients are untouched. ``curvature`` and
    ``params`` as in :class:`HessianOperator` (the GGN, a block of the parameters).
    """
    if iters < 1:
        raise ValueError(f"iters must be an integer >= 1, got {iters}")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    op = HessianOperator(model, loss_fn, x, y, chunk_size, retain_graphs,
                         curvature=curvature, params=params)
    # the same start as before the operator: one Gaussian draw per parameter, in order
    gen = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.cat([torch.randn(p.shape, generator=gen, dtype=p.dtype).reshape(-1)
                   for p in op.params]).to(torch.float64).to(op.device)
    v = v / v.norm()
    lam, prev, converged, used = 0.0, None, False, 0
    for k in range(1, iters + 1):
        used = k
        hv = op.matvec(v)
        lam = float(v @ hv)
        norm = float(hv.norm())
        if norm == 0.0:
            converged = True
            break
        v = hv / norm
        if prev is not None and abs(lam - prev) <= tol * abs(lam):
            converged = True
            break
        prev = lam
    bound = 2.0 / lam if lam > 0 else math.inf
    return TopEigenvalue(lam, bound, used, converged, v.to(op.dtype))


# --------------------------------------------------------------------------- Lanczos


def _orthogonalise(w: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """w − Q Qᵀw twice (classical Gram–Schmidt, repeated: "twice is enough"), batched over
    the leading dimension: w (B, n), q (B, j, n)."""
    for _ in range(2):
        w = w - torch.einsum("bjn,bj->bn", q, torch.einsum("bjn,bn->bj", q, w))
    return w


def _lanczos(matmat: Callable[[torch.Tensor], torch.Tensor], v0: torch.Tensor, steps: int,
             stop: Callable[[torch.Tensor, torch.Tensor, int], bool] | None = None,
             seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """B independent Lanczos recurrences with full re-orthogonalisation, run side by side.

    From q₁ = v₀/‖v₀‖: w = Hq_j − α_j q_j − β_{j−1} q_{j−1}, α_j = q_jᵀHq_j, then w is
    re-orthogonalised against all of q₁…q_j, β_j = ‖w‖, q_{j+1} = w/β_j. After m steps
    HQ_m = Q_m T_m + β_m q_{m+1} e_mᵀ with T_m = tridiag(β, α, β). When β_j vanishes (an
    invariant subspace): for B = 1 the recurrence continues from a fresh random vector
    orthogonal to Q (β_j = 0 in T), for B > 1 that run stops at length j.
    ``stop(alpha, beta, m)`` (B = 1) is asked after every step whether to end.
    Returns α (B, m), β (B, m), Q (B, m, n) and the lengths of the runs.
    """
    b, n = v0.shape
    steps = min(steps, n)
    q = torch.zeros(b, steps, n, dtype=torch.float64, device=v0.device)
    alpha = torch.zeros(b, steps, dtype=torch.float64, device=v0.device)
    beta = torch.zeros(b, steps, dtype=torch.float64, device=v0.device)
    lengths = [steps] * b
    live = torch.ones(b, dtype=torch.bool, device=v0.device)
    cur = v0 / v0.norm(dim=1, keepdim=True)
    gen = torch.Generator(device="cpu").manual_seed(seed + 7919)
    for j in range(steps):
        q[:, j] = cur
        w = matmat(cur)
        alpha[:, j] = (w * cur).sum(1)
        w = _orthogonalise(w, q[:, :j + 1])
        nb = w.norm(dim=1)
        scale = alpha[:, :j + 1].abs().amax(1).clamp_min(torch.finfo(torch.float64).tiny)
        dead = nb <= 1e-10 * scale
        if b == 1 and bool(dead[0]) and j + 1 < steps:
            w = _orthogonalise(torch.randn(1, n, generator=gen, dtype=torch.float64)
                               .to(v0.device), q[:, :j + 1])
            nb = torch.zeros(1, dtype=torch.float64, device=v0.device)
            cur = w / w.norm(dim=1, keepdim=True)
        else:
            for r in torch.nonzero(dead & live).flatten().tolist():
                lengths[r] = j + 1
            live &= ~dead
            cur = torch.where(live[:, None], w / nb.clamp_min(1e-300)[:, None],
                              torch.zeros_like(w))
        beta[:, j] = torch.where(live, nb, torch.zeros_like(nb))
        if not bool(live.any()):
            break
        if stop is not None and stop(alpha[0, :j + 1], beta[0, :j + 1], j + 1):
            lengths = [j + 1]
            break
    m = max(lengths)
    return alpha[:, :m], beta[:, :m], q[:, :m], lengths


def _tridiag_eig(alpha: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (ascending) and eigenvectors of T = tridiag(β_{1..m−1}, α, β_{1..m−1})."""
    m = alpha.shape[-1]
    t = torch.diag(alpha)
    if m > 1:
        off = beta[:m - 1]
        t = t + torch.diag(off, 1) + torch.diag(off, -1)
    return torch.linalg.eigh(t)


@dataclass(frozen=True)
class Eigenpairs:
    """Result of :func:`top_eigenvalues`.

    ``eigenvalues`` (k,) float64, largest first (by magnitude for ``which="LM"``);
    ``eigenvectors`` (k, n) unit rows over the parameters ``names`` (flattened, in that
    order: all trainable ones in ``named_parameters`` order, or the block of ``params=``;
    :meth:`unflatten` splits a row into one tensor per name); ``residuals`` (k,) the
    residual norms ‖Hu − θu‖ of the Ritz pairs (each θ is within its residual of an
    eigenvalue of H); ``hvps`` Hessian-vector products used; ``converged`` when every residual
    is ≤ tol·|θ|.
    """

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    residuals: torch.Tensor
    hvps: int
    converged: bool
    names: tuple[str, ...] = ()
    shapes: tuple[torch.Size, ...] = ()

    def unflatten(self, i: int = 0) -> dict[str, torch.Tensor]:
        """Eigenvector ``i`` as {parameter name: tensor of its shape}."""
        parts = torch.split(self.eigenvectors[i], [math.prod(s) for s in self.shapes])
        return {n: t.reshape(s) for n, t, s in zip(self.names, parts, self.shapes,
                                                    strict=True)}


def top_eigenvalues(model: nn.Module, loss_fn: Callable, x: Any, y: Any = None, k: int = 1,
                    tol: float = 1e-6, max_iter: int | None = None, seed: int = 0,
                    which: str = "LA", method: str = "lanczos", chunk_size: int = 4096,
                    retain_graphs: bool = True, *, curvature: str = "hessian",
                    params: Any = None) -> Eigenpairs:
    """The k largest (algebraic) eigenvalues of the Hessian of the mean loss, and eigenvectors.

    ``method="lanczos"`` (default): the Lanczos recurrence with full re-orthogonalisation
    from a seeded Gaussian start q₁ builds an orthonormal basis Q_m of the Krylov space
    K_m = span{q₁, Hq₁, …, H^{m−1}q₁} and the tridiagonal T_m = Q_mᵀHQ_m. The Ritz pairs
    (θᵢ, uᵢ = Q_m sᵢ), from T_m sᵢ = θᵢ sᵢ, satisfy ‖Huᵢ − θᵢuᵢ‖ = β_m |e_mᵀsᵢ| =: rᵢ, and
    for symmetric H some eigenvalue lies in [θᵢ − rᵢ, θᵢ + rᵢ] (within rᵢ²/gapᵢ once θᵢ is
    separated by gapᵢ from the rest of the spectrum). The recurrence stops when the k
    largest Ritz values all have rᵢ ≤ tol·|θᵢ| (ARPACK's criterion; the eigenvalue error is
    then ≤ tol relative, in practice ≈ tol²) or after ``max_iter`` products (default
    min(n, max(100, 30k))). One product per step, against k·O(1/log(λ₁/λ₂)) per eigenvalue
    for deflated power iteration: the Krylov space is optimal for the extreme eigenvalues.
    Full re-orthogonalisation (two Gram–Schmidt passes against all of Q_m, O(mn) per
    step) keeps Q orthonormal in floating point, so no spurious copies of converged Ritz
    values appear. Repeated eigenvalues: the Krylov space of one start vector holds one
    direction of each eigenspace, so it sees one copy of an exactly repeated eigenvalue.
    When the recurrence exhausts an invariant subspace (β_j = 0: H has few distinct
    eigenvalues, e.g. a linear model's (XᵀX/N) ⊗ I) it restarts from a random vector
    orthogonal to it and stops only once that new Krylov space's extreme Ritz value has
    converged too, so further copies are found; a repeated eigenvalue *without* exhaustion
    (n far above the number of steps) may still show up once; ``method="eigsh"``
    (implicitly restarted) is a cross-check.

    ``method="eigsh"``: :func:`scipy.sparse.linalg.eigsh` (ARPACK, implicitly restarted
    Lanczos, ``which="LA"``) on a ``LinearOperator`` whose matvec is the same HVP.

    ``which="LA"`` (default): the k largest algebraic eigenvalues — at a saddle the negative
    ones are not among them; ``which="LM"``: the k largest in magnitude (what power iteration
    and PyHessian's deflated power iteration compute), ordered by |λ|.

    Data: tensors ``x, y`` or, with ``y=None``, an iterable of (x, y) batches (module
    docstring). ``curvature="ggn"`` works on the generalised Gauss–Newton matrix G instead
    of H, ``params`` on the diagonal block of a subset S of the parameters (eigenvectors of
    length n_S, in the block's order) — :class:`HessianOperator`; :func:`layerwise` for
    every layer at once.
    """
    if k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k}")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    if which not in ("LA", "LM"):
        raise ValueError(f"which must be 'LA' or 'LM', got {which!r}")
    if method not in ("lanczos", "eigsh"):
        raise ValueError(f"method must be 'lanczos' or 'eigsh', got {method!r}")
    op = HessianOperator(model, loss_fn, x, y, chunk_size, retain_graphs,
                         curvature=curvature, params=params)
    if k > op.n:
        raise ValueError(f"k={k} exceeds the number of parameters {op.n}")
    steps = min(op.n, max_iter if max_iter is not None else max(100, 30 * k))
    if steps < k:
        raise ValueError(f"max_iter={max_iter} is smaller than k={k}")
    v0 = _unit_start(op.n, seed)[None].to(op.device)
    if method == "eigsh":
        return _eigsh(op, v0[0], k, tol, steps, which)

    def residuals(alpha, beta, m):
        theta, s = _tridiag_eig(alpha, beta)
        key = theta if which == "LA" else theta.abs()
        top = torch.argsort(key, descending=True)[:k]
        return theta[top], s[:, top], beta[m - 1] * s[m - 1, top].abs()

    def stop(alpha, beta, m):
        if m < k:
            return False
        if m < op.n and float(beta[m - 1]) == 0.0:
            return False      # an invariant subspace: go on in its complement (restart)
        zero = torch.nonzero(beta[:m - 1] == 0).flatten()
        start = int(zero[-1]) + 1 if len(zero) else 0
        if start > 0:
            # after a restart the Krylov space of the complement must have found its own
            # extreme eigenvalues (a repeated eigenvalue's next copy is among them) first
            theta_b, s_b = _tridiag_eig(alpha[start:m], beta[start:m])
            ends = [0, -1] if which == "LM" else [-1]
            r_b = beta[m - 1] * s_b[m - 1 - start, ends].abs()
            if not bool((r_b <= tol * theta_b[ends].abs()).all()):
                return False
        theta, _, r = residuals(alpha, beta, m)
        return bool((r <= tol * theta.abs()).all())

    alpha, beta, q, lengths = _lanczos(op.matmat, v0, steps, stop, seed)
    m = lengths[0]
    theta, s, r = residuals(alpha[0, :m], beta[0, :m], m)
    vecs = s.T @ q[0, :m]
    vecs = vecs / vecs.norm(dim=1, keepdim=True)
    converged = bool((r <= tol * theta.abs()).all()) or m == op.n
    return Eigenpairs(theta.cpu(), vecs.to(op.dtype), r.cpu(), op.hvps, converged,
                      tuple(op.names), tuple(op.shapes))


def _eigsh(op: HessianOperator, v0: torch.Tensor, k: int, tol: float, steps: int,
           which: str) -> Eigenpairs:
    import numpy as np
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    def mv(v):
        w = torch.as_tensor(np.ascontiguousarray(v).reshape(-1), dtype=torch.float64)
        return op.matvec(w.to(op.device)).cpu().numpy()

    lin = LinearOperator((op.n, op.n), matvec=mv, dtype=np.float64)
    ncv = min(op.n, max(2 * k + 1, 20))
    converged = True
    try:
        vals, vecs = eigsh(lin, k=k, which=which, tol=tol, v0=v0.cpu().numpy(), ncv=ncv,
                           maxiter=max(1, steps))
    except ArpackNoConvergence as e:
        vals, vecs, converged = e.eigenvalues, e.eigenvectors, False
    order = np.argsort(vals if which == "LA" else np.abs(vals))[::-1]
    vals, vecs = vals[order], vecs[:, order]
    u = torch.as_tensor(vecs.T.copy(), dtype=torch.float64)
    hu = torch.stack([op.matvec(row.to(op.device)).cpu() for row in u]) if len(u) else u
    op.hvps -= len(u)                    # the residual check is not part of the method
    res = (hu - torch.as_tensor(vals.copy())[:, None] * u).norm(dim=1)
    return Eigenpairs(torch.as_tensor(vals.copy()), u.to(op.dtype).to(op.device), res,
                      op.hvps, converged and len(vals) == k, tuple(op.names), tuple(op.shapes))


# --------------------------------------------------------------------------- trace


@dataclass(frozen=True)
class HessianTrace:
    """Result of :func:`hessian_trace`: Hutchinson estimates of tr H and tr H² with their
    standard errors (sd/√samples), the number of samples and of HVPs."""

    trace: float
    trace_se: float
    trace_sq: float
    trace_sq_se: float
    samples: int
    hvps: int


def hessian_trace(model: nn.Module, loss_fn: Callable, x: Any, y: Any = None,
                  samples: int = 100, seed: int = 0, batch: int = 1,
                  chunk_size: int = 4096, retain_graphs: bool = True, *,
                  curvature: str = "hessian", params: Any = None) -> HessianTrace:
    """Hutchinson's estimate of tr H and tr H² for the Hessian of the mean loss.

    For v with i.i.d. Rademacher entries (±1, E[vvᵀ] = I): E[vᵀHv] = tr H and
    E[‖Hv‖²] = E[vᵀH²v] = tr H². With s independent vᵢ the estimates are the sample means
    of tᵢ = vᵢᵀHvᵢ and uᵢ = ‖Hvᵢ‖², each with standard error sd/√s (sd with s − 1 degrees
    of freedom); Var tᵢ = 2(‖H‖_F² − Σⱼ H_jj²), the smallest of any distribution of v with
    E[vvᵀ] = I. One product per sample; ``batch`` > 1 samples share one vmapped backward
    (:meth:`HessianOperator.matmat`: no faster on one CPU thread for the MNIST-1D CNN, it
    may be on a GPU). Data as in the module docstring. ``curvature="ggn"``: tr G and tr G²
    of the generalised Gauss–Newton matrix (the same estimator; G ⪰ 0 for a convex loss, so
    tr G = Σ λᵢ(G) ≥ 0); ``params``: tr C_SS of the diagonal block of the parameters S
    (:class:`HessianOperator`; over a partition of the parameters the blocks' traces sum to
    the full trace).
    """
    if samples < 2:
        raise ValueError(f"samples must be an integer >= 2, got {samples}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    op = HessianOperator(model, loss_fn, x, y, chunk_size, retain_graphs,
                         curvature=curvature, params=params)
    v = _unit_start(op.n, seed, rademacher=True, rows=samples).to(op.device)
    t, u = [], []
    for s in range(0, samples, batch):
        vb = v[s:s + batch]
        hv = op.matmat(vb)
        t.append((vb * hv).sum(1))
        u.append((hv * hv).sum(1))
    t, u = torch.cat(t).cpu(), torch.cat(u).cpu()
    root = math.sqrt(samples)
    return HessianTrace(float(t.mean()), float(t.std()) / root, float(u.mean()),
                        float(u.std()) / root, samples, op.hvps)


# --------------------------------------------------------------------------- density


@dataclass(frozen=True)
class SpectralDensity:
    """Result of :func:`spectral_density`.

    ``ritz_values`` and ``weights`` (runs, m): the nodes θⱼ and weights τⱼ of each run's
    Gauss quadrature (a run that found an invariant subspace early has zero weights past
    its length); ``grid`` and ``density``: the Gaussian-broadened density on the grid,
    normalised to ∫φ = 1; ``moments`` (p = 0…4) = ∫ tᵖ dμ of the unbroadened quadrature
    measure, averaged over runs (estimates of tr Hᵖ / n) and ``moments_se`` their standard
    errors over runs (nan for one run); ``hvps`` the products used; ``n`` the dimension.
    """

    ritz_values: torch.Tensor
    weights: torch.Tensor
    grid: torch.Tensor
    density: torch.Tensor
    moments: torch.Tensor
    moments_se: torch.Tensor
    hvps: int
    n: int

    def density_moment(self, p: int) -> float:
        """∫ tᵖ φ(t) dt of the broadened grid density (a Riemann sum on the grid)."""
        dx = float(self.grid[1] - self.grid[0])
        return float((self.grid ** p * self.density).sum() * dx)


def spectral_density(model: nn.Module, loss_fn: Callable, x: Any, y: Any = None,
                     iters: int = 100, runs: int = 1, seed: int = 0, grid_size: int = 10000,
                     sigma_squared: float = 1e-5, overhead: float = 0.01,
                     batch: int = 1, chunk_size: int = 4096,
                     retain_graphs: bool = True, *, curvature: str = "hessian",
                     params: Any = None) -> SpectralDensity:
    """Spectral density of the Hessian by stochastic Lanczos quadrature (SLQ).

    The density φ(t) = (1/n) Σᵢ δ(t − λᵢ) satisfies ∫ f dφ = tr f(H)/n. For a Rademacher
    v normalised to ‖v‖ = 1, vᵀf(H)v = Σᵢ (vᵀuᵢ)² f(λᵢ) has expectation tr f(H)/n, and m
    Lanczos steps from v give T_m = S diag(θ) Sᵀ with vᵀf(H)v ≈ Σⱼ τⱼ f(θⱼ), τⱼ = (e₁ᵀsⱼ)²:
    the m-point Gauss quadrature of the measure Σᵢ (vᵀuᵢ)² δ_{λᵢ}, exact for polynomials f of
    degree ≤ 2m − 1. Each of ``runs`` independent v gives nodes θⱼ and weights τⱼ (Σⱼ τⱼ = 1);
    ``batch`` runs go side by side, one vmapped backward per step. The density on the grid is, as
    in PyHessian, φ(t) = (1/runs) Σ_runs Σⱼ τⱼ N(t; θⱼ, s²) with variance
    s² = ``sigma_squared``·max(1, t_max − t_min), the grid ``grid_size`` points from the
    runs' mean smallest Ritz value − ``overhead`` to their mean largest + ``overhead``, and
    φ renormalised so that its Riemann sum is 1. Moments: ∫ tᵖ dμ = Σⱼ τⱼ θⱼᵖ = e₁ᵀT_mᵖe₁ =
    vᵀHᵖv (exact for p ≤ 2m − 1), so ``moments[1]`` and ``moments[2]`` are Hutchinson
    estimates of tr H/n and tr H²/n (with ‖v‖ = 1 and n·vvᵀ having identity mean), their
    standard errors the sd over runs/√runs. The broadened density has the same first
    moment and second moment + s² (up to the grid's truncation of the tails).
    ``curvature="ggn"``: the density of the generalised Gauss–Newton matrix; ``params``: of
    the diagonal block of a subset of the parameters (n = n_S; :class:`HessianOperator`).
    """
    if iters < 1:
        raise ValueError(f"iters must be an integer >= 1, got {iters}")
    if runs < 1:
        raise ValueError(f"runs must be an integer >= 1, got {runs}")
    if grid_size < 2:
        raise ValueError(f"grid_size must be >= 2, got {grid_size}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    op = HessianOperator(model, loss_fn, x, y, chunk_size, retain_graphs,
                         curvature=curvature, params=params)
    v0 = _unit_start(op.n, seed, rademacher=True, rows=runs).to(op.device)
    recurrences = []                     # (α, β, length) per run, ``batch`` runs at a time
    for g in range(0, runs, batch):
        alpha, beta, _, lengths = _lanczos(op.matmat, v0[g:g + batch], iters, None, seed + g)
        recurrences += [(alpha[r].cpu(), beta[r].cpu(), n) for r, n in enumerate(lengths)]
    m = max(n for _, _, n in recurrences)
    nodes = torch.zeros(runs, m, dtype=torch.float64)
    weights = torch.zeros(runs, m, dtype=torch.float64)
    for r, (alpha, beta, length) in enumerate(recurrences):
        theta, s = _tridiag_eig(alpha[:length], beta[:length])
        nodes[r, :length] = theta
        nodes[r, length:] = theta[-1]
        weights[r, :length] = s[0] ** 2
    powers = torch.stack([(weights * nodes ** p).sum(1) for p in range(5)], 1)
    moments = powers.mean(0)
    se = powers.std(0) / math.sqrt(runs) if runs > 1 else torch.full((5,), math.nan,
                                                                        dtype=torch.float64)
    lo = float(nodes.min(1).values.mean()) - overhead
    hi = float(nodes.max(1).values.mean()) + overhead
    grid = torch.linspace(lo, hi, grid_size, dtype=torch.float64)
    var = sigma_squared * max(1.0, hi - lo)
    dens = torch.zeros(grid_size, dtype=torch.float64)
    for r in range(runs):          # (m, grid) per run: at most 10⁶ numbers at a time
        z = (grid[None, :] - nodes[r, :, None]) ** 2 / (2 * var)
        dens += (weights[r, :, None] * torch.exp(-z)).sum(0) / math.sqrt(2 * math.pi * var)
    dens /= runs
    dens /= float(dens.sum()) * float(grid[1] - grid[0])
    return SpectralDensity(nodes, weights, grid, dens, moments, se, op.hvps, op.n)


# --------------------------------------------------------------------------- per layer


def parameter_blocks(model: nn.Module, blocks: Any = "modules") -> dict[str, list[str]]:
    """Named blocks of trainable parameter names, in ``named_parameters`` order.

    ``blocks="modules"`` (default): one block per module that owns trainable parameters
    directly, named by the module (``"layer.self_attn"``, ``"head"``); a parameter owned by
    the root module is a block of its own under its name. ``"parameters"``: one block per
    parameter tensor. A mapping name → selection, or a list of selections (each named by
    itself when a string, else ``"block<i>"``): each selection as ``params`` of
    :func:`resolve_params`. A tied weight belongs to the module that lists it first.
    """
    if isinstance(blocks, str):
        if blocks not in ("modules", "parameters"):
            raise ValueError(f"blocks must be 'modules', 'parameters', a mapping name → "
                             f"params or a list of params, got {blocks!r}")
        out: dict[str, list[str]] = {}
        for name, _ in resolve_params(model):
            key = name if blocks == "parameters" or "." not in name else name.rsplit(".", 1)[0]
            out.setdefault(key, []).append(name)
        return out
    if isinstance(blocks, dict):
        items = list(blocks.items())
    else:
        items = [(b if isinstance(b, str) else f"block{i}", b) for i, b in enumerate(blocks)]
    if not items:
        raise ValueError("blocks: no block given")
    return {key: [n for n, _ in resolve_params(model, sel)] for key, sel in items}


def layerwise(fn: Callable, model: nn.Module, loss_fn: Callable, x: Any, y: Any = None, *,
              blocks: Any = "modules", **kwargs: Any) -> dict[str, Any]:
    """Per-layer (block-diagonal) curvature: ``fn`` on the diagonal block C_SS of each block
    S (C = H or G, ``curvature=`` in ``kwargs``), ``{block name: result}``.

    ``fn`` is one of :func:`top_eigenvalues`, :func:`hessian_trace`,
    :func:`spectral_density`, :func:`top_hessian_eigenvalue` (any function taking
    ``params=``), called as ``fn(model, loss_fn, x, y, params=S, **kwargs)``; ``blocks`` as
    in :func:`parameter_blocks`. Each block builds its own graphs (one forward and backward
    per block and batch). By Cauchy's interlacing theorem λ_min(C) ≤ λ(C_SS) ≤ λ_max(C), and
    over a partition of the parameters tr C = Σ_S tr C_SS; the off-diagonal blocks — the
    coupling between layers — are left out. Eigenvectors are in
    the coordinates of the block (``resolve_params(model, S)`` order).
    """
    if "params" in kwargs:
        raise ValueError("layerwise: pass the blocks as blocks=, not params=")
    return {key: fn(model, loss_fn, x, y, params=names, **kwargs)
            for key, names in parameter_blocks(model, blocks).items()}
