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
