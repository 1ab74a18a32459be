"""Tests for sgdlab.recipe (SPEC §4.11): the learning-rate range test and the sanity checks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from sgdlab import cli, data, recipe
from sgdlab.config import ConfigError, resolve


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    """A private SGDLAB_CACHE for this module: mnist1d is generated once, outside $HOME."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SGDLAB_CACHE", str(tmp_path_factory.mktemp("recipe-cache")))
        yield


def mnist1d(**kw):
    values = dict(dataset="mnist1d", model="mlp", optimizer="adam", lr=1e-2, steps=10,
                  batch_size=64, device="cpu")
    values.update(kw)
    return resolve(**values)


def linreg(**kw):
    values = dict(dataset="linreg", model="linear", optimizer="sgd", lr=0.1, steps=10,
                  batch_size=128, device="cpu", model_options={"bias": False})
    values.update(kw)
    return resolve(**values)


# --------------------------------------------------------------------------- lr_find


def test_lr_find_geometric_range_and_suggestion():
    cfg = mnist1d()
    before = cfg.to_dict()
    r = recipe.lr_find(cfg, start_lr=1e-5, end_lr=1e-1, num_steps=30)
    assert cfg.to_dict() == before                      # the caller's config is untouched
    assert not r.diverged
    assert len(r.lrs) == len(r.losses) == len(r.smoothed) == 30
    lrs = np.asarray(r.lrs)
    assert lrs[0] == pytest.approx(1e-5) and lrs[-1] == pytest.approx(1e-1)
    np.testing.assert_allclose(lrs[1:] / lrs[:-1], (1e-1 / 1e-5) ** (1 / 29), rtol=1e-9)
    assert all(math.isfinite(v) for v in r.losses)
    assert 1e-5 <= r.suggestion <= 1e-1
    assert r.suggestion == pytest.approx(r.min_loss_lr / 10)
    assert r.suggestion < r.min_loss_lr
    assert r.min_loss == pytest.approx(min(r.smoothed[3:]))
    assert 1e-5 <= r.steepest_lr <= r.min_loss_lr
    assert r.losses[0] == pytest.approx(math.log(10), rel=0.1)


def test_lr_find_smoothing_is_bias_corrected_ema():
    r = recipe.lr_find(mnist1d(), start_lr=1e-5, end_lr=1e-3, num_steps=12, smoothing=0.9)
    avg = 0.0
    for k, (loss, smooth) in enumerate(zip(r.losses, r.smoothed, strict=True)):
        avg = 0.9 * avg + 0.1 * loss
        assert smooth == pytest.approx(avg / (1 - 0.9 ** (k + 1)), rel=1e-12)
    r0 = recipe.lr_find(mnist1d(), start_lr=1e-5, end_lr=1e-3, num_steps=12, smoothing=0)
    assert r0.smoothed == pytest.approx(r0.losses)


def test_lr_find_stops_at_divergence():
    r = recipe.lr_find(mnist1d(optimizer="sgd", lr=None), start_lr=1e-3, end_lr=1e6,
                       num_steps=60)
    assert r.diverged
    assert len(r.lrs) < 60
    assert r.lrs[-1] < 1e6
    assert all(math.isfinite(v) for v in r.losses + r.smoothed)
    assert 1e-3 <= r.suggestion < r.min_loss_lr


def test_lr_find_linreg_suggestion_below_stability_limit():
    """SGD on ½·mean (xᵀΦ − y)² is stable for η < 2/h_max (h_max: top Hessian eigenvalue)."""
    cfg = linreg()
    h_max = float(np.linalg.eigvalsh(data.load("linreg", seed=0).meta["hessian"]).max())
    r = recipe.lr_find(cfg, start_lr=1e-4, end_lr=100.0, num_steps=150)
    assert r.diverged and len(r.lrs) < 150               # 100 ≫ 2/h_max: it must blow up
    assert r.suggestion < 2 / h_max
    assert r.steepest_lr < 2 / h_max
    assert r.lrs[-1] > 2 / h_max                         # it stopped only past the limit


