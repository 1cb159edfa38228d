"""Frozen-feature extraction shared by every protocol (kNN, cached linear, similarity, t-SNE)."""

from __future__ import annotations

import torch
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
    """``(feats [N, D] float32 on CPU, labels [N] long)`` in dataset order.

    The module runs in eval mode (BatchNorm uses its running statistics, so a feature does not
    depend on its batch) and gets its previous training mode back afterwards. ``device`` defaults
    to the module's own; when given, the module is moved there. ``progress`` None shows it on the
    main rank (a bar on a terminal, else a line every 30 s), False not at all. Items are
    ``(image, index, label)`` as the dataset registry returns them, or ``(image, label)``
    (torchvision's datasets), ``(image,)`` or a bare image tensor (labels −1).
    """
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
            images, targets = _images_and_labels(batch)
            out = module(images.to(device, non_blocking=True))
            feats.append(out.float().flatten(1).cpu())
            labels.append(torch.as_tensor(targets, dtype=torch.long))
            bar.update()
    finally:
        bar.close()
        module.train(was_training)
    if not feats:
        raise ValueError("cannot extract features from an empty dataset")
    return torch.cat(feats), torch.cat(labels)


def _images_and_labels(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """A collated batch of any item format of :func:`extract_features`: (images, labels)."""
    if isinstance(batch, torch.Tensor):
        batch = (batch,)
    images = batch[0]
    return images, batch[-1] if len(batch) > 1 else torch.full((images.shape[0],), -1, dtype=torch.long)
