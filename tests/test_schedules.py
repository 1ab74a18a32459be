"""Tests for sgdlab.schedules (SPEC §2.5)."""

from __future__ import annotations

import io
import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sgdlab import schedules as S

FAST = settings(max_examples=50, deadline=None)

# one representative of every family (and a few variants), used by several tests
EXAMPLES = {
    "constant": S.constant(),
    "step": S.step(7, 0.5),
    "multistep": S.multistep([5, 12, 30], gamma=0.1),
    "cosine": S.cosine(25),
    "cosine_floor": S.cosine(25, floor=0.1),
    "linear": S.linear(25),
    "inverse_time": S.inverse_time(4.0),
    "sgdr": S.sgdr(5),
    "sgdr_mult": S.sgdr(3, mult=2, floor=0.05),
    "warmup_cosine": S.warmup(S.cosine(20), 5, start=0.1),
    "warmup_step": S.warmup(S.step(4, 0.3), 3),
}


# --------------------------------------------------------------------------- closed forms


def test_closed_form_values():
    assert [S.constant()(t) for t in (0, 1, 10**9)] == [1.0, 1.0, 1.0]
    assert [S.step(3, 0.5)(t) for t in range(7)] == [1, 1, 1, 0.5, 0.5, 0.5, 0.25]
    ms = S.multistep([2, 4])
    assert [ms(t) for t in range(6)] == [1, 1, 0.1, 0.1, 0.1**2, 0.1**2]
    cos = S.cosine(4)
    assert cos(0) == 1.0 and cos(2) == pytest.approx(0.5) and cos(4) == 0.0 and cos(100) == 0.0
    assert S.cosine(4, floor=0.2)(4) == pytest.approx(0.2) and S.cosine(4, floor=0.2)(0) == 1.0
    assert [S.linear(4)(t) for t in range(6)] == [1, 0.75, 0.5, 0.25, 0, 0]
    assert S.inverse_time(2.0)(0) == 1.0 and S.inverse_time(2.0)(6) == pytest.approx(0.25)
    sg = S.sgdr(4)
    assert sg(0) == sg(4) == sg(8) == 1.0 and sg(2) == pytest.approx(0.5)
    sg2 = S.sgdr(2, mult=3)  # periods [0, 2), [2, 8), [8, 26)
    assert [sg2.position(t) for t in (0, 1, 2, 7, 8, 25, 26)] == [
        (0, 0, 2), (0, 1, 2), (1, 0, 6), (1, 5, 6), (2, 0, 18), (2, 17, 18), (3, 0, 54)
    ]  # fmt: skip
    wu = S.warmup(S.constant(), 4, start=0.2)
    assert [wu(t) for t in range(6)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0])
    assert S.warmup(S.constant(), 4)(0) == 0.0
    assert S.warmup(S.cosine(8), 0)(3) == S.cosine(8)(3)  # W = 0 is the inner schedule


def test_nested_warmup_ramps_to_inner_start():
    inner = S.warmup(S.constant(), 2, start=0.5)  # inner(0) = 0.5
    outer = S.warmup(inner, 2, start=0.0)
    assert [outer(t) for t in range(5)] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])


def test_reprs_are_readable():
    assert repr(S.cosine(100, floor=0.1)) == "Cosine(total=100, floor=0.1)"
    assert repr(S.multistep([3, 6])) == "MultiStep(milestones=(3, 6), gamma=0.1)"
    assert "Warmup(schedule=Step(every=2, gamma=0.5)" in repr(S.warmup(S.step(2, 0.5), 3))


