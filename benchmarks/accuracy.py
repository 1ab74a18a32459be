"""Test accuracy of the shipped configs against their floors, through the real CLI.

Each config in ``configs/`` is trained with ``sgdlab train --config FILE --seed S --out DIR``
in a subprocess; ``final.test_acc``, ``steps`` and ``wall_time`` are read back from
``DIR/summary.json``. The result is a markdown table (config, command, steps, seconds, test
accuracy, floor, PASS/FAIL). Run from the repository root:

    .venv/bin/python benchmarks/accuracy.py                      # all four configs, seed 0
    .venv/bin/python benchmarks/accuracy.py --only mnist1d_mlp   # one config
    .venv/bin/python benchmarks/accuracy.py --seeds 3            # mean ± sd over seeds 0, 1, 2

Options: ``--only NAME`` (repeatable; a config name such as ``digits_cnn``), ``--seeds N``
(seeds 0..N-1; with N > 1 accuracy, steps and seconds are mean ± sample sd and PASS means
the *mean* reaches the floor; every seed's accuracy is listed under the table),
``--out-root DIR`` (keep the run directories there; default a temporary directory that is
removed afterwards), ``--threads T`` (``OMP_NUM_THREADS`` for the training processes,
default 1: on a small shared CPU one thread per run is much faster than two that contend
with other jobs).

"train s" is the trainer's own ``wall_time`` (summary.json); "total s" is the whole
subprocess (interpreter start-up and data loading included). Both move with machine load.
Runs are sequential. The whole set takes about 3-5 minutes per seed on a 2-core CPU, most of
it the MNIST MLP.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name, config file (relative to the repository root), floor on final test accuracy
BENCHMARKS: list[tuple[str, str, float]] = [
    ("mnist1d_cnn", "configs/mnist1d_cnn.yaml", 0.90),
    ("mnist1d_mlp", "configs/mnist1d_mlp.yaml", 0.65),
    ("digits_cnn", "configs/digits_cnn.yaml", 0.97),
    ("mnist_mlp", "configs/mnist_mlp.yaml", 0.98),
]


def sgdlab_command() -> list[str]:
    """The ``sgdlab`` console script next to this interpreter, else ``python -m sgdlab.cli``."""
    exe = Path(sys.executable).with_name("sgdlab")
    if exe.is_file():
        return [str(exe)]
    return [sys.executable, "-m", "sgdlab.cli"]


def run_one(config: str, seed: int, out: Path, threads: int) -> dict:
    """Train ``config`` with ``seed`` into ``out``; return steps, seconds and test accuracy."""
    cmd = [*sgdlab_command(), "train", "--config", str(ROOT / config), "--seed", str(seed),
           "--out", str(out), "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    total = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"{config} seed {seed} failed (rc {proc.returncode}):\n"
                           + "\n".join(tail))
    summary = json.loads((out / "summary.json").read_text())
    return {
        "steps": int(summary["steps"]),
        "train_s": float(summary["wall_time"]),
        "total_s": total,
        "acc": float(summary["final"]["test_acc"]),
    }


def mean_sd(values: list[float], fmt: str) -> str:
    """One value, or ``mean ± sd`` (sample sd) of several; identical values print once."""
    if len(set(values)) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"


def main(argv: list[str] | None = None) -> int:
    names = [b[0] for b in BENCHMARKS]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", action="append", choices=names, metavar="NAME",
                   help=f"run only this config (repeatable): {', '.join(names)}")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 (default 1)")
    p.add_argument("--out-root", type=Path, default=None,
                   help="keep run directories under this directory (default: a temp dir)")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS per run (default 1)")
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error("--seeds must be >= 1")
    if args.threads < 1:
        p.error("--threads must be >= 1")
    selected = [b for b in BENCHMARKS if not args.only or b[0] in args.only]

    tmp = None
    if args.out_root is None:
        tmp = tempfile.mkdtemp(prefix="sgdlab-accuracy-")
        root = Path(tmp)
    else:
        root = args.out_root
        root.mkdir(parents=True, exist_ok=True)

    rows, per_seed, failures = [], [], 0
    try:
        for name, config, floor in selected:
            results = []
            for seed in range(args.seeds):
                out = root / f"{name}-seed{seed}"
                if out.exists():
                    shutil.rmtree(out)
                r = run_one(config, seed, out, args.threads)
                print(f"{name} seed {seed}: {r['steps']} steps, {r['train_s']:.1f} s train, "
                      f"{r['total_s']:.1f} s total, test_acc {r['acc']:.4f}",
                      file=sys.stderr, flush=True)
                results.append(r)
            accs = [100 * r["acc"] for r in results]
            ok = statistics.mean(accs) >= 100 * floor
            failures += not ok
            seed_flag = "--seed 0" if args.seeds == 1 else f"--seed {{0..{args.seeds - 1}}}"
            command = f"`sgdlab train --config {config} {seed_flag} --out DIR`"
            rows.append([
                name, command, mean_sd([r["steps"] for r in results], ".0f"),
                mean_sd([r["train_s"] for r in results], ".1f"),
                mean_sd([r["total_s"] for r in results], ".1f"),
                mean_sd(accs, ".2f") + " %", f"{100 * floor:.0f} %",
                "PASS" if ok else "**FAIL**",
            ])
            per_seed.append((name, accs))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    import torch

    print(f"\nOMP_NUM_THREADS={args.threads}, seeds 0..{args.seeds - 1}, "
          f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs\n")
    header = ["config", "command", "steps", "train s", "total s", "test acc", "floor", "result"]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(["---", "---", "--:", "--:", "--:", "--:", "--:", ":-:"]) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if args.seeds > 1:
        print()
        for name, accs in per_seed:
            print(f"- {name}: " + ", ".join(f"{a:.2f}" for a in accs))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
