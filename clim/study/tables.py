"""The records of a study, and RESULTS.md's tables of the full matrix (Tables 6-10, 12, the linear probe,
every variant).

A table that puts variants side by side shows them on the seeds its non-headline arms have (the headline
variants have 8 seeds, the other groups 2-3: a CLIM cell over 8 seeds beside one over 3 would compare
different draws); every cell states its n.
"""

from __future__ import annotations

import math
from collections import Counter

from clim.config import load_config
from clim.study.claims import (METRICS, PAPER, PAPER_SUPERVISED_SIMILARITY, Paired, Stat, format_p, format_paired,
                               format_stat, paired, summarize)
from clim.study.matrix import (ALPHAS, DEFAULT_K, FULL_CLIM, MIXINGS, SELECTIONS, TABLE8_K, Run, Scale, alpha_variant,
                               read_record, selection_variant, table8_variant)

HEADLINE = ("mocov2", FULL_CLIM, "mocov2-time")
RANDOM_INIT = "random_init_knn_k20_top1"
PAIRED_HEADER = ["paired difference [95 % CI]", "p (paired t)", "ahead on seeds", "n", "verdict"]


def fully_counted(record: dict) -> bool:
    """Whether a record's CPU minutes cover every process of its run (see :meth:`Records.cost`)."""
    return not record.get("resumed") or bool(record.get("cpu_complete"))


class Records:
    """The planned runs and the records found for them (same spec), by variant and seed."""

    def __init__(self, runs: list[Run]):
        self.planned: dict[str, list[Run]] = {}
        self.found: dict[str, dict[int, dict]] = {}
        self.missing: list[Run] = []
        for run in runs:
            self.planned.setdefault(run.variant.name, []).append(run)
            record = read_record(run.record_path, run.spec)
            if record is None:
                self.missing.append(run)
            else:
                self.found.setdefault(run.variant.name, {})[run.seed] = record

    @property
    def all(self) -> list[dict]:
        return [record for by_seed in self.found.values() for record in by_seed.values()]

    def values(self, variant: str, metric: str, seeds=None) -> dict[int, float]:
        found = {seed: record["metrics"].get(metric, record.get(metric))
                 for seed, record in self.found.get(variant, {}).items() if seeds is None or seed in seeds}
        return {seed: float(value) for seed, value in found.items() if value is not None}

    def stat(self, variant: str, metric: str, seeds=None) -> Stat | None:
        return summarize(self.values(variant, metric, seeds).values())

    def seeds(self, variant: str) -> set[int]:
        return set(self.found.get(variant, {}))

    def table_seeds(self, variants) -> set[int] | None:
        """The seeds a table of ``variants`` is shown on: those its non-headline arms were run with (the
        headline arms, run with more seeds, are restricted to them); None: every seed (only headline arms)."""
        others = [self.seeds(name) for name in variants if name not in HEADLINE]
        return set().union(*others) if others else None

    def cost(self, variant: str) -> Stat | None:
        """CPU minutes per run over the fully counted runs: a resumed run whose earlier process was killed
        outright (``cpu_complete`` false; older records counted only the last process) would understate it."""
        return summarize(float(record["cpu_minutes"]) for record in self.found.get(variant, {}).values()
                         if fully_counted(record))

    def cell(self, variant: str, metric: str, digits: int | None = None, seeds=None) -> str:
        if variant not in self.found:
            return "not run"
        return format_stat(self.stat(variant, metric, seeds), METRICS[metric][1] if digits is None else digits)

    def paired(self, better: str, worse: str, metric: str) -> Paired | None:
        return paired(self.values(better, metric), self.values(worse, metric))

    def shared_cells(self, better: str, worse: str, metric: str) -> str:
        """``better`` vs ``worse``, each on the seeds both have (mean ± std (n))."""
        seeds = self.seeds(better) & self.seeds(worse) or None
        return f"{self.cell(better, metric, seeds=seeds)} vs {self.cell(worse, metric, seeds=seeds)}"

    def similarity_gap(self, variant: str) -> dict[int, float]:
        """Per seed, intra-class minus all-pairs cosine: how far classes stand out of the features' overall spread."""
        every = self.values(variant, "all_pairs_similarity")
        return {seed: value - every[seed] for seed, value in self.values(variant, "intra_class_similarity").items()
                if seed in every}

    def mixing_effect(self) -> Paired | None:
        """Linear top-1 of CutMix − no mixing per seed, each side the mean of Table 6's five selections (seeds
        with all ten cells)."""
        cells = {(selection, mixing): self.values(selection_variant(selection, mixing), "linear_top1")
                 for selection in SELECTIONS for mixing in MIXINGS}
        complete = set.intersection(*(set(values) for values in cells.values()))
        mean = {mixing: {seed: sum(cells[selection, mixing][seed] for selection in SELECTIONS) / len(SELECTIONS)
                         for seed in complete} for mixing in MIXINGS}
        return paired(mean["cutmix"], mean["none"])

    def learned(self, variant: str) -> Paired | None:
        """kNN top-1 of the trained backbone minus the same seed's random-init backbone."""
        return paired(self.values(variant, "knn_k20_top1"), self.values(variant, RANDOM_INIT))


