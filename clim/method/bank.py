"""CLIM's positives table as a module: ``PositiveBank`` (METHOD §2-3).

The bank holds one row of ``num_positives`` dataset indices per image (a buffer, so it travels with
``state_dict`` and ``.to(device)``), refreshes it from features with the center-wise rule
(:func:`~clim.method.selection.select_positives`) and hands out one positive per anchor per batch.
It is what the training loop of this package uses (:mod:`clim.method.positives` adds the config),
and what a user drops into their own MoCo / SimCLR / BYOL loop::

    bank = PositiveBank(num_samples=len(dataset))
    bank.refresh_from(key_encoder, eval_dataset)          # every few epochs: embed in index order, select
    positive_index = bank.sample(index, generator)        # every step: one positive per anchor

Indices are ``torch.long`` throughout (the table, the selection result, what :meth:`~PositiveBank.sample`
returns), the dtype indexing wants.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from clim.data.views import draw_positives
from clim.method.selection import (DEFAULT_K, DEFAULT_NUM_POSITIVES, STRATEGIES, SelectionResult,
                                   default_num_clusters, select_positives, selection_diagnostics)
from clim.runtime import distributed
from clim.runtime.features import extract_features, module_device

__all__ = ["PositiveBank", "anchor_details", "embed_dataset"]


@torch.no_grad()
def embed_dataset(encoder: nn.Module, dataset: Dataset, batch_size: int = 256, device: torch.device | str | None = None,
                  num_workers: int = 0) -> tuple[Tensor, Tensor]:
    """``(features [N, d], labels [N])`` of every item, L2-normalised, ordered by dataset index, on
    every rank (METHOD §2).

    Under DDP each rank embeds a strided shard and the (index, feature, label) triples are gathered
    and placed by index, so sampler padding can neither duplicate nor drop an image. The encoder
    runs in eval mode (see :func:`~clim.runtime.features.extract_features` for the item formats);
    labels are −1 where the items carry none.
    """
    rank, world = distributed.rank(), distributed.world_size()
    shard = list(range(rank, len(dataset), world))
    features, labels = extract_features(encoder, Subset(dataset, shard), batch_size=batch_size, device=device,
                                        num_workers=num_workers)
    on = torch.device(device) if device is not None else module_device(encoder)
    features, labels = F.normalize(features.to(on), dim=1), labels.to(on)
    index = distributed.all_gather_uneven(torch.tensor(shard, device=on, dtype=torch.long))
    ordered = torch.empty((len(dataset), features.shape[1]), device=on, dtype=features.dtype)
    ordered[index] = distributed.all_gather_uneven(features)
    ordered_labels = torch.empty(len(dataset), device=on, dtype=torch.long)
    ordered_labels[index] = distributed.all_gather_uneven(labels)
    return ordered, ordered_labels


def anchor_details(result: SelectionResult) -> dict[str, Tensor]:
    """Per-anchor facts of a selection, CPU tensors: ``knn`` long [N, P] (what kNN-only selection
    would pick on the same features), ``filled`` bool [N], and where the strategy has them
    ``cluster_size`` int32 [N] (members of the anchor's cluster, itself included) and ``omega_size``
    int32 [N] (|Ω_p|, or |Ω1 ∩ Ω2| for ``knn_kmeans``)."""
    details = {"knn": result.neighbors[:, :result.positives.shape[1]].cpu(), "filled": result.filled.cpu()}
    if result.assignments is not None:
        sizes = torch.bincount(result.assignments, minlength=result.centroids.shape[0])
        details["cluster_size"] = sizes[result.assignments].int().cpu()
    if result.omega_sizes is not None:
        details["omega_size"] = result.omega_sizes.int().cpu()
    return details


class PositiveBank(nn.Module):
    """The positives table of CLIM (METHOD §2): ``num_positives`` dataset indices per image.

    Args:
        num_samples: N, the size of the dataset the indices refer to.
        num_positives: P, the positives kept per anchor (METHOD: 10).
        strategy: how they are selected: ``center_wise`` (CLIM), or the ablations ``knn_kmeans``,
            ``kmeans``, ``knn``, ``random`` (paper Table 6).
        num_clusters: m of the spherical k-means; None is METHOD's N/100 (at least 2).
        k: neighbours of the exact kNN (METHOD: 40).
        backend: ``auto``, ``faiss`` or ``torch`` (see :mod:`clim.method.knn`).

    The table is the buffer ``table`` (long [N, P], −1 until the first refresh), so ``state_dict``,
    ``load_state_dict`` and ``.to(device)`` carry it. :attr:`details` keeps the latest refresh's
    per-anchor facts (:func:`anchor_details`; on rank 0 only, not saved).
    """

    def __init__(self, num_samples: int, num_positives: int = DEFAULT_NUM_POSITIVES, strategy: str = "center_wise",
                 num_clusters: int | None = None, k: int = DEFAULT_K, backend: str = "auto"):
        super().__init__()
        if num_samples <= k:
            raise ValueError(f"PositiveBank needs more than k = {k} samples, got num_samples={num_samples}")
        if not 0 < num_positives <= k:
            raise ValueError(f"num_positives must be in [1, k = {k}], got {num_positives}")
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; valid strategies: {', '.join(STRATEGIES)}")
        self.strategy, self.k, self.backend = strategy, k, backend
        self.num_clusters = default_num_clusters(num_samples) if num_clusters is None else num_clusters
        self.register_buffer("table", torch.full((num_samples, num_positives), -1, dtype=torch.long))
        self.filled = False
        self.details: dict[str, Tensor] | None = None
        self.register_load_state_dict_post_hook(PositiveBank._after_load)

    @property
    def num_samples(self) -> int:
        """N, the rows of the table."""
        return self.table.shape[0]

    @property
    def num_positives(self) -> int:
        """P, the positives per anchor."""
        return self.table.shape[1]

    def extra_repr(self) -> str:
        return (f"num_samples={self.num_samples}, num_positives={self.num_positives}, strategy={self.strategy!r}, "
                f"num_clusters={self.num_clusters}, k={self.k}, filled={self.filled}")

    @torch.no_grad()
    def refresh(self, features: Tensor, labels: Tensor | None = None, seed: int | None = None) -> dict:
        """Select a new table from ``features`` [N, d] (row i = image i; normalised here).

        ``labels`` [N] (−1 = unknown) add the positive precision to the diagnostics. ``seed`` seeds
        k-means and the draws; None draws a fresh one from torch's global generator (METHOD: a fresh
        seed at every refresh). Under DDP rank 0 selects and broadcasts, so pass the same features
        on every rank. Returns :func:`~clim.method.selection.selection_diagnostics` plus ``seed``
        and ``seconds`` (rank 0; ``{"seconds": ...}`` elsewhere).
        """
        if features.dim() != 2 or features.shape[0] != self.num_samples:
            raise ValueError(f"features must be [num_samples={self.num_samples}, d], got {tuple(features.shape)}")
        started = time.perf_counter()
        seed = int(torch.randint(2**31 - 1, ())) if seed is None else seed
        table = torch.empty_like(self.table)
        diagnostics: dict = {}
        if distributed.rank() == 0:
            result = select_positives(F.normalize(features.float(), dim=1), self.strategy, self.num_clusters, self.k,
                                      self.num_positives, seed=seed, backend=self.backend)
            table.copy_(result.positives.to(table.device))
            known = labels is not None and bool((labels >= 0).any())
            diagnostics = selection_diagnostics(result, labels.cpu() if known else None)
            diagnostics["seed"] = seed
            self.details = {"strategy": self.strategy, **anchor_details(result)}
        distributed.broadcast(table)
        self.table.copy_(table)
        self.filled = True
        diagnostics["seconds"] = round(time.perf_counter() - started, 2)
        return diagnostics

    def refresh_from(self, encoder: nn.Module, dataset: Dataset, batch_size: int = 256,
                     device: torch.device | str | None = None, num_workers: int = 0, seed: int | None = None) -> dict:
        """Embed ``dataset`` with ``encoder`` in index order (:func:`embed_dataset`, DDP-aware) and
        :meth:`refresh` from it; labels the items carry feed the positive precision.

        METHOD §2: the encoder is the momentum (key) encoder with its head, and ``dataset`` gives
        the images un-augmented (the evaluation transform). ``seconds`` covers both parts.
        """
        started = time.perf_counter()
        features, labels = embed_dataset(encoder, dataset, batch_size, device, num_workers)
        diagnostics = self.refresh(features, labels, seed)
        diagnostics["seconds"] = round(time.perf_counter() - started, 2)
        return diagnostics

    def sample(self, index: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One positive per anchor of ``index`` [B], uniformly among its P (METHOD §3): long [B] on
        the table's device. No host synchronisation (the bank must have been refreshed or loaded)."""
        if not self.filled:
            raise RuntimeError("the PositiveBank is empty: call refresh() or refresh_from() (or load a filled "
                               "state_dict) before sample()")
        return draw_positives(self.table, index, generator)

    def _after_load(self, incompatible) -> None:
        self.filled = bool((self.table >= 0).all())
