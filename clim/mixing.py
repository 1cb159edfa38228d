"""Public home of the mixing functions (METHOD §3): ``from clim.mixing import cutmix, mixup``.

The code lives in :mod:`clim.method.mixing`; this module only re-exports its public names for users
(the layers contract in pyproject.toml keeps it at the top: code inside ``clim`` imports
:mod:`clim.method.mixing`).
"""

from clim.method.mixing import CUTMIX_ALPHA, MIXUP_ALPHA, cutmix, cutmix_boxes, mixup, sample_beta

__all__ = ["CUTMIX_ALPHA", "MIXUP_ALPHA", "cutmix", "cutmix_boxes", "mixup", "sample_beta"]
