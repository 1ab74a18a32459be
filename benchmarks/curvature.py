"""Hessian spectrum probes: sgdlab against PyHessian, side by side in one run (SPEC §4.3).

On the MNIST-1D CNN (``models.build("cnn", "mnist1d", seed=0)``, 5,210 parameters, at its
seeded initialisation, eval mode, float32) and the first 1024 MNIST-1D training examples
(one batch, mean cross-entropy), 1 torch thread, the time of

* the top eigenvalue at relative tolerance 1e-6: PyHessian ``eigenvalues(top_n=1, tol)``
  (power iteration, stopping when the relative change is < tol), sgdlab ``top_eigenvalues``
  (Lanczos, stopping when the Ritz residual is ≤ tol·|θ|: the stricter test), also with
  ``method="eigsh"`` (ARPACK) and the power iteration ``top_hessian_eigenvalue``;
* the top 5 eigenvalues at the same tolerance (PyHessian: deflated power iteration, one
  eigenvalue after another);
* the Hutchinson trace with the same number of Rademacher samples (PyHessian's ``tol=-inf``,
  so that it draws all of them);
* the SLQ spectral density with the same Lanczos steps and runs (PyHessian ``density``;
  its ``torch.eig`` is gone from torch ≥ 2.0 and is shimmed here by ``torch.linalg.eigh``
  of the symmetric tridiagonal; sgdlab's time includes its density on a 10,000-point
  grid, PyHessian's package computes none).

Every call builds its gradient graph itself (PyHessian: its ``hessian(...)`` constructor,
timed with the call). The calls are interleaved, the order rotated every round; the table
shows medians over rounds and the ratio of medians, and the values each method returned.

    python benchmarks/curvature.py [--rounds 3] [--n 1024] [--samples 100] [--iters 100]
                                   [--runs 1] [--threads 1]
    python benchmarks/curvature.py --products [--rounds 10]   # one product, each way

PyHessian is optional (``pip install --no-deps pyhessian``; ``make bench-extras``); without
it only sgdlab's rows are timed.

Floors (issue 13): top eigenvalue ≤ 0.7× PyHessian's time, top-5 ≤ 0.5×, trace ≤ 1.0×,
density ≤ 1.0×.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

from sgdlab import data, models
from sgdlab.probes.curvature import (
    hessian_trace,
    spectral_density,
    top_eigenvalues,
    top_hessian_eigenvalue,
)

FLOORS = {"top-1": 0.7, "top-5": 0.5, "trace": 1.0, "density": 1.0}


def _shim_torch_eig() -> None:
    """PyHessian's ``density`` calls ``torch.eig(T, eigenvectors=True)`` (removed in torch
    2.0): (eigenvalues as (m, 2) real/imaginary columns, eigenvectors as columns). T is
    symmetric tridiagonal, so ``torch.linalg.eigh`` gives the same."""
    def eig(t, eigenvectors=False):
        vals, vecs = torch.linalg.eigh(t)
        return torch.stack([vals, torch.zeros_like(vals)], 1), vecs
    torch.eig = eig


def candidates(model, x, y, args) -> tuple[dict[str, dict[str, Callable[[], dict]]], list[str]]:
    """task → {row → zero-argument callable returning the values to compare}."""
    tol = args.tol
    notes: list[str] = []

    def ce(out, t):
        return F.cross_entropy(out, t)

    tasks: dict[str, dict[str, Callable[[], dict]]] = {
        "top-1": {}, "top-5": {}, "trace": {}, "density": {}}
    try:
        from pyhessian import hessian as PyHessian
        ph_module = sys.modules["pyhessian.hessian"]     # the package's name is the class
        _shim_torch_eig()
        counter = [0]
        hvp = ph_module.hessian_vector_product

        def counted(*a, **kw):                        # to report its number of products
            counter[0] += 1
            return hvp(*a, **kw)

        ph_module.hessian_vector_product = counted
        ph_model = copy.deepcopy(model)
        crit = torch.nn.CrossEntropyLoss()

        def ph():
            ph_model.zero_grad(set_to_none=True)      # its constructor accumulates into .grad
            counter[0] = 0
            return PyHessian(ph_model, crit, data=(x, y), cuda=False)

        def ph_top(k):
            def run():
                vals, _ = ph().eigenvalues(maxIter=args.max_iter, tol=tol, top_n=k)
                return {"eigenvalues": vals, "hvps": counter[0]}
            return run

        def ph_trace():
            # tol=-inf: its stopping test |Δmean|/(mean + 1e-6) < tol is also true for any
            # tol ≥ 0 once the running mean is negative
            vals = ph().trace(maxIter=args.samples, tol=-math.inf)
            return {"samples": torch.tensor(vals, dtype=torch.float64), "hvps": counter[0]}

        def ph_density():
            nodes, weights = ph().density(iter=args.iters, n_v=args.runs)
            nodes = torch.tensor(nodes, dtype=torch.float64)
            weights = torch.tensor(weights, dtype=torch.float64)
            n = sum(p.numel() for p in ph_model.parameters())
            return {"moments": [n * float((weights * nodes ** p).sum(1).mean()) for p in (1, 2)],
                    "hvps": counter[0]}

        tasks["top-1"]["PyHessian eigenvalues (power iteration)"] = ph_top(1)
        tasks["top-5"]["PyHessian eigenvalues top_n=5 (deflated power)"] = ph_top(5)
        tasks["trace"]["PyHessian trace"] = ph_trace
        tasks["density"]["PyHessian density"] = ph_density
    except ImportError as e:
        notes.append(f"PyHessian skipped ({e}); install with `pip install --no-deps pyhessian`")

    def ours_top(k, method, which):
        def run():
            r = top_eigenvalues(model, ce, x, y, k=k, tol=tol, method=method, which=which,
                                max_iter=args.max_iter)
            return {"eigenvalues": r.eigenvalues.tolist(), "hvps": r.hvps,
                    "converged": r.converged, "which": which}
        return run

    def ours_power(retain):
        def run():
            r = top_hessian_eigenvalue(model, ce, x, y, iters=args.max_iter, tol=tol,
                                       retain_graphs=retain)
            return {"eigenvalues": [r.lambda_max], "hvps": r.iterations}
        return run

    def ours_trace():
        r = hessian_trace(model, ce, x, y, samples=args.samples, seed=0)
        return {"trace": r.trace, "se": r.trace_se, "trace_sq": r.trace_sq,
                "trace_sq_se": r.trace_sq_se, "hvps": r.hvps}

    def ours_density():
        r = spectral_density(model, ce, x, y, iters=args.iters, runs=args.runs, seed=0)
        return {"moments": [float(r.moments[1]) * r.n, float(r.moments[2]) * r.n],
                "hvps": r.hvps}

    # first sgdlab row of a task = the floor's row: the same quantity as PyHessian's (largest
    # magnitude; at this point the top eigenvalue is also the largest algebraic one)
    tasks["top-1"]["sgdlab top_eigenvalues k=1 which=LM (Lanczos)"] = ours_top(1, "lanczos", "LM")
    tasks["top-1"]["sgdlab top_eigenvalues k=1 which=LA (Lanczos)"] = ours_top(1, "lanczos", "LA")
    tasks["top-1"]["sgdlab top_eigenvalues k=1 which=LM method=eigsh"] = ours_top(1, "eigsh",
                                                                                  "LM")
    tasks["top-1"]["sgdlab top_hessian_eigenvalue (power iteration)"] = ours_power(True)
    tasks["top-1"]["sgdlab top_hessian_eigenvalue retain_graphs=False (graph per HVP)"] = \
        ours_power(False)
    tasks["top-5"]["sgdlab top_eigenvalues k=5 which=LM (Lanczos)"] = ours_top(5, "lanczos", "LM")
    tasks["top-5"]["sgdlab top_eigenvalues k=5 which=LM method=eigsh"] = ours_top(5, "eigsh",
                                                                                  "LM")
    tasks["top-5"]["sgdlab top_eigenvalues k=5 which=LA (Lanczos)"] = ours_top(5, "lanczos", "LA")
    tasks["trace"]["sgdlab hessian_trace"] = ours_trace
    tasks["density"]["sgdlab spectral_density"] = ours_density
    return tasks, notes


def time_tasks(tasks: dict[str, dict[str, Callable[[], dict]]], rounds: int
               ) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, dict]]:
    """Wall and process-CPU seconds per call, one call per row and round, rows interleaved
    (all rows of all tasks, in an order rotated every round); the last values returned."""
    rows = [(task, name, fn) for task, d in tasks.items() for name, fn in d.items()]
    wall = {name: [] for _, name, _ in rows}
    cpu = {name: [] for _, name, _ in rows}
    values: dict[str, dict] = {}
    for r in range(rounds):
        for i in range(len(rows)):
            _, name, fn = rows[(i + r) % len(rows)]
            w0, c0 = time.perf_counter(), time.process_time()
            values[name] = fn()
            wall[name].append(time.perf_counter() - w0)
            cpu[name].append(time.process_time() - c0)
    return wall, cpu, values


def _agreement(task: str, value: dict, ref: dict | None, exact: dict[str, list[float]]
               ) -> str:
    if task in ("top-1", "top-5"):
        which = value.get("which", "LM")
        ev = sorted(value["eigenvalues"], key=abs if which == "LM" else float, reverse=True)
        want = exact[which][:len(ev)]
        text = ", ".join(f"{v:.7g}" for v in ev)
        err = max(abs(a - b) / abs(b) for a, b in zip(ev, want, strict=True))
        text += f" (max rel error {err:.1e}"
        if ref is not None and ref is not value and which == "LM":
            other = sorted(ref["eigenvalues"], key=abs, reverse=True)
            rel = max(abs(a - b) / abs(b) for a, b in zip(ev, other, strict=True))
            text += f"; to PyHessian {rel:.1e}"
        return text + (")" if value.get("converged", True) else "; NOT converged)")
    if task == "trace":
        if "samples" in value:
            s = value["samples"]
            return f"tr H = {float(s.mean()):.5g} ± {float(s.std()) / len(s) ** 0.5:.2g}"
        text = (f"tr H = {value['trace']:.5g} ± {value['se']:.2g}; "
                f"tr H² = {value['trace_sq']:.5g} ± {value['trace_sq_se']:.2g}")
        if ref is not None:
            s = ref["samples"]
            z = (value["trace"] - float(s.mean())) / (float(s.var()) / len(s)
                                                      + value["se"] ** 2) ** 0.5
            text += f" (difference to PyHessian {z:+.2f} se)"
        return text
    m1, m2 = value["moments"]
    return f"n∫λφ = {m1:.5g}, n∫λ²φ = {m2:.5g}"


def products(model, x, y, rounds: int) -> None:
    """``--products``: the time of one curvature-vector product by each way of computing it,
    interleaved over ``rounds`` rounds (median, min), and each one's relative difference to
    the double backward through the retained gradient graph (``HessianOperator``, the path
    ``hessian_trace`` takes): the same Rademacher v for every row of a round.

    * double backward through the retained graph (current; one graph for all products);
    * the same, four vectors side by side in one vmapped backward (``matmat``, per vector);
    * forward-over-reverse with ``torch.autograd.forward_ad``: dual parameters (tangent v),
      ``torch.autograd.grad`` of the loss; the tangent of the gradient is Hv (a forward and
      a backward with tangents per product: forward mode has no graph to keep);
    * forward-over-reverse with ``torch.func.jvp(torch.func.grad(f))``;
    * the GGN product Gv = Jᵀ(H_ℓ(Jv)) (``curvature="ggn"``, retained graphs; a different
      matrix, so its difference is not an error) and the Hessian block of the last layer.
    """
    import torch.autograd.forward_ad as fwad

    from sgdlab.probes.curvature import HessianOperator

    def ce(out, t):
        return F.cross_entropy(out, t)

    names = [n for n, _ in model.named_parameters()]
    params = [p.detach() for p in model.parameters()]
    sizes = [p.numel() for p in params]
    op = HessianOperator(model, ce, x, y)
    ggn = HessianOperator(model, ce, x, y, curvature="ggn")
    last = [n for n in names if n.startswith(names[-1].rsplit(".", 1)[0] + ".")]
    block = HessianOperator(model, ce, x, y, params=last)
    gen = torch.Generator().manual_seed(0)
    vs = (torch.randint(0, 2, (4 * rounds, op.n), generator=gen) * 2 - 1).double()

    def split(v):
        return [t.view_as(p).to(p.dtype) for t, p in zip(torch.split(v, sizes), params,
                                                         strict=True)]

    def forward_ad(v):
        prim = [p.clone().requires_grad_(True) for p in params]
        with fwad.dual_level():
            duals = {n: fwad.make_dual(p, t) for n, p, t in zip(names, prim, split(v),
                                                                strict=True)}
            loss = ce(torch.func.functional_call(model, duals, (x,)), y)
            g = torch.autograd.grad(loss, prim)
            return torch.cat([fwad.unpack_dual(t).tangent.reshape(-1) for t in g]).double()

    def func_jvp(v):
        def loss_of(ps):
            return ce(torch.func.functional_call(model, ps, (x,)), y)
        primal = dict(zip(names, params, strict=True))
        tangent = dict(zip(names, split(v), strict=True))
        _, hv = torch.func.jvp(torch.func.grad(loss_of), (primal,), (tangent,))
        return torch.cat([hv[n].reshape(-1) for n in names]).double()

    rows: dict[str, Callable] = {
        "double backward, retained graph (current)": op.matvec,
        "matmat of 4, one vmapped backward (per vector)": None,
        "forward_ad over reverse (graph per product)": forward_ad,
        "torch.func.jvp(grad) (graph per product)": func_jvp,
        "GGN product, retained graphs (curvature='ggn')": ggn.matvec,
        f"Hessian block {last} (params=)": None,
    }
    times: dict[str, list[float]] = {k: [] for k in rows}
    diffs: dict[str, float] = {}
    keys = list(rows)
    for r in range(rounds):
        v4 = vs[4 * r:4 * r + 4]
        ref = op.matvec(v4[0])
        for i in range(len(keys)):
            key = keys[(i + r) % len(keys)]
            t0 = time.perf_counter()
            if key.startswith("matmat"):
                got = op.matmat(v4)[0]
                dt = (time.perf_counter() - t0) / 4
            elif key.startswith("Hessian block"):
                got = block.matvec(v4[0, -block.n:])
                dt = time.perf_counter() - t0
            else:
                got = rows[key](v4[0])
                dt = time.perf_counter() - t0
            times[key].append(dt)
            want = ref[-block.n:] if key.startswith("Hessian block") else ref
            if not key.startswith("Hessian block"):
                diffs[key] = float((got - want).norm() / want.norm())
    print("\n| product | ms (median) | min | × current | rel. difference to current |")
    print("|---|---:|---:|---:|---|")
    base = statistics.median(times[keys[0]])
    for key in keys:
        med = statistics.median(times[key])
        diff = f"{diffs[key]:.1e}" if key in diffs else "(a block: not comparable)"
        if key.startswith("GGN"):
            diff += " (G ≠ H)"
        print(f"| {key} | {1000 * med:.1f} | {1000 * min(times[key]):.1f} | "
              f"{med / base:.2f} | {diff} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=1024, help="training examples (one batch)")
    ap.add_argument("--tol", type=float, default=1e-6)
    ap.add_argument("--max-iter", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=100, help="Hutchinson samples")
    ap.add_argument("--iters", type=int, default=100, help="SLQ Lanczos steps")
    ap.add_argument("--runs", type=int, default=1, help="SLQ runs")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--products", action="store_true",
                    help="only time one product by each way of computing it (forward-over-"
                         "reverse, vmapped, GGN, a block) against the current double backward")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Using backward")   # PyHessian's create_graph
    model = models.build("cnn", "mnist1d", seed=0).eval()
    x, y = data.load("mnist1d", seed=0).head(args.n)
    n_params = sum(p.numel() for p in model.parameters())
    if args.products:
        print(f"# one curvature-vector product, MNIST-1D CNN ({n_params:,} parameters), "
              f"{args.n} examples, float32, {args.rounds} interleaved rounds, torch "
              f"{torch.__version__}, {torch.get_num_threads()} thread(s)")
        products(model, x, y, args.rounds)
        return
    print(f"# Hessian probes, MNIST-1D CNN ({n_params:,} parameters), {args.n} examples, "
          f"float32, tol {args.tol:g}, {args.samples} trace samples, SLQ {args.iters} steps × "
          f"{args.runs} run(s), medians of {args.rounds} interleaved rounds, torch "
          f"{torch.__version__}, {torch.get_num_threads()} thread(s)")
    # reference eigenvalues: Lanczos in float64 at tol 1e-10 (not timed)
    m64, x64 = copy.deepcopy(model).double(), x.double()
    exact = {w: top_eigenvalues(m64, lambda o, t: F.cross_entropy(o, t), x64, y, k=5,
                                tol=1e-10, which=w).eigenvalues.tolist() for w in ("LA", "LM")}
    print("# float64 reference (Lanczos, tol 1e-10): largest "
          + ", ".join(f"{v:.9g}" for v in exact["LA"]) + "; largest |λ| "
          + ", ".join(f"{v:.9g}" for v in exact["LM"]))
    tasks, notes = candidates(model, x, y, args)
    wall, cpu, values = time_tasks(tasks, args.rounds)
    print("\n| task | method | s (median) | min | max | HVPs | × PyHessian | × PyHessian "
          "(CPU time) | floor | values |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|---|")
    for task, rows in tasks.items():
        ref = next((n for n in rows if n.startswith("PyHessian")), None)
        for name in rows:
            med = statistics.median(wall[name])
            ratio = cpu_ratio = floor = ""
            if ref is not None:
                ratio = f"{med / statistics.median(wall[ref]):.2f}"
                cpu_ratio = f"{statistics.median(cpu[name]) / statistics.median(cpu[ref]):.2f}"
                if name == list(rows)[1]:
                    ok = med / statistics.median(wall[ref]) <= FLOORS[task]
                    floor = f"≤ {FLOORS[task]}: {'met' if ok else 'NOT met'}"
            hvps = values[name].get("hvps", "")
            agree = _agreement(task, values[name], values.get(ref) if ref else None, exact)
            print(f"| {task} | {name} | {med:.2f} | {min(wall[name]):.2f} | "
                  f"{max(wall[name]):.2f} | {hvps} | {ratio} | {cpu_ratio} | {floor} | "
                  f"{agree} |")
    for note in notes:
        print(f"\n{note}")


if __name__ == "__main__":
    main()
