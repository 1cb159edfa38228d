"""The ``clim`` command line: pretrain, demo, report, inspect, eval, export, ablate, config.

Expected user errors (bad config key or value, missing file or dataset, a file that is no checkpoint,
an output path that cannot be written) print one line on stderr and exit with code 2, without a
traceback; an output folder in use by another live run exits with code 2; a diverged run, or a
checkpoint that could not be written (disk full), exits with code 1.

torch is imported only by the handlers that need it, so ``clim --help`` and ``clim config`` start fast.
"""

from __future__ import annotations

import argparse
import errno
import os
import shlex
import sys
from pathlib import Path

from clim.config import ConfigError, dump_yaml, load_config, preset_names

# Commands whose --out is a folder (the others' --out is a file).
_FOLDER_OUT = ("pretrain", "demo", "ablate")
# OSErrors that are the user's environment (a path), not a bug: one line, exit 2.
_USER_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EEXIST, errno.ENOTDIR, errno.EISDIR,
                errno.ENOENT)
# Errors of modules imported on demand: user errors (2) and a run that stopped (1).
_ERROR_CODES = (("clim.runtime.checkpoint", "CheckpointError", 2), ("clim.runtime.checkpoint", "RunFolderBusy", 2),
                ("clim.runtime.checkpoint", "CheckpointWriteError", 1), ("clim.engine.trainer", "TrainingDiverged", 1))


def _add_config_arguments(parser: argparse.ArgumentParser, require_source: bool) -> None:
    source = parser.add_mutually_exclusive_group(required=require_source)
    source.add_argument("--preset", help=f"a named preset: {', '.join(preset_names())}")
    source.add_argument("--config", help="a YAML file of config keys (may name a preset under 'base:')")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key, e.g. --set train.epochs=10 (repeatable)")


def _pretrain(args: argparse.Namespace) -> int:
    config = load_config(args.preset, args.config, args.overrides)  # a bad key fails before torch loads (~4 s)
    from clim.engine.trainer import pretrain
    from clim.inspect import draw_refresh

    pretrain(config, args.out, on_refresh=draw_refresh)  # the engine saves each refresh; clim.inspect draws it
    return 0


def _demo(args: argparse.Namespace) -> int:
    load_config(args.preset, overrides=args.overrides)  # a bad key fails before torch loads
    from clim.demo import run_demo

    run_demo(args.out, args.preset, args.overrides)
    return 0


def _report(args: argparse.Namespace) -> int:
    from clim.report import write_report

    print(write_report(args.run_dir))
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from clim.inspect import inspect_run

    print(inspect_run(args.run, args.anchors, args.seed, args.out, args.compare))
    return 0


def _config(args: argparse.Namespace) -> int:
    config = load_config(args.preset, args.config, args.overrides)
    source = f"--preset {args.preset}" if args.preset else (f"--config {args.config}" if args.config else "defaults")
    sets = "".join(f" --set {item}" for item in args.overrides)
    text = dump_yaml(config, header=f"clim config {source}{sets}\nuse with: clim pretrain --config FILE --out DIR")
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def check_writable(path: str | os.PathLike, folder: bool) -> None:
    """Raise ConfigError (one line, exit 2) unless ``path`` can be created or written: a folder
    (``folder``) or a file. Nothing is created; the nearest existing ancestor must be a writable folder."""
    target = Path(path).expanduser().absolute()
    if target.exists():
        if folder != target.is_dir():
            raise ConfigError(f"--out {path} {'exists and is not a folder' if folder else 'is a folder, not a file'}")
        if not os.access(target if folder else target.parent, os.W_OK | os.X_OK) or \
                (not folder and not os.access(target, os.W_OK)):
            raise ConfigError(f"--out {path} cannot be written (permission denied)")
        return
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"--out {path} cannot be created: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {path} cannot be created: {parent} is not writable (permission denied)")


