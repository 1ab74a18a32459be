"""Behaviour every optimizer shares: convergence, exact resume from a state_dict, the
registry's errors, closures and per-group learning rates driven by torch schedulers."""

from __future__ import annotations

import io

import pytest
import torch

from sgdlab import optim

# hyper-parameters used for the convergence checks (chosen once, not tuned per seed)
QUADRATIC = {
    "sgd": dict(lr=0.1),
    "momentum": dict(lr=0.1, beta=0.9, style="ema"),
    "rmsprop": dict(lr=1e-2),
    "adam": dict(lr=1e-2),
    "adamw": dict(lr=1e-2, weight_decay=0.0),
    "snr_sgd": dict(lr=0.5),
}
ROSENBROCK = {
    "sgd": dict(lr=0.008),
    "momentum": dict(lr=0.008, beta=0.9),
    "rmsprop": dict(lr=1e-3),
    "adam": dict(lr=0.02),
    "adamw": dict(lr=0.02, weight_decay=0.0),
    "snr_sgd": dict(lr=0.015),
}


def test_every_registered_optimizer_is_covered():
    assert set(QUADRATIC) == set(ROSENBROCK) == set(optim.available())


@pytest.mark.parametrize("name", sorted(QUADRATIC))
def test_converges_on_noisy_quadratic(name):
    """L = ½ Σ h_i Φ_i², h ∈ [0.1, 1] (20 dims), gradient noise σ = 0.1 (seed 0).

    From L₀ ≈ 46, the mean loss of the last 500 of 3000 steps is below 0.01. For SGD the
    stationary value is predicted exactly (SPEC §4.2): Σ_i ησ²/(4 − 2ηh_i); it must agree
    within 15% (the batch-means estimate has a few % of noise at this length).
    """
    h = torch.linspace(0.1, 1, 20, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.full((20,), 3.0, dtype=torch.float64))
    opt = optim.create(name, [p], **QUADRATIC[name])
    initial = float(0.5 * (h * p.detach() ** 2).sum())
    tail = torch.zeros((), dtype=torch.float64)
    for k in range(3000):
        p.grad = h * p.detach() + 0.1 * torch.randn(20, generator=gen, dtype=torch.float64)
        opt.step()
        if k >= 2500:
            tail += 0.5 * (h * p.detach() ** 2).sum()
    final = float(tail) / 500
    assert initial > 40
    assert final < 0.01
    if name == "sgd":
        eta, sigma2 = 0.1, 0.01
        predicted = float((eta * sigma2 / (4 - 2 * eta * h)).sum())
        assert final == pytest.approx(predicted, rel=0.15)


