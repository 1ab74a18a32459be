"""Claim 21: a small learning rate trained longer generalises as well (SPEC §4.21; seed 003,
Li, Lyu & Arora 2020).

The notes (seed 003, /work/shared/seeds/003_11772880c4f89eae.txt, slides 6–7, "Conventional
wisdom challenged"): "(Against Wisdom 2) Small LR can generalize equally well as large LR
[…] Resnet with BN trained by SGD with diff. LR schedules on CIFAR10 […] Same setting, longer
training!" — against "Wisdom 2: To achieve the best generalization, LR must be large
initially for quite a few epochs."

Theory (SPEC §4.5, claim 5). For a scale-invariant network with coupled weight decay λ the
speed of learning is the intrinsic LR ηλ: η/10 at the same λ is ηλ/10, and 10× the steps is
the same intrinsic time ηλ·t. The norm equilibrates in τ = 1/(4ηλ(1 − γ/2)) steps (≈ 1/(4ηλ)),
so both runs end at an equilibrium when the run is many τ long. The notes predict equal
generalisation. What the theory adds (derived): the two equilibria are those of different
ηλ, so their train losses differ — the smaller intrinsic LR has the lower stationary loss
(claim 5 found a factor 2 in ηλ resolvable in train loss) — "generalises as well" is then a
statement about test metrics only.

Workload: claim 5's (:mod:`sgdlab.experiments.intrinsic_lr`, run with
:func:`sgdlab.experiments.last_decay.train_segment`): MNIST-1D, ``scale_invariant`` model (2
normalised layers of width 64, fixed head), B = 64 with replacement, float32, each seed its own
init and batch stream (the same for both arms). λ = 0.5: arm L at η = 0.1 for T steps (ηλ =
0.05, τ = 5), arm S at η = 0.01 for 10T steps (ηλ = 0.005, τ = 50). Final metrics: the mean
over the evaluations in the last 25 % of each run (test accuracy, test loss, full train loss,
‖Φ‖²).

Checks (tolerances fixed before measuring; S − L paired by seed, mean ± se over seeds;
:func:`~sgdlab.experiments.kit.verdicts.band`: PASS when mean ± 2 se lies inside the band,
FAIL when outside by more than 2 se, else INCONCLUSIVE):

1. (notes) equal generalisation: |Δ test accuracy| ≤ 0.02 (absolute) and |Δ test loss| ≤ 5 %
   of arm L's mean; worst of the two. INCONCLUSIVE when arm S's window starts earlier than
   6 τ_S.
2. (derived) different equilibria: arm S's train loss is below arm L's
   (:func:`~sgdlab.experiments.kit.verdicts.direction`, 2 se).
3. (derived; added after the first quick run, which gave check 1 FAIL with S − L test acc
   +0.208 ± 0.005: at constant η the large LR sits at a much hotter equilibrium) the setting
   of the notes' figure, where both schedules end at the same small LR: arm LD, T steps at η
   then 9T at η/10 (the same total steps as S), against arm S, with check 1's tolerances.

Quick leaves out: seeds (6 instead of 16) and length (T = 80 instead of 300 steps).
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from sgdlab import data
from sgdlab.experiments.base import Check, Claim, Context, Result, worst_verdict
from sgdlab.experiments.intrinsic_lr import BATCH, MIN_TAUS, WIDTH, relaxation_time
from sgdlab.experiments.kit import run_claim
from sgdlab.experiments.kit.verdicts import K, band, direction, paired
from sgdlab.experiments.last_decay import join, split, train_segment, window_means

CLAIM = Claim("21-small-lr-longer", "Small LR trained longer generalises as well",
              "For a normalised network with weight decay λ, η/10 trained 10× as many steps "
              "reaches the same test accuracy and loss as η.", "§4.21")

VERSION = 2
BUDGETS: dict[str, dict[str, Any]] = {
    "smoke": {"seeds": 2, "T": 5, "evals": 4},
    "quick": {"seeds": 6, "T": 80, "evals": 10},
    "full": {"seeds": 16, "T": 300, "evals": 20},
}
ETA, LAMBDA, FACTOR = 0.1, 0.5, 10
TOL_ACC, TOL_LOSS = 0.02, 0.05
WINDOW = 0.25


# ----------------------------------------------------------------------------- measurement


def measure(ctx: Context, budget: dict[str, Any]) -> dict[str, Any]:
    """Arms L and S (module docstring), cached; they share one train_many call for the first T
    steps (K = 2 × seeds), then S continues alone."""
    key = {"claim": CLAIM.id, "v": VERSION, "eta": ETA, "lambda": LAMBDA, "factor": FACTOR,
           **budget}

    def compute() -> dict[str, Any]:
        import torch

        ds = data.load("mnist1d", seed=0)
        n, T, ev = budget["seeds"], budget["T"], budget["evals"]
        pts = [{"lr": ETA, "weight_decay": LAMBDA, "seed": s} for s in range(n)]
        small = [{**p, "lr": ETA / FACTOR} for p in pts]
        s1 = train_segment(ds, pts + small, T, evals=ev)
        L, S = slice(0, n), slice(n, 2 * n)
        # S continues; L continues at η/10 as arm LD (same calls, the same η/10)
        start = {k: torch.cat([split(s1["params"], S)[k], split(s1["params"], L)[k]])
                 for k in s1["params"]}
        s2 = train_segment(ds, small + small, (FACTOR - 1) * T, batch_seed=100,
                           evals=2 * ev, t_offset=T, start=start)
        arm_l = join((s1, L))
        arm_s = join((s1, S), (s2, L))
        arm_ld = join((s1, L), (s2, S))
        end = FACTOR * T
        return {"arm_l": arm_l, "arm_s": arm_s, "arm_ld": arm_ld, "T": T, "seeds": n,
                "final_l": window_means(arm_l, (1 - WINDOW) * T, T),
                "final_s": window_means(arm_s, (1 - WINDOW) * end, end),
                "final_ld": window_means(arm_ld, end - WINDOW * (end - T), end),
                "tau_l": relaxation_time(ETA, LAMBDA),
                "tau_s": relaxation_time(ETA / FACTOR, LAMBDA)}

    return ctx.cached(key, compute)


# ----------------------------------------------------------------------------- judgement (pure)


def judge(m: dict[str, Any]) -> list[Check]:
    """The two checks of the module docstring from :func:`measure`'s output."""
    fl, fs = m["final_l"], m["final_s"]
    start = (1 - WINDOW) * FACTOR * m["T"]
    early = start < MIN_TAUS * m["tau_s"]
    rows, verds = {}, []
    for name, tol, rel in (("test_acc", TOL_ACC, False), ("test_loss", TOL_LOSS, True)):
        d, se = paired(fl[name], fs[name])
        scale = abs(float(np.mean(fl[name]))) if rel else 1.0
        v = "INCONCLUSIVE" if early else band(d / scale, se / scale, tol)
        verds.append(v)
        rows[name] = {"L": float(np.mean(fl[name])), "S": float(np.mean(fs[name])),
                      "diff": d, "se": se, "tol": tol * scale, "verdict": v}
    el = ETA * LAMBDA
    c1 = Check(
        "η/10 trained 10× longer generalises as well",
        f"equal test metrics: η = {ETA:g} for {m['T']} steps against η = {ETA / FACTOR:g} for "
        f"{FACTOR * m['T']} (λ = {LAMBDA:g}: ηλ {el:g} against {el / FACTOR:g})",
        "; ".join(f"{k}: L {r['L']:.4f}, S {r['S']:.4f}, S − L {r['diff']:+.4f} ± "
                  f"{r['se']:.4f}" for k, r in rows.items()) + f" ({m['seeds']} seeds)",
        f"|Δ test acc| ≤ {TOL_ACC:g}, |Δ test loss| ≤ {TOL_LOSS:.0%} of arm L (paired, ±{K:g} "
        f"se inside); arm S's window ≥ {MIN_TAUS:g} τ_S = {MIN_TAUS * m['tau_s']:.0f} steps",
        worst_verdict(verds),
        {"metrics": rows, "window_start": start, "tau_s": m["tau_s"], "tau_l": m["tau_l"],
         "window_too_early": early})
    if c1.verdict == "FAIL":
        better = rows["test_acc"]["diff"] > 0
        c1.finding = (f"at equal intrinsic time ηλ·t the small LR generalises "
                      f"{'better' if better else 'worse'} (test acc "
                      f"{rows['test_acc']['diff']:+.3f}): the equilibria of ηλ and ηλ/10 "
                      "differ")
    d, se = paired(fl["train_loss"], fs["train_loss"])
    nl, ns = float(np.mean(fl["sq_norm"])), float(np.mean(fs["sq_norm"]))
    c2 = Check(
        "different equilibria: lower train loss at ηλ/10",
        f"the stationary train loss falls with the intrinsic LR: arm S (ηλ = {el / FACTOR:g}) "
        f"below arm L (ηλ = {el:g})",
        f"train loss L {float(np.mean(fl['train_loss'])):.4f}, S "
        f"{float(np.mean(fs['train_loss'])):.4f} (S − L {d:+.4f} ± {se:.4f}); ‖Φ‖² L "
        f"{nl:.3f}, S {ns:.3f}; effective LR ratio L/S {ETA * ns / (ETA / FACTOR * nl):.2f}",
        f"S − L below 0 by more than {K:g} se", direction(d, se, -1),
        {"diff": d, "se": se, "sq_norm_l": nl, "sq_norm_s": ns}, basis="derived")
    fld = m["final_ld"]
    rows3, verds3 = {}, []
    for name, tol, rel in (("test_acc", TOL_ACC, False), ("test_loss", TOL_LOSS, True)):
        d, se = paired(fld[name], fs[name])
        scale = abs(float(np.mean(fld[name]))) if rel else 1.0
        v = "INCONCLUSIVE" if early else band(d / scale, se / scale, tol)
        verds3.append(v)
        rows3[name] = {"LD": float(np.mean(fld[name])), "S": float(np.mean(fs[name])),
                       "diff": d, "se": se, "verdict": v}
    c3 = Check(
        "small LR all along against large LR first, then decayed",
        f"equal test metrics: η = {ETA / FACTOR:g} for {FACTOR * m['T']} steps against η = "
        f"{ETA:g} for {m['T']} then {ETA / FACTOR:g} for {(FACTOR - 1) * m['T']} (the notes' "
        "figure: schedules that end at the same small LR; added after the first quick run, "
        "tolerances as check 1)",
        "; ".join(f"{k}: LD {r['LD']:.4f}, S {r['S']:.4f}, S − LD {r['diff']:+.4f} ± "
                  f"{r['se']:.4f}" for k, r in rows3.items()),
        f"|Δ test acc| ≤ {TOL_ACC:g}, |Δ test loss| ≤ {TOL_LOSS:.0%} of arm LD (paired, "
        f"±{K:g} se inside)", worst_verdict(verds3), {"metrics": rows3}, basis="derived")
    if c3.verdict == "FAIL":
        better = rows3["test_acc"]["diff"] > 0
        c3.finding = (f"ending at the same small LR, the small LR all along generalises "
                      f"{'better' if better else 'worse'} than large-then-decayed (test acc "
                      f"{rows3['test_acc']['diff']:+.3f}): "
                      + ("'as well' holds only as 'no worse'" if better else
                         "the large initial LR does help here"))
    return [c1, c2, c3]


