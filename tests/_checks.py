"""Assertions shared by the claim tests."""

from __future__ import annotations

import math
from typing import Any


def non_finite(obj: Any, path: str = "") -> list[str]:
    """Paths of the non-finite numbers in nested dicts/lists — floats, and the strings "nan",
    "inf", "-inf" that results.json uses for them."""
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in non_finite(v, f"{path}.{k}")]
    if isinstance(obj, (list, tuple)):
        return [p for i, v in enumerate(obj) for p in non_finite(v, f"{path}[{i}]")]
    if isinstance(obj, float) and not math.isfinite(obj):
        return [path]
    if isinstance(obj, str) and obj in ("nan", "inf", "-inf"):
        return [path]
    return []
