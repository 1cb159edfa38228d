"""RESULTS.md from the study's records alone: paired statistics per claim, every table, plots, setup.

The plan (:func:`clim.study.matrix.plan_runs`) says which records should exist; the records say what
the runs measured. Nothing else is read, so RESULTS.md can be regenerated anywhere from the records in
git (``clim ablate --scale cpu --report``), and it lists the records still missing.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import asdict
from pathlib import Path

import yaml

from clim.config import PRESET_DIR, load_config
from clim.study.claims import (CLAIMS, CONFIDENCE, METRICS, PAPER, PAPER_SEMISUP_1PCT, PAPER_SUPERVISED_SIMILARITY,
                               Paired, Stat, agreement_summary, format_p, format_paired, format_probability,
                               format_stat, holm, paired, summarize)
from clim.study.matrix import (ALPHAS, DEFAULT_K, FULL_CLIM, GROUPS, MIXINGS, SCALES, SELECTIONS, TABLE8_K, Run,
                               Scale, alpha_variant, plan_runs, read_record, seeds_of, selection_variant,
                               table8_variant)
from clim.study.plots import plot_results

PLOTS_DIR = "ablation_plots"  # next to RESULTS.md
HEADLINE = ("mocov2", FULL_CLIM, "mocov2-time")
RANDOM_INIT = "random_init_knn_k20_top1"


def duration(seconds: float) -> str:
    """Minutes, or hours from 1.5 h on."""
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _fully_counted(record: dict) -> bool:
    """Whether a record's CPU minutes cover every process of its run (see :meth:`_Records.cost`)."""
    return not record.get("resumed") or bool(record.get("cpu_complete"))


class _Records:
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

    def values(self, variant: str, metric: str) -> dict[int, float]:
        values = {}
        for seed, record in self.found.get(variant, {}).items():
            value = record["metrics"].get(metric, record.get(metric))
            if value is not None:
                values[seed] = float(value)
        return values

    def stat(self, variant: str, metric: str) -> Stat | None:
        return summarize(self.values(variant, metric).values())

    def cost(self, variant: str) -> Stat | None:
        """CPU minutes per run over the runs whose every process is counted: a resumed run whose earlier
        process was killed outright (``cpu_complete`` false; records before that key counted only the
        last process) would understate the cost."""
        return summarize(float(record["cpu_minutes"]) for record in self.found.get(variant, {}).values()
                         if _fully_counted(record))

    def cell(self, variant: str, metric: str, digits: int | None = None) -> str:
        if variant not in self.found:
            return "not run"
        return format_stat(self.stat(variant, metric), METRICS[metric][1] if digits is None else digits)

    def paired(self, better: str, worse: str, metric: str) -> Paired | None:
        return paired(self.values(better, metric), self.values(worse, metric))

    def similarity_gap(self, variant: str) -> dict[int, float]:
        """Per seed, intra-class minus all-pairs cosine: how far classes stand out of the features' overall spread."""
        every = self.values(variant, "all_pairs_similarity")
        return {seed: value - every[seed] for seed, value in self.values(variant, "intra_class_similarity").items()
                if seed in every}

    def mixing_effect(self, metric: str = "linear_top1") -> Paired | None:
        """CutMix − no mixing per seed, each side the mean of Table 6's five selections (seeds with all ten cells)."""
        cells = {(selection, mixing): self.values(selection_variant(selection, mixing), metric)
                 for selection in SELECTIONS for mixing in MIXINGS}
        complete = set.intersection(*(set(values) for values in cells.values()))
        mean = {mixing: {seed: sum(cells[selection, mixing][seed] for selection in SELECTIONS) / len(SELECTIONS)
                         for seed in complete} for mixing in MIXINGS}
        return paired(mean["cutmix"], mean["none"])

    def learned(self, variant: str) -> Paired | None:
        """kNN top-1 of the trained backbone minus the same seed's random-init backbone."""
        return paired(self.values(variant, "knn_k20_top1"), self.values(variant, RANDOM_INIT))


