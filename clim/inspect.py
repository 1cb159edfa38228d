"""``clim inspect``: see which images CLIM picks as positives (METHOD §2-3).

From the positives table saved with a checkpoint, one row per anchor (seeded, stratified over
classes where labels exist): the anchor, then its positives in table order, each framed green /
red / grey by whether its label equals the anchor's (grey: either unknown). The row title gives
the anchor's class, its cluster size and |Ω_p|: how many positives the center-wise rule gave and
how many were filled by kNN rank. Beside it: per-class positive precision and a CutMix example.
``--compare knn|random`` adds, per anchor, what kNN-only or random selection would have picked.

Cluster sizes, |Ω_p| and the kNN picks are facts of the refresh, not of the table: the training
hook :func:`write_positives_preview` saves them (``RUN_DIR/positives/selection.pt``) and draws
``RUN_DIR/positives/epoch_NNN.png`` at every refresh. Where that file is missing or belongs to
another refresh, they are recomputed once with the checkpoint's encoder, and the figure says so.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from clim.config import Config, ConfigError
from clim.engine import checkpoint, distributed
from clim.inspect_figure import GridLayout, GridRow, draw_figure, frame_kind, to_cell
from clim.mixing import cutmix

PREVIEW_DIR = "positives"
DETAILS_NAME = "selection.pt"
PREVIEW_ANCHORS = 12
COMPARE = ("knn", "random")
_COMPARE_TITLES = {"knn": "kNN only (same features)", "random": "random"}


class NoPositivesError(ConfigError):
    """The run has no positives table: MoCo v2, or a CLIM run before its first refresh."""


@dataclass
class Inspection:
    """What the figure is drawn from. ``table`` long [N, P]; ``labels`` long [N] (-1 unknown);
    ``images``: the dataset with no transform (items are PIL images); ``details``: see
    :func:`clim.positives.anchor_details`; ``epoch``: the metrics record trained with the table."""

    table: torch.Tensor
    labels: torch.Tensor
    classes: Sequence[str] | None
    images: object
    details: dict
    epoch: int
    config: Config
    note: str = ""


def choose_anchors(labels: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """``count`` distinct indices, seeded, stratified: every label (-1 included) is one stratum,
    taken round-robin in a random order, each stratum's members in a random order."""
    generator = torch.Generator().manual_seed(seed)
    strata = [(labels == value).nonzero().flatten() for value in labels.unique()]
    strata = [members[torch.randperm(len(members), generator=generator)] for members in strata]
    order = torch.randperm(len(strata), generator=generator).tolist()
    chosen: list[int] = []
    for depth in range(max(len(members) for members in strata)):
        chosen += [int(strata[s][depth]) for s in order if depth < len(strata[s])]
        if len(chosen) >= count:
            break
    return torch.tensor(chosen[:count], dtype=torch.long)


def class_precision(table: torch.Tensor, labels: torch.Tensor) -> dict[int, float]:
    """Per anchor class: the share of its anchors' positives that carry the anchor's label (an
    unknown label counts as different, as in :func:`clim.selection.selection_diagnostics`)."""
    same = (labels[table] == labels.unsqueeze(1)).float().mean(1)
    return {int(c): float(same[labels == c].mean()) for c in labels.unique() if c >= 0}


