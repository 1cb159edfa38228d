"""``clim report DIR``: a Markdown report with PNG plots of a run and every evaluation found for it.

The kNN plots carry what needs no training (raw pixels, the backbone at random init) as reference
lines, and the text says where the run's last kNN top-1 falls against each. Reads ``DIR/metrics.jsonl``
(one record per epoch), ``DIR/config.json`` and ``DIR/eval/*.json``; writes ``DIR/report.md`` and
``DIR/plots/*.png``.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from clim.specs import CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE  # noqa: E402


def _plot(path: Path, title: str, ylabel: str, series: dict[str, tuple[list, list]], xlabel: str = "epoch",
          levels: dict[str, float] | None = None, marks: dict[str, float] | None = None) -> None:
    """Lines of ``series``, ``levels`` (references) as horizontal lines, ``marks`` (events) as vertical ones."""
    figure, axis = plt.subplots(figsize=(5, 3.2), dpi=110)
    for label, (xs, ys) in series.items():
        axis.plot(xs, ys, marker="o", markersize=3, label=label)
    for (label, value), style in zip((levels or {}).items(), ("--", ":", "-.")):
        axis.axhline(value, linestyle=style, color="grey", label=f"{label} ({value:.2f} %)")
    for label, x in (marks or {}).items():
        axis.axvline(x, linestyle="--", color="tab:red", alpha=0.6, label=label)
    axis.set_xlabel(xlabel)
    if xlabel == "epoch":
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    if len(series) + len(levels or {}) + len(marks or {}) > 1:
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _series(history: list[dict], key: str, sub: str | None = None) -> tuple[list, list]:
    values = [(record["epoch"], record.get(key) if sub is None else (record.get(key) or {}).get(sub))
              for record in history]
    values = [(epoch, value) for epoch, value in values if isinstance(value, (int, float))]
    return [epoch for epoch, _ in values], [value for _, value in values]


def training_minutes(history: list[dict]) -> list[float]:
    """Cumulative training minutes at each epoch end: the trainer's ``epoch_seconds`` plus the
    positives refresh seconds (kNN monitor and checkpoint writes not counted)."""
    minutes, seconds = [], 0.0
    for record in history:
        seconds += record.get("epoch_seconds", 0.0) + (record.get("selection") or {}).get("seconds", 0.0)
        minutes.append(seconds / 60.0)
    return minutes


LOSS_PARTS = ("loss_moco", "loss_positive", "loss_multicrop")


def _plot_loss(path: Path, history: list[dict]) -> None:
    """The epoch loss and its parts; a mark where CLIM's positive term joins (the loss rises there)."""
    series = {"loss (total)": _series(history, "loss")}
    series.update({part: _series(history, part) for part in LOSS_PARTS if _series(history, part)[0]})
    joined = _series(history, "loss_positive")[0]
    marks = {f"positives join (epoch {joined[0]})": joined[0] - 0.5} if joined else None
    _plot(path, "training loss and its parts", "loss (epoch mean)", series, marks=marks)


def _reference_file(run_dir: Path) -> dict:
    """The result file holding the kNN references: ``eval/demo.json`` or ``eval/knn_references.json``,
    preferring one with raw pixels at the training resolution (``raw_pixels_image_size``; older files
    lack them); computed once when neither has them and it is cheap (``write_references``)."""
    found = [json.loads((run_dir / "eval" / name).read_text()) for name in ("demo.json", "knn_references.json")
             if (run_dir / "eval" / name).exists()]
    current = [result for result in found if "raw_pixels_image_size" in result]
    if current:
        return current[0]
    if (run_dir / CHECKPOINT_FILE).exists():
        from clim.evaluation.baselines import write_references  # torch and the data: only when needed

        path = write_references(run_dir)
        if path is not None:
            return json.loads(path.read_text())
    return found[0] if found else {}


def _references(run_dir: Path) -> dict[str, float]:
    """kNN top-1 (k=20) references by label (:func:`_reference_file`)."""
    result = _reference_file(run_dir)

    def size(prefix: str, fallback: str, suffix: str) -> str:
        value = result.get(f"{prefix}_image_size")
        return fallback if value is None else f"raw pixels {value} px ({suffix})"

    names = {size("raw_pixels_training_size", "raw pixels (training resolution)", "training"):
             "raw_pixels_training_size_knn_k20_top1",
             size("raw_pixels", "raw pixels", "native"): "raw_pixels_knn_k20_top1",
             "random init": "random_init_knn_k20_top1"}
    return {label: result[key] for label, key in names.items() if isinstance(result.get(key), (int, float))}


def reference_sentence(knn: tuple[list, list], references: dict[str, float]) -> str:
    """Where the last kNN top-1 of the run falls against each reference, in words."""
    from clim.evaluation.cli import versus

    epoch, last = knn[0][-1], knn[1][-1]
    if not references:
        return f"Last kNN top-1 (epoch {epoch}): {last:.2f} %; no reference to compare it with."
    return (f"Last kNN top-1 (epoch {epoch}): {last:.2f} %: "
            + ", ".join(versus(last, value, label) for label, value in references.items()) + ".")


