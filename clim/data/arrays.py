"""In-memory datasets (fmnist, digits, cifar, stl10) and the readers for their on-disk formats.

All of them hold one uint8 tensor [N, C, H, W] and one label tensor, so the batched augmentation path can index
``dataset.images`` directly, while ``dataset[i]`` serves the per-sample path. The CIFAR pickles and STL-10 binaries are
read here rather than through torchvision, whose classes insist on the official files' md5 sums and would load the whole
file via Python objects."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

__all__ = ["ArrayDataset", "read_cifar_batches", "read_cifar_meta", "read_stl10_images", "read_stl10_labels"]


class ArrayDataset(Dataset):
    """``images`` uint8 [N, C, H, W] (C = 1 or 3), ``labels`` long [N] (-1 = unknown);
    ``dataset[i] -> (transform(PIL image), i, label)``, the PIL image of mode L or RGB."""

    def __init__(self, images, labels, info, transform: Callable | None = None,
                 classes: Sequence[str] | None = None):
        images = torch.as_tensor(images)
        labels = torch.as_tensor(labels, dtype=torch.long)
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"images must be uint8 [N, C, H, W] with C in (1, 3), got "
                             f"{images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels shape {tuple(labels.shape)} does not match {images.shape[0]} images")
        if images.shape[1] != info.in_channels:
            raise ValueError(f"{info.name}: images have {images.shape[1]} channels, info says {info.in_channels}")
        self.images, self.labels, self.info, self.transform = images.contiguous(), labels, info, transform
        self.classes = list(classes) if classes is not None else None

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index):
        index = int(index)
        array = self.images[index].numpy()
        image = Image.fromarray(array[0] if array.shape[0] == 1 else np.ascontiguousarray(array.transpose(1, 2, 0)))
        if self.transform is not None:
            image = self.transform(image)
        return image, index, int(self.labels[index])

    def __repr__(self) -> str:
        labelled = int((self.labels >= 0).sum())
        return (f"{type(self).__name__}({self.info.name}, n={len(self)}, labelled={labelled}, "
                f"shape={tuple(self.images.shape[1:])})")


class _SafeUnpickler(pickle.Unpickler):
    """Unpickle only plain containers and numpy arrays: a dataset file must not be able to run code."""

    _ALLOWED = {"_reconstruct", "_frombuffer", "ndarray", "dtype", "scalar"}

    def find_class(self, module: str, name: str):
        if (module.split(".")[0] == "numpy" and name in self._ALLOWED) or (module, name) == ("_codecs", "encode"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset pickle")


def _load_pickle(path: Path) -> dict:
    with open(path, "rb") as f:
        # latin1: the official files are Python 2 pickles with byte strings inside the arrays.
        entry = _SafeUnpickler(f, encoding="latin1").load()
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: expected a dict, got {type(entry).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}


def read_cifar_batches(folder: str | os.PathLike, files: Sequence[str], label_key: str):
    """Concatenate CIFAR python batches -> (uint8 [N, 3, 32, 32], int64 [N])."""
    images, labels = [], []
    for name in files:
        path = Path(folder) / name
        if not path.is_file():
            raise FileNotFoundError(f"CIFAR batch not found: {path}")
        entry = _load_pickle(path)
        if "data" not in entry or label_key not in entry:
            raise ValueError(f"{path}: missing 'data' or '{label_key}' (keys: {sorted(entry)})")
        data = np.asarray(entry["data"], dtype=np.uint8)
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(np.asarray(entry[label_key], dtype=np.int64))
        if len(labels[-1]) != len(images[-1]):
            raise ValueError(f"{path}: {len(images[-1])} images but {len(labels[-1])} labels")
    return np.concatenate(images), np.concatenate(labels)


def read_cifar_meta(path: str | os.PathLike, key: str) -> list[str] | None:
    """Class names from batches.meta / meta, or None when the file is absent (names are optional)."""
    path = Path(path)
    return [str(n) for n in _load_pickle(path)[key]] if path.is_file() else None


_STL10_SHAPE = (3, 96, 96)
_STL10_BYTES = int(np.prod(_STL10_SHAPE))


def _stl10_count(path: Path) -> int:
    if not path.is_file():
        raise FileNotFoundError(f"STL-10 file not found: {path}")
    size = path.stat().st_size
    if size % _STL10_BYTES:
        raise ValueError(f"{path}: size {size} is not a multiple of one 96x96x3 image ({_STL10_BYTES} bytes)")
    return size // _STL10_BYTES


def read_stl10_images(paths: Sequence[str | os.PathLike], chunk: int = 4096) -> np.ndarray:
    """Read STL-10 ``*_X.bin`` files (each channel stored column-major) into one uint8 [N, 3, 96, 96] array,
    filled chunk by chunk so that peak memory stays near the final size (train + unlabeled is 2.9 GB)."""
    paths = [Path(p) for p in paths]
    counts = [_stl10_count(p) for p in paths]
    out = np.empty((sum(counts), *_STL10_SHAPE), dtype=np.uint8)
    start = 0
    for path, count in zip(paths, counts):
        if count == 0:  # np.memmap cannot map an empty file
            continue
        raw = np.memmap(path, dtype=np.uint8, mode="r", shape=(count, *_STL10_SHAPE))
        for lo in range(0, count, chunk):
            block = raw[lo:lo + chunk]
            out[start + lo:start + lo + len(block)] = block.transpose(0, 1, 3, 2)
        start += count
        del raw
    return out


def read_stl10_labels(path: str | os.PathLike) -> np.ndarray:
    """Read an STL-10 ``*_y.bin`` file (one byte per image, classes 1..10) -> int64 0..9."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"STL-10 file not found: {path}")
    labels = np.fromfile(path, dtype=np.uint8).astype(np.int64) - 1
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path}: labels outside 1..10")
    return labels
