"""The training data path: for each step, every view the objective needs (see docs/ARCHITECTURE.md).

One :class:`Pipeline`, assembled from parts by :func:`build_pipeline` (``data.augment``, ``data.decode``):

* a step's samples: rows of an array dataset held as one uint8 tensor on the training device (:class:`DeviceArrays`,
  ``batched``: no DataLoader, no worker start-up), or what DataLoader workers (:class:`Workers`) make with the
  per-sample builder :class:`~clim.data.views.SampleViews` and one of its parts (``loader``, ``device``, ``gpu``);
* their views: augmented as whole batches on the device (:class:`DeviceViews`; for the workers' crops, the
  photometric part only), or already made by the loader's workers.

Every view is drawn, in the order :class:`~clim.data.views.StepViews` gives, from generators seeded per epoch, so
that a run resumed at an epoch boundary or inside an epoch draws exactly the same crops, positives and CutMix boxes
as an uninterrupted one. :class:`LookAhead` makes batches ahead of the step."""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import torch
from torch.utils.data import DataLoader, DistributedSampler

from clim.data.batch_augment import MoCoV2BatchAugment
from clim.data.jpeg import EncodedViews, cuda_decode_problem
from clim.data.views import (CroppedViews, SampleViews, StepViews, TransformedViews, ViewGroup, at_resolutions,
                             draw_positives, epoch_seed)
from clim.specs import LoaderSpec, ViewSpec

__all__ = ["LookAhead", "Pipeline", "build_pipeline", "prefetched", "resolve_augment", "resolve_decode"]

KEYS = ("index", "label", "generator", "query", "key", "positive_index", "positive_query", "positive_key",
        "small_crops", "resume")


def resolve_augment(mode: str, dataset, device: torch.device) -> str:
    """The ``data.augment`` mode actually used: ``auto`` = batched for array datasets (held in memory);
    for file datasets ``device`` on CUDA and ``loader`` elsewhere."""
    if mode != "auto":
        return mode
    if hasattr(dataset, "images"):
        return "batched"
    return "device" if torch.device(device).type == "cuda" else "loader"


def resolve_decode(loader: LoaderSpec, dataset, device: torch.device | str) -> str:
    """``data.decode`` as used: ``gpu`` (:class:`~clim.data.jpeg.EncodedViews`) or ``cpu``. ``auto`` is gpu when
    the pipeline is the device path (``data.augment`` device, or auto on CUDA) of an image folder on a CUDA device
    where torchvision can decode; ``gpu`` demands all of that."""
    device = torch.device(device)
    if loader.decode == "cpu":
        return "cpu"
    augment = resolve_augment(loader.augment, dataset, device)
    needs = [need for need, missing in (
        (f"data.augment=device (it is {loader.augment} -> {augment})", augment != "device"),
        (f"a dataset read from image files ('{loader.dataset}' is not)",
         not callable(getattr(dataset, "path", None)) or hasattr(dataset, "images")),
        (f"a CUDA device (training runs on {device})", device.type != "cuda")) if missing]
    if not needs and (problem := cuda_decode_problem(device)):
        needs.append(f"torchvision decoding on {device} ({problem})")
    if not needs:
        return "gpu"
    if loader.decode == "gpu":
        raise ValueError("data.decode=gpu needs " + " and ".join(needs) + "; use data.decode=auto or cpu")
    return "cpu"


