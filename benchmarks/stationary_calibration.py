"""Calibration of the standard error reported by ``stationary_loss`` (SPEC §4.1).

Problem (the diagonal noisy quadratic of claim 6, defined here so that this file does not
depend on the claim's code): d = 20, h_i geometric in [0.5, 1], N = 1000 examples
x_b ~ N(0, I) (NumPy seed 0), per-example loss ½ Σ_i h_i (Φ_i − x_bi)², B = 1 with
replacement, EMA momentum (v ← βv + ĝ, Φ ← Φ − η′(1 − β)v) with β ∈ {0, 0.9, 0.99}. The
gradient noise h(x̄ − x_b) does not depend on Φ, so the stationary excess L − L* is exact
(discrete Lyapunov equation per mode, :func:`exact_excess`) and every run gives
z = (excess − exact)/se. A calibrated se gives mean z ≈ 0 and sd(z) ≈ 1; over n repeats
sd(z) has its own standard error ≈ 1/√(2(n − 1)). Floor (issue 11): |mean z| ≤ 0.2 and
|sd(z) − 1| ≤ 2/√(2(n − 1)) on every row.

Settings: the momentum claim's quick budget, K = 64 chains, rel_se = 0.025, min_steps = 500,
max_steps = 40 000, record_every = 7 (what ``auto_record_every`` gives here); chains start
from the exact β = 0 stationary distribution (as in the claim; momentum buffers at zero), or
all at Φ* (``same_start``: a real transient the cut must remove).

Two engines run the same dynamics and the same run-length control and analysis
(:func:`sgdlab.probes.stationary.run_adaptive`, i.e. ``analyse_records``):

* ``numpy`` (default): the K chains simulated directly in NumPy — about 30× faster than
  torch on this 20-parameter model, so that n = 400 repeats per row take seconds;
* ``torch``: ``stationary_loss`` itself, end to end (vmap engine); 2–8 s a run on one
  thread, so n = 100 takes 5–15 min a row.

Each row: n repeats (seeds 0..n − 1; seed s draws the start and the batch indices), mean z,
sd(z), the normal score of the Student-t statistic (sd of Φ⁻¹(F_{t,dof}(z)), what a t
interval's coverage sees), mean steps, reported τ_int and burn-in, and PASS/FAIL against
the floor. Rows named ``…-mser`` use the pre-2026-12 burn-in (MSER-5 on the same records)
for comparison.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/stationary_calibration.py
        [--seeds 400] [--engine numpy|torch] [--rows sgd-1e-2,...] [--list]

Default: the seven main rows, numpy engine, 400 seeds, ≈ 3 min on one thread. The results
and the reading are in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from torch import nn

from sgdlab.probes.stationary import BURN_IN, run_adaptive, stationary_loss

DIM, N, BATCH = 20, 1000, 1
QUICK = {"chains": 64, "rel_se": 0.025, "min_steps": 500, "max_steps": 40_000}
RECORD = 7

# name: (lr η′, beta, options)
ROWS: dict[str, tuple[float, float, dict]] = {
    "sgd-1e-2": (1e-2, 0.0, {}),
    "mom0.9-1e-2": (1e-2, 0.9, {}),
    "mom0.99-1e-2": (1e-2, 0.99, {}),
    "sgd-2e-3": (2e-3, 0.0, {}),
    "mom0.9-2e-3": (2e-3, 0.9, {}),
    "sgd-1e-2-same_start": (1e-2, 0.0, {"same_start": True}),
    "mom0.9-1e-2-same_start": (1e-2, 0.9, {"same_start": True}),
    # optional rows
    "mom0.99-2e-3": (2e-3, 0.99, {}),
    "mom0.9-1e-2-bf10": (1e-2, 0.9, {"batch_factor": 10.0}),
    "mom0.99-1e-2-fixed1300": (1e-2, 0.99, {"fixed": 1300}),
    "sgd-1e-2-mser": (1e-2, 0.0, {"burn_in": "mser"}),
    "mom0.99-1e-2-mser": (1e-2, 0.99, {"burn_in": "mser"}),
    "sgd-2e-3-mser": (2e-3, 0.0, {"burn_in": "mser"}),
    "sgd-1e-2-same_start-mser": (1e-2, 0.0, {"same_start": True, "burn_in": "mser"}),
}
DEFAULT_ROWS = list(ROWS)[:7]


def problem() -> dict:
    rng = np.random.default_rng(0)
    h = np.geomspace(0.5, 1.0, DIM)
    x = rng.standard_normal((N, DIM))
    v = x.var(0)
    return {"h": h, "x": x, "xbar": x.mean(0), "sigma2": h**2 * v,
            "L_star": 0.5 * float((h * v).sum())}


def exact_excess(lr: float, beta: float, h: np.ndarray, sigma2: np.ndarray,
                 batch: int = BATCH) -> float:
    """Stationary L − L* of EMA momentum per mode: state (Φ_i − x̄_i, m_i = (1 − β)v_i),
    m' = βm + (1 − β)(hΦ + ξ), Φ' = Φ − η′m', Var ξ = σ_i²/B; P = APAᵀ + bbᵀσ²/B."""
    from scipy.linalg import solve_discrete_lyapunov

    tot = 0.0
    for hi, si in zip(h, sigma2, strict=True):
        a = np.array([[1 - lr * (1 - beta) * hi, -lr * beta], [(1 - beta) * hi, beta]])
        b = np.array([-lr * (1 - beta), 1 - beta])
        p = solve_discrete_lyapunov(a, np.outer(b, b) * si / batch)
        tot += 0.5 * hi * p[0, 0]
    return float(tot)


