"""``data.augment=device`` (the CUDA default for image folders): DataLoader workers only read, decode
and crop + flip each view to a fixed-size uint8 tensor; the photometric part (jitter, grayscale, blur,
normalise) runs batched on the training device (:meth:`MoCoV2BatchAugment.augment_cropped`).

Each sample's crops are seeded from ``(train.seed, epoch, index)``, so they depend on neither the
worker nor the number of workers.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import functional as TF

from clim.config import Config
from clim.data.batch_augment import MoCoV2BatchAugment, fallback_crop_size
from clim.data.loader_pipeline import WorkerPipeline
from clim.data.views import (MULTICROP_SCALE, MULTICROP_VIEWS, at_resolutions, augment_kwargs, first_step,
                             make_step_generator, multicrop_size, restore_generators, resolutions_of, resume_point)


def crop_box(rng: np.random.Generator, height: int, width: int, scale: tuple[float, float],
             ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """One RandomResizedCrop box ``(x0, y0, w, h)``: torchvision's algorithm (10 tries, then the
    centre crop clamped to the ratio range), drawn from a numpy generator."""
    area = height * width
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_low, log_high))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    w, h = fallback_crop_size(height, width, ratio)
    return (width - w) // 2, (height - h) // 2, w, h


class CroppedViewsDataset(Dataset):
    """Per-sample geometric part for :class:`DevicePipeline`: read, decode, crop, flip → uint8 views.

    Each view is RandomResizedCrop (antialiased, at the largest resolution) + horizontal flip of the
    decoded image, as a uint8 tensor ``[C, S, S]``; everything photometric is left to the device.
    The draws come from ``np.random.default_rng((seed, epoch, index))``, so a sample's views depend
    on neither the worker that makes them nor the number of workers. A positive (METHOD §3) is drawn
    here too, from the same per-sample generator.
    """

    def __init__(self, dataset, config: Config, image_size: int):
        self.dataset = dataset
        self.sizes = resolutions_of(config, image_size)
        self.scale = (config.data.crop_min_scale, 1.0)
        self.flip_p = config.data.flip_p
        self.small_size = multicrop_size(config, image_size) if config.method.multicrop else None
        self.with_positive_query = config.method.mixing != "none"
        self.seed = config.train.seed
        self.epoch = 0
        self.positives: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def _view(self, image, rng: np.random.Generator, size: int, scale: tuple[float, float]) -> torch.Tensor:
        x0, y0, w, h = crop_box(rng, image.height, image.width, scale)
        view = TF.resized_crop(image, y0, x0, h, w, [size, size],
                               interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
        if rng.random() < self.flip_p:
            view = TF.hflip(view)
        return TF.pil_to_tensor(view)

    def __getitem__(self, i: int) -> dict:
        image, index, label = self.dataset[i]
        rng = np.random.default_rng((self.seed, self.epoch, int(index)))
        size = self.sizes[0]
        item = {"index": index, "label": label, "query": self._view(image, rng, size, self.scale),
                "key": self._view(image, rng, size, self.scale)}
        if self.positives is not None:
            row = self.positives[index]
            positive = int(row[int(rng.integers(len(row)))])
            positive_image = self.dataset[positive][0]
            item["positive_index"] = positive
            item["positive_key"] = self._view(positive_image, rng, size, self.scale)
            if self.with_positive_query:
                item["positive_query"] = self._view(positive_image, rng, size, self.scale)
        if self.small_size is not None:
            item["small_crops"] = torch.stack([self._view(image, rng, self.small_size, MULTICROP_SCALE)
                                               for _ in range(MULTICROP_VIEWS)])
        return item


class DevicePipeline(WorkerPipeline):
    """Workers decode and crop (uint8), the device does the photometric part on whole batches."""

    def __init__(self, dataset, config: Config, image_size: int, device: torch.device,
                 rank: int = 0, world_size: int = 1):
        info = dataset.info
        super().__init__(CroppedViewsDataset(dataset, config, image_size), config, device, rank, world_size)
        self.sizes = self.views.sizes
        self.augment = MoCoV2BatchAugment(self.sizes[0], info.mean, info.std, **augment_kwargs(config)).to(device)
        self.small_augment = None
        if config.method.multicrop:
            self.small_augment = MoCoV2BatchAugment(
                self.views.small_size, info.mean, info.std, **augment_kwargs(config, MULTICROP_SCALE)).to(device)

    def _views(self, cropped: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
        return at_resolutions(self.augment.augment_cropped(cropped, generator=generator), self.sizes)

    def _view_pair(self, first: torch.Tensor, second: torch.Tensor, generator: torch.Generator) -> tuple[list, list]:
        """The photometric part of two views in one batched pass of 2·B."""
        views = self.augment.augment_cropped(torch.cat([first, second]), generator=generator)
        first, second = views.chunk(2)
        return at_resolutions(first, self.sizes), at_resolutions(second, self.sizes)

    def epoch(self, epoch: int, positives: torch.Tensor | None = None, resume: dict | None = None) -> Iterator[dict]:
        loader, generator = self._loader(epoch, positives, first_step(resume))
        step_generator = make_step_generator(self.device, self.seed, epoch, self.rank)
        first = restore_generators(resume, generator, step_generator)
        for step, cropped in enumerate(loader, start=first):
            cropped = {key: value.to(self.device, non_blocking=True) for key, value in cropped.items()}
            query, key = self._view_pair(cropped["query"], cropped["key"], generator)
            batch = {"index": cropped["index"], "label": cropped["label"], "generator": step_generator,
                     "query": query, "key": key,
                     "positive_index": cropped.get("positive_index"), "positive_query": None,
                     "positive_key": None, "small_crops": None}
            if "positive_query" in cropped:
                batch["positive_key"], batch["positive_query"] = self._view_pair(
                    cropped["positive_key"], cropped["positive_query"], generator)
            elif "positive_key" in cropped:
                batch["positive_key"] = self._views(cropped["positive_key"], generator)
            if self.small_augment is not None:
                batch["small_crops"] = [self.small_augment.augment_cropped(cropped["small_crops"][:, v],
                                                                           generator=generator)
                                        for v in range(MULTICROP_VIEWS)]
            batch["resume"] = resume_point(step + 1, generator)
            yield batch
