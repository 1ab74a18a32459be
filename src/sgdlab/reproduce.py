"""``sgdlab reproduce``: run each claim, catch what crashes, write the report (SPEC §4).

The claims are independent single-threaded programs (each runs with one torch thread, see
:func:`sgdlab.experiments.kit.run_claim`), so with ``jobs`` > 1 they run side by side, one
claim per worker process (``spawn``: a fresh interpreter, no forked torch state). A claim may
name claims whose cache entries it reads (``AFTER = ("6-momentum",)``); it starts only after
those, when they are selected. Results, cache and report do not depend on ``jobs``: each
claim's numbers come from its own seeds and its own cache entries (tested).
"""

from __future__ import annotations

import datetime
import platform
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import torch

from sgdlab import __version__, experiments, report
from sgdlab.config import ConfigError
from sgdlab.experiments.base import Context, Result
from sgdlab.paths import check_writable_dir

MODES = ("smoke", "quick", "full")


def run_one(name: str, out: str | Path, mode: str, seeds: int) -> Result:
    """Run one claim into ``out`` (its cache and figures); a claim that raises is an ERROR
    result with its traceback. ``seconds`` is the claim's own wall time."""
    module = experiments.CLAIMS[name]
    start = time.perf_counter()
    try:
        result = module.run(Context(Path(out), mode, seeds))
    except Exception:  # a crashing claim is a result, not the end of the report
        result = Result(module.CLAIM, error=traceback.format_exc(limit=8))
    result.seconds = time.perf_counter() - start
    return result


def _started(name: str, progress: bool) -> None:
    if progress:
        print(f"[{name}] running …", file=sys.stderr, flush=True)


def _finished(name: str, result: Result, progress: bool) -> None:
    if progress:
        derived = result.derived_verdict
        print(f"[{name}] notes {result.verdict}" + (f", derived {derived}" if derived else "")
              + f" ({result.seconds:.1f} s)", file=sys.stderr, flush=True)


def _after(names: list[str]) -> dict[str, list[str]]:
    """For each selected claim, the selected claims it must run after (its ``AFTER``)."""
    return {n: [a for a in getattr(experiments.CLAIMS[n], "AFTER", ()) if a in names]
            for n in names}


def _in_order(names: list[str]) -> list[str]:
    """``names`` in the notes' order, each claim moved after those it names in ``AFTER``
    (a stable topological order); a cycle is a programming error, raised before any claim
    runs (the parallel scheduler would otherwise wait forever)."""
    after, ordered = _after(names), []
    while len(ordered) < len(names):
        ready = [n for n in names if n not in ordered and all(a in ordered for a in after[n])]
        if not ready:
            stuck = [n for n in names if n not in ordered]
            raise RuntimeError(f"claims {stuck} name each other in AFTER (a cycle)")
        ordered.append(ready[0])
    return ordered


def _run_parallel(names: list[str], out: Path, mode: str, seeds: int, jobs: int,
                  progress: bool) -> dict[str, Result]:
    """The claims in ``jobs`` spawned worker processes, in the notes' order as slots free up,
    each after the selected claims it names in ``AFTER``. A worker that dies (killed, out of
    memory) makes its claims ERROR results; the rest run in a new pool."""
    import multiprocessing as mp

    after = _after(names)
    pending, done = list(names), {}
    running: dict[Future, str] = {}
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"))
    try:
        while pending or running:
            for n in [n for n in pending if all(a in done for a in after[n])]:
                if len(running) >= jobs:
                    break
                pending.remove(n)
                running[pool.submit(run_one, n, out, mode, seeds)] = n
                _started(n, progress)
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            broken = False
            for fut in finished:
                n = running.pop(fut)
                try:
                    done[n] = fut.result()
                except BrokenProcessPool:
                    broken = True
                    done[n] = Result(experiments.CLAIMS[n].CLAIM,
                                     error="the worker process running this claim died "
                                           "(killed or out of memory)")
                except Exception:              # e.g. the result could not be sent back
                    done[n] = Result(experiments.CLAIMS[n].CLAIM,
                                     error=traceback.format_exc(limit=8))
                _finished(n, done[n], progress)
            if broken:
                pool.shutdown(wait=False, cancel_futures=True)
                pool = ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return done


def reproduce(out: str | Path, mode: str = "quick", only: list[str] | None = None,
              seeds: int | None = None, progress: bool = True,
              jobs: int = 1) -> list[Result]:
    """Run the selected claims into ``out`` and write the report; returns the results in the
    notes' order. ``jobs`` > 1 runs claims side by side in that many worker processes
    (module docstring).

    A claim that raises is reported as ERROR with its traceback; the others still run.
    """
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    by_number = {c.split("-")[0]: c for c in experiments.available()}
    names = [by_number.get(n, n) for n in only] if only else experiments.available()
    unknown = [n for n in names if n not in experiments.CLAIMS]
    if unknown:
        raise ConfigError(f"only: unknown claim {unknown[0]!r}; known: "
                          f"{', '.join(experiments.available())}")
    if seeds is not None and seeds < 1:
        raise ConfigError(f"seeds must be an integer >= 1, got {seeds}")
    if jobs < 1:
        raise ConfigError(f"jobs must be an integer >= 1, got {jobs}")
    out = check_writable_dir(out, "out")  # before any claim runs
    out.mkdir(parents=True, exist_ok=True)
    n_seeds = seeds or {"smoke": 1, "quick": 2, "full": 5}[mode]
    jobs = min(jobs, len(names))
    _in_order(names)  # an AFTER cycle stops here, before anything runs
    if jobs > 1:
        done = _run_parallel(names, out, mode, n_seeds, jobs, progress)
    else:
        done = {}
        for name in _in_order(names):
            _started(name, progress)
            done[name] = run_one(name, out, mode, n_seeds)
            _finished(name, done[name], progress)
    results = [done[n] for n in names]
    meta = {"mode": mode, "seeds": n_seeds, "jobs": jobs,
            "date": datetime.date.today().isoformat(),
            "versions": {"sgdlab": __version__, "torch": torch.__version__,
                         "python": platform.python_version()}}
    report.write(out, results, meta)
    return results
