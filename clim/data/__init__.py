"""Datasets (registry), per-sample transforms; see docs/ARCHITECTURE.md for the contracts."""

from clim.data.registry import DatasetInfo, build_dataset, dataset_names

__all__ = ["DatasetInfo", "build_dataset", "dataset_names"]
