"""Benchmark: what a run has learned per minute of training, MoCo v2 next to CLIM.

For one preset, every seed (3 by default) is pretrained twice with identical settings, once as MoCo
v2 (``method.name=mocov2``) and once as CLIM (``method.name=clim``), by the library's own trainer
(``clim.engine.trainer.pretrain``) with the kNN monitor after every epoch (weighted kNN, k = 20,
T = 0.07, on the labelled train split as bank and the test split as queries: METHOD §5). Each epoch
end becomes a point (cumulative training minutes, kNN top-1). Training minutes are the trainer's
``epoch_seconds`` plus, for CLIM, the seconds of every positives refresh (``selection.seconds``): the
refresh is part of the method's cost. The kNN monitor and the checkpoint writes are not counted.
On a shared machine wall time mostly measures the neighbours: ``--clock cpu`` counts instead the
CPU time of the training process (all its threads; noted each time an epoch record appears, minus
the CPU time of one kNN monitor call, measured at the end, per measured epoch), which with
``--threads 1`` is close to what the run takes alone on one core.

The table gives, at every whole minute (``--every``), mean ± std over seeds of the kNN top-1 that a
run *had reached by then* (the last epoch finished by that minute; minute 0 and any minute before
the first epoch end count as the untrained network), so a minute is never credited with an epoch
that ends after it. ``--interpolate`` reads the curve linearly between epoch ends instead. Reference
lines: raw pixels and the same backbone at random initialisation (per seed), both by
``clim.demo.compare``. Machine, torch threads and load average are printed with the numbers: on a
shared machine every minute is an upper bound of what the same run takes alone.

With ``--minutes M`` a run is stopped after the first epoch end at or past M training minutes (its
cosine schedule is then cut short: size ``train.epochs`` to the budget to compare finished
schedules). Results go to ``--out`` (one folder per run, ``quality.json``); a rerun reuses finished
runs whose config is unchanged.

    python benchmarks/quality.py --quick                                # ~3 min on 2 cores
    python benchmarks/quality.py --preset clim-demo-cpu --jobs 2        # the demo, 3 seeds x 2 methods
    python benchmarks/quality.py --clock cpu --threads 1 --jobs 2       # the same on a shared machine
    python benchmarks/quality.py --preset clim-demo-cpu --minutes 5 --set train.lr=0.03
"""

from __future__ import annotations

import argparse
import _thread
import concurrent.futures
import datetime
import json
import multiprocessing
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

from clim.config import Config, load_config
from clim.demo import compare
from clim.specs import METRICS_FILE
from clim.specs import CHECKPOINT_FILE
from clim.engine.monitor import KnnMonitor
from clim.engine.trainer import pretrain
from clim.evaluation.common import eval_datasets, load_run
from clim.runtime.machine import machine_info

METHODS = {"mocov2": "MoCo v2", "clim": "CLIM"}
RESULT_NAME = "quality.json"
QUICK = dict(seeds=[0], minutes=1.5, every=0.5, overrides=["train.epochs=3"])


# ---------------------------------------------------------------- curves and tables (pure functions)

def timeline(history: list[dict]) -> list[tuple[float, float]]:
    """``(cumulative training minutes, kNN top-1)`` at every epoch end that measured kNN.

    Minutes add up ``epoch_seconds`` and the positives refresh seconds of every epoch, also of the
    epochs without a kNN measurement."""
    points, seconds = [], 0.0
    for record in history:
        seconds += record.get("epoch_seconds", 0.0) + (record.get("selection") or {}).get("seconds", 0.0)
        if isinstance(record.get("knn_top1"), (int, float)):
            points.append((seconds / 60.0, float(record["knn_top1"])))
    return points


def cpu_timeline(history: list[dict], cpu_at_epoch: list[float], monitor_cpu: float) -> list[tuple[float, float]]:
    """Like :func:`timeline` on the process CPU clock: ``(CPU minutes, kNN top-1)`` per measured epoch.

    ``cpu_at_epoch[i]`` is the process CPU time when record ``i`` appeared; it includes the kNN
    monitor of every measured epoch so far, ``monitor_cpu`` seconds each, which is subtracted."""
    points, measured = [], 0
    for record, cpu in zip(history, cpu_at_epoch):
        if isinstance(record.get("knn_top1"), (int, float)):
            measured += 1
            points.append(((cpu - measured * monitor_cpu) / 60.0, float(record["knn_top1"])))
    return points


