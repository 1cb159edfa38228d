"""Refreshing CLIM's positives table during training (METHOD §2).

Every ``method.refresh_every`` epochs the momentum encoder (eval mode, eval transform) embeds the
whole pretraining set. Under DDP each rank embeds a strided shard; (index, feature) pairs are
gathered and placed by index, so sampler padding can neither duplicate nor drop an image. Rank 0
selects, and the table is broadcast into ``model.positives`` (a buffer, hence saved in checkpoints).

The table alone does not say *why* a positive was chosen. Rank 0 therefore also keeps the latest
refresh's per-anchor facts (:func:`anchor_details`) in ``model.refresh_details``, a plain attribute
and not a buffer, so checkpoints keep their format; the training hook of ``clim inspect`` saves them
beside the checkpoint (``RUN_DIR/positives/selection.pt``).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset

from clim.config import Config
from clim.method.selection import SelectionResult, select_positives, selection_diagnostics
from clim.models.moco import MoCo
from clim.runtime import distributed
from clim.runtime.features import extract_features


def is_refresh_epoch(config: Config, epoch: int) -> bool:
    """The first refresh happens at epoch ``refresh_every`` (epochs counted from 0)."""
    every = config.method.refresh_every
    return config.method.name == "clim" and epoch > 0 and epoch % every == 0


def needs_table(config: Config, epoch: int) -> bool:
    return config.method.name == "clim" and epoch >= config.method.refresh_every


def num_clusters(config: Config, num_samples: int) -> int:
    return config.method.num_clusters or max(2, num_samples // 100)


def selection_encoder(model: MoCo, config: Config) -> nn.Module:
    if config.method.selection_features == "backbone":
        return model.backbone_k
    return model.encoder_k


@torch.no_grad()
def embed_dataset(encoder: nn.Module, dataset, batch_size: int, device: torch.device,
                  num_workers: int = 0) -> torch.Tensor:
    """L2-normalised embeddings of every image, ordered by index, identical on all ranks' rank 0."""
    rank, world = distributed.rank(), distributed.world_size()
    shard = list(range(rank, len(dataset), world))
    features, _ = extract_features(encoder, Subset(dataset, shard), batch_size=batch_size, device=device,
                                   num_workers=num_workers)
    features = F.normalize(features.to(device), dim=1)
    index = torch.tensor(shard, device=device, dtype=torch.long)
    all_features = distributed.all_gather_uneven(features)
    all_index = distributed.all_gather_uneven(index)
    ordered = torch.empty((len(dataset), features.shape[1]), device=device, dtype=features.dtype)
    ordered[all_index] = all_features
    return ordered


def anchor_details(result: SelectionResult) -> dict[str, torch.Tensor]:
    """Per-anchor facts of a selection, CPU tensors: ``knn`` int32 [N, P] (what kNN-only selection
    would pick on the same features), ``filled`` bool [N], and where the strategy has them
    ``cluster_size`` int32 [N] (members of the anchor's cluster, itself included) and ``omega_size``
    int32 [N] (|Ω_p|, or |Ω1 ∩ Ω2| for ``knn_kmeans``)."""
    details = {"knn": result.neighbors[:, :result.positives.shape[1]].int().cpu(), "filled": result.filled.cpu()}
    if result.assignments is not None:
        sizes = torch.bincount(result.assignments, minlength=result.centroids.shape[0])
        details["cluster_size"] = sizes[result.assignments].int().cpu()
    if result.omega_sizes is not None:
        details["omega_size"] = result.omega_sizes.int().cpu()
    return details


def refresh_positives(model: MoCo, dataset, labels: torch.Tensor | None, config: Config, epoch: int,
                      device: torch.device) -> dict:
    """Recompute ``model.positives``; returns the diagnostics (on rank 0; {} elsewhere)."""
    started = time.perf_counter()
    features = embed_dataset(selection_encoder(model, config), dataset, config.train.batch_size, device,
                             config.data.num_workers)
    table = torch.empty_like(model.positives)
    diagnostics: dict = {}
    if distributed.rank() == 0:
        # Selection runs where the features are: faiss on CPU, the GPU path on CUDA tensors.
        result = select_positives(
            features, config.method.selection, num_clusters(config, len(dataset)), config.method.knn_k,
            config.method.num_positives, seed=config.train.seed * 10_000 + epoch)
        table.copy_(result.positives.to(table.device, table.dtype))
        known = labels if labels is not None and bool((labels >= 0).any()) else None
        diagnostics = selection_diagnostics(result, None if known is None else known.cpu())
        # epoch + 1: the metrics record (and first epoch) that trains with this table
        model.refresh_details = {"epoch": epoch + 1, "strategy": config.method.selection, **anchor_details(result)}
    distributed.broadcast(table)
    model.positives.copy_(table)
    diagnostics["seconds"] = round(time.perf_counter() - started, 2)
    return diagnostics
