"""imagefolder: layouts, class ids, bad files skipped with one report line, decode failures at load time."""

from __future__ import annotations

import contextlib
import io
import pickle
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clim.data import build_dataset
from clim.data import imagefolder
from clim.data.imagefolder import check_image
from clim.data.transforms import moco_v2_transform
from data_fakes import rgb, save_image

@pytest.fixture
def messy_folder(tmp_path) -> Path:
    """ImageNet layout with every kind of trouble the scan must survive."""
    root = tmp_path / "messy"
    cat, dog = root / "train" / "cat", root / "train" / "dog"
    save_image(cat / "a.png", rgb(1))
    save_image(cat / "b.jpg", rgb(2, (64, 48)), quality=90)
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:4, :, 3] = 255  # top half opaque red, bottom half transparent
    save_image(cat / "rgba.png", Image.fromarray(rgba, "RGBA"))
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    save_image(cat / "palette.png", palette)
    save_image(cat / "deep.png", Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)))  # mode I;16
    save_image(cat / "la.png", Image.new("LA", (8, 8), (90, 255)))
    good_jpeg = (cat / "b.jpg").read_bytes()
    (cat / "truncated.jpg").write_bytes(good_jpeg[: len(good_jpeg) // 2])
    (cat / "zero.jpg").write_bytes(b"")
    (cat / "text.jpg").write_text("not an image")
    (cat / "notes.txt").write_text("notes")
    (cat / ".DS_Store").write_bytes(b"\0")
    save_image(dog / "c.png", rgb(3))
    save_image(dog / "d.JPEG", rgb(4), format="JPEG")
    save_image(dog / "nested" / "e.png", rgb(5))
    (root / "train" / "empty").mkdir()
    (root / "train" / "only_text").mkdir()
    (root / "train" / "only_text" / "readme.txt").write_text("x")
    save_image(root / "val" / "cat" / "v1.png", rgb(6))
    save_image(root / "val" / "dog" / "v2.png", rgb(7))
    save_image(root / "val" / "bird" / "v3.png", rgb(8))  # not a train class
    return root


def build_quietly(*args, **kwargs):
    """-> (dataset, the skip reports printed on stderr: each its one line plus the listed paths), as in
    a fresh process (nothing reported before); the scan raises no Python warning."""
    imagefolder._REPORTED.clear()
    err = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stderr(err):
        warnings.simplefilter("always")
        dataset = build_dataset("imagefolder", *args, **kwargs)
    assert [str(w.message) for w in caught] == []
    reports = [block for block in re.split(r"\n(?=\S)", err.getvalue()) if block.startswith("imagefolder ")]
    return dataset, reports


def names(dataset) -> list[str]:
    return [dataset.path(i).name for i in range(len(dataset))]


def test_train_split_skips_bad_files_with_one_report(messy_folder):
    ds, messages = build_quietly(messy_folder, "train")
    assert len(messages) == 1
    message = messages[0]
    head = message.splitlines()[0]
    used, skipped, total = map(int, re.search(r"using (\d+) images; skipped (\d+) of (\d+) files", head).groups())
    assert (used, skipped, total) == (len(ds), 4, 13)  # the counts add up: 9 used + 4 skipped files
    assert "(3 unreadable images, 1 without an image extension)" in head
    assert "ignored 2 class folder(s) without images: empty, only_text" in head and "Repair or remove" in head
    assert len(message.splitlines()) == 1 + skipped  # one line, then each skipped path
    for bad in ("truncated.jpg", "zero.jpg", "text.jpg", "notes.txt", "empty", "only_text"):
        assert bad in message
    assert ".DS_Store" not in message  # hidden files are ignored silently
    assert ds.classes == ["cat", "dog"] and ds.info.num_classes == 2
    assert names(ds) == ["a.png", "b.jpg", "deep.png", "la.png", "palette.png", "rgba.png", "c.png", "d.JPEG", "e.png"]
    assert ds.labels.tolist() == [0] * 6 + [1] * 3
    reasons = dict((Path(p).name, r) for p, r in ds.skipped)
    assert reasons["zero.jpg"] == "empty file" and "truncated" in reasons["truncated.jpg"]
    assert reasons["notes.txt"] == "not an image file extension"
    for i in range(len(ds)):
        image, index, label = ds[i]
        assert image.mode == "RGB" and index == i and label == ds.labels[i]
    assert ds.info.in_channels == 3 and ds.info.image_size == 224 and not ds.info.fixed_size


def test_modes_converted_to_rgb(messy_folder):
    ds, _ = build_quietly(messy_folder, "train")
    pixels = {name: np.asarray(ds[i][0]) for i, name in enumerate(names(ds))}
    assert pixels["deep.png"].min() == 255  # 16-bit 65535 scaled, not clipped garbage
    assert pixels["rgba.png"][0, 0].tolist() == [200, 0, 0] and pixels["rgba.png"][7, 0].tolist() == [255, 255, 255]
    assert pixels["palette.png"][0, 0].tolist() == [10, 20, 30]
    assert pixels["la.png"][0, 0].tolist() == [90, 90, 90]


def test_val_uses_train_class_ids(messy_folder):
    val, messages = build_quietly(messy_folder, "test")
    assert names(val) == ["v1.png", "v2.png"] and val.labels.tolist() == [0, 1]
    assert val.classes == ["cat", "dog"]
    assert len(messages) == 1 and "bird" in messages[0]
    pretrain, _ = build_quietly(messy_folder, "pretrain")
    assert len(pretrain) == 9


def test_class_folders_directly_under_root(tmp_path):
    for i, cls in enumerate(["b", "a"]):
        save_image(tmp_path / cls / f"{i}.png", rgb(i))
    ds, messages = build_quietly(tmp_path, "train", image_size=64)
    assert ds.classes == ["a", "b"] and ds.labels.tolist() == [0, 1] and messages == []
    assert ds.info.image_size == 64
    with pytest.raises(FileNotFoundError, match="no 'train' folder"):
        build_dataset("imagefolder", tmp_path, "test")


def test_missing_val_is_named(tmp_path):
    save_image(tmp_path / "train" / "a" / "0.png", rgb(0))
    with pytest.raises(FileNotFoundError) as error:
        build_dataset("imagefolder", tmp_path, "test")
    assert str(tmp_path / "val") in str(error.value) and str(tmp_path / "test") in str(error.value)


def test_flat_folder_is_unlabelled_pretrain_only(tmp_path):
    for i in range(3):
        save_image(tmp_path / f"{i}.jpg", rgb(i), quality=80)
    ds, messages = build_quietly(tmp_path, "pretrain")
    assert len(ds) == 3 and ds.labels.tolist() == [-1, -1, -1] and messages == []
    assert ds.classes is None and ds.info.num_classes is None and ds[2][2] == -1
    with pytest.raises(ValueError, match="pretrain"):
        build_dataset("imagefolder", tmp_path, "train")


def test_missing_or_empty_root(tmp_path):
    with pytest.raises(ValueError, match="data.root"):
        build_dataset("imagefolder")
    with pytest.raises(FileNotFoundError, match="not found"):
        build_dataset("imagefolder", tmp_path / "absent")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="no readable images"):
        build_quietly(tmp_path)


def test_decode_failure_at_load_time_falls_back(messy_folder):
    ds, messages = build_quietly(messy_folder, "train", verify=False)
    order = names(ds)
    assert {"truncated.jpg", "zero.jpg", "text.jpg"} <= set(order)  # unverified: kept
    assert "notes.txt" in messages[0]  # the extension filter still applies
    bad = order.index("text.jpg")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image, index, label = ds[bad]
        ds[order.index("zero.jpg")]
    assert index == bad and label == ds.labels[bad]
    assert order[bad:bad + 4] == ["text.jpg", "truncated.jpg", "zero.jpg", "c.png"]
    next_good = ds[bad + 3][0]
    assert np.array_equal(np.asarray(image), np.asarray(next_good))
    assert len(caught) == 1 and "text.jpg" in str(caught[0].message)


def test_file_corrupted_after_scan(tmp_path):
    for i in range(3):
        save_image(tmp_path / "x" / f"{i}.png", rgb(i))
    ds, _ = build_quietly(tmp_path, "train")
    (tmp_path / "x" / "2.png").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="2.png"):
        assert np.array_equal(np.asarray(ds[2][0]), np.asarray(ds[0][0]))  # wraps around to index 0


