"""RESULTS.md: every metric as mean ± std over seeds beside the paper's numbers, the verdicts, plots, setup."""

from __future__ import annotations

import shlex
from dataclasses import asdict
from pathlib import Path

import yaml

from clim.config import PRESET_DIR, load_config
from clim.study.claims import (CLAIMS, METRICS, PAPER, PAPER_SEMISUP_1PCT, PAPER_SUPERVISED_SIMILARITY, Stat,
                               agreement_summary, compare, format_stat, summarize)
from clim.study.matrix import (FULL_CLIM, LOG_NAME, MIXINGS, SCALES, SELECTIONS, SPEC_NAME, Run, Scale, read_eval,
                               selection_variant)
from clim.study.plots import plot_results

PLOTS_DIR = "ablation_plots"  # next to RESULTS.md


def duration(seconds: float) -> str:
    """Minutes, or hours from 1.5 h on."""
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


class _Results:
    """The finished runs of the matrix (eval.json + metrics.jsonl), by variant, and cells made from them."""

    def __init__(self, runs: list[Run]):
        self.planned: dict[str, list[Run]] = {}
        self.records: dict[str, list[dict]] = {}
        self.directories: dict[str, list[Path]] = {}
        for run in runs:
            self.planned.setdefault(run.variant.name, []).append(run)
            record = read_eval(run)
            if record is not None:
                self.records.setdefault(run.variant.name, []).append(record)
                self.directories.setdefault(run.variant.name, []).append(run.directory)

    @property
    def all_records(self) -> list[dict]:
        return [record for records in self.records.values() for record in records]

    def stat(self, variant: str, metric: str) -> Stat | None:
        return summarize(record.get(metric) for record in self.records.get(variant, []))

    def cell(self, variant: str, metric: str, digits: int | None = None) -> str:
        if variant not in self.records:
            return "not run"
        return format_stat(self.stat(variant, metric), METRICS[metric][1] if digits is None else digits)

    def histories(self) -> dict[str, list[list[dict]]]:
        from clim.report import read_history

        return {name: [read_history(d) for d in dirs] for name, dirs in self.directories.items()}


def _table(header: list[str], rows: list[list]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(str(value) for value in row) + " |" for row in rows] + [""])


def _paper(variant: str, metric: str = "linear_top1") -> str:
    value = PAPER.get(metric, {}).get(variant)
    return "—" if value is None else f"{value:g}"


def _variant_table(results: _Results, rows: list[tuple[str, str]]) -> list[str]:
    """Rows of (label, variant): our linear / kNN / 1 % numbers beside the paper's linear top-1."""
    metrics = ("linear_top1", "knn_k20_top1", "semisup_top1")
    body = [[label, f"`{name}`", *(results.cell(name, m) for m in metrics), _paper(name)] for label, name in rows]
    return _table(["", "variant", *(METRICS[m][0] for m in metrics), "paper (ImageNet linear top-1)"], body)


def _agreement(results: _Results) -> list[str]:
    verdicts, rows = [], []
    for claim in CLAIMS:
        digits = METRICS[claim.metric][1]
        better, worse = results.stat(claim.better, claim.metric), results.stat(claim.worse, claim.metric)
        verdict, numbers = compare(better, worse, digits)
        paper = PAPER.get(claim.metric, {})
        paper_text = (f"{paper[claim.better]:g} vs {paper[claim.worse]:g}"
                      if claim.better in paper and claim.worse in paper else "direction only")
        verdicts.append(verdict)
        rows.append([claim.text, f"`{claim.better}` vs `{claim.worse}`", METRICS[claim.metric][0], paper_text,
                     f"{format_stat(better, digits)} vs {format_stat(worse, digits)}", numbers, f"**{verdict}**"])
    summary = agreement_summary(verdicts)
    return [summary, "",
            "Each verdict compares our means. *Spread* = sqrt(std_a² + std_b²), the standard deviation of the "
            "difference between two single runs: *agrees* / *disagrees* means the difference exceeds it, *within "
            "the spread* means it may be seed noise, *one seed* means no spread is known. The paper's "
            "numbers come from ImageNet, so only the direction is compared.", ""] + _table(
        ["paper's claim", "variants", "metric", "paper", "ours (mean ± std)", "difference", "verdict"], rows)


def _preset_text(name: str) -> str:
    """The preset's YAML, after the presets it inherits from (``base:``)."""
    text = (PRESET_DIR / f"{name}.yaml").read_text()
    base = (yaml.safe_load(text) or {}).get("base")
    own = f"# clim/presets/{name}.yaml\n{text}"
    return own if base is None else _preset_text(base) + "\n" + own


