"""Optimizers by name: ``create(name, params, **hparams)``.

Names and hyper-parameters (SPEC §2): ``sgd`` (lr), ``momentum`` (lr, beta, style, nesterov),
``rmsprop`` (lr, alpha, eps), ``adam`` (lr, betas, eps, bias_correction), ``adamw`` (adam with
decoupled decay), ``snr_sgd`` (lr, lambda_b, warmup, w_min, w_max, eps); every one takes
``weight_decay`` and ``decoupled`` (adamw: always decoupled). torch's names are accepted
where they mean the same (``momentum=`` for ``beta=``); :func:`register` adds optimizers.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from .adam import Adam, AdamW
from .rmsprop import RMSprop
from .sgd import SGD, Momentum
from .snr_sgd import SNRSGD

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": SGD,
    "momentum": Momentum,
    "rmsprop": RMSprop,
    "adam": Adam,
    "adamw": AdamW,
    "snr_sgd": SNRSGD,
}
_BUILTIN = frozenset(OPTIMIZERS)

#: torch.optim's names for sgdlab's hyper-parameters where they mean the same thing:
#: optimizer → {torch name: sgdlab name}. (``betas`` of adam and ``alpha`` of rmsprop are
#: already torch's names.)
TORCH_NAMES: dict[str, dict[str, str]] = {
    "momentum": {"momentum": "beta"},
}


def available() -> list[str]:
    """Names accepted by :func:`create`."""
    return sorted(OPTIMIZERS)


def register(name: str, cls: Callable[..., torch.optim.Optimizer], *,
             replace: bool = False) -> Callable[..., torch.optim.Optimizer]:
    """Make ``cls(params, **hparams)`` buildable as ``create(name, params, **hparams)``, in
    ``--optimizer`` and in a config's ``optimizer``.

    ``cls``: a ``torch.optim.Optimizer`` subclass (or a factory with the same call, whose
    signature lists the hyper-parameters: :func:`hyperparameters` and the unknown-name
    errors read it). ``name``: a non-empty string of letters, digits and ``_``; a registered
    name raises ``ValueError`` unless ``replace=True`` (built-in names are never replaced).
    Returns ``cls``::

        sgdlab.optim.register("lion", Lion)
        opt = sgdlab.optim.create("lion", model.parameters(), lr=1e-4)
    """
    from sgdlab.config import check_new_name

    check_new_name("optimizer", name, available(), _BUILTIN, replace)
    ok = (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)) or (
        callable(cls) and not isinstance(cls, type))
    if not ok:
        raise ValueError(f"optimizer {name!r}: cls must be a torch.optim.Optimizer subclass "
                         f"or a factory params, **hparams -> Optimizer, got {cls!r}")
    OPTIMIZERS[name] = cls
    return cls


def hyperparameters(name: str) -> dict[str, Any]:
    """The hyper-parameters of optimizer ``name`` with their defaults (``inspect.Parameter.empty``
    for required ones)."""
    cls = _lookup(name)
    sig = inspect.signature(cls.__init__ if isinstance(cls, type) else cls)
    return {k: p.default for k, p in sig.parameters.items()
            if k not in ("self", "params") and p.kind not in (inspect.Parameter.VAR_POSITIONAL,
                                                              inspect.Parameter.VAR_KEYWORD)}


def _torch_names(name: str, hparams: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Translate torch's hyper-parameter names (``momentum=`` for heavy-ball ``beta``; ``sgd``
    with ``momentum > 0`` or ``nesterov`` is the ``momentum`` optimizer, as in
    ``torch.optim.SGD``)."""
    hp = dict(hparams)
    if name == "sgd" and ("momentum" in hp or "nesterov" in hp):
        m = hp.get("momentum", 0.0)
        if hp.get("nesterov") or (not isinstance(m, bool) and isinstance(m, (int, float))
                                  and m != 0):
            name = "momentum"
            if "style" in hp:
                raise ValueError("optimizer 'sgd' with momentum is heavy ball (torch.optim.SGD); "
                                 "for style give optimizer 'momentum'")
        else:
            hp.pop("momentum")
            if hp.get("nesterov") is False:
                hp.pop("nesterov")
    for torch_name, ours in TORCH_NAMES.get(name, {}).items():
        if torch_name in hp:
            if ours in hp:
                raise ValueError(f"give {ours!r} or its torch name {torch_name!r} for optimizer "
                                 f"{name!r}, not both")
            hp[ours] = hp.pop(torch_name)
    return name, hp


def create(name: str, params, **hparams: Any) -> torch.optim.Optimizer:
    """Build optimizer ``name`` on ``params`` with validated hyper-parameters (SPEC §2).

    torch's own names are accepted where they mean the same thing (:data:`TORCH_NAMES`):
    ``create("momentum", ps, lr=0.1, momentum=0.9)`` is ``beta=0.9``, and
    ``create("sgd", ps, lr=0.1, momentum=0.9)`` is heavy ball v ← 0.9 v + ĝ, Φ ← Φ − η v,
    exactly ``torch.optim.SGD(lr=0.1, momentum=0.9)`` (``momentum=0`` is plain SGD);
    ``betas`` (adam) and ``alpha`` (rmsprop) are already torch's names. Giving both names
    of one hyper-parameter raises ``ValueError``.

    Raises ``ValueError`` for an unknown name (listing the known ones), an unknown or missing
    hyper-parameter (listing the accepted ones) or a value out of range (naming the
    parameter and the allowed range).
    """
    _lookup(name)
    name, hparams = _torch_names(name, hparams)
    cls = _lookup(name)
    accepted = hyperparameters(name)
    unknown = sorted(set(hparams) - set(accepted))
    if unknown:
        aliases = "".join(f", {t} (= {o})" for t, o in TORCH_NAMES.get(name, {}).items())
        raise ValueError(f"unknown hyper-parameter {unknown[0]!r} for optimizer {name!r}; "
                         f"allowed: {', '.join(accepted)}{aliases}")
    missing = [k for k, v in accepted.items() if v is inspect.Parameter.empty and k not in hparams]
    if missing:
        raise ValueError(f"optimizer {name!r} needs {missing[0]!r}")
    return cls(params, **hparams)


def _lookup(name: str) -> Callable[..., torch.optim.Optimizer]:
    if not isinstance(name, str) or name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(available())}")
    return OPTIMIZERS[name]