def _table(header: list[str], rows: list[list]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(str(value) for value in row) + " |" for row in rows] + [""])


def _paper(variant: str, metric: str = "linear_top1") -> str:
    value = PAPER.get(metric, {}).get(variant)
    return "—" if value is None else f"{value:g}"


def _sign(result: Paired | None) -> str:
    return "—" if result is None else f"{result.wins}/{result.n}"


def _paired_cells(result: Paired | None, digits: int) -> list[str]:
    verdict = "not run" if result is None else result.verdict
    return [format_paired(result, digits), format_p(result), _sign(result), "—" if result is None else str(result.n),
            f"**{verdict}**"]


PAIRED_HEADER = ["paired difference [95 % CI]", "p (paired t)", "ahead on seeds", "n", "verdict"]


def _headline(records: _Records) -> list[str]:
    rows = []
    for label, worse in (("equal epochs", "mocov2"), ("equal CPU minutes", "mocov2-time")):
        for metric in ("knn_k20_top1", "linear_top1"):
            digits = METRICS[metric][1]
            rows.append([label, METRICS[metric][0], records.cell(worse, metric), records.cell(FULL_CLIM, metric),
                         *_paired_cells(records.paired(FULL_CLIM, worse, metric), digits)])
    minutes = [f"`{name}` {format_stat(records.cost(name), 2)}" for name in HEADLINE]
    return (["## Headline: CLIM vs MoCo v2", "",
             "CLIM − MoCo v2 per seed (same seed: same data order and initialisation). *Equal CPU minutes* "
             "compares CLIM with `mocov2-time`, MoCo v2 on a longer schedule chosen to cost at least CLIM's CPU time "
             "(the measured minutes are below the table).", ""]
            + _table(["comparison", "metric", "MoCo v2", "CLIM", *PAIRED_HEADER], rows)
            + [f"CPU minutes per run (training + evaluation, one thread; resumed runs that "
               f"lost a killed process's CPU time are left out): {', '.join(minutes)}.", ""])


README_BEGIN = "<!-- clim ablate headline: begin (generated by `clim ablate --scale cpu --report --readme README.md`) -->"
README_END = "<!-- clim ablate headline: end -->"


def _where_the_gain_comes_from(records: _Records) -> str:
    """Table 6 in one line: what CutMix adds over the five selections, and center-wise vs random positives."""
    mixing, selection = records.mixing_effect(), records.paired(FULL_CLIM, selection_variant("random", "cutmix"),
                                                                "linear_top1")
    if mixing is None or selection is None:
        return "Table 6 (where the gain comes from): not enough paired seeds yet"

    def text(result: Paired) -> str:
        return f"{format_paired(result, 2)} points (n = {result.n}, **{result.verdict}**)"

    return (f"Where the gain comes from (Table 6, linear top-1): CutMix − no mixing, over the five selections, "
            f"{text(mixing)}; center-wise − random positives, both with CutMix, {text(selection)}")


