"""The training loop on a digits subset (256 images, 4 steps of 64 per epoch): learning, metrics,
CLIM refresh + mixing, every method variant, divergence and the report."""

import json
import math

import pytest
import torch

import clim.engine.step as step
import clim.engine.trainer as trainer
from clim.engine.checkpointer import TrainingDiverged
from clim.engine.logging import remaining_seconds
from clim.engine.refresh import DETAILS_NAME, PREVIEW_DIR
from clim.cli import main
from clim.method.objective import StepOutput, compute_step
from clim.runtime import checkpoint

STEPS = 4  # 256 images / batch 64


def _spy(calls: list):
    """compute_step that records what each step received and returned."""
    def step(model, batch, spec):
        out = compute_step(model, batch, spec)
        calls.append({"positives": batch["positive_key"] is not None,
                      "positive_query": batch["positive_query"] is not None,
                      "query_sizes": [tuple(v.shape[-2:]) for v in batch["query"]],
                      "small_crops": None if batch["small_crops"] is None else
                      [tuple(v.shape[-2:]) for v in batch["small_crops"]],
                      "lam": out.lam_mean, "loss": out.loss.item()})
        return out
    return step


def _run(tmp_path_factory, subset_builder, config, name):
    calls = []
    out = tmp_path_factory.mktemp(name)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer, "build_dataset", subset_builder)
        patch.setattr("clim.data.build_dataset", subset_builder)  # the kNN monitor's splits (clim.data.splits)
        patch.setattr(step, "compute_step", _spy(calls))
        history = trainer.pretrain(config, out)
    return out, history, calls


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def moco_run(tmp_path_factory, subset_builder, tiny_config):
    # Views that differ little (no crop, no jitter): learnable in 24 steps. With MoCo v2's full
    # augmentation on 8 px digits a run this short only climbs to log(K + 1) while the queue fills.
    # Queue 64 = one batch, so only the first step sees the random initial queue.
    config = tiny_config("train.epochs=6", "model.queue_size=64", "data.crop_min_scale=1.0", "data.jitter_p=0",
                         "data.grayscale_p=0", "data.flip_p=0")
    return _run(tmp_path_factory, subset_builder, config, "moco")


def test_loss_goes_down(moco_run):
    _, history, calls = moco_run
    assert len(calls) == 6 * STEPS and all(math.isfinite(c["loss"]) for c in calls)
    assert history[-1]["loss"] < history[0]["loss"] - 0.2
    assert not any(c["positives"] for c in calls)  # MoCo v2: no positives, ever


def test_metrics_one_line_per_epoch(moco_run):
    out, history, _ = moco_run
    lines = _metrics(out)
    assert [r["epoch"] for r in lines] == [1, 2, 3, 4, 5, 6]
    assert lines == json.loads(json.dumps(history))
    for record in lines:
        assert {"loss", "lr", "images_per_s", "knn_top1"} <= set(record)
        assert record["images_per_s"] > 0 and 0 <= record["knn_top1"] <= 100
    lrs = [r["lr"] for r in lines]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.01 * 0.06  # cosine down to ~0
    saved = checkpoint.load(out / "checkpoint.pt")
    assert saved["epoch"] == 6 and saved["step"] == 6 * STEPS and len(saved["history"]) == 6
    assert json.loads((out / "config.json").read_text())["train"]["epochs"] == 6


@pytest.fixture(scope="module")
def clim_run(tmp_path_factory, subset_builder, tiny_config):
    return _run(tmp_path_factory, subset_builder, tiny_config(clim=True), "clim")


def test_clim_refresh_logs_selection_and_fills_positives(clim_run):
    out, history, _ = clim_run
    assert "selection" not in history[0]  # first refresh at epoch refresh_every (METHOD §2)
    selection = history[1]["selection"]
    assert 0.0 <= selection["positive_precision"] <= 1.0 and "cluster_size_hist" in selection
    assert _metrics(out)[1]["selection"]["positive_precision"] == selection["positive_precision"]
    positives = checkpoint.load(out / "checkpoint.pt")["model"]["positives"]
    assert positives.shape == (256, 10)
    assert bool((positives >= 0).all()) and bool((positives < 256).all())
    assert not bool((positives == torch.arange(256).unsqueeze(1)).any())  # never the anchor itself


def test_the_engine_saves_each_refresh_and_draws_nothing(clim_run):
    """Training saves what a refresh produced; drawing is the apps' (no on_refresh hook: no figure)."""
    out, _, _ = clim_run
    details = checkpoint.load(out / PREVIEW_DIR / DETAILS_NAME)
    positives = checkpoint.load(out / "checkpoint.pt")["model"]["positives"]
    assert details["epoch"] == 2 and tuple(details["knn"].shape) == tuple(positives.shape) == (256, 10)
    assert (details["cluster_size"] >= 1).all()
    assert not list((out / PREVIEW_DIR).glob("*.png"))


def test_clim_cutmix_path_runs(clim_run):
    _, _, calls = clim_run
    first, second = calls[:STEPS], calls[STEPS:]
    assert len(second) == STEPS
    assert not any(c["positives"] for c in first) and all(c["lam"] is None for c in first)
    assert all(c["positives"] and c["positive_query"] for c in second)
    assert all(0.0 < c["lam"] < 1.0 for c in second)


