"""The dense references of the curvature tests, checked against finite differences.

``_zoo.dense_hessian`` (and the GGN and block references built on it) is what every
curvature probe is compared with, so it gets its own independent check: column j of the
Hessian against the central difference (∇L(θ + εe_j) − ∇L(θ − εe_j))/(2ε) of the first-order
gradient, in float64 with ε = 1e-5 (truncation error O(ε²·‖∇³L‖), rounding O(1e-16/ε)): to
1e-6 of max |H|. The models include LayerNorm (where torch.func.hessian is wrong in torch
2.13), attention, recurrent, tied and convolutional ones.
"""

from __future__ import annotations

import pytest
import torch

from _zoo import cases, dense_hessian, per_example_ce

EPS = 1e-5
TOL = 1e-6

# embedding_padding_idx: the masked gradient of the padding row has no symmetric Jacobian
# (its "Hessian" by double backward is Jᵀ, finite differences give J); batchnorm_eval has no
# trainable statistics and is covered by norms
NAMES = ["transformer_pre_norm", "transformer_post_norm", "mha_own_params", "gru",
         "conv1d_reflect", "tied_embeddings", "norms", "direct_param", "twice_called"]


def _flat_grad(model, x, y):
    params = [p for p in model.parameters() if p.requires_grad]

    def grad_at(vec):
        with torch.no_grad():
            i = 0
            for p in params:
                p.copy_(vec[i:i + p.numel()].view_as(p))
                i += p.numel()
        loss = per_example_ce(model(x), y).mean()
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])

    flat = torch.cat([p.detach().reshape(-1) for p in params]).clone()
    return flat, grad_at


@pytest.mark.parametrize("name", NAMES)
def test_dense_hessian_matches_finite_differences(name):
    from sgdlab.probes.curvature import math_sdpa

    model, x, y = cases()[name]
    model.eval()                            # no dropout in the differences
    h = dense_hessian(model, per_example_ce, x, y)
    flat, grad_at = _flat_grad(model, x, y)
    n = flat.numel()
    cols = torch.linspace(0, n - 1, min(n, 40)).long().unique()   # 40 columns suffice
    with math_sdpa():
        for j in cols.tolist():
            e = torch.zeros_like(flat)
            e[j] = EPS
            fd = (grad_at(flat + e) - grad_at(flat - e)) / (2 * EPS)
            err = float((h[:, j] - fd).abs().max())
            assert err <= TOL * float(h.abs().max()), (name, j, err)
    grad_at(flat)                           # parameters restored
    assert float((h - h.T).abs().max()) <= 1e-10 * float(h.abs().max())
