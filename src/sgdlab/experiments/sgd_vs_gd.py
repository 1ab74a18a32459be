"""Claim 24: SGD reaches a target in fewer epochs than full-batch GD while B ≪ B_simple, η tuned
per B (SPEC §4.24; seed 004; McCandlish et al. 2018).

The notes (seed 004, /work/shared/seeds/004_9e6536b38d11c4bb.txt, "SGD Recap" slides of the
10-405/605 recitation): SGD is "computationally cheap for one step", needs "more steps to
converge" and has "high variance"; GD is "computationally expensive for one step", needs
"less steps to converge" and has "low variance"; "In most cases, SGD can find the minimizer
much faster". The SPEC's testable form (§4.24): SGD reaches a target in fewer *epochs* than
full-batch GD while B ≪ B_simple (η tuned per B).

Theory (SPEC §4.3–4.4, McCandlish et al. 2018). With η tuned per B, the steps and the epochs
(examples/N) to a target trade off as

    S(B) = S_min (1 + B_crit/B),    E(B) = S(B)·B/N = E_min (1 + B/B_crit),
    E_min = S_min·B_crit/N,          B_crit ≈ B_simple = tr Σ/‖G‖²,

so for B ≪ B_crit a step's noise is what limits η, E(B) ≈ E_min is flat in B, and GD (B = N)
needs E(N)/E(B) ≈ 1 + N/B_crit times more epochs; for B ≫ B_crit a step is as good as a GD
step, S(B) ≈ S_min ≈ S(N): the per-step advantage of the small batch is gone and the epochs
only fall as B/N (with epoch shuffling GD has no noise at all, tr Σ·(1/B − 1/N) — the
formula's 1 + B_crit/N at B = N is off by B_crit/N, a few per cent here).

Workload (chosen for speed after one scouting run of GD and B = 4, 16, 64 on MNIST-1D
logistic regression — cost, the GD learning rate and B_simple along GD, 80 → 400; no
verdict was computed before the tolerances below were fixed): multinomial logistic regression
(sgdlab ``logistic``, 410 parameters, no weight decay) on MNIST-1D (N = 4000, 40 features,
10 classes; not separable, so the optimum is finite), float32, plain SGD at constant η with
epoch shuffling, one :func:`sgdlab.sweep.train_many` run per B (the η grid × seeds as one
vectorised run; seed s sets the initialisation and the batch order, shared across η —
common random numbers). The optimum L* by :func:`sgdlab.data.logreg_optimum` (float64,
L-BFGS + Newton); the target train loss is L* + Δ with Δ = 0.12 nats (≈ 13 % of the
initial excess loss; GD needs ≈ 20 steps to it). Epochs to target: the first evaluation of
the full training loss at or below the target, linearly interpolated with the evaluation
before it (8 evaluations per epoch, every step at B ≥ N/8); a run that does not reach it
within the B's epoch cap (:data:`BUDGETS`) is censored.

η tuned per B: the grid is η_c(B)·2^k, k in the budget's offsets, centred on
η_c(B) = η_GD·B/(B + B₀) (η_GD = 2, B₀ = 200: the scouting run's best η at GD and at small
B); the best η of a B is the one with the fewest seed-mean epochs to target (every seed
must reach it). A best η at either end of the grid is not a tuned η: the checks that use
that B are INCONCLUSIVE and say so.

B_simple (:func:`sgdlab.probes.noise.noise_scale`, per-example statistics over the whole
training set, SPEC §3) is measured along the GD runs at their best η, every step from the
initialisation to the step that reaches the target, every seed; B_simple^ref is the median of
these values (the start and the value at the target are reported too).

Checks (tolerances fixed before the first measured run; kit verdicts, ±2 se; per-seed
quantities paired by seed with GD):

1. (notes) fewer epochs than GD while B ≪ B_simple: for every ladder B < N with
   B ≤ B_simple^ref/8, ln(E(N)/E(B)) > 0 beyond 2 se (``direction``, per seed s: ln E_N,s −
   ln E_B,s, mean ± se over seeds); a B that reaches no target within a cap ≥ GD's epochs
   fails, with a smaller cap it is INCONCLUSIVE;
2. (derived) E(B)/E(N) follows E_min(1 + B/B_crit) with B_crit ≈ B_simple: least squares of
   S(B) = S_min(1 + B_crit/B) on the seed-mean steps to target (claim 4's
   :func:`~sgdlab.experiments.linear_scaling.fit_sb`), |log₁₀(B_crit/B_simple^ref)| ≤ 0.5
   (a factor ≈ 3) at ±k se, k = max(2, t₀.₉₇₅ of the fit's n − 2 dof) (``band``);
   INCONCLUSIVE with fewer than 3 points or any best η at the grid's edge;
3. (derived) the advantage is gone once B ≫ B_simple: for ladder B < N with
   B ≥ 4·B_simple^ref the batch needs as many steps as GD, |ln(S(B)/S(N))| ≤ ln 1.5
   (``band``; the formula predicts S(B)/S(N) ≤ 1.25 there), so its epochs only fall as B/N.
   Disclosed: the first quick run computed this ratio wrongly (E_B·B/(E_N·N) instead of
   E_B·N/(E_N·B)) and reported a FAIL at S(B)/S(N) = 0.23; the formula was corrected, the
   tolerance was not changed.

Budgets (:data:`BUDGETS`) differ in the ladder, the grid and the seeds; smoke runs two B at
short caps and only exercises the code.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

import numpy as np

from sgdlab.experiments.base import Check, Claim, Context, Result, worst_verdict
from sgdlab.experiments.kit import run_claim
from sgdlab.experiments.kit.verdicts import K, band, direction, mean_se
from sgdlab.experiments.linear_scaling import fit_sb, t_k

CLAIM = Claim("24-sgd-fewer-epochs", "SGD needs fewer epochs than GD while B ≪ B_simple",
              "With η tuned per B, SGD at a batch B ≪ B_simple reaches a target train loss in "
              "fewer epochs than full-batch GD; E(B) = E_min(1 + B/B_crit), B_crit ≈ B_simple.",
              "§4.24")

VERSION = 1
DATASET, MODEL = "mnist1d", "logistic"
DELTA = 0.12                   # target = L* + Δ (nats)
ETA_GD, B0 = 2.0, 200.0        # grid centre η_c(B) = η_GD·B/(B + B₀)
EVALS_PER_EPOCH = 8
SMALL = 8.0                    # "B ≪ B_simple": B ≤ B_simple/8
LARGE = 4.0                    # "B ≫ B_simple": B ≥ 4·B_simple
TOL_LOG10 = 0.5                # B_crit ≈ B_simple: |log10 ratio| ≤ 0.5
TOL_STEPS = math.log(1.5)      # B ≫ B_simple: |ln S(B)/S(N)| ≤ ln 1.5
BATCH_SEED = 1000

BUDGETS: dict[str, dict[str, Any]] = {
    # ladder: [B, epoch cap]; B ≥ N means full batch (GD)
    "smoke": {"seeds": 2, "grid": [-1, 0, 1], "ladder": [[64, 2.0], [4000, 20.0]]},
    "quick": {"seeds": 3, "grid": [-2, -1, 0, 1, 2],
              "ladder": [[8, 3.0], [32, 3.0], [128, 5.0], [512, 10.0], [2000, 25.0],
                         [4000, 40.0]]},
    "full": {"seeds": 6, "grid": [-2.5, -2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2, 2.5],
             "ladder": [[4, 3.0], [8, 3.0], [16, 3.0], [32, 3.0], [64, 4.0], [128, 5.0],
                        [256, 8.0], [512, 10.0], [1000, 15.0], [2000, 25.0],
                        [4000, 40.0]]},
}


# ----------------------------------------------------------------------------- pure helpers


def lr_grid(batch: int, offsets: list[float]) -> list[float]:
    """η_c(B)·2^k for k in ``offsets``, η_c(B) = η_GD·B/(B + B₀) (the module docstring): the
    noise-limited η ∝ B for B ≪ B₀, η_GD for B ≫ B₀ (SPEC §4.4)."""
    c = ETA_GD * batch / (batch + B0)
    return [c * 2.0 ** k for k in offsets]


def epochs_to_target(epochs: list[float], loss: list[float], target: float) -> float:
    """The first epoch at which the evaluated loss is ≤ ``target``, linearly interpolated
    between that evaluation and the one before; inf when never (nan losses: diverged)."""
    prev_e, prev_l = None, None
    for e, v in zip(epochs, loss, strict=True):
        if v is None or not math.isfinite(v):
            return math.inf
        if v <= target:
            if prev_l is None or prev_l == v:
                return float(e)
            return float(prev_e + (e - prev_e) * (prev_l - target) / (prev_l - v))
        prev_e, prev_l = e, v
    return math.inf


def tune(run: dict[str, Any]) -> dict[str, Any]:
    """The best η of one B (fewest seed-mean epochs to target, every seed reaching it):
    ``index``, ``lr``, per-seed ``epochs`` at it, ``edge`` (best η at either end of the grid)
    and ``censored`` (no η reached the target); SPEC §4.24's "η tuned per B"."""
    E = np.asarray(run["epochs"], dtype=float)        # (n_lr, seeds)
    means = np.where(np.all(np.isfinite(E), 1), E.mean(1), np.inf)
    if not np.any(np.isfinite(means)):
        return {"index": None, "lr": None, "epochs": None, "edge": False, "censored": True,
                "means": means.tolist()}
    i = int(np.argmin(means))
    return {"index": i, "lr": run["lr"][i], "epochs": E[i].tolist(),
            "edge": i in (0, len(run["lr"]) - 1), "censored": False, "means": means.tolist()}


