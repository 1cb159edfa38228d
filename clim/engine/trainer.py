"""Pretraining, top to bottom: set-up → data → model → resume → epochs (refresh, steps, monitor, save).

Running the same command again on the same output folder resumes from ``checkpoint.pt``: both
encoders, queue, positives table, optimiser, AMP scaler, step, epoch, RNG states and the metrics
history. ``train.epochs`` may be raised to go on (the cosine schedule is then stretched to the new
length from the resumed step on). SIGINT / SIGTERM finish the step, save inside the epoch and stop
(clim.engine.stopping).
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from clim.config import Config, ConfigError, batch_layout, check_device, check_for_dataset
from clim.data import build_dataset
from clim.data.pipeline import build_pipeline
from clim.data.prefetch import prefetched
from clim.data.transforms import eval_transform_for
from clim.engine.logging import RunLogger
from clim.engine.preview import write_positives_preview
from clim.engine.stopping import RunInterrupted, StopRequest
from clim.evaluation.knn import weighted_knn
from clim.method.objective import StepOutput, compute_step
from clim.method.positives import (build_bank, checkpoint_model_state, is_refresh_epoch, load_checkpoint_model_state,
                                   needs_table, refresh_positives)
from clim.models.moco import MoCo, build_moco
from clim.runtime import checkpoint, distributed
from clim.runtime.features import extract_features
from clim.runtime.progress import format_seconds
from clim.summary import output_paths, run_summary

EPOCH_BACKUP_NAME = "checkpoint.epoch.pt"  # the last epoch-end state while in-epoch saves replace checkpoint.pt
DIVERGED_NAME = "checkpoint.diverged.pt"  # the newest in-epoch state of a run that diverged after it

# Keys that must match to resume: the rest (epochs, logging, eval cadence) may change.
FIXED_ON_RESUME = ("data.name", "data.image_size", "model.backbone", "model.head_dim", "model.queue_size",
                   "model.small_stem", "method.name", "method.num_positives", "train.batch_size")


class TrainingDiverged(RuntimeError):
    """The loss (or a weight) became NaN or infinite; the last finite checkpoint, if any, is kept."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cosine_lr(base_lr: float, step: int, total_steps: int, warmup_steps: int) -> float:
    """Per-step cosine schedule with optional linear warm-up (METHOD §1)."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class StepMeter:
    """The step losses, kept on the device: no host synchronisation in the steady-state loop.

    Every step adds its loss (and a non-finite flag, with the value and step of the first bad loss)
    to device scalars; :meth:`read` copies them to the host in one synchronisation, which the trainer
    does every ``train.log_every`` steps and at the end of each epoch. A non-finite loss therefore
    stops every rank within ``log_every`` steps (the weights after it are never saved).
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        self.loss_sum, self.images = zero.clone(), 0
        self.last = zero.clone()
        self.lam = None
        self.part_sums: dict[str, torch.Tensor] = {}
        self.part_last: dict[str, torch.Tensor] = {}
        self.bad = torch.zeros((), dtype=torch.bool, device=self.device)
        self.bad_value, self.bad_step = zero.clone(), torch.zeros((), dtype=torch.long, device=self.device)

    def add(self, loss: torch.Tensor, images: int, step: int, lam: torch.Tensor | None = None,
            parts: dict[str, torch.Tensor] | None = None) -> None:
        loss = loss.detach().to(torch.float64)
        first_bad = ~torch.isfinite(loss) & ~self.bad
        self.bad_value = torch.where(first_bad, loss, self.bad_value)
        self.bad_step = torch.where(first_bad, step, self.bad_step)
        self.bad = self.bad | first_bad
        self.loss_sum += loss * images
        self.images += images
        self.last = loss
        self.lam = None if lam is None else lam.detach()
        for name, value in (parts or {}).items():
            value = value.detach().to(torch.float64)
            self.part_sums[name] = self.part_sums.get(name, 0) + value * images
            self.part_last[name] = value

    def state(self) -> dict:
        """The running sums as plain numbers (a host sync), for a mid-epoch checkpoint."""
        return {"loss_sum": float(self.loss_sum), "images": self.images,
                "part_sums": {name: float(value) for name, value in self.part_sums.items()}}

    def load_state(self, state: dict) -> None:
        self.reset()
        self.loss_sum.fill_(state["loss_sum"])
        self.images = int(state["images"])
        self.part_sums = {name: torch.tensor(value, dtype=torch.float64, device=self.device)
                          for name, value in state["part_sums"].items()}

    def read(self) -> dict:
        """One host sync: ``loss_mean`` (since the last reset), ``loss`` (the latest step), ``lambda``,
        the loss's parts (``parts_mean``, ``parts``: loss_moco, loss_positive, ...), and, under DDP,
        whether any rank saw a non-finite loss (``bad``, with ``bad_value`` and ``bad_step`` of this
        rank's first one)."""
        names = sorted(self.part_sums)
        lam = self.lam.double().mean() if self.lam is not None else torch.zeros_like(self.last)
        values = torch.stack([self.loss_sum, self.last, self.bad.double(), self.bad_value, self.bad_step.double(),
                              lam, *(self.part_sums[n] for n in names),
                              *(self.part_last[n] for n in names)]).cpu().tolist()
        loss_sum, last, bad, bad_value, bad_step, lam_value = values[:6]
        sums, lasts = values[6:6 + len(names)], values[6 + len(names):]
        images = max(1, self.images)
        return {"loss_mean": loss_sum / images, "loss": last,
                "lambda": lam_value if self.lam is not None else None,
                "parts_mean": {n: v / images for n, v in zip(names, sums)}, "parts": dict(zip(names, lasts)),
                "bad": distributed.any_rank(bool(bad)), "bad_value": bad_value, "bad_step": int(bad_step)}


