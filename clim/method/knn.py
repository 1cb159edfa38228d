"""Exact kNN (Ω2: the k L2 nearest neighbours, self excluded) and spherical k-means (Ω1: m clusters, 20 iterations,
seeded), the two searches behind positive selection (METHOD §2); :mod:`clim.method.selection` applies the rule.

Backends (``backend=`` of :func:`~clim.method.selection.select_positives`, resolved by :func:`uses_faiss`): ``"auto"``
is faiss on CPU tensors and, on CUDA tensors, faiss-gpu where ``faiss.StandardGpuResources`` exists, else torch on
the GPU; without faiss installed, torch everywhere. ``"faiss"``: faiss (GPU indexes for CUDA tensors with faiss-gpu,
else CPU). ``"torch"``: blocked matmul + two-stage top-k kNN (on CUDA: fp16 candidates, re-ranked and certified in
fp32) and a torch spherical k-means on the tensors' device (selectable on CPU so that it is tested without a GPU).
kNN agrees between backends up to ties; k-means on CPU up to float rounding (see :func:`kmeans_torch`).
"""

from __future__ import annotations

import contextlib
import importlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor

BACKENDS = ("auto", "faiss", "torch")
KMEANS_ITERS = 20  # METHOD §2
GROUP = 128  # columns per group in the two-stage top-k
HALF_MARGIN = 40  # extra fp16 candidates per row, re-ranked exactly in fp32 (CUDA)
HALF_MIN_N = 1 << 15  # below this many points the fp32 path alone is fast enough
CPU_BLOCK = 1 << 26  # elements of one CPU distance block (256 MB of fp32)


def has_faiss() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def has_faiss_gpu() -> bool:
    return has_faiss() and hasattr(importlib.import_module("faiss"), "StandardGpuResources")


@contextlib.contextmanager
def _cuda_matmul_settings(device: torch.device, **settings):
    """Set ``torch.backends.cuda.matmul`` flags for the block (CUDA only) and put them back after."""
    if device.type != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul
    previous = {name: getattr(matmul, name) for name in settings}
    for name, value in settings.items():
        setattr(matmul, name, value)
    try:
        yield
    finally:
        for name, value in previous.items():
            setattr(matmul, name, value)


@contextlib.contextmanager
def _ieee_fp32_matmul(device: torch.device):
    """Full fp32 matmuls on CUDA (no TF32) for the block, so that the torch kNN stays exact. torch
    >= 2.9 has two APIs for this, and cuBLAS raises ("a mix of the legacy and new APIs") once
    both have been used: the flags are changed and restored through the one the process uses. The
    legacy state (``set_float32_matmul_precision`` / ``allow_tf32``) is readable unless the new one
    (``fp32_precision``) was set, where reading it raises; untouched, matmuls are IEEE already.
    """
    if device.type != "cuda":
        yield
        return
    try:
        legacy = torch.get_float32_matmul_precision()  # "high" also after allow_tf32 = True
    except RuntimeError:  # the new API is in use
        with _cuda_matmul_settings(device, fp32_precision="ieee"):
            yield
        return
    if legacy == "highest":
        yield
        return
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(legacy)


@contextlib.contextmanager
def _exact_accumulation(device: torch.device):
    """On CUDA, for the block: fp16 matmuls accumulate in fp32 throughout (the error bound of :func:`knn_half`) and
    fp32 matmuls run in IEEE fp32 (:func:`_ieee_fp32_matmul`)."""
    with _cuda_matmul_settings(device, allow_fp16_reduced_precision_reduction=False), _ieee_fp32_matmul(device):
        yield


