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
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from sgdlab import __version__

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump) and exit code 2."""

    def error(self, message: str):  # noqa: D102
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _kv(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    from sgdlab.config import coerce_numbers

    try:
        return key.strip(), coerce_numbers(yaml.safe_load(value))
    except yaml.YAMLError:
        return key.strip(), value


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments shared by train, lr-find and check: what to train and how."""
    p.add_argument("--config", metavar="FILE.yaml", help="YAML config; flags override it")
    p.add_argument("--dataset", help="mnist1d, digits, mnist, cifar10, linreg, logreg, or "
                                      "MODULE:CALLABLE / path/to/file.py:CALLABLE returning an "
                                      "sgdlab Dataset or a dict of x_train, y_train, x_test, "
                                      "y_test (+ task)")
    p.add_argument("--model", help="linear, logistic, mlp, cnn, scale_invariant, resnet, or "
                                    "MODULE:CALLABLE / path/to/file.py:CALLABLE taking the "
                                    "data's DataSpec (or nothing) and returning an nn.Module")
    p.add_argument("--optimizer", help="sgd, momentum, rmsprop, adam, adamw, snr_sgd")
    p.add_argument("--lr", type=float)
    p.add_argument("--schedule", help="constant, step, multistep, cosine, linear, "
                                      "inverse_time, sgdr")
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--batch-size", type=int)
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int)
    length.add_argument("--epochs", type=float)
    p.add_argument("--sampling", help="shuffle (epochs) or replacement (i.i.d. batches)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto, cpu or cuda")
    p.add_argument("--data-dir", help="directory holding the data (cifar10)")
    p.add_argument("--opt", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                   help="optimizer hyper-parameter, e.g. --opt beta=0.9 --opt weight_decay=5e-4")
    p.add_argument("--model-opt", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                   help="model option, e.g. --model-opt width=200")
    p.add_argument("--data-opt", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                   help="data-set option, e.g. --data-opt n_train=1000")
    p.add_argument("--schedule-opt", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                   help="schedule parameter, e.g. --schedule-opt every=1000")


