"""Claim 13: small steps track gradient flow (SPEC §4.13; seed 002).

The notes (seed 002_4097fcc85c143290.txt, "gradient flow"): "gradient flow is defined by
dΦ/dt = −g. given Φ(0) we can calculate Φ(t) by taking the limit as n → ∞ of nt discrete-time
total updates Φ −= (η/n) g. the limit n → ∞ of nt batch updates Φ −= (η/n) ĝ also gives Φ(t)."
(g: the full-batch gradient G; ĝ: a batch's.) The notes state the limit, not its rate.

Theory. Measure time in "step size × steps": K = T/ε steps of size ε = η/n reach ODE time T of
dΦ/dt = −G(Φ). Write δ = Φ_K − Φ_flow(T). On a quadratic L = ½(Φ − Φ*)ᵀH(Φ − Φ*) with
additive batch noise (ĝ = H(Φ − Φ*) + ξ, E ξξᵀ = Σ/B, independent of Φ) everything is exact
(:func:`quadratic_deviation`): with A = I − εH,

    E‖δ‖² = ‖(A^K − e^{−HT})(Φ₀ − Φ*)‖² + tr S_K,   S_{k+1} = A S_k A + ε²Σ/B,  S_0 = 0.

The first term (discretisation: the mean of SGD is GD, whose error is O(ε): to first order
(A^K − e^{−HT}) = −(εT/2)H²e^{−HT}) is what full-batch GD deviates by; the second is the noise:
tr S_K = ε·tr C(T) + O(ε²), C(T) = ∫_0^T e^{−Hs}(Σ/B)e^{−Hs} ds (per eigenmode
σ_i²(1 − e^{−2h_iT})/(2h_iB); ≤ T tr Σ/B). So the RMS deviation of SGD is
√(ε tr C(T)) ∝ (η/n)^½ while the noise term dominates, i.e. for ε ≪ tr C(T)/‖(T/2)H²e^{−HT}δ₀‖²,
crossing over to ∝ ε (slope 1) above it; GD without noise deviates ∝ ε everywhere (stable
for εh_max < 2). On a network the same holds to leading order, linearised about the flow:
E‖δ‖² ≈ ε ∫_0^T tr(J(T,s)Σ(s)J(T,s)ᵀ)/B ds (J the flow's Jacobian from s to T), which is
≤ ε ∫_0^T tr Σ(Φ_flow(s))/B ds where the flow contracts (H ⪰ 0 along it).

Problems (float64):

* ``quadratic``: d = 8, H with eigenvalues geometric in [0.1, 1] in a random basis, Gaussian
  additive noise with a covariance Σ that does not commute with H (tr Σ = d), B = 1, from
  Φ₀ − Φ* = 3·N(0, I), to T = 5; ε = 0.5/n; R chains; the flow in closed form;
* ``network``: sgdlab's MLP (2 × 32 tanh — smooth, so the ODE is) on N training signals of
  MNIST-1D, cross-entropy, from its seed-0 initialisation, to T = 10; the flow by
  :func:`sgdlab.probes.gradient_flow.gradient_flow` (DOP853, rtol 1e-9, atol 1e-12; again at
  rtol 1e-11 for its error); SGD at ε = 0.4/n with batches of B = 8 drawn with replacement,
  R chains (:func:`sgdlab.sweep.train_many`, each chain its own batches); full-batch GD at
  the same ε (one train_many call each, every model snapshotted after its own T/ε steps);
  tr Σ(Φ_flow(s)) = E_b‖g_b‖² − ‖G‖² (sgdlab's per-example probe) at five points of the flow.
  Budgets: quick N = 500, n ≤ 32, 16 chains, 2000 quadratic chains, n ≤ 32 — reduced for time
  after the first quick run (N = 1000, n ≤ 64, 4000 quadratic chains: 36 s on the shared
  machine; every check PASS there, network slope 0.515 ± 0.004); no tolerance was changed.
  Smoke runs to T = 1.2 (T/ε must be a whole number of steps).

Checks (tolerances fixed before measuring):

1. (notes) the limit: on the network the RMS deviation of SGD from the flow falls as n grows:
   log-log slope of RMS against ε > 0 (±2 se; se by bootstrap over chains);
2. (derived) the rate (η/n)^½: on the network, the slope fitted over the ε where the noise
   dominates — GD's deviation (the discretisation part) ≤ ⅓ of SGD's RMS — within 0.5 ± 0.1
   (±2 se); INCONCLUSIVE with fewer than three such ε;
3. (derived) the exact quadratic formula: measured E‖δ‖² against ‖bias‖² + tr S_K at every ε,
   |z| ≤ z* (Bonferroni, two-sided α = 0.05 over the ladder);
4. (derived) the noise-free control: full-batch GD deviates ∝ ε on the network: log-log slope
   over the three smallest ε within 1 ± 0.1 (deterministic: no se);
5. (derived) the magnitude: at the smallest ε, E‖δ‖²/ε ≤ ∫_0^T tr Σ(Φ_flow(s))/B ds (the
   contracting-flow bound, ±2 se), and the reference flow is accurate: its change between
   rtol 1e-9 and 1e-11 ≤ 1 % of the smallest GD deviation.
"""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sgdlab.experiments.base import Check, Claim, Context, Result, worst_verdict
from sgdlab.experiments.kit import run_claim
from sgdlab.experiments.kit.verdicts import K, at_most, band, direction

