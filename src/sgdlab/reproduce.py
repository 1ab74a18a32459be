"""``sgdlab reproduce``: run each claim, catch what crashes, write the report (SPEC §4)."""

from __future__ import annotations

import datetime
import platform
import sys
import time
import traceback
from pathlib import Path

import torch

from sgdlab import __version__, experiments, report
from sgdlab.config import ConfigError
from sgdlab.experiments.base import Context, Result
from sgdlab.paths import check_writable_dir

MODES = ("smoke", "quick", "full")


def reproduce(out: str | Path, mode: str = "quick", only: list[str] | None = None,
              seeds: int | None = None, progress: bool = True) -> list[Result]:
    """Run the selected claims into ``out`` and write the report; returns the results.

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
    out = check_writable_dir(out, "out")  # before any claim runs
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(out, mode, seeds or {"smoke": 1, "quick": 2, "full": 5}[mode])
    results = []
    for name in names:
        module = experiments.CLAIMS[name]
        start = time.perf_counter()
        if progress:
            print(f"[{name}] running …", file=sys.stderr, flush=True)
        try:
            result = module.run(ctx)
        except Exception:  # a crashing claim is a result, not the end of the report
            result = Result(module.CLAIM, error=traceback.format_exc(limit=8))
        result.seconds = time.perf_counter() - start
        results.append(result)
        if progress:
            derived = result.derived_verdict
            print(f"[{name}] notes {result.verdict}"
                  + (f", derived {derived}" if derived else "")
                  + f" ({result.seconds:.1f} s)", file=sys.stderr, flush=True)
    meta = {"mode": mode, "seeds": ctx.seeds, "date": datetime.date.today().isoformat(),
            "versions": {"sgdlab": __version__, "torch": torch.__version__,
                         "python": platform.python_version()}}
    report.write(out, results, meta)
    return results
