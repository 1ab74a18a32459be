"""Claim 4: the linear scaling rule η = Bη₀ in training (SPEC §4.4; seed 002; Goyal et al. 2017).

The notes (seed 002, "learning rate scaling"): two updates at batch 1 and η₁ equal one update at
batch 2 and 2η₁, "hence η_b = bη₁"; "by scaling the learning rate with the batch size very large
batch size can lead to very fast (highly parallel) training" (Goyal et al. 2017). The SPEC's
statement: final accuracy is nearly constant over B when η = η_ref·B/B_ref with gradual warmup.

Theory (SPEC §4.4). The derivation (B small steps ≈ one step at Bη₀) assumes Φ barely moves
during those steps (claim 17 measures the error), so the rule has a regime, predicted here from
a *reference run* (B_ref = 128, η_ref = 0.1, β = 0.9) before the ladders are judged:

* stability: heavy ball is stable while η·λ_max < 2(1 + β). With λ_max^ref the sharpness of
  the reference run, B_stab = B_ref·2(1 + β)/(η_ref·λ_max^ref) (:func:`predict`; conservative,
  since training tends to sit at the edge of stability). λ_max^ref is the largest sharpness
  measured while the schedule is at ≥ half its peak, f(t) ≥ ½ — chosen after one look at a
  10-epoch reference run, whose sharpness keeps rising (13 → 19) as η anneals, where the step
  is small and the edge is far; before the ladders were run;
* step budget: beyond the critical batch B_crit a larger batch buys no fewer steps,
  S(B) = S_min(1 + B_crit/B) (McCandlish et al. 2018), and B_crit is of the order of
  B_simple = tr Σ/‖G‖² measured along the reference run (the median of the instrument's
  smoothed B_simple over 10–90 % of the run); at a fixed number of *epochs* a batch well
  above B_crit gets too few steps;
* warmup can only matter where η_peak(B)·λ_max(0) > 2(1 + β), λ_max(0) at initialisation.

So "flat" is predicted for B ≤ B_max = min(B_stab, B_crit^pred).

Workload: the reference recipe of ``make run`` (configs/mnist1d_cnn.yaml): MNIST-1D (4000 train
/ 1000 test), the 1-D ``cnn``, heavy-ball momentum β = 0.9, coupled weight decay 5e-4, epoch
shuffling; η(B) = η_ref·B/B_ref, cosine decay after a linear warmup over Goyal's 5/90 of the
run (W = max(1, round(E·(5/90)·N/B)) steps; "without warmup": the full η for those W steps,
:func:`lr_multiplier`). The reference run is one :class:`~sgdlab.train.Trainer` run with the
sharpness and noise-scale instruments; the ladders are :func:`sgdlab.sweep.train_many` runs
(the same update as torch.optim.SGD, tested). E epochs by budget (:data:`BUDGETS`; the recipe's
150 do not fit). A run that diverges scores chance (1/10) and is counted.

* fixed-epochs ladder: every B sees E·N examples, T(B) = round(E·N/B) steps, seeds 0..n−1
  (init and batch order), with warmup; without warmup at the largest B's;
* fixed-steps ladder: every B runs T_ref = T(B_ref) steps at η ∈ η(B)·{multipliers} (η ≤ 0.8;
  full: {1, 2} below B_ref, {½, 1, 2} at B_ref, {¼, ½, 1} above — widened after the first
  full run, whose grid {½, 1} left B = 64 and 1024 short of the target; quick: η(B) alone,
  so its S(B) is at η = Bη₀, not tuned, plus η(B)/2 where B > B_stab — added after the
  first full run for check 3b), seed 0, test accuracy every
  ≈ T_ref/50 steps; S(B) = the first evaluated step at which the test accuracy reaches the
  target, minimised over η ("η tuned per B"); the target is the reference run's test accuracy
  at its middle evaluation (T_ref/2), so S(B_ref) ≈ T_ref/2. S(B) is read inside the recipe's
  warmup + cosine schedule of T_ref steps (not at constant η): the runs double as the
  fixed-steps ladder.

Checks (tolerances fixed before measuring; BAND = 2 percentage points, ±2 se; verdict rules of
:mod:`sgdlab.experiments.kit.verdicts`). Differences are paired over seeds — seed s sets the
initialisation and the batch seed at every B, common random numbers — with the se of
:func:`paired_diff`: training noise (the sd of the paired differences) plus the test-set
term (the McNemar variance of the paired per-example correctness). Disclosed: a first version
used unpaired seed sds floored at the binomial sd; the first quick run showed a between-seed
spread of ±6 pp at 10 epochs (the same seed high or low at every B) that made every
comparison INCONCLUSIVE, and the pairing replaced it after that run. Also after the first
quick runs, for time only (each was 90–130 s): quick dropped B = 256, 512 from its
fixed-epochs ladder, B = 64 and the η/2 member from its fixed-steps ladder, and added B = 32
(the only ladder point inside its predicted range other than the anchor):

1. (notes) η = Bη₀ keeps the final accuracy flat at fixed epochs, in the predicted regime:
   every ladder B ≤ B_max within BAND of the anchor (``band``), the anchor being B_ref when
   B_ref ≤ B_max, else the largest ladder B ≤ B_max (a B_ref outside the range is itself
   predicted to be off; this anchor rule was added after the first quick run put B_max = 74
   below B_ref); INCONCLUSIVE when no other ladder point lies inside;
2. (derived) beyond the range the rule breaks at fixed epochs: every ladder B ≥ 4·B_max loses
   more than BAND against the anchor (``direction`` of acc_anchor − acc_B − BAND);
3. (derived) at fixed steps, B_ref < B ≤ B_stab at η = Bη₀ is no worse than B_ref
   (acc_ref − acc_B ≤ BAND, ``at_most``): more examples per step at the same temperature;
   3b. (derived, added after the first full run) past B_stab the linear η is too large: for
   B > B_stab a smaller η of the fixed-steps grid beats η = Bη₀ (``direction``);
4. (derived) S(B) = S_min(1 + B_crit/B): least squares of S on 1/B over the B that reach the
   target (≥ 3 needed); the fitted B_crit of the order of the reference run's B_simple:
   |log₁₀(B_crit/B_simple)| ≤ 1 (``band`` at ±k se, se by the delta method from the fit,
   k = max(2, t-quantile of its n − 2 dof) — the t-quantile added after the first quick run);
5. (derived) warmup: where η_peak λ_max(0) ≤ 2(1 + β) no warmup gap at the largest B's
   (|acc_warmup − acc_no_warmup| ≤ BAND, ``band``); where it exceeds, a positive gap
   (``direction``).

Budgets are data (:data:`BUDGETS`); :func:`measure` does all training (cached per run group),
:func:`predict` and :func:`judge` are pure, :func:`figures` draws.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from typing import Any

import numpy as np

from sgdlab.experiments.base import Check, Claim, Context, Result, worst_verdict
from sgdlab.experiments.kit import run_claim
from sgdlab.experiments.kit.verdicts import K, at_most, band, direction

CLAIM = Claim("4-linear-scaling", "Linear scaling rule in training",
              "Final accuracy is nearly constant over B when η = η_ref·B/B_ref with gradual "
              "warmup; without warmup the largest batches degrade.", "§4.4")

VERSION = 2
# the reference recipe: configs/mnist1d_cnn.yaml (what `make run` trains)
DATASET, MODEL, OPTIMIZER = "mnist1d", "cnn", "momentum"
B_REF, LR_REF, BETA, WEIGHT_DECAY = 128, 0.1, 0.9, 5e-4
SAMPLING = "shuffle"
WARMUP_FRACTION = 5 / 90       # Goyal et al. 2017: 5 warmup epochs of 90
EDGE = 2 * (1 + BETA)          # heavy ball on a quadratic: stable while η·λ_max < 2(1 + β)
BAND = 0.02                    # "nearly constant": within 2 percentage points of acc(B_ref)
BEYOND = 4.0                   # "well above" the range: B ≥ 4·B_max
DECADE = 1.0                   # B_crit "of the order of" B_simple: |log10 ratio| ≤ 1
ETA_CAP = 0.8                  # the largest η of the fixed-steps grid (η(1024))
CHANCE = 0.1                   # the score of a diverged run (10 classes)
B_SIMPLE_WINDOW = (0.1, 0.9)   # fraction of the reference run over which B_simple is taken

BUDGETS: dict[str, dict[str, Any]] = {
    "smoke": {"epochs": 1, "min_seeds": 1, "epoch_ladder": [128, 512],
              "step_ladder": [128, 512], "eta_mults": [1.0], "no_warmup": [512],
              "sharp_subset": 128, "sharp_iters": 5, "noise_points": 8},
    "quick": {"epochs": 10, "min_seeds": 2, "epoch_ladder": [32, 64, 128, 1024],
              "step_ladder": [128, 256, 512],
              # η(B)/2 only where the reference run puts η(B) past the edge (B > B_stab)
              "eta_mults": {"below": [1.0], "ref": [1.0], "above": [1.0],
                            "past_stab": [0.5, 1.0]},
              "no_warmup": [1024], "sharp_subset": 256, "sharp_iters": 15,
              "noise_points": 40},
    "full": {"epochs": 20, "min_seeds": 3, "epoch_ladder": [32, 64, 128, 256, 512, 1024],
             "step_ladder": [64, 128, 256, 512, 1024],
             # the full run's first grid, η(B)·{½, 1} everywhere, left B = 64 and 1024 short
             # of the target (1024 collapsed at both 0.4 and 0.8): widened after that run
             "eta_mults": {"below": [1.0, 2.0], "ref": [0.5, 1.0, 2.0],
                           "above": [0.25, 0.5, 1.0]},
             "no_warmup": [512, 1024], "sharp_subset": 1024, "sharp_iters": 20,
             "noise_points": 100},
}
SHARP_FRACTIONS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


# ----------------------------------------------------------------------------- theory (pure)


def scaled_lr(batch: int) -> float:
    """η(B) = η_ref·B/B_ref with the recipe's η_ref = 0.1, B_ref = 128 (SPEC §2.5)."""
    from sgdlab.schedules import linear_scaling

    return linear_scaling(LR_REF, batch, B_REF)


