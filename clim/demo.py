"""``clim demo`` (``make demo``): pretrain on the embedded Fashion-MNIST subset, then compare.

The table puts the trained backbone next to the same backbone at random initialisation and raw
pixels, at the training resolution and at the dataset's native one, all with the same weighted kNN
(METHOD §5) and the same ridge classifier on the embedded test split, so a user sees at once whether
pretraining learned anything beyond what the architecture and the pixels give for free.
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
from clim.runtime.checkpoint import CHECKPOINT_NAME
from clim.engine.trainer import pretrain
from clim.inspect import draw_refresh
from clim.evaluation.cli import REFERENCE_MAX_IMAGES
from clim.evaluation.common import eval_datasets, load_run, plain_backbone, write_result
from clim.runtime.features import extract_features
from clim.runtime.machine import choose_torch_threads
from clim.evaluation.knn import KNN_SETTINGS, run_knn
from clim.models.backbones import build_backbone, uses_small_stem
from clim.report import write_report


def _pixels(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(dataset.info.mean).view(1, -1, 1, 1)
    std = torch.tensor(dataset.info.std).view(1, -1, 1, 1)
    pixels = (dataset.images.float() / 255.0 - mean) / std
    return pixels.flatten(1), dataset.labels


def _backbone_knn(backbone, train_ds, test_ds, num_classes: int) -> dict[str, float]:
    train = extract_features(backbone, train_ds, batch_size=512)
    test = extract_features(backbone, test_ds, batch_size=512)
    return run_knn(*train, *test, num_classes=num_classes)


def references(config, info: dict, train_ds, test_ds) -> dict[str, dict[str, float]]:
    """What kNN gets for free: the same backbone at random initialisation, and the raw pixels at their
    native size (the study's runner reads the first; :func:`compare` adds the training resolution)."""
    return {"random init": _backbone_knn(_random_backbone(config, info), train_ds, test_ds, info["num_classes"]),
            "raw pixels": run_knn(*_pixels(train_ds), *_pixels(test_ds), num_classes=info["num_classes"])}


def _random_backbone(config, info: dict):
    """The backbone at random initialisation, drawn with the run's seed (what the study's records use)."""
    torch.manual_seed(config.train.seed)
    random_init, _ = build_backbone(config.model.backbone, info["in_channels"],
                                    uses_small_stem(info["image_size"], config.model.small_stem))
    return random_init


def ridge_top1(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor) -> float:
    """Top-1 % of a one-vs-rest ridge classifier on standardised features, its regularisation chosen by
    leave-one-out on the train rows: the linear reference of clim.evaluation.references, on any features."""
    import numpy as np
    from sklearn.linear_model import RidgeClassifierCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from clim.evaluation.references import RIDGE_ALPHAS

    labelled = train_y >= 0
    model = make_pipeline(StandardScaler(), RidgeClassifierCV(alphas=RIDGE_ALPHAS))
    model.fit(train_x[labelled].numpy().astype(np.float64), train_y[labelled].numpy())
    return 100.0 * float((model.predict(test_x.numpy().astype(np.float64)) == test_y.numpy()).mean())


def _row(train: tuple, test: tuple, num_classes: int) -> dict[str, float]:
    """Both kNN settings and the ridge on ``(features, labels)`` of the train and test splits."""
    return {**run_knn(*train, *test, num_classes=num_classes), "ridge_top1": ridge_top1(*train, *test),
            "num_test": int(test[1].numel())}


def _backbone_row(backbone, train_ds, test_ds, num_classes: int) -> dict[str, float]:
    train = extract_features(backbone, train_ds, batch_size=512)
    test = extract_features(backbone, test_ds, batch_size=512)
    return _row(train, test, num_classes)


def pixel_rows(train_ds, test_ds, image_size: int, num_classes: int) -> dict[str, dict[str, float]]:
    """Raw pixels through the eval transform (resized, normalised, flattened) at the dataset's native size
    (``raw pixels``) and, when it differs, at the training resolution (``raw pixels training size``)."""
    from clim.evaluation.references import dataset_pixels

    native, rows = int(train_ds.info.image_size), {}
    if image_size != native:  # first: the resolution the network was trained and evaluated at
        rows["raw pixels training size"] = {
            **_row(dataset_pixels(train_ds, image_size), dataset_pixels(test_ds, image_size), num_classes),
            "image_size": image_size}
    rows["raw pixels"] = {**_row(dataset_pixels(train_ds, native), dataset_pixels(test_ds, native), num_classes),
                          "image_size": native}
    return rows


def compare(run_dir: Path) -> dict[str, dict[str, float]]:
    """kNN top-1 (both settings) and ridge top-1 of the trained backbone, the same backbone at random
    init, and raw pixels at the native and the training resolution (:func:`pixel_rows`)."""
    run = load_run(run_dir / CHECKPOINT_NAME)
    config, info = run.config, run.data_info
    train_ds, test_ds = eval_datasets(config, info)
    trained, _ = plain_backbone(config, info, run.model)
    classes = info["num_classes"]
    return {"trained": _backbone_row(trained, train_ds, test_ds, classes),
            "random init": _backbone_row(_random_backbone(config, info), train_ds, test_ds, classes),
            **pixel_rows(train_ds, test_ds, info["image_size"], classes)}


def write_references(run_dir: Path) -> Path | None:
    """``eval/knn_references.json`` (random init and raw pixels at the native and the training resolution,
    for the report's kNN plots) when they are cheap: array data (pixels at hand) of at most
    REFERENCE_MAX_IMAGES images; else None."""
    run = load_run(run_dir / CHECKPOINT_NAME)
    train_ds, test_ds = eval_datasets(run.config, run.data_info)
    if not hasattr(train_ds, "images") or len(train_ds) + len(test_ds) > REFERENCE_MAX_IMAGES:
        return None
    classes = run.data_info["num_classes"]
    rows = {"random init": _backbone_row(_random_backbone(run.config, run.data_info), train_ds, test_ds, classes),
            **pixel_rows(train_ds, test_ds, run.data_info["image_size"], classes)}
    return write_result(run_dir / "eval" / "knn_references.json", {
        "protocol": "knn_references", "knn_settings": [list(s) for s in KNN_SETTINGS], **_flat(rows)})


def _flat(rows: dict[str, dict[str, float]]) -> dict[str, float]:
    return {f"{name.replace(' ', '_')}_{key}": value for name, values in rows.items() for key, value in values.items()}


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
    return f"next: {clim} inspect {run}; {clim} eval knn --ckpt {shlex.quote(str(Path(out) / CHECKPOINT_NAME))}"


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
    table = format_table(rows)
    last_selection = next((r["selection"] for r in reversed(history) if "selection" in r), None)
    print(f"\nkNN and ridge top-1 on the {rows['trained']['num_test']} test images of {config.data.name} after "
          f"{config.train.epochs} epochs of {preset} ({train_seconds / 60:.1f} min of pretraining, "
          f"{history[-1]['images_per_s']:.0f} images/s in the last epoch):\n")
    print(table)
    print(f"\n{reference_words(rows)}.")
    if last_selection and "positive_precision" in last_selection:
        print("\npositives table at each refresh (precision = share of positives with the anchor's label):")
        for record in (r for r in history if "selection" in r):
            print(refresh_line(record, config))
    result = {"protocol": "demo", "preset": preset, "overrides": list(overrides), "epochs": config.train.epochs,
              "pretrain_seconds": round(train_seconds, 1), "images_per_s": history[-1]["images_per_s"],
              "knn_settings": [list(s) for s in KNN_SETTINGS], **_flat(rows)}
    result["total_seconds"] = round(time.perf_counter() - started, 1)  # pretraining + this comparison
    write_result(out / "eval" / "demo.json", result)
    print(f"\nreport: {write_report(out)} ({result['total_seconds'] / 60:.1f} min in all, "
          f"{torch.get_num_threads()} torch thread(s))")
    print(next_hint(out))
    return result
