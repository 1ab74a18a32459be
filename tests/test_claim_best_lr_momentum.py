"""Claim 14 (SPEC §4.14): the edge formula and ladder, judge() on constructed numbers (PASS,
FAIL, INCONCLUSIVE), the shared cache with claim 6, a smoke run."""

from __future__ import annotations

import copy
import math

import pytest

from sgdlab.experiments import best_lr_momentum as bl
from sgdlab.experiments import momentum as mo
from sgdlab.experiments.base import Context
from test_claim_momentum import _m as grid_m


def test_edge_and_ladder():
    assert bl.edge_sharpness(0.4, 0.0) == pytest.approx(5.0)
    assert bl.edge_sharpness(1.6, 0.9) == pytest.approx(23.75)
    pts = bl.ladder()
    for b in bl.EDGE_BETAS:
        edges = sorted(bl.edge_sharpness(lr, bb) for lr, bb in pts if bb == b)
        for t in bl.EDGE_TARGETS:
            assert any(math.isclose(e, t, rel_tol=1e-6) for e in edges)
    assert (bl.MATCHED_ETA, 0.0) in pts and (bl.MATCHED_ETA, 0.9) in pts


def _m(q0=0.9, q9=0.9, ratio9=2.0, dead9=False, seeds=3, shift=0.0, loss9=1.0):
    """A measure() output: claim 6's grid (from its test helper) and an edge ladder with
    end sharpness q·λ_edge where the edge binds, else a β-independent λ_free."""
    net = grid_m(shift={0.9: shift} if shift else None)["net"]
    runs = []
    for s in range(seeds):
        rows = []
        for lr, b in bl.ladder():
            edge = bl.edge_sharpness(lr, b)
            wobble = 1 + 0.02 * (s - 1)
            if b == 0.0:
                lam = min(3.0, q0 * edge) * wobble
            elif lr == bl.MATCHED_ETA:
                lam = ratio9 * min(3.0, q0 * bl.edge_sharpness(lr, 0.0)) * wobble
            else:
                lam = min(3.0, q9 * edge) * wobble
            loss = 1.0
            if b == 0.9 and dead9 and edge <= bl.LAMBDA_REF * 1.0001:
                lam, loss = 0.2, 2.5
            if b == 0.9 and lr == bl.MATCHED_ETA:
                loss = loss9
            rows.append({"lr": lr, "beta": b, "loss": loss, "diverged": False,
                         "lambda_max": lam, "lambda_edge": edge})
        runs.append({"rows": rows, "seconds": 1.0})
    return {"net": net, "edge": {"seeds": list(range(seeds)), "steps": 800,
                                 "hess_examples": 1000, "hess_iters": 100, "runs": runs}}


def _v(m):
    return [c.verdict for c in bl.judge(m)]


def test_judge_on_constructed_numbers():
    checks = bl.judge(_m())
    assert [c.basis for c in checks] == ["notes", "derived", "derived", "derived"]
    assert _v(_m()) == ["PASS"] * 4
    assert checks[2].finding                                  # β matters near the edge
    assert _v(_m(shift=1.2))[0] == "FAIL"                     # best η′ moves 1.2 octaves
    assert _v(_m(q0=0.3))[1] == "FAIL"                        # well below the edge
    assert _v(_m(q0=1.6))[3] == "FAIL"                        # above the edge
    assert _v(_m(dead9=True))[1] == "INCONCLUSIVE"            # β = 0.9 never at its edge
    m = _m(dead9=True)
    assert "chance loss" in bl.judge(m)[1].finding
    assert _v(_m(ratio9=0.5))[2] == "FAIL"                    # momentum flatter
    assert _v(_m(seeds=1))[1] == "INCONCLUSIVE"               # no se from one seed
    assert _v(_m(ratio9=1.0))[2] == "INCONCLUSIVE"            # no difference
    dead = copy.deepcopy(_m())
    for run in dead["edge"]["runs"]:
        for r in run["rows"]:
            if r["lambda_edge"] <= bl.LAMBDA_REF * 1.0001:
                r.update(lambda_max=None, loss=None, diverged=True)
    assert _v(dead)[1] == "INCONCLUSIVE"                      # every near-edge run diverged
    assert _v(dead)[2] == "PASS"            # plain SGD diverged at η′ = 1.6, momentum trained
    one = copy.deepcopy(_m(ratio9=1.0))
    for r in one["edge"]["runs"][0]["rows"]:
        if r["beta"] == 0.0 and r["lr"] == bl.MATCHED_ETA:
            r.update(lambda_max=None, loss=None, diverged=True)
    assert _v(one)[2] == "INCONCLUSIVE"                       # one seed of three diverged


def test_grid_is_claim_6s_cache(tmp_path):
    """Claim 14 reads claim 6's grid entries: after claim 6's smoke run no grid is trained."""
    ctx = Context(tmp_path, mode="smoke")
    mo.network_grid(ctx, mo.BUDGETS["smoke"]["net"])
    before = set((tmp_path / "cache").iterdir())
    res = bl.run(ctx)
    new = set((tmp_path / "cache").iterdir()) - before
    assert res.error is None and len(res.checks) == 4
    assert len(new) == len(bl.BUDGETS["smoke"]["edge"]["seeds"])   # only the edge ladder
    assert res.figures == ["figures/14-best-lr-momentum_edge.png"]
    assert (tmp_path / res.figures[0]).is_file()
