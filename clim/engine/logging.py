"""One logging path: progress per epoch (a bar on a terminal, a plain line every 30 s elsewhere),
``metrics.jsonl`` per epoch, TensorBoard per step.

``metrics.jsonl`` holds exactly one JSON object per finished epoch (key ``"epoch"``). The same
records are kept in the checkpoint, and on resume the file is rewritten from them, so a kill between
checkpoint and log line can neither lose nor duplicate an epoch.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from clim.runtime.progress import Progress

METRICS_NAME = "metrics.jsonl"


class RunLogger:
    def __init__(self, out_dir: str | Path, enabled: bool = True):
        self.out_dir = Path(out_dir)
        self.enabled = enabled
        self._writer = None

    @property
    def metrics_path(self) -> Path:
        return self.out_dir / METRICS_NAME

    def rewrite(self, history: list[dict]) -> None:
        """Make metrics.jsonl hold exactly ``history`` (used on resume)."""
        if not self.enabled:
            return
        tmp = self.metrics_path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(record) + "\n" for record in history))
        os.replace(tmp, self.metrics_path)

    def epoch(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.metrics_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "epoch":
                    self.writer.add_scalar(f"epoch/{key}", value, record["epoch"])
            self.writer.flush()

    def step(self, step: int, scalars: dict[str, float]) -> None:
        if self.writer is not None:
            for key, value in scalars.items():
                self.writer.add_scalar(f"train/{key}", value, step)

    @property
    def writer(self):
        if self._writer is None and self.enabled:
            from torch.utils.tensorboard import SummaryWriter  # slow import: only when logging

            self._writer = SummaryWriter(str(self.out_dir / "tensorboard"))
        return self._writer

    def progress(self, total: int, epoch: int, epochs: int, initial: int = 0, first_line: bool = False,
                 extra: Callable[[], dict[str, str]] | None = None) -> Progress:
        """The epoch's steps; without a terminal a line every 30 s and at the epoch's end (and at its
        first step when ``first_line``: the loss from the run's first step)."""
        return Progress(total, f"epoch {epoch + 1}/{epochs}", initial=initial, enabled=self.enabled,
                        first_line=first_line, last_line=True, extra=extra)

    def message(self, text: str) -> None:
        if self.enabled:
            tqdm.write(text, file=sys.stderr)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
