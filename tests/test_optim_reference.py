"""Every optimizer against a float64 numpy re-derivation of its SPEC §2 update, and the
delegated ones against torch.optim directly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sgdlab import optim

from _problems import max_rel_err, run_reference, run_torch

STEPS = 60


def sgd_ref(lr, wd=0.0, decoupled=False):
    def step(phi, g, st, t, _):
        if decoupled:
            return phi * (1 - lr * wd) - lr * g
        return phi - lr * (g + wd * phi)
    return step


def heavy_ball_ref(lr, beta, nesterov=False, wd=0.0, decoupled=False):
    def step(phi, g, st, t, lr_t):
        eta = lr if lr_t is None else lr_t
        if decoupled:
            phi = phi * (1 - eta * wd)
        else:
            g = g + wd * phi
        v = beta * st.get("v", np.zeros_like(phi)) + g     # v ← βv + ĝ, v₀ = 0
        st["v"] = v
        d = g + beta * v if nesterov else v
        return phi - eta * d
    return step


def ema_ref(lr, beta):
    def step(phi, g, st, t, lr_t):
        eta = lr if lr_t is None else lr_t
        m = beta * st.get("m", np.zeros_like(phi)) + (1 - beta) * g   # ḡ ← βḡ + (1−β)ĝ
        st["m"] = m
        return phi - eta * m
    return step


def rmsprop_ref(lr, alpha, eps, wd=0.0, decoupled=False):
    def step(phi, g, st, t, _):
        if decoupled:
            phi = phi * (1 - lr * wd)
        else:
            g = g + wd * phi
        s = alpha * st.get("s", np.zeros_like(phi)) + (1 - alpha) * g * g
        st["s"] = s
        return phi - lr * g / (np.sqrt(s) + eps)
    return step


def adam_ref(lr, b1, b2, eps, bias_correction=True, wd=0.0, decoupled=False):
    def step(phi, g, st, t, _):
        if decoupled:
            phi = phi * (1 - lr * wd)
        else:
            g = g + wd * phi
        m = b1 * st.get("m", np.zeros_like(phi)) + (1 - b1) * g
        s = b2 * st.get("s", np.zeros_like(phi)) + (1 - b2) * g * g
        st["m"], st["s"] = m, s
        if bias_correction:
            m, s = m / (1 - b1**t), s / (1 - b2**t)
        return phi - lr * m / (np.sqrt(s) + eps)
    return step


CASES = [
    ("sgd", dict(lr=0.1), sgd_ref(0.1)),
    ("sgd", dict(lr=0.1, weight_decay=0.05), sgd_ref(0.1, 0.05)),
    ("sgd", dict(lr=0.1, weight_decay=0.05, decoupled=True), sgd_ref(0.1, 0.05, True)),
    ("momentum", dict(lr=0.05, beta=0.9), heavy_ball_ref(0.05, 0.9)),
    ("momentum", dict(lr=0.05, beta=0.9, nesterov=True), heavy_ball_ref(0.05, 0.9, True)),
    ("momentum", dict(lr=0.05, beta=0.8, weight_decay=0.1, decoupled=True),
     heavy_ball_ref(0.05, 0.8, wd=0.1, decoupled=True)),
    ("momentum", dict(lr=0.3, beta=0.9, style="ema"), ema_ref(0.3, 0.9)),
    ("rmsprop", dict(lr=0.01, alpha=0.9, eps=1e-8), rmsprop_ref(0.01, 0.9, 1e-8)),
    ("rmsprop", dict(lr=0.01, alpha=0.99, eps=1e-6, weight_decay=0.1),
     rmsprop_ref(0.01, 0.99, 1e-6, 0.1)),
    ("adam", dict(lr=0.01), adam_ref(0.01, 0.9, 0.999, 1e-8)),
    ("adam", dict(lr=0.01, bias_correction=False), adam_ref(0.01, 0.9, 0.999, 1e-8, False)),
    ("adam", dict(lr=0.01, betas=(0.5, 0.9), weight_decay=0.1, bias_correction=False),
     adam_ref(0.01, 0.5, 0.9, 1e-8, False, 0.1)),
    ("adam", dict(lr=0.01, weight_decay=0.1, decoupled=True, bias_correction=False),
     adam_ref(0.01, 0.9, 0.999, 1e-8, False, 0.1, True)),
    ("adamw", dict(lr=0.01, weight_decay=0.1), adam_ref(0.01, 0.9, 0.999, 1e-8, True, 0.1, True)),
]


@pytest.mark.parametrize(("name", "hp", "ref"), CASES, ids=[f"{c[0]}-{i}" for i, c in
                                                            enumerate(CASES)])
@pytest.mark.parametrize("path", ["default", "foreach", "loop"])
def test_matches_float64_reference(name, hp, ref, path):
    """Trajectories agree with the SPEC formula to 1e-10 relative in float64 over 60 steps."""
    flags = {"default": {}, "foreach": {"foreach": True, "fused": False},
             "loop": {"foreach": False, "fused": False}}[path]
    if name == "rmsprop":  # torch has no fused RMSprop
        flags.pop("fused", None)
    got = run_torch(lambda p: optim.create(name, p, **hp, **flags), STEPS)
    want = run_reference(ref, STEPS)
    assert max_rel_err(got, want) < 1e-10


TORCH_TWINS = [
    ("sgd", dict(lr=0.1, weight_decay=0.01), torch.optim.SGD, dict(lr=0.1, weight_decay=0.01)),
    ("momentum", dict(lr=0.05, beta=0.9), torch.optim.SGD, dict(lr=0.05, momentum=0.9)),
    ("momentum", dict(lr=0.05, beta=0.9, nesterov=True), torch.optim.SGD,
     dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("rmsprop", dict(lr=0.01), torch.optim.RMSprop, dict(lr=0.01)),
    ("adam", dict(lr=0.01, weight_decay=0.01), torch.optim.Adam,
     dict(lr=0.01, weight_decay=0.01)),
    ("adamw", dict(lr=0.01), torch.optim.AdamW, dict(lr=0.01)),
]


@pytest.mark.parametrize(("name", "hp", "cls", "thp"), TORCH_TWINS,
                         ids=[c[0] for c in TORCH_TWINS])
def test_delegated_equal_torch_optim(name, hp, cls, thp):
    """Delegated optimizers reproduce torch.optim's own update (float32, 1e-6 relative)."""
    got = run_torch(lambda p: optim.create(name, p, **hp), STEPS, dtype=torch.float32)
    want = run_torch(lambda p: cls(p, **thp, foreach=False), STEPS, dtype=torch.float32)
    assert max_rel_err(got, want) < 1e-6


