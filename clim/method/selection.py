"""Positive selection for CLIM (METHOD §2, paper §3.2.1 and Appendix A.2).

Exact kNN (Ω2) and spherical k-means (Ω1, centroids) on the whole feature table (:mod:`clim.method.knn`),
then the selection rule, vectorised over all N anchors on [N, k] tensors (gathers, masks, random
priority keys + sort): only loops over chunks and over the P ≤ k table columns remain.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from clim.config import CLUSTERED_SELECTIONS, DEFAULT_K, DEFAULT_NUM_POSITIVES, STRATEGIES, default_num_clusters
from clim.method.knn import BACKENDS, kmeans_faiss, kmeans_torch, knn_faiss, knn_torch, uses_faiss

__all__ = ["DEFAULT_K", "DEFAULT_NUM_POSITIVES", "STRATEGIES", "SelectionResult", "default_num_clusters",
           "select_positives", "selection_diagnostics"]


@dataclass
class SelectionResult:
    """Output of :func:`select_positives` (all tensors on the features' device).

    Attributes:
        positives: [N, P] long, the positives table (never the anchor, no duplicates per row).
        neighbors: [N, k] long, exact L2 neighbours by ascending distance, self excluded (Ω2).
        assignments: [N] long cluster of each point (Ω1), None for ``random`` / ``knn``.
        centroids: [m, d] unit-norm centroids, None for ``random`` / ``knn``.
        omega_sizes: [N] long, |Ω_p| for ``center_wise``, |Ω1 ∩ Ω2| for ``knn_kmeans``, else None.
        filled: [N] bool, whether the anchor's row needed filling from Ω2 (too few candidates).
    """

    positives: Tensor
    neighbors: Tensor
    assignments: Tensor | None
    centroids: Tensor | None
    omega_sizes: Tensor | None
    filled: Tensor


def _floyd_sample(pop: Tensor, p: int, g: torch.Generator) -> Tensor:
    """Per row, min(pop, p) distinct offsets uniform in [0, pop) (Floyd's algorithm).

    ``pop`` is [N] long; returns [N, p] long whose first ``min(pop, p)`` columns are the sample
    (later columns are meaningless).
    """
    n = pop.shape[0]
    size = pop.clamp(max=p)
    out = torch.full((n, p), -1, dtype=torch.long, device=pop.device)
    for t in range(p):
        j = pop - size + t  # Floyd's j runs over pop-size .. pop-1
        r = (torch.rand(n, generator=g, device=pop.device, dtype=torch.float64) * (j + 1)).long()
        clash = (out[:, :t] == r.unsqueeze(1)).any(1)
        out[:, t] = torch.where(clash, j, r)
    return out


def _draw_or_fill(neighbors: Tensor, omega: Tensor, p: int, g: torch.Generator) -> Tensor:
    """METHOD §2 fill rule on Ω2 = ``neighbors`` [N, k] with Ω ⊆ Ω2 given as mask ``omega``.

    Members of Ω get a uniform key in [0, 1), the rest ``1 + rank/k``: the p smallest keys are p
    members of Ω drawn without replacement when |Ω| ≥ p, else all of Ω then the nearest remaining
    Ω2 members by kNN rank. Neighbour rows are distinct and exclude self, so result rows are too.
    """
    n, k = neighbors.shape
    rank_key = 1.0 + torch.arange(k, device=neighbors.device, dtype=torch.float32) / k
    random_key = torch.rand(n, k, generator=g, device=neighbors.device)
    key = torch.where(omega, random_key, rank_key.expand(n, k))
    return neighbors.gather(1, key.topk(p, dim=1, largest=False, sorted=True).indices)


def _random_positives(n: int, p: int, g: torch.Generator, device) -> Tensor:
    """p distinct indices per row, uniform over the dataset minus the anchor itself."""
    offsets = _floyd_sample(torch.full((n,), n - 1, dtype=torch.long, device=device), p, g)
    return offsets + (offsets >= torch.arange(n, device=device).unsqueeze(1)).long()


def _kmeans_positives(assign: Tensor, neighbors: Tensor, m: int, p: int, g: torch.Generator):
    """p random members of the anchor's cluster (self excluded), drawn without replacement; a cluster
    with fewer than p + 1 members gives all its other members, then the anchor's nearest neighbours
    from *other* clusters by kNN rank (same-cluster ones are already in the row: "nearest remaining
    Ω2", without duplicates). Returns (positives [N, p], filled [N])."""
    n, k = neighbors.shape
    device = assign.device
    order = torch.argsort(assign, stable=True)  # members grouped by cluster
    counts = torch.bincount(assign, minlength=m)
    starts = (torch.cumsum(counts, 0) - counts)[assign]  # [N] segment start of own cluster
    position = torch.empty_like(order)
    position[order] = torch.arange(n, device=device)
    own_rank = position - starts
    pop = counts[assign] - 1  # other members
    offsets = _floyd_sample(pop, p, g)
    offsets = offsets + (offsets >= own_rank.unsqueeze(1)).long()  # skip self
    members = order[(starts.unsqueeze(1) + offsets).clamp(0, n - 1)]

    ranks = torch.arange(k, device=device).expand(n, k)
    outside = assign[neighbors] != assign.unsqueeze(1)
    fill_cols = torch.argsort(torch.where(outside, ranks, ranks + k), dim=1)[:, :p]
    fill = neighbors.gather(1, fill_cols)
    drawn = pop.clamp(max=p).unsqueeze(1)
    slot = torch.arange(p, device=device).unsqueeze(0)
    positives = torch.where(slot < drawn, members, fill.gather(1, (slot - drawn).clamp(min=0)))
    return positives, pop < p


def _lap(timings: dict | None, name: str, device: torch.device, since: float) -> float:
    """Store the seconds since ``since`` under ``name`` (CUDA synchronised; no-op without a dict); returns now."""
    if timings is None:
        return since
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    now = time.perf_counter()
    timings[name] = now - since
    return now


def select_positives(features: Tensor, strategy: str = "center_wise", num_clusters: int | None = None,
                     k: int = DEFAULT_K, num_positives: int = DEFAULT_NUM_POSITIVES, seed: int = 0,
                     backend: str = "auto", timings: dict | None = None) -> SelectionResult:
    """Build the positives table of METHOD §2 from L2-normalised features [N, d].

    Strategies (paper Table 6): ``random`` (uniform over the dataset, never self), ``knn``
    (top-P neighbours), ``kmeans`` (random members of the own cluster, filled from kNN when the
    cluster is too small), ``knn_kmeans`` (Ω1 ∩ Ω2) and ``center_wise``
    (Ω_p(i) = {j ∈ Ω1 ∩ Ω2 : ||v_j − c|| ≤ ||v_i − c||}, c = centroid of i's cluster). For the
    last two, P are drawn without replacement when |Ω| ≥ P, else all of Ω then the nearest
    remaining Ω2 members by rank.

    kNN is exact L2, self excluded by index; k-means is spherical, ``num_clusters`` clusters (None:
    N/100, at least 2), 20 iterations, seeded by ``seed`` (also the random draws' seed). Defaults
    are METHOD §2's: ``center_wise``, k = 40, P = 10. Runs on the device of ``features``; ``backend``:
    see :mod:`clim.method.knn` (on CPU faiss and torch give the same clusters for the same seed). A
    ``timings`` dict receives the seconds spent in ``knn``, ``kmeans`` and ``rule`` (CUDA synchronised).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; valid strategies: {', '.join(STRATEGIES)}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
    n, p = features.shape[0], num_positives
    if num_clusters is None:
        num_clusters = default_num_clusters(n)
    if k < p:
        raise ValueError(f"k ({k}) must be >= num_positives ({p}): Ω2 must be able to fill the table")
    if n <= k:
        raise ValueError(f"need more than k = {k} points, got {n}")
    if strategy in CLUSTERED_SELECTIONS and not 0 < num_clusters <= n:
        raise ValueError(f"num_clusters must be in [1, {n}], got {num_clusters}")

    x = features.detach().float().contiguous()
    device = x.device
    use_faiss = uses_faiss(backend, device)
    g = torch.Generator(device=device).manual_seed(seed)
    lap = time.perf_counter()

    neighbors = knn_faiss(x, k) if use_faiss else knn_torch(x, k)
    lap = _lap(timings, "knn", device, lap)
    assign = centroids = omega_sizes = None
    if strategy in CLUSTERED_SELECTIONS:
        centroids, assign = (kmeans_faiss if use_faiss else kmeans_torch)(x, num_clusters, seed)
    lap = _lap(timings, "kmeans", device, lap)

    if strategy in ("random", "knn"):
        positives = _random_positives(n, p, g, device) if strategy == "random" else neighbors[:, :p].clone()
        filled = torch.zeros(n, dtype=torch.bool, device=device)
    elif strategy == "kmeans":
        positives, filled = _kmeans_positives(assign, neighbors, num_clusters, p, g)
    else:
        omega = assign[neighbors] == assign.unsqueeze(1)  # Ω1 ∩ Ω2
        if strategy == "center_wise":
            to_center = (x - centroids[assign]).norm(dim=1)
            omega &= to_center[neighbors] <= to_center.unsqueeze(1)
        omega_sizes = omega.sum(1)
        positives = _draw_or_fill(neighbors, omega, p, g)
        filled = omega_sizes < p
    _lap(timings, "rule", device, lap)
    return SelectionResult(positives, neighbors, assign, centroids, omega_sizes, filled)


def _label_precision(labels: Tensor, table: Tensor) -> tuple[float | None, int]:
    """Share of (anchor, entry) pairs of ``table`` with equal labels, over the pairs whose two labels
    are known (label ≥ 0; an entry < 0 is no pair); returns (precision or None, number of such pairs).

    Counting an unlabelled positive as a miss would make a perfect table on STL-10 (≈ 5 % labelled)
    read ≈ 0.05, so unknown labels are left out and the count of labelled pairs is reported instead."""
    entry_labels = labels[table.clamp(min=0)]
    anchor_labels = labels.unsqueeze(1).expand_as(table)
    known = (table >= 0) & (entry_labels >= 0) & (anchor_labels >= 0)
    count = int(known.sum())
    if count == 0:
        return None, 0
    return float((entry_labels == anchor_labels)[known].sum()) / count, count


def selection_diagnostics(result: SelectionResult, labels: Tensor | None = None) -> dict:
    """JSON-friendly statistics of a selection (METHOD §2), plain Python floats / lists.

    ``labels`` [N]: a tensor, a list or a numpy array of ints, −1 = unknown. Keys present only where they apply:

    - with clusters: ``cluster_size_min`` / ``_median`` / ``_max`` (empty clusters count as 0),
      ``cluster_size_hist`` (counts) over ``cluster_size_bin_edges`` ``[0, 1, 2, 4, …]`` (bin i =
      [edges[i], edges[i+1]));
    - with Ω sizes: ``omega_mean`` (mean |Ω_p|, or |Ω1 ∩ Ω2| for ``knn_kmeans``);
    - always: ``fill_fraction`` (share of anchors that needed filling);
    - with labels (−1 = unknown): ``labelled_pairs``, the number of (anchor, positive) pairs whose
      two labels are known, and — when it is > 0 — ``positive_precision``, the share of those pairs
      with equal labels (pairs with an unknown label are left out, not counted as misses). The same
      for the P nearest neighbours (P = the table's width; what kNN-only selection picks, the fair
      comparison with ``positive_precision``) as ``knn_top_p_labelled_pairs`` and
      ``knn_top_p_precision``, and for all k neighbours (Ω2) as ``knn_labelled_pairs`` and ``knn_precision``.
    """
    stats: dict = {"fill_fraction": float(result.filled.float().mean())}
    if result.assignments is not None:
        sizes = torch.bincount(result.assignments, minlength=result.centroids.shape[0]).cpu()
        top = int(sizes.max())
        edges = [0] + [2**i for i in range(max(1, math.ceil(math.log2(top + 1))) + 1)]
        bins = torch.bucketize(sizes, torch.tensor(edges), right=True) - 1
        stats.update(
            cluster_size_min=float(sizes.min()),
            cluster_size_median=float(np.median(sizes.numpy())),
            cluster_size_max=float(top),
            cluster_size_hist=torch.bincount(bins, minlength=len(edges) - 1).tolist(),
            cluster_size_bin_edges=edges,
        )
    if result.omega_sizes is not None:
        stats["omega_mean"] = float(result.omega_sizes.float().mean())
    if labels is not None:
        labels = torch.as_tensor(labels).to(result.positives.device).long()
        if labels.shape != result.positives.shape[:1]:
            raise ValueError(f"labels must be [N] = [{result.positives.shape[0]}] (one per image, −1 = unknown), "
                             f"got shape {tuple(labels.shape)}")
        nearest = result.neighbors[:, :result.positives.shape[1]]
        for prefix, table in (("", result.positives), ("knn_top_p_", nearest), ("knn_", result.neighbors)):
            precision, pairs = _label_precision(labels, table)
            stats[f"{prefix}labelled_pairs"] = pairs
            if precision is not None:
                stats[f"{prefix}precision" if prefix else "positive_precision"] = precision
    return stats
