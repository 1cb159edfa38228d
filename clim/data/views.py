"""What a training step needs, described once (:class:`StepViews`), and the one per-sample builder
(:class:`SampleViews`) of the DataLoader paths (METHOD §1-4).

A step needs, in the order every random draw follows: the anchor's query and key views, then (with a
positives table) one positive drawn uniformly from the anchor's row and its key view (and query view
when mixing), then the multi-crop views. Each full-size view is cropped and augmented once at the
largest resolution and resized (antialiased) to the others (:func:`at_resolutions`, METHOD §4)."""

from __future__ import annotations

import math
import operator
from contextlib import contextmanager, nullcontext
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, default_collate
from torchvision.transforms import functional as TF

from clim.config import MULTICROP_SCALE
from clim.data.batch_augment import fallback_crop_size
from clim.data.transforms import moco_v2_transform
from clim.specs import ViewSpec

MULTICROP_VIEWS = 2


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch) * 1_009 + rank


def at_resolutions(view: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    """The same crop at every resolution; ``view`` is at ``sizes[0]`` (METHOD §4)."""
    batched = view if view.dim() == 4 else view.unsqueeze(0)
    out = [batched] + [F.interpolate(batched, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
                       for s in sizes[1:]]
    return out if view.dim() == 4 else [v.squeeze(0) for v in out]


def draw_positives(table: torch.Tensor, index: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One positive per anchor, uniformly among its table entries (METHOD §3): long, on the table's
    device; drawn on the generator's device (the table's without one, from torch's global RNG)."""
    rows = table[index.to(table.device)]
    on = generator.device if generator is not None else table.device
    pick = torch.randint(rows.shape[1], (rows.shape[0],), generator=generator, device=on)
    return rows[torch.arange(rows.shape[0], device=rows.device), pick.to(rows.device)].long()


class ViewGroup(NamedTuple):
    """Views of one image made in one pass: their batch keys, the image (0: the anchor, 1: its positive)
    and, for a multi-crop view, its number (its batch key holds a list)."""
    names: tuple[str, ...]
    source: int = 0
    crop: int | None = None


class StepViews:
    """Every view a step needs (its :class:`~clim.specs.ViewSpec`): full-size views at ``sizes`` (largest
    first), multi-crop views at ``small_size`` (None: none), a positive query view when mixing."""

    def __init__(self, spec: ViewSpec):
        self.spec, self.sizes, self.small_size = spec, list(spec.sizes), spec.small_size

    def augmenters(self, make, *args) -> tuple:
        """``make(side, *args, **augment_kwargs)`` for the full-size views, and for the multi-crop ones (or None)."""
        full = make(self.sizes[0], *args, **self.spec.augment_kwargs())
        if self.small_size is None:
            return full, None
        return full, make(self.small_size, *args, **self.spec.augment_kwargs(multicrop=True))

    def groups(self, with_positive: bool) -> list[ViewGroup]:
        """The views in the order they are drawn (with a positive: it is drawn before its first view)."""
        groups = [ViewGroup(("query", "key"))]
        if with_positive:
            names = ("positive_key", "positive_query") if self.spec.positive_query else ("positive_key",)
            groups.append(ViewGroup(names, source=1))
        if self.small_size is not None:
            groups += [ViewGroup(("small_crops",), crop=v) for v in range(MULTICROP_VIEWS)]
        return groups

    def draw_crop(self, group: ViewGroup, rng: np.random.Generator, height: int, width: int) -> tuple:
        """A worker view's geometry: its side, its crop box (:func:`crop_box`), then whether it is mirrored."""
        small = group.crop is not None
        size, scale = (self.small_size, MULTICROP_SCALE) if small else (self.sizes[0], self.spec.crop_scale)
        return size, crop_box(rng, height, width, scale), bool(rng.random() < self.spec.flip_p)


def crop_box(rng: np.random.Generator, height: int, width: int, scale: tuple[float, float],
             ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """One RandomResizedCrop box ``(x0, y0, w, h)``: torchvision's algorithm (10 tries, then the
    centre crop clamped to the ratio range), drawn from a numpy generator."""
    area = height * width
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_low, log_high))
        w, h = round(math.sqrt(target_area * aspect)), round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    w, h = fallback_crop_size(height, width, ratio)
    return (width - w) // 2, (height - h) // 2, w, h


class SampleViews(Dataset):
    """The one per-sample builder of the DataLoader paths: sample ``i``'s views (:class:`StepViews`), each made by
    ``part``: :class:`TransformedViews` (``data.augment=loader``), :class:`CroppedViews` (``data.augment=device``, the
    default) or :class:`~clim.data.jpeg.EncodedViews` (``data.decode=gpu``). A part gives ``draws(seed, epoch, rank,
    index)`` (a context: the sample's own generator, so that its views depend on neither the worker nor
    ``data.num_workers``), ``load(dataset, i) -> (image, i, label)``, ``view(image, group, rng)``, ``item(item, made,
    images)``; for the DataLoader ``collate`` and ``pin``, and ``on_device(batches, device, epoch)`` for the training
    process. The pipeline sets ``epoch`` and ``positives`` (a CPU table) at the start of every epoch."""

    def __init__(self, dataset, views: ViewSpec, seed: int, part: type | None = None, rank: int = 0):
        self.dataset, self.views, self.seed, self.rank = dataset, StepViews(views), seed, rank
        self.part = (part or CroppedViews)(dataset, self.views)
        self.epoch, self.positives = 0, None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        with self.part.draws(self.seed, self.epoch, self.rank, i) as rng:
            anchor, _, label = self.part.load(self.dataset, i)
            item, sources, made = {"index": i, "label": int(label)}, [anchor], {}
            for group in self.views.groups(self.positives is not None):
                if group.source == 1 and len(sources) == 1:  # the positive (METHOD §3), before its views
                    row = self.positives[i]
                    item["positive_index"] = positive = int(row[int(rng.integers(len(row)))])
                    sources.append(self.part.load(self.dataset, positive)[0])
                for name in group.names:
                    view = self.part.view(sources[group.source], group, rng)
                    if group.crop is None:
                        made[name] = view
                    else:
                        made.setdefault(name, []).append(view)
            return self.part.item(item, made, sources)


@contextmanager
def torch_draws(seed: int, epoch: int, rank: int, index: int):
    """torch's global generator as the sample's: forked (nothing else is disturbed), seeded from sample and rank."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed((epoch_seed(seed, epoch, rank) * 1_000_003 + index) % 2**63)
        yield SimpleNamespace(integers=lambda n: torch.randint(n, ()).item())


def numpy_draws(seed: int, epoch: int, rank: int, index: int):
    return nullcontext(np.random.default_rng((seed, epoch, index)))


def moved(batches, device: torch.device, epoch: int):
    """Collated worker batches on ``device`` (lists of tensors too), copied without waiting."""
    for batch in batches:
        yield {key: [v.to(device, non_blocking=True) for v in value] if isinstance(value, list)
               else value.to(device, non_blocking=True) for key, value in batch.items()}


class TransformedViews:
    """``data.augment=loader``: every view made whole in the worker by the per-sample torchvision
    transforms (:func:`~clim.data.transforms.moco_v2_transform`, drawing from torch's generator)."""
    draws, load, on_device = staticmethod(torch_draws), staticmethod(operator.getitem), staticmethod(moved)
    collate, pin = staticmethod(default_collate), True

    def __init__(self, dataset, views: StepViews):
        self.sizes, info = views.sizes, dataset.info
        self.transform, self.small_transform = views.augmenters(moco_v2_transform, info.mean, info.std,
                                                                info.in_channels)

    def view(self, image, group: ViewGroup, rng) -> torch.Tensor | list[torch.Tensor]:
        if group.crop is not None:
            return self.small_transform(image)
        return at_resolutions(self.transform(image), self.sizes)

    @staticmethod
    def item(item: dict, made: dict, sources: list) -> dict:
        return {**item, **made}


class CroppedViews:
    """``data.augment=device``: the worker decodes (PIL), crops (RandomResizedCrop, antialiased, at the
    largest resolution) and flips every view to uint8 ``[C, S, S]``; the device does the photometric part."""
    draws, load, on_device = staticmethod(numpy_draws), staticmethod(operator.getitem), staticmethod(moved)
    collate, pin = staticmethod(default_collate), True

    def __init__(self, dataset, views: StepViews):
        self.views = views

    def view(self, image, group: ViewGroup, rng: np.random.Generator) -> torch.Tensor:
        size, (x0, y0, w, h), flip = self.views.draw_crop(group, rng, image.height, image.width)
        view = TF.resized_crop(image, y0, x0, h, w, [size, size],
                               interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
        return TF.pil_to_tensor(TF.hflip(view) if flip else view)

    @staticmethod
    def item(item: dict, made: dict, sources: list) -> dict:
        if "small_crops" in made:  # one [V, C, s, s] tensor: one copy to the device
            made["small_crops"] = torch.stack(made["small_crops"])
        return {**item, **made}