def table(header: list[str], rows: list[list]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(str(value) for value in row) + " |" for row in rows] + [""])


def paper_cell(variant: str, metric: str = "linear_top1") -> str:
    value = PAPER.get(metric, {}).get(variant)
    return "—" if value is None else f"{value:g}"


def sign(result: Paired | None) -> str:
    return "—" if result is None else f"{result.wins}/{result.n}"


def paired_cells(result: Paired | None, digits: int) -> list[str]:
    verdict = "not run" if result is None else result.verdict
    return [format_paired(result, digits), format_p(result), sign(result), "—" if result is None else str(result.n),
            f"**{verdict}**"]


def seeds_text(seeds) -> str:
    return ", ".join(map(str, sorted(seeds)))


def seeds_note(seeds: set[int] | None) -> str:
    if not seeds:
        return "Cells: mean ± std over each variant's seeds (n per cell)."
    return (f"Cells: mean ± std over seeds {seeds_text(seeds)}, the seeds this table's arms were run with (CLIM and "
            "MoCo v2, run with 8 seeds for the headline, restricted to them); n per cell.")


def _grid(records: Records, title: str, note: str, rows: list[tuple[str, str]]) -> list[str]:
    """Rows of (label, variant): our linear / kNN / 1 % numbers beside the paper's linear top-1, on the
    table's seeds."""
    metrics = ("linear_top1", "knn_k20_top1", "semisup_top1")
    seeds = records.table_seeds(name for _, name in rows)
    body = [[label, f"`{name}`", *(records.cell(name, m, seeds=seeds) for m in metrics), paper_cell(name)]
            for label, name in rows]
    return [title, "", f"{note} {seeds_note(seeds)}", ""] + table(
        ["", "variant", *(METRICS[m][0] for m in metrics), "paper (ImageNet linear top-1)"], body)


def _mixing_effect(records: Records) -> list[str]:
    """CutMix − no mixing per seed, for each selection and averaged over the selections (seeds with all ten cells)."""
    rows = [[selection, *paired_cells(records.paired(selection_variant(selection, "cutmix"),
                                                     selection_variant(selection, "none"), "linear_top1"), 2)]
            for selection in SELECTIONS]
    rows.append(["mean of the five", *paired_cells(records.mixing_effect(), 2)])
    return (["What CutMix adds to each selection: linear top-1 of CutMix − no mixing, per seed; *agrees*: the interval "
             "lies above 0, CutMix helps, as the paper finds for random positives (the one row it reports both "
             "columns of). *Mean of the five* averages each seed's five selections first (seeds with all ten cells).",
             ""]
            + table(["selection", *PAIRED_HEADER], rows))


