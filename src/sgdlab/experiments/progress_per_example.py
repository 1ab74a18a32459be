"""Claim 16: B* and η_B are "optimal" — progress per example against B (SPEC §4.16, §4.9 (ii);
seed 002).

The notes (seed 002, "an original algorithm derivation"): "we will derive a learning rate by
maximizing a lower bound on the rate of reduction in training loss … we will calculate a batch
size b* and learning rate η* by optimizing an improvement guarantee for a single batch update.
we then use learning rate scaling to derive the learning rate η_b for a batch size b << b*";
with ĝ = g ± 2σ/√b and loss'' ≤ L, "we optimize progress per gradient calculation by
optimizing the right hand side divided by b … b* = 16σ²/g², η* = 1/(2L), η_b = (b/b*)η* =
b g²/(32σ²L)" ("calculating b* and η* in one dimension").

Theory (one coordinate, a quadratic of curvature h = L, mean gradient G, per-example gradient
variance σ², batches of B drawn with replacement: E ĝ = G, Var ĝ = σ²/B; B_noise = σ²/G²).

* The notes' guarantee: the step −ηĝ reduces the loss by ηGĝ − ½hη²ĝ² exactly; where
  G ≥ ĝ − 2σ/√B this is ≥ η(ĝ − 2σ/√B)ĝ − ½hη²ĝ² (the notes' bound; it holds with probability
  ≈ Φ(2) − Φ(−G√B/σ) ≈ 97.7 % at B*). With ĝ → G, per example,
  (η(G − 2σ/√B)G − ½hη²G²)/B is maximal at B* = 16σ²/G² = 16 B_noise, η* = 1/(2h)
  (:func:`guarantee`); for B < B*/4 it is negative at every η > 0 — η_B comes from linear
  scaling, not from the bound.
* Expected progress of one step (exact on a quadratic, any noise distribution):
  P(η, B) = ηG² − ½hη²(G² + σ²/B) (:func:`expected_progress`), maximal at
  η_opt(B) = G²/(h(G² + σ²/B)) (:func:`best_step`), where P/B = G⁴/(2h(BG² + σ²)): the
  expected progress per example *falls monotonically with B*; B* gets 1/17 of its B → 0
  value. At the notes' step, P(η_B, B)/B = G⁴/(32σ²h)(63/64 − B/(64 B_noise)), also falling,
  and only 63/1024 ≈ 6 % of the best at B ≪ B_noise.
* η_opt/η_B = 32/(1 + B/B_noise) for B ≤ B* (:func:`step_ratio`): ≈ 32 for B ≪ B_noise
  (SPEC §4.9 (ii)'s "at least 32×"), but smaller for B_noise ≲ B ≪ B* (16 at B = B*/16) —
  "B ≪ B*" is not "B ≪ B_noise". (With a bound L = h_max above the coordinate's curvature h
  the ratio is multiplied by h_max/h.)

Problem (float64, fixed seed): N = 4096 examples ℓ_b = ½h(Φ − x_b)², x_b a standardised
exponential (skewed, mean 0, variance 1), h = 1, Φ = 1/8: G = 1/8, σ² = 1, B_noise = 64,
B* = 1024. For each B of a ×2 ladder 1 … 4096, independent single steps from Φ (⌈D/B⌉
chains, D examples per B: every B gets the same relative precision), each a batch of B
indices drawn with replacement.

Checks (tolerances fixed before measuring):

1. (notes) B*, η* maximise the guarantee per example: a numerical maximisation of the
   closed-form bound over (B, η) lands on 16σ²/G² and 1/(2h) within 1e-4 (relative);
2. (notes) the guarantee holds at (B*, η*): the fraction of simulated steps whose realised
   loss reduction is ≥ the notes' bound is ≥ 95 % (the "±2σ" of the notes; ±2 se);
3. (derived) expected progress per example: simulated mean at η_opt(B) and at the notes'
   step (η_B for B ≤ B*, η* above) against P/B at every B, |z| ≤ z* (Bonferroni, two-sided
   α = 0.05 over all points), and falling: P/B at B = 1 above P/B at B* by > 2 se at both
   steps;
4. (derived) the best step: the simulated maximiser η̂_opt(B) = G·mean ĝ/(h·mean ĝ²)
   (P is exactly quadratic in η) against G²/(h(G² + σ²/B)), and so η̂_opt/η_B against
   32/(1 + B/B_noise), |z| ≤ z* (Bonferroni over the B ≤ B*).

The first quick run (disclosed, rule and seed kept): checks 3 and 4 FAIL on one point, B = 4,
where the 2^20 batches' mean ĝ came out 3.7 se above G (|z| = 3.5–3.7 for all three
statistics there, which share those draws; the other twelve B within 2.2 se; six other seeds
at B = 4 gave |z| < 1.5) — a false alarm the Bonferroni rule allows with probability ≈ 0.3 %
across the ladder, reported as measured rather than re-drawn.

Budgets are data (:data:`BUDGETS`); :func:`measure` does all simulation, :func:`judge` is a
pure function of its output, :func:`figures` draws it.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np

from sgdlab.experiments.base import (
    Check,
    Claim,
    Context,
    Result,
    worst_verdict,
)
from sgdlab.experiments.kit import run_claim
from sgdlab.experiments.kit.verdicts import K, at_most, direction

CLAIM = Claim("16-bstar-progress", "B* and η_B: progress per example against B",
              "B* = 16σ²/G² and η* = 1/(2L) maximise the notes' 2σ improvement guarantee per "
              "example, and η_B = (B/B*)η* for B ≪ B*; expected progress per example falls "
              "monotonically with B, and η_B is ≈ 32× below the best step for B ≪ B_noise.",
              "§4.16")

VERSION = 1
BUDGETS: dict[str, dict[str, Any]] = {
    "smoke": {"examples_per_b": 2**16, "min_chains": 256},
    "quick": {"examples_per_b": 2**22, "min_chains": 1024},
    "full": {"examples_per_b": 2**25, "min_chains": 8192},
}
N_DATA, H, PHI, SEED = 4096, 1.0, 0.125, 0
LADDER = [2**k for k in range(13)]                 # B = 1 … 4096
OPT_RTOL, GUARANTEE_MIN, ALPHA = 1e-4, 0.95, 0.05
CHUNK = 2**22                                      # indices drawn at once


# ----------------------------------------------------------------------------- theory (pure)


def expected_progress(eta, batch, G: float, sigma2: float, h: float):
    """E[L(Φ) − L(Φ − ηĝ)] = ηG² − ½hη²(G² + σ²/B) on a quadratic of curvature h."""
    return eta * G * G - 0.5 * h * eta * eta * (G * G + sigma2 / batch)


def best_step(batch, G: float, sigma2: float, h: float):
    """η_opt(B) = G²/(h(G² + σ²/B)), the maximiser of :func:`expected_progress`."""
    return G * G / (h * (G * G + sigma2 / batch))


def notes_bstar(G: float, sigma2: float) -> float:
    """The notes' B* = 16σ²/G²."""
    return 16.0 * sigma2 / (G * G)


