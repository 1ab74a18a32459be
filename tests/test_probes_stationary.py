"""Stationary loss and heat capacity (SPEC §4.1, §4.2) against closed forms.

The noisy quadratic is a finite data set: ℓ_b(Φ) = ½ Σ_i h_i (Φ_i − x_{b,i})² with the x_b
exactly centred, so Φ* = 0, L* = ½ Σ_i h_i v_i (v_i the population variance of x_{·,i}),
L(Φ) − L* = ½ Σ_i h_i Φ_i², and the per-example gradients h(Φ − x_b) have covariance
diag(h_i² v_i) whatever Φ is: the stationary excess is exactly Σ_i ησ_i²/(B(4 − 2ηh_i)) with
replacement (SPEC §4.2), and :func:`quadratic_excess_loss` gives the exact value with
shuffling too.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from sgdlab.probes.stationary import (
    autocorrelation,
    batch_means,
    heat_capacity,
    integrated_autocorr_time,
    mser_truncation,
    noise_factor,
    predict_heat_capacity,
    quadratic_excess_loss,
    stationary_loss,
)

H = torch.tensor([0.5, 1.0, 1.5, 2.0], dtype=torch.float64)
V = torch.tensor([1.0, 0.5, 0.3, 0.2], dtype=torch.float64)
SIGMA2 = (H**2 * V).numpy()          # per-example gradient variances σ_i² = h_i² v_i


class Quad(nn.Module):
    """Forward returns x − Φ; the loss weighs it with h."""

    def __init__(self, d: int = 4, start: float = 0.0) -> None:
        super().__init__()
        self.phi = nn.Parameter(torch.full((d,), start, dtype=torch.float64))

    def forward(self, x):
        return x - self.phi


def quad_loss(h: torch.Tensor):
    return lambda out, y: 0.5 * (out * out * h).sum(-1)


def quad_data(n: int, v: torch.Tensor = V, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, v.numel(), generator=g, dtype=torch.float64)
    x = x - x.mean(0)
    x = x / x.std(0, unbiased=False) * v.sqrt()
    return x, torch.zeros(n, dtype=torch.float64)


def l_star(h: torch.Tensor = H, v: torch.Tensor = V) -> float:
    return float(0.5 * (h * v).sum())


# --------------------------------------------------------------------------- statistics


def ar1(n: int, rho: float, seed: int, chains: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    e = rng.standard_normal((chains, n)) * math.sqrt(1 - rho * rho)
    out = np.empty((chains, n))
    out[:, 0] = rng.standard_normal(chains)
    for t in range(1, n):
        out[:, t] = rho * out[:, t - 1] + e[:, t]
    return out


def test_autocorrelation_time_of_ar1():
    rho = 0.8                                  # τ_int = (1 + ρ)/(1 − ρ) = 9
    s = ar1(20_000, rho, seed=0, chains=4)
    assert integrated_autocorr_time(s) == pytest.approx(9.0, rel=0.15)
    r = autocorrelation(s)
    assert r[0] == 1.0 and r[1] == pytest.approx(rho, abs=0.03)
    white = np.random.default_rng(1).standard_normal(5000)
    assert integrated_autocorr_time(white) == pytest.approx(1.0, abs=0.2)


def test_batch_means_se_matches_ar1_theory():
    rho, n = 0.8, 40_000
    s = ar1(n, rho, seed=2)[0] + 3.0
    bm = batch_means(s, n_batches=20)
    want = math.sqrt(9.0 / n)                  # sd 1, τ_int 9
    assert bm.n_batches == 20 and bm.batch_len == n // 20
    assert bm.se == pytest.approx(want, rel=0.4)
    assert abs(bm.mean - 3.0) < 4 * want
    # several chains: ⌈20/K⌉ batches per chain
    bm4 = batch_means(ar1(10_000, rho, seed=3, chains=8), n_batches=20)
    assert bm4.n_batches == 24 and bm4.batch_len == 10_000 // 3


def test_mser_finds_the_transient():
    rng = np.random.default_rng(4)
    t = np.arange(2000)
    s = 5.0 * np.exp(-t / 40.0) + 0.1 * rng.standard_normal(t.size)
    d, boundary = mser_truncation(s)
    assert not boundary
    assert 100 <= d <= 400                     # 5 e^{-d/40} ≲ noise at d ≈ 150
    d0, _ = mser_truncation(0.1 * rng.standard_normal(2000))
    assert d0 < 400
    # still decaying over the whole record: truncation hits the limit
    _, boundary = mser_truncation(np.exp(-t / 3000.0) + 1e-4 * rng.standard_normal(t.size))
    assert boundary


def test_quadratic_formula_limits():
    h, s2 = H.numpy(), SIGMA2
    eta, b = 0.3, 4
    iid = quadratic_excess_loss(eta, h, s2, b)
    assert iid == pytest.approx(sum(eta * s2 / (b * (4 - 2 * eta * h))))
    # ηh = 1 in every mode: shuffling gives exactly the factor-corrected value
    ones = np.ones(4)
    f = noise_factor(40, 8, "shuffle")
    assert f == pytest.approx(32 / 39)
    assert quadratic_excess_loss(1.0, ones, s2, 8, "shuffle", n=40) == pytest.approx(
        f * quadratic_excess_loss(1.0, ones, s2, 8), rel=1e-12)
    # small η: shuffling has no first-order term
    tiny = [quadratic_excess_loss(e, h, s2, 8, "shuffle", n=40) / e for e in (1e-3, 1e-4)]
    assert tiny[1] < 0.2 * tiny[0]
    with pytest.raises(ValueError):
        quadratic_excess_loss(1.5, h, s2, 4)       # ηh_max = 3 > 2: no stationary state


# --------------------------------------------------------------------------- stationary loss


@pytest.mark.parametrize("eta", [0.1, 0.5])
def test_stationary_loss_on_noisy_quadratic(eta):
    x, y = quad_data(1000)
    b = 4
    res = stationary_loss(Quad(), quad_loss(H), x, y, eta, b, chains=64, seed=1,
                          reference=l_star(), rel_se=0.02)
    want = quadratic_excess_loss(eta, H.numpy(), SIGMA2, b)
    assert res.converged, res.reason
    assert res.engine == "vmap"
    assert res.se <= 0.03 * want                       # a real test
    assert abs(res.excess - want) <= 3 * res.se, (res.excess, want, res.se)
    assert res.n_batches >= 20 and res.batch_steps >= 5 * res.tau_int
    assert res.final_params["phi"].shape == (64, 4)
    assert res.trace.shape == res.trace_steps.shape and res.trace_steps[0] == 0
    # burn-in: the first half (not chosen from the records); se of 64 replicas, t intervals
    assert res.burn_in <= res.steps // 2 < res.burn_in + res.record_every
    assert res.mser_burn_in <= res.burn_in and res.dof == 63
    lo, hi = res.ci(0.95)
    assert (hi - lo) / 2 == pytest.approx(1.998 * res.se, rel=1e-3)    # t_{63, 0.975}
    assert res.ci(0.95, reference=True)[0] == pytest.approx(lo - res.reference)


def test_burn_in_detected_and_chains_continue_at_lower_lr():
    """Far from Φ*, the transient is cut; then η/10 from the stationary state (the step decay
    of SPEC §4.1) drops the plateau to its own exact level."""
    x, y = quad_data(1000)
    b, eta = 4, 0.1
    res = stationary_loss(Quad(start=3.0), quad_loss(H), x, y, eta, b, chains=64, seed=2,
                          reference=l_star(), rel_se=0.02)
    want = quadratic_excess_loss(eta, H.numpy(), SIGMA2, b)
    assert res.converged, res.reason
    # ½Σh·9 ≈ 22 at the start; the slowest mode decays as (1 − 0.05)^{2t}: ~60 steps to noise
    assert res.trace[0] - l_star() > 100 * want
    assert 30 <= res.burn_in <= res.steps // 2
    assert abs(res.excess - want) <= 3 * res.se
    after = res.trace[res.trace_steps >= res.burn_in]
    assert abs(after[: max(1, after.size // 10)].mean() - res.mean) < 0.5 * want

    low = stationary_loss(Quad(), quad_loss(H), x, y, eta / 10, b, chains=64, seed=3,
                          phi0=res.final_params, reference=l_star(), rel_se=0.03)
    want_low = quadratic_excess_loss(eta / 10, H.numpy(), SIGMA2, b)
    assert low.converged, low.reason
    assert low.burn_in > 0
    assert abs(low.excess - want_low) <= 3 * low.se
    assert low.mean < res.mean - 5 * res.se


def test_shuffle_sampling_exact_and_not_the_factor_rule():
    """Shuffling: one batch has noise (N − B)/(N − 1)·Σ/B, but the batches of an epoch are
    anti-correlated. At ηh = 1 the iterate remembers one batch and the factor rule is exact;
    at ηh < 1 the exact value (quadratic_excess_loss) is well below it."""
    n, b = 40, 8
    x, y = quad_data(n, seed=5)
    f = noise_factor(n, b, "shuffle")
    ones = torch.ones(4, dtype=torch.float64)
    iso = stationary_loss(Quad(), quad_loss(ones), x, y, 1.0, b, sampling="shuffle",
                          chains=64, seed=4, reference=l_star(ones), rel_se=0.02)
    s2_iso = V.numpy()                                  # h = 1: σ² = v
    want = f * quadratic_excess_loss(1.0, np.ones(4), s2_iso, b)
    assert iso.converged, iso.reason
    assert abs(iso.excess - want) <= 3 * iso.se
    assert iso.excess < want / f - 5 * iso.se           # the factor is visible

    eta = 0.2
    res = stationary_loss(Quad(), quad_loss(H), x, y, eta, b, sampling="shuffle", chains=64,
                          seed=5, reference=l_star(), rel_se=0.02)
    exact = quadratic_excess_loss(eta, H.numpy(), SIGMA2, b, "shuffle", n=n)
    factor_rule = f * quadratic_excess_loss(eta, H.numpy(), SIGMA2, b)
    assert res.converged, res.reason
    assert res.record_every % 5 != 0                    # records see every phase of an epoch
    assert abs(res.excess - exact) <= 3 * res.se
    assert res.excess < 0.7 * factor_rule


def test_loop_engine_matches_vmap_engine():
    x, y = quad_data(200)
    kw = dict(chains=3, seed=7, min_steps=150, max_steps=150, record_every=10)
    a = stationary_loss(Quad(start=1.0), quad_loss(H), x, y, 0.2, 5, engine="vmap", **kw)
    b = stationary_loss(Quad(start=1.0), quad_loss(H), x, y, 0.2, 5, engine="loop", **kw)
    assert a.engine == "vmap" and b.engine == "loop"
    assert a.steps == b.steps == 150
    torch.testing.assert_close(a.final_params["phi"], b.final_params["phi"], rtol=1e-10,
                               atol=1e-12)
    np.testing.assert_allclose(a.trace, b.trace, rtol=1e-10)


def test_objective_with_weight_decay_and_model_untouched():
    x, y = quad_data(200)
    model = Quad(start=1.0)
    kw = dict(chains=4, seed=8, min_steps=100, max_steps=100, record_every=10,
              optimizer_options={"weight_decay": 0.1})
    reg = stationary_loss(model, quad_loss(H), x, y, 0.2, 5, objective="regularised", **kw)
    dat = stationary_loss(model, quad_loss(H), x, y, 0.2, 5, objective="data", **kw)
    assert reg.weight_decay == dat.weight_decay == 0.1
    phi = reg.final_params["phi"]
    torch.testing.assert_close(phi, dat.final_params["phi"])       # same trajectory
    pen = float(0.5 * 0.1 * (phi**2).sum(1).mean())
    assert reg.trace[-1] - dat.trace[-1] == pytest.approx(pen, rel=1e-9)
    assert torch.equal(model.phi.detach(), torch.ones(4, dtype=torch.float64))
    loaded = reg.load_into(model, chain=2)
    assert torch.equal(loaded.phi.detach(), phi[2])
    # the loss on a fixed subset of the training set (same trajectory, other records)
    sub = stationary_loss(model, quad_loss(H), x, y, 0.2, 5, eval_subset=50, **kw)
    torch.testing.assert_close(sub.final_params["phi"], phi)
    assert not np.allclose(sub.trace, reg.trace)


def test_divergence_is_reported():
    x, y = quad_data(100)
    res = stationary_loss(Quad(), quad_loss(H), x, y, 1.5, 5, chains=2, max_steps=2000,
                          record_every=10)
    assert not res.converged and "diverged" in res.reason
    assert res.steps < 2000 and math.isnan(res.mean)


def test_argument_checks():
    x, y = quad_data(50)
    m, lf = Quad(), quad_loss(H)
    with pytest.raises(ValueError, match="sampling"):
        stationary_loss(m, lf, x, y, 0.1, 4, sampling="bogus")
    with pytest.raises(ValueError, match="lr"):
        stationary_loss(m, lf, x, y, 0.0, 4)
    with pytest.raises(ValueError, match="objective"):
        stationary_loss(m, lf, x, y, 0.1, 4, objective="total")
    with pytest.raises(ValueError, match="batch_size"):
        stationary_loss(m, lf, x, y, 0.1, 51)
    with pytest.raises(ValueError, match="phi0"):
        stationary_loss(m, lf, x, y, 0.1, 4, phi0={"phi": torch.zeros(3)})
    with pytest.raises(ValueError, match="optimizer"):
        stationary_loss(m, lf, x, y, 0.1, 4, optimizer="nope", max_steps=10, min_steps=10)


# --------------------------------------------------------------------------- heat capacity


def test_prediction_with_l2_uses_regularised_per_example_gradients():
    """Logistic regression with L2: at Φ*, E_b‖g_b + λΦ*‖² = tr Σ (the mean vanishes)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 5, generator=g)
    y = (x[:, 0] + 0.5 * torch.randn(120, generator=g) > 0).long()
    model = nn.Linear(5, 2)
    lf = lambda out, t: nn.functional.cross_entropy(out, t, reduction="none")
    lam, b = 0.05, 8
    p = predict_heat_capacity(model, lf, x, y, b, weight_decay=lam)
    assert p.phi_star_grad_norm < 1e-8
    assert p.mean_sq_grad == pytest.approx(p.tr_sigma, rel=1e-8)
    # reference: per-example gradients of the regularised loss by a plain loop
    star = p.model
    sq = []
    for i in range(x.shape[0]):
        star.zero_grad()
        loss = lf(star(x[i:i + 1].double()), y[i:i + 1]).sum()
        loss = loss + 0.5 * lam * sum((q * q).sum() for q in star.parameters())
        loss.backward()
        sq.append(sum(float((q.grad**2).sum()) for q in star.parameters()))
    assert p.mean_sq_grad == pytest.approx(float(np.mean(sq)), rel=1e-8)
    assert p.predicted == pytest.approx(p.tr_sigma / (4 * b), rel=1e-12)
    sh = predict_heat_capacity(model, lf, x, y, b, weight_decay=lam, sampling="shuffle",
                               phi_star=star)
    assert sh.predicted == pytest.approx(p.predicted * (120 - b) / 119, rel=1e-9)


