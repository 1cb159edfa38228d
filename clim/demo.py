"""``clim demo`` (``make demo``): pretrain on the embedded Fashion-MNIST subset, then compare.

The table puts the trained backbone next to what needs no training (:mod:`clim.evaluation.baselines`),
all by the same weighted kNN (METHOD §5) and ridge classifier on the embedded test split, so a user sees
whether pretraining learned anything beyond what the architecture and the pixels give for free.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

import torch

from clim.config import load_config
from clim.summary import clim_command
from clim.specs import CHECKPOINT_FILE
from clim.engine.trainer import pretrain
from clim.inspect import draw_refresh
# What needs no training lives in clim.evaluation.baselines (clim report uses it too); its names stay here.
from clim.evaluation.baselines import (backbone_row, flat_rows, pixel_rows, random_backbone, references,  # noqa: F401
                                       ridge_top1, write_references)
from clim.evaluation.common import eval_datasets, load_run, plain_backbone, write_result
from clim.runtime.machine import choose_torch_threads
from clim.evaluation.knn import KNN_SETTINGS
from clim.report import write_report


def compare(run_dir: Path) -> dict[str, dict[str, float]]:
    """kNN top-1 (both settings) and ridge top-1 of the trained backbone, the same backbone at random
    init, and raw pixels at the native and the training resolution (:func:`pixel_rows`)."""
    run = load_run(run_dir / CHECKPOINT_FILE)
    config, info = run.config, run.data_info
    train_ds, test_ds = eval_datasets(config, info)
    trained, _ = plain_backbone(config, info, run.model)
    classes = info["num_classes"]
    return {"trained": backbone_row(trained, train_ds, test_ds, classes),
            "random init": backbone_row(random_backbone(config, info), train_ds, test_ds, classes),
            **pixel_rows(train_ds, test_ds, info["image_size"], classes)}


def row_label(name: str, values: dict) -> str:
    """``raw pixels, 16 px (training resolution)`` for the pixel rows; other rows keep their name."""
    if name == "raw pixels training size":
        return f"raw pixels, {values['image_size']} px (training resolution)"
    if name == "raw pixels" and "image_size" in values:
        return f"raw pixels, {values['image_size']} px (native)"
    return name


def format_table(rows: dict[str, dict[str, float]]) -> str:
    keys = [f"knn_k{k}_top1" for k, _ in KNN_SETTINGS] + ["ridge_top1"]
    header = ("| features | " + " | ".join(f"kNN top-1 k={k}, T={t}" for k, t in KNN_SETTINGS)
              + " | linear (ridge) top-1 |")
    lines = [header, "|---|" + "---|" * len(keys)]
    lines += [f"| {row_label(name, values)} | " + " | ".join(
        f"{values[k]:.2f} %" if isinstance(values.get(k), float) else "—" for k in keys) + " |"
        for name, values in rows.items()]
    return "\n".join(lines)


def reference_words(rows: dict[str, dict[str, float]]) -> str:
    """Where the trained backbone falls against every reference, in words (kNN k=20, and the ridge)."""
    from clim.evaluation.cli import versus

    trained = rows["trained"]
    parts = []
    for key, what in (("knn_k20_top1", "kNN k=20"), ("ridge_top1", "ridge")):
        if isinstance(trained.get(key), float):
            found = [versus(trained[key], values[key], row_label(name, values)) for name, values in rows.items()
                     if name != "trained" and isinstance(values.get(key), float)]
            parts.append(f"{what} {trained[key]:.2f} %: " + ", ".join(found))
    return "trained backbone: " + "; ".join(parts)


def refresh_line(record: dict, config) -> str:
    """One refresh of the positives table, its precision beside plain kNN's at the same number of
    picks (the ``num_positives`` nearest neighbours) and over all ``method.knn_k`` (the selection's Ω2)."""
    selection, p = record["selection"], config.method.num_positives
    top_p = selection.get("knn_top_p_precision")
    same_p = f"the {p} nearest kNN neighbours {top_p:.3f}; " if top_p is not None else ""
    return (f"  epoch {record['epoch']}: precision {selection['positive_precision']:.3f}"
            f" ({same_p}all {config.method.knn_k}: {selection['knn_precision']:.3f}),"
            f" mean |Omega_p| {selection.get('omega_mean', 0):.1f},"
            f" anchors filled {100 * selection.get('fill_fraction', 0):.0f} %")


def next_hint(out: str | Path) -> str:
    """The demo's last line: the README's next commands, spelled so that they run from this shell."""
    clim, run = clim_command(), shlex.quote(str(out))
    return f"next: {clim} inspect {run}; {clim} eval knn --ckpt {shlex.quote(str(Path(out) / CHECKPOINT_FILE))}"


def run_demo(out: str | Path, preset: str = "clim-demo-cpu", overrides: list[str] | tuple[str, ...] = ()) -> dict:
    out = Path(out)
    config = load_config(preset, overrides=overrides)
    if "OMP_NUM_THREADS" not in os.environ and not torch.cuda.is_available():
        threads, line = choose_torch_threads()  # threads on cores that other jobs keep busy slow every step
        torch.set_num_threads(threads)
        print(line, file=sys.stderr)
    started = time.perf_counter()
    # The whole demo's ETA: the comparison after pretraining embeds the splits twice (trained, random
    # init), each about as long as one kNN monitor evaluation.
    history = pretrain(config, out, eta_after=lambda done: 2 * next(
        (r["knn_seconds"] for r in reversed(done) if "knn_seconds" in r), 0.0), on_refresh=draw_refresh)
    train_seconds = time.perf_counter() - started
    rows = compare(out)
    last_selection = next((r["selection"] for r in reversed(history) if "selection" in r), None)
    print(f"\nkNN and ridge top-1 on the {rows['trained']['num_test']} test images of {config.data.name} after "
          f"{config.train.epochs} epochs of {preset} ({train_seconds / 60:.1f} min of pretraining, "
          f"{history[-1]['images_per_s']:.0f} images/s in the last epoch):\n")
    print(format_table(rows))
    print(f"\n{reference_words(rows)}.")
    if last_selection and "positive_precision" in last_selection:
        print("\npositives table at each refresh (precision = share of positives with the anchor's label):")
        for record in (r for r in history if "selection" in r):
            print(refresh_line(record, config))
    result = {"protocol": "demo", "preset": preset, "overrides": list(overrides), "epochs": config.train.epochs,
              "pretrain_seconds": round(train_seconds, 1), "images_per_s": history[-1]["images_per_s"],
              "knn_settings": [list(s) for s in KNN_SETTINGS], **flat_rows(rows)}
    result["total_seconds"] = round(time.perf_counter() - started, 1)  # pretraining + this comparison
    write_result(out / "eval" / "demo.json", result)
    print(f"\nreport: {write_report(out)} ({result['total_seconds'] / 60:.1f} min in all, "
          f"{torch.get_num_threads()} torch thread(s))")
    print(next_hint(out))
    return result
