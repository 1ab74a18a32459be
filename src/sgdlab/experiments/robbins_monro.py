"""Claim 8: Robbins–Monro step sizes (SPEC §4.8).

Model: a 1-D quadratic L(Φ) = ½hΦ² (Φ* = 0) with Gaussian gradient noise,
Φ_t = Φ_{t−1} − η_t (hΦ_{t−1} + σξ_t), ξ_t ~ N(0, 1), Φ_0 = 1, h = σ = 1.
The second moment m_t = E(Φ_t − Φ*)² obeys exactly m_t = (1 − η_t h)² m_{t−1} + η_t² σ².

* η_t = c/t, 2ch > 1: m_t ≈ c²σ²/((2ch − 1) t) asymptotically (the correction is
  O(t^(1−2ch)) relative, so it is slow for 2ch near 1). Judged for t in [10³, T].
* η_t = c/t, 2ch < 1: m_t = K t^(−2ch) + c²σ²/((2ch − 1) t) + …, so the log-log slope
  tends to −2ch; fitted over t in [10³, T] and compared with −2ch within ±0.05.
* constant η: the stationary value solves v = (1 − ηh)² v + η²σ², i.e.
  v = ησ²/(h(2 − ηh)) — SGD stalls at its temperature (§4.2) instead of converging.

All schedules run as one batched tensor of independent chains, simulated step by step
(not from the recursion); standard errors of m_t come from the spread over chains, those
of fitted slopes and time-averaged plateaus from 20 groups of chains. The exact recursion
for m_t is computed alongside, as a check of the simulation and to say from which t the
asymptotic formula holds within 15%.

Verdicts: the kit's ±2 se band (:func:`sgdlab.experiments.kit.verdicts.band`). Until
2026-12-03 this claim used a rule of its own (PASS on the point estimate within the
tolerance, FAIL beyond it by 3 se); the quick-budget verdicts are the same under both. The
constant-η plateau is an exact point prediction (:func:`~sgdlab.experiments.kit.verdicts.z_test`,
|z| ≤ 3, INCONCLUSIVE when se > 2 % of it).

Budgets are data (:data:`BUDGETS`); :func:`measure` simulates (cached), :func:`judge` is a
pure function of its output, :func:`figures` draws it, and :func:`run` is the kit's
:func:`~sgdlab.experiments.kit.run_claim`.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

import numpy as np
import torch

from sgdlab.experiments.base import Check, Claim, Context, Result, torch_threads, verdict
from sgdlab.experiments.kit import run_claim
from sgdlab.experiments.kit.verdicts import band, z_test

CLAIM = Claim("8-robbins-monro", "Robbins–Monro step sizes",
              "With η_t = c/t on a noisy quadratic E(Φ_t − Φ*)² ≈ c²σ²/((2ch − 1)t) when "
              "2ch > 1, decays only as t^(−2ch) when 2ch < 1, and a constant η stalls at "
              "its temperature ησ²/(h(2 − ηh)).", "§4.8")

H, SIGMA, PHI0 = 1.0, 1.0, 1.0
FAST_C = (0.75, 1.0, 2.0)        # 2ch = 1.5, 2, 4
SLOW_C = (0.25, 0.4)             # 2ch = 0.5, 0.8
CONST_ETA = (0.1, 0.01)
REL_TOL, SLOPE_TOL = 0.15, 0.05
PLATEAU_Z, PLATEAU_SE_REL = 3.0, 0.02    # constant η: |z| ≤ 3; INCONCLUSIVE when se > 2 %
SIM_Z = 4.5                              # simulation vs exact recursion, every point
GROUPS = 20
BUDGETS: dict[str, dict[str, Any]] = {
    "smoke": {"T": 2_000, "chains": 1_000, "t_lo": 100},
    "quick": {"T": 20_000, "chains": 4_000, "t_lo": 1_000},
    "full": {"T": 100_000, "chains": 10_000, "t_lo": 1_000},
}


def schedules() -> list[tuple[str, float]]:
    """The simulated schedules in order: ("c/t", c) for 2ch > 1, then for 2ch < 1, then
    ("const", η) (SPEC §4.8); constant-η rows come last in the simulation."""
    return ([("c/t", c) for c in FAST_C] + [("c/t", c) for c in SLOW_C]
            + [("const", e) for e in CONST_ETA])


def record_points(T: int, n: int = 60) -> np.ndarray:
    """The recorded steps: ``n`` log-spaced t in [1, T], rounded, unique."""
    return np.unique(np.round(np.logspace(0, math.log10(T), n)).astype(int))


def _simulate(T: int, chains: int, groups: int, seed: int) -> dict:
    """Step-by-step SGD for every schedule at once: x has shape (S, groups, chains/groups)."""
    with torch_threads(1):
        return _simulate_unthreaded(T, chains, groups, seed)


def _simulate_unthreaded(T: int, chains: int, groups: int, seed: int) -> dict:
    sched = schedules()
    S, per = len(sched), chains // groups
    gen = torch.Generator().manual_seed(seed)
    x = torch.full((S, groups, per), PHI0, dtype=torch.float64)
    noise = torch.empty_like(x)
    val = torch.tensor([v for _, v in sched], dtype=torch.float64).view(S, 1, 1)
    const = torch.tensor([k == "const" for k, _ in sched]).view(S, 1, 1)
    rec = set(record_points(T).tolist())
    ts, m, sd = [], [], []
    t_half = T // 2
    acc = torch.zeros(S, groups, dtype=torch.float64)
    n_rm = sum(k != "const" for k, _ in sched)      # constant-η rows come last
    for t in range(1, T + 1):
        eta = torch.where(const, val, val / t)
        torch.randn(x.shape, generator=gen, out=noise, dtype=torch.float64)
        x.sub_(noise.mul_(SIGMA).add_(x, alpha=H).mul_(eta))   # x −= η(hx + σξ), in place
        if t > t_half:
            acc[n_rm:] += x[n_rm:].pow(2).mean(-1)             # plateaus: constant η only
        if t in rec:
            ts.append(t)
            sq = x.pow(2)
            m.append(sq.mean(-1).tolist())             # (S, groups)
            sd.append(sq.reshape(S, -1).std(-1).tolist())  # (S,), over all chains
    return {"t": ts, "m": m, "sd": sd, "plateau": (acc / (T - t_half)).tolist(),
            "schedules": [list(s) for s in sched]}


def exact_second_moment(ts: np.ndarray, kind: str, v: float) -> np.ndarray:
    """The exact recursion m_t = (1 − η_t h)² m_{t−1} + η_t² σ², m_0 = Φ_0², at the times
    ``ts`` (integers ≥ 1), for η_t = v/t (``kind`` "c/t") or η_t = v ("const") (SPEC §4.8)."""
    T = int(ts.max())
    t = np.arange(1, T + 1, dtype=float)
    eta = np.full(T, v) if kind == "const" else v / t
    m, out = PHI0**2, np.empty(T)
    a, b = (1 - eta * H) ** 2, eta**2 * SIGMA**2
    for i in range(T):
        m = a[i] * m + b[i]
        out[i] = m
    return out[ts - 1]


def measure(ctx: Context, budget: dict[str, Any]) -> dict[str, Any]:
    """Simulate every schedule (:func:`_simulate`, cached): the per-group mean (Φ_t − Φ*)² and
    the all-chain sd at the recorded t, and the constant-η time-averaged plateaus; with the
    budget and the seconds it took (≈ 0 when cached)."""
    T, chains, groups = budget["T"], budget["chains"], GROUPS
    start = time.time()
    sim = ctx.cached({"claim": CLAIM.id, "T": T, "chains": chains, "groups": groups,
                      "seed": 0, "h": H, "sigma": SIGMA, "phi0": PHI0,
                      "schedules": schedules(), "v": 3},
                     lambda: _simulate(T, chains, groups, seed=0))
    return {"sim": sim, "T": T, "chains": chains, "groups": groups, "t_lo": budget["t_lo"],
            "seconds": time.time() - start}


def _arrays(m: dict[str, Any]) -> dict[str, Any]:
    """The simulation as arrays: recorded t, per-group and overall m_t, its se over all
    chains (S × n_t), the schedules, the judged window [t_lo, T] and the exact recursion."""
    sim, groups, chains = m["sim"], m["groups"], m["chains"]
    ts = np.array(sim["t"], dtype=int)
    m_g = np.array(sim["m"]).transpose(1, 2, 0)               # (S, groups, n_t)
    sched = [tuple(s) for s in sim["schedules"]]
    return {"ts": ts, "m_g": m_g, "m": m_g.mean(1),
            "m_se": np.array(sim["sd"]).T / math.sqrt(groups * (chains // groups)),
            "sched": sched, "window": (ts >= m["t_lo"]) & (ts <= m["T"]),
            "exact": [exact_second_moment(ts, kind, v) for kind, v in sched]}


def judge(m: dict[str, Any]) -> list[Check]:
    """The checks of the module docstring from :func:`measure`'s output (pure): the
    simulation against the exact recursion (every point within 4.5 se), c²σ²/((2ch − 1)t)
    for 2ch > 1 (±2 se band of 15 %), the slope −2ch for 2ch < 1 (±2 se band of 0.05), the
    constant-η plateau ησ²/(h(2 − ηh)) (z-test)."""
    a = _arrays(m)
    ts, m_g, mm, m_se, sched, window = (a[k] for k in ("ts", "m_g", "m", "m_se", "sched",
                                                        "window"))
    T, t_lo, groups, chains = m["T"], m["t_lo"], m["groups"], m["chains"]
    checks = []

    # simulation against the exact second-moment recursion (all schedules, all t)
    zmax, zwhere = 0.0, ("", 0)
    for i, (kind, v) in enumerate(sched):
        z = np.abs(mm[i] - a["exact"][i]) / m_se[i]
        if z.max() > zmax:
            zmax, zwhere = float(z.max()), (f"{kind} {v:g}", int(ts[np.argmax(z)]))
    n_pts = len(ts) * len(sched)
    checks.append(Check(
        "simulation vs exact recursion", "m_t = (1 − η_t h)² m_{t−1} + η_t² σ² (exact)",
        f"largest deviation {zmax:.2f} standard errors ({zwhere[0]} at t = {zwhere[1]}) "
        f"over {n_pts} (schedule, t) points",
        "every point within 4.5 standard errors (Bonferroni-level for ~400 points)",
        verdict(zmax <= SIM_Z), {"max_z": zmax, "max_z_schedule": zwhere[0],
                                 "max_z_t": zwhere[1], "points": n_pts, "chains": chains,
                                 "groups": groups, "T": T}, basis="derived"))

    # 2ch > 1: c²σ²/((2ch − 1) t) within 15% for t in [t_lo, T]
    for i, (kind, c) in enumerate(sched):
        if kind != "c/t" or 2 * c * H <= 1:
            continue
        pred = c**2 * SIGMA**2 / ((2 * c * H - 1) * ts)
        ratio = mm[i] / pred
        rse = m_se[i] / pred
        dev = np.abs(ratio - 1)
        j = int(np.argmax(np.where(window, dev, -1)))
        exr = a["exact"][i] / pred
        bad = np.nonzero(np.abs(exr - 1) > REL_TOL)[0]
        t15 = int(ts[bad[-1] + 1]) if len(bad) and bad[-1] + 1 < len(ts) else (
            int(ts[0]) if not len(bad) else None)
        checks.append(Check(
            f"1/t, 2ch = {2 * c * H:g}", f"E(Φ_t − Φ*)² = c²σ²/((2ch − 1)t) = "
            f"{c**2 * SIGMA**2 / (2 * c * H - 1):.4g}/t",
            f"measured/predicted over t ∈ [{t_lo}, {T}]: {ratio[window].min():.3f}–"
            f"{ratio[window].max():.3f}; worst {ratio[j]:.3f} ± {rse[j]:.3f} at t = {ts[j]}",
            f"within {REL_TOL:.0%} at every t in [{t_lo}, {T}] (the ±2 se band: PASS when the "
            f"worst deviation + 2 se ≤ {REL_TOL:.0%}, FAIL when − 2 se > {REL_TOL:.0%})",
            band(float(dev[j]), float(rse[j]), REL_TOL),
            {"c": c, "two_ch": 2 * c * H, "t_lo": t_lo, "T": T, "worst_t": int(ts[j]),
             "worst_ratio": float(ratio[j]), "worst_ratio_se": float(rse[j]),
             "ratio_at_T": float(ratio[-1]), "ratio_at_T_se": float(rse[-1]),
             "exact_ratio_at_t_lo": float(np.interp(t_lo, ts, exr)),
             "exact_ratio_at_T": float(exr[-1]), "exact_within_15pct_from_t": t15,
             "ratios": ratio[window].tolist(), "t": ts[window].tolist()}))

    # 2ch < 1: log-log slope −2ch
    for i, (kind, c) in enumerate(sched):
        if kind != "c/t" or 2 * c * H >= 1:
            continue
        lx = np.log(ts[window])
        slopes = [float(np.polyfit(lx, np.log(m_g[i, g, window]), 1)[0]) for g in range(groups)]
        slope = float(np.polyfit(lx, np.log(mm[i, window]), 1)[0])
        se = float(np.std(slopes, ddof=1) / math.sqrt(groups))
        ex_slope = float(np.polyfit(lx, np.log(a["exact"][i][window]), 1)[0])
        dev = abs(slope + 2 * c * H)
        checks.append(Check(
            f"1/t, 2ch = {2 * c * H:g}", f"slope of log E(Φ_t − Φ*)² vs log t = −2ch = "
            f"{-2 * c * H:g}",
            f"{slope:.4f} ± {se:.4f} over t ∈ [{t_lo}, {T}] (exact recursion: {ex_slope:.4f})",
            f"|slope + 2ch| ≤ {SLOPE_TOL} (the ±2 se band: PASS when |slope + 2ch| + 2 se ≤ "
            f"{SLOPE_TOL}, FAIL when − 2 se > {SLOPE_TOL})",
            band(dev, se, SLOPE_TOL),
            {"c": c, "two_ch": 2 * c * H, "slope": slope, "slope_se": se,
             "predicted": -2 * c * H, "exact_recursion_slope": ex_slope, "t_lo": t_lo, "T": T,
             "tolerance": SLOPE_TOL}))

    # constant η: stationary value ησ²/(h(2 − ηh))
    plateau = np.array(m["sim"]["plateau"])
    for i, (kind, eta) in enumerate(sched):
        if kind != "const":
            continue
        pred = eta * SIGMA**2 / (H * (2 - eta * H))
        meas = float(plateau[i].mean())
        se = float(plateau[i].std(ddof=1) / math.sqrt(groups))
        z = abs(meas - pred) / se
        checks.append(Check(
            f"constant η = {eta:g}", f"plateau ησ²/(h(2 − ηh)) = {pred:.6g}",
            f"{meas:.6g} ± {se:.2g} (time average over t ∈ ({T // 2}, {T}]; "
            f"ratio {meas / pred:.4f})",
            "within 3 standard errors (INCONCLUSIVE if the relative se exceeds 2%)",
            z_test(meas, pred, se, PLATEAU_Z, PLATEAU_SE_REL),
            {"eta": eta, "predicted": pred, "measured": meas, "se": se, "z": z,
             "ratio": meas / pred, "m_at_T": float(mm[i, -1])}))
    return checks


def prediction_curves(m: dict[str, Any]) -> list[tuple[str, np.ndarray, str, np.ndarray]]:
    """(label, measured m_t, prediction label, prediction) per schedule, in check order: the
    asymptote c²σ²/((2ch − 1)t), t^(−2ch) anchored at the window's last point, the plateau."""
    a = _arrays(m)
    ts, mm, sched, window = a["ts"], a["m"], a["sched"], a["window"]
    curves = []
    for i, (kind, c) in enumerate(sched):
        if kind == "c/t" and 2 * c * H > 1:
            curves.append((f"η = {c:g}/t (2ch = {2 * c * H:g})", mm[i], "c²σ²/((2ch − 1)t)",
                           c**2 * SIGMA**2 / ((2 * c * H - 1) * ts)))
    for i, (kind, c) in enumerate(sched):
        if kind == "c/t" and 2 * c * H < 1:
            anchor = mm[i, window][-1] * (ts / ts[window][-1]) ** (-2 * c * H)
            curves.append((f"η = {c:g}/t (2ch = {2 * c * H:g})", mm[i],
                           f"∝ t^(−{2 * c * H:g})", anchor))
    for i, (kind, eta) in enumerate(sched):
        if kind == "const":
            curves.append((f"η = {eta:g} constant", mm[i], "ησ²/(h(2 − ηh))",
                           np.full(len(ts), eta * SIGMA**2 / (H * (2 - eta * H)))))
    return curves