def test_heat_capacity_least_squares():
    from sgdlab.data import load

    ds = load("linreg", seed=0)
    torch.manual_seed(0)
    model = nn.Linear(ds.x_train.shape[1], 1, bias=False)
    lf = lambda out, t: 0.5 * (out - t).pow(2).sum(-1)
    b = 10
    res = heat_capacity(model, lf, ds.x_train, ds.y_train, b, chains=128, seed=0,
                        rel_se=0.012)
    # Φ* and L* agree with the data set's exact least-squares solution
    np.testing.assert_allclose(res.phi_star["weight"].numpy().ravel(), ds.meta["phi_star"],
                               rtol=0, atol=1e-8)
    assert res.L_star == pytest.approx(ds.meta["loss_star"], rel=1e-10)
    assert res.phi_star_grad_norm < 1e-8
    # prediction: tr Σ from x_b r_b with r_b the residuals at Φ*
    X = ds.x_train.double().numpy()
    r = X @ ds.meta["phi_star"] - ds.y_train.double().numpy().ravel()
    gb = X * r[:, None]
    tr = float(np.mean((gb * gb).sum(1)) - (gb.mean(0) ** 2).sum())
    assert res.predicted == pytest.approx(tr / (4 * b), rel=1e-8)
    assert res.h_max == pytest.approx(float(np.linalg.eigvalsh(ds.meta["hessian"])[-1]),
                                      rel=1e-4)
    # measurement
    assert res.converged.all()
    assert res.in_fit.sum() >= 4 and res.fit_pvalue >= 0.01
    assert abs(res.ratio - 1) < 0.05, (res.ratio, res.ratio_ci)
    assert res.ratio_ci[0] <= 1 <= res.ratio_ci[1]
    assert res.ratio_ci[1] - res.ratio_ci[0] < 0.1


