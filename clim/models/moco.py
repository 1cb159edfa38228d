"""The MoCo v2 core (METHOD §1) as one small module: encoders, queue, momentum update, BN tricks.

All of MoCo's state, the negative-key queue included (a buffer), is saved with the module. CLIM's
positives table is a module of its own, :class:`clim.method.bank.PositiveBank` (the trainer saves both).
"""

from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn.functional as F
from torch import nn

from clim.specs import ModelSpec
from clim.models.backbones import build_backbone
from clim.models.grouped_norm import deferred_running_stats, grouped_batch_norm
from clim.runtime import distributed


class SplitBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over ``num_splits`` groups of the batch (group ``g``: samples ``g, g + s, g + 2s,
    ...``), each normalised alone; the state_dict is a plain BatchNorm2d's. On one device this
    mimics MoCo's multi-GPU setting, where each GPU normalises its own small batch, which keeps BN
    from leaking information between query and key (METHOD §1). A batch that does not divide evenly
    uses the largest divisor of its size not above ``num_splits``.

    ``chunks`` (set by :meth:`MoCo.encode_queries` / :meth:`MoCo.encode_keys` for one call): the
    batch is ``chunks`` same-sized batches concatenated, each normalised exactly as if alone (own
    groups; running statistics updated once per chunk, in order).

    Two implementations, chosen by memory layout so that neither copies an activation: an NCHW input with
    one chunk goes through one ``F.batch_norm`` on the free ``[N/s, s·C, H, W]`` view (fastest on CPU; on
    CUDA with ``train.channels_last=false``); otherwise (channels-last, or several chunks) through
    :func:`~clim.models.grouped_norm.grouped_batch_norm`, one autograd op in float32 that keeps the layout.
    ``reuse_input`` lets it write its output over its input (one activation-sized allocation less per layer):
    only for inputs nothing else reads, such as the conv outputs every BN of a torchvision ResNet normalises."""

    def __init__(self, num_features: int, num_splits: int = 1, reuse_input: bool = False, **kwargs):
        super().__init__(num_features, **kwargs)
        self.num_splits = num_splits
        self.chunks = 1
        self.reuse_input = reuse_input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        per_chunk = x.shape[0] // self.chunks
        splits = next(d for d in range(min(per_chunk, self.num_splits), 0, -1) if per_chunk % d == 0)
        if self.chunks > 1 or (splits > 1 and not x.is_contiguous()):
            return grouped_batch_norm(x, self, splits, self.chunks, self.reuse_input)
        if splits == 1:
            return super().forward(x)
        n, c, h, w = x.shape
        mean, var = self.running_mean.repeat(splits), self.running_var.repeat(splits)
        out = F.batch_norm(x.view(n // splits, c * splits, h, w), mean, var, self.weight.repeat(splits),
                           self.bias.repeat(splits), True, self.momentum, self.eps)
        with torch.no_grad():
            self.running_mean.copy_(mean.view(splits, c).mean(0))
            self.running_var.copy_(var.view(splits, c).mean(0))
            self.num_batches_tracked += 1
        return out.view(n, c, h, w)


def _use_split_bn(module: nn.Module, reuse_input: bool = False) -> nn.Module:
    """Every BatchNorm2d of ``module`` replaced by a SplitBatchNorm2d of the same state (and ``reuse_input``)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, SplitBatchNorm2d):
            split = SplitBatchNorm2d(child.num_features, eps=child.eps, momentum=child.momentum,
                                     reuse_input=reuse_input)
            split.load_state_dict(child.state_dict())
            setattr(module, name, split)
        else:
            _use_split_bn(child, reuse_input)
    return module


