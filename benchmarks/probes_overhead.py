"""Cost of per-example gradient statistics as a ratio to the plain training step (SPEC §3).

For each model, side by side in one run (rounds interleaved, the order rotated every round,
medians over rounds), the time of

* the plain step: forward, mean cross-entropy, backward (``p.grad``), the reference 1.00;
* sgdlab ``per_example_sq_norms`` / ``per_example_sum_sq``: forward and a backward that
  computes only the statistics (``p.grad`` untouched);
* sgdlab ``PerExampleStats`` in a training step: the same forward and backward as the plain
  step, which fills ``p.grad`` *and* the statistics;
* ``torch.func``: vmap over grad of ``functional_call``, then the norms / Σ_b g_b²;
* BackPACK ``BatchL2Grad`` / ``SumGradSquared`` (one backward that also fills ``p.grad``);
* Opacus ghost norms: the first backward of ``GradSampleModuleFastGradientClipping`` (ghost
  clipping), which fills ``p.grad`` and the per-example norms, then ``get_norm_sample()``.

BackPACK and Opacus are optional (``pip install --no-deps backpack-for-pytorch einops unfoldNd
opacus opt_einsum``; without ``--no-deps`` pip replaces torch); missing ones are skipped with a
note. Models: the MNIST-1D MLP (2 × 100), the digits CNN (conv32-pool-conv64-pool, 21k
parameters), a 32×32×3 CNN (conv64-conv128-conv208, each with pool; 349k parameters).

    python benchmarks/probes_overhead.py [--batch 128] [--rounds 7] [--threads 1]
                                         [--models mlp,digits,cifar]

Ratios are of wall-clock medians; the last column uses the process CPU time instead, which
another process on the machine disturbs less.

Floor: sgdlab's squared norms ≤ 1.5 × the plain step on all three models.
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from sgdlab import models
from sgdlab.probes.per_example import PerExampleStats, per_example_sq_norms, per_example_sum_sq

MODELS = {
    "mlp": ("MNIST-1D MLP", lambda: models.build("mlp", "mnist1d", seed=0), (40,)),
    "mnist_mlp": ("MNIST MLP", lambda: models.build("mlp", "mnist", seed=0), (1, 28, 28)),
    "digits": ("digits CNN", lambda: models.build("cnn", "digits", seed=0), (1, 8, 8)),
    "cifar": ("32×32×3 CNN", lambda: models.build("cnn", "cifar10", channels=(64, 128, 208),
                                                  seed=0), (3, 32, 32)),
}


def ce_none(out, y):
    return F.cross_entropy(out, y, reduction="none")


def candidates(model: nn.Module, x: torch.Tensor, y: torch.Tensor
               ) -> tuple[dict[str, Callable[[], object]], list[str], list[Callable[[], None]]]:
    """name → zero-argument callable; notes on skipped rows; clean-up callables."""
    rows: dict[str, Callable[[], object]] = {}
    notes: list[str] = []
    cleanup: list[Callable[[], None]] = []

    def plain():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    rows["plain step (fwd + bwd)"] = plain
    rows["sgdlab sq norms (stats only)"] = lambda: per_example_sq_norms(model, ce_none, x, y)

    m_norm = copy.deepcopy(model)
    s_norm = PerExampleStats(m_norm, sum_sq=False, reduction="mean").attach()
    cleanup.append(s_norm.detach)

    def ours_step_norms():
        m_norm.zero_grad(set_to_none=True)
        F.cross_entropy(m_norm(x), y).backward()
        return s_norm.sq_norms()

    rows["sgdlab sq norms + p.grad (PerExampleStats)"] = ours_step_norms

    params = {n: p.detach() for n, p in model.named_parameters()}

    def loss_one(ps, xb, yb):
        return F.cross_entropy(functional_call(model, ps, (xb.unsqueeze(0),)), yb.unsqueeze(0))

    per_ex = vmap(grad(loss_one), in_dims=(None, 0, 0))
    rows["torch.func vmap(grad) sq norms"] = lambda: sum(
        g.flatten(1).square().sum(1) for g in per_ex(params, x, y).values())

    try:
        from backpack import backpack, extend
        from backpack.extensions import BatchL2Grad, SumGradSquared

        m_bp = extend(copy.deepcopy(model))
        loss_bp = extend(nn.CrossEntropyLoss())

        def bp(ext):
            def run():
                m_bp.zero_grad(set_to_none=True)
                with backpack(ext()):
                    loss_bp(m_bp(x), y).backward()
                attr = "batch_l2" if ext is BatchL2Grad else "sum_grad_squared"
                return [getattr(p, attr) for p in m_bp.parameters()]
            return run

        rows["BackPACK BatchL2Grad"] = bp(BatchL2Grad)
    except ImportError as e:
        notes.append(f"BackPACK skipped ({e}); install with `pip install --no-deps "
                     "backpack-for-pytorch einops unfoldNd`")

    try:
        from opacus.grad_sample import GradSampleModuleFastGradientClipping

        gsm = GradSampleModuleFastGradientClipping(copy.deepcopy(model), loss_reduction="mean",
                                                   use_ghost_clipping=True)

        def opacus_norms():
            gsm.zero_grad(set_to_none=True)
            F.cross_entropy(gsm(x), y).backward()
            return gsm.get_norm_sample()

        rows["Opacus ghost norms"] = opacus_norms
        cleanup.append(gsm._close if hasattr(gsm, "_close") else (lambda: None))
    except ImportError as e:
        notes.append(f"Opacus skipped ({e}); install with `pip install --no-deps opacus "
                     "opt_einsum`")

    # Σ_b g_b² per coordinate
    rows["sgdlab Σ_b g² (stats only)"] = lambda: per_example_sum_sq(model, ce_none, x, y)
    m_sq = copy.deepcopy(model)
    s_sq = PerExampleStats(m_sq, norms=False, reduction="mean").attach()
    cleanup.append(s_sq.detach)

    def ours_step_sq():
        m_sq.zero_grad(set_to_none=True)
        F.cross_entropy(m_sq(x), y).backward()
        return s_sq.sum_sq()

    rows["sgdlab Σ_b g² + p.grad (PerExampleStats)"] = ours_step_sq
    rows["torch.func vmap(grad) Σ_b g²"] = lambda: {
        n: g.square().sum(0) for n, g in per_ex(params, x, y).items()}
    if "BackPACK BatchL2Grad" in rows:
        rows["BackPACK SumGradSquared"] = bp(SumGradSquared)
    return rows, notes, cleanup


def time_rows(rows: dict[str, Callable[[], object]], rounds: int, budget: float
              ) -> dict[str, tuple[list[float], list[float]]]:
    """(wall seconds, process CPU seconds) per call, one sample per round.

    Calls are interleaved one by one (row A, row B, …, in a fresh random order at every call,
    seeded) and each is timed on its own: timing whole blocks of one row after another showed
    systematic differences of 3–9 % between identical rows (from the position in the round
    and the allocator's state), larger than some of the costs measured. A rotated order was
    not enough: each row then always follows the same row, and the row after a large one
    (torch.func's per-example gradients) ran up to 1.3× slower — the MNIST-1D MLP's plain
    step came out slower than the same step with the per-example hooks."""
    dts = []
    for fn in rows.values():                 # warm up, and size the rounds to ~budget s a row
        fn()
        t0 = time.perf_counter()
        fn()
        dts.append(time.perf_counter() - t0)
    n = max(1, int(budget / max(max(dts), 1e-6)))
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in rows}
    names = list(rows)
    fns = [rows[k] for k in names]
    k = len(names)
    clock, cpu = time.perf_counter_ns, time.process_time_ns
    order = list(range(k))
    rng = random.Random(0)
    for _ in range(rounds):
        wall = [0] * k
        proc = [0] * k
        for _ in range(n):
            rng.shuffle(order)
            for r in order:
                w0, c0 = clock(), cpu()
                fns[r]()
                wall[r] += clock() - w0
                proc[r] += cpu() - c0
        for r, name in enumerate(names):
            times[name][0].append(wall[r] / n * 1e-9)
            times[name][1].append(proc[r] / n * 1e-9)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--budget", type=float, default=0.3, help="seconds per row and round")
    ap.add_argument("--models", default="mlp,digits,cifar")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared 2-core machine two OpenMP "
                         "threads stall whenever another process holds a core)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)   # BackPACK/Opacus hook notices
    print(f"# per-example statistics vs the plain step, batch {args.batch}, medians of "
          f"{args.rounds} interleaved rounds, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s)")
    for key in args.models.split(","):
        title, make, shape = MODELS[key]
        torch.manual_seed(0)
        model = make()
        x = torch.randn(args.batch, *shape)
        y = torch.randint(0, 10, (args.batch,))
        n_params = sum(p.numel() for p in model.parameters())
        rows, notes, cleanup = candidates(model, x, y)
        times = time_rows(rows, args.rounds, args.budget)
        for fn in cleanup:
            fn()
        ref_wall = statistics.median(times["plain step (fwd + bwd)"][0])
        ref_cpu = statistics.median(times["plain step (fwd + bwd)"][1])
        print(f"\n## {title} ({n_params:,} parameters), batch {args.batch}\n")
        print("| method | ms (median) | min | max | × plain step | × plain (process CPU time) |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, (wall, cpu) in times.items():
            med = statistics.median(wall)
            print(f"| {name} | {1e3 * med:.2f} | {1e3 * min(wall):.2f} | {1e3 * max(wall):.2f} "
                  f"| {med / ref_wall:.2f} | {statistics.median(cpu) / ref_cpu:.2f} |")
        for note in notes:
            print(f"\n{note}")


if __name__ == "__main__":
    main()
