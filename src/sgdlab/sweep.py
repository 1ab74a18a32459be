"""Train K models at once: sweeps over η, λ, β and seeds as one vectorised run.

A hyper-parameter sweep of a small model is dominated by per-step overhead (Python, kernel
launches), not arithmetic. :func:`train_many` stacks the K models' parameters along a leading
dimension (``torch.func.stack_module_state``), runs the forward pass of all K with
``torch.func.vmap(functional_call)`` and one backward of the sum of their losses (the models do
not interact, so each stacked slice receives its own model's gradient), and updates all of them
with one vectorised SGD step whose η, β, λ are per-model tensors. sgdlab's MLP has a
hand-batched forward (one ``baddbmm`` per layer, no vmap overhead). Models vmap cannot batch
(BatchNorm in training mode) fall back to a loop over K separate copies with the same update.

The update is SGD of SPEC §2.1–2.2 with coupled weight decay, per model k, from zero buffers:

    d ← ĝ + λ_k Φ                         (coupled L2 decay, the "weight_decay" of torch.optim.SGD)
    v ← β_k v + d                         (heavy ball; β_k = 0 is plain SGD)
    Φ ← Φ − η_k f(t) (d + β_k v)  if nesterov,  else  Φ ← Φ − η_k f(t) v

with f(t) the schedule's multiplier (:mod:`sgdlab.schedules`), shared by all models. This is
exactly ``torch.optim.SGD(lr=η_k f(t), momentum=β_k, weight_decay=λ_k, nesterov=...)`` run on
each model separately (tested to agree step for step).

Batches: with ``same_batches=True`` (the default) every model sees the same batch sequence
(common random numbers: differences between sweep points are not blurred by different batch
noise; the input is shared, so the forward costs one gather). With ``same_batches=False`` model
k draws its own batches from a sampler seeded with ``batch_seed`` + its ``seed``.

Evaluation every ``eval_every`` steps: the full training loss (data term only, mean over the
whole training set — the L(Φ) of SPEC §1), test loss and test accuracy of every model, as
``(K, n_evals)`` arrays in :class:`SweepResult`. A model whose loss becomes non-finite is
marked diverged (its step is recorded) and frozen; the others go on.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import product
from typing import Any

import numpy as np
import torch
from torch import nn

from sgdlab.data import BatchSampler, Dataset
from sgdlab.schedules import Schedule

HYPER = ("lr", "momentum", "weight_decay", "seed")
ENGINES = ("auto", "mlp", "vmap", "loop")


def grid(**axes: Iterable[Any]) -> list[dict[str, Any]]:
    """The Cartesian product of named axes as a list of points, last axis fastest:
    ``grid(lr=[.1, .2], seed=[0, 1])`` → ``[{lr: .1, seed: 0}, {lr: .1, seed: 1}, …]``."""
    for k in axes:
        if k not in HYPER:
            raise ValueError(f"grid: unknown axis {k!r} (allowed: {', '.join(HYPER)})")
    names = list(axes)
    return [dict(zip(names, vals, strict=True)) for vals in product(*axes.values())]


@dataclass
class SweepResult:
    """Curves of K models: ``points`` (the hyper-parameters of each), ``steps`` (n_evals,)
    where they were evaluated, ``train_loss`` / ``test_loss`` / ``test_acc`` (K, n_evals),
    NaN after a divergence; ``sq_norm`` (K, n_evals) ‖Φ‖² over all trainable parameters
    (so L + (λ/2)‖Φ‖², the objective SGD with coupled decay λ descends, is
    ``train_loss + 0.5 * λ * sq_norm``); ``diverged_at`` (K,) the step of divergence or −1;
    ``params`` (stacked final parameters, name → (K, ...)); ``seconds`` of training; ``engine``."""

    points: list[dict[str, Any]]
    steps: np.ndarray
    train_loss: np.ndarray
    test_loss: np.ndarray
    test_acc: np.ndarray
    diverged_at: np.ndarray
    sq_norm: np.ndarray
    params: dict[str, torch.Tensor] = field(repr=False)
    seconds: float = 0.0
    engine: str = "vmap"

    def final(self, metric: str = "test_acc") -> np.ndarray:
        """The last evaluation of ``metric`` for every model, (K,)."""
        return getattr(self, metric)[:, -1]


def _per_model(points: Sequence[Mapping[str, Any]], key: str, default: float,
               like: torch.Tensor) -> torch.Tensor:
    vals = [float(p.get(key, default)) for p in points]
    for v in vals:
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"train_many: {key} must be a finite number >= 0, got {v!r}")
    if key == "momentum" and any(v >= 1 for v in vals):
        raise ValueError("train_many: momentum must be in [0, 1)")
    return torch.tensor(vals, dtype=like.dtype, device=like.device)


class StackedSGD:
    """SGD with heavy-ball momentum and coupled weight decay (SPEC §2.1–2.2) over tensors
    stacked along dim 0, with per-model ``lr``, ``momentum``, ``weight_decay`` ((K,) tensors);
    ``step(mult)`` applies the schedule multiplier f(t). Model k's slice follows exactly
    ``torch.optim.SGD(lr=lr[k]·mult, momentum=momentum[k], weight_decay=weight_decay[k])``."""

    def __init__(self, params: list[torch.Tensor], lr: torch.Tensor, momentum: torch.Tensor,
                 weight_decay: torch.Tensor, nesterov: bool = False) -> None:
        self.params = params
        self.lr, self.momentum, self.wd = lr, momentum, weight_decay
        self.nesterov = nesterov
        self.use_momentum = bool((momentum > 0).any())
        self.use_wd = bool((weight_decay > 0).any())
        self.bufs: list[torch.Tensor] | None = None

    @staticmethod
    def _b(v: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return v.view(-1, *([1] * (p.dim() - 1)))

    @torch.no_grad()
    def step(self, mult: float = 1.0) -> None:
        """One update with the gradients in ``p.grad``."""
        ps = [p for p in self.params if p.grad is not None]
        d = [p.grad for p in ps]
        if self.use_wd:
            d = [g + self._b(self.wd, p) * p for g, p in zip(d, ps, strict=True)]
        if self.use_momentum:
            if self.bufs is None:
                self.bufs = [torch.zeros_like(p) for p in self.params]
            bufs = [b for b, p in zip(self.bufs, self.params, strict=True) if p.grad is not None]
            for b, g, p in zip(bufs, d, ps, strict=True):
                b.mul_(self._b(self.momentum, p)).add_(g)
            if self.nesterov:
                d = [g + self._b(self.momentum, p) * b for g, b, p in zip(d, bufs, ps,
                                                                          strict=True)]
            else:
                d = bufs
        for p, g in zip(ps, d, strict=True):
            p.sub_(self._b(self.lr * mult, p) * g)

    def zero_grad(self) -> None:
        """Drop the gradients."""
        for p in self.params:
            p.grad = None


def _build_models(model: str | Callable[..., nn.Module], dataset: Dataset,
                  seeds: Sequence[int], options: Mapping[str, Any]) -> list[nn.Module]:
    """One model per seed. A registry name: :func:`sgdlab.models.build`. An ``nn.Module``
    class, or a factory without required positional parameters: :func:`sgdlab.models.
    from_callable` (the data's DataSpec when the class requires a positional parameter;
    ``options``; under ``torch.manual_seed(seed)``, global RNG restored). Any other
    callable: the experiments' contract ``model(seed, **options)``."""
    from sgdlab.models import build, from_callable, takes_spec

    if isinstance(model, str):
        return [build(model, dataset, seed=s, **dict(options)) for s in seeds]
    if not callable(model):
        raise ValueError(f"train_many: model must be a registry name or a callable, "
                         f"got {type(model).__name__}")
    if (isinstance(model, type) and issubclass(model, nn.Module)) or not takes_spec(model):
        try:
            made = [from_callable(model, dataset, seed=s, **dict(options)) for s in seeds]
        except TypeError as err:
            raise ValueError(f"train_many: {err}") from None
    else:
        made = [model(s, **dict(options)) for s in seeds]
    for m in made:
        if not isinstance(m, nn.Module):
            raise ValueError(f"train_many: model returned {type(m).__name__}, "
                             "not a torch.nn.Module")
    return made