def notes_step(batch, G: float, sigma2: float, h: float):
    """The notes' step: η_B = (B/B*)η* for B ≤ B*, η* = 1/(2h) at and above B*."""
    return np.minimum(np.asarray(batch, dtype=float) / notes_bstar(G, sigma2), 1.0) / (2 * h)


def guarantee(eta, batch, G: float, sigma2: float, h: float):
    """The notes' bound on the loss reduction with ĝ → G: η(G − 2σ/√B)G − ½hη²G²."""
    return eta * (G - 2 * math.sqrt(sigma2) / np.sqrt(batch)) * G - 0.5 * h * eta**2 * G * G


def step_ratio(batch, G: float, sigma2: float) -> Any:
    """η_opt/η_B = 32/(1 + B/B_noise) for B ≤ B* (h = L)."""
    return 32.0 / (1.0 + np.asarray(batch, dtype=float) * G * G / sigma2)


def maximise_guarantee(G: float, sigma2: float, h: float) -> tuple[float, float]:
    """(B, η) maximising :func:`guarantee` / B numerically (Nelder–Mead on (log B, η))."""
    from scipy.optimize import minimize

    def neg(z: np.ndarray) -> float:
        b = math.exp(z[0])
        return -float(guarantee(z[1], b, G, sigma2, h)) / b * 1e6

    best = minimize(neg, np.array([math.log(4 * sigma2 / (G * G) + 10), 0.2 / h]),
                    method="Nelder-Mead", options={"xatol": 1e-12, "fatol": 1e-16,
                                                   "maxiter": 20000, "maxfev": 40000})
    return math.exp(best.x[0]), float(best.x[1])