# ----------------------------------------------------------------------------- measurement


def _ladder_run(ds, batch: int, cap: float, lrs: list[float], seeds: int,
                record: bool) -> dict[str, Any]:
    """One :func:`~sgdlab.sweep.train_many` run at batch ``batch`` over ``lrs`` × seeds for
    ⌈cap·N/B⌉ steps; with ``record`` the parameters of every model after every step."""
    from sgdlab.sweep import train_many

    n = ds.n_train
    steps = max(1, math.ceil(cap * n / batch))
    every = max(1, round(n / (batch * EVALS_PER_EPOCH)))
    pts = [{"lr": lr, "seed": s} for lr in lrs for s in range(seeds)]
    snaps: list[dict] = []

    def cb(t: int, eng) -> None:
        snaps.append(eng.stacked())

    r = train_many(ds, MODEL, pts, batch_size=batch, steps=steps, sampling="shuffle",
                   batch_seed=BATCH_SEED, same_batches=False, eval_every=every,
                   callback=cb if record else None)
    return {"result": r, "snaps": snaps, "steps": steps, "every": every}


def _b_simple_along(ds, snaps: list[dict], models: list[int], seeds: list[int],
                    last: int) -> list[list[float]]:
    """B_simple (:func:`~sgdlab.probes.noise.noise_scale` over the whole training set) of the
    stacked models ``models`` (init seeds ``seeds``) at steps 0..``last`` of a GD run."""
    import torch
    import torch.nn.functional as F

    from sgdlab.models import build
    from sgdlab.probes.noise import noise_scale

    def loss_fn(out, y):
        return F.cross_entropy(out, y, reduction="none")

    out = []
    for k, s in zip(models, seeds, strict=True):
        m = build(MODEL, ds, seed=s)
        row = [noise_scale(m, loss_fn, ds.x_train, ds.y_train).b_simple]
        for t in range(1, last + 1):
            with torch.no_grad():
                for name, p in m.named_parameters():
                    p.copy_(snaps[t - 1][name][k])
            row.append(noise_scale(m, loss_fn, ds.x_train, ds.y_train).b_simple)
        out.append(row)
    return out