def _load_start(models: list[nn.Module], start: Mapping[str, torch.Tensor]) -> None:
    """Copy stacked (K, ...) parameters into the K models (one clear error on a mismatch)."""
    for k, m in enumerate(models):
        for name, p in m.named_parameters():
            if name not in start:
                raise ValueError(f"train_many: start has no entry for parameter {name!r}")
            t = start[name]
            if tuple(t.shape) != (len(models), *p.shape):
                raise ValueError(f"train_many: start[{name!r}] has shape {tuple(t.shape)}; "
                                 f"expected {(len(models), *p.shape)}")
            with torch.no_grad():
                p.copy_(t[k])


def _has_batchnorm(m: nn.Module) -> bool:
    return any(isinstance(x, nn.modules.batchnorm._BatchNorm) for x in m.modules())


class Engine:
    """K models of one architecture evaluated together (what :func:`train_many` trains and
    passes to its ``callback``; claims that step the stacked models themselves use it too).

    ``forward(x, shared)`` → outputs (K, n, ...) (``shared``: one batch for all K, else
    (K, n, ...)); ``params``: the stacked (K, ...) tensors an optimizer updates; ``names``;
    ``train(mode)``. ``engine``: ``"vmap"`` (``torch.func.vmap`` of ``functional_call`` over
    ``stack_module_state``), ``"mlp"`` (batched matmuls for sgdlab's MLP), ``"loop"`` (one
    module after another: BatchNorm) or ``"auto"``."""

    def __init__(self, models: list[nn.Module], engine: str) -> None:
        from torch.func import functional_call, stack_module_state, vmap

        from sgdlab.models import MLP

        if engine not in ENGINES:
            raise ValueError(f"train_many: engine must be one of {', '.join(ENGINES)}, "
                             f"got {engine!r}")
        if engine == "auto":
            engine = ("mlp" if isinstance(models[0], MLP) else
                      "loop" if _has_batchnorm(models[0]) else "vmap")
        if engine == "mlp" and not isinstance(models[0], MLP):
            raise ValueError("train_many: engine 'mlp' needs sgdlab's mlp model")
        self.engine = engine
        self.vectorise = engine != "loop"
        self.k = len(models)
        if self.vectorise:
            params, buffers = stack_module_state(models)
            self.names = list(params)
            self.P = {n: t.detach().clone().requires_grad_(True) for n, t in params.items()}
            self.buffers = buffers
            base = copy.deepcopy(models[0]).to("meta")

            def fwd(p, b, xb):
                return functional_call(base, (p, b), (xb,))

            self.base = base
            self._shared = vmap(fwd, in_dims=(0, 0, None), randomness="different")
            self._own = vmap(fwd, in_dims=(0, 0, 0), randomness="different")
            self.params = list(self.P.values())
        else:
            self.models = models
            self.names = [n for n, _ in models[0].named_parameters()]
            self._stacked = [torch.stack([dict(m.named_parameters())[n].detach()
                                          for m in models]).requires_grad_(True)
                             for n in self.names]
            self.params = self._stacked

    def train(self, mode: bool) -> None:
        """Training or evaluation mode (dropout, BatchNorm) for every model."""
        for m in ([self.base] if self.vectorise else self.models):
            m.train(mode)

    def forward(self, x: torch.Tensor, shared: bool) -> torch.Tensor:
        """Outputs (K, n, ...) for a shared input (n, ...) or per-model inputs (K, n, ...)."""
        if self.engine == "mlp":
            return self._mlp(x, shared)
        if self.vectorise:
            return (self._shared if shared else self._own)(self.P, self.buffers, x)
        from torch.func import functional_call

        outs = []
        for k, m in enumerate(self.models):
            p = {n: t[k] for n, t in zip(self.names, self._stacked, strict=True)}
            outs.append(functional_call(m, p, (x if shared else x[k],)))
        return torch.stack(outs)

    def _mlp(self, x: torch.Tensor, shared: bool) -> torch.Tensor:
        """sgdlab's MLP with batched parameters: h ← act(h Wᵀ + b) as one ``baddbmm`` per
        layer for all K models (what vmap does, without its per-op overhead: ~30 % faster)."""
        base, p = self.base, self.P
        k = self.k
        h = x.reshape(x.shape[0], -1) if shared else x.reshape(k, x.shape[1], -1)
        if shared:
            h = h.unsqueeze(0).expand(k, -1, -1)
        for i, act in enumerate(base.acts):
            w, b = p[f"hidden.{i}.weight"], p[f"hidden.{i}.bias"]
            z = act(torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2)))
            h = h + z if (base.residual and i > 0) else z
        return torch.baddbmm(p["head.bias"].unsqueeze(1), h, p["head.weight"].transpose(1, 2))

    def stacked(self) -> dict[str, torch.Tensor]:
        """Current parameters, name → (K, ...)."""
        return {n: t.detach().clone() for n, t in zip(self.names, self.params, strict=True)}


