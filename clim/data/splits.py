"""The labelled splits every evaluation uses: ``clim eval``'s protocols, the demo's comparison and the trainer's kNN
monitor build them here, so that all of them evaluate on the same images.

A dataset's own ``train`` and ``test`` splits at the pretraining image size, normalised with the pretraining mean/std
(the model's input convention, as in MoCo's transfer code); an image folder of class folders with no ``val/`` or
``test/`` (:func:`clim.summary.needs_holdout`) has its test split held out: ``data.val_fraction`` of every class, by a
fixed seed (:func:`stratified_holdout`). ``overrides`` (``--set data.name=cifar10 data.root=...``) point the same model
at other data; keys and values follow :mod:`clim.config`'s rules, so a typo is a one-line :class:`ConfigError`.
:mod:`clim.evaluation.common` re-exports what the protocols use."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.utils.data import Dataset

from clim.config import Config, ConfigError, parse_overrides
from clim.summary import needs_holdout

RESIZE_RATIO = 0.875  # ImageNet convention: resize to size / 0.875, centre-crop size


@dataclass(frozen=True)
class EvalSpec:
    """Which data to evaluate on and how the images are brought to the model's input format."""

    name: str
    root: str | None
    image_size: int
    in_channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    verify: bool = True  # data.verify: check image-folder files (cached per folder) or trust them
    # an image folder without val/ or test/: the test split is a stratified holdout of the labelled images
    holdout: bool = False
    val_fraction: float = 0.2


def apply_overrides(config: Config, overrides: Sequence[str]) -> Config:
    """A copy of ``config`` with ``key=value`` overrides (clim.config's parsing and checks)."""
    config = copy.deepcopy(config)
    for key, value in parse_overrides(overrides).items():
        config.set(key, value)
    config.validate()
    return config


def eval_spec(config: Config, data_info: dict[str, Any], overrides: Sequence[str] = ()) -> EvalSpec:
    """The evaluation data after overrides; the image size stays the pretraining one unless
    ``data.image_size`` is overridden."""
    updated = apply_overrides(config, overrides)
    size_overridden = any(item.partition("=")[0].strip() == "data.image_size" for item in overrides)
    image_size = updated.data.image_size if size_overridden and updated.data.image_size else data_info["image_size"]
    return EvalSpec(updated.data.name, updated.data.root, int(image_size), int(data_info["in_channels"]),
                    tuple(data_info["mean"]), tuple(data_info["std"]), updated.data.verify,
                    needs_holdout(updated.data.name, updated.data.root), updated.data.val_fraction)


HOLDOUT_SEED = 0  # fixed: every protocol and every --seed evaluates on the same held-out images


def stratified_holdout(labels: torch.Tensor, fraction: float, seed: int = HOLDOUT_SEED
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train_indices, test_indices)``, sorted: ``round(fraction · n_c)`` images of every class c
    (at least one, and never all, when the class has two or more) drawn by a seeded permutation;
    unlabelled images (−1) are in neither. Deterministic for the same labels in the same order."""
    generator = torch.Generator().manual_seed(seed)
    test = []
    for label in torch.unique(labels[labels >= 0]).tolist():  # sorted
        members = (labels == label).nonzero().flatten()
        n = len(members)
        take = min(max(round(fraction * n), 1), n - 1) if n >= 2 else 0
        test.append(members[torch.randperm(n, generator=generator)[:take]])
    test_index = torch.sort(torch.cat(test)).values if test else torch.empty(0, dtype=torch.long)
    in_test = torch.zeros(len(labels), dtype=torch.bool)
    in_test[test_index] = True
    return ((labels >= 0) & ~in_test).nonzero().flatten(), test_index


class HoldoutSplit(Dataset):
    """One side of a :func:`stratified_holdout` of a labelled dataset, with the dataset interface the
    protocols use: ``labels``, ``info``, ``classes``, ``transform``, ``path(i)``; items are
    ``(image, i, label)`` with ``i`` the position in this split."""

    def __init__(self, base, indices: torch.Tensor, split: str):
        self.base = copy.copy(base)  # own transform, shared file list
        self.indices, self.labels, self.split = indices, base.labels[indices], split
        self.info, self.classes = base.info, getattr(base, "classes", None)

    @property
    def transform(self):
        return self.base.transform

    @transform.setter
    def transform(self, value) -> None:
        self.base.transform = value

    def __len__(self) -> int:
        return len(self.indices)

    def path(self, index: int) -> Path:
        return self.base.path(int(self.indices[index]))

    def __getitem__(self, index):
        image, _, label = self.base[int(self.indices[index])]
        return image, index, label


def eval_dataset(config: Config, data_info: dict[str, Any], overrides: Sequence[str], split: str,
                 transform: Callable | None = None):
    """One labelled split (``train`` or ``test``) with ``transform``, by default the eval transform: fixed-size (array)
    data resized straight to the image size, image folders resized + centre cropped (ratio 0.875)."""
    from clim.data import build_dataset
    from clim.data.transforms import eval_transform

    spec = eval_spec(config, data_info, overrides)
    try:
        dataset = build_dataset(spec.name, spec.root, "train" if spec.holdout else split, transform=None,
                                image_size=spec.image_size, verify=spec.verify)
    except ValueError as error:  # unknown dataset name, a folder without labels: user errors
        raise ConfigError(str(error)) from None
    if spec.holdout and (dataset.labels >= 0).any():
        train_index, test_index = stratified_holdout(dataset.labels, spec.val_fraction)
        dataset = HoldoutSplit(dataset, test_index if split == "test" else train_index, split)
    if not (dataset.labels >= 0).any():
        raise ConfigError(f"the '{split}' split of dataset '{spec.name}' has no labels to evaluate with")
    dataset.transform = transform or eval_transform(
        spec.image_size, spec.mean, spec.std, spec.in_channels,
        resize_ratio=None if dataset.info.fixed_size else RESIZE_RATIO)
    return dataset


def eval_datasets(config: Config, data_info: dict[str, Any], overrides: Sequence[str] = (),
                  train_transform: Callable | None = None):
    """``(train_ds, test_ds)``: the labelled splits with the eval transform; ``train_transform``
    replaces it on the train split (the crop + flip of the linear and semi-supervised protocols)."""
    return (eval_dataset(config, data_info, overrides, "train", train_transform),
            eval_dataset(config, data_info, overrides, "test"))


def num_classes_of(dataset) -> int:
    known = getattr(dataset.info, "num_classes", None)
    return int(known) if known else int(dataset.labels.max()) + 1
