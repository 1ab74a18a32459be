"""Figures of a run (``RUN/plots/*.png``) and general plotting helpers.

:func:`plot_run` reads ``RUN/metrics.jsonl`` (see :mod:`sgdlab.metrics_log`) and writes

    loss.png           batch loss, eval train/test loss, full train loss, averaged-model loss
    accuracy.png       train/test accuracy, averaged-model accuracy (classification only)
    lr.png             learning rate
    norms.png          gradient and weight norms (when logged)
    probe_<name>.png   every numeric key of each probe record ``name`` against step; own
                       figures for ``sharpness`` (λ_max against 2/η and 2(1+β)/η) and
                       ``hessian_trace`` (tr H, tr H² with ±2se bands): PROBE_FIGURES

:func:`plot_lr_find` draws the learning-rate range test and :func:`plot_curves` any set of
named (x, y) curves. Figures are built with :class:`matplotlib.figure.Figure` and the Agg
canvas (no pyplot, no global state, no display needed) and written atomically: rendered to
memory, then a temporary file in the destination directory is renamed over the target.
Non-finite points (a diverged run) are left out of the curves and counted in a note.
"""

from __future__ import annotations

import io
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sgdlab.metrics_log import atomic_write_bytes, by_kind, read_metrics

__all__ = ["plot_curves", "plot_lr_find", "plot_run"]

DPI = 100
FIGSIZE = (7.0, 4.5)

#: Keys of a probe record that are not measurements.
_PROBE_META = frozenset({"kind", "step", "name", "epoch", "wall_time"})

#: Log-scale a positive quantity other than the loss once it spans this factor.
_LOG_RANGE = 20.0


# --------------------------------------------------------------------------- helpers