def test_all_files_undecodable_raises(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.jpg").write_bytes(b"")
    ds, _ = build_quietly(tmp_path, verify=False)
    with pytest.raises(RuntimeError, match="cannot be decoded"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds[1]


def test_check_image_keeps_jpeg_with_trailing_bytes(tmp_path):
    path = save_image(tmp_path / "padded.jpg", rgb(0), quality=90)
    path.write_bytes(path.read_bytes() + b"\0" * 16)  # some cameras pad after the end marker
    assert check_image(path) is None
    path.write_bytes(path.read_bytes()[:200])
    assert check_image(path) is not None


def test_transform_and_pickling_for_workers(messy_folder):
    transform = moco_v2_transform(32, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 3)
    ds, _ = build_quietly(messy_folder, "train", transform=transform)
    clone = pickle.loads(pickle.dumps(ds))  # what spawned DataLoader workers receive
    batch = next(iter(torch.utils.data.DataLoader(clone, batch_size=4)))
    assert batch[0].shape == (4, 3, 32, 32) and batch[1].tolist() == [0, 1, 2, 3]


def test_symlinked_folders_are_followed_once_by_real_path(tmp_path):
    """A loop (c0/loop -> .) and a link to another class (c0/other -> ../c1) would list files many times
    and under the wrong label; a link to a folder outside the tree is followed once."""
    root, outside = tmp_path / "links", tmp_path / "outside"
    for i in range(3):
        save_image(root / "c0" / f"a{i}.png", rgb(i))
        save_image(root / "c1" / f"b{i}.png", rgb(10 + i))
        save_image(outside / f"x{i}.png", rgb(20 + i))
    (root / "c0" / "loop").symlink_to(".", target_is_directory=True)
    (root / "c0" / "other").symlink_to("../c1", target_is_directory=True)
    (root / "c0" / "extra").symlink_to(outside, target_is_directory=True)
    (root / "c1" / "extra_again").symlink_to(outside, target_is_directory=True)  # the same files a second time
    ds, messages = build_quietly(root, "train")
    real_files = [ds.path(i).resolve() for i in range(len(ds))]
    assert len(ds) == 9 and len(set(real_files)) == 9  # each real file once
    assert names(ds) == ["a0.png", "a1.png", "a2.png", "x0.png", "x1.png", "x2.png", "b0.png", "b1.png", "b2.png"]
    assert ds.labels.tolist() == [0] * 6 + [1] * 3  # c1's files keep c1's label
    assert len(messages) == 1 and len(messages[0].splitlines()) == 1
    head = messages[0]
    assert "using 9 images; did not follow 3 symlinked folder(s)" in head
    for link in ("c0/loop ->", "c0/other ->", "c1/extra_again ->"):
        assert link in head
