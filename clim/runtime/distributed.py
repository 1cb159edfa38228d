"""Start-up for one process, torchrun (single or multi node) alike, and the few collectives we need.

Without ``WORLD_SIZE`` in the environment nothing is initialised and every helper degrades to the
single-process identity, so library code never needs to ask "am I distributed?".
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Runtime:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto") -> Runtime:
    """Pick the device and, under torchrun, join the process group (NCCL on GPU, gloo on CPU)."""
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is available")
    world_size, local_rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Runtime(launched_rank(), world_size, local_rank,
                   torch.device("cuda", local_rank) if use_cuda else torch.device("cpu"))


def teardown() -> None:
    global _HOST_GROUP
    if dist.is_initialized():
        dist.destroy_process_group()
    _HOST_GROUP = None


def launched_rank() -> int:
    """This process's rank as the launcher set it (``RANK``, torchrun), readable before :func:`setup`."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


@torch.no_grad()
def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate equally shaped tensors from all ranks along dim 0 (no gradient)."""
    if world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


@torch.no_grad()
def all_gather_uneven(tensor: torch.Tensor) -> torch.Tensor:
    """Like :func:`all_gather_cat` for tensors whose first dimension differs between ranks."""
    if world_size() == 1:
        return tensor
    sizes = all_gather_cat(torch.tensor([tensor.shape[0]], device=tensor.device)).tolist()
    longest = max(sizes)
    padded = torch.zeros((longest,) + tuple(tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: tensor.shape[0]] = tensor
    gathered = all_gather_cat(padded)
    return torch.cat([gathered[i * longest: i * longest + n] for i, n in enumerate(sizes)])


def all_gather_object(obj) -> list:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` without DDP."""
    if world_size() == 1:
        return [obj]
    gathered = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


@torch.no_grad()
def broadcast_module(module: torch.nn.Module, norm_only: bool = False) -> None:
    """Give every rank rank 0's parameters and buffers (ranks seed apart, so they differ otherwise);
    with ``norm_only``, only the BatchNorm running statistics, the one state each rank keeps for itself
    (aligned whenever the trainer saves, so a resumed run continues as the uninterrupted one)."""
    if world_size() == 1:
        return
    if norm_only:
        norms = [layer for layer in module.modules() if isinstance(layer, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))]
        tensors = [buffer for layer in norms for buffer in layer.buffers(recurse=False)]
    else:
        tensors = [*module.parameters(), *module.buffers()]
    for tensor in tensors:
        dist.broadcast(tensor, 0)


def broadcast(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    if world_size() > 1:
        dist.broadcast(tensor, src)
    return tensor


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on at least one (e.g. a non-finite loss)."""
    if world_size() == 1:
        return bool(flag)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value)
    return bool(value.item() > 0)


_HOST_GROUP = None  # a gloo group beside NCCL, for decisions made on the host


def any_rank_on_host(*flags: bool) -> tuple[bool, ...]:
    """Per flag, True on every rank when it is True on at least one, agreed over a CPU (gloo) group:
    asked after every step, it never waits for the device (:func:`any_rank` reads a device tensor)."""
    if world_size() == 1:
        return tuple(bool(flag) for flag in flags)
    global _HOST_GROUP
    if dist.get_backend() != "gloo" and _HOST_GROUP is None:
        _HOST_GROUP = dist.new_group(backend="gloo")  # every rank reaches this first call together
    value = torch.tensor([1.0 if flag else 0.0 for flag in flags])
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=_HOST_GROUP)
    return tuple(item > 0 for item in value.tolist())


def average_gradients(parameters) -> None:
    """Average gradients over ranks in one flat buffer per dtype, after ``backward``: the query encoder
    runs several forward passes per step, where DDP's hooks assume one."""
    if world_size() == 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    for dtype in {g.dtype for g in grads}:
        group = [g for g in grads if g.dtype == dtype]
        flat = torch.cat([g.reshape(-1) for g in group])
        dist.all_reduce(flat)
        flat /= world_size()
        for g, part in zip(group, flat.split([g.numel() for g in group])):
            g.copy_(part.view_as(g))


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()
