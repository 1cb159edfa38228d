"""What every training data path shares (METHOD §3-4): seeds, resolutions, resume points, drawn positives.

Randomness is seeded from ``(train.seed, epoch, rank)`` at the start of every epoch, so a run resumed
at an epoch boundary draws exactly the same crops, positives and CutMix boxes as an uninterrupted one.
Multi-resolution (METHOD §4): each view is cropped and augmented once at the largest resolution and
then resized (antialiased) to the others (:func:`at_resolutions`), so the views differ only in
resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clim.config import Config

MULTICROP_SCALE = (0.05, 0.14)  # Table 7 baseline: 2 x 96 px crops of a 224 px image
MULTICROP_VIEWS = 2


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch) * 1_009 + rank


def resolutions_of(config: Config, image_size: int) -> list[int]:
    return sorted(config.method.resolutions or [image_size], reverse=True)


def multicrop_size(config: Config, image_size: int) -> int:
    return config.method.multicrop_size or max(8, round(image_size * 96 / 224))


def at_resolutions(view: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    """The same crop at every resolution; ``view`` is at ``sizes[0]`` (METHOD §4)."""
    batched = view if view.dim() == 4 else view.unsqueeze(0)
    out = [batched] + [F.interpolate(batched, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
                       for s in sizes[1:]]
    return out if view.dim() == 4 else [v.squeeze(0) for v in out]


def augment_kwargs(config: Config, scale: tuple[float, float] | None = None) -> dict:
    strength = config.data.jitter_strength
    return dict(
        crop_scale=scale or (config.data.crop_min_scale, 1.0),
        jitter=(strength, strength, strength, strength / 4),
        jitter_p=config.data.jitter_p,
        grayscale_p=config.data.grayscale_p,
        blur_p=config.data.blur_p,
        flip_p=config.data.flip_p,
    )


def make_step_generator(device: torch.device, seed: int, epoch: int, rank: int) -> torch.Generator:
    """The generator of the step's own draws (CutMix boxes, λ), ``batch["generator"]``: separate from
    the views' generator, so that making batches ahead of the step (:mod:`clim.data.prefetch`) draws
    exactly the same numbers as making them in turn."""
    return torch.Generator(device).manual_seed(epoch_seed(seed + 1, epoch, rank) + 7)


def resume_point(next_step: int, views_generator: torch.Generator | None) -> dict:
    """What a batch carries so that a checkpoint taken after its step can resume the epoch exactly:
    the step to start from and the views generator's state after making this batch. The step
    generator's state is read by the trainer at checkpoint time (the step has drawn from it since)."""
    return {"step": next_step, "views": None if views_generator is None else views_generator.get_state()}


def first_step(resume: dict | None) -> int:
    """The step a mid-epoch checkpoint's ``resume`` point starts the epoch from (0 without one)."""
    return int(resume["step"]) if resume else 0


def restore_generators(resume: dict | None, views_generator: torch.Generator | None,
                       step_generator: torch.Generator) -> int:
    """Set the generators to a mid-epoch checkpoint's states; returns the first step to make."""
    if not resume:
        return 0
    if views_generator is not None and resume.get("views") is not None:
        views_generator.set_state(resume["views"])
    step_generator.set_state(resume["step_generator"])
    return first_step(resume)


def draw_positives(table: torch.Tensor, index: torch.Tensor, generator: torch.Generator | None = None
                   ) -> torch.Tensor:
    """One positive per anchor, uniformly among its table entries (METHOD §3): long, on the table's
    device; drawn on the generator's device (the table's without one, from torch's global RNG)."""
    rows = table[index.to(table.device)]
    on = generator.device if generator is not None else table.device
    pick = torch.randint(rows.shape[1], (rows.shape[0],), generator=generator, device=on)
    return rows[torch.arange(rows.shape[0], device=rows.device), pick.to(rows.device)].long()
