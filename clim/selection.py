"""Positive selection for CLIM (METHOD §2, paper §3.2.1 and Appendix A.2).

Pipeline: exact kNN (Ω2) and spherical k-means (Ω1, centroids) on the whole feature table, then
the selection rule, vectorised in torch over all N anchors on [N, k] tensors (gathers, masks,
random priority keys + sort). Only the loops over chunks and over the P ≤ k table columns remain.

Backends (``backend=``):
- ``"auto"``: faiss on CPU tensors; on CUDA tensors faiss-gpu when ``faiss.StandardGpuResources``
  exists, else the torch implementation on the GPU. Without faiss installed: torch everywhere.
- ``"faiss"``: faiss (GPU indexes for CUDA tensors when faiss-gpu is installed, else CPU).
- ``"torch"``: blocked matmul + two-stage top-k kNN (on CUDA: fp16 candidates, re-ranked and
  certified in fp32) and a torch spherical k-means on the tensors' device (the GPU path without
  faiss-gpu; selectable on CPU so that it is tested without a GPU).

kNN agrees between backends up to ties; k-means differs in its initialisation.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["STRATEGIES", "SelectionResult", "select_positives", "selection_diagnostics"]

STRATEGIES = ("random", "knn", "kmeans", "knn_kmeans", "center_wise")
_BACKENDS = ("auto", "faiss", "torch")
_CLUSTERED = ("kmeans", "knn_kmeans", "center_wise")
KMEANS_ITERS = 20  # METHOD §2


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


# ----------------------------------------------------------------------------------------------
# kNN and k-means backends
# ----------------------------------------------------------------------------------------------


def _has_faiss() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _has_faiss_gpu() -> bool:
    if not _has_faiss():
        return False
    import faiss

    return hasattr(faiss, "StandardGpuResources")


@contextlib.contextmanager
def _ieee_fp32_matmul(device: torch.device):
    """Force full fp32 matmuls on CUDA (no TF32), so that the torch kNN stays exact."""
    if device.type != "cuda":
        yield
        return
    previous = torch.backends.cuda.matmul.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.fp32_precision = previous


def _chunk_rows(n_cols: int, device: torch.device, cap: int = 8192) -> int:
    """Query rows per chunk so that a [rows, n_cols] float32 block (+ topk workspace) fits.

    On CUDA a quarter of the free memory, at most ``cap`` rows (≈ 2k rows for N = 1.28M on an
    H100); on CPU blocks of 2^26 elements (256 MB).
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = free // 4 // (4 * 2)
    else:
        budget = 1 << 26
    return int(max(1, min(cap, budget // max(1, n_cols))))


def _drop_self(ids: Tensor) -> Tensor:
    """[N, k+1] neighbour ids -> [N, k] without the query itself, matched by index.

    With exact duplicates, another index may tie with the query at distance 0 (even ahead of
    it), so self is located per row rather than assumed in column 0; when many duplicates push
    self out of the k+1 returned, the last (farthest) column is dropped instead.
    """
    n, k1 = ids.shape
    is_self = ids == torch.arange(n, device=ids.device).unsqueeze(1)
    self_col = torch.where(is_self.any(1), is_self.int().argmax(1), k1 - 1)
    cols = torch.arange(k1 - 1, device=ids.device).unsqueeze(0)
    return ids.gather(1, cols + (cols >= self_col.unsqueeze(1)).long())


def _knn_faiss(x: Tensor, k: int) -> Tensor:
    """Exact L2 kNN with ``IndexFlatL2`` (``GpuIndexFlatL2`` for CUDA tensors with faiss-gpu)."""
    import faiss

    xn = x.detach().cpu().numpy()
    if x.is_cuda and _has_faiss_gpu():
        resources = faiss.StandardGpuResources()  # must outlive the index
        index = faiss.GpuIndexFlatL2(resources, x.shape[1])
    else:
        index = faiss.IndexFlatL2(x.shape[1])
    index.add(xn)
    _, ids = index.search(xn, k + 1)
    return _drop_self(torch.from_numpy(ids).to(x.device))


_GROUP = 128  # columns per group in the two-stage top-k
_HALF_MARGIN = 40  # extra fp16 candidates per row, re-ranked exactly in fp32 (CUDA)
_HALF_MIN_N = 1 << 15  # below this many points the fp32 path alone is fast enough
_CPU_BLOCK = 1 << 26  # elements of one CPU distance block (256 MB of fp32)


@contextlib.contextmanager
def _fp32_accumulation(device: torch.device):
    """fp16 matmuls on CUDA accumulate in fp32 throughout (the error bound of :func:`_knn_half`)."""
    if device.type != "cuda":
        yield
        return
    previous = torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = previous


def _knn_block_rows(n_cols: int, device: torch.device, elem_bytes: int) -> int:
    """Query rows per kNN block: a [rows, n_cols] score block plus its top-k workspace fits.

    CUDA: an eighth of the free memory for the block, at most 16,384 rows. CPU: blocks of
    ``_CPU_BLOCK`` elements, at most 1,024 rows (per-block temporaries stay small).
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget, cap = free // 8 // elem_bytes, 16384
    else:
        budget, cap = _CPU_BLOCK, 1024
    return int(max(1, min(cap, budget // max(1, n_cols))))


def _group_topk(scores: Tensor, k: int, group: int, largest: bool) -> tuple[Tensor, Tensor]:
    """Exact top-k per row of ``scores`` [r, c] (c a multiple of ``group``), best first.

    Two stages instead of one top-k over all c columns: every ``group`` consecutive columns are
    reduced to their extreme (one cheap pass), the k groups with the best extremes are kept, and
    the top k of their k·group entries are selected. This is exact: the k kept extremes are k
    distinct entries at least as good as the k-th kept one, so the true k-th best value is at
    least that good, and any entry strictly better lies in a group whose extreme beats every
    dropped group's; ties at the boundary are resolved arbitrarily, as ``torch.topk`` does.
    Returns (values, column indices).
    """
    r, c = scores.shape
    n_groups = c // group
    if n_groups <= k:
        return scores.topk(k, dim=1, largest=largest, sorted=True)
    blocks = scores.view(r, n_groups, group)
    extremes = blocks.amax(2) if largest else blocks.amin(2)
    groups = extremes.topk(k, dim=1, largest=largest, sorted=False).indices
    candidates = blocks.gather(1, groups.unsqueeze(2).expand(r, k, group)).view(r, k * group)
    values, pos = candidates.topk(k, dim=1, largest=largest, sorted=True)
    return values, groups.gather(1, pos // group) * group + pos % group


def _knn_exact(x: Tensor, k: int, queries: Tensor | None = None, group: int = _GROUP) -> Tensor:
    """Exact fp32 L2 kNN of ``queries`` (all points by default) among all points, self excluded.

    Blocks of query rows; each block's [rows, N] distances ``||y||² − 2 q·y`` (the query's own
    norm is constant per row) come from one matmul, then :func:`_group_topk` selects. Columns
    are padded to a multiple of ``group`` with zero vectors of norm +inf; self is excluded by
    setting its own column to +inf, so duplicates cannot confuse the exclusion.
    """
    n = x.shape[0]
    n_pad = -(-n // group) * group
    xp = F.pad(x, (0, 0, 0, n_pad - n))
    sq = F.pad((x * x).sum(1), (0, n_pad - n), value=math.inf).unsqueeze(0)
    nq = n if queries is None else queries.numel()
    out = torch.empty(nq, k, dtype=torch.long, device=x.device)
    rows = min(nq, _knn_block_rows(n_pad, x.device, 4))
    # one block buffer for all blocks: a fresh CPU allocation of this size per block would be
    # mmap-ed and page-faulted every time (slower than the matmul's own writes)
    buffer = torch.empty(rows, n_pad, device=x.device)
    with _ieee_fp32_matmul(x.device):
        for start in range(0, nq, rows):
            end = min(start + rows, nq)
            if queries is None:
                ids, q = torch.arange(start, end, device=x.device), x[start:end]
            else:
                ids = queries[start:end]
                q = x[ids]
            dist = torch.addmm(sq, q, xp.T, alpha=-2.0, out=buffer[: end - start])
            dist.scatter_(1, ids.unsqueeze(1), math.inf)
            out[start:end] = _group_topk(dist, k, group, largest=False)[1]
    return out


def _knn_half(x: Tensor, k: int, margin: int = _HALF_MARGIN, group: int = _GROUP) -> tuple[Tensor, Tensor]:
    """fp16 candidates, exact fp32 re-rank, and a per-row certificate of exactness.

    Points are scaled by 1 / max norm and rounded to fp16; the fp16 matmul (fp32 accumulation)
    gives scores s̃ with |s̃ − scale²·q·y| ≤ bound = 4u + d·2⁻²² (u = 2⁻¹¹: both inputs' rounding,
    the output's rounding, fp32 accumulation). The k + margin best s̃ per row are re-ranked by
    exact fp32 distances. Every other column has s̃ ≤ the last candidate's s̃, so its distance is
    at least ``min ||y||² − 2·(s̃_last + bound) / scale²``; the row is certified when that lower
    bound exceeds the k-th exact distance (plus the fp32 rounding of the distances), and then its
    neighbours equal the fp32 exact kNN's up to ties. Returns (ids [N, k], certified [N] bool).
    """
    n, d = x.shape
    c = k + margin
    sq = (x * x).sum(1)
    sq_max = float(sq.max())
    scale = 1.0 / math.sqrt(sq_max)
    bound = 4 * 2.0**-11 + d * 2.0**-22
    slack = 4 * d * 2.0**-24 * sq_max
    sq_min = sq.min()
    n_pad = -(-n // group) * group
    xh = F.pad(x * scale, (0, 0, 0, n_pad - n)).half()
    ids = torch.empty(n, k, dtype=torch.long, device=x.device)
    certified = torch.empty(n, dtype=torch.bool, device=x.device)
    rows = _knn_block_rows(n_pad, x.device, 2)
    with _fp32_accumulation(x.device), _ieee_fp32_matmul(x.device):
        for start in range(0, n, rows):
            end = min(start + rows, n)
            local = torch.arange(end - start, device=x.device)
            scores = xh[start:end] @ xh.T
            scores[:, n:] = -math.inf
            scores[local, local + start] = -math.inf  # self, by index
            top, cand = _group_topk(scores, c, group, largest=True)
            q = x[start:end]
            dist = sq[cand] - 2 * torch.bmm(x[cand], q.unsqueeze(2)).squeeze(2)
            best, order = dist.topk(k, dim=1, largest=False, sorted=True)
            ids[start:end] = cand.gather(1, order)
            lower = sq_min - 2 * (top[:, -1].float() + bound) / scale**2
            certified[start:end] = lower > best[:, -1] + slack
    return ids, certified


def _use_half(x: Tensor, k: int) -> bool:
    """Whether :func:`_knn_torch` starts with fp16 candidates: CUDA, at least ``_HALF_MIN_N``
    points, and norms within 1 % of each other (fp16 scores ignore ``||y||²``; L2-normalised
    features qualify, others would mostly fail the certificate)."""
    n = x.shape[0]
    if not (x.is_cuda and n >= _HALF_MIN_N and n > 2 * (k + _HALF_MARGIN + _GROUP)):
        return False
    sq = (x * x).sum(1)
    return float(sq.max() - sq.min()) <= 1e-2 * float(sq.max())


def _knn_torch(x: Tensor, k: int, low_precision: bool | None = None) -> Tensor:
    """Exact L2 kNN in torch, self excluded by index; no N×N matrix is ever materialised.

    ``low_precision`` (default: on CUDA with at least ``_HALF_MIN_N`` points of nearly equal
    norm, as L2-normalised features are) first runs :func:`_knn_half`; the rows it cannot
    certify are recomputed by :func:`_knn_exact`, so the result is the fp32 exact kNN either way.
    """
    if low_precision is None:
        low_precision = _use_half(x, k)
    if not low_precision:
        return _knn_exact(x, k, group=_GROUP)
    ids, certified = _knn_half(x, k, _HALF_MARGIN, _GROUP)
    redo = (~certified).nonzero().squeeze(1)
    if redo.numel():
        ids[redo] = _knn_exact(x, k, redo, _GROUP)
    return ids


def _kmeans_faiss(x: Tensor, m: int, seed: int) -> tuple[Tensor, Tensor]:
    """faiss spherical k-means (20 iterations); assignment = nearest final centroid."""
    import faiss

    xn = x.detach().cpu().numpy()
    use_gpu = x.is_cuda and _has_faiss_gpu()
    km = faiss.Kmeans(x.shape[1], m, niter=KMEANS_ITERS, spherical=True, seed=seed, gpu=use_gpu)
    km.train(xn)
    _, assign = km.assign(xn)
    return torch.from_numpy(km.centroids).to(x.device), torch.from_numpy(assign).long().to(x.device)


def _nearest_centroid(x: Tensor, centroids: Tensor) -> tuple[Tensor, Tensor]:
    """(similarity, index) of each point's nearest centroid, chunked over points.

    Computed in the dtype of ``x`` (fp16 for the CUDA k-means iterations), similarities as fp32.
    """
    rows = _chunk_rows(centroids.shape[0], x.device, cap=1 << 16 if x.is_cuda else 2048)
    c = centroids.to(x.dtype)
    sims, ids = [], []
    for start in range(0, x.shape[0], rows):
        s, i = (x[start : start + rows] @ c.T).max(1)
        sims.append(s.float())
        ids.append(i)
    return torch.cat(sims), torch.cat(ids)


def _kmeans_torch(x: Tensor, m: int, seed: int) -> tuple[Tensor, Tensor]:
    """Spherical k-means in torch (METHOD §2: m clusters, 20 iterations, seeded).

    Init: m distinct points drawn with a generator seeded by ``seed``. Each iteration assigns by
    maximum cosine (chunked) and sets centroids to the normalised member means. An empty cluster
    is re-seeded deterministically with the worst-fitting points (lowest similarity to their
    centroid), as many as there are empty clusters. Final assignment = nearest final centroid.
    When an assignment step changes no assignment (and no cluster is empty), the centroids are a
    fixed point and the remaining iterations would repeat it: the loop stops there (as faiss does).

    On CUDA the 20 assignment steps use fp16 matmuls (fp32 accumulation; similarities within
    about 1e-3, so only near-tied points may change cluster, which k-means tolerates); the
    centroid means and the final assignment are fp32 (IEEE), so every point's returned cluster
    is its nearest final centroid exactly.
    """
    n = x.shape[0]
    g = torch.Generator(device=x.device).manual_seed(seed)
    centroids = x[torch.randperm(n, generator=g, device=x.device)[:m]].clone()
    xa = x.half() if x.is_cuda else x
    previous, n_empty = None, 0
    with _fp32_accumulation(x.device), _ieee_fp32_matmul(x.device):
        for _ in range(KMEANS_ITERS):
            sim, assign = _nearest_centroid(xa, centroids)
            if previous is not None and n_empty == 0 and torch.equal(assign, previous):
                break  # centroids = means of these very assignments: a fixed point
            previous = assign
            sums = torch.zeros_like(centroids).index_add_(0, assign, x)
            centroids = F.normalize(sums, dim=1)
            empty = torch.bincount(assign, minlength=m) == 0
            n_empty = int(empty.sum())
            if n_empty:
                centroids[empty] = x[sim.topk(n_empty, largest=False).indices]
        _, assign = _nearest_centroid(x, centroids)
    return centroids, assign


# ----------------------------------------------------------------------------------------------
# Selection rule (vectorised over N)
# ----------------------------------------------------------------------------------------------


def _floyd_sample(pop: Tensor, p: int, g: torch.Generator) -> Tensor:
    """Per row, min(pop, p) distinct offsets uniform in [0, pop) (Floyd's algorithm).

    ``pop`` is [N] long; returns [N, p] long whose first ``min(pop, p)`` columns are the sample
    (later columns are meaningless). Loops over the p columns only, never over N.
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

    Priority key: members of Ω get a uniform key in [0, 1), the rest ``1 + rank/k``; the p
    smallest keys are p members of Ω drawn without replacement when |Ω| ≥ p, else all of Ω and
    then the nearest remaining Ω2 members by kNN rank. Neighbour rows are distinct and exclude
    self, so rows of the result are too.
    """
    n, k = neighbors.shape
    rank_key = 1.0 + torch.arange(k, device=neighbors.device, dtype=torch.float32) / k
    random_key = torch.rand(n, k, generator=g, device=neighbors.device)
    key = torch.where(omega, random_key, rank_key.expand(n, k))
    cols = key.topk(p, dim=1, largest=False, sorted=True).indices
    return neighbors.gather(1, cols)


def _random_positives(n: int, p: int, g: torch.Generator, device) -> Tensor:
    """p distinct indices per row, uniform over the dataset minus the anchor itself."""
    offsets = _floyd_sample(torch.full((n,), n - 1, dtype=torch.long, device=device), p, g)
    anchors = torch.arange(n, device=device).unsqueeze(1)
    return offsets + (offsets >= anchors).long()


def _kmeans_positives(assign: Tensor, neighbors: Tensor, m: int, p: int, g: torch.Generator):
    """p random members of the anchor's cluster (self excluded), drawn without replacement.

    A cluster with fewer than p + 1 members gives all its other members, then is filled with the
    anchor's nearest neighbours from *other* clusters by kNN rank (same-cluster neighbours are
    already in the row, so this is "nearest remaining Ω2", without duplicates). Returns
    (positives [N, p], filled [N]).
    """
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


class _Clock:
    """Seconds since the previous call, stored under a name (no-op without a dict)."""

    def __init__(self, device: torch.device, timings: dict | None):
        self.device, self.timings = device, timings
        self.last = time.perf_counter()

    def __call__(self, name: str) -> None:
        if self.timings is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.timings[name] = now - self.last
        self.last = now


def _uses_faiss(backend: str, device: torch.device) -> bool:
    """Whether ``backend`` resolves to faiss for tensors on ``device`` (see the module docstring)."""
    return backend == "faiss" or (backend == "auto" and ((device.type == "cpu" and _has_faiss())
                                                         or _has_faiss_gpu()))


def select_positives(
    features: Tensor,
    strategy: str,
    num_clusters: int,
    k: int,
    num_positives: int = 10,
    seed: int = 0,
    backend: str = "auto",
    timings: dict | None = None,
) -> SelectionResult:
    """Build the positives table of METHOD §2 from L2-normalised features [N, d].

    Strategies (paper Table 6): ``random`` (uniform over the dataset, never self), ``knn``
    (top-P neighbours), ``kmeans`` (random members of the own cluster, filled from kNN when the
    cluster is too small), ``knn_kmeans`` (Ω1 ∩ Ω2) and ``center_wise``
    (Ω_p(i) = {j ∈ Ω1 ∩ Ω2 : ||v_j − c|| ≤ ||v_i − c||}, c = centroid of i's cluster). For the
    last two, P are drawn without replacement when |Ω| ≥ P, else all of Ω then the nearest
    remaining Ω2 members by rank.

    kNN is exact L2 with self excluded by index; k-means is spherical, ``num_clusters`` clusters,
    20 iterations, seeded by ``seed`` (also the seed of the random draws). Runs on the device
    of ``features``; see the module docstring for ``backend``. A ``timings`` dict receives the
    seconds spent in ``knn``, ``kmeans`` and ``rule`` (CUDA synchronised; for benchmarks).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; valid strategies: {', '.join(STRATEGIES)}")
    if backend not in _BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid backends: {', '.join(_BACKENDS)}")
    n = features.shape[0]
    p = num_positives
    if k < p:
        raise ValueError(f"k ({k}) must be >= num_positives ({p}): Ω2 must be able to fill the table")
    if n <= k:
        raise ValueError(f"need more than k = {k} points, got {n}")
    if strategy in _CLUSTERED and not 0 < num_clusters <= n:
        raise ValueError(f"num_clusters must be in [1, {n}], got {num_clusters}")

    x = features.detach().float().contiguous()
    device = x.device
    use_faiss = _uses_faiss(backend, device)
    g = torch.Generator(device=device).manual_seed(seed)
    clock = _Clock(device, timings)

    neighbors = _knn_faiss(x, k) if use_faiss else _knn_torch(x, k)
    clock("knn")
    assign = centroids = omega_sizes = None
    if strategy in _CLUSTERED:
        kmeans = _kmeans_faiss if use_faiss else _kmeans_torch
        centroids, assign = kmeans(x, num_clusters, seed)
    clock("kmeans")

    if strategy == "random":
        positives = _random_positives(n, p, g, device)
        filled = torch.zeros(n, dtype=torch.bool, device=device)
    elif strategy == "knn":
        positives = neighbors[:, :p].clone()
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
    clock("rule")
    return SelectionResult(positives, neighbors, assign, centroids, omega_sizes, filled)


# ----------------------------------------------------------------------------------------------
# Diagnostics (METHOD §2: logged at every refresh)
# ----------------------------------------------------------------------------------------------


def _label_precision(labels: Tensor, table: Tensor) -> tuple[float | None, int]:
    """Share of (anchor, entry) pairs of ``table`` with equal labels, over the pairs whose two labels
    are known (label ≥ 0; an entry < 0 is no pair); returns (precision or None, number of such pairs).

    Counting an unlabelled positive as a miss would make a perfect table on STL-10 (≈ 5 % labelled)
    read ≈ 0.05, so unknown labels are left out and the count of labelled pairs is reported instead.
    """
    valid = table >= 0
    entry_labels = labels[table.clamp(min=0)]
    anchor_labels = labels.unsqueeze(1).expand_as(table)
    known = valid & (entry_labels >= 0) & (anchor_labels >= 0)
    count = int(known.sum())
    if count == 0:
        return None, 0
    return float((entry_labels == anchor_labels)[known].sum()) / count, count


def selection_diagnostics(result: SelectionResult, labels: Tensor | None = None) -> dict:
    """JSON-friendly statistics of a selection (METHOD §2), plain Python floats / lists.

    Keys present only where they apply:
    - with clusters: ``cluster_size_min`` / ``_median`` / ``_max`` (empty clusters count as 0),
      ``cluster_size_hist`` (counts) over ``cluster_size_bin_edges`` ``[0, 1, 2, 4, …]``
      (bin i = [edges[i], edges[i+1]));
    - with Ω sizes: ``omega_mean`` (mean |Ω_p|, or |Ω1 ∩ Ω2| for ``knn_kmeans``);
    - always: ``fill_fraction`` (share of anchors that needed filling);
    - with labels (−1 = unknown): ``labelled_pairs``, the number of (anchor, positive) pairs whose
      two labels are known, and — when it is > 0 — ``positive_precision``, the share of those pairs
      with equal labels (pairs with an unknown label are left out, not counted as misses); the same
      for the k neighbours as ``knn_labelled_pairs`` and ``knn_precision`` — how the user sees
      whether selection finds same-class positives, and on how much labelled data.
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
        labels = labels.to(result.positives.device).long()
        for prefix, table in (("", result.positives), ("knn_", result.neighbors)):
            precision, pairs = _label_precision(labels, table)
            stats[f"{prefix}labelled_pairs"] = pairs
            name = "positive_precision" if not prefix else "knn_precision"
            if precision is not None:
                stats[name] = precision
    return stats
