"""Overlap the data path with the step: the next batch is made while the current step runs.

:func:`prefetched` wraps any pipeline's per-epoch iterator. It always asks for batch ``i + 1``
before handing out batch ``i``; on CUDA the next batch is produced on a side stream, so its
augmentation kernels (and host-to-device copies) run on the GPU concurrently with step ``i``'s
kernels on the main stream, and the main stream waits for it only through a stream dependency (no
host synchronisation). The batches are the same as without it, whatever the device: every pipeline
draws its randomness from its own generators, in batch order, and the step draws its own (CutMix
boxes, λ) from a generator reserved for the step (``batch["generator"]``), so producing ahead
changes no random draw (tested on CPU in tests/data/test_prefetch.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def prefetched(batches: Iterable[dict], device: torch.device | str) -> Iterator[dict]:
    """Yield the batches of ``batches``, each made one step ahead (on a side CUDA stream on CUDA)."""
    device = torch.device(device)
    iterator = iter(batches)
    stream = torch.cuda.Stream(device) if device.type == "cuda" else None
    main = torch.cuda.current_stream(device) if stream is not None else None

    def produce():
        if stream is None:
            return next(iterator, None)
        stream.wait_stream(main)  # what the main stream wrote (e.g. a refreshed positives table) is visible
        with torch.cuda.stream(stream):
            return next(iterator, None)

    ahead = produce()
    while ahead is not None:
        if stream is not None:
            main.wait_stream(stream)
            for tensor in _tensors(ahead):
                if tensor.device.type == "cuda":
                    tensor.record_stream(main)  # made on the side stream, freed after the main stream's use
        current, ahead = ahead, produce()
        yield current
