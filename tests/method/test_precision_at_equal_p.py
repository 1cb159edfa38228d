"""The positives' label precision is compared with kNN's at the same P: ``knn_top_p_precision`` counts
the P nearest neighbours (what kNN-only selection picks), ``knn_precision`` all k of them (Ω2)."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import clim.report as report
from clim.method.selection import SelectionResult, select_positives, selection_diagnostics


def _precision(labels, table) -> float:
    return float(np.mean([labels[i] == labels[j] for i in range(len(labels)) for j in table[i].tolist()]))


def test_hand_made_table_gives_the_three_precisions():
    # 8 images in 2 classes (parity); each row's 2 nearest neighbours share the class, the next 2 do not
    n, labels = 8, torch.arange(8) % 2
    neighbors = torch.stack([torch.tensor([(i + 2) % n, (i + 4) % n, (i + 1) % n, (i + 3) % n]) for i in range(n)])
    positives = neighbors[:, [0, 2]]  # one same-class, one other-class positive per anchor
    result = SelectionResult(positives, neighbors, None, None, None, torch.zeros(n, dtype=torch.bool))
    stats = selection_diagnostics(result, labels)
    assert stats["positive_precision"] == 0.5 and stats["labelled_pairs"] == 16
    assert stats["knn_top_p_precision"] == 1.0 and stats["knn_top_p_labelled_pairs"] == 16  # P = 2 nearest
    assert stats["knn_precision"] == 0.5 and stats["knn_labelled_pairs"] == 32  # all k = 4


def test_synthetic_features_top_p_is_nearer_and_more_precise_than_all_k():
    # 3 classes of 30 noisy points around 3 directions; k = 40 > 29 same-class neighbours, P = 10
    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(3, 16, generator=g), dim=1)
    labels = torch.arange(90) // 30
    features = F.normalize(centres[labels] + 0.35 * torch.randn(90, 16, generator=g), dim=1)
    result = select_positives(features, "center_wise", num_clusters=3, k=40, num_positives=10, seed=0,
                              backend="torch")
    stats = selection_diagnostics(result, labels)
    top_p = result.neighbors[:, :10]
    assert stats["knn_top_p_precision"] == pytest.approx(_precision(labels.tolist(), top_p))
    assert stats["knn_precision"] == pytest.approx(_precision(labels.tolist(), result.neighbors))
    assert stats["positive_precision"] == pytest.approx(_precision(labels.tolist(), result.positives))
    assert stats["knn_precision"] <= 29 / 40 < stats["knn_top_p_precision"]  # at most 29 of 40 can match
    json.dumps(stats)


def test_knn_strategy_equals_its_top_p_and_unknown_labels_are_left_out():
    features = F.normalize(torch.randn(60, 8, generator=torch.Generator().manual_seed(1)), dim=1)
    labels = torch.arange(60) % 4
    labels[:5] = -1
    result = select_positives(features, "knn", k=12, num_positives=4, backend="torch")
    stats = selection_diagnostics(result, labels)
    assert stats["knn_top_p_precision"] == stats["positive_precision"]
    assert stats["knn_top_p_labelled_pairs"] == stats["labelled_pairs"] < 60 * 4


def test_report_shows_the_top_p_precision_beside_the_positives(tmp_path, monkeypatch):
    history = [{"epoch": 1, "loss": 5.0, "epoch_seconds": 1.0},
               {"epoch": 2, "loss": 4.0, "epoch_seconds": 1.0, "selection": {
                   "positive_precision": 0.772, "knn_top_p_precision": 0.794, "knn_precision": 0.762}}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    drawn = {}
    monkeypatch.setattr(report, "_plot", lambda path, *args, **kwargs: drawn.setdefault(path.name, args))
    text = report.write_report(tmp_path).read_text()
    _, _, series = drawn["positive_precision.png"]
    assert series == {"positives": ([2], [0.772]),
                      "P nearest kNN neighbours (P = method.num_positives)": ([2], [0.794]),
                      "all k kNN neighbours (method.knn_k)": ([2], [0.762])}
    header = next(line for line in text.splitlines() if line.startswith("| epoch | positive_precision"))
    assert header.startswith("| epoch | positive_precision | knn_top_p_precision | knn_precision |")
    assert "`knn_top_p_precision` of the same number of nearest neighbours" in text
