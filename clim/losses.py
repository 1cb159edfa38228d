"""Public home of the losses (paper Eq. 1 and Eq. 3): ``from clim.losses import info_nce, mixed_info_nce``.

The code lives in :mod:`clim.method.losses`; this module only re-exports its public names for users
(the layers contract in pyproject.toml keeps it at the top: code inside ``clim`` imports
:mod:`clim.method.losses`).
"""

from clim.method.losses import TEMPERATURE, info_nce, mixed_info_nce

__all__ = ["TEMPERATURE", "info_nce", "mixed_info_nce"]
