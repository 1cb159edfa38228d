"""Kill -9 and resume gives bit-identical weights; epochs can be raised; fixed keys cannot change.

Approach: the runs are real `clim pretrain` processes (the CLI's main() on the 256-image digits
subset, see tests/conftest.py), CLIM with a refresh before the second epoch, so the resumed part
re-selects positives and trains with them, and train.deterministic on, one thread per process. An
uninterrupted 2-epoch reference runs in the background while a second run is SIGKILLed as soon as
its checkpoint says epoch >= 1 (polled every 20 ms through clim.runtime.checkpoint.load). The
second epoch (refresh + 4 steps) takes seconds, so the kill lands inside it; the test checks that
it did (the checkpoint on disk says epoch 1 of 2) rather than assuming it. Running the same
command again resumes and must end with exactly the reference's tensors.
"""

import json
import signal
import time

import pytest
import torch

import clim.engine.trainer as trainer
from clim.config import ConfigError
from clim.engine.resume import resume_message
from clim.runtime import checkpoint

EPOCHS = 2


def _args(out, tiny_overrides, *extra):
    args = ["pretrain", "--preset", "demo-cpu", "--out", str(out)]
    for item in tiny_overrides(f"train.epochs={EPOCHS}", "train.deterministic=true", *extra, clim=True):
        args += ["--set", item]
    return args


def _epoch_on_disk(path):
    try:
        return checkpoint.load(path)["epoch"]
    except (FileNotFoundError, EOFError, RuntimeError):
        return 0


def _kill_after_first_checkpoint(process, path, timeout=240):
    started, seen = time.monotonic(), None
    while time.monotonic() - started < timeout:
        if process.poll() is not None:
            pytest.fail(f"run ended (code {process.returncode}) before it could be killed")
        stat = path.stat() if path.exists() else None
        if stat is not None and (stat.st_mtime_ns, stat.st_size) != seen:
            seen = (stat.st_mtime_ns, stat.st_size)
            if _epoch_on_disk(path) >= 1:
                process.send_signal(signal.SIGKILL)
                process.wait()
                return
        time.sleep(0.02)
    process.kill()
    pytest.fail("no checkpoint appeared")


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, clim_script):
    return tmp_path_factory.mktemp("resume")


