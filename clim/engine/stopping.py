"""Stopping a run on SIGINT / SIGTERM without losing it: finish the step, save, exit 130 / 143.

Ctrl-C sends SIGINT; SLURM, Kubernetes and torchrun send SIGTERM on preemption. While
:class:`StopRequest` is installed (the whole of ``pretrain``), the first of them only sets a flag
that the loop reads after every step (a Python bool, no device sync; under DDP agreed by one host
collective, so every rank stops after the same step). The loop then writes the in-epoch checkpoint
and raises :class:`RunInterrupted`, which the CLI prints as one line and turns into exit code
128 + signal number.

A second signal stops at once, without saving (KeyboardInterrupt for SIGINT, the default action for
SIGTERM), except one within ``SAME_STOP_SECONDS`` of the first: that is the same stop delivered
twice (a terminal's Ctrl-C reaches torchrun's workers directly and again through torchrun).
"""

from __future__ import annotations

import os
import signal
import threading
import time

from clim.runtime.progress import end_line

SAME_STOP_SECONDS = 0.5
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunInterrupted(Exception):
    """The run stopped on a signal after saving; ``exit_code`` is 128 + the signal number.
    ``show`` is False on the ranks that are not the main one (one line per run, not per rank)."""

    def __init__(self, signum: int, message: str, show: bool = True):
        super().__init__(message)
        self.signum, self.exit_code, self.show = signum, 128 + signum, show


class StopRequest:
    """Context manager: SIGINT / SIGTERM set :attr:`signum` instead of ending the process.

    Outside the main thread (signal handlers cannot be installed there) it does nothing and
    :attr:`requested` stays False.
    """

    def __init__(self):
        self.signum: int | None = None
        self._first_at = 0.0
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        now = time.monotonic()
        if self.signum is None:
            self.signum, self._first_at = signum, now
            return
        if now - self._first_at < SAME_STOP_SECONDS:
            return
        self._restore()
        end_line()
        if signum == signal.SIGINT:
            raise KeyboardInterrupt  # the CLI prints its line and exits with 130
        os.write(2, b"clim: second SIGTERM: stopping now, without saving (the last checkpoint is kept)\n")
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