def _exit_code(error: BaseException) -> int | None:
    """2 for a user error, 1 for a diverged run, None for a bug (the traceback is shown)."""
    if isinstance(error, (ConfigError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)) \
            or isinstance(error, OSError) and error.errno in _USER_ERRNOS:
        return 2
    for module, name, code in _ERROR_CODES:  # only imported modules can have raised theirs: no torch import here
        if module in sys.modules and isinstance(error, getattr(sys.modules[module], name)):
            return code
    return None


def _error_line(error: BaseException, out: str | None) -> str:
    """The one line a user error prints; an OSError on the ``--out`` path (or a folder above it: a
    read-only or special file system that ``check_writable`` could not foresee) names ``--out``."""
    filename = getattr(error, "filename", None) if isinstance(error, OSError) else None
    if out and filename is not None:
        target, failed = Path(out).expanduser().absolute(), Path(os.fsdecode(filename)).expanduser().absolute()
        if failed == target or failed in target.parents or target in failed.parents:
            return (f"--out {out} cannot be written: {error.strerror or error} ({failed}); "
                    f"choose another --out")
    return str(error)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clim", description="CLIM: Center-wise Local Image Mixture for contrastive representation learning")
    commands = parser.add_subparsers(dest="command", required=True)

    pretrain = commands.add_parser("pretrain", help="pretrain an encoder (resumes when --out has a checkpoint)")
    _add_config_arguments(pretrain, require_source=True)
    pretrain.add_argument("--out", required=True, help="output folder (checkpoint, metrics, TensorBoard)")
    pretrain.set_defaults(func=_pretrain)

    demo = commands.add_parser("demo", help="pretrain on the embedded Fashion-MNIST subset and compare kNN top-1")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--preset", default="clim-demo-cpu")
    demo.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    demo.set_defaults(func=_demo)

    report = commands.add_parser("report", help="write RUN_DIR/report.md with plots")
    report.add_argument("run_dir")
    report.set_defaults(func=_report)

    inspect = commands.add_parser("inspect", help="draw the positives CLIM picked (a grid of anchors and positives)")
    inspect.add_argument("run", metavar="RUN_DIR_OR_CKPT")
    inspect.add_argument("--anchors", type=int, default=12, help="rows, one anchor each (default 12)")
    inspect.add_argument("--seed", type=int, default=0, help="seed of the anchor choice")
    inspect.add_argument("--out", help="PNG to write (default RUN_DIR/positives/inspect.png)")
    inspect.add_argument("--compare", action="append", default=[], choices=["knn", "random"],
                         help="add rows of what kNN-only or random selection would pick (repeatable)")
    inspect.set_defaults(func=_inspect)

    config = commands.add_parser(
        "config", help="print the resolved configuration as YAML (every key; usable as --config)",
        description="Print every config key of a preset or YAML file after --set overrides, as YAML that "
                    "`clim pretrain --config FILE` accepts. With neither --preset nor --config: the defaults.")
    _add_config_arguments(config, require_source=False)
    config.add_argument("--out", help="write the YAML to this file instead of stdout")
    config.set_defaults(func=_config)

    from clim.evaluation.cli import register

    register(commands)
    from clim.study.cli import register as register_ablate

    register_ablate(commands)
    return parser


def resume_command(argv: list[str]) -> str:
    """The command that resumes a stopped run: this one again (under torchrun, the same launch)."""
    command = f"clim {shlex.join(argv)}"
    return f"the same torchrun launch of `{command}`" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else command


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "out", None):
            check_writable(args.out, folder=args.command in _FOLDER_OUT)
        return args.func(args)
    except Exception as error:
        stopping = sys.modules.get("clim.engine.stopping")
        if stopping is not None and isinstance(error, stopping.RunInterrupted):  # saved: one line, 130 / 143
            if error.show:
                print(f"clim: {error}; resume with: {resume_command(argv)}", file=sys.stderr)
            return error.exit_code
        code = _exit_code(error)
        if code is None:
            raise
        print(f"clim: error: {_error_line(error, getattr(args, 'out', None))}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        progress = sys.modules.get("clim.runtime.progress")
        if progress is not None:
            progress.end_line()  # the message on its own line, not glued to a bar
        print("clim: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
