"""What the examples share: sklearn's 8×8 digits as a tensor dataset, a batched augmentation, a
small CNN backbone (so that each example trains on a CPU in seconds, no download) and ``--epochs``."""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset


def digits(num_images: int = 512) -> TensorDataset:
    """``(image [1, 8, 8] in [0, 1], label)`` items, item i = image i (what a PositiveBank indexes)."""
    data = load_digits()
    images = torch.tensor(data.images[:num_images], dtype=torch.float32).unsqueeze(1) / 16.0
    return TensorDataset(images, torch.tensor(data.target[:num_images]))


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A stand-in for MoCo v2's augmentation on a whole batch: a random shift by up to one pixel
    (pad + crop), brightness jitter and noise, each drawn per image."""
    n, _, h, w = images.shape
    padded = F.pad(images, (1, 1, 1, 1))
    dy, dx = (torch.randint(3, (n,), generator=generator) for _ in range(2))
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(n, 1, h, w + 2)
    shifted = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(n, 1, h, w)
    shifted = shifted.gather(3, cols)
    brightness = 0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=generator)
    return shifted * brightness + 0.05 * torch.randn(shifted.shape, generator=generator)


def backbone(width: int = 32) -> nn.Sequential:
    """A small CNN for 8×8 images; pooled features of size ``2 * width``."""
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten())


def epochs_argument(doc: str, default: int = 6) -> int:
    """The ``--epochs`` of an example's command line (its docstring's first line as the help)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=default, help=f"epochs to train (default {default})")
    return parser.parse_args().epochs
