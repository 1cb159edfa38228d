"""Progress off a terminal: plain lines (count, values, ETA) on time, at the first and last unit
when asked, nothing when disabled; on a terminal the bar's line is ended before a message."""

import time

import pytest

from clim.runtime import progress
from clim.runtime.progress import Progress, format_seconds


def _lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line]


def test_plain_lines_first_on_time_and_last(capsys):
    bar = Progress(10, "epoch 1/3", terminal=False, every=3600, first_line=True, last_line=True,
                   extra=lambda: {"run ETA": "1m00s"})
    bar.set_postfix(loss="6.100", img_s="80")
    bar.update()
    for _ in range(8):
        bar.update()  # within the hour: no line
    bar.update()
    bar.close()
    lines = _lines(capsys)
    assert len(lines) == 2
    assert lines[0].startswith("epoch 1/3: 1/10 (10 %), loss 6.100, img_s 80, ETA ")
    assert lines[0].endswith(", run ETA 1m00s")
    assert lines[1] == "epoch 1/3: 10/10 (100 %), loss 6.100, img_s 80, run ETA 1m00s"  # done: no ETA left


def test_plain_line_every_n_seconds_and_quiet_when_short(capsys, monkeypatch):
    monkeypatch.setenv("CLIM_PROGRESS_EVERY", "0.05")
    monkeypatch.setattr(progress, "_last_line_at", time.monotonic())
    bar = Progress(4, "features", terminal=False)
    bar.update()
    assert _lines(capsys) == []  # nothing before the first interval
    time.sleep(0.06)
    bar.poll()  # inside a long unit
    time.sleep(0.06)
    bar.update()
    bar.update()  # too soon for a line of its own, but close() then shows where it ended
    bar.close()
    lines = _lines(capsys)
    assert len(lines) == 3
    assert lines[0].startswith("features: 1/4 (25 %), ETA ") and lines[1].startswith("features: 2/4 (50 %), ETA ")
    assert lines[2].startswith("features: 3/4 (75 %), ETA ")
    quiet = Progress(4, "features", terminal=False, every=3600)  # the lines above were just written
    for _ in range(4):
        quiet.update()
    quiet.close()
    assert _lines(capsys) == []  # a short job writes nothing
    time.sleep(0.06)
    later = Progress(4, "linear epochs", terminal=False)
    later.update()  # a new bar, but nothing was written for longer than the interval: a line at once
    assert _lines(capsys)[0].startswith("linear epochs: 1/4")
    off = Progress(4, "x", enabled=False, terminal=False, every=0, first_line=True, last_line=True)
    off.update()
    off.close()
    assert _lines(capsys) == []


def test_eta_from_the_rate_so_far(monkeypatch):
    clock = iter([100.0, 110.0, 110.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    bar = Progress(5, "x", initial=1, terminal=False, every=3600)
    bar.n = 3  # two units in 10 s since the start (resumed at 1)
    assert bar.seconds_per_unit() == pytest.approx(5.0)
    assert bar.eta_seconds() == pytest.approx(10.0)


def test_terminal_bar_line_is_ended_before_a_message(capsys, monkeypatch):
    written = []
    monkeypatch.setattr(progress.os, "write", lambda fd, data: written.append(data))
    bar = Progress(3, "epoch 1/1", terminal=True)
    progress.end_line()
    bar.close()
    progress.end_line()  # no bar drawn any more: nothing to end
    assert written == [b"\n"]


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (42.4, "42s"), (185, "3m05s"), (7620, "2h07m")])
def test_format_seconds(seconds, text):
    assert format_seconds(seconds) == text
