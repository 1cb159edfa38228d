"""Pretraining, top to bottom: set-up → data → model → resume → epochs (refresh, steps, monitor, save).

Resuming and raising ``train.epochs``: docs/USAGE.md; stopping on a signal and the engine's other modules:
docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from clim.config import Config, ConfigError
from clim.data import build_dataset
from clim.data.pipeline import build_pipeline, prefetched
from clim.data.transforms import eval_transform_for
from clim.engine.checkpointer import Checkpointer, EpochTally, TrainingDiverged  # noqa: F401  (clim.cli reads it here)
from clim.engine.logging import RunEta, RunLogger
from clim.engine.monitor import KnnMonitor, data_info_dict
from clim.engine.refresh import Refresh, positive_term_message, refresh_due, refresh_message, save_refresh
from clim.engine.resume import jsonable, resume_from, start_afresh
from clim.engine.step import StepRunner, cosine_lr, seed_everything
from clim.engine.stopping import StopCheck, StopRequest
from clim.method.positives import build_bank, needs_table, refresh_positives
from clim.models.moco import MoCo, build_moco
from clim.runtime import checkpoint, distributed
from clim.specs import (batch_layout, check_device, check_for_dataset, loader_spec, model_spec, selection_spec,
                        view_spec)
from clim.summary import output_paths, run_summary


def pretrain(config: Config, out_dir: str | Path, eta_after: Callable[[list[dict]], float] | None = None,
             on_refresh: Callable[[Refresh], object] | None = None) -> list[dict]:
    """Train (or resume) into ``out_dir``; returns the per-epoch metrics history.

    SIGINT / SIGTERM save and raise :class:`~clim.engine.stopping.RunInterrupted`. ``eta_after(history)``:
    the seconds the caller will spend after pretraining (``clim demo``'s evaluations), added to the
    whole-run ETA. ``on_refresh(refresh)``: called on the main rank after every positives refresh,
    its facts saved (``clim pretrain`` passes :func:`clim.inspect.draw_refresh`, which draws them).
    """
    out_dir = Path(out_dir)
    lock = checkpoint.RunLock(out_dir)
    if distributed.launched_rank() == 0:  # one run per folder: a second one stops here, naming the first's PID
        lock.acquire()
        if stale := checkpoint.remove_stale_temp_files(out_dir):  # no live writer can own them now
            print(f"removed {len(stale)} temporary file(s) left in {out_dir} by a killed run", file=sys.stderr)
    try:
        with StopRequest() as stop:
            return _pretrain(config, out_dir, stop, eta_after, on_refresh)
    finally:
        lock.release()


@dataclass
class Training:
    """What every epoch of a run uses, built once by :func:`_pretrain`; ``step`` (the global step)
    is advanced by :func:`train_one_epoch`."""

    config: Config
    runner: StepRunner
    pipeline: object
    device: torch.device
    world_size: int
    logger: RunLogger
    saver: Checkpointer
    stop_check: StopCheck
    eta: RunEta
    history: list[dict]
    first_epoch: int
    step: int
    first_step: int  # this process's first: its loss is read at once (then every log_every steps)


def _pretrain(config: Config, out_dir: Path, stop: StopRequest, eta_after, on_refresh) -> list[dict]:
    """:func:`pretrain` inside its run lock and signal handlers."""
    check_device(config)  # train.device=cuda on a machine without one: one line, before anything starts
    runtime = distributed.setup(config.train.device)
    device = runtime.device
    seed_everything(config.train.seed + runtime.rank)
    if config.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    logger = RunLogger(out_dir, enabled=runtime.is_main)
    per_process, bn_splits = batch_layout(config, runtime.world_size)  # ConfigError if they do not divide

    # ============ data: the pretraining set, its training path, the refresh's view, the monitor ============
    dataset = _pretraining_dataset(config)
    info, num_samples = dataset.info, len(dataset)
    image_size = config.data.image_size or info.image_size
    pipeline = build_pipeline(dataset, view_spec(config, image_size), loader_spec(config, runtime.world_size), device,
                              runtime.rank)
    selection_dataset = _selection_view(dataset, config, image_size)
    monitor = KnnMonitor.create(config, info, image_size, device, logger.message)  # None: off

    # ============ model, positives table, optimiser ============
    model: MoCo = build_moco(model_spec(config, image_size, runtime.world_size), info.in_channels).to(device)
    distributed.broadcast_module(model)  # one initial model on every rank
    selection = selection_spec(config)  # None for MoCo v2
    bank = build_bank(selection, num_samples, device)  # CLIM's positives table (None for MoCo v2)
    runner = StepRunner(model, config, device)
    steps = len(pipeline)

    # ============ resume (or start afresh) ============
    ckpt_path = out_dir / checkpoint.CHECKPOINT_FILE
    if ckpt_path.exists():
        start = resume_from(ckpt_path, config, model, bank, runner, runtime.rank, steps, logger, runtime.is_main)
    else:
        start = start_afresh(out_dir, config, runtime.world_size, per_process, bn_splits, num_samples, runtime.is_main)
    logger.message(run_summary(config, runtime.world_size, out_dir, {
        "image_size": image_size, "in_channels": info.in_channels, "num_samples": num_samples}))
    saver = Checkpointer(ckpt_path, config, model, bank, runner,
                         {"data_info": data_info_dict(info, image_size), "num_samples": num_samples},
                         runtime.is_main, start.saved_at, start.epoch_end_at, steps)
    run = Training(config, runner, pipeline, device, runtime.world_size, logger, saver,
                   StopCheck(stop, config.train.checkpoint_every_minutes, ckpt_path, runtime.is_main),
                   RunEta(config, start.history, steps, monitor is not None, eta_after),
                   start.history, start.epoch, start.step, start.step)

    # ============ epochs ============
    for epoch in range(start.epoch, config.train.epochs):
        resume = start.partial if epoch == start.epoch else None  # resuming inside this epoch
        record = _epoch_record(epoch, resume, start.changes if epoch == start.epoch else {})
        # (resuming inside an epoch: its positives were refreshed before the save and are in the bank)
        if resume is None and refresh_due(selection, epoch, bank):
            model.eval()
            record["selection"] = refresh_positives(bank, model, selection_dataset, selection, epoch, device)
            logger.message(refresh_message(record["selection"], bank.num_clusters, epoch, config.method.num_positives))
            # epoch + 1: the metrics record (and first epoch) that trains with this table
            save_refresh(bank, dataset, config, out_dir, logger.message, epoch + 1, on_refresh)  # never raises
        if (term := positive_term_message(selection, epoch, start.epoch)) is not None:
            logger.message(term)

        train_one_epoch(run, epoch, bank.table if needs_table(selection, epoch) else None, record, resume)

        if monitor is not None and monitor.due(epoch):
            record.update(monitor.measure(model.backbone_q))
            logger.message(f"epoch {epoch + 1}: kNN top-1 {record['knn_top1']:.2f}%")
        run.history.append(record)
        saver.save(epoch + 1, run.step, run.history)
        logger.epoch(record)  # main rank only
        distributed.barrier()
        if epoch + 1 < config.train.epochs and run.stop_check.after_epoch():  # a signal during the monitor or the save
            _close(logger)
            raise run.stop_check.interrupted(f"after epoch {epoch + 1}/{config.train.epochs}")
    logger.message(output_paths(out_dir))
    _close(logger)
    return run.history


def train_one_epoch(run: Training, epoch: int, table: torch.Tensor | None, record: dict,
                    resume: dict | None) -> None:
    """The epoch's steps (from where ``resume`` left off, if given); adds the epoch's loss and its
    parts, the lr and the speed to ``record``. Reads the loss (one host sync) every ``log_every``
    steps; after every step a signal stops the run and the clock may save inside the epoch."""
    config, runner, steps = run.config, run.runner, len(run.pipeline)
    runner.model.train()
    runner.meter.reset()
    tally, lr, resume_at = EpochTally(), config.lr, None
    if resume is not None:
        runner.meter.load_state(resume["meter"])
        tally.seen, tally.started = resume["seen"], tally.started - resume["elapsed"]
        resume_at = {**resume["pipeline"], "step_generator": resume["step_generator"]}
    bar = run.logger.progress(steps, epoch, config.train.epochs, initial=resume_at["step"] if resume_at else 0,
                              first_line=epoch == run.first_epoch, eta=run.eta)
    run.stop_check.restart_clock()
    total_steps, warmup_steps = config.train.epochs * steps, config.train.warmup_epochs * steps
    for batch in prefetched(run.pipeline.epoch(epoch, table, resume_at), run.device):
        lr = cosine_lr(config.lr, run.step, total_steps, warmup_steps)
        runner.set_lr(lr)
        runner(batch, run.step)
        tally.seen += len(batch["index"]) * run.world_size
        run.step += 1
        if run.step % config.train.log_every == 0 or run.step == run.first_step + 1:  # the loop's only host sync
            reading, _ = _read_loss(run, epoch, bar, tally)
            scalars = {"loss": reading["loss"], "lr": lr, **reading["parts"]}
            if reading["lambda"] is not None:
                scalars["lambda"] = reading["lambda"]
            run.logger.step(run.step, scalars)
        bar.set_postfix(lr=f"{lr:.4f}")  # the current lr at every step (no sync); the loss is the last read
        bar.update()
        stop_now, save_now = run.stop_check.after_step()  # a Python bool and a clock: no device sync
        if stop_now or save_now:
            run.saver.save_inside_epoch(epoch, run.step, run.history, batch, record, tally)
            run.stop_check.restart_clock()
        if stop_now:
            bar.close()  # the line then starts on its own
            _close(run.logger)
            raise run.stop_check.interrupted(f"at epoch {epoch + 1}/{config.train.epochs}, step "
                                             f"{batch['resume']['step']} of {steps} (saved inside the epoch)")
    reading, elapsed = _read_loss(run, epoch, bar, tally, lr=f"{lr:.4f}")
    bar.close()
    record.update(loss=reading["loss_mean"], **reading["parts_mean"], lr=lr, images_per_s=tally.seen / elapsed,
                  epoch_seconds=elapsed)


def _read_loss(run: Training, epoch: int, bar, tally: EpochTally, **postfix: str) -> tuple[dict, float]:
    """The meter's reading (one host sync) into the progress line, and the epoch's seconds so far."""
    reading = run.saver.read_meter(epoch, bar)
    elapsed = tally.elapsed()
    bar.set_postfix(loss=f"{reading['loss']:.3f} (read at step {run.step})", **postfix,
                    img_s=f"{tally.seen / elapsed:.0f}")
    return reading, elapsed


def _pretraining_dataset(config: Config):
    try:
        dataset = build_dataset(config.data.name, config.data.root, "pretrain", image_size=config.data.image_size,
                                verify=config.data.verify)
    except ValueError as error:  # unknown data.name, imagefolder without data.root: a config error
        raise ConfigError(str(error)) from None
    check_for_dataset(config, len(dataset))  # e.g. more k-means clusters than images: refused before any step
    return dataset


def _selection_view(dataset, config: Config, image_size: int):
    """CLIM's refresh embeds the same images un-augmented (None for MoCo v2)."""
    if config.method.name != "clim":
        return None
    view = copy.copy(dataset)
    view.transform = eval_transform_for(dataset.info, image_size)
    return view


def _epoch_record(epoch: int, resume: dict | None, changes: dict) -> dict:
    """The epoch's metrics record: the saved one of an epoch resumed inside it, else a new one, which
    the first epoch that runs with settings changed on resume marks with them."""
    record: dict = dict(resume["record"]) if resume else {"epoch": epoch + 1}
    if changes and resume is None:
        record["changed"] = jsonable(changes)
    return record


def _close(logger: RunLogger) -> None:
    logger.close()
    distributed.teardown()
