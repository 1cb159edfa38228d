"""Split-batch BN for any memory layout as one autograd op with a hand-written backward (METHOD §1).

Split-BN needs statistics per (batch chunk, sample group, channel). For an NCHW batch with one chunk
that is one ``F.batch_norm`` call on the free ``[N/s, s·C, H, W]`` view (``SplitBatchNorm2d``'s other
path); for a channels-last batch, or several chunks, no view puts those three indices in one
dimension, and autograd through a composite costs ~40 small ops and ~14 passes over the activation
per layer. :class:`GroupedBatchNorm` is the composite done by hand: 4-5 activation-sized ops forward
and 6 backward, each keeping the input's layout.

Precision follows cuDNN's BN: statistics and the affine map in float32 (float64 for float64 input),
only the output rounded to the input's dtype (in bf16 they cancel catastrophically once the
activation's mean is large against its spread; benchmarks/op_count.py prints both errors).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from typing import NamedTuple

import torch
from torch import nn

_DIMS = (1, 4, 5)  # of the [chunks, per_group, groups, C, H, W] view: what one group's statistics reduce


class GroupedBatchNorm(torch.autograd.Function):
    """Training-mode BN of ``x`` [N, C, H, W] with per-(chunk, group, channel) statistics.

    Forward: one float32 copy of a low-precision input (reused in place as x̂), one ``var_mean``,
    x̂ = (x − μ)·σ⁻¹ in place, the output ``b + w·x̂`` written straight into a tensor of the input's
    dtype and layout, and the running statistics updated by two ``addmv_`` (all chunks at once), or,
    inside :func:`deferred_running_stats`, together with every other layer's at the block's end.
    Backward (x̂ saved in float32): with ḡ = Σg and ĝ = Σg·x̂ per group over its n values,
    ``dx = w·σ⁻¹·(g − (ḡ + ĝ·x̂)/n)``, ``dw = Σ ĝ``, ``db = Σ ḡ``."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, groups: int, chunks: int,
                momentum: float, eps: float, reuse_input: bool = False):
        n, c, h, w = x.shape
        per_group = n // (chunks * groups)
        view = x.view(chunks, per_group, groups, c, h, w)
        upcast = view.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
        var, mean = torch.var_mean(upcast, dim=_DIMS, correction=0, keepdim=True)  # [chunks, 1, groups, C, 1, 1]
        invstd = torch.rsqrt(var + eps)
        xhat = (upcast.sub_(mean) if upcast is not view else view - mean).mul_(invstd)  # in place if upcast
        # b + w·x̂ in float32, rounded once into a tensor of x's dtype and layout: x itself when the caller
        # says nothing else reads it (x̂ holds all the backward needs), else a fresh one (not a view: the
        # in-place ReLU after BN may not modify a custom Function's view output)
        reuse = reuse_input and not (x.is_leaf and x.requires_grad) and not torch.compiler.is_compiling()
        out = x if reuse else torch.empty_like(x)
        affine = bias.view(c, 1, 1), xhat, weight.view(c, 1, 1)
        if torch.compiler.is_compiling():  # dynamo refuses out= into a strided view; Inductor fuses the copy
            out.view(view.shape).copy_(torch.addcmul(*affine))
        else:
            torch.addcmul(*affine, out=out.view(view.shape))
        if reuse:
            ctx.mark_dirty(x)
        if running_mean is not None:
            _update_running_stats(running_mean, running_var, mean, var, chunks, groups, momentum, per_group * h * w)
        if any(ctx.needs_input_grad[:3]):
            ctx.save_for_backward(xhat, invstd, weight)
        ctx.count = per_group * h * w
        return out

    @staticmethod
    def backward(ctx, grad):
        xhat, invstd, weight = ctx.saved_tensors
        c = weight.shape[0]
        grad_view = grad.view(xhat.shape)
        grad_sum = torch.sum(grad_view, dim=_DIMS, keepdim=True, dtype=xhat.dtype)
        grad_xhat_sum = torch.sum(grad_view * xhat, dim=_DIMS, keepdim=True)
        grad_weight = grad_xhat_sum.sum((0, 2)).view(c)
        grad_bias = grad_sum.sum((0, 2)).view(c)
        scale = weight.view(c, 1, 1) * invstd
        centred = torch.add(grad_view, torch.addcmul(grad_sum, xhat, grad_xhat_sum), alpha=-1.0 / ctx.count)
        grad_input = (centred * scale).to(grad.dtype).view(grad.shape)  # g − (ḡ + ĝ·x̂)/n, times w·σ⁻¹
        return grad_input, grad_weight, grad_bias, None, None, None, None, None, None, None


