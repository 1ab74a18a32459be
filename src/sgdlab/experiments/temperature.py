"""Claim 1: the learning rate acts as a temperature (SPEC §4.1).

At a fixed η, SGD does not converge to a point: it reaches a stationary distribution Q_η, and
the stationary *full* training loss L(η) = E_{Φ∼Q_η} L(Φ) rises with η. Dividing η by 10
drops the plateau at once — the staircase of the ResNet step-decay curves.

Workload: MNIST-1D (4000 training signals), the `mlp` model (2 × 100 ReLU), plain SGD with
coupled weight decay λ = 10⁻² (SPEC §2.1), batches of B = 32 drawn with replacement (the
setting of the temperature theory, SPEC §1). Weight decay makes the objective
F(Φ) = L(Φ) + (λ/2)‖Φ‖² — the one SGD with coupled decay descends — have a minimum, so a
stationary distribution exists (without it the weights of a classifier keep growing and the
loss keeps falling). The recorded quantity is F on the full training set every 20 steps; the
data term L alone and the test accuracy are reported beside it.

Measurements (each model's records analysed by
:func:`sgdlab.probes.stationary.analyse_records`: MSER-5 burn-in, τ_int, batch means
(10 batches) with batches ≥ 5 τ_int, Geweke drift test — stationarity is detected, not assumed):

1. the η ladder {0.1, 0.15, 0.2, 0.3, 0.4} × seeds (init and batch stream; --quick drops
   η = 0.1, whose relaxation — τ_int ≈ 60 steps, transient ≳ 1/(ηλ) = 1000 steps — does not
   fit its 4000 steps: the stationarity tests failed there when it was tried), all trained at
   once (:func:`sgdlab.sweep.train_many`), every model started from its seed's state after a
   pre-heat at η = 0.2 (shortens the transient; MSER still detects and drops what is left).
   Check (a): every run is stationary (else INCONCLUSIVE). The drift test of n runs uses
   the Bonferroni threshold |z| ≤ Φ⁻¹(1 − 0.0027/(2n)) (3.9 for 25 runs), the single-run
   3σ false-alarm rate for the family — changed after the first --full run, where 2 of 25
   runs had |z| = 3.2 and 3.3 against the uncorrected 3.0 (the order of the ladder and its
   z-scores were not affected). Check (b): L(η) strictly
   increasing for every seed: z = (F(η_{i+1}) − F(η_i))/√(se_i² + se_{i+1}²) > 2 for all
   consecutive pairs → PASS; any z < −2 → FAIL; otherwise INCONCLUSIVE.
2. the step-decay curves: from initialisation, η = 0.4 for T steps, ×0.1, T steps, ×0.1, T
   steps (a multistep schedule, as in the ResNet recipe), seeds at once; full training
   objective and test error every 20 steps. The plateau of a phase is the batch-means
   mean of the last 40 % of its records. Check (c): each ×0.1 decay lowers the plateau by
   more than 3 standard errors, for every seed (PASS), FAIL where some drop is below that.
   (The phase after the second decay is at η = 0.004, whose relaxation time 1/(ηλ) = 25,000
   steps exceeds the budget: its "plateau" is the level reached, which the claim's staircase
   is about.)

Figures: F(η) against η per seed with ±2 se bars; train loss and test error against steps
with the decays marked (the ResNet figure's layout: log-scale training loss, test error).

Budgets are data (:data:`BUDGETS`; the full budget's seeds are max(5, ``--seeds``));
:func:`measure` does all training (two cached parts), :func:`judge` is a pure function of its
output, :func:`figures` draws it, and :func:`run` is the kit's
:func:`~sgdlab.experiments.kit.run_claim`.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np
import torch

from sgdlab import data
from sgdlab.experiments.base import Check, Claim, Context, Result, verdict, worst_verdict
from sgdlab.experiments.kit import run_claim
from sgdlab.experiments.kit.budgets import resolve_seeds
from sgdlab.experiments.kit.verdicts import bonferroni_z, direction
from sgdlab.probes.stationary import analyse_records
from sgdlab.schedules import multistep
from sgdlab.sweep import grid, train_many

CLAIM = Claim("1-temperature", "Learning rate as temperature",
              "At fixed η SGD reaches a stationary distribution whose full training loss rises "
              "with η; dividing η by 10 drops the plateau (the ResNet step-decay curves).",
              "§4.1")

LAM, BATCH, RECORD, N_BATCHES = 1e-2, 32, 20, 10
ETAS = (0.1, 0.15, 0.2, 0.3, 0.4)
PRE_ETA, DECAY_ETA = 0.2, 0.4


_FLOATS = ("mean", "se", "tau_steps", "data_loss", "test_acc")  # "nan" in the JSON cache


#: the training budgets; "min_seeds" (full): max(min_seeds, --seeds) seeds
BUDGETS: dict[str, dict[str, Any]] = {
    "smoke": {"seeds": 2, "pre": 100, "ladder": 400, "phase": 200, "etas": list(ETAS[1:])},
    "quick": {"seeds": 3, "pre": 1500, "ladder": 4000, "phase": 1200, "etas": list(ETAS[1:])},
    "full": {"min_seeds": 5, "pre": 3000, "ladder": 10000, "phase": 4000, "etas": list(ETAS)},
}


def _ladder(ds: data.Dataset, b: dict[str, Any]) -> dict[str, Any]:
    seeds = list(range(b["seeds"]))
    pre = train_many(ds, "mlp", grid(lr=[PRE_ETA], weight_decay=[LAM], seed=seeds),
                     batch_size=BATCH, steps=b["pre"], sampling="replacement",
                     same_batches=False)
    pts = grid(lr=list(b["etas"]), weight_decay=[LAM], seed=seeds)
    start = {n: torch.stack([v[p["seed"]] for p in pts]) for n, v in pre.params.items()}
    # batch streams: seed s's runs share one (common random numbers, which makes the
    # independent-errors z below conservative), different from the pre-heat's
    res = train_many(ds, "mlp", pts, batch_size=BATCH, steps=b["ladder"],
                     eval_every=RECORD, sampling="replacement", same_batches=False,
                     start=start, batch_seed=1000)
    obj = res.train_loss + 0.5 * LAM * res.sq_norm
    zmax = bonferroni_z(len(pts))       # the single-run 3σ rate for the family
    rows = []
    for k, p in enumerate(pts):
        a = analyse_records(obj[k], RECORD, n_batches=N_BATCHES, geweke_z=zmax) \
            if res.diverged_at[k] < 0 else None
        if a is not None and not np.isfinite(a["mean"]):
            # too few records after the burn-in (smoke budgets): the second half, plain se;
            # "ok" stays False, so the stationarity check says INCONCLUSIVE
            half = obj[k, obj.shape[1] // 2:]
            a.update(burn_in=obj.shape[1] // 2, mean=float(half.mean()), tau=1.0,
                     se=float(half.std(ddof=1) / math.sqrt(half.size)))
        burn = a["burn_in"] if a else 0
        rows.append({"lr": p["lr"], "seed": p["seed"], "diverged": bool(res.diverged_at[k] >= 0),
                     "mean": a["mean"] if a else math.nan, "se": a["se"] if a else math.nan,
                     "ok": bool(a["ok"]) if a else False, "reason": a["reason"] if a else
                     "diverged", "burn_in_steps": burn * RECORD,
                     "tau_steps": a["tau"] * RECORD if a else math.nan,
                     "data_loss": float(np.mean(res.train_loss[k, burn:])) if a else math.nan,
                     "test_acc": float(np.nanmean(res.test_acc[k, burn:])) if a else math.nan})
    return {"rows": rows, "seconds": pre.seconds + res.seconds}


def _decay(ds: data.Dataset, b: dict[str, Any]) -> dict[str, Any]:
    t = b["phase"]
    seeds = list(range(b["seeds"]))
    res = train_many(ds, "mlp", grid(lr=[DECAY_ETA], weight_decay=[LAM], seed=seeds),
                     batch_size=BATCH, steps=3 * t, eval_every=RECORD,
                     schedule=multistep([t, 2 * t], 0.1), sampling="replacement",
                     same_batches=False, batch_seed=100)
    obj = res.train_loss + 0.5 * LAM * res.sq_norm
    steps = res.steps
    plateaus = []
    for k in range(len(seeds)):
        per = []
        for ph in range(3):
            lo, hi = ph * t + 0.6 * t, (ph + 1) * t
            sel = (steps > lo) & (steps <= hi)
            window = obj[k, sel]
            n_b = max(4, min(20, window.size // 4))
            a = analyse_records(window, RECORD, n_batches=n_b)
            se = a["se"]
            if not np.isfinite(se):  # too few records for batch means: plain se
                se = float(np.std(window, ddof=1) / math.sqrt(max(window.size, 1)))
                a["mean"] = float(np.mean(window))
            per.append({"mean": float(a["mean"]), "se": float(se), "ok": bool(a.get("ok")),
                        "reason": a.get("reason", ""),
                        "test_err": float(1 - np.mean(res.test_acc[k, sel]))})
        plateaus.append(per)
    return {"steps": steps.tolist(), "objective": obj.tolist(),
            "test_err": (1 - res.test_acc).tolist(), "phase": t, "plateaus": plateaus,
            "diverged": bool((res.diverged_at >= 0).any()), "seconds": res.seconds}


def measure(ctx: Context, budget: dict[str, Any]) -> dict[str, Any]:
    """Train the η ladder and the step-decay runs of the module docstring (each cached):
    ``rows`` (one per (η, seed): stationary mean and se of F = L + (λ/2)‖Φ‖², the
    stationarity analysis, data term, test accuracy), ``decay`` (curves and per-phase
    plateaus), ``etas``, ``seeds`` and the resolved ``budget``."""
    b = resolve_seeds(budget, ctx.seeds)    # min_seeds → seeds = max(min_seeds, --seeds)
    ds = data.load("mnist1d", seed=0)
    key = {"claim": CLAIM.id, "part": "ladder", "version": 2, "lam": LAM, "batch": BATCH,
           "record": RECORD, "pre_eta": PRE_ETA, **b}
    lad = ctx.cached(key, lambda: _ladder(ds, b))
    rows = [{k: (float(v) if k in _FLOATS else v) for k, v in r.items()} for r in lad["rows"]]
    key = {"claim": CLAIM.id, "part": "decay", "lam": LAM, "batch": BATCH, "record": RECORD,
           "eta0": DECAY_ETA, "seeds": b["seeds"], "phase": b["phase"]}
    dec = ctx.cached(key, lambda: _decay(ds, b))
    return {"rows": rows, "decay": dec, "etas": list(b["etas"]),
            "seeds": list(range(b["seeds"])), "budget": b}


def ladder_pairs(rows: list[dict[str, Any]], seeds: list[int]) -> list[dict[str, Any]]:
    """Consecutive η pairs per seed with z = (F(η_{i+1}) − F(η_i))/√(se_i² + se_{i+1}²)
    (check (b) of the module docstring, SPEC §4.1)."""
    table = []
    for s in seeds:
        mine = sorted((r for r in rows if r["seed"] == s), key=lambda r: r["lr"])
        for lo, hi in zip(mine[:-1], mine[1:], strict=True):
            z = (hi["mean"] - lo["mean"]) / math.sqrt(lo["se"] ** 2 + hi["se"] ** 2)
            table.append({"seed": s, "lr_lo": lo["lr"], "lr_hi": hi["lr"],
                          "diff": hi["mean"] - lo["mean"], "z": z})
    return table


def decay_drops(plateaus: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each ×0.1 decay's plateau drop per seed, z = (F_before − F_after)/√(se_b² + se_a²)
    (check (c) of the module docstring, SPEC §4.1)."""
    drops = []
    for s, per in enumerate(plateaus):
        for i in (0, 1):
            a, c = per[i], per[i + 1]
            drops.append({"seed": s, "decay": i + 1, "before": a["mean"], "after": c["mean"],
                          "z": (a["mean"] - c["mean"]) / math.sqrt(a["se"] ** 2 + c["se"] ** 2),
                          "test_err_before": a["test_err"], "test_err_after": c["test_err"]})
    return drops