def start(prob: dict, lr: float, seed: int, same_start: bool) -> np.ndarray:
    """(K, d) starting points: the exact β = 0 stationary law, or Φ* for every chain."""
    k = QUICK["chains"]
    if same_start:
        return np.tile(prob["xbar"], (k, 1))
    var0 = lr * prob["sigma2"] / (BATCH * prob["h"] * (2 - lr * prob["h"]))
    rng = np.random.default_rng(10_000 + seed)
    return prob["xbar"] + rng.standard_normal((k, DIM)) * np.sqrt(var0)


class NumpyChains:
    """K chains of EMA-momentum SGD on the problem, vectorised in NumPy; batch indices drawn
    a block of 256 steps at a time."""

    def __init__(self, prob: dict, lr: float, beta: float, phi0: np.ndarray, seed: int):
        self.p, self.lr, self.beta = prob, lr, beta
        self.phi = phi0.copy()
        self.v = np.zeros_like(phi0)
        self.rng = np.random.default_rng(seed)
        self.block: np.ndarray | None = None
        self.pos = 256

    def step(self) -> None:
        if self.pos >= 256:
            self.block = self.p["x"][self.rng.integers(N, size=(256, self.phi.shape[0]))]
            self.pos = 0
        g = self.p["h"] * (self.phi - self.block[self.pos])  # type: ignore[index]
        self.pos += 1
        if self.beta:
            self.v *= self.beta
            self.v += g
            self.phi -= self.lr * (1 - self.beta) * self.v
        else:
            self.phi -= self.lr * g

    def losses(self) -> np.ndarray:
        """Excess L(Φ) − L* = ½ Σ h (Φ − x̄)² of every chain."""
        return 0.5 * ((self.phi - self.p["xbar"]) ** 2 * self.p["h"]).sum(1)


