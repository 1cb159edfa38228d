"""Linear evaluation: a linear classifier on the frozen backbone's pooled features (METHOD §5).

Presets: ``paper`` is METHOD §5's protocol; ``small`` (what ``auto`` picks at or below 64 px) keeps the 60 % / 80 %
decay points over 30 epochs with crop scale 0.5–1 and validates at native size (no crop); ``quick`` is a CPU smoke
test. ``--lr auto`` (:func:`choose_lr`), ``small`` and ``cached_features`` (one backbone pass on un-augmented images
instead of one per epoch) are documented deviations: METHOD, "Where clim departs"; docs/USAGE.md.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, replace
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from clim.config import SMALL_IMAGE_MAX
from clim.evaluation.common import stratified_holdout
from clim.runtime.features import extract_features
from clim.runtime.progress import Progress


@dataclass(frozen=True)
class LinearPreset:
    epochs: int
    lr: float
    momentum: float
    weight_decay: float
    milestones: tuple[int, ...]
    batch_size: int
    crop_scale: tuple[float, float]


LINEAR_PRESETS = {
    "paper": LinearPreset(100, 30.0, 0.9, 0.0, (60, 80), 256, (0.08, 1.0)),
    "small": LinearPreset(30, 30.0, 0.9, 0.0, (18, 24), 256, (0.5, 1.0)),
    "quick": LinearPreset(5, 30.0, 0.9, 0.0, (3, 4), 256, (0.5, 1.0)),
}


def resolve_preset(name: str, image_size: int, presets: dict) -> tuple[str, object]:
    """``auto`` -> ``paper`` for images larger than 64 px, else ``small``."""
    if name == "auto":
        name = "paper" if image_size > SMALL_IMAGE_MAX else "small"
    if name not in presets:
        raise ValueError(f"unknown preset '{name}' (choose from auto, {', '.join(presets)})")
    return name, presets[name]


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: Iterable[int]) -> dict[int, float]:
    """Top-k accuracy (%) for each k."""
    ks = list(ks)
    top = logits.topk(max(ks), dim=1).indices
    hits = top == labels.to(top.device)[:, None]
    return {k: 100.0 * hits[:, :k].any(dim=1).float().mean().item() for k in ks}


def accuracy_report(logits: torch.Tensor, labels: torch.Tensor, prefix: str) -> dict[str, float]:
    """``{prefix}_top1`` and, with at least 5 classes, ``{prefix}_top5``."""
    ks = [1, 5] if logits.shape[1] >= 5 else [1]
    return {f"{prefix}_top{k}": value for k, value in topk_accuracy(logits, labels, ks).items()}


def fit_classifier(classifier: nn.Module, optimizer: torch.optim.Optimizer, milestones: Iterable[int],
                   epochs: int, batches: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]],
                   progress: bool | None = None, desc: str = "linear") -> float:
    """Cross-entropy training over ``batches(epoch)`` (``(inputs, labels)`` on the classifier's device),
    lr ×0.1 at each milestone epoch; returns the last epoch's mean loss."""
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(milestones), gamma=0.1)
    loss_sum, seen = 0.0, 0
    bar = Progress(epochs, f"{desc} epochs", enabled=progress is not False, leave=False)
    for epoch in range(epochs):
        loss_sum, seen = 0.0, 0
        for inputs, labels in batches(epoch):
            loss = F.cross_entropy(classifier(inputs), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * labels.shape[0]
            seen += labels.shape[0]
            bar.poll()
        scheduler.step()
        if not math.isfinite(loss_sum):
            bar.close()
            raise FloatingPointError(f"{desc}: the loss became {loss_sum / seen} in epoch {epoch + 1}; "
                                     "lower the learning rate (--lr)")
        bar.set_postfix(loss=f"{loss_sum / max(1, seen):.4f}")
        bar.update()
    bar.close()
    return loss_sum / max(1, seen)


def linear_classifier(feature_dim: int, num_classes: int) -> nn.Linear:
    """MoCo's initialisation: weights N(0, 0.01), bias 0."""
    layer = nn.Linear(feature_dim, num_classes)
    nn.init.normal_(layer.weight, std=0.01)
    nn.init.zeros_(layer.bias)
    return layer


def _sgd(classifier: nn.Module, preset: LinearPreset) -> torch.optim.SGD:
    return torch.optim.SGD(classifier.parameters(), lr=preset.lr, momentum=preset.momentum,
                           weight_decay=preset.weight_decay)


def linear_on_features(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                       test_labels: torch.Tensor, num_classes: int, preset: LinearPreset, seed: int = 0,
                       device: str | torch.device = "cpu", progress: bool | None = None) -> dict[str, float]:
    """Train the linear classifier on fixed features (the ``--cached-features`` path)."""
    torch.manual_seed(seed)
    device = torch.device(device)
    train_feats, train_labels = train_feats.to(device), train_labels.to(device)
    classifier = linear_classifier(train_feats.shape[1], num_classes).to(device)
    generator = torch.Generator().manual_seed(seed)

    def batches(epoch: int):
        order = torch.randperm(train_feats.shape[0], generator=generator).to(device)
        for start in range(0, order.numel(), preset.batch_size):
            rows = order[start:start + preset.batch_size]
            yield train_feats[rows], train_labels[rows]

    loss = fit_classifier(classifier, _sgd(classifier, preset), preset.milestones, preset.epochs, batches, progress)
    with torch.no_grad():
        logits = classifier(test_feats.to(device))
    return {**accuracy_report(logits, test_labels, "linear"), "final_train_loss": loss}


def linear_on_backbone(backbone: nn.Module, train_ds: Dataset, test_ds: Dataset, num_classes: int,
                       preset: LinearPreset, seed: int = 0, device: str | torch.device = "cpu",
                       num_workers: int = 0, progress: bool | None = None) -> dict[str, float]:
    """The protocol: frozen backbone in eval mode, features of ``train_ds``'s augmented images every
    epoch; items are ``(image, index, label)``."""
    torch.manual_seed(seed)
    device = torch.device(device)
    backbone = backbone.to(device)
    was_training = backbone.training
    backbone.eval()
    probe = next(iter(DataLoader(train_ds, batch_size=2)))[0].to(device)
    with torch.no_grad():
        feature_dim = backbone(probe).flatten(1).shape[1]
    classifier = linear_classifier(feature_dim, num_classes).to(device)
    loader = DataLoader(train_ds, batch_size=preset.batch_size, shuffle=True, num_workers=num_workers,
                        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(seed),
                        persistent_workers=num_workers > 0)

    def batches(epoch: int):
        for images, _, labels in loader:
            with torch.no_grad():
                feats = backbone(images.to(device, non_blocking=True)).flatten(1)
            yield feats, labels.to(device)

    try:
        loss = fit_classifier(classifier, _sgd(classifier, preset), preset.milestones, preset.epochs,
                              batches, progress)
        test_feats, test_labels = extract_features(backbone, test_ds, preset.batch_size, device,
                                                   num_workers, progress)
    finally:
        backbone.train(was_training)
    with torch.no_grad():
        logits = classifier(test_feats.to(device))
    return {**accuracy_report(logits, test_labels, "linear"), "final_train_loss": loss}


PROBE_LRS = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
PROBE_HOLDOUT = 0.2


def choose_lr(train_feats: torch.Tensor, train_labels: torch.Tensor, num_classes: int, preset: LinearPreset,
              seed: int = 0, device: str | torch.device = "cpu", lrs: Iterable[float] = PROBE_LRS,
              holdout: float = PROBE_HOLDOUT, progress: bool | None = None) -> tuple[float, dict[str, float]]:
    """The lr of ``lrs`` whose classifier, trained on ``1 - holdout`` of the training features (a
    class-stratified split drawn with ``seed``), scores best on the rest (ties: the smaller lr); and every
    lr's held-out top-1 (-inf: it diverged). Only training images take part."""
    fit_rows, held_rows = stratified_holdout(train_labels, holdout, seed)
    sweep = {}
    for lr in lrs:
        try:
            trial = linear_on_features(train_feats[fit_rows], train_labels[fit_rows], train_feats[held_rows],
                                       train_labels[held_rows], num_classes, replace(preset, lr=lr), seed, device,
                                       progress)
        except FloatingPointError:  # this lr diverged: it cannot be chosen
            sweep[lr] = float("-inf")
            continue
        sweep[lr] = trial["linear_top1"]
    best = min(sweep, key=lambda lr: (-sweep[lr], lr))
    return best, {str(lr): top1 for lr, top1 in sweep.items()}


def above_chance_loss(loss: float, num_classes: int) -> bool:
    """Whether a final train loss is above ln C, the loss of guessing; warns on stderr when it is."""
    chance = math.log(num_classes)
    if loss > chance:
        print(f"warning: the linear classifier's final train loss {loss:.3f} is above ln C = {chance:.3f} (the loss of "
              "guessing): its lr does not fit these features; let clim eval linear choose it (--lr auto, the default)",
              file=sys.stderr)
    return loss > chance


def linear_probe(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 test_labels: torch.Tensor, num_classes: int, preset: LinearPreset, seed: int = 0,
                 device: str | torch.device = "cpu", lrs: Iterable[float] = PROBE_LRS, holdout: float = PROBE_HOLDOUT,
                 progress: bool | None = None) -> dict:
    """The linear classifier on fixed features with its lr chosen on a held-out part of the train split
    (:func:`choose_lr`), retrained with that lr on the whole train split and scored on the test split;
    with the lr sweep and whether the final train loss ended above ln C."""
    best, sweep = choose_lr(train_feats, train_labels, num_classes, preset, seed, device, lrs, holdout, progress)
    result = linear_on_features(train_feats, train_labels, test_feats, test_labels, num_classes,
                                replace(preset, lr=best), seed, device, progress)
    return {**result, "linear_lr": best, "linear_sweep": sweep, "linear_holdout": holdout,
            "train_loss_above_chance": above_chance_loss(result["final_train_loss"], num_classes)}