def judge(m: dict[str, Any]) -> list[Check]:
    """The three checks of the module docstring from :func:`measure`'s output (pure):
    (a) every run stationary, (b) F(η) strictly increasing — each consecutive pair a
    predicted sign at ±2 se (:func:`~sgdlab.experiments.kit.verdicts.direction`, the worst
    over pairs), (c) each ×0.1 decay drops the plateau by more than 3 se, every seed."""
    rows, etas, seeds, dec = m["rows"], m["etas"], m["seeds"], m["decay"]
    checks = []
    n_ok = sum(r["ok"] for r in rows)
    checks.append(Check(
        "stationarity detected", "every (η, seed) run reaches a stationary distribution",
        f"{n_ok}/{len(rows)} runs pass burn-in, batch-length and drift tests"
        + ("" if n_ok == len(rows) else "; failing: " + "; ".join(
            f"η={r['lr']}, seed {r['seed']}: {r['reason']}" for r in rows if not r["ok"])),
        "all runs stationary (else the comparison is INCONCLUSIVE)",
        verdict(True, inconclusive=n_ok < len(rows)), {"runs": rows}, basis="derived"))

    table = ladder_pairs(rows, seeds)
    zs = [t["z"] for t in table]
    zmin = min(zs) if zs else math.nan
    # z > 2 ⇔ PASS, z < −2 ⇔ FAIL for each pair (a z-score: unit se)
    v = worst_verdict(direction(z, 1.0, +1) if math.isfinite(z) else "INCONCLUSIVE"
                      for z in zs)
    mean_by_eta = {e: float(np.mean([r["mean"] for r in rows if r["lr"] == e])) for e in etas}
    sd_by_eta = {e: float(np.std([r["mean"] for r in rows if r["lr"] == e], ddof=1))
                 for e in etas}
    checks.append(Check(
        "L(η) strictly increasing", "F(η) = E L + (λ/2)‖Φ‖² rises with η for every seed",
        "F(η) mean over seeds: " + ", ".join(f"{e:g}: {mean_by_eta[e]:.4f} (sd {sd_by_eta[e]:.4f})"
                                             for e in etas)
        + f"; smallest step z over {len(zs)} consecutive pairs: {zmin:.1f}",
        "z > 2 for every consecutive pair of every seed (FAIL if any z < −2)", v,
        {"pairs": table, "mean_by_eta": mean_by_eta, "sd_by_eta": sd_by_eta, "z_min": zmin,
         "lam": LAM, "batch": BATCH}))

    drops = decay_drops(dec["plateaus"])
    zd = [d["z"] for d in drops]
    ok = not dec["diverged"] and all(np.isfinite(zd)) and min(zd) > 3
    p = np.array([[ph["mean"] for ph in per] for per in dec["plateaus"]])
    checks.append(Check(
        "×0.1 decay lowers the plateau",
        "each ×0.1 decay of η drops the plateau of the training objective",
        f"plateaus (mean over seeds) at η = {DECAY_ETA:g}, {DECAY_ETA / 10:g}, "
        f"{DECAY_ETA / 100:g}: " + ", ".join(f"{v:.4f}" for v in p.mean(0))
        + f"; smallest drop over its se: {min(zd):.1f}",
        "drop > 3 standard errors at both decays, every seed", verdict(ok),
        {"drops": drops, "phase_steps": dec["phase"]}))
    return checks


