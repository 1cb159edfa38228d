"""Image mixing of an anchor batch with its positives (METHOD §3, paper §3.2.2).

All random draws go through the caller's ``torch.Generator`` (on its device, then moved to the
images'), so a seeded run is reproducible. ``torch.distributions.Beta`` only reads the global RNG,
so :func:`sample_beta` draws Beta(α, α) as ``X / (X + Y)``, ``X, Y ~ Gamma(α)`` by Marsaglia–Tsang.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["CUTMIX_ALPHA", "MIXUP_ALPHA", "sample_beta", "cutmix_boxes", "cutmix", "mixup"]

CUTMIX_ALPHA = 2.0  # METHOD §3 (paper Table 9: the best α)
MIXUP_ALPHA = 0.2  # METHOD §3 (paper Table 10)
_GAMMA_ROUNDS = 4  # rejection candidates drawn at once; each is accepted with probability >= 0.95


def _log_gamma_variates(alpha: float, shape: tuple[int, ...], generator, device) -> Tensor:
    """``log X`` with ``X ~ Gamma(alpha, 1)``, Marsaglia & Tsang (2000), float32.

    For α < 1 the boost ``Gamma(α) = Gamma(α + 1) · U^(1/α)`` is applied in log space, so tiny
    variates (mixup's α = 0.2) do not underflow. Each pass draws ``_GAMMA_ROUNDS`` candidates per
    entry and keeps the first accepted (each ≥ 95 %, all four fail with probability < 1e-5). On CPU
    the rare pending entries get further passes; on a GPU that check would be a host
    synchronisation per draw, so the last candidate is kept (< 1e-5 in total variation).
    """
    boost = alpha < 1.0
    d = (alpha + 1.0 if boost else alpha) - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    out = torch.empty(shape, device=device)
    pending = torch.ones(shape, dtype=torch.bool, device=device)
    while True:
        x = torch.randn((_GAMMA_ROUNDS, *shape), generator=generator, device=device)
        u = 1.0 - torch.rand((_GAMMA_ROUNDS, *shape), generator=generator, device=device)  # (0, 1]
        v = (1.0 + c * x) ** 3
        log_v = torch.log(v.clamp_min(torch.finfo(v.dtype).tiny))
        accept = (v > 0) & (torch.log(u) < 0.5 * x * x + d - d * v + d * log_v)
        first = accept.to(torch.uint8).argmax(dim=0, keepdim=True)  # the first accepted round (0 if none)
        value = (math.log(d) + log_v).gather(0, first).squeeze(0)
        found = accept.any(dim=0)
        if device.type != "cpu":  # one round, no sync: the last candidate where none was accepted
            out = torch.where(found, value, math.log(d) + log_v[-1])
            break
        out = torch.where(pending & found, value, out)
        pending &= ~found
        if not bool(pending.any()):
            break
    if boost:
        u = 1.0 - torch.rand(shape, generator=generator, device=device)
        out = out + torch.log(u) / alpha
    return out


def sample_beta(alpha: float, n: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
                ) -> Tensor:
    """``n`` independent draws of Beta(α, α) as float32 on ``device``, honouring ``generator``:
    ``λ = X / (X + Y) = sigmoid(log X − log Y)``, ``X, Y ~ Gamma(α)`` (exact, never 0 / 0)."""
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    draw_on = torch.device(device) if generator is None else generator.device
    log_g = _log_gamma_variates(float(alpha), (2, n), generator, draw_on)
    return torch.sigmoid(log_g[0] - log_g[1]).to(device)


def cutmix_boxes(n: int, height: int, width: int, alpha: float = CUTMIX_ALPHA, generator: torch.Generator | None = None,
                 device="cpu") -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Per-sample CutMix boxes (Yun et al. 2019, METHOD §3): ``(y1, y2, x1, x2, lam_drawn)``, [n] on
    ``device`` (the box int64). ``λ ~ Beta(α, α)``; the box, rows ``[y1, y2)`` by columns ``[x1, x2)``, is
    ``int(H·√(1−λ))`` by ``int(W·√(1−λ))`` pixels centred uniformly on the grid, clipped to the image."""
    draw_on = torch.device(device) if generator is None else generator.device
    lam = sample_beta(alpha, n, generator, draw_on)
    ratio = torch.sqrt(1.0 - lam)
    cut_h, cut_w = (height * ratio).long(), (width * ratio).long()
    cy = torch.randint(height, (n,), generator=generator, device=draw_on)
    cx = torch.randint(width, (n,), generator=generator, device=draw_on)
    y1, x1 = cy - cut_h // 2, cx - cut_w // 2
    y2, x2 = y1 + cut_h, x1 + cut_w
    boxes = (y1.clamp(0, height), y2.clamp(0, height), x1.clamp(0, width), x2.clamp(0, width), lam)
    return tuple(t.to(device) for t in boxes)


def _check_pair(name: str, anchor: Tensor, positive: Tensor, images: bool) -> None:
    """Host-side shape checks (no synchronisation): tensors, [B, C, H, W] for CutMix, equal shapes."""
    for role, value in (("anchor", anchor), ("positive", positive)):
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} needs {role} as a tensor, got {type(value).__name__}")
    if images and anchor.dim() != 4:
        raise ValueError(f"{name} needs images [B, C, H, W], got anchor of shape {tuple(anchor.shape)}"
                         + (" (a single image? add the batch dimension: x.unsqueeze(0))" if anchor.dim() == 3 else ""))
    if not images and anchor.dim() < 1:
        raise ValueError(f"{name} needs a batch [B, ...], got a 0-d anchor")
    if positive.shape != anchor.shape:
        raise ValueError(f"{name} needs one positive per anchor, of the anchor's shape: anchor "
                         f"{tuple(anchor.shape)}, positive {tuple(positive.shape)}")


