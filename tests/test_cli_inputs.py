"""What a user can type or hand to the CLI: every bad path, file or value is one line on
stderr, exit 2, nothing written, never a traceback; ``--help`` is complete and generated from
the registries. The damaged-input tests are also marked ``faults``.

The CLI runs in-process (``sgdlab.cli.main``) for speed; the property-based tests validate
with ``train --check-config`` (nothing is trained or written) and run the real commands with
tiny budgets.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pickle
import re
import string
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sgdlab import cli, plots
from sgdlab.config import FIELDS, parse_yaml
from sgdlab.paths import check_writable_dir

QUICK = ["--dataset", "mnist1d", "--model", "mlp", "--optimizer", "sgd", "--lr", "0.05",
         "--batch-size", "32", "--seed", "1"]
TRAIN = ["train", *QUICK, "--quiet"]
UNWRITABLE = "/proc/sgdlab-test/out"  # not creatable, even for root

faults = pytest.mark.faults


def call(argv, capsys) -> tuple[int, str, str]:
    """``main(argv)`` in-process: (exit code, stdout, stderr); argparse exits are caught."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 2
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    """Exit 2 and exactly one stderr line, holding every fragment, no traceback."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# --------------------------------------------------------------------------- --help


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {"sgdlab": parser, **sub.choices}


def _listed(help_text: str) -> list[str]:
    match = re.search(r"one of: (.*?);", help_text)
    assert match, help_text
    return [name.strip() for name in match.group(1).split(",")]


def test_every_option_has_help_with_its_default():
    for name, parser in _subparsers().items():
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help and action.help.strip(), (name, action.option_strings)
            if action.option_strings and not isinstance(
                    action, (argparse._HelpAction, argparse._VersionAction)):
                assert "default" in action.help or "required" in action.help, (
                    name, action.option_strings, action.help)
        parser.format_help()  # every %(default)s expands


def test_listed_choices_are_the_registries():
    from sgdlab import data, experiments, instruments, models, optim, schedules
    from sgdlab.config import AVERAGES, PROBE_SCHEDULES

    expected = {"--dataset": data.names(), "--model": models.available(),
                "--optimizer": optim.available(), "--schedule": list(schedules.available()),
                "--probe": instruments.available(), "--only": experiments.available(),
                "--average": list(AVERAGES), "--probe-schedule": list(PROBE_SCHEDULES)}
    seen = set()
    for parser in _subparsers().values():
        for action in parser._actions:
            for flag in action.option_strings:
                if flag in expected:
                    assert _listed(action.help) == list(expected[flag]), flag
                    seen.add(flag)
    assert seen == set(expected)


def test_lr_help_names_the_optimizers_without_default_lr(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "required for momentum, sgd, snr_sgd" in text
    assert "(default: 128)" in text  # --batch-size


# --------------------------------------------------------------------------- config files


@faults
@pytest.mark.parametrize(("content", "fragments"), [
    (b"\xff\xfe steps: 3\n", ["is not UTF-8 text", "byte 0xff"]),
    (b"- 1\n- 2\n", ["must hold a mapping", "got a list"]),
    (b"just text\n", ["must hold a mapping", "got a string"]),
    (b"lr: [\n", ["is not valid YAML", "line 2"]),
    (b"steps: '50'\n", ["steps must be an integer >= 1, got '50'"]),
    (b"steps: 5\nlr: 'fast'\n", ["lr must be a number", "got 'fast'"]),
    (b"steps: 5\nbatch_size: 1.5\n", ["batch_size must be an integer >= 1, got 1.5"]),
    (b"steps: 5\nprobes: sharpness\n", ["probes must be a list of names"]),
    (b"steps: 5\nmodel_options: 3\n", ["model_options must be a mapping, got 3"]),
    (b"steps: 5\n1: 2\n", ["unknown config field 1"]),
    (b"steps: 5\nlearning_rate: 0.1\n", ["unknown config field 'learning_rate'"]),
    (b"steps: 5\ntensorboard: 'yes'\n", ["tensorboard must be true or false"]),
])
def test_bad_config_file_is_one_line(tmp_path, capsys, content, fragments):
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(content)
    out = tmp_path / "run"
    code, _, err = call(["train", "--config", cfg, "--out", out, "--quiet"], capsys)
    assert_one_line_error(code, err, *fragments)
    assert not out.exists()


@faults
def test_config_yaml_cannot_run_code(tmp_path, capsys):
    marker = tmp_path / "marker"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"steps: !!python/object/apply:os.system ['touch {marker}']\n")
    code, _, err = call(["train", "--config", cfg, "--out", tmp_path / "run"], capsys)
    assert_one_line_error(code, err, "is not valid YAML")
    assert not marker.exists()


def test_config_path_problems(tmp_path, capsys):
    for path, fragment in ((tmp_path / "nope.yaml", "does not exist"),
                           (tmp_path, "is a directory")):
        code, _, err = call(["train", "--config", path, "--out", tmp_path / "r"], capsys)
        assert_one_line_error(code, err, "config:", fragment)


def test_yaml_exponents_are_numbers_quoted_values_strings(tmp_path):
    assert parse_yaml("lr: 5e-4\nx: 1E3\ny: '50'\nz: -2e+1") == {
        "lr": 5e-4, "x": 1000.0, "y": "50", "z": -20.0}
    assert cli._kv("weight_decay=5e-4") == ("weight_decay", 5e-4)
    assert cli._kv("name='50'") == ("name", "50")


# --------------------------------------------------------------------------- --out


@faults
@pytest.mark.parametrize("where", ["file", "below-file", "unwritable"])
@pytest.mark.parametrize("command", ["check-config", "lr-find", "reproduce"])
def test_bad_out_is_refused_before_any_work(tmp_path, capsys, where, command):
    afile = tmp_path / "afile"
    afile.write_text("x")
    out = {"file": afile, "below-file": afile / "sub", "unwritable": UNWRITABLE}[where]
    argv = {"check-config": [*TRAIN, "--steps", "5", "--check-config"],
            "lr-find": ["lr-find", *QUICK, "--num-steps", "5000"],
            "reproduce": ["reproduce", "--smoke", "--only", "1"]}[command]
    start = time.perf_counter()
    code, _, err = call([*argv, "--out", out], capsys)
    assert_one_line_error(code, err, "out:", str(out) if where != "below-file" else str(afile))
    assert time.perf_counter() - start < 10  # refused up front, not after the work
    assert afile.read_text() == "x"
    assert list(tmp_path.iterdir()) == [afile]


def test_check_writable_dir():
    with pytest.raises(ValueError, match="out must be a directory path"):
        check_writable_dir("", "out")
    assert check_writable_dir("runs/new/deep", "out") == Path("runs/new/deep")
    assert not Path("runs/new").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_parent(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    code, _, err = call([*TRAIN, "--steps", "5", "--check-config", "--out", ro / "run"], capsys)
    assert_one_line_error(code, err, "out:", "not writable", "permission denied")


def test_check_config_validates_without_writing(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = call([*TRAIN, "--steps", "5", "--check-config", "--out", out], capsys)
    assert code == 0, err
    assert "config OK" in stdout and str(out) in stdout
    assert not out.exists()
    # the model and data are built: a bad model option is found
    code, _, err = call([*TRAIN, "--steps", "5", "--check-config", "--out", out,
                         "--model-opt", "width=-3"], capsys)
    assert_one_line_error(code, err, "model:")
    assert not out.exists()
    code, _, err = call([*TRAIN, "--steps", "5", "--check-config", "--resume", out], capsys)
    assert_one_line_error(code, err, "--check-config", "--resume")


# --------------------------------------------------------------------------- probe


def test_probe_bad_run_dir(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    (tmp_path / "empty").mkdir()
    for path, fragment in ((tmp_path / "nope", "does not exist"), (afile, "is a file"),
                           (tmp_path / "empty", "holds no config.yaml")):
        code, _, err = call(["probe", path], capsys)
        assert_one_line_error(code, err, "run_dir:", str(path), fragment)
    code, _, err = call(["probe", tmp_path, "--probe", ""], capsys)
    assert_one_line_error(code, err, "give at least one instrument")


def test_probe_batchnorm_skips_only_the_per_example_quantity(tmp_path, capsys):
    run = tmp_path / "bn"
    code, _, err = call(["train", "--dataset", "digits", "--model", "resnet", "--model-opt",
                         "depth=8", "--model-opt", "width=4", "--lr", "0.05", "--steps", "3",
                         "--batch-size", "16", "--out", run, "--quiet"], capsys)
    assert code == 0, err
    code, out, err = call(["probe", run], capsys)
    assert code == 0, err
    warnings = err.strip().splitlines()
    assert len(warnings) == 1 and "noise_scale skipped" in warnings[0]
    assert "BatchNorm" in warnings[0]
    names = {line.split()[0].split(".")[0] for line in out.splitlines()[1:]}
    assert names == {"effective_lr", "sharpness"}


# --------------------------------------------------------------------------- plots


def test_plots_help_and_bad_paths(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        plots.main(["--help"])
    assert exc.value.code == 0
    assert "RUN" in capsys.readouterr().out
    afile = tmp_path / "afile"
    afile.write_text("x")
    for args, fragment in (([tmp_path / "nope"], "does not exist"), ([afile], "is a file"),
                           ([tmp_path], "holds no metrics.jsonl")):
        code = plots.main([str(a) for a in args])
        assert_one_line_error(code, capsys.readouterr().err, str(args[0]), fragment)
    with pytest.raises(SystemExit) as exc:
        plots.main([])
    assert exc.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def _metrics_run(tmp_path: Path, tail: bytes) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    lines = [f'{{"kind": "train", "step": {s}, "loss": {1.0 / s}, "lr": 0.1}}'
             for s in range(1, 6)]
    (run / "metrics.jsonl").write_bytes("\n".join(lines).encode() + b"\n" + tail)
    return run


@faults
def test_plots_truncated_last_line_is_skipped_with_a_warning(tmp_path, capsys):
    run = _metrics_run(tmp_path, b'{"kind": "train", "step": 6, "lo')
    assert plots.main([str(run)]) == 0
    out, err = capsys.readouterr()
    assert (run / "plots" / "loss.png").is_file()
    assert err.strip().splitlines() == [
        f"sgdlab.plots: warning: {run / 'metrics.jsonl'}:6: skipping a truncated last line"]
    assert str(run / "plots" / "loss.png") in out


@faults
def test_plots_bad_line_inside_is_named(tmp_path, capsys):
    run = _metrics_run(tmp_path, b'{"kind": "tr\n\xff\xfe\n{"kind": "train", "step": 9}\n')
    assert plots.main([str(run)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2
    assert all(str(run / "metrics.jsonl") in line for line in err)
    assert ":6:" in err[0] and ":7:" in err[1]


@faults
def test_plots_empty_log(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_bytes(b"")
    assert plots.main([str(run)]) == 0
    assert "holds no records" in capsys.readouterr().err
    assert not (run / "plots").exists()


# --------------------------------------------------------------------------- CIFAR pickles


class _Evil:
    """Unpickling it runs ``os.system('touch MARKER')``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalEvil(_Evil):
    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w')",))


