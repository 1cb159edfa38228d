"""The MoCo core (METHOD §1): momentum update, queue ring buffer, split-batch BN, key order."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clim.models.moco import MoCo, SplitBatchNorm2d


@pytest.fixture(scope="module")
def moco():
    torch.manual_seed(0)
    return MoCo("resnet10", in_channels=1, small_stem=True, head_dim=4, queue_size=10, momentum=0.9,
                bn_splits=4)


def test_momentum_update_formula(moco):
    with torch.no_grad():
        for p in moco.encoder_q.parameters():
            p.add_(torch.randn_like(p))  # query and key encoders now differ
    before_k = [p.clone() for p in moco.encoder_k.parameters()]
    q = [p.clone() for p in moco.encoder_q.parameters()]
    moco.momentum_update()
    for k0, qi, k1 in zip(before_k, q, moco.encoder_k.parameters()):
        torch.testing.assert_close(k1, 0.9 * k0 + 0.1 * qi)
    assert not any(p.requires_grad for p in moco.encoder_k.parameters())
    assert all(torch.equal(a, b) for a, b in zip(q, moco.encoder_q.parameters()))  # q untouched


def test_initial_buffers(moco):
    assert moco.queue.shape == (10, 4)
    torch.testing.assert_close(moco.queue.norm(dim=1), torch.ones(10))
    assert {"queue", "queue_ptr"} <= set(moco.state_dict())
    assert "positives" not in moco.state_dict()  # CLIM's table is a PositiveBank of its own (issue 18)


def test_queue_wraps_around_with_batches_not_dividing_k(moco):
    moco.queue_ptr.zero_()
    batches = [torch.full((4, 4), float(i + 1)) + torch.arange(4.0).view(4, 1) / 10 for i in range(3)]
    moco.enqueue(batches[0])
    assert int(moco.queue_ptr) == 4
    torch.testing.assert_close(moco.queue[:4], batches[0])
    moco.enqueue(batches[1])
    assert int(moco.queue_ptr) == 8
    moco.enqueue(batches[2])  # slots 8, 9, then 0, 1: the oldest keys are overwritten
    assert int(moco.queue_ptr) == 2
    expected = torch.cat([batches[2][2:], batches[0][2:], batches[1], batches[2][:2]])
    torch.testing.assert_close(moco.queue, expected)
    big = torch.arange(13 * 4, dtype=torch.float).view(13, 4)  # more keys than K: the newest K stay
    moco.enqueue(big)
    assert int(moco.queue_ptr) == 2  # (2 + 10) % 10
    assert sorted(moco.queue[:, 0].tolist()) == sorted(big[3:, 0].tolist())


def _reference_split_bn(x, bn, splits):
    """Group b = samples b, b + s, b + 2s, ... normalised alone; running stats = mean of group updates."""
    out = torch.empty_like(x)
    means, variances = [], []
    for b in range(splits):
        mean, var = bn.running_mean.clone(), bn.running_var.clone()
        out[b::splits] = F.batch_norm(x[b::splits], mean, var, bn.weight, bn.bias, True, bn.momentum, bn.eps)
        means.append(mean)
        variances.append(var)
    return out, torch.stack(means).mean(0), torch.stack(variances).mean(0)


def _random_split_bn(channels, splits):
    """A SplitBatchNorm2d with random affine parameters and running statistics."""
    bn = SplitBatchNorm2d(channels, num_splits=splits)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
    return bn


@pytest.mark.parametrize("batch, splits, used", [(8, 4, 4), (12, 8, 6), (6, 4, 3), (7, 4, 1)])
def test_split_batch_norm_normalises_each_group_alone(batch, splits, used):
    torch.manual_seed(batch)
    bn = _random_split_bn(3, splits)
    x = torch.randn(batch, 3, 5, 5) * torch.tensor([1.0, 3.0, 0.5]).view(1, 3, 1, 1) + 2
    expected, mean, var = _reference_split_bn(x, bn, used)
    out = bn(x)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_mean, mean)
    torch.testing.assert_close(bn.running_var, var)
    assert int(bn.num_batches_tracked) == 1
    if used > 1:  # really per group: whole-batch BN would give something else
        whole = F.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.1, bn.eps)
        assert not torch.allclose(out, whole, atol=1e-3)


@pytest.mark.parametrize("batch, splits", [(8, 4), (12, 8), (16, 2)])
def test_split_batch_norm_channels_last_equals_per_group_bn_with_gradients(batch, splits):
    """The layout-keeping path (channels-last input) against per-group F.batch_norm: output, input,
    weight and bias gradients, running statistics; and it never changes the memory layout."""
    torch.manual_seed(batch + splits)
    bn = _random_split_bn(4, splits)
    reference = SplitBatchNorm2d(4, num_splits=splits)
    reference.load_state_dict(bn.state_dict())
    used = max(d for d in range(1, splits + 1) if batch % d == 0)
    x = torch.randn(batch, 4, 5, 3) * torch.tensor([1.0, 3.0, 0.5, 2.0]).view(1, 4, 1, 1) + 1.5
    x_ref = x.clone().requires_grad_(True)
    x_cl = x.clone().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    expected, mean, var = _reference_split_bn(x_ref, reference, used)
    out = bn(x_cl)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_mean, mean)
    torch.testing.assert_close(bn.running_var, var)
    assert int(bn.num_batches_tracked) == 1
    grad = torch.randn_like(expected)
    (expected * grad).sum().backward()
    (out * grad).sum().backward()
    torch.testing.assert_close(x_cl.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.weight.grad, reference.weight.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.bias.grad, reference.bias.grad, rtol=1e-4, atol=1e-5)


def test_split_batch_norm_eval_and_state_dict_are_plain_batch_norm():
    split, plain = SplitBatchNorm2d(3, num_splits=4), nn.BatchNorm2d(3)
    assert set(split.state_dict()) == set(plain.state_dict())
    with torch.no_grad():
        split.running_mean.normal_()
        split.running_var.uniform_(0.5, 2)
    plain.load_state_dict(split.state_dict())
    split.eval(), plain.eval()
    x = torch.randn(8, 3, 4, 4)
    torch.testing.assert_close(split(x), plain(x))


def test_moco_uses_split_bn_everywhere(moco):
    bns = [m for m in moco.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(isinstance(m, SplitBatchNorm2d) and m.num_splits == 4 for m in bns)


def test_encode_key_returns_original_order():
    torch.manual_seed(1)
    model = MoCo("resnet10", in_channels=1, small_stem=True, queue_size=16, bn_splits=1)
    x = torch.randn(16, 1, 8, 8)
    model.train()
    keys = model.encode_key(x)  # shuffled internally; whole-batch BN is order-free
    assert keys.shape == (16, 128) and not keys.requires_grad
    torch.testing.assert_close(keys.norm(dim=1), torch.ones(16))
    with torch.no_grad():
        direct = F.normalize(model.encoder_k(x), dim=1)
    torch.testing.assert_close(keys, direct, rtol=1e-4, atol=1e-5)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.encode_key(x), F.normalize(model.encoder_k(x), dim=1))


def test_encode_key_shuffles_split_bn_groups():
    torch.manual_seed(2)
    model = MoCo("resnet10", in_channels=1, small_stem=True, queue_size=16, bn_splits=4).train()
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        unshuffled = F.normalize(model.encoder_k(x), dim=1)
    keys = model.encode_key(x)
    # Same images, other BN groups: close (same samples per row) but not equal (groups changed).
    assert torch.nn.functional.cosine_similarity(keys, unshuffled).min() > 0.5
    assert not torch.allclose(keys, unshuffled, atol=1e-6)


def test_encode_query_has_gradient_and_unit_norm(moco):
    q = moco.encode_query(torch.randn(8, 1, 8, 8))
    assert q.shape == (8, 4) and q.requires_grad
    torch.testing.assert_close(q.norm(dim=1), torch.ones(8), rtol=1e-5, atol=1e-5)


def test_batched_views_equal_one_view_at_a_time():
    """encode_queries / encode_keys with batch_views (one forward for same-shaped views, each with its
    own BN groups and running-stat updates) equal encoding every view alone: outputs, gradients,
    running statistics."""
    import copy

    torch.manual_seed(0)
    model = MoCo("resnet10", in_channels=3, small_stem=True, queue_size=16, bn_splits=2).train()
    model.to(memory_format=torch.channels_last)
    alone = copy.deepcopy(model)
    model.batch_views = True
    views = [torch.randn(16, 3, 16, 16).contiguous(memory_format=torch.channels_last) for _ in range(3)]
    torch.manual_seed(1)
    batched_q, batched_k = model.encode_queries(views), model.encode_keys(views)
    torch.manual_seed(1)
    alone_q, alone_k = alone.encode_queries(views), alone.encode_keys(views)
    for a, b in zip(batched_q + batched_k, alone_q + alone_k):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    weights = torch.randn(3, 16, 128)
    sum((q * w).sum() for q, w in zip(batched_q, weights)).backward()
    sum((q * w).sum() for q, w in zip(alone_q, weights)).backward()
    for (name, p), q in zip(model.encoder_q.named_parameters(), alone.encoder_q.parameters()):
        # float32 sums in another order: compare relative to the gradient's scale
        assert (p.grad - q.grad).abs().max() <= 1e-4 * q.grad.abs().max(), name
    buffers = dict(alone.named_buffers())
    for name, buffer in model.named_buffers():
        if "running" in name or "num_batches" in name:
            torch.testing.assert_close(buffer, buffers[name], rtol=1e-5, atol=1e-6, msg=name)
    # and the views really differ in BN statistics: one whole-batch BN would give other outputs
    model.set_bn_splits(1)
    whole = model.encode_query(torch.cat(views))
    assert not torch.allclose(whole[:16], alone_q[0], atol=1e-3)
