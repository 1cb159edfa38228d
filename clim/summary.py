"""What a pretraining run prints before its first step and after its last: plain text, one item per line, no torch.

:func:`run_summary` states the resolved configuration (data, model, method, batch layout, effective lr, outputs),
then one ``warning`` line per quiet trap of the settings. :func:`output_paths` lists the files a finished run left
and the commands that read them. The batch layout's keys: docs/CONFIG.md.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from clim.config import SMALL_IMAGE_MAX, Config, ConfigError, uses_small_stem
from clim.specs import CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE, TENSORBOARD_DIR, batch_layout

__all__ = ["CHECKPOINT_FILE", "CONFIG_FILE", "METRICS_FILE", "TENSORBOARD_DIR", "needs_holdout", "output_paths",
           "clim_command", "run_summary"]


def _batch_line(config: Config, world_size: int) -> str:
    batch = config.train.batch_size
    try:
        per_process, splits = batch_layout(config, world_size)
    except ConfigError as error:  # the trainer stops with this error before its first step
        return f"batch     {batch} in all: {error}"
    group = per_process // splits
    if world_size > 1:
        bn = "per-GPU BN" if splits == 1 else f"split-BN in {splits} groups per process"
        return (f"batch     {batch} in all = {world_size} processes x {per_process}; BatchNorm: {bn}, "
                f"groups of {group} (shuffle-BN for keys)")
    return f"batch     {batch}, one process; split-BN in {splits} groups: groups of {group}"


def _lr_line(config: Config) -> str:
    rule = "" if config.train.lr is not None else f" (0.03 x {config.train.batch_size}/256)"
    warmup = f", {config.train.warmup_epochs} warm-up epochs" if config.train.warmup_epochs else ""
    return (f"lr        {config.lr:g}{rule}, SGD momentum {config.train.momentum:g}, weight decay "
            f"{config.train.weight_decay:g}, cosine per step over {config.train.epochs} epochs{warmup}")


def _method_line(config: Config, num_samples: int | None) -> str:
    method = config.method
    sizes = f", resolutions {method.resolutions}" if method.resolutions and len(method.resolutions) > 1 else ""
    crops = ", + 2 small crops (multi-crop)" if method.multicrop else ""
    if method.name != "clim":
        return f"method    MoCo v2{sizes}{crops}"
    mixing = {"cutmix": f"CutMix (alpha {method.alpha:g})", "mixup": f"Mixup (alpha {method.mixup_alpha:g})",
              "none": "no mixing"}[method.mixing]
    if method.num_clusters is not None:
        clusters = method.num_clusters
    else:  # clim.method.selection.default_num_clusters' rule
        clusters = f"{max(2, num_samples // 100)} (N/100)" if num_samples else "N/100"
    return (f"method    CLIM: {method.selection} positives ({method.num_positives} per image, k {method.knn_k}, "
            f"{clusters} clusters, {method.selection_features} features), {mixing}{sizes}{crops}; "
            f"MoCo v2 for the first {method.refresh_every} epoch(s), positives from epoch {method.refresh_every + 1} "
            f"on, refreshed every {method.refresh_every}")


def needs_holdout(name: str, root: str | None) -> bool:
    """An image folder of class folders (``root/<class>/…`` or ``root/train/<class>/…``) with no
    ``val/`` or ``test/`` folder has no test split of its own: `clim eval` holds out
    ``data.val_fraction`` of every class (clim.evaluation.common) from the pretraining images."""
    if name != "imagefolder" or not root:
        return False
    folder = Path(root).expanduser()
    return folder.is_dir() and not any((folder / split).is_dir() for split in ("val", "test"))


def _trap_lines(config: Config, num_samples: int | None) -> list[str]:
    """One line for each setting that runs without error but not as its name suggests."""
    method, model, data, epochs = config.method, config.model, config.data, config.train.epochs
    lines = []
    if method.name == "clim" and epochs <= method.refresh_every:
        lines.append(f"warning   train.epochs={epochs} <= method.refresh_every={method.refresh_every}: the positives "
                     f"would join at epoch {method.refresh_every + 1}, so this run never uses CLIM's positives (it is "
                     f"plain MoCo v2); " + (f"set method.refresh_every below {epochs}" if epochs > 1 else
                                            "train 2 epochs or more with method.refresh_every=1"))
    if num_samples and model.queue_size >= num_samples:
        smaller = 1 << max(0, (num_samples // 2).bit_length() - 1)
        lines.append(f"warning   model.queue_size={model.queue_size} >= the {num_samples} training images: from "
                     f"epoch 2 on images meet their own keys of an earlier epoch among the negatives; set "
                     f"model.queue_size below {num_samples}, e.g. {smaller}")
    if needs_holdout(data.name, data.root):
        lines.append(f"warning   {Path(data.root).expanduser().resolve()} has no val/ or test/ folder: `clim eval` "
                     f"will test on data.val_fraction={data.val_fraction:g} of every class held out from these same "
                     f"images, which pretraining sees (without labels); add a val/ folder of unseen images for a "
                     f"clean test split")
    return lines


def run_summary(config: Config, world_size: int, out_dir: str | Path,
                data_info: dict[str, Any] | None = None) -> str:
    """The lines a run prints before its first step (no trailing newline); ``data_info`` (``image_size``,
    ``in_channels``, ``num_samples`` when known) fills in what the config leaves automatic."""
    data, model = config.data, config.model
    info = data_info or {}
    size = data.image_size or info.get("image_size")
    where = f" at {data.root}" if data.root else ""
    samples = f", {info['num_samples']} images" if info.get("num_samples") else ""
    size_text = f"{size} px" if size else "native size"
    channels = f", {info['in_channels']} channel(s)" if info.get("in_channels") else ""
    if model.small_stem is None and not size:
        stem = f"stem auto (small-image at <= {SMALL_IMAGE_MAX} px)"
    else:
        stem = "small-image stem" if uses_small_stem(size, model.small_stem) else "ImageNet stem"
    symmetric = ", symmetric loss" if model.symmetric else ""
    return "\n".join([
        "clim pretrain",
        f"data      {data.name}{where}{samples}, {size_text}{channels}, augmentation {data.augment}",
        f"model     {model.backbone} ({stem}), queue K {model.queue_size}, key momentum {model.momentum:g}, "
        f"temperature {model.temperature:g}{symmetric}",
        _method_line(config, info.get("num_samples")),
        _batch_line(config, world_size),
        _lr_line(config),
        f"output    {Path(out_dir).expanduser().resolve()}",
        *_trap_lines(config, info.get("num_samples")),
    ])


def output_paths(out_dir: str | Path) -> str:
    """The lines a run prints after its last epoch: the files it left and what reads them."""
    out = Path(out_dir).expanduser().resolve()
    ckpt = out / CHECKPOINT_FILE
    return "\n".join([
        f"outputs in {out}:",
        f"  {ckpt}  (weights, queue, positives, optimiser; resume: run the same command again)",
        f"  {out / METRICS_FILE}  (one JSON line per epoch)",
        f"  {out / TENSORBOARD_DIR}  (tensorboard --logdir {out / TENSORBOARD_DIR})",
        f"  {out / CONFIG_FILE}  (the resolved configuration)",
        f"next: {clim_command()} report {shlex.quote(str(out))}; {clim_command()} eval knn --ckpt "
        f"{shlex.quote(str(ckpt))}",
    ])


def clim_command() -> str:
    """How the shell that started this process runs ``clim``: ``clim`` when that name on PATH is this
    environment's script; else the script's path (relative under the working directory, e.g.
    ``.venv/bin/clim`` after ``make demo``); else ``python -m clim`` with this interpreter."""
    script = Path(sys.executable).parent / ("clim.exe" if os.name == "nt" else "clim")
    found = shutil.which("clim")
    if not script.is_file():
        return f"{shlex.quote(sys.executable)} -m clim"
    if found and os.path.samefile(found, script):
        return "clim"
    try:
        relative = script.absolute().relative_to(Path.cwd())
    except ValueError:
        return shlex.quote(str(script.absolute()))
    return shlex.quote(str(relative) if relative.parent != Path(".") else f"./{relative}")  # a path, not a name

