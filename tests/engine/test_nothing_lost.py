"""A good checkpoint is never lost: divergence, failed writes, a second run on the same folder,
temporary files of killed runs, settings changed on resume, and what the progress line shows."""

import errno
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from clim.cli import main
from clim.engine import step, trainer
from clim.engine.checkpointer import TrainingDiverged, divergence_causes
from clim.runtime import checkpoint

STEPS = 4  # the digits subset: 256 images, batch 64


def _args(out, tiny_overrides, *extra):
    args = ["pretrain", "--preset", "demo-cpu", "--out", str(out)]
    for item in tiny_overrides("train.knn_every=0", *extra):
        args += ["--set", item]
    return args


def _all_finite(state: dict) -> bool:
    tensors = [t for t in state["model"].values() if t.is_floating_point()]
    tensors += [t for buffers in state["optimizer"]["state"].values() for t in buffers.values()
                if torch.is_tensor(t) and t.is_floating_point()]
    return all(torch.isfinite(t).all() for t in tensors)


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("clim: error:")]


def test_diverging_run_with_in_epoch_saves_gives_back_the_last_good_epoch(tmp_path, small_digits, tiny_overrides,
                                                                          capsys):
    """lr 1e6 with a save after every step: no save writes a non-finite state, checkpoint.pt ends as
    the good epoch-1 state, and the rerun with a sane lr resumes from it and trains to the end."""
    out = tmp_path / "run"
    small = "train.batch_size=16"  # 16 steps an epoch: lr 1e6 turns the loss NaN within a few of them
    assert main(_args(out, tiny_overrides, "train.epochs=1", small)) == 0
    good = checkpoint.load(out / "checkpoint.pt")
    good_bytes = (out / "checkpoint.pt").read_bytes()
    assert good["epoch"] == 1 and _all_finite(good)
    capsys.readouterr()

    diverge = _args(out, tiny_overrides, "train.epochs=2", small, "train.lr=1e6",
                    "train.checkpoint_every_minutes=0.000001")
    assert main(diverge) == 1
    err = capsys.readouterr().err
    lines = _error_lines(err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "non-finite" in lines[0] or "loss became" in lines[0]
    assert "train.lr=1e+06" in lines[0]
    # checkpoint.pt is the good epoch-1 state again, bit for bit; the in-epoch saves of the
    # diverging epoch (finite, but already lost) are kept aside, named in the message
    assert (out / "checkpoint.pt").read_bytes() == good_bytes
    assert f"{out / 'checkpoint.pt'} holds the last good epoch end (epoch 1 (done))" in lines[0]
    aside = checkpoint.load(out / "checkpoint.diverged.pt")
    assert _all_finite(aside) and aside["partial"] is not None
    step = aside["partial"]["ranks"][0]["pipeline"]["step"]
    assert f"the newest in-epoch save (epoch 2, step {step} of 16) is kept aside" in lines[0]
    assert "run the same command again to resume from it" in lines[0]

    assert main(_args(out, tiny_overrides, "train.epochs=2", small, "train.lr=0.06")) == 0
    err = capsys.readouterr().err
    assert "at the start of epoch 2/2" in err and "changed on resume: train.lr" not in err  # the kept state ran at 0.06
    final = checkpoint.load(out / "checkpoint.pt")
    assert final["epoch"] == 2 and _all_finite(final)
    assert all(math.isfinite(r["loss"]) for r in final["history"])
    assert not (out / "checkpoint.epoch.pt").exists() and not (out / "checkpoint.diverged.pt").exists()


def test_nan_at_the_first_step_says_no_checkpoint_exists(tmp_path, small_digits, tiny_config, monkeypatch):
    from clim.method.objective import StepOutput

    monkeypatch.setattr(step, "compute_step", lambda model, batch, config: StepOutput(
        torch.tensor(float("nan"), requires_grad=True), torch.zeros(64, 128)))
    with pytest.raises(TrainingDiverged) as caught:
        trainer.pretrain(tiny_config("train.knn_every=0"), tmp_path)
    message = str(caught.value)
    assert "no epoch-end checkpoint is on disk" in message and "start afresh" in message
    assert not (tmp_path / "checkpoint.pt").exists()


def test_divergence_causes_follow_the_config(tiny_config):
    class Runner:
        class scaler:
            @staticmethod
            def is_enabled():
                return True

    text = divergence_causes(tiny_config("model.temperature=0.01", "train.amp_dtype=float16"), Runner)
    assert "train.lr=0.06" in text and "model.temperature=0.01" in text and "float16" in text
    Runner.scaler.is_enabled = staticmethod(lambda: False)
    text = divergence_causes(tiny_config(), Runner)
    assert "temperature" not in text and "float16" not in text


def test_disk_full_says_one_line_keeps_the_old_checkpoint_and_removes_the_temp_file(tmp_path, small_digits,
                                                                                  tiny_overrides, capsys,
                                                                                  monkeypatch):
    out = tmp_path / "run"
    assert main(_args(out, tiny_overrides, "train.epochs=1")) == 0
    before = (out / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    real_save = torch.save

    def full_disk(state, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 partial bytes")  # part of the file is on disk when the space runs out
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1234 vs 1200")

    monkeypatch.setattr(torch, "save", full_disk)
    assert main(_args(out, tiny_overrides, "train.epochs=2")) == 1
    err = capsys.readouterr().err
    lines = _error_lines(err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"could not write {out / 'checkpoint.pt'}" in lines[0] and "MiB free" in lines[0]
    assert (out / "checkpoint.pt").read_bytes() == before  # intact and loadable
    assert checkpoint.load(out / "checkpoint.pt")["epoch"] == 1
    assert not list(out.glob(".*.tmp*")), "the temporary file was left behind"
    monkeypatch.setattr(torch, "save", real_save)
    assert main(_args(out, tiny_overrides, "train.epochs=2")) == 0  # space back: the same command goes on


def test_save_atomic_turns_an_oserror_into_one_line(tmp_path, monkeypatch):
    def no_space(state, handle, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(checkpoint.CheckpointWriteError, match="No space left on device") as caught:
        checkpoint.save_atomic({"a": 1}, tmp_path / "x.pt")
    assert "\n" not in str(caught.value) and not list(tmp_path.iterdir())


def test_stale_temp_files_of_killed_runs_are_removed_at_the_next_start(tmp_path, small_digits, tiny_config, capsys):
    out = tmp_path / "run"
    (out / "positives").mkdir(parents=True)
    stale = [out / ".checkpoint.pt.tmp4242", out / "positives" / ".details.pt.tmp99"]
    for path in stale:
        path.write_bytes(b"x" * 100)
    keep = out / "notes.tmp1"  # not one of ours: no leading dot
    keep.write_text("mine")
    trainer.pretrain(tiny_config("train.knn_every=0", "train.epochs=1"), out)
    assert not any(path.exists() for path in stale) and keep.exists()
    assert "removed 2 temporary file(s)" in capsys.readouterr().err


def test_a_second_run_on_a_busy_folder_stops_at_once_naming_the_pid(tmp_path, small_digits, tiny_overrides, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom clim.runtime.checkpoint import RunLock\n"
        f"lock = RunLock({str(out)!r})\nlock.acquire()\nprint('locked', flush=True)\ntime.sleep(60)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(_args(out, tiny_overrides, "train.epochs=1")) == 2
        lines = _error_lines(capsys.readouterr().err)
        assert len(lines) == 1 and f"in use by another run (PID {holder.pid})" in lines[0]
        assert not (out / "config.json").exists()  # nothing written by the refused run
    finally:
        holder.kill()
        holder.wait()
    # kill -9 leaves no stale lock: the operating system dropped it with the process
    lock = checkpoint.RunLock(out)
    lock.acquire()
    lock.release()


def test_the_lock_is_released_after_a_run_and_readers_do_not_need_it(tmp_path, small_digits, tiny_config):
    out = tmp_path / "run"
    trainer.pretrain(tiny_config("train.knn_every=0", "train.epochs=1"), out)
    with checkpoint.RunLock(out):  # free again after the run
        assert checkpoint.load(out / "checkpoint.pt")["epoch"] == 1  # a reader beside a holder


def test_settings_changed_on_resume_are_printed_and_recorded(tmp_path, small_digits, tiny_config, capsys):
    out = tmp_path / "run"
    trainer.pretrain(tiny_config("train.knn_every=0", "train.epochs=1"), out)
    capsys.readouterr()
    trainer.pretrain(tiny_config("train.knn_every=0", "train.epochs=2", "model.temperature=0.3"), out)
    err = capsys.readouterr().err
    assert "changed on resume: model.temperature 0.2 -> 0.3 (from epoch 2)" in err
    assert "changed on resume: train.epochs" in err
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"]["temperature"] == 0.3 and "run" in saved
    assert saved["changes"] == [{"from_epoch": 2, "step": STEPS, "changed": {
        "train.epochs": [1, 2], "model.temperature": [0.2, 0.3]}}]
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert "changed" not in history[0] and history[1]["changed"]["model.temperature"] == [0.2, 0.3]
    from clim.report import write_report  # the report says what each epoch ran with

    report = write_report(out).read_text()
    assert "| 2 | 4 | model.temperature | 0.2 | 0.3 |" in report
    epoch_rows = [line for line in report.splitlines() if line.startswith("| 2 | ") and "->" in line]
    assert epoch_rows and "model.temperature 0.2 -> 0.3" in epoch_rows[0]


def test_progress_lines_show_the_current_lr_and_mark_the_last_loss_read(tmp_path, small_digits, tiny_config,
                                                                       monkeypatch, capsys):
    monkeypatch.setenv("CLIM_PROGRESS_EVERY", "0")  # a plain line after every step
    trainer.pretrain(tiny_config("train.knn_every=0", "train.epochs=1", "train.lr=0.5"), tmp_path)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("epoch 1/1:")]
    lrs = [line.split("lr ")[1].split(",")[0] for line in lines if "lr " in line]
    expected = [f"{step.cosine_lr(0.5, s, STEPS, 0):.4f}" for s in range(STEPS)]
    assert lrs[:STEPS] == expected  # the schedule moves between loss reads (log_every 1000)
    assert all("(read at step 1)" in line for line in lines[1:STEPS])  # the loss of the one read, marked


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_checkpoint_write_error_is_exit_code_one():
    from clim.cli import _exit_code

    assert _exit_code(checkpoint.CheckpointWriteError(checkpoint.Path("/x/y.pt"), OSError(28, "full"))) == 1
    assert _exit_code(checkpoint.RunFolderBusy("busy")) == 2


def test_without_hard_links_the_epoch_end_state_is_copied(tmp_path, small_digits, tiny_config, monkeypatch):
    """A file system that refuses os.link still keeps the epoch-end state beside the in-epoch saves."""
    import clim.engine.checkpointer as checkpointer_module

    def no_links(*args):
        raise OSError(errno.EPERM, "Operation not permitted")

    out = tmp_path / "run"
    trainer.pretrain(tiny_config("train.knn_every=0", "train.epochs=1"), out)
    epoch_one = (out / "checkpoint.pt").read_bytes()
    monkeypatch.setattr(checkpointer_module.os, "link", no_links)
    saved = []
    real_save = checkpoint.save_atomic

    def save(state, path):
        if "partial" in state and not saved:  # the first in-epoch save: the backup exists by now
            saved.append((out / "checkpoint.epoch.pt").read_bytes())
        real_save(state, path)

    monkeypatch.setattr(checkpoint, "save_atomic", save)
    trainer.pretrain(tiny_config("train.knn_every=0", "train.epochs=2", "train.checkpoint_every_minutes=0.000001"),
                     out)
    assert saved == [epoch_one]
    assert not (out / "checkpoint.epoch.pt").exists()  # removed again at the epoch end
