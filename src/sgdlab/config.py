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

    Exactly one of ``steps`` and ``epochs`` sets the length; an epoch is ⌊N/B⌋ steps.
    ``lr`` defaults to the optimizer's own default (required for sgd, momentum, snr_sgd).
    ``schedule`` is a name from :mod:`sgdlab.schedules`; ``total`` for cosine/linear defaults
    to the steps after warm-up. ``warmup_steps`` > 0 wraps the schedule in a linear warm-up.
    ``eval_every``/``log_every``/``checkpoint_every`` are in steps (0: automatic for eval and
    log; for checkpoints only at the end and on SIGINT/SIGTERM). ``probes`` names
    instruments (:mod:`sgdlab.instruments`) measured every ``probe_every`` steps, or at
    log-spaced steps with ``probe_schedule: log``.
    """

    dataset: str = "mnist1d"
    model: str = "cnn"
    optimizer: str = "sgd"
    lr: float | None = None
    batch_size: int = 128
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
        """Plain-data form (what config.yaml holds)."""
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        """YAML text of :meth:`to_dict`, keys in field order."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def from_dict(values: dict[str, Any]) -> TrainConfig:
    """Build and validate a config from a mapping; unknown keys are an error."""
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ConfigError(f"unknown config field {unknown[0]!r}; allowed: {', '.join(FIELDS)}")
    cfg = TrainConfig(**values)
    validate(cfg)
    return cfg


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def coerce_numbers(value: Any) -> Any:
    """Turn strings such as ``"5e-4"`` into floats, recursively.

    YAML 1.1 (PyYAML) reads exponent notation without a dot (``5e-4``) as a string; every
    number of a config is meant as a number.
    """
    if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        return float(value)
    if isinstance(value, dict):
        return {k: coerce_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [coerce_numbers(v) for v in value]
    return value


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a mapping (safe loader only)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config: file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config: {p} is not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config: {p} must hold a mapping of field: value")
    return coerce_numbers(data)


def resolve(file: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """Defaults, then the YAML ``file``, then ``overrides`` (``None`` values are skipped)."""
    values: dict[str, Any] = load_yaml(file) if file else {}
    for key, value in overrides.items():
        if value is None:
            continue
        if key.endswith("_options") and isinstance(value, dict):
            values[key] = {**values.get(key, {}), **value}
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


def validate(cfg: TrainConfig) -> None:
    """Check every field's type and range (names of datasets, models, optimizers and schedules
    are checked against their registries when the run is built)."""
    from sgdlab import data, models, optim, schedules

    _choice("dataset", cfg.dataset, data.names())
    _choice("model", cfg.model, models.available())
    _choice("optimizer", cfg.optimizer, optim.available())
    _choice("schedule", cfg.schedule, schedules.available())
    if cfg.lr is not None:
        _num("lr", cfg.lr, 0.0)
    _int("batch_size", cfg.batch_size, 1)
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
        _choice("probe", name, instruments.available())
    _int("probe_every", cfg.probe_every, 1)
    _choice("probe_schedule", cfg.probe_schedule, PROBE_SCHEDULES)
    for name in ("dataset_options", "model_options", "optimizer_options", "schedule_options"):
        if not isinstance(getattr(cfg, name), dict):
            raise ConfigError(f"{name} must be a mapping, got {getattr(cfg, name)!r}")
    if cfg.out is not None and not isinstance(cfg.out, str):
        raise ConfigError(f"out must be a directory path, got {cfg.out!r}")
