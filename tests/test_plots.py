"""metrics.jsonl writing/reading, atomic writes, and the run figures."""

from __future__ import annotations

import json
import math

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch

from sgdlab.metrics_log import (
    MetricsWriter,
    atomic_write_json,
    atomic_write_text,
    by_kind,
    count_lines,
    read_metrics,
    truncate_to,
)
from sgdlab.plots import plot_curves, plot_lr_find, plot_run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_png(path):
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4), image.shape
    assert image.shape[0] > 100 and image.shape[1] > 100, image.shape
    assert float(image[..., :3].std()) > 0.01  # not a blank canvas


def _no_temp_files(directory):
    return [p.name for p in directory.iterdir() if p.name.startswith(".") or "tmp" in p.name]


def _synthetic_run(run, classification=True, probes=True, truncated=True):
    run.mkdir(parents=True)
    lines = []
    for step in range(10, 201, 10):
        loss = 2.0 * math.exp(-step / 60) + 0.05
        lines.append({"kind": "train", "step": step, "epoch": step / 50,
                      "lr": 0.1 * (1 - step / 200), "loss": loss, "grad_norm": 1.0 / step,
                      "weight_norm": 3.0 + step / 100, "examples_per_s": 1e4,
                      "wall_time": step / 100, "extra_key": [1, 2]})
        if step % 50 == 0:
            ev = {"kind": "eval", "step": step, "epoch": step / 50, "wall_time": step / 100,
                  "train_loss": loss, "test_loss": loss * 1.2, "train_full_loss": loss * 1.01,
                  "avg_test_loss": loss * 1.1, "unknown": "ignored"}
            if classification:
                ev.update(train_acc=1 - loss / 3, test_acc=1 - loss / 2.5,
                          avg_test_acc=1 - loss / 2.6)
            lines.append(ev)
        if probes and step % 40 == 0:
            lines.append({"kind": "probe", "step": step, "name": "noise_scale",
                          "b_simple": 10.0 * step, "tr_sigma": 5.0, "g_norm_sq": 0.5 / step})
            lines.append({"kind": "probe", "step": step, "name": "sharpness",
                          "lambda_max": 2.0 / 0.1 + step / 100})
    lines[3]["loss"] = float("nan")  # a NaN in the middle of the batch losses
    lines.append({"kind": "probe", "step": 200, "name": "sharpness", "lambda_max": float("inf")})
    text = "".join(json.dumps(r) + "\n" for r in lines)  # json writes NaN/Infinity literally
    text = text.replace("Infinity", '"inf"')
    if truncated:
        text += '{"kind": "train", "step": 210, "loss": 0.'  # crash mid-write
    (run / "metrics.jsonl").write_text(text)
    return lines


# --------------------------------------------------------------------------- metrics_log


