"""The training data path: for each step, every view the objective needs (see docs/ARCHITECTURE.md).

Two interchangeable implementations yield the same per-step dict:

* :class:`BatchedPipeline` keeps an array dataset as one uint8 tensor on the training device and
  augments whole batches there (:mod:`clim.data.batch_augment`); no DataLoader, no worker start-up.
* :class:`LoaderPipeline` runs per-sample torchvision transforms in DataLoader workers; it serves
  image folders (ImageNet) on CPU and any dataset when ``data.augment=loader``.
* :class:`DevicePipeline` splits the work for large file datasets on a GPU (``data.augment=device``,
  the CUDA default for image folders): DataLoader workers only read, decode and crop + flip each view
  to a fixed-size uint8 tensor; the photometric part (jitter, grayscale, blur, normalise) runs batched
  on the training device (:meth:`MoCoV2BatchAugment.augment_cropped`).

Randomness is seeded from ``(train.seed, epoch, rank)`` at the start of every epoch, so a run resumed
at an epoch boundary draws exactly the same crops, positives and CutMix boxes as an uninterrupted one
(the device path seeds each sample's crops from ``(train.seed, epoch, index)``, so they do not depend
on the number of workers either).

Multi-resolution (METHOD §4): each view is cropped and augmented once at the largest resolution and
then resized (antialiased) to the others, so the views differ only in resolution.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision.transforms import functional as TF

from clim.config import Config, per_process_batch
from clim.data.batch_augment import MoCoV2BatchAugment, fallback_crop_size
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


def make_step_generator(device: torch.device, seed: int, epoch: int, rank: int) -> torch.Generator:
    """The generator of the step's own draws (CutMix boxes, λ), ``batch["generator"]``: separate from
    the views' generator, so that making batches ahead of the step (:mod:`clim.data.prefetch`) draws
    exactly the same numbers as making them in turn."""
    return torch.Generator(device).manual_seed(epoch_seed(seed + 1, epoch, rank) + 7)


def resume_point(next_step: int, views_generator: torch.Generator | None) -> dict:
    """What a batch carries so that a checkpoint taken after its step can resume the epoch exactly:
    the step to start from and the views generator's state after making this batch. The step
    generator's state is read by the trainer at checkpoint time (the step has drawn from it since)."""
    return {"step": next_step, "views": None if views_generator is None else views_generator.get_state()}


def restore_generators(resume: dict | None, views_generator: torch.Generator | None,
                       step_generator: torch.Generator) -> int:
    """Set the generators to a mid-epoch checkpoint's states; returns the first step to make."""
    if not resume:
        return 0
    if views_generator is not None and resume.get("views") is not None:
        views_generator.set_state(resume["views"])
    step_generator.set_state(resume["step_generator"])
    return int(resume["step"])


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
        self.batch_size = per_process_batch(config, world_size)  # train.batch_size is global
        self.seed = config.train.seed
        self.sizes = resolutions_of(config, image_size)
        self.augment = MoCoV2BatchAugment(self.sizes[0], info.mean, info.std, **augment_kwargs(config)).to(device)
        self.small_augment = None
        if config.method.multicrop:
            self.small_augment = MoCoV2BatchAugment(
                multicrop_size(config, image_size), info.mean, info.std,
                **augment_kwargs(config, MULTICROP_SCALE)).to(device)
        self.with_positive_query = config.method.mixing != "none"

    def __len__(self) -> int:
        return len(self.images) // (self.batch_size * self.world_size)

    def _view_pair(self, index: torch.Tensor, generator: torch.Generator) -> tuple[list, list]:
        """Two independent views of the images ``index``, augmented in one batched pass of 2·B."""
        views = self.augment(self.images[index].repeat(2, 1, 1, 1), generator=generator)
        first, second = views.chunk(2)
        return at_resolutions(first, self.sizes), at_resolutions(second, self.sizes)

    def epoch(self, epoch: int, positives: torch.Tensor | None = None, resume: dict | None = None) -> Iterator[dict]:
        generator = torch.Generator(self.device).manual_seed(epoch_seed(self.seed, epoch, 0))
        order = torch.randperm(len(self.images), generator=generator, device=self.device)
        generator.manual_seed(epoch_seed(self.seed, epoch, self.rank + 1))
        step_generator = make_step_generator(self.device, self.seed, epoch, self.rank)
        first = restore_generators(resume, generator, step_generator)
        global_batch = self.batch_size * self.world_size
        for step in range(first, len(self)):
            # rank r takes every world_size-th image of the global batch, as DistributedSampler does:
            # the images of one process are then the images of one BN group of a 1-process run
            index = order[step * global_batch: (step + 1) * global_batch][self.rank::self.world_size]
            query, key = self._view_pair(index, generator)
            batch = {"index": index, "label": self.labels[index], "generator": step_generator,
                     "query": query, "key": key,
                     "positive_index": None, "positive_query": None, "positive_key": None,
                     "small_crops": None}
            if positives is not None:
                positive = draw_positives(positives, index, generator).to(self.device)
                batch["positive_index"] = positive
                if self.with_positive_query:
                    batch["positive_key"], batch["positive_query"] = self._view_pair(positive, generator)
                else:
                    batch["positive_key"] = at_resolutions(
                        self.augment(self.images[positive], generator=generator), self.sizes)
            if self.small_augment is not None:
                batch["small_crops"] = [self.small_augment(self.images[index], generator=generator)
                                        for _ in range(MULTICROP_VIEWS)]
            batch["resume"] = resume_point(step + 1, generator)
            yield batch


