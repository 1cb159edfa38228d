"""Weighted kNN classification on frozen features (METHOD §5; InstDisc / DINO protocol).

Each test feature votes with its k most cosine-similar training features; neighbour j adds
``exp(s_j / T)`` to its class, so close neighbours count more than a plain majority vote would let
them. Test rows are processed in chunks, so no test × train matrix is ever held whole: memory is
``chunk × N_train`` similarities, which the chunk is shrunk to keep below ~1 GiB for ImageNet-size banks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# The two settings METHOD §5 reports: (k, temperature).
KNN_SETTINGS: tuple[tuple[int, float], ...] = ((20, 0.07), (200, 0.1))
_MAX_SIMILARITIES = 1 << 28  # floats per chunk (1 GiB in float32)


@torch.no_grad()
def knn_predict(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                k: int, temperature: float, num_classes: int | None = None,
                chunk_size: int = 1024) -> torch.Tensor:
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
    if not predictions:
        return torch.zeros(0, dtype=torch.long, device=device)
    return torch.cat(predictions)


def weighted_knn(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 test_labels: torch.Tensor, k: int, temperature: float, num_classes: int | None = None,
                 chunk_size: int = 1024) -> float:
    """Top-1 accuracy (%) of the weighted kNN classifier; runs on ``train_feats``' device."""
    if test_feats.shape[0] == 0:
        raise ValueError("weighted_knn needs at least one test feature")
    predicted = knn_predict(train_feats, train_labels, test_feats, k, temperature, num_classes, chunk_size)
    correct = (predicted == test_labels.to(predicted.device)).sum().item()
    return 100.0 * correct / test_feats.shape[0]


def run_knn(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
            test_labels: torch.Tensor, num_classes: int | None = None,
            settings: tuple[tuple[int, float], ...] = KNN_SETTINGS,
            device: str | torch.device | None = None) -> dict[str, float]:
    """Both METHOD §5 settings as ``{"knn_k20_top1": ..., "knn_k200_top1": ...}``.

    The bank is moved to ``device`` once (default: CUDA when available), so every setting shares it.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    bank, bank_labels = train_feats.to(device), train_labels.to(device)
    return {f"knn_k{k}_top1": weighted_knn(bank, bank_labels, test_feats, test_labels, k, t, num_classes)
            for k, t in settings}
