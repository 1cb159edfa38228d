"""The training objective of one step: MoCo v2 (METHOD §1) or CLIM (METHOD §3, §4, whose formulas it computes).

Encodes a step's views (:mod:`clim.data.pipeline`), updates the momentum encoder before encoding keys (as MoCo
does) and returns the loss, its parts (so a log can show why the loss jumps when the positives join) and the keys
to enqueue.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from clim.data.views import at_resolutions
from clim.method.losses import info_nce, mixed_info_nce
from clim.method.mixing import cutmix, mixup
from clim.models.moco import MoCo
from clim.specs import ObjectiveSpec


@dataclass
class StepOutput:
    loss: torch.Tensor
    keys: torch.Tensor  # to enqueue after the optimiser step
    lam_mean: torch.Tensor | None = None  # mean λ of the batch, a device scalar (read it at log time)
    # The loss's parts, detached device scalars: loss_moco, loss_positive (CLIM with positives),
    # loss_multicrop (multi-crop baseline); ``loss`` is their sum.
    parts: dict[str, torch.Tensor] = field(default_factory=dict)


def _per_resolution(encode, inputs: list[list[torch.Tensor]]) -> list[list[torch.Tensor]]:
    """``encode`` (``MoCo.encode_queries`` / ``encode_keys``) of several inputs, each a list of views
    by resolution, as per input its encodings by resolution; the views of one resolution share a call
    (one forward pass on CUDA, each with its own BN groups: the same as encoding every view alone)."""
    by_size = [encode([views[r] for views in inputs]) for r in range(len(inputs[0]))]
    return [list(per_input) for per_input in zip(*by_size)]


def compute_step(model: MoCo, batch: dict, spec: ObjectiveSpec) -> StepOutput:
    """The step's loss; the losses get ``normalize=False`` (queries, keys and queue are unit vectors
    by construction), so nothing here synchronises with the host."""
    temperature, symmetric = spec.temperature, spec.symmetric
    queue = model.queue.clone()
    use_positives = spec.clim and batch["positive_key"] is not None
    mixing = use_positives and spec.mixing != "none"
    lam = None
    # Query-encoder inputs per resolution: the query view, the mixed query, the key view (symmetric).
    query_inputs = [batch["query"]]
    if mixing:
        mix = cutmix if spec.mixing == "cutmix" else mixup
        mixed, lam = mix(batch["query"][0], batch["positive_query"][0], spec.alpha, generator=batch["generator"])
        # mixed once at the largest resolution, then resized like the views (METHOD §4)
        query_inputs.append(at_resolutions(mixed, [view.shape[-1] for view in batch["query"]]))
    if symmetric:
        query_inputs.append(batch["key"])
    encoded = _per_resolution(model.encode_queries, query_inputs)
    queries, mixed_queries = encoded[0], encoded[1] if mixing else None
    symmetric_queries = encoded[-1] if symmetric else None

    with torch.no_grad():
        model.momentum_update()
        key_inputs = [batch["key"]]
        if use_positives:
            key_inputs.append(batch["positive_key"])
        if symmetric:
            key_inputs.append(batch["query"])
        encoded_keys = _per_resolution(model.encode_keys, key_inputs)
        keys, positive_keys = encoded_keys[0], encoded_keys[1] if use_positives else None
        symmetric_keys = encoded_keys[-1] if symmetric else None

    # Over every (query resolution i, key resolution j) pair: the MoCo term and CLIM's positive term.
    moco_terms, positive_terms = [], []
    for i, query in enumerate(queries):
        for j, key in enumerate(keys):
            term = info_nce(query, key, queue, temperature, normalize=False)
            if symmetric_queries is not None:
                term = 0.5 * (term + info_nce(symmetric_queries[i], symmetric_keys[j], queue, temperature,
                                              normalize=False))
            moco_terms.append(term)
            if mixing:
                positive_terms.append(
                    mixed_info_nce(mixed_queries[i], key, positive_keys[j], queue, lam, temperature, normalize=False))
            elif use_positives:
                positive_terms.append(info_nce(query, positive_keys[j], queue, temperature, normalize=False))
    parts = {"loss_moco": torch.stack(moco_terms).mean()}
    if positive_terms:
        parts["loss_positive"] = torch.stack(positive_terms).mean()
    if batch["small_crops"] is not None:
        small = [info_nce(crop, keys[0], queue, temperature, normalize=False)
                 for crop in model.encode_queries(batch["small_crops"])]
        parts["loss_multicrop"] = torch.stack(small).mean()
    loss = sum(parts.values())
    enqueue = keys[0] if symmetric_keys is None else torch.cat([keys[0], symmetric_keys[0]])
    return StepOutput(loss, enqueue, None if lam is None else lam.detach().float().mean(),
                      {name: value.detach() for name, value in parts.items()})
