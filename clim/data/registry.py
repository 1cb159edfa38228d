"""Dataset registry: ``build_dataset(name, root, split)`` -> dataset of ``(image, index, label)``.

Splits: ``pretrain`` (images for self-supervised training; STL-10: train + unlabeled), ``train`` (the labelled training
set: kNN bank, linear train set) and ``test``. Every dataset has ``.info`` (DatasetInfo), ``.labels`` (long [N], -1 =
unknown) and ``.classes`` (names or None); array-backed ones also ``.images`` (uint8 [N, C, H, W])."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clim.data.arrays import ArrayDataset, read_cifar_batches, read_cifar_meta, read_stl10_images, read_stl10_labels
from clim.data.idx import read_idx
from clim.data.imagefolder import ImageFolderDataset, scan_image_folder

__all__ = ["BUILDERS", "DatasetInfo", "SPLITS", "build_dataset", "dataset_names"]

SPLITS = ("pretrain", "train", "test")
CACHE_DIR = Path.home() / ".cache" / "clim"  # downloads and the default root of cifar / stl10
FMNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist package
FMNIST_MINI = Path(__file__).resolve().parent / "embedded" / "fmnist_mini.npz"


@dataclass(frozen=True)
class DatasetInfo:
    """What the rest of the code needs to know about a dataset without touching its images.

    ``image_size``: the native side length; for imagefolder (arbitrary sizes) the configured one. ``fixed_size``:
    every image has ``image_size`` already (False for imagefolder), which decides between resizing and resize +
    centre crop at evaluation."""

    name: str
    num_classes: int | None
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    fixed_size: bool = True


@dataclass(frozen=True)
class _Request:
    name: str
    root: Path | None
    split: str
    transform: Callable | None
    image_size: int | None
    download: bool
    verify: bool


FMNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                  "Ankle boot")
_FMNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                 "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _find_fmnist(folders: list[Path], split: str) -> list[Path] | None:
    """The (images, labels) idx files of a split, plain or .gz, both from the same folder, or None."""
    for folder in folders:
        found = [next((folder / name for name in (stem, stem + ".gz") if (folder / name).is_file()), None)
                 for stem in _FMNIST_FILES[split]]
        if all(found):
            return found
    return None


def _download_fashion_mnist(cache: Path) -> Path:
    """Fetch the idx files with torchvision into ``cache``; returns the folder holding them."""
    from torchvision.datasets import FashionMNIST

    for train in (True, False):
        FashionMNIST(cache, train=train, download=True)
    return cache / "FashionMNIST" / "raw"


def _fmnist_files(req: _Request, split: str) -> list[Path]:
    base = req.root or FMNIST_ROOT
    folders = [base, base / "FashionMNIST" / "raw", CACHE_DIR / "FashionMNIST" / "raw"]
    files = _find_fmnist(folders, split)
    if files is None:
        try:
            files = _find_fmnist([_download_fashion_mnist(CACHE_DIR)], split)
        except Exception as error:  # offline, proxy, disk: the message below says what to do
            looked = ", ".join(str(f) for f in folders)
            raise FileNotFoundError(
                f"fmnist: {'/'.join(_FMNIST_FILES[split])}(.gz) not found in {looked}, and downloading into "
                f"{CACHE_DIR} failed ({type(error).__name__}: {error}). Install the files with "
                "`apt-get install dataset-fashion-mnist` or pass data.root=DIR holding the idx files "
                "(or use dataset fmnist-mini, which is embedded)."
            ) from error
        if files is None:
            raise FileNotFoundError(f"fmnist: download into {CACHE_DIR} did not produce the idx files")
    return files


def _build_fmnist(req: _Request) -> ArrayDataset:
    """fmnist from its idx files; fmnist-mini from the embedded subset (10,000 train + 2,000 test, stratified;
    ``root`` is ignored)."""
    split = "test" if req.split == "test" else "train"
    if req.name == "fmnist-mini":
        with np.load(FMNIST_MINI) as data:
            images, labels = data[f"{split}_images"], data[f"{split}_labels"]
    else:
        images, labels = map(read_idx, _fmnist_files(req, split))
    info = DatasetInfo(req.name, 10, 1, 28, (0.2860,), (0.3530,))
    return ArrayDataset(images[:, None], labels.astype(np.int64), info, req.transform, FMNIST_CLASSES)


def _build_digits(req: _Request) -> ArrayDataset:
    """sklearn's 8x8 digits (bundled with sklearn), stratified 80/20 split with seed 0."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.rint(digits.images * (255 / 16)).astype(np.uint8)[:, None]
    train_idx, test_idx = train_test_split(np.arange(len(images)), test_size=0.2, stratify=digits.target,
                                           random_state=0)
    idx = np.sort(test_idx if req.split == "test" else train_idx)
    # mean / std of all 1,797 images after scaling 0..16 -> 0..255 (fixed, so both splits agree)
    info = DatasetInfo("digits", 10, 1, 8, (0.3053,), (0.3759,))
    return ArrayDataset(images[idx], digits.target[idx].astype(np.int64), info, req.transform,
                        [str(d) for d in range(10)])


@dataclass(frozen=True)
class _CifarSpec:
    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    label_key: str
    meta: tuple[str, str]  # (file, key of the class names)
    info: DatasetInfo