class StepRunner:
    """One optimisation step, shared by the trainer and benchmarks/throughput.py.

    Holds the precision settings (bf16 autocast and channels_last on CUDA by default; float16 adds
    a GradScaler) and runs: objective → backward → gradient average → SGD step → enqueue, without
    a host synchronisation (the loss goes to a device-side :class:`StepMeter`).
    ``train.compile`` compiles both encoders with ``torch.compile`` (state_dict keys unchanged).
    """

    def __init__(self, model: MoCo, config: Config, device: torch.device):
        on_cuda = device.type == "cuda"
        use_amp = on_cuda if config.train.amp is None else config.train.amp
        self.channels_last = on_cuda if config.train.channels_last is None else config.train.channels_last
        self.autocast = (torch.autocast(device_type=device.type, dtype=getattr(torch, config.train.amp_dtype))
                         if use_amp else nullcontext())
        # float16 needs loss scaling (older GPUs); bfloat16, the default, does not. GradScaler.step reads
        # its found-inf flag on the host (it skips the step on overflow): one sync per step with float16.
        self.scaler = torch.amp.GradScaler(device.type, enabled=use_amp and config.train.amp_dtype == "float16")
        if on_cuda:
            benchmark = config.train.cudnn_benchmark
            torch.backends.cudnn.benchmark = not config.train.deterministic if benchmark is None else benchmark
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        model.batch_views = on_cuda if config.train.batch_views is None else config.train.batch_views
        if config.train.compile:  # None (the default) = off until a GPU measurement says otherwise
            model.encoder_q.compile()
            model.encoder_k.compile()
        self.model = model
        self.config = config
        self.meter = StepMeter(device)
        self.optimizer = torch.optim.SGD(model.encoder_q.parameters(), lr=config.lr, momentum=config.train.momentum,
                                         weight_decay=config.train.weight_decay)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def __call__(self, batch: dict, step: int = 0) -> StepOutput:
        if self.channels_last:
            batch = {k: ([v.contiguous(memory_format=torch.channels_last) for v in value]
                         if isinstance(value, list) else value) for k, value in batch.items()}
        with self.autocast:
            out = compute_step(self.model, batch, self.config)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out.loss).backward()
        distributed.average_gradients(self.model.encoder_q.parameters())
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.model.enqueue(out.keys.float())
        self.meter.add(out.loss, len(batch["index"]) * distributed.world_size(), step, out.lam_mean, out.parts)
        return out


def data_info_dict(info, image_size: int) -> dict:
    return {"name": info.name, "num_classes": info.num_classes, "in_channels": info.in_channels,
            "image_size": image_size, "mean": list(info.mean), "std": list(info.std)}


