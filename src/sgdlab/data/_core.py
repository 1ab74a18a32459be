"""Shared pieces of :mod:`sgdlab.data`: the error class, the data-set record, the registry,
option validation, the cache directory and train-only normalisation (SPEC §5)."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

Task = Literal["classification", "regression", "quadratic"]


class DataError(ValueError):
    """A data set cannot be produced: unknown name, bad option, missing or malformed files.

    The message is a single line that names the data set, the field, and what is allowed.
    """


@dataclass(frozen=True, eq=False)
class Dataset:
    """A data set held in memory as torch tensors (SPEC §5).

    Fields
    ------
    name: registry name (``"mnist1d"``, ``"linreg"``, ...).
    x_train, x_test: inputs, shape ``(N, *input_shape)``: float32 for the built-in sets; the
        user's own data (:func:`from_tensors`) may hold integer token ids.
    y_train, y_test: int64 class labels ``(N,)`` for ``task="classification"``; float32
        targets ``(N, 1)`` for ``"regression"``; an empty float32 ``(N, 0)`` tensor for
        ``"quadratic"`` (the loss depends on x only).
    task: ``"classification" | "regression" | "quadratic"``.
    num_classes: number of classes, ``None`` unless classification.
    input_shape: shape of one example, e.g. ``(40,)`` or ``(1, 28, 28)``.
    meta: extra facts (normalisation statistics, exact optima, generating parameters, ...).

    Image data sets keep their natural ``(C, H, W)`` shape; pass ``flatten=True`` to
    :func:`sgdlab.data.load` (or call :meth:`flattened`) for an MLP or a linear model.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    task: Task
    num_classes: int | None
    input_shape: tuple[int, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_train(self) -> int:
        """Number of training examples N (the N of SPEC §1)."""
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        """Number of test examples."""
        return int(self.x_test.shape[0])

    @property
    def input_dim(self) -> int:
        """Number of input features, ``prod(input_shape)``."""
        return int(np.prod(self.input_shape))

    @property
    def output_dim(self) -> int:
        """Width of a model's output: classes, regression targets, or 0 for ``quadratic``."""
        if self.task == "classification":
            return int(self.num_classes)  # type: ignore[arg-type]
        return int(self.y_train.shape[1])

    def flattened(self) -> Dataset:
        """Return a copy whose inputs are flattened to ``(N, input_dim)``."""
        if len(self.input_shape) == 1:
            return self
        return replace(
            self,
            x_train=self.x_train.reshape(self.n_train, -1),
            x_test=self.x_test.reshape(self.n_test, -1),
            input_shape=(self.input_dim,),
        )

    def to(self, device: torch.device | str) -> Dataset:
        """Return a copy with all four tensors moved to ``device``."""
        return replace(
            self,
            x_train=self.x_train.to(device),
            y_train=self.y_train.to(device),
            x_test=self.x_test.to(device),
            y_test=self.y_test.to(device),
        )

    def sampler(self, batch_size: int, mode: str = "replacement", seed: int = 0,
                drop_last: bool = True):
        """A :class:`sgdlab.data.sampler.BatchSampler` over the training split (SPEC §1)."""
        from .sampler import BatchSampler

        return BatchSampler(self.n_train, batch_size, mode=mode, seed=seed, drop_last=drop_last)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training inputs and targets at the indices ``idx`` (as drawn by a sampler)."""
        return self.x_train[idx], self.y_train[idx]

    def iter_batches(self, split: str = "train", n: int | None = None, batch_size: int = 2048,
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The first ``n`` examples (all with ``None``) of ``split`` (``train`` | ``test``),
        in order, as consecutive (x, y) chunks of at most ``batch_size`` (for evaluation)."""
        x, y = (self.x_train, self.y_train) if split == "train" else (self.x_test, self.y_test)
        stop = x.shape[0] if n is None else min(int(n), x.shape[0])
        for lo in range(0, stop, batch_size):
            hi = min(lo + batch_size, stop)
            yield x[lo:hi], y[lo:hi]

    def head(self, n: int, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` examples of ``split`` as one (x, y) pair."""
        x, y = (self.x_train, self.y_train) if split == "train" else (self.x_test, self.y_test)
        return x[:n], y[:n]


TASKS = ("classification", "regression")


def from_tensors(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor,
                 y_test: torch.Tensor, task: str | None = None, num_classes: int | None = None,
                 name: str = "user") -> Dataset:
    """A :class:`Dataset` from the user's own tensors (SPEC §5 layout, nothing normalised).

    ``x`` may be float or integer (token ids for an embedding model: kept as they are, never
    cast). ``task``: ``classification`` (int64 labels of shape (N,), ``num_classes`` defaults
    to max label + 1 over both splits) or ``regression`` (float targets; a 1-D target is
    viewed as (N, 1)); ``None`` infers classification from integer 1-D labels, else
    regression. Raises :class:`DataError` (one line naming the field) on a bad input.
    """
    given = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    for key, t in given.items():
        if not isinstance(t, torch.Tensor):
            raise DataError(f"data: {key} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() == 0:
            raise DataError(f"data: {key} must have a batch dimension, got a scalar")
    for split in ("train", "test"):
        nx, ny = given[f"x_{split}"].shape[0], given[f"y_{split}"].shape[0]
        if nx != ny:
            raise DataError(f"data: x_{split} has {nx} examples but y_{split} has {ny}")
    if x_train.shape[0] < 1:
        raise DataError("data: x_train must hold at least one example")
    if tuple(x_train.shape[1:]) != tuple(x_test.shape[1:]):
        raise DataError(f"data: x_test examples have shape {tuple(x_test.shape[1:])}, "
                        f"x_train examples {tuple(x_train.shape[1:])}")
    if task is None:
        task = ("classification" if not y_train.is_floating_point() and y_train.dim() == 1
                else "regression")
    if task not in TASKS:
        raise DataError(f"data: task must be one of {', '.join(TASKS)}, got {task!r}")
    if task == "classification":
        for key in ("y_train", "y_test"):
            t = given[key]
            if t.is_floating_point() or t.is_complex() or t.dim() != 1:
                raise DataError(f"data: {key} must hold integer class labels of shape (N,) "
                                f"for task classification, got {t.dtype} {tuple(t.shape)}")
        y_train, y_test = y_train.long(), y_test.long()
        top = int(max(int(y_train.max()), int(y_test.max()) if y_test.numel() else 0)) + 1
        if num_classes is None:
            num_classes = top
        if (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                or num_classes < top or int(min(y_train.min(), y_test.min()
                                                if y_test.numel() else 0)) < 0):
            raise DataError(f"data: num_classes must be an integer covering the labels "
                            f"0..{top - 1}, got {num_classes!r}")
    else:
        if num_classes is not None:
            raise DataError("data: num_classes applies to task classification only")
        if not y_train.is_floating_point() or not y_test.is_floating_point():
            raise DataError("data: regression targets y_train, y_test must be float tensors")
        if y_train.dim() == 1:
            y_train, y_test = y_train.unsqueeze(1), y_test.unsqueeze(1)
    return Dataset(name=name, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                   task=task, num_classes=num_classes,
                   input_shape=tuple(int(s) for s in x_train.shape[1:]) or (1,),
                   meta={"source": "tensors"})


# --------------------------------------------------------------------------- registry

Loader = Callable[..., Dataset]
_REGISTRY: dict[str, Loader] = {}


def register(name: str) -> Callable[[Loader], Loader]:
    """Register ``fn(seed, *, option=default, ...) -> Dataset`` under ``name``.

    The keyword-only parameters of ``fn`` are the data set's options; :func:`load` refuses
    any other option name before calling ``fn``.
    """

    def deco(fn: Loader) -> Loader:
        _REGISTRY[name] = fn
        return fn

    return deco


def names() -> list[str]:
    """Names of the registered data sets, sorted."""
    return sorted(_REGISTRY)


def options(name: str) -> dict[str, Any]:
    """The options of data set ``name`` with their defaults."""
    fn = _get(name)
    return {
        p.name: p.default
        for p in inspect.signature(fn).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def _get(name: str) -> Loader:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise DataError(f"data: unknown data set {name!r}; known: {', '.join(names())}")
    return _REGISTRY[name]


def load(name: str, seed: int = 0, **opts: Any) -> Dataset:
    """Load data set ``name`` into memory, normalised and deterministic for ``seed`` (SPEC §5).

    ``seed`` drives every random choice of the data (synthetic draws, the digits split,
    ``n_train`` subsampling). The canonical sets whose published numbers depend on a fixed
    draw (``mnist1d``, ``quadratic_deep``) keep it fixed by their own ``data_seed`` option.
    Unknown names and options raise :class:`DataError` (a ``ValueError``) in one line.
    """
    fn = _get(name)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"{name}: seed must be an integer >= 0, got {seed!r}")
    allowed = options(name)
    for key in opts:
        if key not in allowed:
            shown = ", ".join(sorted(allowed)) or "none"
            raise DataError(f"{name}: unknown option {key!r}; allowed: {shown}")
    return fn(int(seed), **opts)


# --------------------------------------------------------------------------- validation


def check_int(ds: str, key: str, value: Any, lo: int | None = None, hi: int | None = None,
              allow_none: bool = False) -> int | None:
    """Validate an integer option ``lo <= value <= hi``; return it as ``int``."""
    if value is None and allow_none:
        return None
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if ok and lo is not None and value < lo:
        ok = False
    if ok and hi is not None and value > hi:
        ok = False
    if not ok:
        rng = _range_text(lo, hi)
        none = " or None" if allow_none else ""
        raise DataError(f"{ds}: option {key!r} must be an integer{rng}{none}, got {value!r}")
    return int(value)


def check_float(ds: str, key: str, value: Any, lo: float | None = None,
                hi: float | None = None, lo_open: bool = False) -> float:
    """Validate a finite real option in ``[lo, hi]`` (``(lo, hi]`` if ``lo_open``)."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if ok:
        v = float(value)
        ok = np.isfinite(v)
        if ok and lo is not None and (v < lo or (lo_open and v == lo)):
            ok = False
        if ok and hi is not None and v > hi:
            ok = False
    if not ok:
        if lo_open and lo is not None:
            rng = f" > {lo}" + (f" and <= {hi}" if hi is not None else "")
        else:
            rng = _range_text(lo, hi)
        raise DataError(f"{ds}: option {key!r} must be a finite number{rng}, got {value!r}")
    return float(value)


def check_bool(ds: str, key: str, value: Any) -> bool:
    """Validate a boolean option."""
    if not isinstance(value, (bool, np.bool_)):
        raise DataError(f"{ds}: option {key!r} must be true or false, got {value!r}")
    return bool(value)


def _range_text(lo: Any, hi: Any) -> str:
    if lo is not None and hi is not None:
        return f" in [{lo}, {hi}]"
    if lo is not None:
        return f" >= {lo}"
    if hi is not None:
        return f" <= {hi}"
    return ""


# --------------------------------------------------------------------------- helpers


def cache_dir() -> Path:
    """Directory for generated-data caches: ``$SGDLAB_CACHE`` if set, else the user cache dir
    (``platformdirs.user_cache_dir("sgdlab")``)."""
    env = os.environ.get("SGDLAB_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("sgdlab"))


def subsample(ds: str, key: str, n: int | None, total: int, rng: np.random.Generator,
              ) -> np.ndarray | None:
    """Indices of a uniformly random subset of size ``n`` (sorted), or ``None`` for all."""
    n = check_int(ds, key, n, lo=1, hi=total, allow_none=True)
    if n is None or n == total:
        return None
    return np.sort(rng.choice(total, size=n, replace=False))


def standardise(x_train: np.ndarray, x_test: np.ndarray, axes: tuple[int, ...],
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x ← (x − μ)/σ with μ, σ the mean and standard deviation of the *training* split over
    ``axes`` (all axes but the channel axis for images), accumulated in float64 in chunks.
    Returns the float32 arrays and (μ, σ) as flat float64 arrays."""
    keep = [i for i in range(x_train.ndim) if i not in axes]
    shape = [x_train.shape[i] if i in keep else 1 for i in range(x_train.ndim)]
    count = x_train.size / max(1, int(np.prod([x_train.shape[i] for i in keep])))
    chunk = max(1, 2**22 // max(1, int(np.prod(x_train.shape[1:]))))
    total = np.zeros(shape)
    for i in range(0, x_train.shape[0], chunk):
        total += x_train[i:i + chunk].sum(axis=axes, keepdims=True, dtype=np.float64)
    mu = total / count
    sq = np.zeros(shape)
    for i in range(0, x_train.shape[0], chunk):
        dev = x_train[i:i + chunk].astype(np.float64) - mu
        sq += (dev * dev).sum(axis=axes, keepdims=True)
    sd = np.sqrt(sq / count)
    sd = np.where(sd > 0, sd, 1.0)
    mu32, sd32 = mu.astype(np.float32), sd.astype(np.float32)
    xt = ((x_train.astype(np.float32, copy=False) - mu32) / sd32).astype(np.float32, copy=False)
    xs = ((x_test.astype(np.float32, copy=False) - mu32) / sd32).astype(np.float32, copy=False)
    return xt, xs, mu.reshape(-1), sd.reshape(-1)


def to_tensor(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """A contiguous torch tensor that owns a copy of ``a``."""
    return torch.from_numpy(np.array(a, copy=True, order="C")).to(dtype)
