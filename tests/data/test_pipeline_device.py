"""``data.augment=device``: workers decode + crop + flip to uint8, the device does the photometric part."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from clim.config import load_config
from clim.data import build_dataset
from clim.data.arrays import ArrayDataset
from clim.data.batch_augment import MoCoV2BatchAugment
from clim.data.pipeline import build_pipeline, resolve_augment
from clim.data.registry import DatasetInfo
from clim.data.views import crop_box
from clim.method.objective import compute_step
from clim.models.moco import build_moco
from clim.specs import loader_spec, model_spec, objective_spec, view_spec

SIZE = 16
BATCH = 8
KEYS = {"index", "label", "generator", "query", "key", "positive_index", "positive_query", "positive_key",
        "small_crops", "resume"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """root/train/<class>/*.png: 3 classes x 8 RGB images of assorted sizes."""
    root = tmp_path_factory.mktemp("imagefolder")
    rng = np.random.default_rng(0)
    shapes = [(20, 30), (24, 24), (40, 18), (17, 33)]
    for c in ("a", "b", "c"):
        (root / "train" / c).mkdir(parents=True)
        for i in range(8):
            h, w = shapes[i % len(shapes)]
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "train" / c / f"{i}.png")
    return root


def _config(folder, *extra):
    return load_config(overrides=[
        "data.name=imagefolder", f"data.root={folder}", f"data.image_size={SIZE}", "data.augment=device",
        "data.num_workers=0", "model.backbone=resnet10", "model.small_stem=true", "model.queue_size=32",
        f"train.batch_size={BATCH}", "train.knn_every=0", *extra])


def _pipeline(folder, *extra, device="cpu"):
    config = _config(folder, *extra)
    dataset = build_dataset("imagefolder", folder, "pretrain", image_size=SIZE)
    return config, dataset, build_pipeline(dataset, view_spec(config, SIZE), loader_spec(config), torch.device(device))


def _random_table(n, p=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ((torch.arange(n)[:, None] + torch.randint(1, n, (n, p), generator=g)) % n).int()


def test_yields_the_documented_dict(folder):
    config, dataset, pipeline = _pipeline(folder)
    assert pipeline.mode == "device" and len(pipeline) == len(dataset) // BATCH
    batches = list(pipeline.epoch(0))
    assert len(batches) == len(pipeline)
    batch = batches[0]
    assert set(batch) == KEYS
    assert batch["index"].dtype == torch.long and batch["index"].shape == (BATCH,)
    assert batch["label"].shape == (BATCH,) and set(batch["label"].tolist()) <= {0, 1, 2}
    for name in ("query", "key"):
        assert len(batch[name]) == 1 and batch[name][0].shape == (BATCH, 3, SIZE, SIZE)
        assert batch[name][0].dtype == torch.float32
    assert batch["positive_index"] is None and batch["positive_key"] is None and batch["small_crops"] is None
    seen = torch.cat([b["index"] for b in batches])
    assert len(set(seen.tolist())) == len(seen)  # a permutation: no image twice in an epoch


def test_positives_and_multiresolution(folder):
    config, dataset, pipeline = _pipeline(folder, "method.name=clim", "method.resolutions=[16,12]")
    table = _random_table(len(dataset))
    batch = next(iter(pipeline.epoch(0, table)))
    for name in ("query", "key", "positive_query", "positive_key"):
        assert [v.shape[-1] for v in batch[name]] == [16, 12]
        assert all(v.shape[:2] == (BATCH, 3) for v in batch[name])
    rows = table[batch["index"]].long()
    assert (rows == batch["positive_index"][:, None]).any(dim=1).all()  # drawn from each anchor's row


def test_multicrop_small_crops(folder):
    _, _, pipeline = _pipeline(folder, "method.multicrop=true", "method.multicrop_size=8")
    batch = next(iter(pipeline.epoch(0)))
    assert len(batch["small_crops"]) == 2 and all(v.shape == (BATCH, 3, 8, 8) for v in batch["small_crops"])


def _flat(batch):
    out = [batch["index"]]
    for name in ("query", "key", "positive_query", "positive_key"):
        out += batch[name] or []
    return out


def test_same_seed_same_batch_whatever_the_workers(folder):
    extra = ("method.name=clim",)
    table = _random_table(24)
    _, _, a = _pipeline(folder, *extra)
    _, _, b = _pipeline(folder, *extra, "data.num_workers=2")
    first_a, first_b = next(iter(a.epoch(3, table))), next(iter(b.epoch(3, table)))
    for x, y in zip(_flat(first_a), _flat(first_b), strict=True):
        assert torch.equal(x, y)
    other = next(iter(a.epoch(4, table)))
    assert not torch.equal(other["query"][0], first_a["query"][0])
    _, _, c = _pipeline(folder, *extra, "train.seed=1")
    assert not torch.equal(next(iter(c.epoch(3, table)))["query"][0], first_a["query"][0])


def test_a_training_step_runs(folder):
    config, dataset, pipeline = _pipeline(folder, "method.name=clim", "method.resolutions=[16,12]")
    model = build_moco(model_spec(config, SIZE), 3)
    optimizer = torch.optim.SGD(model.encoder_q.parameters(), lr=0.03, momentum=0.9)
    batch = next(iter(pipeline.epoch(0, _random_table(len(dataset)))))
    out = compute_step(model, batch, objective_spec(config))
    assert torch.isfinite(out.loss) and out.lam_mean is not None
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    optimizer.step()
    model.enqueue(out.keys.float())
    assert int(model.queue_ptr) == BATCH


def test_pretrain_runs_with_the_device_path(folder, tmp_path):
    from clim.engine.trainer import pretrain

    config = _config(folder, "train.epochs=1", "train.device=cpu")
    history = pretrain(config, tmp_path / "run")
    assert len(history) == 1 and np.isfinite(history[0]["loss"])


def test_auto_mode():
    config = load_config(overrides=["data.augment=auto"])
    arrays = ArrayDataset(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.zeros(4),
                          DatasetInfo("t", None, 1, 8, (0.5,), (0.5,)))

    class Files:  # a file dataset: no .images
        pass

    assert resolve_augment(config.data.augment, arrays, torch.device("cpu")) == "batched"
    assert resolve_augment(config.data.augment, arrays, torch.device("cuda")) == "batched"
    assert resolve_augment(config.data.augment, Files(), torch.device("cpu")) == "loader"
    assert resolve_augment(config.data.augment, Files(), torch.device("cuda")) == "device"
    assert resolve_augment(load_config(overrides=["data.augment=device"]).data.augment, arrays, "cpu") == "device"


@pytest.mark.parametrize("shape", [(20, 30), (300, 12), (12, 300), (5, 5)])
def test_crop_box_follows_random_resized_crop(shape):
    height, width = shape
    rng = np.random.default_rng(0)
    for _ in range(200):
        x0, y0, w, h = crop_box(rng, height, width, (0.2, 1.0))
        assert 0 <= x0 and x0 + w <= width and 0 <= y0 and y0 + h <= height and w > 0 and h > 0
        if height == 20:  # no fallback needed: the area and ratio ranges hold (up to rounding)
            assert 0.2 * 600 * 0.8 <= w * h <= 600 and 3 / 4 * 0.8 <= w / h <= 4 / 3 * 1.25


# ---------------------------------------------------------------- the photometric entry point


def _uint8(batch, channels, size, seed=0):
    return torch.randint(0, 256, (batch, channels, size, size), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("channels", [1, 3])
def test_photometric_is_forward_without_the_crop(channels):
    """With an identity crop, forward == the photometric part on the plain image, same draws."""
    images = _uint8(32, channels, 20)
    aug = MoCoV2BatchAugment(20, (0.4,) * channels, (0.3,) * channels, crop_scale=(1, 1), ratio=(1, 1),
                             flip_p=0, blur_sigma=(3.0, 14.0))
    expected = aug(images, torch.Generator().manual_seed(5))
    params = aug.sample_params(32, 20, 20, torch.Generator().manual_seed(5))
    torch.testing.assert_close(aug.photometric(images.float() / 255, params), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("channels", [1, 3])
def test_augment_cropped_matches_torchvision(channels):
    images = _uint8(40, channels, 16, seed=1)
    mean, std = (0.49, 0.48, 0.45)[:channels], (0.25, 0.24, 0.26)[:channels]
    aug = MoCoV2BatchAugment(16, mean, std, blur_sigma=(3.0, 14.0))
    views, params = aug.augment_cropped(images, torch.Generator().manual_seed(2), return_params=True)
    assert params["jitter"].any() and params["blur"].any() and "boxes" not in params
    adjust = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for b in range(len(images)):
        view = images[b].float() / 255
        if params["jitter"][b]:
            for op in params["jitter_order"][b].tolist():
                view = adjust[op](view, params["jitter_factors"][b, op].item())
        if params["grayscale"][b] and channels == 3:
            view = TF.rgb_to_grayscale(view, num_output_channels=3)
        if params["blur"][b]:
            sigma = params["blur_sigma"][b].item() * aug.blur_sigma_scale
            view = TF.gaussian_blur(view, [aug.blur_kernel_size] * 2, [sigma, sigma])
        torch.testing.assert_close(views[b], TF.normalize(view, list(mean), list(std)), atol=2e-4, rtol=0)


def test_augment_cropped_rejects_float_input():
    with pytest.raises(ValueError, match="uint8"):
        MoCoV2BatchAugment(8, (0.5,), (0.5,)).augment_cropped(torch.zeros(2, 1, 8, 8))