class KnnMonitor:
    """Weighted kNN top-1 on the labelled splits (METHOD §5), query backbone features."""

    def __init__(self, config: Config, info, image_size: int, device: torch.device):
        self.config = config
        self.device = device
        data = config.data
        transform = eval_transform_for(info, image_size)
        self.train = build_dataset(data.name, data.root, "train", transform=transform, image_size=data.image_size,
                                   verify=data.verify)
        self.test = build_dataset(data.name, data.root, "test", transform=transform, image_size=data.image_size,
                                   verify=data.verify)
        self.num_classes = self.train.info.num_classes

    @classmethod
    def create(cls, config: Config, info, image_size: int, device: torch.device):
        if config.train.knn_every <= 0:
            return None
        try:
            monitor = cls(config, info, image_size, device)
        except (FileNotFoundError, ValueError):
            return None  # no labelled splits (e.g. a flat folder): nothing to monitor
        return monitor if monitor.num_classes else None

    def __call__(self, backbone: torch.nn.Module) -> float:
        kwargs = dict(batch_size=256, device=self.device, num_workers=self.config.data.num_workers)
        train_feats, train_labels = extract_features(backbone, self.train, **kwargs)
        test_feats, test_labels = extract_features(backbone, self.test, **kwargs)
        return weighted_knn(train_feats.to(self.device), train_labels.to(self.device), test_feats.to(self.device),
                            test_labels.to(self.device), self.config.train.knn_k,
                            self.config.train.knn_temperature, self.num_classes)


def _read_meter(runner: StepRunner, epoch: int, saver: "Checkpointer", bar) -> dict:
    reading = runner.meter.read()
    if reading["bad"]:  # every rank stops here together
        bar.close()  # the error message then starts on its own line
        raise saver.diverged(f"loss became {reading['bad_value']} at epoch {epoch + 1}, step {reading['bad_step']}")
    return reading


class Checkpointer:
    """Writes ``checkpoint.pt`` and never lets a diverging run cost the last good epoch.

    Before each save it reads, in one host sync, the meter's non-finite-loss flag (every step since
    the epoch began) and whether any tensor about to be written (both encoders, queue, positives
    table, optimiser buffers) is NaN or infinite: a non-finite state is never written.

    Finite is not enough, though: a few steps at an absurd lr leave weights that are finite but
    already lost (they blow up again at a sane lr). So the first in-epoch save of an epoch keeps the
    epoch-end checkpoint it replaces as ``checkpoint.epoch.pt`` (a hard link: no space until then),
    and on a divergence :meth:`diverged` puts that epoch-end state back as ``checkpoint.pt`` and keeps
    the newest in-epoch save aside as ``checkpoint.diverged.pt``. The next epoch-end save removes both.
    """

    def __init__(self, path: Path, config: Config, model: MoCo, bank, runner: StepRunner, static: dict,
                 is_main: bool, saved_at: str | None, epoch_end_at: str | None):
        self.path, self.config, self.model, self.bank, self.runner = path, config, model, bank, runner
        self.static, self.is_main = static, is_main  # data_info and num_samples: fixed for the run
        self.saved_at = saved_at  # "epoch 3 (done)" / "epoch 4, step 17 of 90": what checkpoint.pt holds
        self.epoch_end_at = epoch_end_at  # the newest epoch-end state on disk (checkpoint.pt or the backup)
        self.backup = path.with_name(EPOCH_BACKUP_NAME)
        self.aside = path.with_name(DIVERGED_NAME)

    def save(self, epoch_done: int, step: int, history: list[dict], partial: dict | None = None,
             where: str = "") -> None:
        where = where or f"epoch {epoch_done} (done)"
        model_state = checkpoint_model_state(self.model, self.bank)
        optimizer_state = self.runner.optimizer.state_dict()
        self._check_finite(model_state, optimizer_state, where)
        distributed.broadcast_module(self.model, norm_only=True)  # every rank then holds what the file holds
        if self.is_main:
            if partial is not None and self.saved_at == self.epoch_end_at and self.path.exists():
                self.backup.unlink(missing_ok=True)
                os.link(self.path, self.backup)  # the epoch-end state outlives the in-epoch saves
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

    def _check_finite(self, model_state: dict, optimizer_state: dict, where: str) -> None:
        tensors = [t for t in model_state.values() if torch.is_tensor(t) and t.is_floating_point()]
        tensors += [t for buffers in optimizer_state["state"].values() for t in buffers.values()
                    if torch.is_tensor(t) and t.is_floating_point()]
        bad_weights = torch.stack([~torch.isfinite(t).all() for t in tensors]).any()
        bad_loss, bad_weights = torch.stack([self.runner.meter.bad, bad_weights.to(self.runner.meter.bad.device)]
                                            ).tolist()  # the save's one host sync
        if distributed.any_rank(bad_loss or bad_weights):
            what = "the loss became non-finite" if bad_loss else "the weights became non-finite"
            raise self.diverged(f"{what} before the save at {where}")

    def diverged(self, what: str) -> TrainingDiverged:
        """Put the last epoch-end state back as checkpoint.pt (the in-epoch one aside) and say so."""
        in_epoch = self.saved_at is not None and self.saved_at != self.epoch_end_at
        if in_epoch and self.is_main:
            os.replace(self.path, self.aside)
            if self.epoch_end_at is not None:
                os.replace(self.backup, self.path)
        if in_epoch:
            aside = f"; the newest in-epoch save ({self.saved_at}) is kept aside as {self.aside}"
        else:
            aside = ""
        if self.epoch_end_at is not None:
            kept = f"{self.path} holds the last good epoch end ({self.epoch_end_at}){aside}"
            then = "then run the same command again to resume from it"
        else:
            kept = f"no epoch-end checkpoint is on disk, so {self.path} does not exist{aside}"
            then = "then run the same command again to start afresh"
        return TrainingDiverged(f"{what}; {kept}; likely causes: {divergence_causes(self.config, self.runner)}; "
                                f"{then}")


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