def headline_text(scale_name: str, records_dir: str | Path, seeds: int | None = None) -> str:
    """The README's headline block: CLIM vs MoCo v2 from the records, with its paired 95 % intervals."""
    records = _Records(plan_runs(scale_name, records_dir, records_dir, seeds))
    planned = seeds_of("headline", seeds)

    def sentence(worse: str, label: str) -> str:
        parts = []
        for metric in ("knn_k20_top1", "linear_top1"):
            result = records.paired(FULL_CLIM, worse, metric)
            if result is None:
                return f"{label}: no paired seeds yet"
            name = {"knn_k20_top1": "kNN top-1 (k=20)", "linear_top1": "linear top-1"}[metric]
            parts.append(f"{name} {format_paired(result, 2)} points (p {format_p(result)}, CLIM ahead on "
                         f"{result.wins} of {result.n} seeds, **{result.verdict}**)")
        return f"{label}: " + "; ".join(parts)

    learned = records.learned("mocov2")
    lines = [README_BEGIN,
             f"**Does CLIM help? What our runs say so far** (`clim ablate --scale {scale_name}`: {SCALES[scale_name].preset}, "
             f"the CPU demo's regime; {len(records.found.get(FULL_CLIM, {}))} of {planned} planned seed pairs recorded; "
             "CLIM − MoCo v2 per seed, mean [95 % t interval]):", "",
             "- " + sentence("mocov2", "equal epochs") + ".",
             "- " + sentence("mocov2-time", "MoCo v2 given at least CLIM's CPU minutes") + ".",
             "- MoCo v2 over the same backbone at random init: "
             + ("no record yet" if learned is None else f"kNN {format_paired(learned, 2)} points (n = {learned.n})") + ".",
             "- " + _where_the_gain_comes_from(records) + ".",
             "", "Every claim of the paper, paired, with p and n: [RESULTS.md](RESULTS.md).", README_END]
    return "\n".join(lines)


def write_readme_headline(readme: str | Path, text: str) -> bool:
    """Replace the block between the markers in ``readme``; returns whether it changed."""
    readme = Path(readme)
    current = readme.read_text()
    if README_BEGIN not in current or README_END not in current:
        raise ValueError(f"{readme} has no headline markers ({README_BEGIN} ... {README_END})")
    head, rest = current.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    updated = head + text + tail
    readme.write_text(updated)
    return updated != current


def _learning(records: _Records) -> list[str]:
    rows = [[f"`{name}`", records.cell(name, "knn_k20_top1"), format_stat(records.stat(name, RANDOM_INIT)),
             *_paired_cells(records.learned(name), 2)] for name in HEADLINE]
    return (["## Does the regime learn?", "",
             "kNN top-1 of the trained backbone minus that of the same backbone at random initialisation, drawn "
             "with the run's seed (as `clim demo` draws it). The issue asks for ≥ 3 points for MoCo v2.", ""]
            + _table(["variant", "trained kNN %", "random init kNN %", *PAIRED_HEADER], rows))


def _claims(records: _Records) -> tuple[list[str], list[tuple[str, Paired | None]]]:
    results = [records.paired(claim.better, claim.worse, claim.metric) for claim in CLAIMS]
    adjusted = holm([None if result is None else result.p for result in results])
    verdicts, rows, differences, standing = [], [], [], []
    for claim, result, holm_p in zip(CLAIMS, results, adjusted):
        digits = METRICS[claim.metric][1]
        verdicts.append("not run" if result is None else result.verdict)
        paper = PAPER.get(claim.metric, {})
        paper_text = (f"{paper[claim.better]:g} vs {paper[claim.worse]:g}"
                      if claim.better in paper and claim.worse in paper else "direction only")
        cells = _paired_cells(result, digits)
        cells.insert(2, format_probability(holm_p))
        rows.append([claim.text, f"`{claim.better}` vs `{claim.worse}`", METRICS[claim.metric][0], paper_text,
                     f"{records.cell(claim.better, claim.metric)} vs {records.cell(claim.worse, claim.metric)}",
                     *cells])
        if holm_p is not None and holm_p < 1 - CONFIDENCE:
            standing.append(f"{claim.text} ({result.verdict})")
        if claim.metric.endswith("top1"):  # the figure's axis is percentage points
            differences.append((claim.text, result))
    tested = sum(p is not None for p in adjusted)
    header = PAIRED_HEADER[:2] + ["p (Holm)"] + PAIRED_HEADER[2:]
    lines = (["## The paper's claims", "", agreement_summary(verdicts), "",
              "Each claim is judged on per-seed differences (claimed-better − claimed-worse) over the seeds both "
              "variants have: *agrees* when the 95 % Student-t interval of the mean difference lies above 0, "
              "*disagrees* when it lies below 0, *inconclusive* otherwise. The paper's numbers come from ImageNet "
              "(ResNet-50, 200 epochs), so only directions are compared. A claim that does not reproduce here is "
              "reported as such. The verdicts use intervals uncorrected for multiple comparisons: of "
              f"{len(CLAIMS)} claims with no true difference, about one in 20 would still get a verdict by chance. "
              f"*p (Holm)* adjusts the p-values of the {tested} claims that have one (Holm's step-down, "
              "family-wise error 5 %); "
              + (f"{len(standing)} keep p < 0.05 after it: " + "; ".join(standing) + "."
                 if standing else "none keeps p < 0.05 after it."), ""]
             + _table(["paper's claim", "variants", "metric", "paper", "ours (mean ± std)", *header], rows))
    return lines, differences