def test_writer_reader_round_trip(tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"
    with MetricsWriter(path) as w:
        w.write({"kind": "train", "step": 1, "loss": float("nan"), "lr": float("inf"),
                 "x": float("-inf"), "np": np.float32(0.5), "npi": np.int64(7),
                 "t": torch.tensor(0.25), "ti": torch.tensor(3), "b": np.bool_(True),
                 "vec": torch.tensor([1.0, float("nan")]), "arr": np.arange(3),
                 "nested": {"a": (1, np.float64(2.5))}, "name": "nan"})
        w.write({"kind": "eval", "step": 2, "test_loss": 0.1})
        assert w.lines == 2
    assert path.read_text().count("\n") == 2
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()
    r0, r1 = read_metrics(path)
    assert math.isnan(r0["loss"]) and r0["lr"] == math.inf and r0["x"] == -math.inf
    assert r0["np"] == 0.5 and type(r0["np"]) is float
    assert r0["npi"] == 7 and type(r0["npi"]) is int
    assert r0["t"] == 0.25 and r0["ti"] == 3 and r0["b"] is True
    assert r0["vec"][0] == 1.0 and math.isnan(r0["vec"][1])
    assert r0["arr"] == [0, 1, 2] and r0["nested"] == {"a": [1, 2.5]}
    assert r0["name"] == "nan"  # names are not numbers
    assert r1 == {"kind": "eval", "step": 2, "test_loss": 0.1}
    assert by_kind([r0, r1, {"step": 3}], "eval") == [r1]


def test_writer_appends_flushes_and_rejects_bad_values(tmp_path):
    path = tmp_path / "metrics.jsonl"
    w = MetricsWriter(path)
    w.write({"kind": "train", "step": 1})
    assert count_lines(path) == 1  # flushed without closing
    with pytest.raises(TypeError):
        w.write({"kind": "train", "bad": object()})
    assert count_lines(path) == 1 and w.lines == 1  # nothing half-written
    w.close()
    w.close()
    with pytest.raises(ValueError):
        w.write({"kind": "train"})
    # reopening appends; a partial last line from a crash is dropped first
    with open(path, "a") as f:
        f.write('{"kind": "tr')
    with pytest.warns(UserWarning, match="partial"):
        w = MetricsWriter(path)
    assert w.lines == 1
    w.write({"kind": "train", "step": 2})
    w.sync()
    w.close()
    assert [r["step"] for r in read_metrics(path)] == [1, 2]


def test_read_metrics_skips_corrupt_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\nnot json\n[1, 2]\n\n{"step": 2, "v": NaN}\n{"step": 3, "v"')
    with pytest.warns(UserWarning):
        records = read_metrics(path)
    assert [r["step"] for r in records] == [1, 2] and math.isnan(records[1]["v"])
    with pytest.raises(FileNotFoundError):
        read_metrics(tmp_path / "missing.jsonl")


def test_count_lines_and_truncate_to(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert count_lines(path) == 0
    with MetricsWriter(path) as w:
        for i in range(5):
            w.write({"kind": "train", "step": i})
    with open(path, "a") as f:
        f.write('{"partial')
    assert count_lines(path) == 5
    assert truncate_to(path, 3) == 3
    assert count_lines(path) == 3 and path.read_text().endswith("\n")
    assert [r["step"] for r in read_metrics(path)] == [0, 1, 2]
    assert truncate_to(path, 3) == 3  # no-op
    with pytest.warns(UserWarning):
        assert truncate_to(path, 10) == 3
    assert truncate_to(path, 0) == 0 and path.read_bytes() == b""
    assert truncate_to(tmp_path / "absent.jsonl", 0) == 0
    with pytest.raises(ValueError):
        truncate_to(path, -1)
    assert _no_temp_files(tmp_path) == []
    # resume: truncate, then append again
    with MetricsWriter(path) as w:
        w.write({"kind": "train", "step": 9})
        assert w.lines == 1


def test_atomic_writes(tmp_path):
    path = tmp_path / "sub" / "summary.json"
    atomic_write_json(path, {"a": np.float32(1.5), "t": torch.tensor(2.0), "n": float("nan")})
    assert json.loads(path.read_text()) == {"a": 1.5, "t": 2.0, "n": None,
                                            "nonfinite": {"n": "nan"}}  # strict JSON
    before = path.read_bytes()
    with pytest.raises(TypeError):
        atomic_write_json(path, {"a": 1, "bad": object()})
    assert path.read_bytes() == before
    assert _no_temp_files(path.parent) == []
    atomic_write_text(tmp_path / "c.yaml", "x: 1\n")
    assert (tmp_path / "c.yaml").read_text() == "x: 1\n"
    assert _no_temp_files(tmp_path) == []


# --------------------------------------------------------------------------- plots


def test_plot_run(tmp_path):
    run = tmp_path / "run"
    _synthetic_run(run)
    written = plot_run(run)
    names = sorted(p.name for p in written)
    assert names == ["accuracy.png", "loss.png", "lr.png", "norms.png",
                     "probe_noise_scale.png", "probe_sharpness.png"]
    for path in written:
        assert path.parent == run / "plots"
        _assert_png(path)
    assert _no_temp_files(run / "plots") == []
    # redrawing replaces the files in place
    assert sorted(p.name for p in plot_run(run)) == names
    assert _no_temp_files(run / "plots") == []


def test_plot_run_regression_without_probes(tmp_path):
    run = tmp_path / "run"
    _synthetic_run(run, classification=False, probes=False, truncated=False)
    names = sorted(p.name for p in plot_run(run))
    assert "accuracy.png" not in names and "loss.png" in names and "lr.png" in names
    assert "probe_noise_scale.png" not in names
    assert not (run / "plots" / "accuracy.png").exists()


def test_plot_run_diverged_and_empty(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(
        '{"kind": "train", "step": 1, "loss": 1.0, "lr": 0.1}\n'
        '{"kind": "train", "step": 2, "loss": "nan", "lr": 0.1}\n'
        '{"kind": "probe", "step": 2, "name": "weird/name", "v": "inf"}\n')
    names = sorted(p.name for p in plot_run(run))
    assert names == ["loss.png", "lr.png"]  # the probe has no finite value
    _assert_png(run / "plots" / "loss.png")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text("")
    assert plot_run(empty) == []
    with pytest.raises(FileNotFoundError):
        plot_run(tmp_path / "nowhere")


def test_plot_lr_find_and_curves(tmp_path):
    lrs = np.logspace(-5, 1, 60)
    losses = 2.0 - np.tanh(np.log10(lrs) + 3) + np.where(lrs > 1, lrs**2, 0.0)
    losses[-1] = np.nan
    path = plot_lr_find(lrs, losses, 3e-3, tmp_path / "lr_find.png")
    _assert_png(path)
    path = plot_lr_find(lrs, losses, None, tmp_path / "lr_find_none.png")
    _assert_png(path)
    path = plot_curves({"a": ([1, 2, 4, 8], [1.0, 0.5, 0.25, 0.0]),
                        "b": (np.arange(1, 5), torch.tensor([2.0, 1.0, float("nan"), 0.5]))},
                       tmp_path / "figs" / "curves.png", "batch size", "steps", "Scaling",
                       logx=True, logy=True, marker="o")
    assert path == tmp_path / "figs" / "curves.png"
    _assert_png(path)
    assert _no_temp_files(tmp_path / "figs") == []
