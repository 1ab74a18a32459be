"""Optimizers of SPEC §2 with the torch.optim API, and a by-name registry.

Where torch.optim has the update it does the work (fused kernels where torch has them);
sgdlab adds the EMA momentum form, uncorrected Adam, decoupled decay for every optimizer and
snr_sgd (SPEC §2.6).
"""

from .adam import Adam, AdamW
from .registry import OPTIMIZERS, TORCH_NAMES, available, create, hyperparameters, register
from .rmsprop import RMSprop
from .sgd import SGD, Momentum
from .snr_sgd import SNRSGD, snr_sgd

__all__ = ["Adam", "AdamW", "Momentum", "OPTIMIZERS", "RMSprop", "SGD", "SNRSGD", "TORCH_NAMES",
           "available", "create", "hyperparameters", "register", "snr_sgd"]
