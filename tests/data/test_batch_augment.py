"""The batched MoCo v2 augmentation against torchvision's per-sample transforms (METHOD §1)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from clim.data.batch_augment import (
    MoCoV2BatchAugment,
    center_resize,
    random_resized_crop_params,
    resize_crop,
)

MEAN3, STD3 = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def _images(batch, channels, height, width, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, channels, height, width), dtype=torch.uint8, generator=generator)


def _torchvision_view(image, params, b, aug):
    """One sample rebuilt with torchvision's functional ops from the drawn parameters."""
    x0, y0, w, h = params["boxes"][b].tolist()
    view = TF.resized_crop(image.float() / 255, y0, x0, h, w, [aug.out_size, aug.out_size], antialias=True)
    adjust = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    if params["jitter"][b]:
        for op in params["jitter_order"][b].tolist():
            view = adjust[op](view, params["jitter_factors"][b, op].item())
    if params["grayscale"][b] and view.shape[0] == 3:
        view = TF.rgb_to_grayscale(view, num_output_channels=3)
    if params["blur"][b]:
        sigma = params["blur_sigma"][b].item() * aug.blur_sigma_scale
        view = TF.gaussian_blur(view, [aug.blur_kernel_size] * 2, [sigma, sigma])
    if params["flip"][b]:
        view = TF.horizontal_flip(view)
    return TF.normalize(view, aug.mean.tolist(), aug.std.tolist())


@pytest.mark.parametrize("channels", [1, 3])
def test_every_sample_matches_torchvision_given_its_parameters(channels):
    images = _images(48, channels, 21, 30)
    aug = MoCoV2BatchAugment(16, MEAN3[:channels], STD3[:channels], blur_sigma=(3.0, 14.0))  # visible blur at 16 px
    views, params = aug(images, torch.Generator().manual_seed(1), return_params=True)
    assert params["jitter"].any() and params["blur"].any() and params["flip"].any()
    expected = torch.stack([_torchvision_view(images[b], params, b, aug) for b in range(len(images))])
    torch.testing.assert_close(views, expected, atol=2e-4, rtol=0)


@pytest.mark.parametrize("flip", [False, True])
def test_resize_crop_matches_torchvision_up_and_downscaling(flip):
    images = _images(6, 3, 64, 80).float()
    boxes = torch.tensor(
        [[0, 0, 80, 64], [5, 3, 70, 50], [40, 20, 9, 12], [79, 63, 1, 1], [10, 0, 33, 64], [0, 7, 80, 20]]
    )
    flips = torch.full((6,), flip)
    out = resize_crop(images, boxes, 24, flips)
    for b, (x0, y0, w, h) in enumerate(boxes.tolist()):
        expected = TF.resized_crop(images[b], y0, x0, h, w, [24, 24], antialias=True)
        expected = TF.horizontal_flip(expected) if flip else expected
        torch.testing.assert_close(out[b], expected, atol=1e-3, rtol=1e-5)