def value_at(points: list[tuple[float, float]], minute: float, start: float, interpolate: bool = False) -> float:
    """kNN top-1 of a run at ``minute``: ``start`` (the untrained network) at minute 0.

    Step reading (default): the value of the last point at or before ``minute``. Linear reading:
    interpolated between the neighbouring points (from ``(0, start)``); after the last point a
    run keeps its last value either way."""
    curve = [(0.0, start)] + sorted(points)
    before = [p for p in curve if p[0] <= minute]
    last_minute, last_value = before[-1]
    after = [p for p in curve if p[0] > minute]
    if not interpolate or not after:
        return last_value
    next_minute, next_value = after[0]
    share = (minute - last_minute) / (next_minute - last_minute)
    return last_value + share * (next_value - last_value)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _cell(values: list[float]) -> str:
    if not values:
        return "–"
    mean, std = mean_std(values)
    return f"{mean:.2f} ± {std:.2f}" if len(values) > 1 else f"{mean:.2f}"


def minute_grid(runs: list[dict], every: float, budget: float | None) -> list[float]:
    """0, every, 2·every, … up to the budget (or the longest run's training minutes)."""
    end = budget if budget is not None else max((r["points"][-1][0] for r in runs if r["points"]), default=0.0)
    count = int(end / every + 1e-9)
    return [round(i * every, 6) for i in range(count + 1)]


def format_table(runs: list[dict], minutes: list[float], interpolate: bool = False) -> str:
    """Markdown table: one row per minute and one at the end of the runs; one column per method
    (mean ± std over its runs) and the difference of the means (CLIM − MoCo v2)."""
    methods = [m for m in METHODS if any(r["method"] == m for r in runs)]
    counts = {m: sum(r["method"] == m for r in runs) for m in methods}
    header = ["minute"] + [f"{METHODS[m]} (n={counts[m]})" for m in methods]
    both = len(methods) == 2
    if both:
        header.append("CLIM − MoCo v2")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def row(label: str, values: dict[str, list[float]], notes: dict[str, str] | None = None) -> str:
        cells = [label] + [_cell(values[m]) + (notes or {}).get(m, "") for m in methods]
        if both and values["mocov2"] and values["clim"]:
            cells.append(f"{statistics.fmean(values['clim']) - statistics.fmean(values['mocov2']):+.2f}")
        elif both:
            cells.append("–")
        return "| " + " | ".join(cells) + " |"

    for minute in minutes:
        values = {m: [value_at(r["points"], minute, r["random_init"], interpolate) for r in runs if r["method"] == m]
                  for m in methods}
        lines.append(row(f"{minute:g}", values))
    ends = {m: [r["points"][-1][1] if r["points"] else r["random_init"] for r in runs if r["method"] == m]
            for m in methods}
    notes = {}  # where each method's runs ended: mean minutes, epochs
    for m in methods:
        mine = [r for r in runs if r["method"] == m and r["points"]]
        if mine:
            epochs = sorted({r["epochs"] for r in mine})
            notes[m] = (f" ({mean_std([r['points'][-1][0] for r in mine])[0]:.1f} min, "
                        f"{'/'.join(map(str, epochs))} ep)")
    lines.append(row("end", ends, notes))
    return "\n".join(lines)


def format_references(runs: list[dict]) -> str:
    raw = sorted({round(r["raw_pixels"], 4) for r in runs})
    random_init = [r["random_init"] for r in runs if r["method"] == "mocov2"] or [r["random_init"] for r in runs]
    return (f"reference lines (kNN top-1, k=20): raw pixels {'/'.join(f'{v:.2f}' for v in raw)} %, "
            f"random init {_cell(random_init)} % (over {len(random_init)} seed(s))")


# ---------------------------------------------------------------- running

def run_config(preset: str, method: str, seed: int, overrides: list[str]) -> Config:
    """The preset with ``overrides``, then the method, the seed and the kNN monitor every epoch."""
    return load_config(preset, overrides=list(overrides) + [
        f"method.name={method}", f"train.seed={seed}", "train.knn_every=1", "train.knn_k=20",
        "train.knn_temperature=0.07"])


def _read_history(path: Path) -> list[dict]:
    """metrics.jsonl as far as it is complete (a line being written is skipped)."""
    history = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            history.append(json.loads(line))
        except ValueError:
            break
    return history


