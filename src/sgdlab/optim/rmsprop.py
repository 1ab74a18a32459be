"""RMSProp (SPEC §2.3), delegated to ``torch.optim.RMSprop``.

s ← α s + (1 − α) ĝ²;  Φ ← Φ − η ĝ / (√s + ε), with s starting at zero.
torch has no fused RMSprop kernel; the multi-tensor (foreach) path is used.
"""

from __future__ import annotations

from typing import Any

import torch

from ._delegate import DelegatingMixin, coupled_decay, materialize
from ._validate import check_decay, check_range


class RMSprop(DelegatingMixin, torch.optim.RMSprop):
    """RMSProp, SPEC §2.3.

    Args:
        params: tensors or parameter groups.
        lr: η ≥ 0 (default 1e-2, torch's).
        alpha: smoothing constant α in [0, 1) (default 0.99).
        eps: ε ≥ 0 added to √s (default 1e-8).
        weight_decay, decoupled: coupled (λΦ added to ĝ) or decoupled (Φ ← (1 − ηλ)Φ).
    """

    def __init__(
        self,
        params,
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decoupled: bool = False,
        *,
        foreach: bool | None = True,
    ) -> None:
        params = materialize(params)
        self._sgdlab_defaults = {"decoupled": decoupled}
        check_range("lr", lr, 0.0)
        check_decay({"weight_decay": weight_decay, "decoupled": decoupled})
        check_range("alpha", alpha, 0.0, 1.0)
        check_range("eps", eps, 0.0)
        super().__init__(params, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                         foreach=foreach)
        self._finish_init()

    def _validate_group(self, group: dict[str, Any]) -> None:
        check_range("lr", group["lr"], 0.0)
        check_range("alpha", group["alpha"], 0.0, 1.0)
        check_range("eps", group["eps"], 0.0)
        check_decay(group)

    def _torch_keys(self, group: dict[str, Any]) -> dict[str, Any]:
        return {"weight_decay": coupled_decay(group), "momentum": 0.0, "centered": False}
