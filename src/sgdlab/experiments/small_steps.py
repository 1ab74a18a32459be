"""Claim 17: B steps at η₀ ≈ one step at Bη₀ (SPEC §4.17; seed 000).

The notes (seed 000) derive the linear scaling of η with B by comparing B small steps, one
example each at η₀, with one step at Bη₀ on the mean of the same B gradients: the two agree
while Φ barely moves during the B small steps.

Theory. From Φ₀ with per-example gradients g_k, the small steps are Φ_k = Φ_{k−1} −
η₀ g_k(Φ_{k−1}), the big step Φ_big = Φ₀ − η₀ Σ_k g_k(Φ₀). Expanding g_k(Φ_{k−1}) =
g_k(Φ₀) − η₀ H_k Σ_{j<k} g_j(Φ₀) + O(η₀²) (H_k example k's Hessian at Φ₀):

    Φ_B − Φ_big = η₀² D + O(η₀³),   D = Σ_k H_k Σ_{j<k} g_j(Φ₀)        (:func:`first_order_term`)

so the deviation relative to the step, ‖Φ_B − Φ_big‖/‖Φ_big − Φ₀‖, is O(η₀B·h). In
expectation over examples drawn independently (with replacement), E[D] = B(B − 1)/2 · HG
(G the mean gradient, H the mean Hessian; exact on a quadratic, where every H_k = H): the
SPEC's "deviation ≈ η₀²·B(B − 1)/2·‖HG‖".

Problems (float64): a quadratic (d = 8, H with eigenvalues in [0.1, 1] in a random basis,
ℓ_b = ½(Φ − x_b)ᵀH(Φ − x_b), x_b standard normal) and sgdlab's MNIST-1D MLP at its
initialisation (one draw of B = 16 training examples; H_k g by double backward).

Checks (tolerances fixed before measuring):

1. (notes) B steps at η₀ ≈ one step at Bη₀ where Φ barely moves: on the MLP, the relative
   deviation ≤ 5 % at the ladder's smallest η₀ (Bη₀λ_max ≤ 0.1, λ_max the top Hessian
   eigenvalue of the 16 examples' mean loss), and it grows with η₀ (the larger the step, the
   worse the approximation: ≥ 3× larger at the largest η₀, where Bη₀λ_max ≈ 1);
2. (derived) the first-order term on both problems: ‖Φ_B − Φ_big − η₀²D‖/‖η₀²D‖ ≤ 1 % at the
   smallest η₀ and falling as η₀ (log-log slope of that error against η₀ within 1 ± 0.2);
   the MLP's ReLU pattern changes along the small steps are counted (the expansion assumes a
   smooth loss);
3. (derived) the expectation on the quadratic: over R independent draws, the mean of D
   projected on HG/‖HG‖ equals B(B − 1)/2·‖HG‖ (z-test, |z| ≤ 3), the orthogonal part's mean
   norm within 3 se of zero.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sgdlab import data, models
from sgdlab.experiments.base import Check, Claim, Context, Result, worst_verdict
from sgdlab.experiments.kit import run_claim
from sgdlab.experiments.kit.verdicts import K, at_most, near, z_test

CLAIM = Claim("17-small-steps", "B steps at η₀ ≈ one step at Bη₀",
              "B small steps (one example each, η₀) equal one step at Bη₀ on the mean of the "
              "same B gradients while Φ barely moves; the deviation is ≈ "
              "η₀²·B(B − 1)/2·‖HG‖.", "§4.17")

VERSION = 2
BUDGETS: dict[str, dict[str, Any]] = {
    "smoke": {"draws": 100, "ladder": 5},
    "quick": {"draws": 2000, "ladder": 7},
    "full": {"draws": 10000, "ladder": 9},
}
DIM, H_RANGE, BATCH = 8, (0.1, 1.0), 16
NOTES_TOL, GROWTH, FO_TOL, SLOPE_TOL, Z = 0.05, 3.0, 0.01, 0.2, 3.0


# ----------------------------------------------------------------------------- theory (pure)


def first_order_term(grads: list[torch.Tensor], hvp) -> torch.Tensor:
    """D = Σ_k H_k Σ_{j<k} g_j, with ``hvp(k, v)`` = H_k v (example k's Hessian at Φ₀)."""
    acc = torch.zeros_like(grads[0])
    out = torch.zeros_like(grads[0])
    for k, g in enumerate(grads):
        if k:
            out += hvp(k, acc)
        acc = acc + g
    return out


def expected_term(H: np.ndarray, G: np.ndarray, batch: int) -> np.ndarray:
    """E[D] = B(B − 1)/2 · HG (independent examples, constant H_k = H)."""
    return batch * (batch - 1) / 2 * (H @ G)


# ----------------------------------------------------------------------------- problems


def _quadratic(seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((DIM, DIM)))
    H = (q * np.geomspace(*H_RANGE, DIM)) @ q.T
    phi0 = rng.standard_normal(DIM) * 3.0
    return {"H": H, "phi0": phi0, "h_max": H_RANGE[1]}


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _set(model: torch.nn.Module, flat: torch.Tensor) -> None:
    with torch.no_grad():
        i = 0
        for p in model.parameters():
            p.copy_(flat[i:i + p.numel()].view_as(p))
            i += p.numel()


def _example_grad(model, x, y, create_graph=False):
    loss = F.cross_entropy(model(x[None]), y[None])
    gs = torch.autograd.grad(loss, list(model.parameters()), create_graph=create_graph)
    return torch.cat([g.reshape(-1) for g in gs])


def _relu_signs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Signs of the hidden layers' pre-activations (the ReLU pattern) for inputs x."""
    out: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda mod, a, o: out.append(o.detach() > 0))
             for m in model.hidden]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return torch.cat([o.reshape(x.shape[0], -1) for o in out], 1)


