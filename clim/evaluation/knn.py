"""Weighted kNN classification on frozen features (METHOD §5; InstDisc / DINO protocol).

Each test feature votes with its k most cosine-similar training features, neighbour j adding
``exp(s_j / T)`` to its class. Test rows run in chunks of at most ~1 GiB of similarities, never the
whole test × train matrix. The classifier (:func:`weighted_knn`, :func:`knn_predict`) lives in
:mod:`clim.runtime.features` (the trainer's kNN monitor uses it too) and is importable from here.
"""

from __future__ import annotations

import torch

from clim.evaluation.common import resolve_device
from clim.runtime.features import knn_predict, weighted_knn  # noqa: F401

# The two settings METHOD §5 reports: (k, temperature).
KNN_SETTINGS: tuple[tuple[int, float], ...] = ((20, 0.07), (200, 0.1))


def run_knn(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor, test_labels: torch.Tensor,
            num_classes: int | None = None, settings: tuple[tuple[int, float], ...] = KNN_SETTINGS,
            device: str | torch.device | None = None) -> dict[str, float]:
    """Both METHOD §5 settings as ``{"knn_k20_top1": ..., "knn_k200_top1": ...}``; the bank is moved to
    ``device`` (default: CUDA when available) once for all settings."""
    device = resolve_device(device)
    bank, bank_labels = train_feats.to(device), train_labels.to(device)
    return {f"knn_k{k}_top1": weighted_knn(bank, bank_labels, test_feats, test_labels, k, t, num_classes)
            for k, t in settings}