def _cifar_dir(root: Path, first: bytes) -> Path:
    """A CIFAR-10 directory whose data_batch_1 holds ``first``; the others are valid."""
    root.mkdir()
    rng = np.random.default_rng(0)
    good = {b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8),
            b"labels": [int(v) for v in rng.integers(0, 10, 20)]}
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                 "data_batch_5", "test_batch"):
        (root / name).write_bytes(first if name == "data_batch_1" else pickle.dumps(good))
    return root


@faults
@pytest.mark.parametrize("kind", ["os.system", "eval", "nested", "truncated", "empty",
                                  "object-array"])
def test_malicious_or_damaged_cifar_pickles_execute_nothing(tmp_path, capsys, kind):
    marker = tmp_path / "marker"
    payload = {
        "os.system": pickle.dumps(_Evil(marker)),
        "eval": pickle.dumps(_EvalEvil(marker)),
        "nested": pickle.dumps({b"data": [_Evil(marker)], b"labels": []}),
        "truncated": pickle.dumps({b"data": np.zeros((20, 3072), np.uint8),
                                   b"labels": [0] * 20})[:500],
        "empty": b"",
        "object-array": pickle.dumps({b"data": np.array([_Evil(marker)], dtype=object),
                                      b"labels": [0]}),
    }[kind]
    data_dir = _cifar_dir(tmp_path / "cifar", payload)
    out = tmp_path / "run"
    for argv in (["train", "--check-config", "--steps", "2", "--out", out],
                 ["check", "--overfit-steps", "2"], ["train", "--steps", "2", "--out", out,
                                                     "--quiet"]):
        code, _, err = call([*argv, "--dataset", "cifar10", "--data-dir", data_dir,
                             "--model", "linear", "--lr", "0.1", "--batch-size", "4"], capsys)
        assert_one_line_error(code, err, str(data_dir / "data_batch_1"))
        assert not marker.exists()
        assert not out.exists()