def test_fastest_path_is_chosen_on_cpu():
    params = [torch.nn.Parameter(torch.zeros(3))]
    for name in ("sgd", "momentum", "adam", "adamw"):
        assert optim.create(name, params, lr=0.1).param_groups[0]["fused"] is True
    assert optim.create("rmsprop", params).param_groups[0]["sgdlab_fused"] is True
    assert optim.create("rmsprop", params, foreach=True).param_groups[0]["sgdlab_fused"] is False


@pytest.mark.parametrize(("name", "hp"), [
    ("rmsprop", dict(lr=0.01, alpha=0.9, eps=1e-6)),
    ("rmsprop", dict(lr=0.01, weight_decay=0.1, decoupled=True)),
    ("adam", dict(lr=0.01, bias_correction=False)),
    ("adam", dict(lr=0.01, bias_correction=False, weight_decay=0.1)),
    ("adam", dict(lr=0.01, bias_correction=False, weight_decay=0.1, decoupled=True)),
])
def test_fused_paths_equal_the_loop_with_gradients_missing(name, hp):
    """The fused paths (torch's fused Adam kernel, rescaled) against the per-tensor loop in
    float32 (1e-6 relative) over 60 steps, with one tensor lacking a gradient on every third
    step (so step counts differ inside a group), and p.grad left as it was."""
    gen = torch.Generator().manual_seed(3)
    init = [torch.randn(n, generator=gen) for n in (5, 7, 3)]
    grads = [[torch.randn(n, generator=gen) for n in (5, 7, 3)] for _ in range(STEPS)]
    out = {}
    for path, flags in (("fused", {}), ("loop", {"foreach": False})):
        params = [torch.nn.Parameter(x.clone()) for x in init]
        opt = optim.create(name, params, **hp, **flags)
        if path == "fused":
            assert opt.param_groups[0].get("sgdlab_fused", opt.param_groups[0].get("fused"))
        for k in range(STEPS):
            for i, p in enumerate(params):
                p.grad = None if (i == 1 and k % 3 == 2) else grads[k][i].clone()
            before = [None if p.grad is None else p.grad.clone() for p in params]
            opt.step()
            for p, b in zip(params, before, strict=True):
                assert (p.grad is None) == (b is None)
                if b is not None:
                    assert torch.equal(p.grad, b)
        out[path] = torch.cat([p.detach() for p in params])
    err = (out["fused"] - out["loop"]).abs().max() / out["loop"].abs().max()
    assert err < 1e-6