def test_kill_and_resume_is_exact(run_clim, tiny_overrides, tmp_path_factory, resumed):
    reference = tmp_path_factory.mktemp("reference")
    logs = tmp_path_factory.mktemp("logs")
    background = run_clim(_args(reference, tiny_overrides), log=logs / "reference.log")
    victim = run_clim(_args(resumed, tiny_overrides), log=logs / "killed.log")
    ckpt = resumed / checkpoint.CHECKPOINT_FILE
    _kill_after_first_checkpoint(victim, ckpt)
    assert victim.returncode == -signal.SIGKILL
    killed_at = checkpoint.load(ckpt)["epoch"]
    assert 1 <= killed_at < EPOCHS  # the kill interrupted the run

    again = run_clim(_args(resumed, tiny_overrides))
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {ckpt} at the start of epoch {killed_at + 1}/{EPOCHS}" in again.stderr
    assert background.wait(timeout=300) == 0, (logs / "reference.log").read_text()[-3000:]

    mine = checkpoint.load(ckpt)
    ref = checkpoint.load(reference / checkpoint.CHECKPOINT_FILE)
    assert mine["epoch"] == ref["epoch"] == EPOCHS and mine["step"] == ref["step"]
    assert mine["model"].keys() == ref["model"].keys()
    different = [k for k in ref["model"] if not torch.equal(mine["model"][k], ref["model"][k])]
    assert different == []
    assert bool((mine["model"]["positives"] >= 0).all())  # the table is part of what was compared
    for a, b in zip(mine["optimizer"]["state"].values(), ref["optimizer"]["state"].values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])

    # Same losses per epoch, and metrics.jsonl holds each epoch exactly once.
    lines = [json.loads(x) for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert [r["loss"] for r in lines] == [r["loss"] for r in ref["history"]]
    assert [r["selection"]["positive_precision"] for r in lines[1:]] == \
        [r["selection"]["positive_precision"] for r in ref["history"][1:]]


def _partial_on_disk(path):
    try:
        saved = checkpoint.load(path)
    except (FileNotFoundError, EOFError, RuntimeError, ConfigError):
        return None
    return (saved["epoch"], saved["partial"]["ranks"][0]["pipeline"]["step"]) if "partial" in saved else None


def test_kill_inside_an_epoch_and_resume_is_exact(run_clim, tiny_overrides, tmp_path_factory):
    """train.checkpoint_every_minutes saves inside an epoch (here after every step); a kill there and
    a rerun continue from that step and end with the uninterrupted run's tensors and losses."""
    extra = ("train.checkpoint_every_minutes=0.000001", "train.log_every=1")
    reference, victim_dir = tmp_path_factory.mktemp("reference-mid"), tmp_path_factory.mktemp("mid")
    logs = tmp_path_factory.mktemp("logs-mid")
    background = run_clim(_args(reference, tiny_overrides, *extra), log=logs / "reference.log")
    victim = run_clim(_args(victim_dir, tiny_overrides, *extra), log=logs / "killed.log")
    ckpt = victim_dir / checkpoint.CHECKPOINT_FILE
    started, killed_at = time.monotonic(), None
    while killed_at is None and time.monotonic() - started < 240:
        if victim.poll() is not None:
            pytest.fail(f"run ended (code {victim.returncode}) before it could be killed")
        where = _partial_on_disk(ckpt)
        if where is not None and where[0] >= 1:  # inside the second epoch, which trains with positives
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            killed_at = _partial_on_disk(ckpt)
        time.sleep(0.01)
    assert killed_at is not None and killed_at[0] == 1 and 1 <= killed_at[1] < 4, killed_at  # really inside

    again = run_clim(_args(victim_dir, tiny_overrides, *extra))
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"at epoch 2/{EPOCHS}, step {killed_at[1]} of 4 (saved inside the epoch)" in again.stderr
    assert f"epoch 2/{EPOCHS}:" in again.stderr  # the progress bar of that epoch: the same numbering
    assert "positives refreshed" not in again.stderr  # the epoch's table came from the checkpoint
    assert background.wait(timeout=300) == 0, (logs / "reference.log").read_text()[-3000:]

    mine = checkpoint.load(ckpt)
    ref = checkpoint.load(reference / checkpoint.CHECKPOINT_FILE)
    assert "partial" not in mine and mine["epoch"] == ref["epoch"] == EPOCHS and mine["step"] == ref["step"]
    different = [k for k in ref["model"] if not torch.equal(mine["model"][k], ref["model"][k])]
    assert different == []
    for a, b in zip(mine["optimizer"]["state"].values(), ref["optimizer"]["state"].values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])
    lines = [json.loads(x) for x in (victim_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    for key in ("loss", "loss_moco", "loss_positive"):
        assert [r.get(key) for r in lines] == [r.get(key) for r in ref["history"]], key
    timing = {"seconds"}  # the refresh's wall time is the only thing allowed to differ
    assert {k: v for k, v in lines[1]["selection"].items() if k not in timing} == \
        {k: v for k, v in ref["history"][1]["selection"].items() if k not in timing}


def test_raising_epochs_continues(resumed, small_digits, tiny_config, capsys):
    if not (resumed / checkpoint.CHECKPOINT_FILE).exists():
        pytest.skip("needs the resumed run")
    before = checkpoint.load(resumed / checkpoint.CHECKPOINT_FILE)
    config = tiny_config(f"train.epochs={EPOCHS + 1}", "train.knn_every=0", clim=True)
    history = trainer.pretrain(config, resumed)
    said = capsys.readouterr().err
    # the positive term joined at epoch 2 (refresh_every 1): resuming at 3 must not say it joins now
    assert "joins the loss" not in said and "epoch 3: the loss includes CLIM's positive term (since epoch 2)" in said
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert history[:2] == before["history"]  # earlier epochs kept, not re-run
    assert "selection" in history[2]  # the refresh schedule goes on
    after = checkpoint.load(resumed / checkpoint.CHECKPOINT_FILE)
    assert after["epoch"] == 3 and after["step"] == before["step"] + 4
    assert not torch.equal(after["model"]["queue"], before["model"]["queue"])  # it trained
    lines = (resumed / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]


@pytest.mark.parametrize("override, key", [("model.backbone=resnet18", "model.backbone"),
                                           ("method.name=mocov2", "method.name")])
def test_changed_fixed_key_refuses_to_resume(override, key, resumed, small_digits, tiny_config):
    if not (resumed / checkpoint.CHECKPOINT_FILE).exists():
        pytest.skip("needs the resumed run")
    before = checkpoint.load(resumed / checkpoint.CHECKPOINT_FILE)["step"]
    config = tiny_config("train.epochs=9", "train.knn_every=0", override, clim=True)
    with pytest.raises(ConfigError, match=f"cannot resume: '{key}'"):
        trainer.pretrain(config, resumed)
    assert checkpoint.load(resumed / checkpoint.CHECKPOINT_FILE)["step"] == before


def test_resume_message_numbers_epochs_as_the_progress_bar(tmp_path):
    """Epoch e/E counts from 1 as the bar does ("epoch 3/6"), steps as the bar's initial count."""
    path = tmp_path / "checkpoint.pt"
    assert resume_message(path, 2, 6, 11, 8) == \
        f"resumed from {path} at epoch 3/6, step 8 of 11 (saved inside the epoch)"
    assert resume_message(path, 2, 6, 11, None) == f"resumed from {path} at the start of epoch 3/6"
    assert "all 6 epochs are done" in resume_message(path, 6, 6, 11, None)
