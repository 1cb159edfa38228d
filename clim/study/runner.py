"""Running the matrix: every unfinished run in its own subprocess, one record each, then RESULTS.md.

``python -m clim.study.runner RUN_DIR`` trains (or resumes) and evaluates the run that
``RUN_DIR/ablate.json`` describes, and writes its record last and atomically.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from clim.config import load_config
from clim.study.matrix import LOG_NAME, SCALES, SPEC_NAME, Run, plan_runs, read_record
from clim.study.results import write_results

EVAL_BATCH = 512
RECORD_VERSION = 1
CPU_NAME = "cpu_spent.json"  # in the run folder: CPU minutes of the processes before this one


def duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def evaluate_run(run_dir: Path, evaluation: dict, seed: int) -> dict:
    """kNN (and the same backbone at random init), linear probe (cached features, lr chosen on a held-out
    part of the train split), 1 % semi-supervised and intra-class similarity (METHOD §5)."""
    from torch.utils.data import Subset

    from clim.evaluation.baselines import references
    from clim.evaluation.common import (crop_flip_transform, eval_dataset, eval_datasets, eval_spec, load_run,
                                        num_classes_of, plain_backbone, resolve_device)
    from clim.evaluation.knn import run_knn
    from clim.evaluation.linear import LINEAR_PRESETS, linear_probe
    from clim.evaluation.semisup import SEMISUP_PRESETS, balanced_subset, finetune
    from clim.evaluation.similarity import intra_class_similarity
    from clim.runtime.features import extract_features

    run = load_run(run_dir, "cpu")
    config, info = run.config, run.data_info
    device = resolve_device(config.train.device)
    run.model.to(device)
    workers = config.data.num_workers
    train_ds, test_ds = eval_datasets(config, info)
    classes = num_classes_of(train_ds)

    train_feats, train_labels = extract_features(run.model.backbone_q, train_ds, EVAL_BATCH, device, workers, False)
    test_feats, test_labels = extract_features(run.model.backbone_q, test_ds, EVAL_BATCH, device, workers, False)
    results = run_knn(train_feats, train_labels, test_feats, test_labels, classes, device=device)
    # the reference every claim about learning is paired with: the backbone at random init, drawn with the
    # run's seed exactly as `clim demo` draws it
    reference = references(config, info, train_ds, test_ds)["random init"]
    labelled = train_labels >= 0
    linear = linear_probe(train_feats[labelled], train_labels[labelled], test_feats, test_labels, classes,
                          LINEAR_PRESETS[evaluation["linear_preset"]], seed, device, progress=False)
    similarity = intra_class_similarity(test_feats, test_labels)

    preset = SEMISUP_PRESETS[evaluation["semisup_preset"]]
    spec = eval_spec(config, info)
    train_aug = eval_dataset(config, info, (), "train", crop_flip_transform(spec, preset.crop_scale))
    subset = balanced_subset(train_aug.labels, evaluation["semisup_fraction"], seed)
    semisup = finetune(*plain_backbone(config, info, run.model), Subset(train_aug, subset.tolist()), test_ds, classes,
                       preset, seed, device, workers, False)
    return {**results, "random_init_knn_k20_top1": reference["knn_k20_top1"], "num_classes": classes,
            **_pixel_references(config, spec.image_size, evaluation),
            "linear_top1": linear["linear_top1"], "linear_lr": linear["linear_lr"],
            "linear_sweep": linear["linear_sweep"], "linear_final_train_loss": linear["final_train_loss"],
            "linear_loss_above_chance": linear["train_loss_above_chance"],
            "semisup_top1": semisup["semisup_top1"], "semisup_labelled": int(subset.numel()),
            "intra_class_similarity": similarity["intra_class_similarity"],
            "all_pairs_similarity": similarity["all_pairs_similarity"]}


def _pixel_references(config, image_size: int, evaluation: dict) -> dict:
    """Raw-pixel kNN and ridge at the evaluation resolution, when the scale asks for them, and the digest of
    the dataset's manifest where it has one (a built dataset such as glyphs: which build the run saw)."""
    if not evaluation.get("pixel_references"):
        return {}
    import hashlib

    from clim.data.registry import CACHE_DIR
    from clim.evaluation.references import pixel_references

    found = pixel_references(config.data.name, config.data.root, image_size)
    manifest = Path(config.data.root or CACHE_DIR / config.data.name).expanduser() / "manifest.json"
    digest = hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.is_file() else None
    return {"pixel_knn_k20_top1": found["pixel_knn_top1"], "pixel_linear_top1": found["pixel_linear_top1"],
            "pixel_linear_alpha": found["pixel_linear_alpha"], "pixel_image_size": found["image_size"],
            "num_train": found["num_train"], "num_test": found["num_test"], "dataset_manifest_sha256": digest}


