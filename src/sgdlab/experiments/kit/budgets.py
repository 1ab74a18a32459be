"""Budgets that follow ``--seeds`` (SPEC §4): a claim's :data:`BUDGETS` are data, but a full
run may take more seeds than its budget names when ``sgdlab reproduce --seeds N`` asks for
them. Such a budget names the floor as ``min_<key>`` (e.g. ``"min_seeds": 8``) and
:func:`resolve_seeds` turns it into ``<key> = max(floor, N)`` before the budget reaches the
cache keys (so the keys are what they were when the claim computed ``max(8, ctx.seeds)``
itself)."""

from __future__ import annotations

from typing import Any

__all__ = ["resolve_seeds"]


def resolve_seeds(budget: dict[str, Any], seeds: int) -> dict[str, Any]:
    """A copy of ``budget`` with every entry ``min_<key>`` whose key ends in ``seeds``
    replaced, in its place, by ``<key>`` = max(value, ``seeds``); other entries unchanged."""
    out: dict[str, Any] = {}
    for k, v in budget.items():
        if k.startswith("min_") and k.endswith("seeds"):
            out[k[4:]] = max(int(v), int(seeds))
        else:
            out[k] = v
    return out
