"""Learning-rate schedules as closed-form multipliers (SPEC §2.5).

A schedule is a plain function of the optimizer step ``t = 0, 1, 2, ...`` that returns a
multiplier ``f(t)`` on a base learning rate η: step ``t`` uses ``η · f(t)`` (``f(0)`` is the
multiplier of the very first step). Every schedule here is a small frozen dataclass with
``__call__``, so it has a readable repr, compares by value, and serialises with
:meth:`Schedule.to_dict` / :func:`from_dict`; :func:`build` selects one by name (see
:func:`available`), which is how the trainer picks a schedule from the CLI or a YAML file.

Families (SPEC §2.5):

* ``constant()``: f(t) = 1
* ``step(every, gamma)``: f(t) = γ^⌊t/S⌋
* ``multistep(milestones, gamma=0.1)``: f(t) = γ^#{m ∈ milestones : m ≤ t}
* ``cosine(total, floor=0.0)``: f(t) = f_min + (1 − f_min)·½(1 + cos(π·min(t, T)/T))
* ``linear(total)``: f(t) = max(0, 1 − t/T)
* ``warmup(schedule, steps, start=0.0)``: linear ramp f₀ → 1 over W steps, then
  ``schedule(t − W)`` (the inner schedule starts after the warmup)
* ``inverse_time(tau)``: f(t) = 1/(1 + t/τ)
* ``sgdr(period, mult=1, floor=0.0)``: cosine with warm restarts, first period T₀, each next
  period ×mult

:func:`to_torch` wraps a schedule as a :class:`torch.optim.lr_scheduler.LRScheduler` whose
state_dict holds plain types only and resumes the identical trajectory;
:func:`linear_scaling` is the batch-size rule η(B) = η_ref·B/B_ref; :func:`robbins_monro` says
whether a built-in schedule satisfies Σ η = ∞ and Σ η² < ∞.
"""

from __future__ import annotations

import bisect
import inspect
import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

__all__ = [
    "Schedule",
    "Constant",
    "Step",
    "MultiStep",
    "Cosine",
    "Linear",
    "Warmup",
    "InverseTime",
    "SGDR",
    "ScheduleLR",
    "RobbinsMonro",
    "constant",
    "step",
    "multistep",
    "cosine",
    "linear",
    "warmup",
    "inverse_time",
    "sgdr",
    "to_torch",
    "linear_scaling",
    "robbins_monro",
    "available",
    "build",
    "from_dict",
]


# --------------------------------------------------------------------------- validation


def _check_real(
    name: str,
    value: Any,
    lo: float,
    hi: float = math.inf,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    """Return ``float(value)`` if it is a finite real in the interval, else raise ValueError."""
    left = "(" if lo_open else "["
    right = ")" if (hi_open or math.isinf(hi)) else "]"
    hi_txt = "inf" if math.isinf(hi) else f"{hi:g}"
    allowed = f"{left}{lo:g}, {hi_txt}{right}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number in {allowed}, got {value!r}")
    v = float(value)
    ok = math.isfinite(v)
    ok = ok and (v > lo if lo_open else v >= lo)
    ok = ok and (v < hi if (hi_open or math.isinf(hi)) else v <= hi)
    if not ok:
        raise ValueError(f"{name} must be in {allowed}, got {value!r}")
    return v


