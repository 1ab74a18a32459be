"""The recipe (SPEC §4.11) on the user's own objects: lr_find and check on architectures
sgdlab does not ship (tests/_zoo.py), against hand-written reference loops, and the
torch-lr-finder contract: model, optimizer and RNG are bit-identical before and after."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from _user_data import sequences, tokens
from sgdlab import data, optim, recipe
from sgdlab.config import ConfigError

from _zoo import CLASSES, BatchNormEval, TinyGRU, TinyTransformer, per_example_ce


def transformer(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TinyTransformer()


def gru(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TinyGRU()


def snapshot(model: nn.Module, opt: torch.optim.Optimizer | None) -> dict:
    """Deep copies of everything the contract covers."""
    return {"state": copy.deepcopy(model.state_dict()),
            "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
            "modes": [m.training for m in model.modules()],
            "opt": copy.deepcopy(opt.state_dict()) if opt is not None else None,
            "rng": torch.get_rng_state()}


def assert_identical(a: dict, b: dict) -> None:
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        assert torch.equal(a["state"][k], b["state"][k]), k
    for ga, gb in zip(a["grads"], b["grads"], strict=True):
        assert (ga is None and gb is None) or torch.equal(ga, gb)
    assert a["modes"] == b["modes"]
    assert torch.equal(a["rng"], b["rng"])
    if a["opt"] is None:
        return
    assert a["opt"]["param_groups"] == b["opt"]["param_groups"]
    sa, sb = a["opt"]["state"], b["opt"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        assert sa[i].keys() == sb[i].keys()
        for key in sa[i]:
            va, vb = sa[i][key], sb[i][key]
            assert torch.equal(va, vb) if isinstance(va, torch.Tensor) else va == vb


def warm(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
         steps: int = 3) -> None:
    """A few real steps, so that the optimizer has state worth restoring."""
    for _ in range(steps):
        opt.zero_grad()
        per_example_ce(model(x[:16]), y[:16]).mean().backward()
        opt.step()


# --------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("arch", ["transformer", "gru", "batchnorm"])
def test_lr_find_restores_model_optimizer_and_rng_bit_for_bit(arch):
    """After lr_find (which diverges at the top of the range) parameters, buffers, grads,
    modes, optimizer state/param groups and the global RNG are exactly as before."""
    if arch == "transformer":
        model, (x, y) = transformer(), tokens(96)
    elif arch == "gru":
        model, (x, y) = gru(), sequences(96)
    else:
        torch.manual_seed(0)
        model = BatchNormEval()
        model.train()  # buffers (running statistics) change during the test
        x = torch.randn(96, 6)
        y = (x.sum(1) > 0).long()
    opt = optim.create("momentum", model.parameters(), lr=0.01, momentum=0.9,
                       weight_decay=1e-4)
    warm(model, opt, x, y)
    model.eval() if arch == "transformer" else None  # a non-default mode is restored too
    before = snapshot(model, opt)
    result = recipe.lr_find(model, opt, per_example_ce, (x, y), batch_size=16,
                            start_lr=1e-4, end_lr=1e3, num_steps=40)
    assert result.diverged and 1 <= len(result.lrs) < 40
    assert_identical(before, snapshot(model, opt))


def test_check_restores_model_and_optimizer():
    model, (x, y) = gru(), sequences(64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    warm(model, opt, x, y)
    before = snapshot(model, opt)
    recipe.check(model, per_example_ce, (x, y), optimizer=opt, lr=3e-2, overfit_examples=16,
                 overfit_steps=30)
    assert_identical(before, snapshot(model, opt))
    recipe.check(model, per_example_ce, (x, y), overfit_examples=16, overfit_steps=5)
    assert_identical(before, snapshot(model, opt))  # its own Adam leaves nothing behind


# --------------------------------------------------------------------------- lr_find numbers


def reference_range_test(model: nn.Module, batches: list, lrs: list[float],
                         momentum: float = 0.0, val: tuple | None = None
                         ) -> tuple[list[float], list[float]]:
    """Hand-written range test on a copy: torch.optim.SGD, loss before each step, val loss
    (mean over all val examples, eval mode) after it."""
    m = copy.deepcopy(model)
    opt = torch.optim.SGD(m.parameters(), lr=lrs[0], momentum=momentum)
    losses, vals = [], []
    for lr, (x, y) in zip(lrs, batches, strict=False):
        for g in opt.param_groups:
            g["lr"] = lr
        loss = F.cross_entropy(m(x), y, reduction="none").mean()
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if val is not None:
            m.eval()
            with torch.no_grad():
                vals.append(F.cross_entropy(m(val[0]), val[1], reduction="sum").item()
                            / val[1].shape[0])
            m.train()
    return losses, vals


@pytest.mark.parametrize("step_mode", ["exp", "linear"])
def test_lr_find_matches_a_hand_written_range_test_on_a_transformer(step_mode):
    """Learning rates follow the exp/linear formula; losses equal a reference loop over
    the same batches (a DataLoader, read in order) to 1e-6 relative."""
    model, (x, y) = transformer(), tokens(160)
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=False)
    n, lo, hi = 12, 1e-3, 1.0
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    r = recipe.lr_find(model, opt, per_example_ce, loader, start_lr=lo, end_lr=hi,
                       num_steps=n, step_mode=step_mode, diverge_factor=1e9)
    k = torch.arange(n, dtype=torch.float64)
    expect = (lo * (hi / lo) ** (k / (n - 1)) if step_mode == "exp"
              else lo + (hi - lo) * k / (n - 1))
    assert r.step_mode == step_mode and not r.diverged
    torch.testing.assert_close(torch.tensor(r.lrs, dtype=torch.float64), expect, rtol=1e-12,
                               atol=0)
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 160, 16)]
    batches += batches  # the loader is passed over again after 10 batches
    ref, _ = reference_range_test(model, batches, r.lrs, momentum=0.9)
    torch.testing.assert_close(torch.tensor(r.losses), torch.tensor(ref), rtol=1e-6, atol=0)
    # bias-corrected EMA of SPEC §4.11 (3), β = 0.98
    avg, smooth = 0.0, []
    for i, v in enumerate(ref):
        avg = 0.98 * avg + 0.02 * v
        smooth.append(avg / (1 - 0.98 ** (i + 1)))
    torch.testing.assert_close(torch.tensor(r.smoothed), torch.tensor(smooth), rtol=1e-6, atol=0)


def test_lr_find_validation_loss_and_accumulation_on_a_gru():
    """val_data: the mean validation loss after each step equals the reference's; the
    smoothed curve follows it. accumulation_steps=2 equals one step on the mean of two
    batches' losses."""
    model, (x, y) = gru(), sequences(96)
    xv, yv = sequences(40, seed=1)
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 96, 16)]
    r = recipe.lr_find(model, torch.optim.SGD(model.parameters(), lr=0.1), per_example_ce,
                       batches, start_lr=1e-2, end_lr=1.0, num_steps=10, smoothing=0.0,
                       val_data=(xv, yv), diverge_factor=1e9)
    ref, vals = reference_range_test(model, batches + batches, r.lrs, val=(xv, yv))
    torch.testing.assert_close(torch.tensor(r.losses), torch.tensor(ref), rtol=1e-6, atol=0)
    torch.testing.assert_close(torch.tensor(r.val_losses), torch.tensor(vals), rtol=1e-6,
                               atol=0)
    assert r.smoothed == r.val_losses  # smoothing 0: the followed curve itself

    r2 = recipe.lr_find(model, torch.optim.SGD(model.parameters(), lr=0.1), per_example_ce,
                        batches, start_lr=1e-2, end_lr=1.0, num_steps=10,
                        accumulation_steps=2, diverge_factor=1e9)
    merged = [(torch.cat([x[i:i + 16], x[i + 16:i + 32]]), torch.cat([y[i:i + 16],
                                                                       y[i + 16:i + 32]]))
              for i in range(0, 96, 32)]
    ref2, _ = reference_range_test(model, merged * 4, r2.lrs)
    torch.testing.assert_close(torch.tensor(r2.losses), torch.tensor(ref2), rtol=1e-5,
                               atol=0)