def figures(ctx: Context, m: dict[str, Any]) -> list[str]:
    """Measured E(Φ_t − Φ*)² and each prediction, log-log (:func:`_figure`)."""
    return [_figure(ctx, np.array(m["sim"]["t"], dtype=int), prediction_curves(m))]


def notes(ctx: Context, m: dict[str, Any], budget: dict[str, Any]) -> list[str]:
    """The set-up, and why the asymptotic formulas hold only from some t."""
    return [
        f"1-D quadratic h = {H:g}, σ = {SIGMA:g}, Φ_0 = {PHI0:g}, Gaussian gradient noise; "
        f"{m['chains']} independent chains per schedule simulated step by step for T = "
        f"{m['T']} steps (float64); standard errors of m_t from the spread of (Φ_t − Φ*)² over "
        f"all chains, of slopes and plateaus from {m['groups']} groups of chains; "
        f"{m['seconds']:.1f} s (≈0 if cached).",
        "c²σ²/((2ch − 1)t) is asymptotic: the exact recursion's ratio to it is recorded per "
        "schedule (exact_within_15pct_from_t: the t from which it stays within 15%); for "
        "2ch near 1 the O(t^(1−2ch)) correction decays slowly. For 2ch < 1, m_t = K t^(−2ch) − "
        "c²σ²/((1 − 2ch)t) + …: the negative 1/t term makes the finite-t slope shallower "
        "than −2ch by ≈ (c²σ²/K)·t^(2ch−1); the exact recursion's slope "
        "over the same window is reported next to the measurement."]


def run(ctx: Context) -> Result:
    """Measure, judge, present (see the module docstring) through the kit's
    :func:`~sgdlab.experiments.kit.run_claim`."""
    return run_claim(sys.modules[__name__], ctx)


def _figure(ctx: Context, ts: np.ndarray, curves: list) -> str:
    """Measured E(Φ_t − Φ*)² (solid) and each prediction (dashed, same colour), log-log."""
    from sgdlab.plots import new_figure, save_figure

    fig, axes = new_figure(figsize=(7.5, 5.0))
    ax = axes[0, 0]
    colours = [f"C{k}" for k in range(10)]
    for k, (label, meas, plabel, pred) in enumerate(curves):
        ax.plot(ts, meas, color=colours[k % 10], lw=1.4, label=label)
        ax.plot(ts, pred, color=colours[k % 10], lw=1.0, ls="--",
                label=plabel if k < 1 or plabel != curves[k - 1][2] else None)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("step t")
    ax.set_ylabel("E(Φ_t − Φ*)²")
    ax.set_title("Robbins–Monro on a noisy 1-D quadratic: measured (solid), predicted (dashed)")
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower left", ncol=2)
    path, rel = ctx.figure(CLAIM, "second_moment")
    save_figure(fig, path)
    return rel
