import argparse
import json
import math

import pytest

from clim.config import ConfigError
from clim.evaluation.cli import register


def _run(*argv) -> int:
    parser = argparse.ArgumentParser(prog="clim")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def _common(ckpt):
    return ["--ckpt", str(ckpt), "--device", "cpu", "--no-progress", "--batch-size", "16"]


def test_eval_knn_end_to_end_writes_json(tiny_ckpt, tiny_data):
    assert _run("eval", "knn", *_common(tiny_ckpt)) == 0
    out = tiny_ckpt.parent / "eval" / "knn.json"
    record = json.loads(out.read_text())
    assert 0.0 <= record["knn_k20_top1"] <= 100.0 and 0.0 <= record["knn_k200_top1"] <= 100.0
    assert record["protocol"] == "knn"
    assert record["checkpoint_epoch"] == 3
    assert (record["dataset"], record["train_size"], record["test_size"]) == ("tiny", 48, 24)
    assert record["knn_settings"] == [{"k": 20, "temperature": 0.07}, {"k": 200, "temperature": 0.1}]
    assert ("tiny", "test", 8) in tiny_data  # evaluated at the pretraining image size


def test_other_protocols_write_their_results(tiny_ckpt, tiny_data, tmp_path):
    out = tmp_path / "results"
    assert _run("eval", "linear", *_common(tiny_ckpt), "--preset", "quick", "--epochs", "2",
                "--cached-features", "--out", str(out / "linear.json")) == 0
    linear = json.loads((out / "linear.json").read_text())
    assert {"linear_top1", "cached_features", "epochs", "lr", "milestones"} <= set(linear)
    assert linear["cached_features"] is True and linear["epochs"] == 2

    assert _run("eval", "semisup", *_common(tiny_ckpt), "--fraction", "0.25", "--preset", "quick",
                "--epochs", "1", "--out", str(out / "semisup.json")) == 0
    semisup = json.loads((out / "semisup.json").read_text())
    assert semisup["labelled_size"] == 12 and "semisup_top1" in semisup
    subset = json.loads((out / "semisup.subset.json").read_text())
    assert len(subset["indices"]) == 12 and subset["seed"] == 0

    assert _run("eval", "similarity", *_common(tiny_ckpt), "--out", str(out / "sim.json")) == 0
    sim = json.loads((out / "sim.json").read_text())
    assert -1.0 <= sim["intra_class_similarity"] <= 1.0 and set(sim["per_class"]) == {"0", "1", "2", "3"}

    assert _run("eval", "tsne", *_common(tiny_ckpt), "--out", str(out / "tsne.json")) == 0
    assert (out / "tsne.png").stat().st_size > 0
    assert json.loads((out / "tsne.json").read_text())["num_points"] == 24


def test_linear_protocol_path_with_augmentation(tiny_ckpt, tiny_data, tmp_path):
    out = tmp_path / "linear.json"
    assert _run("eval", "linear", *_common(tiny_ckpt), "--preset", "quick", "--epochs", "1",
                "--out", str(out)) == 0
    record = json.loads(out.read_text())
    assert record["cached_features"] is False and "RandomResizedCrop" in record["train_augmentation"]


def test_linear_lr_auto_is_chosen_on_held_out_train_images(tiny_ckpt, tiny_data, tmp_path):
    out = tmp_path / "linear.json"
    assert _run("eval", "linear", *_common(tiny_ckpt), "--preset", "quick", "--epochs", "1", "--cached-features",
                "--lr", "auto", "--out", str(out)) == 0
    record = json.loads(out.read_text())
    sweep = {float(lr): top1 for lr, top1 in record["lr_sweep"].items()}
    assert record["lr"] == max(sweep, key=lambda lr: (sweep[lr], -lr)) and record["lr_sweep_holdout"] == 0.2
    assert record["train_loss_above_chance"] == (record["final_train_loss"] > math.log(record["num_classes"]))
    with pytest.raises(SystemExit):
        _run("eval", "linear", *_common(tiny_ckpt), "--lr", "fast")


def test_errors_are_config_or_file_errors(tiny_ckpt, tiny_data, tmp_path):
    with pytest.raises(FileNotFoundError):
        _run("eval", "knn", "--ckpt", str(tmp_path / "missing.pt"), "--device", "cpu")
    with pytest.raises(ConfigError, match="data.nmae"):
        _run("eval", "knn", *_common(tiny_ckpt), "--set", "data.nmae=x")
    with pytest.raises(ConfigError, match="unknown dataset"):
        _run("eval", "knn", *_common(tiny_ckpt), "--set", "data.name=nope")
    with pytest.raises(ConfigError, match="exactly one"):
        _run("eval", "semisup", *_common(tiny_ckpt))


def test_export_handler(tiny_ckpt, tmp_path, capsys):
    assert _run("export", "--ckpt", str(tiny_ckpt), "--to", "torchvision", "--out", str(tmp_path / "b.pth")) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["torchvision_compatible"] is False and "build_backbone" in info["load"]
    assert json.loads((tmp_path / "b.pth.json").read_text())["small_stem"] is True


def test_linear_without_a_terminal_prints_progress_lines(tiny_ckpt, tiny_data, tmp_path, capsys, monkeypatch):
    """stderr is no terminal here: plain lines (epoch count, loss, ETA) instead of silence."""
    monkeypatch.setenv("CLIM_PROGRESS_EVERY", "0")
    common = [arg for arg in _common(tiny_ckpt) if arg != "--no-progress"]
    assert _run("eval", "linear", *common, "--preset", "quick", "--epochs", "2",
                "--out", str(tmp_path / "linear.json")) == 0
    err = capsys.readouterr().err
    assert "linear epochs: 1/2 (50 %), loss " in err and ", ETA " in err
    assert "features: " in err  # the test split's features
