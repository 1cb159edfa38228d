"""The Python API of CLIM for your own training loop; ``import clim`` exposes these names (every default METHOD's).

``clim.PositiveBank`` holds the positives table (refresh from features or an encoder, sample one positive per
anchor, ``state_dict``); ``select_positives`` / ``selection_diagnostics`` are the selection underneath it; ``cutmix``
/ ``mixup`` mix anchors with their positives; ``info_nce`` / ``mixed_info_nce`` are the losses (queue or in-batch
negatives). ``clim/__init__.py`` imports this module on first use of one of its names, so ``import clim`` (and
``clim --help``) stays free of torch. It sits in its own layer of the import contracts: it may use the whole
package, and nothing in ``clim`` imports it."""

from clim import __all__  # noqa: F401  (the names, listed in clim/__init__.py, which must not import this module)
from clim.method.bank import PositiveBank, embed_dataset
from clim.method.losses import TEMPERATURE, info_nce, mixed_info_nce
from clim.method.mixing import CUTMIX_ALPHA, MIXUP_ALPHA, cutmix, mixup
from clim.method.selection import (DEFAULT_K, DEFAULT_NUM_POSITIVES, STRATEGIES, SelectionResult, default_num_clusters,
                                   select_positives, selection_diagnostics)