class _ViewsDataset(Dataset):
    """Per-sample views for the DataLoader path; a positive is drawn inside the worker.

    The transforms draw from torch's global generator; each item seeds it (forked, so nothing else
    is disturbed) from ``(train.seed, epoch, rank, index)``, so a sample's views depend on neither
    the worker nor ``data.num_workers`` (with 0 workers they would otherwise follow the main process).
    """

    def __init__(self, dataset, config: Config, image_size: int, rank: int = 0):
        info = dataset.info
        self.dataset = dataset
        self.seed, self.rank = config.train.seed, rank
        self.sizes = resolutions_of(config, image_size)
        self.transform = moco_v2_transform(self.sizes[0], info.mean, info.std, info.in_channels,
                                           **augment_kwargs(config))
        self.small_transform = None
        if config.method.multicrop:
            self.small_transform = moco_v2_transform(multicrop_size(config, image_size), info.mean, info.std,
                                                     info.in_channels, **augment_kwargs(config, MULTICROP_SCALE))
        self.with_positive_query = config.method.mixing != "none"
        self.positives: torch.Tensor | None = None
        self.epoch = 0  # set by the pipeline at every epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def _views(self, image) -> list[torch.Tensor]:
        return at_resolutions(self.transform(image), self.sizes)

    def __getitem__(self, i: int) -> dict:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((epoch_seed(self.seed, self.epoch, self.rank) * 1_000_003 + int(i)) % 2**63)
            return self._item(i)

    def _item(self, i: int) -> dict:
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


class _WorkerPipeline:
    """What the DataLoader-based paths share: a DistributedSampler (disjoint shards, drop_last),
    an epoch-seeded DataLoader over a per-sample views dataset, and the per-epoch device generator."""

    def __init__(self, views: Dataset, config: Config, device: torch.device, rank: int, world_size: int):
        self.views = views
        self.device = device
        self.seed = config.train.seed
        self.rank = rank
        self.batch_size = per_process_batch(config, world_size)  # train.batch_size is global
        self.num_workers = config.data.num_workers
        self.sampler = DistributedSampler(views, num_replicas=world_size, rank=rank,
                                          shuffle=True, seed=config.train.seed, drop_last=True)
        self.skip = 0  # batches of the epoch to leave out (resuming mid-epoch), read by _loader

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def _loader(self, epoch: int, positives: torch.Tensor | None) -> tuple[DataLoader, torch.Generator]:
        self.sampler.set_epoch(epoch)
        self.views.epoch = epoch
        self.views.positives = None if positives is None else positives.cpu()
        # Every sample's views are seeded by its index, so leaving out the first batches' indices
        # resumes mid-epoch exactly (and decodes nothing twice).
        sampler = list(self.sampler)[self.skip * self.batch_size:] if self.skip else self.sampler
        loader = DataLoader(
            self.views, batch_size=self.batch_size, sampler=sampler, drop_last=True,
            num_workers=self.num_workers, pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(epoch_seed(self.seed, epoch, self.rank)),
            persistent_workers=False, prefetch_factor=4 if self.num_workers else None)
        generator = torch.Generator(self.device).manual_seed(epoch_seed(self.seed, epoch, self.rank + 1))
        return loader, generator