def test_lr_find_writes_json_and_plot(tmp_path):
    out = tmp_path / "lf"
    r = recipe.lr_find(linreg(), start_lr=1e-4, end_lr=10.0, num_steps=20, out=out)
    record = json.loads((out / "lr_find.json").read_text())
    assert record["lrs"] == pytest.approx(r.lrs)
    assert record["losses"] == pytest.approx(r.losses)
    assert record["smoothed_losses"] == pytest.approx(r.smoothed)
    assert record["suggestion"] == pytest.approx(r.suggestion)
    assert record["settings"]["num_steps"] == 20
    assert (out / "lr_find.png").is_file()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_lr_find_without_out_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe.lr_find(linreg(lr=None), start_lr=1e-3, end_lr=1.0, num_steps=10)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, name", [
    ({"start_lr": 0.0}, "start_lr"),
    ({"start_lr": -1.0}, "start_lr"),
    ({"end_lr": float("inf")}, "end_lr"),
    ({"start_lr": 1.0, "end_lr": 0.5}, "end_lr"),
    ({"num_steps": 5}, "num_steps"),
    ({"num_steps": 20.0}, "num_steps"),
    ({"smoothing": 1.0}, "smoothing"),
    ({"diverge_factor": 1.0}, "diverge_factor"),
])
def test_lr_find_bad_arguments(kwargs, name):
    with pytest.raises(ConfigError, match=name) as err:
        recipe.lr_find(linreg(), **kwargs)
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- check


def test_check_passes_on_mnist1d_mlp():
    cfg = mnist1d()
    before = cfg.to_dict()
    init, overfit = recipe.check(cfg)
    assert cfg.to_dict() == before
    assert init.passed, init.detail
    assert abs(init.values["loss"] - math.log(10)) <= 0.1 * math.log(10)
    assert "ln 10 = 2.3026" in init.detail and "gap" in init.detail
    assert overfit.passed, overfit.detail
    assert overfit.values["accuracy"] == 1.0 and overfit.values["final_loss"] <= 0.05
    assert 0 <= overfit.values["first_below_step"] <= 500
    assert "accuracy 100.0%" in overfit.detail and "first <= 0.05 at step" in overfit.detail


def test_check_overfit_fails_with_tiny_lr():
    init, overfit = recipe.check(mnist1d(optimizer="sgd", lr=1e-6), overfit_steps=50)
    assert init.passed
    assert not overfit.passed
    assert overfit.values["final_loss"] > 0.05
    assert f"final loss {overfit.values['final_loss']:.4g}" in overfit.detail
    assert "accuracy" in overfit.detail and "never <= 0.05" in overfit.detail
    assert "lr 1e-06" in overfit.detail


def test_check_initial_loss_fails_outside_tolerance():
    init, _ = recipe.check(mnist1d(), overfit_steps=1, init_tolerance=1e-6)
    assert not init.passed
    assert f"{init.values['loss']:.4f} vs ln 10 = 2.3026" in init.detail


def test_check_regression_skips_ln_c():
    init, overfit = recipe.check(linreg(), overfit_steps=20)
    assert init.passed and "not applicable" in init.detail
    assert math.isfinite(init.values["loss"])
    assert overfit.values["accuracy"] is None and "final loss" in overfit.detail


@pytest.mark.parametrize("kwargs, name", [
    ({"overfit_examples": 0}, "overfit_examples"),
    ({"overfit_examples": 10**7}, "overfit_examples"),
    ({"overfit_steps": 0}, "overfit_steps"),
    ({"init_tolerance": 0.0}, "init_tolerance"),
    ({"overfit_loss": -1.0}, "overfit_loss"),
])
def test_check_bad_arguments(kwargs, name):
    with pytest.raises(ConfigError, match=name):
        recipe.check(linreg(dataset_options={"n_train": 200}), **kwargs)


# --------------------------------------------------------------------------- command line

MNIST1D_ARGS = ["--dataset", "mnist1d", "--model", "mlp", "--device", "cpu"]


def test_cli_lr_find(tmp_path, capsys):
    out = tmp_path / "lf"
    code = cli.main(["lr-find", *MNIST1D_ARGS, "--optimizer", "adam", "--batch-size", "64",
                     "--num-steps", "20", "--start-lr", "1e-4", "--end-lr", "1e-1",
                     "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    assert "range test: 20 steps from 0.0001 to 0.1" in text
    assert "suggested lr:" in text and "steepest descent at lr" in text
    assert (out / "lr_find.json").is_file() and (out / "lr_find.png").is_file()


def test_cli_lr_find_bad_argument(capsys):
    code = cli.main(["lr-find", *MNIST1D_ARGS, "--num-steps", "5"])
    assert code == 2
    assert "num_steps" in capsys.readouterr().err


def test_cli_check_pass_and_fail(capsys):
    code = cli.main(["check", *MNIST1D_ARGS, "--optimizer", "adam", "--lr", "1e-2",
                     "--overfit-steps", "200"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "PASS  initial loss: " in text and "PASS  overfit 50 examples: " in text

    code = cli.main(["check", *MNIST1D_ARGS, "--optimizer", "sgd", "--lr", "1e-6",
                     "--overfit-steps", "30"])
    text = capsys.readouterr().out
    assert code == 1
    assert "PASS  initial loss: " in text
    assert "FAIL  overfit 50 examples: final loss" in text and "accuracy" in text