def _setup(scale: Scale, runs: list[Run], overrides: list[str] | tuple[str, ...]) -> list[str]:
    from clim.evaluation.linear import LINEAR_PRESETS
    from clim.evaluation.semisup import SEMISUP_PRESETS

    every_run = f" and every run `{' '.join(overrides)}` (`--set`)" if overrides else ""
    evaluation = runs[0].spec["evaluation"]
    return ["## Setup", "",
            f"Base preset `{scale.preset}` (= full CLIM). A run adds its variant's overrides (table above), then "
            f"`train.seed=<k>`{every_run}. Each run lives in `runs/<variant>/seed<k>/` (checkpoint.pt, "
            f"metrics.jsonl, eval.json, {SPEC_NAME} = its exact spec, {LOG_NAME}).", "",
            "```yaml", _preset_text(scale.preset).rstrip(), "```", "",
            "Evaluation of the query backbone (METHOD §5) on the dataset's labelled train / test splits:", "",
            "- kNN: weighted, cosine, k = 20 / T = 0.07 (reported) and k = 200 / T = 0.1 (in eval.json).",
            f"- linear: preset `{evaluation['linear_preset']}` of clim.evaluation.linear, on cached features of "
            f"un-augmented images (faster; drops the protocol's training augmentation): "
            f"{asdict(LINEAR_PRESETS[evaluation['linear_preset']])}.",
            f"- semi-supervised: {evaluation['semisup_fraction']:.0%} of the training labels (class-balanced, drawn "
            f"with the run's seed), all layers fine-tuned, preset `{evaluation['semisup_preset']}` of "
            f"clim.evaluation.semisup: {asdict(SEMISUP_PRESETS[evaluation['semisup_preset']])}.",
            "- intra-class similarity: backbone features of the test split.",
            "- final positive precision: share of the last refresh's positives that carry the anchor's label.", ""]


def _machines(results: _Results) -> list[str]:
    records = results.all_records
    machines = []
    for record in records:
        if record["machine"] not in machines:
            machines.append(record["machine"])
    dates = sorted(record["created"] for record in records)
    total = sum(record["seconds"] for record in records)
    keys = ("cpu", "cpu_count", "torch_threads", "device", "gpu", "torch", "python", "platform")
    rows = [[key, *(machine.get(key, "—") for machine in machines)] for key in keys]
    return ["## Machine", "",
            f"Runs finished between {dates[0]} and {dates[-1]} (UTC). Training + evaluation took "
            f"{duration(total)} over {len(records)} runs ({duration(total / len(records))} per run on average; "
            "process start-up not included).", ""] + _table(["", *(f"machine {i + 1}" for i in range(len(machines)))],
                                                              rows)


