"""Every dataset path of build_dataset, on files generated in each real on-disk format."""

from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from clim.data import DatasetInfo, build_dataset, dataset_names
from clim.data import registry
from clim.data.idx import read_idx
from data_fakes import make_cifar, make_fmnist, make_stl10, write_idx

FMNIST_MINI_SHA256 = "03fbc9922fa65bd3fb4be691f8399dd0fb20b455aa35ef503e7bd3aa71f7fd95"
DEBIAN_FMNIST = registry.FMNIST_ROOT


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError) as error:
        build_dataset("imagenet-1k")
    for name in ("cifar10", "cifar100", "digits", "fmnist", "fmnist-mini", "imagefolder", "stl10"):
        assert name in str(error.value)
    assert dataset_names() == sorted(dataset_names())


def test_unknown_split():
    with pytest.raises(ValueError, match="validation"):
        build_dataset("digits", split="validation")


@pytest.mark.parametrize("gz", [False, True])
def test_fmnist_reads_idx_files(tmp_path, gz):
    arrays = make_fmnist(tmp_path, gz)
    for split, stem in (("pretrain", "train"), ("train", "train"), ("test", "t10k")):
        ds = build_dataset("fmnist", tmp_path, split)
        assert torch.equal(ds.images[:, 0], torch.from_numpy(arrays[f"{stem}-images-idx3-ubyte"]))
        assert torch.equal(ds.labels, torch.from_numpy(arrays[f"{stem}-labels-idx1-ubyte"]).long())
    image, index, label = ds[5]
    assert image.mode == "L" and np.array_equal(np.asarray(image), arrays["t10k-images-idx3-ubyte"][5])
    assert (index, label) == (5, int(arrays["t10k-labels-idx1-ubyte"][5]))
    assert ds.info == DatasetInfo("fmnist", 10, 1, 28, (0.2860,), (0.3530,))


def test_fmnist_torchvision_layout(tmp_path):
    arrays = make_fmnist(tmp_path / "FashionMNIST" / "raw", gz=False)
    assert len(build_dataset("fmnist", tmp_path, "test")) == len(arrays["t10k-labels-idx1-ubyte"])


def test_fmnist_missing_says_where_and_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "CACHE_DIR", tmp_path / "cache")

    def offline(cache):
        raise OSError("network unreachable")

    monkeypatch.setattr(registry, "_download_fashion_mnist", offline)
    with pytest.raises(FileNotFoundError) as error:
        build_dataset("fmnist", tmp_path / "nowhere", "train")
    message = str(error.value)
    assert str(tmp_path / "nowhere") in message and str(tmp_path / "cache") in message
    assert "apt-get install dataset-fashion-mnist" in message and "data.root" in message
    assert "network unreachable" in message


def test_fmnist_falls_back_to_download(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "CACHE_DIR", tmp_path / "cache")
    calls = []

    def fake_download(cache):
        calls.append(cache)
        make_fmnist(cache / "FashionMNIST" / "raw", gz=True, n_test=7)
        return cache / "FashionMNIST" / "raw"

    monkeypatch.setattr(registry, "_download_fashion_mnist", fake_download)
    assert len(build_dataset("fmnist", tmp_path / "empty", "test")) == 7
    assert calls == [tmp_path / "cache"]
    build_dataset("fmnist", tmp_path / "empty", "test")  # now cached: no second download
    assert len(calls) == 1


def test_idx_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x12\x34\x08\x01\x00\x00\x00\x02ab")
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "bad")
    write_idx(tmp_path / "short", np.zeros((3, 2), dtype=np.uint8))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-1])
    with pytest.raises(ValueError, match="size mismatch"):
        read_idx(tmp_path / "short")
    values = np.arange(-3, 3, dtype=np.int32).reshape(2, 3)
    write_idx(tmp_path / "ints.gz", values)
    assert np.array_equal(read_idx(tmp_path / "ints.gz"), values)


def test_fmnist_mini_is_the_pinned_balanced_subset():
    data = registry.FMNIST_MINI.read_bytes()
    assert len(data) <= 5_000_000
    assert hashlib.sha256(data).hexdigest() == FMNIST_MINI_SHA256
    train, test = build_dataset("fmnist-mini", split="pretrain"), build_dataset("fmnist-mini", split="test")
    assert train.images.shape == (10_000, 1, 28, 28) and test.images.shape == (2_000, 1, 28, 28)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.long
    assert train.labels.bincount().tolist() == [1000] * 10
    assert test.labels.bincount().tolist() == [200] * 10
    assert train.info.name == "fmnist-mini" and train.classes[9] == "Ankle boot"


@pytest.mark.skipif(not (DEBIAN_FMNIST / "t10k-images-idx3-ubyte.gz").is_file(), reason="Debian Fashion-MNIST absent")
def test_fmnist_mini_test_images_come_from_the_official_test_split():
    official = read_idx(DEBIAN_FMNIST / "t10k-images-idx3-ubyte.gz")
    official_labels = read_idx(DEBIAN_FMNIST / "t10k-labels-idx1-ubyte.gz")
    lookup = {img.tobytes(): int(y) for img, y in zip(official, official_labels)}
    test = build_dataset("fmnist-mini", split="test")
    keys = [img.tobytes() for img in test.images[:, 0].numpy()]
    assert len(set(keys)) == len(keys)
    assert all(lookup.get(k) == int(y) for k, y in zip(keys, test.labels))


