import argparse
import json
import math
from pathlib import Path

import pytest
import torch

from clim.cli import main
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


def test_eval_knn_and_linear_print_the_test_size_and_raw_pixels_at_the_training_resolution(
        tiny_ckpt, tiny_data, tmp_path, capsys):
    from clim.evaluation.references import pixel_references

    expected = pixel_references("tiny", None, 8)  # the checkpoint's data_info: 8 px
    assert _run("eval", "knn", *_common(tiny_ckpt), "--out", str(tmp_path / "knn.json")) == 0
    knn = json.loads((tmp_path / "knn.json").read_text())
    line = capsys.readouterr().out
    assert knn["raw_pixels_image_size"] == 8 and knn["raw_pixels_resolution"] == "the checkpoint's training resolution"
    assert knn["raw_pixels_knn_k20_top1"] == pytest.approx(expected["pixel_knn_top1"])
    assert "raw_pixels_ridge_top1" not in knn  # kNN only beside kNN
    assert "on 24 test images; raw pixels at 8 px (the checkpoint's training resolution): kNN k=20 " in line
    difference = knn["knn_k20_top1"] - knn["raw_pixels_knn_k20_top1"]
    words = "level with" if abs(difference) < 0.005 else ("above" if difference > 0 else "below")
    assert f"the trained kNN k=20 is {words} raw pixels at 8 px" in line

    assert _run("eval", "linear", *_common(tiny_ckpt), "--preset", "quick", "--epochs", "1", "--cached-features",
                "--out", str(tmp_path / "linear.json")) == 0
    linear = json.loads((tmp_path / "linear.json").read_text())
    line = capsys.readouterr().out
    assert linear["raw_pixels_ridge_top1"] == pytest.approx(expected["pixel_linear_top1"])
    assert linear["raw_pixels_knn_k20_top1"] == pytest.approx(expected["pixel_knn_top1"])
    assert "on 24 test images (quick" in line and "the trained linear probe is " in line
    assert "the ridge on raw pixels at 8 px" in line


def test_raw_pixels_are_not_computed_beside_a_large_evaluation(tiny_ckpt, tiny_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("clim.evaluation.cli.REFERENCE_MAX_IMAGES", 50)  # tiny has 48 + 24 images
    assert _run("eval", "knn", *_common(tiny_ckpt), "--out", str(tmp_path / "knn.json")) == 0
    record = json.loads((tmp_path / "knn.json").read_text())
    assert "raw_pixels_knn_k20_top1" not in record
    assert record["raw_pixels_reference"].startswith("not computed (72 images")
    assert "raw pixels at 8 px: not computed (72 images" in capsys.readouterr().out


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
    captured = capsys.readouterr()
    info = json.loads(captured.out)
    assert info["torchvision_compatible"] is False and info["loader"] == "torchvision"
    assert "m.conv1 = torch.nn.Conv2d(1, 64, 3, 1, 1, bias=False); m.maxpool = torch.nn.Identity()" in info["load"]
    assert captured.err.strip().endswith(info["load"]) and captured.err.count("\n") == 1  # the line to copy
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


def test_linear_lr_defaults_to_the_choice_on_held_out_train_images(tiny_ckpt, tiny_data, tmp_path, monkeypatch):
    parser = argparse.ArgumentParser(prog="clim")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["eval", "linear", "--ckpt", "x"])
    assert args.lr == "auto" and args.cached_features is False
    help_text = " ".join(parser._subparsers._group_actions[0].choices["eval"]._subparsers._group_actions[0]
                         .choices["linear"].format_help().split())
    assert "auto (the default)" in help_text and "--lr 30 is the paper's protocol" in help_text

    from clim.evaluation import linear

    chosen = []
    real_choose_lr = linear.choose_lr

    def spy(feats, labels, *rest, **kwargs):  # what the sweep sees: the 48 train images, never the 24 test ones
        chosen.append(len(labels))
        return real_choose_lr(feats, labels, *rest, **kwargs)

    monkeypatch.setattr(linear, "choose_lr", spy)
    out = tmp_path / "linear.json"
    assert _run("eval", "linear", *_common(tiny_ckpt), "--preset", "quick", "--epochs", "1", "--out", str(out)) == 0
    record = json.loads(out.read_text())
    assert chosen == [48] and record["lr_rule"].startswith("auto") and record["cached_features"] is False
    sweep = {float(lr): top1 for lr, top1 in record["lr_sweep"].items()}
    assert record["lr"] == max(sweep, key=lambda lr: (sweep[lr], -lr))

    assert _run("eval", "linear", *_common(tiny_ckpt), "--preset", "quick", "--epochs", "1", "--lr", "30",
                "--out", str(out)) == 0
    record = json.loads(out.read_text())
    assert record["lr"] == 30.0 and record["lr_rule"] == "fixed by --lr (the paper's protocol)"
    assert "lr_sweep" not in record and chosen == [48]