def _block_rows(n_cols: int, device: torch.device, elem_bytes: int = 4, cuda_cap: int = 16384,
                cpu_cap: int = 1024) -> int:
    """Query rows per [rows, n_cols] block of ``elem_bytes`` entries, so that it and its top-k workspace fit: on
    CUDA an eighth of the free memory; on CPU ``CPU_BLOCK`` elements (per-block temporaries stay small)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget, cap = free // 8 // elem_bytes, cuda_cap
    else:
        budget, cap = CPU_BLOCK, cpu_cap
    return int(max(1, min(cap, budget // max(1, n_cols))))


def drop_self(ids: Tensor) -> Tensor:
    """[N, k+1] neighbour ids -> [N, k] without the query itself, matched by index: with exact
    duplicates another index may tie with it at distance 0 (even ahead of it), so self is located per
    row, not assumed in column 0; where duplicates push self out of the k+1, the last column goes."""
    n, k1 = ids.shape
    is_self = ids == torch.arange(n, device=ids.device).unsqueeze(1)
    self_col = torch.where(is_self.any(1), is_self.int().argmax(1), k1 - 1)
    cols = torch.arange(k1 - 1, device=ids.device).unsqueeze(0)
    return ids.gather(1, cols + (cols >= self_col.unsqueeze(1)).long())


def knn_faiss(x: Tensor, k: int) -> Tensor:
    """Exact L2 kNN with ``IndexFlatL2`` (``GpuIndexFlatL2`` for CUDA tensors with faiss-gpu)."""
    import faiss

    xn = x.detach().cpu().numpy()
    if x.is_cuda and has_faiss_gpu():
        resources = faiss.StandardGpuResources()  # must outlive the index
        index = faiss.GpuIndexFlatL2(resources, x.shape[1])
    else:
        index = faiss.IndexFlatL2(x.shape[1])
    index.add(xn)
    _, ids = index.search(xn, k + 1)
    return drop_self(torch.from_numpy(ids).to(x.device))


def group_topk(scores: Tensor, k: int, group: int, largest: bool) -> tuple[Tensor, Tensor]:
    """Exact top-k per row of ``scores`` [r, c] (c a multiple of ``group``), best first.

    Every ``group`` consecutive columns are reduced to their extreme (one cheap pass), the k groups
    with the best extremes kept and the top k of their k·group entries selected. Exact: the k kept
    extremes are k distinct entries at least as good as the k-th kept one, so the true k-th best is
    at least that good, and any entry strictly better lies in a group whose extreme beats every
    dropped group's; ties at the boundary fall arbitrarily, as in ``torch.topk``. Returns (values,
    column indices).
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


