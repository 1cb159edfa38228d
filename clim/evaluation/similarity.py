"""Intra-class similarity of frozen features (paper Table 12; METHOD §5).

For L2-normalised features the sum of cosines over all ordered pairs of a class is
``||Σ_i f_i||² − n`` (the n self-pairs contribute 1 each), so the mean over pairs i ≠ j follows
from one per-class sum: exact, O(N·D), and no pairwise matrix at all. Sums run in float64 so the
subtraction does not lose precision on large classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def intra_class_similarity(feats: torch.Tensor, labels: torch.Tensor) -> dict[str, object]:
    """Mean cosine over intra-class pairs (i != j), averaged over classes with at least two samples;
    also each class's mean and, for contrast, the mean over all pairs regardless of class. Classes are
    converted to float64 one at a time, so memory stays at the features' own size."""
    labels = labels.to(feats.device)
    per_class = {}
    grand_total = torch.zeros(feats.shape[1], dtype=torch.float64, device=feats.device)
    self_pairs, count = 0.0, 0
    for label in labels.unique().tolist():
        if label < 0:
            continue
        members = F.normalize(feats[labels == label].double(), dim=1)
        total, squares, n = members.sum(dim=0), float((members * members).sum()), members.shape[0]
        grand_total += total
        self_pairs += squares
        count += n
        if n >= 2:  # the sum over ordered pairs i != j: all pairs less the self-pairs
            per_class[int(label)] = (float(total @ total) - squares) / (n * (n - 1))
    if not per_class:
        raise ValueError("intra-class similarity needs a class with at least two labelled samples")
    all_pairs = (float(grand_total @ grand_total) - self_pairs) / (count * (count - 1))
    return {"intra_class_similarity": sum(per_class.values()) / len(per_class), "all_pairs_similarity": all_pairs,
            "per_class": per_class}
