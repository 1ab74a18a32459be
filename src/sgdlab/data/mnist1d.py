"""MNIST-1D (Greydanus 2020), generated procedurally and cached as ``.npz`` (SPEC §5).

The ``mnist1d`` package's ``make_dataset(get_dataset_args())`` builds 5000 signals of length
40 (4000 train / 1000 test, 10 classes) in about a second and a half. Its ``get_dataset`` is
never called: it downloads, and writes and reads a pickle in the working directory.
The generated arrays are cached in ``cache_dir()/mnist1d/<key>.npz``, ``key`` = a SHA-256 of the
generation arguments and the package version; the cache is written atomically (temporary
file + ``os.replace``) and read with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._core import (
    DataError,
    Dataset,
    cache_dir,
    check_bool,
    check_int,
    register,
    standardise,
    subsample,
    to_tensor,
)

_KEYS = ("x", "y", "x_test", "y_test", "t")


def generation_args(data_seed: int = 42, num_samples: int = 5000,
                    shuffle_seq: bool = False) -> dict[str, Any]:
    """The ``mnist1d`` generation arguments: the package's standard ones (with which the
    published accuracies were measured) with ``seed``, ``num_samples`` and ``shuffle_seq``
    overridden. The download ``url`` is dropped."""
    from mnist1d.data import get_dataset_args

    args = dict(get_dataset_args(as_dict=True))
    args.pop("url", None)
    args.update(seed=data_seed, num_samples=num_samples, shuffle_seq=shuffle_seq)
    return args


def _cache_key(args: dict[str, Any]) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("mnist1d")
    except PackageNotFoundError:  # pragma: no cover
        ver = "unknown"
    blob = json.dumps({"args": args, "mnist1d": ver, "format": 1}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _generate(args: dict[str, Any]) -> dict[str, np.ndarray]:
    """Run ``make_dataset`` and restore the global ``random``/``numpy`` RNG states it reseeds."""
    from mnist1d.data import make_dataset
    from mnist1d.utils import ObjectView

    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        full = dict(args, url="")
        data = make_dataset(ObjectView(full))
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {k: np.asarray(data[k]) for k in _KEYS}


def _read_cache(path: Path, args: dict[str, Any]) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: np.array(z[k]) for k in _KEYS}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError):
        return None
    n_train = int(args["num_samples"] // 10 * 10 * args["train_split"])
    ok = (data["x"].ndim == 2 and data["x"].shape[0] == data["y"].shape[0] == n_train
          and data["x_test"].shape[0] == data["y_test"].shape[0]
          and data["x"].shape[1] == data["x_test"].shape[1] == args["final_seq_length"])
    return data if ok else None


def _write_cache(path: Path, data: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def mnist1d_arrays(data_seed: int = 42, num_samples: int = 5000, shuffle_seq: bool = False,
                   ) -> tuple[dict[str, np.ndarray], Path, bool]:
    """The raw ``make_dataset`` arrays (x, y, x_test, y_test, t), from the cache if present.

    Returns ``(arrays, cache_path, was_cached)``. A corrupt cache file is regenerated.
    """
    args = generation_args(data_seed, num_samples, shuffle_seq)
    path = cache_dir() / "mnist1d" / f"{_cache_key(args)}.npz"
    data = _read_cache(path, args) if path.exists() else None
    if data is not None:
        return data, path, True
    data = _generate(args)
    try:
        _write_cache(path, data)
    except OSError:  # a read-only cache dir only costs regeneration next time
        pass
    return data, path, False


@register("mnist1d")
def load_mnist1d(seed: int, *, data_seed: int = 42, num_samples: int = 5000,
                 shuffle_seq: bool = False, normalize: bool = True, n_train: int | None = None,
                 n_test: int | None = None) -> Dataset:
    """MNIST-1D: x (N, 40) float32, y (N,) int64 in 0..9; 4000 train / 1000 test (SPEC §5).

    ``data_seed`` is the generation seed of ``mnist1d`` (42 = the published data set; ``seed``
    does not change the data, it only picks the ``n_train``/``n_test`` subsets).
    ``make_dataset`` standardises with statistics of all 5000 signals; with ``normalize`` the
    data are re-standardised with the scalar mean and standard deviation of the training
    split, x ← (x − μ_train)/σ_train (a near no-op on the standard set).
    Published test accuracies: logistic 32%, MLP 68%, CNN 94%, GRU 91%.
    """
    ds = "mnist1d"
    data_seed = check_int(ds, "data_seed", data_seed, lo=0, hi=2**32 - 1)
    num_samples = check_int(ds, "num_samples", num_samples, lo=10, hi=10_000_000)
    shuffle_seq = check_bool(ds, "shuffle_seq", shuffle_seq)
    normalize = check_bool(ds, "normalize", normalize)
    n_train = check_int(ds, "n_train", n_train, lo=1, allow_none=True)
    n_test = check_int(ds, "n_test", n_test, lo=1, allow_none=True)
    data, path, cached = mnist1d_arrays(data_seed, num_samples, shuffle_seq)
    xtr, ytr = data["x"], data["y"].astype(np.int64)
    xte, yte = data["x_test"], data["y_test"].astype(np.int64)
    rng = np.random.default_rng([seed, 11])
    itr = subsample(ds, "n_train", n_train, len(ytr), rng)
    ite = subsample(ds, "n_test", n_test, len(yte), rng)
    if itr is not None:
        xtr, ytr = xtr[itr], ytr[itr]
    if ite is not None:
        xte, yte = xte[ite], yte[ite]
    meta: dict[str, Any] = {"data_seed": data_seed, "cache_path": str(path), "cached": cached,
                            "t": data["t"]}
    if normalize:
        xtr, xte, mu, sd = standardise(xtr, xte, axes=(0, 1))
        meta.update(mean=mu.tolist(), std=sd.tolist())
    if not (np.all((ytr >= 0) & (ytr < 10)) and np.all((yte >= 0) & (yte < 10))):
        raise DataError(f"{ds}: labels outside 0..9 in {path}")
    return Dataset(ds, to_tensor(xtr, torch.float32), to_tensor(ytr, torch.int64),
                   to_tensor(xte, torch.float32), to_tensor(yte, torch.int64),
                   task="classification", num_classes=10, input_shape=(xtr.shape[1],),
                   meta=meta)