# --------------------------------------------------------------------------- property-based

#: SGDLAB_FUZZ_EXAMPLES=1000 (random seeds) for a longer hunt; the default is fixed and quick.
_EXAMPLES = int(os.environ.get("SGDLAB_FUZZ_EXAMPLES", "0")) or None
_SETTINGS = settings(max_examples=_EXAMPLES or 60, deadline=None, derandomize=not _EXAMPLES,
                     suppress_health_check=[HealthCheck.function_scoped_fixture,
                                            HealthCheck.too_slow])

_WRONG = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from(
    [-1.5, 0.0, 1e300, float("nan"), float("inf"), "", "50", "5e-4", "fast", "cuda", "log",
     "mnist1d", "nosuch_module:make", "math:nosuch", [1, "a"], [], {}, {"width": "x"},
     {"n_train": -1}, {1: 2}, {"every": "5"}, {"a b": 1}, datetime.date(2024, 1, 1),
     b"\xff", 10**30]))


def _valid(name: str):
    """Values of the field ``name`` that are valid (small, so a run stays tiny)."""
    from sgdlab import instruments, optim, schedules
    from sgdlab.config import AVERAGES, DEVICES, PROBE_SCHEDULES, SAMPLING

    pools = {
        "dataset": st.sampled_from(["mnist1d", "linreg", "logreg", "digits"]),
        "model": st.sampled_from(["linear", "logistic", "mlp", "cnn"]),
        "optimizer": st.sampled_from(optim.available()),
        "schedule": st.sampled_from(list(schedules.available())),
        "sampling": st.sampled_from(SAMPLING), "average": st.sampled_from(AVERAGES),
        "device": st.sampled_from(DEVICES), "probe_schedule": st.sampled_from(PROBE_SCHEDULES),
        "probes": st.lists(st.sampled_from(instruments.available()), max_size=2),
        "lr": st.floats(0, 1), "average_start": st.floats(0, 1), "ema_decay": st.floats(0, 1),
        "epochs": st.floats(0.01, 0.05), "steps": st.integers(1, 3),
        "full_train_loss": st.booleans(), "tensorboard": st.just(False),
        "dataset_options": st.sampled_from([{}, {"n_train": 64}, {"n_test": 32}]),
        "model_options": st.sampled_from([{}, {"width": 8}, {"depth": 1}]),
        "optimizer_options": st.sampled_from([{}, {"weight_decay": 1e-4}, {"beta": 0.9}]),
        "schedule_options": st.sampled_from([{}, {"every": 2}, {"total": 3}]),
        "out": st.just(None),
    }
    return pools.get(name, st.integers(0, 40))


