"""Claim 23: the error rises some time after each learning-rate decay (SPEC §4.23; seed 003, Li,
Lyu & Arora 2020).

The notes (seed 003, /work/shared/seeds/003_11772880c4f89eae.txt, slide 12): "Our theory
explains … • Why test/train error sudden increases after every LR decay? […] Reason:
Effective LR first divided by 10, but its stationary value only decrease by roughly √10."

Theory (SPEC §4.5, claim 5). For a scale-invariant network with coupled weight decay λ, a ×0.1
decay of η divides the effective LR η/‖w‖² by 10 at once (the norm has not moved): the loss
dips (a colder stationary state). Then ‖w‖ relaxes to the equilibrium of the new ηλ, where the
effective LR is only ≈ √10 (G constant) below its old value, so the loss rises again. The rise
follows the norm's relaxation, whose rate, with G depending on the effective LR (γ = −d ln G/
d ln η_e), is 4ηλ(1 − γ/2): τ = 1/(4ηλ(1 − γ/2)) with ηλ the post-decay value — predicted from
γ measured as in claim 5 (:func:`sgdlab.experiments.intrinsic_lr.ladder_gamma` on from-init
equilibria of a ladder around the post-decay ηλ) before the rise is measured.

Workload: claim 5's (MNIST-1D, ``scale_invariant`` model 2 × 64, fixed head, B = 64 with
replacement, float32, one init and batch stream per seed), all models in the same
:func:`sgdlab.sweep.train_many` calls:

- decay arm: η = 0.1, λ = 0.5 (ηλ = 0.05) for t_pre steps, then η = 0.01 (ηλ = 0.005) for
  t_post steps, the full train loss every ``every`` steps after the decay;
- γ ladder (fewer seeds): η = 0.1, ηλ ∈ {0.0035, 0.005, 0.007} from init for t_pre + t_post
  steps; claim 5's
  :class:`~sgdlab.experiments.intrinsic_lr.NormRecorder` and window statistics over the last
  40 %; γ per layer at ηλ = 0.005 by the central log-log difference; τ_pred per layer,
  pooled by the geometric mean over layers (as claim 5).

Measurement: the seed-mean train loss L_t after the decay; L_∞ its mean over the last 30 %;
t_min the step of its minimum; d_t = (L_t − L_∞)/(L_min − L_∞) from t_min on; τ_fit by claim
5's :func:`~sgdlab.experiments.intrinsic_lr.fit_relaxation` (least-squares line through
log|d_t| until |d_t| < 0.2), in steps; its se by the jackknife over seeds.

Checks (tolerances fixed before measuring):

1. (notes) the loss dips then rises: per seed, L_∞ minus its mean over the evaluations in
   (0, τ_pred] after the decay; paired over seeds, above 0 by more than 2 se: PASS, below by
   more than 2 se: FAIL (:func:`~sgdlab.experiments.kit.verdicts.direction`); the dip itself
   (L_min below the pre-decay loss) is reported. Changed after the first quick run, whose rule
   (L_∞ minus the loss around the minimum of the seed-mean curve) could not fail: the minimum
   sat at the end of the run (735 of 750 steps), the loss falling throughout.
   INCONCLUSIVE when the run after the decay is shorter than 6 τ_pred (the plateau not
   reached; this concerns the smoke budget only).
2. (derived, SPEC §4.5) τ_fit = τ_pred = 1/(4ηλ(1 − γ/2)) within 30 % (±2 se inside,
   :func:`~sgdlab.experiments.kit.verdicts.band`); INCONCLUSIVE when check 1 does not pass or
   the run after the decay is shorter than 6 τ_pred.
3. (derived) the constant-G prediction τ = 1/(4ηλ) (claim 5's ``relaxation_time``), the same
   rule.

Quick leaves out: seeds (4 decay-arm and 2 ladder seeds instead of 8 and 4), length
(t_post = 600 instead of 1500; 750 in the first quick run, 39 s, over the budget) and the
evaluation density (every 15 steps instead of 10).
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np

from sgdlab import data
from sgdlab.experiments.base import Check, Claim, Context, Result
from sgdlab.experiments.intrinsic_lr import (
    BATCH,
    MIN_TAUS,
    WIDTH,
    NormRecorder,
    _window_stats,
    fit_relaxation,
    ladder_gamma,
    relaxation_time,
)
from sgdlab.experiments.kit import run_claim
from sgdlab.experiments.kit.verdicts import K, band, direction, mean_se

CLAIM = Claim("23-rise-after-decay", "The loss rises some time after a decay",
              "After a ×0.1 decay of η the train loss of a normalised network with weight decay "
              "dips, then rises again about τ = 1/(4ηλ(1 − γ/2)) steps later (§4.5).", "§4.23")

VERSION = 1
BUDGETS: dict[str, dict[str, Any]] = {
    "smoke": {"seeds": 2, "ladder_seeds": 1, "t_pre": 20, "t_post": 60, "every": 5},
    "quick": {"seeds": 4, "ladder_seeds": 2, "t_pre": 150, "t_post": 600, "every": 15},
    "full": {"seeds": 8, "ladder_seeds": 4, "t_pre": 300, "t_post": 1500, "every": 10},
}
ETA, LAMBDA, FACTOR = 0.1, 0.5, 0.1
LADDER = (0.0035, 0.005, 0.007)          # ηλ at η = ETA around the post-decay ηλ = 0.005
TOL_TAU = 0.30
FINAL, LADDER_WINDOW = 0.3, 0.4


# ----------------------------------------------------------------------------- measurement


def measure(ctx: Context, budget: dict[str, Any]) -> dict[str, Any]:
    """The decay arm and the γ ladder (module docstring), cached."""
    key = {"claim": CLAIM.id, "v": VERSION, "eta": ETA, "lambda": LAMBDA, "ladder": LADDER,
           **budget}

    def compute() -> dict[str, Any]:
        from sgdlab.sweep import train_many

        ds = data.load("mnist1d", seed=0)
        n, t_pre, t_post = budget["seeds"], budget["t_pre"], budget["t_post"]
        common = {"batch_size": BATCH, "sampling": "replacement", "same_batches": False,
                  "model_options": {"width": WIDTH}}
        arm = [{"lr": ETA, "weight_decay": LAMBDA, "seed": s} for s in range(n)]
        lad = [{"lr": ETA, "weight_decay": round(el / ETA, 12), "seed": s}
               for el in LADDER for s in range(budget["ladder_seeds"])]
        r1 = train_many(ds, "scale_invariant", arm + lad, steps=t_pre, eval_train=False,
                        **common)
        pts2 = [{**p, "lr": ETA * FACTOR} for p in arm] + lad
        lr = np.array([p["lr"] for p in pts2])
        wd = np.array([p["weight_decay"] for p in pts2])
        rec = NormRecorder(list(lr), list(wd), start=r1.params)
        r2 = train_many(ds, "scale_invariant", pts2, steps=t_post, batch_seed=500,
                        start=r1.params, eval_every=budget["every"], callback=rec, **common)
        arr = rec.arrays()
        a = max(0, int(round(t_post - LADDER_WINDOW * (t_pre + t_post))))
        st = _window_stats(arr, a, lr, wd)
        rows = []
        for k in range(n, len(pts2)):
            for li in range(arr["x"].shape[1]):
                rows.append({"phase": "from init", **pts2[k], "layer": li,
                             **{key_: float(v[li, k]) for key_, v in st.items()}})
        return {"steps": r2.steps.tolist(), "train_loss": r2.train_loss[:n].tolist(),
                "test_acc": r2.test_acc[:n].tolist(), "rows": rows,
                "sq_norm": r2.sq_norm[:n].tolist(), "seeds": n, "t_pre": t_pre,
                "t_post": t_post, "ladder_window_start": t_pre + a,
                "el_post": ETA * FACTOR * LAMBDA}

    return ctx.cached(key, compute)


# ----------------------------------------------------------------------------- judgement (pure)


def rise_fit(steps: np.ndarray, loss: np.ndarray) -> dict[str, float]:
    """From a (mean) loss curve after a decay (``steps[0]`` = the decay): L_∞ (mean of the
    last 30 %), the minimum and its step, and τ of the rise (fit_relaxation on
    d = (L − L_∞)/(L_min − L_∞) from the minimum on, in steps). NaN τ without a rise."""
    steps = np.asarray(steps, dtype=float)
    loss = np.asarray(loss, dtype=float)
    n_final = max(1, int(round(FINAL * len(loss))))
    l_inf = float(loss[-n_final:].mean())
    i_min = int(np.argmin(loss[1:])) + 1 if len(loss) > 1 else 0
    l_min = float(loss[i_min])
    out = {"l_inf": l_inf, "l_min": l_min, "t_min": float(steps[i_min] - steps[0]),
           "i_min": i_min, "l_pre": float(loss[0]), "tau": math.nan}
    if not l_inf > l_min or i_min >= len(loss) - n_final:
        return out
    d = (loss[i_min:] - l_inf) / (l_min - l_inf)
    dt = float(steps[1] - steps[0])
    out["tau"] = fit_relaxation(d)["tau"] * dt
    return out


def predicted_tau(rows: list[dict[str, Any]], el: float) -> dict[str, Any]:
    """τ = 1/(4ηλ(1 − γ/2)) per layer at ``el`` (one of LADDER) from claim 5's
    :func:`ladder_gamma`, pooled by the geometric mean over layers."""
    gam = ladder_gamma(rows, list(LADDER))
    i = [j for j, e in enumerate(LADDER) if math.isclose(e, el)][0]
    per = {str(layer): {"gamma": g["gamma"][i], "tau": 1.0 / (4 * el * (1 - g["gamma"][i] / 2))}
           for layer, g in gam.items()}
    taus = [v["tau"] for v in per.values()]
    ok = all(math.isfinite(t) and t > 0 for t in taus)
    return {"per_layer": per, "tau": float(np.exp(np.mean(np.log(taus)))) if ok else math.nan,
            "ladder": {str(k): v for k, v in gam.items()}}


def judge(m: dict[str, Any]) -> list[Check]:
    """The three checks of the module docstring from :func:`measure`'s output."""
    steps = np.asarray(m["steps"], dtype=float)
    loss = np.asarray(m["train_loss"], dtype=float)            # (seeds, n_evals)
    fit = rise_fit(steps, loss.mean(0))
    n = loss.shape[0]
    el = m["el_post"]
    pred = predicted_tau(m["rows"], el)
    t = steps - steps[0]
    sel = (t > 0) & (t <= pred["tau"]) if math.isfinite(pred["tau"]) else t < 0
    dips = loss[:, sel].mean(1) if sel.any() else np.full(n, math.nan)
    n_final = max(1, int(round(FINAL * loss.shape[1])))
    finals = loss[:, -n_final:].mean(1)
    rise, rise_se = mean_se(finals - dips)
    short = not m["t_post"] >= MIN_TAUS * pred["tau"]
    c1 = Check(
        "the loss dips, then rises after the decay",
        f"η ×{FACTOR:g} at ηλ = {ETA * LAMBDA:g}: the train loss falls at once, then rises to a "
        "higher plateau",
        f"pre-decay {fit['l_pre']:.4f} → minimum {fit['l_min']:.4f} at {fit['t_min']:.0f} steps "
        f"→ plateau {fit['l_inf']:.4f}; plateau − mean over (0, τ_pred] per seed "
        f"{rise:+.4f} ± {rise_se:.4f} ({n} seeds)",
        f"plateau above the (0, τ_pred] mean by more than {K:g} se (paired over seeds); below "
        "it by more than 2 se: FAIL (rule changed after the first quick run: it compared with "
        "the minimum of the mean curve, which could not fail); INCONCLUSIVE when the run after "
        f"the decay is shorter than {MIN_TAUS:g} τ_pred",
        "INCONCLUSIVE" if short else direction(rise, rise_se, 1),
        {"fit": fit, "rise": rise, "rise_se": rise_se})
    if c1.verdict == "FAIL":
        c1.finding = (f"no rise within {m['t_post']} steps ({m['t_post'] / pred['tau']:.0f} τ) "
                      f"after the decay: the train loss keeps falling ({rise:+.3f}), the "
                      "norm-driven rise is masked by continued learning at the colder ηλ")
    # jackknife se of τ_fit over seeds
    jk = [rise_fit(steps, np.delete(loss, j, 0).mean(0))["tau"] for j in range(n)]
    jk = np.asarray(jk, dtype=float)
    se = (float(np.sqrt((n - 1) / n * ((jk - jk.mean()) ** 2).sum()))
          if n > 1 and np.all(np.isfinite(jk)) else math.nan)
    tau = fit["tau"]
    const = relaxation_time(ETA * FACTOR, LAMBDA)
    checks = [c1]
    for name, tp, what, extra in (
            ("rise time against τ = 1/(4ηλ(1 − γ/2))", pred["tau"],
             "γ from the from-init ladder ηλ ∈ {" + ", ".join(f"{e:g}" for e in LADDER)
             + "}: " + ", ".join(f"layer {k}: γ = {v['gamma']:.2f}, τ = {v['tau']:.0f}"
                                 for k, v in pred["per_layer"].items()),
             {"prediction": pred}),
            ("rise time against the constant-G τ = 1/(4ηλ)", const,
             "claim 5's relaxation_time (G constant)", {})):
        early = m["t_post"] < MIN_TAUS * tp if math.isfinite(tp) else True
        v = ("INCONCLUSIVE" if c1.verdict != "PASS" or early
             else band(tau / tp - 1, se / tp, TOL_TAU))
        checks.append(Check(
            name, f"τ = {tp:.0f} steps at ηλ = {el:g} ({what})",
            f"τ_fit = {tau:.0f} ± {se:.0f} steps (jackknife over seeds); ratio "
            f"{tau / tp:.2f}",
            f"within {TOL_TAU:.0%} (±{K:g} se inside); run after the decay ≥ {MIN_TAUS:g} τ",
            v, {"tau_fit": tau, "tau_se": se, "tau_pred": tp, "too_short": early, **extra},
            basis="derived"))
    return checks


