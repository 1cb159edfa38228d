"""The figures of RESULTS.md: kNN top-1 over epochs, positive precision over refreshes."""

from __future__ import annotations

from pathlib import Path

from clim.study.matrix import MIXINGS, SELECTIONS, selection_variant


def _mean_curve(histories: list[list[dict]], value) -> tuple[list[int], list[float]]:
    """Mean over runs at every epoch where all runs have a value."""
    per_epoch: dict[int, list[float]] = {}
    for history in histories:
        for record in history:
            found = value(record)
            if found is not None:
                per_epoch.setdefault(record["epoch"], []).append(found)
    epochs = sorted(e for e, values in per_epoch.items() if len(values) == len(histories))
    return epochs, [sum(per_epoch[e]) / len(per_epoch[e]) for e in epochs]


def plot_results(histories: dict[str, list[list[dict]]], folder: Path) -> list[str]:
    """kNN top-1 over epochs per variant; positive precision over refreshes per selection strategy.

    ``histories``: per variant, the metrics history of each finished run; returns the Markdown lines
    that show the PNGs written into ``folder``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    folder.mkdir(parents=True, exist_ok=True)
    colours = plt.get_cmap("tab10")
    figures = {}

    figure, axis = plt.subplots(figsize=(8, 4.5), dpi=110)
    for position, (name, runs) in enumerate(histories.items()):
        epochs, values = _mean_curve(runs, lambda record: record.get("knn_top1"))
        axis.plot(epochs, values, "-" if position < 10 else "--", marker="o", markersize=3,
                  color=colours(position % 10), label=f"{name} (n={len(runs)})")
    axis.set(xlabel="epoch", ylabel="kNN top-1 % (k=20, T=0.07)", title="kNN top-1 over epochs (mean over seeds)")
    figures["knn_over_epochs.png"] = (figure, axis, "kNN top-1 over epochs")

    figure, axis = plt.subplots(figsize=(8, 4.5), dpi=110)
    for position, selection in enumerate(SELECTIONS):
        for mixing, style in zip(MIXINGS, ("--", "-")):
            runs = histories.get(selection_variant(selection, mixing), [])
            epochs, values = _mean_curve(runs, lambda record: record.get("selection", {}).get("positive_precision"))
            if epochs:
                axis.plot(epochs, values, style, marker="o", markersize=3, color=colours(position),
                          label=f"{selection}, {mixing} (n={len(runs)})")
    axis.set(xlabel="epoch (positives refreshed at its start)", ylabel="positive precision",
             title="share of selected positives with the anchor's label (mean over seeds)")
    figures["positive_precision.png"] = (figure, axis, "positive precision over refreshes")

    lines = []
    for file_name, (figure, axis, title) in figures.items():
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        figure.tight_layout()
        figure.savefig(folder / file_name)
        plt.close(figure)
        lines += [f"![{title}]({folder.name}/{file_name})", ""]
    return lines
