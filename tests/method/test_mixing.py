"""CutMix and mixup (METHOD §3): exact λ, box geometry, reproducibility, Beta sampler."""

import math

import pytest
import torch

from clim.method.mixing import cutmix, cutmix_boxes, mixup, sample_beta

B, C, H, W = 64, 3, 16, 20


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_cutmix_lam_is_exact_anchor_share():
    anchor, positive = torch.zeros(B, C, H, W), torch.ones(B, C, H, W)
    mixed, lam = cutmix(anchor, positive, 2.0, gen())
    assert lam.dtype == torch.float32 and lam.shape == (B,)
    torch.testing.assert_close(lam, 1.0 - mixed.mean(dim=(1, 2, 3)))
    assert lam.unique().numel() > B // 2  # per-sample boxes


def test_cutmix_box_is_rectangle_with_drawn_side_ratio():
    mixed, lam = cutmix(torch.zeros(B, 1, H, W), torch.ones(B, 1, H, W), 2.0, gen(1))
    y1, y2, x1, x2, lam_drawn = cutmix_boxes(B, H, W, 2.0, gen(1))  # same draws as cutmix above
    unclipped = 0
    for b in range(B):
        mask = mixed[b, 0].bool()
        expected = torch.zeros(H, W, dtype=torch.bool)
        expected[y1[b] : y2[b], x1[b] : x2[b]] = True
        assert torch.equal(mask, expected)  # exactly the axis-aligned box
        ratio = math.sqrt(1.0 - lam_drawn[b].item())
        h, w = (y2[b] - y1[b]).item(), (x2[b] - x1[b]).item()
        assert h <= int(H * ratio) and w <= int(W * ratio)  # clipping only shrinks
        if 0 < y1[b] and y2[b] < H and 0 < x1[b] and x2[b] < W:
            assert (h, w) == (int(H * ratio), int(W * ratio))
            unclipped += 1
    assert unclipped > 0
    assert bool((lam_drawn != lam).any())  # λ was reset after clipping


def test_cutmix_reproducible_and_dtype_device():
    anchor = torch.randint(0, 255, (B, C, H, W), dtype=torch.uint8, generator=gen(5))
    positive = torch.randint(0, 255, (B, C, H, W), dtype=torch.uint8, generator=gen(6))
    m1, l1 = cutmix(anchor, positive, 2.0, gen(7))
    m2, l2 = cutmix(anchor, positive, 2.0, gen(7))
    assert torch.equal(m1, m2) and torch.equal(l1, l2)
    assert m1.dtype == torch.uint8 and l1.device == anchor.device
    m3, _ = cutmix(anchor, positive, 2.0, gen(8))
    assert not torch.equal(m1, m3)
    bf, _ = cutmix(anchor.bfloat16(), positive.bfloat16(), 2.0, gen(7))
    assert bf.dtype == torch.bfloat16 and torch.equal(bf, m1.bfloat16())


def test_mixup_convex_combination():
    anchor, positive = torch.rand(B, C, H, W, generator=gen(1)), torch.rand(B, C, H, W, generator=gen(2))
    mixed, lam = mixup(anchor, positive, 0.2, gen(3))
    assert lam.shape == (B,) and lam.dtype == torch.float32 and bool(((lam >= 0) & (lam <= 1)).all())
    expected = lam.view(B, 1, 1, 1) * anchor + (1 - lam.view(B, 1, 1, 1)) * positive
    torch.testing.assert_close(mixed, expected)
    again, lam2 = mixup(anchor, positive, 0.2, gen(3))
    assert torch.equal(again, mixed) and torch.equal(lam, lam2)
    with pytest.raises(TypeError):
        mixup(anchor.to(torch.uint8), positive.to(torch.uint8), 0.2)


def test_beta_sampler_distribution():
    n = 40000
    lam2 = sample_beta(2.0, n, gen(0))
    # Beta(2, 2) CDF is 3x² − 2x³
    for x in (0.1, 0.3, 0.5, 0.8):
        assert (lam2 <= x).float().mean().item() == pytest.approx(3 * x**2 - 2 * x**3, abs=0.01)
    lam02 = sample_beta(0.2, n, gen(1))
    assert bool(((lam02 >= 0) & (lam02 <= 1)).all()) and torch.isfinite(lam02).all()
    assert lam02.mean().item() == pytest.approx(0.5, abs=0.01)
    assert lam02.var().item() == pytest.approx(1 / (4 * (2 * 0.2 + 1)), abs=0.01)  # Var Beta(α, α)
    assert torch.equal(lam02, sample_beta(0.2, n, gen(1)))
