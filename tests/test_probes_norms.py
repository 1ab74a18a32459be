"""Weight norms, effective and intrinsic learning rate (SPEC §4.5)."""

from __future__ import annotations

import math

import pytest
import torch

from sgdlab import models
from sgdlab.probes import norms


def _scale_invariant_with_grads():
    torch.manual_seed(0)
    model = models.build("scale_invariant", models.DataSpec((10,), 4), width=16).double()
    x = torch.randn(32, 10, dtype=torch.float64)
    y = torch.randint(0, 4, (32,))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    return model


def test_defect_is_zero_for_scale_invariant_weights():
    model = _scale_invariant_with_grads()
    defects = norms.scale_invariance_defect(model)
    assert defects and max(defects.values()) < 1e-10
    plain = models.build("mlp", models.DataSpec((10,), 4), width=16)
    torch.nn.functional.cross_entropy(plain(torch.randn(8, 10)),
                                      torch.randint(0, 4, (8,))).backward()
    assert max(norms.scale_invariance_defect(plain).values()) > 1e-3


def test_report_matches_formulas():
    model = _scale_invariant_with_grads()
    lr, wd = 0.1, 5e-4
    report = norms.scale_invariant_report(model, lr, wd)
    assert set(report) == {n for n, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        r = report[name]
        w2 = float(p.detach().pow(2).sum())
        assert r["effective_lr"] == pytest.approx(lr / w2)
        g = float(p.grad.pow(2).sum()) * w2
        assert r["predicted_norm4"] == pytest.approx(lr * g / (wd * (2 - lr * wd)))
        assert r["predicted_effective_lr"] == pytest.approx(math.sqrt(2 * lr * wd / g))
        assert r["intrinsic_lr"] == pytest.approx(lr * wd)


def test_gradient_at_unit_norm_estimate_is_scale_free():
    """G = ‖∇L(w)‖²‖w‖² is the same at w and 3w (∇L(cw) = ∇L(w)/c)."""
    torch.manual_seed(0)
    model = models.build("scale_invariant", models.DataSpec((10,), 4), width=16).double()
    x = torch.randn(32, 10, dtype=torch.float64)
    y = torch.randint(0, 4, (32,))

    def grad_sq_unit():
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        return {k: v["grad_sq_unit"]
                for k, v in norms.scale_invariant_report(model, 0.1, 1e-3).items()}

    g1 = grad_sq_unit()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    g3 = grad_sq_unit()
    assert g1.keys() == g3.keys() and g1
    for k in g1:
        assert g3[k] == pytest.approx(g1[k], rel=1e-9)


def test_angular_update_and_helpers():
    a = torch.tensor([1.0, 0.0])
    b = torch.tensor([1.0, 1.0])
    assert norms.angular_update(a, b) == pytest.approx(math.pi / 4)
    assert norms.angular_update(a, 5 * a) == pytest.approx(0.0, abs=1e-7)
    assert norms.effective_lr(0.1, 2.0) == pytest.approx(0.025)
    assert norms.equilibrium_norm4(0.1, 0.0, 1.0) == math.inf
    assert norms.weight_norms(torch.nn.Linear(2, 1, bias=False)).keys() == {"weight"}
