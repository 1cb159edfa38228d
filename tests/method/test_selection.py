"""Positive selection (METHOD §2) against brute-force Python references on small clustered data
that contains exact duplicate feature vectors."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clim.method.knn import drop_self
from clim.method.selection import (
    STRATEGIES,
    SelectionResult,
    _draw_or_fill,
    _floyd_sample,
    select_positives,
    selection_diagnostics,
)

N, D, K, P, M = 240, 8, 12, 5, 8
BIG_DUP = slice(50, 70)  # 20 copies > K + 1: self can fall out of faiss's K + 1 results


def clustered(n=N, d=D, centres=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = F.normalize(torch.randn(centres, d, generator=g), dim=1)
    noise = 0.5 * torch.randn(n, d, generator=g)
    x = F.normalize(c[torch.randint(centres, (n,), generator=g)] + noise, dim=1)
    x[10:14] = x[10]
    x[100:103] = x[100]
    x[BIG_DUP] = x[BIG_DUP.start]
    return x


@pytest.fixture(scope="module")
def feats():
    return clustered()


def needs(backend: str) -> None:
    """Skip the calling test when ``backend`` is faiss and faiss is not installed."""
    if backend == "faiss":
        pytest.importorskip("faiss")


class _Selections(dict):
    """(strategy, backend) -> selection, computed on first use: a test asking for a faiss selection
    without faiss installed is skipped, the others still run."""

    def __init__(self, feats):
        super().__init__()
        self.feats = feats

    def __missing__(self, key):
        strategy, backend = key
        needs(backend)
        self[key] = select_positives(self.feats, strategy, M, K, P, seed=3, backend=backend)
        return self[key]


@pytest.fixture(scope="module")
def results(feats):
    """One selection per (strategy, backend), shared by the tests (keeps the suite fast)."""
    return _Selections(feats)


def brute_distances(x):
    xd = x.double().numpy()
    return ((xd[:, None, :] - xd[None, :, :]) ** 2).sum(-1)


def check_exact_knn(x, neighbors, tol=1e-5):
    dist = brute_distances(x)
    n, k = neighbors.shape
    nb = neighbors.numpy()
    for i in range(n):
        row = nb[i]
        assert i not in row, f"row {i} contains self"
        assert len(set(row.tolist())) == k
        others = np.delete(np.arange(n), i)
        ref = np.sort(dist[i, others])
        got = dist[i, row]
        np.testing.assert_allclose(got, ref[:k], atol=tol)  # k nearest, ascending
        if ref[k] - ref[k - 1] > tol:  # no tie at the boundary: the set is unique
            assert set(row.tolist()) == set(others[np.argsort(dist[i, others])[:k]].tolist())


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_knn_exact_with_duplicates(feats, results, backend):
    res = results[("knn", backend)]
    check_exact_knn(feats, res.neighbors)
    assert torch.equal(res.positives, res.neighbors[:, :P])
    # the 19 other copies of a 20-fold duplicate are its nearest neighbours, self never
    dup = set(range(BIG_DUP.start, BIG_DUP.stop))
    for i in dup:
        assert set(res.neighbors[i].tolist()) <= dup - {i}


def test_torch_knn_equals_faiss(feats, results):
    a, b = results[("knn", "faiss")].neighbors, results[("knn", "torch")].neighbors
    dist = brute_distances(feats)
    rows = torch.arange(N).unsqueeze(1)
    np.testing.assert_allclose(dist[rows, a], dist[rows, b], atol=1e-5)
    kth_plus_one = [np.sort(np.delete(dist[i], i))[K] for i in range(N)]
    untied = [i for i in range(N) if not np.isclose(dist[i, a[i, -1]], kth_plus_one[i], atol=1e-5)]
    assert len(untied) > N // 2
    for i in untied:
        assert set(a[i].tolist()) == set(b[i].tolist())


def test_drop_self_by_index():
    ids = torch.tensor([[0, 5, 6, 7], [2, 1, 3, 4], [5, 6, 7, 8], [9, 8, 7, 3]])
    # row 0: self first; row 1: a duplicate ahead of self; row 2: self absent -> drop last; row 3: self last
    assert drop_self(ids).tolist() == [[5, 6, 7], [2, 3, 4], [5, 6, 7], [9, 8, 7]]


def omega_reference(x, res, center_wise):
    """Brute-force Ω1 ∩ Ω2 (and the centre-wise condition) per anchor, float64.

    Anchors whose centre-distance comparison is closer than 1e-6 without identical vectors are
    returned as None (float32 vs float64 could legitimately disagree there)."""
    xd = x.double().numpy()
    a = res.assignments.numpy()
    c = res.centroids.double().numpy()
    out = []
    for i in range(x.shape[0]):
        dc_i = np.linalg.norm(xd[i] - c[a[i]])
        omega, ambiguous = [], False
        for j in res.neighbors[i].tolist():
            if a[j] != a[i]:
                continue
            if center_wise:
                dc_j = np.linalg.norm(xd[j] - c[a[i]])
                if abs(dc_j - dc_i) < 1e-6 and not np.array_equal(xd[i], xd[j]):
                    ambiguous = True
                if dc_j > dc_i:
                    continue
            omega.append(j)
        out.append(None if ambiguous else omega)
    return out


def check_fill_rule(res, omegas):
    filled_seen = drawn_seen = 0
    for i, omega in enumerate(omegas):
        row = res.positives[i].tolist()
        assert i not in row and len(set(row)) == P
        if omega is None:
            continue
        assert res.omega_sizes[i] == len(omega)
        assert bool(res.filled[i]) == (len(omega) < P)
        if len(omega) >= P:
            assert set(row) <= set(omega)
            drawn_seen += 1
        else:
            rest = [j for j in res.neighbors[i].tolist() if j not in omega]
            assert sorted(row[: len(omega)]) == sorted(omega)
            assert row[len(omega):] == rest[: P - len(omega)]
            filled_seen += 1
    assert filled_seen and drawn_seen  # both branches exercised


@pytest.mark.parametrize("backend", ["faiss", "torch"])
@pytest.mark.parametrize("strategy", ["knn_kmeans", "center_wise"])
def test_rule_matches_brute_force(feats, results, strategy, backend):
    res = results[(strategy, backend)]
    check_exact_knn(feats, res.neighbors)
    omegas = omega_reference(feats, res, center_wise=strategy == "center_wise")
    assert sum(o is None for o in omegas) < N // 10
    check_fill_rule(res, omegas)


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_assignments_are_nearest_centroid(feats, results, backend):
    res = results[("center_wise", backend)]
    c = res.centroids.double()
    torch.testing.assert_close(c.norm(dim=1), torch.ones(M, dtype=torch.float64), atol=1e-5, rtol=0)
    sims = feats.double() @ c.T
    own = sims.gather(1, res.assignments.unsqueeze(1)).squeeze(1)
    assert bool((own >= sims.max(1).values - 1e-6).all())


def test_center_wise_subset_of_knn_kmeans(feats):
    a = select_positives(feats, "knn_kmeans", M, K, P, seed=1)
    b = select_positives(feats, "center_wise", M, K, P, seed=1)
    assert torch.equal(a.assignments, b.assignments)
    assert bool((b.omega_sizes <= a.omega_sizes).all()) and bool((b.omega_sizes < a.omega_sizes).any())


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_kmeans_strategy(feats, backend):
    needs(backend)
    res = select_positives(feats, "kmeans", 40, K, P, seed=2, backend=backend)  # some tiny clusters
    a = res.assignments.tolist()
    filled_seen = drawn_seen = 0
    for i in range(N):
        row = res.positives[i].tolist()
        assert i not in row and len(set(row)) == P
        members = [j for j in range(N) if a[j] == a[i] and j != i]
        assert bool(res.filled[i]) == (len(members) < P)
        if len(members) >= P:
            assert set(row) <= set(members)
            drawn_seen += 1
        else:
            fill = [j for j in res.neighbors[i].tolist() if a[j] != a[i]]
            assert sorted(row[: len(members)]) == sorted(members)
            assert row[len(members):] == fill[: P - len(members)]
            filled_seen += 1
    assert filled_seen and drawn_seen
    assert res.omega_sizes is None


def test_draw_or_fill_rule():
    neighbors = torch.tensor([[7, 3, 9, 1, 4, 8], [2, 5, 6, 0, 3, 9]])
    omega = torch.tensor([[False, True, False, False, True, False], [True] * 6])
    g = torch.Generator().manual_seed(0)
    out = _draw_or_fill(neighbors, omega, 4, g)
    # row 0: |Ω| = 2 < 4 -> {3, 4} then the nearest remaining by rank: 7, 9
    assert sorted(out[0, :2].tolist()) == [3, 4] and out[0, 2:].tolist() == [7, 9]
    assert len(set(out[1].tolist())) == 4 and set(out[1].tolist()) <= set(neighbors[1].tolist())
    # draws without replacement vary: over many seeds every Ω member shows up
    seen = set()
    for s in range(20):
        seen |= set(_draw_or_fill(neighbors, omega, 4, torch.Generator().manual_seed(s))[1].tolist())
    assert seen == set(neighbors[1].tolist())


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_random_never_self(feats, results, backend):
    res = results[("random", backend)]
    pos = res.positives
    assert bool((pos != torch.arange(N).unsqueeze(1)).all())
    assert bool(((pos >= 0) & (pos < N)).all())
    assert all(len(set(r)) == P for r in pos.tolist())
    # N - 1 = P: every row is exactly all the other points
    small = select_positives(feats[:13], "random", 1, 12, 12, seed=0, backend=backend)
    for i, row in enumerate(small.positives.tolist()):
        assert sorted(row) == [j for j in range(13) if j != i]


def test_floyd_uniform():
    g = torch.Generator().manual_seed(0)
    rows = 20000
    s = _floyd_sample(torch.full((rows,), 10), 3, g)
    assert all(len(set(r)) == 3 for r in s[:500].tolist())
    freq = torch.bincount(s.flatten(), minlength=10).float() / rows
    torch.testing.assert_close(freq, torch.full((10,), 0.3), atol=0.015, rtol=0)


@pytest.mark.parametrize("backend", ["faiss", "torch"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_shapes_and_dtypes(results, strategy, backend):
    res = results[(strategy, backend)]
    assert isinstance(res, SelectionResult)
    assert res.positives.shape == (N, P) and res.positives.dtype == torch.long
    assert res.neighbors.shape == (N, K) and res.neighbors.dtype == torch.long
    assert res.filled.shape == (N,) and res.filled.dtype == torch.bool
    clustered_ = strategy in ("kmeans", "knn_kmeans", "center_wise")
    assert (res.assignments is not None) == clustered_ and (res.centroids is not None) == clustered_
    if clustered_:
        assert res.assignments.shape == (N,) and res.assignments.dtype == torch.long
        assert res.centroids.shape == (M, D)
    assert (res.omega_sizes is not None) == (strategy in ("knn_kmeans", "center_wise"))


def test_seeded_reproducible(feats):
    a = select_positives(feats, "center_wise", M, K, P, seed=5, backend="torch")
    b = select_positives(feats, "center_wise", M, K, P, seed=5, backend="torch")
    assert torch.equal(a.positives, b.positives) and torch.equal(a.assignments, b.assignments)
    r1 = select_positives(feats, "random", M, K, P, seed=1)
    r2 = select_positives(feats, "random", M, K, P, seed=2)
    assert not torch.equal(r1.positives, r2.positives)


def test_torch_kmeans_reseeds_empty_clusters():
    # 30 distinct points, each 8 times: random init hits duplicates, so clusters go empty
    base = F.normalize(torch.randn(30, D, generator=torch.Generator().manual_seed(0)), dim=1)
    x = base.repeat_interleave(8, dim=0)
    res = select_positives(x, "center_wise", 30, K, P, backend="torch")
    assert bool(torch.isfinite(res.centroids).all())
    torch.testing.assert_close(res.centroids.norm(dim=1), torch.ones(30), atol=1e-5, rtol=0)
    assert res.assignments.unique().numel() > 20


def test_errors(feats):
    with pytest.raises(ValueError, match="center_wise"):
        select_positives(feats, "nope", M, K, P)
    with pytest.raises(ValueError, match="num_positives"):
        select_positives(feats, "knn", M, 4, 5)


def test_diagnostics(results):
    res = results[("center_wise", "torch")]
    labels = torch.arange(N) % 3
    labels[:7] = -1
    d = selection_diagnostics(res, labels)
    json.dumps(d)
    sizes = torch.bincount(res.assignments, minlength=M)
    assert d["cluster_size_min"] == sizes.min().item() and d["cluster_size_max"] == sizes.max().item()
    assert d["cluster_size_median"] == float(np.median(sizes.numpy()))
    assert sum(d["cluster_size_hist"]) == M
    assert len(d["cluster_size_hist"]) == len(d["cluster_size_bin_edges"]) - 1
    assert d["omega_mean"] == pytest.approx(res.omega_sizes.float().mean().item())
    assert d["fill_fraction"] == pytest.approx(res.filled.float().mean().item())
    for table, prefix, name in ((res.positives, "", "positive_precision"), (res.neighbors, "knn_", "knn_precision")):
        # only pairs whose two labels are known count (anchors 0..6 and entries 0..6 are unknown)
        pairs = [(i, j) for i in range(N) for j in table[i].tolist() if labels[i] >= 0 and labels[j] >= 0]
        assert 0 < len(pairs) < table.numel()
        assert d[f"{prefix}labelled_pairs"] == len(pairs)
        assert d[name] == pytest.approx(np.mean([labels[i] == labels[j] for i, j in pairs]))
    plain = selection_diagnostics(results[("knn", "torch")])
    assert set(plain) == {"fill_fraction"}


def _table_result(positives, neighbors):
    n = positives.shape[0]
    return SelectionResult(positives, neighbors, None, None, None, torch.zeros(n, dtype=torch.bool))


def test_diagnostics_partly_labelled():
    # STL-10-like: 20 images in 2 classes (parity), only every 5th labelled (0, 5, 10, 15); a perfect
    # table (all 9 same-class images) must read precision 1, not about the labelled share
    n = 20
    truth = torch.arange(n) % 2
    positives = torch.stack([torch.tensor([j for j in range(n) if j != i and truth[j] == truth[i]])
                             for i in range(n)])
    neighbors = torch.stack([torch.tensor([(i + 1) % n, (i + 5) % n, (i + 10) % n]) for i in range(n)])
    labels = torch.full((n,), -1)
    labels[::5] = truth[::5]
    d = selection_diagnostics(_table_result(positives, neighbors), labels)
    assert d["labelled_pairs"] == 4  # (0, 10), (10, 0), (5, 15), (15, 5)
    assert d["positive_precision"] == 1.0
    assert d["knn_labelled_pairs"] == 8  # i+5 (other class) and i+10 (same class) for the 4 labelled anchors
    assert d["knn_precision"] == 0.5
    wrong = labels.clone()
    wrong[10] = 1  # now (0, 10) and (10, 0) disagree
    assert selection_diagnostics(_table_result(positives, neighbors), wrong)["positive_precision"] == 0.5


def test_diagnostics_no_labelled_pair():
    positives = torch.tensor([[1], [0], [3], [2]])
    labels = torch.tensor([0, -1, -1, 1])  # every pair has an unknown end
    d = selection_diagnostics(_table_result(positives, positives), labels)
    assert d["labelled_pairs"] == 0 and d["knn_labelled_pairs"] == 0
    assert "positive_precision" not in d and "knn_precision" not in d
    json.dumps(d)
