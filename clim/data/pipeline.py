"""The training data path: for each step, every view the objective needs (see docs/ARCHITECTURE.md).

:func:`build_pipeline` picks one of interchangeable implementations that yield the same per-step dict
(``data.augment``, resolved by :func:`resolve_augment`):

* ``batched`` (:mod:`clim.data.batched_pipeline`): an array dataset as one uint8 tensor on the
  training device, whole batches augmented there; no DataLoader, no worker start-up.
* ``loader`` (:mod:`clim.data.loader_pipeline`): per-sample torchvision transforms in DataLoader
  workers; image folders (ImageNet) on CPU, and any dataset on request.
* ``device`` (:mod:`clim.data.device_pipeline`), the CUDA default for image folders: workers only
  read, decode and crop + flip each view to uint8; the photometric part runs batched on the device.
  With ``data.decode=gpu`` (:mod:`clim.data.gpu_decode`) the workers only read the JPEG bytes and
  the device decodes them too.

Shared by all of them (:mod:`clim.data.views`): epoch seeds, so that a run resumed at an epoch
boundary or inside an epoch draws exactly the same crops, positives and CutMix boxes as an
uninterrupted one, and multi-resolution views (METHOD §4: cropped and augmented once at the
largest resolution, then resized to the others).
"""

from __future__ import annotations

import torch

from clim.config import Config
from clim.data.batched_pipeline import BatchedPipeline
from clim.data.device_pipeline import DevicePipeline
from clim.data.loader_pipeline import LoaderPipeline

__all__ = ["BatchedPipeline", "DevicePipeline", "LoaderPipeline", "build_pipeline", "resolve_augment"]


def resolve_augment(config: Config, dataset, device: torch.device) -> str:
    """The ``data.augment`` mode actually used: ``auto`` = batched for array datasets (held in memory);
    for file datasets ``device`` on CUDA and ``loader`` elsewhere."""
    mode = config.data.augment
    if mode == "auto":
        if hasattr(dataset, "images"):
            mode = "batched"
        else:
            mode = "device" if torch.device(device).type == "cuda" else "loader"
    return mode


def build_pipeline(dataset, config: Config, image_size: int, device: torch.device,
                   rank: int = 0, world_size: int = 1):
    """``data.augment``: see :func:`resolve_augment` and ``DataConfig.augment``."""
    mode = resolve_augment(config, dataset, device)
    if mode == "batched" and not hasattr(dataset, "images"):
        raise ValueError(f"data.augment=batched needs an array dataset; '{config.data.name}' is read from files")
    pipeline_class = {"batched": BatchedPipeline, "loader": LoaderPipeline, "device": DevicePipeline}[mode]
    from clim.data.gpu_decode import GpuDecodePipeline, resolve_decode  # it imports this module

    if resolve_decode(config, dataset, device) == "gpu":  # data.decode: JPEGs decoded on the device
        pipeline_class = GpuDecodePipeline
    pipeline = pipeline_class(dataset, config, image_size, device, rank, world_size)
    if len(pipeline) == 0:
        raise ValueError(f"{len(dataset)} images give no full batch of {config.train.batch_size}"
                         f" ({world_size} process(es)); lower train.batch_size")
    return pipeline