@pytest.mark.parametrize(
    ("make", "torch_make"),
    [
        (lambda: S.step(7, 0.5), lambda o: torch.optim.lr_scheduler.StepLR(o, 7, 0.5)),
        (
            lambda: S.multistep([5, 12, 30], 0.3),
            lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [5, 12, 30], 0.3),
        ),
        (
            lambda: S.cosine(60, floor=0.1),  # torch's cosine rises again after T_max
            lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 60, eta_min=0.1 * 0.4),
        ),
        (
            lambda: S.linear(40),
            lambda o: torch.optim.lr_scheduler.LinearLR(o, 1.0, 0.0, total_iters=40),
        ),
        (
            lambda: S.sgdr(3, mult=2, floor=0.1),
            lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
                o, 3, T_mult=2, eta_min=0.1 * 0.4
            ),
        ),
    ],
    ids=["step", "multistep", "cosine", "linear", "sgdr"],
)
def test_matches_torch_builtin_schedulers(make, torch_make):
    """Our conventions (t = 0 is the first step) agree with torch's own schedulers."""
    sched = make()
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.4)
    ref = torch_make(opt)
    for t in range(61):
        assert opt.param_groups[0]["lr"] == pytest.approx(0.4 * sched(t), rel=1e-9, abs=1e-12)
        opt.step()
        ref.step()


# --------------------------------------------------------------------------- torch adapter


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_closed_form_equals_stepping_torch_adapter(name):
    sched = EXAMPLES[name]
    p1, p2 = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([{"params": [p1], "lr": 0.3}, {"params": [p2], "lr": 0.07}], lr=0.3)
    lr_sched = S.to_torch(opt, sched)
    assert isinstance(lr_sched, torch.optim.lr_scheduler.LRScheduler)
    for t in range(80):
        expected = [0.3 * sched(t), 0.07 * sched(t)]
        assert [g["lr"] for g in opt.param_groups] == expected  # bit for bit
        assert lr_sched.get_last_lr() == expected
        assert lr_sched.last_epoch == t
        opt.step()
        lr_sched.step()


def _plain(x) -> bool:
    if isinstance(x, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in x.items())
    if isinstance(x, (list, tuple)):
        return all(_plain(v) for v in x)
    return x is None or isinstance(x, (bool, int, float, str))


def _roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_state_dict_holds_plain_types_only():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = S.warmup(S.multistep([3, 9]), 2)
    sd = S.to_torch(opt, sched).state_dict()
    assert _plain(sd), sd
    assert sd["schedule_config"] == sched.to_dict()
    assert "schedule" not in sd and "optimizer" not in sd
    assert _roundtrip(sd) == sd


def _make_run(seed_init: int):
    torch.manual_seed(seed_init)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = torch.optim.SGD(
        [
            {"params": model[0].parameters(), "lr": 0.05},
            {"params": model[2].parameters(), "lr": 0.02},
        ],
        momentum=0.9,
        weight_decay=1e-3,
    )
    return model, opt


def _train(model, opt, lr_sched, steps: range, lrs: list):
    for t in steps:
        g = torch.Generator().manual_seed(1000 + t)  # batch t is the same in every run
        x = torch.randn(16, 4, generator=g)
        y = x.sum(dim=1, keepdim=True).sin()
        lrs.append([grp["lr"] for grp in opt.param_groups])
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        lr_sched.step()


@pytest.mark.parametrize(
    "name", ["warmup_cosine", "step", "multistep", "sgdr_mult", "inverse_time", "linear"]
)
def test_resume_from_state_dict_continues_identical_trajectory(name):
    sched = EXAMPLES[name]
    # uninterrupted reference run: 20 steps
    model, opt = _make_run(0)
    ref_sched = S.to_torch(opt, sched)
    ref_lrs: list = []
    _train(model, opt, ref_sched, range(20), ref_lrs)
    ref_params = [p.detach().clone() for p in model.parameters()]

    # interrupted run: 10 steps, checkpoint through torch.save / torch.load(weights_only=True)
    model, opt = _make_run(0)
    lr_sched = S.to_torch(opt, sched)
    lrs: list = []
    _train(model, opt, lr_sched, range(10), lrs)
    ckpt = _roundtrip(
        {"model": model.state_dict(), "opt": opt.state_dict(), "sched": lr_sched.state_dict()}
    )
    del model, opt, lr_sched

    # fresh objects (different init), scheduler created before loading the optimizer state
    model, opt = _make_run(123)
    lr_sched = S.to_torch(opt, S.from_dict(ckpt["sched"]["schedule_config"]))
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    lr_sched.load_state_dict(ckpt["sched"])
    assert lr_sched.last_epoch == 10
    _train(model, opt, lr_sched, range(10, 20), lrs)

    assert lrs == ref_lrs
    for p, q in zip(model.parameters(), ref_params, strict=True):
        assert torch.equal(p.detach(), q)