def _grid(records: _Records, title: str, note: str, rows: list[tuple[str, str]]) -> list[str]:
    """Rows of (label, variant): our linear / kNN / 1 % numbers beside the paper's linear top-1."""
    metrics = ("linear_top1", "knn_k20_top1", "semisup_top1")
    body = [[label, f"`{name}`", *(records.cell(name, m) for m in metrics), _paper(name)] for label, name in rows]
    return [title, "", note, ""] + _table(
        ["", "variant", *(METRICS[m][0] for m in metrics), "paper (ImageNet linear top-1)"], body)


def _mixing_effect(records: _Records) -> list[str]:
    """CutMix − no mixing per seed, for each selection and averaged over the selections (seeds with all ten cells)."""
    metric = "linear_top1"
    effect = {selection: records.paired(selection_variant(selection, "cutmix"), selection_variant(selection, "none"),
                                        metric) for selection in SELECTIONS}
    rows = [[selection, *_paired_cells(effect[selection], 2)] for selection in SELECTIONS]
    rows.append(["mean of the five", *_paired_cells(records.mixing_effect(), 2)])
    return (["What CutMix adds to each selection: linear top-1 of CutMix − no mixing, per seed; *agrees*: the interval "
             "lies above 0, CutMix helps, as the paper finds for random positives (the one row it reports both "
             "columns of). *Mean of the five* "
             "averages each seed's five selections first (seeds with all ten cells).", ""]
            + _table(["selection", *PAIRED_HEADER], rows))


