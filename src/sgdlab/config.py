"""The training configuration: one flat, fully resolved record (written as config.yaml).

A run is described by :class:`TrainConfig`. It is built from defaults, then a YAML file, then
command-line overrides (:func:`resolve`); every field is validated so that a bad value is one
line naming the field and what is allowed (:class:`ConfigError`), raised before anything is
written to disk.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SAMPLING = ("shuffle", "replacement")
PROBE_SCHEDULES = ("linear", "log")
AVERAGES = ("none", "swa", "ema")
DEVICES = ("auto", "cpu", "cuda")


class ConfigError(ValueError):
    """A bad configuration value; the message is one line naming the field."""


@dataclass
class TrainConfig:
    """Everything a training run needs (SPEC §1 for sampling; §2 for optimizers/schedules).

    ``dataset`` and ``model`` are registry names (:func:`sgdlab.data.load`,
    :func:`sgdlab.models.build`) or import strings ``MODULE:CALLABLE`` /
    ``path/to/file.py:CALLABLE`` (see :func:`sgdlab.train.build`); a run on Python objects
    passed to the trainer records ``<module.QualName>``.
    Exactly one of ``steps`` and ``epochs`` sets the length; an epoch is ⌊N/B⌋ steps.
    ``lr`` defaults to the optimizer's own default (required for sgd, momentum, snr_sgd).
    ``schedule`` is a name from :mod:`sgdlab.schedules`; ``total`` for cosine/linear defaults
    to the steps after warm-up. ``warmup_steps`` > 0 wraps the schedule in a linear warm-up.
    ``eval_every``/``log_every``/``checkpoint_every`` are in steps (0: automatic for eval and
    log; for checkpoints only at the end and on SIGINT/SIGTERM). ``probes`` names
    instruments (:mod:`sgdlab.instruments`) measured every ``probe_every`` steps, or at
    log-spaced steps with ``probe_schedule: log``. ``accumulate`` N > 1 computes each step's
    gradient as the sum of N backwards of micro-batches of batch_size/N examples, each of
    (1/batch_size)·Σ_(b∈micro) ℓ_b: the same gradient as one batch up to the order of float
    summation (not under BatchNorm in training mode, which normalises per micro-batch, nor
    with dropout, whose masks are drawn per micro-batch). It is left out of :meth:`to_dict`
    at its default 1, so configs and cache keys of runs without it are unchanged.
    """

    dataset: str = "mnist1d"
    model: str = "cnn"
    optimizer: str = "sgd"
    lr: float | None = None
    batch_size: int = 128
    accumulate: int = 1
    steps: int | None = None
    epochs: float | None = None
    schedule: str = "constant"
    warmup_steps: int = 0
    sampling: str = "shuffle"
    seed: int = 0
    eval_every: int = 0
    log_every: int = 0
    full_train_loss: bool = False
    checkpoint_every: int = 0
    average: str = "none"
    average_start: float = 0.75
    ema_decay: float = 0.999
    device: str = "auto"
    tensorboard: bool = False
    probes: list[str] = field(default_factory=list)
    probe_every: int = 50
    probe_schedule: str = "linear"
    out: str | None = None
    dataset_options: dict[str, Any] = field(default_factory=dict)
    model_options: dict[str, Any] = field(default_factory=dict)
    optimizer_options: dict[str, Any] = field(default_factory=dict)
    schedule_options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (what config.yaml holds); ``accumulate`` only when not 1."""
        d = dataclasses.asdict(self)
        if d["accumulate"] == 1:
            del d["accumulate"]
        return d

    def to_yaml(self) -> str:
        """YAML text of :meth:`to_dict`, keys in field order."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def from_dict(values: dict[str, Any]) -> TrainConfig:
    """Build and validate a config from a mapping; unknown keys are an error."""
    if not isinstance(values, dict):
        raise ConfigError(f"config must be a mapping of field: value, got "
                          f"{type(values).__name__}")
    unknown = sorted((k for k in values if k not in FIELDS), key=str)
    if unknown:
        raise ConfigError(f"unknown config field {unknown[0]!r}; allowed: {', '.join(FIELDS)}")
    cfg = TrainConfig(**values)
    validate(cfg)
    return cfg


class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader that also reads exponent notation without a dot (``5e-4``,
    ``1e3``) as a float, as YAML 1.2 does (YAML 1.1 reads it as a string). A quoted value
    (``'50'``) stays a string, so a wrong type is reported as the user wrote it."""