def test_models_vmap_cannot_batch_fall_back_to_the_loop():
    """BatchNorm in training mode updates its running statistics in place: chains then run
    as separate model copies."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=g)
    y = torch.randint(0, 2, (64,), generator=g)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    lf = lambda out, t: nn.functional.cross_entropy(out, t, reduction="none")
    res = stationary_loss(model, lf, x, y, 0.05, 8, chains=2, min_steps=40, max_steps=40,
                          record_every=2)
    assert res.engine == "loop" and res.steps == 40
    assert np.isfinite(res.trace).all() and res.trace.shape == (21,)
    assert res.final_params["0.weight"].shape == (2, 4, 3)


def test_fit_recovers_exact_coefficients():
    from sgdlab.probes.stationary import _fit_c1_c2

    etas = np.array([0.01, 0.02, 0.04, 0.08])
    c1, c2, cov, chi2, dof = _fit_c1_c2(etas, 0.3 * etas + 2.0 * etas**2, 0.01 * etas)
    assert c1 == pytest.approx(0.3, rel=1e-10) and c2 == pytest.approx(2.0, rel=1e-8)
    assert chi2 == pytest.approx(0.0, abs=1e-12) and dof == 2
    assert cov.shape == (2, 2) and cov[0, 0] > 0


def test_analyse_records_on_ar1_matches_the_closed_form_se():
    """AR(1) x_t = ρx_{t−1} + e_t, Var e = 1: stationary variance 1/(1 − ρ²), τ_int =
    (1 + ρ)/(1 − ρ); se of the mean of the m records kept (the second half: the default cut
    discards the first half whatever the records show) = √(τ_int/((1 − ρ²) m)). Over 40
    seeded series the mean reported se matches within 20 % and the z-scores have sd within
    0.7–1.4."""
    from sgdlab.probes.stationary import analyse_records

    rho, n = 0.8, 20_000
    ses, zs = [], []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        e = rng.standard_normal(n)
        x = np.empty(n)
        x[0] = e[0] / math.sqrt(1 - rho**2)
        for t in range(1, n):
            x[t] = rho * x[t - 1] + e[t]
        out = analyse_records(3.0 + x, 10)
        assert out["ok"], out["reason"]
        assert out["burn_in"] == (n - 1) // 2
        ses.append(out["se"])
        zs.append((out["mean"] - 3.0) / out["se"])
    theory = math.sqrt((1 + rho) / (1 - rho) / (1 - rho**2) / (n - (n - 1) // 2))
    assert np.mean(ses) == pytest.approx(theory, rel=0.2)
    assert 0.7 < np.std(zs) < 1.4


def test_analyse_records_flags_a_transient():
    from sgdlab.probes.stationary import analyse_records

    t = np.arange(2000)
    rng = np.random.default_rng(0)
    series = np.exp(-t / 3000) + 0.01 * rng.standard_normal(2000)
    out = analyse_records(series, 1)
    assert not out["ok"] and "burn-in" in out["reason"]


# --------------------------------------------------------------------------- calibration


def _ar1_chains(k: int, n: int, rho: float, rng: np.random.Generator,
                mu: float = 0.0) -> np.ndarray:
    """k stationary AR(1) chains of n records: x_t = μ + ρ(x_{t−1} − μ) + e_t, Var e = 1 −
    ρ² (stationary variance 1, τ_int = (1 + ρ)/(1 − ρ)); x_0 from the stationary law."""
    e = rng.standard_normal((k, n)) * math.sqrt(1 - rho * rho)
    x = np.empty((k, n))
    x[:, 0] = rng.standard_normal(k)
    for t in range(1, n):
        x[:, t] = rho * x[:, t - 1] + e[:, t]
    return mu + x


def test_burn_in_is_a_fixed_fraction_and_mser_only_a_diagnostic():
    from sgdlab.probes.stationary import analyse_records

    rng = np.random.default_rng(11)
    s = _ar1_chains(20, 301, 0.5, rng)
    out = analyse_records(s, 1)
    assert out["burn_in"] == 150                        # ⌊½·(n − 1)⌋, whatever the records
    assert out["mser_burn_in"] == mser_truncation(s.mean(0))[0] and out["ok"]
    assert analyse_records(s, 1, burn_in=0.2)["burn_in"] == 60
    old = analyse_records(s, 1, burn_in="mser")
    assert old["burn_in"] == out["mser_burn_in"]
    # the kept records alone make the estimate: with K ≥ n_batches = 20 chains, se of the
    # 20 independent chain means over records 150..300
    cm = s[:, 150:].mean(1)
    assert out["mean"] == pytest.approx(cm.mean(), rel=1e-12)
    assert out["se"] == pytest.approx(cm.std(ddof=1) / math.sqrt(20), rel=1e-12)
    assert out["dof"] == 19
    # a transient still visible after the cut (MSER point beyond it): not over, extend
    t = np.arange(400)
    drift = 3.0 * np.exp(-t / 120.0) + 0.05 * rng.standard_normal((20, 400))
    bad = analyse_records(drift, 1)
    assert not bad["ok"] and "burn-in not over" in bad["reason"]
    with pytest.raises(ValueError, match="burn_in"):
        analyse_records(s, 1, burn_in=1.0)


def test_replica_se_calibrated_on_chains_a_few_tau_long():
    """64 stationary AR(1) chains of 100 records with τ_int = 19 (ρ = 0.9): only 2.6 τ are
    kept, yet the se of the independent chain means is exact for them. Over 300 seeds:
    |mean z| ≤ 0.2, sd(z) within 1 ± 0.12 (3/√(2·299)); the 95 % t interval (63 dof)
    covers the true mean 95 ± 4 % of the time."""
    from sgdlab.probes.stationary import analyse_records, t_interval

    rng = np.random.default_rng(12)
    zs, cover = [], 0
    for _ in range(300):
        out = analyse_records(_ar1_chains(64, 100, 0.9, rng, mu=2.0), 1, batch_factor=0.0)
        assert out["dof"] == 63 and out["burn_in"] == 49
        zs.append((out["mean"] - 2.0) / out["se"])
        lo, hi = t_interval(out["mean"], out["se"], out["dof"])
        cover += lo <= 2.0 <= hi
    z = np.array(zs)
    assert abs(z.mean()) <= 0.2
    assert abs(z.std(ddof=1) - 1.0) <= 0.12
    assert abs(cover / 300 - 0.95) <= 0.04


def test_run_adaptive_stops_without_selecting_on_the_kept_records():
    """The adaptive control (extend until se ≤ rel_se·mean, chains ≥ 5 τ_int) on 64 AR(1)
    chains (μ = 10, ρ = 0.95, τ_int = 39, unit stationary variance): the precision rule
    binds, and the z-scores stay calibrated (|mean z| ≤ 0.2, sd within 1 ± 0.15 over 200
    seeds; the stop is decided on the records before the cut, the estimate on those after)."""
    from sgdlab.probes.stationary import run_adaptive

    rho, mu, k = 0.95, 10.0, 64
    zs, steps_run = [], []
    for seed in range(200):
        rng = np.random.default_rng(1000 + seed)
        state = {"x": rng.standard_normal(k)}

        def step(state=state, rng=rng):
            state["x"] = rho * state["x"] + math.sqrt(1 - rho * rho) * rng.standard_normal(k)

        stats, steps, recs, rec_steps = run_adaptive(
            step, lambda state=state: mu + state["x"], 1, min_steps=100, max_steps=20_000,
            rel_se=0.004)
        assert stats["ok"], stats["reason"]
        assert len(recs) == len(rec_steps) == steps + 1
        zs.append((stats["mean"] - mu) / stats["se"])
        steps_run.append(steps)
    z = np.array(zs)
    # se target 0.04 needs ≈ τ/(64·0.04²) ≈ 380 kept records: the precision rule decided
    assert np.median(steps_run) > 500
    assert abs(z.mean()) <= 0.2
    assert abs(z.std(ddof=1) - 1.0) <= 0.15
