"""CIFAR-10 reader on a tiny archive fabricated in the standard python-batch format, and the
restricted unpickler refusing malicious pickles (SPEC §5)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from sgdlab.data import DataError, UnsafePickleError, load, restricted_load
from sgdlab.data.cifar10 import read_batch

N_PER_BATCH, N_TEST = 6, 4


def write_batch(path: Path, rng: np.random.Generator, n: int, protocol: int = 2,
                extra: dict | None = None) -> dict:
    batch = {
        b"batch_label": path.name.encode(),
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
        **(extra or {}),
    }
    with open(path, "wb") as fh:
        pickle.dump(batch, fh, protocol=protocol)
    return batch


@pytest.fixture
def archive(tmp_path: Path) -> tuple[Path, list[dict], dict]:
    """``tmp/cifar-10-batches-py`` with five train batches and a test batch; like the real
    archive they are protocol-2 pickles of dicts with bytes keys (one in protocol 4)."""
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    train = [write_batch(root / f"data_batch_{i}", rng, N_PER_BATCH,
                         protocol=4 if i == 5 else 2) for i in range(1, 6)]
    test = write_batch(root / "test_batch", rng, N_TEST)
    return root, train, test


class Exploit:
    """Unpickling this would run a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class EvalExploit:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


def test_reads_fabricated_archive(archive):
    root, train, test = archive
    d = load("cifar10", data_dir=str(root), normalize=False)
    assert d.name == "cifar10" and d.task == "classification" and d.num_classes == 10
    assert d.x_train.shape == (5 * N_PER_BATCH, 3, 32, 32) and d.x_train.dtype == torch.float32
    assert d.x_test.shape == (N_TEST, 3, 32, 32) and d.input_shape == (3, 32, 32)
    assert d.y_train.dtype == torch.int64
    assert d.y_train.tolist() == sum((b[b"labels"] for b in train), [])
    assert d.y_test.tolist() == test[b"labels"]
    # row layout: 1024 red, 1024 green, 1024 blue values, each 32×32 row-major
    raw = train[0][b"data"][1]
    expect = raw.reshape(3, 32, 32).astype(np.float32) / 255
    assert np.allclose(d.x_train[1].numpy(), expect)
    assert np.allclose(d.x_train[1, 1, 0, :].numpy(), raw[1024:1056] / 255)


def test_normalised_per_channel_on_train(archive):
    root, *_ = archive
    d = load("cifar10", data_dir=root)
    m = d.x_train.double().mean(dim=(0, 2, 3))
    s = d.x_train.double().std(dim=(0, 2, 3), unbiased=False)
    assert torch.allclose(m, torch.zeros(3, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(s, torch.ones(3, dtype=torch.float64), atol=1e-5)
    assert len(d.meta["mean"]) == 3 and len(d.meta["std"]) == 3
    f = load("cifar10", data_dir=root, flatten=True)
    assert f.x_train.shape == (30, 3072) and f.input_shape == (3072,)
    assert torch.equal(f.x_train, d.x_train.reshape(30, -1))


def test_parent_directory_and_subsets(archive):
    root, *_ = archive
    d = load("cifar10", seed=3, data_dir=root.parent, n_train=10, n_test=2)
    assert d.n_train == 10 and d.n_test == 2
    e = load("cifar10", seed=3, data_dir=root.parent, n_train=10, n_test=2)
    assert torch.equal(d.x_train, e.x_train) and torch.equal(d.y_train, e.y_train)
    with pytest.raises(DataError, match="n_train"):
        load("cifar10", data_dir=root, n_train=31)


def test_missing_directory_gives_one_line_that_says_what_to_download(tmp_path):
    where = tmp_path / "nowhere"
    with pytest.raises(ValueError) as info:
        load("cifar10", data_dir=str(where))
    msg = str(info.value)
    assert isinstance(info.value, DataError)
    assert "\n" not in msg
    for part in ("cifar10", str(where), "cifar-10-python.tar.gz",
                 "https://www.cs.toronto.edu/~kriz/cifar.html", "data_batch_1", "test_batch",
                 "--data-dir"):
        assert part in msg


def test_missing_files_are_named(archive):
    root, *_ = archive
    (root / "data_batch_4").unlink()
    with pytest.raises(DataError, match="missing data_batch_4"):
        load("cifar10", data_dir=root)


def test_malicious_batch_is_refused_without_running_it(archive, tmp_path):
    root, *_ = archive
    marker = tmp_path / "pwned"
    with open(root / "data_batch_3", "wb") as fh:
        pickle.dump(Exploit(marker), fh, protocol=2)
    with pytest.raises(pickle.UnpicklingError) as info:
        load("cifar10", data_dir=root)
    assert isinstance(info.value, UnsafePickleError) and isinstance(info.value, ValueError)
    msg = str(info.value)
    assert "data_batch_3" in msg and "system" in msg and "\n" not in msg
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_payload_hidden_inside_a_valid_batch_is_refused(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "data_batch_1"
    write_batch(path, np.random.default_rng(1), 3, protocol=protocol,
                extra={b"extra": [Exploit(marker)]})
    with pytest.raises(UnsafePickleError, match="data_batch_1"):
        read_batch(path)
    assert not marker.exists()


@pytest.mark.parametrize("payload", [EvalExploit(), getattr, pickle.loads])
def test_other_globals_are_refused(tmp_path, payload):
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps({b"data": payload}, protocol=2))
    with pytest.raises(UnsafePickleError, match="refused"):
        read_batch(path)


def test_object_arrays_are_refused(tmp_path):
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps({b"data": np.array([1, "a"], dtype=object)}, protocol=2))
    with pytest.raises(UnsafePickleError, match="object"):
        read_batch(path)


def test_restricted_load_admits_arrays_and_plain_containers():
    import io

    obj = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": [1, 2.5, "x", b"y"],
           "c": (None, True), "d": {1, 2}, "e": bytearray(b"z"), "f": complex(1, 2)}
    for protocol in (2, 3, 4, 5):
        got = restricted_load(io.BytesIO(pickle.dumps(obj, protocol=protocol)), source="mem")
        assert np.array_equal(got["a"], obj["a"]) and got["a"].dtype == np.float32
        assert {k: v for k, v in got.items() if k != "a"} == \
            {k: v for k, v in obj.items() if k != "a"}


@pytest.mark.parametrize(
    "batch, field",
    [
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "labels"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "labels"),
        ({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}, "data"),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "data"),
        ([1, 2, 3], "dict"),
    ],
)
def test_malformed_batches(tmp_path, batch, field):
    path = tmp_path / "data_batch_2"
    path.write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match=field) as info:
        read_batch(path)
    assert "data_batch_2" in str(info.value)


def test_truncated_pickle(tmp_path):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}, protocol=2)[:50])
    with pytest.raises(DataError, match="data_batch_1"):
        read_batch(path)