def run_length(batch: int, epochs: float, n_train: int) -> tuple[int, int]:
    """(T, W): T = round(E·N/B) steps (every B sees E·N examples) and the warmup
    W = max(1, round(E·(5/90)·N/B)) steps (Goyal's fraction of the run; SPEC §2.5, §4.4)."""
    steps = max(2, round(epochs * n_train / batch))
    warm = min(steps - 1, max(1, round(WARMUP_FRACTION * epochs * n_train / batch)))
    return steps, warm


def lr_multiplier(t: int, steps: int, warm: int, warmup: bool) -> float:
    """f(t): linear ramp t/W (or 1 without warmup) for t < W, then ½(1 + cos(π(t − W)/(T − W)))
    — the multiplier on η(B) at optimizer step t (SPEC §2.5)."""
    if t < warm:
        return t / warm if warmup else 1.0
    return 0.5 * (1.0 + math.cos(math.pi * min(t - warm, steps - warm) / (steps - warm)))


def schedule(steps: int, warm: int, warmup: bool):
    """:func:`lr_multiplier` as an sgdlab schedule (warmup(cosine(T − W), W, start 0 or 1))."""
    from sgdlab import schedules

    return schedules.warmup(schedules.cosine(steps - warm), warm, 0.0 if warmup else 1.0)


def predict(ref: dict[str, Any], ladder: list[int]) -> dict[str, Any]:
    """The regime of SPEC §4.4 from the reference run's measurements: B_stab, B_crit^pred
    (B_simple), B_max = min of the two, and where warmup can matter (η_peak(B)λ_max(0) >
    2(1 + β)) for every B of ``ladder``."""
    lam = ref["lambda_ref"]
    b_stab = B_REF * EDGE / (LR_REF * lam) if lam and lam > 0 else math.inf
    b_crit = ref["b_simple"]
    b_max = min(b_stab, b_crit) if math.isfinite(b_crit) else b_stab
    lam0 = ref["lambda_init"]
    return {"B_stab": b_stab, "B_crit_pred": b_crit, "B_max": b_max, "edge": EDGE,
            "warmup_product": {str(b): scaled_lr(b) * lam0 for b in ladder},
            "warmup_matters": {str(b): scaled_lr(b) * lam0 > EDGE for b in ladder}}


