"""Writers of small fake dataset files in each on-disk format the data package reads.

A uniquely named module (not conftest) so that tests elsewhere with their own conftest cannot shadow it.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def write_idx(path: Path, array: np.ndarray) -> None:
    """idx format: 0, 0, type code, ndim, big-endian uint32 dims, big-endian data."""
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


def make_fmnist(folder: Path, gz: bool, n_train: int = 30, n_test: int = 12, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for stem, array in arrays.items():
        write_idx(folder / (stem + (".gz" if gz else "")), array)
    return arrays


def _dump(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the official files are protocol-2 (Python 2) pickles


def make_cifar(root: Path, kind: str, per_file: int = 4, seed: int = 0) -> dict:
    """torchvision's layout: cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta} or
    cifar-100-python/{train,test,meta}; images stored as rows of 3072 bytes (R, G, B planes)."""
    rng = np.random.default_rng(seed)
    if kind == "cifar10":
        folder, test, key = root / "cifar-10-batches-py", ["test_batch"], "labels"
        train = [f"data_batch_{i}" for i in range(1, 6)]
        meta, names = ("batches.meta", "label_names"), [f"c10_{i}" for i in range(10)]
        n_classes = 10
    else:
        folder, train, test, key = root / "cifar-100-python", ["train"], ["test"], "fine_labels"
        meta, names = ("meta", "fine_label_names"), [f"c100_{i}" for i in range(100)]
        n_classes = 100
    folder.mkdir(parents=True)
    out = {}
    for split, files in (("train", train), ("test", test)):
        data, labels = [], []
        for name in files:
            d = rng.integers(0, 256, (per_file, 3072), dtype=np.uint8)
            y = rng.integers(0, n_classes, per_file).tolist()
            _dump(folder / name, {"batch_label": name, key: y, "data": d, "filenames": ["x.png"] * per_file})
            data.append(d)
            labels += y
        out[split] = (np.concatenate(data).reshape(-1, 3, 32, 32), np.array(labels))
    _dump(folder / meta[0], {meta[1]: names})
    out["classes"] = names
    out["folder"] = folder
    return out


def make_stl10(root: Path, n_train: int = 3, n_test: int = 2, n_unlabeled: int = 4, seed: int = 0) -> dict:
    """stl10_binary/*_X.bin: per image, 3 channels of 96x96 stored column-major; *_y.bin: 1..10."""
    rng = np.random.default_rng(seed)
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test), ("unlabeled", n_unlabeled)):
        images = rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8)
        (folder / f"{split}_X.bin").write_bytes(np.ascontiguousarray(images.transpose(0, 1, 3, 2)).tobytes())
        out[split] = images
        if split != "unlabeled":
            labels = rng.integers(1, 11, n).astype(np.uint8)
            (folder / f"{split}_y.bin").write_bytes(labels.tobytes())
            out[split + "_labels"] = labels.astype(np.int64) - 1
    (folder / "class_names.txt").write_text("\n".join(f"s{i}" for i in range(10)) + "\n")
    return out


def save_image(path: Path, image: Image.Image, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def rgb(seed: int, size=(20, 16)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