@pytest.mark.parametrize("name", sorted(ROSENBROCK))
def test_converges_on_rosenbrock(name):
    """f = (1 − x)² + 10 (y − x²)² from (−1.2, 1): within 1e-2 of (1, 1) after 3000 steps."""
    p = torch.nn.Parameter(torch.tensor([-1.2, 1.0], dtype=torch.float64))
    opt = optim.create(name, [p], **ROSENBROCK[name])

    def closure():
        opt.zero_grad()
        loss = (1 - p[0]) ** 2 + 10 * (p[1] - p[0] ** 2) ** 2
        loss.backward()
        return loss

    for _ in range(3000):
        opt.step(closure)
    assert float((p.detach() - 1).norm()) < 1e-2


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def _train(model, opt, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        x = torch.randn(16, 5, generator=gen)
        y = torch.randint(0, 3, (16,), generator=gen)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


RESUME = {
    "sgd": dict(lr=0.1, weight_decay=1e-3, decoupled=True),
    "momentum": dict(lr=0.1, beta=0.9, style="ema", nesterov=True),
    "rmsprop": dict(lr=1e-2, weight_decay=1e-3),
    "adam": dict(lr=1e-2, bias_correction=False),
    "adamw": dict(lr=1e-2),
    "snr_sgd": dict(lr=0.1, warmup=10),
}


@pytest.mark.parametrize("name", sorted(RESUME))
def test_state_dict_resume_is_exact(name):
    """Save at step 25 through torch.save/torch.load(weights_only=True), load into a fresh
    model and optimizer, continue 25 steps: identical parameters and losses, bit for bit."""
    full_model = _model()
    full_opt = optim.create(name, full_model.parameters(), **RESUME[name])
    full = _train(full_model, full_opt, 25, seed=1) + _train(full_model, full_opt, 25, seed=2)

    model = _model()
    opt = optim.create(name, model.parameters(), **RESUME[name])
    first = _train(model, opt, 25, seed=1)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    model2 = _model()
    model2.load_state_dict(ckpt["model"])
    opt2 = optim.create(name, model2.parameters(), **RESUME[name])
    opt2.load_state_dict(ckpt["opt"])
    second = _train(model2, opt2, 25, seed=2)

    assert first + second == full
    for a, b in zip(full_model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", sorted(RESUME))
def test_torch_scheduler_drives_group_lr(name):
    """Per-group lr is a plain float that torch's schedulers drive; lr = 0 freezes Φ."""
    model = _model()
    opt = optim.create(name, model.parameters(), **RESUME[name])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.0 if t >= 12 else 1.0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(12):
        opt.zero_grad()
        model(torch.randn(4, 5, generator=gen)).square().mean().backward()
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == 0.0
    before = [p.detach().clone() for p in model.parameters()]
    if "weight_decay" in RESUME[name] and RESUME[name].get("decoupled"):
        pass  # decoupled decay is scaled by lr as well, so lr = 0 also freezes it
    opt.zero_grad()
    model(torch.randn(4, 5, generator=gen)).square().mean().backward()
    opt.step()
    for a, b in zip(before, model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_unknown_name_lists_known_ones():
    with pytest.raises(ValueError, match="unknown optimizer 'adm'; known: adam, adamw, "
                                         "momentum, rmsprop, sgd, snr_sgd"):
        optim.create("adm", [torch.nn.Parameter(torch.zeros(1))], lr=0.1)


@pytest.mark.parametrize(("name", "hp", "message"), [
    ("sgd", dict(lr=-0.1), r"lr must be in \[0, inf\), got -0.1"),
    ("sgd", dict(lr=float("nan")), r"lr must be in \[0, inf\), got nan"),
    ("sgd", dict(lr="fast"), r"lr must be a number in \[0, inf\), got 'fast'"),
    ("sgd", dict(lr=0.1, weight_decay=-1), r"weight_decay must be in \[0, inf\)"),
    ("sgd", dict(lr=0.1, decoupled="yes"), "decoupled must be true or false"),
    ("momentum", dict(lr=0.1, beta=1.0), r"beta must be in \[0, 1\), got 1.0"),
    ("momentum", dict(lr=0.1, style="nag"), "style must be one of 'heavy_ball', 'ema'"),
    ("momentum", dict(lr=0.1, beta=0.0, nesterov=True), "beta must be in \\(0, 1\\) when"),
    ("rmsprop", dict(alpha=1.5), r"alpha must be in \[0, 1\), got 1.5"),
    ("adam", dict(betas=(0.9, 1.0)), r"betas\[1\] must be in \[0, 1\), got 1.0"),
    ("adam", dict(betas=0.9), r"betas must be a pair"),
    ("adam", dict(eps=-1e-8), r"eps must be in \[0, inf\)"),
    # torch's momentum= makes sgd heavy ball (tests/test_user_components.py); beta= does not
    ("sgd", dict(lr=0.1, beta=0.9), "unknown hyper-parameter 'beta' for optimizer "
                                    "'sgd'; allowed: lr, weight_decay, decoupled"),
    ("momentum", dict(lr=0.1, beta=0.9, momentum=0.9), "give 'beta' or its torch name"),
    ("sgd", dict(lr=0.1, momentum=0.9, style="ema"), "for style give optimizer 'momentum'"),
    ("snr_sgd", dict(), "optimizer 'snr_sgd' needs 'lr'"),
])
def test_bad_hyperparameters_name_the_parameter(name, hp, message):
    with pytest.raises(ValueError, match=message):
        optim.create(name, [torch.nn.Parameter(torch.zeros(1))], **hp)


def test_bad_value_in_a_later_param_group():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\), got 2"):
        optim.Momentum([{"params": [a]}, {"params": [b], "beta": 2}], lr=0.1)


def test_hyperparameters_lists_defaults():
    hp = optim.hyperparameters("snr_sgd")
    assert hp["lambda_b"] == 16.0 and hp["warmup"] == 20 and hp["w_min"] == 1e-3
    assert hp["w_max"] == 0.1 and hp["eps"] == 1e-16