def steps_to_target(steps: list[int], acc: list[float], target: float) -> int | None:
    """The first evaluated step at which ``acc`` ≥ ``target`` (None: never)."""
    for s, a in zip(steps, acc, strict=True):
        if a is not None and math.isfinite(a) and a >= target:
            return int(s)
    return None


def fit_sb(batches: list[int], steps: list[float]) -> dict[str, float]:
    """Least squares S = S_min + S_min·B_crit·(1/B): S_min, B_crit, the se of log10 B_crit
    (delta method; residual variance, n − 2 dof) and R²; nan where undefined."""
    out = {"S_min": math.nan, "B_crit": math.nan, "log10_B_crit_se": math.nan,
           "S_min_se": math.nan, "r2": math.nan, "n": len(batches)}
    if len(batches) < 2:
        return out
    x = 1.0 / np.asarray(batches, dtype=float)
    y = np.asarray(steps, dtype=float)
    X = np.stack([np.ones_like(x), x], 1)
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    a, c = float(coef[0]), float(coef[1])
    out["S_min"] = a
    out["B_crit"] = c / a if a > 0 and c > 0 else math.nan
    res = y - X @ coef
    ss = float(((y - y.mean()) ** 2).sum())
    out["r2"] = 1 - float((res ** 2).sum()) / ss if ss > 0 else math.nan
    if len(batches) >= 3 and a > 0 and c > 0:
        cov = float((res ** 2).sum()) / (len(batches) - 2) * np.linalg.inv(X.T @ X)
        var_ln = cov[1, 1] / c ** 2 + cov[0, 0] / a ** 2 - 2 * cov[0, 1] / (a * c)
        out["log10_B_crit_se"] = math.sqrt(max(var_ln, 0.0)) / math.log(10)
        out["S_min_se"] = math.sqrt(cov[0, 0])
    return out


def paired_diff(a: list[float], b: list[float], n_test: int,
                correct_a: list[str] | None = None, correct_b: list[str] | None = None,
                single: bool = False) -> tuple[float, float | None]:
    """Δ = mean_s(a_s − b_s) over the seeds s both groups share (seed s: the same
    initialisation and batch seed in both — common random numbers) and its se, the two
    sources of error added: se² = s_d²/n + var_i(δ_i)/n_test, s_d the sd (ddof 1) of the
    paired differences (training noise) and δ_i the seed-averaged difference in correctness
    on test example i (the test set is one sample; the McNemar variance of a paired
    difference). Without the per-example correctness strings ("0"/"1" per test example) the
    second term is the unpaired binomial (p̄_a(1 − p̄_a) + p̄_b(1 − p̄_b))/n_test
    (conservative). With one seed the se is None — the training noise is unmeasured — unless
    ``single``, where it is the test-set term alone."""
    n = min(len(a), len(b))
    if n == 0:
        return math.nan, None
    d = np.asarray(a[:n], dtype=float) - np.asarray(b[:n], dtype=float)
    if correct_a and correct_b and len(correct_a) >= n and len(correct_b) >= n:
        ca = np.array([[c == "1" for c in x] for x in correct_a[:n]], dtype=float)
        cb = np.array([[c == "1" for c in x] for x in correct_b[:n]], dtype=float)
        delta = (ca - cb).mean(0)
        test_var = float(delta.var(ddof=1)) / delta.size
    else:
        pa, pb = float(np.mean(a[:n])), float(np.mean(b[:n]))
        test_var = (max(pa * (1 - pa), 0.0) + max(pb * (1 - pb), 0.0)) / n_test
    if n < 2:
        return float(d.mean()), math.sqrt(test_var) if single else None
    return float(d.mean()), math.sqrt(float(d.var(ddof=1)) / n + test_var)


def t_k(dof: int) -> float:
    """The half-width multiplier of a fit with ``dof`` residual degrees of freedom:
    max(K, t_{0.975}(dof)) (nan without dof)."""
    from scipy.stats import t

    return max(K, float(t.ppf(0.975, dof))) if dof >= 1 else math.nan


def at_chance(r: dict[str, Any]) -> bool:
    """A finite run that ended at the class prior: final train loss ≥ 0.95·ln 10."""
    loss = r.get("train_loss")
    return (not r["diverged"]) and loss is not None and loss >= 0.95 * math.log(10)


# ----------------------------------------------------------------------------- measurement


def train_config(batch: int, epochs: float, warmup: bool, seed: int, n_train: int):
    """The :class:`~sgdlab.config.TrainConfig` of the reference recipe at batch B with
    η(B) = η_ref·B/B_ref, T and W from :func:`run_length` and the schedule of
    :func:`lr_multiplier`; evaluation and logging at the end."""
    from sgdlab.config import from_dict

    steps, warm = run_length(batch, epochs, n_train)
    return from_dict({
        "dataset": DATASET, "model": MODEL, "optimizer": OPTIMIZER, "lr": scaled_lr(batch),
        "optimizer_options": {"beta": BETA, "weight_decay": WEIGHT_DECAY},
        "schedule": "warmup",
        "schedule_options": {"schedule": {"name": "cosine", "total": steps - warm},
                             "steps": warm, "start": 0.0 if warmup else 1.0},
        "warmup_steps": 0, "batch_size": batch, "steps": steps, "sampling": SAMPLING,
        "seed": seed, "device": "cpu", "eval_every": steps, "log_every": steps,
    })


