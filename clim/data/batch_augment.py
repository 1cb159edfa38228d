"""MoCo v2 augmentation (METHOD §1) applied to whole uint8 batches in one vectorised pass.

The per-sample torchvision pipeline (one Python call chain per image) runs at about a thousand images/s per CPU core
whatever the device, which starves a GPU on small images; here every per-sample random parameter is drawn for the whole
batch at once from the same distributions as torchvision's transforms, and each stage is a handful of batched tensor ops
on the batch's device.

Semantics follow torchvision v2 on float images (``ToDtype(float32, scale=True)`` first): RandomResizedCrop (antialiased
bilinear) → horizontal flip → RandomApply(ColorJitter, p) → RandomGrayscale → RandomApply(GaussianBlur, p) → Normalize.
MoCo v2 flips last; flipping is applied during the resize instead, which is the same because every later op is
mirror-symmetric. Deviations, all deliberate:

- Values stay float between ops (the PIL / uint8 pipeline rounds to 8 bits after every op).
- The blur σ range is in pixels of a 224-pixel image and is scaled by ``out_size / 224`` with the kernel size
  (≈ 10 % of ``out_size``, odd, ≥ 3), so a 32-pixel view is blurred like a 224-pixel one seen at the same
  relative scale (σ ≤ 0.29 px at 32, i.e. nearly no blur, as in most CIFAR MoCo setups) instead of being
  smeared by a 2-pixel σ."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale.
_LUMA = (0.2989, 0.587, 0.114)
# The image size in which the blur σ range is expressed (MoCo v2's ImageNet views).
BLUR_REFERENCE_SIZE = 224
# RandomResizedCrop's number of rejection-sampling attempts before the centre-crop fallback.
_CROP_ATTEMPTS = 10


def blur_kernel_size(image_size: int) -> int:
    """Odd kernel of about 10% of the image side, at least 3 (MoCo v2 uses 23 at 224)."""
    return max(3, int(0.1 * image_size) // 2 * 2 + 1)


def _checked(images_uint8: Tensor) -> Tensor:
    if images_uint8.dtype != torch.uint8 or images_uint8.ndim != 4 or images_uint8.shape[1] not in (1, 3):
        raise ValueError(f"expected a uint8 [B, 1 or 3, H, W] batch, got {images_uint8.dtype} "
                         f"{tuple(images_uint8.shape)}")
    return images_uint8


def _draw_device(generator: torch.Generator | None, device: torch.device | str | None) -> torch.device:
    """Random numbers must be drawn where the generator lives (a CPU generator may serve CUDA images)."""
    return generator.device if generator is not None else torch.device(device if device is not None else "cpu")


def _uniform(shape: tuple[int, ...], low: float, high: float, generator, device) -> Tensor:
    return torch.rand(shape, generator=generator, device=device) * (high - low) + low


def fallback_crop_size(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    """torchvision's RandomResizedCrop fallback: the whole image, clamped to the ratio range."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        return width, round(width / min(ratio))
    if in_ratio > max(ratio):
        return round(height * max(ratio)), height
    return width, height


