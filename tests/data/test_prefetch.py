"""Making the next batch ahead of the step (clim.data.pipeline.prefetched) changes no batch and no random draw."""

import pytest
import torch

from clim.data.pipeline import build_pipeline, prefetched
from clim.method.mixing import cutmix
from clim.specs import loader_spec, view_spec

CPU = torch.device("cpu")


def _table(n, p=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randperm(n - 1, generator=g)[:p] for _ in range(n)]
    return torch.stack([r + (r >= i).long() for i, r in enumerate(rows)])


def _consume(batches):
    """What a step sees: every tensor of the batch, plus its own draws from batch["generator"]
    (CutMix on the first query view), made *after* the next batch has been produced when prefetched."""
    seen = []
    for batch in batches:
        record = {k: v for k, v in batch.items() if k != "generator"}
        record["mixed"], record["lam"] = cutmix(batch["query"][0], batch["positive_query"][0], 2.0,
                                                generator=batch["generator"])
        seen.append(record)
    return seen


def _equal(a, b):
    if isinstance(a, dict):  # the resume point: the next step and the views generator's state
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, int):
        return a == b
    if isinstance(a, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if a is None or b is None:
        return a is None and b is None
    return torch.equal(a, b)


@pytest.mark.parametrize("kind", ["batched", "loader", "device"])
def test_prefetched_batches_equal_plain_batches(kind, subset_builder, tiny_config):
    digits = subset_builder("digits", None, "pretrain")
    config = tiny_config("data.num_workers=0", "method.resolutions=[8,6]", clim=True)
    table = _table(len(digits))
    pipeline = build_pipeline(digits, view_spec(config, 8), loader_spec(config), CPU, augment=kind)
    plain = _consume(pipeline.epoch(1, table))
    ahead = _consume(prefetched(pipeline.epoch(1, table), CPU))
    assert len(plain) == len(ahead) == len(pipeline) > 1
    for first, second in zip(plain, ahead):
        assert first.keys() == second.keys()
        assert all(_equal(first[k], second[k]) for k in first), kind
    # and the draws really depend on the step: another epoch gives other boxes
    other = _consume(pipeline.epoch(2, table))
    assert not torch.equal(other[0]["lam"], plain[0]["lam"])


def test_prefetched_makes_the_next_batch_before_handing_out_the_current_one():
    made = []

    def batches():
        for i in range(3):
            made.append(i)
            yield {"index": torch.tensor([i])}

    handed = []
    for batch in prefetched(batches(), CPU):
        handed.append((int(batch["index"]), list(made)))
    assert handed == [(0, [0, 1]), (1, [0, 1, 2]), (2, [0, 1, 2])]
