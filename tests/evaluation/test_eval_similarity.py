import itertools

import pytest
import torch
import torch.nn.functional as F

from clim.evaluation.similarity import intra_class_similarity


def _mean_cosine(rows):
    pairs = [F.cosine_similarity(a, b, dim=0).item() for a, b in itertools.permutations(rows, 2)]
    return sum(pairs) / len(pairs)


def test_against_hand_computation():
    gen = torch.Generator().manual_seed(1)
    feats = (torch.randn(9, 5, generator=gen) * torch.rand(9, 1, generator=gen) * 4).double()
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    result = intra_class_similarity(feats, labels)
    per_class = {c: _mean_cosine(feats[labels == c]) for c in (0, 1, 2)}
    for c, value in per_class.items():
        assert result["per_class"][c] == pytest.approx(value, abs=1e-9)
    assert result["intra_class_similarity"] == pytest.approx(sum(per_class.values()) / 3, abs=1e-9)
    assert result["all_pairs_similarity"] == pytest.approx(_mean_cosine(feats), abs=1e-9)


def test_identical_members_give_one_and_singletons_and_unlabelled_are_skipped():
    feats = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    labels = torch.tensor([0, 0, 1, -1])
    result = intra_class_similarity(feats, labels)
    assert result["per_class"] == {0: pytest.approx(1.0)}
    assert result["intra_class_similarity"] == pytest.approx(1.0)
    assert result["all_pairs_similarity"] == pytest.approx(1.0 / 3)  # pairs (0,1)=1, (0,2)=0, (1,2)=0
