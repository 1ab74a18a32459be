"""Claim 14: the best η′ does not depend on β, except near the edge of stability (SPEC §4.14,
§4.6 network part; seed 002).

The notes (seed 002_4097fcc85c143290.txt, "momentum"): "the total contribution of a gradient
value ĝ_t is η/(1 − β) in the standard parameterization and is η′ in the nonstandard
parameterization (independent of β). this suggests that the optimal value of η′ is independent
of β and that β does nothing."

Theory (SPEC §4.6). In the EMA form (ḡ ← βḡ + (1 − β)ĝ, Φ ← Φ − η′ḡ; heavy ball at
η = η′(1 − β)) each gradient's total weight is η′ whatever β is, so while Φ barely moves over
the ≈ 1/(1 − β) steps of the average the trajectory — and the best η′ — are those of plain SGD
at η′. That fails near the edge of stability: on a mode of curvature h heavy ball is stable
for ηh < 2(1 + β), i.e. η′h < 2(1 + β)/(1 − β), so the largest curvature a run at η′ can
sustain is

    λ_edge(η′, β) = 2(1 + β)/((1 − β)η′)        (19× larger at β = 0.9 than at β = 0)

and training pushed against it ("edge of stability", Cohen et al. 2021: sharpness rises until
it reaches the edge and then stays there) ends with λ_max ≈ λ_edge. Where the edge binds,
β matters: at the same η′ a run with momentum can sit at a sharper point, and it diverges at
an η′ (1 + β)/(1 − β) times larger. For SGD (B = 32 here) the edge is an upper bound that the
noise may keep the run below; the checks say how close it comes.

Measurements (:func:`measure`):

* the η′ × β grid of claim 6 (:func:`sgdlab.experiments.momentum.network_grid`, its cache
  entries: free in a full ``reproduce``): MNIST-1D MLP (2 × 100 ReLU), B = 32 with
  replacement, final train loss per (η′, β, seed) through :func:`sgdlab.sweep.train_many`;
* an edge ladder on the same workload (same seeds, batch streams and steps as the grid): per β,
  η′ with λ_edge = 5, 2.5, 1.25 (β = 0: η′ = 0.4, 0.8, 1.6; β = 0.9: η′ = 7.6, 15.2, 30.4),
  and β = 0.9 also at β = 0's η′ (0.4, 0.8, 1.6); end sharpness λ_max of every run by
  :func:`sgdlab.probes.curvature.top_hessian_eigenvalue` (power iteration on the first
  training examples, as claim 6), final train loss, divergence.

Checks (tolerances fixed before measuring; λ_REF = 2.5 from claim 6's earlier runs, whose
best-η′ models ended at λ_max ≈ 2.4–3.5 for every β):

1. (notes) the best η′ does not depend on β: claim 6's rule on its grid — the per-seed
   parabola vertex in log₂η′ within half an octave of β = 0's (±2 se over seeds, paired);
2. (derived) near the edge the end sharpness follows λ_edge: at every ladder point with
   λ_edge ≤ λ_REF that trained, q = λ_max/λ_edge within [0.5, 1.2] (±2 se over seeds);
   INCONCLUSIVE for a β whose near-edge runs all failed to train. "Trained" = final train
   loss below chance (ln 10): changed after the first quick run, where it meant "did not
   diverge" and β = 0.9 at η′ ≥ 7.6 — collapsed to loss 2.36–2.57, λ_max ≈ 0.2 — counted;
3. (derived) β matters near the edge: at η′ = 1.6 (β = 0's λ_edge = 1.25) the run with
   β = 0.9 ends sharper than plain SGD: mean over seeds of ln(λ_0.9/λ_0) > 0 (±2 se, paired,
   trained runs); every plain-SGD seed diverging there while every β = 0.9 seed trains also
   passes (tightened after the first full run: "any plain-SGD divergence" passed it with one
   of three seeds diverged and the paired ratio at −1.04 ± 0.77);
4. (derived) the edge is a bound: no trained ladder run ends above it, q ≤ 1.2 (±2 se).
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np
import torch

from sgdlab.experiments import momentum as mo
from sgdlab.experiments.base import Check, Claim, Context, Result, worst_verdict
from sgdlab.experiments.kit import run_claim
from sgdlab.experiments.kit.verdicts import K, at_most, direction, mean_se

CLAIM = Claim("14-best-lr-momentum", "The best η′ does not depend on β (except at the edge)",
              "In the EMA form the best learning rate η′ does not depend on β; near the edge "
              "of stability the end sharpness follows 2(1 + β)/((1 − β)η′) and β matters.",
              "§4.14")

VERSION = 1
#: claim 6's η′ × β grid is read from its cache entries: `reproduce` runs claim 6 first
AFTER = ("6-momentum",)
EDGE_TARGETS = (5.0, 2.5, 1.25)           # λ_edge of the ladder points
LAMBDA_REF, Q_BAND, Q_MAX, MATCHED_ETA = 2.5, (0.5, 1.2), 1.2, 1.6
# a run counts as trained when its final train loss is below chance, ln 10 (added after the
# first quick run: β = 0.9 at η′ ≥ 7.6 ended at loss 2.36–2.57 with λ_max ≈ 0.15–0.28, a
# collapsed network, which the first rule — every run that did not diverge — counted)
CHANCE = math.log(10)
EDGE_BETAS = (0.0, 0.9)
BUDGETS: dict[str, dict[str, Any]] = {
    "smoke": {"edge": {"seeds": [0], "steps": 40, "hess_examples": 200, "hess_iters": 10}},
    "quick": {"edge": {"seeds": [0, 1, 2], "steps": 800, "hess_examples": 1000,
                       "hess_iters": 100}},
    "full": {"edge": {"seeds": [0, 1, 2], "steps": 1500, "hess_examples": 1000,
                      "hess_iters": 100}},
}


# ----------------------------------------------------------------------------- theory (pure)


def edge_sharpness(lr: float, beta: float) -> float:
    """λ_edge = 2(1 + β)/((1 − β)η′): the largest curvature EMA momentum at η′ (heavy ball at
    η = η′(1 − β)) is stable on."""
    return 2 * (1 + beta) / ((1 - beta) * lr)


def ladder() -> list[tuple[float, float]]:
    """The edge ladder's (η′, β): λ_edge ∈ EDGE_TARGETS per β, and β = 0.9 at β = 0's η′."""
    pts = [(round(edge_sharpness(1.0, b) / t, 6), b) for b in EDGE_BETAS for t in EDGE_TARGETS]
    pts += [(lr, 0.9) for lr, b in pts if b == 0.0]
    return sorted(set(pts), key=lambda p: (p[1], p[0]))


# ----------------------------------------------------------------------------- measurement


def _edge_seed(edge: dict, seed: int) -> dict:
    """The ladder on one seed: final train loss, divergence, end λ_max of every run."""
    import torch.nn.functional as F

    from sgdlab import data, models
    from sgdlab.probes.curvature import top_hessian_eigenvalue
    from sgdlab.sweep import train_many

    ds = data.load("mnist1d", seed=0)
    pts = ladder()
    steps = edge["steps"]
    r = train_many(ds, "mlp", [{"lr": float(e * (1 - b)), "momentum": float(b), "seed": seed}
                               for e, b in pts],
                   batch_size=mo.NET_BATCH, steps=steps, sampling="replacement",
                   eval_every=max(1, steps // mo.NET_EVALS), batch_seed=seed)
    tail = r.train_loss[:, -mo.NET_TAIL:].mean(1)
    loss_fn = lambda o, y: F.cross_entropy(o, y, reduction="none")   # noqa: E731
    rows = []
    for k, (e, b) in enumerate(pts):
        ok = bool(np.isfinite(tail[k]) and r.diverged_at[k] < 0)
        lam = math.nan
        if ok:
            m = models.build("mlp", ds, seed=seed)
            with torch.no_grad():
                for name, p in m.named_parameters():
                    p.copy_(r.params[name][k])
            lam = float(top_hessian_eigenvalue(
                m, loss_fn, ds.x_train[:edge["hess_examples"]],
                ds.y_train[:edge["hess_examples"]], iters=edge["hess_iters"],
                tol=1e-4).lambda_max)
        rows.append({"lr": e, "beta": b, "loss": float(tail[k]) if ok else None,
                     "diverged": not ok, "lambda_max": lam if ok else None,
                     "lambda_edge": edge_sharpness(e, b)})
    return {"rows": rows, "seconds": r.seconds}


def measure(ctx: Context, budget: dict[str, Any]) -> dict[str, Any]:
    """Claim 6's grid (its cache entries) and the edge ladder (cached per seed)."""
    net = mo.BUDGETS[ctx.mode]["net"]
    grid = mo.network_grid(ctx, net)
    edge = budget["edge"]
    runs = [ctx.cached({"claim": CLAIM.id, "v": VERSION, "part": "edge", "seed": s,
                        "ladder": ladder(), **edge}, lambda s=s: _edge_seed(edge, s))
            for s in edge["seeds"]]
    return {"net": {**net, "runs": grid}, "edge": {**edge, "runs": runs}}


