"""Atomic, weights-only checkpoints with every piece of state a bit-for-bit resume needs.

A checkpoint holds the model, optimizer, scheduler and sampler state dicts, the RNG states
(torch CPU and CUDA, numpy, Python), the step, the averaged model (SWA/EMA), the logging
accumulators and the number of metrics lines written. It is written to a temporary file and
renamed, and read back with ``torch.load(weights_only=True)``: nothing is unpickled beyond
tensors and plain Python containers.

A file that cannot be read that way (truncated, empty, written by something else, a pickle
that asks for arbitrary objects, or a dict without the entries a run needs) raises
:class:`CheckpointError`, one line "PATH: damaged or not an sgdlab checkpoint (why)":
nothing in the file is executed, and torch's own message (which suggests
``weights_only=False``) is never shown.

Fault injection for the test suite (``tests/test_faults.py``): when the environment variable
``SGDLAB_FAULT_IN_CHECKPOINT`` is ``N`` or ``N:SECONDS``, the N-th :func:`save` of the
process (counted from 1) stops after the temporary file is complete and before the rename,
and kills its own process with SIGKILL (``N:SECONDS``: sleeps that long first, so that a test
can signal it from outside while the temporary file exists).
"""

from __future__ import annotations

import os
import pickle
import random
import signal
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sgdlab.config import ConfigError
from sgdlab.metrics_log import _fsync_dir


def rng_state() -> dict[str, Any]:
    """All global RNG states as tensors and plain Python values (weights_only-loadable)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(x: Any) -> Any:
    return [_to_lists(v) for v in x] if isinstance(x, tuple) else x


def _to_tuples(x: Any) -> Any:
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used; the message is one line naming the file (a
    :class:`~sgdlab.config.ConfigError`, so every command reports it as one line, exit 2)."""


#: The entries every trainer checkpoint holds (a file without them is not one of ours).
REQUIRED = ("step", "model", "optimizer", "scheduler", "sampler", "rng")

_saves = 0


def _fault_hook(tmp: Path) -> None:
    """The test suite's kill point inside a checkpoint write (see the module docstring)."""
    global _saves
    spec = os.environ.get("SGDLAB_FAULT_IN_CHECKPOINT")
    if not spec:
        return
    _saves += 1
    n, _, delay = spec.partition(":")
    if _saves != int(n):
        return
    if delay:
        time.sleep(float(delay))
    os.kill(os.getpid(), signal.SIGKILL)


def save(path: str | Path, payload: dict[str, Any]) -> None:
    """``torch.save`` to a temporary name in the same directory, fsync, then rename.

    On any error (a full disk, a file-size limit) the temporary file is removed and an
    existing ``path`` is left as it was; the error propagates (``OSError``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as raw:
            fh = _RecordingWriter(raw)
            try:
                torch.save(payload, fh)
            except RuntimeError:
                if fh.error is not None:  # torch wraps the OSError (ENOSPC, EFBIG) it met
                    raise fh.error from None
                raise
            raw.flush()
            os.fsync(raw.fileno())
        _fault_hook(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


#: Temporary checkpoint files start with this (a dead writer's are removed on resume).
TMP_PREFIX = "."


class _RecordingWriter:
    """A binary file that remembers the first ``OSError`` its ``write`` raised (torch.save
    reports a failed write as a ``RuntimeError`` without the reason)."""

    def __init__(self, raw) -> None:
        self.raw = raw
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.raw.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def flush(self) -> None:
        self.raw.flush()


def remove_stale_temporaries(directory: str | Path, name: str = "last.pt") -> list[Path]:
    """Delete the temporary files that killed writers left beside ``directory/name`` (call
    it only while holding the run directory's lock); returns what was removed."""
    removed = []
    for p in Path(directory).glob(f"{TMP_PREFIX}{name}.tmp-*"):
        try:
            p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def _why(err: BaseException, path: Path) -> str:
    """A short reason for a failed ``torch.load`` (never torch's own advice)."""
    try:
        size = path.stat().st_size
    except OSError:
        size = -1
    if size == 0:
        return "empty file"
    if isinstance(err, pickle.UnpicklingError) and "weights_only" in str(err):
        return "holds Python objects other than tensors and plain containers; not loaded"
    if isinstance(err, (EOFError, zipfile.BadZipFile)) or "zip archive" in str(err) \
            or "central directory" in str(err):
        return "truncated or not a torch file"
    return "not a torch checkpoint file"


def load(path: str | Path, map_location: str | torch.device = "cpu",
         required: tuple[str, ...] = REQUIRED) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save` with ``weights_only=True``.

    Raises :class:`CheckpointError` (one line) when the file is not a dict holding the
    ``required`` entries, and ``OSError`` when it cannot be read at all (missing, a
    directory, no permission).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(21, "is a directory, not a checkpoint file", str(path))
    with open(path, "rb"):  # a missing or unreadable file: the OSError names it
        pass
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure of the format means the same
        raise CheckpointError(f"{path}: damaged or not an sgdlab checkpoint "
                              f"({_why(err, path)})") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: damaged or not an sgdlab checkpoint "
                              f"(holds a {type(payload).__name__}, not a dict)")
    missing = [k for k in required if k not in payload]
    if missing:
        raise CheckpointError(f"{path}: damaged or not an sgdlab checkpoint "
                              f"(no {', '.join(repr(k) for k in missing)} entry)")
    return payload
