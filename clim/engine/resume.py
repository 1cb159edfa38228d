"""Starting a run: afresh (``config.json``) or from ``checkpoint.pt``, at an epoch end or inside an epoch
(then every rank also gets its point in it: data pipeline, step generator, meter sums, RNG). Keys that
fix the model or the data (:data:`FIXED_ON_RESUME`) may not change on resume; any other change is
printed and recorded in config.json.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from clim.config import Config, ConfigError
from clim.engine.checkpointer import EPOCH_BACKUP_NAME
from clim.engine.logging import RunLogger
from clim.engine.step import StepRunner
from clim.method.positives import load_checkpoint_model_state
from clim.runtime import checkpoint
from clim.specs import CONFIG_FILE

# Keys that must match to resume: the rest (epochs, logging, eval cadence) may change.
FIXED_ON_RESUME = ("data.name", "data.image_size", "model.backbone", "model.head_dim", "model.queue_size",
                   "model.small_stem", "method.name", "method.num_positives", "train.batch_size")


@dataclass
class StartPoint:
    """Where the loop starts: the epoch (0-based), the global step, the metrics history so far; for a
    checkpoint saved inside an epoch this rank's part of it (``partial``). ``saved_at`` /
    ``epoch_end_at``: what checkpoint.pt and the newest epoch-end state on disk hold (for the
    :class:`~clim.engine.checkpointer.Checkpointer`); ``changes``: settings changed on resume."""

    epoch: int = 0
    step: int = 0
    history: list[dict] = field(default_factory=list)
    partial: dict | None = None
    saved_at: str | None = None
    epoch_end_at: str | None = None
    changes: dict[str, tuple] = field(default_factory=dict)


def start_afresh(out_dir: Path, config: Config, world_size: int, per_process: int, bn_splits: int,
                 num_samples: int, is_main: bool) -> StartPoint:
    """A new run: config.json holds the config and, under ``"run"``, the process layout, lr and dataset size."""
    if is_main:
        run = {"world_size": world_size, "batch_size_global": config.train.batch_size,
               "batch_size_per_process": per_process, "bn_splits_per_process": bn_splits,
               "bn_group_size": per_process // bn_splits, "lr": config.lr, "num_samples": num_samples}
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / CONFIG_FILE).write_text(json.dumps({**config.to_dict(), "run": run}, indent=2))
    return StartPoint()


def resume_from(path: Path, config: Config, model, bank, runner: StepRunner, rank: int, steps: int,
                logger: RunLogger, is_main: bool) -> StartPoint:
    """Load ``path`` into the model, bank, optimiser and scaler, restore the RNG states (this rank's
    in-epoch ones for a checkpoint saved inside an epoch), rewrite metrics.jsonl from the history and
    say where the run goes on and what changed."""
    saved = checkpoint.load(path)  # onto the CPU: load_state_dict places it
    changes = check_resume(saved, config)
    load_checkpoint_model_state(model, bank, saved["model"])
    runner.optimizer.load_state_dict(saved["optimizer"])
    runner.scaler.load_state_dict(saved["scaler"])
    checkpoint.set_rng_state(saved["rng"])
    start = StartPoint(saved["epoch"], saved["step"], list(saved["history"]), changes=changes)
    start.saved_at = start.epoch_end_at = f"epoch {start.epoch} (done)"
    if (partial := saved.get("partial")) is not None:  # saved inside an epoch: this rank's part of it
        partial = start.partial = {**partial, **partial["ranks"][min(rank, len(partial["ranks"]) - 1)]}
        checkpoint.set_rng_state(partial["rng"])
        start.saved_at = f"epoch {start.epoch + 1}, step {partial['pipeline']['step']} of {steps}"
        if not path.with_name(EPOCH_BACKUP_NAME).exists():
            start.epoch_end_at = None  # in the first epoch, or its epoch-end file is gone
    logger.rewrite(start.history)
    logger.message(resume_message(path, start.epoch, config.train.epochs, steps,
                                  partial["pipeline"]["step"] if partial else None))
    if changes and is_main:
        for key, (before, after) in changes.items():
            logger.message(f"changed on resume: {key} {before!r} -> {after!r} (from epoch {start.epoch + 1})")
        record_config_change(path.parent, config, changes, start.epoch, start.step)
    if changes and partial is not None:
        partial["record"] = {**partial["record"], "changed": jsonable(changes)}
    return start


def resume_message(path: Path, epochs_done: int, epochs: int, steps: int, step_in_epoch: int | None) -> str:
    """Where a resumed run goes on, numbered as the progress bar numbers it (epoch e/E, step s of S)."""
    if epochs_done >= epochs:
        return f"resumed from {path}: all {epochs} epochs are done, nothing to train (raise train.epochs to go on)"
    if step_in_epoch is not None:
        return (f"resumed from {path} at epoch {epochs_done + 1}/{epochs}, step {step_in_epoch} of {steps} "
                "(saved inside the epoch)")
    return f"resumed from {path} at the start of epoch {epochs_done + 1}/{epochs}"


def check_resume(saved: dict, config: Config) -> dict[str, tuple]:
    """Refuse keys that cannot change on resume; return the others that changed, ``{key: (old, new)}``."""
    saved_config = Config.from_dict(saved["config"])
    for key in FIXED_ON_RESUME:
        if saved_config.get(key) != config.get(key):
            raise ConfigError(f"cannot resume: '{key}' was {saved_config.get(key)!r} in the checkpoint, "
                              f"now {config.get(key)!r} (use a new --out)")
    old, new = saved_config.to_flat_dict(), config.to_flat_dict()
    return {key: (old[key], new[key]) for key in new if old.get(key) != new[key]}


def jsonable(changes: dict[str, tuple]) -> dict[str, list]:
    return {key: [before, after] for key, (before, after) in changes.items()}


def record_config_change(out_dir: Path, config: Config, changes: dict[str, tuple], epoch: int, step: int) -> None:
    """config.json holds the settings the run goes on with, and under ``"changes"`` every resume that
    changed one (from which epoch and step, old and new value)."""
    path = out_dir / CONFIG_FILE
    previous = json.loads(path.read_text()) if path.exists() else {}
    entry = {"from_epoch": epoch + 1, "step": step, "changed": jsonable(changes)}
    kept = {key: previous[key] for key in ("run", "changes") if key in previous}
    kept["changes"] = kept.get("changes", []) + [entry]
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps({**config.to_dict(), **kept}, indent=2))
    os.replace(tmp, path)
