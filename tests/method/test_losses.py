"""InfoNCE (paper Eq. 1) and the mixture loss (paper Eq. 3) against explicit exp/log arithmetic."""

import math

import pytest
import torch
import torch.nn.functional as F

from clim.method.losses import info_nce, mixed_info_nce

TAU = 0.2


def unit(rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=1)


Q = unit([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0]])
KA = unit([[0.8, 0.6, 0.0], [0.0, 1.0, 0.0]])
KP = unit([[0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
QUEUE = unit([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])


def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def hand_nce(q, k, queue):
    """-log(exp(q·k/τ) / (exp(q·k/τ) + Σ_j exp(q·n_j/τ))) with plain math."""
    pos = math.exp(dot(q, k) / TAU)
    neg = sum(math.exp(dot(q, n) / TAU) for n in queue)
    return -math.log(pos / (pos + neg))


def test_info_nce_matches_hand_computation():
    q, k, queue = Q.tolist(), KA.tolist(), QUEUE.tolist()
    per_sample = [hand_nce(q[b], k[b], queue) for b in range(2)]
    assert info_nce(Q, KA, QUEUE, TAU).item() == pytest.approx(sum(per_sample) / 2, rel=1e-5)
    got = info_nce(Q, KA, QUEUE, TAU, reduction="none")
    assert got.shape == (2,) and got.tolist() == pytest.approx(per_sample, rel=1e-5)


@pytest.mark.parametrize("lam", [0.3, [0.25, 0.9]])
def test_mixed_info_nce_matches_hand_computation(lam):
    q, ka, kp, queue = Q.tolist(), KA.tolist(), KP.tolist(), QUEUE.tolist()
    lams = lam if isinstance(lam, list) else [lam, lam]
    expected = [
        lams[b] * hand_nce(q[b], ka[b], queue) + (1 - lams[b]) * hand_nce(q[b], kp[b], queue)
        for b in range(2)
    ]
    lam_arg = torch.tensor(lam) if isinstance(lam, list) else lam
    got = mixed_info_nce(Q, KA, KP, QUEUE, lam_arg, TAU)
    assert got.item() == pytest.approx(sum(expected) / 2, rel=1e-5)
    # λ = 1 is plain InfoNCE with the anchor's key
    plain = info_nce(Q, KA, QUEUE, TAU).item()
    assert mixed_info_nce(Q, KA, KP, QUEUE, 1.0, TAU).item() == pytest.approx(plain)


def test_float32_under_bf16_and_large_logits():
    g = torch.Generator().manual_seed(0)
    q, k, queue = (F.normalize(torch.randn(n, 16, generator=g), dim=1) for n in (8, 8, 64))
    ref = info_nce(q, k, queue, TAU)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = info_nce(q, k, queue, TAU)
    assert inside.dtype == torch.float32 and inside.item() == pytest.approx(ref.item(), rel=1e-6)
    qb, kb, queueb = q.bfloat16(), k.bfloat16(), queue.bfloat16()
    bf = info_nce(qb, kb, queueb, TAU)
    assert bf.dtype == torch.float32
    assert bf.item() == pytest.approx(info_nce(qb.float(), kb.float(), queueb.float(), TAU).item(), rel=1e-6)
    tiny_tau = info_nce(q, k, queue, 1e-3)  # logits ~1e3: no overflow
    assert torch.isfinite(tiny_tau)


def test_gradient_flows_to_query_only():
    q = Q.clone().requires_grad_(True)
    mixed_info_nce(q, KA, KP, QUEUE, torch.tensor([0.5, 0.2]), TAU).backward()
    assert q.grad is not None and torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0