class MoCo(nn.Module):
    def __init__(self, backbone: str = "resnet18", in_channels: int = 3, small_stem: bool = False,
                 head_dim: int = 128, queue_size: int = 65536, momentum: float = 0.999,
                 bn_splits: int = 8):
        super().__init__()
        net, dim = build_backbone(backbone, in_channels, small_stem)
        head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, head_dim))
        # MoCo v2's MLP head (METHOD §1); every BN of a torchvision ResNet reads a conv output nothing else reads
        self.encoder_q = nn.Sequential(_use_split_bn(net, reuse_input=True), head)
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for param in self.encoder_k.parameters():
            param.requires_grad_(False)
        self.momentum, self.feature_dim = momentum, dim
        self.batch_views = False  # encode_queries / encode_keys: one pass for same-shaped views (CUDA default)
        self.set_bn_splits(bn_splits)
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, head_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @property
    def backbone_q(self) -> nn.Module:
        return self.encoder_q[0]

    @property
    def backbone_k(self) -> nn.Module:
        return self.encoder_k[0]

    def set_bn_splits(self, splits: int) -> None:
        for module in self.modules():
            if isinstance(module, SplitBatchNorm2d):
                module.num_splits = splits

    @contextlib.contextmanager
    def _bn_chunks(self, encoder: nn.Module, chunks: int):
        norms = [m for m in encoder.modules() if isinstance(m, SplitBatchNorm2d)]
        for module in norms:
            module.chunks = chunks
        try:
            with deferred_running_stats():
                yield
        finally:
            for module in norms:
                module.chunks = 1

    def _can_batch(self, views: list[torch.Tensor]) -> bool:
        return (self.batch_views and len(views) > 1 and distributed.world_size() == 1
                and all(v.shape == views[0].shape for v in views))

    def encode_queries(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """:meth:`encode_query` of several batches; with ``batch_views`` (on by default on CUDA),
        same-shaped batches share one forward pass, each with its own BN groups (fewer, larger kernels)."""
        if not self._can_batch(views):
            return [self.encode_query(view) for view in views]
        with self._bn_chunks(self.encoder_q, len(views)):
            return list(self.encode_query(torch.cat(views)).chunk(len(views)))

    @torch.no_grad()
    def encode_keys(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """:meth:`encode_key` of several batches, batched like :meth:`encode_queries`: each batch is
        shuffled within itself and normalised by its own BN groups."""
        if not self._can_batch(views):
            return [self.encode_key(view) for view in views]
        size, count = views[0].shape[0], len(views)
        order = torch.cat([torch.randperm(size, device=views[0].device) + i * size for i in range(count)])
        with self._bn_chunks(self.encoder_k, count):
            keys = F.normalize(self.encoder_k(torch.cat(views)[order]), dim=1)
        return list(keys[torch.argsort(order)].chunk(count))

    def encode_query(self, images: torch.Tensor) -> torch.Tensor:
        with deferred_running_stats():  # all layers' running-stat updates in a few ops at the end
            return F.normalize(self.encoder_q(images), dim=1)

    @torch.no_grad()
    def encode_key(self, images: torch.Tensor) -> torch.Tensor:
        """Key embeddings with shuffled BN groups: across ranks under DDP (MoCo's shuffle-BN),
        within the batch on one device, so query and key never share BN statistics."""
        if distributed.world_size() > 1:
            local, ranks, rank = images.shape[0], distributed.world_size(), distributed.rank()
            everything = distributed.all_gather_cat(images)
            order = distributed.broadcast(torch.randperm(everything.shape[0], device=images.device))
            with deferred_running_stats():
                keys = F.normalize(self.encoder_k(everything[order.view(ranks, local)[rank]]), dim=1)
            return distributed.all_gather_cat(keys)[torch.argsort(order)].view(ranks, local, -1)[rank]
        order = torch.randperm(images.shape[0], device=images.device)
        with deferred_running_stats():
            keys = F.normalize(self.encoder_k(images[order]), dim=1)
        return keys[torch.argsort(order)]

    @torch.no_grad()
    def momentum_update(self) -> None:
        params_k = list(self.encoder_k.parameters())
        params_q = [param.detach() for param in self.encoder_q.parameters()]
        # k ← m·k + (1 − m)·q as two multi-tensor kernels, not two per parameter
        torch._foreach_mul_(params_k, self.momentum)
        torch._foreach_add_(params_k, params_q, alpha=1.0 - self.momentum)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write the keys of all ranks into the ring buffer; any batch size wraps around K."""
        size = self.queue.shape[0]
        keys = distributed.all_gather_cat(keys.to(self.queue.dtype))[-size:]
        slots = (self.queue_ptr + torch.arange(keys.shape[0], device=keys.device)) % size
        self.queue[slots] = keys
        self.queue_ptr.copy_((self.queue_ptr + keys.shape[0]) % size)


def build_moco(spec: ModelSpec, in_channels: int) -> MoCo:
    """MoCo from a resolved :class:`~clim.specs.ModelSpec` (:func:`clim.specs.model_spec`: its BN groups
    follow ``train.batch_size / model.bn_splits`` on one device and under DDP, :func:`~clim.specs.batch_layout`)."""
    return MoCo(backbone=spec.backbone, in_channels=in_channels, small_stem=spec.small_stem, head_dim=spec.head_dim,
                queue_size=spec.queue_size, momentum=spec.momentum, bn_splits=spec.bn_splits)
