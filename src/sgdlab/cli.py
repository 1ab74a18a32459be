"""Command line: ``sgdlab train | lr-find | check | probe | reproduce``.

``--model`` and ``--dataset`` take a registry name or an import string ``MODULE:CALLABLE``
(``path/to/file.py:CALLABLE`` for a file; its path is recorded absolute in config.yaml, so
``--resume`` and ``sgdlab probe`` rebuild the same objects). See :func:`sgdlab.train.build`
for what the callables receive and return.

Every bad value is reported as one line naming the field and what is allowed, with exit
code 2 and nothing written. ``train`` exits 0 when the run completes, 3 when it diverges and
128 + the signal number when it is interrupted (after writing a checkpoint to resume from).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from sgdlab import __version__
from sgdlab.paths import check_writable_dir, os_error_line

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump) and exit code 2."""

    def error(self, message: str):  # noqa: D102
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _kv(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` of ``--opt`` and friends; VALUE is read as YAML (numbers, lists, ...)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    if not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with a non-empty KEY, got {text!r}")
    from sgdlab.config import parse_yaml

    try:
        return key.strip(), parse_yaml(value)
    except (yaml.YAMLError, RecursionError):
        return key.strip(), value


def _names(values) -> str:
    """A registry's names as the help lists them: ``one of: a, b, c;``."""
    return "one of: " + ", ".join(values) + ";"


def registries() -> dict[str, list[str]]:
    """The names ``--help`` lists, read from the registries (so the help cannot drift):
    datasets, models, optimizers, schedules, instruments, claims."""
    from sgdlab import data, experiments, instruments, models, optim, schedules

    return {"datasets": list(data.names()), "models": list(models.available()),
            "optimizers": list(optim.available()), "schedules": list(schedules.available()),
            "instruments": list(instruments.available()),
            "claims": list(experiments.available())}


def _lr_required() -> list[str]:
    """Optimizers without a default learning rate (``--lr`` is required for them)."""
    import inspect

    from sgdlab import optim

    return [n for n in optim.available()
            if optim.hyperparameters(n).get("lr", inspect.Parameter.empty)
            is inspect.Parameter.empty]


def _default(field: str) -> str:
    """The :class:`~sgdlab.config.TrainConfig` default of ``field``, as the help shows it."""
    import dataclasses

    from sgdlab.config import FIELDS

    f = FIELDS[field]
    value = f.default_factory() if f.default is dataclasses.MISSING else f.default
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None or value in ([], {}):
        return "none"
    return str(value)


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments shared by train, lr-find and check: what to train and how. Their defaults
    are those of :class:`~sgdlab.config.TrainConfig`, then the ``--config`` file."""
    reg = registries()
    imp = "or an import string MODULE:CALLABLE / path/to/file.py:CALLABLE"
    d = _default
    p.add_argument("--config", metavar="FILE.yaml",
                   help="YAML file of config fields (the names of config.yaml); the flags "
                        "given here override it (default: none)")
    p.add_argument("--dataset", help=f"data set, {_names(reg['datasets'])} {imp} returning what "
                   "Trainer(data=...) takes: an sgdlab Dataset or MapData, a dict of x_train, "
                   "y_train, x_test, y_test (+ task), or map-style torch Datasets (train, test) "
                   f"(default: {d('dataset')})")
    p.add_argument("--model", help=f"model, {_names(reg['models'])} {imp} taking the data's "
                   f"DataSpec (or nothing) and returning an nn.Module (default: {d('model')})")
    p.add_argument("--optimizer", help=f"optimizer, {_names(reg['optimizers'])} "
                   f"hyper-parameters with --opt (default: {d('optimizer')})")
    p.add_argument("--lr", type=float, help="learning rate, a number >= 0 (default: the "
                   f"optimizer's own; required for {', '.join(_lr_required())})")
    p.add_argument("--schedule", help=f"learning-rate schedule, {_names(reg['schedules'])} "
                   f"parameters with --schedule-opt (default: {d('schedule')})")
    p.add_argument("--warmup-steps", type=int, help="steps of linear warm-up before the "
                   f"schedule, an integer >= 0 (default: {d('warmup_steps')})")
    p.add_argument("--batch-size", type=int, help="examples per step, an integer >= 1 "
                   f"(default: {d('batch_size')})")
    p.add_argument("--accumulate", type=int, help="gradient accumulation: each step's "
                   "gradient from this many micro-batches of batch-size/N examples (the same "
                   f"gradient up to float summation order) (default: {d('accumulate')})")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="length of the run in optimizer steps, an "
                        "integer >= 1; give this or --epochs, here or in the config "
                        "(default: none)")
    length.add_argument("--epochs", type=float, help="length of the run in epochs of "
                        "floor(N/B) steps, a number > 0; give this or --steps (default: none)")
    p.add_argument("--sampling", help="batches: shuffle (epochs without replacement) or "
                   f"replacement (i.i.d. batches) (default: {d('sampling')})")
    p.add_argument("--seed", type=int, help="seed of data, model and sampler, an integer >= 0 "
                   f"(default: {d('seed')})")
    p.add_argument("--device", help="auto (cuda when available), cpu or cuda "
                   f"(default: {d('device')})")
    p.add_argument("--data-dir", help="directory holding the data files (cifar10) "
                   "(default: $SGDLAB_DATA_DIR, else the user data directory)")
    for flag, what, example in (("--opt", "optimizer hyper-parameter", "beta=0.9"),
                                ("--model-opt", "model option", "width=200"),
                                ("--data-opt", "data-set option", "n_train=1000"),
                                ("--schedule-opt", "schedule parameter", "every=1000")):
        p.add_argument(flag, type=_kv, action="append", default=[], metavar="KEY=VALUE",
                       help=f"{what}, VALUE read as YAML, e.g. {flag} {example}; repeatable "
                            "(default: none)")


def _add_train_arguments(t: argparse.ArgumentParser) -> None:
    """The options of ``sgdlab train`` beyond :func:`_add_run_arguments`."""
    reg, d = registries(), _default
    t.add_argument("--out", help="run directory to create; it must not hold files yet "
                   "(default: runs/<dataset>-<model>-<optimizer>, with -2, -3, … if taken)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its "
                   "last checkpoint, bit for bit (default: start a new run)")
    t.add_argument("--eval-every", type=int, help="steps between evaluations, an integer >= 0; "
                   f"0: 20 evaluations per run (default: {d('eval_every')})")
    t.add_argument("--log-every", type=int, help="steps between lines of metrics.jsonl, an "
                   "integer >= 0; 0: about 200 lines per run, at least every 50 steps "
                   f"(default: {d('log_every')})")
    t.add_argument("--full-train-loss", action="store_true", default=None,
                   help="also evaluate the loss on the whole training set at each "
                        f"evaluation (default: {d('full_train_loss')})")
    t.add_argument("--checkpoint-every", type=int, help="steps between checkpoints, an "
                   "integer >= 0 (a run also checkpoints at its end and on SIGINT/SIGTERM) "
                   f"(default: {d('checkpoint_every')})")
    from sgdlab.config import AVERAGES, PROBE_SCHEDULES

    t.add_argument("--average", help=f"weight averaging, {_names(AVERAGES)} swa and ema as in "
                   f"torch.optim.swa_utils (default: {d('average')})")
    t.add_argument("--average-start", type=float, help="fraction of the run before averaging "
                   f"starts, a number in [0, 1] (default: {d('average_start')})")
    t.add_argument("--ema-decay", type=float, help="decay of the ema average, a number in "
                   f"[0, 1] (default: {d('ema_decay')})")
    t.add_argument("--tensorboard", action="store_true", default=None,
                   help="also write TensorBoard event files under OUT/tensorboard "
                        f"(default: {d('tensorboard')})")
    t.add_argument("--probe", help=f"comma-separated instruments, each {_names(reg['instruments'])}"
                   f" (default: {d('probes')})")
    t.add_argument("--probe-every", type=int, help="steps between measurements, an integer "
                   f">= 1 (default: {d('probe_every')})")
    t.add_argument("--probe-schedule", help=f"when to measure, {_names(PROBE_SCHEDULES)} "
                   "linear: every --probe-every steps, log: log-spaced steps "
                   f"(default: {d('probe_schedule')})")
    t.add_argument("--nproc", type=int, default=None,
                   help="data-parallel processes on this machine (torch.distributed; gloo on "
                        "CPU, nccl on GPU), an integer >= 1 (default: 1; with --resume, the "
                        "run's own)")
    t.add_argument("--quiet", action="store_true", help="no progress output (default: progress "
                   "on stderr)")
    t.add_argument("--check-config", "--dry-run", dest="check_config", action="store_true",
                   help="validate everything (fields, --out, data, model, optimizer, schedule) "
                        "and exit without training or writing anything (default: off)")


def build_parser() -> argparse.ArgumentParser:
    """The ``sgdlab`` argument parser with its sub-commands; every option's help gives its
    default and what is allowed, the lists of names read from the registries."""
    parser = _Parser(prog="sgdlab", description="Train with stochastic gradient descent and "
                                                "measure what SGD does.")
    parser.add_argument("--version", action="version", version=f"sgdlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    reg = registries()

    t = sub.add_parser("train", help="train a model; writes a run directory",
                       description="Train a model; writes a run directory. Exit 0: completed, "
                                   "2: bad input, 3: diverged, 128+N: stopped by signal N.")
    _add_run_arguments(t)
    _add_train_arguments(t)

    f = sub.add_parser("lr-find", help="learning-rate range test (SPEC §4.11)")
    _add_run_arguments(f)
    f.add_argument("--start-lr", type=float, default=1e-6,
                   help="first learning rate, a number > 0 (default: %(default)s)")
    f.add_argument("--end-lr", type=float, default=10.0,
                   help="last learning rate, a number > --start-lr (default: %(default)s)")
    f.add_argument("--num-steps", type=int, default=200,
                   help="steps of the test, an integer >= 10 (default: %(default)s)")
    f.add_argument("--out", help="directory for lr_find.png and lr_find.json, checked before "
                   "the test runs (default: nothing written)")

    pr = sub.add_parser("probe", help="measure instruments at a run's last checkpoint")
    pr.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by sgdlab "
                    "train (config.yaml and checkpoints/last.pt)")
    pr.add_argument("--probe", default="effective_lr,noise_scale,sharpness",
                    help=f"comma-separated instruments, each {_names(reg['instruments'])} "
                         "(default: %(default)s)")
    pr.add_argument("--batch-size", type=int, help="examples for the per-batch quantities, an "
                    "integer >= 1 (default: the run's batch size)")

    rp = sub.add_parser("reproduce", help="measure the notes' claims; writes a report")
    mode = rp.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", const="quick", dest="mode",
                      help="all claims in about 5 minutes on 2 CPU cores (the default)")
    mode.add_argument("--full", action="store_const", const="full", dest="mode",
                      help="more seeds and longer runs, about 40 minutes on 2 CPU cores "
                           "(default: --quick)")
    mode.add_argument("--smoke", action="store_const", const="smoke", dest="mode",
                      help="tiny budgets, used by the test suite (default: --quick)")
    rp.add_argument("--only", help=f"comma-separated claims, each {_names(reg['claims'])} or "
                    "its number (e.g. 1,5) (default: all)")
    rp.add_argument("--seeds", type=int, help="seeds where a claim repeats over seeds, an "
                    "integer >= 1 (default: 1 smoke, 2 quick, 5 full)")
    rp.add_argument("--out", required=True, help="report directory, checked before anything "
                    "runs; runs are cached in OUT/cache, so an interrupted run resumes "
                    "(required)")
    rp.add_argument("--strict", action="store_true", help="exit 1 when any claim is FAIL "
                    "(default: exit 0 whatever the verdicts)")
    rp.add_argument("--jobs", type=int, help="claims run side by side in this many worker "
                    "processes, an integer >= 1 (default: the CPU cores available, "
                    f"here {_default_jobs()})")

    c = sub.add_parser("check", help="initial-loss and overfit checks (SPEC §4.11)")
    _add_run_arguments(c)
    c.add_argument("--overfit-examples", type=int, default=50, help="training examples the "
                   "model must overfit, an integer >= 1 (default: %(default)s)")
    c.add_argument("--overfit-steps", type=int, default=500, help="steps allowed for the "
                   "overfit check, an integer >= 1 (default: %(default)s)")
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("dataset", "model", "optimizer", "lr", "schedule", "warmup_steps", "batch_size",
            "accumulate",
            "steps", "epochs", "sampling", "seed", "device", "eval_every", "log_every",
            "full_train_loss", "checkpoint_every", "average", "average_start", "ema_decay",
            "tensorboard", "out", "probe_every", "probe_schedule")
    out = {k: getattr(args, k, None) for k in keys}
    for key in ("dataset", "model"):
        if out[key] is not None:
            from sgdlab.config import normalise_import_string

            out[key] = normalise_import_string(out[key])
    probe = getattr(args, "probe", None)
    out["probes"] = [p.strip() for p in probe.split(",") if p.strip()] if probe else None
    out["optimizer_options"] = dict(args.opt) or None
    out["model_options"] = dict(args.model_opt) or None
    data_opts = dict(args.data_opt)
    if args.data_dir:
        data_opts["data_dir"] = args.data_dir
    out["dataset_options"] = data_opts or None
    out["schedule_options"] = dict(args.schedule_opt) or None
    return out


def _short_name(value: str) -> str:
    """A registry name as it is; an import string by its callable (``pkg.mod:make`` → make)."""
    return value.rpartition(":")[2].rsplit(".", 1)[-1] if ":" in value else value


def _default_out(cfg) -> str:
    base = Path("runs") / "-".join(_short_name(v) for v in (cfg.dataset, cfg.model,
                                                            cfg.optimizer))
    candidate, k = base, 1
    while candidate.exists():
        k += 1
        candidate = Path(f"{base}-{k}")
    return str(candidate)


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"sgdlab: error: {message}", file=sys.stderr)
    return code


def _cmd_train(args: argparse.Namespace) -> int:
    """``sgdlab train``: a new run, or ``--resume`` of one; ``--nproc N`` starts N ranks
    (:mod:`sgdlab.launch`) once everything has been checked in this process."""
    from sgdlab import runlock
    from sgdlab.train import Trainer

    if args.nproc is not None and args.nproc < 1:
        return _fail(f"nproc must be an integer >= 1, got {args.nproc}")
    if "WORLD_SIZE" in os.environ:  # a rank (of sgdlab.launch, or of the user's torchrun)
        return _train_rank(args)
    cfg, run_dir, nproc = _train_config(args)
    if nproc > 1:
        if cfg.batch_size % nproc:
            return _fail(f"batch_size must be divisible by the {nproc} processes, "
                         f"got {cfg.batch_size}")
        Trainer(dataclasses.replace(cfg, out=None, device="cpu"), progress=False)  # validate
        lock = runlock.acquire(run_dir)
        try:
            if not args.resume and (problem := _occupied(run_dir)):
                return _fail(problem)
            from sgdlab.launch import launch

            argv = _rank_argv(sys.argv[1:], cfg.out)
            return launch(argv, nproc, {runlock.ENV: runlock._key(run_dir)})
        finally:
            lock.release()
    trainer = Trainer(cfg, progress=not args.quiet)
    try:
        summary = trainer.resume() if args.resume else trainer.fit(new_directory=True)
    except KeyboardInterrupt:  # before the loop took over the signals: nothing to resume
        print(f"sgdlab: interrupted before training started; start again with: "
              f"sgdlab train --resume {run_dir}", file=sys.stderr)
        return 130
    return _report(trainer, summary)


def _train_config(args: argparse.Namespace):
    """(config, run directory, number of processes) of ``sgdlab train``, every input checked
    (one-line :class:`~sgdlab.config.ConfigError` otherwise; nothing written).

    A new run: the config from ``--config`` and the flags, ``--out`` writable and holding no
    files. ``--resume RUN``: the run's own config.yaml with the flags given applied (the
    trainer refuses those that cannot change when resuming, naming them), and the run's own
    number of processes unless ``--nproc`` is given."""
    from sgdlab import config as cfgmod

    nproc = args.nproc
    if not args.resume:
        cfg = cfgmod.resolve(args.config, **_overrides(args))
        if cfg.out is None:
            cfg.out = _default_out(cfg)
        out = check_writable_dir(cfg.out, "out")
        if problem := _occupied(out):
            raise cfgmod.ConfigError(problem)
        return cfg, out, nproc or 1
    run_dir = Path(args.resume)
    for flag, value in (("--out", args.out), ("--config", args.config)):
        if value is not None:
            raise cfgmod.ConfigError(f"{flag} cannot be combined with --resume (the run's own "
                                     "config.yaml is used; give the fields to change as flags)")
    if not run_dir.is_dir():
        raise cfgmod.ConfigError(f"resume: {run_dir} is not a directory")
    if not (run_dir / "config.yaml").is_file():
        raise cfgmod.ConfigError(f"resume: {run_dir} is not a run directory (no config.yaml)")
    check_writable_dir(run_dir, "resume")
    cfg = _resumed_config(args, run_dir)
    if nproc is None:
        nproc = _trained_world_size(run_dir)
        if nproc > 1:
            print(f"sgdlab: resuming with --nproc {nproc}, as the run was trained (give "
                  "--nproc to change it)", file=sys.stderr)
    return cfg, run_dir, nproc


def _resumed_config(args: argparse.Namespace, run_dir: Path):
    """The run's own config.yaml with the flags given on this command line applied (the
    trainer refuses, naming them, those that cannot change when resuming)."""
    from sgdlab import config as cfgmod

    given = {k: v for k, v in _overrides(args).items() if v is not None and k != "out"}
    return cfgmod.resolve(run_dir / "config.yaml", **given, out=str(run_dir))


def _trained_world_size(run_dir: Path) -> int:
    """The number of processes that wrote the run's checkpoint (1 without one)."""
    from sgdlab import checkpoint

    path = run_dir / "checkpoints" / "last.pt"
    if not path.exists():
        return 1
    return int(checkpoint.load(path).get("world_size", 1))


def _occupied(run_dir: Path) -> str | None:
    from sgdlab.train import occupied

    return occupied(run_dir)


def _rank_argv(argv: list[str], out: str) -> list[str]:
    """The ranks' command line: this one without ``--nproc``, with the chosen ``--out`` (so
    that every rank writes to the directory the launcher checked and locked)."""
    cleaned, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--nproc", "--out"):
            skip = True
            continue
        if a.startswith(("--nproc=", "--out=")):
            continue
        cleaned.append(a)
    return cleaned if "--resume" in cleaned or any(a.startswith("--resume=") for a in cleaned) \
        else [*cleaned, "--out", str(out)]


def _train_rank(args: argparse.Namespace) -> int:
    """One rank of a data-parallel run; only rank 0 reports."""
    from sgdlab import config as cfgmod
    from sgdlab import runlock
    from sgdlab.train import Trainer

    rank = int(os.environ.get("RANK", "0"))
    trainer = None
    try:
        if args.resume:
            run_dir = Path(args.resume)
            cfg = _resumed_config(args, run_dir)
        else:
            cfg = cfgmod.resolve(args.config, **_overrides(args))
            if cfg.out is None:
                raise cfgmod.ConfigError("out: give --out to a data-parallel run started "
                                         "under torchrun")
        trainer = Trainer(cfg, progress=not args.quiet and rank == 0)
        new = not args.resume and not runlock.inherited(cfg.out)
        summary = trainer.resume() if args.resume else trainer.fit(new_directory=new)
    except cfgmod.ConfigError as err:
        return _fail(str(err)) if rank == 0 else EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    finally:
        import torch.distributed as dist
        if dist.is_initialized():
            try:
                dist.barrier()  # let rank 0 finish writing before any rank tears gloo down
            finally:
                dist.destroy_process_group()
    if rank != 0:
        return trainer.exit_code(summary)
    return _report(trainer, summary)


def _report(trainer, summary: dict[str, Any]) -> int:
    """Print the end of a run (rank 0) and return its exit code."""
    if summary.get("already_completed"):
        print(f"sgdlab: {summary['run_dir']} already completed {summary['steps']} steps; "
              "nothing changed (train it longer with: sgdlab train --resume "
              f"{summary['run_dir']} --steps N)")
        return 0
    final = summary["final"]
    if summary["status"] in ("diverged", "interrupted"):
        print(f"sgdlab: {summary['message']}", file=sys.stderr)
    else:
        parts = [f"{k} {final[k]:.4f}" for k in ("test_acc", "test_loss", "avg_test_acc")
                 if k in final and final[k] is not None]
        print(f"done: {summary['steps']} steps in {summary['wall_time']:.1f} s; "
              + ", ".join(parts))
    print(f"run directory: {summary['run_dir']}")
    return trainer.exit_code(summary)


def _cmd_lr_find(args: argparse.Namespace) -> int:
    from sgdlab import config as cfgmod
    from sgdlab import recipe

    try:
        overrides = _overrides(args)
        overrides["out"] = None
        if args.steps is None and args.epochs is None:
            overrides["steps"] = max(1, args.num_steps)  # lr_find names a bad --num-steps
        cfg = cfgmod.resolve(args.config, **overrides)
        if args.out is not None:
            check_writable_dir(args.out, "out")  # before the test runs, not after
        result = recipe.lr_find(cfg, start_lr=args.start_lr, end_lr=args.end_lr,
                                num_steps=args.num_steps, out=args.out)
    except cfgmod.ConfigError as err:
        return _fail(str(err))
    print(f"range test: {len(result.lrs)} steps from {result.lrs[0]:.2g} to "
          f"{result.lrs[-1]:.2g}" + (" (stopped at divergence)" if result.diverged else ""))
    print(f"lowest smoothed loss {result.min_loss:.4g} at lr {result.min_loss_lr:.3g}; "
          f"steepest descent at lr {result.steepest_lr:.3g}")
    print(f"suggested lr: {result.suggestion:.3g}")
    if args.out:
        print(f"plot: {Path(args.out) / 'lr_find.png'}")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from sgdlab import config as cfgmod
    from sgdlab import recipe

    try:
        overrides = _overrides(args)
        overrides["out"] = None
        if args.steps is None and args.epochs is None:
            overrides["steps"] = max(1, args.overfit_steps)  # check names a bad value
        cfg = cfgmod.resolve(args.config, **overrides)
        results = recipe.check(cfg, overfit_examples=args.overfit_examples,
                               overfit_steps=args.overfit_steps)
    except cfgmod.ConfigError as err:
        return _fail(str(err))
    for r in results:
        print(f"{'PASS' if r.passed else 'FAIL'}  {r.name}: {r.detail}")
    return 0 if all(r.passed for r in results) else 1


def _cmd_probe(args: argparse.Namespace) -> int:
    from sgdlab import config as cfgmod
    from sgdlab import probe_run

    names = [p.strip() for p in args.probe.split(",") if p.strip()]
    try:
        rows = probe_run.probe_checkpoint(args.run_dir, names, batch_size=args.batch_size)
    except cfgmod.ConfigError as err:
        return _fail(str(err))
    if not rows:
        print("sgdlab: warning: no quantity was measured at this checkpoint", file=sys.stderr)
        return 0
    width = max(len(f"{n}.{k}") for n, k, _ in rows)
    print(f"{'quantity':{width}s}  value")
    for name, key, value in rows:
        print(f"{name + '.' + key:{width}s}  {value:.6g}")
    return 0


def _default_jobs() -> int:
    """``reproduce --jobs`` when not given: the CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:                      # not Linux
        return max(1, os.cpu_count() or 1)


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from sgdlab import config as cfgmod
    from sgdlab import report
    from sgdlab.reproduce import reproduce

    only = [c.strip() for c in args.only.split(",") if c.strip()] if args.only else None
    try:
        results = reproduce(args.out, mode=args.mode or "quick", only=only, seeds=args.seeds,
                            jobs=_default_jobs() if args.jobs is None else args.jobs)
    except cfgmod.ConfigError as err:
        return _fail(str(err))
    print(report.verdict_table(results))
    print(f"report: {Path(args.out) / 'report.html'}")
    if args.strict and any(r.verdict == "FAIL" for r in results):
        return 1
    return 0


def _cmd_check_config(args: argparse.Namespace) -> int:
    """``sgdlab train --check-config``: validate a new run as ``train`` would (every field,
    ``--out``, then build data, model, optimizer, schedule and instruments), print one line
    and exit 0, or one error line and exit 2. Nothing is written."""
    from sgdlab import config as cfgmod
    from sgdlab.train import Trainer

    if args.resume:
        return _fail("--check-config validates a new run; it cannot be combined with --resume")
    nproc = 1 if args.nproc is None else args.nproc
    if nproc < 1:
        return _fail(f"nproc must be an integer >= 1, got {nproc}")
    try:
        cfg = cfgmod.resolve(args.config, **_overrides(args))
        out = Path(cfg.out if cfg.out is not None else _default_out(cfg))
        check_writable_dir(out, "out")
        if problem := _occupied(out):
            return _fail(problem)
        if cfg.batch_size % nproc:
            return _fail(f"batch_size must be divisible by the {nproc} processes, "
                         f"got {cfg.batch_size}")
        trainer = Trainer(dataclasses.replace(cfg, out=None), progress=False)
    except cfgmod.ConfigError as err:
        return _fail(str(err))
    print(f"config OK: {cfg.dataset} / {cfg.model} / {cfg.optimizer}, "
          f"{trainer.total_steps} steps of batch {cfg.batch_size}; would write {out}")
    return 0


def _run_handler(handler, args: argparse.Namespace) -> int:
    """Run a sub-command; what escapes it as a bad input (a :class:`ConfigError`, an
    ``OSError`` naming a path) is one line and exit 2, Ctrl-C outside ``train`` exit 130."""
    from sgdlab.config import ConfigError

    try:
        return handler(args)
    except ConfigError as err:
        return _fail(str(err))
    except OSError as err:
        return _fail(os_error_line(err))
    except KeyboardInterrupt:
        if args.command == "train":
            raise
        print("sgdlab: interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sgdlab`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "train" and args.check_config:
        return _run_handler(_cmd_check_config, args)
    handler = {"train": _cmd_train, "lr-find": _cmd_lr_find, "check": _cmd_check,
               "probe": _cmd_probe, "reproduce": _cmd_reproduce}
    return _run_handler(handler[args.command], args)


if __name__ == "__main__":
    sys.exit(main())