_WEIGHTS: dict[tuple, torch.Tensor] = {}


def _chunk_weights(chunks: int, groups: int, momentum: float, like: torch.Tensor) -> torch.Tensor:
    """Weights of the (chunk, group) statistics in the running average (``like``'s device and dtype,
    built once): ``chunks`` momentum updates in turn, each with its chunk's mean over groups, are
    ``r ← (1 − m)^k·r + Σ w·s`` with ``w = m·(1 − m)^(k−1−i) / groups`` for chunk i."""
    key = (chunks, groups, momentum, like.device, like.dtype)
    if key not in _WEIGHTS:
        per_chunk = [momentum * (1.0 - momentum) ** (chunks - 1 - i) / groups for i in range(chunks)]
        _WEIGHTS[key] = torch.tensor(per_chunk, dtype=like.dtype).repeat_interleave(groups).to(like.device)
    return _WEIGHTS[key]


class _Update(NamedTuple):
    """One layer's held-back running-stat update (``mean`` / ``var`` [chunks, 1, groups, C, 1, 1], biased)."""
    running_mean: torch.Tensor
    running_var: torch.Tensor
    mean: torch.Tensor
    var: torch.Tensor
    chunks: int
    groups: int
    momentum: float
    unbias: float  # n / (n − 1): F.batch_norm keeps the unbiased variance


class _Pending(threading.local):
    """The running-stat updates and batch counters held back by this thread's innermost
    :func:`deferred_running_stats` block (``updates`` None outside one), and their buffers' ids."""
    updates: list | None = None
    counters: list | None = None
    buffers: set | None = None

    def hold(self, kind: str, buffer: torch.Tensor, entry: tuple) -> bool:
        """Hold ``entry`` back if a block is open (False if not). A buffer already held (a layer run twice
        in one block) first gets everything held applied: updates do not commute, and a multi-tensor op
        may not see one tensor twice."""
        if self.updates is None:  # (callers check torch.compiler.is_compiling() first)
            return False
        if (kind, id(buffer)) in self.buffers:
            self.apply()
        self.buffers.add((kind, id(buffer)))
        (self.updates if kind == "stats" else self.counters).append(entry)
        return True

    def apply(self) -> None:
        with torch.no_grad():
            if self.updates:
                _apply_running_stats(self.updates)
            for chunks in sorted({chunks for _, chunks in self.counters}):
                torch._foreach_add_([counter for counter, c in self.counters if c == chunks], chunks)
        self.updates, self.counters, self.buffers = [], [], set()


_PENDING = _Pending()


def _update_running_stats(running_mean, running_var, mean, var, chunks, groups, momentum, count) -> None:
    """``chunks`` momentum updates of the running statistics with each chunk's mean over its groups
    (see :class:`_Update`), now or at the end of the enclosing :func:`deferred_running_stats` block.
    Under ``torch.compile`` always now: Inductor fuses them."""
    unbias = count / max(1, count - 1)
    update = _Update(running_mean, running_var, mean, var, chunks, groups, momentum, unbias)
    if not torch.compiler.is_compiling() and _PENDING.hold("stats", running_mean, update):
        return
    c, decay = running_mean.shape[0], (1.0 - momentum) ** chunks
    weights = _chunk_weights(chunks, groups, momentum, running_mean)
    running_mean.addmv_(mean.view(chunks * groups, c).t().to(running_mean.dtype), weights, beta=decay)
    running_var.addmv_(var.view(chunks * groups, c).t().to(running_var.dtype), weights, beta=decay, alpha=unbias)


