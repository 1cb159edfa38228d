"""``data.augment=loader``: per-sample torchvision transforms in DataLoader workers (image folders on
CPU, any dataset on request), and the DataLoader machinery the device path shares with it."""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from clim.config import Config, per_process_batch
from clim.data.transforms import moco_v2_transform
from clim.data.views import (MULTICROP_SCALE, MULTICROP_VIEWS, at_resolutions, augment_kwargs, epoch_seed, first_step,
                             multicrop_size, restore_generators, resolutions_of, resume_point)


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


class WorkerPipeline:
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

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def _loader(self, epoch: int, positives: torch.Tensor | None,
                skip: int = 0) -> tuple[DataLoader, torch.Generator]:
        """The epoch's DataLoader, leaving out its first ``skip`` batches (resuming mid-epoch), and
        the per-epoch device generator."""
        self.sampler.set_epoch(epoch)
        self.views.epoch = epoch
        self.views.positives = None if positives is None else positives.cpu()
        # Every sample's views are seeded by its index, so leaving out the first batches' indices
        # resumes mid-epoch exactly (and decodes nothing twice).
        sampler = list(self.sampler)[skip * self.batch_size:] if skip else self.sampler
        loader = DataLoader(
            self.views, batch_size=self.batch_size, sampler=sampler, drop_last=True,
            num_workers=self.num_workers, pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(epoch_seed(self.seed, epoch, self.rank)),
            persistent_workers=False, prefetch_factor=4 if self.num_workers else None)
        generator = torch.Generator(self.device).manual_seed(epoch_seed(self.seed, epoch, self.rank + 1))
        return loader, generator


class LoaderPipeline(WorkerPipeline):
    def __init__(self, dataset, config: Config, image_size: int, device: torch.device,
                 rank: int = 0, world_size: int = 1):
        super().__init__(_ViewsDataset(dataset, config, image_size, rank), config, device, rank, world_size)

    def epoch(self, epoch: int, positives: torch.Tensor | None = None, resume: dict | None = None) -> Iterator[dict]:
        loader, generator = self._loader(epoch, positives, first_step(resume))  # the views come from the
        first = restore_generators(resume, None, generator)  # workers: the generator serves the step alone
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
