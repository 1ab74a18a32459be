"""LR range test: sgdlab's ``recipe.lr_find`` against torch-lr-finder's ``range_test``, side by
side in one run (SPEC §4.11 (3)).

On the MNIST-1D MLP and CNN (``models.build("mlp"|"cnn", "mnist1d", seed=0)``, float32), the
MNIST-1D training set (``data.load("mnist1d", seed=0)``, 4,000 examples), batches of 128,
torch SGD with momentum 0.9, 1 torch thread: the time of one whole range test, 100 steps,
learning rates exponentially spaced from 1e-5 to 10, state restore included:

* torch-lr-finder: ``LRFinder(model, optimizer, nn.CrossEntropyLoss())`` (its constructor
  stores the model's and optimizer's state dicts), ``.range_test(loader, start_lr=1e-5,
  end_lr=10, num_iter=100, step_mode="exp", smooth_f=0.05, diverge_th=inf)`` on a
  ``DataLoader(TensorDataset(x, y), batch_size=128, shuffle=True)``, then ``.reset()``; its
  progress bar and messages go to a discarded buffer;
* sgdlab ``lr_find(model, optimizer, per-example cross-entropy, data, batch_size=128,
  start_lr=1e-5, end_lr=10, num_steps=100, smoothing=0.95, diverge_factor=1e300)`` on the
  same DataLoader (the floor's row) and on the tensors (x, y) (its own seeded sampler). Its
  restore (:func:`sgdlab.recipe.preserved`) covers more: gradients, train/eval modes, the
  global RNG.

smoothing=0.95 is the same average as torch-lr-finder's smooth_f=0.05 (weight 0.05 on the
new loss); neither side stops on a growing loss (diverge_th=inf, diverge_factor=1e300).
sgdlab stops before the first non-finite loss, torch-lr-finder records it and runs on: at
the top of this range the CNN's loss overflows a few steps before the end, so the CNN rows
differ in the steps run (column "steps").

Every row steps its own copy of the model and optimizer. The calls are interleaved, the
order rotated every round; the table shows medians over rounds, the ratios of medians (wall
and process CPU). Before the timing, one test on each side from the same data order (two
loaders with equally seeded generators) checks that the learning rates and losses agree.

    python benchmarks/lr_find.py [--rounds 5] [--steps 100] [--batch 128] [--threads 1]
                                 [--models mlp,cnn]

torch-lr-finder is optional (``pip install --no-deps torch-lr-finder``; ``make
bench-extras``); without it only sgdlab's rows are timed.

Floor (issue 13): ≤ 1.0× torch-lr-finder's time, goal ≤ 0.8×.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import math
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from sgdlab import data, models, recipe

FLOOR, GOAL = 1.0, 0.8
START_LR, END_LR, SMOOTH_F = 1e-5, 10.0, 0.05
REF = "torch-lr-finder range_test + reset"
OURS_LOADER = "sgdlab lr_find, same DataLoader"
OURS_TENSORS = "sgdlab lr_find, tensors (x, y)"


def ce_none(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, y, reduction="none")


def loader(x: torch.Tensor, y: torch.Tensor, batch: int, seed: int = 0) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True,
                      generator=torch.Generator().manual_seed(seed))


def rows_for(base: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, args
             ) -> tuple[dict[str, Callable[[], dict]], list[str]]:
    """row → one range test (restore included) on the row's own model and optimizer,
    returning {"lrs", "losses"} (torch-lr-finder: its smoothed losses as "smoothed")."""
    rows: dict[str, Callable[[], dict]] = {}
    notes: list[str] = []

    def setup():
        model = copy.deepcopy(base)
        return model, torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    try:
        from torch_lr_finder import LRFinder

        model_r, opt_r = setup()
        crit = torch.nn.CrossEntropyLoss()
        data_r = loader(x, y, args.batch)

        def ref():
            finder = LRFinder(model_r, opt_r, crit)
            with contextlib.redirect_stdout(io.StringIO()), \
                    contextlib.redirect_stderr(io.StringIO()):
                finder.range_test(data_r, start_lr=START_LR, end_lr=END_LR,
                                  num_iter=args.steps, step_mode="exp", smooth_f=SMOOTH_F,
                                  diverge_th=math.inf)
            finder.reset()
            return {"lrs": finder.history["lr"], "smoothed": finder.history["loss"]}

        rows[REF] = ref
    except ImportError as e:
        notes.append(f"torch-lr-finder skipped ({e}); install with "
                     "`pip install --no-deps torch-lr-finder`")

    def ours(source):
        model, opt = setup()

        def run():
            r = recipe.lr_find(model, opt, ce_none, source, batch_size=args.batch,
                               start_lr=START_LR, end_lr=END_LR, num_steps=args.steps,
                               smoothing=1 - SMOOTH_F, diverge_factor=1e300)
            return {"lrs": r.lrs, "losses": r.losses}
        return run

    rows[OURS_LOADER] = ours(loader(x, y, args.batch))
    rows[OURS_TENSORS] = ours((x, y))
    return rows, notes


def time_rows(rows: dict[str, Callable[[], dict]], rounds: int
              ) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, dict]]:
    """Wall and process-CPU seconds per call, one call per row and round after one warm-up
    call each, rows interleaved in an order rotated every round; the last values returned."""
    names = list(rows)
    wall = {n: [] for n in names}
    cpu = {n: [] for n in names}
    values = {n: rows[n]() for n in names}
    for r in range(rounds):
        for i in range(len(names)):
            name = names[(i + r) % len(names)]
            w0, c0 = time.perf_counter(), time.process_time()
            values[name] = rows[name]()
            wall[name].append(time.perf_counter() - w0)
            cpu[name].append(time.process_time() - c0)
    return wall, cpu, values


def _unsmooth(smoothed: list[float]) -> list[float]:
    """torch-lr-finder's raw losses from its curve s_0 = ℓ_0, s_k = f ℓ_k + (1 − f) s_{k−1}."""
    raw = [smoothed[0]]
    for k in range(1, len(smoothed)):
        raw.append((smoothed[k] - (1 - SMOOTH_F) * smoothed[k - 1]) / SMOOTH_F)
    return raw


