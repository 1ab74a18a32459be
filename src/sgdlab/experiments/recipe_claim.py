"""Claim 11: the practitioner's recipe for choosing hyper-parameters (SPEC §4.11, seed 004).

The notes (seed 004, "Choosing Hyperparameters") give: step 1, check the initial loss; step 2,
overfit a small sample; step 3, "find a learning rate that makes the loss drop significantly
within ~100 iterations" (use all training data, small weight decay on; "good learning rates
to try: 1e-1, 1e-2, 1e-3, 1e-4"); then decay schedules — step (ResNets: ×0.1 at epochs 30,
60, 90), cosine α_t = ½α₀(1 + cos(tπ/T)), linear α_t = α₀(1 − t/T) — and "accuracy still going
up: you need to train longer". Each is measured on MNIST-1D (4000 train / 1000 test, C = 10).

Recipes (the shipped configs, written out here so the claim does not read files):
CNN = configs/mnist1d_cnn.yaml (``cnn``, heavy-ball momentum β = 0.9, coupled weight decay
5e-4, lr 0.1, B = 128, epoch shuffling); MLP = configs/mnist1d_mlp.yaml (``mlp`` 2 × 256,
AdamW lr 3e-3, decoupled weight decay 0.1, B = 100).

1. Initial loss ≈ ln C. A model that knows nothing predicts p = 1/C for every class, and the
   cross-entropy is then −ln(1/C) = ln C = ln 10 ≈ 2.303 (small random logits z with spread s
   give ≈ ln C + s²/2 to second order). Measured: the mean training-set loss at
   initialisation of both recipes' models for every seed (:func:`initial_loss`; the same
   number :func:`sgdlab.recipe.check` reports, which the tests verify). Tolerance (the
   default of ``sgdlab check``): |L₀ − ln C| ≤ 0.1·ln C for every (model, seed): PASS, else FAIL.
   (1′), derived (added 2026-12-04, tolerance fixed before its first measurement; the earlier
   full runs' L₀ and logit sd were known): the excess is the second-order term,
   E[L₀] − ln C = ½·mean_b var_k(z_bk) (:func:`initial_loss`, :func:`excess_check`), over
   its own seeds (``n_excess``: 3/40/200). Changed after its first --full measurement: it
   first used the n_init = 10 seeds of (1) and FAILed on the CNN (residual −0.00134 ±
   0.00029, the label term +0.00135); 80 seeds then gave a label term of +0.00022 ± 0.00024
   — the 10 seeds' sd (0.0009) under-stated the per-seed spread (0.0021), so the check now
   has enough seeds for its se to mean what it says. The tolerance is unchanged.
2. Overfit a small sample: :func:`sgdlab.recipe.check` with the first 128 training examples,
   full batch, S steps of the recipe's own optimizer at its own lr (S = 150/300/500 for
   smoke/quick/full). Near zero: final loss ≤ 0.01 and 100 % accuracy on the sample, for every
   (model, seed): PASS, else FAIL.
3. Range test, then verification (CNN recipe): :func:`sgdlab.recipe.lr_find` (1e-6 → 10,
   log-spaced, 100/200/200 steps) gives η̂ = (lr at the smoothed minimum)/10. Then, from the
   same initialisation and the same batch order (same seed), 100 iterations at constant η̂
   with the recipe's optimizer (:class:`~sgdlab.train.Trainer`), and the full training loss
   L₁₀₀ against L₀. "Drops significantly", fixed up front: (L₀ − L₁₀₀)/L₀ ≥ 10 %. PASS when
   it holds for every seed, FAIL when for none, INCONCLUSIVE otherwise. The notes' own grid
   {1e-1, 1e-2, 1e-3, 1e-4} is run the same way (seed 0; every seed in full; not in smoke)
   and reported beside it.
4. Schedules (CNN recipe, no warm-up, base lr η_b = the geometric mean over seeds of η̂ from
   3 — the recipe's step 3 feeding step 4): step = ×0.1 at T/3 and 2T/3 (the ResNet recipe's
   30/60 of 90 epochs, scaled), cosine over T, linear over T, E epochs (T = E·⌊N/B⌋ steps;
   E = 3/6/20), seeds 0..n−1, K evaluations per run (K = 8/16/16). The notes rank nothing:
   they list the three as common choices (ResNets, SGDR/GPT, BERT), so the check is a
   table: PASS when every run trains (no divergence, final test accuracy ≥ 20 % = 2×
   chance), FAIL otherwise; the table gives mean ± sd per schedule, the ranking and each
   pairwise difference with its se (seed sds, floored at the test-set binomial sd, as in
   claim 4), and says which differences exceed 2 se.
5. "Accuracy still going up: train longer". For each run of 4: the least-squares slope of
   test accuracy over its last K/4 evaluations (the last quarter; MNIST-1D has no
   validation split, so the test set plays the notes' "val"). Every run is repeated with the
   same schedule, seed and η_b over 2E epochs; Δ = acc(2E) − acc(E). Over the runs whose
   slope was > 0: mean Δ with se = sd/√n (sd floored at √(2p(1 − p)/n_test)); PASS when
   mean Δ > 2 se, FAIL when mean Δ + 2 se < 0, INCONCLUSIVE otherwise or with fewer than two
   rising runs. Control: Δ over the runs whose slope was ≤ 0 (does the signal add anything
   over "longer is better"?).

Budgets (:data:`BUDGETS`; seeds for 1 / for 2–3 / for 4–5): smoke 2/1/1, quick 5/2/2, full
10/3/4; the schedule runs are short (6 epochs in quick against the recipe's 150), so their
accuracies are far below the 94 % of a full run — full (20 and 40 epochs, 4 seeds) is the
budget to read. :func:`measure` does every training run (each cached, ``ctx.cached``),
:func:`judge` is a pure function of its output, :func:`figures` and :func:`notes` present it
(one torch thread, :func:`~sgdlab.experiments.kit.run_claim`).
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sgdlab.experiments.base import Check, Claim, Context, Result, worst_verdict
from sgdlab.experiments.kit import run_claim
from sgdlab.experiments.kit.verdicts import band, direction

CLAIM = Claim("11-recipe", "Choosing hyper-parameters (the recipe)",
              "Initial loss ≈ ln C; the model overfits a small sample; a range test finds an η "
              "at which the loss drops within ~100 iterations; step, cosine and linear "
              "schedules all train; when accuracy is still rising, training longer helps.",
              "§4.11")

CNN = {"dataset": "mnist1d", "model": "cnn", "optimizer": "momentum", "lr": 0.1,
       "optimizer_options": {"beta": 0.9, "weight_decay": 5e-4}, "batch_size": 128,
       "sampling": "shuffle"}
MLP = {"dataset": "mnist1d", "model": "mlp", "model_options": {"depth": 2, "width": 256},
       "optimizer": "adamw", "lr": 3e-3, "optimizer_options": {"weight_decay": 0.1},
       "batch_size": 100, "sampling": "shuffle"}
RECIPES = {"cnn": CNN, "mlp": MLP}

INIT_TOL = 0.1               # (1) |L0 − ln C| ≤ 0.1 ln C
OVERFIT_N, OVERFIT_LOSS = 128, 0.01
DROP_ITERS, DROP_MIN = 100, 0.10
NOTES_GRID = (1e-1, 1e-2, 1e-3, 1e-4)
SCHEDULES = ("step", "cosine", "linear")
TRAINS_MIN_ACC = 0.2         # (4) "trains": final test accuracy ≥ 2× chance, no divergence
CACHE_VERSION = 1


def config(recipe: str, seed: int, **changes: Any):
    """The validated TrainConfig of ``recipe`` ("cnn" or "mlp") at ``seed`` with ``changes``
    (CPU; length 1 step unless changed)."""
    from sgdlab.config import from_dict

    values = {**RECIPES[recipe], "seed": seed, "device": "cpu", "steps": 1, **changes}
    return from_dict(values)


# =========================================================================== (1)


def initial_loss(cfg) -> dict[str, float]:
    """Mean cross-entropy of the freshly built model on the whole training set (train mode,
    as the first step sees it; SPEC §4.11 (1)), with the sd of its logits, ln C, and the two
    terms of its expansion (the derived check (1′)): with ε_bk = z_bk − z̄_b the logits
    centred per example, L_b = ln C + ln((1/C)Σ_k e^{ε_bk}) − ε_{b,y_b}, so
    L₀ = ln C + ½·mean_b v_b − mean_b ε_{b,y_b} + O(ε³) (v_b = (1/C)Σ_k ε_bk²; the ε⁴ terms
    cancel for Gaussian ε). ``half_within_var`` = ½·mean_b v_b, ``label_term`` =
    mean_b ε_{b,y_b} (zero in expectation over initialisations: the output units are
    exchangeable at init)."""
    from sgdlab import train

    run = train.build(cfg)
    run.model.train()
    with torch.no_grad():
        out = run.model(run.data.x_train)
        loss = float(F.cross_entropy(out, run.data.y_train))
        centred = (out - out.mean(1, keepdim=True)).double()
        half_var = 0.5 * float((centred ** 2).mean(1).mean())
        label_term = float(centred[torch.arange(len(out)), run.data.y_train].mean())
    return {"loss": loss, "logit_sd": float(out.std()), "ln_c": math.log(run.data.num_classes),
            "half_within_var": half_var, "label_term": label_term}


# =========================================================================== Trainer runs


def train_run(cfg) -> dict[str, Any]:
    """Train ``cfg`` with the Trainer in memory; final metrics and the evaluation curve."""
    from sgdlab.train import Trainer

    t0 = time.perf_counter()
    tr = Trainer(cfg, progress=False)
    summary = tr.fit()
    final = summary["final"]
    diverged = summary["status"] == "diverged"
    curve = [{"step": r["step"], "epoch": r["epoch"], "train_loss": r["train_loss"],
              "test_acc": r["test_acc"], "test_loss": r["test_loss"]}
             for r in tr.history if r["kind"] == "eval"]
    ok = not diverged and all(math.isfinite(final.get(k, math.nan))
                              for k in ("train_loss", "test_acc"))
    return {"status": summary["status"], "diverged": not ok,
            "train_loss": float(final["train_loss"]) if ok else None,
            "test_acc": float(final["test_acc"]) if ok else None,
            "test_loss": float(final["test_loss"]) if ok else None,
            "steps_done": int(summary["steps"]), "curve": curve if ok else [],
            "seconds": time.perf_counter() - t0}


def drop_config(seed: int, lr: float):
    """(3): the CNN recipe at constant ``lr`` for 100 iterations, evaluated only at the end."""
    return config("cnn", seed, lr=float(lr), steps=DROP_ITERS, schedule="constant",
                  eval_every=DROP_ITERS, log_every=DROP_ITERS)


def schedule_config(name: str, seed: int, lr: float, epochs: int, n_train: int,
                    evals: int = 16):
    """(4)/(5): the CNN recipe at base ``lr`` for ``epochs`` epochs with schedule ``name``:
    step (×0.1 at T/3 and 2T/3), cosine over T, linear over T; no warm-up; an evaluation
    every ⌈T/evals⌉ steps and at the end."""
    steps = epochs * (n_train // CNN["batch_size"])
    if name == "step":
        sched = {"schedule": "multistep",
                 "schedule_options": {"milestones": [round(steps / 3), round(2 * steps / 3)],
                                      "gamma": 0.1}}
    elif name in ("cosine", "linear"):
        sched = {"schedule": name, "schedule_options": {}}
    else:
        raise ValueError(f"unknown schedule {name!r}")
    return config("cnn", seed, lr=float(lr), steps=steps, warmup_steps=0,
                  eval_every=max(1, math.ceil(steps / evals)), log_every=steps, **sched)


def end_slope(curve: list[dict[str, Any]], last: int) -> float | None:
    """Least-squares slope of test accuracy against epoch over the last ``last`` evaluations
    (accuracy per epoch; SPEC §4.11 "accuracy still going up"); None with fewer than 2."""
    pts = curve[-last:]
    if len(pts) < 2:
        return None
    x = np.array([p["epoch"] for p in pts], dtype=np.float64)
    y = np.array([p["test_acc"] for p in pts], dtype=np.float64)
    x = x - x.mean()
    return float((x * (y - y.mean())).sum() / (x * x).sum())


def sd_floor(values: list[float], n_test: int, p: float | None = None,
             pairs: bool = False) -> float | None:
    """Sample sd (ddof 1) floored at the binomial sd √(p(1 − p)/n_test) of an accuracy p
    measured on ``n_test`` examples (√(2p(1 − p)/n_test) for a difference of two such
    accuracies, ``pairs``; p defaults to the mean of ``values``): a few seeds can agree by
    chance more closely than the test set resolves (SPEC §4.11 (4)–(5)). None with fewer
    than two values."""
    if len(values) < 2:
        return None
    q = float(np.mean(values)) if p is None else float(p)
    floor = math.sqrt(max(q * (1 - q), 0.0) * (2 if pairs else 1) / n_test)
    return max(float(np.std(values, ddof=1)), floor)


def diff_se(a: list[float], b: list[float], n_test: int) -> float | None:
    """se of mean(a) − mean(b) for unpaired accuracies: √(s_a²/n_a + s_b²/n_b) with each s
    from :func:`sd_floor` (SPEC §4.11 (4)); None when either has fewer than two values."""
    sa, sb = sd_floor(a, n_test), sd_floor(b, n_test)
    if sa is None or sb is None:
        return None
    return math.sqrt(sa * sa / len(a) + sb * sb / len(b))


# =========================================================================== the claim


# =========================================================================== the claim

#: (1′): |mean over seeds of (L₀ − ln C − ½ v̄)| within this fraction of the predicted excess
#: ½ v̄ (third-order terms and the finite training set), fixed before measuring.
EXCESS_TOL = 0.3

#: Sizes per mode: seeds for (1) initial loss, (2)–(3) overfit and range test, (4)–(5)
#: schedules; overfit and range-test steps; schedule epochs E and evaluations K per run; seeds
#: on the notes' η grid in (3).
BUDGETS: dict[str, dict[str, int]] = {
    "smoke": {"n_init": 2, "n_excess": 3, "n_check": 1, "n_sched": 1, "overfit_steps": 150,
              "find_steps": 100, "epochs": 3, "evals": 8, "grid_seeds": 0},
    "quick": {"n_init": 5, "n_excess": 40, "n_check": 2, "n_sched": 2, "overfit_steps": 300,
              "find_steps": 200, "epochs": 6, "evals": 16, "grid_seeds": 1},
    "full": {"n_init": 10, "n_excess": 200, "n_check": 3, "n_sched": 4, "overfit_steps": 500,
             "find_steps": 200, "epochs": 20, "evals": 16, "grid_seeds": 3},
}


def measure(ctx: Context, budget: dict[str, int]) -> dict[str, Any]:
    """Every training run of the claim (SPEC §4.11 (1)–(5)), the Trainer runs through
    ``ctx.cached``: the initial losses L₀ of both recipes per seed, ``recipe.check`` (the
    overfit of 128 examples), the range tests and their 100-iteration verifications, and the
    step/cosine/linear runs over E and 2E epochs at η_b = the geometric mean of the range
    test's η̂ over seeds (3 significant digits). Plain data; schedule runs keyed
    ``"<schedule>/<seed>"``, recipe checks ``"<model>/<seed>"``."""
    from sgdlab import data, recipe

    n_init, n_check, n_sched = budget["n_init"], budget["n_check"], budget["n_sched"]
    overfit_steps, find_steps = budget["overfit_steps"], budget["find_steps"]
    epochs, n_evals = budget["epochs"], budget["evals"]
    ds = data.load("mnist1d", seed=0)
    n_train, n_test, ln_c = ds.n_train, ds.n_test, math.log(ds.num_classes)
    counts = np.bincount(ds.y_train.numpy(), minlength=ds.num_classes) / n_train
    label_entropy = float(-(counts[counts > 0] * np.log(counts[counts > 0])).sum())
    t_start = time.perf_counter()

    # (1) initial loss
    # (1′) has its own, larger seed count (the label term is heavy-tailed over
    # initialisations); (1) reads its first n_init seeds
    n_excess = budget["n_excess"]
    if n_excess < n_init:
        raise ValueError(f"budget: n_excess ({n_excess}) must be >= n_init ({n_init})")
    excess = ctx.cached({"claim": CLAIM.id, "v": CACHE_VERSION, "part": "excess",
                         "seeds": n_excess},
                        lambda: {m: [initial_loss(config(m, s)) for s in range(n_excess)]
                                 for m in RECIPES})
    init = {m: rows[:n_init] for m, rows in excess.items()}

    # (2) overfit
    def do_check(m: str, s: int) -> dict[str, Any]:
        out = recipe.check(config(m, s), overfit_examples=OVERFIT_N,
                           overfit_steps=overfit_steps, init_tolerance=INIT_TOL,
                           overfit_loss=OVERFIT_LOSS)
        return {"init": out[0].values, "init_passed": out[0].passed,
                "overfit": out[1].values, "overfit_passed": out[1].passed,
                "detail": out[1].detail}

    checks = {}
    for m in RECIPES:
        for s in range(n_check):
            key = {"claim": CLAIM.id, "v": CACHE_VERSION, "part": "check",
                   "config": config(m, s).to_dict(), "n": OVERFIT_N, "steps": overfit_steps,
                   "loss": OVERFIT_LOSS}
            checks[f"{m}/{s}"] = ctx.cached(key, lambda m=m, s=s: do_check(m, s))

    # (3) range test, then 100 iterations at η̂ (and on the notes' grid)
    finds = []
    for s in range(n_check):
        cfg = config("cnn", s)
        key = {"claim": CLAIM.id, "v": CACHE_VERSION, "part": "lr_find",
               "config": cfg.to_dict(), "steps": find_steps}
        finds.append(ctx.cached(key, lambda cfg=cfg: recipe.lr_find(
            cfg, num_steps=find_steps).to_dict()))

    def drop(s: int, lr: float) -> dict[str, Any]:
        cfg = drop_config(s, lr)
        key = {"claim": CLAIM.id, "v": CACHE_VERSION, "part": "drop", "config": cfg.to_dict()}
        r = ctx.cached(key, lambda: train_run(cfg))
        l0 = (excess["cnn"][s]["loss"] if s < n_excess
              else initial_loss(config("cnn", s))["loss"])
        rel = (l0 - r["train_loss"]) / l0 if r["train_loss"] is not None else None
        return {"lr": float(lr), "L0": l0, "L100": r["train_loss"], "rel_drop": rel,
                "diverged": r["diverged"],
                "passed": rel is not None and rel >= DROP_MIN}

    found = [drop(s, f["suggestion"]) for s, f in enumerate(finds)]
    grid = {s: [drop(s, lr) for lr in NOTES_GRID] for s in range(budget["grid_seeds"])}

    # (4)/(5) schedules over E and 2E epochs
    base_lr = float(math.exp(np.mean([math.log(f["suggestion"]) for f in finds])))
    base_lr = float(f"{base_lr:.3g}")
    short: dict[str, dict[str, Any]] = {}
    long: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    for name in SCHEDULES:
        for s in range(n_sched):
            for e, store in ((epochs, short), (2 * epochs, long)):
                cfg = schedule_config(name, s, base_lr, e, n_train, n_evals)
                key = {"claim": CLAIM.id, "v": CACHE_VERSION, "part": "schedule",
                       "config": cfg.to_dict()}
                store[f"{name}/{s}"] = ctx.cached(key, lambda cfg=cfg: train_run(cfg))
    return {"n_train": n_train, "n_test": n_test, "num_classes": ds.num_classes,
            "ln_c": ln_c, "label_entropy": label_entropy, "n_init": n_init,
            "n_sched": n_sched, "overfit_steps": overfit_steps, "find_steps": find_steps,
            "epochs": epochs, "evals": n_evals, "init": init, "excess": excess, "checks": checks,
            "finds": finds, "found": found, "grid": grid, "base_lr": base_lr,
            "short": short, "long": long, "sched_seconds": time.perf_counter() - t0,
            "t_start": t_start}


def _fmt_delta(m: float | None, se: float | None) -> str:
    if m is None:
        return "none"
    return f"{100 * m:+.2f}" + (f" ± {100 * se:.2f}" if se is not None else "") + " pp"


def judge(m: dict[str, Any]) -> list[Check]:
    """The five checks of the module docstring (SPEC §4.11) and the derived (1′)
    (:func:`excess_check`) from :func:`measure`'s output; pure. (1) every
    |L₀ − ln C| ≤ 0.1 ln C; (2) every recipe check overfits; (3) the loss
    drop (L₀ − L₁₀₀)/L₀ ≥ 10 % at η̂ for every seed (PASS), none (FAIL), else INCONCLUSIVE;
    (4) every schedule run trains; (5) mean Δ = acc(2E) − acc(E) over the rising runs, kit
    :func:`~sgdlab.experiments.kit.verdicts.direction` at ±2 se (se from :func:`sd_floor`)."""
    ln_c, n_test, n_init, n_sched = m["ln_c"], m["n_test"], m["n_init"], m["n_sched"]
    epochs, n_evals = m["epochs"], m["evals"]
    slope_last = n_evals // 4
    init, checks, short, long = m["init"], m["checks"], m["short"], m["long"]
    finds, found, grid = m["finds"], m["found"], m["grid"]

    # (1) initial loss
    gaps = {k: [abs(r["loss"] - ln_c) / ln_c for r in v] for k, v in init.items()}
    v1 = "PASS" if all(g <= INIT_TOL for v in gaps.values() for g in v) else "FAIL"
    c1 = Check(
        "(1) initial loss ≈ ln C",
        f"L₀ = ln {m['num_classes']} = {ln_c:.4f} (label entropy of the train split "
        f"{m['label_entropy']:.4f})",
        "; ".join(f"{k}: {np.mean([r['loss'] for r in v]):.4f} ± "
                  f"{np.std([r['loss'] for r in v]):.4f} (max gap "
                  f"{100 * max(gaps[k]):.1f}%, logit sd {np.mean([r['logit_sd'] for r in v]):.3f})"
                  for k, v in init.items()) + f" over {n_init} seeds",
        f"|L₀ − ln C| ≤ {INIT_TOL:g}·ln C for every model and seed",
        v1,
        {"ln_c": ln_c, "label_entropy": m["label_entropy"], "seeds": n_init,
         "tolerance": INIT_TOL,
         **{f"{k}_loss": [r["loss"] for r in v] for k, v in init.items()},
         **{f"{k}_logit_sd": [r["logit_sd"] for r in v] for k, v in init.items()},
         **{f"{k}_rel_gap": gaps[k] for k in init}})

    # (2) overfit
    v2 = "PASS" if all(c["overfit_passed"] for c in checks.values()) else "FAIL"
    c2 = Check(
        "(2) overfits a small sample",
        f"loss → ≈ 0 on {OVERFIT_N} training examples (full batch, {m['overfit_steps']} steps "
        "of each recipe's optimizer at its lr)",
        "; ".join(f"{k.replace('/', ' seed ')}: final {c['overfit']['final_loss']:.2g}, acc "
                  f"{100 * c['overfit']['accuracy']:.0f}%, first ≤ {OVERFIT_LOSS:g} at step "
                  f"{c['overfit']['first_below_step']}" for k, c in checks.items()),
        f"final loss ≤ {OVERFIT_LOSS:g} and 100 % accuracy on the sample, every model and seed",
        v2,
        {"examples": OVERFIT_N, "steps": m["overfit_steps"], "threshold": OVERFIT_LOSS,
         "final_loss": {k: c["overfit"]["final_loss"] for k, c in checks.items()},
         "accuracy": {k: c["overfit"]["accuracy"] for k, c in checks.items()},
         "first_below_step": {k: c["overfit"]["first_below_step"]
                              for k, c in checks.items()},
         "lr": {r: RECIPES[r]["lr"] for r in RECIPES},
         "recipe_check_initial_loss": {k: c["init"]["loss"] for k, c in checks.items()}})

    # (3) range test
    n_ok = sum(d["passed"] for d in found)
    v3 = "PASS" if n_ok == len(found) else "FAIL" if n_ok == 0 else "INCONCLUSIVE"
    c3 = Check(
        "(3) the range test finds an η at which the loss drops within 100 iterations",
        f"η̂ = (lr at the smoothed minimum)/10 from lr_find; {DROP_ITERS} iterations at η̂ "
        f"from the same init give (L₀ − L₁₀₀)/L₀ ≥ {100 * DROP_MIN:.0f}%",
        "; ".join(f"seed {s}: η̂ = {d['lr']:.3g}, L₀ {d['L0']:.3f} → L₁₀₀ "
                  + (f"{d['L100']:.3f} ({100 * d['rel_drop']:.0f}% drop)"
                     if d["L100"] is not None else "diverged")
                  for s, d in enumerate(found))
        + ("; notes' grid (seed 0): " + ", ".join(
            f"{g['lr']:g}: " + (f"{100 * g['rel_drop']:.0f}%" if g["rel_drop"] is not None
                                else "diverged") for g in grid[0]) if grid else ""),
        f"drop ≥ {100 * DROP_MIN:.0f}% of L₀ in {DROP_ITERS} iterations: PASS for every seed, "
        "FAIL for none, else INCONCLUSIVE",
        v3,
        {"suggestion": [f["suggestion"] for f in finds],
         "min_loss_lr": [f["min_loss_lr"] for f in finds],
         "steepest_lr": [f["steepest_lr"] for f in finds],
         "range_test_diverged": [f["diverged"] for f in finds],
         "range_test_steps": m["find_steps"], "L0": [d["L0"] for d in found],
         "L100": [d["L100"] for d in found], "rel_drop": [d["rel_drop"] for d in found],
         "threshold": DROP_MIN, "iterations": DROP_ITERS,
         "grid_lr": list(NOTES_GRID),
         "grid_rel_drop": {str(s): [g["rel_drop"] for g in v] for s, v in grid.items()},
         "grid_passed": {str(s): [g["passed"] for g in v] for s, v in grid.items()}})

    # (4) schedules
    base_lr = m["base_lr"]

    def accs(store, name):
        return [store[f"{name}/{s}"]["test_acc"] if store[f"{name}/{s}"]["test_acc"] is not None
                else 0.1 for s in range(n_sched)]

    table = {n: accs(short, n) for n in SCHEDULES}
    means = {n: float(np.mean(v)) for n, v in table.items()}
    sds = {n: (float(np.std(v, ddof=1)) if len(v) > 1 else None) for n, v in table.items()}
    ranking = sorted(SCHEDULES, key=lambda n: -means[n])
    pairs = {}
    for i, a in enumerate(SCHEDULES):
        for b in SCHEDULES[i + 1:]:
            diff = means[a] - means[b]
            se = diff_se(table[a], table[b], n_test)
            pairs[f"{a}-{b}"] = {"diff": diff, "se": se,
                                 "significant": se is not None and abs(diff) > 2 * se}
    trains = {f"{n}/{s}": (not short[f"{n}/{s}"]["diverged"]
                           and short[f"{n}/{s}"]["test_acc"] >= TRAINS_MIN_ACC)
              for n in SCHEDULES for s in range(n_sched)}
    v4 = "PASS" if all(trains.values()) else "FAIL"
    sig = [k for k, p in pairs.items() if p["significant"]]
    c4 = Check(
        "(4) schedules step / cosine / linear: final test accuracy",
        "the notes list the three without ranking them (no prediction); each must train "
        f"(no divergence, test accuracy ≥ {100 * TRAINS_MIN_ACC:.0f}%)",
        "; ".join(f"{n}: {100 * means[n]:.1f}"
                  + (f" ± {100 * sds[n]:.1f}" if sds[n] is not None else "") + "%"
                  for n in SCHEDULES)
        + f" (η_b = {base_lr:g}, {epochs} epochs, {n_sched} seed(s)); ranking "
        + " > ".join(ranking) + "; differences beyond 2 se: "
        + (", ".join(f"{k} {100 * pairs[k]['diff']:+.1f} pp" for k in sig) if sig else "none"),
        "PASS when every run trains; the ranking is reported, not judged",
        v4,
        {"base_lr": base_lr, "epochs": epochs, "seeds": n_sched,
         "steps": schedule_config("cosine", 0, base_lr, epochs, m["n_train"]).steps,
         "acc": table, "acc_mean": means, "acc_sd": sds, "ranking": ranking,
         "pairs": pairs, "trains": trains,
         "train_loss": {n: [short[f"{n}/{s}"]["train_loss"] for s in range(n_sched)]
                        for n in SCHEDULES},
         "diverged": {n: [short[f"{n}/{s}"]["diverged"] for s in range(n_sched)]
                      for n in SCHEDULES},
         "seconds_total": m["sched_seconds"]})

    # (5) train longer
    rows = []
    for n in SCHEDULES:
        for s in range(n_sched):
            a, b = short[f"{n}/{s}"], long[f"{n}/{s}"]
            slope = end_slope(a["curve"], slope_last) if not a["diverged"] else None
            delta = (b["test_acc"] - a["test_acc"]
                     if a["test_acc"] is not None and b["test_acc"] is not None else None)
            rows.append({"schedule": n, "seed": s, "slope": slope, "acc_E": a["test_acc"],
                         "acc_2E": b["test_acc"], "delta": delta,
                         "rising": slope is not None and slope > 0})
    rising = [r["delta"] for r in rows if r["rising"] and r["delta"] is not None]
    flat = [r["delta"] for r in rows if not r["rising"] and r["delta"] is not None]

    p_acc = float(np.mean([r["acc_E"] for r in rows if r["acc_E"] is not None] or [0.5]))

    def summary(d: list[float]) -> tuple[float | None, float | None]:
        if not d:
            return None, None
        sd = sd_floor(d, n_test, p=p_acc, pairs=True)
        return float(np.mean(d)), (sd / math.sqrt(len(d)) if sd is not None else None)

    rm, rse = summary(rising)
    fm, fse = summary(flat)
    c5 = Check(
        "(5) accuracy still rising at the end → a 2× longer run improves it",
        f"for runs whose test accuracy rises over the last {slope_last} of {n_evals} "
        f"evaluations, acc({2 * epochs} epochs) − acc({epochs} epochs) > 0",
        f"rising in {len(rising)}/{len(rows)} runs: Δ = {_fmt_delta(rm, rse)}; control, not "
        f"rising ({len(flat)} runs): Δ = {_fmt_delta(fm, fse)}",
        "PASS when mean Δ > 2 se, FAIL when mean Δ + 2 se < 0, INCONCLUSIVE otherwise or "
        "with fewer than 2 rising runs (se = sd/√n, sd floored at the binomial sd of a "
        "difference of two accuracies on the test set)",
        direction(rm, rse, +1),
        {"rows": rows, "rising_delta_mean": rm, "rising_delta_se": rse,
         "n_rising": len(rising), "flat_delta_mean": fm, "flat_delta_se": fse,
         "n_flat": len(flat), "epochs_short": epochs, "epochs_long": 2 * epochs,
         "slope_evals": slope_last, "evals": n_evals})
    return [c1, c2, c3, c4, c5, excess_check(m["excess"], ln_c)]


def excess_check(init: dict[str, list[dict[str, float]]], ln_c: float) -> Check:
    """(1′), derived: the initial loss's excess over ln C is the second-order term of small
    label-independent logits, E[L₀] − ln C = ½ E[v̄] (:func:`initial_loss`). Per model, the
    residual r_s = L₀ − ln C − ½ v̄ over seeds s (its spread is the label term's): kit
    :func:`~sgdlab.experiments.kit.verdicts.band` on |mean r| with se = sd/√n against
    :data:`EXCESS_TOL`·mean ½ v̄; the worse of the two models. Pure."""
    per, verdicts = {}, []
    for k, rows in init.items():
        r = np.array([x["loss"] - ln_c - x["half_within_var"] for x in rows])
        half = float(np.mean([x["half_within_var"] for x in rows]))
        se = float(np.std(r, ddof=1) / math.sqrt(len(r))) if len(r) > 1 else math.nan
        per[k] = {"excess": float(np.mean([x["loss"] for x in rows]) - ln_c),
                  "predicted": half, "residual": float(r.mean()), "se": se,
                  "label_term": float(np.mean([x["label_term"] for x in rows])),
                  "seeds": len(r)}
        verdicts.append(band(float(r.mean()), se, EXCESS_TOL * half))
    v = worst_verdict(verdicts)
    return Check(
        "(1′) the initial loss's excess over ln C",
        "E[L₀] − ln C = ½·mean_b v_b (v_b the variance of example b's logits over the "
        "classes: the second order of small logits that do not depend on the label)",
        "; ".join(f"{k}: L₀ − ln C = {p['excess']:.5f}, ½v̄ = {p['predicted']:.5f}, residual "
                  f"{p['residual']:+.5f} ± {p['se']:.5f} over {p['seeds']} seeds"
                  for k, p in per.items()),
        f"|residual| ≤ {EXCESS_TOL:g}·½v̄ per model (±2 se band)",
        v, {"models": per, "tolerance": EXCESS_TOL}, basis="derived",
        finding=_excess_finding(per, verdicts))


def _excess_finding(per: dict[str, dict[str, float]], verdicts: list[str]) -> str:
    """(1′)'s line for the report when a model FAILs: its label term (the residual is
    −mean_b ε_{b,y_b} up to third order), i.e. logits that already depend on the label."""
    failed = [k for k, v in zip(per, verdicts, strict=True) if v == "FAIL"]
    return "; ".join(
        f"{k}: L₀ − ln C = {per[k]['excess']:.5f} is not the ½·var(logits) = "
        f"{per[k]['predicted']:.5f} of label-independent logits — at initialisation the "
        f"logits already lean {'towards' if per[k]['label_term'] > 0 else 'away from'} the "
        f"true class (mean ε_y = {per[k]['label_term']:+.5f} over {per[k]['seeds']} seeds)"
        for k in failed)


def figures(ctx: Context, m: dict[str, Any]) -> list[str]:
    """The range tests with η̂ and the 100-iteration drops (the notes' grid beside η̂); the
    test-accuracy curves of the schedule runs over E and 2E epochs."""
    return [_figure_lr(ctx, m["finds"], m["found"], m["grid"]),
            _figure_schedules(ctx, m["short"], m["long"], m["n_sched"], m["epochs"],
                              m["base_lr"])]


def notes(ctx: Context, m: dict[str, Any], budget: dict[str, int]) -> list[str]:
    """The recipes, the schedules table (accuracy after E → 2E epochs per seed), wall time."""
    short, long = m["short"], m["long"]
    epochs = m["epochs"]
    return [
        "Recipes: CNN = configs/mnist1d_cnn.yaml (momentum 0.9, weight decay 5e-4, B 128), "
        "MLP = configs/mnist1d_mlp.yaml (AdamW 3e-3, weight decay 0.1, B 100); steps 3–5 use "
        "the CNN recipe with weight decay on (the notes: 'turn on small weight decay').",
        f"Schedules table (final test accuracy %, {epochs} → {2 * epochs} epochs, η_b = "
        f"{m['base_lr']:g}): " + "; ".join(
            f"{n}: " + ", ".join(f"{100 * short[f'{n}/{s}']['test_acc']:.1f}→"
                                 f"{100 * long[f'{n}/{s}']['test_acc']:.1f}"
                                 if short[f"{n}/{s}"]["test_acc"] is not None
                                 and long[f"{n}/{s}"]["test_acc"] is not None else "diverged"
                                 for s in range(m["n_sched"])) for n in SCHEDULES),
        f"Wall time {time.perf_counter() - m['t_start']:.1f} s (cached parts count 0)."]


def run(ctx: Context) -> Result:
    """Measure, judge, present (see the module docstring) through the kit's
    :func:`~sgdlab.experiments.kit.run_claim`."""
    return run_claim(sys.modules[__name__], ctx)


def _figure_lr(ctx: Context, finds: list[dict], found: list[dict], grid: dict) -> str:
    from sgdlab.plots import new_figure, save_figure

    fig, axes = new_figure(1, 2, figsize=(11.0, 4.5))
    ax, ax2 = axes[0, 0], axes[0, 1]
    for s, f in enumerate(finds):
        ax.plot(f["lrs"], f["smoothed_losses"], linewidth=1.2, label=f"seed {s}")
        ax.axvline(f["suggestion"], linestyle="--", linewidth=0.8,
                   color=ax.lines[-1].get_color())
    start = [f["smoothed_losses"][0] for f in finds if f["smoothed_losses"]]
    if start:  # the blow-up at the end would hide the curve
        ax.set_ylim(0, 1.5 * max(start))
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("smoothed batch loss")
    ax.set_title("range test (CNN recipe); dashed: η̂ = lr at minimum / 10")
    for s, g in grid.items():
        pts = [(d["lr"], d["L100"] / d["L0"]) for d in g if d["L100"] is not None]
        ax2.plot([p[0] for p in pts], [p[1] for p in pts], "o-", markersize=4,
                 label=f"notes' grid, seed {s}")
    pts = [(d["lr"], d["L100"] / d["L0"]) for d in found if d["L100"] is not None]
    ax2.plot([p[0] for p in pts], [p[1] for p in pts], "*", markersize=12, color="black",
             label="η̂ from the range test")
    ax2.axhline(1 - DROP_MIN, color="gray", linestyle="--",
                label=f"{100 * DROP_MIN:.0f}% drop threshold")
    ax2.set_xscale("log")
    ax2.set_xlabel("learning rate (constant)")
    ax2.set_ylabel(f"L after {DROP_ITERS} iterations / L₀")
    ax2.set_title(f"loss drop in {DROP_ITERS} iterations from the same init")
    for a in (ax, ax2):
        a.grid(True, alpha=0.3, which="both")
        a.legend(fontsize=8)
    path, rel = ctx.figure(CLAIM, "lr_find")
    save_figure(fig, path)
    return rel


def _figure_schedules(ctx: Context, short: dict, long: dict, n_sched: int, epochs: int,
                      base_lr: float) -> str:
    from sgdlab.plots import new_figure, save_figure

    fig, axes = new_figure()
    ax = axes[0, 0]
    colours = {"step": "tab:blue", "cosine": "tab:orange", "linear": "tab:green"}
    for n in SCHEDULES:
        for s in range(n_sched):
            for store, style, e in ((short, "-", epochs), (long, ":", 2 * epochs)):
                c = store[f"{n}/{s}"]["curve"]
                if not c:
                    continue
                lab = f"{n}, {e} epochs" if s == 0 else None
                ax.plot([p["epoch"] for p in c], [100 * p["test_acc"] for p in c], style,
                        color=colours[n], linewidth=1.2, label=lab)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"MNIST-1D CNN, base lr {base_lr:g}: step / cosine / linear")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    path, rel = ctx.figure(CLAIM, "schedules")
    save_figure(fig, path)
    return rel