# ----------------------------------------------------------------------------- problem


def problem() -> dict[str, Any]:
    """The N examples (standardised exponential x_b), G and σ² at Φ."""
    rng = np.random.default_rng(SEED)
    x = rng.exponential(size=N_DATA)
    x = (x - x.mean()) / x.std()
    g = H * (PHI - x)                                   # per-example gradients at Φ
    return {"x": x, "G": float(g.mean()), "sigma2": float(g.var())}


def _steps(x: np.ndarray, batch: int, chains: int, rng: np.random.Generator) -> np.ndarray:
    """ĝ of ``chains`` independent batches of ``batch`` examples (with replacement)."""
    out = np.empty(chains)
    per = max(1, CHUNK // batch)
    for i in range(0, chains, per):
        c = min(per, chains - i)
        idx = rng.integers(0, x.size, size=(c, batch))
        out[i:i + c] = H * (PHI - x[idx].mean(1))
    return out


def _mean_se(v: np.ndarray) -> tuple[float, float]:
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(v.size))


def _simulate(budget: dict[str, Any]) -> dict[str, Any]:
    prob = problem()
    x, G, s2 = prob["x"], prob["G"], prob["sigma2"]
    rng = np.random.default_rng(SEED + 1)
    rows = []
    for B in LADDER:
        chains = max(budget["min_chains"], -(-budget["examples_per_b"] // B))
        gh = _steps(x, B, chains, rng)
        row: dict[str, Any] = {"B": B, "chains": chains}
        for name, eta in (("opt", float(best_step(B, G, s2, H))),
                          ("notes", float(notes_step(B, G, s2, H)))):
            # the full-data loss L(φ) = ½h((φ − x̄)² + var x): its reduction by the step
            red = 0.5 * H * ((PHI - x.mean()) ** 2 - (PHI - eta * gh - x.mean()) ** 2)
            row[f"{name}_eta"] = eta
            row[f"{name}_mean"], row[f"{name}_se"] = (v / B for v in _mean_se(red))
            if name == "notes":
                bound = eta * (gh - 2 * math.sqrt(s2 / B)) * gh - 0.5 * H * eta**2 * gh**2
                ok = (red >= bound).astype(float)
                row["guarantee_frac"], row["guarantee_se"] = _mean_se(ok)
        a, b = G * gh, H * gh * gh                     # η̂_opt = mean a / mean b
        ma, mb = a.mean(), b.mean()
        cov = np.cov(a, b)
        r = ma / mb
        row["eta_hat"] = float(r)
        row["eta_hat_se"] = float(abs(r) * math.sqrt(max(
            cov[0, 0] / ma**2 + cov[1, 1] / mb**2 - 2 * cov[0, 1] / (ma * mb), 0.0)
            / gh.size))
        rows.append(row)
    return {"G": G, "sigma2": s2, "h": H, "rows": rows}


def measure(ctx: Context, budget: dict[str, Any]) -> dict[str, Any]:
    """Simulate the ladder (cached) and evaluate the closed forms at it."""
    key = {"claim": CLAIM.id, "v": VERSION, **budget}
    m = ctx.cached(key, lambda: _simulate(budget))
    G, s2, h = m["G"], m["sigma2"], m["h"]
    Bs = np.array([r["B"] for r in m["rows"]], dtype=float)
    for r, B in zip(m["rows"], Bs, strict=True):
        for name in ("opt", "notes"):
            r[f"{name}_pred"] = float(expected_progress(r[f"{name}_eta"], B, G, s2, h) / B)
        r["eta_opt"] = float(best_step(B, G, s2, h))
        r["ratio_pred"] = float(step_ratio(B, G, s2))
        r["guarantee_prob"] = float(_gauss_prob(B, G, s2))
    bstar, estar = maximise_guarantee(G, s2, h)
    m["bstar"], m["eta_star"] = notes_bstar(G, s2), 1 / (2 * h)
    m["bstar_num"], m["eta_star_num"] = bstar, estar
    m["b_noise"] = s2 / (G * G)
    return m


def _gauss_prob(B: float, G: float, s2: float) -> float:
    """P(the notes' guarantee holds) for Gaussian ĝ: Φ(2) − Φ(−G√B/σ)."""
    from scipy.stats import norm

    return float(norm.cdf(2.0) - norm.cdf(-G * math.sqrt(B / s2)))


# ----------------------------------------------------------------------------- judgement (pure)


def _zstar(n: int) -> float:
    from scipy.stats import norm

    return float(norm.isf(ALPHA / (2 * max(n, 1))))


def judge(m: dict[str, Any]) -> list[Check]:
    """The four checks of the module docstring from :func:`measure`'s output."""
    rows = m["rows"]
    bstar, estar = m["bstar"], m["eta_star"]
    errs = (abs(m["bstar_num"] / bstar - 1), abs(m["eta_star_num"] / estar - 1))
    checks = [Check(
        "B* and η* maximise the guarantee per example",
        f"argmax of (η(G − 2σ/√B)G − ½hη²G²)/B: B* = 16σ²/G² = {bstar:.6g}, η* = 1/(2h) = "
        f"{estar:.6g}",
        f"numerical maximum at B = {m['bstar_num']:.6g}, η = {m['eta_star_num']:.6g} "
        f"(relative errors {errs[0]:.1e}, {errs[1]:.1e})",
        f"within {OPT_RTOL:g} relative (deterministic: no se)",
        worst_verdict([at_most(e, 0.0, OPT_RTOL) for e in errs]),
        {"bstar": bstar, "eta_star": estar, "bstar_num": m["bstar_num"],
         "eta_star_num": m["eta_star_num"]})]
    at_star = min(rows, key=lambda r: abs(math.log(r["B"] / bstar)))
    gf, gse = at_star["guarantee_frac"], at_star["guarantee_se"]
    checks.append(Check(
        "the guarantee holds at (B*, η*)",
        f"realised loss reduction ≥ η(ĝ − 2σ/√B)ĝ − ½hη²ĝ² in ≥ {GUARANTEE_MIN:.0%} of steps "
        f"(Gaussian ĝ: {at_star['guarantee_prob']:.4f}) at B = {at_star['B']}",
        f"{gf:.4f} ± {gse:.4f} of {at_star['chains']} steps",
        f"≥ {GUARANTEE_MIN:.0%} (±{K:g} se)", direction(gf - GUARANTEE_MIN, gse, +1),
        {"fraction": gf, "se": gse, "gaussian": at_star["guarantee_prob"],
         "B": at_star["B"]}))
    # 3: expected progress per example
    z = []
    for r in rows:
        for name in ("opt", "notes"):
            z.append((r[f"{name}_mean"] - r[f"{name}_pred"]) / r[f"{name}_se"])
    z = np.asarray(z)
    zs = _zstar(len(z))
    first = rows[0]
    falls = []
    for name in ("opt", "notes"):
        d = first[f"{name}_mean"] - at_star[f"{name}_mean"]
        falls.append(direction(d, math.hypot(first[f"{name}_se"], at_star[f"{name}_se"]), +1))
    v3 = worst_verdict(["PASS" if np.all(np.abs(z) <= zs) else "FAIL", *falls])
    per_opt = first["opt_mean"], at_star["opt_mean"]
    frac_notes = first["notes_mean"] / first["opt_mean"]
    c3 = Check(
        "expected progress per example falls with B",
        "P/B = (ηG² − ½hη²(G² + σ²/B))/B at η_opt(B) and at the notes' step; at η_opt "
        "G⁴/(2h(BG² + σ²)), decreasing in B",
        f"max |z| {float(np.abs(z).max()):.2f} over {len(z)} points; P/B at η_opt: "
        f"{per_opt[0]:.4g} (B = 1) → {per_opt[1]:.4g} (B = {at_star['B']}); the notes' step "
        f"gets {frac_notes:.3f} of the best at B = 1",
        f"|z| ≤ {zs:.2f} (Bonferroni, α = {ALPHA}); B = 1 above B* by > {K:g} se",
        v3, {"z": z.tolist(), "z_star": zs, "notes_fraction_b1": frac_notes,
             "bstar_fraction": per_opt[1] / per_opt[0]}, basis="derived")
    if v3 == "PASS":
        c3.finding = (
            "B* maximises the notes' 2σ guarantee, not the expected progress per example, "
            f"which falls monotonically with B: at B* it is {per_opt[1] / per_opt[0]:.3f} of "
            f"its B = 1 value, and the notes' η_B delivers {frac_notes:.3f} of the best")
    checks.append(c3)
    # 4: the best step against η_B
    small = [r for r in rows if r["B"] <= bstar * (1 + 1e-9)]
    z4 = np.array([(r["eta_hat"] - r["eta_opt"]) / r["eta_hat_se"] for r in small])
    zs4 = _zstar(len(z4))
    ratios = [(r["B"], r["eta_hat"] / r["notes_eta"], r["ratio_pred"]) for r in small]
    mid = min(ratios, key=lambda x: abs(math.log(x[0] / m["b_noise"])))
    c4 = Check(
        "the best step against η_B",
        f"η_opt = G²/(h(G² + σ²/B)); η_opt/η_B = 32/(1 + B/B_noise) (B_noise = "
        f"{m['b_noise']:.4g}): → 32 only for B ≪ B_noise",
        f"max |z| {float(np.abs(z4).max()):.2f} over {len(z4)} B ≤ B*; η̂_opt/η_B = "
        f"{ratios[0][1]:.2f} at B = 1, {mid[1]:.2f} at B = {mid[0]}, {ratios[-1][1]:.2f} at "
        f"B = {ratios[-1][0]}",
        f"|z| ≤ {zs4:.2f} (Bonferroni, α = {ALPHA})",
        "PASS" if np.all(np.abs(z4) <= zs4) else "FAIL",
        {"z": z4.tolist(), "z_star": zs4, "ratios": ratios}, basis="derived")
    if c4.verdict == "PASS":
        c4.finding = (
            f"the notes' η_B is ≈ 32× below the step that maximises expected progress "
            f"({ratios[0][1]:.1f}× at B = 1), but only 32/(1 + B/B_noise): {mid[1]:.1f}× at "
            f"B = B_noise = B*/16 — SPEC §4.9 (ii)'s 'at least 32×' is the B ≪ B_noise limit")
    checks.append(c4)
    return checks


# ----------------------------------------------------------------------------- presentation


def figures(ctx: Context, m: dict[str, Any]) -> list[str]:
    """Progress per example against B (both steps), and the best step against η_B."""
    from sgdlab.plots import new_figure, save_figure

    fig, axes = new_figure(1, 2, figsize=(10, 3.8))
    rows = m["rows"]
    B = np.array([r["B"] for r in rows], dtype=float)
    ax = axes[0][0]
    for name, label in (("opt", "η_opt(B)"), ("notes", "notes' η_B / η*")):
        mean = np.array([r[f"{name}_mean"] for r in rows])
        se = np.array([r[f"{name}_se"] for r in rows])
        ax.errorbar(B, mean, yerr=2 * se, fmt="o", ms=3, capsize=2, label=f"{label} (±2 se)")
        ax.plot(B, [r[f"{name}_pred"] for r in rows], "-", lw=1)
    ax.axvline(m["bstar"], color="k", ls=":", lw=0.8, label="B*")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size B")
    ax.set_ylabel("expected loss reduction per example")
    ax.legend(fontsize=8)
    ax = axes[0][1]
    small = [r for r in rows if r["B"] <= m["bstar"] * (1 + 1e-9)]
    Bs = np.array([r["B"] for r in small], dtype=float)
    ax.errorbar(Bs, [r["eta_hat"] / r["notes_eta"] for r in small],
                yerr=[2 * r["eta_hat_se"] / r["notes_eta"] for r in small], fmt="o", ms=3,
                capsize=2, label="η̂_opt / η_B (±2 se)")
    ax.plot(Bs, [r["ratio_pred"] for r in small], "-", label="32/(1 + B/B_noise)")
    ax.axhline(32, color="k", ls=":", lw=0.8)
    ax.axvline(m["b_noise"], color="grey", ls="--", lw=0.8, label="B_noise")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size B")
    ax.set_ylabel("best step / notes' η_B")
    ax.legend(fontsize=8)
    path, rel = ctx.figure(CLAIM, "progress")
    save_figure(fig, path)
    return [rel]


def notes(ctx: Context, m: dict[str, Any], budget: dict[str, Any]) -> list[str]:
    """What was run, for the report (below the checks)."""
    out: list[str] = []
    out.append(f"{budget['examples_per_b']} examples per B (≥ {budget['min_chains']} "
                     f"single steps), N = {N_DATA}, with replacement, float64; G = "
                     f"{m['G']:.4g}, σ² = {m['sigma2']:.4g}, h = {m['h']:g}.")
    return out


def run(ctx: Context) -> Result:
    """Measure, judge, present (see the module docstring) through the kit's
    :func:`~sgdlab.experiments.kit.run_claim`."""
    return run_claim(sys.modules[__name__], ctx)