def test_load_state_dict_rejects_a_different_schedule():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sd = S.to_torch(opt, S.cosine(100)).state_dict()
    other = S.to_torch(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), S.cosine(50))
    with pytest.raises(ValueError, match="saved for schedule"):
        other.load_state_dict(sd)
    assert "schedule_config" in sd  # the caller's dict is not mutated


def test_to_torch_requires_a_schedule():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(TypeError, match="Schedule"):
        S.to_torch(opt, lambda t: 1.0)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: S.step(3, 2.0), "gamma must be in (0, 1], got 2.0"),
        (lambda: S.step(3, 0.0), "gamma must be in (0, 1], got 0.0"),
        (lambda: S.step(0, 0.5), "every must be an integer >= 1, got 0"),
        (lambda: S.step(2.5, 0.5), "every must be an integer >= 1, got 2.5"),
        (lambda: S.step(True, 0.5), "every must be an integer >= 1, got True"),
        (lambda: S.multistep([3, 3]), "milestones must be strictly increasing integers >= 1"),
        (lambda: S.multistep([0, 3]), "milestones must be strictly increasing integers >= 1"),
        (lambda: S.multistep(5), "milestones must be strictly increasing integers >= 1"),
        (lambda: S.multistep([3], gamma=-0.1), "gamma must be in (0, 1], got -0.1"),
        (lambda: S.cosine(0), "total must be an integer >= 1, got 0"),
        (lambda: S.cosine(10, floor=1.5), "floor must be in [0, 1], got 1.5"),
        (lambda: S.cosine(10, floor=math.nan), "floor must be in [0, 1], got nan"),
        (lambda: S.linear(-3), "total must be an integer >= 1, got -3"),
        (lambda: S.warmup(S.constant(), -1), "steps must be an integer >= 0, got -1"),
        (lambda: S.warmup(S.constant(), 5, start=1.2), "start must be in [0, 1], got 1.2"),
        (lambda: S.warmup("cosine", 5), "schedule must be a sgdlab.schedules.Schedule"),
        (lambda: S.inverse_time(0.0), "tau must be in (0, inf), got 0.0"),
        (lambda: S.inverse_time(math.inf), "tau must be in (0, inf), got inf"),
        (lambda: S.sgdr(0), "period must be an integer >= 1, got 0"),
        (lambda: S.sgdr(5, mult=0), "mult must be an integer >= 1, got 0"),
        (lambda: S.sgdr(5, mult=1.5), "mult must be an integer >= 1, got 1.5"),
        (lambda: S.linear_scaling(0.1, 0, 256), "batch must be in (0, inf), got 0"),
        (lambda: S.linear_scaling(-0.1, 64, 256), "lr_ref must be in (0, inf), got -0.1"),
        (lambda: S.linear_scaling(0.1, 64, "256"), "batch_ref must be a number in (0, inf)"),
        (lambda: S.constant()(-1), "t must be an integer >= 0"),
        (lambda: S.cosine(5)(1.5), "t must be an integer >= 0"),
    ],
)
def test_bad_hyperparameters_raise_value_error(make, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


def test_schedules_are_frozen_and_hashable():
    s = S.cosine(10)
    with pytest.raises(AttributeError):
        s.total = 5
    assert len({S.cosine(10), S.cosine(10), S.multistep([1, 2]), S.multistep((1, 2))}) == 2


# --------------------------------------------------------------------------- registry


def test_available_lists_every_family():
    assert set(S.available()) == {
        "constant", "step", "multistep", "cosine", "linear", "warmup", "inverse_time", "sgdr"
    }  # fmt: skip


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_to_dict_from_dict_roundtrip(name):
    sched = EXAMPLES[name]
    d = sched.to_dict()
    assert _plain(d)
    assert S.from_dict(d) == sched
    assert S.from_dict(_roundtrip(d)) == sched


def test_build_by_name():
    assert S.build("cosine", total=10, floor=0.1) == S.cosine(10, floor=0.1)
    assert S.build("multistep", milestones=[3, 6]) == S.multistep((3, 6))
    assert S.build("warmup", schedule="constant", steps=3) == S.warmup(S.constant(), 3)
    assert S.build("warmup", schedule={"name": "linear", "total": 9}, steps=3, start=0.1) == (
        S.warmup(S.linear(9), 3, 0.1)
    )


def test_build_errors_name_the_known_choices():
    with pytest.raises(ValueError, match="unknown schedule 'cosin'; available: constant, "):
        S.build("cosin", total=3)
    with pytest.raises(ValueError, match="unexpected parameter.*tota; accepted: total, floor"):
        S.build("cosine", tota=3)
    with pytest.raises(ValueError, match="missing required parameter.*every, gamma"):
        S.build("step")
    with pytest.raises(ValueError, match="'name' key"):
        S.from_dict({"total": 3})


# --------------------------------------------------------------------------- rules


def test_linear_scaling():
    assert S.linear_scaling(0.1, 8192, 256) == pytest.approx(3.2)
    assert S.linear_scaling(0.1, 256, 256) == 0.1
    assert S.linear_scaling(0.4, 64, 256) == pytest.approx(0.1)


def _partial_sums(sched, n: int) -> tuple[float, float]:
    s1 = s2 = 0.0
    for t in range(n):
        f = sched(t)
        s1 += f
        s2 += f * f
    return s1, s2


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("constant", (True, False)),
        ("step", (False, True)),
        ("multistep", (True, False)),
        ("cosine", (False, True)),
        ("cosine_floor", (True, False)),
        ("linear", (False, True)),
        ("inverse_time", (True, True)),
        ("sgdr", (True, False)),
        ("sgdr_mult", (True, False)),
        ("warmup_cosine", (False, True)),
        ("warmup_step", (False, True)),
    ],
)
def test_robbins_monro_answers_and_partial_sums(name, expected):
    sched = EXAMPLES[name]
    rm = S.robbins_monro(sched)
    assert (rm.sum_infinite, rm.sum_sq_finite) == expected
    assert rm.satisfied == (expected == (True, True))
    assert rm.reason
    # numerical check, a ratio test on decades: Σ_{N ≤ t < 10N} f^p over Σ_{N/10 ≤ t < N} f^p
    # stays ≳ 1 for a divergent series (f ~ 1/t gives exactly ~1, a constant tail gives 10) and
    # falls to ≲ 0.1 for a convergent one (1/t² tails give 0.1, geometric or zero tails give 0)
    sums = [_partial_sums(sched, n) for n in (300, 3000, 30000)]
    for p, finite in ((0, not expected[0]), (1, expected[1])):
        early, late = sums[1][p] - sums[0][p], sums[2][p] - sums[1][p]
        ratio = late / early if late > 0 else 0.0
        assert ratio < 0.2 if finite else ratio > 0.5, (name, p, early, late)


