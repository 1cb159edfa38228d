"""Public home of positive selection (METHOD §2): ``from clim.selection import select_positives``.

The code lives in :mod:`clim.method.selection` (the strategies and the center-wise rule) and
:mod:`clim.method.knn` (exact kNN, spherical k-means); this module only re-exports its public names
for users. Code inside the package imports :mod:`clim.method` directly (the layers contract in
pyproject.toml keeps this module at the top, where nothing else in ``clim`` may import it).
"""

from clim.method.knn import KMEANS_ITERS
from clim.method.selection import (DEFAULT_K, DEFAULT_NUM_POSITIVES, STRATEGIES, SelectionResult, default_num_clusters,
                                   select_positives, selection_diagnostics)

__all__ = ["DEFAULT_K", "DEFAULT_NUM_POSITIVES", "KMEANS_ITERS", "STRATEGIES", "SelectionResult",
           "default_num_clusters", "select_positives", "selection_diagnostics"]
