"""clim.PositiveBank (issue 18): the positives table as a module, with METHOD's defaults only."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

import clim
from clim.method.positives import checkpoint_model_state, load_checkpoint_model_state


def tight_clusters(n=600, clusters=10, d=32, seed=0):
    """``n`` unit features in ``clusters`` tight clusters; returns (features, cluster of each)."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(clusters, d, generator=g), dim=1)
    cluster = torch.arange(n) % clusters
    return F.normalize(centres[cluster] + 0.05 * torch.randn(n, d, generator=g), dim=1), cluster


def test_the_done_when_of_issue_18():
    """The issue's bar: defaults only, positives mostly same-cluster, state_dict round trip, mixing
    and both losses (no queue) through ``import clim``."""
    features, cluster = tight_clusters()
    bank = clim.PositiveBank(num_samples=600)
    diagnostics = bank.refresh(features, labels=cluster)
    assert bank.num_clusters == 6 and bank.k == 40 and bank.num_positives == 10  # N/100, k, P of METHOD §2
    assert diagnostics["positive_precision"] > 0.95 and bank.table.dtype == torch.long

    index = torch.arange(0, 600, 7)
    positives = bank.sample(index, torch.Generator().manual_seed(1))
    assert positives.shape == index.shape and positives.dtype == torch.long
    assert (cluster[positives] == cluster[index]).float().mean() > 0.95
    assert not bool((positives == index).any())

    restored = clim.PositiveBank(num_samples=600)
    restored.load_state_dict(bank.state_dict())
    assert torch.equal(restored.table, bank.table)
    assert torch.equal(restored.sample(index, torch.Generator().manual_seed(1)), positives)

    anchors, others = torch.rand(2, 4, 3, 16, 16).unbind(0)
    mixed, lam = clim.cutmix(anchors, others)
    assert mixed.shape == anchors.shape and lam.shape == (4,) and bool(((lam >= 0) & (lam <= 1)).all())
    q, k, kt = (torch.randn(4, 8) for _ in range(3))  # raw head outputs: normalised by the losses
    assert torch.isfinite(clim.mixed_info_nce(q, k, kt, lam=lam)) and torch.isfinite(clim.info_nce(q, k))


def test_a_bank_that_cannot_work_is_refused_when_built():
    with pytest.raises(ValueError, match="more than k = 40"):
        clim.PositiveBank(num_samples=40)
    with pytest.raises(ValueError, match="unknown strategy"):
        clim.PositiveBank(num_samples=100, strategy="centre_wise")


def test_sample_before_any_refresh_is_an_error():
    bank = clim.PositiveBank(num_samples=100)
    with pytest.raises(RuntimeError, match="refresh"):
        bank.sample(torch.arange(4))
    bank.load_state_dict({"table": torch.full((100, 10), -1)})  # an unfilled table stays unfilled
    assert not bank.filled


def test_refresh_from_embeds_in_index_order_with_the_items_labels():
    features, cluster = tight_clusters(n=200, clusters=4, d=8)
    encoder = torch.nn.Linear(8, 8)
    with torch.no_grad():
        encoder.weight.copy_(torch.eye(8))
        encoder.bias.zero_()
    bank = clim.PositiveBank(num_samples=200)
    diagnostics = bank.refresh_from(encoder, TensorDataset(features, cluster), batch_size=64, seed=3)
    assert diagnostics["labelled_pairs"] == 200 * 10 and diagnostics["positive_precision"] == 1.0
    direct = clim.PositiveBank(num_samples=200)
    direct.refresh(features, seed=3)
    assert torch.equal(direct.table, bank.table)  # the same features, in the same order
    assert "positive_precision" not in direct.refresh(features, seed=4)  # no labels given


def test_a_checkpoint_of_the_int32_era_loads():
    """Checkpoints written before issue 18 kept an int32 table as the model's buffer "positives"."""
    model = torch.nn.Linear(2, 2)
    old_table = torch.randint(0, 100, (100, 10), dtype=torch.int32)
    state = {**model.state_dict(), "positives": old_table}
    bank = clim.PositiveBank(num_samples=100)
    load_checkpoint_model_state(model, bank, state)
    assert bank.filled and bank.table.dtype == torch.long and torch.equal(bank.table, old_table.long())
    assert torch.equal(checkpoint_model_state(model, bank)["positives"], bank.table)
    load_checkpoint_model_state(torch.nn.Linear(2, 2), None, state)  # evaluation: the table is not needed
    with pytest.raises(ValueError, match="shape"):
        load_checkpoint_model_state(model, clim.PositiveBank(num_samples=50), state)
