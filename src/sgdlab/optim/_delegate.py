"""Run torch.optim's own update with sgdlab's parameter-group semantics.

Where torch.optim already implements an update (SGD, heavy ball, Nesterov, RMSprop, Adam),
sgdlab delegates to it and adds only what torch lacks: decoupled weight decay for every
optimizer (SPEC §2 preamble: Φ ← (1 − ηλ)Φ, applied before the update as AdamW does) and a
translation from sgdlab's group keys (``beta``, ``style``, ``decoupled``) to the keys torch
reads. The translation is applied for the duration of one ``step`` and then undone, so
``param_groups`` always show sgdlab's values and schedulers can drive ``lr`` as usual.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.optimizer import _get_fused_kernels_supported_devices


def materialize(params: Any) -> list:
    """Turn a parameter iterable (tensors, dicts or (name, tensor) pairs) into a list."""
    if isinstance(params, torch.Tensor):
        raise TypeError("params must be an iterable of tensors or dicts, got a single Tensor")
    return list(params)


def _tensors(params: list) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for item in params:
        if isinstance(item, dict):
            out.extend(_tensors(list(item["params"])))
        elif isinstance(item, tuple):
            out.append(item[1])
        else:
            out.append(item)
    return out


def fastest_path(params: list, has_fused: bool) -> dict[str, bool]:
    """Flags for torch's fastest update on these parameters.

    ``fused=True`` when torch has a fused kernel for this optimizer and every parameter is a
    floating-point tensor on a device with fused kernels (CPU included since torch 2.4);
    otherwise ``foreach=True`` (one kernel launch per operation for all tensors).
    """
    tensors = _tensors(params)
    devices = set(_get_fused_kernels_supported_devices())
    fused_ok = (
        has_fused
        and len(tensors) > 0
        and all(t.is_floating_point() and t.device.type in devices for t in tensors)
        and len({t.device for t in tensors}) == 1
    )
    return {"fused": True} if fused_ok else {"foreach": True}


def fused_eligible(tensors: list[torch.Tensor]) -> bool:
    """Whether torch's fused kernels can update these tensors: dense floating-point tensors
    on one device that has fused kernels (CPU included since torch 2.4)."""
    devices = set(_get_fused_kernels_supported_devices())
    return (len(tensors) > 0 and len({t.device for t in tensors}) == 1
            and all(t.is_floating_point() and not t.is_sparse and t.device.type in devices
                    for t in tensors))


def kernel_flags(params: list, fused: bool | None, foreach: bool | None,
                 has_fused: bool = True) -> dict[str, bool]:
    """The user's ``fused``/``foreach`` choice, or :func:`fastest_path` when neither is given."""
    if fused is None and foreach is None:
        return fastest_path(params, has_fused=has_fused)
    return {k: v for k, v in (("fused", fused), ("foreach", foreach)) if v is not None}


class DelegatingMixin:
    """Mixin for a ``torch.optim`` subclass: sgdlab keys, validation and decoupled decay.

    Subclasses set ``_sgdlab_defaults`` (extra group keys) before calling the torch
    constructor, and implement ``_validate_group(group)`` and ``_torch_keys(group)``, which
    returns the values torch must read for that group during the step.
    """

    _sgdlab_defaults: dict[str, Any]

    def add_param_group(self, param_group: dict[str, Any]) -> None:  # noqa: D102
        for key, value in self._sgdlab_defaults.items():
            param_group.setdefault(key, value)
        for key, value in self.defaults.items():
            param_group.setdefault(key, value)
        self._validate_group(param_group)
        super().add_param_group(param_group)  # type: ignore[misc]

    def _finish_init(self) -> None:
        self.defaults.update(self._sgdlab_defaults)  # type: ignore[attr-defined]

    def _delegated_groups(self) -> list[dict[str, Any]]:
        """Groups whose update torch performs (all of them unless a subclass says otherwise)."""
        return self.param_groups  # type: ignore[attr-defined]

    def _decoupled_decay(self, group: dict[str, Any]) -> None:
        """Apply decoupled decay before torch's update (unless torch does it itself)."""
        apply_decoupled_decay(group)

    def _step_own(self) -> None:
        """Update the groups torch does not handle (none by default)."""

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        delegated = self._delegated_groups()
        for group in delegated:
            self._decoupled_decay(group)
        self._step_own()
        if not delegated:
            return loss
        all_groups = self.param_groups  # type: ignore[attr-defined]
        saved = []
        for group in delegated:
            keys = self._torch_keys(group)
            saved.append({k: group[k] for k in keys})
            group.update(keys)
        try:
            self.param_groups = delegated  # torch iterates self.param_groups
            super().step()  # type: ignore[misc]
        finally:
            self.param_groups = all_groups
            for group, old in zip(delegated, saved, strict=True):
                group.update(old)
        return loss


def apply_decoupled_decay(group: dict[str, Any]) -> None:
    """Decoupled weight decay, SPEC §2 preamble: Φ ← (1 − η λ) Φ for parameters with a grad.

    A no-op when the group's decay is coupled or zero.
    """
    wd = group["weight_decay"]
    if not group["decoupled"] or wd == 0:
        return
    params = [p for p in group["params"] if p.grad is not None]
    if params:
        torch._foreach_mul_(params, 1.0 - group["lr"] * wd)


def coupled_decay(group: dict[str, Any]) -> float:
    """The λ that torch (or a core) must add to the gradient: λ when coupled, else 0."""
    return 0.0 if group["decoupled"] else group["weight_decay"]
