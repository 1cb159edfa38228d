"""Contrastive losses of CLIM (METHOD §1 and §3; paper Eq. 1 and Eq. 3).

Both losses share one implementation, :func:`_nce_terms`: the negative logits ``q · queueᵀ / τ``
are computed once per query batch and reused by every positive key, so the mixed loss (two
InfoNCE terms on the same mixed query) costs one B×K matmul instead of two.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["info_nce", "mixed_info_nce"]

_REDUCTIONS = ("mean", "none")


def _nce_terms(q: Tensor, keys: tuple[Tensor, ...], queue: Tensor, temperature: float) -> list[Tensor]:
    """Per-sample InfoNCE ``L_nce(q_b, key_b)`` for each key tensor, negatives = queue rows.

    Eq. 1 is the cross-entropy of the logits ``[q·k, q·n_1, …, q·n_K] / τ`` with target 0, i.e.
    ``logsumexp(logits) − q·k/τ``. Written as ``logaddexp(q·k/τ, logsumexp_j(q·n_j/τ)) − q·k/τ``
    it stays numerically stable (no explicit exp) and lets every key reuse the negatives'
    logsumexp. Computed in float32 with autocast off, so bf16/fp16 inputs or an enclosing
    autocast region do not degrade the loss (METHOD §1).
    """
    with torch.autocast(device_type=q.device.type, enabled=False):
        q32 = q.float()
        neg_lse = torch.logsumexp(q32 @ queue.float().T / temperature, dim=1)  # [B]
        terms = []
        for key in keys:
            pos = (q32 * key.float()).sum(dim=1) / temperature  # [B]
            terms.append(torch.logaddexp(pos, neg_lse) - pos)
    return terms


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def info_nce(q: Tensor, k: Tensor, queue: Tensor, temperature: float, reduction: str = "mean") -> Tensor:
    """MoCo InfoNCE (paper Eq. 1, METHOD §1): one positive key per query, the queue as negatives.

    Args:
        q: queries [B, d], L2-normalised (with gradient).
        k: positive keys [B, d], L2-normalised (momentum encoder, no gradient).
        queue: negative keys [K, d], L2-normalised.
        temperature: τ (METHOD: 0.2).
        reduction: ``"mean"`` (batch mean, a scalar) or ``"none"`` (float32 [B]).
    """
    return _reduce(_nce_terms(q, (k,), queue, temperature)[0], reduction)


def mixed_info_nce(
    q: Tensor,
    k_anchor: Tensor,
    k_positive: Tensor,
    queue: Tensor,
    lam: Tensor | float,
    temperature: float,
    reduction: str = "mean",
) -> Tensor:
    """Mixture loss of paper Eq. 3 (METHOD §3), batch mean of
    ``λ_b·L_nce(q_b, k_anchor_b) + (1−λ_b)·L_nce(q_b, k_positive_b)``.

    Two separate InfoNCE terms, each with one positive and the queue as negatives, weighted by the
    anchor's pixel share λ of the mixed query (not one loss with two positives).

    Args:
        q: queries of the mixed images [B, d].
        k_anchor: keys of a second view of the anchors [B, d].
        k_positive: keys of a view of the selected positives [B, d].
        queue: negatives [K, d].
        lam: anchor share per sample, a [B] tensor or a float.
        temperature: τ.
        reduction: ``"mean"`` or ``"none"``.
    """
    loss_anchor, loss_positive = _nce_terms(q, (k_anchor, k_positive), queue, temperature)
    lam = torch.as_tensor(lam, dtype=torch.float32, device=loss_anchor.device)
    return _reduce(lam * loss_anchor + (1.0 - lam) * loss_positive, reduction)
