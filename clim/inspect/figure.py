"""The positives preview: which images CLIM picked as positives, drawn as one figure (METHOD §2-3; what it shows:
docs/USAGE.md, "Looking at the positives"). :mod:`clim.inspect` draws it after each refresh and from a checkpoint later.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from clim.config import Config
from clim.inspect.mosaic import GridLayout, GridRow, draw_figure, frame_kind, to_cell
from clim.method.mixing import cutmix

PREVIEW_ANCHORS = 12
_COMPARE_TITLES = {"knn": "kNN only (same features)", "random": "random"}


@dataclass
class Inspection:
    """What the figure is drawn from. ``table`` long [N, P]; ``labels`` long [N] (-1 unknown);
    ``images``: the dataset with no transform (items are PIL images); ``details``: see
    :func:`clim.method.bank.anchor_details`; ``epoch``: the metrics record trained with the table."""

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
    unknown label counts as different, as in :func:`clim.method.selection.selection_diagnostics`)."""
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


def raw_images(dataset, transform=None):
    """A shallow copy of ``dataset`` with ``transform`` (by default none: items are the PIL images themselves)."""
    images = copy.copy(dataset)
    images.transform = transform
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


def grid_rows(inspection: Inspection, anchors: torch.Tensor, compare: Sequence[str], cell: int,
              seed: int) -> list[GridRow]:
    """Per anchor: its positives row, then one row per ``compare`` strategy (anchor slot empty)."""
    @functools.cache
    def image(index: int) -> np.ndarray:
        return to_cell(inspection.images[index][0], cell)

    labels, table = inspection.labels, inspection.table
    others = {name: (inspection.details["knn"][anchors].long() if name == "knn"
                     else random_picks(anchors, len(labels), table.shape[1], seed)) for name in compare}
    rows = []
    for position, anchor in enumerate(anchors.tolist()):
        for name in ("table", *compare):
            picks = table[anchor] if name == "table" else others[name][position]
            same = None if labels[anchor] < 0 else int((labels[picks] == labels[anchor]).sum())
            cells = [image(int(j)) for j in picks]
            frames = [frame_kind(int(labels[anchor]), int(labels[j])) for j in picks]
            if name == "table":
                rows.append(GridRow(_anchor_title(inspection, anchor, same), [image(anchor), *cells],
                                    ["anchor", *frames]))
            else:
                title = _COMPARE_TITLES[name] + ("" if same is None else f": {same}/{len(picks)} same class")
                rows.append(GridRow(title, [None] + cells, [None] + frames))
    return rows


def cutmix_row(inspection: Inspection, anchor: int, cell: int, seed: int) -> GridRow:
    """The first anchor mixed with one of its positives (drawn uniformly, METHOD §3) by
    :func:`clim.method.mixing.cutmix` with the run's α; λ is the exact share of anchor pixels."""
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
    """(bars, title) of the per-class precision chart: every class, or with more than ``max_bars``
    classes (ImageNet) the ``max_bars / 2`` lowest and highest; None without labels."""
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
    """Draw the figure (see the module docstring) into ``out`` (PNG)."""
    chosen = choose_anchors(inspection.labels, min(anchors, len(inspection.labels)), seed)
    rows = grid_rows(inspection, chosen, compare, cell, seed)
    bars, bars_title = precision_panel(inspection)
    heading = (f"positives table of epoch {inspection.epoch} ({inspection.config.method.selection}, "
               f"{len(inspection.labels)} images, {inspection.table.shape[1]} per anchor)   frames: green same "
               "class, red another, grey unknown" + (f"\n{inspection.note}" if inspection.note else ""))
    return draw_figure(out, heading, rows, GridLayout(cell, inspection.table.shape[1] + 1), bars, bars_title,
                       cutmix_row(inspection, int(chosen[0]), cell, seed))
