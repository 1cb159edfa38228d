"""`clim eval` on an image folder without val/ or test/: a deterministic stratified holdout
(data.val_fraction) is the test split, and the result JSON says so (issue 11, part 4)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from clim.cli import main
from clim.evaluation.common import stratified_holdout

CLASSES = {"cat": 10, "dog": 7, "emu": 3}


def _folder(root, classes=CLASSES):
    rng = np.random.default_rng(0)
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(root / name / f"{i:02d}.png")
    return root


def _eval(ckpt, root, *extra, protocol=("knn",)):
    args = ["eval", *protocol, "--ckpt", str(ckpt), "--device", "cpu", "--no-progress", "--batch-size", "8",
            "--set", "data.name=imagefolder", "--set", f"data.root={root}", *extra]
    return main(args)


def test_stratified_holdout_is_deterministic_stratified_and_disjoint():
    labels = torch.tensor([0] * 10 + [1] * 7 + [2] * 3 + [-1] * 4 + [3])
    train, test = stratified_holdout(labels, 0.2)
    again_train, again_test = stratified_holdout(labels.clone(), 0.2)
    assert torch.equal(train, again_train) and torch.equal(test, again_test)
    assert torch.bincount(labels[test], minlength=4).tolist() == [2, 1, 1, 0]  # round(0.2 n), >= 1, < n
    assert set(train.tolist()).isdisjoint(test.tolist())
    assert sorted(train.tolist() + test.tolist()) == [i for i in range(len(labels)) if labels[i] >= 0]
    assert torch.equal(test, test.sort().values)
    _, half = stratified_holdout(labels, 0.5)
    assert torch.bincount(labels[half], minlength=4).tolist() == [5, 4, 2, 0]
    # not simply the first images of each class
    assert test.tolist() != [0, 1, 10, 17]


def test_eval_on_class_folders_holds_out_a_stratified_split(tiny_ckpt, tmp_path):
    root = _folder(tmp_path / "pets")
    out = tmp_path / "knn.json"
    assert _eval(tiny_ckpt, root, "--out", str(out)) == 0
    record = json.loads(out.read_text())
    assert (record["train_size"], record["test_size"]) == (16, 4)  # test: 2 + 1 + 1
    split = record["test_split"]
    assert split["kind"] == "stratified holdout" and split["val_fraction"] == 0.2
    assert str(root.resolve()) in split["reason"] and "no val/ or test/" in split["reason"]
    assert "data.val_fraction" in split["rule"]
    assert 0.0 <= record["knn_k20_top1"] <= 100.0
    # another fraction, and the similarity protocol on either side of the split
    assert _eval(tiny_ckpt, root, "--set", "data.val_fraction=0.5", "--out", str(out)) == 0
    record = json.loads(out.read_text())
    assert (record["train_size"], record["test_size"]) == (9, 11)  # test: 5 + round(3.5) + round(1.5)
    for split_name, size in (("train", 16), ("test", 4)):
        assert _eval(tiny_ckpt, root, "--split", split_name, "--out", str(out), protocol=("similarity",)) == 0
        assert json.loads(out.read_text())[f"{split_name}_size"] == size


def test_train_folder_without_val_also_holds_out(tiny_ckpt, tmp_path):
    root = tmp_path / "data"
    _folder(root / "train")
    out = tmp_path / "knn.json"
    assert _eval(tiny_ckpt, root, "--out", str(out)) == 0
    assert json.loads(out.read_text())["test_size"] == 4


def test_folder_with_its_own_val_split_is_used_as_is(tiny_ckpt, tmp_path):
    root = tmp_path / "data"
    _folder(root / "train")
    _folder(root / "val", {"cat": 2, "dog": 2, "emu": 2})
    out = tmp_path / "knn.json"
    assert _eval(tiny_ckpt, root, "--out", str(out)) == 0
    record = json.loads(out.read_text())
    assert (record["train_size"], record["test_size"]) == (20, 6) and "test_split" not in record


@pytest.mark.parametrize("value", ["0", "1", "1.5"])
def test_val_fraction_out_of_range_is_one_line_exit_2(tiny_ckpt, tmp_path, value, capsys):
    root = _folder(tmp_path / "pets")
    assert _eval(tiny_ckpt, root, "--set", f"data.val_fraction={value}") == 2
    assert "data.val_fraction" in capsys.readouterr().err


def test_flat_folder_says_how_to_evaluate(tiny_ckpt, tmp_path, capsys):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        Image.fromarray(np.full((10, 10, 3), 40 * i, dtype=np.uint8)).save(flat / f"{i}.png")
    assert _eval(tiny_ckpt, flat) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("clim: error:")]
    assert f"{flat} has images but no class folders" in line and "pretraining only" in line
    assert "set data.root to a folder of class folders" in line and "--set data.root=DIR" in line
