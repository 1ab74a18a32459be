"""BatchSampler: the two sampling schemes of SPEC §1 and exact resumption."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from scipy import stats

from sgdlab.data import BatchSampler, DataError

# All statistical checks below use fixed seeds, so they are deterministic; the thresholds
# (p > 1e-3, |z| < 5) are what a correct sampler passes for almost every seed.
P_MIN = 1e-3


def draw(s: BatchSampler, k: int) -> list[torch.Tensor]:
    return [s.next_batch() for _ in range(k)]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_shuffle_covers_every_index_once_per_epoch():
    s = BatchSampler(103, 10, mode="shuffle", seed=3, drop_last=False)
    assert s.steps_per_epoch == len(s) == 11
    for epoch in range(3):
        batches = list(s)
        assert s.epoch == epoch
        assert [len(b) for b in batches] == [10] * 10 + [3]
        idx = torch.cat(batches)
        assert idx.dtype == torch.int64
        assert torch.equal(idx.sort().values, torch.arange(103))


def test_shuffle_drop_last_gives_distinct_full_batches_and_new_permutations():
    s = BatchSampler(50, 8, mode="shuffle", seed=0)
    e0, e1 = torch.cat(list(s)), torch.cat(list(s))
    assert len(e0) == len(e1) == 48
    assert len(set(e0.tolist())) == 48 and len(set(e1.tolist())) == 48
    assert not torch.equal(e0, e1)


def test_replacement_indices_are_uniform():
    s = BatchSampler(20, 8, mode="replacement", seed=1)
    idx = torch.cat(draw(s, 2500))
    counts = np.bincount(idx.numpy(), minlength=20)
    assert stats.chisquare(counts).pvalue > P_MIN


def test_replacement_draws_with_replacement_inside_a_batch():
    # i.i.d. indices: P(no repeat in a batch of 5 out of 10) = 10·9·8·7·6 / 10⁵ = 0.3024
    s = BatchSampler(10, 5, mode="replacement", seed=2)
    n_batches = 4000
    distinct = sum(len(set(b.tolist())) == 5 for b in draw(s, n_batches))
    p = 0.3024
    z = (distinct - n_batches * p) / np.sqrt(n_batches * p * (1 - p))
    assert abs(z) < 5


def test_replacement_batches_are_independent():
    s = BatchSampler(5, 3, mode="replacement", seed=4)
    first = np.array([int(b[0]) for b in draw(s, 6000)])
    table = np.zeros((5, 5))
    np.add.at(table, (first[:-1], first[1:]), 1)
    assert stats.chi2_contingency(table).pvalue > P_MIN


@pytest.mark.parametrize("mode", ["replacement", "shuffle"])
def test_determinism_per_seed(mode):
    a = draw(BatchSampler(37, 4, mode=mode, seed=7), 30)
    b = draw(BatchSampler(37, 4, mode=mode, seed=7), 30)
    c = draw(BatchSampler(37, 4, mode=mode, seed=8), 30)
    assert same(a, b)
    assert not same(a, c)


def test_global_rng_untouched():
    before = torch.get_rng_state()
    draw(BatchSampler(30, 4, mode="shuffle", seed=0), 20)
    draw(BatchSampler(30, 4, mode="replacement", seed=0), 20)
    assert torch.equal(before, torch.get_rng_state())


@pytest.mark.parametrize("mode", ["replacement", "shuffle"])
@pytest.mark.parametrize("drop_last", [True, False])
@pytest.mark.parametrize("k", [0, 1, 5, 9, 10, 23])
def test_resume_gives_identical_subsequent_batches(mode, drop_last, k):
    # n=47, B=5: 9 steps per epoch with drop_last, 10 without; k covers mid-epoch,
    # the end of an epoch and later epochs
    ref = BatchSampler(47, 5, mode=mode, seed=11, drop_last=drop_last)
    draw(ref, k)
    state = ref.state_dict()
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    expected = draw(ref, 25)
    resumed = BatchSampler(47, 5, mode=mode, seed=999, drop_last=drop_last)
    draw(resumed, 3)  # whatever it did before is overwritten
    resumed.load_state_dict(state)
    # the epoch rolls over lazily, on the first draw after its last batch
    spe = ref.steps_per_epoch
    assert (resumed.epoch, resumed.position) == ((0, 0) if k == 0 else
                                                 ((k - 1) // spe, (k - 1) % spe + 1))
    assert resumed.seed == 11
    got = draw(resumed, 25)
    assert same(expected, got)
    assert (resumed.epoch, resumed.position, resumed.step) == (ref.epoch, ref.position,
                                                               ref.step)


def test_state_dict_is_a_snapshot():
    s = BatchSampler(20, 3, mode="shuffle", seed=0)
    draw(s, 2)
    st = s.state_dict()
    draw(s, 10)
    t = BatchSampler(20, 3, mode="shuffle", seed=0)
    t.load_state_dict(st)
    u = BatchSampler(20, 3, mode="shuffle", seed=0)
    draw(u, 2)
    assert same(draw(t, 10), draw(u, 10))


def test_resume_refuses_a_different_sampler():
    st = BatchSampler(20, 4, mode="shuffle").state_dict()
    for other in (BatchSampler(21, 4, mode="shuffle"), BatchSampler(20, 5, mode="shuffle"),
                  BatchSampler(20, 4, mode="replacement"),
                  BatchSampler(20, 4, mode="shuffle", drop_last=False)):
        with pytest.raises(DataError, match="cannot resume"):
            other.load_state_dict(st)
    with pytest.raises(DataError):
        BatchSampler(20, 4).load_state_dict({"version": 0})


def test_iteration_and_properties():
    s = BatchSampler(10, 3, mode="replacement", seed=0)
    assert s.steps_per_epoch == 3 and s.noise_factor == 1.0
    assert [len(b) for b in s] == [3, 3, 3]
    assert (s.epoch, s.position, s.step) == (0, 3, 3)
    assert len(list(s)) == 3 and s.epoch == 1
    assert BatchSampler(10, 3, mode="replacement", drop_last=False).steps_per_epoch == 4
    assert BatchSampler(10, 3, mode="shuffle").noise_factor == pytest.approx(7 / 9)
    half = BatchSampler(10, 3, mode="shuffle", seed=0)
    half.next_batch()
    assert len(list(half)) == 2  # the rest of the epoch


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(n=0, batch_size=1), "n"),
        (dict(n=10, batch_size=0), "batch_size"),
        (dict(n=10, batch_size=11), "batch_size"),
        (dict(n=10, batch_size=2, mode="epoch"), "mode"),
        (dict(n=10, batch_size=2, seed=-1), "seed"),
        (dict(n=10, batch_size=2.0), "batch_size"),
    ],
)
def test_bad_arguments(kwargs, field):
    with pytest.raises(ValueError, match=field) as info:
        BatchSampler(**kwargs)
    assert "\n" not in str(info.value)
