"""Claim 20: only the last learning-rate decay is necessary (SPEC §4.20; seed 003, Li, Lyu &
Arora 2020).

The notes (seed 003, /work/shared/seeds/003_11772880c4f89eae.txt, slide 12): "How many LR
decays are necessary towards the best performance? • Only the last is necessary, if you don't
mind to train your network longer. • What's benefit of early large LR then? • Faster
convergence to the equilibrium (of small Intrinsic LR)."

Theory (SPEC §4.5, claim 5). For a scale-invariant network trained by SGD with coupled weight
decay λ only the intrinsic LR ηλ matters, and the norm (hence the effective LR η/‖w‖²)
equilibrates in O(1/(ηλ)) steps, τ = 1/(4ηλ(1 − γ/2)) (≈ 1/(4ηλ) for constant G). If the
function-space state at equilibrium depends only on ηλ (the notes' fast-equilibrium
conjecture, §4.19), the path to the final ηλ_f does not matter once the final phase is a
few τ_f long: two ×0.1 decays (ηλ₀ → ηλ₀/10 → ηλ₀/100) and one ×0.01 decay (ηλ₀ → ηλ₀/100)
trained O(1/(ηλ_f)) steps longer end with equal metrics. The notes' "early large LR" is
then only a faster route to the equilibrium.

Workload: claim 5's (:mod:`sgdlab.experiments.intrinsic_lr`): MNIST-1D, ``scale_invariant``
model (2 normalised layers of width 64, fixed head), B = 64 with replacement, float32, one
init and one batch stream per seed, :func:`sgdlab.sweep.train_many`. λ = 5, η₀ = 0.1: ηλ
0.5 → 0.05 → 0.005 (τ_f = 1/(4ηλ_f) ≈ 50 steps for constant G). Disclosed: the first quick
run used λ = 2 (ηλ 0.2 → 0.02 → 0.002, t₂ = 1200, Δ = 500); it took 44 s (over the quick
budget) and gave FAIL (B − A: test acc +0.024 ± 0.009, train loss −0.142 ± 0.015 (−10 %),
‖Φ‖² +36 %); λ was raised to 5 so that the final equilibrium is reached in the budget; the
tolerances were not changed.

- phase 0 (shared by both arms, per seed): t₀ steps at η₀;
- arm A (two decays): t₁ steps at η₀/10, then t₂ steps at η₀/100;
- arm B (one decay): t₁ + t₂ + Δ steps at η₀/100, Δ = ``extra``/(ηλ_f) (1/(ηλ_f) = 200 steps
  in quick, 2/(ηλ_f) in full: "O(1/(ηλ_final)) steps longer").

Final metrics (each arm, each seed): the mean over the evaluations in the last 25 % of the
arm's final phase (all at ηλ_f) of test accuracy, test loss, full train loss and ‖Φ‖².

Checks (tolerances fixed before measuring; differences paired by seed, B − A, mean ± se over
seeds, :func:`~sgdlab.experiments.kit.verdicts.band`: PASS when mean ± 2 se lies inside the
band, FAIL when outside by more than 2 se, else INCONCLUSIVE):

1. (notes) equal final metrics: |Δ test accuracy| ≤ 0.02 (absolute), |Δ test loss| and
   |Δ train loss| ≤ 5 % of arm A's mean; worst of the three. INCONCLUSIVE when the final
   window of arm A starts earlier than 6 τ_f after its last decay.
2. (derived) the last decay matters (power control, and the other half of "only the last"):
   arm A's train loss in its final window is below that in the last 25 % of its η₀/10 phase
   (:func:`~sgdlab.experiments.kit.verdicts.direction`, paired, 2 se).
3. (derived) the same norm equilibrium: |Δ‖Φ‖²| ≤ 10 % of arm A's mean (both arms at the
   equilibrium of ηλ_f, SPEC §4.5).

Quick leaves out: seeds (6 instead of 16) and length (t₀ = 50, t₁ = 150, t₂ = 400 = 8 τ_f,
Δ = 200 instead of 100, 200, 2000, 400).
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

CLAIM = Claim("20-last-decay", "Only the last LR decay is necessary",
              "For a normalised network with weight decay, two ×0.1 decays of η and one ×0.01 "
              "decay trained O(1/(ηλ_final)) steps longer end with equal metrics.", "§4.20")

VERSION = 1
BUDGETS: dict[str, dict[str, Any]] = {
    "smoke": {"seeds": 2, "t0": 10, "t1": 20, "t2": 40, "extra": 0.05, "evals": 4},
    "quick": {"seeds": 6, "t0": 50, "t1": 150, "t2": 400, "extra": 1.0, "evals": 10},
    "full": {"seeds": 16, "t0": 100, "t1": 200, "t2": 2000, "extra": 2.0, "evals": 20},
}
ETA0, LAMBDA = 0.1, 5.0          # was λ = 2 in the first quick run (docstring)
TOL_ACC, TOL_LOSS, TOL_NORM = 0.02, 0.05, 0.10
WINDOW = 0.25                  # final metrics: mean over the last 25 % of the final phase
METRICS = ("test_acc", "test_loss", "train_loss", "sq_norm")


# ----------------------------------------------------------------------------- shared runner


def train_segment(ds: data.Dataset, points: list[dict[str, Any]], steps: int, *,
                  start: dict | None = None, batch_seed: int = 0, evals: int = 10,
                  t_offset: int = 0) -> dict[str, Any]:
    """Train claim 5's scale-invariant models (``points``: dicts with ``lr``,
    ``weight_decay``, ``seed``; :mod:`sgdlab.experiments.intrinsic_lr`'s width, batch size and
    sampling) for ``steps`` constant-η steps with :func:`sgdlab.sweep.train_many`, from
    ``start`` (stacked parameters) or each seed's init. Returns the curves (``steps``:
    global steps ``t_offset`` + evaluation steps, the start only when ``start`` is None;
    ``test_acc``, ``test_loss``, ``train_loss``, ``sq_norm``: (K, n) arrays) and the final
    ``params``."""
    from sgdlab.sweep import train_many

    r = train_many(ds, "scale_invariant", points, steps=steps, start=start,
                   batch_seed=batch_seed, eval_every=max(1, steps // max(1, evals)),
                   batch_size=BATCH, sampling="replacement", same_batches=False,
                   model_options={"width": WIDTH})
    keep = slice(0 if start is None else 1, None)          # a continuation: no duplicate
    out: dict[str, Any] = {k: getattr(r, k)[:, keep] for k in METRICS}
    out["steps"] = t_offset + r.steps[keep]
    out["params"] = r.params
    return out


def join(*parts: tuple[dict[str, Any], slice]) -> dict[str, list]:
    """Concatenate the rows ``sl`` of consecutive :func:`train_segment` curves (JSON-able)."""
    out = {k: np.concatenate([p[k][sl] for p, sl in parts], 1).tolist() for k in METRICS}
    out["steps"] = np.concatenate([p["steps"] for p, _ in parts]).tolist()
    return out


def split(params: dict, sl: slice) -> dict:
    """Rows ``sl`` of stacked parameters."""
    return {n: t[sl] for n, t in params.items()}


def window_means(curve: dict[str, Any], lo: float, hi: float) -> dict[str, list[float]]:
    """Per model, the mean of each metric over the evaluations at global steps in [lo, hi]."""
    s = np.asarray(curve["steps"], dtype=float)
    sel = (s >= lo) & (s <= hi)
    return {k: np.asarray(curve[k], dtype=float)[:, sel].mean(1).tolist() for k in METRICS}


# ----------------------------------------------------------------------------- measurement


def measure(ctx: Context, budget: dict[str, Any]) -> dict[str, Any]:
    """Phase 0, arm A and arm B (module docstring), cached. Both arms train in the same
    :func:`~sgdlab.sweep.train_many` calls while their phases overlap (K = 2 × seeds)."""
    key = {"claim": CLAIM.id, "v": VERSION, "eta0": ETA0, "lambda": LAMBDA, **budget}

    def compute() -> dict[str, Any]:
        import torch

        ds = data.load("mnist1d", seed=0)
        b = budget
        n = b["seeds"]
        pts = [{"lr": ETA0, "weight_decay": LAMBDA, "seed": s} for s in range(n)]
        el_f = ETA0 * LAMBDA / 100
        delta = int(round(b["extra"] / el_f))
        t0, t1, t2 = b["t0"], b["t1"], b["t2"]
        p0 = train_segment(ds, pts, t0, evals=1)
        both = [{**p, "lr": ETA0 / 10} for p in pts] + [{**p, "lr": ETA0 / 100} for p in pts]
        s1 = train_segment(ds, both, t1, batch_seed=100, evals=max(2, b["evals"] // 4),
                           t_offset=t0,
                           start={k: torch.cat([v, v]) for k, v in p0["params"].items()})
        s2 = train_segment(ds, [{**p, "lr": ETA0 / 100} for p in both], t2, batch_seed=200,
                           evals=b["evals"], t_offset=t0 + t1, start=s1["params"])
        A, B = slice(0, n), slice(n, 2 * n)
        parts_b = [(s1, B), (s2, B)]
        if delta > 0:
            s3 = train_segment(ds, [{**p, "lr": ETA0 / 100} for p in pts], delta,
                               batch_seed=300, evals=max(1, b["evals"] * delta // t2),
                               t_offset=t0 + t1 + t2, start=split(s2["params"], B))
            parts_b.append((s3, slice(None)))
        a = join((p0, slice(None)), (s1, A), (s2, A))
        bb = join((p0, slice(None)), *parts_b)
        end_a, end_b = t0 + t1 + t2, t0 + t1 + t2 + delta
        fin_a = window_means(a, end_a - WINDOW * t2, end_a)
        fin_b = window_means(bb, end_b - WINDOW * (t1 + t2 + delta), end_b)
        pre_a = window_means(a, t0 + t1 - WINDOW * t1, t0 + t1)
        return {"arm_a": a, "arm_b": bb, "final_a": fin_a, "final_b": fin_b,
                "pre_last_decay_a": pre_a, "bounds_a": [t0, t0 + t1, end_a],
                "bounds_b": [t0, end_b], "delta": delta, "t0": t0, "t1": t1, "t2": t2,
                "seeds": n, "eta0": ETA0, "lambda": LAMBDA,
                "tau_f": relaxation_time(ETA0 / 100, LAMBDA)}

    return ctx.cached(key, compute)


# ----------------------------------------------------------------------------- judgement (pure)


def judge(m: dict[str, Any]) -> list[Check]:
    """The three checks of the module docstring from :func:`measure`'s output."""
    fa, fb, pre = m["final_a"], m["final_b"], m["pre_last_decay_a"]
    tau_f = m["tau_f"]
    window_start = (1 - WINDOW) * m["t2"]
    early = window_start < MIN_TAUS * tau_f
    rows, verds = {}, []
    for name, tol, rel in (("test_acc", TOL_ACC, False), ("test_loss", TOL_LOSS, True),
                           ("train_loss", TOL_LOSS, True)):
        d, se = paired(fa[name], fb[name])
        scale = abs(float(np.mean(fa[name]))) if rel else 1.0
        v = "INCONCLUSIVE" if early else band(d / scale, se / scale, tol)
        verds.append(v)
        rows[name] = {"A": float(np.mean(fa[name])), "B": float(np.mean(fb[name])),
                      "diff": d, "se": se, "tol": tol * scale, "verdict": v}
    c1 = Check(
        "one ×0.01 decay trained longer = two ×0.1 decays",
        f"equal final metrics (ηλ {ETA0 * LAMBDA:g} → {ETA0 * LAMBDA / 10:g} → "
        f"{ETA0 * LAMBDA / 100:g} against {ETA0 * LAMBDA:g} → {ETA0 * LAMBDA / 100:g} with "
        f"{m['delta']} more steps)",
        "; ".join(f"{k}: A {r['A']:.4f}, B {r['B']:.4f}, B − A {r['diff']:+.4f} ± "
                  f"{r['se']:.4f}" for k, r in rows.items()) + f" ({m['seeds']} seeds)",
        f"|Δ test acc| ≤ {TOL_ACC:g}, |Δ loss| ≤ {TOL_LOSS:.0%} of arm A (paired, ±{K:g} se "
        f"inside); window ≥ {MIN_TAUS:g} τ_f = {MIN_TAUS * tau_f:.0f} steps after the last "
        "decay", worst_verdict(verds),
        {"metrics": rows, "window_start": window_start, "tau_f": tau_f,
         "window_too_early": early})
    d, se = paired(pre["train_loss"], fa["train_loss"])
    c2 = Check(
        "the last decay matters (power control)",
        "arm A's train loss falls at its last decay (ηλ ×0.1): final window below the "
        "window before the decay",
        f"train loss {float(np.mean(pre['train_loss'])):.4f} → "
        f"{float(np.mean(fa['train_loss'])):.4f} (Δ {d:+.4f} ± {se:.4f}); test acc "
        f"{float(np.mean(pre['test_acc'])):.4f} → {float(np.mean(fa['test_acc'])):.4f}",
        f"paired difference below 0 by more than {K:g} se", direction(d, se, -1),
        {"diff": d, "se": se}, basis="derived")
    dn, sen = paired(fa["sq_norm"], fb["sq_norm"])
    scale = float(np.mean(fa["sq_norm"]))
    vn = "INCONCLUSIVE" if early else band(dn / scale, sen / scale, TOL_NORM)
    c3 = Check(
        "the same norm equilibrium",
        f"‖Φ‖² at the equilibrium of ηλ_f = {ETA0 * LAMBDA / 100:g} in both arms",
        f"A {scale:.3f}, B {float(np.mean(fb['sq_norm'])):.3f} (B − A {dn:+.3f} ± {sen:.3f})",
        f"|Δ| ≤ {TOL_NORM:.0%} of arm A (±{K:g} se inside)", vn,
        {"diff": dn, "se": sen, "A": scale}, basis="derived")
    if c1.verdict == "FAIL":
        better = rows["test_acc"]["diff"] > 0
        c1.finding = (
            f"after {m['t2']} steps ({m['t2'] / tau_f:.0f} τ_f) at the final ηλ the two schedules "
            f"have not met: the single decay ends {'better' if better else 'worse'} (test acc "
            f"{rows['test_acc']['diff']:+.3f}) and at another norm (‖Φ‖² {dn / scale:+.0%}); "
            "the path still matters after O(1/(ηλ_f)) extra steps (the norm has equilibrated, "
            "but the single-decay arm, whose final phase is longer, is still learning)")
    return [c1, c2, c3]


