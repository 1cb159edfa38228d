"""Build clim/data/embedded/fmnist_mini.npz, the Fashion-MNIST subset shipped inside the package.

A stratified, seeded subset (1,000 train + 200 test images per class) lets tests, demos and CI
run without any download. Usage:

    python scripts/build_fmnist_mini.py [--source /usr/share/datasets/fashion-mnist] [--out PATH]

The file is an ordinary .npz (np.load reads it) whose members are LZMA- rather than
deflate-compressed: np.savez_compressed gives 5.3 MB, over the 5 MB budget for a file committed to
git; LZMA gives 4.5 MB. Members carry a fixed timestamp, so a rebuild is byte-identical.
Prints the file size and sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import zipfile
from pathlib import Path

import numpy as np

from clim.data.idx import read_idx

DEFAULT_SOURCE = "/usr/share/datasets/fashion-mnist"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "clim" / "data" / "embedded" / "fmnist_mini.npz"
KEYS = ("train_images", "train_labels", "test_images", "test_labels")


def stratified_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Pick `per_class` indices of every class without replacement, returned in ascending order."""
    picks = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < per_class:
            raise ValueError(f"class {c} has {len(members)} images, {per_class} requested")
        picks.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(picks))


def build_subset(train_images, train_labels, test_images, test_labels,
                 train_per_class: int = 1000, test_per_class: int = 200, seed: int = 0) -> dict:
    """Return the subset arrays; one generator for both splits so the seed fixes everything."""
    rng = np.random.default_rng(seed)
    tr = stratified_indices(train_labels, train_per_class, rng)
    te = stratified_indices(test_labels, test_per_class, rng)
    return {
        "train_images": np.ascontiguousarray(train_images[tr], dtype=np.uint8),
        "train_labels": train_labels[tr].astype(np.uint8),
        "test_images": np.ascontiguousarray(test_images[te], dtype=np.uint8),
        "test_labels": test_labels[te].astype(np.uint8),
    }


def save_npz_lzma(path: Path, arrays: dict) -> None:
    """Write an np.load-compatible .npz with LZMA members and fixed timestamps (reproducible bytes)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_LZMA) as archive:
        for key in KEYS:
            member = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            member.compress_type = zipfile.ZIP_LZMA
            with archive.open(member, "w") as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arrays[key]), allow_pickle=False)


def _find(source: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (source / name).is_file():
            return source / name
    raise FileNotFoundError(f"{source / stem}(.gz) not found (apt-get install dataset-fashion-mnist)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path(DEFAULT_SOURCE))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-per-class", type=int, default=1000, help="(the shipped file: 1000)")
    parser.add_argument("--test-per-class", type=int, default=200, help="(the shipped file: 200)")
    args = parser.parse_args(argv)

    arrays = build_subset(
        read_idx(_find(args.source, "train-images-idx3-ubyte")),
        read_idx(_find(args.source, "train-labels-idx1-ubyte")),
        read_idx(_find(args.source, "t10k-images-idx3-ubyte")),
        read_idx(_find(args.source, "t10k-labels-idx1-ubyte")),
        train_per_class=args.train_per_class,
        test_per_class=args.test_per_class,
        seed=args.seed,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_npz_lzma(args.out, arrays)
    data = args.out.read_bytes()
    print(f"wrote {args.out}")
    print(f"size: {len(data)} bytes ({len(data) / 1e6:.2f} MB)")
    print(f"sha256: {hashlib.sha256(data).hexdigest()}")


if __name__ == "__main__":
    main()
