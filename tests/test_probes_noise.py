"""Gradient noise scale (SPEC §3) against quantities computed exactly from the data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from sgdlab.probes.noise import TwoBatchEstimator, noise_scale, two_batch_estimates


def least_squares(n=400, d=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * np.linspace(0.5, 2.0, d)
    y = x @ rng.normal(size=d) + 0.7 * rng.normal(size=n)
    phi = rng.normal(size=d)                       # away from the optimum: G ≠ 0
    g = x * (x @ phi - y)[:, None]                 # per-example ∇ ½(xᵀΦ − y)²
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor(phi)[None])
    loss_fn = lambda out, t: 0.5 * (out - t).pow(2).sum(-1)
    return model, loss_fn, torch.tensor(x), torch.tensor(y)[:, None], g


def test_whole_data_batch_gives_the_exact_moments():
    """With the batch = the data set: tr Σ is the sample covariance trace (ddof 1) of the
    per-example gradients, ‖ĝ‖² the squared mean, to float64 rounding."""
    model, loss_fn, x, y, g = least_squares()
    res = noise_scale(model, loss_fn, x, y, lr=0.1)
    tr = np.trace(np.cov(g.T, ddof=1))
    gbar2 = float(np.sum(g.mean(0) ** 2))
    n = len(g)
    assert res.tr_sigma == pytest.approx(tr, rel=1e-10)
    assert res.g_hat_norm_sq == pytest.approx(gbar2, rel=1e-10)
    assert res.g_norm_sq == pytest.approx(gbar2 - tr / n, rel=1e-10)
    assert res.b_simple == pytest.approx(tr / (gbar2 - tr / n), rel=1e-10)
    loss = float(np.mean(0.5 * (x.numpy() @ model.weight.detach().numpy()[0]
                                - y.numpy()[:, 0]) ** 2))
    assert res.b_cabs == pytest.approx(0.1 * tr / loss, rel=1e-10)
    assert res.per_layer["weight"]["tr_sigma"] == pytest.approx(tr, rel=1e-10)
    # B*[c] = 16 σ²[c] / ĝ[c]²: its median over the 6 coordinates
    var = np.var(g, axis=0, ddof=1)
    bstar = 16 * var / g.mean(0) ** 2
    assert res.b_star_quantiles["q50"] == pytest.approx(float(np.median(bstar)), rel=1e-9)


def test_batch_estimates_are_unbiased():
    """Over 3000 i.i.d. batches of 16 drawn with replacement, the mean estimates of tr Σ and
    ‖G‖² match the population values (tr Σ_pop = mean‖g_b − G‖², ‖G‖²) within 3%."""
    model, loss_fn, x, y, g = least_squares(seed=1)
    G = g.mean(0)
    tr_pop = float(np.mean(np.sum((g - G) ** 2, axis=1)))
    gen = torch.Generator().manual_seed(0)
    trs, g2s = [], []
    for _ in range(3000):
        idx = torch.randint(0, len(g), (16,), generator=gen)
        r = noise_scale(model, loss_fn, x[idx], y[idx])
        trs.append(r.tr_sigma)
        g2s.append(r.g_norm_sq)
    assert np.mean(trs) == pytest.approx(tr_pop, rel=0.03)
    assert np.mean(g2s) == pytest.approx(float(G @ G), rel=0.03)


def test_two_batch_estimator_is_unbiased():
    """Batch-gradient norms at B_s = 8 and B_b = 64 from the same population."""
    _, _, _, _, g = least_squares(seed=2)
    G = g.mean(0)
    tr_pop = float(np.mean(np.sum((g - G) ** 2, axis=1)))
    rng = np.random.default_rng(0)
    est = TwoBatchEstimator(decay=0.999)
    g2s, trs = [], []
    for _ in range(4000):
        small = g[rng.integers(0, len(g), 8)].mean(0)
        big = g[rng.integers(0, len(g), 64)].mean(0)
        g2, tr = two_batch_estimates(small @ small, big @ big, 8, 64)
        est.update(small @ small, big @ big, 8, 64)
        g2s.append(g2)
        trs.append(tr)
    assert np.mean(trs) == pytest.approx(tr_pop, rel=0.05)
    assert np.mean(g2s) == pytest.approx(float(G @ G), rel=0.1)
    assert est.b_simple == pytest.approx(tr_pop / float(G @ G), rel=0.25)


def test_per_layer_sums_to_total_on_an_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    x = torch.randn(32, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (32,))
    loss_fn = lambda out, t: nn.functional.cross_entropy(out, t, reduction="none")
    res = noise_scale(model, loss_fn, x, y)
    assert sum(v["tr_sigma"] for v in res.per_layer.values()) == pytest.approx(res.tr_sigma)
    assert set(res.per_layer) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert all(p.grad is None for p in model.parameters())


def test_errors():
    model, loss_fn, x, y, _ = least_squares()
    with pytest.raises(ValueError, match="at least 2 examples"):
        noise_scale(model, loss_fn, x[:1], y[:1])
    with pytest.raises(ValueError, match="need 0 < b_small < b_big"):
        two_batch_estimates(1.0, 1.0, 8, 8)


def test_smoothed_noise_scale_closed_form_and_state():
    """Bias-corrected EMAs of tr Σ and ‖G‖²: after n values the weights are
    (1 − d)dⁿ⁻ᵏ/(1 − dⁿ); the ratio is B_simple; the state continues exactly."""
    from sgdlab.probes.noise import SmoothedNoiseScale

    d = 0.8
    tr = [4.0, 2.0, 3.0, 5.0]
    g2 = [1.0, -0.5, 0.5, 2.0]
    s = SmoothedNoiseScale(d)
    for a, b in zip(tr[:2], g2[:2], strict=True):
        s.add(a, b)
    t = SmoothedNoiseScale(0.5)
    t.load_state_dict(s.state_dict())
    for a, b in zip(tr[2:], g2[2:], strict=True):
        s.add(a, b)
        t.add(a, b)
    n = len(tr)
    w = [(1 - d) * d ** (n - 1 - k) / (1 - d ** n) for k in range(n)]
    assert s.tr_sigma == pytest.approx(sum(a * c for a, c in zip(tr, w, strict=True)), rel=1e-14)
    assert s.g_norm_sq == pytest.approx(sum(a * c for a, c in zip(g2, w, strict=True)),
                                        rel=1e-14)
    assert s.b_simple == pytest.approx(s.tr_sigma / s.g_norm_sq, rel=1e-14)
    assert t.state_dict() == s.state_dict()
    neg = SmoothedNoiseScale(0.9)
    neg.add(1.0, -1.0)
    assert neg.b_simple == math.inf
    with pytest.raises(ValueError, match="decay"):
        SmoothedNoiseScale(1.0)