def _check_int(name: str, value: Any, lo: int) -> int:
    """Return ``int(value)`` if it is an integer ``>= lo`` (bools refused), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    return int(value)


def _check_t(t: Any) -> int:
    if isinstance(t, bool) or not isinstance(t, numbers.Integral) or t < 0:
        raise ValueError(f"t must be an integer >= 0 (optimizer steps), got {t!r}")
    return int(t)


def _cos_factor(t_cur: int, period: int) -> float:
    """½(1 + cos(π·t_cur/period)) ∈ [0, 1] for 0 ≤ t_cur ≤ period."""
    return 0.5 * (1.0 + math.cos(math.pi * t_cur / period))


def _floored(floor: float, x: float) -> float:
    """floor + (1 − floor)·x for x ∈ [0, 1], clipped to ≤ 1 against rounding."""
    return min(1.0, floor + (1.0 - floor) * x)


# --------------------------------------------------------------------------- schedules


class Schedule(ABC):
    """Base class: a closed-form multiplier ``f(t)`` of the optimizer step (SPEC §2.5).

    Subclasses are frozen dataclasses; ``f(t)`` depends on ``t`` only (no hidden state),
    so evaluating any step in any order gives the same value.
    """

    name: ClassVar[str] = ""

    def __call__(self, t: int) -> float:
        return self._value(_check_t(t))

    @abstractmethod
    def _value(self, t: int) -> float:
        """The multiplier at a validated step t."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """Plain-type description ``{"name": ..., **hyper-parameters}``; see :func:`from_dict`."""


@dataclass(frozen=True)
class Constant(Schedule):
    """f(t) = 1 (SPEC §2.5)."""

    name: ClassVar[str] = "constant"

    def _value(self, t: int) -> float:
        return 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name}


@dataclass(frozen=True)
class Step(Schedule):
    """f(t) = γ^⌊t/S⌋: multiply by γ every S steps (SPEC §2.5)."""

    every: int
    gamma: float

    name: ClassVar[str] = "step"

    def __post_init__(self) -> None:
        object.__setattr__(self, "every", _check_int("every", self.every, 1))
        object.__setattr__(self, "gamma", _check_real("gamma", self.gamma, 0.0, 1.0, lo_open=True))

    def _value(self, t: int) -> float:
        return self.gamma ** (t // self.every)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "every": self.every, "gamma": self.gamma}


@dataclass(frozen=True)
class MultiStep(Schedule):
    """f(t) = γ^k with k = #{milestones m ≤ t} (SPEC §2.5; ResNet: ×0.1 at 30, 60, 90)."""

    milestones: tuple[int, ...]
    gamma: float = 0.1

    name: ClassVar[str] = "multistep"

    def __post_init__(self) -> None:
        raw = self.milestones
        bad = ValueError(f"milestones must be strictly increasing integers >= 1, got {raw!r}")
        if isinstance(raw, (str, bytes)) or not isinstance(raw, Iterable):
            raise bad
        ms = list(raw)
        if any(isinstance(m, bool) or not isinstance(m, numbers.Integral) for m in ms):
            raise bad
        ms = [int(m) for m in ms]
        if any(m < 1 for m in ms) or any(a >= b for a, b in zip(ms, ms[1:], strict=False)):
            raise bad
        object.__setattr__(self, "milestones", tuple(ms))
        object.__setattr__(self, "gamma", _check_real("gamma", self.gamma, 0.0, 1.0, lo_open=True))

    def _value(self, t: int) -> float:
        return self.gamma ** bisect.bisect_right(self.milestones, t)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "milestones": list(self.milestones), "gamma": self.gamma}


@dataclass(frozen=True)
class Cosine(Schedule):
    """f(t) = f_min + (1 − f_min)·½(1 + cos(π·min(t, T)/T)); f = f_min for t ≥ T (SPEC §2.5)."""

    total: int
    floor: float = 0.0

    name: ClassVar[str] = "cosine"

    def __post_init__(self) -> None:
        object.__setattr__(self, "total", _check_int("total", self.total, 1))
        object.__setattr__(self, "floor", _check_real("floor", self.floor, 0.0, 1.0))

    def _value(self, t: int) -> float:
        return _floored(self.floor, _cos_factor(min(t, self.total), self.total))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "total": self.total, "floor": self.floor}


@dataclass(frozen=True)
class Linear(Schedule):
    """f(t) = max(0, 1 − t/T): linear decay to 0 at t = T, then 0 (SPEC §2.5)."""

    total: int

    name: ClassVar[str] = "linear"

    def __post_init__(self) -> None:
        object.__setattr__(self, "total", _check_int("total", self.total, 1))

    def _value(self, t: int) -> float:
        return max(0.0, 1.0 - t / self.total)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "total": self.total}


