"""Per-sample transforms for the DataLoader path: MoCo v2 augmentation (METHOD §1) and evaluation.

Every transform starts by bringing its input to the dataset's mode (``L`` or ``RGB``), so a PIL image of any mode or a
uint8 tensor [C, H, W] can be fed in and the output always has ``in_channels`` channels. The batched GPU path lives in
``batch_augment.py``; this one mirrors MoCo v2's reference pipeline on PIL images."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from clim.data.batch_augment import BLUR_REFERENCE_SIZE, blur_kernel_size

__all__ = ["MultiViewTransform", "blur_kernel_size", "ensure_mode", "eval_transform", "eval_transform_for",
           "moco_v2_transform"]

_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_DIRECT_MODES = {"1", "L", "P", "RGB", "F"}
# Transparent pixels become white: the way image viewers and web pages usually show them.
_ALPHA_BACKGROUND = (255, 255, 255, 255)


def _target_mode(in_channels: int) -> str:
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
    return "L" if in_channels == 1 else "RGB"


def ensure_mode(image: Image.Image, in_channels: int) -> Image.Image:
    """Return ``image`` as mode ``L`` (in_channels=1) or ``RGB`` (in_channels=3).

    Handled explicitly because PIL's own ``convert`` gets these wrong for training data: alpha modes (RGBA, LA,
    PA, P with transparency) are composited on white instead of having their alpha dropped (which exposes
    arbitrary colours under transparent pixels); 16/32-bit integer modes (I;16*, I) are scaled from 0..65535 to
    0..255 instead of being clipped at 255. Everything else (1, P, CMYK, YCbCr, F, ...) goes through ``convert``."""
    target = _target_mode(in_channels)
    if image.mode == target:
        return image
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.int64).clip(0, 65535)
        image = Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8))
    elif image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        # PIL has no La -> RGBA route; La -> LA -> RGBA exists.
        rgba = (image.convert("LA") if image.mode == "La" else image).convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, _ALPHA_BACKGROUND), rgba)
    if image.mode == target:
        return image
    # Some modes (LAB) only convert to RGB; going through RGB is exact for everything else too.
    return image.convert(target) if image.mode in _DIRECT_MODES else image.convert("RGB").convert(target)


class _ToMode:
    """First step of every transform: PIL (any mode) or uint8 tensor [C, H, W] -> PIL L / RGB (a class rather
    than a lambda so that transforms pickle into spawned DataLoader workers)."""

    def __init__(self, in_channels: int):
        _target_mode(in_channels)
        self.in_channels = in_channels

    def __call__(self, image):
        if isinstance(image, torch.Tensor):
            image = TF.to_pil_image(image)
        return ensure_mode(image, self.in_channels)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(in_channels={self.in_channels})"


def _normalize(mean: Sequence[float], std: Sequence[float], in_channels: int) -> T.Normalize:
    if len(mean) != in_channels or len(std) != in_channels:
        raise ValueError(f"mean/std need {in_channels} values, got {len(mean)} and {len(std)}")
    return T.Normalize(tuple(mean), tuple(std))


def moco_v2_transform(image_size: int, mean: Sequence[float], std: Sequence[float], in_channels: int,
                      crop_scale: tuple[float, float] = (0.2, 1.0),
                      jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1), jitter_p: float = 0.8,
                      grayscale_p: float = 0.2, blur_p: float = 0.5, blur_sigma: tuple[float, float] = (0.1, 2.0),
                      flip_p: float = 0.5) -> T.Compose:
    """MoCo v2 augmentation (METHOD §1) -> normalised float tensor [in_channels, size, size].

    ``blur_sigma`` is in pixels of a 224-pixel view and is scaled by ``image_size / 224``, with a kernel of
    about 10 % of the image, exactly as the batched paths do (``clim.data.batch_augment``): one config blurs the
    same way whatever ``data.augment`` is. For 1-channel data, saturation / hue jitter and random grayscale have
    nothing to act on and are left out (brightness and contrast still apply)."""
    brightness, contrast, saturation, hue = jitter
    if in_channels == 1:
        saturation, hue = 0.0, 0.0
    sigma = tuple(s * (image_size / BLUR_REFERENCE_SIZE) for s in blur_sigma)  # in pixels of this view
    steps: list[Callable] = [
        _ToMode(in_channels),
        T.RandomResizedCrop(image_size, scale=tuple(crop_scale), ratio=(3 / 4, 4 / 3)),
        T.RandomApply([T.ColorJitter(brightness, contrast, saturation, hue)], p=jitter_p),
    ]
    if in_channels == 3:
        steps.append(T.RandomGrayscale(p=grayscale_p))
    steps += [
        T.RandomApply([T.GaussianBlur(blur_kernel_size(image_size), sigma=sigma)], p=blur_p),
        T.RandomHorizontalFlip(p=flip_p),
        T.ToTensor(),
        _normalize(mean, std, in_channels),
    ]
    return T.Compose(steps)


def eval_transform(image_size: int, mean: Sequence[float], std: Sequence[float], in_channels: int,
                   resize_ratio: float | None = None) -> T.Compose:
    """Deterministic evaluation transform -> normalised float tensor [in_channels, size, size].

    ``resize_ratio=None`` (fixed-size array datasets): resize straight to ``image_size`` (a no-op when the images
    have that size already). A float (ImageNet convention 0.875, for folders of arbitrary-size images): resize the
    short side to ``image_size / resize_ratio``, then centre-crop, so the aspect ratio is kept."""
    steps: list[Callable] = [_ToMode(in_channels)]
    if resize_ratio is None:
        steps.append(T.Resize((image_size, image_size)))
    else:
        if not 0 < resize_ratio <= 1:
            raise ValueError(f"resize_ratio must be in (0, 1], got {resize_ratio}")
        steps += [T.Resize(round(image_size / resize_ratio)), T.CenterCrop(image_size)]
    steps += [T.ToTensor(), _normalize(mean, std, in_channels)]
    return T.Compose(steps)


def eval_transform_for(info, image_size: int | None = None, resize_ratio: float = 0.875) -> T.Compose:
    """Evaluation transform for a dataset (its ``DatasetInfo``; ``image_size`` defaults to ``info.image_size``):
    crop only where images have no fixed size."""
    return eval_transform(image_size or info.image_size, info.mean, info.std, info.in_channels,
                          resize_ratio=None if info.fixed_size else resize_ratio)


class MultiViewTransform:
    """Apply several transforms to the same image: ``[t(image) for t in transforms]``."""

    def __init__(self, transforms: Sequence[Callable]):
        if not transforms:
            raise ValueError("MultiViewTransform needs at least one transform")
        self.transforms = list(transforms)

    def __call__(self, image) -> list:
        return [t(image) for t in self.transforms]

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(t) for t in self.transforms)
        return f"{type(self).__name__}([\n  {inner}\n])"
