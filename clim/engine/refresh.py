"""What a positives refresh leaves behind: its log line, its per-anchor facts on disk, the app's hook.

After every refresh (METHOD §2) the main rank saves its per-anchor facts, which the positives table
alone does not hold (cluster sizes, |Ω_p|, kNN picks: ``RUN_DIR/positives/selection.pt``, read later by
``clim inspect`` and ``clim report``). Drawing is the apps' business: ``clim pretrain`` and ``clim demo``
pass :func:`clim.inspect.draw_refresh` (``RUN_DIR/positives/epoch_NNN.png``) as the ``on_refresh`` hook.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from clim.config import Config
from clim.method.positives import is_refresh_epoch, needs_table
from clim.runtime import checkpoint, distributed
from clim.specs import SelectionSpec

PREVIEW_DIR = "positives"  # RUN_DIR/positives: the refresh's facts and the figures drawn from them
DETAILS_NAME = "selection.pt"


@dataclass
class Refresh:
    """One refresh, as the ``on_refresh`` hook gets it (main rank, its facts already saved).

    ``epoch``: the metrics record (1-based) that trains with the new table; ``table``: long [N, P]
    on the CPU; ``details``: what ``folder / DETAILS_NAME`` holds (:func:`clim.method.bank.anchor_details`
    plus ``epoch``); ``dataset``: the pretraining dataset (labels, classes, images); ``warn``: one
    line to the run's log."""

    epoch: int
    table: torch.Tensor
    details: dict
    dataset: object
    config: Config
    folder: Path
    warn: Callable[[str], None]


def refresh_due(spec: SelectionSpec | None, epoch: int, bank) -> bool:
    """A refresh before ``epoch``: on the schedule, or a table needed that no refresh has filled yet."""
    return is_refresh_epoch(spec, epoch) or (needs_table(spec, epoch) and not bank.filled)


def save_refresh(bank, dataset, config: Config, out_dir: str | Path, warn: Callable[[str], None], epoch: int,
                 on_refresh: Callable[[Refresh], object] | None = None) -> Refresh | None:
    """Right after a refresh of ``bank``: save its per-anchor facts and call ``on_refresh``. Main rank
    only; a failure (of the save or the hook) costs one warning, never the run."""
    if distributed.rank() != 0 or bank.details is None:
        return None
    details = {"epoch": epoch, **bank.details}
    folder = Path(out_dir) / PREVIEW_DIR
    try:
        checkpoint.save_atomic(details, folder / DETAILS_NAME)
        refresh = Refresh(epoch, bank.table.detach().cpu(), details, dataset, config, folder, warn)
        if on_refresh is not None:
            on_refresh(refresh)
    except Exception as error:  # a by-product: it must never stop training
        warn(f"positives preview of epoch {epoch} not written: {type(error).__name__}: {error}")
        return None
    return refresh


def refresh_message(selection: dict, clusters: int, epoch: int, num_positives: int) -> str:
    text = f"positives refreshed for epoch {epoch + 1}: {clusters} clusters"
    if "positive_precision" in selection:
        text += f", positive precision {selection['positive_precision']:.3f}"
        if "knn_top_p_precision" in selection:  # the same number of picks by plain kNN: a fair comparison
            text += f" vs {selection['knn_top_p_precision']:.3f} for the {num_positives} nearest kNN neighbours"
        if "labelled_pairs" in selection:
            text += f" over {selection['labelled_pairs']} labelled pairs"
    return text


def positive_term_message(spec: SelectionSpec | None, epoch: int, first_epoch: int) -> str | None:
    """The line that explains a loss rise when CLIM's positive term joins (or, resumed later, that it is in)."""
    if not needs_table(spec, epoch):
        return None
    apart = "metrics.jsonl and TensorBoard log loss_moco and loss_positive apart"
    if not needs_table(spec, epoch - 1):
        return f"epoch {epoch + 1}: CLIM's positive term joins the loss from now on, so the loss rises; {apart}"
    if epoch == first_epoch:  # resumed after the term joined: no rise here
        return (f"epoch {epoch + 1}: the loss includes CLIM's positive term (since epoch "
                f"{spec.refresh_every + 1}); {apart}")
    return None
