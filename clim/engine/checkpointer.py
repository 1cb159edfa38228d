"""Saving a run: ``checkpoint.pt`` at every epoch end and inside long epochs, never a non-finite state.
It holds the whole training state (both encoders, queue, positives table, optimiser, AMP scaler, step,
epoch, RNG states, the metrics history) and, inside an epoch, every rank's point in it, so that a resumed
run (:mod:`clim.engine.resume`) goes on exactly.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from clim.config import Config
from clim.engine.step import StepRunner
from clim.method.positives import checkpoint_model_state
from clim.models.moco import MoCo
from clim.runtime import checkpoint, distributed

EPOCH_BACKUP_NAME = "checkpoint.epoch.pt"  # the last epoch-end state while in-epoch saves replace checkpoint.pt
DIVERGED_NAME = "checkpoint.diverged.pt"  # the newest in-epoch state of a run that diverged after it


class TrainingDiverged(RuntimeError):
    """The loss (or a weight) became NaN or infinite; the last finite checkpoint, if any, is kept."""


@dataclass
class EpochTally:
    """The images this epoch has trained on (all ranks) and since when: a resumed epoch goes on from
    its save, so its images/s counts the whole epoch."""

    seen: int = 0
    started: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


class Checkpointer:
    """Writes ``checkpoint.pt`` and never lets a diverging run cost the last good epoch.

    Before each save one host sync reads the meter's non-finite-loss flag (every step since the epoch
    began) and whether any tensor about to be written is NaN or infinite: a non-finite state is never
    written. Finite is not enough, though: a few steps at an absurd lr leave weights that are finite but
    already lost (they blow up again at a sane lr). So the first in-epoch save of an epoch keeps the
    epoch-end checkpoint it replaces as ``checkpoint.epoch.pt`` (a hard link: no space until then); on a
    divergence :meth:`diverged` puts it back as ``checkpoint.pt`` and keeps the newest in-epoch save
    aside as ``checkpoint.diverged.pt``. The next epoch-end save removes both.
    """

    def __init__(self, path: Path, config: Config, model: MoCo, bank, runner: StepRunner, static: dict,
                 is_main: bool, saved_at: str | None, epoch_end_at: str | None, steps: int):
        self.path, self.config, self.model, self.bank, self.runner = path, config, model, bank, runner
        self.static, self.is_main = static, is_main  # data_info and num_samples: fixed for the run
        self.steps = steps  # per epoch: an in-epoch save says "step s of steps"
        self.saved_at = saved_at  # "epoch 3 (done)" / "epoch 4, step 17 of 90": what checkpoint.pt holds
        self.epoch_end_at = epoch_end_at  # the newest epoch-end state on disk (checkpoint.pt or the backup)
        self.backup = path.with_name(EPOCH_BACKUP_NAME)
        self.aside = path.with_name(DIVERGED_NAME)

    def save(self, epoch_done: int, step: int, history: list[dict], partial: dict | None = None,
             where: str = "") -> None:
        where = where or f"epoch {epoch_done} (done)"
        model_state = checkpoint_model_state(self.model, self.bank)
        optimizer_state = self.runner.optimizer.state_dict()
        tensors = [t for t in model_state.values() if torch.is_tensor(t) and t.is_floating_point()]
        tensors += [t for buffers in optimizer_state["state"].values() for t in buffers.values()
                    if torch.is_tensor(t) and t.is_floating_point()]
        bad_weights = torch.stack([~torch.isfinite(t).all() for t in tensors]).any()
        bad_loss, bad_weights = torch.stack([self.runner.meter.bad, bad_weights.to(self.runner.meter.bad.device)]
                                            ).tolist()  # the save's one host sync
        if distributed.any_rank(bad_loss or bad_weights):
            what = "the loss became non-finite" if bad_loss else "the weights became non-finite"
            raise self.diverged(f"{what} before the save at {where}")
        distributed.broadcast_module(self.model, norm_only=True)  # every rank then holds what the file holds
        if self.is_main:
            if partial is not None and self.saved_at == self.epoch_end_at and self.path.exists():
                self.backup.unlink(missing_ok=True)
                try:
                    os.link(self.path, self.backup)  # the epoch-end state outlives the in-epoch saves
                except OSError:  # a file system without hard links: a copy, once per epoch
                    shutil.copyfile(self.path, self.backup)
            checkpoint.save_atomic({
                "config": self.config.to_dict(), "model": model_state, "optimizer": optimizer_state,
                "scaler": self.runner.scaler.state_dict(), "epoch": epoch_done, "step": step,
                "rng": checkpoint.rng_state(), "history": history, **self.static,
                **({"partial": partial} if partial is not None else {}),
            }, self.path)
            if partial is None:
                self.backup.unlink(missing_ok=True)
                self.aside.unlink(missing_ok=True)
        self.saved_at = where
        if partial is None:
            self.epoch_end_at = where

    def save_inside_epoch(self, epoch: int, step: int, history: list[dict], batch: dict, record: dict,
                          tally: EpochTally) -> None:
        """Every rank's point in the epoch (resumed exactly: tests/engine/test_resume.py): its data
        pipeline and step generator, the meter's sums and the RNG states, beside the epoch's record so far."""
        ranks = distributed.all_gather_object({
            "pipeline": batch["resume"], "step_generator": batch["generator"].get_state(),
            "meter": self.runner.meter.state(), "rng": checkpoint.rng_state()})
        partial = {"record": record, "seen": tally.seen, "elapsed": tally.elapsed(), "ranks": ranks}
        self.save(epoch, step, history, partial, f"epoch {epoch + 1}, step {batch['resume']['step']} of {self.steps}")
        distributed.barrier()  # on a stop, no rank exits (and has a launcher kill the others) before the file is whole

    def read_meter(self, epoch: int, bar) -> dict:
        """The meter's reading (one host sync); a non-finite loss on any rank ends the run here, every
        rank together, with the last good checkpoint put back (:meth:`diverged`)."""
        reading = self.runner.meter.read()
        if reading["bad"]:
            bar.close()  # the error message then starts on its own line
            raise self.diverged(f"loss became {reading['bad_value']} at epoch {epoch + 1}, step {reading['bad_step']}")
        return reading

    def diverged(self, what: str) -> TrainingDiverged:
        """Put the last epoch-end state back as checkpoint.pt (the in-epoch one aside) and say so."""
        in_epoch = self.saved_at is not None and self.saved_at != self.epoch_end_at
        if in_epoch and self.is_main:
            os.replace(self.path, self.aside)
            if self.epoch_end_at is not None:
                os.replace(self.backup, self.path)
        aside = f"; the newest in-epoch save ({self.saved_at}) is kept aside as {self.aside}" if in_epoch else ""
        if self.epoch_end_at is not None:
            kept, then = f"{self.path} holds the last good epoch end ({self.epoch_end_at}){aside}", "resume from it"
        else:
            kept, then = f"no epoch-end checkpoint is on disk, so {self.path} does not exist{aside}", "start afresh"
        return TrainingDiverged(f"{what}; {kept}; likely causes: {divergence_causes(self.config, self.runner)}; "
                                f"then run the same command again to {then}")


def divergence_causes(config: Config, runner: StepRunner) -> str:
    """The settings that most often make the loss non-finite, with this run's values."""
    rule = 0.03 * config.train.batch_size / 256
    causes = [f"train.lr={config.lr:g} (METHOD's 0.03 x batch_size / 256 gives {rule:g}; lower it)"]
    if config.model.temperature < 0.05:
        causes.append(f"model.temperature={config.model.temperature:g} (small temperatures overflow the logits; "
                      "METHOD uses 0.2)")
    if runner.scaler.is_enabled():
        causes.append("float16 autocast (train.amp_dtype=float16 overflows sooner; use bfloat16)")
    return "; ".join(causes)