# ----------------------------------------------------------------------------- judgement (pure)


def _points(m: dict) -> dict[tuple[float, float], dict[str, Any]]:
    """Per ladder point: λ_edge, the seeds' λ_max and losses (None where diverged)."""
    out: dict[tuple[float, float], dict[str, Any]] = {}
    for run in m["edge"]["runs"]:
        for r in run["rows"]:
            p = out.setdefault((r["lr"], r["beta"]), {"lambda_edge": r["lambda_edge"],
                                                      "lam": [], "loss": [], "diverged": 0})
            p["lam"].append(r["lambda_max"])
            p["loss"].append(r["loss"])
            p["diverged"] += int(r["diverged"])
    return out


def _trained(lam: float | None, loss: float | None) -> bool:
    """A run that neither diverged nor ended at chance (final train loss < ln 10)."""
    return lam is not None and loss is not None and loss < CHANCE


def _q(p: dict) -> tuple[float, float, int]:
    qs = [v / p["lambda_edge"] for v, ell in zip(p["lam"], p["loss"], strict=True)
          if _trained(v, ell)]
    if not qs:
        return math.nan, math.nan, 0
    q, se = mean_se(qs)
    return q, se, len(qs)


def _fmt(v: float) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{v:.3g}"


def judge(m: dict[str, Any]) -> list[Check]:
    """The four checks of the module docstring from :func:`measure`'s output."""
    best = mo._check_best({"net": m["net"]})          # claim 6's rule on claim 6's grid
    best.name = "the best η′ does not depend on β (network grid of claim 6)"
    pts = _points(m)
    checks = [best]
    verds: dict[float, list[str]] = {}
    txt = []
    for (lr, b), p in sorted(pts.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if p["lambda_edge"] > LAMBDA_REF * (1 + 1e-9):
            continue
        q, se, n = _q(p)
        if n == 0:
            verds.setdefault(b, []).append("INCONCLUSIVE")
            txt.append(f"β={b:g}, η′={lr:g}: not trained (loss "
                       f"{', '.join(_fmt(v) for v in p['loss'])}; λ_max "
                       f"{', '.join(_fmt(v) for v in p['lam'])})")
            continue
        lo = at_most(Q_BAND[0] - q, se, 0.0)           # q ≥ 0.5
        hi = at_most(q, se, Q_BAND[1])                 # q ≤ 1.2
        verds.setdefault(b, []).append(worst_verdict([lo, hi]))
        lam = float(np.mean([v for v in p["lam"] if v is not None]))
        txt.append(f"β={b:g}, η′={lr:g}: λ_max {_fmt(lam)} vs λ_edge {p['lambda_edge']:.3g}, "
                   f"q = {q:.3f} ± {_fmt(se)}"
                   + (f" ({n} of {len(p['lam'])} seeds trained)" if n < len(p["lam"]) else ""))
    per_beta = {b: ("INCONCLUSIVE" if all(v == "INCONCLUSIVE" for v in vs) else
                    worst_verdict([v for v in vs if v != "INCONCLUSIVE"]))
                for b, vs in verds.items()}
    c2 = Check(
        "near the edge the end sharpness follows 2(1 + β)/((1 − β)η′)",
        f"q = λ_max/λ_edge ≈ 1 at every ladder point with λ_edge ≤ {LAMBDA_REF:g} (MNIST-1D MLP, "
        f"B = {mo.NET_BATCH}, {m['edge']['steps']} steps, {len(m['edge']['seeds'])} seeds)",
        "; ".join(txt) or "—",
        f"q within [{Q_BAND[0]:g}, {Q_BAND[1]:g}] (±{K:g} se over seeds, trained runs); a β "
        "whose near-edge runs all failed to train: INCONCLUSIVE ('trained' = final loss below "
        "chance, ln 10: added after the first quick run, where β = 0.9 at η′ ≥ 7.6 collapsed to "
        "chance loss with λ_max ≈ 0.2 and the first rule, 'not diverged', counted it)",
        worst_verdict(per_beta.values()) if per_beta else "INCONCLUSIVE",
        {"per_beta": {str(b): v for b, v in per_beta.items()}}, basis="derived")
    never = sorted(b for b in verds if all(
        _q(p)[2] == 0 for (lr, bb), p in pts.items()
        if bb == b and p["lambda_edge"] <= LAMBDA_REF * (1 + 1e-9)))
    if never:
        q0 = [_q(p)[0] for (lr, b), p in pts.items() if b == 0.0
              and p["lambda_edge"] <= LAMBDA_REF * (1 + 1e-9) and _q(p)[2]]
        dead_lam = [v for (lr, b), p in pts.items() if b in never
                    and p["lambda_edge"] <= LAMBDA_REF * (1 + 1e-9)
                    for v in p["lam"] if v is not None]
        lam_txt = f"λ_max ≈ {np.mean(dead_lam):.2g}" if dead_lam else "or diverges"
        c2.finding = (
            "the notes are silent on the edge; on this network momentum never reaches it: "
            f"with β = {', '.join(f'{b:g}' for b in never)} every run whose edge is ≤ "
            f"{LAMBDA_REF:g} collapses to chance loss ({lam_txt}) instead of settling at the "
            "edge" + (f", while plain SGD ends at q = {min(q0):.2f}–{max(q0):.2f} of its edge"
                      if q0 else ""))
    checks.append(c2)
    a, b9 = pts.get((MATCHED_ETA, 0.0)), pts.get((MATCHED_ETA, 0.9))
    diffs = []
    if a is not None and b9 is not None:
        diffs = [math.log(y / x) for x, lx, y, ly in zip(a["lam"], a["loss"], b9["lam"],
                                                           b9["loss"], strict=True)
                 if _trained(x, lx) and _trained(y, ly) and x > 0 and y > 0]
    d, se = mean_se(diffs) if diffs else (math.nan, math.nan)
    v3 = direction(d, se, +1)
    if (a is not None and b9 is not None and _q(a)[2] == 0 and a["diverged"]
            and _q(b9)[2] == len(b9["lam"])):
        v3 = "PASS"             # every plain-SGD seed diverged where every β = 0.9 seed trained
    lam_txt = ("—" if a is None or b9 is None else
               f"β=0: λ_max {', '.join(_fmt(v) for v in a['lam'])} (λ_edge "
               f"{a['lambda_edge']:.3g}; loss {', '.join(_fmt(v) for v in a['loss'])}); "
               f"β=0.9: {', '.join(_fmt(v) for v in b9['lam'])} (λ_edge "
               f"{b9['lambda_edge']:.3g}; loss {', '.join(_fmt(v) for v in b9['loss'])})")
    c3 = Check(
        "β matters near the edge",
        f"at η′ = {MATCHED_ETA:g} the β = 0.9 run ends sharper than β = 0 (edge "
        f"{edge_sharpness(MATCHED_ETA, 0.9) / edge_sharpness(MATCHED_ETA, 0.0):.0f}× higher)",
        f"{lam_txt}; mean ln(λ_0.9/λ_0) = {d:+.3f} ± {_fmt(se)}",
        f"> 0 (±{K:g} se, paired over seeds); every plain-SGD seed diverging where every "
        "β = 0.9 seed trains also passes (tightened after the first full run, where one of "
        "three plain-SGD seeds diverged and the first rule — any divergence — passed the check "
        "although the paired ratio was −1.04 ± 0.77)", v3,
        {"log_ratio": d, "log_ratio_se": se}, basis="derived")
    if v3 == "PASS":
        c3.finding = ("'β does nothing' is a statement away from the edge of stability: at "
                      f"η′ = {MATCHED_ETA:g} plain SGD is held at λ_max ≤ "
                      f"{edge_sharpness(MATCHED_ETA, 0.0):.3g} while β = 0.9 (edge "
                      f"{edge_sharpness(MATCHED_ETA, 0.9):.3g}) settles "
                      f"{math.exp(d):.2g}× sharper" if math.isfinite(d) else
                      "'β does nothing' fails near the edge of stability: plain SGD diverges "
                      "where momentum trains")
    elif math.isfinite(d):
        c3.finding = (f"near plain SGD's edge (η′ = {MATCHED_ETA:g}) β = 0.9 ends no sharper "
                      f"(ln λ_0.9/λ_0 = {d:+.2f} ± {_fmt(se)}) although its edge is "
                      f"{edge_sharpness(MATCHED_ETA, 0.9) / edge_sharpness(MATCHED_ETA, 0.0):.0f}"
                      "× higher: here the end sharpness at large η′ is not held by the edge")
    checks.append(c3)
    v4, worst, dead = [], None, []
    for (lr, b), p in pts.items():
        q, se, n = _q(p)
        if n < len(p["lam"]):
            dead.append(f"β={b:g} η′={lr:g} ({len(p['lam']) - n})")
        if n == 0:
            continue
        v4.append(at_most(q, se, Q_MAX))
        if worst is None or q > worst[0]:
            worst = (q, se, lr, b)
    checks.append(Check(
        "the edge bounds the end sharpness",
        "q = λ_max(1 − β)η′/(2(1 + β)) ≤ 1 at every trained ladder point",
        "largest q " + (f"{worst[0]:.3f} ± {_fmt(worst[1])} (β={worst[3]:g}, η′={worst[2]:g})"
                        if worst else "—")
        + "; not trained (diverged or at chance loss): " + (", ".join(sorted(dead)) or "none"),
        f"q ≤ {Q_MAX:g} (±{K:g} se, trained runs)", worst_verdict(v4) if v4 else "INCONCLUSIVE",
        {"worst": worst}, basis="derived"))
    return checks


# ----------------------------------------------------------------------------- presentation


def figures(ctx: Context, m: dict[str, Any]) -> list[str]:
    """End sharpness against η′ per β with the edge 2(1 + β)/((1 − β)η′); the grid's loss."""
    from sgdlab.plots import new_figure, save_figure

    fig, axes = new_figure(1, 2, figsize=(10, 3.8))
    ax = axes[0][0]
    pts = _points(m)
    for b in EDGE_BETAS:
        sel = sorted((lr, p) for (lr, bb), p in pts.items() if bb == b)
        x = [lr for lr, _ in sel]
        y = [np.mean([v for v in p["lam"] if v is not None]) if any(
            v is not None for v in p["lam"]) else np.nan for _, p in sel]
        line = ax.plot(x, y, "o", ms=5, label=f"β={b:g} (end λ_max)")
        grid = np.geomspace(min(x), max(x), 50)
        ax.plot(grid, [edge_sharpness(g, b) for g in grid], "--", lw=0.8,
                color=line[0].get_color(), label=f"edge, β={b:g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("η′ (EMA form)")
    ax.set_ylabel("λ_max at the end")
    ax.legend(fontsize=7)
    ax = axes[0][1]
    be = mo.best_etas(m["net"])
    for i, b in enumerate(m["net"]["betas"]):
        ax.plot(m["net"]["etas"], [np.nan if v is None else v for v in be["mean_loss"][i]],
                "o-", ms=4, label=f"β={b:g}")
    ax.set_xscale("log")
    ax.set_xlabel("η′")
    ax.set_ylabel("final train loss (seed mean)")
    ax.set_title("claim 6's grid")
    ax.legend(fontsize=8)
    path, rel = ctx.figure(CLAIM, "edge")
    save_figure(fig, path)
    return [rel]


def notes(ctx: Context, m: dict[str, Any], budget: dict[str, Any]) -> list[str]:
    """What was run, for the report (below the checks)."""
    out: list[str] = []
    out.append(f"Grid: claim 6's ({ctx.mode}), shared cache entries. Edge ladder: "
                     + ", ".join(f"β={b:g} η′={lr:g}" for lr, b in ladder())
                     + f"; seeds {budget['edge']['seeds']}; {K:g}-se rules.")
    return out


def run(ctx: Context) -> Result:
    """Measure, judge, present (see the module docstring) through the kit's
    :func:`~sgdlab.experiments.kit.run_claim`."""
    return run_claim(sys.modules[__name__], ctx)