def notes(ctx: Context, m: dict[str, Any], budget: dict[str, Any]) -> list[str]:
    """The workload, and test accuracy and the data term L at stationarity per η."""
    b, rows, etas = m["budget"], m["rows"], m["etas"]
    return [
        f"Workload: MNIST-1D MLP 2×100, SGD with coupled weight decay λ = {LAM:g}, B = {BATCH}, "
        f"replacement sampling; ladder runs {b['ladder']} steps after a {b['pre']}-step "
        f"pre-heat at η = {PRE_ETA:g}; records every {RECORD} steps. Test accuracy at "
        "stationarity falls with η: " + ", ".join(
            f"{e:g}: {np.mean([r['test_acc'] for r in rows if r['lr'] == e]):.3f}"
            for e in etas) + "; the data term L alone: " + ", ".join(
            f"{e:g}: {np.mean([r['data_loss'] for r in rows if r['lr'] == e]):.4f}"
            for e in etas) + "."]


def run(ctx: Context) -> Result:
    """Measure, judge, present (see the module docstring) through the kit's
    :func:`~sgdlab.experiments.kit.run_claim`."""
    return run_claim(sys.modules[__name__], ctx)


def figures(ctx: Context, m: dict[str, Any]) -> list[str]:
    """F(η) against η per seed (±2 se); train objective and test error along the step-decay
    runs, decays marked."""
    return _figures(ctx, m["rows"], m["etas"], m["seeds"], m["decay"])


