"""Folders of image files: ImageNet layout, class folders directly, or a flat unlabelled folder.

Layouts (``root`` is ``data.root``): ``root/train/<class>/**/*`` and ``root/val/<class>/**/*`` (``root/test`` is
accepted for val); ``root/<class>/**/*``, the train split only; ``root/*.jpg`` with no class folders, unlabelled
(labels -1), split ``pretrain`` only. Symlinked folders are followed once by real path (:class:`_LinkGuard`).

Broken files are found once, at construction (extension, then :func:`check_image`), and reported in one line on stderr
instead of crashing an epoch hours later; one that still fails to decode in a worker is replaced by the next decodable
image (``ImageFolderDataset.__getitem__``). The check opens every file (about 2 minutes for ImageNet's 1.28M), so its
verdicts are cached in ``$CLIM_CACHE/index`` (default ``~/.cache/clim/index``), one JSON index per split folder keyed by
its absolute path and a fingerprint of the listing (:func:`_fingerprint`): an unchanged folder is only listed, a changed
one checked again. Rejected files are re-checked at every start (a repaired one comes back)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from clim.data.transforms import ensure_mode

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderDataset", "ImageFolderScan", "check_image", "index_cache_dir",
           "scan_image_folder"]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".tif", ".tiff",
                              ".webp", ".gif"})
_LISTED = 20  # skipped paths listed under the report line; the rest are counted
_FALLBACK_TRIES = 64  # consecutive undecodable files tolerated before __getitem__ gives up
_VERIFY_BATCH = 8192  # files per thread-pool batch, so huge folders do not queue a million futures
_INDEX_VERSION = 1  # bump when check_image's verdicts change: older indexes are then ignored
_OUTSIDE = "file outside the class folders"
_NOT_IMAGE = "not an image file extension"
_NOT_TRAIN_CLASS = "class folder absent from the train split"
_REPORTED: set[tuple] = set()  # what this process has said about a folder (see _log_once)


def _has_image_ext(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


class _LinkGuard:
    """Which symlinked folders a scan follows: one whose real path is new, neither inside nor above a folder the
    scan covers already (the split folder, its class folders, links followed before). A loop (``c0/loop -> .``)
    or a second way into the same files (``c0/more -> ../c1``) is recorded in ``skipped`` as ``(link, real path)``."""

    def __init__(self, *folders: Path):
        self.roots = [Path(os.path.realpath(folder)) for folder in folders]
        self.skipped: list[tuple[str, str]] = []

    def follow(self, link: str) -> bool:
        real = Path(os.path.realpath(link))
        if any(real == root or real.is_relative_to(root) or root.is_relative_to(real) for root in self.roots):
            self.skipped.append((link, str(real)))
            return False
        self.roots.append(real)
        return True


def _walk(folder: Path, guard: _LinkGuard | None = None) -> Iterator[Path]:
    """Every non-hidden file under ``folder``, in a deterministic (sorted) order; symlinked folders
    are followed as ``guard`` allows (by default one rooted at ``folder``: loops are cut)."""
    guard = guard or _LinkGuard(folder)
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in sorted(dirnames) if not d.startswith(".")
                       and (not os.path.islink(os.path.join(dirpath, d)) or guard.follow(os.path.join(dirpath, d)))]
        yield from (Path(dirpath, name) for name in sorted(filenames) if not name.startswith("."))


def _has_images(folder: Path, *covered: Path) -> bool:
    """Whether ``folder`` holds an image file that a scan covering ``covered`` too would list."""
    return any(_has_image_ext(p.name) for p in _walk(folder, _LinkGuard(folder, *covered)))


def _children(folder: Path, dirs: bool) -> list[Path]:
    return sorted(p for p in folder.iterdir() if (p.is_dir() if dirs else p.is_file()) and not p.name.startswith("."))


def check_image(path: str | os.PathLike) -> str | None:
    """None if ``path`` looks like a decodable image, else the reason it does not.

    ``Image.verify`` parses headers (and checks PNG CRCs) without decoding, ~30 us per JPEG. It cannot see a
    truncated JPEG, so a JPEG not ending with the end-of-image marker is fully decoded (kept if it decodes)."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return "empty file"
        with Image.open(path) as image:
            fmt = image.format
            image.verify()
        if fmt == "JPEG":
            with open(path, "rb") as f:
                f.seek(-2, os.SEEK_END)
                end = f.read(2)
            if end != b"\xff\xd9":
                with Image.open(path) as image:
                    image.load()
    except Exception as error:  # PIL signals bad data with many types (OSError, SyntaxError, struct.error, ...)
        return f"{type(error).__name__}: {error}"
    return None


