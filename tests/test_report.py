"""`clim report`: loss.png shows the loss's parts and where the positives join; the kNN plots get
raw-pixel (training and native resolution) and random-init reference lines (from the demo's result, or
computed once when cheap), and the text says where the last kNN top-1 falls against each."""

import json

import pytest

import clim.report as report

HISTORY = [{"epoch": 1, "loss": 5.0, "loss_moco": 5.0, "knn_top1": 70.0, "epoch_seconds": 10.0},
           {"epoch": 2, "loss": 4.8, "loss_moco": 4.8, "epoch_seconds": 10.0},
           {"epoch": 3, "loss": 9.9, "loss_moco": 4.9, "loss_positive": 5.0, "knn_top1": 75.0, "epoch_seconds": 12.0,
            "selection": {"positive_precision": 0.7, "knn_precision": 0.8, "seconds": 3.0}}]


def _run_dir(tmp_path, demo: dict | None = None):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in HISTORY))
    if demo is not None:
        (tmp_path / "eval").mkdir()
        (tmp_path / "eval" / "demo.json").write_text(json.dumps(demo))
    return tmp_path


@pytest.fixture
def plots(monkeypatch):
    drawn = {}
    monkeypatch.setattr(report, "_plot", lambda path, *args, **kwargs: drawn.setdefault(path.name, (args, kwargs)))
    return drawn


def test_loss_plot_has_the_parts_and_marks_the_join(tmp_path, plots):
    report.write_report(_run_dir(tmp_path))
    (title, ylabel, series), kwargs = plots["loss.png"]
    assert list(series) == ["loss (total)", "loss_moco", "loss_positive"]
    assert series["loss_positive"] == ([3], [5.0]) and series["loss (total)"] == ([1, 2, 3], [5.0, 4.8, 9.9])
    assert kwargs["marks"] == {"positives join (epoch 3)": 2.5}  # between the last MoCo v2 epoch and the first CLIM one


def test_knn_plots_get_the_demo_references(tmp_path, plots):
    demo = {"raw_pixels_knn_k20_top1": 60.5, "random_init_knn_k20_top1": 55.25, "trained_knn_k20_top1": 75.0}
    text = report.write_report(_run_dir(tmp_path, demo)).read_text()
    for name in ("knn.png", "knn_minutes.png"):
        assert plots[name][1]["levels"] == {"raw pixels": 60.5, "random init": 55.25}
    assert plots["knn.png"][0][2] == {"trained": ([1, 3], [70.0, 75.0])}
    assert plots["knn_minutes.png"][0][2]["trained"][0] == pytest.approx([10 / 60, 35 / 60])
    assert "raw pixels and random init as horizontal lines" in text


def test_references_computed_once_when_the_run_has_a_checkpoint(tmp_path, plots, monkeypatch):
    run = _run_dir(tmp_path)
    (run / "checkpoint.pt").write_bytes(b"")  # only its presence matters here
    calls = []

    def write_references(run_dir):
        calls.append(run_dir)
        path = run_dir / "eval" / "knn_references.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps({"raw_pixels_knn_k20_top1": 50.0, "raw_pixels_image_size": 28,
                                    "raw_pixels_training_size_knn_k20_top1": 52.0,
                                    "raw_pixels_training_size_image_size": 16, "random_init_knn_k20_top1": 40.0}))
        return path

    monkeypatch.setattr("clim.evaluation.baselines.write_references", write_references)
    report.write_report(run)
    text = report.write_report(run).read_text()
    assert calls == [run]  # the second report reads the file
    assert plots["knn.png"][1]["levels"] == {"raw pixels 16 px (training)": 52.0, "raw pixels 28 px (native)": 50.0,
                                             "random init": 40.0}
    # the last kNN top-1 is 75.0 (epoch 3)
    assert ("Last kNN top-1 (epoch 3): 75.00 %: above raw pixels 16 px (training) by 23.00 points, above raw pixels "
            "28 px (native) by 25.00 points, above random init by 35.00 points.") in text


def test_a_demo_result_without_the_training_resolution_is_recomputed_when_a_checkpoint_exists(
        tmp_path, plots, monkeypatch):
    run = _run_dir(tmp_path, {"raw_pixels_knn_k20_top1": 60.5, "random_init_knn_k20_top1": 55.25})  # an older demo
    (run / "checkpoint.pt").write_bytes(b"")

    def write_references(run_dir):
        path = run_dir / "eval" / "knn_references.json"
        path.write_text(json.dumps({"raw_pixels_knn_k20_top1": 60.5, "raw_pixels_image_size": 28,
                                    "raw_pixels_training_size_knn_k20_top1": 80.0,
                                    "raw_pixels_training_size_image_size": 16, "random_init_knn_k20_top1": 55.25}))
        return path

    monkeypatch.setattr("clim.evaluation.baselines.write_references", write_references)
    text = report.write_report(run).read_text()
    assert plots["knn.png"][1]["levels"]["raw pixels 16 px (training)"] == 80.0
    assert "below raw pixels 16 px (training) by 5.00 points" in text  # 75.0 against 80.0


def test_no_checkpoint_no_reference_lines(tmp_path, plots):
    text = report.write_report(_run_dir(tmp_path)).read_text()
    assert plots["knn.png"][1]["levels"] == {}
    assert "no reference lines" in text


def test_pngs_are_drawn(tmp_path):
    demo = {"raw_pixels_knn_k20_top1": 60.5, "random_init_knn_k20_top1": 55.25}
    report.write_report(_run_dir(tmp_path, demo))
    for name in ("loss.png", "knn.png", "knn_minutes.png", "positive_precision.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
