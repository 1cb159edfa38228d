"""Public home of the losses (paper Eq. 1 and Eq. 3): ``from clim.losses import info_nce, mixed_info_nce``.
Re-exports :mod:`clim.method.losses`, which code inside ``clim`` imports (pyproject.toml's layers: this is on top)."""

from clim.method.losses import TEMPERATURE, info_nce, mixed_info_nce

__all__ = ["TEMPERATURE", "info_nce", "mixed_info_nce"]
