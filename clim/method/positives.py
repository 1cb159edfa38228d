"""The training loop's positives: a :class:`~clim.method.bank.PositiveBank` built and refreshed from
its :class:`~clim.specs.SelectionSpec` (METHOD §2), and its place in the trainer's checkpoints.

Every ``method.refresh_every`` epochs the momentum encoder (eval mode, eval transform) embeds the
whole pretraining set and the bank selects a new table (:meth:`PositiveBank.refresh_from`); its
``bank.details`` are not checkpointed (``clim inspect`` saves them to ``RUN_DIR/positives/selection.pt``).
The trainer's ``"model"`` entry holds the model's state and the table under ``"positives"`` (the
format of when the table was a model buffer, so older runs still load).
"""

from __future__ import annotations

import torch
from torch import nn

from clim.config import REFRESH_SEED_STRIDE, ConfigError
from clim.method.bank import PositiveBank
from clim.models.moco import MoCo
from clim.specs import SelectionSpec

TABLE_KEY = "positives"  # the table's key in a checkpoint's "model" entry


def is_refresh_epoch(spec: SelectionSpec | None, epoch: int) -> bool:
    """The first refresh happens at epoch ``refresh_every`` (epochs counted from 0); never for MoCo v2 (None)."""
    return spec is not None and epoch > 0 and epoch % spec.refresh_every == 0


def needs_table(spec: SelectionSpec | None, epoch: int) -> bool:
    return spec is not None and epoch >= spec.refresh_every


def selection_encoder(model: MoCo, spec: SelectionSpec) -> nn.Module:
    return model.backbone_k if spec.features == "backbone" else model.encoder_k


def refresh_seed(spec: SelectionSpec, epoch: int) -> int:
    """A fresh, reproducible k-means seed per refresh (METHOD §2)."""
    return spec.seed * REFRESH_SEED_STRIDE + epoch


def build_bank(spec: SelectionSpec | None, num_samples: int, device: torch.device | str = "cpu"
               ) -> PositiveBank | None:
    """The run's positives bank on ``device`` (None for MoCo v2); a dataset too small for it is a
    ConfigError."""
    if spec is None:
        return None
    try:
        bank = PositiveBank(num_samples, spec.num_positives, spec.strategy, spec.num_clusters, spec.k)
    except ValueError as error:
        raise ConfigError(f"{error} (method.knn_k, method.num_positives)") from None
    return bank.to(device)


def refresh_positives(bank: PositiveBank, model: MoCo, dataset, spec: SelectionSpec, epoch: int,
                      device: torch.device) -> dict:
    """Refresh ``bank`` from the selection encoder on ``dataset`` (eval transform); returns the
    diagnostics (on rank 0; only ``seconds`` elsewhere)."""
    return bank.refresh_from(selection_encoder(model, spec), dataset, spec.batch_size, device, spec.num_workers,
                             seed=refresh_seed(spec, epoch))


def checkpoint_model_state(model: nn.Module, bank: PositiveBank | None) -> dict:
    """The ``"model"`` entry of a trainer checkpoint: the model's state and the bank's table."""
    state = model.state_dict()
    if bank is not None:
        state[TABLE_KEY] = bank.table
    return state


def load_checkpoint_model_state(model: nn.Module, bank: PositiveBank | None, state: dict) -> None:
    """Load a checkpoint's ``"model"`` entry into ``model`` and ``bank`` (a table of any index dtype:
    older checkpoints stored int32). With ``bank`` None (MoCo v2, evaluation) the table is ignored."""
    state = dict(state)
    table = state.pop(TABLE_KEY, None)
    model.load_state_dict(state)
    if bank is None:
        return
    if table is None or tuple(table.shape) != tuple(bank.table.shape):
        found = "no positives table" if table is None else f"a positives table of shape {tuple(table.shape)}"
        raise ValueError(f"the checkpoint has {found}, the run needs {tuple(bank.table.shape)} "
                         "(num_samples x method.num_positives)")
    bank.load_state_dict({"table": table})
