"""clim inspect: grid geometry and frame colours, anchor choice, checkpoints and run folders, image
folders without labels, runs without positives, the training hook and the report."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clim.cli import main
from clim.engine.refresh import DETAILS_NAME, PREVIEW_DIR, save_refresh
from clim.inspect import draw_refresh, inspect_run, load_inspection
from clim.inspect.figure import (Inspection, choose_anchors, class_precision, grid_rows, precision_panel,
                                 random_picks)
from clim.inspect.mosaic import FRAMES, GridLayout, mosaic
from clim.method.positives import build_bank, checkpoint_model_state
from clim.models.moco import build_moco
from clim.report import write_report
from clim.runtime import checkpoint
from clim.specs import model_spec, selection_spec


class _Images:
    """A dataset stand-in: item i is a flat grey image of brightness 10·i."""

    def __getitem__(self, index):
        return Image.new("L", (5, 7), 10 * index), index, -1


def _hand_inspection(config) -> Inspection:
    labels = torch.tensor([0, 0, 1, 1, -1, 2])
    table = torch.tensor([[1, 2, 4], [0, 3, 5], [3, 0, 4], [2, 1, 0], [0, 1, 2], [5, 0, 1]])
    details = {"knn": table.flip(1).int(), "filled": torch.zeros(6, dtype=torch.bool),
               "cluster_size": torch.tensor([3, 3, 2, 2, 1, 1], dtype=torch.int32),
               "omega_size": torch.tensor([5, 1, 0, 2, 0, 3], dtype=torch.int32)}
    return Inspection(table, labels, ["a", "b", "c"], _Images(), details, 3, config)


def test_grid_size_and_frame_colours_follow_labels(tiny_config):
    inspection = _hand_inspection(tiny_config("method.num_positives=3", clim=True))
    rows = grid_rows(inspection, torch.tensor([0, 2, 4]), compare=["knn"], cell=20, seed=0)
    layout = GridLayout(cell=20, columns=4)
    image = mosaic(rows, layout)
    assert len(rows) == 6  # each anchor's row, then its kNN row
    # rows: gap 4 + 6 × (title 16 + cell 20 + 2 × border 3 + gap 4); columns: anchor apart by cell // 4
    assert image.shape == (4 + 6 * 46, 4 + 4 * (20 + 6 + 4) + 5 - 4, 3)

    expected = {  # (row, column) -> frame, from the hand table and labels [0, 0, 1, 1, -1, 2]
        (0, 0): "anchor", (0, 1): "same", (0, 2): "different", (0, 3): "unknown",  # anchor 0: 1, 2, 4
        (1, 1): "unknown", (1, 2): "different", (1, 3): "same",  # its kNN row: 4, 2, 1
        (2, 0): "anchor", (2, 1): "same", (2, 2): "different", (2, 3): "unknown",  # anchor 2: 3, 0, 4
        (4, 0): "anchor", (4, 1): "unknown", (4, 2): "unknown", (4, 3): "unknown",  # unlabelled anchor 4
    }
    for (row, column), kind in expected.items():
        y, x = layout.frame_origin(row, column)
        assert tuple(image[y, x]) == FRAMES[kind], (row, column)
        assert tuple(image[y + 2, x + 2]) == FRAMES[kind], (row, column)
    y, x = layout.frame_origin(1, 0)  # the kNN row leaves the anchor slot empty
    assert tuple(image[y, x]) == (255, 255, 255)
    for column, index in enumerate([0, 1, 2, 4]):  # the anchor, then the table's row in order
        y, x = layout.frame_origin(0, column)
        assert tuple(image[y + 10, x + 10]) == (10 * index,) * 3  # item i is grey level 10·i
    assert rows[0].title.startswith("#0 a") and "1/3 same class" in rows[0].title
    assert "cluster of 3" in rows[0].title and "|Ω_p| = 5: 3 by the rule + 0 kNN fill" in rows[0].title
    assert "|Ω_p| = 0: 0 by the rule + 3 kNN fill" in rows[2].title
    assert rows[4].title.startswith("#4 unlabelled") and "same class" not in rows[4].title


def test_anchors_are_seeded_and_stratified_over_classes():
    labels = torch.tensor([0] * 50 + [1] * 5 + [2] * 5)
    anchors = choose_anchors(labels, 6, seed=3)
    assert torch.equal(anchors, choose_anchors(labels, 6, seed=3))
    assert not torch.equal(anchors, choose_anchors(labels, 6, seed=4))
    assert len(set(anchors.tolist())) == 6
    assert torch.bincount(labels[anchors], minlength=3).tolist() == [2, 2, 2]
    unlabelled = choose_anchors(torch.full((20,), -1), 20, seed=0)
    assert sorted(unlabelled.tolist()) == list(range(20))


def test_class_precision_and_random_picks():
    labels = torch.tensor([0, 0, 1, 1, -1])
    table = torch.tensor([[1, 2], [0, 4], [3, 3], [0, 1], [0, 1]])
    assert class_precision(table, labels) == {0: 0.5, 1: 0.5}
    picks = random_picks(torch.tensor([0, 7]), 8, 7, seed=0)
    assert sorted(picks[0].tolist()) == list(range(1, 8)) and sorted(picks[1].tolist()) == list(range(7))


def test_precision_panel_keeps_the_extremes_of_many_classes(tiny_config):
    config = tiny_config(clim=True)
    labels = torch.arange(60) % 30  # images i and i + 30 share a class
    # anchors of class c: c of their 30 positives are the same-class partner, the rest another class
    table = torch.stack([torch.tensor([(i + 30) % 60] * (i % 30) + [(i + 1) % 60] * (30 - i % 30))
                         for i in range(60)])
    inspection = Inspection(table, labels, None, _Images(), {"knn": table}, 1, config)
    bars, title = precision_panel(inspection, max_bars=6)
    assert list(bars) == ["class 0", "class 1", "class 2", "class 27", "class 28", "class 29"]
    assert bars["class 29"] == pytest.approx(29 / 30) and "3 lowest and highest of 30 classes" in title
    assert len(precision_panel(inspection, max_bars=30)[0]) == 30
    unlabelled = Inspection(table, torch.full((60,), -1), None, _Images(), {"knn": table}, 1, config)
    assert precision_panel(unlabelled) == (None, "no labels: positive precision unknown")


def _save_run(folder: Path, config, num_samples: int, table: torch.Tensor | None, data_info: dict,
              refresh_epoch: int = 2) -> Path:
    """A checkpoint as the trainer writes it, with a hand-made positives table."""
    model = build_moco(model_spec(config, data_info["image_size"]), data_info["in_channels"])
    bank = build_bank(selection_spec(config), num_samples)
    if table is not None:
        bank.load_state_dict({"table": table})
    history = [{"epoch": 1, "loss": 1.0}, {"epoch": refresh_epoch, "loss": 1.0, "selection": {}}]
    path = folder / checkpoint.CHECKPOINT_FILE
    checkpoint.save_atomic({"config": config.to_dict(), "model": checkpoint_model_state(model, bank),
                            "epoch": refresh_epoch,
                            "history": history, "data_info": data_info, "num_samples": num_samples}, path)
    return path


DIGITS_INFO = {"name": "digits", "num_classes": 10, "in_channels": 1, "image_size": 8, "mean": [0.5], "std": [0.5]}


@pytest.fixture
def digits_run(tmp_path, tiny_config, subset_builder, monkeypatch):
    """A CLIM checkpoint on the 256-image digits subset whose table is every anchor's next 10 indices."""
    monkeypatch.setattr("clim.data.build_dataset", subset_builder)
    config = tiny_config(clim=True)
    n = 256
    table = (torch.arange(n).unsqueeze(1) + torch.arange(1, 11)) % n
    _save_run(tmp_path / "run", config, n, table.int(), DIGITS_INFO)
    return tmp_path / "run", table


