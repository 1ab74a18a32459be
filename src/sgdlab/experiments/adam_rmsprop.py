"""Claim 15: Adam "should be" RMSProp if momentum does nothing (SPEC §4.15; seed 002).

The notes (seed 002, "adam — adaptive momentum"): "given the argument that momentum does
nothing, this should be equivalent to rmsprop. however, implementations of rmsprop and adam
differ in details such as default parameter values and, perhaps most importantly, rmsprop
lacks the initial bias correction terms (1 − βᵗ)."

Theory (SPEC §2.3, §2.4; same lr η, same ε, β₂ = α). On one gradient stream ĝ₁, ĝ₂, … all
three optimizers keep the same s_t = (1 − α)Σ_j α^{t−j} ĝ_j², so, up to ε:

* Adam with β₁ = 0 and no bias correction *is* RMSProp (update for update);
* without bias correction Adam's update is (1 − β₁ᵗ)/√(1 − β₂ᵗ) times the corrected one
  (§4.7; with β₂ = α = .99 it rises to ≈ 2.13 at t = 13 and falls back to 1 by t ≈ 500) —
  RMSProp, uncorrected, takes steps b_t = 1/√(1 − αᵗ) times the corrected size (10× at
  t = 1);
* momentum in the EMA form gives each gradient a total weight η (the notes' argument), so at
  small η, where the gradients change little within the first few hundred steps, the three
  runs follow one curve in "progress time" and differ only by a lag in steps
  (:func:`lags`): uncorrected Adam trails RMSProp by Δ_nc = Σ_t β₁ᵗ b_t (the lost
  (1 − β₁ᵗ) weights, counted at RMSProp's early boost; ≈ 40.8 steps at β₁ = .9, α = .99 —
  not β₁/(1 − β₁) = 9), corrected Adam by Δ_bc = Σ_t (b_t − 1) (123.9 steps; → 2 ln 2/(1 − α)
  as α → 1). At a finite step t the lag is t − t_r with τ_r(t_r) = τ(t), τ_r(t) = Σ_{k≤t} b_k,
  τ_nc(t) = Σ_{k≤t}(1 − β₁ᵏ)b_k, τ_bc(t) = t (:func:`lag_at`). The lag is in steps, not in
  ηt: it does not vanish as η → 0, it becomes negligible once t ≫ Δ. (First order: the
  sign-like first steps of a noisy coordinate, ĝ/√s at t = 1, are ignored.)

Measurement: the MNIST-1D MLP (sgdlab's ``mlp``, float32) trained from the same inits on the
same batches (B = 32, with replacement) by sgdlab's RMSprop(α = .99), Adam(β = (.9, .99),
bias_correction = False) and Adam(β = (.9, .99)), ε = 1e-8, over an lr ladder, all models
stacked in one forward pass (each optimizer keeps its state for the stacked tensor and is
stepped at lr 1; model k's parameters then move by η_k times that update — identical to
stepping at η_k, since the moments do not depend on η); the training loss on a fixed sample
of 512 training examples every few steps (not the full 4000: evaluating would cost more than
training; all variants are compared on the same sample). A float64 gradient stream of the
same MLP at a fixed Φ for the exact identities.

Checks (tolerances fixed before measuring):

1. (notes) equal loss curves at small lr: at every rung with η ≤ η*/8 (η* RMSProp's best
   rung), uncorrected Adam against RMSProp at the last step: |ΔL(T)| / (L(0) − L(T)) ≤ 5 %
   (mean over seeds, ±2 se); the predicted lag gives ≲ Δ_nc/T (≈ 4 % at T = 1000);
2. (notes) equal best lr: log₂ of the best lr (a parabola in log₂ η through the lowest final
   training loss of each seed and its two neighbours), uncorrected Adam minus RMSProp, within
   ±1 (a factor 2; paired over seeds, ±2 se; INCONCLUSIVE when a minimum is at the ladder's
   edge);
3. (notes) what remains is the bias correction: at the same small rungs, corrected Adam's
   gap to RMSProp exceeds uncorrected Adam's (paired over seeds, > 2 se);
4. (derived) the exact identities on the float64 stream: Adam(β₁ = 0, uncorrected) against
   RMSProp, max relative difference of the updates ≤ 1e-9, and the uncorrected/corrected
   update ratio of Adam(β₁ = .9, β₂ = .99) against (1 − β₁ᵗ)/√(1 − β₂ᵗ) ≤ 1e-6 (the median
   over coordinates at each t; ε = 1e-16; the smoke run's FAIL here was this module taking
   the ratio upside down, fixed);
5. (derived) the lags at the small rungs: the measured step lag of each Adam curve behind
   RMSProp's (the steps RMSProp needed to reach the same loss, averaged over the second half
   of the run) against the predicted lag at the same steps (:func:`lag_at`) within 30 %
   (±2 se over seeds). Changed after the smoke run (T = 200), disclosed: the prediction was
   the t → ∞ lag Δ; the smoke run's corrected-Adam lag (87 steps) was still accruing, as the
   finite-t form says (quick and full were first run with the finite-t form).

Changed after the first quick run (disclosed): its ladder (1e-4 × 2^0…6) had RMSProp's best
rung at its top (check 2 INCONCLUSIVE), so the ladder now reaches 5.12e-2 with 4× spacing
below 1.6e-3 and corrected Adam only at lr ≤ 8e-4 (to stay in budget); the lag estimator
inverts the running minimum of the reference curve (it returned nan where batch noise made
the sampled loss non-monotone). The second quick run took 29 s on the shared machine: its
rungs 1.6e-3 and 5.12e-2 (neither small nor next to the best rung 6.4e-3) were dropped from
quick. Tolerances unchanged.

Budgets are data (:data:`BUDGETS`); :func:`measure` does all training, :func:`judge` is a pure
function of its output, :func:`figures` draws it.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sgdlab import data, models, optim
from sgdlab.experiments.base import (
    Check,
    Claim,
    Context,
    Result,
    worst_verdict,
)
from sgdlab.experiments.kit import run_claim
from sgdlab.experiments.kit.verdicts import K, at_most, band, direction, mean_se

CLAIM = Claim("15-adam-is-rmsprop", "Adam \"should be\" RMSProp if momentum does nothing",
              "Adam without bias correction and with β₂ = α equals RMSProp at the same lr and "
              "ε — equal loss curves and equal best lr at small lr — and the difference that "
              "remains is the bias correction.", "§4.15")

VERSION = 1
BUDGETS: dict[str, dict[str, Any]] = {
    # lr = LR0·2^k for k in "rungs"; corrected Adam only at lr ≤ BC_MAX (checks 3 and 5)
    "smoke": {"steps": 200, "seeds": 2, "rungs": [0, 2, 4, 6, 8], "every": 10, "stream": 40},
    "quick": {"steps": 1000, "seeds": 2, "rungs": [0, 2, 5, 6, 7, 8], "every": 25,
              "stream": 100},
    "full": {"steps": 3000, "seeds": 5, "rungs": list(range(10)), "every": 25, "stream": 500},
}
LR0, BATCH, ALPHA, BETA1, EPS, EVAL_N, BC_MAX = 1e-4, 32, 0.99, 0.9, 1e-8, 512, 8e-4
VARIANTS = ("rmsprop", "adam_nc", "adam_bc")
SMALL_FRACTION = 1 / 8                      # "small lr": η ≤ η*/8
CURVE_TOL, LR_TOL, IDENT_TOL, RATIO_TOL, LAG_RTOL = 0.05, 1.0, 1e-9, 1e-6, 0.30


# ----------------------------------------------------------------------------- theory (pure)


def boost(t, alpha: float = ALPHA):
    """b_t = 1/√(1 − αᵗ): RMSProp's step relative to a bias-corrected one (s starts at 0)."""
    return 1.0 / np.sqrt(1.0 - alpha ** np.asarray(t, dtype=float))


