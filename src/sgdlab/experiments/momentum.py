"""Claim 6: momentum in the EMA form does not change the temperature (SPEC §4.6, §2.2).

SPEC §2.2 has two parameterizations of momentum, both from zero buffers: heavy ball
v ← βv + ĝ, Φ ← Φ − ηv, and EMA ḡ ← βḡ + (1 − β)ĝ, Φ ← Φ − η′ḡ; heavy ball with η is
*exactly* EMA with η′ = η/(1 − β). SPEC §4.6: in the EMA form the stationary excess loss is
≈ η′ tr Σ/(4B) for every β (each gradient gets total weight η′ whatever β is), "while
η′h_max ≪ 1 − β".

Problem: a diagonal noisy quadratic ℓ_b(Φ) = ½ Σ_i h_i (Φ_i − x_bi)², d = 20, h_i geometric
in [0.5, 1] (h_max = 1), N = 1000 points x_b ~ N(0, I) (seeded), B = 1, batches drawn with
replacement (the setting of the temperature theory, SPEC §1). Φ* = x̄, L* = ½ Σ_i h_i s_i²
(s_i² the 1/N variance of coordinate i), per-example gradient covariance Σ = diag(h_i² s_i²),
and the gradient noise does not depend on Φ, so everything is exact:

- β = 0: L(η′) − L* = Σ_i η′σ_i²/(B(4 − 2η′h_i)) (:func:`quadratic_excess_loss`);
- any β, EMA form: each mode is the linear system (δ, ḡ) ↦ A(δ, ḡ) + b ξ with
  A = [[1 − η′(1 − β)h, −η′β], [(1 − β)h, β]], b = (−η′(1 − β), 1 − β), Var ξ = σ²/B; the
  stationary covariance P solves P = APAᵀ + bbᵀσ²/B (discrete Lyapunov), excess = ½ h P₀₀.
  In closed form, per mode: excess = (η′σ²/4B) / (1 − η′h(1 − β)/(2(1 + β))). So the β
  dependence is set by η′h (the β = 0 value's own O(η′²) rise, which momentum *reduces*),
  not by η′h against 1 − β: the exact theory predicts the β-independence survives far past
  η′h_max ≈ 1 − β. The measurement below decides.

Measurements (every stationary loss by :func:`stationary_loss`, optimizer "momentum",
chains started from the β = 0 stationary distribution so the transient is short; MSER still
detects and drops it):

1. β-independence where η′h_max ≪ 1 − β for every claimed β (the smallest η′ of the ladder:
   10⁻³ = 0.1(1 − 0.99)/h_max in full and smoke, 2·10⁻³ in quick to keep it under ~30 s):
   R_β = (L_β − L*)/(L_0 − L*) for β ∈ {.5, .9, .99}, within 10 %;
2. each L_β − L* against the first-order η′ tr Σ/(4B), within 10 %;
3. where it stops holding: R_β at η′h_max = 1 − β for β ∈ {.5, .9, .99} (the SPEC's
   condition says the β dependence should appear there), from a ladder of η′ up to 0.5
   (quick) or 1 (full) for every β (the figure), which also locates the onset;
4. heavy ball at η = η′(1 − β) against EMA at η′ (independent seeds): stationary losses agree
   within 3 combined standard errors;
5. the exact identity: with the same batches in float64, hand-written EMA and heavy-ball
   recursions and sgdlab's two styles give the same Φ_t at every step to 1e-10.

Uncertainty of a ratio: the standard errors of numerator and denominator combined as if
independent (the runs share batch streams, so this overstates it). A band check passes when
the ±2σ interval lies inside the band, fails when it lies outside, else is INCONCLUSIVE.

Optimizer state across :func:`stationary_loss`'s extensions: the run is extended in place
(the same chains and the same optimizer object keep stepping), so momentum buffers are
carried through every extension; they start at zero only at the start of a call (and when
chains are continued through ``phi0``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from sgdlab import optim
from sgdlab.experiments.base import Check, Claim, Context, Result, verdict, worst_verdict
from sgdlab.plots import plot_curves
from sgdlab.probes.stationary import quadratic_excess_loss, stationary_loss

CLAIM = Claim("6-momentum", "Momentum (EMA form) and the temperature",
              "In the EMA form the stationary excess loss is ≈ η′ tr Σ/(4B) for every β while "
              "η′h_max ≪ 1 − β, and heavy ball with η is EMA with η/(1 − β).", "§4.6")

BETAS = (0.0, 0.5, 0.9, 0.99)
DIM, N, BATCH = 20, 1000, 1
TOL = 0.10


class _DiagQuad(nn.Module):
    """Per-example loss ½ Σ_i h_i (Φ_i − x_bi)² as the forward output (loss_fn = identity)."""

    def __init__(self, h: np.ndarray, phi: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("h", torch.as_tensor(h, dtype=torch.float64))
        self.phi = nn.Parameter(phi.clone().double())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((self.phi - x) ** 2 * self.h).sum(-1)


def _identity_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return out


def _problem(seed: int = 0):
    rng = np.random.default_rng(seed)
    h = np.geomspace(0.5, 1.0, DIM)
    x = torch.as_tensor(rng.standard_normal((N, DIM)), dtype=torch.float64)
    xbar = x.mean(0)
    s2 = x.var(0, unbiased=False).numpy()
    return {"h": h, "x": x, "y": torch.zeros(N, 0, dtype=torch.float64), "xbar": xbar,
            "L_star": 0.5 * float((h * s2).sum()), "sigma2": h**2 * s2}


def ema_excess_exact(lr: float, beta: float, h: np.ndarray, sigma2: np.ndarray,
                     batch: int) -> float:
    """Exact stationary L − L* of EMA momentum on a diagonal quadratic with Φ-independent
    noise, with-replacement batches (discrete Lyapunov equation per mode)."""
    from scipy.linalg import solve_discrete_lyapunov

    tot = 0.0
    for hi, si in zip(h, sigma2, strict=True):
        A = np.array([[1 - lr * (1 - beta) * hi, -lr * beta], [(1 - beta) * hi, beta]])
        b = np.array([-lr * (1 - beta), 1 - beta])
        P = solve_discrete_lyapunov(A, np.outer(b, b) * si / batch)
        tot += 0.5 * hi * P[0, 0]
    return float(tot)


def _measure(prob, lr: float, beta: float, style: str, seed: int, chains: int, rel_se: float,
             max_steps: int, min_steps: int) -> dict:
    h, s2 = prob["h"], prob["sigma2"]
    # start: the exact β = 0 stationary distribution at this η′ (the same for every β)
    lr0 = lr if style == "ema" else lr / (1 - beta)
    var0 = lr0 * s2 / (BATCH * h * (2 - lr0 * h))
    g = torch.Generator().manual_seed(10_000 + seed)
    phi0 = prob["xbar"] + torch.randn(chains, DIM, generator=g, dtype=torch.float64) \
        * torch.as_tensor(np.sqrt(var0))
    model = _DiagQuad(h, prob["xbar"])
    r = stationary_loss(model, _identity_loss, prob["x"], prob["y"], lr, BATCH,
                        sampling="replacement", optimizer="momentum",
                        optimizer_options={"beta": beta, "style": style},
                        phi0={"phi": phi0}, chains=chains, seed=seed,
                        reference=prob["L_star"], rel_se=rel_se, max_steps=max_steps,
                        min_steps=min_steps)
    return {"excess": r.excess, "se": r.se, "steps": r.steps, "tau_int": r.tau_int,
            "converged": r.converged, "reason": r.reason, "seconds": r.seconds}


def _ratio(a: dict, b: dict) -> tuple[float, float]:
    r = a["excess"] / b["excess"]
    se = abs(r) * math.hypot(a["se"] / a["excess"], b["se"] / b["excess"])
    return r, se


def _band(r: float, se: float, tol: float = TOL) -> str:
    if not (math.isfinite(r) and math.isfinite(se)):
        return "INCONCLUSIVE"
    dev = abs(r - 1)
    if dev + 2 * se <= tol:
        return "PASS"
    if dev - 2 * se > tol:
        return "FAIL"
    return "INCONCLUSIVE"



def trajectory_identity(steps: int = 200, lr_ema: float = 0.5, beta: float = 0.9,
                        seed: int = 0) -> dict:
    """Max |ΔΦ_t| over t ≤ ``steps`` between hand-written EMA (η′), hand-written heavy ball
    (η = η′(1 − β)) and sgdlab's Momentum in both styles, same batches, float64."""
    prob = _problem(seed)
    h = torch.as_tensor(prob["h"])
    x = prob["x"]
    gen = torch.Generator().manual_seed(seed)
    batches = [torch.randint(0, N, (8,), generator=gen) for _ in range(steps)]
    eta = lr_ema * (1 - beta)
    start = torch.zeros(DIM, dtype=torch.float64)

    def grad(phi, idx):
        return (h * (phi - x[idx])).mean(0)

    def manual(style):
        phi, buf, out = start.clone(), torch.zeros(DIM, dtype=torch.float64), []
        for idx in batches:
            g = grad(phi, idx)
            if style == "ema":
                buf = beta * buf + (1 - beta) * g
                phi = phi - lr_ema * buf
            else:
                buf = beta * buf + g
                phi = phi - eta * buf
            out.append(phi.clone())
        return torch.stack(out)

    def library(style):
        p = nn.Parameter(start.clone())
        opt = optim.create("momentum", [p], lr=lr_ema if style == "ema" else eta, beta=beta,
                           style=style)
        out = []
        for idx in batches:
            opt.zero_grad()
            p.grad = grad(p.detach(), idx)
            opt.step()
            out.append(p.detach().clone())
        return torch.stack(out)

    runs = {"manual_ema": manual("ema"), "manual_heavy_ball": manual("heavy_ball"),
            "sgdlab_ema": library("ema"), "sgdlab_heavy_ball": library("heavy_ball")}
    ref = runs["manual_ema"]
    devs = {k: float((v - ref).abs().max()) for k, v in runs.items() if k != "manual_ema"}
    return {"max_dev_vs_manual_ema": devs, "max_dev": max(devs.values()),
            "scale": float(ref.abs().max()), "steps": steps, "lr_ema": lr_ema, "beta": beta,
            "heavy_ball_lr": eta}