def _check_resume(saved: dict, config: Config) -> dict[str, tuple]:
    """Refuse keys that cannot change on resume; return the others that changed, ``{key: (old, new)}``."""
    saved_config = Config.from_dict(saved["config"])
    for key in FIXED_ON_RESUME:
        if saved_config.get(key) != config.get(key):
            raise ConfigError(f"cannot resume: '{key}' was {saved_config.get(key)!r} in the checkpoint, "
                              f"now {config.get(key)!r} (use a new --out)")
    old, new = _flat(saved_config.to_dict()), _flat(config.to_dict())
    return {key: (old[key], new[key]) for key in new if old.get(key) != new[key]}


def _flat(values: dict, prefix: str = "") -> dict:
    return {f"{prefix}{section}.{key}": value for section, keys in values.items() for key, value in keys.items()}


def _jsonable(changes: dict[str, tuple]) -> dict[str, list]:
    return {key: [before, after] for key, (before, after) in changes.items()}


def record_config_change(out_dir: Path, config: Config, changes: dict[str, tuple], epoch: int, step: int) -> None:
    """config.json holds the settings the run goes on with, and under ``"changes"`` every resume that
    changed one (from which epoch and step, old and new value)."""
    path = out_dir / "config.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    entry = {"from_epoch": epoch + 1, "step": step, "changed": _jsonable(changes)}
    kept = {key: previous[key] for key in ("run", "changes") if key in previous}
    kept["changes"] = kept.get("changes", []) + [entry]
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps({**config.to_dict(), **kept}, indent=2))
    os.replace(tmp, path)


def pretrain(config: Config, out_dir: str | Path, eta_after: Callable[[list[dict]], float] | None = None
             ) -> list[dict]:
    """Train (or resume) into ``out_dir``; returns the per-epoch metrics history.

    SIGINT / SIGTERM save and raise :class:`RunInterrupted`. ``eta_after(history)``: the seconds the
    caller will spend after pretraining (``clim demo``'s evaluations), added to the whole-run ETA.
    """
    out_dir = Path(out_dir)
    lock = checkpoint.RunLock(out_dir)
    if distributed.launched_rank() == 0:  # one run per folder: a second one stops here, naming the first's PID
        lock.acquire()
        stale = checkpoint.remove_stale_temp_files(out_dir)  # no live writer can own them now
        if stale:
            print(f"removed {len(stale)} temporary file(s) left in {out_dir} by a killed run", file=sys.stderr)
    try:
        with StopRequest() as stop:
            return _pretrain(config, out_dir, stop, eta_after)
    finally:
        lock.release()


