"""Adam and AdamW (SPEC §2.4).

m ← β₁m + (1 − β₁)ĝ;  s ← β₂s + (1 − β₂)ĝ²;  Φ ← Φ − η m̂ / (√ŝ + ε),
with m̂ = m/(1 − β₁ᵗ), ŝ = s/(1 − β₂ᵗ) when bias correction is on and m̂ = m, ŝ = s when off.

With bias correction (the default) the update is torch's own ``torch.optim.Adam`` (fused on
CPU and CUDA), which also performs decoupled decay (AdamW) inside the same kernel. torch has
no uncorrected Adam; that update is written here as a readable per-tensor loop
(:func:`_single_tensor_adam_uncorrected`, the ground truth), a multi-tensor path
(:func:`_multi_tensor_adam_uncorrected`) and, where torch's fused kernel runs, the fused path
(:func:`_fused_adam_uncorrected`: torch's fused Adam kernel with a rescaled step and ε, see
there), all held to the loop by the tests. Both keep torch's
state layout (``step``, ``exp_avg``, ``exp_avg_sq``), so a state_dict moves between the two.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._delegate import DelegatingMixin, fused_eligible, kernel_flags, materialize
from ._validate import check_betas, check_bool, check_decay, check_range


class Adam(DelegatingMixin, torch.optim.Adam):
    """Adam, SPEC §2.4, with optional bias correction.

    Args:
        params: tensors or parameter groups.
        lr: η ≥ 0 (default 1e-3).
        betas: (β₁, β₂), each in [0, 1) (default (0.9, 0.999)).
        eps: ε ≥ 0 (default 1e-8).
        bias_correction: divide m by 1 − β₁ᵗ and s by 1 − β₂ᵗ (default True). Without it the
            first step is larger by (1 − β₁)/√(1 − β₂) ≈ 3.16 for a constant gradient
            (SPEC §4.7).
        weight_decay: λ ≥ 0.
        decoupled: Φ ← (1 − ηλ)Φ (AdamW) instead of adding λΦ to ĝ.
        fused, foreach: torch's kernel choice; by default the fastest one for the device.
            The uncorrected update runs torch's fused kernel when ``fused`` (rescaled, see
            :func:`_fused_adam_uncorrected`), the multi-tensor path otherwise, and the
            per-tensor loop with ``foreach=False``.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        bias_correction: bool = True,
        weight_decay: float = 0.0,
        decoupled: bool = False,
        *,
        fused: bool | None = None,
        foreach: bool | None = None,
    ) -> None:
        params = materialize(params)
        self._sgdlab_defaults = {"bias_correction": bias_correction, "decoupled": decoupled}
        check_range("lr", lr, 0.0)
        check_decay({"weight_decay": weight_decay, "decoupled": decoupled})
        betas = check_betas("betas", betas)
        check_range("eps", eps, 0.0)
        flags = kernel_flags(params, fused, foreach)
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         **flags)
        self._finish_init()

    def _validate_group(self, group: dict[str, Any]) -> None:
        check_range("lr", group["lr"], 0.0)
        group["betas"] = check_betas("betas", group["betas"])
        check_range("eps", group["eps"], 0.0)
        check_bool("bias_correction", group["bias_correction"])
        check_decay(group)

    def _torch_keys(self, group: dict[str, Any]) -> dict[str, Any]:
        return {"decoupled_weight_decay": group["decoupled"], "amsgrad": False}

    def _decoupled_decay(self, group: dict[str, Any]) -> None:
        """torch's Adam applies the decoupled decay itself (``decoupled_weight_decay``)."""

    def _delegated_groups(self) -> list[dict[str, Any]]:
        return [g for g in self.param_groups if g["bias_correction"]]

    def _step_own(self) -> None:
        for group in self.param_groups:
            if group["bias_correction"]:
                continue
            params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Adam does not support sparse gradients")
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(
                        p, memory_format=torch.preserve_format)
                params.append(p)
                grads.append(p.grad)
                exp_avgs.append(state["exp_avg"])
                exp_avg_sqs.append(state["exp_avg_sq"])
                steps.append(state["step"])
            if not params:
                continue
            if group["foreach"] is False:
                core = _single_tensor_adam_uncorrected
            elif group.get("fused") and fused_eligible(params):
                core = _fused_adam_uncorrected
            else:
                core = _multi_tensor_adam_uncorrected
            core(params, grads, exp_avgs, exp_avg_sqs, steps, lr=group["lr"],
                 beta1=group["betas"][0], beta2=group["betas"][1], eps=group["eps"],
                 weight_decay=group["weight_decay"], decoupled=group["decoupled"])