def correction_ratio(t, beta1: float = BETA1, beta2: float = ALPHA):
    """Uncorrected/corrected Adam update on one stream: (1 − β₁ᵗ)/√(1 − β₂ᵗ) (§4.7)."""
    t = np.asarray(t, dtype=float)
    return (1 - beta1**t) / np.sqrt(1 - beta2**t)


def lags(beta1: float = BETA1, alpha: float = ALPHA, horizon: int = 100000
         ) -> dict[str, float]:
    """Predicted step lags behind RMSProp at small lr: Δ_nc = Σ β₁ᵗ b_t (uncorrected Adam),
    Δ_bc = Σ (b_t − 1) (corrected Adam)."""
    t = np.arange(1, horizon + 1, dtype=float)
    b = boost(t, alpha)
    return {"adam_nc": float((beta1**t * b).sum()), "adam_bc": float((b - 1).sum())}


def lag_at(t, variant: str, beta1: float = BETA1, alpha: float = ALPHA) -> np.ndarray:
    """Predicted lag behind RMSProp at steps t: t − τ_r⁻¹(τ_variant(t)) (module docstring)."""
    t = np.atleast_1d(np.asarray(t, dtype=float))
    k = np.arange(1, int(t.max()) + 1, dtype=float)
    b = boost(k, alpha)
    tau_r = np.concatenate([[0.0], np.cumsum(b)])
    own = np.concatenate([[0.0], np.cumsum((1 - beta1**k) * b if variant == "adam_nc"
                                           else np.ones_like(k))])
    steps = np.arange(tau_r.size, dtype=float)
    return t - np.interp(own[t.astype(int)], tau_r, steps)


