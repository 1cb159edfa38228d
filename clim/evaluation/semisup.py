"""Semi-supervised fine-tuning on 1 % / 10 % of the labels (paper Table 2; METHOD §5 and its departures).

All layers are fine-tuned (BatchNorm in training mode) with a fresh linear classifier. ``paper`` keeps the paper's
values (its classifier lr of 10 belongs to its ImageNet setup: ``--lr-fc`` / ``--lr-backbone`` override it);
``small`` is METHOD's small-image preset, ``quick`` a CPU smoke test. The labelled subset (on ImageNet a SimCLR split
file, ``1percent.txt`` / ``10percent.txt``; else :func:`balanced_subset`) is saved next to the result.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from clim.evaluation.common import per_class_sample
from clim.evaluation.linear import accuracy_report, fit_classifier, linear_classifier
from clim.runtime.features import extract_features


@dataclass(frozen=True)
class SemiSupPreset:
    epochs: int
    lr_backbone: float
    lr_fc: float
    momentum: float
    weight_decay: float
    step_every: int
    batch_size: int
    crop_scale: tuple[float, float]


SEMISUP_PRESETS = {
    "paper": SemiSupPreset(60, 1e-4, 10.0, 0.9, 0.0, 20, 256, (0.08, 1.0)),
    "small": SemiSupPreset(30, 1e-4, 10.0, 0.9, 0.0, 10, 256, (0.5, 1.0)),
    "quick": SemiSupPreset(3, 1e-4, 10.0, 0.9, 0.0, 1, 256, (0.5, 1.0)),
}


def balanced_subset(labels: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """Sorted indices holding ``fraction`` of every class (rounded, at least one; label −1 never),
    drawn with one generator seeded by ``seed``."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    classes = [label for label in labels.unique().tolist() if label >= 0]
    if not classes:
        raise ValueError("no labelled samples to draw a subset from")
    return per_class_sample(labels, classes, lambda size: max(1, round(fraction * size)), seed)


def split_file_subset(sample_paths: list[str], split_file: str | Path) -> torch.Tensor:
    """Indices of the images a SimCLR split file names (file names, one per line, matched whatever the
    folder); a name that matches no image is an error: a silently smaller subset would not be the paper's."""
    split_file = Path(split_file)
    if not split_file.exists():
        raise FileNotFoundError(f"split file not found: {split_file}")
    wanted = {line.strip() for line in split_file.read_text().splitlines() if line.strip()}
    indices = [i for i, path in enumerate(sample_paths) if Path(path).name in wanted]
    found = {Path(sample_paths[i]).name for i in indices}
    if len(found) != len(wanted):
        missing = sorted(wanted - found)
        raise FileNotFoundError(f"{len(missing)} image(s) of {split_file} are not in the dataset "
                                f"(e.g. {missing[0]})")
    return torch.tensor(indices, dtype=torch.long)


def save_subset(path: str | Path, indices: torch.Tensor, **meta) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**meta, "num_samples": int(indices.numel()), "indices": indices.tolist()}) + "\n")
    return path


def finetune(backbone: nn.Module, feature_dim: int, train_ds: Dataset, test_ds: Dataset, num_classes: int,
             preset: SemiSupPreset, seed: int = 0, device: str | torch.device = "cpu", num_workers: int = 0,
             progress: bool | None = None) -> dict[str, float]:
    """Fine-tune ``backbone`` (modified in place) + a new classifier on ``train_ds``; test top-1/5. A
    short last batch is dropped when the subset spans several batches: BatchNorm never sees a batch of one."""
    torch.manual_seed(seed)
    device = torch.device(device)
    classifier = linear_classifier(feature_dim, num_classes)
    model = nn.Sequential(backbone, nn.Flatten(1), classifier).to(device)
    optimizer = torch.optim.SGD(
        [{"params": backbone.parameters(), "lr": preset.lr_backbone},
         {"params": classifier.parameters(), "lr": preset.lr_fc}],
        lr=preset.lr_fc, momentum=preset.momentum, weight_decay=preset.weight_decay)
    loader = DataLoader(train_ds, batch_size=preset.batch_size, shuffle=True, num_workers=num_workers,
                        drop_last=len(train_ds) > preset.batch_size, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(seed), persistent_workers=num_workers > 0)

    def batches(epoch: int):
        model.train()
        for images, _, labels in loader:
            yield images.to(device, non_blocking=True), labels.to(device)

    milestones = range(preset.step_every, preset.epochs, preset.step_every)
    loss = fit_classifier(model, optimizer, milestones, preset.epochs, batches, progress, desc="semisup")
    logits, test_labels = extract_features(model, test_ds, preset.batch_size, device, num_workers, progress)
    return {**accuracy_report(logits, test_labels, "semisup"), "final_train_loss": loss}

