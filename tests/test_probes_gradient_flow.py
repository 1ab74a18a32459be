"""probes.gradient_flow (SPEC §4.13): the ODE solver against the closed form on a quadratic
(Φ(t) = Φ* + e^{−Ht}(Φ₀ − Φ*)), the loss never rising along the flow, the model untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.linalg import expm

from sgdlab.probes.gradient_flow import flatten_params, gradient_flow, solve_flow


def _least_squares(seed=0, n=64, d=5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(0.3, 1.5, d,
                                                                              dtype=torch.float64)
    y = torch.randn(n, 1, generator=g, dtype=torch.float64)
    model = torch.nn.Linear(d, 1, bias=False).double()
    return model, x, y


def _half_mse(out, y):
    return 0.5 * ((out - y) ** 2).sum(-1)


def test_quadratic_closed_form():
    """ℓ_b = ½(wᵀx_b − y_b)²: H = XᵀX/N, Φ* = H⁻¹Xᵀy/N, Φ(t) = Φ* + e^{−Ht}(Φ₀ − Φ*)."""
    model, x, y = _least_squares()
    X, Y = x.numpy(), y.numpy()[:, 0]
    H = X.T @ X / len(X)
    star = np.linalg.solve(H, X.T @ Y / len(X))
    phi0 = flatten_params(dict(model.named_parameters()))
    times = [0.0, 0.3, 1.0, 4.0, 12.0]
    before = model.weight.detach().clone()
    sol = gradient_flow(model, _half_mse, x, y, times, rtol=1e-11, atol=1e-13)
    assert sol.success and sol.names == ["weight"] and sol.shapes == [(1, 5)]
    for t, row in zip(times, sol.params, strict=True):
        exact = star + expm(-H * t) @ (phi0 - star)
        assert np.allclose(row, exact, rtol=0, atol=1e-9)
    assert torch.equal(model.weight, before)                       # model untouched
    assert np.all(np.diff(sol.loss) <= 1e-14)                      # dL/dt = −‖∇L‖² ≤ 0
    assert sol.grad_norm[-1] < sol.grad_norm[0]
    assert torch.allclose(sol.state(2)["weight"],
                          torch.as_tensor(star + expm(-H) @ (phi0 - star))[None], atol=1e-9)


def test_tolerance_controls_the_error():
    """A looser rtol gives a larger (but still small) error; rtol/atol are honoured."""
    model, x, y = _least_squares(1)
    X, Y = x.numpy(), y.numpy()[:, 0]
    H = X.T @ X / len(X)
    star = np.linalg.solve(H, X.T @ Y / len(X))
    phi0 = flatten_params(dict(model.named_parameters()))
    exact = star + expm(-H * 5.0) @ (phi0 - star)
    errs = [np.abs(gradient_flow(model, _half_mse, x, y, [5.0], rtol=r, atol=r * 1e-3,
                                 method="RK45").params[0] - exact).max()
            for r in (1e-4, 1e-10)]
    assert errs[1] < errs[0] and errs[1] < 1e-8


def test_network_start_and_chunks_agree():
    """A tanh network: chunked gradients give the same flow; ``start`` overrides the model's
    parameters; the loss falls along the flow."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))
    x, y = torch.randn(40, 3), torch.randint(0, 2, (40,))
    ce = torch.nn.functional.cross_entropy
    a = gradient_flow(net, ce, x, y, [0.5, 2.0])
    b = gradient_flow(net, ce, x, y, [0.5, 2.0], chunk_size=7)
    assert np.allclose(a.params, b.params, atol=1e-8)
    with torch.no_grad():
        l0 = float(ce(net(x), y))
    assert a.loss[1] < a.loss[0] < l0
    zero = {n: torch.zeros_like(p) for n, p in net.named_parameters()}
    c = gradient_flow(net, ce, x, y, [0.0], start=zero)
    assert np.all(c.params[0] == 0)


def test_solve_flow_validates():
    with pytest.raises(ValueError):
        solve_flow(lambda v: v, np.ones(2), [1.0, 0.5])
    with pytest.raises(ValueError):
        solve_flow(lambda v: v, np.ones(2), [1.0], rtol=0)
    s = solve_flow(lambda v: v, np.ones(2), [0.0, 1.0], rtol=1e-10, atol=1e-12)
    assert np.allclose(s.y[:, 1], np.exp(-1.0), rtol=1e-8)