def test_lr_find_on_an_sgdlab_dataset_and_tensors_agree(tmp_path):
    """Tensors (x, y) and the same tensors as an sgdlab Dataset give the same test (the
    same seeded sampler); out= writes the JSON with the settings and the plot."""
    x, y = tokens(128)
    ds = data.from_tensors(x, y, x[:8], y[:8])
    results = []
    for source in ((x, y), ds):
        model = transformer()
        results.append(recipe.lr_find(model, optim.create("adam", model.parameters()),
                                      per_example_ce, source, batch_size=32, num_steps=15,
                                      seed=3, out=tmp_path))
    assert results[0].losses == results[1].losses
    saved = json.loads((tmp_path / "lr_find.json").read_text())
    assert saved["settings"]["step_mode"] == "exp" and saved["settings"]["batch_size"] == 32
    assert (tmp_path / "lr_find.png").is_file()


class _LoaderSubclass(DataLoader):
    """Read through DataLoader's own iterator (lr_find's gather shortcut takes only the
    plain class)."""


@pytest.mark.parametrize("seeded", [True, False])
@pytest.mark.parametrize("drop_last", [False, True])
def test_lr_find_reads_a_tensor_dataloader_as_iterating_it_would(seeded, drop_last):
    """On a shuffling DataLoader over a TensorDataset lr_find gathers x[idx], y[idx] itself:
    the batches, pass after pass, and the random stream (its generator, or the global one)
    equal those of iterating the loader; the losses equal those read through the loader."""
    x, y = tokens(52)

    def loader(cls=DataLoader):
        g = torch.Generator().manual_seed(5) if seeded else None
        return cls(TensorDataset(x, y), batch_size=8, shuffle=True, drop_last=drop_last,
                   generator=g)

    passes = 3
    torch.manual_seed(1)
    ref = loader()
    want = [b for _ in range(passes) for b in ref]
    want.append(next(iter(ref)))  # into the next pass: drop_last ends a pass on a last draw
    ref_rng = (ref.generator or torch.default_generator).get_state()
    torch.manual_seed(1)
    fast = loader()
    stream = recipe._train_stream(fast, 8, 0)
    got = [next(stream) for _ in range(len(want))]
    assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in
               zip(got, want, strict=True))
    assert torch.equal((fast.generator or torch.default_generator).get_state(), ref_rng)
    results = []
    for cls in (DataLoader, _LoaderSubclass):
        torch.manual_seed(2)
        model = transformer()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        results.append(recipe.lr_find(model, opt, per_example_ce, loader(cls), num_steps=20,
                                      start_lr=1e-3, end_lr=1.0, diverge_factor=1e9))
    assert results[0].losses == results[1].losses


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"step_mode": "cosine"}, "step_mode"), ({"accumulation_steps": 0}, "accumulation_steps"),
    ({"batch_size": 1000}, "batch_size"), ({"data": "nope"}, "data"),
    ({"optimizer": None}, "optimizer"), ({"loss_fn": 3}, "loss_fn")])