@dataclass
class ImageFolderScan:
    """Result of scanning one split: files relative to ``folder``, their labels, what was skipped."""

    folder: Path
    files: list[str]
    labels: list[int]
    classes: list[str] | None  # None for a flat, unlabelled folder
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    empty_classes: list[str] = field(default_factory=list)
    # (link, real path) of the symlinked folders not followed, their files being listed already
    skipped_links: list[tuple[str, str]] = field(default_factory=list)


def _split_folder(root: Path, split: str) -> tuple[Path, Path]:
    """-> (folder of the requested split, folder that defines the class ids = the train folder)."""
    train = root / "train"
    if split in ("pretrain", "train"):
        folder = train if train.is_dir() else root
        return folder, folder
    if not train.is_dir():
        raise FileNotFoundError(f"imagefolder: split '{split}' needs {train} and {root / 'val'} "
                                f"(class folders in each); {root} has no 'train' folder")
    for name in ("val", "test"):
        if (root / name).is_dir():
            return root / name, train
    raise FileNotFoundError(f"imagefolder: no test split: neither {root / 'val'} nor {root / 'test'} exists")


def index_cache_dir() -> Path:
    base = os.environ.get("CLIM_CACHE")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "clim") / "index"


def _log_once(key: tuple, message: str) -> None:
    """``message`` on stderr unless this process said it already: the trainer (pretrain split, then its kNN
    monitor's train split) and the evaluation holdout (train, then test) scan the same folder twice."""
    if key not in _REPORTED:
        _REPORTED.add(key)
        print(message, file=sys.stderr, flush=True)


def _relative(folder: Path, paths: list[Path]) -> list[str]:
    """Paths relative to ``folder`` (string slicing: os.path.relpath costs seconds for a million files)."""
    prefix = os.path.join(str(folder), "")
    return [name[len(prefix):] if name.startswith(prefix) else os.path.relpath(name, folder)
            for name in map(str, paths)]


def _fingerprint(folder: Path, names: list[str]) -> str:
    """sha256 of the image listing (relative to ``folder``) and of (mtime, size) of every directory holding an
    image: a directory's mtime changes with every entry added, removed or renamed in it (one ``stat`` each)."""
    digest = hashlib.sha256(f"clim-index-v{_INDEX_VERSION}\0{len(names)}\0".encode())
    directories = {""}
    for name in names:
        digest.update(os.fsencode(name) + b"\0")
        directories.add(os.path.dirname(name))
    for directory in sorted(directories):
        stat = os.stat(os.path.join(folder, directory))
        digest.update(os.fsencode(directory) + f"\0{stat.st_mtime_ns}\0{stat.st_size}\0".encode())
    return digest.hexdigest()


def _verify_with_index(folder: Path, paths: list[Path], threads: int) -> list[str | None]:
    """check_image's verdict for every path (all under ``folder``), from the folder's cached index when
    its fingerprint matches, else by checking every file (and caching the verdicts)."""
    names = _relative(folder, paths)
    fingerprint = _fingerprint(folder, names)
    key = folder.resolve()
    index_file = index_cache_dir() / (hashlib.sha256(os.fsencode(str(key))).hexdigest()[:32] + ".json")
    try:
        index = json.loads(index_file.read_text())
    except (OSError, ValueError):
        index = None  # absent, unreadable or half-written: verify again
    if isinstance(index, dict) and (index.get("version"), index.get("folder"), index.get("fingerprint")) == (
            _INDEX_VERSION, str(key), fingerprint):
        rejected = dict(index["rejected"])
        reasons = [rejected.get(name) for name in names]
        recheck = [i for i, reason in enumerate(reasons) if reason is not None]
        for i in recheck:  # few: a file repaired since comes back
            reasons[i] = check_image(paths[i])
        message = (f"dataset index: reused the cached check of {len(paths)} image files ({key}, checked "
                   f"{index.get('created', '?')}; {sum(r is not None for r in reasons)} unreadable after re-checking "
                   f"{len(recheck)}; index {index_file})")
    else:
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=threads) as pool:  # check_image is file I/O bound
            reasons = list(chain.from_iterable(pool.map(check_image, paths[lo:lo + _VERIFY_BATCH])
                                               for lo in range(0, len(paths), _VERIFY_BATCH)))
        rejected = [[name, reason] for name, reason in zip(names, reasons) if reason is not None]
        try:  # an atomic write: several ranks may scan at once
            index_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = index_file.with_name(f"{index_file.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({
                "version": _INDEX_VERSION, "folder": str(key), "fingerprint": fingerprint, "files": len(paths),
                "created": time.strftime("%Y-%m-%d %H:%M:%S"), "rejected": rejected}))
            os.replace(tmp, index_file)
            cached = f"cached in {index_file}"
        except OSError as error:  # a read-only home
            cached = f"not cached ({type(error).__name__}: {error})"
        message = (f"dataset index: checked {len(paths)} image files in {time.perf_counter() - started:.1f} s "
                   f"({key}, {len(rejected)} unreadable); {cached}")
    _log_once(("index", str(key), fingerprint), message)
    return reasons