def _mlp_runs(fractions: np.ndarray) -> dict[str, Any]:
    """The MLP at init on B examples: λ_max of their mean loss, D, and small against big
    steps at η₀ = fraction/(Bλ_max)."""
    from sgdlab.probes.curvature import top_hessian_eigenvalue

    ds = data.load("mnist1d", seed=0)
    model = models.build("mlp", ds, seed=0).double()
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, ds.n_train, (BATCH,), generator=gen)
    x, y = ds.batch(idx)
    x = x.double()
    phi0 = _flat(model)
    grads = [_example_grad(model, x[k], y[k]) for k in range(BATCH)]

    def hvp(k: int, v: torch.Tensor) -> torch.Tensor:
        g = _example_grad(model, x[k], y[k], create_graph=True)
        hv = torch.autograd.grad(g @ v, list(model.parameters()))
        return torch.cat([h.reshape(-1) for h in hv]).detach()

    D = first_order_term(grads, hvp)
    lam = top_hessian_eigenvalue(model, lambda o, t: F.cross_entropy(o, t, reduction="none"),
                                 x, y, iters=200, tol=1e-8).lambda_max
    big_dir = torch.stack(grads).sum(0)
    signs0 = _relu_signs(model, x)
    rows = []
    for eta in fractions / (BATCH * lam):
        _set(model, phi0)
        flips = 0
        for k in range(BATCH):
            g = _example_grad(model, x[k], y[k])
            _set(model, _flat(model) - eta * g)
            if k + 1 < BATCH:      # did the next example's ReLU pattern change on the way?
                flips += int((_relu_signs(model, x[k + 1:k + 2]) != signs0[k + 1:k + 2]).sum())
        small = _flat(model)
        big = phi0 - eta * big_dir
        rows.append({"eta": float(eta), "rel_dev": float((small - big).norm() / (big - phi0)
                                                         .norm()),
                     "fo_err": float((small - big - eta**2 * D).norm() / (eta**2 * D).norm()),
                     "relu_flips": flips})
    _set(model, phi0)
    return {"lambda_max": float(lam), "rows": rows}


