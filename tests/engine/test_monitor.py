"""The kNN monitor evaluates on the splits ``clim eval`` uses (clim.data.splits) with its classifier: a
class folder with no val/ holds out data.val_fraction of every class rather than switching it off."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from clim.data import build_dataset
from clim.data.splits import HoldoutSplit
from clim.engine.monitor import KnnMonitor, data_info_dict
from clim.evaluation.common import eval_datasets
from clim.evaluation.knn import weighted_knn
from clim.models.backbones import build_backbone
from clim.runtime.features import extract_features

CLASSES, PER_CLASS = 3, 6


def _folder(root, classes: int = CLASSES, per_class: int = PER_CLASS, flat: bool = False):
    rng = np.random.default_rng(0)
    for c in range(classes):
        for i in range(per_class):
            folder = root if flat else root / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 60, (12, 12, 3)) + 60 * c  # the class sets the brightness
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{c}_{i}.png")
    return root


def _config(tiny_config, root, *extra):
    return tiny_config("data.name=imagefolder", f"data.root={root}", "data.image_size=16", *extra)


def test_the_monitor_holds_out_a_class_folder_without_val_as_clim_eval_does(tmp_path, tiny_config):
    root = _folder(tmp_path / "classes")
    config = _config(tiny_config, root, "data.val_fraction=0.34")
    info = build_dataset("imagefolder", root, "pretrain", image_size=16).info
    messages = []
    monitor = KnnMonitor.create(config, info, 16, torch.device("cpu"), messages.append)
    assert monitor is not None and messages == []
    train_ds, test_ds = eval_datasets(config, data_info_dict(info, 16))  # what `clim eval knn` evaluates on
    assert isinstance(monitor.test, HoldoutSplit) and len(monitor.test) == CLASSES * 2  # round(0.34 x 6) per class
    assert torch.equal(monitor.test.indices, test_ds.indices) and torch.equal(monitor.train.indices, train_ds.indices)

    torch.manual_seed(0)
    backbone, _ = build_backbone("resnet10", 3, True)
    top1 = monitor(backbone)
    expected = weighted_knn(*extract_features(backbone, train_ds), *extract_features(backbone, test_ds),
                            config.train.knn_k, config.train.knn_temperature, CLASSES)
    assert top1 == expected and 0.0 <= top1 <= 100.0
    measured = monitor.measure(backbone)
    assert measured["knn_top1"] == top1 and measured["knn_seconds"] > 0


def test_the_monitor_is_off_for_a_flat_folder_and_says_so_once(tmp_path, tiny_config):
    root = _folder(tmp_path / "flat", flat=True)
    info = build_dataset("imagefolder", root, "pretrain", image_size=16).info
    messages = []
    assert KnnMonitor.create(_config(tiny_config, root), info, 16, torch.device("cpu"), messages.append) is None
    assert len(messages) == 1 and messages[0].startswith("kNN monitor off: 'imagefolder'")
    assert KnnMonitor.create(_config(tiny_config, root, "train.knn_every=0"), info, 16, torch.device("cpu"),
                             messages.append) is None
    assert len(messages) == 1  # switched off by the config: nothing to say


def test_the_monitor_is_due_every_knn_every_epochs_and_after_the_last(tmp_path, tiny_config):
    root = _folder(tmp_path / "classes")
    info = build_dataset("imagefolder", root, "pretrain", image_size=16).info
    monitor = KnnMonitor.create(_config(tiny_config, root, "train.epochs=5", "train.knn_every=2"), info, 16,
                                torch.device("cpu"))
    assert [epoch for epoch in range(5) if monitor.due(epoch)] == [1, 3, 4]
