"""A tiny pretrained checkpoint and a tiny labelled dataset, so the CLI handlers run in seconds."""

import pytest
import torch

from clim.config import Config
from clim.data.arrays import ArrayDataset
from clim.data.registry import DatasetInfo
from clim.models.moco import build_moco
from clim.runtime.checkpoint import save_atomic
from clim.specs import model_spec

TINY_INFO = DatasetInfo("tiny", 4, 1, 8, (0.5,), (0.25,))


def tiny_split(split: str, transform=None) -> ArrayDataset:
    """4 classes, each a bright horizontal band at its own height, plus noise."""
    per_class = 12 if split != "test" else 6
    gen = torch.Generator().manual_seed(0 if split != "test" else 1)
    labels = torch.arange(4).repeat_interleave(per_class)
    images = torch.randint(0, 60, (labels.numel(), 1, 8, 8), generator=gen)
    for i, label in enumerate(labels.tolist()):
        images[i, 0, 2 * label:2 * label + 2] += 180
    return ArrayDataset(images.to(torch.uint8), labels, TINY_INFO, transform, ["a", "b", "c", "d"])


@pytest.fixture
def tiny_data(monkeypatch):
    calls = []

    def build_dataset(name, root=None, split="pretrain", transform=None, image_size=None, **kwargs):
        calls.append((name, split, image_size))
        if name != "tiny":
            raise ValueError(f"unknown dataset {name!r}")
        return tiny_split(split, transform)

    monkeypatch.setattr("clim.data.build_dataset", build_dataset)
    return calls


@pytest.fixture
def tiny_ckpt(tmp_path):
    torch.manual_seed(0)
    config = Config()
    config.data.name = "tiny"
    config.data.num_workers = 0
    config.model.backbone = "resnet10"
    config.model.queue_size = 64
    model = build_moco(model_spec(config, TINY_INFO.image_size), TINY_INFO.in_channels)
    data_info = {"name": "tiny", "num_classes": 4, "in_channels": 1, "image_size": 8,
                 "mean": [0.5], "std": [0.25]}
    path = tmp_path / "run" / "checkpoint.pt"
    save_atomic({"config": config.to_dict(), "model": model.state_dict(), "epoch": 3, "step": 30,
                 "data_info": data_info, "num_samples": 48}, path)
    return path