def measure(ctx: Context, budget: dict[str, Any]) -> dict[str, Any]:
    """The B ladder with its η grids, the target, B_simple along GD (module docstring),
    cached."""
    key = {"claim": CLAIM.id, "v": VERSION, "delta": DELTA, "eta_gd": ETA_GD, "b0": B0,
           **budget}

    def compute() -> dict[str, Any]:
        from sgdlab import data
        from sgdlab.data import logreg_optimum

        t0 = time.perf_counter()
        ds = data.load(DATASET, seed=0)
        n = ds.n_train
        # L-BFGS only (‖∇L‖ ≤ 1e-5; L* to ~1e-7 nats, far below Δ): Newton polishing of the
        # 4100 parameters would cost more than the smoke budget
        opt = logreg_optimum(ds.x_train, ds.y_train, ds.num_classes, 0.0, gtol=1e-5,
                             max_newton_params=0)
        target = opt.data_loss + DELTA
        seeds = budget["seeds"]
        runs: dict[str, Any] = {}
        gd = None
        for b_req, cap in budget["ladder"]:
            b = min(int(b_req), n)
            lrs = lr_grid(b, budget["grid"])
            lr_run = _ladder_run(ds, b, cap, lrs, seeds, record=b == n)
            r = lr_run["result"]
            ep = (r.steps * b / n).tolist()
            E = [[epochs_to_target(ep, r.train_loss[i * seeds + s].tolist(), target)
                  for s in range(seeds)] for i in range(len(lrs))]
            runs[str(b)] = {"B": b, "cap": cap, "steps": lr_run["steps"], "lr": lrs,
                            "epochs": E, "eval_epochs": ep,
                            "train_loss": r.train_loss.tolist(),
                            "diverged": (r.diverged_at >= 0).tolist()}
            if b == n:
                gd = (runs[str(b)], lr_run["snaps"])
        bs = {"values": [], "start": math.nan, "at_target": math.nan, "median": math.nan,
              "steps": []}
        if gd is not None:
            run, snaps = gd
            best = tune(run)
            if not best["censored"]:
                last = min(len(snaps), math.ceil(max(best["epochs"])))
                i = best["index"]
                vals = _b_simple_along(ds, snaps, [i * seeds + s for s in range(seeds)],
                                       list(range(seeds)), last)
                flat = [v for row in vals for v in row if math.isfinite(v)]
                bs = {"values": vals, "steps": list(range(last + 1)),
                      "start": float(np.median([row[0] for row in vals])),
                      "at_target": float(np.median([row[-1] for row in vals])),
                      "median": float(np.median(flat)) if flat else math.nan}
        return {"runs": runs, "n_train": n, "target": target, "loss_star": opt.data_loss,
                "delta": DELTA, "seeds": seeds, "grid": budget["grid"], "b_simple": bs,
                "seconds": time.perf_counter() - t0}

    return ctx.cached(key, compute)