def _tables(records: _Records, scale: Scale, overrides) -> list[str]:
    lines = ["## Table 6: positive selection × mixing", "",
             "Linear top-1 %. Center-wise + CutMix is full CLIM; MoCo v2 uses no positives.", ""]
    rows = [[selection, *(cell for mixing in MIXINGS for cell in (
        records.cell(selection_variant(selection, mixing), "linear_top1"), _paper(selection_variant(selection, mixing))))]
        for selection in SELECTIONS]
    rows.append(["MoCo v2", records.cell("mocov2", "linear_top1"), _paper("mocov2"), "", ""])
    lines += _table(["selection", "no mixing", "paper", "CutMix", "paper"], rows)
    lines += _mixing_effect(records)
    metrics = ("knn_k20_top1", "positive_precision")
    lines += ["The same runs, kNN top-1 and the last refresh's positive precision (the paper reports neither):", ""]
    lines += _table(["selection", *(f"{METRICS[m][0]}, {mixing}" for m in metrics for mixing in MIXINGS)],
                    [[selection, *(records.cell(selection_variant(selection, mixing), m) for m in metrics
                                   for mixing in MIXINGS)] for selection in SELECTIONS])

    from clim.data.views import multicrop_size

    size = scale.resolutions[0]
    small = multicrop_size(load_config(scale.preset, overrides=[*overrides, "method.multicrop=true"]), size)
    lines += _grid(records, "## Table 7: multi-resolution vs multi-crop", "Center-wise positives + CutMix, α = 2.",
                   [(f"one resolution {{{size}}}", FULL_CLIM),
                    ("multi-resolution {" + ", ".join(map(str, scale.resolutions)) + "}", "multires"),
                    (f"multi-crop 2×{size} + 2×{small}", "multicrop")])
    lines += ["## Table 8: clusters m × neighbours k", "",
              f"Linear top-1 %; m = {scale.clusters[1]} is N/100, k = {DEFAULT_K} is METHOD's (full CLIM).", ""]
    name = {(m, k): FULL_CLIM if (m, k) == (scale.clusters[1], DEFAULT_K) else table8_variant(m, k)
            for m in scale.clusters for k in TABLE8_K}
    lines += _table(["m", *(f"k = {k}" for k in TABLE8_K)],
                    [[f"{m}", *(records.cell(name[m, k], "linear_top1") for k in TABLE8_K)] for m in scale.clusters])
    alphas = sorted([(alpha, alpha_variant(alpha)) for alpha in ALPHAS] + [(2.0, FULL_CLIM)])
    lines += _grid(records, "## Table 9: CutMix α", "λ ~ Beta(α, α); center-wise positives, one resolution.",
                   [(f"α = {alpha:g}", variant) for alpha, variant in alphas])
    lines += _grid(records, "## Table 10: CutMix vs Mixup",
                   "Center-wise positives; Mixup λ ~ Beta(0.2, 0.2) (METHOD §3). METHOD §6 holds no Mixup number.",
                   [("CutMix", FULL_CLIM), ("Mixup", "mixup")])
    lines += ["## Table 12: intra-class similarity", "",
              "Mean cosine over intra-class pairs of the test split's backbone features, averaged over classes; "
              "*all pairs*: the mean over all pairs regardless of class, for contrast.", ""]
    gap = {variant: records.similarity_gap(variant) for variant in ("mocov2", FULL_CLIM)}
    rows = [[label, f"`{variant}`", records.cell(variant, "intra_class_similarity"),
             records.cell(variant, "all_pairs_similarity", 3), format_stat(summarize(gap[variant].values()), 3),
             _paper(variant, "intra_class_similarity")]
            for label, variant in (("MoCo v2", "mocov2"), ("CLIM", FULL_CLIM))]
    rows.append(["supervised", "not part of the matrix", "—", "—", "—", f"{PAPER_SUPERVISED_SIMILARITY:g}"])
    lines += _table(["", "variant", "intra-class", "all pairs", "intra-class − all pairs", "paper (ImageNet)"], rows)
    result = paired(gap[FULL_CLIM], gap["mocov2"])
    if result is not None:
        lines += ["A lower intra-class similarity can come with features that are less concentrated overall. "
                  "*intra-class − all pairs* (ours, not the paper's measure) subtracts that: CLIM − MoCo v2 per seed "
                  f"{format_paired(result, 3)}, p {format_p(result)}, CLIM ahead on {_sign(result)} seeds "
                  f"(\"CLIM separates the classes more\": {result.verdict}).", ""]
    return lines


def _probe(records: _Records) -> list[str]:
    found = records.all
    if not found:
        return []
    chosen: dict[str, int] = {}
    for record in found:
        chosen[f"{record['metrics']['linear_lr']:g}"] = chosen.get(f"{record['metrics']['linear_lr']:g}", 0) + 1
    losses = [record["metrics"]["linear_final_train_loss"] for record in found]
    above = sum(bool(record["metrics"]["linear_loss_above_chance"]) for record in found)
    counts = ", ".join(f"lr {lr}: {count}" for lr, count in sorted(chosen.items(), key=lambda item: float(item[0])))
    classes = 10
    return ["## The linear probe", "",
            "Every run's linear lr is chosen on a class-stratified 20 % of the train split held out from the "
            "probe's training (the test split takes no part), then the probe is retrained on the whole train split. "
            f"Chosen lrs over {len(found)} runs: {counts}. Final train loss: {min(losses):.3f}–{max(losses):.3f} "
            f"(ln C = {math.log(classes):.3f} for C = {classes}); {above} run(s) ended above ln C.", ""]


