"""A 16-point learning-rate sweep: K models at once (sgdlab.sweep) against 16 sequential runs.

MNIST-1D, the MLP (2 × 100, ReLU, the `mlp` default), batch 128, plain SGD, η log-spaced
over 16 points in [0.01, 1], epoch shuffling with the same batch seed for every point (a
sequential sweep with one seed sees the same batches too), the full training loss and test
accuracy evaluated every 250 steps. Sequential: the loop a user would write per point —
``torch.optim.SGD`` (torch's default kernel choice), forward, cross-entropy, backward, step —
and the same evaluations. Both are timed end to end (model construction included) and the
rounds alternate so machine noise hits both alike. The final parameters of the two are
compared (same maths, same batches; float32 rounding differs and grows at the largest η, so
the exact agreement is a float64 test, tests/test_sweep.py).

    python benchmarks/sweep.py [--steps 1000] [--rounds 3] [--points 16] [--threads 1]

Floor (reproduce issue): ≥ 5× faster than 16 sequential runs. The last row times only the
batched matrix products of the K models' forward and backward passes: sequential time divided
by it bounds the speed-up any K-at-once implementation can reach on this machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from sgdlab import data, models
from sgdlab.data import BatchSampler
from sgdlab.sweep import train_many


def sequential(ds, lrs, steps: int, batch: int, every: int) -> tuple[float, list[float]]:
    start = time.perf_counter()
    finals = []
    for lr in lrs:
        model = models.build("mlp", ds, seed=0)
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        sampler = BatchSampler(ds.n_train, batch, "shuffle", 0)
        for t in range(steps):
            idx = sampler.next_batch()
            loss = F.cross_entropy(model(ds.x_train[idx]), ds.y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if (t + 1) % every == 0 or t + 1 == steps:
                with torch.no_grad():
                    full = float(F.cross_entropy(model(ds.x_train), ds.y_train))
                    (model(ds.x_test).argmax(1) == ds.y_test).float().mean()
        finals.append(full)
    return time.perf_counter() - start, finals


def vectorised(ds, lrs, steps: int, batch: int, every: int) -> tuple[float, list[float]]:
    start = time.perf_counter()
    res = train_many(ds, "mlp", [{"lr": float(lr), "seed": 0} for lr in lrs], batch_size=batch,
                     steps=steps, eval_every=every)
    return time.perf_counter() - start, list(res.final("train_loss"))


def matmul_floor(k: int, steps: int, batch: int, sizes=(40, 100, 100, 10)) -> float:
    """Seconds for the matrix products alone of ``steps`` steps of K MLPs: per layer one
    forward product, one for the weight gradient and (above the first layer) one for the
    input gradient — the arithmetic no K-at-once implementation can avoid."""
    ws = [torch.randn(k, a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
    hs = [torch.randn(k, batch, a) for a in sizes[:-1]]
    ds = [torch.randn(k, batch, b) for b in sizes[1:]]
    start = time.perf_counter()
    for _ in range(steps):
        for i, (w, h, d) in enumerate(zip(ws, hs, ds, strict=True)):
            torch.bmm(h, w)                         # forward
            torch.bmm(h.transpose(1, 2), d)         # weight gradient
            if i:
                torch.bmm(d, w.transpose(1, 2))     # input gradient
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--points", type=int, default=16)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = data.load("mnist1d", seed=0)
    lrs = np.logspace(-2, 0, args.points)
    sequential(ds, lrs[:2], 50, args.batch, 250)  # warm caches
    vectorised(ds, lrs[:2], 50, args.batch, 250)
    times: dict[str, list[float]] = {"sequential": [], "train_many": [],
                                     "matrix products alone (floor)": []}
    for _ in range(args.rounds):
        ts, fs = sequential(ds, lrs, args.steps, args.batch, 250)
        tv, fv = vectorised(ds, lrs, args.steps, args.batch, 250)
        times["sequential"].append(ts)
        times["train_many"].append(tv)
        times["matrix products alone (floor)"].append(
            matmul_floor(args.points, args.steps, args.batch))
    ok = [abs(a - b) <= 0.02 * abs(a) for a, b in zip(fs, fv, strict=True) if np.isfinite(a)]
    ref = statistics.median(times["sequential"])
    print(f"# MNIST-1D MLP, batch {args.batch}, {args.points} learning rates x {args.steps} "
          f"steps, {args.rounds} rounds, torch {torch.__version__}, {args.threads} thread(s); "
          f"final train losses agree within 2% for {sum(ok)}/{len(ok)} finite points (float32, "
          "different op order; the exact agreement is tested in float64)")
    print("| sweep | seconds (median) | min | max | speed-up over sequential |")
    print("|---|---:|---:|---:|---:|")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"| {name} | {med:.2f} | {min(values):.2f} | {max(values):.2f} | "
              f"{ref / med:.2f}× |")


if __name__ == "__main__":
    main()
