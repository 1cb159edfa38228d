"""benchmarks/quality.py: reading curves at fixed minutes, the table, and one tiny run end to end."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("quality", REPO / "benchmarks" / "quality.py")
quality = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(quality)


def _history():
    # 1.0 min + refresh 6 s (epoch 2) + 1.0 min; the kNN monitor measured epochs 1 and 3 only
    return [{"epoch": 1, "epoch_seconds": 60.0, "knn_top1": 70.0},
            {"epoch": 2, "epoch_seconds": 54.0, "selection": {"seconds": 6.0}},
            {"epoch": 3, "epoch_seconds": 60.0, "knn_top1": 80.0}]


def test_timeline_counts_refresh_seconds_and_skips_unmeasured_epochs():
    assert quality.timeline(_history()) == [(1.0, 70.0), (3.0, 80.0)]


def test_cpu_timeline_subtracts_the_monitor_of_every_measured_epoch():
    # CPU seconds when each record appeared; the monitor (3 s) ran after epochs 1 and 3 only
    points = quality.cpu_timeline(_history(), [63.0, 120.0, 186.0], monitor_cpu=3.0)
    assert points == [(1.0, 70.0), (3.0, 80.0)]
    assert quality.cpu_timeline(_history(), [63.0], monitor_cpu=3.0) == [(1.0, 70.0)]  # epochs still running


def test_step_reading_never_credits_a_later_epoch():
    points = [(1.0, 70.0), (3.0, 80.0)]
    assert quality.value_at(points, 0.0, start=60.0) == 60.0
    assert quality.value_at(points, 0.99, start=60.0) == 60.0  # the first epoch is not done yet
    assert quality.value_at(points, 1.0, start=60.0) == 70.0
    assert quality.value_at(points, 2.9, start=60.0) == 70.0
    assert quality.value_at(points, 10.0, start=60.0) == 80.0  # after the end: the last value


def test_linear_reading_interpolates_from_the_untrained_network():
    points = [(1.0, 70.0), (3.0, 80.0)]
    assert quality.value_at(points, 0.5, start=60.0, interpolate=True) == pytest.approx(65.0)
    assert quality.value_at(points, 2.0, start=60.0, interpolate=True) == pytest.approx(75.0)
    assert quality.value_at(points, 4.0, start=60.0, interpolate=True) == 80.0


def test_mean_std_and_minute_grid():
    assert quality.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)  # sample standard deviation
    assert quality.mean_std([5.0]) == (5.0, 0.0)
    runs = [{"points": [(0.4, 1.0), (2.6, 2.0)]}, {"points": []}]
    assert quality.minute_grid(runs, 1.0, None) == [0, 1, 2]
    assert quality.minute_grid(runs, 0.5, 1.5) == [0, 0.5, 1.0, 1.5]


def _run(method, seed, points, random_init=75.0):
    return {"method": method, "seed": seed, "points": points, "random_init": random_init, "raw_pixels": 82.7,
            "epochs": len(points)}


def test_table_rows_means_stds_and_difference():
    runs = [_run("mocov2", 0, [(1.0, 80.0), (2.0, 82.0)]), _run("mocov2", 1, [(1.0, 82.0), (2.0, 84.0)]),
            _run("clim", 0, [(1.5, 81.0), (2.5, 85.0)]), _run("clim", 1, [(1.5, 83.0), (2.5, 87.0)])]
    lines = quality.format_table(runs, [0, 1, 2]).splitlines()
    assert lines[0] == "| minute | MoCo v2 (n=2) | CLIM (n=2) | CLIM − MoCo v2 |"
    assert lines[2] == "| 0 | 75.00 ± 0.00 | 75.00 ± 0.00 | +0.00 |"
    assert lines[3] == "| 1 | 81.00 ± 1.41 | 75.00 ± 0.00 | -6.00 |"  # CLIM's first epoch ends at 1.5 min
    assert lines[4] == "| 2 | 83.00 ± 1.41 | 82.00 ± 1.41 | -1.00 |"
    assert lines[5] == "| end | 83.00 ± 1.41 (2.0 min, 2 ep) | 86.00 ± 1.41 (2.5 min, 2 ep) | +3.00 |"
    references = quality.format_references(runs)
    assert "raw pixels 82.70 %" in references and "random init 75.00 ± 0.00 %" in references


def test_table_with_one_method_has_no_difference_column():
    lines = quality.format_table([_run("clim", 0, [(1.0, 80.0)])], [0, 1]).splitlines()
    assert lines[0] == "| minute | CLIM (n=1) |"
    assert lines[3] == "| 1 | 80.00 |"


def test_run_config_sets_method_seed_and_monitor():
    config = quality.run_config("clim-demo-cpu", "mocov2", 2, ["train.knn_every=7"])
    assert config.method.name == "mocov2" and config.train.seed == 2
    assert (config.train.knn_every, config.train.knn_k, config.train.knn_temperature) == (1, 20, 0.07)


def test_end_to_end_on_digits(tmp_path):
    """Both methods, one seed, a tiny network on the 8 px digits; then a rerun reuses both runs."""
    command = [sys.executable, str(REPO / "benchmarks" / "quality.py"), "--preset", "clim-demo-cpu",
               "--seeds", "0", "--every", "0.05", "--threads", "1", "--clock", "cpu", "--out", str(tmp_path),
               "--set", "data.name=digits", "--set", "data.image_size=null", "--set", "model.backbone=resnet10_w4", "--set", "train.epochs=2",
               "--set", "train.batch_size=64", "--set", "method.refresh_every=1", "--set", "model.queue_size=256"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.startswith("machine: ") and "load average at start" in out
    assert "| minute | MoCo v2 (n=1) | CLIM (n=1) | CLIM − MoCo v2 |" in out
    assert "reference lines (kNN top-1, k=20): raw pixels" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {r["method"] for r in summary["runs"]} == {"mocov2", "clim"}
    for run in summary["runs"]:
        assert run["epochs"] == 2 and len(run["points"]) == 2 and 0 < run["points"][-1][1] <= 100
        assert 0 < run["points"][0][0] < run["points"][1][0] and run["clock"] == "cpu"
        assert run["monitor_cpu_seconds"] > 0 and len(run["wall_points"]) == 2
    clim_run = next(r for r in summary["runs"] if r["method"] == "clim")
    history = [json.loads(line) for line in (tmp_path / "clim-seed0" / "metrics.jsonl").read_text().splitlines()]
    assert any("selection" in record for record in history)  # refresh seconds are part of its minutes
    again = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert again.returncode == 0 and again.stdout.count("reusing") == 2, again.stdout + again.stderr
    assert json.loads((tmp_path / "summary.json").read_text())["runs"][1]["points"] == clim_run["points"]


def test_report_plots_knn_against_minutes_with_reference_lines(tmp_path):
    from clim.report import training_minutes, write_report

    assert training_minutes(_history()) == [1.0, 2.0, 3.0]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r | {"loss": 1.0}) for r in _history()))
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "demo.json").write_text(json.dumps(
        {"protocol": "demo", "raw_pixels_knn_k20_top1": 82.7, "random_init_knn_k20_top1": 77.9}))
    text = write_report(tmp_path).read_text()
    assert "![kNN top-1 against minutes](plots/knn_minutes.png)" in text
    assert "raw pixels and random init as horizontal lines" in text
    assert (tmp_path / "plots" / "knn_minutes.png").stat().st_size > 0
    assert "| 3 | 3 | 1 |" in text  # epoch 3 ends at minute 3
