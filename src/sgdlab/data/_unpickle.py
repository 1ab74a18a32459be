"""A restricted unpickler for data files that are pickles (MNIST ``.pkl.gz``, CIFAR-10 batches).

Unpickling runs code named by the file: ``GLOBAL``/``STACK_GLOBAL`` opcodes import any callable
and ``REDUCE`` calls it. Data files only need numpy arrays and a few inert builtins, so the
unpickler resolves exactly these globals and refuses every other one *before* anything is
called:

- ``numpy.ndarray``, ``numpy.dtype``, and ``numpy.core.multiarray._reconstruct`` (also spelled
  ``numpy._core.multiarray._reconstruct`` by numpy >= 2): how numpy pickles an array;
  ``numpy.core.numeric._frombuffer`` (or ``numpy._core``): the same at protocol 5;
- ``_codecs.encode`` (latin-1 only): how Python 3 writes ``bytes`` at pickle protocol <= 2;
- the inert builtins ``set``, ``frozenset``, ``bytearray``, ``complex``, ``slice``.

Arrays of ``object`` dtype are refused too (their elements would be arbitrary objects).
Persistent ids are refused by the base class.
"""

from __future__ import annotations

import builtins
import codecs
import pickle
from pathlib import Path
from typing import IO, Any

import numpy as np

from ._core import DataError

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
    from numpy._core.numeric import _frombuffer
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    from numpy.core.numeric import _frombuffer  # type: ignore[no-redef]

_SAFE_BUILTINS = frozenset({"set", "frozenset", "bytearray", "complex", "slice"})
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("_codecs", "encode"): None,  # filled below with the latin-1-only wrapper
}


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as pickle protocol <= 2 uses it for ``bytes``: latin-1 only."""
    if encoding.lower().replace("_", "-") not in ("latin1", "latin-1") or errors != "strict":
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} refused")
    return codecs.encode(text, "latin1")


_ALLOWED[("_codecs", "encode")] = _latin1_encode


class UnsafePickleError(DataError, pickle.UnpicklingError):
    """A pickle names a global outside the allow-list; nothing from it was executed."""


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose :meth:`find_class` admits only numpy arrays and inert builtins.

    ``source`` names the file in error messages.
    """

    def __init__(self, file: IO[bytes], *, source: str, encoding: str = "bytes") -> None:
        super().__init__(file, encoding=encoding, fix_imports=True)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        """Resolve ``module.name`` if it is on the allow-list, else raise
        :class:`UnsafePickleError` (before anything is called)."""
        if module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS:
            return getattr(builtins, name)
        obj = _ALLOWED.get((module, name))
        if obj is None:
            raise UnsafePickleError(
                f"{self.source}: refused to unpickle global {module}.{name}; only numpy arrays "
                "and plain builtins are allowed in data files"
            )
        return obj


def restricted_load(file: IO[bytes], *, source: str | Path, encoding: str = "bytes") -> Any:
    """Unpickle ``file`` with :class:`RestrictedUnpickler` and refuse object-dtype arrays.

    ``encoding`` is how Python-2 ``str`` objects are decoded: ``"bytes"`` (CIFAR-10 dict keys
    stay ``bytes``) or ``"latin1"`` (needed for numpy arrays written by Python 2 as ``str``).
    Malformed pickles raise :class:`DataError` naming ``source``.
    """
    src = str(source)
    try:
        obj = RestrictedUnpickler(file, source=src, encoding=encoding).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, UnicodeDecodeError, OverflowError, MemoryError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{src}: not a readable data pickle ({msg})") from None
    _refuse_object_arrays(obj, src)
    return obj


def _refuse_object_arrays(obj: Any, src: str, depth: int = 0) -> None:
    if depth > 8:
        return
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise UnsafePickleError(f"{src}: refused an array of dtype object in a data file")
    elif isinstance(obj, dict):
        for v in obj.values():
            _refuse_object_arrays(v, src, depth + 1)
    elif isinstance(obj, (list, tuple)) and len(obj) < 64:
        for v in obj:
            _refuse_object_arrays(v, src, depth + 1)
