"""One logging path: progress per epoch (a bar on a terminal, a plain line every 30 s elsewhere) with
the whole run's ETA beside the epoch's own, ``metrics.jsonl`` per epoch, TensorBoard per step.
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

from clim.runtime.progress import Progress, format_seconds
from clim.specs import METRICS_FILE, TENSORBOARD_DIR, selection_spec


class RunLogger:
    def __init__(self, out_dir: str | Path, enabled: bool = True):
        self.out_dir, self.enabled, self._writer = Path(out_dir), enabled, None
        self.metrics_path = self.out_dir / METRICS_FILE

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

            self._writer = SummaryWriter(str(self.out_dir / TENSORBOARD_DIR))
        return self._writer

    def progress(self, total: int, epoch: int, epochs: int, initial: int = 0, first_line: bool = False,
                 eta: "RunEta | None" = None) -> Progress:
        """The epoch's steps; without a terminal a line every 30 s and at the epoch's end (and at its
        first step when ``first_line``: the loss from the run's first step). ``eta`` adds the whole
        run's ETA to every line."""
        bar = Progress(total, f"epoch {epoch + 1}/{epochs}", initial=initial, enabled=self.enabled,
                       first_line=first_line, last_line=True, extra=eta)
        if eta is not None:
            eta.epoch, eta.bar = epoch, bar
        return bar

    def message(self, text: str) -> None:
        if self.enabled:
            tqdm.write(text, file=sys.stderr)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class RunEta:
    """The whole run's ETA beside each epoch's own (``{"run ETA": "12m30s"}`` for :class:`Progress`):
    :func:`remaining_seconds` at the rate of the epoch's bar, plus ``after(history)``, the seconds the
    caller will spend after pretraining (``clim demo``'s evaluations)."""

    def __init__(self, config, history: list[dict], steps: int, monitored: bool,
                 after: Callable[[list[dict]], float] | None = None):
        self.config, self.history, self.steps, self.monitored, self.after = config, history, steps, monitored, after
        self.epoch, self.bar = 0, None  # the epoch and the bar it follows (RunLogger.progress sets them)

    def __call__(self) -> dict[str, str]:
        seconds = remaining_seconds(self.config, self.history, self.epoch, self.bar.total - self.bar.n,
                                    self.bar.seconds_per_unit() or 0.0, self.steps, self.monitored)
        return {"run ETA": format_seconds(seconds + (self.after(self.history) if self.after else 0.0))}


def remaining_seconds(config, history: list[dict], epoch: int, steps_left: int, seconds_per_step: float,
                      steps: int, monitored: bool) -> float:
    """The whole run's time left: its steps at this epoch's rate, plus each coming positives refresh
    and kNN monitor as long as the last one took (nothing for those not seen yet)."""
    from clim.method.positives import is_refresh_epoch  # torch: not at import

    refresh = next((r["selection"]["seconds"] for r in reversed(history) if "seconds" in r.get("selection", {})), 0.0)
    knn = next((r["knn_seconds"] for r in reversed(history) if "knn_seconds" in r), 0.0)
    epochs, selection = config.train.epochs, selection_spec(config)
    seconds = (steps_left + (epochs - epoch - 1) * steps) * seconds_per_step
    for coming in range(epoch, epochs):
        seconds += refresh if coming > epoch and is_refresh_epoch(selection, coming) else 0.0
        seconds += knn if monitored and ((coming + 1) % config.train.knn_every == 0 or coming + 1 == epochs) else 0.0
    return seconds
