"""CLIM's positives table as a module, ``PositiveBank`` (METHOD §2-3): a buffer of ``num_positives`` dataset indices
per image, refreshed from features with the center-wise rule, one positive per anchor per batch. This package's
trainer uses it (:mod:`clim.method.positives` adds the config); README "Use CLIM in your own loop" drops it into
another. Indices are ``torch.long`` throughout (the table, the selection result, what
:meth:`~PositiveBank.sample` returns), the dtype indexing wants.
"""

from __future__ import annotations

import numbers
import time

import numpy as np
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

    ``dataset[i]`` is ``(image, index, label)`` (this package's datasets), ``(image, label)``
    (torchvision's), ``(image,)`` or a bare ``image`` (labels −1), with ``image`` a tensor [C, H, W]
    (a PIL image needs a transform ending in ``ToTensor()``) and ``label`` an int (−1 = unknown);
    lists work as tuples, other items are refused before any embedding.

    Under DDP each rank embeds a strided shard and the (index, feature, label) triples are gathered
    and placed by index, so sampler padding can neither duplicate nor drop an image. The encoder
    runs in eval mode.
    """
    if len(dataset) > 0:
        check_item(dataset[0])
    shard = list(range(distributed.rank(), len(dataset), distributed.world_size()))
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


def _is_int_label(label) -> bool:
    if isinstance(label, Tensor):
        return label.dim() == 0 and not label.is_floating_point() and not label.is_complex()
    return isinstance(label, numbers.Integral)


def _not_a_tensor(value) -> str:
    if hasattr(value, "getpixel"):
        return "a PIL image (give the dataset a transform ending in torchvision's ToTensor())"
    return f"a {type(value).__name__}"


def check_item(item) -> None:
    """Raise a TypeError naming the accepted formats (:func:`embed_dataset`) unless ``item`` is one."""
    if isinstance(item, Tensor):
        return
    if not isinstance(item, (tuple, list)):
        problem = f" is {_not_a_tensor(item)}"
    elif not item or not isinstance(item[0], Tensor):
        problem = f"'s image is {_not_a_tensor(item[0])}" if item else " is empty"
    elif len(item) > 3:
        problem = f" has {len(item)} parts"
    elif len(item) > 1 and not _is_int_label(item[-1]):
        problem = f"'s label (its last part) is {_not_a_tensor(item[-1])}"
    else:
        return
    raise TypeError("dataset items must be (image, index, label), (image, label), (image,) or a bare image, with image "
                    f"a tensor (such as [C, H, W]) and label an int (−1 = unknown), but item 0{problem}")


def _as_tensor(value, name: str, dtype: torch.dtype | None = None) -> Tensor:
    """``value`` (a tensor, list or numpy array) as a tensor; anything else is a TypeError."""
    if isinstance(value, Tensor):
        return value if dtype is None else value.to(dtype)
    try:
        return torch.as_tensor(np.asarray(value), dtype=dtype)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be a tensor, a list or a numpy array, got {type(value).__name__}") from None


def _as_labels(labels, n: int) -> Tensor | None:
    if labels is None:
        return None
    labels = _as_tensor(labels, "labels")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be integers (−1 = unknown), got dtype {labels.dtype}")
    if labels.shape != (n,):
        raise ValueError(f"labels must be [num_samples] = [{n}], one per image, got shape {tuple(labels.shape)}")
    return labels.long()


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
        strategy: ``center_wise`` (CLIM), or the ablations ``knn_kmeans``, ``kmeans``, ``knn``, ``random`` (Table 6).
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

        ``labels`` [N] ints (−1 = unknown) add the positive precision to the diagnostics (both may be
        lists or numpy arrays). ``seed`` seeds k-means and the draws; None draws a fresh one from
        torch's global generator (METHOD: a fresh seed at every refresh). Under DDP rank 0 selects and
        broadcasts: pass the same features on every rank. Returns
        :func:`~clim.method.selection.selection_diagnostics` plus ``seed`` and ``seconds`` (rank 0;
        ``{"seconds": ...}`` elsewhere).
        """
        features = _as_tensor(features, "features")
        if features.dim() != 2 or features.shape[0] != self.num_samples:
            raise ValueError(f"features must be [num_samples={self.num_samples}, d], got {tuple(features.shape)}")
        labels = _as_labels(labels, self.num_samples)
        started = time.perf_counter()
        seed = int(torch.randint(2**31 - 1, ())) if seed is None else seed
        table = torch.empty_like(self.table)
        diagnostics: dict = {}
        if distributed.rank() == 0:
            result = select_positives(F.normalize(features.float(), dim=1), self.strategy, self.num_clusters, self.k,
                                      self.num_positives, seed=seed, backend=self.backend)
            table.copy_(result.positives.to(table.device))
            known = labels is not None and bool((labels >= 0).any())
            diagnostics = {**selection_diagnostics(result, labels.cpu() if known else None), "seed": seed}
            self.details = {"strategy": self.strategy, **anchor_details(result)}
        distributed.broadcast(table)
        self.table.copy_(table)
        self.filled = True
        diagnostics["seconds"] = round(time.perf_counter() - started, 2)
        return diagnostics

    def refresh_from(self, encoder: nn.Module, dataset: Dataset, batch_size: int = 256,
                     device: torch.device | str | None = None, num_workers: int = 0, seed: int | None = None) -> dict:
        """Embed ``dataset`` with ``encoder`` in index order (:func:`embed_dataset`, DDP-aware; items
        ``(image, index, label)``, ``(image, label)``, ``(image,)`` or ``image``) and :meth:`refresh`
        from it; labels the items carry feed the positive precision.

        METHOD §2: the encoder is the momentum (key) encoder with its head, and ``dataset`` gives
        the images un-augmented (the evaluation transform). ``seconds`` covers both parts.
        """
        if len(dataset) != self.num_samples:
            raise ValueError(f"the dataset has {len(dataset)} items but the bank was built for "
                             f"num_samples={self.num_samples} (one table row per item)")
        started = time.perf_counter()
        features, labels = embed_dataset(encoder, dataset, batch_size, device, num_workers)
        diagnostics = self.refresh(features, labels, seed)
        diagnostics["seconds"] = round(time.perf_counter() - started, 2)
        return diagnostics

    def sample(self, index: Tensor, generator: torch.Generator | None = None, check: bool | None = None) -> Tensor:
        """One positive per anchor of ``index`` [B], uniformly among its P (METHOD §3): long [B] on
        the table's device (the bank must have been refreshed or loaded).

        ``index``: dataset indices, a tensor, list or numpy array of ints. ``check``: refuse indices
        outside [0, N) (a negative one would silently wrap around). None (default) checks an index on
        the CPU (free: a DataLoader's), not on a GPU (a host synchronisation per step); True checks
        there too, False never.
        """
        if not self.filled:
            raise RuntimeError("the PositiveBank is empty: call refresh() or refresh_from() (or load a filled "
                               "state_dict) before sample()")
        index = _as_tensor(index, "index")
        if index.dim() != 1 or index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
            raise TypeError(f"index must be a 1-D tensor of integer dataset indices [B], got dtype {index.dtype} "
                            f"and shape {tuple(index.shape)}")
        if (index.device.type == "cpu" if check is None else check) and index.numel():
            low, high = int(index.min()), int(index.max())
            if low < 0 or high >= self.num_samples:
                raise IndexError(f"index must be dataset indices in [0, {self.num_samples}) (num_samples = "
                                 f"{self.num_samples}), got values from {low} to {high}")
        return draw_positives(self.table, index, generator)

    def _after_load(self, incompatible) -> None:
        self.filled = bool((self.table >= 0).all())
