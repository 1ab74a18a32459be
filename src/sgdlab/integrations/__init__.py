"""Adapters that run :class:`sgdlab.Monitor` inside the trainers people use.

* :mod:`sgdlab.integrations.lightning` — ``MonitorCallback`` for ``lightning.Trainer``
  (extra ``sgdlab[lightning]``).
* :mod:`sgdlab.integrations.transformers` — ``MonitorCallback`` for Hugging Face
  ``transformers.Trainer`` (extra ``sgdlab[hf]``).

Nothing is imported here: ``import sgdlab`` and ``import sgdlab.integrations`` never import
Lightning or transformers; each submodule imports its library when it is imported and fails
with one line naming the extra when the library is missing.
"""

from __future__ import annotations

__all__: list[str] = []


def _require(module: str, extra: str, what: str):
    """Import ``module`` or raise ImportError with one line naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"sgdlab.integrations.{what} needs {module}: "
                          f"pip install 'sgdlab[{extra}]'") from err