def build_pipeline(dataset, views: ViewSpec, loader: LoaderSpec, device: torch.device, rank: int = 0,
                   augment: str | None = None, decode: str | None = None, background: bool = True) -> Pipeline:
    """The pipeline of ``data.augment`` and ``data.decode`` (or of ``augment`` / ``decode``) for this process (``rank``
    of ``loader.world_size``); ``background=False`` decodes JPEGs in the caller's thread (same batches, no overlap)."""
    augment = augment or resolve_augment(loader.augment, dataset, device)
    if augment == "batched" and not hasattr(dataset, "images"):
        raise ValueError(f"data.augment=batched needs an array dataset; '{loader.dataset}' is read from files")
    decode = decode or resolve_decode(loader, dataset, device)  # refuses data.decode=gpu where it cannot be
    decode = "gpu" if augment == "device" and decode == "gpu" else "cpu"
    if augment == "batched":
        source, step_views = DeviceArrays(dataset, loader, device, rank), StepViews(views)
    else:
        part = TransformedViews if augment == "loader" else EncodedViews if decode == "gpu" else CroppedViews
        samples = SampleViews(dataset, views, loader.seed, part, rank)
        source, step_views = Workers(samples, loader, device, rank), samples.views
    on_device = None if augment == "loader" else DeviceViews(step_views, dataset.info, device, augment != "batched")
    pipeline = Pipeline(source, on_device, augment, decode, background=decode == "gpu" and background)
    if decode == "gpu" and rank == 0:
        print(f"data.decode: JPEGs decoded on {torch.device(device)} "
              f"({'nvJPEG, batched' if torch.device(device).type == 'cuda' else 'torchvision'}); "
              f"{loader.num_workers} DataLoader workers only read files", file=sys.stderr, flush=True)
    if len(pipeline) == 0:
        raise ValueError(f"{len(dataset)} images give no full batch of {loader.batch_size}"
                         f" ({loader.world_size} process(es)); lower train.batch_size")
    return pipeline


class Pipeline:
    """``epoch(epoch, positives=None, resume=None)`` yields the per-step dict (docs/ARCHITECTURE.md):
    ``source`` gives each step's samples, ``on_device`` makes their views (None: the workers made them).
    ``mode``, ``decode``: the ``data.augment``, ``data.decode`` it runs. ``background``: the batches are made
    ahead in a thread (JPEG decoding waits on the host), which :func:`prefetched` then leaves as they are."""

    def __init__(self, source, on_device: DeviceViews | None, mode: str, decode: str = "cpu", background: bool = False):
        self.source, self.on_device, self.device = source, on_device, source.device
        self.mode, self.decode, self.background = mode, decode, background

    def __len__(self) -> int:
        return len(self.source)

    def epoch(self, epoch: int, positives: torch.Tensor | None = None, resume: dict | None = None) -> Iterator[dict]:
        first = int(resume["step"]) if resume else 0
        samples = self.source.open(epoch, positives, first)  # DataLoader workers start here, in this thread
        batches = self._batches(samples, epoch, positives, resume, first)
        return LookAhead(batches, self.device, background=True) if self.background else batches

    def _batches(self, samples: Iterable[dict], epoch: int, positives: torch.Tensor | None, resume: dict | None,
                 first: int) -> Iterator[dict]:
        """The views generator draws every view made on the device; the step generator,
        ``batch["generator"]``, serves the step's own draws (CutMix boxes, λ), so that batches made ahead
        of the step draw the same numbers (the loader's views come from the workers: the epoch's generator
        serves the step alone). ``batch["resume"]``: the next step and the views generator's state, which
        with the step generator's (read at checkpoint time) resume the epoch exactly."""
        seed, rank = self.source.seed, self.source.rank
        generator = torch.Generator(self.device).manual_seed(epoch_seed(seed, epoch, rank + 1))
        views_generator, step_generator = None, generator
        if self.on_device is not None:
            views_generator = generator
            step_generator = torch.Generator(self.device).manual_seed(epoch_seed(seed + 1, epoch, rank) + 7)
        if resume:
            if views_generator is not None and resume.get("views") is not None:
                views_generator.set_state(resume["views"])
            step_generator.set_state(resume["step_generator"])
        for step, sample in enumerate(samples, start=first):
            if self.on_device is None:
                batch = {**dict.fromkeys(KEYS), **sample}
            else:
                batch = self.on_device(sample, self.source, positives, generator)
            batch["generator"] = step_generator
            batch["resume"] = {"step": step + 1,
                               "views": None if views_generator is None else views_generator.get_state()}
            yield batch


