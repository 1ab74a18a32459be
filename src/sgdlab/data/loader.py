"""The user's own data for the trainer: tensors, sgdlab data sets, or map-style torch
``Dataset``s read through a ``DataLoader`` whose batches come from sgdlab's resumable
:class:`~sgdlab.data.sampler.BatchSampler` (SPEC §1 sampling, §5 data).

:func:`as_data` turns what a user passes as ``data=`` into an object with the interface the
trainer uses (``n_train``, ``task``, ``sampler``, ``batch``, ``iter_batches``, ``head``):

- an sgdlab :class:`~sgdlab.data.Dataset` (returned as it is);
- a mapping or a 4-tuple of tensors ``x_train, y_train, x_test, y_test`` (+ optional
  ``task``, ``num_classes`` in the mapping): :func:`~sgdlab.data.from_tensors`;
- map-style ``torch.utils.data.Dataset``s ``(train, test)``, ``{"train": …, "test": …}`` or
  a training set alone, each item an ``(x, y)`` pair: :class:`MapData`.

:class:`BatchStream` draws the training batches. For a map-style set it iterates a
``DataLoader`` (``num_workers`` processes if asked) whose ``batch_sampler`` is the sgdlab
sampler; the DataLoader prefetches, so the stream keeps the sampler state *after each
consumed batch* and its :meth:`~BatchStream.state_dict` is that state. A run resumed from it
draws exactly the batches an uninterrupted run would have drawn.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data.dataloader import default_collate

from ._core import TASKS, DataError, Dataset, from_tensors
from .sampler import BatchSampler

__all__ = ["BatchStream", "MapData", "as_data"]

_TENSOR_KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclass(frozen=True, eq=False)
class MapData:
    """Map-style torch data sets as the trainer's data (items are ``(x, y)`` pairs).

    ``train``: the training set (N = ``len(train)``); ``test``: optional test set.
    ``task``: ``classification`` | ``regression``; ``None`` infers it from the first training
    item (an integer scalar label: classification). ``num_classes``: only needed by the
    model's :class:`~sgdlab.models.DataSpec` and the ln C check; ``None`` leaves it unknown.
    ``collate_fn``: the DataLoader's (torch's ``default_collate`` by default);
    ``num_workers``: DataLoader worker processes for training batches and evaluation.
    ``device``: where batches are moved (set by :meth:`to`).
    """

    train: TorchDataset
    test: TorchDataset | None = None
    task: str | None = None
    num_classes: int | None = None
    collate_fn: Callable | None = None
    num_workers: int = 0
    device: torch.device | None = None
    name: str = "user"

    def __post_init__(self) -> None:
        if not isinstance(self.train, TorchDataset) or not hasattr(self.train, "__len__"):
            raise DataError("data: train must be a map-style torch.utils.data.Dataset with "
                            f"__len__, got {type(self.train).__name__}")
        if self.test is not None and not isinstance(self.test, TorchDataset):
            raise DataError("data: test must be a map-style torch.utils.data.Dataset or None, "
                            f"got {type(self.test).__name__}")
        if len(self.train) < 1:
            raise DataError("data: train must hold at least one example")
        if (isinstance(self.num_workers, bool) or not isinstance(self.num_workers, int)
                or self.num_workers < 0):
            raise DataError(f"data: num_workers must be an integer >= 0, got {self.num_workers!r}")
        item = self.train[0]
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise DataError("data: every item of a map-style dataset must be an (x, y) pair, "
                            f"got {type(item).__name__}")
        task = self.task
        if task is None:
            y = torch.as_tensor(item[1])
            task = ("classification" if y.dim() == 0 and not y.is_floating_point()
                    else "regression")
            object.__setattr__(self, "task", task)
        if task not in TASKS:
            raise DataError(f"data: task must be one of {', '.join(TASKS)}, got {task!r}")

    # ------------------------------------------------------------------ sizes
    @property
    def n_train(self) -> int:
        """Number of training examples N."""
        return len(self.train)

    @property
    def n_test(self) -> int:
        """Number of test examples (0 without a test set)."""
        return 0 if self.test is None else len(self.test)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, read from the first training item."""
        return tuple(int(s) for s in torch.as_tensor(self.train[0][0]).shape) or (1,)

    @property
    def output_dim(self) -> int:
        """Classes for classification (needs ``num_classes``), else the target width."""
        if self.task == "classification":
            if self.num_classes is None:
                raise DataError("data: num_classes is unknown for this map-style dataset; "
                                "give MapData(..., num_classes=C)")
            return int(self.num_classes)
        return int(torch.as_tensor(self.train[0][1]).numel())

    # ------------------------------------------------------------------ batches
    def to(self, device: torch.device | str) -> MapData:
        """A copy whose batches are moved to ``device``."""
        return replace(self, device=torch.device(device))

    def _move(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise DataError("data: collate_fn must return an (x, y) pair, "
                            f"got {type(batch).__name__}")
        x, y = batch
        if self.device is not None:
            x, y = x.to(self.device), y.to(self.device)
        return x, y

    def _collate(self, items: list) -> Any:
        return (self.collate_fn or default_collate)(items)

    def sampler(self, batch_size: int, mode: str = "replacement", seed: int = 0,
                drop_last: bool = True) -> BatchSampler:
        """A :class:`BatchSampler` over the training set (SPEC §1)."""
        return BatchSampler(self.n_train, batch_size, mode=mode, seed=seed, drop_last=drop_last)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The training examples at ``idx``, collated (what the DataLoader would give)."""
        return self._move(self._collate([self.train[int(i)] for i in idx]))

    def loader(self, batch_sampler: Any) -> DataLoader:
        """A DataLoader over the training set reading the index batches of ``batch_sampler``."""
        return DataLoader(self.train, batch_sampler=batch_sampler, collate_fn=self.collate_fn,
                          num_workers=self.num_workers)

    def iter_batches(self, split: str = "train", n: int | None = None, batch_size: int = 2048,
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The first ``n`` examples (all with ``None``) of ``split`` in order, in chunks."""
        ds = self.train if split == "train" else self.test
        if ds is None:
            return
        stop = len(ds) if n is None else min(int(n), len(ds))
        if stop == 0:
            return
        loader = DataLoader(Subset(ds, range(stop)), batch_size=batch_size, shuffle=False,
                            collate_fn=self.collate_fn, num_workers=self.num_workers)
        for b in loader:
            yield self._move(b)

    def head(self, n: int, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` examples of ``split`` as one collated (x, y) pair."""
        ds = self.train if split == "train" else self.test
        if ds is None:
            raise DataError(f"data: there is no {split} set")
        return self._move(self._collate([ds[i] for i in range(min(int(n), len(ds)))]))

    # Whole splits as tensors (collated once, cached): for code that reads them directly.
    def _split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        cache = self.__dict__.setdefault("_cache", {})
        if split not in cache:
            ds = self.train if split == "train" else self.test
            cache[split] = self.head(len(ds), split) if ds is not None else (None, None)
        return cache[split]

    @property
    def x_train(self) -> torch.Tensor:
        """The whole training inputs, collated once."""
        return self._split("train")[0]

    @property
    def y_train(self) -> torch.Tensor:
        """The whole training targets, collated once."""
        return self._split("train")[1]

    @property
    def x_test(self) -> torch.Tensor:
        """The whole test inputs, collated once."""
        return self._split("test")[0]

    @property
    def y_test(self) -> torch.Tensor:
        """The whole test targets, collated once."""
        return self._split("test")[1]


def as_data(obj: Any, task: str | None = None) -> Dataset | MapData:
    """What the trainer accepts as ``data=`` (see the module docstring), as a data object.

    Raises :class:`DataError` naming what is allowed when ``obj`` is none of them.
    """
    if isinstance(obj, (Dataset, MapData)):
        return obj
    if isinstance(obj, Mapping):
        if all(k in obj for k in _TENSOR_KEYS):
            extra = sorted(set(obj) - set(_TENSOR_KEYS) - {"task", "num_classes"})
            if extra:
                raise DataError(f"data: unknown key {extra[0]!r}; allowed: "
                                f"{', '.join(_TENSOR_KEYS)}, task, num_classes")
            return from_tensors(*(obj[k] for k in _TENSOR_KEYS), task=obj.get("task", task),
                                num_classes=obj.get("num_classes"))
        if "train" in obj:
            return MapData(obj["train"], obj.get("test"), task=obj.get("task", task),
                           num_classes=obj.get("num_classes"))
    if isinstance(obj, (tuple, list)):
        if len(obj) == 4 and all(isinstance(t, torch.Tensor) for t in obj):
            return from_tensors(*obj, task=task)
        if len(obj) == 2 and all(isinstance(t, TorchDataset) for t in obj):
            return MapData(obj[0], obj[1], task=task)
    if isinstance(obj, TorchDataset):
        return MapData(obj, None, task=task)
    raise DataError("data: expected an sgdlab Dataset, tensors (x_train, y_train, x_test, "
                    "y_test) as a tuple or mapping, or map-style torch Datasets (train, test), "
                    f"got {type(obj).__name__}")


class _Draws:
    """The batch sampler a DataLoader reads: the stream's next index batches, forever."""

    def __init__(self, stream: BatchStream) -> None:
        self.stream = stream

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            idx = self.stream._draw()
            self.stream._pending.append(self.stream.sampler.state_dict())
            yield idx.tolist()


class BatchStream:
    """The training batches of a run, resumable exactly.

    ``next()`` returns the next (x, y): indices from ``sampler`` (rank ``rank`` of ``world``
    takes its slice of the global batch), gathered from an in-memory data set, or read by a
    DataLoader for :class:`MapData`. :meth:`state_dict` is the sampler state after the last
    batch returned by ``next()`` (never one the DataLoader merely prefetched).
    """

    def __init__(self, data: Dataset | MapData, sampler: BatchSampler, rank: int = 0,
                 world: int = 1) -> None:
        self.data, self.sampler, self.rank, self.world = data, sampler, rank, world
        self._pending: collections.deque = collections.deque()
        self._consumed: dict[str, Any] | None = None
        self._it: Iterator | None = None

    def _draw(self) -> torch.Tensor:
        idx = self.sampler.next_batch()
        if self.world > 1:
            per = idx.shape[0] // self.world
            idx = idx[self.rank * per:(self.rank + 1) * per]
        return idx

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next training batch (x, y)."""
        if not isinstance(self.data, MapData):
            return self.data.batch(self._draw())
        if self._it is None:
            self._it = iter(self.data.loader(_Draws(self)))
        batch = next(self._it)
        self._consumed = self._pending.popleft()
        return self.data._move(batch)

    def state_dict(self) -> dict[str, Any]:
        """The sampler state after the last consumed batch (:meth:`BatchSampler.state_dict`)."""
        if self._consumed is not None:
            return self._consumed
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict` (drops any prefetched batches)."""
        self.close()
        self.sampler.load_state_dict(state)
        self._consumed = None

    def close(self) -> None:
        """Stop the DataLoader's workers and rewind the sampler over prefetched batches (a
        later ``next()`` starts a new DataLoader at the first unconsumed batch)."""
        if self._it is not None and self._consumed is not None:
            self.sampler.load_state_dict(self._consumed)
        self._it = None
        self._pending.clear()
