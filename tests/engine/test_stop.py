"""SIGTERM / SIGINT inside the first epoch: the step finishes, an in-epoch checkpoint is written, one
line says where and how to resume, the exit code is 128 + signal; the same command again resumes
inside that epoch and ends with the weights of an uninterrupted run. Real signals, real processes.

Approach: tiny CLIM runs on the digits subset (tests/conftest.py) with batch 16, so an epoch is 16
steps; stderr is a file, so the trainer writes a plain progress line at its first step, and the
signal goes out as soon as that line appears. The checkpoint on disk then says where the run really
stopped (inside epoch 1), which the test checks rather than assumes. Two processes (gloo,
torchrun): only rank 0 gets the signal, and both ranks must still stop after the same step.
"""

import os
import re
import signal
import time
from pathlib import Path

import pytest
import torch

from clim.engine.stopping import StopCheck, StopRequest
from clim.runtime import checkpoint

from test_ddp import LAUNCHER

EPOCHS, STEPS = 2, 16


def _args(out, tiny_overrides, *extra):
    args = ["pretrain", "--preset", "demo-cpu", "--out", str(out)]
    for item in tiny_overrides(f"train.epochs={EPOCHS}", "train.batch_size=16", "train.deterministic=true",
                               *extra, clim=True):
        args += ["--set", item]
    return args


def _wait_for_first_step(process, log: Path, timeout=240):
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if process.poll() is not None:
            pytest.fail(f"run ended (code {process.returncode}) before its first step:\n{log.read_text()[-3000:]}")
        if log.exists() and f"epoch 1/{EPOCHS}: " in log.read_text():
            return
        time.sleep(0.005)
    process.kill()
    pytest.fail("no progress line appeared")


def _stopped_inside_first_epoch(ckpt: Path, steps: int = STEPS) -> int:
    saved = checkpoint.load(ckpt)
    assert saved["epoch"] == 0 and "partial" in saved, "the stop did not land inside the first epoch"
    stops = {rank["pipeline"]["step"] for rank in saved["partial"]["ranks"]}
    assert len(stops) == 1  # every rank stopped after the same step
    (step,) = stops
    assert 1 <= step < steps and saved["step"] == step
    return step


def _assert_same_weights(run_dir: Path, reference_dir: Path) -> None:
    mine = checkpoint.load(run_dir / checkpoint.CHECKPOINT_FILE)
    ref = checkpoint.load(reference_dir / checkpoint.CHECKPOINT_FILE)
    assert "partial" not in mine and mine["epoch"] == ref["epoch"] == EPOCHS and mine["step"] == ref["step"]
    different = [k for k in ref["model"] if not torch.equal(mine["model"][k], ref["model"][k])]
    assert different == []
    assert bool((mine["model"]["positives"] >= 0).all())  # trained with CLIM's positives after the stop
    for a, b in zip(mine["optimizer"]["state"].values(), ref["optimizer"]["state"].values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])
    assert [r["loss"] for r in mine["history"]] == [r["loss"] for r in ref["history"]]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, run_clim, tiny_overrides):
    """The uninterrupted run, started once in the background for both signals."""
    out, logs = tmp_path_factory.mktemp("reference"), tmp_path_factory.mktemp("logs")
    return run_clim(_args(out, tiny_overrides), log=logs / "reference.log"), out, logs / "reference.log"


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_inside_first_epoch_saves_and_resumes_exactly(signum, code, reference, run_clim, tiny_overrides,
                                                             tmp_path):
    out, log = tmp_path / "run", tmp_path / "stopped.log"
    victim = run_clim(_args(out, tiny_overrides), log=log)
    _wait_for_first_step(victim, log)
    victim.send_signal(signum)
    assert victim.wait(timeout=120) == code, log.read_text()[-3000:]
    ckpt = out / checkpoint.CHECKPOINT_FILE
    step = _stopped_inside_first_epoch(ckpt)
    text = log.read_text()
    lines = [line for line in text.splitlines() if "stopped by" in line]
    name = signal.Signals(signum).name
    assert lines == [f"clim: stopped by {name} at epoch 1/{EPOCHS}, step {step} of {STEPS} (saved inside the epoch); "
                     f"checkpoint saved: {ckpt}; resume with: clim {' '.join(_args(out, tiny_overrides))}"], text[-2000:]
    assert "Traceback" not in text
    # stderr is no terminal: plain progress lines, the first one at the first step, with its loss
    first = next(line for line in text.splitlines() if line.startswith(f"epoch 1/{EPOCHS}: "))
    assert re.fullmatch(rf"epoch 1/{EPOCHS}: 1/{STEPS} \(6 %\), loss \d+\.\d{{3}} \(read at step 1\), img_s \d+, "
                        r"lr 0\.0600, ETA \w+, run ETA \w+", first), first

    again = run_clim(_args(out, tiny_overrides))
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"step {step} of {STEPS} (saved inside the epoch)" in again.stderr
    process, reference_dir, reference_log = reference
    assert process.wait(timeout=300) == 0, reference_log.read_text()[-3000:]
    _assert_same_weights(out, reference_dir)