def test_report_writes_markdown_and_plots(clim_run, capsys):
    out, _, _ = clim_run
    assert main(["report", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "## Positive selection" in report and "plots/positive_precision.png" in report
    for name in ("loss.png", "knn.png", "positive_precision.png"):
        assert (out / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert capsys.readouterr().out.strip().endswith("report.md")


VARIANTS = {
    "none": ["method.mixing=none"],
    "mixup": ["method.mixing=mixup"],
    "multires": ["method.resolutions=[6,8]"],
    "multicrop": ["method.multicrop=true", "method.multicrop_size=4"],
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_method_variants(variant, tmp_path_factory, subset_builder, tiny_config):
    config = tiny_config("train.knn_every=0", *VARIANTS[variant], clim=True)
    out, history, calls = _run(tmp_path_factory, subset_builder, config, variant)
    assert len(history) == 2 and all(math.isfinite(r["loss"]) for r in history)
    second = calls[STEPS:]
    assert len(second) == STEPS and all(c["positives"] for c in second)
    if variant == "none":
        assert all(c["lam"] is None and not c["positive_query"] for c in second)
    else:
        assert all(0.0 < c["lam"] < 1.0 for c in second)
    expected_sizes = [(8, 8), (6, 6)] if variant == "multires" else [(8, 8)]
    assert all(c["query_sizes"] == expected_sizes for c in calls)  # largest first
    assert all(c["small_crops"] == ([(4, 4)] * 2 if variant == "multicrop" else None) for c in calls)
    assert "knn_top1" not in history[-1]


def test_nan_loss_stops_run_and_keeps_last_good_checkpoint(tmp_path, small_digits, tiny_overrides, monkeypatch,
                                                          capsys):
    calls = []

    def diverging(model, batch, spec):
        out = compute_step(model, batch, spec)
        calls.append(1)
        return out if len(calls) <= STEPS else StepOutput(out.loss * float("nan"), out.keys, out.lam_mean)

    monkeypatch.setattr(step, "compute_step", diverging)
    args = ["pretrain", "--preset", "demo-cpu", "--out", str(tmp_path)]
    for item in tiny_overrides("train.epochs=3", "train.knn_every=0"):
        args += ["--set", item]
    assert main(args) == 1  # TrainingDiverged: exit code 1, one line
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("clim: error:")]
    assert len(errors) == 1 and "loss became nan at epoch 2, step 4;" in errors[0] and "Traceback" not in err
    # The loss is read every train.log_every (10) steps and at epoch end: stopped at the end of epoch 2.
    assert len(calls) == 2 * STEPS
    saved = checkpoint.load(tmp_path / "checkpoint.pt")
    assert saved["epoch"] == 1 and saved["step"] == STEPS
    assert all(torch.isfinite(t).all() for t in saved["model"].values() if t.is_floating_point())
    assert [r["epoch"] for r in _metrics(tmp_path)] == [1]


def test_diverged_is_raised_from_pretrain(tmp_path, small_digits, tiny_config, monkeypatch):
    monkeypatch.setattr(step, "compute_step", lambda model, batch, config: StepOutput(
        torch.tensor(float("inf"), requires_grad=True), torch.zeros(64, 128)))
    with pytest.raises(TrainingDiverged, match="epoch 1, step 0"):
        trainer.pretrain(tiny_config("train.knn_every=0"), tmp_path)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_whole_run_eta_counts_steps_refreshes_and_monitors(tiny_config):
    """4 epochs of 10 steps, at epoch 1 (0-based) with 4 steps left at 2 s a step; refreshes at
    epochs 2 and 3 (refresh_every 1) as long as the last one (30 s); the monitor every 2 epochs
    (epochs 2 and 4, 1-based) as long as the last one (5 s)."""
    config = tiny_config("train.epochs=4", "train.knn_every=2", clim=True)
    history = [{"epoch": 1, "knn_seconds": 5.0, "selection": {"seconds": 30.0}}]
    seconds = remaining_seconds(config, history, 1, 4, 2.0, 10, monitored=True)
    assert seconds == (4 + 2 * 10) * 2.0 + 2 * 30.0 + 2 * 5.0
    assert remaining_seconds(config, history, 1, 4, 2.0, 10, monitored=False) == 48.0 + 60.0
    assert remaining_seconds(config, [], 3, 0, 2.0, 10, monitored=True) == 0.0  # nothing seen yet


def test_in_epoch_checkpoints_do_not_wait_for_a_log_step(tmp_path, small_digits, tiny_config, monkeypatch):
    """train.checkpoint_every_minutes is looked at after every step, not only every train.log_every."""
    saved = []
    real_save = checkpoint.save_atomic

    def save(state, path):
        saved.append(state["partial"]["ranks"][0]["pipeline"]["step"] if "partial" in state else "epoch end")
        real_save(state, path)

    monkeypatch.setattr(checkpoint, "save_atomic", save)
    config = tiny_config("train.epochs=1", "train.knn_every=0", "train.log_every=1000",
                         "train.checkpoint_every_minutes=0.000001")
    trainer.pretrain(config, tmp_path)
    assert saved == [1, 2, 3, 4, "epoch end"]  # 4 steps of 64, none of them a log step