def _curve(history: list[dict]) -> list[dict]:
    """What the plots need of the metrics history, per epoch."""
    curve = []
    for record in history:
        point = {key: record[key] for key in ("epoch", "knn_top1", "loss", "epoch_seconds") if key in record}
        selection = record.get("selection") or {}
        if "positive_precision" in selection:
            point["positive_precision"] = selection["positive_precision"]
        curve.append(point)
    return curve


def _commit() -> str | None:
    try:
        found = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                               cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return found.stdout.strip() or None


def _cpu_before(run_dir: Path, resumed: bool) -> tuple[float, bool]:
    """(CPU minutes the earlier processes of this run spent, whether every one of them is counted), and
    this process marked as running. A process that ends by a stop request (SIGINT / SIGTERM) adds its
    share (:func:`_cpu_write`); one killed outright (SIGKILL, power) cannot, and leaves the mark: the
    record then says ``cpu_complete: false``."""
    before = {"cpu_minutes": 0.0, "complete": not resumed, "running": False}
    if resumed:  # (without a checkpoint, what earlier processes spent bought nothing: the run starts over)
        try:
            before = json.loads((run_dir / CPU_NAME).read_text())
        except (OSError, ValueError):
            pass
    complete = bool(before.get("complete")) and not before.get("running")
    _cpu_write(run_dir, float(before["cpu_minutes"]), complete, running=True)
    return float(before["cpu_minutes"]), complete


def _cpu_write(run_dir: Path, minutes: float, complete: bool, running: bool = False) -> None:
    """``running``: this process has not added its share yet (it is at work, or was killed outright)."""
    (run_dir / CPU_NAME).write_text(json.dumps({"cpu_minutes": minutes, "complete": complete, "running": running}))


def run_one(run_dir: str | Path) -> dict:
    """Train (or resume) and evaluate one run from its ``ablate.json``; writes its record. Like ``clim
    pretrain``, each refresh of the positives is drawn into ``RUN_DIR/positives/`` (not part of the record)."""
    from clim.engine.trainer import pretrain
    from clim.evaluation.common import resolve_device, write_result
    from clim.inspect import draw_refresh
    from clim.runtime.machine import machine_info
    from clim.specs import CHECKPOINT_FILE

    run_dir = Path(run_dir)
    job = json.loads((run_dir / SPEC_NAME).read_text())
    spec = job["spec"]
    resumed = (run_dir / CHECKPOINT_FILE).exists()
    cpu_earlier, cpu_complete = _cpu_before(run_dir, resumed)
    started, cpu_started = time.perf_counter(), time.process_time()
    config = load_config(spec["preset"], overrides=spec["overrides"])
    try:
        history = pretrain(config, run_dir, on_refresh=draw_refresh)
        trained, cpu_trained = time.perf_counter(), time.process_time()
        metrics = evaluate_run(run_dir, spec["evaluation"], config.train.seed)
    except BaseException:  # a stop request (or an error): this process's share is kept for the rerun
        _cpu_write(run_dir, cpu_earlier + time.process_time() / 60, cpu_complete)
        raise
    curve = _curve(history)
    precision = [point["positive_precision"] for point in curve if "positive_precision" in point]
    metrics["positive_precision"] = precision[-1] if precision else None
    record = {"version": RECORD_VERSION, "spec": spec, "variant": spec["variant"], "seed": spec["seed"],
              "overrides": spec["overrides"], "metrics": metrics, "curve": curve,
              # CPU time (all threads: with one torch thread, what the run takes on one core) of every process of
              # the run; ``cpu_complete`` false: an earlier process was killed outright and is missing. The
              # train / eval split is this process's alone.
              "cpu_minutes": cpu_earlier + time.process_time() / 60, "cpu_complete": cpu_complete,
              "train_cpu_minutes": (cpu_trained - cpu_started) / 60,
              "eval_cpu_minutes": (time.process_time() - cpu_trained) / 60, "resumed": resumed,
              "wall_minutes": (time.perf_counter() - started) / 60, "train_wall_minutes": (trained - started) / 60,
              "epochs": len(history), "load_average": list(os.getloadavg()),
              "machine": machine_info(resolve_device(config.train.device)), "commit": _commit()}
    write_result(job["record"], record)
    return record