@pytest.fixture
def unfit_ckpts(tiny_ckpt, tmp_path):
    """A checkpoint whose backbone conv1 is a tensor of the wrong shape, and one with empty entries."""
    state = torch.load(tiny_ckpt, weights_only=True)
    state["model"]["encoder_q.0.conv1.weight"] = torch.zeros(3)
    bad = tmp_path / "bad" / "checkpoint.pt"
    bad.parent.mkdir()
    torch.save(state, bad)
    empty = tmp_path / "empty.pt"
    torch.save({"config": {}, "model": {}, "data_info": {}}, empty)
    return bad, empty


COMMANDS = [["eval", "knn"], ["eval", "linear"], ["eval", "semisup", "--fraction", "0.5"], ["eval", "similarity"],
            ["eval", "tsne"], ["inspect"], ["export", "--to", "torchvision"], ["export", "--to", "detectron2"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: "-".join(c[:2]))
def test_checkpoints_that_load_but_do_not_fit_are_one_line_exit_2(unfit_ckpts, tiny_data, tmp_path, command, capsys):
    bad, empty = unfit_ckpts
    for ckpt, expected in ((bad, "'encoder_q.0.conv1.weight' has shape (3,), expected (64, 1, 3, 3)"),
                           (empty, "missing key(s) config.model.backbone, data_info.name, data_info.in_channels")):
        out = tmp_path / "out" / ("model.pth" if command[0] == "export" else "result.json")
        where = [str(ckpt)] if command[0] == "inspect" else ["--ckpt", str(ckpt), "--out", str(out)]
        assert main([*command, *where]) == 2
        err = capsys.readouterr().err
        assert err.startswith("clim: error: ") and err.count("\n") == 1 and expected in err, err
        assert not (tmp_path / "out").exists() and tiny_data == []


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc (no file can be created in it)")
@pytest.mark.parametrize("command", [c for c in COMMANDS if c[0] != "inspect"], ids=lambda c: "-".join(c[:2]))
def test_an_unwritable_out_fails_before_any_work(tiny_ckpt, tiny_data, command, capsys):
    out = "/proc/clim-no-such-folder/" + ("model.pth" if command[0] == "export" else "result.json")
    assert main([*command, "--ckpt", str(tiny_ckpt), "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.startswith("clim: error: --out /proc/clim-no-such-folder/") and err.count("\n") == 1
    assert tiny_data == []  # no dataset was built: nothing was evaluated


def test_an_unwritable_default_out_fails_before_any_work(tiny_ckpt, tiny_data, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "file.txt"  # a regular file where a folder would have to be: even root cannot write there
    blocker.write_text("x")
    monkeypatch.setattr("clim.evaluation.common.default_out",
                        lambda ckpt, protocol: blocker / "eval" / f"{protocol}.json")
    assert main(["eval", "knn", "--ckpt", str(tiny_ckpt), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"--out {blocker}/eval/knn.json cannot be created: {blocker} is not a folder" in err and tiny_data == []


def test_check_output_tries_a_file_in_the_folder(tmp_path, monkeypatch):
    from clim.evaluation import common

    common.check_output(tmp_path / "new" / "deeper" / "x.json")  # creatable: nothing is left behind
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError, match="is a folder"):
        common.check_output(tmp_path)

    def refuse(**kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(common.tempfile, "mkstemp", refuse)
    with pytest.raises(ConfigError, match=r"--out .*x.json cannot be written: creating a file in .* failed "
                                          r"\(Read-only file system\)"):
        common.check_output(tmp_path / "x.json")