_CIFAR = {
    "cifar10": _CifarSpec("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                          "labels", ("batches.meta", "label_names"),
                          DatasetInfo("cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))),
    "cifar100": _CifarSpec("cifar-100-python", ("train",), ("test",), "fine_labels", ("meta", "fine_label_names"),
                           DatasetInfo("cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))),
}


def _torchvision_folder(req: _Request, name: str, needed: Sequence[str], torchvision_class: str, what: str = "",
                        **kwargs) -> Path:
    """The folder holding ``needed`` (raises when one is missing): ``root/name`` (torchvision's layout), or
    ``root`` itself when it already is that folder; with ``req.download`` torchvision fetches missing files."""
    root = req.root or CACHE_DIR
    folder = root if not (root / name).is_dir() and (root / needed[0]).is_file() else root / name
    if req.download and not all((folder / f).is_file() for f in needed):
        import torchvision.datasets

        getattr(torchvision.datasets, torchvision_class)(root, download=True, **kwargs)
        folder = root / name
    missing = [f for f in needed if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{req.name}: {', '.join(missing)} not found in {folder}. Expected torchvision's "
                                f"layout <root>/{name}/{what}; pass data.root=DIR, or download=True where a network "
                                "exists.")
    return folder


def _build_cifar(req: _Request) -> ArrayDataset:
    spec = _CIFAR[req.name]
    files = spec.test if req.split == "test" else spec.train
    folder = _torchvision_folder(req, spec.folder, files, req.name.upper(), " (python pickles)")  # CIFAR10 / 100
    images, labels = read_cifar_batches(folder, files, spec.label_key)
    return ArrayDataset(images, labels, spec.info, req.transform, read_cifar_meta(folder / spec.meta[0], spec.meta[1]))


def _build_stl10(req: _Request) -> ArrayDataset:
    """Binaries read directly (torchvision layout ``<root>/stl10_binary``); pretrain adds the
    100,000 unlabelled images (label -1) after the 5,000 labelled train images."""
    prefix = "test" if req.split == "test" else "train"
    data_files = [f"{prefix}_X.bin"] + (["unlabeled_X.bin"] if req.split == "pretrain" else [])
    needed = data_files + [f"{prefix}_y.bin"]
    folder = _torchvision_folder(req, "stl10_binary", needed, "STL10", split="train+unlabeled")
    images = read_stl10_images([folder / f for f in data_files])
    labels = np.full(len(images), -1, dtype=np.int64)
    known = read_stl10_labels(folder / f"{prefix}_y.bin")
    labels[:len(known)] = known
    names_file = folder / "class_names.txt"
    classes = names_file.read_text().split() if names_file.is_file() else None
    info = DatasetInfo("stl10", 10, 3, 96, (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713))
    return ArrayDataset(images, labels, info, req.transform, classes)


def _build_glyphs(req: _Request) -> ArrayDataset:
    """The folder ``scripts/build_glyphs.py`` wrote (clim.data.glyphs; default root ~/.cache/clim/glyphs, the
    script's default output): pretrain and train are its train split (the training fonts), test its test split."""
    from clim.data.glyphs import load_glyphs

    root = req.root or CACHE_DIR / "glyphs"
    images, labels, manifest = load_glyphs(root, "test" if req.split == "test" else "train")
    info = DatasetInfo("glyphs", int(manifest["num_classes"]), 1, int(manifest["image_size"]),
                       tuple(manifest["mean"]), tuple(manifest["std"]))
    return ArrayDataset(images[:, None], labels, info, req.transform, manifest["classes"])


def _build_imagefolder(req: _Request) -> ImageFolderDataset:
    if req.root is None:
        raise ValueError("imagefolder needs a root folder (data.root)")
    scan = scan_image_folder(req.root, req.split, verify=req.verify)
    info = DatasetInfo("imagefolder", len(scan.classes) if scan.classes else None, 3, req.image_size or 224,
                       (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), fixed_size=False)
    return ImageFolderDataset(scan, info, req.transform)


BUILDERS: dict[str, Callable[[_Request], object]] = {
    "fmnist": _build_fmnist,
    "fmnist-mini": _build_fmnist,
    "digits": _build_digits,
    "cifar10": _build_cifar,
    "cifar100": _build_cifar,
    "stl10": _build_stl10,
    "glyphs": _build_glyphs,
    "imagefolder": _build_imagefolder,
}


def dataset_names() -> list[str]:
    return sorted(BUILDERS)


def build_dataset(name: str, root: str | Path | None = None, split: str = "pretrain",
                  transform: Callable | None = None, image_size: int | None = None, *,
                  download: bool = False, verify: bool = True):
    """Build a dataset whose items are ``(transform(PIL image), index, label)``.

    ``image_size`` only matters for imagefolder (recorded in ``info``; default 224): array datasets report their
    native size. ``download`` lets cifar10/cifar100/stl10 fetch missing files through torchvision (fmnist always
    falls back to a download into ~/.cache/clim). ``verify=False`` skips imagefolder's per-file check for folders
    too large to scan."""
    key = name.lower()
    if key not in BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(dataset_names())}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    request = _Request(key, Path(root).expanduser() if root is not None else None, split, transform, image_size,
                       download, verify)
    return BUILDERS[key](request)