def cutmix(anchor: Tensor, positive: Tensor, alpha: float = CUTMIX_ALPHA, generator: torch.Generator | None = None
           ) -> tuple[Tensor, Tensor]:
    """CutMix of anchors [B, C, H, W] with positives of the same shape (METHOD §3); other shapes are
    refused with both shapes named.

    ``λ ~ Beta(α, α)``, α = 2 by default (METHOD). The box region of each anchor is replaced by
    the same region of its positive; ``lam`` is then reset to the exact share of anchor pixels,
    ``1 − box_area / (H·W)``, because clipping makes the drawn λ only approximate. Any dtype and
    device. Returns ``(mixed, lam)``: mixed images (anchor's dtype/device), lam float32 [B] there.
    """
    _check_pair("cutmix", anchor, positive, images=True)
    b, _, h, w = anchor.shape
    y1, y2, x1, x2, _ = cutmix_boxes(b, h, w, alpha, generator, anchor.device)
    rows = torch.arange(h, device=anchor.device).view(1, h, 1)
    cols = torch.arange(w, device=anchor.device).view(1, 1, w)
    box = ((rows >= y1.view(b, 1, 1)) & (rows < y2.view(b, 1, 1))
           & (cols >= x1.view(b, 1, 1)) & (cols < x2.view(b, 1, 1)))
    return torch.where(box.unsqueeze(1), positive, anchor), 1.0 - ((y2 - y1) * (x2 - x1)).float() / float(h * w)


def mixup(anchor: Tensor, positive: Tensor, alpha: float = MIXUP_ALPHA, generator: torch.Generator | None = None
          ) -> tuple[Tensor, Tensor]:
    """Pixel mixup (METHOD §3, paper Table 10): ``mixed_b = λ_b·anchor_b + (1−λ_b)·positive_b``.

    ``λ_b ~ Beta(α, α)`` per sample (METHOD: α = 0.2, the default). Anchors [B, ...] and positives
    of the same shape; floating-point images only, since a convex combination of integer images
    would need rounding. Returns ``(mixed, lam)`` as :func:`cutmix` does.
    """
    _check_pair("mixup", anchor, positive, images=False)
    if not anchor.is_floating_point():
        raise TypeError(f"mixup needs floating-point images, got {anchor.dtype}")
    lam = sample_beta(alpha, anchor.shape[0], generator, anchor.device)
    weight = lam.to(anchor.dtype).view(-1, *([1] * (anchor.dim() - 1)))
    return torch.lerp(positive, anchor, weight), lam
