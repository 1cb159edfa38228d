"""The training data path (docs/ARCHITECTURE.md): the per-step dict of both pipelines, per-epoch
seeding, multi-resolution views, positives drawn from the table, DDP sharding."""

import pytest
import torch
import torch.nn.functional as F

from clim.data.pipeline import build_pipeline
from clim.data.views import draw_positives
from clim.specs import loader_spec, view_spec

CPU = torch.device("cpu")
KEYS = {"index", "label", "generator", "query", "key", "positive_index", "positive_query", "positive_key",
        "small_crops", "resume"}


@pytest.fixture(scope="module")
def digits(subset_builder):
    return subset_builder("digits", None, "pretrain")  # 256 images, 1 x 8 x 8


def _table(n, p=10, seed=0):
    """A positives table: p distinct indices per row, never the row itself."""
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randperm(n - 1, generator=g)[:p] for _ in range(n)]
    return torch.stack([r + (r >= i).long() for i, r in enumerate(rows)])


def _pipeline(kind, digits, tiny_config, *overrides, rank=0, world_size=1):
    config = tiny_config(*overrides, clim=True)
    return build_pipeline(digits, view_spec(config, 8), loader_spec(config, world_size), CPU, rank, augment=kind)


def _first(pipeline, epoch=0, table=None, steps=1):
    batches = []
    for batch in pipeline.epoch(epoch, table):
        batches.append(batch)
        if len(batches) == steps:
            return batches


def _same(a, b):
    def eq(x, y):
        if isinstance(x, list):
            return len(x) == len(y) and all(eq(u, v) for u, v in zip(x, y))
        return (x is None and y is None) or (x is not None and y is not None and torch.equal(x, y))
    return all(eq(a[k], b[k]) for k in KEYS - {"generator", "resume"})


@pytest.mark.parametrize("kind", ["batched", "loader"])
def test_batch_dict_shapes_largest_resolution_first(kind, digits, tiny_config):
    pipeline = _pipeline(kind, digits, tiny_config, "method.resolutions=[6,8]")
    assert len(pipeline) == 4
    (batch,) = _first(pipeline)
    assert set(batch) == KEYS
    assert batch["index"].dtype == torch.long and batch["index"].shape == (64,)
    assert torch.equal(batch["label"], digits.labels[batch["index"]])
    for name in ("query", "key"):
        views = batch[name]
        assert [tuple(v.shape) for v in views] == [(64, 1, 8, 8), (64, 1, 6, 6)]
        assert views[0].dtype == torch.float32
        # Same crop at both resolutions: the small view is the antialiased resize of the large one.
        resized = F.interpolate(views[0], size=(6, 6), mode="bilinear", antialias=True, align_corners=False)
        torch.testing.assert_close(views[1], resized)
    assert not torch.equal(batch["query"][0], batch["key"][0])  # two independent augmentations
    assert all(batch[k] is None for k in ("positive_index", "positive_query", "positive_key", "small_crops"))


@pytest.mark.parametrize("kind", ["batched", "loader"])
def test_positives_come_from_the_table_rows(kind, digits, tiny_config):
    table = _table(len(digits))
    (batch,) = _first(_pipeline(kind, digits, tiny_config), table=table)
    positive = batch["positive_index"]
    assert positive.shape == (64,)
    rows = table[batch["index"]].long()
    assert bool((rows == positive.unsqueeze(1)).any(1).all())
    assert [tuple(v.shape) for v in batch["positive_key"]] == [(64, 1, 8, 8)]
    assert [tuple(v.shape) for v in batch["positive_query"]] == [(64, 1, 8, 8)]
    (plain,) = _first(_pipeline(kind, digits, tiny_config, "method.mixing=none"), table=table)
    assert plain["positive_query"] is None and plain["positive_key"] is not None  # no mixing: no mixed query


@pytest.mark.parametrize("kind", ["batched", "loader"])
def test_same_epoch_same_batches_other_epoch_differs(kind, digits, tiny_config):
    pipeline = _pipeline(kind, digits, tiny_config)
    table = _table(len(digits))
    a, b = _first(pipeline, 3, table, steps=2), _first(pipeline, 3, table, steps=2)
    assert all(_same(x, y) for x, y in zip(a, b))
    again = _first(_pipeline(kind, digits, tiny_config), 3, table, steps=2)  # a fresh pipeline too
    assert all(_same(x, y) for x, y in zip(a, again))
    other = _first(pipeline, 4, table, steps=2)
    assert not torch.equal(a[0]["index"], other[0]["index"])
    assert not torch.equal(a[0]["query"][0], other[0]["query"][0])


def test_loader_views_do_not_depend_on_num_workers(digits, tiny_config):
    table = _table(len(digits))
    (a,) = _first(_pipeline("loader", digits, tiny_config, "data.num_workers=0"), 2, table)
    (b,) = _first(_pipeline("loader", digits, tiny_config, "data.num_workers=1"), 2, table)
    assert _same(a, b)


@pytest.mark.parametrize("kind", ["batched", "loader"])
def test_ranks_get_disjoint_shards(kind, digits, tiny_config):
    shards = [torch.cat([b["index"] for b in _pipeline(kind, digits, tiny_config, rank=r, world_size=2).epoch(0)])
              for r in (0, 1)]
    assert all(len(s) == 128 for s in shards)  # 256 // (64 x 2) = 2 steps each
    both = torch.cat(shards)
    assert len(set(both.tolist())) == 256


def test_batched_epoch_visits_each_image_once(digits, tiny_config):
    indices = torch.cat([b["index"] for b in _pipeline("batched", digits, tiny_config).epoch(0)])
    assert sorted(indices.tolist()) == list(range(256))


def test_multicrop_small_views(digits, tiny_config):
    (batch,) = _first(_pipeline("batched", digits, tiny_config, "method.multicrop=true",
                                "method.multicrop_size=4"))
    assert [tuple(v.shape) for v in batch["small_crops"]] == [(64, 1, 4, 4)] * 2
    assert not torch.equal(batch["small_crops"][0], batch["small_crops"][1])


def test_draw_positives_uses_every_column():
    table = torch.arange(40).view(4, 10)
    index = torch.full((2000,), 2)
    drawn = draw_positives(table, index, torch.Generator().manual_seed(0))
    assert set(drawn.tolist()) == set(range(20, 30))


def test_build_pipeline_modes(digits, tiny_config):
    assert build_pipeline(digits, view_spec(tiny_config(), 8), loader_spec(tiny_config()), CPU).mode == "batched"
    assert build_pipeline(digits, view_spec(tiny_config("data.augment=loader"), 8), loader_spec(tiny_config("data.augment=loader")), CPU).mode == "loader"
    with pytest.raises(ValueError, match="no full batch"):
        build_pipeline(digits, view_spec(tiny_config("train.batch_size=512", "model.queue_size=512"), 8), loader_spec(tiny_config("train.batch_size=512", "model.queue_size=512")), CPU)
