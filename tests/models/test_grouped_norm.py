"""GroupedBatchNorm (split-BN as one op) against per-(chunk, group) F.batch_norm, and its bf16 precision."""

import contextlib

import pytest
import torch
import torch.nn.functional as F

from clim.models.grouped_norm import GroupedBatchNorm, grouped_batch_norm
from clim.models.moco import SplitBatchNorm2d


def _per_group_reference(x, weight, bias, running_mean, running_var, groups, chunks, momentum=0.1, eps=1e-5):
    """Chunk after chunk, group ``g`` of a chunk (its samples ``g::groups``) through F.batch_norm alone;
    the running statistics after each chunk = the mean of its groups' updates."""
    out = torch.empty_like(x)
    size = x.shape[0] // chunks
    for chunk in range(chunks):
        means, variances = [], []
        for group in range(groups):
            rows = slice(chunk * size + group, (chunk + 1) * size, groups)
            mean, var = running_mean.clone(), running_var.clone()
            out[rows] = F.batch_norm(x[rows], mean, var, weight, bias, True, momentum, eps)
            means.append(mean)
            variances.append(var)
        running_mean, running_var = torch.stack(means).mean(0), torch.stack(variances).mean(0)
    return out, running_mean, running_var


@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
def test_forward_gradients_and_running_stats_equal_per_group_batch_norm_in_float64(layout):
    torch.manual_seed(0)
    groups, chunks, channels = 2, 3, 3
    x = (torch.randn(12, channels, 3, 2, dtype=torch.float64) * 2 + 1.5).contiguous(memory_format=layout)
    weight = torch.rand(channels, dtype=torch.float64) + 0.5
    bias = torch.randn(channels, dtype=torch.float64)
    running = (torch.randn(channels, dtype=torch.float64), torch.rand(channels, dtype=torch.float64) + 0.5)
    mine = [t.clone() for t in running]
    out = GroupedBatchNorm.apply(x, weight, bias, *mine, groups, chunks, 0.1, 1e-5)
    expected, mean, var = _per_group_reference(x, weight, bias, *running, groups, chunks)
    torch.testing.assert_close(out, expected)
    assert out.dtype == x.dtype and out.stride() == x.stride()
    torch.testing.assert_close(mine[0], mean)
    torch.testing.assert_close(mine[1], var)

    inputs = [t.clone().requires_grad_(True) for t in (x, weight, bias)]
    assert torch.autograd.gradcheck(
        lambda *args: GroupedBatchNorm.apply(*args, None, None, groups, chunks, 0.1, 1e-5), inputs)
    grad = torch.randn_like(expected)
    GroupedBatchNorm.apply(*inputs, None, None, groups, chunks, 0.1, 1e-5).backward(grad)
    reference_inputs = [t.clone().requires_grad_(True) for t in (x, weight, bias)]
    _per_group_reference(*reference_inputs, *running, groups, chunks)[0].backward(grad)
    for got, want in zip(inputs, reference_inputs):
        torch.testing.assert_close(got.grad, want.grad)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])  # gpu_check.sh runs the cuda ones


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mean_over_std", [2.0, 13.0])
def test_bfloat16_error_is_that_of_one_rounding(mean_over_std, device):
    """bf16 input: within 1.5x of the exact per-group result rounded once to bf16 (what a float32-
    internal BN such as cuDNN's gives). Reducing and applying scale / shift in bf16 was 4x and 28x."""
    torch.manual_seed(1)
    x = ((torch.randn(64, 8, 8, 8) + mean_over_std) * 0.7).bfloat16().contiguous(memory_format=torch.channels_last)
    bn = SplitBatchNorm2d(8, num_splits=8).to(device)
    bn.chunks = 2
    out = bn(x.to(device)).cpu()
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
    ones, zeros = torch.ones(8, dtype=torch.float64), torch.zeros(8, dtype=torch.float64)
    exact = _per_group_reference(x.double(), ones, zeros, zeros.clone(), ones.clone(), 8, 2)[0]
    error = (out.double() - exact).abs().mean()
    one_rounding = (exact.bfloat16().double() - exact).abs().mean()
    assert error <= 1.5 * one_rounding, (float(error), float(one_rounding))


def test_module_path_keeps_running_stats_and_layout_under_autograd():
    torch.manual_seed(2)
    bn = SplitBatchNorm2d(4, num_splits=2)
    bn.chunks = 2
    x = torch.randn(8, 4, 3, 3).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    out = bn(x)
    out.square().sum().backward()
    assert x.grad.is_contiguous(memory_format=torch.channels_last)
    assert int(bn.num_batches_tracked) == 2 and bn.weight.grad is not None
    plain = torch.nn.BatchNorm2d(4, track_running_stats=False)
    no_stats = grouped_batch_norm(x.detach(), plain, 2, 2)
    torch.testing.assert_close(no_stats, out.detach(), rtol=1e-4, atol=1e-5)


def test_traces_without_graph_breaks():
    """torch.compile (train.compile) sees the op whole: no graph break inside split-BN."""
    bn = SplitBatchNorm2d(4, num_splits=2)
    bn.chunks = 2
    x = torch.randn(8, 4, 3, 3).contiguous(memory_format=torch.channels_last)
    assert torch._dynamo.explain(bn)(x).graph_break_count == 0