def build_parser() -> argparse.ArgumentParser:
    """The ``sgdlab`` argument parser with its sub-commands."""
    parser = _Parser(prog="sgdlab", description="Train with stochastic gradient descent and "
                                                "measure what SGD does.")
    parser.add_argument("--version", action="version", version=f"sgdlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    t = sub.add_parser("train", help="train a model; writes a run directory")
    _add_run_arguments(t)
    t.add_argument("--out", help="run directory to create (default runs/<dataset>-<model>-…)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run bit for bit")
    t.add_argument("--eval-every", type=int)
    t.add_argument("--log-every", type=int)
    t.add_argument("--full-train-loss", action="store_true", default=None,
                   help="evaluate the loss on the whole training set")
    t.add_argument("--checkpoint-every", type=int)
    t.add_argument("--average", help="none, swa or ema (torch.optim.swa_utils)")
    t.add_argument("--average-start", type=float, help="fraction of the run before averaging")
    t.add_argument("--ema-decay", type=float)
    t.add_argument("--tensorboard", action="store_true", default=None,
                   help="also write TensorBoard event files")
    t.add_argument("--probe", help="comma-separated instruments: effective_lr, noise_scale, "
                                    "noise_scale_bstar, sharpness, snr")
    t.add_argument("--probe-every", type=int, help="steps between measurements (default 50)")
    t.add_argument("--probe-schedule", help="linear (every --probe-every steps) or log")
    t.add_argument("--nproc", type=int, default=1,
                   help="data-parallel processes on this machine (runs under torchrun)")
    t.add_argument("--quiet", action="store_true", help="no progress output")

    f = sub.add_parser("lr-find", help="learning-rate range test (SPEC §4.11)")
    _add_run_arguments(f)
    f.add_argument("--start-lr", type=float, default=1e-6)
    f.add_argument("--end-lr", type=float, default=10.0)
    f.add_argument("--num-steps", type=int, default=200)
    f.add_argument("--out", help="directory for lr_find.png and lr_find.json")

    pr = sub.add_parser("probe", help="measure instruments at a run's last checkpoint")
    pr.add_argument("run_dir", metavar="RUN_DIR")
    pr.add_argument("--probe", default="effective_lr,noise_scale,sharpness",
                    help="comma-separated instruments (default: effective_lr,noise_scale,"
                         "sharpness)")
    pr.add_argument("--batch-size", type=int, help="examples for the per-batch quantities "
                                                   "(default: the run's batch size)")

    rp = sub.add_parser("reproduce", help="measure the notes' claims; writes a report")
    mode = rp.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", const="quick", dest="mode",
                      help="all claims in about 5 minutes on 2 CPU cores (the default)")
    mode.add_argument("--full", action="store_const", const="full", dest="mode",
                      help="more seeds and longer runs (about 40 minutes on 2 CPU cores)")
    mode.add_argument("--smoke", action="store_const", const="smoke", dest="mode",
                      help="tiny budgets (used by the test suite)")
    rp.add_argument("--only", help="comma-separated claims: ids (e.g. 1-temperature) or "
                                   "their numbers (e.g. 1,5)")
    rp.add_argument("--seeds", type=int, help="seeds where a claim repeats over seeds "
                                              "(default: 1 smoke, 2 quick, 5 full)")
    rp.add_argument("--out", required=True, help="report directory; runs are cached in "
                                                 "OUT/cache, so an interrupted run resumes")
    rp.add_argument("--strict", action="store_true", help="exit 1 when any claim is FAIL")

    c = sub.add_parser("check", help="initial-loss and overfit checks (SPEC §4.11)")
    _add_run_arguments(c)
    c.add_argument("--overfit-examples", type=int, default=50)
    c.add_argument("--overfit-steps", type=int, default=500)
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("dataset", "model", "optimizer", "lr", "schedule", "warmup_steps", "batch_size",
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
    from sgdlab import config as cfgmod
    from sgdlab.train import Trainer

    if args.nproc < 1:
        return _fail(f"nproc must be an integer >= 1, got {args.nproc}")
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return _launch_distributed(args)
    try:
        if args.resume:
            run_dir = Path(args.resume)
            if not (run_dir / "config.yaml").is_file():
                return _fail(f"resume: {run_dir} is not a run directory (no config.yaml)")
            cfg = cfgmod.resolve(run_dir / "config.yaml", out=str(run_dir))
        else:
            cfg = cfgmod.resolve(args.config, **_overrides(args))
            if cfg.out is None:
                cfg.out = _default_out(cfg)
            out = Path(cfg.out)
            if out.exists() and any(out.iterdir()) and int(os.environ.get("RANK", "0")) == 0:
                return _fail(f"out: {out} already holds files; choose another --out or "
                             f"continue it with --resume {out}")
        trainer = Trainer(cfg, progress=not args.quiet)
        summary = trainer.resume() if args.resume else trainer.fit()
    except cfgmod.ConfigError as err:
        return _fail(str(err))
    finally:
        import torch.distributed as dist
        if dist.is_initialized():
            dist.barrier()  # let rank 0 finish writing before any rank tears gloo down
            dist.destroy_process_group()
    if trainer.rank != 0:
        return trainer.exit_code(summary)
    final = summary["final"]
    if summary["status"] == "diverged":
        print(f"sgdlab: {summary['message']}", file=sys.stderr)
    elif summary["status"] == "interrupted":
        print(f"sgdlab: {summary['message']}", file=sys.stderr)
    else:
        parts = [f"{k} {final[k]:.4f}" for k in ("test_acc", "test_loss", "avg_test_acc")
                 if k in final]
        print(f"done: {summary['steps']} steps in {summary['wall_time']:.1f} s; "
              + ", ".join(parts))
    print(f"run directory: {summary['run_dir']}")
    return trainer.exit_code(summary)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_distributed(args: argparse.Namespace) -> int:
    """Re-run this command under torchrun with ``--nproc`` local processes (gloo on CPU,
    nccl on GPU); each process gets ``cores // nproc`` threads."""
    argv = [a for a in sys.argv[1:]]
    cleaned, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        cleaned.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1",
           f"--nproc-per-node={args.nproc}", "--master-addr=127.0.0.1",
           f"--master-port={_free_port()}", "-m", "sgdlab.cli", *cleaned]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.nproc)))
    return subprocess.call(cmd, env=env)


def _cmd_lr_find(args: argparse.Namespace) -> int:
    from sgdlab import config as cfgmod
    from sgdlab import recipe

    try:
        overrides = _overrides(args)
        overrides["out"] = None
        if args.steps is None and args.epochs is None:
            overrides["steps"] = args.num_steps
        cfg = cfgmod.resolve(args.config, **overrides)
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
            overrides["steps"] = args.overfit_steps
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
    width = max(len(f"{n}.{k}") for n, k, _ in rows) if rows else 10
    print(f"{'quantity':{width}s}  value")
    for name, key, value in rows:
        print(f"{name + '.' + key:{width}s}  {value:.6g}")
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from sgdlab import config as cfgmod
    from sgdlab import report
    from sgdlab.reproduce import reproduce

    only = [c.strip() for c in args.only.split(",") if c.strip()] if args.only else None
    try:
        results = reproduce(args.out, mode=args.mode or "quick", only=only, seeds=args.seeds)
    except cfgmod.ConfigError as err:
        return _fail(str(err))
    print(report.verdict_table(results))
    print(f"report: {Path(args.out) / 'report.html'}")
    if args.strict and any(r.verdict == "FAIL" for r in results):
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sgdlab`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    handler = {"train": _cmd_train, "lr-find": _cmd_lr_find, "check": _cmd_check,
               "probe": _cmd_probe, "reproduce": _cmd_reproduce}
    return handler[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