def _every_variant(records: _Records) -> list[str]:
    rows = []
    for name, planned in records.planned.items():
        done = len(records.found.get(name, {}))
        rows.append([f"`{name}`", planned[0].variant.group,
                     " ".join(f"`{o}`" for o in planned[0].variant.overrides) or "(the preset)",
                     *(records.cell(name, m) for m in METRICS), f"{done}/{len(planned)}",
                     format_stat(records.cost(name), 2)])  # "—" when none is fully counted
    return ["## Every variant, every metric", ""] + _table(
        ["variant", "group", "overrides", *(title for title, _ in METRICS.values()), "records",
         "CPU minutes per run (fully counted)"],
        rows)


def _missing(records: _Records, seeds: int | None) -> list[str]:
    groups = ", ".join(f"{group} {seeds_of(group, seeds)}" for group in GROUPS)
    lines = ["## Missing records", "", f"Seeds planned per group (priority order): {groups}.", ""]
    if not records.missing:
        return lines + ["None: every planned run has its record.", ""]
    by_variant: dict[str, list[int]] = {}
    for run in records.missing:
        by_variant.setdefault(run.variant.name, []).append(run.seed)
    return lines + [f"{len(records.missing)} planned run(s) have no record yet: "
                    + "; ".join(f"`{name}` seed(s) {', '.join(map(str, seeds_))}" for name, seeds_ in by_variant.items())
                    + ". Rerun the command above to add them (finished records are skipped).", ""]


def _preset_text(name: str) -> str:
    """The preset's YAML, after the presets it inherits from (``base:``)."""
    text = (PRESET_DIR / f"{name}.yaml").read_text()
    base = (yaml.safe_load(text) or {}).get("base")
    own = f"# clim/presets/{name}.yaml\n{text}"
    return own if base is None else _preset_text(base) + "\n" + own


def _setup(scale: Scale, runs: list[Run], overrides) -> list[str]:
    from clim.evaluation.linear import LINEAR_PRESETS, PROBE_LRS
    from clim.evaluation.semisup import SEMISUP_PRESETS

    every_run = f" and every run `{' '.join(overrides)}` (`--set`)" if overrides else ""
    evaluation = runs[0].spec["evaluation"]
    return ["## Setup", "",
            f"Base preset `{scale.preset}` (= full CLIM). A run adds its variant's overrides (table above), then "
            f"`train.seed=<k>`{every_run}. Its record, `<variant>/seed<k>.json`, holds the spec, every metric, the "
            "per-epoch curve, CPU minutes, machine and commit.", "",
            "```yaml", _preset_text(scale.preset).rstrip(), "```", "",
            "Evaluation of the query backbone (METHOD §5) on the dataset's labelled train / test splits:", "",
            "- kNN: weighted, cosine, k = 20 / T = 0.07 (reported) and k = 200 / T = 0.1 (in the records); the same "
            "for the backbone at random initialisation.",
            f"- linear: preset `{evaluation['linear_preset']}` of clim.evaluation.linear on cached features of "
            f"un-augmented images (drops the protocol's training augmentation), lr chosen from {list(PROBE_LRS)} "
            f"on a held-out 20 % of the train split: {asdict(LINEAR_PRESETS[evaluation['linear_preset']])}.",
            f"- semi-supervised: {evaluation['semisup_fraction']:.0%} of the training labels (class-balanced, drawn "
            f"with the run's seed), all layers fine-tuned, preset `{evaluation['semisup_preset']}` of "
            f"clim.evaluation.semisup: {asdict(SEMISUP_PRESETS[evaluation['semisup_preset']])}.",
            "- intra-class similarity: backbone features of the test split.",
            "- final positive precision: share of the last refresh's positives that carry the anchor's label.", ""]