def test_lr_find_bad_arguments_name_the_field(kwargs, field):
    model, (x, y) = gru(), sequences(32)
    args = {"optimizer": torch.optim.SGD(model.parameters(), lr=0.1),
            "loss_fn": per_example_ce, "data": (x, y), "batch_size": 8, "num_steps": 10}
    args.update(kwargs)
    with pytest.raises(ConfigError, match=f"^{field}"):
        recipe.lr_find(model, **args)


# --------------------------------------------------------------------------- check numbers


def test_check_on_a_transformer_matches_references():
    """initial loss = the mean cross-entropy over all examples (computed here directly),
    compared with ln C for C = the output width; overfit passes on 20 examples."""
    model, (x, y) = transformer(), tokens(100)
    init, overfit = recipe.check(model, per_example_ce, (x, y), lr=1e-2, overfit_examples=20,
                                 overfit_steps=200)
    with torch.no_grad():
        ref = F.cross_entropy(model(x), y).item()
    assert init.values["loss"] == pytest.approx(ref, rel=1e-6)
    assert init.values["ln_c"] == pytest.approx(math.log(CLASSES), rel=1e-12)
    assert init.passed and overfit.passed, overfit.detail
    assert overfit.values["accuracy"] == 1.0 and overfit.values["final_loss"] <= 0.05


def test_check_on_a_gru_through_a_dataloader_and_num_classes():
    """A DataLoader is read once for the initial loss (all 64 examples) and for the first
    examples of the overfit sample; num_classes overrides the output width."""
    model, (x, y) = gru(), sequences(64)
    loader = DataLoader(TensorDataset(x, y), batch_size=24)
    init, overfit = recipe.check(model, per_example_ce, loader, lr=3e-2, overfit_examples=16,
                                 overfit_steps=300, num_classes=4)
    with torch.no_grad():
        ref = F.cross_entropy(model(x), y).item()
    assert init.values["loss"] == pytest.approx(ref, rel=1e-6)
    assert init.values["ln_c"] == pytest.approx(math.log(4))
    assert overfit.passed, overfit.detail
    with pytest.raises(ConfigError, match="^overfit_examples must be at most the 64"):
        recipe.check(model, per_example_ce, loader, overfit_examples=65)


def test_check_regression_on_user_objects():
    """Float targets: regression, no ln C comparison; the overfit check drives ½‖f − y‖² down."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1))
    x = torch.randn(40, 3)
    y = x[:, :1] * 2 - x[:, 1:2]

    def half_sq(out, t):
        return 0.5 * (out - t).pow(2).sum(-1)

    init, overfit = recipe.check(model, half_sq, (x, y), lr=1e-2, overfit_examples=10,
                                 overfit_steps=400, overfit_loss=1e-2)
    assert init.passed and "not applicable" in init.detail
    with torch.no_grad():
        assert init.values["loss"] == pytest.approx(half_sq(model(x), y).mean().item(),
                                                    rel=1e-6)
    assert overfit.passed and overfit.values["accuracy"] is None, overfit.detail
