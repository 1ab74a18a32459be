"""CIFAR-10 from the standard python batches in a user-provided directory (SPEC §5).

The "CIFAR-10 python version" (``cifar-10-python.tar.gz``) extracts to
``cifar-10-batches-py/`` holding ``data_batch_1`` … ``data_batch_5`` (10,000 images each) and
``test_batch`` (10,000). Each is a pickled dict with ``b"data"``: uint8 (n, 3072), rows laid
out as 1024 red, 1024 green, 1024 blue values of a 32×32 image in row-major order, and
``b"labels"``: a list of n ints in 0..9. The files are read with the restricted unpickler of
:mod:`sgdlab.data._unpickle`, which admits numpy arrays and inert builtins and nothing else.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ._core import DataError, Dataset, check_bool, check_int, register, subsample
from ._unpickle import restricted_load
from .images import image_dataset

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")


def default_data_dir() -> Path:
    """``$SGDLAB_DATA_DIR`` if set, else ``platformdirs.user_data_dir("sgdlab")``; the
    CIFAR-10 batches are looked for in it and in its ``cifar-10-batches-py`` subdirectory."""
    env = os.environ.get("SGDLAB_DATA_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("sgdlab"))


def find_batches(data_dir: str | os.PathLike | None) -> Path:
    """The directory holding ``data_batch_1..5`` and ``test_batch``: ``data_dir`` itself or its
    ``cifar-10-batches-py`` subdirectory. Otherwise a one-line :class:`DataError` that says
    what to download and where to put it."""
    base = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    needed = (*TRAIN_FILES, TEST_FILE)
    for cand in (base, base / "cifar-10-batches-py"):
        if all((cand / f).is_file() for f in needed):
            return cand
    missing = [f for f in needed if not (base / f).is_file()]
    what = "no data" if len(missing) == len(needed) else f"missing {', '.join(missing)}"
    raise DataError(
        f"cifar10: {what} in {base}; download the 'CIFAR-10 python version' "
        f"(cifar-10-python.tar.gz) from {URL} and extract it so that {base}/data_batch_1 … "
        f"{base}/test_batch exist (or pass --data-dir)"
    )


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 batch file with the restricted unpickler.

    Returns images uint8 (n, 3, 32, 32) and labels int64 (n,). Any other content, or a
    pickle naming a forbidden global, raises :class:`DataError` naming the file.
    """
    with open(path, "rb") as fh:
        obj = restricted_load(fh, source=path, encoding="bytes")
    if not isinstance(obj, dict):
        raise DataError(f"cifar10: {path} is not a CIFAR-10 batch (a dict), got "
                        f"{type(obj).__name__}")
    data = obj.get(b"data", obj.get("data"))
    labels = obj.get(b"labels", obj.get("labels"))
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3072):
        raise DataError(f"cifar10: {path}: 'data' must be a uint8 array of shape (n, 3072)")
    if isinstance(labels, np.ndarray):
        labels = labels.tolist()
    if not (isinstance(labels, list) and len(labels) == data.shape[0]
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 9
                    for v in labels)):
        raise DataError(f"cifar10: {path}: 'labels' must be a list of {data.shape[0]} ints "
                        "in 0..9")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


@register("cifar10")
def load_cifar10(seed: int, *, data_dir: str | None = None, normalize: bool = True,
                 flatten: bool = False, n_train: int | None = None,
                 n_test: int | None = None) -> Dataset:
    """CIFAR-10: x (N, 3, 32, 32), 10 classes; 50,000 train / 10,000 test (SPEC §5).

    Read from ``data_dir`` (the CLI's ``--data-dir``; default :func:`default_data_dir`).
    Pixels are scaled to [0, 1] and, with ``normalize``, standardised per channel with the
    training split's statistics. ``n_train``/``n_test`` take seeded random subsets.
    """
    ds = "cifar10"
    if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
        raise DataError(f"{ds}: option 'data_dir' must be a path, got {data_dir!r}")
    normalize = check_bool(ds, "normalize", normalize)
    flatten = check_bool(ds, "flatten", flatten)
    n_train = check_int(ds, "n_train", n_train, lo=1, allow_none=True)
    n_test = check_int(ds, "n_test", n_test, lo=1, allow_none=True)
    root = find_batches(data_dir)
    parts = [read_batch(root / f) for f in TRAIN_FILES]
    xtr = np.concatenate([p[0] for p in parts])
    ytr = np.concatenate([p[1] for p in parts])
    xte, yte = read_batch(root / TEST_FILE)
    rng = np.random.default_rng([seed, 13])
    itr = subsample(ds, "n_train", n_train, len(ytr), rng)
    ite = subsample(ds, "n_test", n_test, len(yte), rng)
    if itr is not None:
        xtr, ytr = xtr[itr], ytr[itr]
    if ite is not None:
        xte, yte = xte[ite], yte[ite]
    scale = np.float32(1.0 / 255.0)
    return image_dataset(ds, xtr.astype(np.float32) * scale, ytr,
                         xte.astype(np.float32) * scale, yte, 10, normalize=normalize,
                         flatten=flatten, meta={"data_dir": str(root), "classes": CLASSES})