# ----------------------------------------------------------------------------- judgement (pure)


def _fmt(x: float, d: int = 2) -> str:
    return f"{x:.{d}f}" if math.isfinite(x) else "—"


def judge(m: dict[str, Any]) -> list[Check]:
    """The three checks of the module docstring from :func:`measure`'s output."""
    n = m["n_train"]
    runs = {int(b): r for b, r in m["runs"].items()}
    best = {b: tune(r) for b, r in runs.items()}
    ladder = sorted(runs)
    bsr = m["b_simple"]["median"]
    gd = best.get(n)
    gd_ok = gd is not None and not gd["censored"]
    gd_mean = float(np.mean(gd["epochs"])) if gd_ok else math.nan

    def edge_note(bs: list[int]) -> str:
        e = [b for b in bs if best[b]["edge"]]
        return (f"; best η at the edge of the grid for B = {e} (not tuned: INCONCLUSIVE)"
                if e else "")

    # 1. (notes) fewer epochs than GD for B ≪ B_simple
    small = [b for b in ladder if b < n and math.isfinite(bsr) and b <= bsr / SMALL]
    per, rows, texts = {}, {}, []
    for b in small:
        t = best[b]
        if not gd_ok:
            per[b] = "INCONCLUSIVE"
            texts.append(f"B={b}: GD reached no target")
            continue
        if t["censored"]:
            per[b] = "FAIL" if runs[b]["cap"] >= gd_mean else "INCONCLUSIVE"
            texts.append(f"B={b}: no η reached the target within {runs[b]['cap']:g} epochs")
            continue
        d, se = mean_se(math.log(eg / eb) for eg, eb in zip(gd["epochs"], t["epochs"],
                                                            strict=True))
        v = direction(d, se, +1)
        if t["edge"] or gd["edge"]:
            v = "INCONCLUSIVE"
        per[b] = v
        eb, ebse = mean_se(t["epochs"])
        rows[b] = {"E": eb, "E_se": ebse, "lr": t["lr"], "log_ratio": d, "se": se,
                   "edge": t["edge"]}
        texts.append(f"B={b}: E = {_fmt(eb)} ± {_fmt(ebse)} epochs (η = {t['lr']:.3g}), "
                     f"E(N)/E(B) = {_fmt(math.exp(d), 1)}× (ln {_fmt(d)} ± {_fmt(se)})")
    gd_txt = (f"GD: E = {_fmt(gd_mean)} ± {_fmt(mean_se(gd['epochs'])[1])} epochs (η = "
              f"{gd['lr']:.3g})" if gd_ok else "GD reached no target")
    v1 = worst_verdict(per.values()) if small else "INCONCLUSIVE"
    c1 = Check(
        "fewer epochs than GD while B ≪ B_simple",
        f"η tuned per B: E(B) < E(N) for B ≤ B_simple/{SMALL:g} = {_fmt(bsr / SMALL, 0)} "
        f"(target train loss L* + {m['delta']:g} = {m['target']:.4f})",
        "; ".join(texts + [gd_txt]) + f" ({m['seeds']} seeds)" + edge_note(small + [n]),
        f"ln(E(N)/E(B)) > 0 beyond ±{K:g} se (kit direction, paired by seed); INCONCLUSIVE "
        "where a best η sits at the grid's edge",
        v1, {"judged": small, "per_B_verdict": per, "rows": rows, "gd_epochs": gd_mean,
             "gd_lr": gd["lr"] if gd_ok else None, "b_simple": bsr})

    # 2. (derived) the E(B) curve and B_crit against B_simple
    pts = [b for b in ladder if not best[b]["censored"]]
    S = [float(np.mean(best[b]["epochs"])) * n / b for b in pts]
    fit = fit_sb(pts, S)
    bc, lse = fit["B_crit"], fit["log10_B_crit_se"]
    dev = math.log10(bc / bsr) if bc > 0 and bsr > 0 else math.nan
    k2 = t_k(len(pts) - 2)
    edge2 = any(best[b]["edge"] for b in pts)
    v2 = ("INCONCLUSIVE" if len(pts) < 3 or edge2 or not math.isfinite(k2)
          else band(dev, lse, TOL_LOG10, k2))
    cens = [b for b in ladder if best[b]["censored"]]
    c2 = Check(
        "E(B) = E_min(1 + B/B_crit), B_crit ≈ B_simple",
        f"steps to target S(B) = E(B)·N/B follow S_min(1 + B_crit/B) with B_crit ≈ B_simple "
        f"(median along GD) = {_fmt(bsr, 0)}",
        "E(B)/E(N): " + ", ".join(f"B={b}: {_fmt(float(np.mean(best[b]['epochs'])) / gd_mean, 3)}"
                                  for b in pts)
        + (f"; not reached at B = {cens}" if cens else "")
        + f"; fit S_min = {_fmt(fit['S_min'], 1)}, B_crit = {_fmt(bc, 0)} (±{_fmt(lse)} in "
          f"log10), R² = {_fmt(fit['r2'], 3)}; log10(B_crit/B_simple) = {_fmt(dev)}"
        + edge_note(pts),
        f"|log10(B_crit/B_simple)| ≤ {TOL_LOG10:g} (kit band at ±k se, k = max(2, t_0.975 of "
        f"n − 2 dof) = {_fmt(k2)}); ≥ 3 B reach the target; no best η at the grid's edge",
        v2, {"B": pts, "S": S, **fit, "b_simple": bsr, "log10_ratio": dev, "k": k2,
             "edge": edge2}, basis="derived")

    # 3. (derived) no per-step advantage for B ≫ B_simple
    large = [b for b in ladder if b < n and math.isfinite(bsr) and b >= LARGE * bsr]
    per3, texts3 = {}, []
    for b in large:
        t = best[b]
        if t["censored"] or not gd_ok:
            per3[b] = "INCONCLUSIVE"
            texts3.append(f"B={b}: not reached")
            continue
        d, se = mean_se(math.log(eb * n / (eg * b)) for eg, eb in zip(
            gd["epochs"], t["epochs"], strict=True))
        per3[b] = "INCONCLUSIVE" if (t["edge"] or gd["edge"]) else band(d, se, TOL_STEPS)
        texts3.append(f"B={b}: S(B)/S(N) = {_fmt(math.exp(d), 3)} (ln {_fmt(d, 3)} ± "
                      f"{_fmt(se, 3)}), E(B)/E(N) = {_fmt(math.exp(d) * b / n, 3)}")
    c3 = Check(
        "no per-step advantage once B ≫ B_simple",
        f"for B ≥ {LARGE:g}·B_simple = {_fmt(LARGE * bsr, 0)} a step is as good as a GD step: "
        "S(B) ≈ S(N), the epochs fall only as B/N",
        ("; ".join(texts3) if large else "no ladder B < N that far above B_simple")
        + edge_note(large + [n] if large else []),
        f"|ln(S(B)/S(N))| ≤ ln 1.5 (kit band, ±{K:g} se, paired by seed)",
        worst_verdict(per3.values()) if large else "INCONCLUSIVE",
        {"judged": large, "per_B_verdict": per3}, basis="derived")
    return [c1, c2, c3]