# ----------------------------------------------------------------------------- presentation


def figures(ctx: Context, m: dict[str, Any]) -> list[str]:
    """Seed-mean test accuracy and train loss of both arms against step, decays marked."""
    from sgdlab.plots import new_figure, save_figure

    fig, axes = new_figure(1, 2, figsize=(10, 3.8))
    for ax, key in zip(axes[0], ("test_acc", "train_loss"), strict=True):
        for arm, label in (("arm_a", "two ×0.1 decays"), ("arm_b", "one ×0.01 decay")):
            c = m[arm]
            ax.plot(c["steps"], np.nanmean(np.asarray(c[key], dtype=float), 0), lw=1,
                    label=label)
        for t in m["bounds_a"][:-1]:
            ax.axvline(t, color="grey", lw=0.6, ls=":")
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
        f"MNIST-1D, scale-invariant MLP 2×{WIDTH}, B = {BATCH} with replacement, λ = {LAMBDA:g}, "
        f"η₀ = {ETA0:g}; {m['seeds']} seeds; phases t₀ = {m['t0']}, t₁ = {m['t1']}, "
        f"t₂ = {m['t2']}, Δ = {m['delta']} steps; τ_f = {m['tau_f']:.0f} (constant G)."
        + ("" if ctx.mode == "full" else
           f" {ctx.mode} budget: fewer seeds and shorter final phases than full."))
    return out


def run(ctx: Context) -> Result:
    """Measure, judge, present (see the module docstring) through the kit's
    :func:`~sgdlab.experiments.kit.run_claim`."""
    return run_claim(sys.modules[__name__], ctx)