def test_identity_parameters_reproduce_the_resized_normalised_input():
    images = _images(3, 3, 30, 40)
    aug = MoCoV2BatchAugment(20, MEAN3, STD3, crop_scale=(1, 1), ratio=(40 / 30, 40 / 30),
                             jitter_p=0, grayscale_p=0, blur_p=0, flip_p=0)
    resized = F.interpolate(images.float() / 255, size=(20, 20), mode="bilinear", antialias=True, align_corners=False)
    torch.testing.assert_close(aug(images), TF.normalize(resized, MEAN3, STD3), atol=1e-5, rtol=0)

    same_size = _images(1, 1, 28, 28)
    identity = MoCoV2BatchAugment(28, (0.3,), (0.2,), crop_scale=(1, 1), ratio=(1, 1),
                                  jitter_p=0, grayscale_p=0, blur_p=0, flip_p=0)
    torch.testing.assert_close(identity(same_size), (same_size.float() / 255 - 0.3) / 0.2, atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", [(1, 1, 28, 28), (5, 3, 32, 32), (2, 3, 17, 45)])
def test_output_shape_dtype_and_normalisation(shape):
    channels = shape[1]
    aug = MoCoV2BatchAugment(24, MEAN3[:channels], STD3[:channels])
    flat = torch.full(shape, 255, dtype=torch.uint8)  # white survives crop, flip and blur
    no_colour = MoCoV2BatchAugment(24, MEAN3[:channels], STD3[:channels], jitter_p=0, grayscale_p=0)
    out = no_colour(flat, torch.Generator().manual_seed(0))
    assert out.shape == (shape[0], channels, 24, 24) and out.dtype == torch.float32
    expected = (1 - torch.tensor(MEAN3[:channels])) / torch.tensor(STD3[:channels])
    torch.testing.assert_close(out, expected.view(1, -1, 1, 1).expand_as(out), atol=1e-5, rtol=0)
    half = aug(_images(*shape), torch.Generator().manual_seed(0), dtype=torch.bfloat16)
    assert half.shape == out.shape and half.dtype == torch.bfloat16 and torch.isfinite(half.float()).all()


def test_seeded_generator_is_reproducible():
    images = _images(16, 3, 32, 32)
    aug = MoCoV2BatchAugment(32, MEAN3, STD3)
    first = aug(images, torch.Generator().manual_seed(7))
    torch.testing.assert_close(aug(images, torch.Generator().manual_seed(7)), first, atol=0, rtol=0)
    assert not torch.equal(aug(images, torch.Generator().manual_seed(8)), first)


def test_per_sample_coin_rates_and_factor_ranges():
    n = 20000
    aug = MoCoV2BatchAugment(32, MEAN3, STD3)
    params = aug.sample_params(n, 32, 32, torch.Generator().manual_seed(3))
    for name, rate in (("flip", 0.5), ("jitter", 0.8), ("grayscale", 0.2), ("blur", 0.5)):
        assert abs(params[name].float().mean().item() - rate) < 0.015, name  # > 4 standard errors
    factors = params["jitter_factors"]
    for column, (low, high) in enumerate(((0.6, 1.4), (0.6, 1.4), (0.6, 1.4), (-0.1, 0.1))):
        values = factors[:, column]
        assert low <= values.min() and values.max() <= high
        assert abs(values.mean().item() - (low + high) / 2) < 0.02 * (high - low)
    sigma = params["blur_sigma"]
    assert 0.1 <= sigma.min() and sigma.max() <= 2.0 and abs(sigma.mean().item() - 1.05) < 0.02
    order = params["jitter_order"]
    assert torch.equal(order.sort(dim=1).values, torch.arange(4).expand(n, 4))
    position_share = F.one_hot(order, 4).float().mean(dim=0)  # [position, op]
    assert (position_share - 0.25).abs().max() < 0.015


def test_grayscale_views_have_equal_channels():
    images = _images(200, 3, 16, 16)
    aug = MoCoV2BatchAugment(16, MEAN3, STD3)
    views, params = aug(images, torch.Generator().manual_seed(4), return_params=True)
    pixels = views * torch.tensor(STD3).view(1, 3, 1, 1) + torch.tensor(MEAN3).view(1, 3, 1, 1)
    grey = params["grayscale"]
    assert 20 < grey.sum() < 70
    torch.testing.assert_close(pixels[grey, 0], pixels[grey, 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(pixels[grey, 1], pixels[grey, 2], atol=1e-5, rtol=0)
    assert (pixels[~grey, 0] - pixels[~grey, 1]).abs().amax(dim=(1, 2)).min() > 0.01


def _torchvision_crop_stats(height, width, n, seed):
    torch.manual_seed(seed)
    reference = v2.RandomResizedCrop(8, scale=(0.2, 1.0))
    image = torch.empty(1, height, width)
    boxes = [reference.make_params([image]) for _ in range(n)]
    return torch.tensor([[p["left"], p["top"], p["width"], p["height"]] for p in boxes], dtype=torch.float64)


@pytest.mark.parametrize("height,width", [(224, 300), (96, 32)])  # (96, 32) mostly hits the fallback
def test_crop_distribution_matches_torchvision(height, width):
    n = 6000
    ours = random_resized_crop_params(n, height, width, generator=torch.Generator().manual_seed(5)).double()
    theirs = _torchvision_crop_stats(height, width, n, seed=6)
    for boxes in (ours, theirs):
        x0, y0, w, h = boxes.unbind(1)
        assert (x0 >= 0).all() and (y0 >= 0).all() and (x0 + w <= width).all() and (y0 + h <= height).all()
    area = ours[:, 2] * ours[:, 3] / (height * width)
    assert area.max() <= 1
    if width / height >= 3 / 4:  # the fallback (centre crop at ratio 3/4) would leave both ranges
        assert area.min() >= 0.2 - 0.01
        log_ratio = torch.log(ours[:, 2] / ours[:, 3])
        assert log_ratio.min() >= math.log(3 / 4) - 0.02 and log_ratio.max() <= math.log(4 / 3) + 0.02
    for column in range(4):  # means of x0, y0, w, h, in units of the image side
        side = width if column % 2 == 0 else height
        assert abs(ours[:, column].mean() - theirs[:, column].mean()) / side < 0.015, column
    their_area = theirs[:, 2] * theirs[:, 3] / (height * width)
    assert abs(area.mean() - their_area.mean()) < 0.012
    assert abs(area.std() - their_area.std()) < 0.012


def test_center_resize_takes_the_central_square():
    images = _images(2, 3, 40, 30)
    out = center_resize(images, 16, MEAN3, STD3)
    square = TF.center_crop(images.float() / 255, [30, 30])
    expected = TF.normalize(TF.resize(square, [16, 16], antialias=True), MEAN3, STD3)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batch_with_cpu_generator_matches_cpu():
    images = _images(32, 3, 32, 32)
    aug = MoCoV2BatchAugment(32, MEAN3, STD3)
    cpu = aug(images, torch.Generator().manual_seed(2))
    cuda = aug.cuda()(images.cuda(), torch.Generator().manual_seed(2))
    torch.testing.assert_close(cuda.cpu(), cpu, atol=1e-3, rtol=0)


@pytest.mark.parametrize("channels", [1, 3])
def test_color_jitter_without_gathering_equals_gathering(channels):
    """The sync-free form used on GPUs (every op on the whole batch, identity factor elsewhere)
    gives the values of the per-subset form used on CPU."""
    from clim.data.batch_augment import _color_jitter

    augment = MoCoV2BatchAugment(8, [0.5] * channels, [0.25] * channels, jitter_p=0.7)
    generator = torch.Generator().manual_seed(3)
    params = augment.sample_photometric_params(64, generator)
    images = torch.rand((64, channels, 8, 8), generator=generator)
    gathered = _color_jitter(images.clone(), params["jitter_factors"], params["jitter_order"], params["jitter"],
                             gather=True)
    masked = _color_jitter(images.clone(), params["jitter_factors"], params["jitter_order"], params["jitter"],
                           gather=False)
    assert 0 < int(params["jitter"].sum()) < 64  # both jittered and untouched samples
    torch.testing.assert_close(masked, gathered, rtol=0, atol=1e-6)
    untouched = ~params["jitter"]
    assert torch.equal(masked[untouched], images[untouched])
    assert not torch.allclose(masked[~untouched], images[~untouched])
