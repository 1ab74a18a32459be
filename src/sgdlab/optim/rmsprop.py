"""RMSProp (SPEC §2.3): torch's update, or torch's fused Adam kernel where it runs.

s ← α s + (1 − α) ĝ²;  Φ ← Φ − η ĝ / (√s + ε), with s starting at zero.

torch has no fused RMSprop kernel. RMSProp is Adam with β₁ = 0 (then m = ĝ and c₁ = 1) and
β₂ = α without bias correction, so where torch's fused kernels run the update is torch's
fused Adam kernel with η′ = η/√c₂, ε′ = ε/√c₂, c₂ = 1 − αᵗ (:func:`_fused_rmsprop`); the
gradient buffer itself serves as m (β₁ = 0 writes ĝ back unchanged), so no extra memory is
used. Groups with coupled weight decay (the kernel would write ĝ + λΦ into ``p.grad``) and
explicit ``foreach``/``fused=False`` choices run ``torch.optim.RMSprop`` itself (its
multi-tensor or per-tensor path), the reference the fused path is tested against.
"""

from __future__ import annotations

from typing import Any

import torch

from ._delegate import (
    DelegatingMixin,
    apply_decoupled_decay,
    coupled_decay,
    fused_eligible,
    materialize,
)
from ._validate import check_decay, check_range


class RMSprop(DelegatingMixin, torch.optim.RMSprop):
    """RMSProp, SPEC §2.3.

    Args:
        params: tensors or parameter groups.
        lr: η ≥ 0 (default 1e-2, torch's).
        alpha: smoothing constant α in [0, 1) (default 0.99).
        eps: ε ≥ 0 added to √s (default 1e-8).
        weight_decay, decoupled: coupled (λΦ added to ĝ) or decoupled (Φ ← (1 − ηλ)Φ).
        fused: use torch's fused Adam kernel (see the module docstring); default: where it
            runs, unless ``foreach`` is given.
        foreach: torch's multi-tensor (True) or per-tensor (False) RMSprop.
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
        fused: bool | None = None,
        foreach: bool | None = None,
    ) -> None:
        params = materialize(params)
        want_fused = fused if fused is not None else foreach is None
        self._sgdlab_defaults = {"decoupled": decoupled, "sgdlab_fused": bool(want_fused)}
        check_range("lr", lr, 0.0)
        check_decay({"weight_decay": weight_decay, "decoupled": decoupled})
        check_range("alpha", alpha, 0.0, 1.0)
        check_range("eps", eps, 0.0)
        super().__init__(params, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                         foreach=True if foreach is None else foreach)
        self._finish_init()

    def _validate_group(self, group: dict[str, Any]) -> None:
        check_range("lr", group["lr"], 0.0)
        check_range("alpha", group["alpha"], 0.0, 1.0)
        check_range("eps", group["eps"], 0.0)
        check_decay(group)

    def _torch_keys(self, group: dict[str, Any]) -> dict[str, Any]:
        return {"weight_decay": coupled_decay(group), "momentum": 0.0, "centered": False}

    def _runs_fused(self, group: dict[str, Any]) -> bool:
        params = [p for p in group["params"] if p.grad is not None]
        return (group.get("sgdlab_fused", False) and coupled_decay(group) == 0
                and fused_eligible(params) and fused_eligible([p.grad for p in params]))

    def _delegated_groups(self) -> list[dict[str, Any]]:
        return [g for g in self.param_groups if not self._runs_fused(g)]

    def _step_own(self) -> None:
        for group in self.param_groups:
            if not self._runs_fused(group):
                continue
            apply_decoupled_decay(group)  # Φ ← (1 − ηλ)Φ first, as for the delegated groups
            params, squares, steps = [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if len(state) == 0:  # torch.optim.RMSprop's layout, so state moves across
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["square_avg"] = torch.zeros_like(
                        p, memory_format=torch.preserve_format)
                params.append(p)
                squares.append(state["square_avg"])
                steps.append(state["step"])
            if params:
                from .adam import _by_step

                torch._foreach_add_(steps, 1)
                for t, idx in _by_step(steps).items():
                    _fused_rmsprop([params[i] for i in idx], [squares[i] for i in idx],
                                   [steps[i] for i in idx], t, lr=group["lr"],
                                   alpha=group["alpha"], eps=group["eps"])


def _fused_rmsprop(params: list[torch.Tensor], squares: list[torch.Tensor],
                   steps: list[torch.Tensor], t: int, *, lr: float, alpha: float,
                   eps: float) -> None:
    """One RMSProp step (SPEC §2.3) at step count t in torch's fused Adam kernel: β₁ = 0
    with the gradients as m, β₂ = α, η′ = η/√(1 − αᵗ), ε′ = ε/√(1 − αᵗ) (the kernel divides
    √s by √(1 − β₂ᵗ) and η by 1 − β₁ᵗ = 1)."""
    grads = [p.grad for p in params]
    root = (1 - alpha ** t) ** 0.5
    torch._fused_adam_(params, grads, grads, squares, [], steps, lr=lr / root, beta1=0.0,
                       beta2=alpha, weight_decay=0.0, eps=eps / root, amsgrad=False,
                       maximize=False)
