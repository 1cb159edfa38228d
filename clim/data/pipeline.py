"""The training data path: for each step, every view the objective needs (see docs/ARCHITECTURE.md).

Two interchangeable implementations yield the same per-step dict:

* :class:`BatchedPipeline` keeps an array dataset as one uint8 tensor on the training device and
  augments whole batches there (:mod:`clim.data.batch_augment`); no DataLoader, no worker start-up.
* :class:`LoaderPipeline` runs per-sample torchvision transforms in DataLoader workers; it serves
  image folders (ImageNet) and any dataset when ``data.augment=loader``.

Randomness is seeded from ``(train.seed, epoch, rank)`` at the start of every epoch, so a run resumed
at an epoch boundary draws exactly the same crops, positives and CutMix boxes as an uninterrupted one.

Multi-resolution (METHOD §4): each view is cropped and augmented once at the largest resolution and
then resized (antialiased) to the others, so the views differ only in resolution.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from clim.config import Config
from clim.data.batch_augment import MoCoV2BatchAugment
from clim.data.transforms import moco_v2_transform

MULTICROP_SCALE = (0.05, 0.14)  # Table 7 baseline: 2 x 96 px crops of a 224 px image
MULTICROP_VIEWS = 2


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch) * 1_009 + rank


def resolutions_of(config: Config, image_size: int) -> list[int]:
    return sorted(config.method.resolutions or [image_size], reverse=True)


def multicrop_size(config: Config, image_size: int) -> int:
    return config.method.multicrop_size or max(8, round(image_size * 96 / 224))


def at_resolutions(view: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    """The same crop at every resolution; ``view`` is at ``sizes[0]`` (METHOD §4)."""
    batched = view if view.dim() == 4 else view.unsqueeze(0)
    out = [batched] + [F.interpolate(batched, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
                       for s in sizes[1:]]
    return out if view.dim() == 4 else [v.squeeze(0) for v in out]


def augment_kwargs(config: Config, scale: tuple[float, float] | None = None) -> dict:
    strength = config.data.jitter_strength
    return dict(
        crop_scale=scale or (config.data.crop_min_scale, 1.0),
        jitter=(strength, strength, strength, strength / 4),
        jitter_p=config.data.jitter_p,
        grayscale_p=config.data.grayscale_p,
        blur_p=config.data.blur_p,
        flip_p=config.data.flip_p,
    )


def draw_positives(table: torch.Tensor, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One positive per anchor, uniformly among its table entries (METHOD §3)."""
    rows = table[index.to(table.device)]
    pick = torch.randint(rows.shape[1], (rows.shape[0],), generator=generator, device=generator.device)
    return rows[torch.arange(rows.shape[0], device=rows.device), pick.to(rows.device)].long()


