"""Running the matrix: every unfinished run in its own subprocess, then RESULTS.md.

``python -m clim.study.runner RUN_DIR`` trains (or resumes) and evaluates the run that
``RUN_DIR/ablate.json`` describes and writes ``RUN_DIR/eval.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from clim.config import load_config
from clim.study.matrix import EVAL_NAME, LOG_NAME, SCALES, SPEC_NAME, Run, plan_runs, read_eval
from clim.study.results import duration, write_results

EVAL_BATCH = 512


def evaluate_run(run_dir: Path, evaluation: dict, seed: int) -> dict:
    """kNN, linear (cached features), 1 % semi-supervised and intra-class similarity (METHOD §5)."""
    from torch.utils.data import Subset

    from clim.evaluation.common import (crop_flip_transform, eval_dataset, eval_datasets, eval_spec, load_run,
                                        num_classes_of, plain_backbone, resolve_device)
    from clim.evaluation.knn import run_knn
    from clim.evaluation.linear import LINEAR_PRESETS, linear_on_features
    from clim.evaluation.semisup import SEMISUP_PRESETS, balanced_subset, finetune
    from clim.evaluation.similarity import intra_class_similarity
    from clim.runtime.features import extract_features

    run = load_run(run_dir, "cpu")
    config = run.config
    device = resolve_device(config.train.device)
    run.model.to(device)
    workers = config.data.num_workers
    train_ds, test_ds = eval_datasets(config, run.data_info)
    classes = num_classes_of(train_ds)
    backbone = run.model.backbone_q
    train_feats, train_labels = extract_features(backbone, train_ds, EVAL_BATCH, device, workers, False)
    test_feats, test_labels = extract_features(backbone, test_ds, EVAL_BATCH, device, workers, False)
    results = run_knn(train_feats, train_labels, test_feats, test_labels, classes, device=device)
    labelled = train_labels >= 0
    linear = linear_on_features(train_feats[labelled], train_labels[labelled], test_feats, test_labels, classes,
                                LINEAR_PRESETS[evaluation["linear_preset"]], seed, device, False)
    similarity = intra_class_similarity(test_feats, test_labels)

    preset = SEMISUP_PRESETS[evaluation["semisup_preset"]]
    spec = eval_spec(config, run.data_info)
    train_aug = eval_dataset(config, run.data_info, (), "train", crop_flip_transform(spec, preset.crop_scale))
    subset = balanced_subset(train_aug.labels, evaluation["semisup_fraction"], seed)
    network, feature_dim = plain_backbone(config, run.data_info, run.model)
    semisup = finetune(network, feature_dim, Subset(train_aug, subset.tolist()), test_ds, classes, preset, seed,
                       device, workers, False)
    return {**results, "linear_top1": linear["linear_top1"], "semisup_top1": semisup["semisup_top1"],
            "semisup_labelled": int(subset.numel()),
            "intra_class_similarity": similarity["intra_class_similarity"],
            "all_pairs_similarity": similarity["all_pairs_similarity"]}


def run_one(run_dir: str | Path) -> dict:
    """Train (or resume) and evaluate one run from its ``ablate.json``; writes ``eval.json``."""
    from clim.engine.trainer import pretrain
    from clim.evaluation.common import resolve_device, write_result
    from clim.runtime.machine import machine_info

    run_dir = Path(run_dir)
    spec = json.loads((run_dir / SPEC_NAME).read_text())
    started = time.perf_counter()
    config = load_config(spec["preset"], overrides=spec["overrides"])
    history = pretrain(config, run_dir)
    trained = time.perf_counter()
    results = evaluate_run(run_dir, spec["evaluation"], config.train.seed)
    precision = [r["selection"]["positive_precision"] for r in history
                 if "positive_precision" in r.get("selection", {})]
    record = {"spec": spec, **results, "positive_precision": precision[-1] if precision else None,
              "machine": machine_info(resolve_device(config.train.device)),
              "epochs": len(history), "train_step_seconds": sum(r["epoch_seconds"] for r in history),
              "train_seconds": trained - started, "eval_seconds": time.perf_counter() - trained,
              "seconds": time.perf_counter() - started}
    write_result(run_dir / EVAL_NAME, record)
    return record


def _execute(run: Run, threads: int | None) -> int:
    run.directory.mkdir(parents=True, exist_ok=True)
    (run.directory / SPEC_NAME).write_text(json.dumps(run.spec, indent=2) + "\n")
    env = dict(os.environ)
    if threads:
        env.setdefault("OMP_NUM_THREADS", str(threads))
    with open(run.directory / LOG_NAME, "a") as log:
        return subprocess.run([sys.executable, "-m", "clim.study.runner", str(run.directory)], stdout=log,
                              stderr=subprocess.STDOUT, env=env).returncode


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def run_matrix(scale: str, out: str | Path, seeds_main: int = 3, seeds_other: int = 2, only: str | None = None,
               overrides: list[str] | tuple[str, ...] = (), results: str | Path | None = None,
               command: str | None = None) -> dict:
    """Run every unfinished run, then write RESULTS.md over the whole matrix found in ``out``.

    Returns ``{"runs", "ran", "failed", "results"}`` (``ran``: runs started by this call).
    """
    out = Path(out)
    runs = plan_runs(scale, out, seeds_main, seeds_other, only, overrides)
    finished = {run.label: read_eval(run) for run in runs}
    todo = [run for run in runs if finished[run.label] is None]
    durations = [record["seconds"] for record in finished.values() if record]
    print(f"clim ablate --scale {scale}: {len(runs)} runs in {out / 'runs'}, {len(runs) - len(todo)} done, "
          f"{len(todo)} to run", flush=True)
    failed = []
    for position, run in enumerate(todo, 1):
        prefix = f"[{position}/{len(todo)}] {run.label}"
        print(f"{prefix}: training + evaluation (log: {run.directory / LOG_NAME})", flush=True)
        started = time.perf_counter()
        code = _execute(run, SCALES[scale].threads)
        seconds = time.perf_counter() - started
        record = read_eval(run)
        if code != 0 or record is None:
            failed.append(run.label)
            print(f"{prefix}: FAILED (exit code {code}) after {duration(seconds)}; last lines of the log:\n"
                  f"{_tail(run.directory / LOG_NAME)}", flush=True)
        else:
            durations.append(seconds)
            print(f"{prefix}: done in {duration(seconds)}: kNN {record['knn_k20_top1']:.2f} %, linear "
                  f"{record['linear_top1']:.2f} %, 1 % labels {record['semisup_top1']:.2f} %", flush=True)
        left = len(todo) - position
        if left and durations:
            mean = sum(durations) / len(durations)
            print(f"    matrix ETA {duration(left * mean)}: {left} run(s) left at the mean so far, "
                  f"{duration(mean)} per run", flush=True)
    complete = plan_runs(scale, out, seeds_main, seeds_other, None, overrides)
    path = write_results(scale, out, complete, results, command, overrides, only)
    print(f"results: {path}" + (f"; {len(failed)} run(s) failed: {', '.join(failed)}" if failed else ""), flush=True)
    return {"runs": len(runs), "ran": len(todo), "failed": failed, "results": path}


if __name__ == "__main__":
    run_one(sys.argv[1])