def knn_exact(x: Tensor, k: int, queries: Tensor | None = None, group: int = GROUP) -> Tensor:
    """Exact fp32 L2 kNN of ``queries`` (all points by default) among all points, self excluded.

    Blocks of query rows; each block's [rows, N] distances ``||y||² − 2 q·y`` (the query's own norm
    is constant per row) come from one matmul, then :func:`group_topk` selects. Columns are padded to
    a multiple of ``group`` with zero vectors of norm +inf; self is excluded by setting its own
    column to +inf, so duplicates cannot confuse the exclusion."""
    n = x.shape[0]
    n_pad = -(-n // group) * group
    xp = F.pad(x, (0, 0, 0, n_pad - n))
    sq = F.pad((x * x).sum(1), (0, n_pad - n), value=math.inf).unsqueeze(0)
    nq = n if queries is None else queries.numel()
    out = torch.empty(nq, k, dtype=torch.long, device=x.device)
    rows = min(nq, _block_rows(n_pad, x.device))
    # one block buffer for all blocks: a fresh CPU allocation of this size per block would be
    # mmap-ed and page-faulted every time (slower than the matmul's own writes)
    buffer = torch.empty(rows, n_pad, device=x.device)
    with _ieee_fp32_matmul(x.device):
        for start in range(0, nq, rows):
            end = min(start + rows, nq)
            ids = torch.arange(start, end, device=x.device) if queries is None else queries[start:end]
            q = x[start:end] if queries is None else x[ids]
            dist = torch.addmm(sq, q, xp.T, alpha=-2.0, out=buffer[: end - start])
            dist.scatter_(1, ids.unsqueeze(1), math.inf)
            out[start:end] = group_topk(dist, k, group, largest=False)[1]
    return out


def knn_half(x: Tensor, k: int, margin: int = HALF_MARGIN, group: int = GROUP) -> tuple[Tensor, Tensor]:
    """fp16 candidates, exact fp32 re-rank, and a per-row certificate of exactness.

    Points are scaled by 1 / max norm and rounded to fp16; the fp16 matmul (fp32 accumulation)
    gives scores s̃ with |s̃ − scale²·q·y| ≤ bound = 4u + d·2⁻²² (u = 2⁻¹¹: both inputs' rounding,
    the output's rounding, fp32 accumulation). The k + margin best s̃ per row are re-ranked by
    exact fp32 distances. Every other column has s̃ ≤ the last candidate's s̃, so its distance is
    at least ``min ||y||² − 2·(s̃_last + bound) / scale²``; the row is certified when that lower
    bound exceeds the k-th exact distance (plus the fp32 rounding of the distances), and then its
    neighbours equal the fp32 exact kNN's up to ties. Returns (ids [N, k], certified [N] bool)."""
    n, d = x.shape
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
    rows = _block_rows(n_pad, x.device, elem_bytes=2)
    with _exact_accumulation(x.device):
        for start in range(0, n, rows):
            end = min(start + rows, n)
            local = torch.arange(end - start, device=x.device)
            scores = xh[start:end] @ xh.T
            scores[:, n:] = -math.inf
            scores[local, local + start] = -math.inf  # self, by index
            top, cand = group_topk(scores, k + margin, group, largest=True)
            dist = sq[cand] - 2 * torch.bmm(x[cand], x[start:end].unsqueeze(2)).squeeze(2)
            best, order = dist.topk(k, dim=1, largest=False, sorted=True)
            ids[start:end] = cand.gather(1, order)
            lower = sq_min - 2 * (top[:, -1].float() + bound) / scale**2
            certified[start:end] = lower > best[:, -1] + slack
    return ids, certified


def use_half(x: Tensor, k: int) -> bool:
    """Whether :func:`knn_torch` starts with fp16 candidates: CUDA, at least ``HALF_MIN_N``
    points, and norms within 1 % of each other (fp16 scores ignore ``||y||²``; L2-normalised
    features qualify, others would mostly fail the certificate)."""
    n = x.shape[0]
    if not (x.is_cuda and n >= HALF_MIN_N and n > 2 * (k + HALF_MARGIN + GROUP)):
        return False
    sq = (x * x).sum(1)
    return float(sq.max() - sq.min()) <= 1e-2 * float(sq.max())


def knn_torch(x: Tensor, k: int, low_precision: bool | None = None) -> Tensor:
    """Exact L2 kNN in torch, self excluded by index; no N×N matrix is ever materialised.

    ``low_precision`` (default: :func:`use_half`) first runs :func:`knn_half`; the rows it cannot
    certify are recomputed by :func:`knn_exact`, so the result is the fp32 exact kNN either way.
    """
    if low_precision is None:
        low_precision = use_half(x, k)
    if not low_precision:
        return knn_exact(x, k, group=GROUP)
    ids, certified = knn_half(x, k, HALF_MARGIN, GROUP)
    redo = (~certified).nonzero().squeeze(1)
    if redo.numel():
        ids[redo] = knn_exact(x, k, redo, GROUP)
    return ids


def kmeans_faiss(x: Tensor, m: int, seed: int) -> tuple[Tensor, Tensor]:
    """faiss spherical k-means (20 iterations); assignment = nearest final centroid."""
    import faiss

    xn = x.detach().cpu().numpy()
    km = faiss.Kmeans(x.shape[1], m, niter=KMEANS_ITERS, spherical=True, seed=seed, gpu=x.is_cuda and has_faiss_gpu())
    km.train(xn)
    _, assign = km.assign(xn)
    return torch.from_numpy(km.centroids).to(x.device), torch.from_numpy(assign).long().to(x.device)


def _nearest_centroid(x: Tensor, centroids: Tensor) -> tuple[Tensor, Tensor]:
    """(similarity, index) of each point's nearest centroid, chunked over points.

    Computed in the dtype of ``x`` (fp16 for the CUDA k-means iterations), similarities as fp32.
    """
    rows = _block_rows(centroids.shape[0], x.device, cuda_cap=1 << 16, cpu_cap=2048)
    c = centroids.to(x.dtype)
    best = [(x[start : start + rows] @ c.T).max(1) for start in range(0, x.shape[0], rows)]
    return torch.cat([s.float() for s, _ in best]), torch.cat([i for _, i in best])


def kmeans_torch(x: Tensor, m: int, seed: int) -> tuple[Tensor, Tensor]:
    """Spherical k-means in torch (METHOD §2: m clusters, 20 iterations, seeded).

    Init: m distinct points by ``randperm`` of a generator seeded with ``seed + 1``, as faiss draws
    its initial centroids; on CPU the two agree, so the same ``seed`` gives the same clusters on both
    backends (when faiss does not subsample, N ≤ 256·m; up to float rounding). Each iteration
    assigns by maximum cosine (chunked) and sets centroids to the normalised member means; empty
    clusters are re-seeded with the worst-fitting points (lowest similarity to their centroid). At
    a fixed point (no assignment changed, no cluster empty) the loop stops, as faiss does. On CUDA
    the assignment steps use fp16 matmuls (fp32 accumulation; similarities within about 1e-3, so
    only near-tied points may change cluster); the centroid means and the final assignment (to the
    nearest final centroid) are fp32 (IEEE), exact.
    """
    n = x.shape[0]
    g = torch.Generator(device=x.device).manual_seed(seed + 1)  # faiss' rand_perm(seed + 1)
    centroids = x[torch.randperm(n, generator=g, device=x.device)[:m]].clone()
    xa = x.half() if x.is_cuda else x
    previous, n_empty = None, 0
    with _exact_accumulation(x.device):
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


def uses_faiss(backend: str, device: torch.device) -> bool:
    """Whether ``backend`` resolves to faiss for tensors on ``device`` (see the module docstring)."""
    return backend == "faiss" or (backend == "auto" and ((device.type == "cpu" and has_faiss())
                                                         or has_faiss_gpu()))