def _rel(a: list[float], b: list[float]) -> float:
    return max((abs(u - v) / abs(v) for u, v in zip(a, b, strict=False)), default=0.0)


def agreement(base: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, args) -> str:
    """One test on each side from the same data order: the lr grids, and the raw losses
    (torch-lr-finder's recovered from its smoothed curve) over the steps both recorded."""
    try:
        from torch_lr_finder import LRFinder
    except ImportError:
        return "torch-lr-finder not installed: no agreement check"
    m1, m2 = copy.deepcopy(base), copy.deepcopy(base)
    o1 = torch.optim.SGD(m1.parameters(), lr=1e-3, momentum=0.9)
    o2 = torch.optim.SGD(m2.parameters(), lr=1e-3, momentum=0.9)
    finder = LRFinder(m1, o1, torch.nn.CrossEntropyLoss())
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        finder.range_test(loader(x, y, args.batch, seed=1), start_lr=START_LR, end_lr=END_LR,
                          num_iter=args.steps, step_mode="exp", smooth_f=SMOOTH_F,
                          diverge_th=math.inf)
    finder.reset()
    r = recipe.lr_find(m2, o2, ce_none, loader(x, y, args.batch, seed=1),
                       start_lr=START_LR, end_lr=END_LR, num_steps=args.steps,
                       smoothing=1 - SMOOTH_F, diverge_factor=1e300)
    theirs = _unsmooth(finder.history["loss"])
    n = len(r.lrs)
    finite = sum(math.isfinite(v) for v in theirs)
    first_big = next((k for k in range(n) if abs(r.losses[k] - theirs[k])
                      > 1e-3 * abs(theirs[k])), None)
    head = first_big if first_big is not None else n
    return (f"same data order: lr grids {len(finder.history['lr'])} vs {n} steps, max rel "
            f"difference {_rel(r.lrs, finder.history['lr']):.1e}; raw losses over the {n} "
            f"steps both recorded max rel difference {_rel(r.losses, theirs):.1e}, over the "
            f"first {head} {_rel(r.losses[:head], theirs[:head]):.1e}"
            + (f" (from step {first_big}, lr {r.lrs[first_big]:.3g}, the runs part: "
               "float32 rounding, the mean of per-example losses against the fused mean, "
               "amplified by the unstable steps)" if first_big is not None else "")
            + f"; torch-lr-finder finite losses {finite}/{len(theirs)}, sgdlab stopped: "
            f"{'diverged (non-finite loss next)' if r.diverged else 'no'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default="mlp,cnn")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = data.load("mnist1d", seed=0)
    x, y = ds.x_train, ds.y_train
    print(f"# LR range test, MNIST-1D ({x.shape[0]} training examples), batch {args.batch}, "
          f"{args.steps} steps, lr {START_LR:g} → {END_LR:g} exp, SGD momentum 0.9, float32, "
          f"medians of {args.rounds} interleaved rounds, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s)")
    table, notes, checks = [], [], []
    for arch in args.models.split(","):
        base = models.build(arch, "mnist1d", seed=0)
        n_params = sum(p.numel() for p in base.parameters())
        checks.append(f"{arch}: {agreement(base, x, y, args)}")
        rows, row_notes = rows_for(base, x, y, args)
        notes += [n for n in row_notes if n not in notes]
        wall, cpu, values = time_rows(rows, args.rounds)
        for name in rows:
            med = statistics.median(wall[name])
            steps = len(values[name]["lrs"])
            ratio = cpu_ratio = floor = ""
            if REF in rows and name != REF:
                q = med / statistics.median(wall[REF])
                ratio = f"{q:.2f}"
                cpu_ratio = f"{statistics.median(cpu[name]) / statistics.median(cpu[REF]):.2f}"
                floor = (f"≤ {FLOOR}: {'met' if q <= FLOOR else 'NOT met'}; goal ≤ {GOAL}: "
                         f"{'met' if q <= GOAL else 'not met'}")
            table.append(f"| {arch} ({n_params:,}) | {name} | {med * 1e3:.0f} | "
                         f"{min(wall[name]) * 1e3:.0f} | {max(wall[name]) * 1e3:.0f} | {steps} | "
                         f"{med / steps * 1e3:.2f} | {ratio} | {cpu_ratio} | {floor} |")
    print("\n| model (parameters) | method | ms per call (median) | min | max | steps | "
          "ms per step | × torch-lr-finder | × torch-lr-finder (CPU time) | floor / goal |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    print("\n".join(table))
    print()
    for line in checks + notes:
        print(line)


if __name__ == "__main__":
    main()