YamlLoader.yaml_implicit_resolvers = {
    k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def parse_yaml(text: str) -> Any:
    """Parse YAML ``text`` with :class:`YamlLoader` (safe: plain data only)."""
    return yaml.load(text, Loader=YamlLoader)  # noqa: S506 - a SafeLoader subclass


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a mapping (safe loader only, UTF-8 text).

    Every problem (missing, a directory, unreadable, not UTF-8, not YAML, not a mapping) is a
    one-line :class:`ConfigError` starting with ``config:`` and naming the file."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config: file {str(p)!r} does not exist")
    if p.is_dir():
        raise ConfigError(f"config: {p} is a directory, not a YAML file")
    try:
        raw = p.read_bytes()
    except OSError as err:
        raise ConfigError(f"config: cannot read {p} ({err.strerror or type(err).__name__})") \
            from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"config: {p} is not UTF-8 text (byte 0x{raw[err.start]:02x} at "
                          f"offset {err.start}); save it as UTF-8") from None
    try:
        data = parse_yaml(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"config: {p} is not valid YAML ({_yaml_problem(err)})") from None
    except RecursionError:
        raise ConfigError(f"config: {p} is nested too deeply") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config: {p} must hold a mapping of field: value, got "
                          f"{_yaml_type(data)}")
    return data