def _loss_and_acc(out: torch.Tensor, y: torch.Tensor, task: str
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-model summed loss and number correct for outputs (K, n, ...)."""
    k = out.shape[0]
    correct = ((out.argmax(-1) == y).sum(1).to(out.dtype) if task == "classification"
               else torch.full((k,), float("nan"), dtype=out.dtype))
    return _per_example_losses(out, y, task).sum(1), correct


def train_many(dataset: Dataset, model: str | Callable[[int], nn.Module],
               points: Sequence[Mapping[str, Any]], *, batch_size: int, steps: int,
               schedule: Schedule | None = None, sampling: str = "shuffle",
               batch_seed: int = 0, same_batches: bool = True, eval_every: int = 0,
               eval_train: bool = True, model_options: Mapping[str, Any] | None = None,
               nesterov: bool = False, dtype: torch.dtype = torch.float32,
               engine: str = "auto", callback: Callable[[int, Engine], None] | None = None,
               start: Mapping[str, torch.Tensor] | None = None) -> SweepResult:
    """Train one model per point of ``points`` (dicts with ``lr`` and optionally
    ``momentum``, ``weight_decay``, ``seed`` — the init seed, and with
    ``same_batches=False`` also the batch seed) on ``dataset`` for ``steps`` SGD steps, all at
    once (see the module docstring for the update, SPEC §2.1–2.2).

    ``model`` is a name for :func:`sgdlab.models.build` (with ``model_options``), an
    ``nn.Module`` class or factory taking only options (the user's own architecture, built
    with ``model_options`` under ``torch.manual_seed(seed)``), or a callable seed → module.
    Integer inputs (token ids of an embedding model) are never cast to ``dtype``.
    ``schedule`` multiplies every model's η (SPEC §2.5). ``eval_every`` (0:
    only at the start and the end) sets when the full training loss, test loss and test
    accuracy are measured. ``callback(step, engine)`` runs after every step (for
    instruments). ``engine``: "vmap" (``torch.func.vmap`` over ``functional_call``), "mlp"
    (sgdlab's MLP written with batched matrix products), "loop" (K copies; the fallback for
    BatchNorm) or "auto" (mlp for an MLP, vmap where possible, else loop). ``start``:
    initial parameters, name → stacked (K, ...) tensor (e.g. the
    ``params`` of an earlier result, to continue its models at other hyper-parameters;
    momentum buffers start at zero); default: each model's own initialisation.
    Returns a :class:`SweepResult`.
    """
    if not points:
        raise ValueError("train_many: points must not be empty")
    for p in points:
        if "lr" not in p:
            raise ValueError("train_many: every point needs an 'lr'")
        bad = set(p) - set(HYPER)
        if bad:
            raise ValueError(f"train_many: unknown key(s) {sorted(bad)} "
                             f"(allowed: {', '.join(HYPER)})")
    if steps < 1 or batch_size < 1:
        raise ValueError("train_many: steps and batch_size must be >= 1")
    task = dataset.task
    if task not in ("classification", "regression"):
        raise ValueError(f"train_many: dataset task {task!r} cannot be trained "
                         "(allowed: classification, regression)")
    seeds = [int(p.get("seed", 0)) for p in points]
    models = [m.to(dtype) for m in _build_models(model, dataset, seeds, model_options or {})]
    if start is not None:
        _load_start(models, start)
    eng = Engine(models, engine)
    like = eng.params[0]
    opt = StackedSGD(eng.params, _per_model(points, "lr", 0.0, like),
                     _per_model(points, "momentum", 0.0, like),
                     _per_model(points, "weight_decay", 0.0, like), nesterov)
    lr0 = opt.lr.clone()
    xtr, xte = (_as_input(t, dtype) for t in (dataset.x_train, dataset.x_test))
    ytr, yte = dataset.y_train, dataset.y_test
    if task == "regression":
        ytr, yte = ytr.to(dtype), yte.to(dtype)
    n = dataset.n_train
    if same_batches:
        samplers = [BatchSampler(n, batch_size, sampling, batch_seed)]
    else:
        samplers = [BatchSampler(n, batch_size, sampling, batch_seed + s) for s in seeds]
    k = len(points)
    every = eval_every if eval_every > 0 else steps
    eval_steps = sorted({0, *range(every, steps + 1, every), steps})
    tr = np.full((k, len(eval_steps)), np.nan)
    te, acc, sq = tr.copy(), tr.copy(), tr.copy()
    diverged = np.full(k, -1)
    alive = torch.ones(k, dtype=torch.bool)

    def evaluate(j: int) -> None:
        eng.train(False)
        with torch.no_grad():
            for arr, x, y, acc_arr in ((tr, xtr, ytr, None), (te, xte, yte, acc)):
                if arr is tr and not eval_train:
                    continue
                tot = torch.zeros(k, dtype=torch.float64)
                cor = torch.zeros(k, dtype=torch.float64)
                for lo in range(0, x.shape[0], 2048):
                    s, c = _loss_and_acc(eng.forward(x[lo:lo + 2048], True),
                                         y[lo:lo + 2048], task)
                    tot += s.double()
                    cor += c.double()
                arr[:, j] = (tot / x.shape[0]).numpy()
                if acc_arr is not None:
                    acc_arr[:, j] = (cor / x.shape[0]).numpy()
            sq[:, j] = sum(p.detach().double().pow(2).reshape(k, -1).sum(1)
                           for p in eng.params).numpy()
        eng.train(True)
        dead = ~alive.numpy()
        for arr in (tr, te, acc, sq):
            arr[dead, j] = np.nan

    t0 = time.perf_counter()
    evaluate(0)
    j = 1
    for t in range(steps):
        if same_batches:
            idx = samplers[0].next_batch()
            out = eng.forward(xtr[idx], True)
            yb = ytr[idx]
            per = _batch_losses(out, yb, task)
        else:
            idx = torch.stack([s.next_batch() for s in samplers])
            out = eng.forward(xtr[idx], False)
            per = _batch_losses(out, ytr[idx], task)
        finite = torch.isfinite(per.detach())
        newly = alive & ~finite
        if bool(newly.any()):
            for i in torch.nonzero(newly).flatten().tolist():
                diverged[i] = t
            alive &= finite
            per = torch.where(alive, per, torch.zeros_like(per))
        per.sum().backward()
        opt.step(schedule(t) if schedule is not None else 1.0)
        opt.zero_grad()
        if bool(newly.any()):
            _freeze(eng, opt, lr0, alive)
        if callback is not None:
            callback(t + 1, eng)
        if j < len(eval_steps) and t + 1 == eval_steps[j]:
            evaluate(j)
            j += 1
    seconds = time.perf_counter() - t0
    return SweepResult([dict(p) for p in points], np.array(eval_steps), tr, te, acc, diverged,
                       sq, eng.stacked(), seconds, eng.engine)


def _as_input(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Float inputs in the sweep's ``dtype``; integer inputs (token ids for an embedding)
    exactly as they are."""
    return x.to(dtype) if x.is_floating_point() else x