class AdamW(Adam):
    """AdamW: :class:`Adam` with decoupled weight decay, default λ = 0.01 (torch's default)."""

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        bias_correction: bool = True,
        weight_decay: float = 0.01,
        *,
        fused: bool | None = None,
        foreach: bool | None = None,
    ) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, bias_correction=bias_correction,
                         weight_decay=weight_decay, decoupled=True, fused=fused,
                         foreach=foreach)


def _single_tensor_adam_uncorrected(
    params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor], steps: list[Tensor], *, lr: float, beta1: float,
    beta2: float, eps: float, weight_decay: float, decoupled: bool,
) -> None:
    """Reference loop for Adam without bias correction (SPEC §2.4 with m̂ = m, ŝ = s)."""
    for p, g, m, s, t in zip(params, grads, exp_avgs, exp_avg_sqs, steps, strict=True):
        t += 1
        if weight_decay != 0:
            if decoupled:
                p.mul_(1 - lr * weight_decay)
            else:
                g = g.add(p, alpha=weight_decay)
        m.lerp_(g, 1 - beta1)                           # m ← β₁m + (1 − β₁)ĝ
        s.mul_(beta2).addcmul_(g, g, value=1 - beta2)   # s ← β₂s + (1 − β₂)ĝ²
        p.addcdiv_(m, s.sqrt().add_(eps), value=-lr)    # Φ ← Φ − η m/(√s + ε)


def _multi_tensor_adam_uncorrected(
    params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor], steps: list[Tensor], *, lr: float, beta1: float,
    beta2: float, eps: float, weight_decay: float, decoupled: bool,
) -> None:
    """The same update as :func:`_single_tensor_adam_uncorrected` with foreach kernels."""
    torch._foreach_add_(steps, 1)
    if weight_decay != 0:
        if decoupled:
            torch._foreach_mul_(params, 1 - lr * weight_decay)
        else:
            grads = torch._foreach_add(grads, params, alpha=weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denom, value=-lr)


def _fused_adam_uncorrected(
    params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor], steps: list[Tensor], *, lr: float, beta1: float,
    beta2: float, eps: float, weight_decay: float, decoupled: bool,
) -> None:
    """The update of :func:`_single_tensor_adam_uncorrected` in torch's fused Adam kernel.

    The kernel computes, after m and s (the same EMAs), with c₁ = 1 − β₁ᵗ, c₂ = 1 − β₂ᵗ,

        Φ ← Φ − (η′/c₁) · m / (√s/√c₂ + ε′),

    which equals Φ − η m/(√s + ε) for η′ = η c₁/√c₂ and ε′ = ε/√c₂ (multiply numerator and
    denominator by √c₂). Coupled decay is the kernel's own (λΦ added to ĝ, independent of
    η); decoupled decay Φ ← (1 − ηλ)Φ is applied first, with the true η. Parameters whose
    step counts differ (some had no gradient on some steps) are updated in separate calls.
    """
    torch._foreach_add_(steps, 1)
    if weight_decay != 0 and decoupled:
        torch._foreach_mul_(params, 1 - lr * weight_decay)
    coupled = weight_decay if not decoupled else 0.0
    for t, idx in _by_step(steps).items():
        c1, c2 = 1 - beta1 ** t, 1 - beta2 ** t
        root = c2 ** 0.5
        pick = [params[i] for i in idx]
        torch._fused_adam_(pick, [grads[i] for i in idx], [exp_avgs[i] for i in idx],
                           [exp_avg_sqs[i] for i in idx], [], [steps[i] for i in idx],
                           lr=lr * c1 / root, beta1=beta1, beta2=beta2,
                           weight_decay=coupled, eps=eps / root, amsgrad=False,
                           maximize=False)


def _by_step(steps: list[Tensor]) -> dict[int, list[int]]:
    """Indices of the tensors grouped by their (already incremented) step count."""
    groups: dict[int, list[int]] = {}
    for i, t in enumerate(torch.stack([s.float() for s in steps]).tolist()):  # one sync
        groups.setdefault(int(t), []).append(i)
    return groups