class Watchdog(threading.Thread):
    """Watches metrics.jsonl while the main thread trains: notes the process CPU time (all threads)
    at which every epoch record appears, and interrupts the training once an epoch ends past the
    budget (``KeyboardInterrupt`` in the main thread; the checkpoint holds the last finished epoch)."""

    def __init__(self, metrics: Path, budget_minutes: float | None, clock: str, poll: float = 0.25):
        super().__init__(daemon=True)
        self.metrics, self.budget, self.clock, self.poll = metrics, budget_minutes, clock, poll
        self.cpu_at_epoch: list[float] = []  # process CPU seconds since the start, at each epoch record
        self.done, self.lock = threading.Event(), threading.Lock()
        self.cpu_start = time.process_time()

    def run(self) -> None:
        while not self.done.wait(self.poll):
            history = _read_history(self.metrics)
            while len(self.cpu_at_epoch) < len(history):
                self.cpu_at_epoch.append(time.process_time() - self.cpu_start)
            if self.budget is None or not history:
                continue
            points = timeline(history) if self.clock == "wall" else cpu_timeline(history, self.cpu_at_epoch, 0.0)
            if points and points[-1][0] >= self.budget:
                with self.lock:
                    if not self.done.is_set():
                        _thread.interrupt_main()
                return

    def finish(self) -> None:
        with self.lock:  # an interrupt raised before this still lands in the caller's try block
            self.done.set()


def _monitor_cpu_seconds(run_dir: Path) -> float:
    """CPU seconds of one call of the trainer's kNN monitor on the run's final backbone."""
    run = load_run(run_dir / CHECKPOINT_FILE)
    train_ds, _ = eval_datasets(run.config, run.data_info)
    monitor = KnnMonitor(run.config, train_ds.info, run.data_info["image_size"], torch.device("cpu"))
    started = time.process_time()
    monitor(run.model.backbone_q.eval())
    return time.process_time() - started


def train_and_measure(config_dict: dict, out: str, budget_minutes: float | None, threads: int,
                      clock: str = "wall") -> dict:
    """One run in its own process: pretrain (stopped at the budget), then the reference lines.

    Its output goes to ``out/train.log``; the result is also written to ``out/quality.json``."""
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = open(out_dir / "train.log", "w")  # noqa: SIM115 - kept open for the life of this process
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    torch.set_num_threads(threads)
    config = Config.from_dict(config_dict)
    load_start, started = os.getloadavg()[0], time.perf_counter()
    watchdog, stopped = Watchdog(out_dir / METRICS_FILE, budget_minutes, clock), False
    watchdog.start()
    try:
        pretrain(config, out_dir)
        watchdog.finish()
    except KeyboardInterrupt:  # the budget watchdog: the checkpoint holds the last finished epoch
        stopped = True
    watchdog.finish()
    wall = time.perf_counter() - started
    cpu_at_epoch = list(watchdog.cpu_at_epoch)
    history = _read_history(out_dir / METRICS_FILE)
    while len(cpu_at_epoch) < len(history):  # a record that appeared after the last poll
        cpu_at_epoch.append(time.process_time() - watchdog.cpu_start)
    monitor_cpu = _monitor_cpu_seconds(out_dir)
    points = timeline(history) if clock == "wall" else cpu_timeline(history, cpu_at_epoch, monitor_cpu)
    rows = compare(out_dir)  # trained (last checkpoint), random init (seed of the run), raw pixels
    result = {"method": config.method.name, "seed": config.train.seed, "config": config_dict, "clock": clock,
              "points": points, "wall_points": timeline(history), "cpu_at_epoch": cpu_at_epoch,
              "monitor_cpu_seconds": monitor_cpu, "epochs": len(history), "stopped_at_budget": stopped,
              "random_init": rows["random init"]["knn_k20_top1"], "raw_pixels": rows["raw pixels"]["knn_k20_top1"],
              "wall_seconds": round(wall, 1), "load_start": load_start, "load_end": os.getloadavg()[0],
              "threads": threads}
    (out_dir / RESULT_NAME).write_text(json.dumps(result, indent=1))
    return result