@dataclass(frozen=True)
class Warmup(Schedule):
    """Linear warmup in front of ``schedule`` (SPEC §2.5; Goyal et al. 2017).

    With W = ``steps``, f₀ = ``start`` and s = ``schedule``::

        f(t) = (f₀ + (1 − f₀)·t/W) · s(0)   for t < W     (linear ramp f₀·s(0) → s(0))
        f(t) = s(t − W)                       for t ≥ W     (s starts after the warmup)

    so ``warmup(s, W)(W + k) == s(k)`` exactly: the inner schedule is delayed by W steps, not
    truncated. Every built-in s other than a nested warmup has s(0) = 1, so the ramp is
    f₀ → 1 and the multiplier is continuous and non-decreasing up to t = W.
    """

    schedule: Schedule
    steps: int
    start: float = 0.0

    name: ClassVar[str] = "warmup"

    def __post_init__(self) -> None:
        if not isinstance(self.schedule, Schedule):
            raise ValueError(
                "schedule must be a sgdlab.schedules.Schedule (e.g. cosine(100)), "
                f"got {self.schedule!r}"
            )
        object.__setattr__(self, "steps", _check_int("steps", self.steps, 0))
        object.__setattr__(self, "start", _check_real("start", self.start, 0.0, 1.0))

    def _value(self, t: int) -> float:
        w = self.steps
        if t >= w:
            return self.schedule._value(t - w)
        ramp = min(1.0, self.start + (1.0 - self.start) * (t / w))
        return ramp * self.schedule._value(0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "schedule": self.schedule.to_dict(),
            "steps": self.steps,
            "start": self.start,
        }


@dataclass(frozen=True)
class InverseTime(Schedule):
    """f(t) = 1/(1 + t/τ), computed as τ/(τ + t) (SPEC §2.5)."""

    tau: float

    name: ClassVar[str] = "inverse_time"

    def __post_init__(self) -> None:
        object.__setattr__(self, "tau", _check_real("tau", self.tau, 0.0, lo_open=True))

    def _value(self, t: int) -> float:
        return self.tau / (self.tau + t)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "tau": self.tau}


@dataclass(frozen=True)
class SGDR(Schedule):
    """Cosine with warm restarts (SPEC §2.5; Loshchilov & Hutter 2017).

    Period i (i = 0, 1, ...) has length T_i = T₀·mult^i and starts at s_i = Σ_{j<i} T_j; for
    s_i ≤ t < s_i + T_i, with t_cur = t − s_i::

        f(t) = f_min + (1 − f_min)·½(1 + cos(π·t_cur/T_i))

    so f restarts at 1 at every s_i and approaches (never reaches) f_min at the period's end,
    matching ``torch.optim.lr_scheduler.CosineAnnealingWarmRestarts``.
    """

    period: int
    mult: int = 1
    floor: float = 0.0

    name: ClassVar[str] = "sgdr"

    def __post_init__(self) -> None:
        object.__setattr__(self, "period", _check_int("period", self.period, 1))
        object.__setattr__(self, "mult", _check_int("mult", self.mult, 1))
        object.__setattr__(self, "floor", _check_real("floor", self.floor, 0.0, 1.0))

    def position(self, t: int) -> tuple[int, int, int]:
        """``(i, t_cur, T_i)``: the period index, the step within it and its length."""
        t = _check_t(t)
        if self.mult == 1:
            return t // self.period, t % self.period, self.period
        i, start, length = 0, 0, self.period
        while t >= start + length:  # O(log t) iterations since mult >= 2
            start += length
            length *= self.mult
            i += 1
        return i, t - start, length

    def _value(self, t: int) -> float:
        _, t_cur, length = self.position(t)
        return _floored(self.floor, _cos_factor(t_cur, length))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "period": self.period, "mult": self.mult, "floor": self.floor}


# --------------------------------------------------------------------------- constructors


def constant() -> Constant:
    """Constant multiplier f(t) = 1 (SPEC §2.5)."""
    return Constant()


