"""Checks of user-given paths, made before any work starts (one-line errors, nothing created).

Every error is a :class:`~sgdlab.config.ConfigError` whose message starts with the field
name (``out``, ``config``, ``run_dir``, ...), names the path and says what is wrong, so the
command line can print it as one line with exit code 2.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from sgdlab.config import ConfigError

__all__ = ["check_readable_file", "check_writable_dir", "os_error_line"]


def _first_existing(path: Path) -> Path:
    """The deepest existing path among ``path`` and its parents (``.`` for a relative one)."""
    probe = path
    while not os.path.lexists(probe):
        parent = probe.parent
        if parent == probe:
            break
        probe = parent
    return probe


def check_writable_dir(path: str | os.PathLike, field: str) -> Path:
    """Check that ``path`` is, or can be created as, a writable directory; create nothing.

    ``path`` may exist (it must then be a directory this process can write into) or not (its
    deepest existing parent must then be a directory this process can write into). Raises
    :class:`~sgdlab.config.ConfigError` ``"FIELD: PATH ..."`` when ``path`` or one of its
    parents is a file, or when the directory is not writable. Returns ``Path(path)``.
    Whether the directory already holds files is for the caller to decide.
    """
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise ConfigError(f"{field} must be a directory path, got {path!r}")
    p = Path(path).expanduser()
    base = _first_existing(p)
    if not base.is_dir():
        what = "a file" if base.is_file() else "not a directory"
        if base == p:
            raise ConfigError(f"{field}: {p} is {what}, not a directory" if base.is_file()
                              else f"{field}: {p} is not a directory")
        raise ConfigError(f"{field}: cannot create {p}: {base} is {what}"
                          + (", not a directory" if base.is_file() else ""))
    reason = _write_problem(base)
    if reason:
        if base == p:
            raise ConfigError(f"{field}: {p} is not writable ({reason})")
        raise ConfigError(f"{field}: cannot create {p}: {base} is not writable ({reason})")
    return p


def _write_problem(directory: Path) -> str | None:
    """Why files cannot be created in the existing ``directory``, or ``None``.

    ``os.access`` first; then a real probe (an empty temporary directory made and removed at
    once), which also catches what permission bits do not show: a read-only mount, a pseudo
    file system, a root user without the capability."""
    if not os.access(directory, os.W_OK | os.X_OK):
        return "permission denied"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".sgdlab-write-test-", dir=directory))
    except OSError as err:
        return err.strerror or type(err).__name__
    return None


def check_readable_file(path: str | os.PathLike, field: str) -> Path:
    """Check that ``path`` is an existing, readable regular file; raise
    :class:`~sgdlab.config.ConfigError` ``"FIELD: PATH ..."`` otherwise. Returns the path."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"{field}: {p} does not exist")
    if p.is_dir():
        raise ConfigError(f"{field}: {p} is a directory, not a file")
    if not os.access(p, os.R_OK):
        raise ConfigError(f"{field}: {p} is not readable (permission denied)")
    return p


def os_error_line(err: OSError, field: str | None = None) -> str:
    """One line for an :class:`OSError`: ``"[FIELD: ]PATH: reason"`` (e.g. ``No space left
    on device``), without Python's ``[Errno N]`` prefix."""
    reason = err.strerror or type(err).__name__
    where = " -> ".join(str(f) for f in (err.filename, err.filename2) if f is not None)
    text = f"{where}: {reason}" if where else reason
    return f"{field}: {text}" if field else text