def _reusable(out_dir: Path, config: Config, budget: float | None, clock: str) -> dict | None:
    path = out_dir / RESULT_NAME
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    finished_budget = not result["stopped_at_budget"] or (budget is not None and result["points"]
                                                          and result["points"][-1][0] >= budget)
    same = result["config"] == config.to_dict() and result.get("clock") == clock
    return result if same and finished_budget else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="clim-demo-cpu", help="run for both methods (method.name is set per run)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--minutes", type=float, default=None,
                        help="training budget per run (default: the preset's whole schedule)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="minutes of the trainer's wall clock (epoch_seconds + refresh seconds), or of the "
                             "process CPU time (all its threads, kNN monitor subtracted): on a shared machine "
                             "cpu with --threads 1 is what the run would take alone on one core")
    parser.add_argument("--every", type=float, default=1.0, help="table row spacing in minutes")
    parser.add_argument("--interpolate", action="store_true", help="read curves linearly between epoch ends")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (each in its own process)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: cores / jobs)")
    parser.add_argument("--out", default="runs/quality")
    parser.add_argument("--quick", action="store_true",
                        help=f"seed 0, 3 epochs, stopped at 1.5 min, rows every 0.5 min ({QUICK['overrides'][0]})")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.minutes, args.every = QUICK["seeds"], QUICK["minutes"], QUICK["every"]
        args.overrides = QUICK["overrides"] + args.overrides
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    out = Path(args.out)

    machine = machine_info("cpu") | {"torch_threads": threads}
    load_start = os.getloadavg()
    print(f"machine: {machine['cpu']}, {machine['cpu_count']} cores, torch {machine['torch']}, "
          f"{threads} torch thread(s) per run, {args.jobs} run(s) at a time")
    print(f"date: {datetime.datetime.now().isoformat(timespec='seconds')}, load average at start "
          f"{load_start[0]:.2f} / {load_start[1]:.2f} / {load_start[2]:.2f} (1 / 5 / 15 min)")
    print(f"preset {args.preset}" + (f" with {' '.join(args.overrides)}" if args.overrides else "")
          + f", seeds {args.seeds}, budget {f'{args.minutes:g} min' if args.minutes else 'the whole schedule'}",
          flush=True)

    jobs, runs = [], []
    for seed in args.seeds:
        for method in args.methods:
            config = run_config(args.preset, method, seed, args.overrides)
            run_dir = out / f"{method}-seed{seed}"
            reused = _reusable(run_dir, config, args.minutes, args.clock)
            if reused is not None:
                print(f"  {method} seed {seed}: reusing {run_dir / RESULT_NAME}")
                runs.append(reused)
            else:
                if (run_dir / "checkpoint.pt").exists():  # a stale or unfinished run: start it over
                    for name in ("checkpoint.pt", METRICS_FILE, RESULT_NAME):
                        (run_dir / name).unlink(missing_ok=True)
                jobs.append((config.to_dict(), str(run_dir), args.minutes, threads, args.clock))
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=context, max_tasks_per_child=1) as pool:
        futures = {pool.submit(train_and_measure, *job): job for job in jobs}
        for future in concurrent.futures.as_completed(futures):
            result = future.result()
            runs.append(result)
            final = result["points"][-1] if result["points"] else (0.0, result["random_init"])
            print(f"  {result['method']} seed {result['seed']}: {result['epochs']} epochs, kNN {final[1]:.2f} % "
                  f"after {final[0]:.1f} training min ({result['wall_seconds'] / 60:.1f} min wall, load "
                  f"{result['load_start']:.2f} -> {result['load_end']:.2f})", flush=True)

    runs.sort(key=lambda r: (r["seed"], list(METHODS).index(r["method"])))
    minutes = minute_grid(runs, args.every, args.minutes)
    reading = "linear between epoch ends" if args.interpolate else "last epoch finished by the minute"
    axis = "wall-clock training minutes" if args.clock == "wall" else f"CPU minutes ({threads} thread(s) per run)"
    print(f"\nkNN top-1 (k=20, T=0.07) on the test split by {axis}, mean ± std over seeds ({reading}):\n")
    print(format_table(runs, minutes, args.interpolate))
    print("\n" + format_references(runs))
    load_end = os.getloadavg()
    print(f"load average at end {load_end[0]:.2f} / {load_end[1]:.2f} / {load_end[2]:.2f}; minutes measured "
          "under load are upper bounds of the same run on a quiet machine")
    summary = {"preset": args.preset, "overrides": args.overrides, "seeds": args.seeds, "budget_minutes": args.minutes,
               "clock": args.clock,
               "machine": machine, "load_start": list(load_start), "load_end": list(load_end), "runs": runs,
               "table": format_table(runs, minutes, args.interpolate)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
