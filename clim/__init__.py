"""CLIM: Center-wise Local Image Mixture for contrastive representation learning (arXiv 2011.02697).

The Python API (:mod:`clim.api`) is reachable from here, loaded on first use so that
``import clim`` and the command line start without importing torch::

    import clim
    bank = clim.PositiveBank(num_samples=len(dataset))   # see README "Use CLIM in your own loop"

``clim.selection``, ``clim.mixing`` and ``clim.losses`` are the modules of the same names.
``dir(clim)`` lists the public names: ``__all__``, those three modules and ``__version__``.
"""

import importlib

__version__ = "0.1.0"

__all__ = ["CUTMIX_ALPHA", "DEFAULT_K", "DEFAULT_NUM_POSITIVES", "MIXUP_ALPHA", "STRATEGIES", "TEMPERATURE",
           "PositiveBank", "SelectionResult", "cutmix", "default_num_clusters", "embed_dataset", "info_nce",
           "mixed_info_nce", "mixup", "select_positives", "selection_diagnostics"]  # defined by clim.api (tested)
_PUBLIC_MODULES = ("selection", "mixing", "losses")
_MODULES = (*_PUBLIC_MODULES, "api")  # clim.api: the layer behind __all__, reachable but not listed


def __getattr__(name: str):
    if name in _MODULES:
        return importlib.import_module(f"clim.{name}")
    if name in __all__:
        return getattr(importlib.import_module("clim.api"), name)
    raise AttributeError(f"module 'clim' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*__all__, *_PUBLIC_MODULES, "__version__"})
