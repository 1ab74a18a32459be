"""Claim 19: fast equilibrium of normalised networks (SPEC §4.19; seed 003, Li, Lyu & Arora
2020).

The notes (seed 003, /work/shared/seeds/003_11772880c4f89eae.txt, slide 11): "SDE(SGD) mixes
slowly in parameter space, but it mixes fast in function space in experiments, i.e., shortly
after norm convergence, t = O(1/(λη)). • Fast Equilibrium Conjecture: Network from any
non-pathological initialization would converge to function space equilibrium in O(1/(λη))
steps, i.e., • Cannot distinguish two networks (from different init) at equilibrium via
(further training +) evaluation on any input data, but it's possible to distinguish them via
looking at their parameters (e.g., via Stochastic Weight Averaging)."

Theory (SPEC §4.5, claim 5). For a scale-invariant network trained by SGD with coupled weight
decay λ, ‖w‖² obeys x_{t+1} = (1 − ηλ)² x_t + η²Γ_t/x_t: a norm ×c too large shrinks at rate
≈ 2ηλ per step (ln c²/(2ηλ) steps to come down), one too small grows within a few steps (the
effective LR η/x is huge), and near equilibrium ‖w‖⁴ relaxes with τ ≈ 1/(4ηλ). The conjecture
adds that once the norm has equilibrated the *function* (train loss, test accuracy) is at an
equilibrium fixed by ηλ alone, whatever the init — so the time to agreement scales as
1/(ηλ) — while the parameters (and their SWA averages) remain distinguishable.

Workload: claim 5's / claim 20's (:mod:`sgdlab.experiments.intrinsic_lr`,
:func:`sgdlab.experiments.last_decay.train_segment`): MNIST-1D, ``scale_invariant`` model
(2 normalised layers of width 64, fixed head; every trainable tensor is scale-invariant),
B = 64 with replacement, float32, :func:`sgdlab.sweep.train_many`. η = 0.1 and two intrinsic
LRs, ηλ₁ = 0.05 (λ = 0.5) and ηλ₂ = 0.025 (λ = 0.25), chosen so that the ×10 arm (‖w‖² ×100,
≈ 2.3/(ηλ) steps to shrink) equilibrates within the quick budget. Each run is T = ``span``/(ηλ)
steps. Arms, per seed s (each arm shares seed s's init direction, head and batch stream with
the reference unless stated):

- ``x1`` (reference): seed s's init;
- ``x0.1`` / ``x10``: the same init with every (scale-invariant) weight ×0.1 / ×10;
- ``seed``: another seed's init, head and batches (seed s + 1000) — the seed-noise arm;
- ``pre`` (ηλ₁ only): seed s's init pretrained ``pre`` steps at 4ηλ₁ (λ = 2, its own
  equilibrium: 10/(4ηλ₁) steps), other batches.

At ηλ₂ only ``x1``, ``x0.1`` and ``x10`` run (the timing check). The last ``WINDOW`` = 25 % of
each run is trained in ``SWA_CHUNKS`` pieces; the unit-norm weights per layer at each piece's
end are averaged (the SWA average of the directions).

Checks (tolerances fixed before measuring; :mod:`~sgdlab.experiments.kit.verdicts`, ±2 se):

1. (notes) same function: for every arm and both ηλ, the paired (by seed) difference arm −
   x1 of the final-window means: |Δ test accuracy| ≤ 0.02, |Δ train loss| ≤ 5 % of x1's
   (:func:`~sgdlab.experiments.kit.verdicts.band`); worst over all. INCONCLUSIVE when the
   window starts earlier than ``MIN_SPAN`` = 6/(ηλ) ("a few multiples of 1/(ηλ)").
2. (derived) parameters still differ: per seed, R = d(SWA_arm, SWA_x1) / d(SWA_x1 first half,
   SWA_x1 second half) with d = mean over layers of 1 − cos; the denominator is how far the
   reference's own average moves within the window. Prediction: ln R > ln 2 (the arms' averages
   are further apart than twice that) for the x0.1, x10 and pre arms at ηλ₁
   (:func:`~sgdlab.experiments.kit.verdicts.direction` on ln R − ln 2, mean ± se over seeds);
   worst over the arms. The final-iterate distances are reported.
3. (derived) time to agreement ∝ 1/(ηλ): t_agree = the first evaluation from which, at every
   later evaluation, the seed-mean train loss of the x0.1 and x10 arms is within check 1's
   5 % of x1's (:func:`agreement_time`). Prediction: t_agree(ηλ₂)/t_agree(ηλ₁) =
   ηλ₁/ηλ₂ = 2, |ln ratio − ln 2| ≤ ln 1.5 (:func:`~sgdlab.experiments.kit.verdicts.near`,
   se of ln ratio from a seed bootstrap, 200 resamples, fixed RNG); INCONCLUSIVE when either
   run never agrees. t_agree·ηλ is reported.

Disclosed: the first quick run defined t_agree on test accuracy (≤ 0.02) as well as train
loss; it gave t_agree = 200 and 100 steps (ratio 0.50, ln −0.69 ± 0.63, INCONCLUSIVE), the
ηλ₁ time set by single evaluations near step 190 where the 6-seed mean test accuracy (1000
test points) of x0.1/x10 differed by 1.8–2.1 %, i.e. by per-evaluation noise at the size of
the tolerance, long after the train loss had agreed. After seeing this, t_agree uses the
train loss alone (the full 4000-point train set); tolerances, arms and budgets were not
changed, and check 1 still judges both metrics on window means.

Quick leaves out: seeds (6 instead of 12) and length (span 12/(ηλ) instead of 24/(ηλ), 24
instead of 48 evaluations per run, so t_agree is resolved to 0.5/(ηλ)).
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np

from sgdlab import data
from sgdlab.experiments.base import Check, Claim, Context, Result, worst_verdict
from sgdlab.experiments.intrinsic_lr import WIDTH, relaxation_time
from sgdlab.experiments.kit import run_claim
from sgdlab.experiments.kit.verdicts import K, band, direction, mean_se, near, paired
from sgdlab.experiments.last_decay import METRICS, join, train_segment, window_means

CLAIM = Claim("19-fast-equilibrium", "Fast equilibrium",
              "Scale-invariant nets from different inits (norm ×0.1/×1/×10, another seed, "
              "pretrained at another ηλ) reach the same train loss and test accuracy within "
              "seed noise after a few multiples of 1/(ηλ) while their parameters (and SWA "
              "averages) still differ; the time to agreement ∝ 1/(ηλ).", "§4.19")

VERSION = 2
BUDGETS: dict[str, dict[str, Any]] = {
    "smoke": {"seeds": 2, "span": 1.5, "evals": 4, "pre": 5},
    "quick": {"seeds": 6, "span": 12.0, "evals": 24, "pre": 50},
    "full": {"seeds": 12, "span": 24.0, "evals": 48, "pre": 50},
}
ETA = 0.1
RATES = (0.05, 0.025)          # ηλ₁, ηλ₂
PRE_FACTOR = 4.0               # the pretrained arm: ηλ = 4 ηλ₁
SEED_OFFSET = 1000
TOL_ACC, TOL_LOSS = 0.02, 0.05
MIN_SPAN = 6.0                 # window start ≥ 6/(ηλ)
WINDOW = 0.25
SWA_CHUNKS = 6
RATIO_MIN = 2.0                # check 2: R > 2
TOL_LOG_RATIO = math.log(1.5)  # check 3
BOOT = 200
ARMS_1 = ("x1", "x0.1", "x10", "seed", "pre")
ARMS_2 = ("x1", "x0.1", "x10")
TIMED = ("x0.1", "x10")


# ----------------------------------------------------------------------------- pure helpers


def directions(params: dict) -> list[np.ndarray]:
    """Per layer, the unit-norm weights ŵ = w/‖w‖ of stacked parameters, (K, size) arrays."""
    out = []
    for t in params.values():
        a = t.detach().double().reshape(t.shape[0], -1).numpy()
        out.append(a / np.linalg.norm(a, axis=1, keepdims=True))
    return out


def cos_distance(a: list[np.ndarray], b: list[np.ndarray]) -> np.ndarray:
    """Per model, the mean over layers of 1 − cos(a_l, b_l) (rows of (K, size) arrays)."""
    d = [1.0 - (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
         for x, y in zip(a, b, strict=True)]
    return np.mean(d, axis=0)


def agreement_time(steps: list[float], ref: dict[str, list], arms: list[dict[str, list]],
                   idx: np.ndarray | None = None) -> float:
    """First evaluation step t such that at every evaluation ≥ t the seed-mean train loss
    (over rows ``idx``, default all) of every arm is within check 1's tolerance of the
    reference's, |L̄_arm − L̄_ref| ≤ ``TOL_LOSS`` · L̄_ref (SPEC §4.19; the test accuracy is
    left out: see the module docstring). nan when they do not agree at the last
    evaluation."""
    s = np.asarray(steps, dtype=float)

    def mean(c: dict[str, list], k: str) -> np.ndarray:
        a = np.asarray(c[k], dtype=float)
        return (a if idx is None else a[idx]).mean(0)

    la = mean(ref, "train_loss")
    ok = np.ones(s.size, dtype=bool)
    for c in arms:
        ok &= np.abs(mean(c, "train_loss") - la) <= TOL_LOSS * np.abs(la)
    if not ok[-1]:
        return math.nan
    bad = np.flatnonzero(~ok)
    return float(s[bad[-1] + 1]) if bad.size else float(s[0])


# ----------------------------------------------------------------------------- measurement


def _init(ds: data.Dataset, seeds: list[int], scale: float) -> dict:
    """Stacked initial parameters of ``seeds`` (as :func:`sgdlab.sweep.train_many` builds
    them), every tensor ×``scale``."""
    import torch

    from sgdlab import models

    ms = [models.build("scale_invariant", ds, seed=s, width=WIDTH) for s in seeds]
    names = [n for n, _ in ms[0].named_parameters()]
    return {n: torch.stack([dict(m.named_parameters())[n].detach() * scale for m in ms])
            for n in names}


def _run_rate(ds: data.Dataset, el: float, arms: tuple[str, ...], b: dict[str, Any],
              bseed: int) -> dict[str, Any]:
    """All arms at ηλ = ``el`` in one set of :func:`train_segment` calls (K = arms × seeds)."""
    import torch

    n = b["seeds"]
    seeds = list(range(n))
    lam = el / ETA
    steps = int(round(b["span"] / el))
    w = int(round(WINDOW * steps))
    chunk = max(1, w // SWA_CHUNKS)
    w = chunk * SWA_CHUNKS
    spacing = max(1, steps // b["evals"])
    starts, pts = [], []
    for arm in arms:
        sd = [s + SEED_OFFSET for s in seeds] if arm == "seed" else seeds
        if arm == "pre":
            pre_pts = [{"lr": ETA, "weight_decay": PRE_FACTOR * lam, "seed": s} for s in sd]
            p = train_segment(ds, pre_pts, b["pre"], batch_seed=bseed + 500, evals=1)["params"]
        else:
            p = _init(ds, sd, {"x0.1": 0.1, "x10": 10.0}.get(arm, 1.0))
        starts.append(p)
        pts += [{"lr": ETA, "weight_decay": lam, "seed": s} for s in sd]
    start = {k: torch.cat([p[k] for p in starts]) for k in starts[0]}
    t0 = steps - w
    parts = [train_segment(ds, pts, t0, start=start, batch_seed=bseed,
                           evals=max(1, t0 // spacing))]
    snaps = []
    for i in range(SWA_CHUNKS):
        parts.append(train_segment(ds, pts, chunk, start=parts[-1]["params"],
                                   batch_seed=bseed + 10 * (i + 1),
                                   evals=max(1, chunk // spacing), t_offset=t0 + i * chunk))
        snaps.append(directions(parts[-1]["params"]))
    curve = join(*((p, slice(None)) for p in parts))   # from the first evaluation after 0
    swa = [np.mean([sn[l] for sn in snaps], 0) for l in range(len(snaps[0]))]
    h = SWA_CHUNKS // 2
    swa_a = [np.mean([sn[l] for sn in snaps[:h]], 0) for l in range(len(snaps[0]))]
    swa_b = [np.mean([sn[l] for sn in snaps[h:]], 0) for l in range(len(snaps[0]))]
    last = snaps[-1]
    rows = {arm: slice(i * n, (i + 1) * n) for i, arm in enumerate(arms)}

    def rows_of(x: list[np.ndarray], arm: str) -> list[np.ndarray]:
        return [a[rows[arm]] for a in x]

    ref_swa, ref_last = rows_of(swa, "x1"), rows_of(last, "x1")
    fin = window_means(curve, steps - w, steps)
    out: dict[str, Any] = {
        "el": el, "lambda": lam, "steps": steps, "window": [steps - w, steps],
        "curve_steps": curve["steps"],
        "arms": {a: {k: curve[k][rows[a]] for k in METRICS} for a in arms},
        "final": {a: {k: fin[k][rows[a]] for k in METRICS} for a in arms},
        "swa_dist": {a: cos_distance(rows_of(swa, a), ref_swa).tolist() for a in arms},
        "last_dist": {a: cos_distance(rows_of(last, a), ref_last).tolist() for a in arms},
        "swa_ref": cos_distance(rows_of(swa_a, "x1"), rows_of(swa_b, "x1")).tolist(),
        "tau": relaxation_time(ETA, lam)}
    return out


def measure(ctx: Context, budget: dict[str, Any]) -> dict[str, Any]:
    """Both ηλ runs (module docstring), cached."""
    key = {"claim": CLAIM.id, "v": VERSION, "eta": ETA, "rates": RATES, **budget}

    def compute() -> dict[str, Any]:
        ds = data.load("mnist1d", seed=0)
        return {"seeds": budget["seeds"], "span": budget["span"],
                "rates": [_run_rate(ds, RATES[0], ARMS_1, budget, 0),
                          _run_rate(ds, RATES[1], ARMS_2, budget, 5000)]}

    return ctx.cached(key, compute)


# ----------------------------------------------------------------------------- judgement (pure)


def _agreement(r: dict[str, Any]) -> float:
    return agreement_time(r["curve_steps"], r["arms"]["x1"], [r["arms"][a] for a in TIMED])


def judge(m: dict[str, Any]) -> list[Check]:
    """The three checks of the module docstring from :func:`measure`'s output."""
    rates = m["rates"]
    # 1. same function
    verds, rows = [], {}
    for r in rates:
        el = r["el"]
        early = r["window"][0] * el < MIN_SPAN
        x1 = r["final"]["x1"]
        for arm, f in r["final"].items():
            if arm == "x1":
                continue
            da, sa = paired(x1["test_acc"], f["test_acc"])
            dl, sl = paired(x1["train_loss"], f["train_loss"])
            scale = abs(float(np.mean(x1["train_loss"])))
            va = "INCONCLUSIVE" if early else band(da, sa, TOL_ACC)
            vl = "INCONCLUSIVE" if early else band(dl / scale, sl / scale, TOL_LOSS)
            v = worst_verdict([va, vl])
            verds.append(v)
            rows[f"{arm}@{el:g}"] = {"d_acc": da, "se_acc": sa, "d_loss": dl, "se_loss": sl,
                                     "loss_x1": scale, "verdict": v, "window_too_early": early}
    noise = {f"{r['el']:g}": float(np.std(r["final"]["x1"]["test_acc"], ddof=1))
             for r in rates}
    c1 = Check(
        "different inits, same function",
        f"after ≥ {MIN_SPAN:g}/(ηλ) steps every arm's test accuracy and train loss equal the "
        "×1 arm's (ηλ " + ", ".join(f"{r['el']:g}" for r in rates) + ")",
        "; ".join(f"{k}: Δacc {v['d_acc']:+.4f} ± {v['se_acc']:.4f}, Δloss "
                  f"{v['d_loss'] / v['loss_x1']:+.1%} ± {v['se_loss'] / v['loss_x1']:.1%}"
                  for k, v in rows.items())
        + f" ({m['seeds']} seeds; seed sd of test acc " + ", ".join(
            f"{v:.4f}" for v in noise.values()) + ")",
        f"|Δ test acc| ≤ {TOL_ACC:g}, |Δ train loss| ≤ {TOL_LOSS:.0%} of ×1 (paired, ±{K:g} se "
        f"inside); window from ≥ {MIN_SPAN:g}/(ηλ)", worst_verdict(verds),
        {"arms": rows, "seed_sd_acc": noise})
    # 2. parameters still differ (ηλ₁)
    r = rates[0]
    ref = np.asarray(r["swa_ref"], dtype=float)
    v2, rows2 = [], {}
    for arm in ("x0.1", "x10", "pre"):
        if arm not in r["swa_dist"]:
            continue
        lr_ = np.log(np.asarray(r["swa_dist"][arm], dtype=float) / ref)
        mu, se = mean_se(lr_)
        v = direction(mu - math.log(RATIO_MIN), se, +1)
        v2.append(v)
        rows2[arm] = {"log_ratio": mu, "se": se, "verdict": v,
                      "swa_dist": float(np.mean(r["swa_dist"][arm])),
                      "last_dist": float(np.mean(r["last_dist"][arm]))}
    c2 = Check(
        "parameters (and SWA averages) still differ",
        f"SWA averages of the arms' directions further from ×1's than {RATIO_MIN:g}× the drift "
        "of ×1's own average within the window",
        "; ".join(f"{a}: R = {math.exp(v['log_ratio']):.1f} (ln R {v['log_ratio']:.2f} ± "
                  f"{v['se']:.2f}), 1 − cos SWA {v['swa_dist']:.3f}, last {v['last_dist']:.3f}"
                  for a, v in rows2.items()) + f"; ×1 halves {float(np.mean(ref)):.4f}",
        f"ln R − ln {RATIO_MIN:g} > {K:g} se", worst_verdict(v2), {"arms": rows2},
        basis="derived")
    # 3. time to agreement ∝ 1/(ηλ)
    ta = [_agreement(q) for q in rates]
    rng = np.random.default_rng(0)
    n = m["seeds"]
    boot = []
    for _ in range(BOOT):
        idx = rng.integers(0, n, n)
        t = [agreement_time(q["curve_steps"], q["arms"]["x1"],
                            [q["arms"][a] for a in TIMED], idx) for q in rates]
        boot.append(math.log(t[1] / t[0]) if all(math.isfinite(x) and x > 0 for x in t)
                    else math.nan)
    boot_a = np.asarray(boot)
    ok = np.isfinite(boot_a)
    lratio = math.log(ta[1] / ta[0]) if all(math.isfinite(x) and x > 0 for x in ta) \
        else math.nan
    se3 = float(boot_a[ok].std(ddof=1)) if ok.sum() >= 0.9 * BOOT else math.nan
    target = math.log(rates[0]["el"] / rates[1]["el"])
    v3 = near(lratio, se3, target, TOL_LOG_RATIO)
    c3 = Check(
        "time to agreement ∝ 1/(ηλ)",
        f"t_agree(ηλ {rates[1]['el']:g}) / t_agree(ηλ {rates[0]['el']:g}) = "
        f"{math.exp(target):g}",
        "t_agree " + ", ".join(f"{t:.0f} steps ({t * q['el']:.1f}/(ηλ))"
                               for t, q in zip(ta, rates, strict=True))
        + (f"; ratio {math.exp(lratio):.2f} (ln {lratio:.2f} ± {se3:.2f})"
           if math.isfinite(lratio) else "; an arm never agrees"),
        f"|ln ratio − ln {math.exp(target):g}| ≤ ln 1.5 (±{K:g} se, seed bootstrap)", v3,
        {"t_agree": ta, "log_ratio": lratio, "se": se3, "boot_ok": int(ok.sum())},
        basis="derived")
    if c1.verdict == "FAIL":
        bad = [k for k, v in rows.items() if v["verdict"] == "FAIL"]
        c1.finding = ("not every init reaches the same function within the run: "
                      + ", ".join(bad) + " still differ from the ×1 arm after "
                      f"{m['span'] * (1 - WINDOW):g}/(ηλ) steps")
    return [c1, c2, c3]