def _machines(records: _Records) -> list[str]:
    found = records.all
    machines = []
    for record in found:
        if record["machine"] not in machines:
            machines.append(record["machine"])
    dates = sorted(record["created"] for record in found)
    total = sum(record["cpu_minutes"] for record in found)
    resumed = sum(not _fully_counted(record) for record in found)
    commits = sorted({record.get("commit") or "?" for record in found})
    loads = [record["load_average"][1] for record in found if record.get("load_average")]
    keys = ("cpu", "cpu_count", "torch_threads", "device", "gpu", "torch", "python", "platform")
    rows = [[key, *(machine.get(key, "—") for machine in machines)] for key in keys]
    return ["## Machine", "",
            f"Records written between {dates[0]} and {dates[-1]} (UTC) by commit(s) {', '.join(commits)}: "
            f"{total / 60:.1f} CPU hours over {len(found)} runs ({total / len(found):.1f} CPU min per run"
            + (f"; {resumed} resumed run(s) lack a killed process's CPU time" if resumed else "") + "). "
            f"5-minute load average at the end of a run: {min(loads):.1f}–{max(loads):.1f} (other jobs shared the "
            "machine; CPU minutes are what a run costs on one core, wall time depends on the neighbours).", ""
            ] + _table(["", *(f"machine {i + 1}" for i in range(len(machines)))], rows)


def write_results(scale_name: str, records_dir: str | Path, path: str | Path | None = None, command: str | None = None,
                  overrides: list[str] | tuple[str, ...] = (), seeds: int | None = None) -> Path:
    """RESULTS.md (default ``records_dir/RESULTS.md``) and its plots, from the records of the planned runs."""
    records_dir = Path(records_dir)
    path = Path(path) if path else records_dir / "RESULTS.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    scale = SCALES[scale_name]
    runs = plan_runs(scale_name, records_dir, records_dir, seeds, None, overrides)
    records = _Records(runs)
    base = load_config(scale.preset, overrides=overrides)
    command = command or f"clim ablate --scale {scale_name} --records {shlex.quote(portable_path(records_dir))}"
    lines = [f"# CLIM ablations (`{scale_name}` scale)", "",
             f"Generated by `clim ablate --report` from the {len(records.all)} records of {len(runs)} planned runs in "
             f"`{portable_path(records_dir)}` ({len(records.missing)} missing: see the end). Run or resume the study "
             f"with `{command}`; regenerate this file with the same command plus `--report`.", "",
             f"Every run: {base.train.epochs} epochs of `{base.data.name}` at {base.data.image_size} px, "
             f"`{base.model.backbone}`, batch {base.train.batch_size}, positives refreshed every "
             f"{base.method.refresh_every} epoch(s) from epoch {base.method.refresh_every} on. Cells are mean ± sample "
             "standard deviation over seeds (n); *not run*: no record yet. **The paper's numbers are ImageNet linear "
             "top-1 of a ResNet-50 after 200 epochs (METHOD §6)**: compare directions, not values.", ""]
    if not records.all:
        path.write_text("\n".join(lines + ["No records yet.", ""] + _missing(records, seeds)))
        return path
    claims, differences = _claims(records)
    lines += _headline(records) + _learning(records) + claims + _tables(records, scale, overrides)
    lines += _probe(records) + _every_variant(records)
    curves = {name: [record["curve"] for record in by_seed.values()] for name, by_seed in records.found.items()}
    random_init = summarize(v for name in HEADLINE for v in records.values(name, RANDOM_INIT).values())
    lines += ["## Plots", ""] + plot_results(curves, differences, random_init.mean if random_init else None, HEADLINE,
                                             path.parent / PLOTS_DIR)
    lines += _setup(scale, runs, overrides) + _machines(records) + _missing(records, seeds)
    path.write_text("\n".join(lines))
    return path


def portable_path(path: str | Path) -> str:
    """A path as RESULTS.md may show it: relative paths as given, an absolute one by its last name only,
    so that a committed file names no folder of the machine it was made on."""
    path = Path(path)
    return str(path) if not path.is_absolute() else (path.name or str(path))