def step(every: int, gamma: float) -> Step:
    """Step decay f(t) = γ^⌊t/S⌋ with S = ``every`` ≥ 1 and γ ∈ (0, 1] (SPEC §2.5)."""
    return Step(every, gamma)


def multistep(milestones: Iterable[int], gamma: float = 0.1) -> MultiStep:
    """Multi-step decay f(t) = γ^#{m ∈ milestones : m ≤ t} (SPEC §2.5).

    ``milestones`` are strictly increasing step indices ≥ 1 (the ResNet recipe ×0.1 at epochs
    30, 60, 90 is ``multistep([30*n, 60*n, 90*n])`` for n steps per epoch); γ ∈ (0, 1].
    """
    return MultiStep(milestones, gamma)  # type: ignore[arg-type]  # normalised to a tuple


def cosine(total: int, floor: float = 0.0) -> Cosine:
    """Cosine decay f(t) = f_min + (1 − f_min)·½(1 + cos(π·min(t, T)/T)) (SPEC §2.5).

    T = ``total`` ≥ 1 steps; f_min = ``floor`` ∈ [0, 1]; f(t) = f_min for t ≥ T.
    """
    return Cosine(total, floor)


def linear(total: int) -> Linear:
    """Linear decay f(t) = max(0, 1 − t/T) with T = ``total`` ≥ 1 (SPEC §2.5)."""
    return Linear(total)


def warmup(schedule: Schedule, steps: int, start: float = 0.0) -> Warmup:
    """Linear warmup from f₀ = ``start`` to 1 over W = ``steps``, then ``schedule`` (SPEC §2.5).

    f(t) = (f₀ + (1 − f₀)·t/W)·s(0) for t < W and f(t) = s(t − W) for t ≥ W: the inner
    schedule starts after the warmup (Goyal et al. 2017). W ≥ 0 (W = 0 is ``schedule`` itself),
    f₀ ∈ [0, 1]; with the default f₀ = 0 the first step has learning rate 0.
    """
    return Warmup(schedule, steps, start)


def inverse_time(tau: float) -> InverseTime:
    """Inverse-time decay f(t) = 1/(1 + t/τ), τ > 0 (SPEC §2.5); satisfies Robbins–Monro."""
    return InverseTime(tau)


def sgdr(period: int, mult: int = 1, floor: float = 0.0) -> SGDR:
    """Cosine with warm restarts (SGDR; SPEC §2.5): periods T₀ = ``period``, T₀·mult, ...

    Within period i of length T_i = T₀·mult^i, f = f_min + (1 − f_min)·½(1 + cos(π·t_cur/T_i));
    ``mult`` is an integer ≥ 1, ``floor`` = f_min ∈ [0, 1].
    """
    return SGDR(period, mult, floor)


# --------------------------------------------------------------------------- registry

_REGISTRY: dict[str, Callable[..., Schedule]] = {
    "constant": constant,
    "step": step,
    "multistep": multistep,
    "cosine": cosine,
    "linear": linear,
    "warmup": warmup,
    "inverse_time": inverse_time,
    "sgdr": sgdr,
}


def available() -> tuple[str, ...]:
    """Names accepted by :func:`build` and :func:`from_dict` (SPEC §2.5)."""
    return tuple(_REGISTRY)


