"""Contrastive losses of CLIM (METHOD §1 and §3; paper Eq. 1 and Eq. 3). Both share :func:`_nce_terms`: the
negative logits ``q · negativesᵀ / τ`` are computed once per query batch and reused by every positive key, so the
mixed loss costs one B×K matmul, not two.

Hard to misuse, with no host synchronisation on the common path: inputs are L2-normalised (a raw head output gives
the cosine loss; ``normalize=False`` skips this and the check below); a queue that is not ``[K, d]`` is rejected,
and when K == d one whose columns, not rows, are unit vectors (lightly's ``(d, K)``: one host synchronisation,
in that case only). ``queue=None`` uses in-batch negatives (SimCLR / MoCo v3 style)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["TEMPERATURE", "info_nce", "mixed_info_nce"]

TEMPERATURE = 0.2  # τ of METHOD §1


def _nce_terms(q: Tensor, keys: tuple[Tensor, ...], negatives: Tensor, temperature: float,
               in_batch: bool = False) -> list[Tensor]:
    """Per-sample InfoNCE ``L_nce(q_b, key_b)`` for each key tensor, negatives = rows of ``negatives``
    (all of them, or with ``in_batch`` every row but b).

    Eq. 1 is the cross-entropy of the logits ``[q·k, q·n_1, …, q·n_K] / τ`` with target 0, i.e.
    ``logsumexp(logits) − q·k/τ``; as ``logaddexp(q·k/τ, logsumexp_j(q·n_j/τ)) − q·k/τ`` it is stable
    (no explicit exp) and every key reuses the negatives' logsumexp. Float32 with autocast off, so
    bf16/fp16 inputs or an enclosing autocast region do not degrade the loss (METHOD §1).
    """
    with torch.autocast(device_type=q.device.type, enabled=False):
        q32 = q.float()
        negative_logits = q32 @ negatives.float().T / temperature  # [B, K]
        if in_batch:
            negative_logits = negative_logits.masked_fill(
                torch.eye(q.shape[0], dtype=torch.bool, device=q.device), float("-inf"))
        neg_lse = torch.logsumexp(negative_logits, dim=1)  # [B]
        positive_logits = [(q32 * key.float()).sum(dim=1) / temperature for key in keys]  # [B] each
        return [torch.logaddexp(pos, neg_lse) - pos for pos in positive_logits]


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be one of ('mean', 'none'), got {reduction!r}")


def _checked(q: Tensor, keys: tuple[Tensor, ...], queue: Tensor | None, normalize: bool
             ) -> tuple[Tensor, tuple[Tensor, ...], Tensor | None]:
    """Shape checks (host-side only); with ``normalize`` the square-queue check and unit inputs (dim 1)."""
    for name, value in (("queries", q), *(("keys", key) for key in keys), ("queue", queue)):
        if not isinstance(value, Tensor) and (value is not None or name != "queue"):
            raise TypeError(f"{name} must be a tensor, got {type(value).__name__}")
    if q.dim() != 2:
        raise ValueError(f"queries must be [B, d], got shape {tuple(q.shape)}")
    for key in keys:
        if key.shape != q.shape:
            raise ValueError(f"keys must have the queries' shape {tuple(q.shape)}, got {tuple(key.shape)}")
    d = q.shape[1]
    if queue is None:
        if q.shape[0] < 2:
            raise ValueError("in-batch negatives (queue=None) need a batch of at least 2")
    elif queue.dim() != 2 or queue.shape[1] != d:
        hint = (" — it looks like (d, K): lightly's MemoryBankModule returns (d, K) by default, pass bank.T"
                if queue.dim() == 2 and queue.shape[0] == d else "")
        raise ValueError(f"queue must be [K, d] with d = {d} (one negative per row), got {tuple(queue.shape)}{hint}")
    elif normalize and queue.shape[0] == d and _columns_are_the_unit_vectors(queue):
        raise ValueError(f"queue is {d}x{d} and its columns, not its rows, have unit norm: it looks like a (d, K) "
                         "bank (lightly's MemoryBankModule default); pass bank.T (the queue is [K, d])")
    if not normalize:
        return q, keys, queue
    return _unit(q), tuple(_unit(key) for key in keys), None if queue is None else _unit(queue)


def _unit(x: Tensor) -> Tensor:
    return F.normalize(x.float(), dim=1)  # in float32, as the loss itself


def _columns_are_the_unit_vectors(queue: Tensor) -> bool:
    square = queue.detach().float()
    rows, columns = ((square.norm(dim=dim) - 1).abs().max() for dim in (1, 0))
    return bool((columns < 1e-3) & (rows > 1e-3))


def info_nce(q: Tensor, k: Tensor, queue: Tensor | None = None, temperature: float = TEMPERATURE,
             reduction: str = "mean", normalize: bool = True) -> Tensor:
    """MoCo InfoNCE (paper Eq. 1, METHOD §1): one positive key per query, negatives from the queue
    or, with ``queue=None``, the batch's other keys.

    Gradient flows through every input that carries it: in a MoCo loop (a queue) only ``q``; ``k``
    from the momentum encoder and the queue do not (compute them under ``torch.no_grad()`` or
    detach them). In-batch (``queue=None``, SimCLR style) ``q`` and ``k`` come from the same
    encoder and both carry gradient (``k`` is also the negatives); the symmetric loss is
    ``(info_nce(z1, z2) + info_nce(z2, z1)) / 2``.

    Args:
        q: queries [B, d].
        k: positive keys [B, d].
        queue: negative keys ``[K, d]``, one per row (lightly's ``MemoryBankModule`` gives
            ``(d, K)``: pass ``bank.T``); None: in-batch negatives ``k_j, j ≠ b``.
        temperature: τ (METHOD: 0.2).
        reduction: ``"mean"`` (batch mean, a scalar) or ``"none"`` (float32 [B]).
        normalize: L2-normalise q, k and queue along dim 1 first and check a square queue's layout
            (default). False only for unit vectors in the right layout (the trainer's): no value
            check, no host synchronisation, three kernels fewer.
    """
    q, (k,), queue = _checked(q, (k,), queue, normalize)
    return _reduce(_nce_terms(q, (k,), k if queue is None else queue, temperature, in_batch=queue is None)[0],
                   reduction)


def mixed_info_nce(q: Tensor, k_anchor: Tensor, k_positive: Tensor, queue: Tensor | None = None,
                   lam: Tensor | float | None = None, temperature: float = TEMPERATURE, reduction: str = "mean",
                   normalize: bool = True) -> Tensor:
    """Mixture loss of paper Eq. 3 (METHOD §3), batch mean of
    ``λ_b·L_nce(q_b, k_anchor_b) + (1−λ_b)·L_nce(q_b, k_positive_b)``: two InfoNCE terms, each with
    one positive and the same negatives (the queue, or with ``queue=None`` the other anchors' keys
    ``k_anchor_j, j ≠ b``), weighted by the anchor's pixel share λ of the mixed query (not one loss
    with two positives). Gradient as in :func:`info_nce`: in a MoCo loop only ``q`` carries it (the
    keys come from the momentum encoder, no gradient); in an in-batch loop (``queue=None``) the keys
    come from the trained encoder and carry gradient too.

    Args:
        q: queries of the mixed images [B, d].
        k_anchor: keys of a second view of the anchors [B, d].
        k_positive: keys of a view of the selected positives [B, d].
        queue: negatives ``[K, d]`` (see :func:`info_nce`), or None for in-batch negatives.
        lam: anchor share per sample, a [B] tensor (or list) or a float — required: what
            :func:`~clim.method.mixing.cutmix` / :func:`~clim.method.mixing.mixup` return.
        temperature: τ (METHOD: 0.2).
        reduction: ``"mean"`` or ``"none"``.
        normalize: as in :func:`info_nce`.
    """
    if lam is None:
        raise TypeError("mixed_info_nce needs lam, the anchor's share of each mixed query (cutmix / mixup return it)")
    q, (k_anchor, k_positive), queue = _checked(q, (k_anchor, k_positive), queue, normalize)
    lam = torch.as_tensor(lam, dtype=torch.float32, device=q.device)
    if lam.dim() != 0 and lam.shape != q.shape[:1]:
        raise ValueError(f"lam must be a float or one anchor share per query, [B] = [{q.shape[0]}] for queries of "
                         f"shape {tuple(q.shape)}, got lam of shape {tuple(lam.shape)}")
    loss_anchor, loss_positive = _nce_terms(q, (k_anchor, k_positive), k_anchor if queue is None else queue,
                                            temperature, in_batch=queue is None)
    return _reduce(lam * loss_anchor + (1.0 - lam) * loss_positive, reduction)