def scan_image_folder(root: str | os.PathLike, split: str = "pretrain", verify: bool = True,
                      threads: int | None = None) -> ImageFolderScan:
    """Find the split's images and labels; report everything skipped in one line (once per process).

    ``verify=True`` reuses the cached verification of an unchanged folder (see the module docstring);
    ``verify=False`` keeps every file with an image extension (broken ones are then replaced at load time)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"imagefolder root not found: {root}")
    folder, train_folder = _split_folder(root, split)
    has_images = {sub.name: _has_images(sub, train_folder) for sub in _children(train_folder, dirs=True)}
    classes = [name for name, has in has_images.items() if has]  # sorted; a folder without images is no class
    skipped: list[tuple[str, str]] = []
    candidates: list[tuple[Path, int]] = []

    guard = _LinkGuard(folder, *_children(folder, dirs=True))  # every class folder is listed where it is, once
    if classes:
        class_to_idx = {name: i for i, name in enumerate(classes)}
        for sub in _children(folder, dirs=True):
            if sub.name in class_to_idx:
                candidates += [(p, class_to_idx[sub.name]) for p in _walk(sub, guard)]
            elif folder != train_folder and _has_images(sub, folder):
                skipped.append((str(sub), _NOT_TRAIN_CLASS))
        skipped += [(str(p), _OUTSIDE) for p in _children(folder, dirs=False)]
    else:
        if split != "pretrain":
            raise ValueError(f"imagefolder: {train_folder} has images but no class folders, so no labels: it serves "
                             f"pretraining only, not the labelled '{split}' split; to evaluate, set data.root to a "
                             f"folder of class folders (DIR/<class>/*.jpg, or DIR/train/<class>/ and "
                             f"DIR/val/<class>/), e.g. --set data.root=DIR")
        candidates = [(p, -1) for p in _children(folder, dirs=False)]

    images = [(p, y) for p, y in candidates if _has_image_ext(p.name)]
    skipped += [(str(p), _NOT_IMAGE) for p, _ in candidates if not _has_image_ext(p.name)]
    if verify and images:
        reasons = _verify_with_index(folder, [p for p, _ in images], threads or min(32, 4 * (os.cpu_count() or 1)))
        skipped += [(str(p), r) for (p, _), r in zip(images, reasons) if r is not None]
        images = [item for item, r in zip(images, reasons) if r is None]
    if not images:
        raise FileNotFoundError(f"imagefolder: no readable images in {folder}"
                                + (f" ({len(skipped)} files skipped, e.g. {skipped[0]})" if skipped else ""))

    scan = ImageFolderScan(folder, _relative(folder, [p for p, _ in images]), [y for _, y in images], classes or None,
                           skipped, [name for name, has in has_images.items() if not has], guard.skipped)
    _report_skipped(scan)
    return scan


def _report_skipped(scan: ImageFolderScan) -> None:
    """One line that counts what the scan left out (the counts add up to the files found), then the
    first ``_LISTED`` paths; said once per process for the same folder and result."""
    files = [(path, reason) for path, reason in scan.skipped if reason != _NOT_TRAIN_CLASS]
    folders = [Path(path).name for path, reason in scan.skipped if reason == _NOT_TRAIN_CLASS]
    kinds = Counter(reason if reason in (_OUTSIDE, _NOT_IMAGE) else "unreadable" for _, reason in files)
    counts = ", ".join(f"{kinds[kind]} {label}" for kind, label in (
        ("unreadable", "unreadable images"), (_NOT_IMAGE, "without an image extension"),
        (_OUTSIDE, "outside the class folders")) if kinds[kind])
    links = [f"{os.path.relpath(link, scan.folder)} -> {real}" for link, real in scan.skipped_links[:_LISTED]]
    more = len(scan.skipped_links) - len(links)
    parts = [part for found, part in (
        (files, f"skipped {len(files)} of {len(scan.files) + len(files)} files ({counts})"),
        (folders, f"skipped {len(folders)} class folder(s) absent from the train split: {', '.join(folders)}"),
        (scan.empty_classes, f"ignored {len(scan.empty_classes)} class folder(s) without images: "
                             f"{', '.join(scan.empty_classes)}"),
        (links, f"did not follow {len(scan.skipped_links)} symlinked folder(s) whose files are listed once already "
                f"(a loop, or a second way into a scanned folder): {', '.join(links)}"
                + (f" and {more} more" if more else ""))) if found]
    if not parts:
        return
    advice = ("Repair or remove them to use them (or to silence this)" if files or folders or scan.empty_classes
              else "Remove those links to silence this")
    lines = [f"imagefolder {scan.folder}: using {len(scan.files)} images; " + "; ".join(parts)
             + f". {advice}" + (":" if files else "")]
    lines += [f"  {path} ({reason})" for path, reason in files[:_LISTED]]
    lines += [f"  ... and {len(files) - _LISTED} more"] if len(files) > _LISTED else []
    _log_once(("skipped", str(scan.folder)) + tuple(map(tuple, scan.skipped)) + tuple(scan.empty_classes)
              + tuple(map(tuple, scan.skipped_links)), "\n".join(lines))


class ImageFolderDataset(Dataset):
    """``dataset[i] -> (transform(RGB PIL image), i, label)`` over a scanned folder.

    Paths are kept in one numpy bytes array rather than a list of str: DataLoader workers forked from the main
    process would otherwise copy every string page as reference counts change."""

    def __init__(self, scan: ImageFolderScan, info, transform: Callable | None = None):
        self.root, self.classes, self.skipped = scan.folder, scan.classes, scan.skipped
        self.info, self.transform = info, transform
        self._files = np.array([os.fsencode(f) for f in scan.files])
        self.labels = torch.tensor(scan.labels, dtype=torch.long)
        self._warned_decode = False

    def __len__(self) -> int:
        return len(self._files)

    def path(self, index: int) -> Path:
        return self.root / os.fsdecode(self._files[index])

    def __getitem__(self, index):
        """A file that fails to decode (it passed the scan, or changed since) is replaced by the next decodable one, so
        one bad file cannot stop training. The index and label stay those of ``index``: index-keyed tables (positives,
        features) remain complete, at the cost of one mislabelled image per bad file. One warning per worker process."""
        index = int(index)
        for step in range(min(_FALLBACK_TRIES, len(self))):
            candidate = (index + step) % len(self)
            try:
                with Image.open(self.path(candidate)) as image:
                    image.load()
                    image = ensure_mode(image, self.info.in_channels)
                break
            except Exception as error:  # any decoding failure; see check_image
                if not self._warned_decode:
                    self._warned_decode = True
                    warnings.warn(f"imagefolder: cannot decode {self.path(candidate)} ({type(error).__name__}: "
                                  f"{error}); using the next decodable image instead (further failures in "
                                  "this process are handled silently)", stacklevel=2)
        else:
            raise RuntimeError(f"imagefolder: {min(_FALLBACK_TRIES, len(self))} consecutive files from "
                               f"{self.path(index)} on cannot be decoded")
        if self.transform is not None:
            image = self.transform(image)
        return image, index, int(self.labels[index])

    def __repr__(self) -> str:
        classes = len(self.classes) if self.classes else "unlabelled"
        return f"{type(self).__name__}({self.root}, n={len(self)}, classes={classes})"
