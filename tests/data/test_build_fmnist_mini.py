"""The build script of the embedded subset: stratified, seeded, reproducible, np.load-readable."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def script(load_script):
    return load_script("scripts/build_fmnist_mini.py")


def fake_split(n: int, seed: int):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.permutation(np.arange(n) % 10).astype(np.uint8)


def test_subset_is_stratified_and_seeded(script):
    train, test = fake_split(300, 1), fake_split(100, 2)
    subset = script.build_subset(*train, *test, train_per_class=7, test_per_class=3, seed=0)
    assert np.bincount(subset["train_labels"]).tolist() == [7] * 10
    assert np.bincount(subset["test_labels"]).tolist() == [3] * 10
    train_rows = {img.tobytes(): y for img, y in zip(*train)}
    test_rows = {img.tobytes() for img in test[0]}
    assert all(train_rows[img.tobytes()] == y for img, y in zip(subset["train_images"], subset["train_labels"]))
    assert all(img.tobytes() in test_rows for img in subset["test_images"])
    again = script.build_subset(*train, *test, train_per_class=7, test_per_class=3, seed=0)
    other = script.build_subset(*train, *test, train_per_class=7, test_per_class=3, seed=1)
    assert np.array_equal(again["train_images"], subset["train_images"])
    assert not np.array_equal(other["train_images"], subset["train_images"])
    with pytest.raises(ValueError, match="requested"):
        script.build_subset(*train, *test, train_per_class=31)


def test_npz_is_reproducible_and_loadable(script, tmp_path):
    subset = script.build_subset(*fake_split(100, 1), *fake_split(50, 2), train_per_class=4, test_per_class=2)
    script.save_npz_lzma(tmp_path / "a.npz", subset)
    script.save_npz_lzma(tmp_path / "b.npz", subset)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    with np.load(tmp_path / "a.npz") as loaded:
        assert sorted(loaded.files) == sorted(script.KEYS)
        for key in script.KEYS:
            assert np.array_equal(loaded[key], subset[key])
