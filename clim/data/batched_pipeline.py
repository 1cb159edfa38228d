"""``data.augment=batched``: an array dataset held as one uint8 tensor on the training device, whole
batches augmented there (:mod:`clim.data.batch_augment`); no DataLoader, no worker start-up."""

from __future__ import annotations

from typing import Iterator

import torch

from clim.config import Config, per_process_batch
from clim.data.batch_augment import MoCoV2BatchAugment
from clim.data.views import (MULTICROP_SCALE, MULTICROP_VIEWS, at_resolutions, augment_kwargs, draw_positives,
                             epoch_seed, make_step_generator, multicrop_size, restore_generators, resolutions_of,
                             resume_point)


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