class _DiagQuad(nn.Module):
    def __init__(self, h: np.ndarray, phi: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("h", torch.as_tensor(h, dtype=torch.float64))
        self.phi = nn.Parameter(torch.as_tensor(phi, dtype=torch.float64).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((self.phi - x) ** 2 * self.h).sum(-1)


def _identity(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return out


def one_run(prob: dict, lr: float, beta: float, seed: int, engine: str = "numpy",
            fixed: int | None = None, same_start: bool = False, batch_factor: float = 5.0,
            burn_in: float | str = BURN_IN) -> dict:
    """One run; returns excess, se, exact, z, dof, steps, tau (steps), burn-in (steps)."""
    kw = dict(QUICK)
    chains = kw.pop("chains")
    if fixed is not None:
        kw.update(min_steps=fixed, max_steps=fixed, rel_se=1e9)
    phi0 = start(prob, lr, seed, same_start)
    exact = exact_excess(lr, beta, prob["h"], prob["sigma2"])
    if engine == "numpy":
        sim = NumpyChains(prob, lr, beta, phi0, seed)
        stats, steps, _, _ = run_adaptive(sim.step, sim.losses, RECORD, reference=0.0,
                                          batch_factor=batch_factor, burn_in=burn_in, **kw)
        excess, se, dof = stats["mean"], stats["se"], stats["dof"]
        tau, burn = stats["tau"] * RECORD, stats["burn_in"] * RECORD
    else:
        model = _DiagQuad(prob["h"], prob["xbar"])
        x = torch.as_tensor(prob["x"], dtype=torch.float64)
        r = stationary_loss(model, _identity, x, torch.zeros(N, 0, dtype=torch.float64), lr,
                            BATCH, optimizer="momentum",
                            optimizer_options={"beta": beta, "style": "ema"},
                            phi0={"phi": torch.as_tensor(phi0)}, chains=chains, seed=seed,
                            reference=prob["L_star"], batch_factor=batch_factor,
                            record_every=RECORD, num_threads=None, burn_in=burn_in, **kw)
        excess, se, dof, steps = r.excess, r.se, r.dof, r.steps
        tau, burn = r.tau_int, r.burn_in
    return {"excess": excess, "se": se, "exact": exact, "z": (excess - exact) / se,
            "dof": dof, "steps": steps, "tau": tau, "burn_in": burn}


def study(name: str, seeds: int, engine: str = "numpy") -> dict:
    """Repeat row ``name`` over ``seeds`` seeds; summary statistics of z and the verdict."""
    from scipy import stats as sstats

    lr, beta, opts = ROWS[name]
    prob = problem()
    t0 = time.perf_counter()
    runs = [one_run(prob, lr, beta, s, engine, **opts) for s in range(seeds)]
    z = np.array([r["z"] for r in runs])
    dof = np.array([r["dof"] for r in runs])
    zt = sstats.norm.ppf(sstats.t.cdf(z, dof))
    n = z.size
    sdz = float(z.std(ddof=1))
    sd_se = 1.0 / math.sqrt(2 * (n - 1))
    mean_z = float(z.mean())
    ok = abs(mean_z) <= 0.2 and abs(sdz - 1.0) <= 2 * sd_se
    return {"row": name, "engine": engine, "n": n, "mean_z": mean_z,
            "mean_z_se": sdz / math.sqrt(n), "sd_z": sdz, "sd_z_se": sd_se,
            "sd_zt": float(zt.std(ddof=1)), "pass": ok,
            "steps": float(np.mean([r["steps"] for r in runs])),
            "tau": float(np.mean([r["tau"] for r in runs])),
            "burn_in": float(np.mean([r["burn_in"] for r in runs])),
            "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=400)
    ap.add_argument("--engine", choices=("numpy", "torch"), default="numpy")
    ap.add_argument("--rows", default=",".join(DEFAULT_ROWS))
    ap.add_argument("--list", action="store_true")
    a = ap.parse_args()
    if a.list:
        for k, v in ROWS.items():
            print(k, v, "(default)" if k in DEFAULT_ROWS else "")
        return
    torch.set_num_threads(1)
    print("| row | engine | n | mean z | sd(z) | sd(t-score) | floor | steps | τ_int | "
          "burn-in | s |\n|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|", flush=True)
    for name in a.rows.split(","):
        s = study(name, a.seeds, a.engine)
        print(f"| {s['row']} | {s['engine']} | {s['n']} | {s['mean_z']:+.3f} ± "
              f"{s['mean_z_se']:.3f} | {s['sd_z']:.3f} ± {s['sd_z_se']:.3f} | "
              f"{s['sd_zt']:.3f} | {'PASS' if s['pass'] else 'FAIL'} | {s['steps']:.0f} | "
              f"{s['tau']:.0f} | {s['burn_in']:.0f} | {s['seconds']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
