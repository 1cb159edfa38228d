"""imagefolder's verification index: a second start on an unchanged folder opens no image again."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from clim.config import load_config
from clim.data import build_dataset
from clim.data import imagefolder
from data_fakes import rgb, save_image


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("CLIM_CACHE", str(cache))
    monkeypatch.setattr(imagefolder, "_REPORTED", set())  # each test starts as a fresh process
    return cache


@pytest.fixture
def checks(monkeypatch) -> list[str]:
    """Names of the files check_image opened, in call order."""
    opened: list[str] = []
    real = imagefolder.check_image

    def counting(path):
        opened.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(imagefolder, "check_image", counting)
    return opened


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "images"
    for i in range(3):
        save_image(root / "train" / "cat" / f"c{i}.jpg", rgb(i, (24, 20)), quality=90)
        save_image(root / "train" / "dog" / f"d{i}.png", rgb(10 + i))
    save_image(root / "val" / "cat" / "v0.jpg", rgb(20), quality=90)
    save_image(root / "val" / "dog" / "v1.png", rgb(21))
    (root / "train" / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    return root


def build(root, split="train", **kwargs):
    return build_dataset("imagefolder", root, split, **kwargs)


def files(dataset) -> list[str]:
    return [dataset.path(i).name for i in range(len(dataset))]


def test_second_build_reuses_the_verification(folder, checks, capfd, cache_dir):
    first = build(folder)
    assert sorted(checks) == sorted(["c0.jpg", "c1.jpg", "c2.jpg", "d0.png", "d1.png", "d2.png", "broken.jpg"])
    err = capfd.readouterr().err
    assert "dataset index: checked 7 image files" in err and "1 unreadable" in err
    assert len(list(cache_dir.glob("index/*.json"))) == 1

    checks.clear()
    again = build(folder)  # the same process scanning the same folder (the trainer's kNN monitor): said once
    assert checks == ["broken.jpg"] and files(again) == files(first)
    assert capfd.readouterr().err == ""

    imagefolder._REPORTED.clear()  # a new process
    checks.clear()
    second = build(folder)
    assert checks == ["broken.jpg"]  # only the rejected file is opened again (a repaired one comes back)
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("dataset index:")]
    assert len(lines) == 1 and lines[0].startswith("dataset index: reused the cached check of 7 image files")
    assert "1 unreadable after re-checking 1" in lines[0]
    assert sum(line.startswith("imagefolder ") for line in err.splitlines()) == 1
    assert files(second) == files(first) and "broken.jpg" not in files(second)
    assert second.labels.tolist() == first.labels.tolist()
    assert [reason for _, reason in second.skipped] == [reason for _, reason in first.skipped]


def test_clean_folder_is_not_opened_at_all_the_second_time(folder, checks):
    (folder / "train" / "dog" / "broken.jpg").unlink()
    build(folder)
    checks.clear()
    dataset = build(folder)
    assert checks == [] and len(dataset) == 6


def test_splits_have_separate_indexes(folder, checks, cache_dir):
    build(folder, "train")
    build(folder, "test")
    assert sorted(checks[-2:]) == ["v0.jpg", "v1.png"]
    checks.clear()
    build(folder, "pretrain")  # the same folder as train: index reused
    build(folder, "test")
    assert checks == ["broken.jpg"]
    assert len(list(cache_dir.glob("index/*.json"))) == 2


@pytest.mark.parametrize("change", ["add", "remove", "rename", "nested"])
def test_changed_folder_invalidates_the_index(folder, checks, capfd, change):
    build(folder)
    capfd.readouterr()
    cat = folder / "train" / "cat"
    if change == "add":
        save_image(cat / "new.jpg", rgb(30), quality=90)
    elif change == "remove":
        (cat / "c1.jpg").unlink()
    elif change == "rename":
        (cat / "c1.jpg").rename(cat / "c9.jpg")
    else:
        save_image(cat / "sub" / "deep.png", rgb(31))
    checks.clear()
    dataset = build(folder)
    expected = {"add": 7, "remove": 5, "rename": 6, "nested": 7}[change]
    assert len(checks) == expected + 1  # every file checked again, broken.jpg included
    assert len(dataset) == expected
    assert "dataset index: checked" in capfd.readouterr().err
    checks.clear()
    build(folder)
    assert checks == ["broken.jpg"]  # and the new index is used from then on


def test_directory_mtime_change_alone_invalidates(folder, checks):
    build(folder)
    cat = folder / "train" / "cat"
    stat = os.stat(cat)
    os.utime(cat, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    checks.clear()
    build(folder)
    assert len(checks) == 7


def test_repaired_file_comes_back(folder, checks):
    assert "broken.jpg" not in files(build(folder))
    save_image(folder / "train" / "dog" / "broken.jpg", rgb(40), format="JPEG")  # rewritten in place
    dataset = build(folder)
    assert "broken.jpg" in files(dataset)


def test_corrupt_or_foreign_index_is_ignored(folder, checks, cache_dir):
    build(folder)
    (index_file,) = cache_dir.glob("index/*.json")
    index = json.loads(index_file.read_text())
    index_file.write_text(json.dumps({**index, "fingerprint": "0" * 64}))
    checks.clear()
    build(folder)
    assert len(checks) == 7
    index_file.write_text("{half-written")
    checks.clear()
    build(folder)
    assert len(checks) == 7


def test_unwritable_cache_still_builds(folder, checks, cache_dir, capfd):
    cache_dir.mkdir()
    (cache_dir / "index").write_text("a file where the folder should be")
    dataset = build(folder)
    assert len(dataset) == 6 and "not cached" in capfd.readouterr().err


def test_verify_false_opens_nothing_and_keeps_every_image_file(folder, checks, cache_dir, capfd):
    dataset = build(folder, verify=False)
    assert checks == [] and "broken.jpg" in files(dataset)
    assert not cache_dir.exists() and "dataset index" not in capfd.readouterr().err


def test_relative_root_shares_the_index_of_the_absolute_one(folder, checks, monkeypatch):
    build(folder)
    monkeypatch.chdir(folder.parent)
    checks.clear()
    build(Path(folder.name))
    assert checks == ["broken.jpg"]


def test_config_key_data_verify():
    assert load_config().data.verify is True
    assert load_config(overrides=["data.verify=false"]).data.verify is False
    assert load_config(overrides=["data.decode=gpu"]).data.decode == "gpu"
    with pytest.raises(ValueError, match="data.decode"):
        load_config(overrides=["data.decode=nvjpeg"])


def test_data_verify_reaches_the_trainer_and_evaluation(monkeypatch, folder):
    """Every caller builds its image folder with ``verify=data.verify``."""
    from clim.engine import trainer
    from clim.evaluation import common

    seen = []

    def recording(name, root=None, split="pretrain", transform=None, image_size=None, **kwargs):
        seen.append((split, kwargs.get("verify")))
        return build_dataset(name, root, split, transform, image_size, **kwargs)

    monkeypatch.setattr(trainer, "build_dataset", recording)
    monkeypatch.setattr("clim.data.build_dataset", recording)
    config = load_config(overrides=["data.name=imagefolder", f"data.root={folder}", "data.verify=false"])
    trainer.KnnMonitor(config, build(folder).info, 32, "cpu")
    info = {"image_size": 32, "in_channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3}
    common.eval_dataset(config, info, (), "test")
    common.eval_dataset(config, info, ("data.verify=true",), "test")
    assert seen == [("train", False), ("test", False), ("test", False), ("test", True)]
