"""The kNN monitor: weighted kNN top-1 of the query backbone's features (METHOD §5) during pretraining,
on the splits ``clim eval`` uses (:func:`clim.data.splits.eval_datasets`: a dataset's own train and
test splits, or ``data.val_fraction`` of every class held out of a class folder with no ``val/``), with
``clim eval knn``'s classifier (:func:`clim.runtime.features.weighted_knn`, ``train.knn_k``, ``train.knn_temperature``).
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from clim.config import Config
from clim.data.splits import eval_datasets
from clim.runtime.features import extract_features, weighted_knn


def data_info_dict(info, image_size: int) -> dict:
    """What a checkpoint records of its data (``data_info``): the model's input convention."""
    return {"name": info.name, "num_classes": info.num_classes, "in_channels": info.in_channels,
            "image_size": image_size, "mean": list(info.mean), "std": list(info.std)}


class KnnMonitor:
    """Weighted kNN top-1 on the labelled splits (METHOD §5), query backbone features."""

    def __init__(self, config: Config, info, image_size: int, device: torch.device):
        self.config, self.device = config, device
        self.train, self.test = eval_datasets(config, data_info_dict(info, image_size))
        self.num_classes = self.train.info.num_classes

    @classmethod
    def create(cls, config: Config, info, image_size: int, device: torch.device,
               warn: Callable[[str], None] | None = None):
        """The monitor, or None when ``train.knn_every`` is 0 or the data has no labelled splits (then
        ``warn`` says so)."""
        if config.train.knn_every <= 0:
            return None
        try:
            monitor = cls(config, info, image_size, device)
            if monitor.num_classes:
                return monitor
        except (FileNotFoundError, ValueError):  # ConfigError included: e.g. a flat folder, no labels
            pass
        if warn is not None:
            warn(f"kNN monitor off: '{config.data.name}' has no labelled train and test splits here")
        return None

    def due(self, epoch: int) -> bool:
        """After every ``train.knn_every``-th epoch and after the last."""
        return (epoch + 1) % self.config.train.knn_every == 0 or epoch + 1 == self.config.train.epochs

    def measure(self, backbone: torch.nn.Module) -> dict[str, float]:
        """``{"knn_top1": %, "knn_seconds": how long it took}`` for the metrics record."""
        started = time.perf_counter()
        return {"knn_top1": self(backbone), "knn_seconds": time.perf_counter() - started}

    def __call__(self, backbone: torch.nn.Module) -> float:
        kwargs = dict(batch_size=256, device=self.device, num_workers=self.config.data.num_workers)
        train_feats, train_labels = extract_features(backbone, self.train, **kwargs)
        test_feats, test_labels = extract_features(backbone, self.test, **kwargs)
        return weighted_knn(train_feats.to(self.device), train_labels.to(self.device), test_feats.to(self.device),
                            test_labels.to(self.device), self.config.train.knn_k,
                            self.config.train.knn_temperature, self.num_classes)
