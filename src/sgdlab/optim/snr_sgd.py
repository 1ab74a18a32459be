"""snr_sgd: per-coordinate steps from running estimates of gradient mean and variance.

SPEC §2.6, the notes' "original SGD algorithm" (seed 002), exactly as specified there::

    state per coordinate: m = 0, s = 0; step count t = 0
    on each step with batch gradient ĝ (after coupled weight decay, if any):
      t ← t + 1
      if t ≤ K:  w ← 1/t
      else:      w ← clamp(r_prev, w_min, w_max),
                 r_prev = m_old² / (λ_B · max(s_old − m_old², 0) + ε)
      m ← (1 − w) m + w ĝ
      s ← (1 − w) s + w ĝ²
      v ← max(s − m², 0)
      r ← m² / (λ_B v + ε)                        (= B/B* per coordinate)
      if t > K:  Φ ← Φ − lr · min(1, r) · m

r estimates B/B*, where B* = 16σ²/G² is the optimal batch of the notes and v ≈ σ²/B the
variance of the batch-mean gradient; the step is lr·(B/B*) below the optimal batch and lr at
or above it, and the averaging window is B*/B batches, kept within [1/w_max, 1/w_min].

Decoupled weight decay (Φ ← (1 − lr·λ)Φ, before the update, as AdamW) is applied only when
t > K, because the algorithm leaves Φ untouched while it warms up its estimates.

Three implementations of the same update, as in torch.optim:

* :func:`_single_tensor_snr_sgd` — a readable loop over parameters, the ground truth;
* :func:`_multi_tensor_snr_sgd` — the same operations with ``torch._foreach_*`` kernels;
* :func:`_fused_snr_sgd` — one ``torch.compile``-generated kernel per tensor that reads Φ, ĝ,
  m, s once and writes Φ, m, s once (the memory traffic of a fused Adam step).

The tests hold the fast paths to the loop (1e-6 relative over 200 steps).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor

from ._delegate import materialize
from ._validate import check_bool, check_int, check_range

log = logging.getLogger(__name__)

#: Below this many elements in a group, ``fused=None`` uses the multi-tensor path: a compiled
#: kernel only pays for its compilation on large models.
FUSED_AUTO_MIN_NUMEL = 1 << 20


class SNRSGD(torch.optim.Optimizer):
    """snr_sgd, SPEC §2.6. See the module docstring for the update.

    Args:
        params: tensors or parameter groups.
        lr: the step at or above the optimal batch, η* = 1/(2 h_max) in the notes; ≥ 0.
        lambda_b: λ_B > 0, the constant in B* = λ_B σ²/G² (16 in the notes).
        warmup: K ≥ 0 steps of plain running means with no parameter change.
        w_min, w_max: bounds on the averaging weight, 0 < w_min ≤ w_max < 1.
        eps: ε > 0 in the denominator of r.
        weight_decay: λ ≥ 0; coupled (added to ĝ before the statistics) unless ``decoupled``.
        decoupled: Φ ← (1 − lr·λ)Φ before each update after warm-up.
        fused: ``True`` for the compiled single-pass kernel, ``False`` for the multi-tensor
            path, ``None`` (default) for the kernel on groups of at least
            ``FUSED_AUTO_MIN_NUMEL`` elements when torch.compile works, else multi-tensor.
        foreach: ``False`` selects the reference per-tensor loop (slow; for testing).

    State per parameter: ``step`` (int64 on CPU), ``exp_avg`` (m), ``exp_avg_sq`` (s).
    :meth:`diagnostics` summarises r over all coordinates.
    """

    def __init__(
        self,
        params,
        lr: float,
        lambda_b: float = 16.0,
        warmup: int = 20,
        w_min: float = 1e-3,
        w_max: float = 0.1,
        eps: float = 1e-16,
        weight_decay: float = 0.0,
        decoupled: bool = False,
        *,
        fused: bool | None = None,
        foreach: bool | None = None,
    ) -> None:
        params = materialize(params)
        defaults = dict(lr=lr, lambda_b=lambda_b, warmup=warmup, w_min=w_min, w_max=w_max,
                        eps=eps, weight_decay=weight_decay, decoupled=decoupled, fused=fused,
                        foreach=foreach)
        _validate(defaults)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:  # noqa: D102
        for key, value in self.defaults.items():
            param_group.setdefault(key, value)
        _validate(param_group)
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one snr_sgd step (SPEC §2.6) on every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, ms, ss = [], [], [], []
            t = None
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("snr_sgd does not support sparse gradients")
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = torch.tensor(0, dtype=torch.int64)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(
                        p, memory_format=torch.preserve_format)
                state["step"] += 1
                step_t = int(state["step"])
                if t is not None and step_t != t:
                    raise RuntimeError(
                        "snr_sgd: parameters of one group are at different step counts "
                        f"({t} and {step_t}); put them in separate groups")
                t = step_t
                params.append(p)
                grads.append(p.grad)
                ms.append(state["exp_avg"])
                ss.append(state["exp_avg_sq"])
            if not params:
                continue
            snr_sgd(params, grads, ms, ss, t=t, lr=group["lr"], lambda_b=group["lambda_b"],
                    warmup=group["warmup"], w_min=group["w_min"], w_max=group["w_max"],
                    eps=group["eps"], weight_decay=group["weight_decay"],
                    decoupled=group["decoupled"], fused=group["fused"],
                    foreach=group["foreach"])
        return loss

    @torch.no_grad()
    def diagnostics(self) -> dict[str, float]:
        """Summaries of r = m²/(λ_B v + ε) over every coordinate with state (SPEC §2.6).

        Returns ``step`` (largest step count), ``ratio_mean`` (mean of min(1, r): the step
        as a fraction of lr, 0 during warm-up), ``frac_r_ge_1`` (fraction of coordinates at or
        above the optimal batch, B ≥ B*), ``window_mean`` (mean of 1/w, the averaging window
        in batches that the next step will use: t + 1 during warm-up, else
        1/clamp(r, w_min, w_max)). Computed from the current state when called, so it costs
        nothing on steps where nobody asks.
        """
        n = 0
        ratio_sum = ge1_sum = window_sum = 0.0
        step = 0
        for group in self.param_groups:
            lam, eps = group["lambda_b"], group["eps"]
            for p in group["params"]:
                state = self.state.get(p)
                if not state:
                    continue
                t = int(state["step"])
                step = max(step, t)
                m = state["exp_avg"].double()
                s = state["exp_avg_sq"].double()
                m2 = m * m
                r = m2 / (lam * (s - m2).clamp(min=0) + eps)
                if t > group["warmup"]:
                    ratio_sum += float(r.clamp(max=1.0).sum())
                if t >= group["warmup"]:
                    window_sum += float((1.0 / r.clamp(group["w_min"], group["w_max"])).sum())
                else:
                    window_sum += float(t + 1) * m.numel()
                ge1_sum += float((r >= 1).sum())
                n += m.numel()
        if n == 0:
            return {"step": 0, "ratio_mean": 0.0, "frac_r_ge_1": 0.0, "window_mean": 0.0}
        return {"step": step, "ratio_mean": ratio_sum / n, "frac_r_ge_1": ge1_sum / n,
                "window_mean": window_sum / n}


def _validate(group: dict[str, Any]) -> None:
    check_range("lr", group["lr"], 0.0)
    check_range("lambda_b", group["lambda_b"], 0.0, lo_open=True)
    check_int("warmup", group["warmup"], 0)
    w_max = check_range("w_max", group["w_max"], 0.0, 1.0, lo_open=True)
    check_range("w_min", group["w_min"], 0.0, w_max, lo_open=True, hi_open=False)
    check_range("eps", group["eps"], 0.0, lo_open=True)
    check_range("weight_decay", group["weight_decay"], 0.0)
    check_bool("decoupled", group["decoupled"])
    for flag in ("fused", "foreach"):
        if group[flag] is not None:
            check_bool(flag, group[flag])


def snr_sgd(
    params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor], *, t: int, lr: float, lambda_b: float, warmup: int,
    w_min: float, w_max: float, eps: float, weight_decay: float, decoupled: bool,
    fused: bool | None = None, foreach: bool | None = None,
) -> None:
    """Functional snr_sgd step (SPEC §2.6) for tensors that are all at step count ``t``.

    ``t`` is the count *after* this step's increment (1 on the first step). Chooses the
    per-tensor reference loop (``foreach=False``), the compiled kernel (``fused``, or
    automatically for large groups after warm-up) or the multi-tensor path.
    """
    kw = dict(t=t, lr=lr, lambda_b=lambda_b, warmup=warmup, w_min=w_min, w_max=w_max, eps=eps,
              weight_decay=weight_decay, decoupled=decoupled)
    if foreach is False and not fused:
        _single_tensor_snr_sgd(params, grads, exp_avgs, exp_avg_sqs, **kw)
        return
    if t > warmup and _use_fused(params, fused):
        try:
            _fused_snr_sgd(params, grads, exp_avgs, exp_avg_sqs, **kw)
            return
        except Exception as err:  # compilation can fail where no C++ compiler is installed
            if fused:
                raise
            _disable_auto_fused(err)
    _multi_tensor_snr_sgd(params, grads, exp_avgs, exp_avg_sqs, **kw)


def _single_tensor_snr_sgd(
    params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor], *, t: int, lr: float, lambda_b: float, warmup: int,
    w_min: float, w_max: float, eps: float, weight_decay: float, decoupled: bool,
) -> None:
    """Reference loop: SPEC §2.6 line by line, one tensor at a time."""
    for p, g, m, s in zip(params, grads, exp_avgs, exp_avg_sqs, strict=True):
        if weight_decay != 0 and not decoupled:
            g = g + weight_decay * p                       # coupled decay: ĝ ← ĝ + λΦ
        if t <= warmup:
            w = 1.0 / t                                    # plain running mean
        else:
            m2_old = m * m
            r_prev = m2_old / (lambda_b * torch.clamp(s - m2_old, min=0) + eps)
            w = torch.clamp(r_prev, w_min, w_max)
        m.copy_((1 - w) * m + w * g)                       # m ← (1 − w) m + w ĝ
        s.copy_((1 - w) * s + w * (g * g))                 # s ← (1 − w) s + w ĝ²
        if t <= warmup:
            continue                                       # no parameter change
        v = torch.clamp(s - m * m, min=0)                  # v ← max(s − m², 0)
        r = (m * m) / (lambda_b * v + eps)                 # r ← m²/(λ_B v + ε)
        if weight_decay != 0 and decoupled:
            p.mul_(1 - lr * weight_decay)                  # Φ ← (1 − lr λ) Φ
        p.sub_(lr * torch.clamp(r, max=1.0) * m)           # Φ ← Φ − lr min(1, r) m


def _multi_tensor_snr_sgd(
    params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor], *, t: int, lr: float, lambda_b: float, warmup: int,
    w_min: float, w_max: float, eps: float, weight_decay: float, decoupled: bool,
) -> None:
    """The reference update with ``torch._foreach_*`` kernels (same operations, same order)."""
    ms, ss = exp_avgs, exp_avg_sqs
    if weight_decay != 0 and not decoupled:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    g2 = torch._foreach_mul(grads, grads)
    if t <= warmup:
        w = 1.0 / t
        torch._foreach_mul_(ms, 1 - w)
        torch._foreach_add_(ms, torch._foreach_mul(grads, w))
        torch._foreach_mul_(ss, 1 - w)
        torch._foreach_add_(ss, torch._foreach_mul(g2, w))
        return
    w = _foreach_r(ms, ss, lambda_b, eps)                  # r_prev from m_old, s_old
    torch._foreach_clamp_min_(w, w_min)
    torch._foreach_clamp_max_(w, w_max)
    one_minus_w = torch._foreach_neg(w)
    torch._foreach_add_(one_minus_w, 1.0)
    torch._foreach_mul_(ms, one_minus_w)
    torch._foreach_add_(ms, torch._foreach_mul(w, grads))
    torch._foreach_mul_(ss, one_minus_w)
    torch._foreach_add_(ss, torch._foreach_mul(w, g2))
    step = _foreach_r(ms, ss, lambda_b, eps)
    torch._foreach_clamp_max_(step, 1.0)
    if weight_decay != 0 and decoupled:
        torch._foreach_mul_(params, 1 - lr * weight_decay)
    torch._foreach_mul_(step, lr)
    torch._foreach_mul_(step, ms)
    torch._foreach_sub_(params, step)


def _foreach_r(ms: list[Tensor], ss: list[Tensor], lambda_b: float, eps: float) -> list[Tensor]:
    """r = m² / (λ_B · max(s − m², 0) + ε), elementwise over lists of tensors."""
    m2 = torch._foreach_mul(ms, ms)
    denom = torch._foreach_sub(ss, m2)
    torch._foreach_clamp_min_(denom, 0.0)
    torch._foreach_mul_(denom, lambda_b)
    torch._foreach_add_(denom, eps)
    torch._foreach_div_(m2, denom)
    return m2


def _snr_kernel(p: Tensor, g: Tensor, m: Tensor, s: Tensor, lr: Tensor, lambda_b: Tensor,
                eps: Tensor, w_min: Tensor, w_max: Tensor, wd_coupled: Tensor,
                decay: Tensor) -> None:
    """One post-warm-up snr_sgd step on one tensor, written for torch.compile to fuse."""
    g = g + wd_coupled * p
    m2_old = m * m
    r_prev = m2_old / (lambda_b * torch.clamp(s - m2_old, min=0) + eps)
    w = torch.clamp(r_prev, w_min, w_max)
    m_new = (1 - w) * m + w * g
    s_new = (1 - w) * s + w * (g * g)
    v = torch.clamp(s_new - m_new * m_new, min=0)
    r = (m_new * m_new) / (lambda_b * v + eps)
    p.copy_(p * decay - lr * torch.clamp(r, max=1.0) * m_new)
    m.copy_(m_new)
    s.copy_(s_new)


_compiled_kernel = None
_auto_fused_disabled = False


def _use_fused(params: list[Tensor], fused: bool | None) -> bool:
    if fused is not None:
        return fused
    if _auto_fused_disabled or torch.compiler.is_compiling():
        return False
    if not all(p.device.type in ("cpu", "cuda") for p in params):
        return False
    return sum(p.numel() for p in params) >= FUSED_AUTO_MIN_NUMEL


def _disable_auto_fused(err: Exception) -> None:
    global _auto_fused_disabled
    _auto_fused_disabled = True
    log.warning("snr_sgd: compiled kernel unavailable (%s); using the multi-tensor path",
                str(err).splitlines()[0] if str(err) else type(err).__name__)


def _fused_snr_sgd(
    params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor], *, t: int, lr: float, lambda_b: float, warmup: int,
    w_min: float, w_max: float, eps: float, weight_decay: float, decoupled: bool,
) -> None:
    """Post-warm-up steps through one compiled kernel per tensor; warm-up steps go foreach."""
    global _compiled_kernel
    kw = dict(t=t, lr=lr, lambda_b=lambda_b, warmup=warmup, w_min=w_min, w_max=w_max, eps=eps,
              weight_decay=weight_decay, decoupled=decoupled)
    if t <= warmup:
        _multi_tensor_snr_sgd(params, grads, exp_avgs, exp_avg_sqs, **kw)
        return
    if _compiled_kernel is None:
        _compiled_kernel = torch.compile(_snr_kernel, dynamic=True)
    scalars: dict[tuple, tuple[Tensor, ...]] = {}
    wd_coupled = 0.0 if decoupled else weight_decay
    decay = 1 - lr * weight_decay if decoupled else 1.0
    for p, g, m, s in zip(params, grads, exp_avgs, exp_avg_sqs, strict=True):
        key = (p.device, p.dtype)
        if key not in scalars:  # 0-d tensors, so changing lr never recompiles
            scalars[key] = tuple(torch.tensor(x, dtype=p.dtype, device=p.device) for x in
                                 (lr, lambda_b, eps, w_min, w_max, wd_coupled, decay))
        _compiled_kernel(p, g, m, s, *scalars[key])
