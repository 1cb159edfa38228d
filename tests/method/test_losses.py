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


# ---- the public wrappers (issue 18): defaults, normalisation, layout checks, in-batch negatives


def test_default_temperature_is_methods():
    assert info_nce(Q, KA, QUEUE).item() == pytest.approx(info_nce(Q, KA, QUEUE, TAU).item())
    assert mixed_info_nce(Q, KA, KP, QUEUE, lam=0.3).item() == pytest.approx(
        mixed_info_nce(Q, KA, KP, QUEUE, 0.3, TAU).item())


def test_unnormalised_inputs_are_normalised():
    """A raw head output (norm ≫ 1) would give a huge loss; the wrapper normalises it first."""
    scaled = info_nce(7.0 * Q, 3.0 * KA, 5.0 * QUEUE)
    assert scaled.item() == pytest.approx(info_nce(Q, KA, QUEUE).item(), rel=1e-6)
    raw = info_nce(7.0 * Q, 3.0 * KA, 5.0 * QUEUE, normalize=False)  # what the pure formula gives
    assert raw.item() > 10 * scaled.item()


def test_queue_in_lightlys_d_by_k_layout_is_rejected():
    with pytest.raises(ValueError, match=r"\(d, K\).*bank\.T"):
        info_nce(Q, KA, QUEUE.T)
    square = unit([[1.0, 0.2, 0.0], [0.0, 1.0, 0.3], [0.4, 0.0, 1.0]])  # 3 negatives of dimension 3
    assert torch.isfinite(info_nce(Q, KA, square))
    with pytest.raises(ValueError, match="columns"):  # K == d: told apart by which side has unit norm
        mixed_info_nce(Q, KA, KP, square.T.contiguous(), lam=0.5)
    with pytest.raises(ValueError, match="shape"):
        info_nce(Q, KA[:1], QUEUE)


def test_in_batch_negatives_are_the_other_keys():
    g = torch.Generator().manual_seed(0)
    q, k, kp = (F.normalize(torch.randn(6, 5, generator=g), dim=1) for _ in range(3))
    expected = F.cross_entropy(q @ k.T / TAU, torch.arange(6))
    assert info_nce(q, k).item() == pytest.approx(expected.item(), rel=1e-5)
    lam = torch.rand(6, generator=g)
    eye = torch.eye(6, dtype=torch.bool)
    negatives = (q @ k.T / TAU).masked_fill(eye, float("-inf"))
    positive_logits = (q * kp).sum(1, keepdim=True) / TAU
    positive_term = F.cross_entropy(torch.cat([positive_logits, negatives], 1), torch.zeros(6, dtype=torch.long),
                                    reduction="none")
    anchor_term = F.cross_entropy(q @ k.T / TAU, torch.arange(6), reduction="none")
    got = mixed_info_nce(q, k, kp, lam=lam, reduction="none")
    torch.testing.assert_close(got, lam * anchor_term + (1 - lam) * positive_term)
    with pytest.raises(ValueError, match="at least 2"):
        info_nce(q[:1], k[:1])


def test_mixed_loss_without_lambda_is_an_error():
    with pytest.raises(TypeError, match="lam"):
        mixed_info_nce(Q, KA, KP, QUEUE)