def write_results(scale_name: str, out: str | Path, runs: list[Run], path: str | Path | None = None,
                  command: str | None = None, overrides: list[str] | tuple[str, ...] = (),
                  invoked_only: str | None = None) -> Path:
    """RESULTS.md (default ``out/RESULTS.md``) and its plots over the finished runs among ``runs``."""
    out = Path(out)
    path = Path(path) if path else out / "RESULTS.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    scale = SCALES[scale_name]
    results = _Results(runs)
    base = load_config(scale.preset, overrides=overrides)
    seeds = {main: max((len(r) for r in results.planned.values() if r[0].variant.main == main), default=0)
             for main in (True, False)}
    command = command or f"clim ablate --scale {scale_name} --out {shlex.quote(portable_path(out))}"
    partial = f" (this file was last written by a call with `--only {invoked_only}`)" if invoked_only else ""
    lines = [f"# CLIM ablations (`{scale_name}` scale)", "",
             f"Generated by `clim ablate` from {len(results.all_records)} of {len(runs)} runs in "
             f"`{portable_path(out)}` "
             f"({seeds[True]} seed(s) for MoCo v2 and full CLIM, {seeds[False]} for the other variants). "
             f"Reproduce with `{command}`{partial}.", "",
             f"Every run: {base.train.epochs} epochs of `{base.data.name}`, `{base.model.backbone}`, batch "
             f"{base.train.batch_size}, positives refreshed every {base.method.refresh_every} epoch(s) from epoch "
             f"{base.method.refresh_every} on. Each cell is the mean ± sample standard deviation over seeds (n = "
             f"seeds); *not run*: no finished run yet; —: no number exists. **The paper's numbers are ImageNet linear "
             f"top-1 of a ResNet-50 after 200 epochs (METHOD §6)**: compare directions, not values.", ""]
    if not results.all_records:
        path.write_text("\n".join(lines + ["No finished runs yet.", ""]))
        return path

    paper = {"linear_top1": (_paper("mocov2"), _paper(FULL_CLIM)),
             "semisup_top1": ("—", f"{PAPER_SEMISUP_1PCT:g} (final model)"),
             "intra_class_similarity": (_paper("mocov2", "intra_class_similarity"),
                                        _paper(FULL_CLIM, "intra_class_similarity"))}
    lines += ["## Headline: MoCo v2 vs CLIM", ""] + _table(
        ["metric", "MoCo v2 (ours)", "CLIM (ours)", "MoCo v2 (paper)", "CLIM (paper)"],
        [[title, results.cell("mocov2", m), results.cell(FULL_CLIM, m), *paper.get(m, ("—", "—"))]
         for m, (title, _) in METRICS.items()])
    lines += ["## What agrees with the paper and what does not", ""] + _agreement(results)

    lines += ["## Table 6: positive selection × mixing", "",
              "Linear top-1 %. Center-wise + CutMix is full CLIM; MoCo v2 uses no positives.", ""]
    rows = [[selection, *(cell for mixing in MIXINGS for cell in (
        results.cell(selection_variant(selection, mixing), "linear_top1"), _paper(selection_variant(selection, mixing))))]
        for selection in SELECTIONS]
    rows.append(["MoCo v2", results.cell("mocov2", "linear_top1"), _paper("mocov2"), "", ""])
    lines += _table(["selection", "no mixing", "paper", "CutMix", "paper"], rows)
    metrics = ("knn_k20_top1", "semisup_top1", "positive_precision")
    lines += ["The same runs, other metrics (the paper reports none of these):", ""] + _table(
        ["selection", *(f"{METRICS[m][0]}, {mixing}" for m in metrics for mixing in MIXINGS)],
        [[selection, *(results.cell(selection_variant(selection, mixing), m) for m in metrics for mixing in MIXINGS)]
         for selection in SELECTIONS])

    from clim.data.views import multicrop_size

    size = scale.resolutions[0]
    small = multicrop_size(load_config(scale.preset, overrides=[*overrides, "method.multicrop=true"]), size)
    lines += ["## Table 7: multi-resolution vs multi-crop", "", "Center-wise positives + CutMix, α = 2.", ""]
    lines += _variant_table(results, [(f"one resolution {{{size}}}", FULL_CLIM),
                                      ("multi-resolution {" + ", ".join(map(str, scale.resolutions)) + "}", "multires"),
                                      (f"multi-crop 2×{size} + 2×{small}", "multicrop")])
    lines += ["## Table 9: CutMix α", "", "λ ~ Beta(α, α); center-wise positives, one resolution.", ""]
    lines += _variant_table(results, [("α = 1", "alpha1"), ("α = 2", FULL_CLIM)])
    lines += ["## Table 10: CutMix vs Mixup", "",
              "Center-wise positives; Mixup λ ~ Beta(0.2, 0.2) (METHOD §3). METHOD §6 holds no Mixup number.", ""]
    lines += _variant_table(results, [("CutMix", FULL_CLIM), ("Mixup", "mixup")])
    lines += ["## Table 12: intra-class similarity", "",
              "Mean cosine over intra-class pairs of the test split's backbone features, averaged over classes; "
              "*all pairs*: the mean over all pairs regardless of class, for contrast.", ""]
    rows = [[label, f"`{name}`", results.cell(name, "intra_class_similarity"),
             results.cell(name, "all_pairs_similarity", 3), _paper(name, "intra_class_similarity")]
            for label, name in (("MoCo v2", "mocov2"), ("CLIM", FULL_CLIM))]
    rows.append(["supervised", "not part of the matrix", "—", "—", f"{PAPER_SUPERVISED_SIMILARITY:g}"])
    lines += _table(["", "variant", "intra-class", "all pairs", "paper (ImageNet)"], rows)

    lines += ["## Every variant, every metric", ""] + _table(
        ["variant", "overrides", *(title for title, _ in METRICS.values()), "minutes per run"],
        [[f"`{name}`", " ".join(f"`{o}`" for o in planned[0].variant.overrides) or "(the preset)",
          *(results.cell(name, m) for m in METRICS),
          format_stat(summarize(r["seconds"] / 60 for r in results.records.get(name, [])), 1)]
         for name, planned in results.planned.items()])
    lines += ["## Plots", ""] + plot_results(results.histories(), path.parent / PLOTS_DIR)
    lines += _setup(scale, runs, overrides) + _machines(results)
    path.write_text("\n".join(lines))
    return path


def portable_path(path: str | Path) -> str:
    """A path as RESULTS.md may show it: relative paths as given, an absolute one by its last name only,
    so that a committed file names no folder of the machine it was made on."""
    path = Path(path)
    return str(path) if not path.is_absolute() else (path.name or str(path))
