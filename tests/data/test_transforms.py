"""Per-sample transforms: MoCo v2 (METHOD §1), evaluation, multi-view, mode conversion."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from clim.data import DatasetInfo
from clim.data.transforms import (
    MultiViewTransform,
    blur_kernel_size,
    ensure_mode,
    eval_transform,
    eval_transform_for,
    moco_v2_transform,
)

GRAY = ((0.5,), (0.5,))
COLOR = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def noise(mode: str, size: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (size, size) if mode == "L" else (size, size, 3)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))


def steps(transform) -> list[type]:
    found = []
    for t in transform.transforms:
        found.append(type(t))
        if isinstance(t, T.RandomApply):
            found += [type(inner) for inner in t.transforms]
    return found


@pytest.mark.parametrize("in_channels, mode, size", [(1, "L", 28), (3, "RGB", 32), (3, "RGB", 96), (1, "L", 8)])
def test_moco_v2_output_shape_and_range(in_channels, mode, size):
    mean, std = GRAY if in_channels == 1 else COLOR
    transform = moco_v2_transform(size, mean, std, in_channels, jitter_p=1.0, blur_p=1.0)
    torch.manual_seed(0)
    views = torch.stack([transform(noise(mode, size + 5, seed)) for seed in range(8)])
    assert views.shape == (8, in_channels, size, size) and views.dtype == torch.float32
    assert views.min() >= -1 and views.max() <= 1  # (x - 0.5) / 0.5 with x in [0, 1]
    assert not torch.equal(views[0], views[1])


def test_moco_v2_is_random_per_call():
    transform = moco_v2_transform(32, *COLOR, 3)
    image = noise("RGB", 40)
    torch.manual_seed(0)
    a, b = transform(image), transform(image)
    torch.manual_seed(0)
    assert not torch.equal(a, b) and torch.equal(transform(image), a)


def test_moco_v2_parameters_follow_method():
    color = moco_v2_transform(224, *COLOR, 3)
    crop = color.transforms[1]
    assert isinstance(crop, T.RandomResizedCrop)
    assert crop.scale == (0.2, 1.0) and crop.ratio == pytest.approx((3 / 4, 4 / 3))
    jitter = color.transforms[2]
    assert jitter.p == 0.8 and jitter.transforms[0].hue == (-0.1, 0.1)
    assert color.transforms[3].p == 0.2 and isinstance(color.transforms[3], T.RandomGrayscale)
    blur = color.transforms[4]
    assert blur.p == 0.5 and blur.transforms[0].kernel_size == (23, 23) and blur.transforms[0].sigma == (0.1, 2.0)
    assert color.transforms[5].p == 0.5 and isinstance(color.transforms[5], T.RandomHorizontalFlip)
    gray = moco_v2_transform(28, *GRAY, 1)
    assert T.RandomGrayscale not in steps(gray)
    gray_jitter = gray.transforms[2].transforms[0]
    assert gray_jitter.hue is None and gray_jitter.saturation is None and gray_jitter.brightness == (0.6, 1.4)


def test_moco_v2_without_augmentation_is_identity():
    transform = moco_v2_transform(32, *COLOR, 3, crop_scale=(1.0, 1.0), jitter_p=0, grayscale_p=0, blur_p=0, flip_p=0)
    image = noise("RGB", 32)
    assert torch.allclose(transform(image), eval_transform(32, *COLOR, 3)(image))


def test_transforms_accept_any_input_mode_and_tensors():
    rgb_transform = moco_v2_transform(16, *COLOR, 3)
    gray_transform = eval_transform(16, *GRAY, 1)
    assert rgb_transform(Image.new("RGBA", (20, 20))).shape == (3, 16, 16)
    assert rgb_transform(noise("L", 20)).shape == (3, 16, 16)
    assert gray_transform(noise("RGB", 16)).shape == (1, 16, 16)
    tensor = torch.randint(0, 256, (3, 20, 20), dtype=torch.uint8)
    assert rgb_transform(tensor).shape == (3, 16, 16)
    assert gray_transform(tensor[:1]).shape == (1, 16, 16)


def test_blur_kernel_size():
    assert [blur_kernel_size(s) for s in (8, 28, 32, 64, 96, 160, 224)] == [3, 3, 3, 7, 9, 17, 23]


def test_eval_transform_native_resize_and_crop():
    image = noise("RGB", 32)
    plain = T.Compose([T.ToTensor(), T.Normalize(*COLOR)])(image)
    assert torch.equal(eval_transform(32, *COLOR, 3)(image), plain)  # native size: nothing but normalise
    assert eval_transform(24, *COLOR, 3)(image).shape == (3, 24, 24)
    wide = Image.new("RGB", (300, 200), (255, 0, 0))
    wide.paste((0, 0, 255), (0, 0, 40, 200))  # blue band on the left, outside a centre crop
    cropped = eval_transform(224, *COLOR, 3, resize_ratio=0.875)(wide)
    assert cropped.shape == (3, 224, 224) and cropped[2].max() < 0  # no blue left after the crop
    with pytest.raises(ValueError):
        eval_transform(32, *COLOR, 3, resize_ratio=1.5)


def test_eval_transform_for_crops_only_variable_size_data():
    fixed = DatasetInfo("cifar10", 10, 3, 32, *COLOR)
    folder = DatasetInfo("imagefolder", 5, 3, 224, *COLOR, fixed_size=False)
    assert T.CenterCrop not in [type(t) for t in eval_transform_for(fixed).transforms]
    assert T.CenterCrop in [type(t) for t in eval_transform_for(folder).transforms]
    assert eval_transform_for(folder, 64)(Image.new("RGB", (90, 70))).shape == (3, 64, 64)


def test_multi_view_transform():
    transform = moco_v2_transform(16, *COLOR, 3)
    views = MultiViewTransform([transform, transform, eval_transform(16, *COLOR, 3)])(noise("RGB", 16))
    assert len(views) == 3 and not torch.equal(views[0], views[1])
    with pytest.raises(ValueError):
        MultiViewTransform([])


def test_normalisation_stats_must_match_channels():
    with pytest.raises(ValueError, match="3 values"):
        moco_v2_transform(32, *GRAY, 3)
    with pytest.raises(ValueError, match="1 or 3"):
        eval_transform(32, (0.5, 0.5), (0.5, 0.5), 2)


def test_ensure_mode_conversions():
    sixteen = Image.fromarray(np.array([[0, 257 * 100, 65535]], dtype=np.uint16))
    assert sixteen.mode == "I;16"
    assert np.asarray(ensure_mode(sixteen, 1)).tolist() == [[0, 100, 255]]
    assert np.asarray(ensure_mode(sixteen.convert("I"), 3))[0, 1].tolist() == [100, 100, 100]
    rgba = Image.new("RGBA", (2, 1), (10, 20, 30, 0))
    rgba.putpixel((1, 0), (10, 20, 30, 255))
    assert np.asarray(ensure_mode(rgba, 3)).tolist() == [[[255, 255, 255], [10, 20, 30]]]
    transparent_palette = Image.new("P", (1, 1), 0)
    transparent_palette.putpalette([0, 0, 0] * 256)
    transparent_palette.info["transparency"] = 0
    assert np.asarray(ensure_mode(transparent_palette, 1)).tolist() == [[255]]
    assert np.asarray(ensure_mode(Image.new("CMYK", (1, 1), (0, 0, 0, 0)), 3)).tolist() == [[[255, 255, 255]]]
    assert ensure_mode(Image.new("1", (2, 2), 1), 1).mode == "L"
    assert ensure_mode(Image.new("LAB", (2, 2)), 1).mode == "L"  # PIL has no direct LAB -> L
    assert ensure_mode(Image.new("La", (2, 2)), 3).mode == "RGB"
    same = noise("RGB", 4)
    assert ensure_mode(same, 3) is same


def _blur_of(transform) -> T.GaussianBlur:
    (blur,) = [inner for t in transform.transforms if isinstance(t, T.RandomApply)
               for inner in t.transforms if isinstance(inner, T.GaussianBlur)]
    return blur


@pytest.mark.parametrize("size", [28, 32, 96, 224])
def test_loader_blur_sigma_scales_like_the_batched_path(size):
    """One config blurs alike whatever data.augment is: σ ∈ [0.1, 2.0] at 224 px, × size / 224."""
    from clim.data.batch_augment import MoCoV2BatchAugment

    blur = _blur_of(moco_v2_transform(size, *COLOR, 3))
    assert tuple(blur.sigma) == pytest.approx((0.1 * size / 224, 2.0 * size / 224))
    batched = MoCoV2BatchAugment(size, *COLOR)
    assert tuple(blur.sigma) == pytest.approx(tuple(s * batched.blur_sigma_scale for s in batched.blur_sigma))
    assert list(blur.kernel_size) == [batched.blur_kernel_size] * 2
    custom = _blur_of(moco_v2_transform(size, *COLOR, 3, blur_sigma=(1.0, 4.0)))
    assert tuple(custom.sigma) == pytest.approx((size / 224, 4.0 * size / 224))


def test_loader_blur_at_28_px_is_mild():
    # σ = 2 px would erase a 28 px garment; scaled, the strongest blur is 0.25 px
    transform = moco_v2_transform(28, *GRAY, 1, crop_scale=(1.0, 1.0), jitter_p=0, blur_p=1.0, flip_p=0)
    image = noise("L", 28, seed=3)
    plain = moco_v2_transform(28, *GRAY, 1, crop_scale=(1.0, 1.0), jitter_p=0, blur_p=0, flip_p=0)(image)
    torch.manual_seed(0)
    blurred = torch.stack([transform(image) for _ in range(8)])
    assert (blurred - plain).abs().mean() < 0.05  # an unscaled σ ∈ [0.1, 2] changes it by ~0.38