def _norms_and_inputs():
    """Split-BN layers of different widths, chunk counts and spatial sizes (so n/(n-1) differs), with
    their channels-last training inputs."""
    torch.manual_seed(3)
    shapes = [(4, 2, 2, 3), (6, 3, 2, 2), (3, 2, 3, 1), (5, 2, 2, 3)]  # channels, splits, chunks, size
    norms, inputs = [], []
    for channels, splits, chunks, size in shapes:
        bn = SplitBatchNorm2d(channels, num_splits=splits, momentum=0.1 + 0.05 * chunks)
        bn.chunks = chunks
        with torch.no_grad():
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
        norms.append(bn)
        x = torch.randn(splits * chunks * 2, channels, size, size + 1) * 3 + 1
        inputs.append(x.contiguous(memory_format=torch.channels_last))
    return norms, inputs


def test_deferred_running_stats_leave_the_buffers_as_per_layer_updates_do():
    from clim.models.grouped_norm import deferred_running_stats

    now, inputs = _norms_and_inputs()
    deferred, _ = _norms_and_inputs()
    order = [0, 1, 2, 3, 1]  # layer 1 twice: its updates do not commute with each other
    for i in order:
        now[i](inputs[i])
    with deferred_running_stats():
        outputs = [deferred[i](inputs[i]) for i in order]
        # the repeat applied what was held before it; layer 1's second update waits for the block's end
        assert int(deferred[1].num_batches_tracked) == deferred[1].chunks
    for i, (a, b) in enumerate(zip(now, deferred)):
        torch.testing.assert_close(b.running_mean, a.running_mean)
        torch.testing.assert_close(b.running_var, a.running_var)
        assert int(b.num_batches_tracked) == int(a.num_batches_tracked) == a.chunks * order.count(i)
    for i, out in zip(order, outputs):
        torch.testing.assert_close(out, now[i](inputs[i]))


def test_deferred_running_stats_cost_a_fixed_number_of_ops_whatever_the_depth():
    from clim.models.grouped_norm import deferred_running_stats
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops += not func.is_view
            return func(*args, **(kwargs or {}))

    def ops(depth, deferred):
        x = torch.randn(8, 4, 3, 3).contiguous(memory_format=torch.channels_last)
        norms = []
        for _ in range(depth):
            norms.append(SplitBatchNorm2d(4, num_splits=2))
            norms[-1].chunks = 2
        for _ in range(2):  # the first pass builds the cached weights and factors
            with Count() as count:
                with deferred_running_stats() if deferred else contextlib.nullcontext():
                    for bn in norms:
                        bn(x)
        return count.ops

    per_layer_now = ops(3, False) - ops(2, False)
    per_layer_deferred = ops(3, True) - ops(2, True)
    assert per_layer_now - per_layer_deferred == 3  # two addmv_ and the counter's add_ per layer
    assert ops(1, True) - per_layer_deferred == 6  # the block's end: cat, mv, mul_ and three _foreach_


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_reusing_the_input_changes_no_output_or_gradient(dtype):
    """reuse_input writes the output over the convolution's output it normalises: same values, same
    gradients for the convolution before it and for the BN's affine parameters, one tensor fewer."""
    torch.manual_seed(4)
    images = torch.randn(8, 3, 5, 5, dtype=torch.float64).to(dtype).contiguous(memory_format=torch.channels_last)
    results = []
    for reuse in (False, True):
        torch.manual_seed(5)
        conv = torch.nn.Conv2d(3, 4, 3, padding=1).to(dtype).to(memory_format=torch.channels_last)
        bn = SplitBatchNorm2d(4, num_splits=2, reuse_input=reuse).to(dtype)
        bn.chunks = 2
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5)
        features = conv(images)
        out = torch.relu_(bn(features))
        assert (out.data_ptr() == features.data_ptr()) == reuse
        out.float().square().sum().backward()
        results.append([out.detach(), conv.weight.grad, conv.bias.grad, bn.weight.grad, bn.bias.grad,
                        bn.running_mean, bn.running_var])
    for plain, reused in zip(*results):
        torch.testing.assert_close(reused, plain, rtol=0, atol=0)


def test_a_leaf_that_requires_grad_is_never_overwritten():
    x = torch.randn(8, 4, 3, 3).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    before = x.detach().clone()
    bn = SplitBatchNorm2d(4, num_splits=2, reuse_input=True)
    bn.chunks = 2
    bn(x).sum().backward()
    assert torch.equal(x.detach(), before) and x.grad is not None


@pytest.mark.parametrize("device", DEVICES)
def test_deferred_running_stats_stay_float32_under_autocast(device):
    """The end-of-block update runs with autocast off: CUDA autocast would run its mv in bf16 and
    leave the running statistics ~3 digits exact (the per-layer addmv_ it replaces is never cast)."""
    from clim.models.grouped_norm import deferred_running_stats

    norms, inputs = _norms_and_inputs()
    reference, _ = _norms_and_inputs()
    for bn, x in zip(reference, inputs):
        bn(x)
    norms = [bn.to(device) for bn in norms]
    with torch.autocast(device, dtype=torch.bfloat16), deferred_running_stats():
        for bn, x in zip(norms, inputs):
            bn(x.to(device))
    for got, want in zip(norms, reference):
        assert got.running_mean.dtype == torch.float32
        torch.testing.assert_close(got.running_mean.cpu(), want.running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got.running_var.cpu(), want.running_var, rtol=1e-5, atol=1e-6)