def build(name: str, **kwargs: Any) -> Schedule:
    """Construct the schedule called ``name`` with hyper-parameters ``kwargs`` (SPEC §2.5).

    For ``warmup`` the inner ``schedule`` may be a :class:`Schedule`, a dict as produced by
    :meth:`Schedule.to_dict`, or a bare name such as ``"constant"``. Unknown names, unknown or
    missing parameters and out-of-range values raise ``ValueError``.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown schedule {name!r}; available: {', '.join(available())}")
    factory = _REGISTRY[name]
    params = inspect.signature(factory).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise ValueError(
            f"{name}() got unexpected parameter(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(params) or 'none'}"
        )
    missing = [
        p
        for p, spec in params.items()
        if spec.default is inspect.Parameter.empty and p not in kwargs
    ]
    if missing:
        raise ValueError(f"{name}() missing required parameter(s): {', '.join(missing)}")
    if name == "warmup":
        inner = kwargs["schedule"]
        if isinstance(inner, Mapping):
            kwargs["schedule"] = from_dict(inner)
        elif isinstance(inner, str):
            kwargs["schedule"] = build(inner)
    return factory(**kwargs)


def from_dict(d: Mapping[str, Any]) -> Schedule:
    """Inverse of :meth:`Schedule.to_dict`: ``from_dict(s.to_dict()) == s`` (SPEC §2.5)."""
    if not isinstance(d, Mapping) or "name" not in d:
        raise ValueError(f"a schedule description must be a mapping with a 'name' key, got {d!r}")
    kwargs = dict(d)
    name = kwargs.pop("name")
    return build(name, **kwargs)


# --------------------------------------------------------------------------- torch adapter


class ScheduleLR(LRScheduler):
    """``LRScheduler`` setting each group's lr to base_lr·f(last_epoch) in closed form.

    After construction ``last_epoch = 0`` and the lr is base_lr·f(0); each ``step()`` (called
    after ``optimizer.step()``) advances ``last_epoch`` by one, so optimizer step t runs with
    base_lr·f(t) (SPEC §2.5). Nothing is chained from the previous lr, so loading a state_dict
    resumes exactly. The schedule object is not put in the state_dict: ``state_dict()`` holds
    only plain types (plus ``schedule_config = schedule.to_dict()``) and survives
    ``torch.save`` + ``torch.load(weights_only=True)``; ``load_state_dict`` checks that the
    stored config equals this scheduler's schedule and raises ``ValueError`` otherwise.
    """

    def __init__(self, optimizer: Optimizer, schedule: Schedule, last_epoch: int = -1) -> None:
        if not isinstance(schedule, Schedule):
            raise TypeError(
                f"schedule must be a sgdlab.schedules.Schedule, got {type(schedule).__name__}"
            )
        self.schedule = schedule
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float | torch.Tensor]:
        f = self.schedule(self.last_epoch)
        return [base_lr * f for base_lr in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float | torch.Tensor]:
        return self.get_lr()

    def state_dict(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "schedule")}
        state["schedule_config"] = self.schedule.to_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        config = state.pop("schedule_config", None)
        state.pop("schedule", None)
        if config is not None and config != self.schedule.to_dict():
            raise ValueError(
                f"state_dict was saved for schedule {config!r}, "
                f"but this scheduler runs {self.schedule.to_dict()!r}"
            )
        self.__dict__.update(state)


def to_torch(optimizer: Optimizer, schedule: Schedule) -> ScheduleLR:
    """Wrap ``schedule`` as a ``torch.optim.lr_scheduler.LRScheduler`` (SPEC §2.5).

    Group g's lr at optimizer step t is ``initial_lr_g · schedule(t)``; call
    ``scheduler.step()`` after each ``optimizer.step()``. To resume: build the model,
    optimizer and ``to_torch(optimizer, schedule)`` afresh, then load the optimizer's and the
    scheduler's state_dicts (both are ``weights_only``-loadable).
    """
    return ScheduleLR(optimizer, schedule)


# --------------------------------------------------------------------------- rules


def linear_scaling(lr_ref: float, batch: float, batch_ref: float) -> float:
    """Linear batch-size scaling rule η(B) = η_ref · B / B_ref (SPEC §2.5; Goyal et al.).

    All three arguments must be > 0.
    """
    lr_ref = _check_real("lr_ref", lr_ref, 0.0, lo_open=True)
    b = _check_real("batch", batch, 0.0, lo_open=True)
    b_ref = _check_real("batch_ref", batch_ref, 0.0, lo_open=True)
    return lr_ref * b / b_ref


class RobbinsMonro(NamedTuple):
    """Answer of :func:`robbins_monro`: Σ_t f(t) = ∞?, Σ_t f(t)² < ∞?, both?, and why."""

    sum_infinite: bool
    sum_sq_finite: bool
    satisfied: bool
    reason: str


def _rm(sum_infinite: bool, sum_sq_finite: bool, reason: str) -> RobbinsMonro:
    return RobbinsMonro(sum_infinite, sum_sq_finite, sum_infinite and sum_sq_finite, reason)


_CONSTANT_LIKE = "fails Σ η² < ∞: the noise never averages out"
_OUTSIDE = (
    "both sums are finite; schedules that reach 0 in finite T are outside the "
    "Robbins–Monro theorem (SPEC §2.5)"
)


def robbins_monro(schedule: Schedule) -> RobbinsMonro:
    """Whether a built-in schedule satisfies Σ_t η_t = ∞ and Σ_t η_t² < ∞ (SPEC §2.5).

    These (Robbins–Monro) conditions are sufficient for SGD convergence under smoothness.
    Exact answers, by family:

    * constant; step and multistep with γ = 1; multistep with γ < 1 (finitely many
      milestones, then the constant γ^m > 0); cosine with f_min > 0; SGDR (each restart
      returns to 1, every period adds ≥ T₀/4 to Σ η²): Σ η = ∞ but Σ η² = ∞.
    * step with γ < 1: geometric, Σ η = S/(1 − γ) < ∞ and Σ η² < ∞ — the first fails.
    * cosine with f_min = 0 and linear: 0 from t = T on, both sums finite — outside the
      theorem.
    * inverse time: Σ τ/(τ + t) = ∞ (≈ τ log t) and Σ τ²/(τ + t)² ≤ 1 + τ < ∞ — satisfied.
    * warmup(s): a finite prefix does not change either series — same answer as s.

    Raises ``TypeError`` for anything that is not a built-in :class:`Schedule`.
    """
    s = schedule
    if isinstance(s, Constant):
        return _rm(True, False, f"constant f = 1: Σ η = ∞ but Σ η² = ∞; {_CONSTANT_LIKE}")
    if isinstance(s, Step):
        if s.gamma == 1.0:
            return _rm(True, False, f"step with gamma = 1 is constant; {_CONSTANT_LIKE}")
        return _rm(
            False,
            True,
            f"geometric decay: Σ η = every/(1 − gamma) = {s.every / (1 - s.gamma):g} < ∞, "
            "so it fails Σ η = ∞ (the steps cannot reach a distant minimum)",
        )
    if isinstance(s, MultiStep):
        if not s.milestones or s.gamma == 1.0:
            return _rm(True, False, f"multistep without decay is constant; {_CONSTANT_LIKE}")
        return _rm(
            True,
            False,
            f"finitely many milestones: f = gamma^{len(s.milestones)} > 0 after the last, "
            f"like a constant; {_CONSTANT_LIKE}",
        )
    if isinstance(s, Cosine):
        if s.floor > 0:
            return _rm(True, False, f"cosine settles at floor {s.floor:g} > 0; {_CONSTANT_LIKE}")
        return _rm(False, True, f"cosine reaches 0 at t = total = {s.total}: {_OUTSIDE}")
    if isinstance(s, Linear):
        return _rm(False, True, f"linear reaches 0 at t = total = {s.total}: {_OUTSIDE}")
    if isinstance(s, InverseTime):
        return _rm(
            True,
            True,
            "inverse time f = τ/(τ + t): Σ η ≈ τ log t = ∞ and Σ η² ≤ 1 + τ < ∞; both hold",
        )
    if isinstance(s, SGDR):
        return _rm(
            True,
            False,
            "SGDR restarts at 1 forever and every period adds ≥ period/4 to Σ η²; "
            f"{_CONSTANT_LIKE}",
        )
    if isinstance(s, Warmup):
        inner = robbins_monro(s.schedule)
        return inner._replace(
            reason=f"warmup is a finite prefix; same as the inner schedule: {inner.reason}"
        )
    raise TypeError(
        f"robbins_monro knows the built-in families ({', '.join(available())}), "
        f"got {type(schedule).__name__}"
    )
