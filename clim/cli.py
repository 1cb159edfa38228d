"""The ``clim`` command line: pretrain, demo, report, inspect, eval, export, ablate.

Expected user errors (bad config key or value, missing file or dataset) print one line on stderr
and exit with code 2, without a traceback; a diverged run exits with code 1.
"""

from __future__ import annotations

import argparse
import sys

from clim.config import ConfigError, load_config, preset_names


def _add_config_arguments(parser: argparse.ArgumentParser, require_source: bool) -> None:
    source = parser.add_mutually_exclusive_group(required=require_source)
    source.add_argument("--preset", help=f"a named preset: {', '.join(preset_names())}")
    source.add_argument("--config", help="a YAML file of config keys (may name a preset under 'base:')")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key, e.g. --set train.epochs=10 (repeatable)")


def _pretrain(args: argparse.Namespace) -> int:
    from clim.engine.trainer import pretrain

    config = load_config(args.preset, args.config, args.overrides)
    pretrain(config, args.out)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from clim.demo import run_demo

    run_demo(args.out, args.preset, args.overrides)
    return 0


def _report(args: argparse.Namespace) -> int:
    from clim.report import write_report

    path = write_report(args.run_dir)
    print(path)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from clim.inspect import inspect_run

    print(inspect_run(args.run, args.anchors, args.seed, args.out, args.compare))
    return 0


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

    from clim.evaluation.cli import register

    register(commands)
    from clim.ablate import register as register_ablate

    register_ablate(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from clim.engine.trainer import TrainingDiverged

    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, NotADirectoryError) as error:
        print(f"clim: error: {error}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        print(f"clim: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("clim: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
