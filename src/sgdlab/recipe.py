"""Choosing hyper-parameters (SPEC §4.11): the learning-rate range test and two sanity checks.

SPEC §4.11 gives a recipe for a new problem:

1. the loss at initialisation should be ≈ ln C for C balanced classes (an uninformed model
   predicts the uniform distribution, whose cross-entropy is ln C);
2. the model should be able to overfit a small sample to near-zero loss (otherwise the model,
   the loss or the optimizer is broken, or the learning rate is far off);
3. a learning-rate range test finds an η at which the loss drops quickly.

:func:`check` runs (1) and (2) (``sgdlab check``); :func:`lr_find` runs (3)
(``sgdlab lr-find``). Both build fresh runs with :func:`sgdlab.train.build` from a copy of
the configuration; the caller's config is never modified.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sgdlab import train
from sgdlab.config import ConfigError, TrainConfig, from_dict

__all__ = ["CheckResult", "LRFindResult", "check", "lr_find"]


# --------------------------------------------------------------------------- helpers


def _variant(cfg: TrainConfig, **changes: Any) -> TrainConfig:
    """A validated copy of ``cfg`` with ``changes`` (deep copy: ``cfg`` is untouched)."""
    if not isinstance(cfg, TrainConfig):
        raise ConfigError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    return from_dict({**cfg.to_dict(), **changes})


def _positive_number(name: str, value: Any) -> float:
    ok = (not isinstance(value, bool) and isinstance(value, (int, float))
          and math.isfinite(value) and value > 0)
    if not ok:
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _integer(name: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ConfigError(f"{name} must be an integer >= {lo}, got {value!r}")
    return value


def _write_json(path: Path, obj: Any) -> None:
    """Atomic JSON write (``sgdlab.metrics_log.atomic_write_json`` when available)."""
    try:
        from sgdlab.metrics_log import atomic_write_json
    except ImportError:  # pragma: no cover - the shared helper is part of the package
        import json
        import tempfile

        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(obj, fh, indent=2)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return
    atomic_write_json(path, obj)


# --------------------------------------------------------------------------- range test


@dataclass(frozen=True)
class LRFindResult:
    """Outcome of :func:`lr_find`.

    ``lrs[k]`` is the learning rate of step k and ``losses[k]`` the mini-batch loss computed
    just before that step (so it reflects steps 0..k−1; fastai's convention); ``smoothed[k]``
    is the bias-corrected exponential moving average of ``losses[:k+1]``. Non-finite losses
    are never recorded: the test stops before them.

    ``min_loss``/``min_loss_lr``: the lowest smoothed loss and its learning rate.
    ``steepest_lr``: the learning rate of the most negative slope d smoothed / d ln η at or
    before the minimum. ``suggestion``: ``min_loss_lr / 10`` clipped to ``[start_lr, end_lr]``
    (see :func:`lr_find`). ``diverged``: the test stopped early because the loss blew up.
    """

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float
    min_loss: float
    min_loss_lr: float
    steepest_lr: float
    diverged: bool
    rule: str = "min_loss_lr / 10"

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (what ``lr_find.json`` holds, without the settings)."""
        return {"lrs": list(self.lrs), "losses": list(self.losses),
                "smoothed_losses": list(self.smoothed), "suggestion": self.suggestion,
                "rule": self.rule, "min_loss": self.min_loss, "min_loss_lr": self.min_loss_lr,
                "steepest_lr": self.steepest_lr, "diverged": self.diverged}


def lr_find(cfg: TrainConfig, start_lr: float = 1e-6, end_lr: float = 10.0,
            num_steps: int = 200, smoothing: float = 0.98, diverge_factor: float = 4.0,
            out: str | os.PathLike | None = None) -> LRFindResult:
    r"""Learning-rate range test (SPEC §4.11 (3); Smith 2017, "Cyclical learning rates";
    fastai's ``lr_find``).

    A fresh run is built from ``cfg`` (its model, optimizer, batch size and sampling; the
    schedule is ignored). Step k = 0, …, num_steps − 1 draws a mini-batch, records its loss
    ℓ_k at the current parameters and takes one optimizer step with

        η_k = start_lr · (end_lr / start_lr)^{k / (num_steps − 1)}

    (equal spacing in log η). The loss is smoothed as fastai does, with bias correction:

        a_k = β a_{k−1} + (1 − β) ℓ_k,  a_{−1} = 0,    s_k = a_k / (1 − β^{k+1}),

    β = ``smoothing``. The test stops, with ``diverged=True``, when ℓ_k is not finite (that
    step is not recorded) or when s_k > ``diverge_factor`` · min_{j<k} s_j (that step is
    recorded).

    Reading the curve: s(η) is flat while η is too small to move, falls where η is useful
    and turns up where η exceeds the stability limit (≈ 2/λ_max of the Hessian for plain
    SGD on a quadratic). The rule used for ``suggestion`` is the classic one: one tenth of
    the learning rate at the lowest smoothed loss, ``min_loss_lr / 10``, clipped to
    ``[start_lr, end_lr]`` — the minimum sits just before the blow-up, and a factor 10 backs
    off into the region where the loss falls steadily. ``steepest_lr`` (argmin over k ≤ the
    minimum of ds/d ln η, central differences) is reported as the other common choice. Both
    look only past the first ``num_steps // 10`` steps (as fastai does: the bias-corrected
    average of the first few batches is one noisy batch loss), unless the test stopped
    there.

    Args:
        cfg: the run to test; never modified.
        start_lr, end_lr: the range, 0 < start_lr < end_lr.
        num_steps: planned steps (at least 10).
        smoothing: β in [0, 1).
        diverge_factor: stop when the smoothed loss exceeds this multiple (> 1) of its best.
        out: a directory; when given, ``out/lr_find.json`` (learning rates, raw and smoothed
            losses, suggestion, settings) is written atomically and ``out/lr_find.png`` is
            plotted (smoothed loss vs learning rate).

    Raises:
        ConfigError: a bad argument (one line naming it) or a bad config.
    """
    start = _positive_number("start_lr", start_lr)
    end = _positive_number("end_lr", end_lr)
    if end <= start:
        raise ConfigError(f"end_lr must be greater than start_lr={start:g}, got {end_lr!r}")
    n = _integer("num_steps", num_steps, 10)
    ok = (not isinstance(smoothing, bool) and isinstance(smoothing, (int, float))
          and 0 <= smoothing < 1)
    if not ok:
        raise ConfigError(f"smoothing must be a number in [0, 1), got {smoothing!r}")
    beta = float(smoothing)
    ok = (not isinstance(diverge_factor, bool) and isinstance(diverge_factor, (int, float))
          and math.isfinite(diverge_factor) and diverge_factor > 1)
    if not ok:
        raise ConfigError(f"diverge_factor must be a finite number > 1, got {diverge_factor!r}")

    run_cfg = _variant(cfg, lr=start, steps=n, epochs=None, schedule="constant",
                       schedule_options={}, warmup_steps=0, average="none", out=None,
                       tensorboard=False)
    run = train.build(run_cfg)
    model, opt = run.model, run.optimizer
    model.train()
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    avg, best, diverged = 0.0, math.inf, False
    for k in range(n):
        lr = start * (end / start) ** (k / (n - 1))
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = run.data.batch(run.sampler.next_batch())
        loss = run.loss_fn(model(x), y)
        value = float(loss.detach())
        if not math.isfinite(value):
            if k == 0:
                raise ConfigError(f"lr_find: the loss at initialisation is {value}; "
                                  "check the data and the model")
            diverged = True
            break
        avg = beta * avg + (1 - beta) * value
        smooth = avg / (1 - beta ** (k + 1))
        lrs.append(lr)
        losses.append(value)
        smoothed.append(smooth)
        if k > 0 and smooth > diverge_factor * best:
            diverged = True
            break
        best = min(best, smooth)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    s = np.asarray(smoothed)
    # fastai skips the first tenth of the planned steps: the bias-corrected average of the
    # first few batches is one noisy batch loss, not yet a trend.
    skip = n // 10 if len(s) > n // 10 + 1 else 0
    i_min = skip + int(np.argmin(s[skip:]))
    if i_min - skip >= 1:
        seg = slice(skip, i_min + 1)
        slope = np.gradient(s[seg], np.log(np.asarray(lrs[seg])))
        i_steep = skip + int(np.argmin(slope))
    else:
        i_steep = i_min
    min_lr = lrs[i_min]
    result = LRFindResult(lrs=lrs, losses=losses, smoothed=smoothed,
                          suggestion=min(max(min_lr / 10, start), end),
                          min_loss=float(s[i_min]), min_loss_lr=min_lr,
                          steepest_lr=lrs[i_steep], diverged=diverged)
    if out is not None:
        out_dir = Path(out)
        out_dir.mkdir(parents=True, exist_ok=True)
        record = result.to_dict()
        record["settings"] = {"start_lr": start, "end_lr": end, "num_steps": n,
                              "smoothing": beta, "diverge_factor": float(diverge_factor),
                              "steps_run": len(lrs)}
        record["config"] = run_cfg.to_dict()
        _write_json(out_dir / "lr_find.json", record)
        try:
            from sgdlab.plots import plot_lr_find
            plot_lr_find(result.lrs, result.smoothed, result.suggestion,
                         out_dir / "lr_find.png")
        except Exception as err:  # the plot is a convenience; the JSON holds the numbers
            print(f"sgdlab: lr_find plot not written ({err})", file=sys.stderr)
    return result


# --------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class CheckResult:
    """One sanity check of :func:`check`: its ``name``, whether it ``passed``, a one-line
    ``detail`` with the numbers behind the verdict, and those numbers in ``values``."""

    name: str
    passed: bool
    detail: str
    values: dict[str, Any] = field(default_factory=dict)


@torch.no_grad()
def _loss_and_acc(run: train.Run, x: torch.Tensor, y: torch.Tensor,
                  chunk: int = 2048) -> tuple[float, float | None]:
    """Mean loss (and accuracy for classification) of ``run.model`` on (x, y), in chunks."""
    total, correct = 0.0, 0
    for i in range(0, x.shape[0], chunk):
        out = run.model(x[i:i + chunk])
        yb = y[i:i + chunk]
        total += float(run.per_example_loss_fn(out, yb).sum())
        if run.data.task == "classification":
            correct += int((out.argmax(dim=1) == yb).sum())
    n = max(1, x.shape[0])
    return total / n, (correct / n if run.data.task == "classification" else None)


def _initial_loss_check(run: train.Run, tolerance: float) -> CheckResult:
    ds = run.data
    loss0, _ = _loss_and_acc(run, ds.x_train, ds.y_train)
    name = "initial loss"
    if not math.isfinite(loss0):
        return CheckResult(name, False, f"loss at initialisation is {loss0} on the "
                                        f"{ds.n_train} training examples", {"loss": loss0})
    if ds.task != "classification":
        return CheckResult(name, True, f"{loss0:.4f} on the {ds.n_train} training examples; "
                                       f"the ln C comparison is not applicable to task "
                                       f"{ds.task!r}", {"loss": loss0})
    c = int(ds.num_classes)
    ln_c = math.log(c)
    gap = abs(loss0 - ln_c) / ln_c
    passed = gap <= tolerance
    counts = torch.bincount(ds.y_train.cpu(), minlength=c).double()
    p = counts / counts.sum()
    entropy = float(-(p[p > 0] * p[p > 0].log()).sum())
    detail = (f"{loss0:.4f} vs ln {c} = {ln_c:.4f} (gap {100 * gap:.1f}%, "
              f"tolerance {100 * tolerance:g}%)")
    if abs(entropy - ln_c) > 0.01 * ln_c:
        detail += f"; classes are unbalanced (label entropy {entropy:.4f})"
    if not passed:
        detail += ("; far from ln C: check the output layer's initial scale, the labels and "
                   "the loss")
    return CheckResult(name, passed, detail, {"loss": loss0, "ln_c": ln_c, "gap": gap,
                                              "label_entropy": entropy})


def _overfit_check(run: train.Run, n: int, steps: int, threshold: float) -> CheckResult:
    ds, model, opt = run.data, run.model, run.optimizer
    x, y = ds.x_train[:n], ds.y_train[:n]
    lr = opt.param_groups[0]["lr"]
    name = f"overfit {n} examples"
    setting = f"{run.config.optimizer} lr {lr:.3g}, {steps} full-batch steps"
    first_below: int | None = None
    for k in range(steps):
        loss = run.loss_fn(model(x), y)
        value = float(loss.detach())
        if not math.isfinite(value):
            return CheckResult(name, False, f"loss became {value} at step {k} ({setting}); "
                                            "lower the learning rate",
                               {"final_loss": value, "diverged_step": k, "lr": lr})
        if first_below is None and value <= threshold:
            first_below = k
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    final, acc = _loss_and_acc(run, x, y)
    if first_below is None and math.isfinite(final) and final <= threshold:
        first_below = steps
    passed = math.isfinite(final) and final <= threshold and (acc is None or acc == 1.0)
    below = (f"first <= {threshold:g} at step {first_below}" if first_below is not None
             else f"never <= {threshold:g}")
    acc_text = f", accuracy {100 * acc:.1f}%" if acc is not None else ""
    detail = f"final loss {final:.4g}{acc_text}; {below} ({setting})"
    if not passed:
        need = f"loss <= {threshold:g}" + (" and 100% accuracy" if acc is not None else "")
        detail += f"; needs {need}"
    return CheckResult(name, passed, detail, {"final_loss": final, "accuracy": acc,
                                              "first_below_step": first_below, "lr": lr})


def check(cfg: TrainConfig, overfit_examples: int = 50, overfit_steps: int = 500,
          init_tolerance: float = 0.1, overfit_loss: float = 0.05) -> list[CheckResult]:
    r"""Sanity checks of SPEC §4.11 (1)–(2) on a fresh run built from ``cfg``.

    1. *initial loss*: the mean training-set loss L₀ of the model at initialisation (in
       training mode, as the first step sees it). A classifier that knows nothing predicts
       p = 1/C for each of C classes, so with balanced classes

           L₀ ≈ −ln(1/C) = ln C   (ln 10 ≈ 2.303).

       PASS when |L₀ − ln C| ≤ ``init_tolerance`` · ln C. The detail gives both numbers, the
       relative gap, and the label entropy −Σ p_c ln p_c when the classes are unbalanced
       (the right reference then). For regression the loss is reported and the comparison
       is marked not applicable (passed).
    2. *overfit*: the first ``overfit_examples`` training examples, full batch, for
       ``overfit_steps`` steps of the configured optimizer at the configured learning rate
       (constant: no schedule, no warm-up), from the same initialisation. A working model and
       optimizer drive the loss on so few examples to ≈ 0. PASS when the final loss
       ≤ ``overfit_loss`` and, for classification, the accuracy on them is 100 %. The detail
       gives the final loss, the accuracy and the first step at which the loss was
       ≤ ``overfit_loss``.

    Args:
        cfg: the configuration to check; never modified.
        overfit_examples: size of the sample, 1 … N.
        overfit_steps: steps for the overfit check (≥ 1).
        init_tolerance: allowed relative gap to ln C, in (0, ∞).
        overfit_loss: the "near zero" loss threshold, in (0, ∞).

    Returns:
        ``[initial-loss result, overfit result]`` (:class:`CheckResult`).

    Raises:
        ConfigError: a bad argument (one line naming it) or a bad config.
    """
    n = _integer("overfit_examples", overfit_examples, 1)
    steps = _integer("overfit_steps", overfit_steps, 1)
    tol = _positive_number("init_tolerance", init_tolerance)
    threshold = _positive_number("overfit_loss", overfit_loss)
    run_cfg = _variant(cfg, steps=steps, epochs=None, schedule="constant", schedule_options={},
                       warmup_steps=0, average="none", out=None, tensorboard=False)
    run = train.build(run_cfg)
    if n > run.data.n_train:
        raise ConfigError(f"overfit_examples must be at most the {run.data.n_train} training "
                          f"examples, got {n}")
    run.model.train()
    return [_initial_loss_check(run, tol), _overfit_check(run, n, steps, threshold)]