# ----------------------------------------------------------------------------- presentation


def figures(ctx: Context, m: dict[str, Any]) -> list[str]:
    """Seed-mean test accuracy and train loss of the three arms against step."""
    from sgdlab.plots import new_figure, save_figure

    fig, axes = new_figure(1, 2, figsize=(10, 3.8))
    for ax, key in zip(axes[0], ("test_acc", "train_loss"), strict=True):
        for arm, label, lw in (("arm_ld", f"LD: L, then η/{FACTOR}", 1.0),
                               ("arm_s", f"S: η = {ETA / FACTOR:g}, {FACTOR}× steps", 1.0),
                               ("arm_l", f"L: η = {ETA:g}", 2.0)):
            c = m[arm]
            ax.plot(c["steps"], np.nanmean(np.asarray(c[key], dtype=float), 0), lw=lw,
                    label=label)
        ax.axvline(m["T"], color="grey", lw=0.6, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(key.replace("_", " ") + " (seed mean)")
        ax.legend(fontsize=8)
    path, rel = ctx.figure(CLAIM, "arms")
    save_figure(fig, path)
    return [rel]


def notes(ctx: Context, m: dict[str, Any], budget: dict[str, Any]) -> list[str]:
    """What was run, for the report (below the checks)."""
    out: list[str] = []
    out.append(
        f"MNIST-1D, scale-invariant MLP 2×{WIDTH}, B = {BATCH} with replacement, λ = {LAMBDA:g}; "
        f"{m['seeds']} seeds; T = {m['T']}; τ_L = {m['tau_l']:.1f}, τ_S = {m['tau_s']:.0f} "
        "(constant G)." + ("" if ctx.mode == "full" else
                           f" {ctx.mode} budget: fewer seeds and a shorter T than full."))
    return out


def run(ctx: Context) -> Result:
    """Measure, judge, present (see the module docstring) through the kit's
    :func:`~sgdlab.experiments.kit.run_claim`."""
    return run_claim(sys.modules[__name__], ctx)