def random_picks(anchors: torch.Tensor, num_samples: int, count: int, seed: int) -> torch.Tensor:
    """[A, count] distinct indices per anchor, uniform over the dataset without the anchor (the
    ``random`` strategy of METHOD §2, drawn for the shown anchors only)."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for anchor in anchors.tolist():
        offsets = torch.randperm(num_samples - 1, generator=generator)[:count]
        rows.append(offsets + (offsets >= anchor).long())
    return torch.stack(rows)


def resolve_checkpoint(path: str | Path) -> Path:
    path = Path(path)
    return path / checkpoint.CHECKPOINT_NAME if path.is_dir() else path


def _raw_images(dataset):
    images = copy.copy(dataset)
    images.transform = None
    return images


def _class_name(inspection: Inspection, label: int) -> str:
    if label < 0:
        return "unlabelled"
    classes = inspection.classes
    return str(classes[label]) if classes is not None and label < len(classes) else f"class {label}"


def _anchor_title(inspection: Inspection, anchor: int, same: int | None) -> str:
    details, p = inspection.details, inspection.table.shape[1]
    parts = [f"#{anchor} {_class_name(inspection, int(inspection.labels[anchor]))}"]
    if "cluster_size" in details:
        parts.append(f"cluster of {int(details['cluster_size'][anchor])}")
    if "omega_size" in details:
        omega = int(details["omega_size"][anchor])
        symbol = "|Ω_p|" if inspection.config.method.selection == "center_wise" else "|Ω1∩Ω2|"
        parts.append(f"{symbol} = {omega}: {min(omega, p)} by the rule + {p - min(omega, p)} kNN fill")
    elif bool(details["filled"][anchor]):
        parts.append("filled from kNN")
    if same is not None:
        parts.append(f"{same}/{p} same class")
    return " · ".join(parts)


def _same_count(labels: torch.Tensor, anchor: int, picks: torch.Tensor) -> int | None:
    if labels[anchor] < 0:
        return None
    return int((labels[picks] == labels[anchor]).sum())


def grid_rows(inspection: Inspection, anchors: torch.Tensor, compare: Sequence[str], cell: int,
              seed: int) -> list[GridRow]:
    """Per anchor: its positives row, then one row per ``compare`` strategy (anchor slot empty)."""
    cache: dict[int, np.ndarray] = {}

    def image(index: int) -> np.ndarray:
        if index not in cache:
            cache[index] = to_cell(inspection.images[index][0], cell)
        return cache[index]

    labels, table = inspection.labels, inspection.table
    others = {name: (inspection.details["knn"][anchors].long() if name == "knn"
                     else random_picks(anchors, len(labels), table.shape[1], seed)) for name in compare}
    rows = []
    for position, anchor in enumerate(anchors.tolist()):
        picks = table[anchor]
        frames = ["anchor"] + [frame_kind(int(labels[anchor]), int(labels[j])) for j in picks]
        title = _anchor_title(inspection, anchor, _same_count(labels, anchor, picks))
        rows.append(GridRow(title, [image(anchor)] + [image(int(j)) for j in picks], frames))
        for name in compare:
            other = others[name][position]
            same = _same_count(labels, anchor, other)
            title = _COMPARE_TITLES[name] + ("" if same is None else f": {same}/{len(other)} same class")
            rows.append(GridRow(title,
                                [None] + [image(int(j)) for j in other],
                                [None] + [frame_kind(int(labels[anchor]), int(labels[j])) for j in other]))
    return rows


def cutmix_row(inspection: Inspection, anchor: int, cell: int, seed: int) -> GridRow:
    """The first anchor mixed with one of its positives (drawn uniformly, METHOD §3) by
    :func:`clim.mixing.cutmix` with the run's α; λ is the exact share of anchor pixels."""
    generator = torch.Generator().manual_seed(seed)
    positive = int(inspection.table[anchor, torch.randint(inspection.table.shape[1], (1,), generator=generator)])
    cells = [to_cell(inspection.images[i][0], cell) for i in (anchor, positive)]
    a, b = (torch.from_numpy(c.copy()).permute(2, 0, 1).unsqueeze(0) for c in cells)
    mixed, lam = cutmix(a, b, inspection.config.method.alpha, generator)
    labels = inspection.labels
    return GridRow(f"CutMix (α = {inspection.config.method.alpha:g}, un-augmented): anchor, positive, mixed "
                   f"with λ = {float(lam[0]):.2f}",
                   cells + [mixed[0].permute(1, 2, 0).numpy()],
                   ["anchor", frame_kind(int(labels[anchor]), int(labels[positive])), None])


def _share_same(labels: torch.Tensor, table: torch.Tensor) -> float:
    known = labels >= 0
    return float((labels[table[known]] == labels[known].unsqueeze(1)).float().mean())