@contextlib.contextmanager
def deferred_running_stats():
    """Within the block, split-BN layers (:func:`grouped_batch_norm`) hold back their running-stat and
    ``num_batches_tracked`` updates; the block's end applies them all in six ops instead of three per
    layer (one concatenation of the statistics, one matrix-vector product with the chunk weights, one
    multiply by the variance's n/(n−1), two multi-tensor updates ``r ← (1 − m)^k·r + update``, one of
    the counters). The buffers end as the per-layer updates would leave them (to float rounding);
    nothing reads them inside the block (training-mode BN uses batch statistics). An exception drops
    the updates still held, as an interrupted forward pass leaves some layers un-updated. ``MoCo``
    encodes every batch inside one: 54 fewer kernel launches per ResNet-18 forward on a GPU. Blocks
    nest; the inner one applies its own layers' updates."""
    outer = _PENDING.updates, _PENDING.counters, _PENDING.buffers
    _PENDING.updates, _PENDING.counters, _PENDING.buffers = [], [], set()
    try:
        yield
        _PENDING.apply()
    finally:
        _PENDING.updates, _PENDING.counters, _PENDING.buffers = outer


def _apply_running_stats(updates: list) -> None:
    """The pending updates, batched per (chunks, groups, momentum, buffer dtype and device)."""
    batches: dict[tuple, list[_Update]] = {}
    for u in updates:
        key = (u.chunks, u.groups, u.momentum, u.running_mean.dtype, u.running_mean.device)
        batches.setdefault(key, []).append(u)
    for (chunks, groups, momentum, dtype, device), batch in batches.items():
        rows = chunks * groups
        stats = torch.cat([s.view(rows, -1) for u in batch for s in (u.mean, u.var)], dim=1)
        with _no_autocast(device):  # CUDA autocast runs mv in bf16 / fp16 (the in-place addmv_ it replaces
            # was never cast): running statistics stay float32
            target = torch.mv(stats.t().to(dtype), _chunk_weights(chunks, groups, momentum, batch[0].running_mean))
        target.mul_(_value_factors(tuple((u.running_mean.shape[0], u.unbias) for u in batch), dtype, device))
        buffers = [buffer for u in batch for buffer in (u.running_mean, u.running_var)]
        torch._foreach_mul_(buffers, (1.0 - momentum) ** chunks)
        torch._foreach_add_(buffers, list(target.split([b.shape[0] for b in buffers])))


def _no_autocast(device: torch.device):
    available = getattr(torch.amp, "is_autocast_available", lambda kind: kind in ("cpu", "cuda"))
    return torch.autocast(device.type, enabled=False) if available(device.type) else contextlib.nullcontext()


@functools.cache
def _value_factors(layers: tuple[tuple[int, float], ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """1 per mean, n/(n−1) per variance of each ``(channels, n/(n−1))``, in :func:`_apply_running_stats`' order."""
    return torch.cat([torch.full((c,), value, dtype=dtype) for c, unbias in layers for value in (1, unbias)]).to(device)


def grouped_batch_norm(x: torch.Tensor, bn: nn.BatchNorm2d, groups: int, chunks: int = 1,
                       reuse_input: bool = False) -> torch.Tensor:
    """Training-mode BN of ``x`` [N, C, H, W] (any memory layout), ``chunks`` consecutive batches of
    N/chunks samples, each with its ``groups`` groups (samples ``g::groups`` of the chunk)
    normalised by their own statistics; ``bn``'s running statistics get, per chunk and in order, the
    mean of its groups' updates (as ``groups`` separate ``F.batch_norm`` calls per chunk would). The
    output is a fresh tensor of ``x``'s dtype and layout (not a view: the in-place ReLU / residual add
    after it need no CopySlices), or with ``reuse_input`` ``x`` itself, overwritten (for an ``x``
    nothing else reads, such as a convolution's output; a leaf that requires grad never is)."""
    track = bn.track_running_stats
    out = GroupedBatchNorm.apply(x, bn.weight, bn.bias, bn.running_mean if track else None,
                                 bn.running_var if track else None, groups, chunks, bn.momentum, bn.eps,
                                 reuse_input)
    counter = bn.num_batches_tracked
    if track and (torch.compiler.is_compiling() or not _PENDING.hold("counter", counter, (counter, chunks))):
        with torch.no_grad():
            bn.num_batches_tracked += chunks
    return out
