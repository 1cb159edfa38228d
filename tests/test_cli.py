"""The `clim` command line: user errors are one line on stderr and exit code 2, never a traceback."""

import pytest

from clim.cli import main


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("clim: error:") and "Traceback" not in stderr
    return lines[0]


def test_unknown_key_one_line_exit_2(run_clim, tmp_path):
    out = tmp_path / "run"
    result = run_clim(["pretrain", "--preset", "demo-cpu", "--set", "train.epoch=1", "--out", str(out)],
                      small=False, timeout=120)
    assert result.returncode == 2
    assert "'train.epoch'" in _one_error_line(result.stderr)
    assert not out.exists()  # nothing written for a run that never started


def test_missing_imagefolder_root_one_line_exit_2(run_clim, tmp_path):
    missing = tmp_path / "no-such-folder"
    result = run_clim(["pretrain", "--preset", "mocov2-imagenet-r50", "--set", f"data.root={missing}",
                       "--set", "train.device=cpu", "--out", str(tmp_path / "run")], small=False, timeout=120)
    assert result.returncode == 2
    assert str(missing) in _one_error_line(result.stderr)


@pytest.mark.parametrize("overrides, expected", [
    (["data.name=imagefolder"], "data.root"),          # imagefolder without a root
    (["data.name=mnist-typo"], "unknown dataset 'mnist-typo'"),
    (["train.lr=1e-3", "method.mixing=blend"], "'method.mixing'"),
])
def test_data_and_value_errors_in_process(overrides, expected, tmp_path, capsys):
    args = ["pretrain", "--preset", "demo-cpu", "--out", str(tmp_path / "run")]
    for item in ["train.device=cpu"] + overrides:
        args += ["--set", item]
    assert main(args) == 2
    assert expected in _one_error_line(capsys.readouterr().err)


def test_config_file_and_unknown_preset(tmp_path, capsys):
    assert main(["pretrain", "--preset", "no-such-preset", "--out", str(tmp_path)]) == 2
    assert "unknown preset 'no-such-preset'" in _one_error_line(capsys.readouterr().err)
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  backbon: resnet18\n")
    assert main(["pretrain", "--config", str(bad), "--out", str(tmp_path / "run")]) == 2
    assert "'model.backbon'" in _one_error_line(capsys.readouterr().err)


