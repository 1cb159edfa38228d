"""``clim ablate`` on the command line (argparse; no torch import until a run starts)."""

from __future__ import annotations

import argparse
import shlex

from clim.evaluation.cli import positive_int
from clim.study.matrix import SCALES, plan_runs, read_eval
from clim.study.results import portable_path
from clim.study.runner import run_matrix


def command_line(args: argparse.Namespace) -> str:
    """The call that reproduces the whole matrix (``--only`` left out), for RESULTS.md."""
    parts = ["clim", "ablate", "--scale", args.scale, "--out", portable_path(args.out),
             "--seeds-main", str(args.seeds_main), "--seeds-other", str(args.seeds_other)]
    for item in args.overrides:
        parts += ["--set", item]
    if args.results:
        parts += ["--results", portable_path(args.results)]
    return shlex.join(parts)


def _ablate(args: argparse.Namespace) -> int:
    if args.dry_run:
        for run in plan_runs(args.scale, args.out, args.seeds_main, args.seeds_other, args.only, args.overrides):
            state = "done" if read_eval(run) else "to run"
            print(f"{run.label:28s} {state:7s} {' '.join(run.spec['overrides'])}")
        return 0
    summary = run_matrix(args.scale, args.out, args.seeds_main, args.seeds_other, args.only, args.overrides,
                         args.results, command_line(args))
    return 1 if summary["failed"] else 0


def register(subparsers) -> None:
    """Add ``ablate`` to the ``clim`` argparse sub-commands."""
    parser = subparsers.add_parser(
        "ablate", help="run the paper's ablation matrix (Tables 6, 7, 9, 10, 12) and write RESULTS.md")
    parser.add_argument("--scale", required=True, choices=list(SCALES),
                        help="smoke: seconds per run (tests); cpu: ~2 h on 2 cores; gpu: <= 8 min per run on an H100")
    parser.add_argument("--out", required=True, help="matrix folder (runs/<variant>/seed<k>/); rerun to resume")
    parser.add_argument("--seeds-main", type=positive_int, default=3, help="seeds of MoCo v2 and full CLIM")
    parser.add_argument("--seeds-other", type=positive_int, default=2, help="seeds of every other variant")
    parser.add_argument("--only", help="comma-separated glob patterns of variants to run, e.g. 'mocov2,clim'")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key in every run (changes the runs' spec: they rerun)")
    parser.add_argument("--results", help="RESULTS.md path (default: OUT/RESULTS.md); plots go next to it")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their state, run nothing")
    parser.set_defaults(func=_ablate)
