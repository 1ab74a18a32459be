"""Synthetic sets with exact optima: linreg, logreg, quadratic_deep (SPEC §5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sgdlab.data import (
    linreg_optimum,
    load,
    logreg_optimum,
    quadratic_deep_hessian,
    quadratic_loss,
)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SGDLAB_CACHE", str(tmp_path))


# --------------------------------------------------------------------------- linreg


def test_linreg_optimum_is_exact():
    d = load("linreg", seed=3, dim=8, n_train=300, noise=0.3, condition=100.0)
    assert d.task == "regression" and d.num_classes is None and d.output_dim == 1
    assert d.x_train.shape == (300, 8) and d.y_train.shape == (300, 1)
    assert d.x_train.dtype == d.y_train.dtype == torch.float32
    phi = torch.tensor(d.meta["phi_star"], dtype=torch.float64, requires_grad=True)
    x, y = d.x_train.double(), d.y_train.double()[:, 0]
    loss = 0.5 * ((x @ phi - y) ** 2).mean()
    (g,) = torch.autograd.grad(loss, phi)
    assert float(g.norm()) < 1e-12
    assert float(loss.detach()) == pytest.approx(d.meta["loss_star"], rel=1e-12)
    assert np.allclose(d.meta["hessian"], (x.T @ x / 300).numpy(), atol=1e-12)
    eig = np.linalg.eigvalsh(d.meta["hessian"])
    assert 30 < eig[-1] / eig[0] < 300  # population condition number 100
    assert np.linalg.norm(d.meta["phi_star"] - d.meta["w_true"]) < 1.0
    # noise level: L* ≈ ½ σ² (N − d)/N
    assert d.meta["loss_star"] == pytest.approx(0.5 * 0.09 * 292 / 300, rel=0.25)


def test_linreg_optimum_with_bias():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 3))
    y = x @ np.array([1.0, -2.0, 0.5]) + 3.0 + 0.01 * rng.standard_normal(50)
    opt = linreg_optimum(x, y, bias=True)
    assert opt.bias == pytest.approx(3.0, abs=0.01)
    r = x @ opt.weight + opt.bias - y
    assert np.abs(np.hstack([x, np.ones((50, 1))]).T @ r).max() < 1e-12


def test_linreg_determinism():
    a, b, c = load("linreg", seed=1), load("linreg", seed=1), load("linreg", seed=2)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert np.array_equal(a.meta["phi_star"], b.meta["phi_star"])
    assert not torch.equal(a.x_train, c.x_train)


# --------------------------------------------------------------------------- logreg


@pytest.mark.parametrize("k, lam", [(2, 1e-2), (3, 1e-3), (2, 0.0)])
def test_logreg_regularised_optimum(k, lam):
    d = load("logreg", seed=0, dim=5, num_classes=k, n_train=400, n_test=200)
    assert d.task == "classification" and d.num_classes == k
    assert d.y_train.dtype == torch.int64 and int(d.y_train.max()) == k - 1
    opt = logreg_optimum(d.x_train, d.y_train, k, lam)
    assert opt.weight.shape == (k, 5) and opt.bias.shape == (k,)
    assert opt.grad_norm < 1e-10
    W = torch.tensor(opt.weight, requires_grad=True)
    b = torch.tensor(opt.bias, requires_grad=True)
    ce = F.cross_entropy(d.x_train.double() @ W.T + b, d.y_train)
    loss = ce + 0.5 * lam * (W.pow(2).sum() + b.pow(2).sum())
    gW, gb = torch.autograd.grad(loss, (W, b))
    assert float(torch.cat([gW.flatten(), gb]).norm()) < 1e-9
    assert float(loss.detach()) == pytest.approx(opt.loss, rel=1e-12)
    assert float(ce.detach()) == pytest.approx(opt.data_loss, rel=1e-12)
    acc = float(((d.x_test.double() @ W.T + b).argmax(1) == d.y_test).double().mean())
    assert acc > d.meta["bayes_accuracy"] - 0.1


def test_logreg_without_bias_and_determinism():
    d = load("logreg", seed=4, dim=3, n_train=200)
    opt = logreg_optimum(d.x_train, d.y_train, 2, 0.1, bias=False)
    assert np.all(opt.bias == 0) and opt.grad_norm < 1e-10
    e = load("logreg", seed=4, dim=3, n_train=200)
    assert torch.equal(d.x_train, e.x_train) and torch.equal(d.y_train, e.y_train)
    assert d.meta["w_true"].shape == (2, 3)
    assert np.allclose(np.linalg.norm(d.meta["w_true"], axis=1), 2.0)


# --------------------------------------------------------------------------- quadratic_deep


def test_quadratic_deep_hessian_spectrum():
    Q, eig = quadratic_deep_hessian()
    assert Q.shape == (100, 100) and np.array_equal(Q, Q.T)
    assert np.all((eig[:90] > 0) & (eig[:90] < 1)) and np.all((eig[90:] > 30) & (eig[90:] < 60))
    assert np.allclose(np.linalg.eigvalsh(Q), np.sort(eig), atol=1e-10)
    Q2, _ = quadratic_deep_hessian()
    assert np.array_equal(Q, Q2)  # fixed by seed 42


def test_quadratic_deep_problem():
    d = load("quadratic_deep")
    assert d.task == "quadratic" and d.num_classes is None and d.output_dim == 0
    assert d.x_train.shape == (1000, 100) and d.x_test.shape == (1000, 100)
    assert d.y_train.shape == (1000, 0)
    assert float(d.x_train.std()) == pytest.approx(0.6, abs=0.01)
    # DeepOBS draws: RandomState(42) for train, RandomState(43) for test, as float32
    ref = np.float32(np.random.RandomState(42).normal(0.0, 0.6, (1000, 100)))
    assert np.array_equal(d.x_train.numpy(), ref)
    assert not torch.equal(d.x_train, d.x_test)
    assert torch.equal(load("quadratic_deep", seed=7).x_train, d.x_train)
    assert np.array_equal(d.meta["phi_init"], np.ones(100))
    Q = torch.tensor(d.meta["hessian"])
    phi = torch.tensor(d.meta["phi_star"], requires_grad=True)
    assert np.allclose(d.meta["phi_star"], d.x_train.double().mean(0).numpy(), atol=1e-15)
    loss = quadratic_loss(phi, d.x_train.double(), Q).mean()
    (g,) = torch.autograd.grad(loss, phi)
    assert float(g.norm()) < 1e-12
    assert float(loss.detach()) == pytest.approx(d.meta["loss_star"], rel=1e-12)
    # L* = ½ tr(Q S) ≈ ½ · 0.36 · tr Q
    assert d.meta["loss_star"] == pytest.approx(0.18 * np.trace(d.meta["hessian"]), rel=0.1)
    other = load("quadratic_deep", data_seed=0, n_train=10)
    assert other.x_train.shape == (10, 100) and not torch.equal(other.x_train, d.x_train[:10])