# ----------------------------------------------------------------------------- presentation


def figures(ctx: Context, m: dict[str, Any]) -> list[str]:
    """E(B) with the fit and B_simple; the best η per B inside its grid; the train loss at the
    best η against epochs; B_simple along GD."""
    from sgdlab.plots import new_figure, save_figure

    n = m["n_train"]
    runs = {int(b): r for b, r in m["runs"].items()}
    best = {b: tune(r) for b, r in runs.items()}
    pts = [b for b in sorted(runs) if not best[b]["censored"]]
    bsr = m["b_simple"]["median"]
    fig, axes = new_figure(1, 4, figsize=(19, 4.2))
    ax, ax2, ax3, ax4 = axes[0]
    E = [float(np.mean(best[b]["epochs"])) for b in pts]
    se = [mean_se(best[b]["epochs"])[1] for b in pts]
    ax.errorbar(pts, E, yerr=[s if math.isfinite(s) else 0 for s in se], fmt="o", capsize=3,
                label="epochs to target, η tuned")
    fit = fit_sb(pts, [e * n / b for e, b in zip(E, pts, strict=True)])
    if math.isfinite(fit["B_crit"]) and pts:
        g = np.geomspace(min(pts), max(pts), 60)
        ax.plot(g, fit["S_min"] * (1 + fit["B_crit"] / g) * g / n, "-",
                label=f"E_min(1 + B/B_crit), B_crit = {fit['B_crit']:.0f}")
    if math.isfinite(bsr):
        ax.axvline(bsr, color="gray", ls=":", label=f"B_simple (median) {bsr:.0f}")
    if pts:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
    ax.set_xlabel("batch size B (N = full batch)")
    ax.set_ylabel("epochs to target")
    ax.legend(fontsize=7)
    for b in sorted(runs):
        lrs = runs[b]["lr"]
        ax2.plot([b] * len(lrs), lrs, "_", color="gray", ms=10)
        if best[b]["lr"] is not None:
            ax2.plot(b, best[b]["lr"], "o", color="tab:red" if best[b]["edge"] else "tab:blue")
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("log")
    ax2.set_xlabel("batch size B")
    ax2.set_ylabel("η grid (ticks) and best η (red: at an edge)")
    for b in pts:
        r, t = runs[b], best[b]
        rows = np.asarray(r["train_loss"], dtype=float)[t["index"] * m["seeds"]:
                                                       (t["index"] + 1) * m["seeds"]]
        ax3.plot(r["eval_epochs"], np.nanmean(rows, 0), lw=1, label=f"B = {b}")
    ax3.axhline(m["target"], color="k", ls="--", lw=0.8, label="target")
    if pts:
        ax3.set_xscale("log")
    ax3.set_xlabel("epoch")
    ax3.set_ylabel("train loss at the best η (seed mean)")
    ax3.legend(fontsize=7)
    for row in m["b_simple"]["values"]:
        ax4.plot(m["b_simple"]["steps"], row, lw=1)
    if math.isfinite(bsr):
        ax4.axhline(bsr, color="k", ls=":", lw=0.8, label=f"median {bsr:.0f}")
        ax4.legend(fontsize=7)
    if any(math.isfinite(v) and v > 0 for row in m["b_simple"]["values"] for v in row):
        ax4.set_yscale("log")
    ax4.set_xlabel("GD step (best η, each seed)")
    ax4.set_ylabel("B_simple = tr Σ/‖G‖²")
    path, rel = ctx.figure(CLAIM, "ladder")
    save_figure(fig, path)
    return [rel]


