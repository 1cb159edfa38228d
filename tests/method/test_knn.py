"""The torch backend's exact kNN (issue 10): two-stage top-k over column groups, blocked rows, and
the fp16-candidates + fp32 re-rank path, all checked against faiss ``IndexFlatL2`` on generated
data with exact duplicates (neighbour sets per row; differences only among tied distances).
Without faiss (the GPU machine) only the comparisons with faiss are skipped."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import clim.method.knn as knn_module
from clim.method.knn import drop_self, group_topk, kmeans_torch, knn_exact, knn_half, knn_torch

K = 10
TOL = 1e-5


def duplicated_features(n=3000, d=16, centres=12, seed=0, normalise=True):
    """Clustered points; copies of some points, one of them repeated 3·K times (> K + 1)."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(centres, d, generator=g)
    x = c[torch.randint(centres, (n,), generator=g)] + 0.6 * torch.randn(n, d, generator=g)
    if normalise:
        x = F.normalize(x, dim=1)
    x[100 : 100 + 3 * K] = x[100]  # more copies than K + 1: self may fall out of faiss's K + 1
    x[500:504] = x[500]
    for i in range(1000, 1400, 2):  # 200 pairs
        x[i + 1] = x[i]
    perm = torch.randperm(n, generator=g)  # scatter the copies over the column groups
    return x[perm].contiguous()


def big_duplicate(x):
    """Mask of the rows equal to the point repeated 3·K times."""
    _, inverse, counts = torch.unique(x, dim=0, return_inverse=True, return_counts=True)
    return inverse == counts.argmax()


def faiss_knn(x, k):
    faiss = pytest.importorskip("faiss")
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x.numpy())
    _, ids = index.search(x.numpy(), k + 1)
    return drop_self(torch.from_numpy(ids))


def assert_same_neighbours(x, got, ref):
    """Per row: same k distances, no self, no repeats, and set differences only at tied distances."""
    xd = x.double()
    n, k = got.shape
    assert bool((got != torch.arange(n).unsqueeze(1)).all()), "self among the neighbours"
    assert bool((got.sort(1).values.diff(dim=1) != 0).all()), "a neighbour repeated in a row"
    d_got = ((xd.unsqueeze(1) - xd[got]) ** 2).sum(-1)
    d_ref = ((xd.unsqueeze(1) - xd[ref]) ** 2).sum(-1)
    torch.testing.assert_close(d_got.sort(1).values, d_ref.sort(1).values, atol=TOL, rtol=0)
    kth = d_ref.max(1).values
    differing = 0
    for i in range(n):
        extra = set(got[i].tolist()) - set(ref[i].tolist())
        if extra:
            differing += 1
            for j in extra:  # a different choice among points tied with the k-th distance
                assert abs(float(((xd[i] - xd[j]) ** 2).sum()) - float(kth[i])) <= TOL, (i, j)
    return differing


@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("group", [4, 16])
def test_group_topk_equals_topk_with_ties(largest, group):
    g = torch.Generator().manual_seed(group)
    scores = torch.randint(0, 50, (64, 40 * group), generator=g).float()  # many ties
    scores[:8] = 7.0  # rows that are all ties
    values, cols = group_topk(scores, 12, group, largest)
    ref = scores.topk(12, dim=1, largest=largest, sorted=True).values
    assert torch.equal(values, ref)
    assert torch.equal(scores.gather(1, cols), values)
    assert bool((cols.sort(1).values.diff(dim=1) != 0).all())


def test_group_topk_few_groups_falls_back_to_topk():
    scores = torch.randn(5, 64)
    values, cols = group_topk(scores, 10, 16, largest=False)  # 4 groups <= k
    assert torch.equal(values, scores.topk(10, dim=1, largest=False).values)
    assert torch.equal(scores.gather(1, cols), values)


@pytest.mark.parametrize("normalise", [True, False])
def test_exact_knn_equals_faiss_with_duplicates(monkeypatch, normalise):
    x = duplicated_features(normalise=normalise)
    monkeypatch.setattr(knn_module, "CPU_BLOCK", 3000 * 128)  # ~128 rows a block: many blocks, a ragged last
    got = knn_torch(x, K)
    ref = faiss_knn(x, K)
    differing = assert_same_neighbours(x, got, ref)
    assert differing < x.shape[0] // 10  # most rows have a unique answer, and it is the same
    # the 3K copies of one point find only each other
    dup = big_duplicate(x).nonzero().squeeze(1)
    assert dup.numel() == 3 * K
    for i in dup.tolist():
        assert set(got[i].tolist()) <= set(dup.tolist()) - {i}


def test_exact_knn_subset_of_queries():
    x = duplicated_features(n=2000)
    queries = torch.tensor([5, 1999, 0, 777, 100, 101])
    assert torch.equal(knn_exact(x, K, queries, group=16), knn_exact(x, K, group=16)[queries])