def _execute(run: Run, threads: int | None) -> int:
    run.directory.mkdir(parents=True, exist_ok=True)
    job = {"spec": run.spec, "record": str(run.record_path.resolve())}
    (run.directory / SPEC_NAME).write_text(json.dumps(job, indent=2) + "\n")
    env = {"OMP_NUM_THREADS": str(threads), **os.environ} if threads else None  # the caller's setting wins
    with open(run.directory / LOG_NAME, "a") as log:
        return subprocess.run([sys.executable, "-m", "clim.study.runner", str(run.directory)], stdout=log,
                              stderr=subprocess.STDOUT, env=env).returncode


def run_matrix(scale: str, out: str | Path, records: str | Path, seeds: int | None = None, only: str | None = None,
               overrides: list[str] | tuple[str, ...] = (), results: str | Path | None = None,
               command: str | None = None, jobs: int = 1) -> dict:
    """Run every unfinished run (priority order, ``jobs`` subprocesses at a time), then write RESULTS.md
    from the records. Returns ``{"runs", "ran", "failed", "results"}`` (``ran``: runs started by this call)."""
    runs = plan_runs(scale, out, records, seeds, only, overrides)
    finished = {run.label: read_record(run.record_path, run.spec) for run in runs}
    todo = [run for run in runs if finished[run.label] is None]
    durations = [record["wall_minutes"] * 60 for record in finished.values() if record]
    print(f"clim ablate --scale {scale}: {len(runs)} runs, {len(runs) - len(todo)} recorded in {records}, "
          f"{len(todo)} to run, {jobs} at a time", flush=True)
    failed, completed, lock = [], [], threading.Lock()

    def execute(position: int, run: Run) -> None:
        prefix, log = f"[{position}/{len(todo)}] {run.label}", run.directory / LOG_NAME
        print(f"{prefix}: training + evaluation (log: {log})", flush=True)
        started = time.perf_counter()
        code = _execute(run, SCALES[scale].threads)
        seconds = time.perf_counter() - started
        record = read_record(run.record_path, run.spec)
        with lock:
            if code != 0 or record is None:
                failed.append(run.label)
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:]) if log.exists() else ""
                print(f"{prefix}: FAILED (exit code {code}) after {duration(seconds)}; last lines of the log:\n"
                      f"{tail}", flush=True)
                return
            durations.append(seconds)
            completed.append(run.label)
            metrics = record["metrics"]
            print(f"{prefix}: done in {duration(seconds)} ({record['cpu_minutes']:.1f} CPU min): kNN "
                  f"{metrics['knn_k20_top1']:.2f} % (random init {metrics['random_init_knn_k20_top1']:.2f}), linear "
                  f"{metrics['linear_top1']:.2f} %, 1 % labels {metrics['semisup_top1']:.2f} %", flush=True)
            left = len(todo) - len(completed) - len(failed)
            if left > 0:
                mean = sum(durations) / len(durations)
                print(f"    matrix ETA {duration(left * mean / jobs)}: {left} run(s) left at the mean so far, "
                      f"{duration(mean)} per run, {jobs} at a time", flush=True)

    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:  # FIFO: priority order is kept
        list(pool.map(execute, range(1, len(todo) + 1), todo))
    path = write_results(scale, records, results, command, overrides, seeds)
    print(f"results: {path}" + (f"; {len(failed)} run(s) failed: {', '.join(failed)}" if failed else ""), flush=True)
    return {"runs": len(runs), "ran": len(todo), "failed": failed, "results": path}


if __name__ == "__main__":
    from clim.engine.stopping import RunInterrupted

    try:
        run_one(sys.argv[1])
    except RunInterrupted as stop:  # Ctrl-C / SIGTERM: saved inside the epoch, resumed by the next `clim ablate`
        print(f"clim: {stop}", file=sys.stderr)
        sys.exit(stop.exit_code)