# ----------------------------------------------------------------------------- presentation


def figures(ctx: Context, m: dict[str, Any]) -> list[str]:
    """Seed-mean train loss and test accuracy of every arm against ηλ·t, both ηλ."""
    from sgdlab.plots import new_figure, save_figure

    fig, axes = new_figure(1, 2, figsize=(10, 3.8))
    for ax, key in zip(axes[0], ("train_loss", "test_acc"), strict=True):
        for r, ls in zip(m["rates"], ("-", "--"), strict=True):
            x = np.asarray(r["curve_steps"], dtype=float) * r["el"]
            for arm, c in r["arms"].items():
                ax.plot(x, np.nanmean(np.asarray(c[key], dtype=float), 0), lw=1, ls=ls,
                        label=f"{arm}, ηλ {r['el']:g}")
        ax.set_xlabel("ηλ · step")
        ax.set_ylabel(key.replace("_", " ") + " (seed mean)")
    axes[0][0].legend(fontsize=7)
    path, rel = ctx.figure(CLAIM, "arms")
    save_figure(fig, path)
    return [rel]


def notes(ctx: Context, m: dict[str, Any], budget: dict[str, Any]) -> list[str]:
    """What was run, for the report (below the checks)."""
    return [
        f"MNIST-1D, scale-invariant MLP 2×{WIDTH}, η = {ETA:g}; ηλ "
        + ", ".join(f"{r['el']:g} ({r['steps']} steps, τ = {r['tau']:.0f})" for r in m["rates"])
        + f"; {m['seeds']} seeds; arms " + ", ".join(ARMS_1) + f" (pretrained {budget['pre']} "
        f"steps at ηλ = {PRE_FACTOR * RATES[0]:g})."
        + ("" if ctx.mode == "full" else
           f" {ctx.mode} budget: fewer seeds and shorter runs than full.")]


def run(ctx: Context) -> Result:
    """Measure, judge, present (see the module docstring) through the kit's
    :func:`~sgdlab.experiments.kit.run_claim`."""
    return run_claim(sys.modules[__name__], ctx)
