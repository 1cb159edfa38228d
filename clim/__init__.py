"""CLIM: Center-wise Local Image Mixture for contrastive representation learning (arXiv 2011.02697)."""

__version__ = "0.1.0"
