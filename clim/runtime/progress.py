"""Progress a user sees whatever the terminal: a tqdm bar on a TTY, a plain line every N seconds otherwise
(a log file, ``nohup``, a CI job, a SLURM output file). Every long command (pretraining, linear and
semi-supervised evaluation, feature extraction) shows its progress through :class:`Progress`.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable

from tqdm import tqdm

PLAIN_EVERY_SECONDS = 30.0  # a plain line this often when stderr is not a terminal (env CLIM_PROGRESS_EVERY)

_open_bars = 0  # tqdm bars drawn on a terminal right now: a line there is not ended yet
_last_line_at = time.monotonic()  # the last plain line of any bar: many short bars in a row still show life


def format_seconds(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def end_line() -> None:
    """End the line a terminal bar is drawing, so that what is written next starts on its own line
    (signal-safe: one ``os.write``)."""
    if _open_bars:
        os.write(2, b"\n")


class Progress:
    """``total`` units from ``initial``: ``update(n)`` after each unit, ``set_postfix(loss="6.123")``,
    ``poll()`` inside a long unit. On a terminal a tqdm bar; elsewhere ``desc: 45/100 (45 %), loss 6.123,
    ETA 1m10s`` on stderr when ``every`` seconds (default 30, ``CLIM_PROGRESS_EVERY``) passed since the
    last plain line of any bar, at the first update with ``first_line``, and at ``close()`` with
    ``last_line`` or after an earlier line. ``extra()`` adds values, fresh for each line or postfix."""

    def __init__(self, total: int, desc: str, initial: int = 0, enabled: bool = True, leave: bool = True,
                 every: float | None = None, terminal: bool | None = None,
                 extra: Callable[[], dict[str, str]] | None = None, first_line: bool = False, last_line: bool = False):
        global _open_bars
        terminal = sys.stderr.isatty() if terminal is None else terminal
        if every is None:
            every = float(os.environ.get("CLIM_PROGRESS_EVERY", PLAIN_EVERY_SECONDS))
        self.total, self.desc, self.n, self.every, self.extra = total, desc, initial, every, extra
        self.postfix: dict[str, str] = {}
        self.plain = enabled and not terminal
        self.bar = None
        if enabled and terminal:
            self.bar = tqdm(total=total, initial=initial, desc=desc, leave=leave, dynamic_ncols=True,
                            mininterval=0.5)
            _open_bars += 1
        self._start_n, self._started, self._printed_n = initial, time.monotonic(), None
        self._first_line, self._last_line = first_line, last_line

    def set_postfix(self, **values: str) -> None:
        self.postfix.update(values)
        if self.bar is not None:
            self.bar.set_postfix({**self.postfix, **(self.extra() if self.extra else {})}, refresh=False)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.plain and ((self._first_line and self._printed_n is None) or self._due()):
            self._line()

    def poll(self) -> None:
        if self.plain and self._due():
            self._line()

    def _due(self) -> bool:
        return time.monotonic() - _last_line_at >= self.every

    def seconds_per_unit(self) -> float | None:
        """This bar's rate so far (None before the first unit)."""
        done = self.n - self._start_n
        return (time.monotonic() - self._started) / done if done > 0 else None

    def eta_seconds(self) -> float | None:
        per_unit = self.seconds_per_unit()
        return None if per_unit is None else (self.total - self.n) * per_unit

    def close(self) -> None:
        global _open_bars
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            _open_bars -= 1
        elif self.plain and self._printed_n != self.n and (self._last_line or self._printed_n is not None):
            self._line()
        self.plain = False

    def _line(self) -> None:
        global _last_line_at
        line = f"{self.desc}: {self.n}/{self.total}" + (f" ({100 * self.n / self.total:.0f} %)" if self.total else "")
        eta = self.eta_seconds()
        values = {**self.postfix, **({"ETA": format_seconds(eta)} if eta is not None and self.n < self.total else {}),
                  **(self.extra() if self.extra else {})}
        tqdm.write(", ".join([line, *(f"{key} {value}" for key, value in values.items())]), file=sys.stderr)
        self._printed_n, _last_line_at = self.n, time.monotonic()
