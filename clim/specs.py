"""A config resolved once, at the start of a run: the few values each layer receives.

The model gets a :class:`ModelSpec`, the step objective an :class:`ObjectiveSpec`, the positives bank a
:class:`SelectionSpec`, the data path a :class:`ViewSpec` and a :class:`LoaderSpec`; none of them sees
the whole :class:`~clim.config.Config`. The facts that need more than the config (the number of
processes, of training images, the device) are resolved and checked here too, and so are the names of a
run folder's files. Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from clim.config import CLUSTERED_SELECTIONS, MULTICROP_SCALE, Config, ConfigError, uses_small_stem

CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
TENSORBOARD_DIR = "tensorboard"


@dataclass(frozen=True)
class ModelSpec:
    backbone: str
    small_stem: bool  # 3x3 stride-1 stem without max-pool (resolved: model.small_stem or <= SMALL_IMAGE_MAX px)
    head_dim: int
    queue_size: int
    momentum: float
    bn_splits: int  # BN groups per process (batch_layout)


@dataclass(frozen=True)
class ObjectiveSpec:
    clim: bool  # the positive term joins once the bank has positives
    mixing: str  # none | cutmix | mixup
    alpha: float  # Beta(alpha, alpha) of the mixing in use
    temperature: float
    symmetric: bool


@dataclass(frozen=True)
class SelectionSpec:
    strategy: str
    num_positives: int
    num_clusters: int | None  # None: N / 100
    k: int
    refresh_every: int  # epochs; the first refresh is at epoch refresh_every (counted from 0)
    features: str  # head | backbone
    seed: int  # train.seed: refresh r at epoch e is seeded with seed * REFRESH_SEED_STRIDE + e
    batch_size: int  # embedding batch at a refresh
    num_workers: int


@dataclass(frozen=True)
class ViewSpec:
    sizes: tuple[int, ...]  # the full-size views' resolutions, largest first (METHOD §4)
    small_size: int | None  # multi-crop views' side (None: no multi-crop)
    positive_query: bool  # mixing: the positive's query view too
    crop_scale: tuple[float, float]
    flip_p: float
    jitter_strength: float
    jitter_p: float
    grayscale_p: float
    blur_p: float

    def augment_kwargs(self, multicrop: bool = False) -> dict:
        """The MoCo v2 augmentation's keywords (``moco_v2_transform``, ``MoCoV2BatchAugment``)."""
        strength = self.jitter_strength
        return dict(crop_scale=MULTICROP_SCALE if multicrop else self.crop_scale,
                    jitter=(strength, strength, strength, strength / 4), jitter_p=self.jitter_p,
                    grayscale_p=self.grayscale_p, blur_p=self.blur_p, flip_p=self.flip_p)


@dataclass(frozen=True)
class LoaderSpec:
    dataset: str  # data.name (for messages)
    seed: int
    batch_size: int  # the global batch
    world_size: int  # processes
    per_process: int  # batch_size / world_size
    num_workers: int
    augment: str  # data.augment: auto | batched | loader | device
    decode: str  # data.decode: auto | cpu | gpu


def per_process_batch(config: Config, world_size: int) -> int:
    """``train.batch_size`` (the global batch) / ``world_size``; :class:`ConfigError` if it does not divide."""
    batch = config.train.batch_size
    if batch % world_size:
        raise ConfigError(f"train.batch_size={batch} (the global batch) does not divide over {world_size} "
                          f"processes; use a multiple of {world_size}")
    return batch // world_size