class DeviceArrays:
    """``data.augment=batched``: the dataset as one uint8 tensor on the training device, a step's samples its rows."""

    def __init__(self, dataset, loader: LoaderSpec, device: torch.device, rank: int):
        self.images, self.labels = dataset.images.to(device), dataset.labels.to(device)
        self.seed, self.device, self.rank, self.world_size = loader.seed, device, rank, loader.world_size
        self.batch_size = loader.per_process

    def __len__(self) -> int:
        return len(self.images) // (self.batch_size * self.world_size)

    def open(self, epoch: int, positives: torch.Tensor | None, skip: int) -> Iterator[dict]:
        generator = torch.Generator(self.device).manual_seed(epoch_seed(self.seed, epoch, 0))
        order = torch.randperm(len(self.images), generator=generator, device=self.device)
        global_batch = self.batch_size * self.world_size
        for step in range(skip, len(self)):
            # rank r takes every world_size-th image of the global batch, as DistributedSampler does:
            # the images of one process are then the images of one BN group of a 1-process run
            index = order[step * global_batch: (step + 1) * global_batch][self.rank::self.world_size]
            yield {"index": index, "label": self.labels[index]}

    def images_of(self, group: ViewGroup, sample: dict, index: torch.Tensor) -> torch.Tensor:
        """The uint8 input of ``group``'s pass: its image once per view."""
        images = self.images[index]
        return images.repeat(len(group.names), 1, 1, 1) if len(group.names) > 1 else images


class Workers:
    """DataLoader workers running ``samples`` (the per-sample builder): a DistributedSampler (disjoint
    shards, drop_last), an epoch-seeded DataLoader, the batches placed on the device by its part."""

    def __init__(self, samples: SampleViews, loader: LoaderSpec, device: torch.device, rank: int):
        self.samples, self.part = samples, samples.part
        self.seed, self.device, self.rank = loader.seed, device, rank
        self.batch_size, self.num_workers = loader.per_process, loader.num_workers
        self.sampler = DistributedSampler(samples, num_replicas=loader.world_size, rank=rank,
                                          shuffle=True, seed=loader.seed, drop_last=True)

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def open(self, epoch: int, positives: torch.Tensor | None, skip: int) -> Iterator[dict]:
        self.sampler.set_epoch(epoch)
        self.samples.epoch = epoch
        self.samples.positives = None if positives is None else positives.cpu()
        # Every sample's views are seeded by its index, so leaving out the first batches' indices
        # resumes mid-epoch exactly (and decodes nothing twice).
        sampler = list(self.sampler)[skip * self.batch_size:] if skip else self.sampler
        loader = DataLoader(
            self.samples, batch_size=self.batch_size, sampler=sampler, drop_last=True, collate_fn=self.part.collate,
            num_workers=self.num_workers, pin_memory=self.part.pin and self.device.type == "cuda",
            generator=torch.Generator().manual_seed(epoch_seed(self.seed, epoch, self.rank)),
            persistent_workers=False, prefetch_factor=4 if self.num_workers else None)
        return self.part.on_device(iter(loader), self.device, epoch)

    @staticmethod
    def images_of(group: ViewGroup, sample: dict, index: torch.Tensor) -> torch.Tensor:
        """The uint8 input of ``group``'s pass: the workers' crops of its views, one after the other."""
        if group.crop is not None:
            return sample["small_crops"][:, group.crop]
        if len(group.names) > 1:
            return torch.cat([sample[name] for name in group.names])
        return sample[group.names[0]]