def test_robbins_monro_special_cases():
    assert S.robbins_monro(S.step(5, 1.0))[:3] == (True, False, False)
    assert S.robbins_monro(S.multistep([], 0.1))[:3] == (True, False, False)
    assert "outside" in S.robbins_monro(S.cosine(10)).reason
    assert "outside" in S.robbins_monro(S.linear(10)).reason
    assert S.robbins_monro(S.warmup(S.inverse_time(3.0), 10)).satisfied
    assert "warmup" in S.robbins_monro(S.warmup(S.inverse_time(3.0), 10)).reason
    # the geometric sum of step decay is every / (1 - gamma)
    assert sum(S.step(4, 0.5)(t) for t in range(400)) == pytest.approx(8.0)
    with pytest.raises(TypeError, match="built-in families"):
        S.robbins_monro(lambda t: 1.0)


# --------------------------------------------------------------------------- properties

gammas = st.floats(min_value=0.0, max_value=1.0, exclude_min=True)
unit = st.floats(min_value=0.0, max_value=1.0)
periods = st.integers(min_value=1, max_value=10_000)
steps_t = st.integers(min_value=0, max_value=10**7)


@st.composite
def milestone_lists(draw):
    return sorted(draw(st.sets(st.integers(min_value=1, max_value=10**6), max_size=6)))