def new_figure(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = FIGSIZE,
            sharex: bool = False) -> tuple[Figure, np.ndarray]:
    """A matplotlib Figure (no pyplot state, Agg canvas) with a grid of axes (always a 2-D
    array), sized for the report and run plots."""
    # fixed margins (in inches) instead of a layout engine, which would double the time
    fig = Figure(figsize=figsize, dpi=DPI)
    FigureCanvasAgg(fig)
    w, h = figsize
    fig.subplots_adjust(left=0.85 / w, right=1 - 0.2 / w, bottom=0.55 / h, top=1 - 0.4 / h,
                        hspace=0.35 * nrows / max(h, 1e-9) if nrows > 1 else 0.2,
                        wspace=0.3)
    axes = fig.subplots(nrows, ncols, sharex=sharex, squeeze=False)
    return fig, axes


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically (temporary name, then rename)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, pil_kwargs={"compress_level": 3})
    return atomic_write_bytes(path, buf.getvalue())


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _series(records: Sequence[Mapping[str, Any]], key: str,
            x: str = "step") -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of the records that have both keys as numbers (non-finite y kept), x-sorted."""
    pairs = [(r[x], r[key]) for r in records
             if _is_number(r.get(x)) and _is_number(r.get(key))]
    if not pairs:
        return np.empty(0), np.empty(0)
    arr = np.asarray(pairs, dtype=float)
    order = np.argsort(arr[:, 0], kind="stable")
    return arr[order, 0], arr[order, 1]


def _finite(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray, int]:
    """Drop points with a non-finite coordinate; also return how many were dropped."""
    x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in length: {x.size} != {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep], int((~keep).sum())


def _note(ax, text: str) -> None:
    ax.text(0.01, 0.01, text, transform=ax.transAxes, fontsize=8, color="0.35",
            ha="left", va="bottom")


def _wants_log(values: Sequence[np.ndarray], ratio: float | None = None) -> bool:
    """All values positive (and, with ``ratio``, spanning at least that factor)."""
    ys = [v for v in values if v.size]
    if not ys:
        return False
    y = np.concatenate(ys)
    if not np.all(y > 0):
        return False
    return ratio is None or float(y.max()) >= ratio * float(y.min())


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("._") or "unnamed"


# --------------------------------------------------------------------------- plot_run


def _plot_lines(path: Path, series: list[tuple[str, np.ndarray, np.ndarray, dict]],
                title: str, ylabel: str, log: str) -> Path | None:
    """One axes of step curves; ``log`` is "always-positive", "range" or "never"."""
    kept, dropped, first_bad = [], 0, math.inf
    for label, x, y, style in series:
        bad = ~np.isfinite(y)
        if bad.any():
            first_bad = min(first_bad, float(x[bad].min()))
        fx, fy, n = _finite(x, y)
        dropped += n
        if fy.size:
            kept.append((label, fx, fy, style))
    if not kept:
        return None
    fig, axes = new_figure()
    ax = axes[0, 0]
    for label, x, y, style in kept:
        ax.plot(x, y, label=label, **style)
    if log != "never" and _wants_log([y for _, _, y, _ in kept],
                                     None if log == "always-positive" else _LOG_RANGE):
        ax.set_yscale("log")
    if math.isfinite(first_bad):
        ax.axvline(first_bad, color="tab:red", linestyle=":", linewidth=1,
                   label=f"first non-finite (step {first_bad:g})")
    if dropped:
        _note(ax, f"{dropped} non-finite value{'s' if dropped != 1 else ''} omitted")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


_LINE = {"linewidth": 1.0, "alpha": 0.7}
_EVAL = {"linewidth": 1.2, "marker": "o", "markersize": 3}


def _probe_figure(path: Path, name: str, records: list[dict[str, Any]]) -> Path | None:
    """``probe_<name>.png``: the instrument's own figure where :data:`PROBE_FIGURES` has one,
    else every numeric key of the records against step, one panel each."""
    special = PROBE_FIGURES.get(name)
    if special is not None:
        return special(path, name, records)
    return _generic_probe_figure(path, name, records)


def _generic_probe_figure(path: Path, name: str,
                          records: list[dict[str, Any]]) -> Path | None:
    keys: list[str] = []
    for r in records:
        for key, value in r.items():
            if key not in _PROBE_META and key not in keys and _is_number(value):
                keys.append(key)
    panels = []
    for key in keys:
        x, y = _series(records, key)
        fx, fy, dropped = _finite(x, y)
        if fy.size:
            panels.append((key, fx, fy, dropped))
    if not panels:
        return None
    ncols = 1 if len(panels) <= 4 else 2
    nrows = -(-len(panels) // ncols)
    fig, axes = new_figure(nrows, ncols, figsize=(7.0 if ncols == 1 else 10.0,
                                               min(2.2 * nrows + 0.6, 14.0)), sharex=True)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (key, x, y, dropped) in zip(axes.flat[:len(panels)], panels, strict=True):
        ax.plot(x, y, marker="o" if x.size <= 50 else None, markersize=3, linewidth=1.2)
        if _wants_log([y], _LOG_RANGE):
            ax.set_yscale("log")
        ax.set_ylabel(key)
        ax.grid(True, alpha=0.3, which="both")
        if dropped:
            _note(ax, f"{dropped} non-finite omitted")
    for ax in axes[-1, :]:
        ax.set_xlabel("step")
    if ncols == 2 and len(panels) % 2:  # the hidden last panel: label the one above it
        axes[-2, -1].xaxis.set_tick_params(labelbottom=True)
        axes[-2, -1].set_xlabel("step")
    fig.suptitle(f"probe: {name}")
    return save_figure(fig, path)


def _derived_series(records: Sequence[Mapping[str, Any]],
                    value: Any) -> tuple[np.ndarray, np.ndarray]:
    """(step, value(record)) of the records where ``value`` gives a number, step-sorted."""
    pairs = []
    for r in records:
        v = value(r)
        if _is_number(r.get("step")) and _is_number(v):
            pairs.append((r["step"], v))
    if not pairs:
        return np.empty(0), np.empty(0)
    arr = np.asarray(pairs, dtype=float)
    order = np.argsort(arr[:, 0], kind="stable")
    return arr[order, 0], arr[order, 1]


def _gd_threshold(r: Mapping[str, Any]) -> float | None:
    """2/η of a sharpness record: its ``gd_threshold``, else from its ``lr`` (older records)."""
    if _is_number(r.get("gd_threshold")):
        return r["gd_threshold"]
    lr = r.get("lr")
    return 2.0 / lr if _is_number(lr) and lr > 0 else None


def _draw_curves(ax, curves: list[tuple[str, np.ndarray, np.ndarray, dict]]) -> list:
    """Plot the finite points of each (label, x, y, style); note what was dropped; return
    the y arrays drawn."""
    drawn, dropped = [], 0
    for label, x, y, style in curves:
        fx, fy, n = _finite(x, y)
        dropped += n
        if fy.size:
            ax.plot(fx, fy, label=label, **style)
            drawn.append(fy)
    if dropped:
        _note(ax, f"{dropped} non-finite omitted")
    return drawn


def _sharpness_figure(path: Path, name: str, records: list[dict[str, Any]]) -> Path | None:
    """Sharpness against the edge of stability (SPEC §4.3, §4.4, §4.6).

    Top panel: λ_max over steps (and the further top-k eigenvalues where the records carry
    ``eigenvalues``) with the gradient-descent bound 2/η and the momentum bound — heavy
    ball 2(1 + β)/η, the EMA form 2(1 + β)/((1 − β)η′) — each from the learning rate
    recorded at that step (a schedule moves them). Bottom panel: η·λ_max with the same two
    bounds on that scale, 2 and 2(1 + β) (EMA: 2(1 + β)/(1 − β)). The y axis is logarithmic
    where every value is positive and spans a factor of 20.
    """
    mark = {"marker": "o", "markersize": 3} if len(records) <= 50 else {}
    lam = ("λ_max (top Hessian eigenvalue)", *_series(records, "lambda_max"),
           {"linewidth": 1.4, "color": "tab:blue", **mark})
    if not _finite(lam[1], lam[2])[1].size:
        return None
    forms = {r.get("momentum_form") for r in records if r.get("momentum_form")}
    betas = {r["momentum_beta"] for r in records if _is_number(r.get("momentum_beta"))}
    ema = forms == {"ema"}
    beta_txt = f", β = {next(iter(betas)):g}" if len(betas) == 1 else ""
    eos_label = ("2(1+β)/((1−β)η′): EMA-momentum edge of stability" if ema
                 else "2(1+β)/η: heavy-ball edge of stability") + beta_txt
    eos_prod = ("2(1+β)/(1−β)" if ema else "2(1+β)") + beta_txt
    top: list[tuple[str, np.ndarray, np.ndarray, dict]] = [lam]
    k = max((len(r["eigenvalues"]) for r in records
             if isinstance(r.get("eigenvalues"), list)), default=0)
    for i in range(1, k):
        top.append((f"λ_{i + 1}" if k <= 6 or i in (1, k - 1) else "_nolegend_",
                    *_derived_series(records, lambda r, i=i: (
                        r["eigenvalues"][i] if isinstance(r.get("eigenvalues"), list)
                        and len(r["eigenvalues"]) > i else None)),
                    {"linewidth": 0.9, "alpha": 0.6, "color": "tab:cyan"}))
    # a bound holds from the step it was read at until the next measurement
    gd_style = {"linewidth": 1.2, "linestyle": "--", "color": "tab:red",
                "drawstyle": "steps-post"}
    eos_style = {"linewidth": 1.2, "linestyle": "-.", "color": "tab:orange",
                 "drawstyle": "steps-post"}
    top.append(("2/η: gradient-descent stability bound",
                *_derived_series(records, _gd_threshold), gd_style))
    eos = _series(records, "eos_threshold")
    if eos[1].size:
        top.append((eos_label, *eos, eos_style))
    prod = [("η·λ_max", *_series(records, "lr_times_lambda"),
             {"linewidth": 1.4, "color": "tab:blue", **mark})]
    prod_x = _series(records, "lr_times_lambda")[0]
    panels = 2 if prod_x.size and _is_number(records[0].get("lr")) else 1
    fig, axes = new_figure(panels, 1, figsize=(7.0, 3.0 * panels + 0.8), sharex=True)
    ax = axes[0, 0]
    drawn = _draw_curves(ax, top)
    if _wants_log(drawn, _LOG_RANGE):
        ax.set_yscale("log")
    ggn = any(r.get("curvature") == "ggn" for r in records)
    ax.set_ylabel("eigenvalue of G (GGN)" if ggn else "eigenvalue of H")
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="best", framealpha=0.85)
    if panels == 2:
        ax2 = axes[1, 0]
        prod.append(("2: gradient-descent bound",
                     *_derived_series(records, lambda r: 2.0 if _is_number(r.get("lr"))
                                      else None), gd_style))
        bound = _series(records, "lr_lambda_threshold")
        if bound[1].size:
            prod.append((eos_prod + ": momentum bound", *bound, eos_style))
        _draw_curves(ax2, prod)
        ax2.set_ylabel("η·λ_max")
        ax2.grid(True, alpha=0.3, which="both")
        ax2.legend(fontsize=7, loc="best", framealpha=0.85)
    axes[-1, 0].set_xlabel("step")
    fig.suptitle(f"probe: {name} — λ_max against the edge of stability "
                 "(η: each step's learning rate)", fontsize=10)
    return save_figure(fig, path)


def _hessian_trace_figure(path: Path, name: str,
                          records: list[dict[str, Any]]) -> Path | None:
    """Hutchinson's tr H (top) and tr H² (bottom) over steps, each with a ±2 standard-error
    band (``trace_se``, ``trace_sq_se``; SPEC §1)."""
    panels = []
    mat = "G" if any(r.get("curvature") == "ggn" for r in records) else "H"
    for key, label in (("trace", f"tr {mat}"), ("trace_sq", f"tr {mat}²")):
        x, y = _series(records, key)
        xs, se = _series(records, f"{key}_se")
        fx, fy, dropped = _finite(x, y)
        if fy.size:
            band = None
            if xs.size == x.size and np.array_equal(xs, x):
                keep = np.isfinite(x) & np.isfinite(y) & np.isfinite(se)
                band = (x[keep], y[keep] - 2 * se[keep], y[keep] + 2 * se[keep])
            panels.append((label, fx, fy, dropped, band))
    if not panels:
        return None
    fig, axes = new_figure(len(panels), 1, figsize=(7.0, 2.8 * len(panels) + 0.8),
                           sharex=True)
    mark = {"marker": "o", "markersize": 3} if len(records) <= 50 else {}
    for ax, (label, x, y, dropped, band) in zip(axes.flat, panels, strict=True):
        ax.plot(x, y, linewidth=1.4, color="tab:blue", label=f"{label} (Hutchinson)", **mark)
        if band is not None and band[0].size:
            ax.fill_between(band[0], band[1], band[2], color="tab:blue", alpha=0.2,
                            linewidth=0, label="±2 standard errors")
        if dropped:
            _note(ax, f"{dropped} non-finite omitted")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3, which="both")
        ax.legend(fontsize=7)
    axes[-1, 0].set_xlabel("step")
    fig.suptitle(f"probe: {name}")
    return save_figure(fig, path)


#: Figures of their own for some probes (name → ``figure(path, name, records)``, returning
#: the path written or ``None`` for nothing to show); every other probe gets the generic
#: figure of :func:`_probe_figure`.
PROBE_FIGURES = {"sharpness": _sharpness_figure, "hessian_trace": _hessian_trace_figure}


def plot_run(run_dir: str | os.PathLike) -> list[Path]:
    """Draw the figures of a run into ``RUN/plots/``; return the files written.

    Reads ``RUN/metrics.jsonl`` (a partial last line is skipped, unknown keys are ignored) and
    writes ``loss.png`` (log-y when every value is positive), ``accuracy.png`` (only when the
    records have accuracies), ``lr.png``, ``norms.png`` (gradient/weight norms, when logged)
    and ``probe_<name>.png`` for each probe name. A figure with nothing to show is not written.
    Each file is replaced atomically. Raises :class:`FileNotFoundError` without a metrics file.
    """
    run_dir = Path(run_dir)
    records = read_metrics(run_dir / "metrics.jsonl")
    out = run_dir / "plots"
    train, evals = by_kind(records, "train"), by_kind(records, "eval")
    written: list[Path] = []

    def add(path: Path | None) -> None:
        if path is not None:
            written.append(path)

    add(_plot_lines(out / "loss.png", [
        ("batch loss (train)", *_series(train, "loss"), _LINE),
        ("train loss (eval)", *_series(evals, "train_loss"), _EVAL),
        ("full train loss", *_series(evals, "train_full_loss"), _EVAL),
        ("test loss", *_series(evals, "test_loss"), _EVAL),
        ("averaged model: test loss", *_series(evals, "avg_test_loss"),
         {**_EVAL, "linestyle": "--"}),
    ], "Loss", "loss", "always-positive"))
    add(_plot_lines(out / "accuracy.png", [
        ("train accuracy", *_series(evals, "train_acc"), _EVAL),
        ("test accuracy", *_series(evals, "test_acc"), _EVAL),
        ("averaged model: test accuracy", *_series(evals, "avg_test_acc"),
         {**_EVAL, "linestyle": "--"}),
    ], "Accuracy", "accuracy", "never"))
    add(_plot_lines(out / "lr.png", [("learning rate", *_series(train, "lr"), _EVAL)],
                    "Learning rate", "learning rate", "range"))
    add(_plot_lines(out / "norms.png", [
        ("gradient norm", *_series(train, "grad_norm"), _LINE),
        ("weight norm", *_series(train, "weight_norm"), _LINE),
    ], "Gradient and weight norms", "L2 norm", "range"))

    probes: dict[str, list[dict[str, Any]]] = {}
    for r in by_kind(records, "probe"):
        probes.setdefault(str(r.get("name", "unnamed")), []).append(r)
    for name, group in probes.items():
        add(_probe_figure(out / f"probe_{_safe_name(name)}.png", name, group))
    return written


# --------------------------------------------------------------------------- helpers for others


def plot_lr_find(lrs: Sequence[float], losses: Sequence[float], suggestion: float | None,
                 path: str | os.PathLike) -> Path:
    """Plot a learning-rate range test: loss against learning rate (log x); return the path.

    ``suggestion`` (if given and finite) is marked by a vertical line and printed in the
    legend. The y range is clipped so that the blow-up at the largest rates does not squash
    the informative part of the curve; non-finite losses are left out.
    """
    x, y, dropped = _finite(lrs, losses)
    pos = x > 0
    x, y, dropped = x[pos], y[pos], dropped + int((~pos).sum())
    fig, axes = new_figure()
    ax = axes[0, 0]
    ax.plot(x, y, linewidth=1.2, label="loss")
    ax.set_xscale("log")
    if y.size:
        lo, hi, start = float(y.min()), float(y.max()), float(y[0])
        top = min(hi, start + (start - lo)) if start > lo else hi
        pad = 0.05 * (top - lo) if top > lo else max(abs(lo) * 0.05, 1e-12)
        ax.set_ylim(lo - pad, top + pad)
    if suggestion is not None and math.isfinite(suggestion) and suggestion > 0:
        ax.axvline(suggestion, color="tab:red", linestyle="--", linewidth=1.2,
                   label=f"suggested lr = {suggestion:.3g}")
    if dropped:
        _note(ax, f"{dropped} non-finite or non-positive points omitted")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    ax.set_title("Learning-rate range test")
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_curves(series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                path: str | os.PathLike, xlabel: str, ylabel: str, title: str,
                logx: bool = False, logy: bool = False, *, marker: str | None = None) -> Path:
    """Plot named curves ``{label: (x, y)}`` on one axes and write them to ``path``.

    Points with a non-finite coordinate, or a non-positive one on a log axis, are left out
    (counted in a note). ``marker`` (e.g. ``"o"``) marks the data points. Returns the path.
    """
    fig, axes = new_figure()
    ax = axes[0, 0]
    dropped = 0
    for label, (x, y) in series.items():
        x, y, n = _finite(x, y)
        keep = np.ones(x.shape, dtype=bool)
        if logx:
            keep &= x > 0
        if logy:
            keep &= y > 0
        dropped += n + int((~keep).sum())
        ax.plot(x[keep], y[keep], label=str(label), marker=marker, markersize=4,
                linewidth=1.2)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    if dropped:
        _note(ax, f"{dropped} point{'s' if dropped != 1 else ''} omitted")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3, which="both")
    if series:
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def _parser():
    """The argument parser of ``python -m sgdlab.plots``."""
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message: str):  # noqa: D102 - one line, exit 2
            self.exit(2, f"{self.prog}: error: {message}\n")

    p = Parser(prog="python -m sgdlab.plots",
               description="Redraw the figures of existing run directories into RUN/plots/ "
                           "(loss, accuracy, learning rate, norms, one per probe) from "
                           "RUN/metrics.jsonl. Exit 0: drawn, 2: a bad path or file.")
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="a run directory written by sgdlab train (holding metrics.jsonl)")
    return p


def _check_run(run: str) -> Path:
    """``RUN/metrics.jsonl`` if ``run`` is a run directory with a readable log and a writable
    ``plots/``; else a one-line :class:`~sgdlab.config.ConfigError` naming the path."""
    from sgdlab.config import ConfigError
    from sgdlab.paths import check_writable_dir

    path = Path(run)
    if not path.exists():
        raise ConfigError(f"RUN: {path} does not exist")
    if not path.is_dir():
        raise ConfigError(f"RUN: {path} is a file, not a run directory")
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise ConfigError(f"RUN: {path} holds no metrics.jsonl (is it a run directory?)")
    if not os.access(metrics, os.R_OK):
        raise ConfigError(f"RUN: {metrics} is not readable (permission denied)")
    check_writable_dir(path / "plots", "RUN")
    return metrics


def truncated_last_line(path: str | os.PathLike) -> int | None:
    """The number of the last line of ``path`` if it is cut short (no final newline and not a
    JSON object: a run killed mid-write, or one still writing), else ``None``."""
    data = Path(path).read_bytes()
    if not data or data.endswith(b"\n"):
        return None
    last = data.rsplit(b"\n", 1)[-1]
    try:
        import json

        if isinstance(json.loads(last.decode("utf-8")), dict):
            return None
    except (UnicodeDecodeError, ValueError):
        pass
    return data.count(b"\n") + 1


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sgdlab.plots RUN [RUN ...]``: redraw the figures of existing runs.

    Every run is checked before anything is drawn: a missing path, a file, a directory
    without ``metrics.jsonl`` or an unwritable ``plots/`` is one line on stderr and exit 2.
    Unreadable lines of the log are skipped with one warning each naming ``FILE:LINE`` (a
    truncated last line too: a run killed mid-write leaves one)."""
    import warnings

    from sgdlab.config import ConfigError
    from sgdlab.paths import os_error_line

    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    prog = "sgdlab.plots"
    try:
        logs = [_check_run(run) for run in args.runs]
        for run, log in zip(args.runs, logs, strict=True):
            cut = truncated_last_line(log)
            if cut is not None:
                print(f"{prog}: warning: {log}:{cut}: skipping a truncated last line",
                      file=sys.stderr)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                written = plot_run(run)
            for w in caught:
                print(f"{prog}: warning: {w.message}", file=sys.stderr)
            if not written:
                print(f"{prog}: warning: {log} holds no records to plot", file=sys.stderr)
            for path in written:
                print(path)
    except ConfigError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"{prog}: error: {os_error_line(err)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