def _finite(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def reference_run(epochs: float, n_train: int, budget: dict[str, Any]) -> dict[str, Any]:
    """The reference run (B_ref, η_ref, seed 0, with warmup) through the Trainer with the
    sharpness instrument (at step 1 and at SHARP_FRACTIONS of the run) and the noise-scale
    instrument (``noise_points`` steps), test accuracy at T/4, T/2, 3T/4, T."""
    from sgdlab.instruments import NoiseScaleInstrument, Sharpness
    from sgdlab.train import Trainer

    cfg = train_config(B_REF, epochs, True, 0, n_train)
    steps, _ = run_length(B_REF, epochs, n_train)
    cfg = dataclasses.replace(cfg, eval_every=max(1, steps // 4))
    tr = Trainer(cfg, progress=False)
    sharp_at = {1, *(max(1, round(f * steps)) for f in SHARP_FRACTIONS)}
    noise_every = max(1, steps // budget["noise_points"])
    insts = [Sharpness(lambda t: t in sharp_at, subset=budget["sharp_subset"],
                       iters=budget["sharp_iters"]),
             NoiseScaleInstrument(lambda t: t == 1 or t % noise_every == 0)]
    for inst in insts:
        inst.setup(tr.monitor)
    tr.monitor.instruments = insts
    t0 = time.perf_counter()
    summary = tr.fit()
    recs = tr.monitor.records
    sharp = [r for r in recs if r["name"] == "sharpness"]
    noise = [r for r in recs if r["name"] == "noise_scale"]
    evals = [r for r in tr.history if r.get("kind") == "eval"]
    return {"steps": steps, "status": summary["status"],
            "final_test_acc": _finite(summary["final"].get("test_acc")),
            "sharp_step": [r["step"] for r in sharp],
            "lambda": [_finite(r["lambda_max"]) for r in sharp],
            "lr_times_lambda": [_finite(r["lr_times_lambda"]) for r in sharp],
            "noise_step": [r["step"] for r in noise],
            "b_simple_smoothed": [_finite(r.get("b_simple_smoothed")) for r in noise],
            "b_simple": [_finite(r.get("b_simple")) for r in noise],
            "eval_step": [r["step"] for r in evals],
            "eval_test_acc": [_finite(r.get("test_acc")) for r in evals],
            "seconds": time.perf_counter() - t0}


def summarise_reference(r: dict[str, Any]) -> dict[str, Any]:
    """λ_max(0), λ_max^ref (largest sharpness where f(t) ≥ ½), the largest λ_max and η(t)λ,
    B_simple^ref (median smoothed B_simple over B_SIMPLE_WINDOW of the run) and the target
    (test accuracy at the evaluation nearest T/2)."""
    T = r["steps"]
    lam = [(s, x, lx) for s, x, lx in zip(r["sharp_step"], r["lambda"], r["lr_times_lambda"],
                                          strict=True) if x is not None]
    init = [x for s, x, _ in lam if s == 1]
    high = [x for s, x, lx in lam if s > 1 and lx is not None and x > 0 and lx / x >= 0.5 * LR_REF]
    lo, hi = B_SIMPLE_WINDOW
    bs = [b for s, b in zip(r["noise_step"], r["b_simple_smoothed"], strict=True)
          if lo * T <= s <= hi * T and b is not None]
    ev = [(abs(s - T / 2), a) for s, a in zip(r["eval_step"], r["eval_test_acc"], strict=True)
          if a is not None]
    return {"lambda_init": init[0] if init else math.nan,
            "lambda_ref": max(high) if high else math.nan,
            "lambda_max_all": max((x for _, x, _ in lam), default=math.nan),
            "max_lr_lambda": max((lx for _, _, lx in lam if lx is not None), default=math.nan),
            "b_simple": float(np.median(bs)) if bs else math.nan,
            "b_simple_range": [float(min(bs)), float(max(bs))] if bs else [math.nan, math.nan],
            "target": min(ev)[1] if ev else math.nan, "steps": T}


def _test_correct(ds, params: dict[str, Any], k: int) -> list[str]:
    """Per test example, whether each of the k stacked models classifies it correctly
    ("0"/"1" strings; the paired se of :func:`paired_diff` needs them)."""
    import torch
    from torch.func import functional_call

    from sgdlab import models

    model = models.build(MODEL, ds, seed=0)
    out = []
    with torch.no_grad():
        for i in range(k):
            logits = functional_call(model, {n: p[i] for n, p in params.items()},
                                     (ds.x_test.float(),))
            ok = (logits.argmax(-1) == ds.y_test).tolist()
            out.append("".join("1" if c else "0" for c in ok))
    return out


def eta_mults(budget: dict[str, Any], batch: int, b_stab: float = math.inf) -> list[float]:
    """The fixed-steps η grid's multipliers on η(B): a list for every B, or per side of B_ref
    ({"below", "ref", "above"}: past B_crit and B_stab the best η falls below the linear
    rule, below B_ref it can lie above), with an optional "past_stab" list for B > B_stab
    (the prediction of the reference run, known before the ladder runs)."""
    g = budget["eta_mults"]
    if isinstance(g, dict):
        if batch > b_stab and "past_stab" in g:
            return list(g["past_stab"])
        return list(g["below" if batch < B_REF else "ref" if batch == B_REF else "above"])
    return list(g)


def _ladder(ds, batch: int, steps: int, warm: int, warmup: bool,
            points: list[dict[str, Any]], eval_every: int, same_batches: bool
            ) -> dict[str, Any]:
    """One train_many group at batch B: final test accuracy (chance if diverged), final
    train loss, divergence, and the test-accuracy curve."""
    from sgdlab.sweep import train_many

    res = train_many(ds, MODEL, points, batch_size=batch, steps=steps,
                     schedule=schedule(steps, warm, warmup), sampling=SAMPLING,
                     same_batches=same_batches, eval_every=eval_every,
                     eval_train=eval_every == 0)
    div = [bool(d >= 0) for d in res.diverged_at]
    acc = [CHANCE if d or not math.isfinite(a) else float(a)
           for d, a in zip(div, res.final("test_acc"), strict=True)]
    correct = _test_correct(ds, res.params, len(points))
    correct = ["0" * ds.n_test if d else c for d, c in zip(div, correct, strict=True)]
    return {"lr": [p["lr"] for p in points], "seed": [p["seed"] for p in points],
            "test_acc": acc, "diverged": div, "correct": correct,
            "train_loss": [_finite(x) for x in res.final("train_loss")],
            "eval_step": res.steps.tolist(),
            "curve": [[_finite(x) for x in row] for row in res.test_acc],
            "seconds": res.seconds}


def measure(ctx: Context, budget: dict[str, Any]) -> dict[str, Any]:
    """The reference run and its prediction first, then both ladders (each run group cached)."""
    from sgdlab import data

    ds = data.load(DATASET, seed=0)
    n_train, n_test = ds.n_train, ds.n_test
    epochs = budget["epochs"]
    n_seeds = max(budget["min_seeds"], ctx.seeds)
    base = {"claim": CLAIM.id, "v": VERSION, "epochs": epochs}
    t0 = time.perf_counter()
    ref_raw = ctx.cached({**base, "part": "reference", **budget},
                         lambda: reference_run(epochs, n_train, budget))
    ref = summarise_reference(ref_raw)
    ladder_all = sorted(set(budget["epoch_ladder"]) | set(budget["step_ladder"]))
    pred = predict(ref, ladder_all)           # fixed before any ladder run is looked at

    def hyper(lr: float, seed: int) -> dict[str, Any]:
        return {"lr": lr, "momentum": BETA, "weight_decay": WEIGHT_DECAY, "seed": seed}

    epochs_runs: dict[str, Any] = {}
    for warmup, ladder in ((True, budget["epoch_ladder"]), (False, budget["no_warmup"])):
        for b in ladder:
            T, W = run_length(b, epochs, n_train)
            pts = [hyper(scaled_lr(b), s) for s in range(n_seeds)]
            key = {**base, "part": "epochs", "B": b, "warmup": warmup, "points": pts}
            epochs_runs[f"{b}/{int(warmup)}"] = ctx.cached(
                key, lambda b=b, T=T, W=W, w=warmup, p=pts: _ladder(ds, b, T, W, w, p, 0, False))
    T_ref, W = run_length(B_REF, epochs, n_train)     # the same T and W for every B
    every = max(1, T_ref // 50)
    steps_runs: dict[str, Any] = {}
    for b in budget["step_ladder"]:
        mults = eta_mults(budget, b, pred["B_stab"])
        lrs = sorted({round(min(scaled_lr(b) * k, ETA_CAP), 10) for k in mults}
                     | {scaled_lr(b)})
        pts = [hyper(lr, 0) for lr in lrs]
        key = {**base, "part": "steps", "B": b, "T": T_ref, "W": W, "every": every,
               "points": pts}
        steps_runs[str(b)] = ctx.cached(
            key, lambda b=b, p=pts: _ladder(ds, b, T_ref, W, True, p, every, True))
    return {"n_train": n_train, "n_test": n_test, "epochs": epochs, "seeds": n_seeds,
            "budget": budget, "reference_run": ref_raw, "reference": ref, "prediction": pred,
            "epochs_runs": epochs_runs, "steps_runs": steps_runs, "T_ref": T_ref,
            "seconds": time.perf_counter() - t0}


# ----------------------------------------------------------------------------- judgement (pure)


def _acc(m: dict[str, Any], b: int, warmup: bool = True) -> list[float]:
    return list(m["epochs_runs"][f"{b}/{int(warmup)}"]["test_acc"])


def _cor(m: dict[str, Any], b: int, warmup: bool = True) -> list[str] | None:
    return m["epochs_runs"][f"{b}/{int(warmup)}"].get("correct")


def _pp(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:+.1f}"


def _se(x: float | None) -> float:
    return math.nan if x is None else x


def _fmt_diff(b: int, d: float, se: float | None) -> str:
    return f"B={b}: {_pp(d)}" + (f" ± {100 * se:.1f}" if se is not None else "") + " pp"


def sb_points(m: dict[str, Any]) -> dict[str, Any]:
    """S(B) with η tuned per B from the fixed-steps runs: for each B the smallest
    steps-to-target over its η grid, the η that achieved it; None where no η reached it."""
    target = m["reference"]["target"]
    out: dict[str, Any] = {"B": [], "S": [], "lr": [], "censored": []}
    for key, r in m["steps_runs"].items():
        best = None
        for lr, curve in zip(r["lr"], r["curve"], strict=True):
            s = steps_to_target(r["eval_step"], curve, target)
            if s is not None and (best is None or s < best[0]):
                best = (s, lr)
        if best is None:
            out["censored"].append(int(key))
        else:
            out["B"].append(int(key))
            out["S"].append(best[0])
            out["lr"].append(best[1])
    order = np.argsort(out["B"])
    for k in ("B", "S", "lr"):
        out[k] = [out[k][i] for i in order]
    return out


def judge(m: dict[str, Any]) -> list[Check]:
    """The six checks of the module docstring from :func:`measure`'s output."""
    pred, ref = m["prediction"], m["reference"]
    n_test = m["n_test"]
    b_max, b_stab, b_crit = pred["B_max"], pred["B_stab"], pred["B_crit_pred"]
    epoch_ladder = sorted(int(k.split("/")[0]) for k in m["epochs_runs"] if k.endswith("/1"))
    acc_ref = _acc(m, B_REF)
    regime = (f"predicted from the reference run: B_stab = {B_REF}·2(1 + β)/(η_ref·λ_ref) = "
              f"{b_stab:.0f} (λ_ref = {ref['lambda_ref']:.3g}), B_crit ≈ B_simple = "
              f"{b_crit:.0f}; B_max = min = {b_max:.0f}")
    checks = []

    # 1. (notes) flat inside the predicted range
    inside = [b for b in epoch_ladder if b <= b_max]
    # the anchor: B_ref if it lies inside the range, else the largest ladder B inside
    anchor = B_REF if B_REF <= b_max or not inside else max(inside)
    inside = [b for b in inside if b != anchor]
    pairs = {b: paired_diff(_acc(m, b), _acc(m, anchor), n_test, _cor(m, b), _cor(m, anchor))
             for b in epoch_ladder}
    diffs = {b: d for b, (d, _) in pairs.items()}
    ses = {b: se for b, (_, se) in pairs.items()}
    per = {b: band(diffs[b], _se(ses[b]), BAND) for b in inside}
    v1 = worst_verdict(per.values()) if inside else "INCONCLUSIVE"
    beyond = [b for b in epoch_ladder if b >= BEYOND * b_max]
    lost = [b for b in epoch_ladder if b > b_max
            and direction(-diffs[b] - BAND, ses[b], +1) == "PASS"]
    checks.append(Check(
        "fixed epochs: flat in B inside the predicted range",
        f"final test accuracy at η = {LR_REF}·B/{B_REF} (warmup, {m['epochs']} epochs) within "
        f"{100 * BAND:.0f} pp of the anchor's for every ladder B ≤ B_max ({regime}); anchor "
        f"B = {anchor} (B_ref where it lies inside the range, else the largest ladder B "
        "inside)",
        "Δ vs the anchor: " + ("; ".join(_fmt_diff(b, diffs[b], ses[b]) for b in inside)
                               if inside else f"no other ladder B ≤ B_max = {b_max:.0f}") +
        " | outside the range: " + "; ".join(_fmt_diff(b, diffs[b], ses[b])
                                             for b in epoch_ladder if b > b_max),
        f"|Δ| ≤ {100 * BAND:.0f} pp at every judged B (±{K:g} se: kit band; Δ paired over "
        "seeds, se from the seeds and the test set, paired_diff)", v1,
        {"B": epoch_ladder, "anchor": anchor, "judged": inside, "per_B_verdict": per,
         "diff": diffs, "se": ses,
         "acc_runs": {b: _acc(m, b) for b in epoch_ladder}, "B_max": b_max,
         "lost_beyond_range": lost},
        finding=(f"the notes give η = Bη₀ no range: here B ≤ min(B_stab ≈ {b_stab:.0f}, "
                 f"B_crit ≈ B_simple ≈ {b_crit:.0f})")))

    # 2. (derived) beyond the range the rule breaks at fixed epochs
    per2 = {b: direction(-diffs[b] - BAND, ses[b], +1) for b in beyond}
    checks.append(Check(
        "fixed epochs: the rule breaks well beyond the range",
        f"for B ≥ {BEYOND:g}·B_max = {BEYOND * b_max:.0f} the batch gets too few steps "
        f"(T = E·N/B) or crosses the stability edge: acc(B) < acc(anchor B = {anchor}) − "
        f"{100 * BAND:.0f} pp",
        "; ".join(f"{_fmt_diff(b, diffs[b], ses[b])} (T = "
                  f"{run_length(b, m['epochs'], m['n_train'])[0]})" for b in beyond)
        if beyond else "no ladder B that far beyond the range",
        f"acc_anchor − acc_B − {100 * BAND:.0f} pp > 0 beyond ±{K:g} se (kit direction)",
        worst_verdict(per2.values()) if beyond else "INCONCLUSIVE",
        {"judged": beyond, "per_B_verdict": per2,
         "diverged": {b: sum(m["epochs_runs"][f"{b}/1"]["diverged"]) for b in epoch_ladder}},
        basis="derived",
        finding=(f"at {m['epochs']} epochs batches ≫ B_crit get too few steps: " + ", ".join(
            f"B = {b} ({run_length(b, m['epochs'], m['n_train'])[0]} steps) {_pp(diffs[b])} pp"
            for b in beyond if per2[b] == "PASS")) if "PASS" in per2.values() else ""))

    # 3. (derived) fixed steps up to B_stab
    steps_b = sorted(int(k) for k in m["steps_runs"])
    lin, cor_lin = {}, {}
    for b in steps_b:
        r = m["steps_runs"][str(b)]
        i = int(np.argmin([abs(lr - scaled_lr(b)) for lr in r["lr"]]))
        lin[b] = r["test_acc"][i]
        cor_lin[b] = r["correct"][i] if r.get("correct") else None
    best = {b: max(m["steps_runs"][str(b)]["test_acc"]) for b in steps_b}
    judged3 = [b for b in steps_b if B_REF < b <= b_stab]
    p3 = {b: paired_diff(acc_ref[:1], [lin[b]], n_test, (_cor(m, B_REF) or [None])[:1],
                         [cor_lin[b]] if cor_lin[b] else None, single=True) for b in steps_b}
    d3 = {b: d for b, (d, _) in p3.items()}
    s3 = {b: se for b, (_, se) in p3.items()}
    per3 = {b: at_most(d3[b], _se(s3[b]), BAND) for b in judged3}
    checks.append(Check(
        "fixed steps: no loss up to B_stab",
        f"at equal steps (T_ref = {m['T_ref']}) η = Bη₀ for B_ref < B ≤ B_stab = {b_stab:.0f} "
        f"is no worse than B_ref: more examples per step at the same temperature "
        f"(beyond B_stab the linear η is past the edge η·λ_ref > 2(1 + β))",
        "acc(B) at η = Bη₀ [best over the η grid]: " + "; ".join(
            f"B={b}: {100 * lin[b]:.1f} [{100 * best[b]:.1f}] %" for b in steps_b)
        + f"; B_ref {100 * acc_ref[0]:.1f} % (seed 0 of the fixed-epochs runs, the same T)",
        f"acc_ref − acc_B ≤ {100 * BAND:.0f} pp (±{K:g} se, kit at_most; seed 0 against "
        "seed 0: the se is the paired test-set term only, the training noise of the "
        "difference is not measured)",
        worst_verdict(per3.values()) if judged3 else "INCONCLUSIVE",
        {"B": steps_b, "acc_linear": lin, "acc_best": best, "deficit": d3, "se": s3,
         "judged": judged3, "per_B_verdict": per3, "T": m["T_ref"]}, basis="derived"))

    # 3b. (derived) past B_stab the linear η is too large at fixed steps
    judged3b, d3b, s3b, per3b, alt = [], {}, {}, {}, {}
    for b in steps_b:
        r = m["steps_runs"][str(b)]
        small = [i for i, lr in enumerate(r["lr"]) if lr < scaled_lr(b) * (1 - 1e-9)]
        if b <= b_stab or not small:
            continue
        j = max(small, key=lambda i: r["test_acc"][i])
        alt[b] = r["lr"][j]
        cj = r["correct"][j] if r.get("correct") else None
        d3b[b], s3b[b] = paired_diff([r["test_acc"][j]], [lin[b]], n_test,
                                     [cj] if cj else None,
                                     [cor_lin[b]] if cor_lin[b] else None, single=True)
        per3b[b] = direction(d3b[b], s3b[b], +1)
        judged3b.append(b)
    checks.append(Check(
        "fixed steps: past B_stab the linear η is too large",
        f"for B > B_stab = {b_stab:.0f} (η = Bη₀ past 2(1 + β)/λ_ref = "
        f"{EDGE / ref['lambda_ref']:.3g}) a smaller η of the grid beats η = Bη₀ at equal steps",
        "; ".join(f"B={b}: η = {alt[b]:.3g} {100 * (lin[b] + d3b[b]):.1f} % vs η = "
                  f"{scaled_lr(b):.3g} {100 * lin[b]:.1f} % ({_pp(d3b[b])} ± "
                  f"{100 * _se(s3b[b]):.1f} pp)" for b in judged3b)
        or "no B past B_stab with a smaller η in the grid",
        f"acc(best smaller η) − acc(η = Bη₀) > 0 beyond ±{K:g} se (kit direction; one seed: "
        "the paired test-set term only). Added after the first full run (the B_stab "
        "prediction had no check of its own)",
        worst_verdict(per3b.values()) if judged3b else "INCONCLUSIVE",
        {"judged": judged3b, "gain": d3b, "se": s3b, "per_B_verdict": per3b, "eta": alt},
        basis="derived",
        finding=("past B_stab η = Bη₀ crosses the stability edge: at equal steps B = "
                 + ", ".join(f"{b} loses {100 * d3b[b]:.1f} pp to η = {alt[b]:.3g}"
                             for b in judged3b if per3b[b] == "PASS"))
        if "PASS" in per3b.values() else
        (f"B_stab is only a conservative bound: at {m['T_ref']} steps B = "
         + ", ".join(f"{b} gains {-100 * d3b[b]:.1f} pp from η = Bη₀ over η = {alt[b]:.3g}"
                     for b in judged3b if per3b[b] == "FAIL"))
        if "FAIL" in per3b.values() else ""))

    # 4. (derived) S(B) fit and B_crit against B_simple
    sb = sb_points(m)
    fit = fit_sb(sb["B"], sb["S"])
    bc, bse = fit["B_crit"], fit["log10_B_crit_se"]
    dev = math.log10(bc / b_crit) if bc > 0 and b_crit > 0 else math.nan
    k4 = t_k(len(sb["B"]) - 2)
    v4 = band(dev, bse, DECADE, k4) if len(sb["B"]) >= 3 else "INCONCLUSIVE"
    checks.append(Check(
        "S(B) = S_min(1 + B_crit/B), B_crit ~ B_simple",
        f"steps to test accuracy {100 * ref['target']:.1f} % (the reference run's at T/2), η "
        f"tuned per B, follow S_min(1 + B_crit/B) with B_crit of the order of B_simple = "
        f"{b_crit:.0f}",
        (f"S = {dict(zip(sb['B'], sb['S'], strict=True))}"
         + (f", not reached at B = {sb['censored']}" if sb["censored"] else "")
         + f"; fit S_min = {fit['S_min']:.0f}, B_crit = {bc:.0f} (±{bse:.2f} in log10), "
           f"R² = {fit['r2']:.3f}; log10(B_crit/B_simple) = {dev:+.2f}"),
        f"|log10(B_crit/B_simple)| ≤ {DECADE:g} (kit band at ±k se, k = max(2, t_0.975 of "
        f"the fit's n − 2 dof) = {k4:.2f}: the t-quantile was added after the first quick run, "
        "whose 3-point fit has 1 dof; ±2 se before); ≥ 3 B reach the target",
        v4, {**sb, **fit, "B_simple": b_crit, "log10_ratio": dev, "target": ref["target"],
             "k": k4},
        basis="derived"))

    # 5. (derived) warmup regime
    gaps, per5, matters = {}, {}, {}
    for key in m["epochs_runs"]:
        b, w = (int(x) for x in key.split("/"))
        if w:
            continue
        a_w, a_n = _acc(m, b), _acc(m, b, False)
        g, gse = paired_diff(a_w, a_n, n_test, _cor(m, b), _cor(m, b, False))
        gaps[b] = (g, gse)
        matters[b] = pred["warmup_matters"].get(str(b), False)
        per5[b] = direction(g, gse, +1) if matters[b] else band(g, _se(gse), BAND)
    prods = ", ".join(f"B={b}: {pred['warmup_product'][str(b)]:.2f}" for b in gaps)
    checks.append(Check(
        "warmup matters only past the edge at the start",
        f"η_peak·λ_max(0) vs 2(1 + β) = {EDGE:.1f} (λ_max(0) = {ref['lambda_init']:.3g}): "
        f"{prods}; predicted: " + ", ".join(
            f"B={b}: {'a gap' if matters[b] else 'no gap'}" for b in gaps),
        "gap = acc_warmup − acc_no_warmup: " + "; ".join(
            _fmt_diff(b, g, s) for b, (g, s) in gaps.items()),
        f"no gap: |gap| ≤ {100 * BAND:.0f} pp (±{K:g} se, kit band); a gap: gap > 0 "
        f"(±{K:g} se, kit direction)",
        worst_verdict(per5.values()) if gaps else "INCONCLUSIVE",
        {"gap": gaps, "per_B_verdict": per5, "matters": matters,
         "product": pred["warmup_product"]}, basis="derived",
        finding=(f"warmup cannot matter here: η_peak·λ_max(0) ≤ "
                 f"{max(pred['warmup_product'][str(b)] for b in gaps):.2f} ≪ 2(1 + β)"
                 if gaps and not any(matters.values()) else "")))
    return checks


# ----------------------------------------------------------------------------- presentation


def figures(ctx: Context, m: dict[str, Any]) -> list[str]:
    """Accuracy against B on both ladders with the predicted range; S(B) with its fit; the
    reference run's λ_max(t) against the edge, and B_simple(t)."""
    from sgdlab.plots import new_figure, save_figure

    pred, ref, r = m["prediction"], m["reference"], m["reference_run"]
    fig, axes = new_figure(1, 4, figsize=(19, 4.2))
    ax, ax2, ax3, ax4 = axes[0]
    eb = sorted(int(k.split("/")[0]) for k in m["epochs_runs"] if k.endswith("/1"))
    acc = [100 * np.mean(_acc(m, b)) for b in eb]
    sd = [100 * (np.std(_acc(m, b), ddof=1) if len(_acc(m, b)) > 1 else 0.0) for b in eb]
    ax.errorbar(eb, acc, yerr=sd, fmt="o-", capsize=3, label=f"fixed {m['epochs']} epochs")
    nw = sorted(int(k.split("/")[0]) for k in m["epochs_runs"] if k.endswith("/0"))
    if nw:
        ax.plot(nw, [100 * np.mean(_acc(m, b, False)) for b in nw], "s", color="tab:red",
                label="fixed epochs, no warmup")
    sb_ = sorted(int(k) for k in m["steps_runs"])
    lin = [100 * m["steps_runs"][str(b)]["test_acc"][int(np.argmin(
        [abs(lr - scaled_lr(b)) for lr in m["steps_runs"][str(b)]["lr"]]))] for b in sb_]
    ax.plot(sb_, lin, "^-", color="tab:green", label=f"fixed {m['T_ref']} steps, η = Bη₀")
    ax.plot(sb_, [100 * max(m["steps_runs"][str(b)]["test_acc"]) for b in sb_], "v:",
            color="tab:green", label="fixed steps, best η")
    top = 1.5 * max(eb + sb_)
    ax.axvspan(min(eb + sb_) / 1.2, min(pred["B_max"], top), color="gray", alpha=0.15,
               label=f"predicted range B ≤ {pred['B_max']:.0f}")
    if pred["B_stab"] <= top:
        ax.axvline(pred["B_stab"], color="k", ls="--", lw=0.8,
                   label=f"B_stab {pred['B_stab']:.0f}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size B")
    ax.set_ylabel("final test accuracy (%)")
    ax.legend(fontsize=7)
    sb = sb_points(m)
    fit = fit_sb(sb["B"], sb["S"])
    ax2.plot(sb["B"], sb["S"], "o", label="steps to target, η tuned")
    if math.isfinite(fit["B_crit"]):
        g = np.geomspace(min(sb["B"] + [pred["B_crit_pred"]]) / 1.5, max(sb["B"]) * 1.5, 50)
        ax2.plot(g, fit["S_min"] * (1 + fit["B_crit"] / g), "-",
                 label=f"S_min(1 + B_crit/B): {fit['S_min']:.0f}, {fit['B_crit']:.0f}")
    ax2.axvline(pred["B_crit_pred"], color="gray", ls=":", label="B_simple (reference)")
    if math.isfinite(fit["B_crit"]):
        ax2.axvline(fit["B_crit"], color="tab:orange", ls="--", lw=0.8, label="fitted B_crit")
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("log")
    ax2.set_xlabel("batch size B")
    ax2.set_ylabel(f"steps to {100 * ref['target']:.1f} % test accuracy")
    ax2.legend(fontsize=7)
    ok = [(s, x) for s, x in zip(r["sharp_step"], r["lambda"], strict=True) if x is not None]
    ax3.plot([s for s, _ in ok], [x for _, x in ok], "o-", label="λ_max(t), reference run")
    ax3.axhline(EDGE / LR_REF, color="k", ls="--", lw=0.8,
                label=f"2(1 + β)/η_ref = {EDGE / LR_REF:.0f}")
    ax3.axhline(ref["lambda_ref"], color="tab:red", ls=":", lw=0.8,
                label=f"λ_ref = {ref['lambda_ref']:.3g} (f(t) ≥ ½)")
    ax3.set_xlabel("step (reference run, B = 128)")
    ax3.set_ylabel("top Hessian eigenvalue")
    ax3.legend(fontsize=7)
    okb = [(s, x) for s, x in zip(r["noise_step"], r["b_simple_smoothed"], strict=True)
           if x is not None]
    ax4.plot([s for s, _ in okb], [x for _, x in okb], color="tab:orange", lw=1,
             label="B_simple (smoothed)")
    ax4.axhline(ref["b_simple"], color="k", ls=":", lw=0.8,
                label=f"median over 10–90 %: {ref['b_simple']:.0f}")
    ax4.set_yscale("log")
    ax4.set_xlabel("step (reference run, B = 128)")
    ax4.set_ylabel("B_simple = tr Σ/‖G‖²")
    ax4.legend(fontsize=7)
    path, rel = ctx.figure(CLAIM, "ladders")
    save_figure(fig, path)
    return [rel]


def notes(ctx: Context, m: dict[str, Any], budget: dict[str, Any]) -> list[str]:
    """What was run, for the report (below the checks)."""
    out: list[str] = []
    ref, pred = m["reference"], m["prediction"]
    out.append(
        f"MNIST-1D CNN, momentum β = {BETA}, weight decay {WEIGHT_DECAY}, η = {LR_REF}·B/"
        f"{B_REF}, warmup {WARMUP_FRACTION:.3f} of the run then cosine; {m['epochs']} epochs, "
        f"{m['seeds']} seed(s) on the fixed-epochs ladder, seed 0 on the fixed-steps ladder.")
    out.append(
        f"Reference run (B = {B_REF}, {ref['steps']} steps): λ_max(0) = "
        f"{ref['lambda_init']:.3g}, λ_ref = {ref['lambda_ref']:.3g} (largest λ_max at "
        f"f(t) ≥ ½; over the whole run {ref['lambda_max_all']:.3g}, max η(t)λ = "
        f"{ref['max_lr_lambda']:.3g}); B_simple median {ref['b_simple']:.0f} (range "
        f"{ref['b_simple_range'][0]:.0f}–{ref['b_simple_range'][1]:.0f}); → B_stab = "
        f"{pred['B_stab']:.0f}, B_crit ≈ {pred['B_crit_pred']:.0f}, B_max = "
        f"{pred['B_max']:.0f}.")
    out.append("B | steps (fixed epochs) | acc with warmup (%) | without warmup (%)")
    for key in sorted(m["epochs_runs"], key=lambda k: int(k.split("/")[0])):
        b, w = (int(x) for x in key.split("/"))
        if not w:
            continue
        a = _acc(m, b)
        nw = f"{b}/0" in m["epochs_runs"]
        div = sum(m["epochs_runs"][key]["diverged"])
        out.append(
            f"{b} | {run_length(b, m['epochs'], m['n_train'])[0]} | {100 * np.mean(a):.1f} "
            f"({', '.join(f'{100 * x:.1f}' for x in a)}){f', {div} diverged' if div else ''} | "
            + (f"{100 * np.mean(_acc(m, b, False)):.1f}" if nw else "—"))
    out.append(f"Training time {m['seconds']:.1f} s (0 when read from the cache).")
    return out


def run(ctx: Context) -> Result:
    """Measure, judge, present (see the module docstring) through the kit's
    :func:`~sgdlab.experiments.kit.run_claim`."""
    return run_claim(sys.modules[__name__], ctx)