def _table6(records: Records) -> list[str]:
    names = [selection_variant(s, m) for s in SELECTIONS for m in MIXINGS] + ["mocov2"]
    seeds = records.table_seeds(names)
    lines = ["## Table 6: positive selection × mixing", "",
             f"Linear top-1 %. Center-wise + CutMix is full CLIM; MoCo v2 uses no positives. {seeds_note(seeds)}", ""]
    rows = [[selection, *(cell for mixing in MIXINGS for cell in (
        records.cell(selection_variant(selection, mixing), "linear_top1", seeds=seeds),
        paper_cell(selection_variant(selection, mixing))))] for selection in SELECTIONS]
    rows.append(["MoCo v2", records.cell("mocov2", "linear_top1", seeds=seeds), paper_cell("mocov2"), "", ""])
    lines += table(["selection", "no mixing", "paper", "CutMix", "paper"], rows)
    lines += _mixing_effect(records)
    metrics = ("knn_k20_top1", "positive_precision")
    lines += ["The same runs on the same seeds, kNN top-1 and the last refresh's positive precision (the paper "
              "reports neither):", ""]
    lines += table(["selection", *(f"{METRICS[m][0]}, {mixing}" for m in metrics for mixing in MIXINGS)],
                   [[selection, *(records.cell(selection_variant(selection, mixing), m, seeds=seeds) for m in metrics
                                  for mixing in MIXINGS)] for selection in SELECTIONS])
    return lines


def _table12(records: Records) -> list[str]:
    lines = ["## Table 12: intra-class similarity", "",
             "Mean cosine over intra-class pairs of the test split's backbone features, averaged over classes; "
             "*all pairs*: the mean over all pairs regardless of class, for contrast.", ""]
    gap = {variant: records.similarity_gap(variant) for variant in ("mocov2", FULL_CLIM)}
    rows = [[label, f"`{variant}`", records.cell(variant, "intra_class_similarity"),
             records.cell(variant, "all_pairs_similarity", 3), format_stat(summarize(gap[variant].values()), 3),
             paper_cell(variant, "intra_class_similarity")]
            for label, variant in (("MoCo v2", "mocov2"), ("CLIM", FULL_CLIM))]
    rows.append(["supervised", "not part of the matrix", "—", "—", "—", f"{PAPER_SUPERVISED_SIMILARITY:g}"])
    lines += table(["", "variant", "intra-class", "all pairs", "intra-class − all pairs", "paper (ImageNet)"], rows)
    result = paired(gap[FULL_CLIM], gap["mocov2"])
    if result is not None:
        lines += ["A lower intra-class similarity can come with features that are less concentrated overall. "
                  "*intra-class − all pairs* (ours, not the paper's measure) subtracts that: CLIM − MoCo v2 per seed "
                  f"{format_paired(result, 3)}, p {format_p(result)}, CLIM ahead on {sign(result)} seeds "
                  f"(\"CLIM separates the classes more\": {result.verdict}).", ""]
    return lines


def matrix_tables(records: Records, scale: Scale, overrides) -> list[str]:
    """Tables 6, 7, 8, 9, 10 and 12 of the full matrix."""
    from clim.specs import multicrop_size

    lines = _table6(records)
    size = scale.resolutions[0]
    small = multicrop_size(load_config(scale.preset, overrides=[*overrides, "method.multicrop=true"]), size)
    lines += _grid(records, "## Table 7: multi-resolution vs multi-crop", "Center-wise positives + CutMix, α = 2.",
                   [(f"one resolution {{{size}}}", FULL_CLIM),
                    ("multi-resolution {" + ", ".join(map(str, scale.resolutions)) + "}", "multires"),
                    (f"multi-crop 2×{size} + 2×{small}", "multicrop")])
    name = {(m, k): FULL_CLIM if (m, k) == (scale.clusters[1], DEFAULT_K) else table8_variant(m, k)
            for m in scale.clusters for k in TABLE8_K}
    seeds = records.table_seeds(name.values())
    lines += ["## Table 8: clusters m × neighbours k", "",
              f"Linear top-1 %; m = {scale.clusters[1]} is N/100, k = {DEFAULT_K} is METHOD's (full CLIM). "
              f"{seeds_note(seeds)}", ""]
    lines += table(["m", *(f"k = {k}" for k in TABLE8_K)],
                   [[f"{m}", *(records.cell(name[m, k], "linear_top1", seeds=seeds) for k in TABLE8_K)]
                    for m in scale.clusters])
    alphas = sorted([(alpha, alpha_variant(alpha)) for alpha in ALPHAS] + [(2.0, FULL_CLIM)])
    lines += _grid(records, "## Table 9: CutMix α", "λ ~ Beta(α, α); center-wise positives, one resolution.",
                   [(f"α = {alpha:g}", variant) for alpha, variant in alphas])
    lines += _grid(records, "## Table 10: CutMix vs Mixup",
                   "Center-wise positives; Mixup λ ~ Beta(0.2, 0.2) (METHOD §3). METHOD §6 holds no Mixup number.",
                   [("CutMix", FULL_CLIM), ("Mixup", "mixup")])
    return lines + _table12(records)


