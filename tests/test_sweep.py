"""sgdlab.sweep: K models at once agree step for step with K separate torch.optim.SGD runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sgdlab import data, models
from sgdlab.data import BatchSampler
from sgdlab.schedules import cosine, warmup
from sgdlab.sweep import grid, train_many


@pytest.fixture(scope="module")
def ds():
    return data.load("mnist1d", seed=0)


def _reference(ds, point, steps, batch_size, sched, nesterov, batch_seed, mopts):
    """One model trained by torch.optim.SGD on the batches train_many draws (float64)."""
    torch.manual_seed(0)
    m = models.build("mlp", ds, seed=point.get("seed", 0), **mopts).double()
    opt = torch.optim.SGD(m.parameters(), lr=point["lr"], momentum=point.get("momentum", 0.0),
                          weight_decay=point.get("weight_decay", 0.0),
                          nesterov=nesterov and point.get("momentum", 0.0) > 0)
    sampler = BatchSampler(ds.n_train, batch_size, "shuffle", batch_seed)
    for t in range(steps):
        for g in opt.param_groups:
            g["lr"] = point["lr"] * (sched(t) if sched else 1.0)
        idx = sampler.next_batch()
        opt.zero_grad()
        F.cross_entropy(m(ds.x_train[idx].double()), ds.y_train[idx]).backward()
        opt.step()
    with torch.no_grad():
        return {n: p.detach().clone() for n, p in m.named_parameters()}, float(
            F.cross_entropy(m(ds.x_train.double()), ds.y_train))


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("engine", ["mlp", "vmap", "loop"])
def test_every_model_matches_its_own_torch_sgd_run(ds, nesterov, engine):
    mopts = {"width": 32}
    pts = [{"lr": 0.05, "seed": 0}, {"lr": 0.2, "momentum": 0.9, "weight_decay": 1e-3, "seed": 1},
           {"lr": 0.1, "momentum": 0.5, "seed": 2}]
    sched = warmup(cosine(30), 5)
    res = train_many(ds, "mlp", pts, batch_size=64, steps=30, schedule=sched, dtype=torch.float64,
                     nesterov=nesterov, model_options=mopts, engine=engine, batch_seed=3)
    assert res.engine == engine
    for k, p in enumerate(pts):
        ref, loss = _reference(ds, p, 30, 64, sched, nesterov, 3, mopts)
        for name, t in ref.items():
            torch.testing.assert_close(res.params[name][k], t, rtol=1e-10, atol=1e-12)
        assert res.train_loss[k, -1] == pytest.approx(loss, rel=1e-10)
        assert res.sq_norm[k, -1] == pytest.approx(sum(float(t.pow(2).sum())
                                                       for t in ref.values()), rel=1e-10)


def test_independent_batches_use_each_points_seed(ds):
    pts = [{"lr": 0.1, "seed": 4}, {"lr": 0.1, "seed": 4}]
    same = train_many(ds, "mlp", pts, batch_size=32, steps=5, model_options={"width": 8},
                      dtype=torch.float64)
    np.testing.assert_allclose(same.train_loss[0], same.train_loss[1], rtol=1e-12)
    own = train_many(ds, "mlp", [{"lr": 0.1, "seed": 4}], batch_size=32, steps=5,
                     same_batches=False, model_options={"width": 8}, dtype=torch.float64)
    ref, _ = _reference(ds, {"lr": 0.1, "seed": 4}, 5, 32, None, False, 4, {"width": 8})
    for name, t in ref.items():
        torch.testing.assert_close(own.params[name][0], t, rtol=1e-10, atol=1e-12)


def test_a_diverging_model_is_marked_and_does_not_stop_the_others(ds):
    pts = grid(lr=[0.05, 1e4])
    res = train_many(ds, "mlp", pts, batch_size=64, steps=20, eval_every=10,
                     model_options={"width": 16})
    assert res.diverged_at[0] == -1 and 0 <= res.diverged_at[1] < 20
    assert np.isfinite(res.train_loss[0]).all() and np.isnan(res.train_loss[1, -1])
    assert res.final("test_acc")[0] > 0.1
    assert list(res.steps) == [0, 10, 20]


def test_bad_points_are_one_clear_error(ds):
    with pytest.raises(ValueError, match="needs an 'lr'"):
        train_many(ds, "mlp", [{"momentum": 0.9}], batch_size=8, steps=1)
    with pytest.raises(ValueError, match="unknown key"):
        train_many(ds, "mlp", [{"lr": 0.1, "beta": 0.9}], batch_size=8, steps=1)
    with pytest.raises(ValueError, match="momentum must be in"):
        train_many(ds, "mlp", [{"lr": 0.1, "momentum": 1.0}], batch_size=8, steps=1)
    with pytest.raises(ValueError, match="unknown axis"):
        grid(eta=[0.1])


def test_start_continues_earlier_models(ds):
    """Two halves of a run (the second started from the first's parameters, at a constant
    η, with plain SGD) end where one whole run ends, when the batches continue: the sampler
    is restarted, so the check uses replacement batches of a sampler state we can reproduce —
    here simply the same batch sequence for both halves of the reference."""
    pts = [{"lr": 0.1, "seed": 0}, {"lr": 0.05, "seed": 1}]
    a = train_many(ds, "mlp", pts, batch_size=32, steps=4, model_options={"width": 8},
                   dtype=torch.float64, batch_seed=5)
    b = train_many(ds, "mlp", pts, batch_size=32, steps=4, model_options={"width": 8},
                   dtype=torch.float64, batch_seed=5, start=a.params)
    for k, p in enumerate(pts):
        m = models.build("mlp", ds, seed=p["seed"], width=8).double()
        opt = torch.optim.SGD(m.parameters(), lr=p["lr"])
        for _ in range(2):
            sampler = BatchSampler(ds.n_train, 32, "shuffle", 5)
            for _ in range(4):
                idx = sampler.next_batch()
                opt.zero_grad()
                F.cross_entropy(m(ds.x_train[idx].double()), ds.y_train[idx]).backward()
                opt.step()
        for name, t in m.named_parameters():
            torch.testing.assert_close(b.params[name][k], t.detach(), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="expected"):
        train_many(ds, "mlp", pts[:1], batch_size=8, steps=1, model_options={"width": 8},
                   start=a.params)


def test_regression_matches_torch_sgd_and_other_tasks_are_refused():
    """½‖f(x) − y‖² (sgdlab.train.loss_functions) on linreg, float64, against torch.optim.SGD."""
    reg = data.load("linreg")
    res = train_many(reg, "linear", [{"lr": 0.01}], batch_size=16, steps=5,
                     dtype=torch.float64)
    m = models.build("linear", reg, seed=0).double()
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    sampler = BatchSampler(reg.n_train, 16, "shuffle", 0)

    def loss(x, y):
        return (0.5 * (m(x.double()) - y.double()).pow(2).sum(-1)).mean()

    for _ in range(5):
        idx = sampler.next_batch()
        opt.zero_grad()
        loss(reg.x_train[idx], reg.y_train[idx]).backward()
        opt.step()
    with torch.no_grad():
        assert res.train_loss[0, -1] == pytest.approx(float(loss(reg.x_train, reg.y_train)),
                                                      rel=1e-10)
    assert np.isnan(res.test_acc).all()
    with pytest.raises(ValueError, match="task 'quadratic' cannot be trained"):
        train_many(data.load("quadratic_deep"), "linear", [{"lr": 0.1}], batch_size=8, steps=1)
