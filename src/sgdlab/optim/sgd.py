"""SGD and momentum (SPEC §2.1, §2.2), delegated to ``torch.optim.SGD``.

Both momentum parameterizations of SPEC §2.2 start from zero buffers:

* heavy ball (torch convention): v ← β v + ĝ;  Φ ← Φ − η v
* EMA ("nonstandard"):          ḡ ← β ḡ + (1 − β) ĝ;  Φ ← Φ − η′ ḡ

From zero buffers ḡ_t = (1 − β) v_t exactly, so EMA with η′ is heavy ball with η = η′(1 − β),
also when a schedule changes η′ between steps. sgdlab runs the EMA form through torch's
heavy-ball kernel with that learning rate; the buffer kept in the state is therefore
v = ḡ/(1 − β). (torch's own ``dampening`` is not used: torch starts its buffer at ĝ rather
than at zero, which is not the EMA of SPEC §2.2.)
"""

from __future__ import annotations

from typing import Any

import torch

from ._delegate import DelegatingMixin, coupled_decay, kernel_flags, materialize
from ._validate import check_bool, check_choice, check_decay, check_range

STYLES = ("heavy_ball", "ema")


class SGD(DelegatingMixin, torch.optim.SGD):
    """Plain SGD, SPEC §2.1: Φ ← Φ − η (ĝ + λΦ) (coupled) or Φ ← (1 − ηλ)Φ − η ĝ (decoupled).

    Args:
        params: tensors or parameter groups.
        lr: η ≥ 0.
        weight_decay: λ ≥ 0.
        decoupled: apply λ as Φ ← (1 − ηλ)Φ instead of adding λΦ to the gradient.
        fused, foreach: torch's kernel choice; by default the fastest one for the device.
    """

    def __init__(
        self,
        params,
        lr: float,
        weight_decay: float = 0.0,
        decoupled: bool = False,
        *,
        fused: bool | None = None,
        foreach: bool | None = None,
    ) -> None:
        params = materialize(params)
        self._sgdlab_defaults = {"decoupled": decoupled}
        check_range("lr", lr, 0.0)
        check_decay({"weight_decay": weight_decay, "decoupled": decoupled})
        flags = kernel_flags(params, fused, foreach)
        super().__init__(params, lr=lr, weight_decay=weight_decay, **flags)
        self._finish_init()

    def _validate_group(self, group: dict[str, Any]) -> None:
        check_range("lr", group["lr"], 0.0)
        check_decay(group)

    def _torch_keys(self, group: dict[str, Any]) -> dict[str, Any]:
        return {"weight_decay": coupled_decay(group), "momentum": 0.0, "dampening": 0.0,
                "nesterov": False}


class Momentum(DelegatingMixin, torch.optim.SGD):
    """SGD with momentum in either parameterization of SPEC §2.2, from zero buffers.

    Args:
        params: tensors or parameter groups.
        lr: η (heavy ball) or η′ (EMA), ≥ 0.
        beta: β in [0, 1).
        style: ``"heavy_ball"`` (v ← βv + ĝ; Φ ← Φ − ηv) or ``"ema"``
            (ḡ ← βḡ + (1 − β)ĝ; Φ ← Φ − η′ḡ). Heavy ball with η equals EMA with η/(1 − β).
        nesterov: Nesterov's variant as in ``torch.optim.SGD(nesterov=True)`` (with the EMA
            style: the same rescaling of η).
        weight_decay, decoupled: see :class:`SGD`.
    """

    def __init__(
        self,
        params,
        lr: float,
        beta: float = 0.9,
        style: str = "heavy_ball",
        nesterov: bool = False,
        weight_decay: float = 0.0,
        decoupled: bool = False,
        *,
        fused: bool | None = None,
        foreach: bool | None = None,
    ) -> None:
        params = materialize(params)
        self._sgdlab_defaults = {"beta": beta, "style": style, "decoupled": decoupled}
        check_range("lr", lr, 0.0)
        check_decay({"weight_decay": weight_decay, "decoupled": decoupled})
        check_range("beta", beta, 0.0, 1.0)
        check_bool("nesterov", nesterov)
        if nesterov and beta == 0:
            raise ValueError("beta must be in (0, 1) when nesterov is true, got 0")
        flags = kernel_flags(params, fused, foreach)
        # torch validates momentum/nesterov at construction; the group's beta is applied per step
        super().__init__(params, lr=lr, momentum=beta, nesterov=nesterov,
                         weight_decay=weight_decay, **flags)
        self._finish_init()

    def _validate_group(self, group: dict[str, Any]) -> None:
        check_range("lr", group["lr"], 0.0)
        check_range("beta", group["beta"], 0.0, 1.0)
        check_choice("style", group["style"], STYLES)
        check_bool("nesterov", group["nesterov"])
        check_decay(group)

    def _torch_keys(self, group: dict[str, Any]) -> dict[str, Any]:
        beta = group["beta"]
        lr = group["lr"] * (1.0 - beta) if group["style"] == "ema" else group["lr"]
        return {"lr": lr, "momentum": beta, "dampening": 0.0,
                "weight_decay": coupled_decay(group)}