def _figures(ctx: Context, rows: list[dict[str, Any]], etas: list[float], seeds: list[int],
             dec: dict[str, Any]) -> list[str]:
    from sgdlab.plots import new_figure, save_figure

    fig, axes = new_figure(figsize=(5.5, 3.8))
    ax = axes[0, 0]
    for s in seeds:
        mine = sorted((r for r in rows if r["seed"] == s), key=lambda r: r["lr"])
        ax.errorbar([r["lr"] for r in mine], [r["mean"] for r in mine],
                    yerr=[2 * r["se"] for r in mine], marker="o", capsize=3, label=f"seed {s}")
    ax.set_xlabel("learning rate η")
    ax.set_ylabel("stationary L + (λ/2)‖Φ‖²")
    ax.set_title("MNIST-1D MLP: stationary loss against η (±2 se)")
    ax.legend(fontsize=8)
    path, rel = ctx.figure(CLAIM, "ladder")
    save_figure(fig, path)
    out = [rel]

    steps = np.array(dec["steps"])
    obj, err = np.array(dec["objective"]), np.array(dec["test_err"])
    t = dec["phase"]
    fig, axes = new_figure(1, 2, figsize=(10, 3.8))
    axes = axes[0]
    for ax, arr, label in ((axes[0], obj, "train L + (λ/2)‖Φ‖²"),
                           (axes[1], 100 * err, "test error (%)")):
        for k in range(arr.shape[0]):
            ax.plot(steps, arr[k], lw=0.8, alpha=0.8, label=f"seed {k}")
        for m in (t, 2 * t):
            ax.axvline(m, color="k", ls=":", lw=0.8)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
    axes[0].set_yscale("log")
    axes[0].set_title(f"η = {DECAY_ETA:g}, ×0.1 at steps {t} and {2 * t}")
    axes[1].legend(fontsize=8)
    path, rel = ctx.figure(CLAIM, "step_decay")
    save_figure(fig, path)
    out.append(rel)
    return out