class DeviceViews:
    """Views augmented on the device, a whole batch per pass (:class:`~clim.data.batch_augment.MoCoV2BatchAugment`):
    crop + photometric part of uint8 images, or (``cropped``) the photometric part of the workers' crops."""

    def __init__(self, views: StepViews, info, device: torch.device, cropped: bool):
        self.views, self.device, self.cropped = views, device, cropped
        self.augment, self.small_augment = views.augmenters(
            lambda *args, **kwargs: MoCoV2BatchAugment(*args, **kwargs).to(device), info.mean, info.std)

    def __call__(self, sample: dict, source, positives: torch.Tensor | None, generator: torch.Generator) -> dict:
        """The step's dict: ``sample``'s index and label, every view drawn from ``generator``, in order. The
        positive comes from the workers, else it is drawn here (METHOD §3), after the anchor's views."""
        batch = dict.fromkeys(KEYS)
        batch.update(index=sample["index"], label=sample["label"], positive_index=sample.get("positive_index"))
        batch["small_crops"] = [] if self.views.small_size is not None else None
        for group in self.views.groups(positives is not None):
            if group.source == 1 and batch["positive_index"] is None:
                batch["positive_index"] = draw_positives(positives, batch["index"], generator).to(self.device)
            images = source.images_of(group, sample, batch["positive_index" if group.source else "index"])
            augment = self.augment if group.crop is None else self.small_augment
            made = (augment.augment_cropped if self.cropped else augment)(images, generator=generator)
            if group.crop is not None:
                batch["small_crops"].append(made)
                continue
            for name, view in zip(group.names, made.chunk(len(group.names)) if len(group.names) > 1 else [made]):
                batch[name] = at_resolutions(view, self.views.sizes)
        return batch


class LookAhead:
    """The items of ``items``, each made ahead of its use: one ahead in the caller's thread, or ``depth`` ahead in a
    thread with ``background`` (for work that waits on the host: JPEG decoding). On CUDA they are made on a side stream,
    so their kernels (augmentation, host-to-device copies) run concurrently with the step's; the caller's stream waits
    for each through a stream dependency (no host sync). The items are the same as without it: every pipeline draws from
    its own generators, in batch order, and the step from its own (``batch["generator"]``)."""

    def __init__(self, items: Iterable[dict], device: torch.device | str, background: bool = False, depth: int = 2):
        self._items = _ahead(iter(items), torch.device(device), background, depth if background else 1)

    def __iter__(self) -> LookAhead:
        return self

    def __next__(self) -> dict:
        return next(self._items)

    def close(self) -> None:
        self._items.close()


def prefetched(batches: Iterable[dict], device: torch.device | str) -> Iterator[dict]:
    """``batches``, each made one step ahead (:class:`LookAhead`); a look-ahead already as it is."""
    return batches if isinstance(batches, LookAhead) else LookAhead(batches, device)


def _ahead(items: Iterator[dict], device: torch.device, background: bool, depth: int) -> Iterator[dict]:
    cuda = device.type == "cuda"
    index = (device.index if device.index is not None else torch.cuda.current_device()) if cuda else None
    stream, caller = (torch.cuda.Stream(index), torch.cuda.current_stream(index)) if cuda else (None, None)

    def make() -> tuple:
        """The next item (None after the last), made on the side stream, and an event recorded after it."""
        if not cuda:
            return next(items, None), None
        if background:
            torch.cuda.set_device(index)
        else:  # what the caller's stream wrote (e.g. a refreshed positives table) is visible
            stream.wait_stream(caller)
        with torch.cuda.stream(stream):
            item, event = next(items, None), torch.cuda.Event()
            event.record(stream)
        return item, event

    if background and cuda:
        stream.wait_stream(caller)  # once: the thread runs ahead of the caller's stream from here on
    pool = ThreadPoolExecutor(1, thread_name_prefix="clim-lookahead") if background else None
    asked = deque([pool.submit(make) if pool else make() for _ in range(depth)])
    try:
        while True:
            item, event = asked.popleft().result() if pool else asked.popleft()
            if item is None:
                return
            if cuda:  # the caller's stream waits for the item, whose memory outlives its use there
                caller.wait_event(event)
                for tensor in _tensors(item):
                    tensor.record_stream(caller)
            asked.append(pool.submit(make) if pool else make())
            yield item
    finally:
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)
        getattr(items, "close", lambda: None)()


def _tensors(value) -> Iterator[torch.Tensor]:
    """The CUDA tensors in ``value`` (nested lists, tuples, dicts)."""
    if isinstance(value, torch.Tensor) and value.is_cuda:
        yield value
    elif isinstance(value, (list, tuple, dict)):
        for item in value.values() if isinstance(value, dict) else value:
            yield from _tensors(item)