def step_lag(t: np.ndarray, ref: np.ndarray, other: np.ndarray, start: float) -> float:
    """Mean over eval steps t ≥ start of t − t_ref(L_other(t)): the steps the reference curve
    took to reach the loss the other curve has at t (reference inverted by linear
    interpolation of its running minimum)."""
    t, ref, other = (np.asarray(a, dtype=float) for a in (t, ref, other))
    if not np.all(np.isfinite(ref)) or not np.all(np.isfinite(other)):
        return math.nan
    ref = np.minimum.accumulate(ref)                 # monotone envelope (batch noise)
    keep = t >= start
    tr = np.interp(-other[keep], -ref, t, left=math.nan, right=math.nan)
    return float(np.nanmean(t[keep] - tr)) if np.isfinite(tr).any() else math.nan


def best_log2_lr(log2_lr: np.ndarray, final: np.ndarray) -> float:
    """log₂ of the best lr: vertex of the parabola through the lowest final loss and its two
    neighbours; nan when the lowest is at an edge or a neighbour is not finite."""
    final = np.where(np.isfinite(final), final, np.inf)
    i = int(np.argmin(final))
    if i == 0 or i == len(final) - 1 or not np.all(np.isfinite(final[i - 1:i + 2])):
        return math.nan
    a, b, _ = np.polyfit(log2_lr[i - 1:i + 2], final[i - 1:i + 2], 2)
    return float(-b / (2 * a)) if a > 0 else math.nan


# ----------------------------------------------------------------------------- measurement