def _yaml_problem(err: yaml.YAMLError) -> str:
    """One line for a YAML error: the problem and its line/column."""
    problem = getattr(err, "problem", None)
    mark = getattr(err, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _yaml_type(value: Any) -> str:
    """The YAML name of a value's type, for messages."""
    return {list: "a list", str: "a string", int: "a number", float: "a number",
            bool: "a boolean"}.get(type(value), type(value).__name__)


def resolve(file: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """Defaults, then the YAML ``file``, then ``overrides`` (``None`` values are skipped)."""
    values: dict[str, Any] = load_yaml(file) if file else {}
    for key, value in overrides.items():
        if value is None:
            continue
        if key.endswith("_options") and isinstance(value, dict):
            base = values.get(key) or {}
            if not isinstance(base, dict):
                raise ConfigError(f"{key} must be a mapping, got {base!r}")
            values[key] = {**base, **value}
        else:
            values[key] = value
    if overrides.get("steps") is not None:
        values.pop("epochs", None)
    if overrides.get("epochs") is not None:
        values.pop("steps", None)
    return from_dict(values)


def _int(name: str, value: Any, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ConfigError(f"{name} must be an integer >= {lo}, got {value!r}")


def _num(name: str, value: Any, lo: float, hi: float = math.inf, lo_open: bool = False) -> None:
    ok = (not isinstance(value, bool) and isinstance(value, (int, float))
          and math.isfinite(value) and (value > lo if lo_open else value >= lo) and value <= hi)
    if not ok:
        left = "(" if lo_open else "["
        right = ")" if math.isinf(hi) else "]"
        raise ConfigError(f"{name} must be a number in {left}{lo:g}, {hi:g}{right}, got {value!r}")


def _choice(name: str, value: Any, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


# --------------------------------------------------------------------------- import strings

#: ``model``/``dataset`` of a run trained on Python objects given to ``Trainer(model=...)``:
#: ``<module.QualName>``, a record of what was used (such a run resumes in Python only).
OBJECT_PREFIX = "<"


def is_import_string(value: Any) -> bool:
    """``MODULE:CALLABLE`` or ``path/to/file.py:CALLABLE`` (both sides non-empty)."""
    if not isinstance(value, str) or ":" not in value:
        return False
    module, _, attr = value.rpartition(":")
    return bool(module.strip()) and bool(attr.strip()) and not value.startswith(OBJECT_PREFIX)


def object_name(obj: Any) -> str:
    """What config.yaml records for a Python object: ``<module.QualName>``."""
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{OBJECT_PREFIX}{cls.__module__}.{cls.__qualname__}>"


def normalise_import_string(value: str) -> str:
    """A file import string with its path made absolute (so a resume from another directory
    finds the same file); a module import string unchanged."""
    if not is_import_string(value):
        return value
    module, _, attr = value.rpartition(":")
    if module.endswith(".py") or "/" in module or "\\" in module:
        return f"{Path(module).expanduser().resolve()}:{attr}"
    return value


def import_callable(value: str, field_name: str) -> Any:
    """Import the object an import string names (SPEC-free plumbing of the CLI's
    ``--model``/``--dataset``): ``pkg.mod:fn`` (importlib) or ``path/to/file.py:fn`` (the file
    is executed as a module: importing user code is the contract of an import string);
    ``fn`` may be dotted (``mod:Class.factory``). Raises :class:`ConfigError` starting with
    ``field_name:`` when the module cannot be imported or has no such attribute."""
    import importlib
    import importlib.util
    import sys

    module_name, _, attr = value.rpartition(":")
    where = f"{field_name}: {value!r}"
    try:
        if module_name.endswith(".py") or "/" in module_name:
            path = Path(module_name).expanduser().resolve()
            if not path.is_file():
                raise ConfigError(f"{where}: file {str(path)!r} does not exist")
            name = f"sgdlab_user_{abs(hash(str(path)))}"
            if name in sys.modules:
                module = sys.modules[name]
            else:
                spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[name]
                    raise
        else:
            module = importlib.import_module(module_name)
    except ConfigError:
        raise
    except Exception as err:
        raise ConfigError(f"{where}: cannot import {module_name!r} "
                          f"({type(err).__name__}: {_first_line(err)})") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{where}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{where}: {attr!r} is not callable")
    return obj


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def call_user(fn: Any, field_name: str, value: str, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``; any exception it raises becomes one :class:`ConfigError` line
    starting with ``field_name:``."""
    try:
        return fn(*args, **kwargs)
    except ConfigError:
        raise
    except Exception as err:
        raise ConfigError(f"{field_name}: {value!r} raised {type(err).__name__}: "
                          f"{_first_line(err)}") from None


def check_new_name(kind: str, name: Any, known: list[str], builtin: frozenset[str],
                   replace: bool) -> None:
    """Validate a name for a public registry (``models.register``, ``optim.register``): a
    non-empty string of letters, digits and ``_``, not built in, and not registered yet
    unless ``replace``. Raises ``ValueError`` (one line, listing the known names)."""
    if not isinstance(name, str) or not name or not name.replace("_", "").isalnum():
        raise ValueError(f"{kind} name must be a non-empty string of letters, digits and _, "
                         f"got {name!r}")
    if name in builtin or (name in known and not replace):
        raise ValueError(f"{kind} {name!r} is already registered (known: {', '.join(known)});"
                         " pick another name" + ("" if name in builtin else
                                                 " or pass replace=True"))


def _name_or_import(name: str, value: Any, choices) -> None:
    if is_import_string(value) or (isinstance(value, str) and value.startswith(OBJECT_PREFIX)):
        return
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)} or an import string "
                          f"MODULE:CALLABLE (or path/to/file.py:CALLABLE), got {value!r}")


def validate(cfg: TrainConfig) -> None:
    """Check every field's type and range. ``dataset`` and ``model`` are registry names or
    import strings (``MODULE:CALLABLE``, checked for their form here and imported when the run
    is built); optimizers and schedules are checked against their registries."""
    from sgdlab import data, models, optim, schedules

    _name_or_import("dataset", cfg.dataset, data.names())
    _name_or_import("model", cfg.model, models.available())
    _choice("optimizer", cfg.optimizer, optim.available())
    _choice("schedule", cfg.schedule, schedules.available())
    if cfg.lr is not None:
        _num("lr", cfg.lr, 0.0)
    _int("batch_size", cfg.batch_size, 1)
    _int("accumulate", cfg.accumulate, 1)
    if cfg.batch_size % cfg.accumulate:
        raise ConfigError(f"batch_size ({cfg.batch_size}) must be divisible by accumulate "
                          f"({cfg.accumulate}): micro-batches of equal size")
    if (cfg.steps is None) == (cfg.epochs is None):
        raise ConfigError("give exactly one of steps and epochs, got "
                          f"steps={cfg.steps!r}, epochs={cfg.epochs!r}")
    if cfg.steps is not None:
        _int("steps", cfg.steps, 1)
    if cfg.epochs is not None:
        _num("epochs", cfg.epochs, 0.0, lo_open=True)
    _int("warmup_steps", cfg.warmup_steps, 0)
    _choice("sampling", cfg.sampling, SAMPLING)
    _int("seed", cfg.seed, 0)
    for name in ("eval_every", "log_every", "checkpoint_every"):
        _int(name, getattr(cfg, name), 0)
    for name in ("full_train_loss", "tensorboard"):
        if not isinstance(getattr(cfg, name), bool):
            raise ConfigError(f"{name} must be true or false, got {getattr(cfg, name)!r}")
    _choice("average", cfg.average, AVERAGES)
    _num("average_start", cfg.average_start, 0.0, 1.0)
    _num("ema_decay", cfg.ema_decay, 0.0, 1.0)
    _choice("device", cfg.device, DEVICES)
    from sgdlab import instruments

    if not isinstance(cfg.probes, list):
        raise ConfigError(f"probes must be a list of names, got {cfg.probes!r}")
    for name in cfg.probes:
        if not isinstance(name, str):
            raise ConfigError(f"probe must be one of {', '.join(instruments.available())}, "
                              f"got {name!r}")
        instruments.parse(name)          # NAME or NAME:KEY=VALUE…; unknown ones raise
    _int("probe_every", cfg.probe_every, 1)
    _choice("probe_schedule", cfg.probe_schedule, PROBE_SCHEDULES)
    for name in ("dataset_options", "model_options", "optimizer_options", "schedule_options"):
        if not isinstance(getattr(cfg, name), dict):
            raise ConfigError(f"{name} must be a mapping, got {getattr(cfg, name)!r}")
        bad = [k for k in getattr(cfg, name) if not isinstance(k, str) or not k.isidentifier()]
        if bad:
            raise ConfigError(f"{name}: option names must be identifiers (letters, digits, _), "
                              f"got {bad[0]!r}")
    if cfg.out is not None and not isinstance(cfg.out, str):
        raise ConfigError(f"out must be a directory path, got {cfg.out!r}")