CLAIM = Claim("13-gradient-flow", "Small steps track gradient flow",
              "nT updates Φ −= (η/n)ĝ tend to the gradient flow dΦ/dt = −G(Φ) at time ηT as "
              "n → ∞; with batch noise the deviation falls as (η/n)^½.", "§4.13")

VERSION = 1
BUDGETS: dict[str, dict[str, Any]] = {
    "smoke": {"quad_chains": 400, "quad_n": [1, 4, 16], "net_n": [1, 4, 16], "chains": 4,
              "n_train": 100, "T": 1.2},
    "quick": {"quad_chains": 2000, "quad_n": [1, 2, 4, 8, 16, 32],
              "net_n": [1, 2, 4, 8, 16, 32], "chains": 16, "n_train": 500, "T": 10.0},
    "full": {"quad_chains": 20000, "quad_n": [1, 2, 4, 8, 16, 32, 64, 128, 256],
             "net_n": [1, 2, 4, 8, 16, 32, 64, 128], "chains": 32, "n_train": 1000,
             "T": 10.0},
}
DIM, H_RANGE, QUAD_BATCH, QUAD_ETA, QUAD_T, QUAD_START = 8, (0.1, 1.0), 1, 0.5, 5.0, 3.0
NET_ETA, NET_BATCH, NET_WIDTH, RTOL, ATOL = 0.4, 8, 32, 1e-9, 1e-12
SLOPE, SLOPE_TOL, GD_SLOPE, GD_SLOPE_TOL, NOISE_DOMINATES, ALPHA = 0.5, 0.1, 1.0, 0.1, 1 / 3, 0.05
REF_TOL, BOOT = 0.01, 400
MODEL_OPTIONS = {"depth": 2, "width": NET_WIDTH, "activation": "tanh"}


# ----------------------------------------------------------------------------- theory (pure)


