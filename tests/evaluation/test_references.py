"""Raw-pixel references (clim.evaluation.references) on tiny data with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clim.data import DatasetInfo, registry
from clim.data.arrays import ArrayDataset
from clim.evaluation.knn import weighted_knn
from clim.evaluation.references import dataset_pixels, pixel_references


def _bars(n_per_class: int, seed: int, noise: int, bar: int = 255) -> tuple[np.ndarray, np.ndarray]:
    """Class c: a vertical bar of brightness ``bar`` at column 2c of an 8x8 image, plus uniform noise."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(4), n_per_class)
    images = rng.integers(0, noise + 1, (len(labels), 1, 8, 8)).astype(np.uint8)
    for i, label in enumerate(labels):
        images[i, 0, :, 2 * label] = bar
    return images, labels


@pytest.fixture
def bars(monkeypatch):
    """Registered datasets ``bars`` (4 separable classes) and ``bars-noisy`` (dim bars under heavy noise):
    train 40, test 12 images each."""
    info = DatasetInfo("bars", 4, 1, 8, (0.2,), (0.3,))

    def builder(noise: int, bar: int):
        def build(req):
            images, labels = _bars(3, 1, noise, bar) if req.split == "test" else _bars(10, 0, noise, bar)
            return ArrayDataset(images, labels, info, req.transform)
        return build

    monkeypatch.setitem(registry.BUILDERS, "bars", builder(60, 255))
    monkeypatch.setitem(registry.BUILDERS, "bars-noisy", builder(255, 90))
    return info


def test_separable_classes_score_full_marks(bars):
    result = pixel_references("bars", None, 8)
    assert result["pixel_knn_top1"] == 100.0 and result["pixel_linear_top1"] == 100.0
    assert (result["image_size"], result["num_test"], result["num_train"], result["num_classes"]) == (8, 12, 40, 4)
    assert result["pixel_linear_alpha"] > 0


def test_knn_is_the_evaluation_knn_on_the_normalised_pixels(bars):
    images, labels = _bars(10, 0, 255, 90)
    test_images, test_labels = _bars(3, 1, 255, 90)
    train, test = ArrayDataset(images, labels, bars), ArrayDataset(test_images, test_labels, bars)
    pixels, got_labels = dataset_pixels(train, 8)
    expected = (torch.from_numpy(images).float() / 255 - 0.2) / 0.3
    assert torch.allclose(pixels, expected.flatten(1), atol=1e-5) and torch.equal(got_labels, train.labels)
    assert train.transform is None  # the dataset's own transform is left as it was
    direct = weighted_knn(pixels, train.labels, dataset_pixels(test, 8)[0], test.labels, 20, 0.07, 4)
    result = pixel_references("bars-noisy", None, 8, linear=False)
    assert result["pixel_knn_top1"] == pytest.approx(direct) and direct < 100.0  # the noise costs answers


def test_resolution_is_the_one_asked_for(bars):
    result = pixel_references("bars", None, 4, linear=False)
    assert result["image_size"] == 4 and result["pixel_linear_top1"] is None
    train = registry.BUILDERS["bars"](registry._Request("bars", None, "train", None, None, False, True))
    assert dataset_pixels(train, 4)[0].shape == (40, 16)  # resized to 4 x 4 before flattening