def notes(ctx: Context, m: dict[str, Any], budget: dict[str, Any]) -> list[str]:
    """What was run, for the report (below the checks)."""
    n = m["n_train"]
    bs = m["b_simple"]
    out = [f"MNIST-1D logistic regression (N = {n}), plain SGD at constant η with epoch "
           f"shuffling, {m['seeds']} seeds; L* = {m['loss_star']:.4f}, target L* + "
           f"{m['delta']:g}; η grid η_c(B)·2^k, k ∈ {m['grid']}, η_c = {ETA_GD:g}·B/(B + "
           f"{B0:g}). B_simple along GD: start {_fmt(bs['start'], 0)}, at the target "
           f"{_fmt(bs['at_target'], 0)}, median {_fmt(bs['median'], 0)}."
           + ("" if ctx.mode == "full" else
              f" {ctx.mode} budget: a shorter ladder, a coarser grid and fewer seeds.")]
    out.append("B | epoch cap | best η (grid) | epochs to target (mean ± se)")
    for b, r in sorted(((int(k), v) for k, v in m["runs"].items())):
        t = tune(r)
        if t["censored"]:
            out.append(f"{b} | {r['cap']:g} | — ({r['lr'][0]:.3g}–{r['lr'][-1]:.3g}) | "
                       "not reached")
            continue
        e, s = mean_se(t["epochs"])
        out.append(f"{b} | {r['cap']:g} | {t['lr']:.3g}{' (edge)' if t['edge'] else ''} "
                   f"({r['lr'][0]:.3g}–{r['lr'][-1]:.3g}) | {_fmt(e)} ± {_fmt(s)}")
    out.append(f"Training time {m['seconds']:.1f} s (when it was computed).")
    return out


def run(ctx: Context) -> Result:
    """Measure, judge, present (see the module docstring) through the kit's
    :func:`~sgdlab.experiments.kit.run_claim`."""
    return run_claim(sys.modules[__name__], ctx)
