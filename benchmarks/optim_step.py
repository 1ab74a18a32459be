"""Optimizer step cost on 10M float32 parameters (CPU), measured side by side in one run.

For every sgdlab optimizer (and the paths of snr_sgd) this prints the median time of one
``step()``, its ratio to torch's fastest Adam step (``torch.optim.Adam(fused=True)``) and
the memory bandwidth it achieves, next to a plain ``a.add_(b)`` over the same number of
elements. Rounds interleave the candidates so that machine noise hits all of them alike.

    python benchmarks/optim_step.py [--numel 10000000] [--tensors 4] [--rounds 7] [--steps 10]

Bytes per step count each tensor read or written once per element (4 bytes each):
SGD reads Φ, ĝ and writes Φ (3); momentum/RMSprop add one buffer (5); Adam and snr_sgd
read Φ, ĝ, m, s and write Φ, m, s (7).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from sgdlab import optim

CANDIDATES = [
    # label, factory(params), tensors touched per element
    ("torch Adam (fused)", lambda p: torch.optim.Adam(p, lr=1e-3, fused=True), 7),
    ("torch Adam (foreach)", lambda p: torch.optim.Adam(p, lr=1e-3, foreach=True), 7),
    ("sgd", lambda p: optim.create("sgd", p, lr=1e-3), 3),
    ("momentum (heavy ball)", lambda p: optim.create("momentum", p, lr=1e-3), 5),
    ("momentum (ema)", lambda p: optim.create("momentum", p, lr=1e-2, style="ema"), 5),
    ("rmsprop", lambda p: optim.create("rmsprop", p, lr=1e-3), 5),
    ("rmsprop (foreach)", lambda p: optim.create("rmsprop", p, lr=1e-3, foreach=True), 5),
    ("torch RMSprop (foreach)", lambda p: torch.optim.RMSprop(p, lr=1e-3, foreach=True), 5),
    ("adam", lambda p: optim.create("adam", p, lr=1e-3), 7),
    ("adam (no bias correction)",
     lambda p: optim.create("adam", p, lr=1e-3, bias_correction=False), 7),
    ("adam (no bias corr., foreach)",
     lambda p: optim.create("adam", p, lr=1e-3, bias_correction=False, foreach=True,
                            fused=False), 7),
    ("adamw", lambda p: optim.create("adamw", p, lr=1e-3), 7),
    ("snr_sgd (default)", lambda p: optim.create("snr_sgd", p, lr=1e-3, warmup=1), 7),
    ("snr_sgd (compiled kernel)",
     lambda p: optim.create("snr_sgd", p, lr=1e-3, warmup=1, fused=True), 7),
    ("snr_sgd (foreach)",
     lambda p: optim.create("snr_sgd", p, lr=1e-3, warmup=1, fused=False), 7),
]


def _params(numel: int, tensors: int) -> list[torch.nn.Parameter]:
    sizes = [numel // tensors] * tensors
    sizes[-1] += numel - sum(sizes)
    gen = torch.Generator().manual_seed(0)
    params = []
    for n in sizes:
        p = torch.nn.Parameter(torch.randn(n, generator=gen))
        p.grad = 0.01 * torch.randn(n, generator=gen)
        params.append(p)
    return params


def _time(fn, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--numel", type=int, default=10_000_000)
    ap.add_argument("--tensors", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()

    runs = {}
    for label, factory, touched in CANDIDATES:
        params = _params(args.numel, args.tensors)
        opt = factory(params)
        for _ in range(3):  # warm-up: state allocation, snr_sgd warm-up and compilation
            opt.step()
        runs[label] = (opt, touched)
    a = torch.randn(args.numel)
    b = torch.randn(args.numel)
    times: dict[str, list[float]] = {label: [] for label in runs}
    times["a.add_(b)"] = []
    for _ in range(args.rounds):
        times["a.add_(b)"].append(_time(lambda: a.add_(b), args.steps))
        for label, (opt, _) in runs.items():
            times[label].append(_time(opt.step, args.steps))
    med = {k: statistics.median(v) for k, v in times.items()}
    add_gbs = 3 * 4 * args.numel / med["a.add_(b)"] / 1e9
    ref = med["torch Adam (fused)"]

    print(f"# {args.numel:,} float32 parameters in {args.tensors} tensors, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}; median of {args.rounds} rounds "
          f"x {args.steps} steps")
    print(f"| {'optimizer':28s} | ms/step | vs fused Adam | GB/s | vs add_ |")
    print(f"|{'-' * 30}|--------:|--------------:|-----:|--------:|")
    print(f"| {'a.add_(b)':28s} | {med['a.add_(b)'] * 1e3:7.2f} | {'':13s} | "
          f"{add_gbs:4.1f} | {1.0:7.2f} |")
    for label, (_, touched) in runs.items():
        gbs = touched * 4 * args.numel / med[label] / 1e9
        print(f"| {label:28s} | {med[label] * 1e3:7.2f} | {med[label] / ref:13.2f} | "
              f"{gbs:4.1f} | {gbs / add_gbs:7.2f} |")


if __name__ == "__main__":
    main()