def _make_optimizer(variant: str, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    if variant == "rmsprop":
        return optim.RMSprop(params, lr=1.0, alpha=ALPHA, eps=EPS)
    return optim.Adam(params, lr=1.0, betas=(BETA1, ALPHA), eps=EPS,
                      bias_correction=variant == "adam_bc")


def _train(budget: dict[str, Any]) -> dict[str, Any]:
    """All variants × lrs × seeds as one stacked MLP; training loss on a fixed sample of
    EVAL_N examples every few steps."""
    from sgdlab.sweep import Engine

    ds = data.load("mnist1d", seed=0)
    lrs = LR0 * 2.0 ** np.asarray(budget["rungs"], dtype=float)
    seeds = list(range(budget["seeds"]))
    per = {v: [(i, lr, s) for i, lr in enumerate(lrs) for s in seeds
               if v != "adam_bc" or lr <= BC_MAX * 1.0001] for v in VARIANTS}
    start = dict(zip(VARIANTS, np.cumsum([0] + [len(per[v]) for v in VARIANTS]).tolist(),
                     strict=False))
    sl = {v: slice(start[v], start[v] + len(per[v])) for v in VARIANTS}
    mlps = [models.build("mlp", ds, seed=s) for v in VARIANTS for _, _, s in per[v]]
    eng = Engine(mlps, "mlp")
    # each variant's optimizer steps a shadow copy of its slice at lr 1
    shadows = {v: [torch.zeros_like(p[sl[v]]) for p in eng.params] for v in VARIANTS}
    opts = {v: _make_optimizer(v, shadows[v]) for v in VARIANTS}
    eta = torch.tensor([lr for v in VARIANTS for _, lr, _ in per[v]], dtype=torch.float32)
    xtr, ytr = ds.x_train.float(), ds.y_train
    gen = torch.Generator().manual_seed(0)
    sample = torch.randperm(ds.n_train, generator=gen)[:EVAL_N]
    xev, yev = xtr[sample], ytr[sample]
    evals, losses = [], []

    def evaluate(step: int) -> None:
        with torch.no_grad():
            out = eng.forward(xev, shared=True)              # (K, n, C)
            ce = F.cross_entropy(out.reshape(-1, out.shape[-1]), yev.repeat(eng.k),
                                 reduction="none").view(eng.k, -1).mean(1)
        evals.append(step)
        losses.append(ce.tolist())

    evaluate(0)
    for step in range(1, budget["steps"] + 1):
        idx = torch.randint(0, ds.n_train, (BATCH,), generator=gen)
        x, y = xtr[idx], ytr[idx]
        for p in eng.params:
            p.grad = None
        out = eng.forward(x, shared=True)
        F.cross_entropy(out.reshape(-1, out.shape[-1]), y.repeat(eng.k),
                        reduction="sum").div(BATCH).backward()
        with torch.no_grad():
            for v in VARIANTS:
                for p, d in zip(eng.params, shadows[v], strict=True):
                    d.zero_()
                    d.grad = p.grad[sl[v]]
                opts[v].step()
            for j, p in enumerate(eng.params):
                upd = torch.cat([shadows[v][j] for v in VARIANTS])
                p.add_(eta.view(-1, *([1] * (p.dim() - 1))) * upd)
        if step % budget["every"] == 0 or step == budget["steps"]:
            evaluate(step)
    flat = np.asarray(losses).T                              # (K, evals)
    loss = {}
    for v in VARIANTS:
        L = np.full((len(lrs), len(seeds), flat.shape[1]), np.nan)
        for j, (i, _, s) in enumerate(per[v]):
            L[i, seeds.index(s)] = flat[sl[v].start + j]
        loss[v] = L.tolist()
    return {"lrs": lrs.tolist(), "seeds": seeds, "evals": evals, "loss": loss}


def _stream(steps: int) -> dict[str, Any]:
    """Updates of the optimizers on one float64 gradient stream of the MLP at a fixed Φ."""
    ds = data.load("mnist1d", seed=0)
    model = models.build("mlp", ds, seed=0).double()
    gen = torch.Generator().manual_seed(1)
    stream = []
    for _ in range(steps):
        idx = torch.randint(0, ds.n_train, (BATCH,), generator=gen)
        x, y = ds.batch(idx)
        model.zero_grad()
        F.cross_entropy(model(x.double()), y).backward()
        stream.append([p.grad.detach().clone() for p in model.parameters()])

    def updates(make) -> list[torch.Tensor]:
        params = [torch.nn.Parameter(torch.zeros_like(g)) for g in stream[0]]
        opt = make(params)
        out = []
        for grads in stream:
            before = [p.detach().clone() for p in params]
            for p, g in zip(params, grads, strict=True):
                p.grad = g
            opt.step()
            out.append(torch.cat([(p.detach() - b).reshape(-1)
                                  for p, b in zip(params, before, strict=True)]))
        return out

    lr, eps = 1e-3, 1e-16
    rms = updates(lambda p: optim.RMSprop(p, lr=lr, alpha=ALPHA, eps=eps))
    a0 = updates(lambda p: optim.Adam(p, lr=lr, betas=(0.0, ALPHA), eps=eps,
                                      bias_correction=False))
    nc = updates(lambda p: optim.Adam(p, lr=lr, betas=(BETA1, ALPHA), eps=eps,
                                      bias_correction=False))
    bc = updates(lambda p: optim.Adam(p, lr=lr, betas=(BETA1, ALPHA), eps=eps))
    ident = max(float((a - r).abs().max() / r.abs().max()) for a, r in zip(a0, rms,
                                                                            strict=True))
    ratio = []
    for u, c in zip(nc, bc, strict=True):
        mask = c.abs() > 1e-30
        ratio.append(float((u[mask] / c[mask]).median()))
    return {"identity_max_rel": ident, "ratio": ratio}


def measure(ctx: Context, budget: dict[str, Any]) -> dict[str, Any]:
    """Train the ladder and run the stream (cached); derived numbers for :func:`judge`."""
    key = {"claim": CLAIM.id, "v": VERSION, **budget}
    m = ctx.cached(key, lambda: {"train": _train(budget), "stream": _stream(budget["stream"])})
    tr = m["train"]
    lrs = np.asarray(tr["lrs"])
    t = np.asarray(tr["evals"], dtype=float)
    L = {v: np.asarray(tr["loss"][v]) for v in VARIANTS}    # (lrs, seeds, evals)
    log2 = np.log2(lrs)
    best = {v: [best_log2_lr(log2, L[v][:, s, -1]) for s in range(len(tr["seeds"]))]
            for v in VARIANTS}
    mean_final = L["rmsprop"][:, :, -1].mean(1)
    i_best = int(np.nanargmin(np.where(np.isfinite(mean_final), mean_final, np.inf)))
    small = [i for i in range(len(lrs)) if lrs[i] <= lrs[i_best] * SMALL_FRACTION * 1.0001]
    rows = []
    for i in range(len(lrs)):
        r = L["rmsprop"][i]
        row: dict[str, Any] = {"lr": float(lrs[i]), "small": i in small}
        for v in ("adam_nc", "adam_bc"):
            prog = r[:, 0] - r[:, -1]
            gap = np.abs(L[v][i][:, -1] - r[:, -1]) / prog
            row[f"{v}_gap"], row[f"{v}_gap_se"] = mean_se(gap)
            row[f"{v}_gaps"] = gap.tolist()
            lag = [step_lag(t, r[s], L[v][i][s], t[-1] / 2) for s in range(r.shape[0])]
            row[f"{v}_lag"], row[f"{v}_lag_se"] = mean_se(lag)
            row[f"{v}_lag_pred"] = float(lag_at(t[t >= t[-1] / 2], v).mean())
        rows.append(row)
    return {"rows": rows, "best_log2": best, "i_best": i_best, "small": small,
            "steps": int(t[-1]), "lags": lags(), "stream": m["stream"],
            "seeds": len(tr["seeds"]), "curves": {"t": t.tolist(),
                                                   **{v: L[v].mean(1).tolist()
                                                      for v in VARIANTS}},
            "lrs": lrs.tolist()}


# ----------------------------------------------------------------------------- judgement (pure)


def judge(m: dict[str, Any]) -> list[Check]:
    """The five checks of the module docstring from :func:`measure`'s output."""
    rows = m["rows"]
    small = [rows[i] for i in m["small"]]
    lag_pred = m["lags"]
    if small:
        v1 = worst_verdict([at_most(r["adam_nc_gap"], r["adam_nc_gap_se"], CURVE_TOL)
                            for r in small])
        txt1 = ", ".join(f"η={r['lr']:.2g}: {r['adam_nc_gap']:.3f} ± {r['adam_nc_gap_se']:.3f}"
                         for r in small)
    else:
        v1, txt1 = "INCONCLUSIVE", "no rung ≤ η*/8 on the ladder"
    others = ", ".join(f"η={r['lr']:.2g}: {r['adam_nc_gap']:.3f}" for r in rows
                       if not r["small"])
    checks = [Check(
        "equal loss curves at small lr",
        f"uncorrected Adam(β = ({BETA1}, {ALPHA})) = RMSProp(α = {ALPHA}) at the same η, ε: "
        f"|ΔL(T)|/(L(0) − L(T)) ≲ lag/T = "
        f"{float(lag_at(m['steps'], 'adam_nc')[0]) / m['steps']:.3f} at T = {m['steps']}",
        f"{txt1} (larger rungs: {others})",
        f"≤ {CURVE_TOL:.0%} at every η ≤ η*/8 (±{K:g} se over {m['seeds']} seeds)", v1,
        {"small": small, "all": rows})]
    diff = [a - b for a, b in zip(m["best_log2"]["adam_nc"], m["best_log2"]["rmsprop"],
                                  strict=True)]
    d, dse = mean_se(diff)
    checks.append(Check(
        "equal best lr",
        "log₂ best lr of uncorrected Adam − of RMSProp = 0",
        f"{d:+.3f} ± {dse:.3f} (RMSProp's best rung η* = {m['lrs'][m['i_best']]:.3g}; per "
        f"seed " + ", ".join(f"{x:+.2f}" for x in diff) + ")",
        f"within ±{LR_TOL:g} (a factor 2; ±{K:g} se)", band(d, dse, LR_TOL),
        {"diff": diff, "best_log2": m["best_log2"]}))
    if small:
        verds = []
        for r in small:
            paired = [b - a for a, b in zip(r["adam_nc_gaps"], r["adam_bc_gaps"], strict=True)]
            verds.append(direction(*mean_se(paired), +1))
        v3 = worst_verdict(verds)
        txt3 = ", ".join(f"η={r['lr']:.2g}: {r['adam_bc_gap']:.3f} vs {r['adam_nc_gap']:.3f}"
                         for r in small)
    else:
        v3, txt3 = "INCONCLUSIVE", "no small rung"
    checks.append(Check(
        "what remains is the bias correction",
        "corrected Adam's gap to RMSProp at T exceeds uncorrected Adam's",
        f"relative gaps, corrected vs uncorrected: {txt3}",
        f"paired over seeds, > {K:g} se", v3, {}))
    st = m["stream"]
    ratio = np.asarray(st["ratio"])
    tt = np.arange(1, ratio.size + 1)
    rerr = float(np.max(np.abs(ratio / correction_ratio(tt) - 1)))
    checks.append(Check(
        "exact identities on one gradient stream",
        "Adam(β₁ = 0, uncorrected, β₂ = α) ≡ RMSProp; uncorrected/corrected Adam update = "
        f"(1 − β₁ᵗ)/√(1 − β₂ᵗ) (max {float(correction_ratio(tt).max()):.3f} at t = "
        f"{int(tt[np.argmax(correction_ratio(tt))])})",
        f"identity: max relative difference {st['identity_max_rel']:.1e}; ratio: max relative "
        f"deviation {rerr:.1e} over t ≤ {ratio.size}",
        f"≤ {IDENT_TOL:g} and ≤ {RATIO_TOL:g} (float64, ε = 1e-16; deterministic)",
        worst_verdict([at_most(st["identity_max_rel"], 0.0, IDENT_TOL),
                       at_most(rerr, 0.0, RATIO_TOL)]),
        {"identity_max_rel": st["identity_max_rel"], "ratio_max_rel": rerr},
        basis="derived"))
    if small:
        verds, parts = [], []
        for r in small:
            for v in ("adam_nc", "adam_bc"):
                p = r[f"{v}_lag_pred"]
                verds.append(band(r[f"{v}_lag"] / p - 1, r[f"{v}_lag_se"] / p, LAG_RTOL))
                parts.append(f"η={r['lr']:.2g} {v}: {r[f'{v}_lag']:.1f} ± "
                             f"{r[f'{v}_lag_se']:.1f} (predicted {p:.1f})")
        v5, txt5 = worst_verdict(verds), "; ".join(parts)
    else:
        v5, txt5 = "INCONCLUSIVE", "no small rung"
    c5 = Check(
        "the remaining difference is a lag in steps",
        f"Δ_nc = Σ β₁ᵗ/√(1 − αᵗ) = {lag_pred['adam_nc']:.1f}, Δ_bc = Σ (1/√(1 − αᵗ) − 1) = "
        f"{lag_pred['adam_bc']:.1f} steps behind RMSProp as t → ∞; at finite t the lag of "
        "the step counts τ(t) (lag_at), averaged over the second half of the run",
        txt5, f"within {LAG_RTOL:.0%} (±{K:g} se over seeds)", v5, {"predicted": lag_pred},
        basis="derived")
    if v5 == "PASS":
        c5.finding = (
            "momentum and the bias correction do not vanish at small lr: they delay the "
            f"curve by a fixed number of steps (≈ {lag_pred['adam_nc']:.0f} uncorrected, "
            f"≈ {lag_pred['adam_bc']:.0f} corrected, at α = {ALPHA}), negligible only for "
            "runs much longer than that")
    checks.append(c5)
    return checks


# ----------------------------------------------------------------------------- presentation


def figures(ctx: Context, m: dict[str, Any]) -> list[str]:
    """Loss curves at the smallest and RMSProp's best lr; final loss against lr."""
    from sgdlab.plots import new_figure, save_figure

    fig, axes = new_figure(1, 2, figsize=(10, 3.8))
    c = m["curves"]
    t = np.asarray(c["t"])
    ax = axes[0][0]
    for i, ls in ((0, "-"), (m["i_best"], "--")):
        for v in VARIANTS:
            ax.plot(t, c[v][i], ls, lw=1, label=f"{v}, η = {m['lrs'][i]:.2g}")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (mean over seeds)")
    ax.legend(fontsize=7)
    ax = axes[0][1]
    for v in VARIANTS:
        ax.plot(m["lrs"], [row[-1] for row in c[v]], "o-", ms=3, label=v)
    ax.set_xscale("log")
    ax.set_xlabel("lr")
    ax.set_ylabel(f"training loss at step {m['steps']}")
    ax.legend(fontsize=8)
    path, rel = ctx.figure(CLAIM, "curves")
    save_figure(fig, path)
    return [rel]


def notes(ctx: Context, m: dict[str, Any], budget: dict[str, Any]) -> list[str]:
    """What was run, for the report (below the checks)."""
    out: list[str] = []
    out.append(f"MNIST-1D MLP, B = {BATCH} with replacement, {budget['steps']} steps, "
                     f"{budget['seeds']} seeds, lr = {LR0:g} × 2^k, k in {budget['rungs']} "
                     f"(corrected Adam at lr ≤ {BC_MAX:g}), ε = {EPS:g}; small lr = η ≤ "
                     "η*/8.")
    return out


def run(ctx: Context) -> Result:
    """Measure, judge, present (see the module docstring) through the kit's
    :func:`~sgdlab.experiments.kit.run_claim`."""
    return run_claim(sys.modules[__name__], ctx)