def quadratic_deviation(H: np.ndarray, sigma: np.ndarray, batch: int, delta0: np.ndarray,
                        eps: float, T: float) -> dict[str, float]:
    """Exact E‖Φ_K − Φ_flow(T)‖² = ‖bias‖² + tr S_K for SGD at step ε, K = round(T/ε) steps, on
    ½(Φ − Φ*)ᵀH(Φ − Φ*) with additive noise of covariance Σ/B; also the first-order noise
    term ε tr C(T) and the first-order bias (εT/2)‖H²e^{−HT}δ₀‖."""
    from scipy.linalg import expm

    steps = _steps(T, eps)
    A = np.eye(H.shape[0]) - eps * H
    bias = (np.linalg.matrix_power(A, steps) - expm(-H * T)) @ delta0
    S = np.zeros_like(H)
    noise = eps * eps * sigma / batch
    for _ in range(steps):
        S = A @ S @ A + noise
    h, Q = np.linalg.eigh(H)
    sd = np.diag(Q.T @ sigma @ Q)
    trC = float((sd * (1 - np.exp(-2 * h * T)) / (2 * h * batch)).sum())
    b1 = 0.5 * eps * T * np.linalg.norm(H @ H @ expm(-H * T) @ delta0)
    return {"steps": steps, "bias_sq": float(bias @ bias), "var": float(np.trace(S)),
            "ms": float(bias @ bias + np.trace(S)), "first_order_var": eps * trC,
            "first_order_bias": float(b1), "trC": trC}


def loglog_slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of log y against log x (nan with < 2 positive points)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = (x > 0) & (y > 0) & np.isfinite(y)
    if ok.sum() < 2:
        return math.nan
    return float(np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)[0])


def bootstrap_slope(eps: list[float], sq: list[list[float]], reps: int = BOOT,
                    seed: int = 0) -> tuple[float, float]:
    """Slope of log RMS (√ of the chains' mean ‖δ‖²) against log ε, and its se by resampling
    the chains of every ε independently."""
    rng = np.random.default_rng(seed)
    arr = [np.asarray(s, float) for s in sq]
    est = loglog_slope(eps, [math.sqrt(a.mean()) for a in arr])
    if min(a.size for a in arr) < 2:
        return est, math.nan
    boots = [loglog_slope(eps, [math.sqrt(a[rng.integers(0, a.size, a.size)].mean())
                                for a in arr]) for _ in range(reps)]
    return est, float(np.nanstd(boots, ddof=1))


# ----------------------------------------------------------------------------- problems


