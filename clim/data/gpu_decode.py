"""``data.decode=gpu``: JPEG decoding on the training device, so that CPU decoding does not cap an epoch.

With ``data.augment=device`` (:class:`~clim.data.device_pipeline.DevicePipeline`) the DataLoader
workers decode every JPEG with PIL and crop it; on ImageNet-sized files that is about 250 images/s
per core. Here the work is split differently (:class:`GpuDecodePipeline`):

* **workers** (:class:`EncodedViewsDataset`) only read each file's bytes and parse its JPEG header
  (:func:`~clim.data.jpeg.jpeg_size`: format, size, coding), then draw every view's crop box and
  flip from the same per-sample generator, in the same order, as
  :class:`~clim.data.device_pipeline.CroppedViewsDataset` (``np.random.default_rng((seed, epoch,
  index))`` + :func:`~clim.data.device_pipeline.crop_box`), so the views are the CPU path's,
  whatever the number of workers;
* **the training process** (:func:`~clim.data.jpeg.decode_and_crop`, parameterised by the device)
  decodes the whole batch in one ``torchvision.io.decode_jpeg(list, device="cuda")`` call (batched
  nvJPEG, the hardware decoder on A100 / H100 / H200), then crops + resizes (antialiased bilinear,
  as PIL) + flips every view to a uint8 ``[B, C, S, S]`` batch; DevicePipeline's own code then
  applies the batched photometric augmentation and assembles the per-step dict, which
  is therefore identical in format. Decoding and cropping run in a background thread on a side CUDA
  stream, one batch ahead, so they overlap the step (the photometric part, which draws from the
  pipeline's generator, stays in the caller's thread and order: runs are reproducible).

Files nvJPEG cannot read quickly or at all — PNG and other formats, progressive / CMYK / 12-bit /
arithmetic-coded JPEGs, JPEGs without an end marker — are recognised from their header and
decoded with PIL in the worker instead (a full uint8 image is sent; the crops are still made on the
device); a file whose header passes but whose decode fails on the device is decoded with PIL in the
training process. Every such file is counted, and each epoch ends with ONE warning giving the count.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext

import numpy as np
import torch
from torchvision.transforms import functional as TF

from clim.config import Config
from clim.data.device_pipeline import CroppedViewsDataset, DevicePipeline, crop_box
from clim.data.jpeg import crop_views, cuda_decode_problem, decode_and_crop, decode_jpegs, jpeg_size
from clim.data.pipeline import resolve_augment
from clim.data.views import MULTICROP_SCALE, MULTICROP_VIEWS

__all__ = ["EncodedViewsDataset", "GpuDecodePipeline", "collate_encoded", "crop_views", "cuda_decode_problem",
           "decode_and_crop", "decode_jpegs", "in_background", "jpeg_size", "resolve_decode"]


# ------------------------------------------------------------------------------------------ workers


class EncodedViewsDataset(CroppedViewsDataset):
    """Worker side of :class:`GpuDecodePipeline`: file bytes + every view's crop box and flip.

    ``item["images"]``: ``[(payload, reason)]`` for the anchor and (with a positives table) its
    positive; ``payload`` is the file's bytes (uint8 ``[n]``) when ``reason`` is None, else the image
    decoded here with PIL (uint8 ``[C, H, W]``) and ``reason`` says why. ``item["views"]``:
    ``{name: (image number, (x0, y0, w, h), flip)}``. The draws are those of
    :class:`~clim.data.device_pipeline.CroppedViewsDataset` for the same sample, in the same order.
    """

    def _draw(self, rng: np.random.Generator, height: int, width: int, scale) -> tuple[tuple[int, ...], bool]:
        box = crop_box(rng, height, width, scale)
        return box, bool(rng.random() < self.flip_p)

    def read(self, i: int) -> tuple[torch.Tensor, int, int, str | None]:
        """``(payload, height, width, reason)`` of sample ``i`` (see the class docstring)."""
        path = self.dataset.path(i)
        try:
            with open(path, "rb") as handle:
                data = bytearray(os.fstat(handle.fileno()).st_size)
                del data[handle.readinto(data):]
            verdict = jpeg_size(data)
        except OSError as error:
            verdict = f"unreadable file ({type(error).__name__})"
        if not isinstance(verdict, str):
            return torch.frombuffer(data, dtype=torch.uint8), verdict[0], verdict[1], None
        image = self.dataset[i][0]  # PIL, with the dataset's next-decodable-image fallback
        return TF.pil_to_tensor(image), image.height, image.width, verdict

    def __getitem__(self, i: int) -> dict:
        index, label = int(i), int(self.dataset.labels[i])
        payload, height, width, reason = self.read(index)
        rng = np.random.default_rng((self.seed, self.epoch, index))
        views = {name: (0, *self._draw(rng, height, width, self.scale)) for name in ("query", "key")}
        item = {"index": index, "label": label, "images": [(payload, reason)], "views": views}
        if self.positives is not None:
            row = self.positives[index]
            positive = int(row[int(rng.integers(len(row)))])
            payload, positive_height, positive_width, reason = self.read(positive)
            item["images"].append((payload, reason))
            item["positive_index"] = positive
            views["positive_key"] = (1, *self._draw(rng, positive_height, positive_width, self.scale))
            if self.with_positive_query:
                views["positive_query"] = (1, *self._draw(rng, positive_height, positive_width, self.scale))
        if self.small_size is not None:
            for v in range(MULTICROP_VIEWS):
                views[f"small_crops.{v}"] = (0, *self._draw(rng, height, width, MULTICROP_SCALE))
        return item


def collate_encoded(items: list[dict]) -> dict:
    """A batch of :class:`EncodedViewsDataset` items. Image ``k = slot * B + b`` is sample b's anchor
    (slot 0) or positive (slot 1). The JPEG bytes travel as ONE flat tensor (one shared-memory
    segment per batch) with their lengths; PIL-decoded images as a list."""
    size = len(items)
    jpeg, jpeg_ids, decoded, decoded_ids, fallback = [], [], [], [], []
    for slot in range(len(items[0]["images"])):
        for b, item in enumerate(items):
            payload, reason = item["images"][slot]
            if reason is None:
                jpeg.append(payload)
                jpeg_ids.append(slot * size + b)
            else:
                decoded.append(payload)
                decoded_ids.append(slot * size + b)
                fallback.append(reason)
    views = {}
    for name in items[0]["views"]:
        slots, boxes, flips = zip(*(item["views"][name] for item in items))
        views[name] = {"image": torch.tensor(slots) * size + torch.arange(size),
                       "box": torch.tensor(boxes, dtype=torch.long), "flip": torch.tensor(flips)}
    batch = {"index": torch.tensor([item["index"] for item in items]),
             "label": torch.tensor([item["label"] for item in items]),
             "jpeg": torch.cat(jpeg) if jpeg else torch.empty(0, dtype=torch.uint8),
             "jpeg_sizes": torch.tensor([len(p) for p in jpeg], dtype=torch.long),
             "jpeg_ids": torch.tensor(jpeg_ids, dtype=torch.long), "decoded": decoded,
             "decoded_ids": torch.tensor(decoded_ids, dtype=torch.long), "fallback": fallback, "views": views}
    if "positive_index" in items[0]:
        batch["positive_index"] = torch.tensor([item["positive_index"] for item in items])
    return batch


# ---------------------------------------------------------------------------------------- pipeline


def _tensors(value) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _put(out: queue.Queue, item, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            out.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def in_background(make: Callable[[], Iterable[dict]], device: torch.device, depth: int = 2) -> Iterator[dict]:
    """Yield the items of ``make()``, produced ``depth`` ahead in a thread (on a side CUDA stream on
    CUDA; the caller's current stream waits for each item before using it)."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    index = (device.index if device.index is not None else torch.cuda.current_device()) if cuda else None
    stream = torch.cuda.Stream(index) if cuda else None
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            if cuda:
                torch.cuda.set_device(index)
            with torch.cuda.stream(stream) if cuda else nullcontext():
                for item in make():
                    event = None
                    if cuda:
                        event = torch.cuda.Event()
                        event.record(stream)
                    if not _put(items, ("item", (item, event)), stop):
                        return
            _put(items, ("done", None), stop)
        except BaseException as error:  # re-raised in the consumer
            _put(items, ("error", error), stop)

    thread = threading.Thread(target=produce, name="clim-gpu-decode", daemon=True)
    thread.start()
    try:
        while True:
            kind, payload = items.get()
            if kind == "done":
                return
            if kind == "error":
                raise payload
            item, event = payload
            if event is not None:
                current = torch.cuda.current_stream(index)
                current.wait_event(event)
                for tensor in _tensors(item):
                    if tensor.is_cuda:
                        tensor.record_stream(current)  # made on the side stream, freed after the consumer's use
            yield item
    finally:
        stop.set()
        thread.join()


class GpuDecodePipeline(DevicePipeline):
    """:class:`~clim.data.device_pipeline.DevicePipeline` whose uint8 views come from :func:`decode_and_crop`
    (workers only read bytes) instead of decoding + cropping workers; everything after that (the
    batched photometric part, the per-step dict) is DevicePipeline's own code.

    ``decode_stats``: the last epoch's ``{"images": n, "fallback": Counter(reason)}``.
    ``background=False`` decodes in the caller's thread (same batches, no overlap).
    """

    def __init__(self, dataset, config: Config, image_size: int, device: torch.device,
                 rank: int = 0, world_size: int = 1, background: bool = True):
        super().__init__(dataset, config, image_size, device, rank, world_size)
        self.views = EncodedViewsDataset(dataset, config, image_size)  # the sampler only needs its length
        self.dataset = dataset
        self.background = background
        self.decode_stats: dict = {"images": 0, "fallback": Counter()}
        if rank == 0:
            print(f"data.decode: JPEGs decoded on {torch.device(device)} "
                  f"({'nvJPEG, batched' if torch.device(device).type == 'cuda' else 'torchvision'}); "
                  f"{config.data.num_workers} DataLoader workers only read files", file=sys.stderr, flush=True)

    def _loader(self, epoch: int, positives: torch.Tensor | None, skip: int = 0):
        loader, generator = super()._loader(epoch, positives, skip)
        loader.collate_fn = collate_encoded
        loader.pin_memory = False  # file bytes are read by the decoder from ordinary memory
        return self._decoded(loader, epoch), generator

    def _fallback_image(self, batch: dict) -> Callable[[int], torch.Tensor]:
        size = len(batch["index"])

        def load(k: int) -> torch.Tensor:
            index = (batch["index"] if k < size else batch["positive_index"])[k % size]
            return TF.pil_to_tensor(self.dataset[int(index)][0])
        return load

    def _decode(self, batch: dict, stats: dict) -> dict:
        if torch.device(self.device).type == "cuda":
            # torchvision's CUDA decode_jpeg allocates its outputs on this thread's current stream, then
            # writes them from nvJPEG's own stream without waiting on this one (pytorch/vision#9606).
            # The caching allocator reuses a block as soon as it is freed on its stream, so the decoder
            # can be handed memory the previous batch's queued crop kernels still read: draining this
            # (side) stream first orders the allocation after them. A host wait in the decode thread,
            # never in the training loop.
            torch.cuda.current_stream(self.device).synchronize()
        cropped, reasons = decode_and_crop(batch, self.device, self.sizes[0], self.views.small_size,
                                           self._fallback_image(batch))
        stats["images"] += len(batch["jpeg_ids"]) + len(batch["decoded_ids"])
        stats["fallback"].update(reasons)
        return cropped

    def _decoded(self, loader, epoch: int) -> Iterator[dict]:
        stats = {"images": 0, "fallback": Counter()}
        self.decode_stats = stats
        try:
            batches = iter(loader)  # workers forked here, from the caller's thread
            if self.background:
                yield from in_background(lambda: (self._decode(batch, stats) for batch in batches), self.device)
            else:
                for batch in batches:
                    yield self._decode(batch, stats)
        finally:
            fallback = sum(stats["fallback"].values())
            if fallback:
                details = ", ".join(f"{n} {reason}" for reason, n in stats["fallback"].most_common())
                warnings.warn(f"data.decode=gpu, epoch {epoch}: {fallback} of {stats['images']} images were "
                              f"decoded with PIL on the CPU instead of on {self.device} ({details})", stacklevel=2)


def _is_file_dataset(dataset) -> bool:
    return callable(getattr(dataset, "path", None)) and not hasattr(dataset, "images")


def resolve_decode(config: Config, dataset, device: torch.device | str) -> str:
    """``data.decode`` as used: ``gpu`` (:class:`GpuDecodePipeline`) or ``cpu`` (the other pipelines).

    ``auto`` is gpu when the pipeline is the device path (``data.augment`` device, or auto on CUDA)
    of an image folder on a CUDA device where torchvision can decode; ``gpu`` demands all of that.
    """
    device = torch.device(device)
    mode = config.data.decode
    if mode == "cpu":
        return "cpu"
    augment = resolve_augment(config, dataset, device)
    needs = []
    if augment != "device":
        needs.append(f"data.augment=device (it is {config.data.augment} -> {augment})")
    if not _is_file_dataset(dataset):
        needs.append(f"a dataset read from image files ('{config.data.name}' is not)")
    if device.type != "cuda":
        needs.append(f"a CUDA device (training runs on {device})")
    if not needs:
        problem = cuda_decode_problem(device)
        if problem:
            needs.append(f"torchvision decoding on {device} ({problem})")
    if not needs:
        return "gpu"
    if mode == "gpu":
        raise ValueError("data.decode=gpu needs " + " and ".join(needs) + "; use data.decode=auto or cpu")
    return "cpu"