base_schedules = st.one_of(
    st.just(S.constant()),
    st.builds(S.step, periods, gammas),
    st.builds(S.multistep, milestone_lists(), gammas),
    st.builds(S.cosine, periods, unit),
    st.builds(S.linear, periods),
    st.builds(S.inverse_time, st.floats(min_value=1e-3, max_value=1e6)),
    st.builds(S.sgdr, periods, st.integers(min_value=1, max_value=5), unit),
)
any_schedules = st.recursive(
    base_schedules,
    lambda inner: st.builds(S.warmup, inner, st.integers(0, 10_000), unit),
    max_leaves=3,
)
monotone_schedules = st.one_of(
    st.just(S.constant()),
    st.builds(S.step, periods, gammas),
    st.builds(S.multistep, milestone_lists(), gammas),
    st.builds(S.cosine, periods, unit),
    st.builds(S.linear, periods),
    st.builds(S.inverse_time, st.floats(min_value=1e-3, max_value=1e6)),
)


@FAST
@given(any_schedules, steps_t)
def test_multipliers_lie_in_unit_interval(sched, t):
    f = sched(t)
    assert isinstance(f, float)
    assert 0.0 <= f <= 1.0


@FAST
@given(st.floats(min_value=1e-3, max_value=1e6), steps_t)
def test_inverse_time_is_positive(tau, t):
    assert 0.0 < S.inverse_time(tau)(t) <= 1.0


@FAST
@given(monotone_schedules, steps_t, st.integers(min_value=0, max_value=10**6))
def test_decaying_families_are_non_increasing(sched, t, dt):
    assert sched(t + dt) <= sched(t)
    assert sched(t + 1) <= sched(t)


@FAST
@given(
    periods,
    st.integers(min_value=1, max_value=4),
    unit,
    st.integers(min_value=0, max_value=20),
    st.data(),
)
def test_sgdr_non_increasing_within_a_period_and_restarts_at_one(period, mult, floor, i, data):
    sched = S.sgdr(period, mult, floor)
    start = sum(period * mult**j for j in range(i))
    length = period * mult**i
    a = data.draw(st.integers(min_value=0, max_value=length - 1))
    b = data.draw(st.integers(min_value=a, max_value=length - 1))
    assert sched.position(start + a) == (i, a, length)
    assert sched(start + b) <= sched(start + a)
    assert sched(start) == 1.0
    assert floor <= sched(start + b)


@FAST
@given(any_schedules, st.integers(min_value=0, max_value=5000), unit, steps_t)
def test_warmup_composition(inner, w, start, k):
    wu = S.warmup(inner, w, start)
    assert wu(w + k) == inner(k)  # the inner schedule starts after the warmup


@FAST
@given(monotone_schedules, st.integers(min_value=1, max_value=5000), unit, st.data())
def test_warmup_ramp_linear_non_decreasing_and_bounded(inner, w, start, data):
    wu = S.warmup(inner, w, start)  # inner(0) == 1 for these families
    t = data.draw(st.integers(min_value=0, max_value=w - 1))
    f = wu(t)
    assert f == pytest.approx(start + (1 - start) * t / w, rel=1e-12, abs=1e-15)
    assert min(start, 1.0) <= f <= 1.0
    assert wu(0) == start
    assert wu(t + 1) >= f  # non-decreasing through the ramp and into the inner schedule


@FAST
@given(any_schedules)
def test_any_schedule_roundtrips_through_dict(sched):
    assert S.from_dict(sched.to_dict()) == sched
    rm = S.robbins_monro(sched)
    assert rm.satisfied == (rm.sum_infinite and rm.sum_sq_finite)
