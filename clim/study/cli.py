"""``clim ablate`` on the command line (argparse; no torch import until a run starts)."""

from __future__ import annotations

import argparse
import shlex

from clim.evaluation.cli import positive_int
from clim.study.matrix import GROUPS, SCALES, plan_runs, read_record
from clim.study.results import headline_text, portable_path, write_readme_headline, write_results
from clim.study.runner import run_matrix


def command_line(args: argparse.Namespace) -> str:
    """The call that runs or resumes the whole matrix (``--only`` left out), for RESULTS.md."""
    records, out = _folders(args)
    parts = ["clim", "ablate", "--scale", args.scale, "--records", portable_path(records), "--out", portable_path(out)]
    if args.seeds is not None:
        parts += ["--seeds", str(args.seeds)]
    for item in args.overrides:
        parts += ["--set", item]
    if args.results:
        parts += ["--results", portable_path(args.results)]
    for item in getattr(args, "regimes", None) or ():
        name, _, folder = item.partition("=")
        parts += ["--regime", f"{name}={portable_path(folder)}" if folder else name]
    return shlex.join(parts)


def _folders(args: argparse.Namespace) -> tuple[str, str]:
    """``--records`` and ``--out``, or their defaults."""
    return args.records or f"results/ablate-{args.scale}", args.out or f"runs/ablate-{args.scale}"


def _ablate(args: argparse.Namespace) -> int:
    records, out = _folders(args)
    if args.report:
        path = write_results(args.scale, records, args.results, command_line(args), args.overrides, args.seeds,
                             args.regimes)
        print(f"results: {path}")
        if args.readme:
            write_readme_headline(args.readme, headline_text(args.scale, records, args.seeds, args.regimes))
            print(f"headline: {args.readme}")
        return 0
    if args.dry_run:
        for run in plan_runs(args.scale, out, records, args.seeds, args.only, args.overrides):
            state = "recorded" if read_record(run.record_path, run.spec) else "to run"
            print(f"{run.label:24s} {run.variant.group:10s} {state:8s} {' '.join(run.spec['overrides'])}")
        return 0
    summary = run_matrix(args.scale, out, records, args.seeds, args.only, args.overrides,
                         args.results, command_line(args), args.jobs)
    return 1 if summary["failed"] else 0


def register(subparsers) -> None:
    seeds = ", ".join(f"{group} {count}" for group, count in GROUPS.items())
    parser = subparsers.add_parser("ablate", help="run the paper's ablations (Tables 6-10, 12) as a resumable study; "
                                                  "RESULTS.md from its records")
    parser.add_argument("--scale", required=True, choices=list(SCALES),
                        help="smoke: seconds per run (tests); cpu: 6-9 single-thread CPU minutes per run (~10 CPU "
                             "hours in all); gpu: an estimate, not yet run")
    parser.add_argument("--records", help="folder of the finished runs' JSON records, the study's data (default: "
                                          "results/ablate-SCALE); a rerun skips every recorded run")
    parser.add_argument("--out", help="folder of the runs' checkpoints and logs (default: runs/ablate-SCALE); "
                                      "a run stopped midway resumes from here")
    parser.add_argument("--seeds", type=positive_int,
                        help=f"at most this many seeds per variant (default per group, in priority order: {seeds})")
    parser.add_argument("--only", help="comma-separated glob patterns of variants or group names to run, "
                                       "e.g. 'mocov2,clim' or 'table6'")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key in every run (changes the runs' spec: they rerun)")
    parser.add_argument("--results", help="RESULTS.md path (default: RECORDS/RESULTS.md); plots go next to it")
    parser.add_argument("--jobs", type=positive_int, default=1,
                        help="runs at a time, each a subprocess with the scale's torch threads (cpu: 1 each)")
    parser.add_argument("--report", action="store_true", help="only write RESULTS.md from the records, run nothing")
    parser.add_argument("--readme", help="with --report: also rewrite the headline block of this README")
    parser.add_argument("--regime", dest="regimes", action="append", metavar="NAME[=FOLDER]",
                        help="with --report: a regime to report beside the scale's own (its records in FOLDER, default "
                             "the sibling folder NAME of --records); repeatable; default: glyphs beside cpu")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their state, run nothing")
    parser.set_defaults(func=_ablate)