def random_resized_crop_params(batch_size: int, height: int, width: int, scale: Sequence[float] = (0.2, 1.0),
                               ratio: Sequence[float] = (3 / 4, 4 / 3), generator: torch.Generator | None = None,
                               device: torch.device | str | None = None) -> Tensor:
    """Crop boxes ``(x0, y0, w, h)`` in source pixels, LongTensor ``[batch_size, 4]``, on ``device`` (default:
    where the generator draws). torchvision's RandomResizedCrop for every sample at once: 10 candidate (area
    fraction ~ U(scale), log aspect ratio ~ U(log ratio)) pairs, the first one that fits is kept and placed
    uniformly at random; a sample with no fitting candidate gets the centre crop clamped to the ratio range."""
    draw = _draw_device(generator, device)
    shape = (batch_size, _CROP_ATTEMPTS)
    target_area = height * width * _uniform(shape, scale[0], scale[1], generator, draw)
    aspect = torch.exp(_uniform(shape, math.log(ratio[0]), math.log(ratio[1]), generator, draw))
    widths = torch.round(torch.sqrt(target_area * aspect))
    heights = torch.round(torch.sqrt(target_area / aspect))
    fits = (widths > 0) & (widths <= width) & (heights > 0) & (heights <= height)
    first_fit = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # argmax returns the first maximum
    fallback_w, fallback_h = fallback_crop_size(height, width, ratio)
    found = fits.any(dim=1)
    w = torch.where(found, widths.gather(1, first_fit).squeeze(1), float(fallback_w))
    h = torch.where(found, heights.gather(1, first_fit).squeeze(1), float(fallback_h))

    offsets = torch.rand((batch_size, 2), generator=generator, device=draw)
    x0 = torch.minimum(torch.floor(offsets[:, 0] * (width - w + 1)), width - w)
    y0 = torch.minimum(torch.floor(offsets[:, 1] * (height - h + 1)), height - h)
    x0 = torch.where(found, x0, torch.div(width - w, 2, rounding_mode="floor"))
    y0 = torch.where(found, y0, torch.div(height - h, 2, rounding_mode="floor"))
    boxes = torch.stack((x0, y0, w, h), dim=1).long()
    return boxes.to(device) if device is not None else boxes


def _resample_weights(start: Tensor, length: Tensor, in_size: int, out_size: int, dtype) -> Tensor:
    """``[B, out_size, in_size]`` weights resizing the window ``[start, start + length)`` to ``out_size``.

    The triangle filter of PyTorch's / PIL's antialiased bilinear resize: its half-width is one source pixel when
    upscaling (plain bilinear, align_corners=False) and ``length / out_size`` pixels when downscaling, so strong
    downscaling averages every source pixel instead of aliasing. Pixels outside the window get no weight."""
    start = start.to(dtype)[:, None, None]
    length = length.to(dtype)[:, None, None]
    step = length / out_size  # source pixels per output pixel
    centres = start + step * (torch.arange(out_size, device=start.device, dtype=dtype)[None, :, None] + 0.5)
    pixels = torch.arange(in_size, device=start.device, dtype=dtype)[None, None, :] + 0.5
    weights = (1 - (pixels - centres).abs() / step.clamp(min=1)).clamp(min=0)
    weights = weights * ((pixels > start) & (pixels < start + length))
    return weights / weights.sum(dim=2, keepdim=True)


def resize_crop(images: Tensor, boxes: Tensor, out_size: int, flip: Tensor | None = None) -> Tensor:
    """Crop every image to its box ``(x0, y0, w, h)`` and resize it to ``out_size``², mirrored where ``flip``;
    floating point (float32 for integer input) in the input's value range.

    Equivalent to torchvision's ``resized_crop(..., antialias=True)`` (+ ``hflip``) per sample, done as two
    batched matmuls with per-sample separable resampling matrices: antialiased (unlike ``grid_sample``) and the
    flip is free (reversed matrix rows). The channels are folded into the matrix rows so that each matmul is B
    products of sizeable matrices rather than B·C tiny ones. Dense matrices cost O(out·H·W) per channel: on CPU
    ~2× a non-antialiased ``grid_sample`` at 32–96 px (a small share of the augmentation), negligible on a GPU."""
    dtype = images.dtype if images.is_floating_point() else torch.float32
    batch, channels, height, width = images.shape
    boxes = boxes.to(images.device)
    rows = _resample_weights(boxes[:, 1], boxes[:, 3], height, out_size, dtype)
    cols = _resample_weights(boxes[:, 0], boxes[:, 2], width, out_size, dtype)
    if flip is not None:
        cols = torch.where(flip.to(images.device)[:, None, None], cols.flip(1), cols)
    # [B, H, C, W] layout, made by the dtype conversion copy that is needed anyway.
    height_major = torch.empty((batch, height, channels, width), dtype=dtype, device=images.device)
    height_major.copy_(images.transpose(1, 2))
    resized = torch.bmm(height_major.view(batch, height * channels, width), cols.transpose(1, 2))
    resized = torch.bmm(rows, resized.view(batch, height, channels * out_size))
    return resized.view(batch, out_size, channels, out_size).transpose(1, 2).contiguous()