@pytest.mark.parametrize("nesterov", [False, True])
def test_heavy_ball_equals_ema_with_rescaled_lr(nesterov):
    """SPEC §2.2: heavy ball with η equals EMA with η/(1 − β), also under a changing η."""
    beta = 0.9
    lr_at = lambda k: 0.05 * (0.5 if k >= 30 else 1.0)
    hb = run_torch(lambda p: optim.Momentum(p, lr=0.05, beta=beta, nesterov=nesterov), STEPS,
                   lr_at=lr_at)
    ema = run_torch(lambda p: optim.Momentum(p, lr=0.5, beta=beta, style="ema",
                                             nesterov=nesterov), STEPS,
                    lr_at=lambda k: lr_at(k) / (1 - beta))
    assert max_rel_err(hb, ema) < 1e-12


def test_ema_param_groups_keep_user_lr():
    p = torch.nn.Parameter(torch.ones(2))
    opt = optim.Momentum([p], lr=0.5, beta=0.9, style="ema")
    p.grad = torch.ones(2)
    opt.step()
    assert opt.param_groups[0]["lr"] == 0.5
    # first EMA step from a zero buffer: Φ ← Φ − η′(1 − β)ĝ
    torch.testing.assert_close(p.detach(), torch.full((2,), 1 - 0.5 * 0.1))


@pytest.mark.parametrize("t_steps", [1, 5, 50])
def test_adam_constant_gradient_corrected_mhat_is_g(t_steps):
    """SPEC §2.4: with a constant gradient, m̂ = m/(1 − β₁ᵗ) equals g at every t."""
    g = torch.tensor([0.3, -2.0, 1e-3], dtype=torch.float64)
    p = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = optim.Adam([p], lr=1e-3)
    for _ in range(t_steps):
        p.grad = g.clone()
        opt.step()
    m = opt.state[p]["exp_avg"]
    torch.testing.assert_close(m / (1 - 0.9**t_steps), g, rtol=1e-14, atol=0)


def test_adam_uncorrected_first_step_is_larger():
    """SPEC §4.7: without correction step 1 is larger by (1 − β₁)/√(1 − β₂) ≈ 3.16."""
    g = torch.tensor([0.5, -1.5], dtype=torch.float64)
    steps = {}
    for bc in (True, False):
        p = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
        opt = optim.Adam([p], lr=1e-3, eps=1e-12, bias_correction=bc)
        p.grad = g.clone()
        opt.step()
        steps[bc] = -p.detach()
    ratio = steps[False] / steps[True]
    torch.testing.assert_close(ratio, torch.full((2,), 0.1 / np.sqrt(0.001),
                                                 dtype=torch.float64), rtol=1e-9, atol=0)


def test_adam_groups_mix_corrected_and_uncorrected():
    a = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    b = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    opt = optim.Adam([{"params": [a]}, {"params": [b], "bias_correction": False}], lr=1e-3,
                     eps=1e-12)
    a.grad = torch.ones(2, dtype=torch.float64)
    b.grad = torch.ones(2, dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(a.detach(), torch.full((2,), -1e-3, dtype=torch.float64))
    torch.testing.assert_close(b.detach(), torch.full((2,), -1e-3 * 0.1 / np.sqrt(0.001),
                                                      dtype=torch.float64))
