"""What every evaluation protocol shares: loading a checkpoint, the labelled splits (:mod:`clim.data.splits`,
re-exported here: the checkpoint's own data by default, other data by ``--set``), result files."""

from __future__ import annotations

import datetime
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clim.config import Config, ConfigError, uses_small_stem
from clim.data.splits import (HOLDOUT_SEED, EvalSpec, eval_dataset, eval_datasets, eval_spec,  # noqa: F401
                              num_classes_of, stratified_holdout)
from clim.data.transforms import moco_v2_transform
from clim.method.positives import TABLE_KEY
from clim.models.backbones import build_backbone
from clim.models.moco import MoCo, build_moco
from clim.runtime import checkpoint
from clim.runtime.checkpoint import CheckpointError
from clim.runtime.features import extract_features
from clim.specs import model_spec


@dataclass
class PretrainedRun:
    """A loaded checkpoint: the model plus what the result files need to say about it."""

    path: Path
    config: Config
    model: MoCo
    data_info: dict[str, Any]
    epoch: int | None
    step: int | None


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` / ``"auto"``: CUDA when available, else CPU; an unusable choice is a ConfigError."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"invalid device '{device}' (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{device}' requested but CUDA is not available")
    return device


# What every command that reads a trainer checkpoint builds the model and the evaluation data from.
DATA_INFO_KEYS = ("name", "in_channels", "image_size", "mean", "std")


def trainer_state(ckpt_path: str | Path) -> tuple[Path, dict[str, Any], Config, dict[str, Any]]:
    """``(file, state, config, data_info)`` of a trainer checkpoint (a file or its run folder) that has
    every key the model and the evaluation data are built from, else a one-line CheckpointError."""
    path, state = checkpoint.load_trainer_checkpoint(ckpt_path)
    for entry in checkpoint.TRAINER_KEYS:
        if not isinstance(state[entry], dict):
            raise CheckpointError(f"{path}: its '{entry}' entry is a {type(state[entry]).__name__}, not a dict")
    info = dict(state["data_info"])
    model_config = state["config"].get("model")
    missing = [] if isinstance(model_config, dict) and "backbone" in model_config else ["config.model.backbone"]
    missing += [f"data_info.{key}" for key in DATA_INFO_KEYS if key not in info]
    if missing:
        raise CheckpointError(f"{path} is not a complete clim trainer checkpoint: missing key(s) {', '.join(missing)}")
    for key in ("in_channels", "image_size"):
        if isinstance(info[key], bool) or not isinstance(info[key], int) or info[key] < 1:
            raise CheckpointError(f"{path}: data_info.{key} is {info[key]!r}, not a positive integer")
    for key in ("mean", "std"):
        if not isinstance(info[key], (list, tuple)) or not info[key]:
            raise CheckpointError(f"{path}: data_info.{key} is {info[key]!r}, not a list of numbers")
    try:
        config = Config.from_dict(state["config"])
    except ConfigError as error:
        raise CheckpointError(f"{path} holds an invalid config: {error}") from None
    return path, state, config, info


def state_mismatches(expected: dict[str, Any], found: dict[str, Any]) -> list[str]:
    """Why ``found`` would not load strictly where ``expected`` (a ``state_dict()``) came from: one phrase
    per kind of problem (other shapes, missing keys, unexpected keys), with its first key."""
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    wrong = [key for key in expected if key in found and (
        not torch.is_tensor(found[key]) or tuple(found[key].shape) != tuple(expected[key].shape))]

    def shape(value) -> str:
        return str(tuple(value.shape)) if torch.is_tensor(value) else f"a {type(value).__name__}, not a tensor"

    problems = []
    if wrong:
        key = wrong[0]
        problems.append(f"'{key}' has shape {shape(found[key])}, expected {shape(expected[key])}"
                        + (f" ({len(wrong)} keys of another shape)" if len(wrong) > 1 else ""))
    if missing:
        problems.append(f"{len(missing)} missing key(s), first '{missing[0]}' (expected shape "
                        f"{shape(expected[missing[0]])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s), first '{unexpected[0]}'")
    return problems


def load_strictly(module: nn.Module, weights: dict[str, Any], what: str) -> None:
    """``module.load_state_dict(weights, strict=True)``, or one CheckpointError line starting with ``what``."""
    problems = state_mismatches(module.state_dict(), weights)
    if problems:
        raise CheckpointError(f"{what}: {'; '.join(problems)}")
    module.load_state_dict(weights, strict=True)


def fitted_model(path: Path, state: dict[str, Any], config: Config, info: dict[str, Any]) -> MoCo:
    """The MoCo that ``config`` and ``info`` describe, holding the checkpoint's weights (loaded strictly;
    the positives table, a training-time buffer, is not part of the model)."""
    spec = model_spec(config, info["image_size"])
    model = build_moco(spec, info["in_channels"])
    stem = "small" if spec.small_stem else "ImageNet"
    weights = {key: value for key, value in state["model"].items() if key != TABLE_KEY}
    load_strictly(model, weights, f"{path} does not fit the model its config and data_info describe "
                                  f"({config.model.backbone}, {info['in_channels']} input channel(s), {stem} stem)")
    return model


def load_run(ckpt_path: str | Path, device: str | torch.device | None = "cpu") -> PretrainedRun:
    """Rebuild the pretrained MoCo from a trainer checkpoint (eval mode, on ``device``)."""
    path, state, config, info = trainer_state(ckpt_path)
    model = fitted_model(path, state, config, info).to(resolve_device(device)).eval()
    return PretrainedRun(path, config, model, info, state.get("epoch"), state.get("step"))


def plain_backbone(config: Config, data_info: dict[str, Any], model: MoCo) -> tuple[nn.Module, int]:
    """A fresh torchvision ResNet (plain BatchNorm) holding the query backbone's weights: fine-tuning
    needs ordinary BatchNorm rather than MoCo's split-batch BN (in eval mode both are the same)."""
    net, feature_dim = build_backbone(config.model.backbone, data_info["in_channels"],
                                      uses_small_stem(data_info["image_size"], config.model.small_stem))
    net.load_state_dict(model.backbone_q.state_dict())
    return net.to(next(model.parameters()).device), feature_dim


def per_class_sample(labels: torch.Tensor, classes: list[int], take, seed: int) -> torch.Tensor:
    """Sorted indices of ``take(n)`` random members of each of ``classes`` (``n``: the class's size),
    drawn class by class with one generator seeded by ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label in classes:
        members = (labels == label).nonzero().flatten()
        chosen.append(members[torch.randperm(members.numel(), generator=generator)[:take(members.numel())]])
    return torch.cat(chosen).sort().values


def crop_flip_transform(spec: EvalSpec, crop_scale: tuple[float, float]):
    """RandomResizedCrop + horizontal flip only (linear / semi-supervised training, METHOD §5):
    MoCo v2's transform with every photometric step switched off."""
    return moco_v2_transform(spec.image_size, spec.mean, spec.std, spec.in_channels, crop_scale=crop_scale,
                             jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, flip_p=0.5)


def default_out(ckpt_path: str | Path, protocol: str) -> Path:
    """``<checkpoint folder>/eval/<protocol>.json``."""
    path = Path(ckpt_path)
    return (path if path.is_dir() else path.parent) / "eval" / f"{protocol}.json"


def check_output(path: str | Path, flag: str = "--out") -> None:
    """A ConfigError (one line, exit 2) unless a file can be written at ``path``: a temporary file is
    created (and removed) in the nearest existing folder above it, which also catches what permission
    bits do not show (read-only or special file systems, root)."""
    target = Path(path).expanduser().absolute()
    if target.is_dir():
        raise ConfigError(f"{flag} {path} is a folder, not a file")
    folder = target.parent
    while not folder.exists():  # False too for a path below a file
        folder = folder.parent
    if not folder.is_dir():
        raise ConfigError(f"{flag} {path} cannot be created: {folder} is not a folder")
    try:
        handle, probe = tempfile.mkstemp(prefix=".clim-write-check-", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise ConfigError(f"{flag} {path} cannot be written: creating a file in {folder} failed "
                          f"({error.strerror or error}); choose another {flag}") from None


def write_result(path: str | Path, result: dict[str, Any]) -> Path:
    """Write ``result`` as JSON, atomically, with a UTC timestamp."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {**result, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


class Session:
    """What every ``clim eval`` protocol (:mod:`clim.evaluation.cli`) starts from: the checkpoint's run,
    the device, the evaluation data and the output path, checked writable before any data is read."""

    def __init__(self, args, protocol: str):
        torch.manual_seed(args.seed)
        self.args = args
        self.device = resolve_device(args.device)
        self.run = load_run(args.ckpt, self.device)
        self.spec = eval_spec(self.run.config, self.run.data_info, args.overrides)
        self.out = Path(args.out) if args.out else default_out(self.run.path, protocol)
        check_output(self.out)  # the default output too (a read-only run folder)
        self.progress = False if args.no_progress else None
        self.num_workers = args.num_workers if args.num_workers is not None else self.run.config.data.num_workers

    def datasets(self, train_transform=None):
        return eval_datasets(self.run.config, self.run.data_info, self.args.overrides, train_transform)

    def dataset(self, split: str):
        return eval_dataset(self.run.config, self.run.data_info, self.args.overrides, split)

    def features(self, dataset) -> tuple[torch.Tensor, torch.Tensor]:
        """``(feats, labels)`` of the query backbone on ``dataset``."""
        return extract_features(self.run.model.backbone_q, dataset, self.args.batch_size, self.device,
                                self.num_workers, self.progress)

    def settings(self, protocol: str, **splits) -> dict[str, Any]:
        """What every result file records beside its numbers; ``splits``: the datasets used by split name."""
        spec, run = self.spec, self.run
        holdout = {"test_split": {
            "kind": "stratified holdout", "val_fraction": spec.val_fraction, "seed": HOLDOUT_SEED,
            "reason": f"{Path(spec.root).expanduser().resolve()} has no val/ or test/ folder",
            "rule": f"round({spec.val_fraction} x images) of every class (at least 1) is the test split, "
                    "the rest the train split; set with --set data.val_fraction=F"}} if spec.holdout else {}
        return {"protocol": protocol, "checkpoint": str(run.path.resolve()), "checkpoint_epoch": run.epoch,
                "checkpoint_step": run.step, "method": run.config.method.name, "backbone": run.config.model.backbone,
                "pretrain_dataset": run.data_info["name"], "dataset": spec.name, "data_root": spec.root,
                "image_size": spec.image_size, **{f"{split}_size": len(data) for split, data in splits.items()},
                **holdout, "seed": self.args.seed, "device": str(self.device)}

    def finish(self, record: dict[str, Any], summary: str) -> int:
        print(f"{summary} -> {write_result(self.out, record)}")
        return 0