def test_inspect_run_folder_uses_saved_details_and_checkpoint_path_recomputes(digits_run, tmp_path, capsys):
    run, table = digits_run
    details = {"epoch": 2, "strategy": "center_wise", "knn": table.flip(1).int(),
               "filled": torch.zeros(len(table), dtype=torch.bool),
               "cluster_size": torch.full((len(table),), 77, dtype=torch.int32),
               "omega_size": torch.full((len(table),), 4, dtype=torch.int32)}
    checkpoint.save_atomic(details, run / PREVIEW_DIR / DETAILS_NAME)
    inspection = load_inspection(run)
    assert inspection.note == "" and torch.equal(inspection.table, table)
    assert "cluster of 77" in grid_rows(inspection, torch.tensor([5]), [], 8, 0)[0].title

    out = tmp_path / "grid.png"
    assert main(["inspect", str(run), "--anchors", "5", "--out", str(out), "--compare", "knn",
                 "--compare", "random"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    with Image.open(out) as png:
        width, height = png.size
    assert height > GridLayout(64, 11).shape(15)[0] > 0 and width > GridLayout(64, 11).shape(1)[1]

    copied = tmp_path / "elsewhere" / "model.pt"  # a checkpoint file with no positives/ folder beside it
    copied.parent.mkdir()
    shutil.copy(run / checkpoint.CHECKPOINT_FILE, copied)
    recomputed = load_inspection(copied)
    assert "recomputed" in recomputed.note
    assert recomputed.details["knn"].shape == table.shape
    assert (recomputed.details["cluster_size"] >= 1).all() and "omega_size" in recomputed.details
    assert main(["inspect", str(copied), "--anchors", "3"]) == 0
    assert (copied.parent / PREVIEW_DIR / "inspect.png").is_file()


def test_imagefolder_run_with_unlabelled_images(tmp_path, tiny_config):
    folder = tmp_path / "flat"
    folder.mkdir()
    rng = np.random.default_rng(0)
    n = 30
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (12 + i % 3, 16, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    config = tiny_config("data.name=imagefolder", f"data.root={folder}", "data.image_size=16",
                         "method.knn_k=8", "method.num_positives=4", "method.num_clusters=3", clim=True)
    info = {"name": "imagefolder", "num_classes": None, "in_channels": 3, "image_size": 16,
            "mean": [0.5] * 3, "std": [0.5] * 3}
    table = (torch.arange(n).unsqueeze(1) + torch.arange(1, 5)) % n
    ckpt = _save_run(tmp_path / "run", config, n, table.int(), info)

    inspection = load_inspection(ckpt)
    rows = grid_rows(inspection, choose_anchors(inspection.labels, 4, 0), ["knn"], 16, 0)
    assert (inspection.labels == -1).all()
    assert {kind for row in rows for kind in row.frames[1:]} == {"unknown"}
    assert "unlabelled" in rows[0].title
    out = inspect_run(tmp_path / "run", anchors=4, compare=["knn"])
    assert out == tmp_path / "run" / PREVIEW_DIR / "inspect.png" and out.stat().st_size > 0


def test_run_without_positives_is_one_line_and_exit_2(tmp_path, tiny_config, subset_builder, monkeypatch, capsys):
    monkeypatch.setattr("clim.data.build_dataset", subset_builder)
    moco = tmp_path / "moco"
    _save_run(moco, tiny_config(), 256, None, DIGITS_INFO)
    early = tmp_path / "early"  # CLIM before its first refresh: the table is all -1
    _save_run(early, tiny_config(clim=True), 256, None, DIGITS_INFO)
    for run in (moco, early / checkpoint.CHECKPOINT_FILE):
        assert main(["inspect", str(run)]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and "no positives table" in error
        assert not (run if run.is_dir() else run.parent).joinpath(PREVIEW_DIR).exists()


def test_training_writes_a_preview_at_each_refresh_and_the_report_shows_the_latest(
        tmp_path, tiny_config, small_digits, subset_builder, monkeypatch):
    from clim.engine.trainer import pretrain

    monkeypatch.setattr("clim.data.build_dataset", subset_builder)
    out = tmp_path / "run"
    pretrain(tiny_config("train.epochs=3", "train.knn_every=0", clim=True), out, on_refresh=draw_refresh)
    previews = sorted(p.name for p in (out / PREVIEW_DIR).glob("epoch_*.png"))
    assert previews == ["epoch_002.png", "epoch_003.png"]  # refresh_every 1: before epochs 2 and 3
    details = checkpoint.load(out / PREVIEW_DIR / DETAILS_NAME)
    assert details["epoch"] == 3
    inspection = load_inspection(out)
    assert inspection.note == ""  # the saved details belong to the checkpoint's table
    assert (inspection.details["cluster_size"] >= 1).all()
    assert (inspection.details["omega_size"] >= 0).all()
    report = write_report(out).read_text()
    assert f"]({PREVIEW_DIR}/epoch_003.png)" in report and "epoch_002.png" not in report


def test_a_failing_preview_is_one_warning_not_an_error(tmp_path, tiny_config):
    class Broken:
        labels = torch.zeros(4, dtype=torch.long)
        classes = None
        transform = None

        def __getitem__(self, index):
            raise OSError("disk gone")

    class Bank:
        table = torch.tensor([[1], [2], [3], [0]])
        details = {"knn": table.int(), "filled": torch.zeros(4, dtype=torch.bool)}

    class Unrefreshed:
        details = None

    messages = []
    config = tiny_config("method.num_positives=1", clim=True)
    assert save_refresh(Bank(), Broken(), config, tmp_path, messages.append, 5, draw_refresh) is None
    assert len(messages) == 1 and "\n" not in messages[0] and "epoch 5" in messages[0]
    assert "disk gone" in messages[0]
    assert (tmp_path / PREVIEW_DIR / DETAILS_NAME).is_file()  # the training side saved its part first
    assert save_refresh(Unrefreshed(), Broken(), config, tmp_path, messages.append, 5, draw_refresh) is None
    assert len(messages) == 1


def test_an_unwritable_default_output_is_one_line_before_the_checkpoint_is_read(digits_run, capsys, monkeypatch):
    run, _ = digits_run
    (run / PREVIEW_DIR).write_text("a file where the figure's folder would go")
    monkeypatch.setattr("clim.inspect.load_inspection", lambda path: pytest.fail("the checkpoint was read"))
    assert main(["inspect", str(run)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"{run / PREVIEW_DIR} is not a folder" in error