def run(ctx: Context) -> Result:
    """Measure the claim; see the module docstring."""
    res = Result(CLAIM)
    chains = ctx.budget(32, 64, 128)
    rel_se = ctx.budget(0.1, 0.025, 0.015)
    max_steps = ctx.budget(300, 40_000, 200_000)
    min_steps = ctx.budget(300, 500, 2000)
    ladder = ctx.budget((1e-3, 0.1), (2e-3, 1e-2, 0.1, 0.5),
                        (1e-3, 3e-3, 1e-2, 0.03, 0.1, 0.2, 0.5, 1.0))
    prob = _problem(0)
    h, s2 = prob["h"], prob["sigma2"]
    h_max = float(h.max())
    first = {lr: lr * float(s2.sum()) / (4 * BATCH) for lr in ladder}

    def measure(lr, beta, style="ema", seed=0):
        key = {"claim": CLAIM.id, "lr": lr, "beta": beta, "style": style, "seed": seed,
               "chains": chains, "rel_se": rel_se, "max_steps": max_steps, "dim": DIM,
               "min_steps": min_steps, "n": N, "batch": BATCH, "v": 1}
        return ctx.cached(key, lambda: _measure(prob, lr, beta, style, seed, chains, rel_se,
                                                max_steps, min_steps))

    ema = {(lr, b): measure(lr, b) for lr in ladder for b in BETAS}
    exact = {(lr, b): ema_excess_exact(lr, b, h, s2, BATCH) for lr in ladder for b in BETAS}
    exact0 = {lr: quadratic_excess_loss(lr, h, s2, BATCH) for lr in ladder}
    table = {f"lr={lr:g},beta={b:g}": {**ema[(lr, b)], "exact": exact[(lr, b)],
                                      "first_order": first[lr]}
             for (lr, b) in ema}

    # 1. β-independence at η′h_max ≪ 1 − β
    small = ladder[0]
    ratios, verds = {}, {}
    for b in BETAS[1:]:
        r, se = _ratio(ema[(small, b)], ema[(small, 0.0)])
        ratios[b] = (r, se)
        verds[b] = _band(r, se)
    res.checks.append(Check(
        "β-independence where η′h_max ≪ 1 − β",
        f"(L_β − L*)/(L_0 − L*) = 1 at η′ = {small:g} (η′h_max = {small * h_max:g} = "
        f"{small * h_max / (1 - BETAS[-1]):g}·(1 − β) for β = {BETAS[-1]}); exact theory: "
        + ", ".join(f"{exact[(small, b)] / exact0[small]:.4f}" for b in BETAS[1:]),
        ", ".join(f"β={b:g}: {r:.3f} ± {se:.3f}" for b, (r, se) in ratios.items()),
        "|ratio − 1| ≤ 10 % (±2σ inside the band)", worst_verdict(verds.values()),
        {"lr": small, "h_max": h_max,
         "ratio": {str(b): r for b, (r, _) in ratios.items()},
         "ratio_se": {str(b): se for b, (_, se) in ratios.items()},
         "exact_ratio": {str(b): exact[(small, b)] / exact0[small] for b in BETAS[1:]},
         "verdicts": {str(b): v for b, v in verds.items()},
         "runs": {str(b): ema[(small, b)] for b in BETAS}}))

    # 2. against the first-order prediction η′ tr Σ/(4B)
    fo, fo_v = {}, {}
    for b in BETAS:
        m = ema[(small, b)]
        r, se = m["excess"] / first[small], m["se"] / first[small]
        fo[b] = (r, se)
        fo_v[b] = _band(r, se)
    res.checks.append(Check(
        "≈ η′ tr Σ/(4B) for every β",
        f"(L_β − L*)/(η′ tr Σ/4B) = 1 at η′ = {small:g} (tr Σ = {float(s2.sum()):.4f}, "
        f"B = {BATCH}, first-order value {first[small]:.4e})",
        ", ".join(f"β={b:g}: {r:.3f} ± {se:.3f}" for b, (r, se) in fo.items()),
        "|ratio − 1| ≤ 10 % (±2σ inside the band)", worst_verdict(fo_v.values()),
        {"lr": small, "tr_sigma": float(s2.sum()), "first_order": first[small],
         "ratio": {str(b): r for b, (r, _) in fo.items()},
         "ratio_se": {str(b): se for b, (_, se) in fo.items()},
         "exact_ratio": {str(b): exact[(small, b)] / first[small] for b in BETAS},
         "verdicts": {str(b): v for b, v in fo_v.items()}}, basis="derived"))

    # 3. where it stops holding: at η′h_max = 1 − β the SPEC's condition is violated
    brk, brk_v, brk_exact = {}, {}, {}
    for b in BETAS[1:]:
        lr = (1 - b) / h_max
        lr = min(ladder, key=lambda v, t=lr: abs(math.log(v / t)))
        r, se = _ratio(ema[(lr, b)], ema[(lr, 0.0)])
        brk[b] = (lr, r, se)
        brk_exact[b] = exact[(lr, b)] / exact0[lr]
        # the SPEC predicts a β dependence here: outside the band passes, inside fails
        inside = _band(r, se)
        brk_v[b] = {"PASS": "FAIL", "FAIL": "PASS"}.get(inside, "INCONCLUSIVE")
    onset = {}
    for b in BETAS[1:]:
        outside = [lr for lr in ladder
                   if _band(*_ratio(ema[(lr, b)], ema[(lr, 0.0)])) == "FAIL"]
        onset[str(b)] = min(outside) * h_max if outside else None
    res.checks.append(Check(
        "β-dependence appears at η′h_max ≈ 1 − β",
        "|(L_β − L*)/(L_0 − L*) − 1| > 10 % once η′h_max ≈ 1 − β (SPEC's condition); "
        "exact theory there: "
        + ", ".join(f"β={b:g}: {brk_exact[b]:.3f}" for b in BETAS[1:]),
        ", ".join(f"β={b:g} at η′h_max={lr * h_max:g}: {r:.3f} ± {se:.3f}"
                  for b, (lr, r, se) in brk.items())
        + "; smallest ladder η′h_max with the ratio clearly outside ±10 %: "
        + ", ".join(f"β={b}: {v if v is not None else 'none'}" for b, v in onset.items()),
        "ratio outside 1 ± 10 % (±2σ outside the band) at η′h_max ≈ 1 − β",
        worst_verdict(brk_v.values()),
        {"lr": {str(b): lr for b, (lr, _, _) in brk.items()},
         "ratio": {str(b): r for b, (_, r, _) in brk.items()},
         "ratio_se": {str(b): se for b, (_, _, se) in brk.items()},
         "exact_ratio": {str(b): v for b, v in brk_exact.items()},
         "verdicts": {str(b): v for b, v in brk_v.items()},
         "onset_lr_hmax": onset, "ladder": list(ladder), "table": table}, basis="derived"))
    if res.checks[-1].verdict == "FAIL":
        res.checks[-1].finding = ("the SPEC's added prediction (β matters from η′h_max ≈ 1 − β) "
                                  "fails; the notes make no such claim (SPEC §4.6 corrected)")

    # 4. heavy ball at η = η′(1 − β) against EMA at η′ (independent seeds)
    lr_hb = 1e-2 if 1e-2 in ladder else ladder[0]
    hb, hb_v = {}, {}
    for b in BETAS[1:]:
        m_hb = measure(lr_hb * (1 - b), b, style="heavy_ball", seed=1)
        m_ema = ema[(lr_hb, b)]
        diff = m_hb["excess"] - m_ema["excess"]
        se = math.hypot(m_hb["se"], m_ema["se"])
        hb[b] = (m_hb, m_ema, diff, se)
        hb_v[b] = verdict(abs(diff) <= 3 * se, inconclusive=not math.isfinite(se))
    res.checks.append(Check(
        "heavy ball at η ≡ EMA at η/(1 − β): stationary loss",
        f"equal stationary excess (EMA η′ = {lr_hb:g}, heavy ball η = η′(1 − β))",
        ", ".join(f"β={b:g}: HB {m['excess']:.4e} vs EMA {e['excess']:.4e} "
                  f"(Δ = {d / s:+.1f} se)" for b, (m, e, d, s) in hb.items()),
        "|Δ| ≤ 3 combined se", worst_verdict(hb_v.values()),
        {"lr_ema": lr_hb,
         "heavy_ball": {str(b): m for b, (m, _, _, _) in hb.items()},
         "ema": {str(b): e for b, (_, e, _, _) in hb.items()},
         "diff": {str(b): d for b, (_, _, d, _) in hb.items()},
         "diff_se": {str(b): s for b, (_, _, _, s) in hb.items()}}))

    # 5. exact trajectory identity
    traj = trajectory_identity(steps=ctx.budget(50, 300, 1000))
    res.checks.append(Check(
        "heavy ball at η ≡ EMA at η/(1 − β): trajectories",
        "identical Φ_t at every step from zero buffers, same batches",
        f"max |ΔΦ| over {traj['steps']} steps (β = {traj['beta']}, η′ = {traj['lr_ema']}): "
        f"{traj['max_dev']:.1e} (|Φ| up to {traj['scale']:.2f})",
        "1e-10 (float64)", verdict(traj["max_dev"] < 1e-10), traj))

    # figure: excess / first order against 1 − β, measured and exact, per η′
    series = {}
    for lr in ladder:
        xs = [1 - b for b in BETAS]
        series[f"η′={lr:g} measured"] = (xs, [ema[(lr, b)]["excess"] / first[lr]
                                             for b in BETAS])
        series[f"η′={lr:g} exact"] = (xs, [exact[(lr, b)] / first[lr] for b in BETAS])
    plot_curves(series, ctx.figures / "momentum_beta.png", "1 − β",
                "(L − L*) / (η′ tr Σ / 4B)",
                "EMA momentum: stationary excess vs β (1 = first-order prediction)",
                logx=True, marker="o")
    res.figures.append("figures/momentum_beta.png")

    zs = {k: (v["excess"] - v["exact"]) / v["se"] for k, v in table.items()
          if v["se"] > 0 and math.isfinite(v["se"])}
    if zs:
        worst_k = max(zs, key=lambda k: abs(zs[k]))
        res.notes.append(
            f"Measured against the exact β-dependent theory over all {len(zs)} (η′, β) runs: "
            f"max |z| = {abs(zs[worst_k]):.1f} ({worst_k}), mean z = "
            f"{float(np.mean(list(zs.values()))):+.2f} (se as reported by stationary_loss).")
    not_conv = [k for k, v in table.items() if not v["converged"]]
    res.notes.append(
        "Problem: diagonal noisy quadratic, d = 20, h ∈ [0.5, 1] geometric, N = 1000, B = 1, "
        "with-replacement batches; ratios' se combine the two runs' se as if independent "
        "(they share batch streams, so this is conservative).")
    res.notes.append(
        "Exact theory per mode: excess = (η′σ²/4B)/(1 − η′h(1 − β)/(2(1 + β))); the β "
        "dependence comes from η′h itself (the β = 0 value rises as 1/(1 − η′h/2), momentum "
        "damps that rise), not from η′h against 1 − β. Check 3 tests the SPEC's condition as "
        "the place where β starts to matter.")
    res.notes.append(
        "stationary_loss extends a run in place (same chains, same optimizer object), so "
        "momentum buffers persist across its extensions; they start at zero at each call.")
    if not_conv:
        res.notes.append("Not converged (max_steps reached): " + ", ".join(not_conv))
    return res
