"""The config's keys: typed dataclass defaults, each with its meaning, and the checks of every value. Every key is
checked against the dataclasses, so a typo fails at once with a one-line :class:`ConfigError` that names the key,
instead of being silently ignored."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

import yaml


class ConfigError(ValueError):
    """A bad config key or value; the CLI prints it on one line and exits with code 2."""


# The smallest image side every augmentation path and stem handles (at 1 px all three paths fail); 2 and 3 px
# train end to end, but below 8 px the ResNet's last stages see padding more than pixels: sizes for tests.
MIN_IMAGE_SIZE = 2
_MIN_SIZE_REASON = "the Gaussian blur's 3-tap kernel pads 1 px by reflection"
# numpy takes seeds below 2**32 and rank r seeds with train.seed + r: room for 1024 processes
SEED_LIMIT = 2**32 - 1024
# CLIM's k-means at a refresh is seeded with train.seed * 10000 + epoch (clim.method.positives.refresh_seed),
# and faiss takes that seed as a 32-bit signed int
REFRESH_SEED_STRIDE = 10_000
KMEANS_SEED_LIMIT = 2**31 - 1
STRATEGIES = ("random", "knn", "kmeans", "knn_kmeans", "center_wise")  # positive selections (Table 6)
CLUSTERED_SELECTIONS = STRATEGIES[2:]  # the strategies that run k-means
DEFAULT_K = 40  # METHOD §2: kNN with k = 40
DEFAULT_NUM_POSITIVES = 10  # METHOD §2: P = 10 positives per anchor
SMALL_IMAGE_MAX = 64  # the automatic small-image stem (3x3 stride 1, no max-pool) up to this side
MULTICROP_SCALE = (0.05, 0.14)  # Table 7 baseline: 2 x 96 px crops of a 224 px image


def uses_small_stem(image_size: int, small_stem: bool | None) -> bool:
    return image_size <= SMALL_IMAGE_MAX if small_stem is None else small_stem


def default_num_clusters(num_samples: int) -> int:
    """METHOD §2's cluster count for small datasets: m ≈ N/100 (at least 2)."""
    return max(2, num_samples // 100)


# Every field carries its meaning as a comment: the line(s) right above it and/or a trailing one.
# scripts/config_table.py turns them into the key table of docs/CONFIG.md (a test keeps the two equal), so a
# new field needs a comment, and docs/CONFIG.md is regenerated with `python scripts/config_table.py --write`.


@dataclass
class DataConfig:
    # fmnist, fmnist-mini (embedded), digits, cifar10, cifar100, stl10, imagefolder (docs/USAGE.md "Datasets")
    name: str = "fmnist-mini"
    root: str | None = None  # dataset folder: image-folder root, CIFAR/STL-10 root, idx folder
    image_size: int | None = None  # training resolution; null: the dataset's native size (image folders: 224)
    num_workers: int = 2  # DataLoader workers (loader and device paths, refreshes, evaluation)
    # Where augmentation runs: "batched" (whole uint8 batches on the training device, array data),
    # "loader" (per-sample torchvision transforms in DataLoader workers), "device" (workers only
    # decode + crop + flip to uint8; jitter, grayscale, blur and normalisation run batched on the
    # training device: large image folders on a GPU), or "auto" (batched for array datasets; for
    # image folders device on CUDA, loader on CPU).
    augment: str = "auto"
    # JPEG decoding for data.augment=device: "gpu" (workers only read bytes; batched nvJPEG decode and
    # per-view crops on the device, clim.data.jpeg; PNG/CMYK/progressive files fall back to PIL,
    # counted in one warning per epoch), "cpu" (workers decode with PIL), "auto" (gpu for image folders
    # on CUDA when torchvision can decode there, else cpu).
    decode: str = "auto"
    # image folders: check every file once, cached per folder in $CLIM_CACHE (default ~/.cache/clim/index)
    # so a restart, resume or evaluation skips the scan; false trusts the folder
    verify: bool = True
    # image folder without a val/ (or test/) folder: `clim eval` holds out this share of every class
    # (stratified, deterministic) as the test split and trains / builds the kNN bank on the rest.
    val_fraction: float = 0.2
    crop_min_scale: float = 0.2  # RandomResizedCrop scale (s, 1) (METHOD §1)
    jitter_strength: float = 0.4  # brightness/contrast/saturation; hue = strength / 4
    jitter_p: float = 0.8  # probability of colour jitter
    grayscale_p: float = 0.2  # probability of random grayscale
    blur_p: float = 0.5  # probability of Gaussian blur (sigma scaled by image_size / 224)
    flip_p: float = 0.5  # probability of a horizontal flip


@dataclass
class ModelConfig:
    # resnet10, resnet18, resnet34, resnet50; NAME_wN narrows one to stage widths N, 2N, 4N, 8N
    # (resnet10_w16: the CPU demo; only the standard width loads into a torchvision constructor)
    backbone: str = "resnet18"
    small_stem: bool | None = None  # 3x3 stride-1 stem without max-pool; null: for inputs <= 64 px
    head_dim: int = 128  # output size of the MLP projection head (the contrastive embedding)
    queue_size: int = 65536  # MoCo queue K of negative keys (keep it below the number of training images)
    momentum: float = 0.999  # key-encoder momentum m
    temperature: float = 0.2  # InfoNCE temperature tau
    symmetric: bool = False  # symmetric loss: both views serve as queries
    # split-batch BN: groups of train.batch_size / bn_splits images on one device; under DDP
    # bn_splits / world_size groups per process (per-GPU BN when equal); must divide the batch (METHOD §1)
    bn_splits: int = 8


@dataclass
class TrainConfig:
    epochs: int = 200  # training epochs (raise it to go on from a finished run)
    batch_size: int = 256  # the global batch: each of N processes takes batch_size / N
    lr: float | None = None  # SGD learning rate; null: 0.03 x batch_size / 256 (METHOD §1)
    momentum: float = 0.9  # SGD momentum
    # SGD weight decay: 1e-4 as in METHOD §1, the ImageNet presets and ablate-smoke; the CIFAR-10,
    # Fashion-MNIST and CPU-demo presets, ablate-cpu and ablate-gpu set 5e-4
    weight_decay: float = 1e-4
    warmup_epochs: int = 0  # linear warm-up before the per-step cosine schedule
    seed: int = 0  # seed of weights, augmentation and selection (rank r uses seed + r)
    device: str = "auto"  # auto | cpu | cuda
    amp: bool | None = None  # autocast; null: on CUDA only
    # bfloat16 | float16 (adds a GradScaler, saved in checkpoints, and a host sync per step)
    amp_dtype: str = "bfloat16"
    channels_last: bool | None = None  # channels-last activations; null: on CUDA only
    cudnn_benchmark: bool | None = None  # cuDNN autotunes the step's convolutions (null: on CUDA unless deterministic)
    knn_every: int = 5  # kNN monitor period in epochs (0: never)
    knn_k: int = 20  # neighbours of the weighted-kNN monitor
    knn_temperature: float = 0.07  # vote temperature of the weighted-kNN monitor
    deterministic: bool = False  # torch.use_deterministic_algorithms (warn only): slower, repeatable kernels
    log_every: int = 10  # loss read (the loop's only host sync), NaN check and TensorBoard scalars every N steps
    compile: bool | None = None  # torch.compile both encoders (null: off; see BENCHMARKS.md for measured gains)
    batch_views: bool | None = None  # same-shaped views share one encoder pass, BN per view (null: on CUDA)
    checkpoint_every_minutes: float = 30.0  # also save inside an epoch this often (0: at epoch ends only)


@dataclass
class MethodConfig:
    name: str = "mocov2"  # mocov2 | clim
    selection: str = "center_wise"  # random | knn | kmeans | knn_kmeans | center_wise (Table 6)
    mixing: str = "cutmix"  # none | cutmix | mixup (Tables 6, 10)
    alpha: float = 2.0  # Beta(alpha, alpha) for CutMix (METHOD §3)
    mixup_alpha: float = 0.2  # Beta(alpha, alpha) for Mixup
    num_clusters: int | None = None  # k-means clusters m; null: N / 100 (METHOD §2)
    knn_k: int = DEFAULT_K  # neighbours k of each anchor (Ω2)
    num_positives: int = DEFAULT_NUM_POSITIVES  # positives P per anchor in the table
    # epochs between refreshes of the positives table; the first comes after epoch refresh_every, so the
    # positives join at epoch refresh_every + 1 and a run of train.epochs <= refresh_every is plain MoCo v2
    refresh_every: int = 5
    selection_features: str = "head"  # head (128-d) | backbone (pooled) features for selection
    resolutions: list[int] | None = None  # training resolutions, e.g. [224, 160] (METHOD §4); null: [image_size]
    multicrop: bool = False  # Table 7 baseline: + 2 small crops (scale 0.05-0.14)
    multicrop_size: int | None = None  # side of the small crops; null: 96/224 of image_size


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    method: MethodConfig = field(default_factory=MethodConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_flat_dict(self) -> dict[str, Any]:
        """Every key as ``section.name`` -> value (what ``--set`` takes)."""
        return _flatten(self.to_dict())

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Config":
        config = cls()
        for key, value in _flatten(values).items():
            config.set(key, value)
        config.validate()
        return config

    def set(self, key: str, value: Any) -> None:
        section_name, _, name = key.partition(".")
        section = getattr(self, section_name, None)
        if not name or not dataclasses.is_dataclass(section):
            raise ConfigError(f"unknown config key '{key}' (sections: {', '.join(_sections())})")
        fields = {f.name: f for f in dataclasses.fields(section)}
        if name not in fields:
            raise ConfigError(f"unknown config key '{key}' (valid in '{section_name}': {', '.join(fields)})")
        hint = typing.get_type_hints(type(section))[name]
        setattr(section, name, _coerce(key, value, hint))

    def validate(self) -> None:
        """Every key's type, range and finiteness, and the combinations that any use of a config relies
        on; a one-line :class:`ConfigError` naming the key, the value and what is allowed. A checkpoint's
        config is held to this as well; what only matters to start a run is :func:`check_training`."""
        for key, hint in _field_hints().items():  # also values assigned as attributes, not via set()
            value = self.get(key)
            if not _has_type(value, hint):
                raise ConfigError(f"invalid value {value!r} for '{key}' (expected {_type_words(hint)})")
        choices = {"data.augment": ("auto", "batched", "loader", "device"), "data.decode": ("auto", "cpu", "gpu"),
                   "train.device": ("auto", "cpu", "cuda"), "train.amp_dtype": ("bfloat16", "float16"),
                   "method.name": ("mocov2", "clim"), "method.selection": STRATEGIES,
                   "method.mixing": ("none", "cutmix", "mixup"), "method.selection_features": ("head", "backbone")}
        for key, allowed in choices.items():
            value = self.get(key)
            if value not in allowed:
                raise ConfigError(f"invalid value {value!r} for '{key}' (choose from {', '.join(allowed)})")
        # clim.models.backbones.parse_backbone's rule, checked here without importing torch
        if not re.fullmatch(r"resnet(10|18|34|50)(_w[1-9]\d*)?", self.model.backbone):
            raise ConfigError(f"invalid value {self.model.backbone!r} for 'model.backbone' (choose from resnet10, "
                              "resnet18, resnet34, resnet50, each optionally narrowed as NAME_wN, e.g. resnet10_w16)")
        for key, hint in _field_hints().items():  # NaN passes every comparison below, so this goes first
            value = self.get(key)
            if float in typing.get_args(hint) + (hint,) and value is not None and not math.isfinite(value):
                raise ConfigError(f"invalid value {value!r} for '{key}' (must be a finite number)")
        for key, allowed, rule in _RANGES:
            value = self.get(key)
            if value is not None and not rule(value):
                raise ConfigError(f"invalid value {value!r} for '{key}' ({allowed})")
        if self.method.num_positives > self.method.knn_k:
            raise ConfigError("'method.num_positives' must not exceed 'method.knn_k'")
        if self.method.resolutions is not None and not self.method.resolutions:
            raise ConfigError("'method.resolutions' must list at least one size")
        if self.method.multicrop and self.method.resolutions and len(self.method.resolutions) > 1:
            raise ConfigError("'method.multicrop' and several 'method.resolutions' are exclusive (Table 7)")
        if any(size < MIN_IMAGE_SIZE for size in self.method.resolutions or ()):
            raise ConfigError(f"invalid value {self.method.resolutions!r} for 'method.resolutions' (every size must be "
                              f">= {MIN_IMAGE_SIZE}: {_MIN_SIZE_REASON}; null: [image_size])")

    def get(self, key: str) -> Any:
        section, _, name = key.partition(".")
        return getattr(getattr(self, section), name)

    @property
    def lr(self) -> float:
        """Learning rate; METHOD §1 scales 0.03 per 256 images."""
        return self.train.lr if self.train.lr is not None else 0.03 * self.train.batch_size / 256


def _sections() -> list[str]:
    return [f.name for f in dataclasses.fields(Config)]


def _field_hints() -> dict[str, Any]:
    """``{"section.name": type hint}`` of every key, in the dataclasses' order."""
    sections = typing.get_type_hints(Config)
    return {f"{section}.{name}": hint for section in _sections()
            for name, hint in typing.get_type_hints(sections[section]).items()}


def _has_type(value: Any, hint: Any) -> bool:
    args = typing.get_args(hint)
    if value is None:
        return type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    if typing.get_origin(base) is list:
        (item,) = typing.get_args(base)
        return isinstance(value, list) and all(_has_type(v, item) for v in value)
    if base in (int, float):  # an int is a number too; a bool is neither
        return isinstance(value, int if base is int else (int, float)) and not isinstance(value, bool)
    return isinstance(value, base)


def _type_words(hint: Any) -> str:
    args = typing.get_args(hint)
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    words = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    text = "a list of integers" if typing.get_origin(base) is list else words.get(base, str(base))
    return text + (" or null" if type(None) in args else "")


# (key, what is allowed, rule) of every bound that Config.validate checks; a None value (automatic) is not checked.
_RANGES: list[tuple[str, str, Callable[[Any], bool]]] = [
    *((key, "must be > 0", lambda v: v > 0)
      for key in ["train.epochs", "train.batch_size", "model.queue_size", "model.bn_splits", "method.knn_k",
                  "method.num_positives", "method.refresh_every", "model.head_dim", "method.num_clusters",
                  "train.lr", "model.temperature", "train.knn_k", "train.knn_temperature"]),
    ("method.alpha", "must be > 0: the parameter of Beta(alpha, alpha)", lambda v: v > 0),
    ("method.mixup_alpha", "must be > 0: the parameter of Beta(alpha, alpha)", lambda v: v > 0),
    ("data.val_fraction", "0 < f < 1", lambda v: 0 < v < 1),
    ("model.momentum", "0 <= m < 1", lambda v: 0 <= v < 1),
    ("data.image_size", f"must be >= {MIN_IMAGE_SIZE}: {_MIN_SIZE_REASON}; null: the dataset's native size",
     lambda v: v >= MIN_IMAGE_SIZE),
    ("data.num_workers", "must be >= 0; 0: load in the main process", lambda v: v >= 0),
    ("data.crop_min_scale", "must be in (0, 1]: the smallest crop's share of the image area", lambda v: 0 < v <= 1),
    ("data.jitter_strength", "must be in [0, 2]: the hue jitter is strength / 4, at most 0.5", lambda v: 0 <= v <= 2),
    *((key, "a probability: must be in [0, 1]", lambda v: 0 <= v <= 1)
      for key in ["data.jitter_p", "data.grayscale_p", "data.blur_p", "data.flip_p"]),
    ("train.momentum", "must be in [0, 1)", lambda v: 0 <= v < 1),
    ("train.weight_decay", "must be >= 0", lambda v: v >= 0),
    ("train.warmup_epochs", "must be >= 0; 0: no warm-up", lambda v: v >= 0),
    ("train.seed", f"must be in [0, {SEED_LIMIT - 1}]: rank r seeds numpy with train.seed + r, which must stay "
     "below 2**32", lambda v: 0 <= v < SEED_LIMIT),
    ("train.knn_every", "must be >= 0; 0: never", lambda v: v >= 0),
    ("train.log_every", "must be > 0: a period in steps", lambda v: v > 0),
    ("train.checkpoint_every_minutes", "must be >= 0; 0: at epoch ends only", lambda v: v >= 0),
    ("method.multicrop_size", f"must be >= {MIN_IMAGE_SIZE}: {_MIN_SIZE_REASON}; null: 96/224 of image_size",
     lambda v: v >= MIN_IMAGE_SIZE),
]


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict) and "." not in full:
            flat.update(_flatten(value, full + "."))
        else:
            flat[full] = value
    return flat


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the field's type hint, converting YAML-ish strings."""
    if isinstance(value, str) and hint is not str:
        value = yaml.safe_load(value) if value.strip() else None
    args = typing.get_args(hint)
    if value is None:
        if type(None) in args:
            return None
        raise ConfigError(f"invalid value None for '{key}' (a value is required)")
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    if typing.get_origin(base) is list:
        (item,) = typing.get_args(base)
        return [_coerce(key, v, item) for v in (value if isinstance(value, (list, tuple)) else [value])]
    if base is str:
        return str(value)
    if base is float and isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
        with contextlib.suppress(ValueError):
            value = float(value)
    if base not in (bool, int, float):
        raise ConfigError(f"unsupported type for '{key}'")
    if not _has_type(value, base):
        raise ConfigError(f"invalid value {value!r} for '{key}' (expected {_type_words(base)})")
    return float(value) if base is float else value