def _normalise(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """In place: ``images`` is always a fresh intermediate here."""
    return images.sub_(mean.to(images.device).view(1, -1, 1, 1)).div_(std.to(images.device).view(1, -1, 1, 1))


def center_resize(images_uint8: Tensor, out_size: int, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Evaluation view: the central square (side = shorter image side) resized to ``out_size``, normalised, float32
    ``[B, C, out_size, out_size]``: the deterministic counterpart of the training crop (resize shorter side +
    centre crop, §5) for batches of same-sized array images."""
    batch, _, height, width = images_uint8.shape
    side = min(height, width)
    box = torch.tensor([(width - side) // 2, (height - side) // 2, side, side], device=images_uint8.device)
    images = resize_crop(images_uint8, box.expand(batch, 4), out_size).div_(255)
    return _normalise(images, torch.tensor(mean), torch.tensor(std))


def _luma(images: Tensor) -> Tensor:
    """``[B, 1, H, W]`` grey level of RGB images in [0, 1]."""
    red, green, blue = images.unbind(1)
    return (red * _LUMA[0] + green * _LUMA[1] + blue * _LUMA[2]).unsqueeze(1)


def _blend(images: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    factor = factor.view(-1, 1, 1, 1)
    return (images * factor + other * (1 - factor)).clamp_(0, 1)


def _adjust_brightness(images: Tensor, factor: Tensor) -> Tensor:
    return (images * factor.view(-1, 1, 1, 1)).clamp_(0, 1)


def _adjust_contrast(images: Tensor, factor: Tensor) -> Tensor:
    grey = _luma(images) if images.shape[1] == 3 else images
    return _blend(images, grey.mean(dim=(1, 2, 3), keepdim=True), factor)


def _adjust_saturation(images: Tensor, factor: Tensor) -> Tensor:
    return _blend(images, _luma(images), factor)


def _adjust_hue(images: Tensor, shift: Tensor) -> Tensor:
    """Rotate the HSV hue by ``shift`` turns, keeping saturation and value (torchvision's adjust_hue)."""
    red, green, blue = images.unbind(1)
    min_channel, max_channel = torch.aminmax(images, dim=1)
    chroma = max_channel - min_channel
    red_is_max = max_channel == red
    green_is_max = (max_channel == green) & ~red_is_max
    # Hue in sixths of a turn: (g − b)/C on the red sector, 2 + (b − r)/C on green, 4 + (r − g)/C on blue.
    numerator = torch.where(red_is_max, green - blue, torch.where(green_is_max, blue - red, red - green))
    sector_start = torch.where(red_is_max, 0.0, torch.where(green_is_max, 2.0, 4.0))
    hue6 = numerator.div_(torch.where(chroma == 0, 1.0, chroma)).add_(sector_start).add_(6 * shift.view(-1, 1, 1))
    # HSV → RGB without sector branching: channel n of (R, G, B) = (5, 3, 1) is V − C·clamp(min(k, 4 − k), 0, 1)
    # with k = (n + hue6) mod 6; (5, 3, 1) from arange: a device kernel, not a synchronising host-to-device copy
    offsets = (5 - 2 * torch.arange(3, device=images.device, dtype=images.dtype)).view(1, 3, 1, 1)
    k = (hue6.unsqueeze(1) + offsets).remainder_(6)
    ramp = torch.minimum(k, 4 - k).clamp_(0, 1)
    return max_channel.unsqueeze(1) - chroma.unsqueeze(1) * ramp


_JITTER_OPS = (_adjust_brightness, _adjust_contrast, _adjust_saturation, _adjust_hue)
_NEUTRAL_FACTORS = (1.0, 1.0, 1.0, 0.0)  # brightness, contrast, saturation, hue: the identity


def _color_jitter(images: Tensor, factors: Tensor, order: Tensor, applied: Tensor,
                  gather: bool | None = None) -> Tensor:
    """ColorJitter with a per-sample op order: in round r every jittered sample gets its r-th op.

    On CPU each (round, op) pair touches only the samples that need it (gathered by index), so the cost is that
    of applying the four ops once per sample. On other devices that indexing would cost a host synchronisation
    per pair, so every op runs on the whole batch with the identity factor (and a ``where``) for the samples that
    do not take it in that round: more arithmetic, no sync, same values (``gather`` forces one way, for tests).
    One-channel images only get brightness and contrast (torchvision makes saturation and hue no-ops there)."""
    ops = _JITTER_OPS if images.shape[1] == 3 else _JITTER_OPS[:2]
    gather = images.device.type == "cpu" if gather is None else gather
    for round_index in range(len(_JITTER_OPS)):
        for op_index, op in enumerate(ops):
            chosen = applied & (order[:, round_index] == op_index)
            if gather:
                selected = torch.nonzero(chosen).squeeze(1)
                if selected.numel():
                    images[selected] = op(images[selected], factors[selected, op_index])
            else:
                factor = torch.where(chosen, factors[:, op_index], _NEUTRAL_FACTORS[op_index])
                images = torch.where(chosen[:, None, None, None], op(images, factor), images)
    return images


def _gaussian_blur(images: Tensor, sigma: Tensor, blurred: Tensor, kernel_size: int) -> Tensor:
    """Per-sample separable Gaussian blur (reflect padding) as two grouped convolutions over B·C groups. Samples
    that are not blurred get a unit impulse kernel, an exact identity: one call, no data-dependent indexing."""
    batch, channels, height, width = images.shape
    half = kernel_size // 2
    taps = torch.arange(-half, half + 1, device=images.device, dtype=images.dtype)
    kernels = torch.softmax(-0.5 * (taps / sigma.to(images.dtype)[:, None]) ** 2, dim=1)
    kernels = torch.where(blurred[:, None], kernels, (taps == 0).to(images.dtype))
    kernels = kernels.repeat_interleave(channels, dim=0)
    padded = F.pad(images.reshape(1, batch * channels, height, width), (half, half, half, half), mode="reflect")
    out = F.conv2d(padded, kernels.view(-1, 1, 1, kernel_size), groups=batch * channels)
    out = F.conv2d(out, kernels.view(-1, 1, kernel_size, 1), groups=batch * channels)
    return out.view(batch, channels, height, width)


class MoCoV2BatchAugment(nn.Module):
    """MoCo v2 views of a uint8 batch ``[B, C, H, W]`` (C ∈ {1, 3}) → normalised ``[B, C, out_size, out_size]``.

    Call once per view; all randomness comes from ``generator`` so a seeded generator reproduces a run.
    ``return_params=True`` also returns the drawn per-sample parameters (for tests and diagnostics): ``boxes`` (x0, y0,
    w, h) in source pixels, ``flip``, ``jitter`` (applied mask), ``jitter_factors`` (brightness, contrast, saturation,
    hue), ``jitter_order`` (op indices in application order), ``grayscale``, ``blur`` and ``blur_sigma`` (in 224-pixel
    units; the pixel σ is ``blur_sigma * blur_sigma_scale``). Masks and factors are drawn for every sample."""

    def __init__(self, out_size: int, mean: Sequence[float], std: Sequence[float],
                 crop_scale: Sequence[float] = (0.2, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3),
                 jitter: Sequence[float] = (0.4, 0.4, 0.4, 0.1), jitter_p: float = 0.8, grayscale_p: float = 0.2,
                 blur_p: float = 0.5, blur_sigma: Sequence[float] = (0.1, 2.0), flip_p: float = 0.5) -> None:
        super().__init__()
        brightness, contrast, saturation, hue = jitter
        if not 0 <= hue <= 0.5:
            raise ValueError(f"hue jitter must be in [0, 0.5], got {hue}")
        self.out_size, self.crop_scale, self.ratio = out_size, tuple(crop_scale), tuple(ratio)
        self.jitter_low = tuple(max(0.0, 1 - s) for s in (brightness, contrast, saturation)) + (-hue,)
        self.jitter_high = tuple(1 + s for s in (brightness, contrast, saturation)) + (hue,)
        self.jitter_p, self.grayscale_p, self.blur_p, self.flip_p = jitter_p, grayscale_p, blur_p, flip_p
        self.blur_sigma, self.blur_sigma_scale = tuple(blur_sigma), out_size / BLUR_REFERENCE_SIZE
        self.blur_kernel_size = blur_kernel_size(out_size)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32), persistent=False)
        self.register_buffer("jitter_range", torch.tensor([self.jitter_low, self.jitter_high]), persistent=False)

    def sample_params(self, batch_size: int, height: int, width: int, generator=None, device=None) -> dict:
        """Every per-sample random parameter of one view, drawn in one pass (see the class docstring)."""
        draw = _draw_device(generator, device)
        boxes = random_resized_crop_params(batch_size, height, width, self.crop_scale, self.ratio, generator, draw)
        params = {"boxes": boxes, **self.sample_photometric_params(batch_size, generator, draw)}
        return {name: value.to(device) for name, value in params.items()} if device is not None else params

    def sample_photometric_params(self, batch_size: int, generator=None, device=None) -> dict:
        """The per-sample parameters after the crop: ``flip`` and the photometric ones (the same draws, in the same
        order, as :meth:`sample_params` makes after the boxes)."""
        draw = _draw_device(generator, device)
        coins = torch.rand((batch_size, 4), generator=generator, device=draw)
        low, high = self.jitter_range.to(draw)  # a buffer: no host-to-device copy (and sync) per call
        factors = low + (high - low) * torch.rand((batch_size, 4), generator=generator, device=draw)
        order = torch.rand((batch_size, 4), generator=generator, device=draw).argsort(dim=1)
        sigma = _uniform((batch_size,), *self.blur_sigma, generator, draw)
        params = {"flip": coins[:, 0] < self.flip_p, "jitter": coins[:, 1] < self.jitter_p, "jitter_factors": factors,
                  "jitter_order": order, "grayscale": coins[:, 2] < self.grayscale_p, "blur": coins[:, 3] < self.blur_p,
                  "blur_sigma": sigma}
        return {name: value.to(device) for name, value in params.items()} if device is not None else params

    def forward(self, images_uint8: Tensor, generator: torch.Generator | None = None, return_params: bool = False,
                dtype: torch.dtype = torch.float32):
        batch, _, height, width = _checked(images_uint8).shape
        params = self.sample_params(batch, height, width, generator, images_uint8.device)
        views = resize_crop(images_uint8, params["boxes"], self.out_size, params["flip"]).div_(255)
        views = self.photometric(views, params, dtype)
        return (views, params) if return_params else views

    def photometric(self, images: Tensor, params: dict, dtype: torch.dtype = torch.float32) -> Tensor:
        """The photometric part alone: RandomApply(ColorJitter) → RandomGrayscale → RandomApply(GaussianBlur) →
        Normalize, on float images in [0, 1] ``[B, C, out_size, out_size]`` (overwritten: pass a fresh tensor),
        with the per-sample ``params`` of :meth:`sample_params` / :meth:`sample_photometric_params` (``boxes`` and
        ``flip`` are not used here)."""
        views = _color_jitter(images, params["jitter_factors"], params["jitter_order"], params["jitter"])
        if images.shape[1] == 3:
            views = torch.where(params["grayscale"][:, None, None, None], _luma(views).expand_as(views), views)
        sigma_pixels = params["blur_sigma"] * self.blur_sigma_scale
        views = _gaussian_blur(views, sigma_pixels, params["blur"], self.blur_kernel_size)
        return _normalise(views, self.mean, self.std).to(dtype)

    def augment_cropped(self, views_uint8: Tensor, generator: torch.Generator | None = None,
                        return_params: bool = False, dtype: torch.dtype = torch.float32):
        """Photometric augmentation of views already cropped and flipped elsewhere (the per-sample geometric part
        done in DataLoader workers, ``data.augment=device``): uint8 ``[B, C, out_size, out_size]`` → normalised
        float. ``params["flip"]`` is drawn but not applied."""
        params = self.sample_photometric_params(_checked(views_uint8).shape[0], generator, views_uint8.device)
        views = self.photometric(views_uint8.to(torch.float32).div_(255), params, dtype)
        return (views, params) if return_params else views