def _cross_entropy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy of logits (K, n, C) against labels (K, n): log Σ exp z − z_y
    with the max subtracted. Same value as ``F.cross_entropy``; written out because torch's
    CPU log-softmax is slow for a handful of classes (2.5× here, fwd + bwd, C = 10)."""
    z = out - out.detach().amax(-1, keepdim=True)
    return z.exp().sum(-1).log() - z.gather(-1, y.unsqueeze(-1)).squeeze(-1)


def _per_example_losses(out: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor:
    """(K, n) per-example losses of outputs (K, n, ...) — cross-entropy, or ½‖f(x) − y‖² as
    in :func:`sgdlab.train.loss_functions` — with targets shared, (n, ...), or per model."""
    k, nb = out.shape[0], out.shape[1]
    if task == "classification":
        return _cross_entropy(out, y.expand(k, nb))
    yy = y if y.dim() == out.dim() else y.unsqueeze(0)
    return 0.5 * (out - yy).pow(2).reshape(k, nb, -1).sum(-1)


def _batch_losses(out: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor:
    """(K,) mean batch loss of every model; ``y`` is (n,) shared or (K, n) per model."""
    return _per_example_losses(out, y, task).mean(1)


def _freeze(eng: Engine, opt: StackedSGD, lr0: torch.Tensor, alive: torch.Tensor) -> None:
    """Stop diverged models: η = 0, parameters and buffers zeroed (no inf arithmetic)."""
    opt.lr = torch.where(alive.to(lr0.device), lr0, torch.zeros_like(lr0))
    with torch.no_grad():
        dead = (~alive).nonzero().flatten()
        for p in eng.params:
            p[dead] = 0.0
        for b in opt.bufs or []:
            b[dead] = 0.0
