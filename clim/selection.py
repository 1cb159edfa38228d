"""Public home of positive selection (METHOD §2): ``from clim.selection import select_positives``.
Re-exports :mod:`clim.method.selection` (the strategies, the center-wise rule) and :mod:`clim.method.knn` (exact
kNN, spherical k-means), which code inside ``clim`` imports (pyproject.toml's layers keep this at the top)."""

from clim.method.knn import KMEANS_ITERS
from clim.method.selection import (DEFAULT_K, DEFAULT_NUM_POSITIVES, STRATEGIES, SelectionResult, default_num_clusters,
                                   select_positives, selection_diagnostics)

__all__ = ["DEFAULT_K", "DEFAULT_NUM_POSITIVES", "KMEANS_ITERS", "STRATEGIES", "SelectionResult",
           "default_num_clusters", "select_positives", "selection_diagnostics"]
