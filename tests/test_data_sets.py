"""load(): registry, option validation, MNIST-1D (generated + cached), digits, MNIST (SPEC §5)."""

from __future__ import annotations

import os
import random
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from sgdlab import data as D
from sgdlab.data import DataError, Dataset, load


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A private SGDLAB_CACHE for this module (module scope: mnist1d is generated once)."""
    path = tmp_path_factory.mktemp("sgdlab_cache")
    old = os.environ.get("SGDLAB_CACHE")
    os.environ["SGDLAB_CACHE"] = str(path)
    yield path
    if old is None:
        del os.environ["SGDLAB_CACHE"]
    else:
        os.environ["SGDLAB_CACHE"] = old


@pytest.fixture(autouse=True)
def _private_cache(cache, monkeypatch):
    """Every test uses the module's private cache (never the user's cache dir)."""
    monkeypatch.setenv("SGDLAB_CACHE", str(cache))


@pytest.fixture(scope="module")
def mnist1d(cache, tmp_path_factory) -> Dataset:
    cwd = os.getcwd()
    work = tmp_path_factory.mktemp("cwd")
    os.chdir(work)  # nothing may be written into the working directory
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        d = load("mnist1d")
    finally:
        os.chdir(cwd)
    assert list(work.iterdir()) == []
    # make_dataset reseeds the global RNGs; load() must put them back
    assert random.getstate() == py_state
    after = np.random.get_state()
    assert np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]
    return d


# --------------------------------------------------------------------------- registry


def test_names():
    assert D.names() == sorted(["cifar10", "digits", "linreg", "logreg", "mnist", "mnist1d",
                                "quadratic_deep"])


def test_unknown_name_lists_known_ones():
    with pytest.raises(ValueError) as info:
        load("mnist2d")
    msg = str(info.value)
    assert isinstance(info.value, DataError) and "\n" not in msg
    assert "'mnist2d'" in msg and all(n in msg for n in D.names())


def test_unknown_option_lists_allowed_ones():
    with pytest.raises(DataError) as info:
        load("linreg", dimension=3)
    msg = str(info.value)
    assert "'dimension'" in msg and "dim" in msg and "noise" in msg and "\n" not in msg


@pytest.mark.parametrize(
    "name, opts, field",
    [
        ("linreg", dict(noise=-1.0), "noise"),
        ("linreg", dict(dim=0), "dim"),
        ("linreg", dict(dim=2.5), "dim"),
        ("linreg", dict(condition=0.5), "condition"),
        ("logreg", dict(num_classes=1), "num_classes"),
        ("quadratic_deep", dict(noise_level=float("nan")), "noise_level"),
        ("digits", dict(test_fraction=0.0), "test_fraction"),
        ("digits", dict(flatten="yes"), "flatten"),
        ("mnist1d", dict(n_train=0), "n_train"),
        ("mnist1d", dict(normalize=1), "normalize"),
        ("cifar10", dict(data_dir=3), "data_dir"),
    ],
)
def test_bad_option_values(name, opts, field):
    with pytest.raises(DataError) as info:
        load(name, **opts)
    msg = str(info.value)
    assert msg.startswith(f"{name}: ") and f"'{field}'" in msg and "\n" not in msg


@pytest.mark.parametrize("seed", [-1, 1.5, "0", True])
def test_bad_seed(seed):
    with pytest.raises(DataError, match="seed"):
        load("linreg", seed=seed)


def test_options_lists_defaults():
    assert D.options("mnist1d")["data_seed"] == 42
    assert D.options("linreg")["dim"] == 10


# --------------------------------------------------------------------------- mnist1d


def test_mnist1d_shapes_and_normalisation(mnist1d):
    d = mnist1d
    assert (d.name, d.task, d.num_classes, d.input_shape) == ("mnist1d", "classification", 10,
                                                               (40,))
    assert d.x_train.shape == (4000, 40) and d.x_test.shape == (1000, 40)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert set(d.y_train.unique().tolist()) == set(range(10))
    x = d.x_train.double()
    assert abs(float(x.mean())) < 1e-6 and abs(float(x.std(unbiased=False)) - 1) < 1e-5
    assert d.output_dim == 10 and d.n_train == 4000


def test_mnist1d_matches_the_package_and_is_cached(mnist1d, cache):
    from mnist1d.data import get_dataset_args, make_dataset

    path = Path(mnist1d.meta["cache_path"])
    assert path.parent == cache / "mnist1d" and path.suffix == ".npz"
    assert not mnist1d.meta["cached"]
    with np.load(path, allow_pickle=False) as z:  # a plain npz, no pickled objects
        assert set(z.files) == {"x", "y", "x_test", "y_test", "t"}
        ref = make_dataset(get_dataset_args())
        assert np.array_equal(z["x"], ref["x"]) and np.array_equal(z["y_test"], ref["y_test"])
    again = load("mnist1d")
    assert again.meta["cached"]
    assert torch.equal(again.x_train, mnist1d.x_train)
    assert torch.equal(again.y_test, mnist1d.y_test)
    assert [p.suffix for p in path.parent.iterdir()] == [".npz"]  # no temp files left


def test_mnist1d_corrupt_cache_is_regenerated(mnist1d, cache, tmp_path, monkeypatch):
    monkeypatch.setenv("SGDLAB_CACHE", str(tmp_path))
    target = tmp_path / "mnist1d" / Path(mnist1d.meta["cache_path"]).name
    target.parent.mkdir()
    target.write_bytes(b"PK\x03\x04 not a zip")
    d = load("mnist1d")
    assert not d.meta["cached"] and torch.equal(d.x_train, mnist1d.x_train)
    assert zipfile.is_zipfile(target)


def test_mnist1d_subsets_follow_the_seed(mnist1d):
    a = load("mnist1d", seed=1, n_train=500, n_test=100)
    b = load("mnist1d", seed=1, n_train=500, n_test=100)
    c = load("mnist1d", seed=2, n_train=500)
    assert a.x_train.shape == (500, 40) and a.x_test.shape == (100, 40)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
    assert not torch.equal(a.y_train, c.y_train)
    # the seed does not change the canonical data set itself
    assert torch.equal(load("mnist1d", seed=5).x_train, mnist1d.x_train)


# --------------------------------------------------------------------------- digits


def test_digits():
    d = load("digits")
    assert d.x_train.shape == (1437, 1, 8, 8) and d.x_test.shape == (360, 1, 8, 8)
    assert d.input_shape == (1, 8, 8) and d.num_classes == 10
    x = d.x_train.double()
    assert abs(float(x.mean())) < 1e-6 and abs(float(x.std(unbiased=False)) - 1) < 1e-5
    assert abs(float(d.x_test.mean())) < 0.1
    counts = torch.bincount(d.y_test, minlength=10)
    assert int(counts.min()) >= 35  # stratified split
    e = load("digits")
    assert torch.equal(d.x_train, e.x_train) and torch.equal(d.y_test, e.y_test)
    f = load("digits", seed=1, flatten=True)
    assert f.x_train.shape == (1437, 64) and f.input_shape == (64,)
    assert not torch.equal(f.y_train, d.y_train)
    raw = load("digits", normalize=False)
    assert float(raw.x_train.min()) == 0.0 and float(raw.x_train.max()) == 1.0


def test_dataset_helpers():
    d = load("digits")
    flat = d.flattened()
    assert flat.x_train.shape == (1437, 64) and flat.flattened() is flat
    s = d.sampler(32, mode="shuffle", seed=0)
    assert s.n == 1437 and s.steps_per_epoch == 44
    x, y = d.batch(s.next_batch())
    assert x.shape == (32, 1, 8, 8) and y.shape == (32,)
    assert d.to("cpu").x_train.device.type == "cpu"


# --------------------------------------------------------------------------- mnist


def test_mnist_from_the_wheel():
    d = load("mnist", seed=0, n_test=2000)
    assert d.x_train.shape == (50_000, 1, 28, 28) and d.x_test.shape == (2000, 1, 28, 28)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert d.input_shape == (1, 28, 28) and d.num_classes == 10
    assert torch.bincount(d.y_train, minlength=10).min() > 4000
    assert d.meta["mean"][0] == pytest.approx(0.1307, abs=2e-3)
    assert d.meta["std"][0] == pytest.approx(0.3081, abs=2e-3)
    x = d.x_train.double()
    assert abs(float(x.mean())) < 1e-5 and abs(float(x.std(unbiased=False)) - 1) < 1e-4