def test_half_precision_candidates_certified_rows_are_exact():
    x = duplicated_features()
    ids, certified = knn_half(x, K, margin=K, group=32)
    assert 0.5 < float(certified.float().mean()) < 1.0  # the copies of row 100 cannot be certified
    rows = certified.nonzero().squeeze(1)
    ref = faiss_knn(x, K)
    xd = x.double()
    d_got = ((xd[rows].unsqueeze(1) - xd[ids[rows]]) ** 2).sum(-1).sort(1).values
    d_ref = ((xd[rows].unsqueeze(1) - xd[ref[rows]]) ** 2).sum(-1).sort(1).values
    torch.testing.assert_close(d_got, d_ref, atol=TOL, rtol=0)
    dup = big_duplicate(x)
    assert int(dup.sum()) == 3 * K and not bool(certified[dup].any())


@pytest.mark.parametrize("margin", [0, K])
def test_low_precision_knn_equals_faiss(monkeypatch, margin):
    x = duplicated_features()
    monkeypatch.setattr(knn_module, "HALF_MARGIN", margin)
    monkeypatch.setattr(knn_module, "GROUP", 32)
    monkeypatch.setattr(knn_module, "CPU_BLOCK", 3000 * 200)
    got = knn_torch(x, K, low_precision=True)
    assert_same_neighbours(x, got, faiss_knn(x, K))


def test_kmeans_torch_assigns_nearest_final_centroid():
    x = duplicated_features(n=2000)
    centroids, assign = kmeans_torch(x, 20, seed=0)
    sims = x.double() @ centroids.double().T
    own = sims.gather(1, assign.unsqueeze(1)).squeeze(1)
    assert bool((own >= sims.max(1).values - 1e-6).all())
    assert assign.unique().numel() == 20


def test_kmeans_early_stop_equals_all_iterations():
    """Stopping when no assignment changes gives the result of all KMEANS_ITERS iterations."""
    x = duplicated_features(n=2000)
    centroids, assign = kmeans_torch(x, 12, seed=1)
    g = torch.Generator().manual_seed(1 + 1)  # kmeans_torch seeds its init with seed + 1, as faiss does
    ref = x[torch.randperm(x.shape[0], generator=g)[:12]].clone()
    for _ in range(knn_module.KMEANS_ITERS):
        sim, a = (x @ ref.T).max(1)
        ref = F.normalize(torch.zeros_like(ref).index_add_(0, a, x), dim=1)
        empty = torch.bincount(a, minlength=12) == 0
        if empty.any():
            ref[empty] = x[sim.topk(int(empty.sum()), largest=False).indices]
    torch.testing.assert_close(centroids, ref, atol=1e-6, rtol=0)
    assert torch.equal(assign, (x @ ref.T).argmax(1))


@pytest.mark.parametrize("seed", [0, 3])
def test_kmeans_backends_agree_for_the_same_seed(seed):
    """Issue 18: faiss seeds its initial permutation with seed + 1, and so does kmeans_torch, so
    ``select_positives(..., seed=s)`` gives the same clusters whether or not faiss is installed."""
    pytest.importorskip("faiss")
    from clim.method.knn import kmeans_faiss

    x = duplicated_features(n=2000)
    faiss_centroids, faiss_assign = kmeans_faiss(x, 20, seed)
    torch_centroids, torch_assign = kmeans_torch(x, 20, seed)
    assert torch.equal(torch_assign, faiss_assign)
    torch.testing.assert_close(torch_centroids, faiss_centroids, atol=1e-4, rtol=0)


_TF32_CHECK = """
import torch
from clim.method.knn import _ieee_fp32_matmul
matmul = torch.backends.cuda.matmul
if {new!r}:
    matmul.fp32_precision = "tf32"
else:
    torch.set_float32_matmul_precision("high")
with _ieee_fp32_matmul(torch.device("cuda")):
    inside = matmul.fp32_precision, (matmul.allow_tf32 if not {new!r} else None)
after = matmul.fp32_precision if {new!r} else (torch.get_float32_matmul_precision(), matmul.allow_tf32)
print(inside, after)
"""


@pytest.mark.parametrize("new_api", [False, True])
def test_ieee_matmul_block_uses_and_restores_the_api_the_process_set(new_api, run_python):
    """The flags are set without a GPU: cuBLAS would read allow_tf32 inside the block, which raises
    ("mix of the legacy and new APIs") when the legacy API set it and the new one changed it."""
    result = run_python(["-c", _TF32_CHECK.format(new=new_api)])
    assert result.returncode == 0, result.stderr[-2000:]
    expected = "('ieee', None) tf32" if new_api else "('ieee', False) ('high', True)"
    assert result.stdout.strip() == expected
