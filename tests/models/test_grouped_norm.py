"""GroupedBatchNorm (split-BN as one op) against per-(chunk, group) F.batch_norm, and its bf16 precision."""

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
