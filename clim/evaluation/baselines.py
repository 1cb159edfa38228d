"""What needs no training, by the same weighted kNN (METHOD §5) and ridge classifier as the trained
backbone: the backbone at random initialisation and the raw pixels (native and training resolution).
``clim demo`` prints them, ``clim report`` draws them (:func:`write_references`), ``clim ablate``
records the random-init one.
"""

from __future__ import annotations

from pathlib import Path

import torch

from clim.evaluation.cli import REFERENCE_MAX_IMAGES
from clim.evaluation.common import eval_datasets, load_run, write_result
from clim.evaluation.knn import KNN_SETTINGS, run_knn
from clim.config import uses_small_stem
from clim.models.backbones import build_backbone
from clim.specs import CHECKPOINT_FILE
from clim.runtime.features import extract_features


def _pixels(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(dataset.info.mean).view(1, -1, 1, 1)
    std = torch.tensor(dataset.info.std).view(1, -1, 1, 1)
    pixels = (dataset.images.float() / 255.0 - mean) / std
    return pixels.flatten(1), dataset.labels


def _embedded(backbone, train_ds, test_ds) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """``((feats, labels) of train_ds, (feats, labels) of test_ds)`` by ``backbone``."""
    return extract_features(backbone, train_ds, batch_size=512), extract_features(backbone, test_ds, batch_size=512)


def references(config, info: dict, train_ds, test_ds) -> dict[str, dict[str, float]]:
    """What kNN gets for free: the same backbone at random initialisation, and the raw pixels at their
    native size (the study's runner reads the first; :func:`clim.demo.compare` adds the training resolution)."""
    train, test = _embedded(random_backbone(config, info), train_ds, test_ds)
    return {"random init": run_knn(*train, *test, num_classes=info["num_classes"]),
            "raw pixels": run_knn(*_pixels(train_ds), *_pixels(test_ds), num_classes=info["num_classes"])}


def random_backbone(config, info: dict):
    """The backbone at random initialisation, drawn with the run's seed (what the study's records use)."""
    torch.manual_seed(config.train.seed)
    return build_backbone(config.model.backbone, info["in_channels"],
                          uses_small_stem(info["image_size"], config.model.small_stem))[0]


def ridge_top1(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor) -> float:
    """Top-1 % of a one-vs-rest ridge classifier on standardised features, its regularisation chosen by
    leave-one-out on the labelled train rows: the linear reference of clim.evaluation.references, on any
    features."""
    from clim.evaluation.references import fit_ridge

    labelled = train_y >= 0
    return fit_ridge(train_x[labelled], train_y[labelled], test_x, test_y)[0]


def _row(train: tuple, test: tuple, num_classes: int) -> dict[str, float]:
    """Both kNN settings and the ridge on ``(features, labels)`` of the train and test splits."""
    return {**run_knn(*train, *test, num_classes=num_classes), "ridge_top1": ridge_top1(*train, *test),
            "num_test": int(test[1].numel())}


def backbone_row(backbone, train_ds, test_ds, num_classes: int) -> dict[str, float]:
    return _row(*_embedded(backbone, train_ds, test_ds), num_classes)


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


def write_references(run_dir: Path) -> Path | None:
    """``eval/knn_references.json`` (the rows of :func:`clim.demo.compare` but the trained one) when cheap:
    array data of at most REFERENCE_MAX_IMAGES images; else None."""
    run = load_run(run_dir / CHECKPOINT_FILE)
    train_ds, test_ds = eval_datasets(run.config, run.data_info)
    if not hasattr(train_ds, "images") or len(train_ds) + len(test_ds) > REFERENCE_MAX_IMAGES:
        return None
    classes = run.data_info["num_classes"]
    rows = {"random init": backbone_row(random_backbone(run.config, run.data_info), train_ds, test_ds, classes),
            **pixel_rows(train_ds, test_ds, run.data_info["image_size"], classes)}
    return write_result(run_dir / "eval" / "knn_references.json", {
        "protocol": "knn_references", "knn_settings": [list(s) for s in KNN_SETTINGS], **flat_rows(rows)})


def flat_rows(rows: dict[str, dict[str, float]]) -> dict[str, float]:
    return {f"{name.replace(' ', '_')}_{key}": value for name, values in rows.items() for key, value in values.items()}
