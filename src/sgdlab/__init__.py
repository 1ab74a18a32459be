"""sgdlab: train with stochastic gradient descent and measure what SGD does.

The mathematics is specified in SPEC.md (shared with the project); modules cite its sections.
``sgdlab.Monitor`` (:mod:`sgdlab.monitor`) is imported on first use, so ``import sgdlab``
stays cheap.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["Monitor", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Monitor":
        from sgdlab.monitor import Monitor

        return Monitor
    raise AttributeError(f"module 'sgdlab' has no attribute {name!r}")
