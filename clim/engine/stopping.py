"""Stopping a run on SIGINT / SIGTERM without losing it: finish the step, save, exit 130 / 143.

Ctrl-C sends SIGINT; SLURM, Kubernetes and torchrun send SIGTERM on preemption. While
:class:`StopRequest` is installed (the whole of ``pretrain``), the first of them only sets a flag that
:class:`StopCheck` reads after every step; the loop then writes the in-epoch checkpoint and raises
:class:`RunInterrupted`. A second signal stops at once, without saving (KeyboardInterrupt for SIGINT,
the default action for SIGTERM), except one within ``SAME_STOP_SECONDS`` of the first: that is the
same stop delivered twice (a terminal's Ctrl-C reaches torchrun's workers directly and again through torchrun).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from clim.runtime import distributed
from clim.runtime.progress import end_line

SAME_STOP_SECONDS = 0.5
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunInterrupted(Exception):
    """The run stopped on a signal after saving; the CLI prints it as one line and exits with ``exit_code``,
    128 + the signal number. ``show`` is False on the ranks that are not the main one (one line per run)."""

    def __init__(self, signum: int, message: str, show: bool = True):
        super().__init__(message)
        self.signum, self.exit_code, self.show = signum, 128 + signum, show


class StopRequest:
    """Context manager: SIGINT / SIGTERM set :attr:`signum` instead of ending the process. Outside the
    main thread (signal handlers cannot be installed there) it does nothing and :attr:`requested` stays False."""

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


class StopCheck:
    """After every step: stop (a signal arrived) or save inside the epoch (``train.checkpoint_every_minutes``
    passed since this epoch began or the last in-epoch save)? A Python bool and a clock, no device sync;
    under DDP agreed by one host collective, so that all ranks stop, or save, after the same step."""

    def __init__(self, request: StopRequest, every_minutes: float, checkpoint_path: Path, is_main: bool):
        self.request, self.every_minutes = request, every_minutes
        self.checkpoint_path, self.is_main = checkpoint_path, is_main
        self.last_save = time.monotonic()

    def restart_clock(self) -> None:
        """At an epoch's start and after each in-epoch save."""
        self.last_save = time.monotonic()

    def after_step(self) -> tuple[bool, bool]:
        """``(stop, save)``, the same on every rank."""
        save_due = self.every_minutes > 0 and time.monotonic() - self.last_save >= self.every_minutes * 60
        return distributed.any_rank_on_host(self.request.requested, save_due)

    def after_epoch(self) -> bool:
        """A signal arrived during the monitor or the save (on any rank)."""
        return distributed.any_rank_on_host(self.request.requested)[0]

    def interrupted(self, where: str) -> RunInterrupted:
        """The error that ends a stopped run (its checkpoint saved), naming the signal and ``where``."""
        by = self.request.name or "a signal to another rank"
        return RunInterrupted(self.request.signum or signal.SIGTERM,
                              f"stopped by {by} {where}; checkpoint saved: {self.checkpoint_path}", show=self.is_main)