def test_pretrain_needs_a_config_source(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "--preset" in capsys.readouterr().err


def test_report_without_metrics_one_line_exit_2(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "metrics.jsonl" in _one_error_line(capsys.readouterr().err)


# ------------------------------------------------------------------------------------------------
# --ckpt that is no checkpoint, --out that cannot be written (issue 11, parts 4 and 5)
# ------------------------------------------------------------------------------------------------

def _bad_checkpoints(folder):
    import argparse

    import torch

    folder.mkdir(exist_ok=True)
    (folder / "text.pt").write_text("epoch,loss\n1,0.5\n")
    (folder / "empty.pt").write_bytes(b"")
    torch.save({"a": torch.ones(3)}, folder / "good.pt")
    data = (folder / "good.pt").read_bytes()
    (folder / "truncated.pt").write_bytes(data[: len(data) // 2])
    torch.save({"args": argparse.Namespace(lr=0.1)}, folder / "pickled.pt")  # not weights-only
    torch.save({"conv1.weight": torch.ones(1)}, folder / "backbone.pth")  # a torch file, not a trainer's
    torch.save(torch.ones(2), folder / "tensor.pt")
    (folder / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    (folder / "run").mkdir(exist_ok=True)  # a run folder without checkpoint.pt
    return {"text.pt": "not a readable checkpoint (a text file", "empty.pt": "(empty",
            "truncated.pt": "not a readable checkpoint", "pickled.pt": "not a weights-only checkpoint",
            "backbone.pth": "not a clim trainer checkpoint (missing config, model, data_info)",
            "tensor.pt": "holds a Tensor", "image.png": "(not a PyTorch file", "run": "checkpoint not found"}


CKPT_COMMANDS = [["eval", "knn"], ["eval", "linear"], ["eval", "semisup", "--fraction", "0.1"],
                 ["eval", "similarity"], ["eval", "tsne"], ["export", "--to", "torchvision"],
                 ["export", "--to", "detectron2"]]


@pytest.mark.parametrize("command", CKPT_COMMANDS, ids=lambda c: "-".join(c[:2]))
def test_every_ckpt_command_rejects_bad_checkpoints_in_one_line(command, tmp_path, capsys):
    for name, expected in _bad_checkpoints(tmp_path / "ckpts").items():
        path = tmp_path / "ckpts" / name
        out = ["--out", str(tmp_path / "out" / "x.pkl")] if command[0] == "export" else []
        assert main(command + ["--ckpt", str(path)] + out) == 2, name
        line = _one_error_line(capsys.readouterr().err)
        assert expected in line and str(path) in line, (name, line)
    assert not (tmp_path / "out").exists()


def test_resume_from_a_corrupt_checkpoint_one_line_exit_2(small_digits, tiny_overrides, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_text("not a checkpoint\n")
    args = ["pretrain", "--preset", "demo-cpu", "--out", str(out)]
    for item in tiny_overrides("train.device=cpu"):
        args += ["--set", item]
    assert main(args) == 2
    assert "checkpoint.pt is not a readable checkpoint (a text file" in _one_error_line(capsys.readouterr().err)


def test_text_file_as_ckpt_in_a_real_process(run_clim, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello\n" * 30)
    result = run_clim(["eval", "knn", "--ckpt", str(text)], small=False, timeout=120)
    assert result.returncode == 2
    assert f"{text} is not a readable checkpoint (a text file" in _one_error_line(result.stderr)


def test_out_that_cannot_be_written_one_line_exit_2(run_clim, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    cases = [
        (["pretrain", "--preset", "demo-cpu", "--out", str(blocker / "run")], "is not a folder"),
        (["pretrain", "--preset", "demo-cpu", "--out", str(blocker)], "exists and is not a folder"),
        (["demo", "--out", str(blocker / "demo")], "is not a folder"),
        (["ablate", "--scale", "smoke", "--out", str(blocker / "m")], "is not a folder"),
        (["eval", "knn", "--ckpt", str(tmp_path), "--out", str(blocker / "knn.json")], "is not a folder"),
        (["eval", "knn", "--ckpt", str(tmp_path), "--out", str(tmp_path)], "is a folder, not a file"),
        (["export", "--ckpt", str(tmp_path), "--to", "torchvision", "--out", str(blocker / "b.pth")], "is not a folder"),
        (["config", "--preset", "demo-cpu", "--out", str(blocker / "c.yaml")], "is not a folder"),
    ]
    for args, expected in cases:
        assert main(args) == 2, args
        line = _one_error_line(capsys.readouterr().err)
        assert "--out" in line and expected in line, (args, line)
    # in a real process, as a new user meets it (no traceback)
    result = run_clim(["pretrain", "--preset", "demo-cpu", "--out", str(blocker / "run")], small=False, timeout=120)
    assert result.returncode == 2 and "is not a folder" in _one_error_line(result.stderr)


def test_out_without_permission_one_line_exit_2(tmp_path, capsys, monkeypatch):
    # the suite may run as root, where chmod does not deny: deny through os.access instead
    import os

    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert main(["pretrain", "--preset", "demo-cpu", "--out", str(tmp_path / "new" / "run")]) == 2
    assert "permission denied" in _one_error_line(capsys.readouterr().err)
    assert main(["pretrain", "--preset", "demo-cpu", "--out", str(tmp_path)]) == 2
    assert "cannot be written (permission denied)" in _one_error_line(capsys.readouterr().err)


def test_permission_error_inside_a_command_one_line_exit_2(tmp_path, capsys, monkeypatch):
    def denied(run_dir):
        raise PermissionError(13, "Permission denied", str(run_dir))

    monkeypatch.setattr("clim.report.write_report", denied)
    assert main(["report", str(tmp_path)]) == 2
    assert "Permission denied" in _one_error_line(capsys.readouterr().err)


def test_a_bug_still_shows_its_traceback(tmp_path, monkeypatch):
    def bug(run_dir):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("clim.report.write_report", bug)
    with pytest.raises(ZeroDivisionError):
        main(["report", str(tmp_path)])


# ------------------------------------------------------------------------------------------------
# clim config; startup without torch (issue 11, part 5)
# ------------------------------------------------------------------------------------------------

def test_config_prints_yaml_usable_as_config(tmp_path, capsys):
    import yaml

    from clim.config import load_config

    sets = ["train.epochs=3", "method.resolutions=[28,20]", "data.root=/data/x"]
    args = ["config", "--preset", "clim-fmnist"]
    for item in sets:
        args += ["--set", item]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert text.startswith("# clim config --preset clim-fmnist --set train.epochs=3")
    values = yaml.safe_load(text)
    assert set(values) == {"data", "model", "train", "method"}
    assert values["train"]["epochs"] == 3 and values["method"]["resolutions"] == [28, 20]
    # every key is printed, not only the preset's differences
    assert set(values["model"]) == set(load_config().to_dict()["model"])
    path = tmp_path / "resolved.yaml"
    path.write_text(text)
    assert load_config(config_file=str(path)) == load_config("clim-fmnist", overrides=sets)
    # --out writes the same text; no source: the defaults
    assert main(args + ["--out", str(tmp_path / "same.yaml")]) == 0
    assert (tmp_path / "same.yaml").read_text() == text
    assert main(["config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == load_config().to_dict()


def test_config_errors_one_line_exit_2(capsys):
    assert main(["config", "--preset", "demo-cpu", "--set", "model.backbon=resnet18"]) == 2
    assert "'model.backbon'" in _one_error_line(capsys.readouterr().err)


def test_help_does_not_import_torch(run_python):
    code = ("import sys\nfrom clim.cli import build_parser, main\nbuild_parser()\n"
            "assert main(['config', '--preset', 'demo-cpu']) == 0\n"
            "sys.exit(3 if 'torch' in sys.modules else 0)")
    result = run_python(["-c", code], timeout=120)
    assert result.returncode == 0, result.stderr
    result = run_python(["-m", "clim", "--help"], timeout=120)
    assert result.returncode == 0 and "config" in result.stdout


def test_inspect_rejects_bad_checkpoints_in_one_line(tmp_path, capsys):
    expected = _bad_checkpoints(tmp_path / "ckpts")
    for name in ("text.pt", "pickled.pt", "truncated.pt"):
        assert main(["inspect", str(tmp_path / "ckpts" / name)]) == 2, name
        assert expected[name] in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("args, expected", [
    (["pretrain", "--preset", "demo-cpu", "--set", "bogus.key=1"], "'bogus.key'"),
    (["pretrain", "--preset", "demo-cpu", "--set", "train.epochs=0"], "'train.epochs'"),
    (["demo", "--set", "method.mixing=blend"], "'method.mixing'"),
    (["eval", "knn", "--ckpt", "no-such-run", "--set", "data.nam=cifar10"], "'data.nam'"),
    (["eval", "linear", "--ckpt", "no-such-run", "--set", "data.val_fraction=lots"], "'data.val_fraction'"),
])
def test_config_errors_come_before_torch_is_imported(run_python, tmp_path, args, expected):
    """A bad key or value fails in well under a second: torch (~4 s to import) is not loaded yet."""
    code = ("import sys\nfrom clim.cli import main\n"
            f"code = main({args + ['--out', str(tmp_path / 'run')]!r})\n"
            "print('torch imported' if 'torch' in sys.modules else 'torch not imported')\nsys.exit(code)")
    result = run_python(["-c", code], timeout=120)
    assert result.returncode == 2 and result.stdout.strip() == "torch not imported", result.stdout + result.stderr
    assert expected in _one_error_line(result.stderr)


def test_os_error_on_the_out_path_names_out(tmp_path, capsys):
    import errno

    from clim.cli import _error_line

    out = tmp_path / "run"
    for failed in (out, out / "checkpoint.pt", tmp_path):
        line = _error_line(OSError(errno.EROFS, "Read-only file system", str(failed)), str(out))
        assert line.startswith(f"--out {out} cannot be written: Read-only file system") and "choose another --out" in line
    unrelated = OSError(errno.EACCES, "Permission denied", str(tmp_path / "elsewhere.pt"))
    assert "--out" not in _error_line(unrelated, str(out))
    # in a command, as a user meets it: /proc accepts no new file even where os.access allows it (root)
    assert main(["config", "--preset", "demo-cpu", "--out", "/proc/clim-test.yaml"]) == 2
    assert "--out /proc/clim-test.yaml" in _one_error_line(capsys.readouterr().err)
