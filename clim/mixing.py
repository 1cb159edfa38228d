"""Public home of the mixing functions (METHOD §3): ``from clim.mixing import cutmix, mixup``.
Re-exports :mod:`clim.method.mixing`, which code inside ``clim`` imports (pyproject.toml's layers: this is on top)."""

from clim.method.mixing import CUTMIX_ALPHA, MIXUP_ALPHA, cutmix, cutmix_boxes, mixup, sample_beta

__all__ = ["CUTMIX_ALPHA", "MIXUP_ALPHA", "cutmix", "cutmix_boxes", "mixup", "sample_beta"]
