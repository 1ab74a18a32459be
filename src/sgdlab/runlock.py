"""One writer per run directory: an OS-level lock on ``RUN/.lock``.

:func:`acquire` takes an exclusive ``fcntl.flock`` on ``RUN/.lock`` without waiting. The
kernel releases it when the process ends, however it ends (``kill -9`` included), so a lock
is never stale. A second writer gets :class:`RunLocked` (a one-line
:class:`~sgdlab.config.ConfigError`) before it has written anything. The lock file is empty
and never rewritten (taking the lock changes no file of a run directory).

A process holds at most one lock per directory: acquiring again returns the lock already
held (the command line takes it before it looks at the directory, the trainer again when it
starts writing). Under ``sgdlab train --nproc N`` the launcher holds the lock and passes it to
torchrun; the environment variable ``SGDLAB_RUN_LOCK`` tells the ranks that the directory
it names is already locked for them.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from sgdlab.config import ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock (documented)
    fcntl = None

LOCK_NAME = ".lock"
ENV = "SGDLAB_RUN_LOCK"

_held: dict[str, RunLock] = {}


class RunLocked(ConfigError):
    """Another process is writing this run directory."""


class RunLock:
    """An exclusive lock on ``directory/.lock`` held by this process (see the module doc)."""

    def __init__(self, directory: Path, fd: int | None) -> None:
        self.directory = directory
        self.fd = fd

    def release(self) -> None:
        """Give the lock up (closing the file releases the flock)."""
        _held.pop(_key(self.directory), None)
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _key(directory: Path) -> str:
    return str(Path(directory).resolve())


def inherited(directory: str | Path) -> bool:
    """Whether the launcher of this process (``--nproc``) holds the lock of ``directory``."""
    return os.environ.get(ENV) == _key(Path(directory))


def acquire(directory: str | Path, create: bool = True) -> RunLock:
    """Lock ``directory`` for this process (creating it when ``create``); raises
    :class:`RunLocked` when another process holds the lock, ``OSError`` when the directory
    cannot be created or written."""
    directory = Path(directory)
    key = _key(directory)
    if key in _held:
        return _held[key]
    if inherited(directory) or fcntl is None:
        lock = RunLock(directory, None)
        _held[key] = lock
        return lock
    if create:
        directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise RunLocked(f"out: {directory} is being written by another sgdlab process; "
                            "wait for it to end or choose another --out") from None
        raise
    lock = RunLock(directory, fd)
    _held[key] = lock
    return lock


def held(directory: str | Path) -> RunLock | None:
    """The lock this process holds on ``directory``, if any."""
    return _held.get(_key(Path(directory)))