def quadratic_problem(seed: int = 0) -> dict[str, np.ndarray]:
    """H (eigenvalues geometric in H_RANGE, random basis), Σ not commuting with it (tr Σ = d),
    the start δ₀ = Φ₀ − Φ*."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((DIM, DIM)))
    H = (q * np.geomspace(*H_RANGE, DIM)) @ q.T
    m = rng.standard_normal((DIM, DIM))
    sigma = m @ m.T
    sigma *= DIM / np.trace(sigma)
    return {"H": H, "sigma": sigma, "delta0": QUAD_START * rng.standard_normal(DIM)}


def _quadratic_runs(budget: dict[str, Any]) -> dict[str, Any]:
    prob = quadratic_problem()
    H, sigma, d0 = prob["H"], prob["sigma"], prob["delta0"]
    from scipy.linalg import expm

    flow = expm(-H * QUAD_T) @ d0
    L = np.linalg.cholesky(sigma / QUAD_BATCH)
    gen = torch.Generator().manual_seed(1)
    Ht, Lt = torch.as_tensor(H), torch.as_tensor(L)
    R = budget["quad_chains"]
    rows = []
    for n in budget["quad_n"]:
        eps = QUAD_ETA / n
        th = quadratic_deviation(H, sigma, QUAD_BATCH, d0, eps, QUAD_T)
        delta = torch.as_tensor(d0).expand(R, DIM).clone()
        for _ in range(th["steps"]):
            xi = torch.randn(R, DIM, dtype=torch.float64, generator=gen) @ Lt.T
            delta = delta - eps * (delta @ Ht + xi)
        sq = ((delta.numpy() - flow) ** 2).sum(1)
        rows.append({"n": n, "eps": eps, **th, "measured": float(sq.mean()),
                     "se": float(sq.std(ddof=1) / math.sqrt(R))})
    return {"rows": rows, "chains": R, "T": QUAD_T, "flow_norm": float(np.linalg.norm(flow)),
            "start_norm": float(np.linalg.norm(d0))}


def _tr_sigma(model: torch.nn.Module, state: dict[str, torch.Tensor], grad_norm: float,
              x: torch.Tensor, y: torch.Tensor) -> float:
    """tr Σ = E_b‖g_b‖² − ‖G‖² at ``state`` (per-example norms by sgdlab's probe, SPEC §3)."""
    from sgdlab.probes.per_example import per_example_sq_norms

    with torch.no_grad():
        for nm, p in model.named_parameters():
            p.copy_(state[nm])
    sq = per_example_sq_norms(model, lambda o, t: F.cross_entropy(o, t, reduction="none"), x, y)
    return float(sq.double().mean()) - grad_norm**2


def _steps(T: float, eps: float) -> int:
    """T/ε as an integer number of steps (ValueError when ε does not divide T)."""
    k = int(round(T / eps))
    if abs(k * eps - T) > 1e-9 * T:
        raise ValueError(f"step {eps:g} does not divide the time {T:g}")
    return k


def _snapshots(train_many, ds, points: list[dict], at: list[int],
               start: dict[str, torch.Tensor], **kw: Any) -> tuple[np.ndarray, np.ndarray]:
    """Train ``points`` from ``start`` (float64) for max(at) steps and return each model's
    flattened parameters after its own ``at`` steps, and whether it had diverged by then."""
    k = len(points)
    out = np.full((k, sum(v.numel() for v in start.values())), np.nan)
    need: dict[int, list[int]] = {}
    for i, a in enumerate(at):
        need.setdefault(a, []).append(i)

    def snap(step: int, eng) -> None:
        idx = need.get(step)
        if idx:
            out[idx] = torch.cat([p.detach()[idx].reshape(len(idx), -1) for p in eng.params],
                                 1).double().numpy()

    r = train_many(ds, "mlp", points, steps=max(at), eval_every=0, eval_train=False,
                   model_options=MODEL_OPTIONS, dtype=torch.float64, callback=snap,
                   start={n: v.expand(k, *v.shape).clone() for n, v in start.items()}, **kw)
    div = (r.diverged_at >= 0) & (r.diverged_at < np.asarray(at))
    return out, div


def _network_runs(budget: dict[str, Any]) -> dict[str, Any]:
    from sgdlab import data, models
    from sgdlab.probes.curvature import top_hessian_eigenvalue
    from sgdlab.probes.gradient_flow import gradient_flow
    from sgdlab.sweep import train_many

    ds = data.load("mnist1d", seed=0, n_train=budget["n_train"])
    ds = replace(ds, x_train=ds.x_train.double(), x_test=ds.x_test[:200].double(),
                 y_test=ds.y_test[:200])
    model = models.build("mlp", ds, seed=0, **MODEL_OPTIONS).double()
    x, y = ds.x_train, ds.y_train
    T = budget["T"]
    ts = np.linspace(0, T, 5)
    ref = gradient_flow(model, F.cross_entropy, x, y, ts, rtol=RTOL, atol=ATOL)
    fine = gradient_flow(model, F.cross_entropy, x, y, [T], rtol=RTOL * 1e-2, atol=ATOL * 1e-2)
    phi_T = ref.params[-1]
    ref_err = float(np.linalg.norm(fine.params[-1] - phi_T))
    trs = [_tr_sigma(model, ref.state(i), float(ref.grad_norm[i]), x, y)
           for i in range(len(ts))]
    int_trs = float(np.trapezoid(trs, ts) / NET_BATCH)
    loss_fn = lambda o, t: F.cross_entropy(o, t, reduction="none")   # noqa: E731
    lam = []
    for i in (0, len(ts) - 1):
        with torch.no_grad():
            for nm, p in model.named_parameters():
                p.copy_(ref.state(i)[nm])
        lam.append(float(top_hessian_eigenvalue(model, loss_fn, x, y, iters=100,
                                                tol=1e-6).lambda_max))
    start = {nm: p.detach().clone() for nm, p in
             models.build("mlp", ds, seed=0, **MODEL_OPTIONS).double().named_parameters()}
    R = budget["chains"]
    ns = list(budget["net_n"])
    steps = [_steps(T, NET_ETA / n) for n in ns]
    # one train_many call for all ε (R chains each, own batches) and one for full-batch GD at
    # every ε: each model is snapshotted at its own T/ε steps (the callback), run on after
    sgd_pts = [{"lr": NET_ETA / n, "seed": i * R + c} for i, n in enumerate(ns)
               for c in range(R)]
    sgd_at = [s for s in steps for _ in range(R)]
    sgd_snap, sgd_div = _snapshots(train_many, ds, sgd_pts, sgd_at, start,
                                   batch_size=NET_BATCH, sampling="replacement",
                                   same_batches=False, batch_seed=1000)
    gd_snap, gd_div = _snapshots(train_many, ds, [{"lr": NET_ETA / n} for n in ns], steps,
                                 start, batch_size=ds.n_train, sampling="shuffle")
    rows = []
    for i, n in enumerate(ns):
        sq = ((sgd_snap[i * R:(i + 1) * R] - phi_T) ** 2).sum(1)
        rows.append({"n": n, "eps": NET_ETA / n, "steps": steps[i], "sq": sq.tolist(),
                     "ms": float(sq.mean()), "ms_se": float(sq.std(ddof=1) / math.sqrt(R)),
                     "gd_dev": float(np.linalg.norm(gd_snap[i] - phi_T)),
                     "diverged": int(sgd_div[i * R:(i + 1) * R].sum() + gd_div[i])})
    return {"rows": rows, "chains": R, "T": T, "n_train": ds.n_train,
            "flow_loss": ref.loss.tolist(), "flow_times": ts.tolist(),
            "flow_displacement": float(np.linalg.norm(phi_T - ref.params[0])),
            "flow_nfev": ref.nfev, "flow_success": bool(ref.success and fine.success),
            "ref_err": ref_err, "tr_sigma": trs, "int_tr_sigma_over_B": int_trs,
            "lambda_max": lam, "params": int(phi_T.size)}


def measure(ctx: Context, budget: dict[str, Any]) -> dict[str, Any]:
    """Both problems over their ε ladders (each cached)."""
    base = {"claim": CLAIM.id, "v": VERSION, **budget}
    quad = ctx.cached({**base, "part": "quadratic"}, lambda: _quadratic_runs(budget))
    net = ctx.cached({**base, "part": "network"}, lambda: _network_runs(budget))
    return {"quadratic": quad, "network": net}


# ----------------------------------------------------------------------------- judgement (pure)


def _noise_regime(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["gd_dev"] <= NOISE_DOMINATES * math.sqrt(r["ms"])]


def judge(m: dict[str, Any]) -> list[Check]:
    """The five checks of the module docstring from :func:`measure`'s output."""
    net, quad = m["network"], m["quadratic"]
    rows = net["rows"]
    eps = [r["eps"] for r in rows]
    slope, se = bootstrap_slope(eps, [r["sq"] for r in rows])
    rms = [math.sqrt(r["ms"]) for r in rows]
    diverged = sum(r["diverged"] for r in rows)
    v1 = direction(slope, se, +1) if not diverged else "INCONCLUSIVE"
    checks = [Check(
        "nT steps of η/n tend to the gradient flow",
        f"‖Φ_SGD − Φ_flow(T)‖ → 0 as n → ∞ (MNIST-1D tanh MLP, N = {net['n_train']}, "
        f"B = {NET_BATCH}, T = {net['T']:g}, ε = {NET_ETA:g}/n, {net['chains']} chains; "
        f"flow moves ‖Φ(T) − Φ₀‖ = {net['flow_displacement']:.3g})",
        "RMS deviation " + ", ".join(f"n={r['n']}: {v:.3g}" for r, v in zip(rows, rms,
                                                                            strict=True))
        + f"; log-log slope against ε {slope:.3f} ± {se:.3f}"
        + (f"; {diverged} runs diverged" if diverged else ""),
        f"slope > 0 (±{K:g} se, bootstrap over chains)", v1,
        {"slope": slope, "slope_se": se, "rms": rms, "eps": eps})]
    checks[0].finding = ("the notes give the limit but not its rate: with batch noise SGD "
                         "at step ε = η/n is a diffusion about the flow of RMS "
                         "≈ √(ε·tr C(T)) ∝ (η/n)^½, not the O(η/n) of full-batch GD")
    reg = _noise_regime(rows)
    if len(reg) >= 3:
        s2, se2 = bootstrap_slope([r["eps"] for r in reg], [r["sq"] for r in reg], seed=1)
        v2 = band(s2 - SLOPE, se2, SLOPE_TOL)
    else:
        s2, se2, v2 = math.nan, math.nan, "INCONCLUSIVE"
    checks.append(Check(
        "the deviation falls as (η/n)^½ (network)",
        f"slope {SLOPE} of log RMS against log ε where the noise dominates (GD deviation ≤ "
        f"{NOISE_DOMINATES:.2g} × SGD RMS)",
        f"slope {s2:.3f} ± {se2:.3f} over ε = " + ", ".join(f"{r['eps']:.3g}" for r in reg)
        + "; GD/SGD deviation ratio " + ", ".join(
            f"{r['gd_dev'] / math.sqrt(r['ms']):.2g}" for r in rows),
        f"{SLOPE} ± {SLOPE_TOL} (±{K:g} se); ≥ 3 ε in the regime", v2,
        {"slope": s2, "slope_se": se2, "regime_eps": [r["eps"] for r in reg]},
        basis="derived"))
    from scipy.stats import norm

    qr = quad["rows"]
    z = np.array([(r["measured"] - r["ms"]) / r["se"] for r in qr])
    zstar = float(norm.isf(ALPHA / (2 * len(z))))
    qslope = loglog_slope([r["eps"] for r in qr], [math.sqrt(r["measured"]) for r in qr])
    small = qr[-1]
    checks.append(Check(
        "exact deviation on a noisy quadratic",
        f"E‖δ‖² = ‖(A^K − e^{{−HT}})δ₀‖² + tr S_K (d = {DIM}, T = {quad['T']:g}, ε = "
        f"{QUAD_ETA:g}/n, B = {QUAD_BATCH}); at the smallest ε first order ε tr C(T) = "
        f"{small['first_order_var']:.4g}, bias² {small['bias_sq']:.2g}",
        f"max |z| {float(np.abs(z).max()):.2f} over {len(z)} ε ({quad['chains']} chains); "
        f"slope of RMS {qslope:.3f}; measured/exact " + ", ".join(
            f"{r['measured'] / r['ms']:.3f}" for r in qr),
        f"|z| ≤ {zstar:.2f} (Bonferroni, α = {ALPHA}) at every ε",
        "PASS" if np.all(np.abs(z) <= zstar) else "FAIL",
        {"z": z.tolist(), "z_star": zstar, "slope": qslope}, basis="derived"))
    tail = sorted(rows, key=lambda r: r["eps"])[:3]
    gslope = loglog_slope([r["eps"] for r in tail], [r["gd_dev"] for r in tail])
    checks.append(Check(
        "noise-free control: full-batch GD deviates ∝ η/n",
        f"log-log slope {GD_SLOPE:g} of ‖Φ_GD − Φ_flow(T)‖ against ε (three smallest ε)",
        "GD deviation " + ", ".join(f"n={r['n']}: {r['gd_dev']:.3g}" for r in rows)
        + f"; slope {gslope:.3f}",
        f"{GD_SLOPE:g} ± {GD_SLOPE_TOL} (deterministic: no se)",
        band(gslope - GD_SLOPE, 0.0, GD_SLOPE_TOL), {"slope": gslope}, basis="derived"))
    r0 = min(rows, key=lambda r: r["eps"])
    ratio = r0["ms"] / (r0["eps"] * net["int_tr_sigma_over_B"])
    ratio_se = r0["ms_se"] / (r0["eps"] * net["int_tr_sigma_over_B"])
    ref_rel = net["ref_err"] / min(r["gd_dev"] for r in rows)
    v5 = worst_verdict([at_most(ratio, ratio_se, 1.0),
                        at_most(ref_rel, 0.0, REF_TOL) if net["flow_success"] else "FAIL"])
    checks.append(Check(
        "magnitude of the noise term; accuracy of the reference flow",
        "E‖δ‖²/ε ≤ ∫₀ᵀ tr Σ(Φ_flow(s))/B ds = "
        f"{net['int_tr_sigma_over_B']:.4g} (contracting flow); reference error ≤ "
        f"{REF_TOL:.0%} of the smallest GD deviation",
        f"E‖δ‖²/(ε∫tr Σ/B) = {ratio:.3f} ± {ratio_se:.3f} at ε = {r0['eps']:.3g}; tr Σ along "
        "the flow " + ", ".join(f"{v:.3g}" for v in net["tr_sigma"])
        + f"; λ_max at t = 0, T: {net['lambda_max'][0]:.3g}, {net['lambda_max'][1]:.3g}; "
        f"reference change rtol 1e-9 → 1e-11: {net['ref_err']:.2e} ({ref_rel:.1e} of the "
        f"smallest GD deviation; {net['flow_nfev']} gradient evaluations)",
        f"ratio ≤ 1 (±{K:g} se); reference ≤ {REF_TOL:.0%}", v5,
        {"ratio": ratio, "ratio_se": ratio_se, "ref_rel": ref_rel}, basis="derived"))
    return checks


# ----------------------------------------------------------------------------- presentation


def figures(ctx: Context, m: dict[str, Any]) -> list[str]:
    """Deviation from the flow against ε: quadratic (measured, exact) and network (SGD, GD)."""
    from sgdlab.plots import new_figure, save_figure

    fig, axes = new_figure(1, 2, figsize=(10, 3.8))
    ax = axes[0][0]
    qr = m["quadratic"]["rows"]
    e = np.array([r["eps"] for r in qr])
    ms = np.array([r["measured"] for r in qr])
    ax.errorbar(e, np.sqrt(ms), yerr=np.array([r["se"] for r in qr]) / np.sqrt(ms), fmt="o",
                ms=4, capsize=2, label="SGD chains")
    ax.plot(e, np.sqrt([r["ms"] for r in qr]), "-", label="exact")
    ax.plot(e, np.sqrt([r["first_order_var"] for r in qr]), ":", label="√(ε tr C(T))")
    ax.set_title("noisy quadratic")
    ax = axes[0][1]
    nr = m["network"]["rows"]
    e = np.array([r["eps"] for r in nr])
    ax.plot(e, np.sqrt([r["ms"] for r in nr]), "o-", ms=4, label="SGD (RMS over chains)")
    ax.plot(e, [r["gd_dev"] for r in nr], "s-", ms=4, label="full-batch GD")
    ax.plot(e, math.sqrt(m["network"]["int_tr_sigma_over_B"]) * np.sqrt(e), ":",
            label="√(ε ∫tr Σ/B)")
    ax.set_title("MNIST-1D tanh MLP")
    from matplotlib.ticker import NullFormatter

    for ax in axes[0]:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("step ε = η/n")
        ax.set_ylabel("‖Φ − Φ_flow(T)‖")
        ax.legend(fontsize=8)
    path, rel = ctx.figure(CLAIM, "deviation")
    save_figure(fig, path)
    return [rel]


def notes(ctx: Context, m: dict[str, Any], budget: dict[str, Any]) -> list[str]:
    """What was run, for the report (below the checks)."""
    out: list[str] = []
    out.append(f"n = {budget['net_n']} on the network ({budget['chains']} chains, "
                     f"N = {budget['n_train']}), n = {budget['quad_n']} on the quadratic "
                     f"({budget['quad_chains']} chains); float64; {K:g}-se rules.")
    return out


def run(ctx: Context) -> Result:
    """Measure, judge, present (see the module docstring) through the kit's
    :func:`~sgdlab.experiments.kit.run_claim`."""
    return run_claim(sys.modules[__name__], ctx)
