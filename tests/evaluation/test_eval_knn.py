import math

import torch

from clim.evaluation.knn import knn_predict, run_knn, weighted_knn


def _unit(angle_deg: float) -> list[float]:
    a = math.radians(angle_deg)
    return [math.cos(a), math.sin(a)]


def test_known_answer_two_directions():
    train = torch.tensor([_unit(0), _unit(5), _unit(-5), _unit(90), _unit(85), _unit(95)]) * 3.0  # norm irrelevant
    train_labels = torch.tensor([0, 0, 0, 1, 1, 1])
    test = torch.tensor([_unit(10), _unit(80), _unit(-20)])
    test_labels = torch.tensor([0, 1, 0])
    assert weighted_knn(train, train_labels, test, test_labels, k=3, temperature=0.1, num_classes=2) == 100.0
    wrong = torch.tensor([1, 0, 0])
    assert abs(weighted_knn(train, train_labels, test, wrong, 3, 0.1, 2) - 100.0 / 3) < 1e-9


def test_weighting_beats_majority_vote():
    # One neighbour almost identical (class 0, cos ~ 1) against two lukewarm ones (class 1, cos 0.5):
    # a majority vote says 1; exp(s / 0.07) weights say 0 (e^14.3 vs 2 e^7.1).
    train = torch.tensor([_unit(1), _unit(60), _unit(-60)])
    train_labels = torch.tensor([0, 1, 1])
    test = torch.tensor([_unit(0)])
    majority = torch.bincount(train_labels).argmax().item()
    assert majority == 1
    assert knn_predict(train, train_labels, test, k=3, temperature=0.07, num_classes=2).item() == 0
    # A very high temperature flattens the weights back to a majority vote.
    assert knn_predict(train, train_labels, test, k=3, temperature=1000.0, num_classes=2).item() == 1


def test_matches_brute_force_and_chunking():
    gen = torch.Generator().manual_seed(0)
    train = torch.randn(200, 8, generator=gen)
    train_labels = torch.randint(0, 5, (200,), generator=gen)
    test = torch.randn(37, 8, generator=gen)
    k, temperature = 7, 0.2
    sims = torch.nn.functional.normalize(test, dim=1) @ torch.nn.functional.normalize(train, dim=1).T
    expected = []
    for row in sims:
        votes = [0.0] * 5
        values, idx = row.topk(k)
        for v, i in zip(values.tolist(), idx.tolist()):
            votes[int(train_labels[i])] += math.exp(v / temperature)
        expected.append(max(range(5), key=lambda c: votes[c]))
    for chunk in (1, 5, 1024):
        got = knn_predict(train, train_labels, test, k, temperature, 5, chunk_size=chunk)
        assert got.tolist() == expected


def test_run_knn_reports_both_settings_and_clamps_k():
    train = torch.tensor([_unit(0), _unit(90)] * 5)
    labels = torch.tensor([0, 1] * 5)
    result = run_knn(train, labels, train, labels, num_classes=2, device="cpu")
    assert set(result) == {"knn_k20_top1", "knn_k200_top1"}  # k larger than the bank still works
    assert all(0.0 <= v <= 100.0 for v in result.values())


def test_unlabelled_bank_rows_do_not_vote():
    train = torch.tensor([_unit(0), _unit(1), _unit(90)])
    train_labels = torch.tensor([-1, -1, 1])
    assert knn_predict(train, train_labels, torch.tensor([_unit(0)]), k=2, temperature=0.1, num_classes=2).item() == 1
