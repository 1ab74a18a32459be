"""Hyper-parameter validation shared by every optimizer.

Each check raises ``ValueError`` with one line that names the parameter, the allowed range
and the value received, e.g. ``beta must be in [0, 1), got 1.5``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


def check_range(
    name: str,
    value: Any,
    lo: float,
    hi: float = math.inf,
    *,
    lo_open: bool = False,
    hi_open: bool = True,
) -> float:
    """Return ``float(value)`` if it lies in the interval, else raise ``ValueError``.

    The interval is ``[lo, hi]`` with each end open when ``lo_open`` / ``hi_open`` is set
    (``hi = inf`` is always open). Booleans, strings and non-finite values are refused.
    """
    left = "(" if lo_open else "["
    right = ")" if (hi_open or math.isinf(hi)) else "]"
    hi_txt = "inf" if math.isinf(hi) else f"{hi:g}"
    allowed = f"{left}{lo:g}, {hi_txt}{right}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number in {allowed}, got {value!r}")
    v = float(value)
    ok = math.isfinite(v)
    ok = ok and (v > lo if lo_open else v >= lo)
    ok = ok and (v < hi if (hi_open or math.isinf(hi)) else v <= hi)
    if not ok:
        raise ValueError(f"{name} must be in {allowed}, got {value!r}")
    return v


def check_int(name: str, value: Any, lo: int) -> int:
    """Return ``value`` if it is an integer ``>= lo``, else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """Return ``value`` if it is a bool, else raise ``ValueError``."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise ``ValueError`` listing them."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_betas(name: str, value: Any) -> tuple[float, float]:
    """Return a pair of floats each in ``[0, 1)``, else raise ``ValueError``."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{name} must be a pair (beta1, beta2) each in [0, 1), got {value!r}")
    return (
        check_range(f"{name}[0]", value[0], 0.0, 1.0),
        check_range(f"{name}[1]", value[1], 0.0, 1.0),
    )


def check_decay(group: dict) -> None:
    """Validate the weight-decay pair every optimizer takes (SPEC §2 preamble)."""
    check_range("weight_decay", group["weight_decay"], 0.0)
    check_bool("decoupled", group["decoupled"])