def _children(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in children.read_text().split()] if children.exists() else []


def _rank_zero(launcher_pid: int, timeout=120) -> int:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        for child in _children(launcher_pid):
            try:
                environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"RANK=0" in environ and b"LOCAL_RANK=0" in environ:
                return child
        time.sleep(0.05)
    pytest.fail("no rank-0 worker found under torchrun")


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds torchrun's workers through /proc")
def test_signal_to_rank_zero_stops_both_ranks_after_the_same_step(run_clim, tiny_overrides, tmp_path):
    ddp = lambda out: _args(out, tiny_overrides, "train.device=cpu", "train.batch_size=32")  # noqa: E731
    reference_dir, out = tmp_path / "reference", tmp_path / "run"
    background = run_clim(ddp(reference_dir), launcher=LAUNCHER, log=tmp_path / "reference.log")
    log = tmp_path / "stopped.log"
    victim = run_clim(ddp(out), launcher=LAUNCHER, log=log)
    rank_zero = _rank_zero(victim.pid)
    _wait_for_first_step(victim, log)
    os.kill(rank_zero, signal.SIGTERM)  # rank 1 gets nothing: it learns of the stop through the collective
    victim.wait(timeout=120)
    text = log.read_text()
    ckpt = out / checkpoint.CHECKPOINT_FILE
    step = _stopped_inside_first_epoch(ckpt, STEPS // 2)  # global batch 32: 8 steps per epoch
    assert sum("clim: stopped by SIGTERM" in line for line in text.splitlines()) == 1, text[-3000:]
    assert "resume with: the same torchrun launch of `clim pretrain" in text

    again = run_clim(ddp(out), launcher=LAUNCHER, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"step {step} of {STEPS // 2} (saved inside the epoch)" in again.stderr
    assert background.wait(timeout=300) == 0, (tmp_path / "reference.log").read_text()[-3000:]
    _assert_same_weights(out, reference_dir)


def test_second_signal_stops_at_once():
    """In this process: the first SIGINT only sets the flag; one a moment later raises at once."""
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a background job
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and stop.name == "SIGINT"
        os.kill(os.getpid(), signal.SIGINT)  # the same stop delivered twice (e.g. torchrun passing it on)
        time.sleep(0.6)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert signal.getsignal(signal.SIGINT) is before  # put back


def test_stop_check_after_a_step_stop_on_a_signal_save_on_the_clock(tmp_path):
    """The loop's question after every step: (stop, save inside the epoch); the error names the signal."""
    request = StopRequest()  # not entered: no handlers installed, the flag is set by hand below
    check = StopCheck(request, 0.0, tmp_path / "checkpoint.pt", is_main=True)
    assert check.after_step() == (False, False) and not check.after_epoch()  # 0 minutes: never by the clock
    check.every_minutes = 1e-9
    time.sleep(0.01)
    assert check.after_step() == (False, True)
    check.every_minutes = 60.0
    check.restart_clock()
    assert check.after_step() == (False, False)
    request.signum = signal.SIGTERM
    assert check.after_step() == (True, False) and check.after_epoch()
    error = check.interrupted("after epoch 1/2")
    assert error.exit_code == 128 + signal.SIGTERM and error.show
    assert str(error) == f"stopped by SIGTERM after epoch 1/2; checkpoint saved: {tmp_path / 'checkpoint.pt'}"


def test_interrupt_elsewhere_ends_the_bar_line_first(monkeypatch, capsys, tmp_path):
    """Ctrl-C outside pretraining (here inside `clim report`) while a terminal bar is drawn: the line
    is ended before the CLI's message, which then stands on its own."""
    from clim.cli import main
    from clim.runtime import progress

    written = []
    monkeypatch.setattr(progress.os, "write", lambda fd, data: written.append((fd, data)))
    monkeypatch.setattr(progress, "_open_bars", 0)  # put back afterwards: the bar below is left open

    def interrupted(run_dir):
        progress.Progress(10, "features", terminal=True).update()
        raise KeyboardInterrupt

    monkeypatch.setattr("clim.report.write_report", interrupted)
    assert main(["report", str(tmp_path)]) == 130
    assert written == [(2, b"\n")]
    assert capsys.readouterr().err.splitlines()[-1].startswith("clim: interrupted")


_TWO_SIGTERMS = """
import os, signal, time
from clim.engine.stopping import StopRequest
with StopRequest() as stop:
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.requested
    time.sleep(0.6)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)
print("not stopped")
"""


def test_second_sigterm_ends_the_process_at_once(run_python, tmp_path):
    script = tmp_path / "two_sigterms.py"
    script.write_text(_TWO_SIGTERMS)
    result = run_python([script], timeout=60)
    assert result.returncode == -signal.SIGTERM and "not stopped" not in result.stdout
    assert result.stderr.strip() == "clim: second SIGTERM: stopping now, without saving (the last checkpoint is kept)"
