"""The figures of RESULTS.md, drawn from the records alone: the paired differences behind every claim,
kNN top-1 over epochs of the headline runs, positive precision over refreshes."""

from __future__ import annotations

from pathlib import Path

from clim.study.matrix import MIXINGS, SELECTIONS, selection_variant


def _plot_mean(axis, curves: list[list[dict]], key: str, label: str, colour, style: str = "-") -> None:
    """The mean over runs at every epoch where all runs have a value, if there is one."""
    per_epoch: dict[int, list[float]] = {}
    for curve in curves:
        for point in curve:
            if point.get(key) is not None:
                per_epoch.setdefault(point["epoch"], []).append(point[key])
    epochs = sorted(e for e, values in per_epoch.items() if len(values) == len(curves))
    if epochs:
        axis.plot(epochs, [sum(per_epoch[e]) / len(per_epoch[e]) for e in epochs], style, marker="o", markersize=3,
                  color=colour, label=f"{label} (n={len(curves)})")


def plot_results(curves: dict[str, list[list[dict]]], differences: list[tuple[str, object]], random_init: float | None,
                 headline: tuple[str, ...], folder: Path, levels: dict[str, float]) -> list[str]:
    """Write the PNGs into ``folder``; returns the Markdown lines that show them.

    ``curves``: per variant, each record's per-epoch curve; ``differences``: (label, clim.study.claims.Paired
    or None) per accuracy claim (percentage points); ``random_init``: mean kNN top-1 of the random-init
    backbones; ``levels``: more kNN references (label: top-1 %), e.g. raw pixels; each reference is a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    folder.mkdir(parents=True, exist_ok=True)
    colours = plt.get_cmap("tab10")
    figures = {}

    shown = [(label, result) for label, result in differences if result is not None and result.low is not None]
    if shown:
        figure, axis = plt.subplots(figsize=(11, 0.45 * len(shown) + 1.6), dpi=110)
        for row, (label, result) in enumerate(shown):
            colour = "tab:green" if result.low > 0 else "tab:red" if result.high < 0 else "tab:grey"
            axis.errorbar(result.mean, row, xerr=[[result.mean - result.low], [result.high - result.mean]], fmt="o",
                          color=colour, capsize=3)
        axis.axvline(0.0, color="black", linewidth=0.8)
        axis.set_yticks(range(len(shown)), [f"{label} (n={result.n})" for label, result in shown], fontsize=7)
        axis.invert_yaxis()
        axis.set(xlabel="paired difference, claimed-better − claimed-worse, percentage points (95 % t interval)",
                 title="The paper's claims on our runs\n(green: agrees, red: disagrees, grey: inconclusive)")
        axis.grid(alpha=0.3, axis="x")
        figures["claims.png"] = (figure, axis, "paired differences per claim", False)

    figure, axis = plt.subplots(figsize=(8, 4.5), dpi=110)
    for position, name in enumerate(headline):
        _plot_mean(axis, curves.get(name, []), "knn_top1", name, colours(position))
    if random_init is not None:
        axis.axhline(random_init, color="grey", linestyle=":", label="random init (mean over seeds)")
    for (label, value), style in zip(levels.items(), ("--", "-.", (0, (1, 3)))):
        axis.axhline(value, color="black", linestyle=style, linewidth=1.0, label=f"{label} ({value:.2f} %)")
    axis.set(xlabel="epoch", ylabel="kNN top-1 % (k=20, T=0.07)", title="kNN top-1 over epochs (mean over seeds)")
    figures["knn_over_epochs.png"] = (figure, axis, "kNN top-1 over epochs", True)

    figure, axis = plt.subplots(figsize=(8, 4.5), dpi=110)
    for position, selection in enumerate(SELECTIONS):
        for mixing, style in zip(MIXINGS, ("--", "-")):
            _plot_mean(axis, curves.get(selection_variant(selection, mixing), []), "positive_precision",
                       f"{selection}, {mixing}", colours(position), style)
    axis.set(xlabel="epoch (positives refreshed at its start)", ylabel="positive precision",
             title="share of selected positives with the anchor's label (mean over seeds)")
    figures["positive_precision.png"] = (figure, axis, "positive precision over refreshes", True)

    lines = []
    for file_name, (figure, axis, title, integer_x) in figures.items():
        if integer_x:
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
            axis.grid(alpha=0.3)
            if axis.lines:
                axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        figure.tight_layout()
        figure.savefig(folder / file_name)
        plt.close(figure)
        lines += [f"![{title}]({folder.name}/{file_name})", ""]
    return lines