def probe_section(records: Records, num_classes: int | None) -> list[str]:
    found = records.all
    if not found:
        return []
    chosen = Counter(f"{record['metrics']['linear_lr']:g}" for record in found)
    losses = [record["metrics"]["linear_final_train_loss"] for record in found]
    above = sum(bool(record["metrics"]["linear_loss_above_chance"]) for record in found)
    counts = ", ".join(f"lr {lr}: {count}" for lr, count in sorted(chosen.items(), key=lambda item: float(item[0])))
    chance = (f"(ln C = {math.log(num_classes):.3f} for C = {num_classes}); {above} run(s) ended above ln C"
              if num_classes else f"{above} run(s) ended above ln C (C, the number of classes, not known here)")
    return ["## The linear probe", "",
            "Every run's linear lr is chosen on a class-stratified 20 % of the train split held out from the "
            "probe's training (the test split takes no part), then the probe is retrained on the whole train split. "
            f"Chosen lrs over {len(found)} runs: {counts}. Final train loss: {min(losses):.3f}–{max(losses):.3f} "
            f"{chance}.", ""]


def every_variant(records: Records) -> list[str]:
    rows = [[f"`{name}`", planned[0].variant.group,
             " ".join(f"`{o}`" for o in planned[0].variant.overrides) or "(the preset)",
             *(records.cell(name, m) for m in METRICS), f"{len(records.found.get(name, {}))}/{len(planned)}",
             format_stat(records.cost(name), 2)]  # "—" when none is fully counted
            for name, planned in records.planned.items()]
    return ["## Every variant, every metric", "",
            "Each variant over all of its seeds (n per cell): an inventory. Compare variants in the tables above, "
            "which show them on the seeds they share.", ""] + table(
        ["variant", "group", "overrides", *(title for title, _ in METRICS.values()), "records",
         "CPU minutes per run (fully counted)"], rows)



def refresh_precision(records: Records, arms, seeds=None) -> list[str]:
    """RESULTS.md's table of the positive precision at every refresh (the records' curves), per arm with positives."""
    per_arm = {}
    for arm in arms:
        curves = [{row["epoch"]: row["positive_precision"] for row in record.get("curve", [])
                   if "positive_precision" in row}
                  for seed, record in records.found.get(arm, {}).items() if seeds is None or seed in seeds]
        if any(curves):
            per_arm[arm] = curves
    if not per_arm:
        return []
    epochs = sorted({epoch for curves in per_arm.values() for curve in curves for epoch in curve})
    rows = [[f"`{arm}`", *(format_stat(summarize(curve.get(epoch) for curve in curves), 3) for epoch in epochs)]
            for arm, curves in per_arm.items()]
    return (["Positive precision at each refresh: the share of a table's positives that have the anchor's class, "
             "under the first epoch that trains with the table (mean ± std over the seeds above).", ""]
            + table(["arm", *(f"epoch {epoch}" for epoch in epochs)], rows))
