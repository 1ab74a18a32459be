"""Data-parallel runs on one machine: ``sgdlab train --nproc N`` starts its N ranks itself.

Each rank is ``python -m sgdlab.cli ARGS`` with the environment torchrun gives a worker
(``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE``), so ``torch.distributed.init_process_group`` reads ``env://`` exactly
as under torchrun, and the same command still runs under a user's own ``torchrun``.

Why not torchrun for the local case: torchrun starts every worker in a session of its own
and, on SIGINT/SIGTERM, forwards the signal, waits, kills what is left and prints its own
tracebacks. An sgdlab run has to behave as one program instead:

* SIGINT or SIGTERM to the launcher is forwarded to every rank; the ranks agree on the step
  at which to stop (the trainer all-reduces its stop flag every step), rank 0 writes the
  checkpoint, every rank exits 128 + N, and so does the launcher. A second signal while
  waiting kills the ranks (SIGKILL): the run keeps its last checkpoint.
* Every rank is started with ``PR_SET_PDEATHSIG = SIGTERM`` (Linux): a launcher that is
  itself killed with SIGKILL still stops its ranks the same way. No rank outlives it.
* A rank that fails (exit code not 0 and not 128 + a signal we forwarded) makes the launcher
  stop the others (SIGTERM, then SIGKILL after :data:`GRACE_S`) and exit with that code.
* Only rank 0 writes to stdout; every rank's stderr is passed through (warnings and errors
  are printed by rank 0 only, by the trainer).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

#: Seconds the ranks get to stop after a failure of one of them before they are killed.
GRACE_S = 30.0

_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A TCP port free on the loopback interface now (rank 0 binds it moments later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def rank_environment(rank: int, nproc: int, port: int,
                     base: dict[str, str] | None = None,
                     extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of rank ``rank`` of ``nproc`` (torchrun's variables), with
    ``OMP_NUM_THREADS`` = cores // nproc unless already set."""
    env = dict(os.environ if base is None else base)
    env.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                "WORLD_SIZE": str(nproc), "RANK": str(rank), "LOCAL_RANK": str(rank),
                "LOCAL_WORLD_SIZE": str(nproc), "GROUP_RANK": "0"})
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    env.update(extra or {})
    return env


def launch(argv: Sequence[str], nproc: int, extra_env: dict[str, str] | None = None) -> int:
    """Run ``python -m sgdlab.cli *argv`` as ``nproc`` ranks and wait for them (see the
    module docstring); returns the exit code for the whole program."""
    port = free_port()
    procs: list[subprocess.Popen] = []
    received: list[int] = []

    def forward(signum, frame):
        if received:  # a second signal: stop waiting for the checkpoint
            for p in procs:
                if p.poll() is None:
                    p.kill()
        received.append(signum)
        for p in procs:
            if p.poll() is None:
                try:
                    p.send_signal(signum)
                except ProcessLookupError:
                    pass

    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for rank in range(nproc):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "sgdlab.cli", *argv],
                env=rank_environment(rank, nproc, port, extra=extra_env),
                stdout=None if rank == 0 else subprocess.DEVNULL,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None))
        return _wait(procs, received)
    finally:
        for p in procs:  # whatever happened, nothing outlives the launcher
            if p.poll() is None:
                p.kill()
                p.wait()
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _wait(procs: list[subprocess.Popen], received: list[int]) -> int:
    """Wait for every rank; the program's exit code (module docstring)."""
    failed: int | None = None
    deadline: float | None = None
    while True:
        codes = [p.poll() for p in procs]
        if all(c is not None for c in codes):
            break
        for c in codes:
            if c is not None and c != 0 and failed is None and not received \
                    and c not in (128 + signal.SIGINT, 128 + signal.SIGTERM):
                failed = c
                deadline = time.monotonic() + GRACE_S
                for p in procs:
                    if p.poll() is None:
                        p.terminate()
        if deadline is not None and time.monotonic() > deadline:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        time.sleep(0.05)
    if received:
        return 128 + received[0]
    if failed is not None:
        return failed
    codes = [p.returncode for p in procs]
    bad = [c for c in codes if c != 0]
    if not bad:
        return 0
    c = bad[0]
    return 128 - c if c < 0 else c  # a rank killed by signal N (returncode -N): 128 + N