def test_digits_stratified_split():
    train, test = build_dataset("digits", split="train"), build_dataset("digits", split="test")
    assert (len(train), len(test)) == (1437, 360)
    assert train.images.shape[1:] == (1, 8, 8) and int(train.images.max()) == 255
    assert (test.labels.bincount() - 36).abs().max() <= 1  # 20% of ~180 per class
    both = torch.cat([train.images, test.images]).float() / 255
    assert abs(both.mean().item() - train.info.mean[0]) < 1e-3
    assert abs(both.std().item() - train.info.std[0]) < 1e-3
    assert torch.equal(build_dataset("digits", split="test").images, test.images)  # seeded


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_cifar_pickles(tmp_path, kind):
    fake = make_cifar(tmp_path, kind)
    for split in ("pretrain", "test"):
        ds = build_dataset(kind, tmp_path, split)
        images, labels = fake["test" if split == "test" else "train"]
        assert torch.equal(ds.images, torch.from_numpy(images))
        assert torch.equal(ds.labels, torch.from_numpy(labels))
    assert ds.classes == fake["classes"] and ds.info.num_classes == len(fake["classes"])
    image, index, label = ds[1]
    assert image.mode == "RGB" and image.size == (32, 32)
    assert np.array_equal(np.asarray(image), images[1].transpose(1, 2, 0))  # R, G, B planes -> HWC
    # root may also point at the batches folder itself
    assert len(build_dataset(kind, fake["folder"], "test")) == len(images)


def test_cifar_legacy_pickles(tmp_path):
    """The official files reference numpy.core (pre-2.0 numpy); Python 3 pickles may use bytes keys."""
    fake = make_cifar(tmp_path, "cifar10")
    path = fake["folder"] / "test_batch"
    legacy = path.read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in legacy
    path.write_bytes(legacy)
    assert torch.equal(build_dataset("cifar10", tmp_path, "test").images, torch.from_numpy(fake["test"][0]))
    images, labels = fake["test"]
    with open(path, "wb") as f:
        pickle.dump({b"data": images.reshape(len(images), -1), b"labels": labels.tolist()}, f)
    assert torch.equal(build_dataset("cifar10", tmp_path, "test").labels, torch.from_numpy(labels))


def test_cifar_refuses_code_in_pickles(tmp_path):
    make_cifar(tmp_path, "cifar10")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({"data": Evil(), "labels": []}, f, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        build_dataset("cifar10", tmp_path, "test")
    assert not marker.exists()


def test_cifar_missing_files_named(tmp_path):
    make_cifar(tmp_path, "cifar10")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        build_dataset("cifar10", tmp_path, "train")
    assert len(build_dataset("cifar10", tmp_path, "test")) == 4  # the test split is intact


def test_stl10_binaries(tmp_path):
    fake = make_stl10(tmp_path)
    train = build_dataset("stl10", tmp_path, "train")
    assert torch.equal(train.images, torch.from_numpy(fake["train"]))
    assert torch.equal(train.labels, torch.from_numpy(fake["train_labels"]))
    pretrain = build_dataset("stl10", tmp_path, "pretrain")
    assert torch.equal(pretrain.images, torch.from_numpy(np.concatenate([fake["train"], fake["unlabeled"]])))
    assert pretrain.labels.tolist() == fake["train_labels"].tolist() + [-1] * 4
    assert pretrain[4][2] == -1 and pretrain.classes[0] == "s0"
    test = build_dataset("stl10", tmp_path, "test")
    image, _, label = test[1]
    assert np.array_equal(np.asarray(image), fake["test"][1].transpose(1, 2, 0)) and label == fake["test_labels"][1]
    assert test.info.image_size == 96 and test.info.mean == (0.4467, 0.4398, 0.4066)


def test_stl10_pretrain_needs_unlabeled(tmp_path):
    make_stl10(tmp_path)
    (tmp_path / "stl10_binary" / "unlabeled_X.bin").unlink()
    assert len(build_dataset("stl10", tmp_path, "train")) == 3
    with pytest.raises(FileNotFoundError, match="unlabeled_X.bin"):
        build_dataset("stl10", tmp_path, "pretrain")


def test_stl10_rejects_partial_image(tmp_path):
    make_stl10(tmp_path)
    path = tmp_path / "stl10_binary" / "test_X.bin"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ValueError, match="not a multiple"):
        build_dataset("stl10", tmp_path, "test")


def test_array_dataset_transform_applied():
    ds = build_dataset("digits", split="test", transform=lambda im: np.asarray(im).sum())
    image, index, label = ds[3]
    assert image == int(ds.images[3].sum()) and index == 3 and label == int(ds.labels[3])
    assert isinstance(build_dataset("digits", split="test")[0][0], Image.Image)


def test_download_fetches_through_torchvision_only_when_files_are_missing(tmp_path, monkeypatch):
    """download=True calls torchvision's dataset class on the root (STL-10 with train+unlabeled), once a file
    is missing, then reads torchvision's layout; without download a missing file is named."""
    import torchvision.datasets

    calls = []

    def fake(kind, make):
        def fetch(root, download=False, **kwargs):
            calls.append((kind, root, download, kwargs))
            make(root)
        return fetch

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake("CIFAR10", lambda root: make_cifar(root, "cifar10")))
    monkeypatch.setattr(torchvision.datasets, "STL10", fake("STL10", make_stl10))
    with pytest.raises(FileNotFoundError, match=r"stl10: test_X.bin, test_y.bin not found .*stl10_binary/; pass"):
        build_dataset("stl10", tmp_path / "stl", "test")
    assert len(build_dataset("cifar10", tmp_path / "cifar", "test", download=True)) == 4
    assert len(build_dataset("stl10", tmp_path / "stl", "pretrain", download=True)) == 7
    assert len(build_dataset("stl10", tmp_path / "stl", "test", download=True)) == 2  # present: no second fetch
    assert calls == [("CIFAR10", tmp_path / "cifar", True, {}),
                     ("STL10", tmp_path / "stl", True, {"split": "train+unlabeled"})]