def _pretrain(config: Config, out_dir: Path, stop: StopRequest, eta_after) -> list[dict]:
    check_device(config)  # train.device=cuda on a machine without one: one line, before anything starts
    runtime = distributed.setup(config.train.device)
    device = runtime.device
    seed_everything(config.train.seed + runtime.rank)
    if config.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    logger = RunLogger(out_dir, enabled=runtime.is_main)
    per_process, bn_splits = batch_layout(config, runtime.world_size)  # ConfigError if they do not divide

    # Data
    try:
        dataset = build_dataset(config.data.name, config.data.root, "pretrain", image_size=config.data.image_size,
                                verify=config.data.verify)
    except ValueError as error:  # unknown data.name, imagefolder without data.root: a config error
        raise ConfigError(str(error)) from None
    check_for_dataset(config, len(dataset))  # e.g. more k-means clusters than images: refused before any step
    info = dataset.info
    image_size = config.data.image_size or info.image_size
    pipeline = build_pipeline(dataset, config, image_size, device, runtime.rank, runtime.world_size)
    selection_dataset = None
    if config.method.name == "clim":  # the same images, un-augmented, for the positives refresh
        selection_dataset = copy.copy(dataset)
        selection_dataset.transform = eval_transform_for(info, image_size)
    monitor = KnnMonitor.create(config, info, image_size, device)
    if monitor is None and config.train.knn_every > 0:
        logger.message(f"kNN monitor off: '{config.data.name}' has no labelled train and test splits here")

    # Model and optimiser
    model: MoCo = build_moco(config, info.in_channels, image_size).to(device)
    distributed.broadcast_module(model)  # one initial model on every rank
    bank = build_bank(config, len(dataset), device)  # CLIM's positives table (None for MoCo v2)
    runner = StepRunner(model, config, device)
    optimizer, scaler = runner.optimizer, runner.scaler
    steps = len(pipeline)
    total_steps = config.train.epochs * steps
    warmup_steps = config.train.warmup_epochs * steps

    # Resume
    ckpt_path = out_dir / checkpoint.CHECKPOINT_NAME
    start_epoch, step, history, partial, saved_at, epoch_end_at = 0, 0, [], None, None, None
    if ckpt_path.exists():
        saved = checkpoint.load(ckpt_path)  # onto the CPU: load_state_dict places it
        changes = _check_resume(saved, config)
        load_checkpoint_model_state(model, bank, saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scaler.load_state_dict(saved["scaler"])
        checkpoint.set_rng_state(saved["rng"])
        start_epoch, step, history = saved["epoch"], saved["step"], list(saved["history"])
        partial = saved.get("partial")
        saved_at = epoch_end_at = f"epoch {start_epoch} (done)"
        if partial is not None:  # saved inside an epoch: this rank's part of it
            partial = {**partial, **partial["ranks"][min(runtime.rank, len(partial["ranks"]) - 1)]}
            checkpoint.set_rng_state(partial["rng"])
            saved_at = f"epoch {start_epoch + 1}, step {partial['pipeline']['step']} of {steps}"
            if not (out_dir / EPOCH_BACKUP_NAME).exists():
                epoch_end_at = None  # in the first epoch, or its epoch-end file is gone
        logger.rewrite(history)
        logger.message(resume_message(ckpt_path, start_epoch, config.train.epochs, steps,
                                      partial["pipeline"]["step"] if partial else None))
        if changes and runtime.is_main:
            for key, (before, after) in changes.items():
                logger.message(f"changed on resume: {key} {before!r} -> {after!r} (from epoch {start_epoch + 1})")
            record_config_change(out_dir, config, changes, start_epoch, step)
        if changes and partial is not None:
            partial["record"] = {**partial["record"], "changed": _jsonable(changes)}
        pending_changes = changes
    else:
        pending_changes = {}
        if runtime.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            run = {"world_size": runtime.world_size, "batch_size_global": config.train.batch_size,
                   "batch_size_per_process": per_process, "bn_splits_per_process": bn_splits,
                   "bn_group_size": per_process // bn_splits, "lr": config.lr, "num_samples": len(dataset)}
            (out_dir / "config.json").write_text(json.dumps({**config.to_dict(), "run": run}, indent=2))
    logger.message(run_summary(config, runtime.world_size, out_dir, {
        "image_size": image_size, "in_channels": info.in_channels, "num_samples": len(dataset)}))
    saver = Checkpointer(ckpt_path, config, model, bank, runner,
                         {"data_info": data_info_dict(info, image_size), "num_samples": len(dataset)},
                         runtime.is_main, saved_at, epoch_end_at)

    def save_inside_epoch(epoch: int, batch: dict, record: dict, seen: int, started: float) -> None:
        """Every rank's point in the epoch (resumed exactly: tests/engine/test_resume.py)."""
        ranks = distributed.all_gather_object({
            "pipeline": batch["resume"], "step_generator": batch["generator"].get_state(),
            "meter": runner.meter.state(), "rng": checkpoint.rng_state()})
        saver.save(epoch, step, history, {"record": record, "seen": seen, "elapsed": time.perf_counter() - started,
                                          "ranks": ranks}, where=f"epoch {epoch + 1}, step {batch['resume']['step']} "
                                                                 f"of {steps}")
        distributed.barrier()  # on a stop, no rank exits (and has a launcher kill the others) before the file is whole

    def stopped(where: str) -> RunInterrupted:
        logger.close()
        distributed.teardown()
        by = stop.name or "a signal to another rank"
        return RunInterrupted(stop.signum or signal.SIGTERM, f"stopped by {by} {where}; checkpoint saved: {ckpt_path}",
                              show=runtime.is_main)

    first_step = step  # this process's first: its loss is read once (then every log_every steps)

    for epoch in range(start_epoch, config.train.epochs):
        resume = partial if epoch == start_epoch else None
        record: dict = dict(resume["record"]) if resume else {"epoch": epoch + 1}
        if pending_changes and resume is None:  # the first epoch that runs with settings changed on resume
            record["changed"] = _jsonable(pending_changes)
        pending_changes = {}
        # (resuming inside an epoch: its positives were refreshed before the save and are in the bank)
        if resume is None and (is_refresh_epoch(config, epoch) or
                               (needs_table(config, epoch) and not bank.filled)):
            model.eval()
            record["selection"] = refresh_positives(bank, model, selection_dataset, config, epoch, device)
            logger.message(_refresh_message(record["selection"], bank.num_clusters, epoch, config.method.num_positives))
            # epoch + 1: the metrics record (and first epoch) that trains with this table
            write_positives_preview(bank, dataset, config, out_dir, logger.message, epoch + 1)  # never raises
        table = bank.table if needs_table(config, epoch) else None
        apart = "metrics.jsonl and TensorBoard log loss_moco and loss_positive apart"
        if table is not None and not needs_table(config, epoch - 1):
            logger.message(f"epoch {epoch + 1}: CLIM's positive term joins the loss from now on, so the loss "
                           f"rises; {apart}")
        elif table is not None and epoch == start_epoch:  # resumed after the term joined: no rise here
            logger.message(f"epoch {epoch + 1}: the loss includes CLIM's positive term (since epoch "
                           f"{config.method.refresh_every + 1}); {apart}")

        model.train()
        runner.meter.reset()
        seen, started, lr = 0, time.perf_counter(), config.lr
        if resume is not None:
            runner.meter.load_state(resume["meter"])
            seen, started = resume["seen"], started - resume["elapsed"]
        resume_at = {**resume["pipeline"], "step_generator": resume["step_generator"]} if resume else None

        def run_eta() -> dict[str, str]:  # the whole run's (and the caller's after it), beside the epoch's own
            seconds = remaining_seconds(config, history, epoch, bar.total - bar.n, bar.seconds_per_unit() or 0.0,
                                        steps, monitor is not None) + (eta_after(history) if eta_after else 0.0)
            return {"run ETA": format_seconds(seconds)}

        bar = logger.progress(steps, epoch, config.train.epochs, initial=resume_at["step"] if resume_at else 0,
                              first_line=epoch == start_epoch, extra=run_eta)
        last_save = time.monotonic()
        for batch in prefetched(pipeline.epoch(epoch, table, resume_at), device):
            lr = cosine_lr(config.lr, step, total_steps, warmup_steps)
            runner.set_lr(lr)
            runner(batch, step)
            seen += len(batch["index"]) * runtime.world_size
            step += 1
            if step % config.train.log_every == 0 or step == first_step + 1:  # the only host sync of the loop
                reading = _read_meter(runner, epoch, saver, bar)
                images_per_s = seen / (time.perf_counter() - started)
                bar.set_postfix(loss=f"{reading['loss']:.3f} (read at step {step})", img_s=f"{images_per_s:.0f}")
                scalars = {"loss": reading["loss"], "lr": lr, **reading["parts"]}
                if reading["lambda"] is not None:
                    scalars["lambda"] = reading["lambda"]
                logger.step(step, scalars)
            bar.set_postfix(lr=f"{lr:.4f}")  # the current lr at every step (no sync); the loss is the last read
            bar.update()
            # A Python bool and a clock (under DDP one host collective): stop after this step on a signal,
            # and save this often inside a long epoch, so a kill loses minutes, not the epoch.
            stop_now, save_now = distributed.any_rank_on_host(stop.requested, _checkpoint_due(config, last_save))
            if stop_now or save_now:
                save_inside_epoch(epoch, batch, record, seen, started)
                last_save = time.monotonic()
            if stop_now:
                bar.close()  # the line then starts on its own
                raise stopped(f"at epoch {epoch + 1}/{config.train.epochs}, step {batch['resume']['step']} of "
                              f"{steps} (saved inside the epoch)")
        reading = _read_meter(runner, epoch, saver, bar)
        elapsed = time.perf_counter() - started
        bar.set_postfix(loss=f"{reading['loss']:.3f} (read at step {step})", lr=f"{lr:.4f}",
                        img_s=f"{seen / elapsed:.0f}")
        bar.close()
        record.update(loss=reading["loss_mean"], **reading["parts_mean"], lr=lr if steps else config.lr,
                      images_per_s=seen / elapsed, epoch_seconds=elapsed)

        last = epoch + 1 == config.train.epochs
        if monitor is not None and ((epoch + 1) % config.train.knn_every == 0 or last):
            knn_started = time.perf_counter()
            record["knn_top1"] = monitor(model.backbone_q)
            record["knn_seconds"] = time.perf_counter() - knn_started
            logger.message(f"epoch {epoch + 1}: kNN top-1 {record['knn_top1']:.2f}%")
        history.append(record)
        saver.save(epoch + 1, step, history)
        logger.epoch(record)  # main rank only
        distributed.barrier()
        if not last and distributed.any_rank_on_host(stop.requested)[0]:  # a signal during the monitor or save
            raise stopped(f"after epoch {epoch + 1}/{config.train.epochs}")
    logger.message(output_paths(out_dir))
    logger.close()
    distributed.teardown()
    return history


def resume_message(path: Path, epochs_done: int, epochs: int, steps: int, step_in_epoch: int | None) -> str:
    """Where a resumed run goes on, numbered as the progress bar numbers it (epoch e/E, step s of S)."""
    if epochs_done >= epochs:
        return f"resumed from {path}: all {epochs} epochs are done, nothing to train (raise train.epochs to go on)"
    if step_in_epoch is not None:
        return (f"resumed from {path} at epoch {epochs_done + 1}/{epochs}, step {step_in_epoch} of {steps} "
                "(saved inside the epoch)")
    return f"resumed from {path} at the start of epoch {epochs_done + 1}/{epochs}"


def _checkpoint_due(config: Config, last_save: float) -> bool:
    """``train.checkpoint_every_minutes`` have passed since this rank's last save (the loop asks all
    ranks together, so that they save together)."""
    minutes = config.train.checkpoint_every_minutes
    return minutes > 0 and time.monotonic() - last_save >= minutes * 60


def remaining_seconds(config: Config, history: list[dict], epoch: int, steps_left: int, seconds_per_step: float,
                      steps: int, monitored: bool) -> float:
    """The whole run's time left: its steps at this epoch's rate, plus each coming positives refresh
    and kNN monitor as long as the last one took (nothing for those not seen yet)."""
    refresh = next((r["selection"]["seconds"] for r in reversed(history) if "seconds" in r.get("selection", {})), 0.0)
    knn = next((r["knn_seconds"] for r in reversed(history) if "knn_seconds" in r), 0.0)
    epochs = config.train.epochs
    seconds = (steps_left + (epochs - epoch - 1) * steps) * seconds_per_step
    for coming in range(epoch, epochs):
        seconds += refresh if coming > epoch and is_refresh_epoch(config, coming) else 0.0
        seconds += knn if monitored and ((coming + 1) % config.train.knn_every == 0 or coming + 1 == epochs) else 0.0
    return seconds


def _refresh_message(selection: dict, clusters: int, epoch: int, num_positives: int) -> str:
    text = f"positives refreshed for epoch {epoch + 1}: {clusters} clusters"
    if "positive_precision" in selection:
        text += f", positive precision {selection['positive_precision']:.3f}"
        if "knn_top_p_precision" in selection:  # the same number of picks by plain kNN: a fair comparison
            text += f" vs {selection['knn_top_p_precision']:.3f} for the {num_positives} nearest kNN neighbours"
        if "labelled_pairs" in selection:
            text += f" over {selection['labelled_pairs']} labelled pairs"
    return text