def batch_layout(config: Config, world_size: int) -> tuple[int, int]:
    """``(per-process batch, BN splits per process)`` for ``world_size`` processes.

    ``train.batch_size`` is the global batch (what papers report); each process takes
    ``batch_size / world_size``. BatchNorm normalises groups of ``batch_size / model.bn_splits``
    images whatever the number of processes: ``bn_splits`` groups on one device (split-BN), and
    ``bn_splits / world_size`` groups per process under DDP, which is per-GPU BN when the two are
    equal (the paper's 8 GPUs x 64 = ``bn_splits: 8`` on one GPU). With fewer splits than processes
    each process normalises its own batch. Raises :class:`ConfigError` naming the numbers when
    something does not divide.
    """
    per_process, splits = per_process_batch(config, world_size), config.model.bn_splits
    if world_size > 1:
        if splits % world_size == 0:
            splits //= world_size
        elif splits < world_size:
            splits = 1
        else:
            raise ConfigError(f"model.bn_splits={splits} is not a multiple of the {world_size} processes: "
                              f"BN groups of train.batch_size / model.bn_splits images cannot be kept")
    if per_process % splits:
        raise ConfigError(f"model.bn_splits={config.model.bn_splits} does not divide the batch of "
                          f"{per_process} images per process into equal BN groups; change train.batch_size "
                          f"or model.bn_splits")
    return per_process, splits


def model_spec(config: Config, image_size: int, world_size: int = 1) -> ModelSpec:
    model = config.model
    return ModelSpec(model.backbone, uses_small_stem(image_size, model.small_stem), model.head_dim, model.queue_size, model.momentum,
                     batch_layout(config, world_size)[1])


def objective_spec(config: Config) -> ObjectiveSpec:
    method = config.method
    alpha = method.mixup_alpha if method.mixing == "mixup" else method.alpha
    return ObjectiveSpec(method.name == "clim", method.mixing, alpha, config.model.temperature, config.model.symmetric)


def selection_spec(config: Config) -> SelectionSpec | None:
    """CLIM's positives (None for MoCo v2)."""
    method = config.method
    if method.name != "clim":
        return None
    return SelectionSpec(method.selection, method.num_positives, method.num_clusters, method.knn_k,
                         method.refresh_every, method.selection_features, config.train.seed,
                         config.train.batch_size, config.data.num_workers)


def multicrop_size(config: Config, image_size: int) -> int:
    return config.method.multicrop_size or max(8, round(image_size * 96 / 224))


def view_spec(config: Config, image_size: int) -> ViewSpec:
    method, data = config.method, config.data
    return ViewSpec(tuple(sorted(method.resolutions or [image_size], reverse=True)),
                    multicrop_size(config, image_size) if method.multicrop else None, method.mixing != "none",
                    (data.crop_min_scale, 1.0), data.flip_p, data.jitter_strength, data.jitter_p, data.grayscale_p,
                    data.blur_p)


def loader_spec(config: Config, world_size: int = 1) -> LoaderSpec:
    data = config.data
    return LoaderSpec(data.name, config.train.seed, config.train.batch_size, world_size,
                      per_process_batch(config, world_size), data.num_workers, data.augment, data.decode)


def check_for_dataset(config: Config, num_samples: int) -> None:
    """The rules that need the number of training images (call it once the dataset is built):
    an epoch must hold a full global batch (the last partial batch is dropped), and CLIM's positives
    table needs more images than ``method.knn_k`` neighbours and at most one k-means cluster per image.
    A queue larger than the dataset is allowed (the run summary warns about it)."""
    batch = config.train.batch_size
    if num_samples < batch:
        raise ConfigError(f"invalid value {batch!r} for 'train.batch_size' (must be <= the {num_samples} training "
                          f"images: an epoch takes only full global batches, so it would have no step)")
    method = config.method
    if method.name != "clim":
        return
    if num_samples <= method.knn_k:
        raise ConfigError(f"invalid value {method.knn_k!r} for 'method.knn_k' (must be < the {num_samples} training "
                          f"images: every image needs knn_k neighbours other than itself)")
    if method.selection in CLUSTERED_SELECTIONS and method.num_clusters is not None and \
            method.num_clusters > num_samples:
        raise ConfigError(f"invalid value {method.num_clusters!r} for 'method.num_clusters' (must be <= the "
                          f"{num_samples} training images; null: N / 100)")


def check_device(config: Config) -> None:
    """``train.device=cuda`` needs a visible CUDA device; imports torch, so call it where torch is loaded."""
    if config.train.device != "cuda":
        return
    import torch  # here, not at the top: validating a config must not load torch

    if not torch.cuda.is_available():
        raise ConfigError("train.device='cuda' but no CUDA device is visible (torch.cuda.is_available() is False); "
                          "use train.device=auto or cpu")
