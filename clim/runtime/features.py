"""Frozen features, shared by every protocol (kNN, cached linear, similarity, t-SNE) and the trainer's
kNN monitor: :func:`extract_features` embeds a dataset; :func:`weighted_knn` classifies by weighted
kNN (METHOD §5; InstDisc / DINO protocol, described in :mod:`clim.evaluation.knn`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from clim.runtime import distributed
from clim.runtime.progress import Progress


def module_device(module: nn.Module) -> torch.device:
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def extract_features(module: nn.Module, dataset: Dataset, batch_size: int = 256,
                     device: str | torch.device | None = None, num_workers: int = 0,
                     progress: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(feats [N, D] float32 on CPU, labels [N] long)`` in dataset order, the module in eval mode (a
    feature does not depend on its batch), moved to ``device`` when given. ``progress`` None: shown on
    the main rank. Items are ``(image, index, label)``, ``(image, label)``, ``(image,)`` or a bare image
    tensor (labels −1)."""
    device = torch.device(device) if device is not None else module_device(module)
    module.to(device)
    was_training = module.training
    module.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    bar = Progress(len(loader), "features", enabled=distributed.rank() == 0 if progress is None else progress,
                   leave=False)
    feats, labels = [], []
    try:
        for batch in loader:
            images, *rest = (batch,) if isinstance(batch, torch.Tensor) else batch
            out = module(images.to(device, non_blocking=True))
            feats.append(out.float().flatten(1).cpu())
            labels.append(torch.as_tensor(rest[-1], dtype=torch.long) if rest else
                          torch.full((images.shape[0],), -1, dtype=torch.long))
            bar.update()
    finally:
        bar.close()
        module.train(was_training)
    if not feats:
        raise ValueError("cannot extract features from an empty dataset")
    return torch.cat(feats), torch.cat(labels)


_MAX_SIMILARITIES = 1 << 28  # floats per chunk (1 GiB in float32)


@torch.no_grad()
def knn_predict(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor, k: int,
                temperature: float, num_classes: int | None = None, chunk_size: int = 1024) -> torch.Tensor:
    """Predicted class of every test row, computed on ``train_feats``' device."""
    device = train_feats.device
    bank_labels = train_labels.to(device=device, dtype=torch.long)
    if (bank_labels < 0).any():  # unlabelled bank rows (label -1) cannot vote
        train_feats, bank_labels = train_feats[bank_labels >= 0], bank_labels[bank_labels >= 0]
    bank = F.normalize(train_feats.float(), dim=1)
    if num_classes is None:
        num_classes = int(bank_labels.max()) + 1
    k = min(k, bank.shape[0])
    rows = max(1, min(chunk_size, _MAX_SIMILARITIES // max(1, bank.shape[0])))
    predictions = []
    for start in range(0, test_feats.shape[0], rows):
        queries = F.normalize(test_feats[start:start + rows].to(device).float(), dim=1)
        similarity, neighbours = (queries @ bank.T).topk(k, dim=1)
        votes = torch.zeros(queries.shape[0], num_classes, device=device)
        votes.scatter_add_(1, bank_labels[neighbours], (similarity / temperature).exp())
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions) if predictions else torch.zeros(0, dtype=torch.long, device=device)


def weighted_knn(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 test_labels: torch.Tensor, k: int, temperature: float, num_classes: int | None = None,
                 chunk_size: int = 1024) -> float:
    """Top-1 accuracy (%) of the weighted kNN classifier; runs on ``train_feats``' device."""
    if test_feats.shape[0] == 0:
        raise ValueError("weighted_knn needs at least one test feature")
    predicted = knn_predict(train_feats, train_labels, test_feats, k, temperature, num_classes, chunk_size)
    correct = (predicted == test_labels.to(predicted.device)).sum().item()
    return 100.0 * correct / test_feats.shape[0]
