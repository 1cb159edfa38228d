"""Evaluation protocols of METHOD §5 (kNN, linear, semi-supervised, similarity, t-SNE) and export.

The names below are imported on first use, so that ``clim.evaluation.cli`` (the argparse side of
``clim eval``) loads without torch.
"""

import importlib

_HOME = {"extract_features": "clim.runtime.features", "run_knn": "clim.evaluation.knn",
         "weighted_knn": "clim.evaluation.knn", "intra_class_similarity": "clim.evaluation.similarity"}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'clim.evaluation' has no attribute '{name}'")