def _quadratic_runs(etas: np.ndarray, draws: int) -> dict[str, Any]:
    """The quadratic: one draw per η₀ for the first-order check, and R draws of D at Φ₀."""
    prob = _quadratic()
    H, phi0 = prob["H"], prob["phi0"]
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((BATCH, DIM))
    grads = [torch.as_tensor(H @ (phi0 - xk)) for xk in xs]
    Ht = torch.as_tensor(H)
    D = first_order_term(grads, lambda k, v: Ht @ v).numpy()
    rows = []
    for eta in etas:
        phi = phi0.copy()
        for xk in xs:
            phi = phi - eta * H @ (phi - xk)
        big = phi0 - eta * sum(g.numpy() for g in grads)
        rows.append({"eta": float(eta),
                     "rel_dev": float(np.linalg.norm(phi - big) / np.linalg.norm(big - phi0)),
                     "fo_err": float(np.linalg.norm(phi - big - eta**2 * D)
                                     / np.linalg.norm(eta**2 * D))})
    # E[D] over independent draws: D = H Σ_k Σ_{j<k} g_j = H Σ_j (B − 1 − j) g_j
    X = rng.standard_normal((draws, BATCH, DIM))
    w = (BATCH - 1 - np.arange(BATCH))[None, :, None]
    Ds = ((phi0[None, None] - X) @ H * w).sum(1) @ H                   # (R, d)
    G = H @ phi0                                                     # E g_b = H(Φ₀ − 0)
    ED = expected_term(H, G, BATCH)
    u = ED / np.linalg.norm(ED)
    proj = Ds @ u
    orth = Ds - proj[:, None] * u[None]
    return {"rows": rows, "h_max": prob["h_max"], "ED_norm": float(np.linalg.norm(ED)),
            "proj_mean": float(proj.mean()), "proj_se": float(proj.std(ddof=1)
                                                               / math.sqrt(draws)),
            "orth_mean_norm": float(np.linalg.norm(orth.mean(0))),
            "orth_se": float(np.sqrt((orth.var(0, ddof=1)).sum() / draws)), "draws": draws}


def measure(ctx: Context, budget: dict[str, Any]) -> dict[str, Any]:
    """Both problems over an η₀ ladder spanning Bη₀h_max from 0.01 to 1 (cached)."""
    n = budget["ladder"]
    key = {"claim": CLAIM.id, "v": VERSION, **budget}

    def compute() -> dict[str, Any]:
        frac = np.geomspace(0.01, 1.0, n)
        mlp = _mlp_runs(frac)
        quad = _quadratic_runs(frac / (BATCH * H_RANGE[1]), budget["draws"])
        return {"mlp": mlp, "quadratic": quad, "fraction": frac.tolist()}

    return ctx.cached(key, compute)


# ----------------------------------------------------------------------------- judgement (pure)


def _fo_slope(rows: list[dict[str, float]]) -> float:
    e = np.array([r["eta"] for r in rows])
    err = np.array([r["fo_err"] for r in rows])
    ok = err > 0
    return float(np.polyfit(np.log(e[ok]), np.log(err[ok]), 1)[0]) if ok.sum() >= 2 else math.nan


