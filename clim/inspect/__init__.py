"""``clim inspect``: see which images CLIM picks as positives (METHOD §2-3).

Draws the figure of :mod:`clim.inspect.figure` from the positives table saved with a checkpoint.
Cluster sizes, |Ω_p| and the kNN picks are facts of the refresh, saved by the trainer
(``RUN_DIR/positives/selection.pt``); where that file is missing or belongs to another refresh they
are recomputed once with the checkpoint's encoder, and the figure says so. :func:`draw_refresh` is
the trainer's ``on_refresh`` hook that ``clim pretrain`` and ``clim demo`` pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from clim.config import Config, ConfigError
from clim.data.transforms import eval_transform_for
from clim.engine.refresh import DETAILS_NAME, PREVIEW_DIR, Refresh
from clim.evaluation.common import check_output, fitted_model, resolve_device, trainer_state
from clim.inspect.figure import PREVIEW_ANCHORS, Inspection, raw_images, render
from clim.method.positives import build_bank, refresh_seed, selection_encoder
from clim.runtime import checkpoint
from clim.specs import selection_spec


class NoPositivesError(ConfigError):
    """The run has no positives table: MoCo v2, or a CLIM run before its first refresh."""


def resolve_checkpoint(path: str | Path) -> Path:
    path = Path(path)
    return path / checkpoint.CHECKPOINT_FILE if path.is_dir() else path


def _recompute_details(model, image_size: int, config: Config, dataset, epoch: int) -> dict:
    """The refresh's per-anchor facts again, from the checkpoint's (later) encoder ``model``: same
    strategy, cluster count and k-means seed as the refresh that made the table."""
    device = resolve_device(None)
    model = model.to(device).eval()
    embedded = raw_images(dataset, eval_transform_for(dataset.info, image_size))
    spec = selection_spec(config)
    bank = build_bank(spec, len(dataset), device)
    bank.refresh_from(selection_encoder(model, spec), embedded, spec.batch_size, device,
                      seed=refresh_seed(spec, epoch - 1))
    return bank.details


def load_inspection(path: str | Path) -> Inspection:
    """Table, labels, images and per-anchor details of a run folder or a checkpoint file."""
    from clim.data import build_dataset  # looked up at each call (tests replace it)

    # a file that lacks a key or whose weights do not fit its model: one line, before anything is drawn
    ckpt_path, state, config, info = trainer_state(resolve_checkpoint(path))
    model = fitted_model(ckpt_path, state, config, info)
    table = state["model"].get("positives")
    if table is None or table.numel() == 0 or bool((table[:, 0] < 0).any()):
        raise NoPositivesError(f"{ckpt_path} has no positives table (a MoCo v2 run, or CLIM before its first "
                               "refresh): nothing to inspect")
    dataset = build_dataset(config.data.name, config.data.root, "pretrain", image_size=config.data.image_size)
    if len(dataset) != table.shape[0]:
        raise ConfigError(f"{config.data.name} now has {len(dataset)} images, the positives table "
                          f"{table.shape[0]} rows: the data changed since training")
    refreshed = (record["epoch"] for record in reversed(state.get("history", [])) if "selection" in record)
    epoch = next(refreshed, None) or int(state.get("epoch", 0))
    details_path = ckpt_path.parent / PREVIEW_DIR / DETAILS_NAME
    details = checkpoint.load(details_path) if details_path.is_file() else None
    note = ""
    if details is None or details["epoch"] != epoch or tuple(details["knn"].shape) != tuple(table.shape):
        details = _recompute_details(model, info["image_size"], config, dataset, epoch)
        note = (f"cluster sizes, |Ω| and kNN picks recomputed with the encoder of epoch {state.get('epoch')} "
                f"(no {PREVIEW_DIR}/{DETAILS_NAME} of this refresh beside the checkpoint)")
    return Inspection(table.long(), dataset.labels, getattr(dataset, "classes", None), raw_images(dataset),
                      details, epoch, config, note)


def inspect_run(path: str | Path, anchors: int = PREVIEW_ANCHORS, seed: int = 0, out: str | Path | None = None,
                compare: Sequence[str] = ()) -> Path:
    """``clim inspect``: draw the figure; default output ``<run>/positives/inspect.png``."""
    if anchors < 1:
        raise ConfigError(f"--anchors must be at least 1, got {anchors}")
    out = out or resolve_checkpoint(path).parent / PREVIEW_DIR / "inspect.png"
    check_output(out)  # the default output too, before the checkpoint is read
    return render(load_inspection(path), out, anchors, seed, compare)


def draw_refresh(refresh: Refresh) -> Path:
    """The trainer's ``on_refresh`` hook: the figure of a dozen anchors of the new table, drawn into
    ``RUN_DIR/positives/epoch_NNN.png`` (``NNN``: the metrics record that trains with it)."""
    dataset = refresh.dataset
    inspection = Inspection(refresh.table, dataset.labels.cpu(), getattr(dataset, "classes", None),
                            raw_images(dataset), refresh.details, refresh.epoch, refresh.config)
    return render(inspection, refresh.folder / f"epoch_{refresh.epoch:03d}.png")
