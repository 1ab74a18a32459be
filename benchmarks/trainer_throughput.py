"""Trainer throughput against a bare hand-written loop, side by side in one run.

MNIST-1D, the MLP (2 × 100, ReLU), batch 128, SGD with momentum 0.9, epoch shuffling; the
trainer with instruments off (one evaluation at the end, default logging) against the loop
a newcomer would write: index a shuffled permutation, forward, cross-entropy, backward,
``torch.optim.SGD`` step. Rounds alternate the two so machine noise hits both alike.

    python benchmarks/trainer_throughput.py [--steps 2000] [--rounds 5]

Floor (training-system issue): trainer ≥ 0.9 × the bare loop's examples per second.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from sgdlab import data, models
from sgdlab.config import from_dict
from sgdlab.train import Trainer


def bare_loop(steps: int, batch: int, seed: int) -> float:
    ds = data.load("mnist1d", seed=seed)
    model = models.build("mlp", ds, seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    per_epoch = ds.n_train // batch
    start = time.perf_counter()
    perm = torch.randperm(ds.n_train, generator=gen)
    for step in range(steps):
        k = step % per_epoch
        if k == 0 and step:
            perm = torch.randperm(ds.n_train, generator=gen)
        idx = perm[k * batch:(k + 1) * batch]
        x, y = ds.x_train[idx], ds.y_train[idx]
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * batch / (time.perf_counter() - start)


def trainer(steps: int, batch: int, seed: int) -> float:
    cfg = from_dict(dict(dataset="mnist1d", model="mlp", optimizer="momentum", lr=0.05,
                         optimizer_options={"beta": 0.9}, batch_size=batch, steps=steps,
                         eval_every=steps, seed=seed))
    t = Trainer(cfg, progress=False)
    start = time.perf_counter()
    t.fit()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()
    bare_loop(200, args.batch, 0)  # warm caches (data, allocator)
    trainer(200, args.batch, 0)
    rates = {"bare loop": [], "sgdlab Trainer": []}
    for r in range(args.rounds):
        rates["bare loop"].append(bare_loop(args.steps, args.batch, r))
        rates["sgdlab Trainer"].append(trainer(args.steps, args.batch, r))
    ref = statistics.median(rates["bare loop"])
    print(f"# MNIST-1D MLP, batch {args.batch}, {args.steps} steps x {args.rounds} rounds, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| loop | examples/s (median) | min | max | ratio to bare loop |")
    print("|---|---:|---:|---:|---:|")
    for name, values in rates.items():
        med = statistics.median(values)
        print(f"| {name} | {med:,.0f} | {min(values):,.0f} | {max(values):,.0f} | "
              f"{med / ref:.2f} |")


if __name__ == "__main__":
    main()