class BatchedPipeline:
    def __init__(self, dataset, config: Config, image_size: int, device: torch.device,
                 rank: int = 0, world_size: int = 1):
        info = dataset.info
        self.images = dataset.images.to(device)
        self.labels = dataset.labels.to(device)
        self.device = device
        self.rank, self.world_size = rank, world_size
        self.batch_size = config.train.batch_size
        self.seed = config.train.seed
        self.sizes = resolutions_of(config, image_size)
        self.augment = MoCoV2BatchAugment(self.sizes[0], info.mean, info.std, **augment_kwargs(config))
        self.small_augment = None
        if config.method.multicrop:
            self.small_augment = MoCoV2BatchAugment(
                multicrop_size(config, image_size), info.mean, info.std,
                **augment_kwargs(config, MULTICROP_SCALE))
        self.with_positive_query = config.method.mixing != "none"

    def __len__(self) -> int:
        return len(self.images) // (self.batch_size * self.world_size)

    def _views(self, index: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
        return at_resolutions(self.augment(self.images[index], generator=generator), self.sizes)

    def epoch(self, epoch: int, positives: torch.Tensor | None = None) -> Iterator[dict]:
        generator = torch.Generator(self.device).manual_seed(epoch_seed(self.seed, epoch, 0))
        order = torch.randperm(len(self.images), generator=generator, device=self.device)
        generator.manual_seed(epoch_seed(self.seed, epoch, self.rank + 1))
        global_batch = self.batch_size * self.world_size
        for step in range(len(self)):
            start = step * global_batch + self.rank * self.batch_size
            index = order[start: start + self.batch_size]
            batch = {"index": index, "label": self.labels[index], "generator": generator,
                     "query": self._views(index, generator), "key": self._views(index, generator),
                     "positive_index": None, "positive_query": None, "positive_key": None,
                     "small_crops": None}
            if positives is not None:
                positive = draw_positives(positives, index, generator).to(self.device)
                batch["positive_index"] = positive
                batch["positive_key"] = self._views(positive, generator)
                if self.with_positive_query:
                    batch["positive_query"] = self._views(positive, generator)
            if self.small_augment is not None:
                batch["small_crops"] = [self.small_augment(self.images[index], generator=generator)
                                        for _ in range(MULTICROP_VIEWS)]
            yield batch


class _ViewsDataset(Dataset):
    """Per-sample views for the DataLoader path; a positive is drawn inside the worker."""

    def __init__(self, dataset, config: Config, image_size: int):
        info = dataset.info
        self.dataset = dataset
        self.sizes = resolutions_of(config, image_size)
        self.transform = moco_v2_transform(self.sizes[0], info.mean, info.std, info.in_channels,
                                           **augment_kwargs(config))
        self.small_transform = None
        if config.method.multicrop:
            self.small_transform = moco_v2_transform(multicrop_size(config, image_size), info.mean, info.std,
                                                     info.in_channels, **augment_kwargs(config, MULTICROP_SCALE))
        self.with_positive_query = config.method.mixing != "none"
        self.positives: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def _views(self, image) -> list[torch.Tensor]:
        return at_resolutions(self.transform(image), self.sizes)

    def __getitem__(self, i: int) -> dict:
        image, index, label = self.dataset[i]
        item = {"index": index, "label": label, "query": self._views(image), "key": self._views(image)}
        if self.positives is not None:
            row = self.positives[index]
            positive = int(row[torch.randint(len(row), ()).item()])
            positive_image = self.dataset[positive][0]
            item["positive_index"] = positive
            item["positive_key"] = self._views(positive_image)
            if self.with_positive_query:
                item["positive_query"] = self._views(positive_image)
        if self.small_transform is not None:
            item["small_crops"] = [self.small_transform(image) for _ in range(MULTICROP_VIEWS)]
        return item


class LoaderPipeline:
    def __init__(self, dataset, config: Config, image_size: int, device: torch.device,
                 rank: int = 0, world_size: int = 1):
        self.views = _ViewsDataset(dataset, config, image_size)
        self.device = device
        self.seed = config.train.seed
        self.rank = rank
        self.batch_size = config.train.batch_size
        self.num_workers = config.data.num_workers
        self.sampler = DistributedSampler(self.views, num_replicas=world_size, rank=rank,
                                          shuffle=True, seed=config.train.seed, drop_last=True)

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def epoch(self, epoch: int, positives: torch.Tensor | None = None) -> Iterator[dict]:
        self.sampler.set_epoch(epoch)
        self.views.positives = None if positives is None else positives.cpu()
        loader = DataLoader(
            self.views, batch_size=self.batch_size, sampler=self.sampler, drop_last=True,
            num_workers=self.num_workers, pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(epoch_seed(self.seed, epoch, self.rank)),
            persistent_workers=False, prefetch_factor=4 if self.num_workers else None)
        generator = torch.Generator(self.device).manual_seed(epoch_seed(self.seed, epoch, self.rank + 1))
        for batch in loader:
            batch = {key: _to_device(value, self.device) for key, value in batch.items()}
            batch.setdefault("positive_index", None)
            batch.setdefault("positive_key", None)
            batch.setdefault("positive_query", None)
            batch.setdefault("small_crops", None)
            batch["generator"] = generator
            yield batch


def _to_device(value, device: torch.device):
    if isinstance(value, list):
        return [v.to(device, non_blocking=True) for v in value]
    return value.to(device, non_blocking=True)


def build_pipeline(dataset, config: Config, image_size: int, device: torch.device,
                   rank: int = 0, world_size: int = 1):
    """``data.augment``: auto = batched for array datasets (held in memory), loader otherwise."""
    mode = config.data.augment
    if mode == "auto":
        mode = "batched" if hasattr(dataset, "images") else "loader"
    if mode == "batched" and not hasattr(dataset, "images"):
        raise ValueError(f"data.augment=batched needs an array dataset; '{config.data.name}' is read from files")
    pipeline_class = BatchedPipeline if mode == "batched" else LoaderPipeline
    pipeline = pipeline_class(dataset, config, image_size, device, rank, world_size)
    if len(pipeline) == 0:
        raise ValueError(f"{len(dataset)} images give no full batch of {config.train.batch_size}"
                         f" x {world_size} processes; lower train.batch_size")
    return pipeline