def judge(m: dict[str, Any]) -> list[Check]:
    """The three checks of the module docstring from :func:`measure`'s output."""
    frac = m["fraction"]
    mlp, quad = m["mlp"], m["quadratic"]
    rows = mlp["rows"]
    first, last = rows[0]["rel_dev"], rows[-1]["rel_dev"]
    v1 = worst_verdict([at_most(first, 0.0, NOTES_TOL),
                        "PASS" if last >= GROWTH * first else "FAIL"])
    checks = [Check(
        "B small steps ≈ one big step while Φ barely moves",
        f"relative deviation ‖Φ_B − Φ_big‖/‖Φ_big − Φ₀‖ ≤ {NOTES_TOL:.0%} at Bη₀λ_max = "
        f"{frac[0]:g}, growing with η₀ (MNIST-1D MLP at init, B = {BATCH}, λ_max = "
        f"{mlp['lambda_max']:.3g})",
        ", ".join(f"Bη₀λ_max={f:.2g}: {r['rel_dev']:.3g}" for f, r in zip(frac, rows,
                                                                         strict=True))
        + "; ReLU sign flips along the small steps: "
        + ", ".join(str(r["relu_flips"]) for r in rows),
        f"≤ {NOTES_TOL:.0%} at the smallest η₀ (deterministic: no se); ≥ {GROWTH:g}× that at "
        "the largest", v1, {"rows": rows, "lambda_max": mlp["lambda_max"]})]
    verds, txt = [], []
    for name, r in (("quadratic", quad["rows"]), ("MLP", rows)):
        slope = _fo_slope(r)
        verds += [at_most(r[0]["fo_err"], 0.0, FO_TOL), near(slope, 0.0, 1.0, SLOPE_TOL)]
        txt.append(f"{name}: error {r[0]['fo_err']:.2e} at the smallest η₀, slope "
                   f"{slope:.3f}")
    checks.append(Check(
        "the first-order term η₀²Σ_k H_k Σ_{j<k} g_j",
        "Φ_B − Φ_big = η₀²D + O(η₀³): relative error of η₀²D falls as η₀",
        "; ".join(txt), f"≤ {FO_TOL:.0%} at the smallest η₀; log-log slope 1 ± {SLOPE_TOL}",
        worst_verdict(verds), {"quadratic": quad["rows"], "mlp": rows}, basis="derived"))
    kinked = [r for r in rows if r["relu_flips"] > 0]
    if checks[-1].verdict == "FAIL" and kinked:
        checks[-1].finding = (
            "the η₀² expansion assumes a smooth loss: on the ReLU MLP it holds while no ReLU "
            f"unit changes sign during the small steps (error {rows[0]['fo_err']:.1e}); from "
            f"η₀ = {kinked[0]['eta']:.2g} some do ({kinked[0]['relu_flips']} flips) and the "
            f"deviation is no longer η₀²D (error {kinked[0]['fo_err']:.2g})")
    v3 = worst_verdict([z_test(quad["proj_mean"], quad["ED_norm"], quad["proj_se"], Z),
                        at_most(quad["orth_mean_norm"], 0.0, Z * quad["orth_se"])])
    checks.append(Check(
        "E[D] = B(B − 1)/2 · HG on the quadratic",
        f"‖E D‖ = B(B − 1)/2·‖HG‖ = {quad['ED_norm']:.5g} along HG, 0 across it",
        f"mean projection {quad['proj_mean']:.5g} ± {quad['proj_se']:.2g}, mean orthogonal "
        f"part {quad['orth_mean_norm']:.3g} (se {quad['orth_se']:.2g}) over {quad['draws']} "
        "draws",
        f"|z| ≤ {Z:g}; orthogonal part ≤ {Z:g} se", v3,
        {k: quad[k] for k in ("ED_norm", "proj_mean", "proj_se", "orth_mean_norm", "orth_se")},
        basis="derived"))
    return checks


# ----------------------------------------------------------------------------- presentation


def figures(ctx: Context, m: dict[str, Any]) -> list[str]:
    """Relative deviation and first-order error against Bη₀λ_max, both problems."""
    from sgdlab.plots import new_figure, save_figure

    fig, axes = new_figure(1, 2, figsize=(10, 3.8))
    frac = np.asarray(m["fraction"])
    for ax, key, label in ((axes[0][0], "rel_dev", "‖Φ_B − Φ_big‖ / ‖Φ_big − Φ₀‖"),
                           (axes[0][1], "fo_err", "error of η₀²D, relative")):
        for name in ("quadratic", "mlp"):
            ax.loglog(frac, [r[key] for r in m[name]["rows"]], "o-", ms=3, label=name)
        ax.set_xlabel("Bη₀λ_max")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    path, rel = ctx.figure(CLAIM, "deviation")
    save_figure(fig, path)
    return [rel]


def notes(ctx: Context, m: dict[str, Any], budget: dict[str, Any]) -> list[str]:
    """What was run, for the report (below the checks)."""
    out: list[str] = []
    out.append(f"B = {BATCH}; η₀ ladder at Bη₀λ_max = "
                     + ", ".join(f"{f:.2g}" for f in m["fraction"]) + f"; {K:g}-se rules.")
    return out


def run(ctx: Context) -> Result:
    """Measure, judge, present (see the module docstring) through the kit's
    :func:`~sgdlab.experiments.kit.run_claim`."""
    return run_claim(sys.modules[__name__], ctx)
