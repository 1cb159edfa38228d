"""Drawing for the positives figure (:mod:`clim.inspect.figure`): a mosaic of framed image cells, and
the figure around it.

The mosaic is one uint8 array (frame colours are exact pixels a test can read back; one ``imshow``).
The figure uses matplotlib's object API on the Agg canvas (no pyplot, no global backend switch), so a
training process can draw without side effects on the user's matplotlib state.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# Frame colours (RGB): the anchor itself, a positive of the anchor's class, of another class, unknown.
FRAMES = {"anchor": (40, 40, 40), "same": (30, 160, 60), "different": (215, 40, 40), "unknown": (150, 150, 150)}
BACKGROUND = (255, 255, 255)


def frame_kind(anchor_label: int, label: int) -> str:
    """Green when the labels agree, red when they differ, grey when either is unknown (-1)."""
    if anchor_label < 0 or label < 0:
        return "unknown"
    return "same" if anchor_label == label else "different"


def to_cell(image: Image.Image, size: int) -> np.ndarray:
    """An image as a uint8 [size, size, 3] cell: centre-cropped to a square, then resized; small
    images are enlarged with nearest-neighbour, so the cell shows the pixels the model saw."""
    method = Image.Resampling.NEAREST if min(image.size) < size else Image.Resampling.BICUBIC
    return np.asarray(ImageOps.fit(image.convert("RGB"), (size, size), method))


@dataclass
class GridRow:
    """One row of the mosaic: a title above it, cells (None leaves a slot empty) and frame kinds."""

    title: str
    cells: list[np.ndarray | None]
    frames: list[str | None] = field(default_factory=list)


@dataclass(frozen=True)
class GridLayout:
    """Pixel geometry: each row is a title strip above framed cells; the anchor column stands apart."""

    cell: int
    columns: int
    border: int = 3
    gap: int = 4
    title: int = 16

    @property
    def anchor_gap(self) -> int:
        return max(self.gap, self.cell // 4)

    @property
    def row_height(self) -> int:
        return self.title + self.cell + 2 * self.border + self.gap

    def shape(self, rows: int) -> tuple[int, int]:
        """(height, width) of a mosaic with ``rows`` rows."""
        width = self.gap + self.columns * (self.cell + 2 * self.border + self.gap) + self.anchor_gap - self.gap
        return self.gap + rows * self.row_height, width

    def frame_origin(self, row: int, column: int) -> tuple[int, int]:
        """(y, x) of the top-left pixel of a cell's frame."""
        x = self.gap + column * (self.cell + 2 * self.border + self.gap)
        if column > 0:
            x += self.anchor_gap - self.gap
        return self.gap + row * self.row_height + self.title, x


def mosaic(rows: list[GridRow], layout: GridLayout) -> np.ndarray:
    """All rows as one uint8 [H, W, 3] image, white between cells."""
    canvas = np.full((*layout.shape(len(rows)), 3), BACKGROUND, dtype=np.uint8)
    b, size = layout.border, layout.cell
    for r, row in enumerate(rows):
        for c, cell in enumerate(row.cells):
            if cell is None:
                continue
            y, x = layout.frame_origin(r, c)
            kind = row.frames[c] if c < len(row.frames) else None
            if kind is not None:
                canvas[y : y + size + 2 * b, x : x + size + 2 * b] = FRAMES[kind]
            canvas[y + b : y + b + size, x + b : x + b + size] = cell
    return canvas


def _axes(figure, left: float, top: float, width: float, height: float):
    """An axis placed in figure pixels (from the top-left corner)."""
    fig_w, fig_h = figure.get_size_inches() * figure.dpi
    return figure.add_axes((left / fig_w, 1 - (top + height) / fig_h, width / fig_w, height / fig_h))


def label_fonts() -> list[str]:
    """DejaVu Sans, then installed CJK families as per-glyph fallbacks: the glyphs dataset's class names are
    characters DejaVu lacks."""
    from matplotlib import font_manager

    hints = ("CJK", "WenQuanYi", "Droid Sans Fallback", "IPAGothic")
    cjk = sorted({font.name for font in font_manager.fontManager.ttflist if any(h in font.name for h in hints)})
    return ["DejaVu Sans", *cjk[:2]]


def _show_mosaic(axis, rows: list[GridRow], layout: GridLayout) -> None:
    axis.imshow(mosaic(rows, layout), interpolation="nearest")
    axis.set_axis_off()
    for r, row in enumerate(rows):
        axis.text(layout.gap, layout.gap + r * layout.row_height + layout.title - 3, row.title,
                  fontsize=7.5, va="bottom", ha="left", clip_on=False, fontfamily=label_fonts())


def draw_figure(path: str | Path, heading: str, rows: list[GridRow], layout: GridLayout,
                precision: dict[str, float] | None, precision_title: str, cutmix_row: GridRow) -> Path:
    """Write the figure: the positives mosaic on the left, the per-class precision bars (or a note when
    no labels exist) and the CutMix example on the right; a 256-colour PNG (a dozen anchors: < 200 KB)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dpi, margin, side = 100, 12, 400
    top = 34 + 16 * heading.count("\n")
    grid_h, grid_w = layout.shape(len(rows))
    classes = len(precision) if precision else 0
    bars_h = max(160, 16 * classes + 70)
    cut_layout = GridLayout(layout.cell, 3, layout.border, layout.gap, layout.title)
    cut_h, cut_w = cut_layout.shape(1)
    width = margin + grid_w + 30 + side + margin
    height = top + max(grid_h, bars_h + 30 + cut_h) + margin
    figure = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    FigureCanvasAgg(figure)
    figure.text(margin / width, 1 - 8 / height, heading, fontsize=10, va="top", ha="left")

    _show_mosaic(_axes(figure, margin, top, grid_w, grid_h), rows, layout)

    right = margin + grid_w + 30
    title_h = 12 * (precision_title.count("\n") + 1)
    bars = _axes(figure, right + 110, top + 8 + title_h, side - 130, bars_h - 48 - title_h)
    if precision:
        bars.barh(range(classes), list(precision.values()), color="#%02x%02x%02x" % FRAMES["same"])
        bars.set_yticks(range(classes), list(precision), fontsize=7, fontfamily=label_fonts())
        bars.invert_yaxis()
        bars.set_xlim(0, 1)
        bars.tick_params(axis="x", labelsize=7)
        bars.grid(axis="x", alpha=0.3)
        bars.set_xlabel("share of positives with the anchor's class", fontsize=7)
    else:
        bars.set_axis_off()
    bars.set_title(precision_title, fontsize=8)

    _show_mosaic(_axes(figure, right, top + bars_h + 30, cut_w, cut_h), [cutmix_row], cut_layout)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    with Image.open(buffer) as rendered:
        rendered.convert("RGB").quantize(256).save(path, optimize=True)
    return path
