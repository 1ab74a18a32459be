"""Mini-batch index sampler with the two sampling schemes of SPEC §1, resumable bit-for-bit.

- ``"replacement"``: every index of every batch is drawn i.i.d. uniformly from {0, …, N−1}.
  The batch gradient ĝ is then a mean of B i.i.d. per-example gradients, so
  E ĝ = G and Cov ĝ = Σ / B: the setting of the theory in SPEC §2–§4.
- ``"shuffle"``: each epoch is a uniformly random permutation of {0, …, N−1} cut into
  consecutive batches (sampling *without* replacement). Within an epoch the batch-gradient
  covariance is multiplied by (N − B)/(N − 1) (SPEC §1); every example is used exactly once
  per epoch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch

from ._core import DataError

MODES = ("replacement", "shuffle")
_STATE_VERSION = 1


class BatchSampler:
    """Yield index tensors (int64, shape ``(B,)``) into a training set of ``n`` examples.

    Parameters
    ----------
    n: number of training examples N.
    batch_size: B, with 1 <= B <= N.
    mode: ``"replacement"`` (i.i.d. batches) or ``"shuffle"`` (epochs without replacement).
    seed: seed of the sampler's own ``torch.Generator`` (global RNGs are never touched).
    drop_last: in ``"shuffle"`` mode drop the final short batch of each epoch, so that every
        batch has exactly B indices. With ``drop_last=False`` the last batch has
        N − B·⌊N/B⌋ indices. In ``"replacement"`` mode every batch has B indices and an
        "epoch" is just a bookkeeping unit of :attr:`steps_per_epoch` batches.

    Use :meth:`next_batch` for a step-driven loop (an endless stream), or iterate
    (``for idx in sampler``) for the remaining batches of the current epoch.
    :meth:`state_dict` / :meth:`load_state_dict` capture and restore the exact position, so
    a resumed run draws the identical subsequent batches.
    """

    def __init__(self, n: int, batch_size: int, mode: str = "replacement", seed: int = 0,
                 drop_last: bool = True) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise DataError(f"sampler: n must be an integer >= 1, got {n!r}")
        if (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                or not 1 <= batch_size <= n):
            raise DataError(
                f"sampler: batch_size must be an integer in [1, {n}] (the data set size), "
                f"got {batch_size!r}"
            )
        if mode not in MODES:
            raise DataError(f"sampler: mode must be one of {', '.join(MODES)}; got {mode!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise DataError(f"sampler: seed must be an integer >= 0, got {seed!r}")
        if not isinstance(drop_last, bool):
            raise DataError(f"sampler: drop_last must be true or false, got {drop_last!r}")
        self.n = n
        self.batch_size = batch_size
        self.mode = mode
        self.seed = seed
        self.drop_last = drop_last
        self._gen = torch.Generator(device="cpu")
        self._gen.manual_seed(seed)
        self._epoch = 0
        self._pos = 0  # batches already drawn in the current epoch
        self._perm: torch.Tensor | None = None  # shuffle mode: permutation of this epoch
        self._epoch_state: torch.Tensor | None = None  # generator state before that perm

    # ------------------------------------------------------------------ properties
    @property
    def steps_per_epoch(self) -> int:
        """Batches per epoch: ⌊N/B⌋ with ``drop_last``, else ⌈N/B⌉."""
        if self.drop_last:
            return self.n // self.batch_size
        return math.ceil(self.n / self.batch_size)

    @property
    def epoch(self) -> int:
        """Index of the current epoch (0-based)."""
        return self._epoch

    @property
    def position(self) -> int:
        """Batches already drawn in the current epoch, in ``[0, steps_per_epoch]``."""
        return self._pos

    @property
    def step(self) -> int:
        """Total batches drawn so far."""
        return self._epoch * self.steps_per_epoch + self._pos

    @property
    def noise_factor(self) -> float:
        """Factor multiplying Σ/B in Cov ĝ (SPEC §1): 1 with replacement, (N − B)/(N − 1)
        for epoch shuffling (1 when N = 1)."""
        if self.mode == "replacement" or self.n == 1:
            return 1.0
        return (self.n - self.batch_size) / (self.n - 1)

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __repr__(self) -> str:
        return (f"BatchSampler(n={self.n}, batch_size={self.batch_size}, mode={self.mode!r}, "
                f"seed={self.seed}, drop_last={self.drop_last}, epoch={self._epoch}, "
                f"position={self._pos})")

    # ------------------------------------------------------------------ sampling
    def next_batch(self) -> torch.Tensor:
        """Draw the next batch of indices (int64), rolling over to a new epoch when needed."""
        if self._pos >= self.steps_per_epoch:
            self._epoch += 1
            self._pos = 0
            self._perm = None
            self._epoch_state = None
        if self.mode == "replacement":
            idx = torch.randint(0, self.n, (self.batch_size,), generator=self._gen,
                                dtype=torch.int64)
        else:
            if self._perm is None:
                self._epoch_state = self._gen.get_state()
                self._perm = torch.randperm(self.n, generator=self._gen, dtype=torch.int64)
            lo = self._pos * self.batch_size
            idx = self._perm[lo:lo + self.batch_size].clone()
        self._pos += 1
        return idx

    def __iter__(self) -> Iterator[torch.Tensor]:
        """The remaining batches of the current epoch (all of the next one if it is done)."""
        if self._pos >= self.steps_per_epoch:
            yield self.next_batch()
        while self._pos < self.steps_per_epoch:
            yield self.next_batch()

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the exact stream of batches.

        In shuffle mode the generator state is the one *before* the current epoch's
        permutation was drawn (the permutation is re-drawn on load), so the state stays small.
        """
        perm_drawn = self._perm is not None
        gen_state = self._epoch_state if perm_drawn else self._gen.get_state()
        return {
            "version": _STATE_VERSION,
            "n": self.n,
            "batch_size": self.batch_size,
            "mode": self.mode,
            "seed": self.seed,
            "drop_last": self.drop_last,
            "epoch": self._epoch,
            "position": self._pos,
            "perm_drawn": perm_drawn,
            "generator_state": gen_state.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the sampler must have the same n, batch size, mode and
        drop_last (``DataError`` otherwise)."""
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            raise DataError("sampler: state_dict is not a BatchSampler state (version 1)")
        for key in ("n", "batch_size", "mode", "drop_last"):
            if state.get(key) != getattr(self, key):
                raise DataError(
                    f"sampler: cannot resume, state has {key}={state.get(key)!r} but this "
                    f"sampler has {key}={getattr(self, key)!r}"
                )
        epoch, pos = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= pos <= self.steps_per_epoch:
            raise DataError(f"sampler: bad epoch/position in state ({epoch}, {pos})")
        gen_state = state["generator_state"]
        if not isinstance(gen_state, torch.Tensor) or gen_state.dtype != torch.uint8:
            raise DataError("sampler: generator_state must be a uint8 tensor")
        self._gen.set_state(gen_state.clone())
        self.seed = int(state["seed"])
        self._epoch, self._pos = epoch, pos
        self._perm = self._epoch_state = None
        if state["perm_drawn"]:
            if self.mode != "shuffle":
                raise DataError("sampler: perm_drawn is only valid in shuffle mode")
            self._epoch_state = self._gen.get_state()
            self._perm = torch.randperm(self.n, generator=self._gen, dtype=torch.int64)