# ----------------------------------------------------------------------------- presentation


def figures(ctx: Context, m: dict[str, Any]) -> list[str]:
    """The seed-mean train loss after the decay with the fitted plateau and the predicted
    rise L_∞ − (L_∞ − L_min)e^{−(t − t_min)/τ_pred}."""
    from sgdlab.plots import new_figure, save_figure

    steps = np.asarray(m["steps"], dtype=float)
    loss = np.asarray(m["train_loss"], dtype=float)
    fit = rise_fit(steps, loss.mean(0))
    tp = predicted_tau(m["rows"], m["el_post"])["tau"]
    fig, axes = new_figure(1, 1, figsize=(6, 3.8))
    ax = axes[0][0]
    for row in loss:
        ax.plot(steps, row, color="grey", lw=0.5, alpha=0.6)
    ax.plot(steps, loss.mean(0), "k-", lw=1.2, label="seed mean")
    t = np.linspace(fit["t_min"], steps[-1], 200)
    if math.isfinite(tp):
        ax.plot(t, fit["l_inf"] - (fit["l_inf"] - fit["l_min"]) * np.exp(-(t - fit["t_min"]) / tp),
                "C1--", lw=1, label=f"τ_pred = {tp:.0f}")
    ax.axhline(fit["l_inf"], color="C0", lw=0.6, ls=":")
    ax.set_xlabel("steps after the ×0.1 decay")
    ax.set_ylabel("train loss")
    ax.legend(fontsize=8)
    path, rel = ctx.figure(CLAIM, "rise")
    save_figure(fig, path)
    return [rel]


def notes(ctx: Context, m: dict[str, Any], budget: dict[str, Any]) -> list[str]:
    """What was run, for the report (below the checks)."""
    out: list[str] = []
    out.append(
        f"MNIST-1D, scale-invariant MLP 2×{WIDTH}, B = {BATCH} with replacement; λ = {LAMBDA:g}, "
        f"η {ETA:g} → {ETA * FACTOR:g} after {m['t_pre']} steps, {m['t_post']} steps after; "
        f"{m['seeds']} seeds; γ ladder window from step {m['ladder_window_start']}."
        + ("" if ctx.mode == "full" else
           f" {ctx.mode} budget: fewer seeds, a shorter run and sparser evaluations than full."))
    return out


def run(ctx: Context) -> Result:
    """Measure, judge, present (see the module docstring) through the kit's
    :func:`~sgdlab.experiments.kit.run_claim`."""
    return run_claim(sys.modules[__name__], ctx)
