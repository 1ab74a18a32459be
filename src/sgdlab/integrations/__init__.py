"""Adapters of :class:`sgdlab.Monitor` for the trainers people use.

* :mod:`sgdlab.integrations.lightning` — ``MonitorCallback`` for ``lightning.Trainer``
  (``pip install 'sgdlab[lightning]'``).
* :mod:`sgdlab.integrations.transformers` — ``MonitorCallback`` for Hugging Face
  ``transformers.Trainer`` (``pip install 'sgdlab[hf]'``).

Importing this package imports neither library; each submodule imports its own on import and
raises one ``ImportError`` line naming the extra when it is missing.
"""

from __future__ import annotations

__all__: list[str] = []


def require(module: str, extra: str):
    """Import ``module`` or raise ``ImportError`` with one line naming the sgdlab extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"sgdlab.integrations needs {module.split('.')[0]}: "
                          f"pip install 'sgdlab[{extra}]' ({err})") from None