class LoaderPipeline(_WorkerPipeline):
    def __init__(self, dataset, config: Config, image_size: int, device: torch.device,
                 rank: int = 0, world_size: int = 1):
        super().__init__(_ViewsDataset(dataset, config, image_size, rank), config, device, rank, world_size)

    def epoch(self, epoch: int, positives: torch.Tensor | None = None, resume: dict | None = None) -> Iterator[dict]:
        self.skip = int(resume["step"]) if resume else 0
        loader, generator = self._loader(epoch, positives)  # the views come from the workers: the
        first = restore_generators(resume, None, generator)  # generator serves the step alone
        for step, batch in enumerate(loader, start=first):
            batch = {key: _to_device(value, self.device) for key, value in batch.items()}
            for key in ("positive_index", "positive_key", "positive_query", "small_crops"):
                batch.setdefault(key, None)
            batch["generator"] = generator
            batch["resume"] = resume_point(step + 1, None)
            yield batch


def _to_device(value, device: torch.device):
    if isinstance(value, list):
        return [v.to(device, non_blocking=True) for v in value]
    return value.to(device, non_blocking=True)


# ------------------------------------------------------------------ data.augment=device


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


class _CroppedViewsDataset(Dataset):
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


class DevicePipeline(_WorkerPipeline):
    """Workers decode and crop (uint8), the device does the photometric part on whole batches."""

    def __init__(self, dataset, config: Config, image_size: int, device: torch.device,
                 rank: int = 0, world_size: int = 1):
        info = dataset.info
        super().__init__(_CroppedViewsDataset(dataset, config, image_size), config, device, rank, world_size)
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
        self.skip = int(resume["step"]) if resume else 0
        loader, generator = self._loader(epoch, positives)
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


def resolve_augment(config: Config, dataset, device: torch.device) -> str:
    """The ``data.augment`` mode actually used: ``auto`` = batched for array datasets (held in memory);
    for file datasets ``device`` on CUDA and ``loader`` elsewhere."""
    mode = config.data.augment
    if mode == "auto":
        if hasattr(dataset, "images"):
            mode = "batched"
        else:
            mode = "device" if torch.device(device).type == "cuda" else "loader"
    return mode


def build_pipeline(dataset, config: Config, image_size: int, device: torch.device,
                   rank: int = 0, world_size: int = 1):
    """``data.augment``: see :func:`resolve_augment` and ``DataConfig.augment``."""
    mode = resolve_augment(config, dataset, device)
    if mode == "batched" and not hasattr(dataset, "images"):
        raise ValueError(f"data.augment=batched needs an array dataset; '{config.data.name}' is read from files")
    pipeline_class = {"batched": BatchedPipeline, "loader": LoaderPipeline, "device": DevicePipeline}[mode]
    from clim.data.gpu_decode import GpuDecodePipeline, resolve_decode  # it imports this module

    if resolve_decode(config, dataset, device) == "gpu":  # data.decode: JPEGs decoded on the device
        pipeline_class = GpuDecodePipeline
    pipeline = pipeline_class(dataset, config, image_size, device, rank, world_size)
    if len(pipeline) == 0:
        raise ValueError(f"{len(dataset)} images give no full batch of {config.train.batch_size}"
                         f" ({world_size} process(es)); lower train.batch_size")
    return pipeline