_FIELD_VALUE = st.sampled_from(sorted(FIELDS)).flatmap(
    lambda name: st.tuples(st.just(name), st.one_of(_valid(name), _WRONG)))
_UNKNOWN = st.tuples(st.sampled_from(["learning_rate", "step", "Model", "batchsize"]), _WRONG)


def _yaml_text(pairs: list[tuple[str, object]]) -> str:
    return yaml.safe_dump(dict(pairs), sort_keys=False, allow_unicode=True)


def _check_outcome(code: int, err: str, out: Path, valid: tuple[int, ...]) -> None:
    assert "Traceback" not in err, err
    if code == 2:
        lines = [line for line in err.strip().splitlines()
                 if not line.startswith("sgdlab: instrument ")]
        assert len(lines) == 1 and ": error: " in lines[0], err
        assert not out.exists(), err
    else:
        assert code in valid, (code, err)


_BASE = {"dataset": "linreg", "model": "linear", "lr": 0.1, "batch_size": 16}


@faults
@_SETTINGS
@given(pairs=st.lists(st.one_of(*[_FIELD_VALUE] * 7, _UNKNOWN), max_size=4))
def test_random_yaml_configs_validate_or_fail_in_one_line(tmp_path, capsys, pairs):
    """A valid base config with random fields set to valid, wrong-typed or out-of-range
    values, or unknown keys added."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(_yaml_text([*_BASE.items(), *pairs]))
    out = tmp_path / "run"
    argv = ["train", "--config", cfg, "--check-config", "--out", out]
    if not any(k in ("steps", "epochs") for k, _ in pairs):
        argv += ["--steps", "2"]
    code, _, err = call(argv, capsys)
    event(f"exit {code} " + (err.strip().splitlines() or [""])[-1][:60])
    _check_outcome(code, err, out, (0,))
    assert not out.exists()


def _flags(command: str) -> list[str]:
    """The long options of a sub-command a random argument list draws from (not the ones
    that start other machinery: --resume, --nproc, --tensorboard, or pick the output)."""
    return sorted({flag for a in _subparsers()[command]._actions for flag in a.option_strings
                   if flag.startswith("--") and flag not in (
                       "--help", "--resume", "--nproc", "--check-config", "--dry-run",
                       "--out", "--tensorboard")})


_TOKENS = st.one_of(
    st.sampled_from(["0", "1", "2", "-1", "1.5", "1e999", "nan", "fast", "", "mlp", "linear",
                     "linreg", "digits", "adam", "cosine", "log", "swa", "cpu", "cuda",
                     "effective_lr,sharpness", "width=8", "n_train=64", "beta=0.9", "=3",
                     "novalue", "nosuch_module:make", "math:nosuch", "/nonexistent/x"]),
    st.text(string.ascii_letters + string.digits + "-_.=,:", max_size=8))


def _flag_value(flag: str):
    """A value for ``flag``: one a user would mean (from the field's valid values) or any
    token."""
    field = flag[2:].replace("-", "_")
    field = {"probe": "probes", "opt": "optimizer_options"}.get(field, field)
    valid = _valid(field).map(lambda v: ",".join(v) if isinstance(v, list) else
                              ("" if v is None else str(v)))
    if flag.endswith("-opt") or flag == "--opt":
        valid = st.sampled_from(["width=8", "n_train=64", "beta=0.9", "weight_decay=1e-4",
                                 "every=2", "depth=x", "nosuch=1"])
    return st.one_of(*[valid] * 5, _TOKENS)


def _argv(command: str):
    """Random argument lists for ``command``: mostly flag/value pairs (values valid or not),
    some stray tokens and flags without a value."""
    flags = _flags(command)
    switches = {flag for a in _subparsers()[command]._actions if a.nargs == 0
                for flag in a.option_strings}
    pair = st.sampled_from(flags).flatmap(
        lambda flag: st.just([flag]) if flag in switches else
        st.tuples(st.just(flag), _flag_value(flag)).map(list))
    return st.lists(st.one_of(pair, pair, pair, pair, _TOKENS.map(lambda t: [t]),
                              st.sampled_from(flags).map(lambda f: [f])),
                    max_size=5).map(lambda parts: [t for part in parts for t in part])


_BASE_ARGV = ["--dataset", "linreg", "--model", "linear", "--lr", "0.1", "--batch-size", "16"]


@faults
@_SETTINGS
@given(argv=_argv("train"))
def test_random_train_arguments_validate_or_fail_in_one_line(tmp_path, capsys, argv):
    out = tmp_path / "run"
    length = [] if {"--steps", "--epochs"} & set(argv) else ["--steps", "2"]
    code, _, err = call(["train", *_BASE_ARGV, *length, *argv, "--check-config", "--out", out],
                        capsys)
    event(f"exit {code} " + (err.strip().splitlines() or [""])[-1][:60])
    _check_outcome(code, err, out, (0,))
    assert not out.exists()


@faults
@settings(max_examples=(_EXAMPLES or 120) // 10, deadline=None, derandomize=not _EXAMPLES,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data(), command=st.sampled_from(["train", "lr-find", "check"]))
def test_random_arguments_run_tiny_or_fail_in_one_line(tmp_path, capsys, data, command):
    """The real commands, with the budget forced small after the random arguments (a later
    flag overrides an earlier one): a valid run, or one line, exit 2, no run directory."""
    out = tmp_path / f"run-{time.monotonic_ns()}"
    tiny = ["--dataset", "linreg", "--model", "linear", "--data-opt", "n_train=64",
            "--batch-size", "16"]
    budget = {"train": ["--steps", "3", "--out", out, "--quiet", "--eval-every", "0"],
              "lr-find": ["--num-steps", "10"], "check": ["--overfit-steps", "3"]}[command]
    argv = data.draw(_argv(command), label="argv")
    args = [a for a in argv if a not in ("--epochs", "--steps", "--probe", "--probe-every")]
    code, _, err = call([command, *tiny, "--lr", "0.1", *args, *budget], capsys)
    event(f"{command} exit {code} " + (err.strip().splitlines() or [""])[-1][:60])
    valid = {"train": (0, 3), "lr-find": (0,), "check": (0, 1)}[command]
    _check_outcome(code, err, out, valid)