def _changes_section(changes: list[dict]) -> list[str]:
    """The settings changed on resume: which values the epochs before each change used."""
    if not changes:
        return []
    rows = [[change["from_epoch"], change["step"], key, old, new]
            for change in changes for key, (old, new) in change["changed"].items()]
    return (["Settings changed on resume (the configuration above is the one in force now; the epochs "
             "before each change ran with the old value):", ""]
            + _table(rows, ["from epoch", "at step", "key", "before", "after"]) + [""])


def _table(rows: list[list], header: list[str]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row) + " |"
                    for row in rows]


def write_report(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    if not (run_dir / METRICS_FILE).exists():
        raise FileNotFoundError(f"no {METRICS_FILE} in {run_dir}: is it a `clim pretrain --out` folder?")
    history = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines() if line.strip()]
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    lines = [f"# Run report: `{run_dir}`", ""]
    config_path = run_dir / CONFIG_FILE
    if config_path.exists():
        config = json.loads(config_path.read_text())
        lines += ["## Configuration", "", "```json", json.dumps(config, indent=1), "```", ""]
        lines += _changes_section(config.get("changes", []))

    _plot_loss(plots / "loss.png", history)
    lines += ["## Training", "", "![loss](plots/loss.png)", ""]
    knn = _series(history, "knn_top1")
    if knn[0]:
        references = _references(run_dir)
        note = " and ".join(references) + " as horizontal lines" if references else "no reference lines"
        _plot(plots / "knn.png", "weighted kNN top-1 (k=20)", "top-1 %", {"trained": knn}, levels=references)
        lines += [f"kNN top-1 of the trained backbone ({note}):", "", "![kNN top-1](plots/knn.png)", "",
                  reference_sentence(knn, references), ""]
        minutes = [m for m, r in zip(training_minutes(history), history) if isinstance(r.get("knn_top1"), (int, float))]
        _plot(plots / "knn_minutes.png", "weighted kNN top-1 (k=20) against time", "top-1 %",
              {"trained": (minutes, knn[1])}, xlabel="training minutes", levels=references)
        lines += ["The same against training minutes (epochs plus positives refreshes):", "",
                  "![kNN top-1 against minutes](plots/knn_minutes.png)", ""]
    rows = [[r["epoch"], round(m, 2), r.get("loss"), r.get("lr"), r.get("images_per_s"), r.get("knn_top1", ""),
             ", ".join(f"{key} {old} -> {new}" for key, (old, new) in r.get("changed", {}).items())]
            for r, m in zip(history, training_minutes(history))]
    lines += _table(rows, ["epoch", "minutes", "loss", "lr", "images/s", "kNN top-1 %", "settings changed"]) + [""]

    refreshes = [r for r in history if "selection" in r]
    if refreshes:
        lines += ["## Positive selection (METHOD §2)", ""]
        precision = _series(history, "selection", "positive_precision")
        if precision[0]:
            series = {"positives": precision,  # kNN-only selection's pick (same P), then all of Ω2
                      "P nearest kNN neighbours (P = method.num_positives)":
                          _series(history, "selection", "knn_top_p_precision"),
                      "all k kNN neighbours (method.knn_k)": _series(history, "selection", "knn_precision")}
            _plot(plots / "positive_precision.png", "positive precision at each refresh", "precision",
                  {label: points for label, points in series.items() if points[0]})  # older runs: no top-P
            lines += ["![positive precision](plots/positive_precision.png)", ""]
        keys = ["positive_precision", "knn_top_p_precision", "knn_precision", "omega_mean", "fill_fraction",
                "cluster_size_min", "cluster_size_median", "cluster_size_max", "seconds"]
        rows = [[r["epoch"]] + [r["selection"].get(k, "") for k in keys] for r in refreshes]
        lines += ["Label precision (share of pairs with the anchor's label): `positive_precision` of the "
                  "selected positives, `knn_top_p_precision` of the same number of nearest neighbours (what "
                  "kNN-only selection picks), `knn_precision` of all k neighbours.", "",
                  *_table(rows, ["epoch"] + keys), ""]
        previews = {int(p.stem[6:]): p.name for p in (run_dir / "positives").glob("epoch_*.png")
                    if p.stem[6:].isdigit()}
        if previews:  # drawn at each refresh by the trainer; the latest is shown
            latest = max(previews)
            lines += [f"Anchors and their positives at the refresh of epoch {latest} (`clim inspect` draws more):",
                      "", f"![positives](positives/{previews[latest]})", ""]

    evaluations = sorted((run_dir / "eval").glob("*.json"))
    if evaluations:
        lines += ["## Evaluations", ""]
        for path in evaluations:
            flat = [[k, v] for k, v in json.loads(path.read_text()).items() if not isinstance(v, (dict, list))]
            lines += [f"### {path.stem}", ""] + _table(flat, ["key", "value"]) + [""]
            for image in sorted(path.parent.glob(f"{path.stem}*.png")):
                lines += [f"![{image.stem}](eval/{image.name})", ""]
    out = run_dir / "report.md"
    out.write_text("\n".join(lines))
    return out