def precision_panel(inspection: Inspection, max_bars: int = 20) -> tuple[dict[str, float] | None, str]:
    """(bars, title) of the per-class precision chart: every class, or with more than
    ``max_bars`` classes (ImageNet) the ``max_bars / 2`` lowest and highest; None without labels."""
    table, labels = inspection.table, inspection.labels
    per_class = class_precision(table, labels)
    if not per_class:
        return None, "no labels: positive precision unknown"
    title = (f"positive precision {_share_same(labels, table):.3f}\n"
             f"(the {table.shape[1]} nearest neighbours: {_share_same(labels, inspection.details['knn'].long()):.3f})")
    if len(per_class) > max_bars:
        ranked = sorted(per_class, key=per_class.get)
        per_class = {c: per_class[c] for c in ranked[: max_bars // 2] + ranked[-(max_bars // 2):]}
        title += f"\nthe {max_bars // 2} lowest and highest of {len(ranked)} classes"
    return {_class_name(inspection, c): value for c, value in per_class.items()}, title


def render(inspection: Inspection, out: str | Path, anchors: int = PREVIEW_ANCHORS, seed: int = 0,
           compare: Sequence[str] = (), cell: int = 64) -> Path:
    """Draw the figure of :mod:`clim.inspect` into ``out`` (PNG)."""
    chosen = choose_anchors(inspection.labels, min(anchors, len(inspection.labels)), seed)
    rows = grid_rows(inspection, chosen, compare, cell, seed)
    bars, bars_title = precision_panel(inspection)
    heading = (f"positives table of epoch {inspection.epoch} ({inspection.config.method.selection}, "
               f"{len(inspection.labels)} images, {inspection.table.shape[1]} per anchor)   frames: green same "
               "class, red another, grey unknown" + (f"\n{inspection.note}" if inspection.note else ""))
    return draw_figure(out, heading, rows, GridLayout(cell, inspection.table.shape[1] + 1), bars, bars_title,
                       cutmix_row(inspection, int(chosen[0]), cell, seed))


def _last_refresh_epoch(history: list[dict]) -> int | None:
    return next((record["epoch"] for record in reversed(history) if "selection" in record), None)


def _recompute_details(ckpt_path: Path, config: Config, dataset, epoch: int) -> dict:
    """The refresh's per-anchor facts again, from the checkpoint's (later) encoder: same
    strategy, cluster count and k-means seed as the refresh that made the table."""
    from clim.data.transforms import eval_transform_for
    from clim.evaluation.common import load_run, resolve_device
    from clim.positives import anchor_details, embed_dataset, num_clusters, selection_encoder
    from clim.selection import select_positives

    device = resolve_device(None)
    run = load_run(ckpt_path, device)
    embedded = copy.copy(dataset)
    embedded.transform = eval_transform_for(dataset.info, run.data_info["image_size"])
    features = embed_dataset(selection_encoder(run.model, config), embedded, config.train.batch_size, device)
    method = config.method
    result = select_positives(features, method.selection, num_clusters(config, len(dataset)), method.knn_k,
                              method.num_positives, seed=config.train.seed * 10_000 + epoch - 1)
    return anchor_details(result)


def load_inspection(path: str | Path) -> Inspection:
    """Table, labels, images and per-anchor details of a run folder or a checkpoint file."""
    from clim.data import build_dataset

    ckpt_path = resolve_checkpoint(path)
    state = checkpoint.load(ckpt_path)
    if "config" not in state or "model" not in state:
        raise ConfigError(f"{ckpt_path} is not a clim checkpoint")
    config = Config.from_dict(state["config"])
    table = state["model"].get("positives")
    if table is None or table.numel() == 0 or bool((table[:, 0] < 0).any()):
        raise NoPositivesError(f"{ckpt_path} has no positives table (a MoCo v2 run, or CLIM before its first "
                               "refresh): nothing to inspect")
    dataset = build_dataset(config.data.name, config.data.root, "pretrain", image_size=config.data.image_size)
    if len(dataset) != table.shape[0]:
        raise ConfigError(f"{config.data.name} now has {len(dataset)} images, the positives table "
                          f"{table.shape[0]} rows: the data changed since training")
    history = list(state.get("history", []))
    epoch = _last_refresh_epoch(history) or int(state.get("epoch", 0))
    details_path = ckpt_path.parent / PREVIEW_DIR / DETAILS_NAME
    details = checkpoint.load(details_path) if details_path.is_file() else None
    note = ""
    if details is None or details["epoch"] != epoch or tuple(details["knn"].shape) != tuple(table.shape):
        details = _recompute_details(ckpt_path, config, dataset, epoch)
        note = (f"cluster sizes, |Ω| and kNN picks recomputed with the encoder of epoch {state.get('epoch')} "
                f"(no {PREVIEW_DIR}/{DETAILS_NAME} of this refresh beside the checkpoint)")
    return Inspection(table.long(), dataset.labels, getattr(dataset, "classes", None), _raw_images(dataset),
                      details, epoch, config, note)


def inspect_run(path: str | Path, anchors: int = PREVIEW_ANCHORS, seed: int = 0, out: str | Path | None = None,
                compare: Sequence[str] = ()) -> Path:
    """``clim inspect``: draw the figure; default output ``<run>/positives/inspect.png``."""
    if anchors < 1:
        raise ConfigError(f"--anchors must be at least 1, got {anchors}")
    inspection = load_inspection(path)
    out = out or resolve_checkpoint(path).parent / PREVIEW_DIR / "inspect.png"
    return render(inspection, out, anchors, seed, compare)


def write_positives_preview(model, dataset, config: Config, out_dir: str | Path,
                            warn: Callable[[str], None]) -> Path | None:
    """Training hook, right after a refresh: save the refresh's per-anchor details and draw
    ``positives/epoch_NNN.png`` (a dozen anchors). Main rank only; a failure costs one warning,
    never the run."""
    details = getattr(model, "refresh_details", None)
    if distributed.rank() != 0 or details is None:
        return None
    epoch = details["epoch"]
    try:
        folder = Path(out_dir) / PREVIEW_DIR
        checkpoint.save_atomic(details, folder / DETAILS_NAME)
        inspection = Inspection(model.positives.detach().cpu().long(), dataset.labels.cpu(),
                                getattr(dataset, "classes", None), _raw_images(dataset), details, epoch, config)
        return render(inspection, folder / f"epoch_{epoch:03d}.png")
    except Exception as error:  # drawing is a by-product: it must never stop training
        warn(f"positives preview of epoch {epoch} not written: {type(error).__name__}: {error}")
        return None
