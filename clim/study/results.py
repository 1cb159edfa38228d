"""RESULTS.md from the study's records alone: paired statistics per claim, every table, plots, setup.

The plan (:func:`clim.study.matrix.plan_runs`) says which records should exist; the records say what
the runs measured. Nothing else is read, except the raw-pixel references (computed once and cached
beside the records when the records lack them, :mod:`clim.study.regimes`), so RESULTS.md can be
regenerated anywhere from the records in git (``clim ablate --scale cpu --report``), and it lists the
records still missing. Beside its own scale it reports the other regimes (:data:`OTHER_REGIMES`:
the many-class ``glyphs`` arms beside ``cpu``), whatever state their records are in.
"""

from __future__ import annotations

import shlex
from dataclasses import asdict
from pathlib import Path

import yaml

from clim.config import PRESET_DIR, load_config
from clim.study.claims import (CLAIMS, CONFIDENCE, INCONCLUSIVE, METRICS, PAPER, Paired, agreement_summary, format_p,
                               format_paired, format_probability, format_stat, holm, summarize)
from clim.study.matrix import FULL_CLIM, GROUPS, SCALES, Run, Scale, plan_runs, seeds_of, selection_variant
from clim.study.plots import plot_results
from clim.study.regimes import (ARM_NAMES, OTHER_REGIMES, PixelReference, Regime, focused_section, load_regime,
                                overview, pixel_words, references_section,
                                regime_folder, regime_line, split_section, split_sentence)
from clim.study.tables import (HEADLINE, PAIRED_HEADER, RANDOM_INIT, Records, every_variant, fully_counted,
                               matrix_tables, paired_cells, probe_section, table)

_Records = Records  # the name the tests and older callers use
__all__ = ["headline_text", "portable_path", "write_readme_headline", "write_results"]

PLOTS_DIR = "ablation_plots"  # next to RESULTS.md
SPLIT_HEADLINE = ("mocov2", "random-cutmix", FULL_CLIM, "mocov2-time")  # the arms of the headline and its split


def duration(seconds: float) -> str:
    """Minutes, or hours from 1.5 h on."""
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def claim_results(records: Records) -> list[tuple]:
    """``(claim, paired result or None, Holm-adjusted p or None)`` for every claim of the paper."""
    results = [records.paired(claim.better, claim.worse, claim.metric) for claim in CLAIMS]
    return list(zip(CLAIMS, results, holm([None if result is None else result.p for result in results])))


def holm_sentence(records: Records) -> str:
    """Which claims keep p < 0.05 after Holm's correction, and which verdicts do not survive it."""
    kept, lost = [], []
    for claim, result, adjusted in claim_results(records):
        if adjusted is not None and adjusted < 1 - CONFIDENCE:
            kept.append(f"{claim.text} ({result.verdict}, Holm p {format_probability(adjusted)})")
        elif result is not None and result.verdict != INCONCLUSIVE:
            lost.append(f"{claim.text} ({result.verdict} uncorrected, p {format_p(result)}; Holm p "
                        f"{format_probability(adjusted)})")
    text = (f"Holm's correction over the {len(CLAIMS)} claims of RESULTS.md (family-wise error 5 %): "
            f"{len(kept)} keep p < 0.05" + (": " + "; ".join(kept) if kept else ""))
    if lost:
        text += f". {len(lost)} verdict(s) of the uncorrected intervals do not survive it: " + "; ".join(lost)
    return text


def _headline(records: Records) -> list[str]:
    rows = []
    for label, worse in (("equal epochs", "mocov2"), ("equal CPU minutes", "mocov2-time")):
        for metric in ("knn_k20_top1", "linear_top1"):
            digits = METRICS[metric][1]
            rows.append([label, METRICS[metric][0], records.cell(worse, metric), records.cell(FULL_CLIM, metric),
                         *paired_cells(records.paired(FULL_CLIM, worse, metric), digits)])
    minutes = [f"`{name}` {format_stat(records.cost(name), 2)}" for name in HEADLINE]
    return (["## Headline: CLIM vs MoCo v2", "",
             "CLIM − MoCo v2 per seed (same seed: same data order and initialisation). *Equal CPU minutes* "
             "compares CLIM with `mocov2-time`, MoCo v2 on a longer schedule chosen to cost at least CLIM's CPU time "
             "(the measured minutes are below the table).", ""]
            + table(["comparison", "metric", "MoCo v2", "CLIM", *PAIRED_HEADER], rows)
            + [f"CPU minutes per run (training + evaluation, one thread; resumed runs that "
               f"lost a killed process's CPU time are left out): {', '.join(minutes)}.", "",
               holm_sentence(records) + ". The verdicts above use uncorrected intervals.", ""])


def _control(regime: Regime) -> list[str]:
    """The split of the headline gain, and what needs no training beside the headline arms."""
    arms = tuple(arm for arm in SPLIT_HEADLINE if arm in regime.records.found)
    return (["### Is it the selection? MoCo v2, random + CutMix and CLIM on the seeds they share", ""]
            + split_section(regime.records)
            + ["## What needs no training: raw pixels and random init", ""] + references_section(regime, arms))


README_BEGIN = "<!-- clim ablate headline: begin (generated by `clim ablate --scale cpu --report --readme README.md`) -->"
README_END = "<!-- clim ablate headline: end -->"


def _where_the_gain_comes_from(records: Records) -> str:
    """Table 6 in one line: what CutMix adds over the five selections, and center-wise vs random positives."""
    mixing, selection = records.mixing_effect(), records.paired(FULL_CLIM, selection_variant("random", "cutmix"),
                                                                "linear_top1")
    if mixing is None or selection is None:
        return "Table 6 (where the gain comes from): not enough paired seeds yet"

    def text(result: Paired) -> str:
        return f"{format_paired(result, 2)} points (n = {result.n}, **{result.verdict}**)"

    return (f"Where the gain comes from (Table 6, linear top-1): CutMix − no mixing, over the five selections, "
            f"{text(mixing)}; center-wise − random positives, both with CutMix, {text(selection)}")


def _pixel_sentence(regime: Regime) -> str:
    """The raw-pixel references at the training (and native) resolution, and where the trained arms' kNN falls."""
    references = [ref for ref in regime.references.values() if isinstance(ref, PixelReference)]
    if not references:
        reason = next(iter(regime.references.values()), "not computed")
        return f"What needs no training: raw-pixel references {reason}"
    sizes = "; ".join(f"at {'the training' if ref.image_size == regime.image_size else 'the native'} resolution, "
                      f"{ref.image_size} px, kNN {ref.knn:.2f} %" + ("" if ref.linear is None else
                                                                    f" / ridge {ref.linear:.2f} %")
                      for ref in references)
    arms = []
    for arm in ("mocov2", "random-cutmix", FULL_CLIM):
        stat, words = regime.records.stat(arm, "knn_k20_top1"), pixel_words(regime, arm, "knn_k20_top1")
        if stat is not None and words:
            arms.append(f"{ARM_NAMES[arm]}'s kNN ({stat.mean:.2f}, n = {stat.n}) is {words}")
    linear = [f"{ARM_NAMES[arm]} {pixel_words(regime, arm, 'linear_top1')}" for arm in ("mocov2", FULL_CLIM)
              if pixel_words(regime, arm, "linear_top1")]
    tested = references[0].num_test
    return (f"What needs no training (the same weighted kNN{f' on the {tested} test images' if tested else ''}; "
            f"a ridge classifier for the linear reference): raw pixels {sizes}. " + "; ".join(arms)
            + (". The trained linear probes (a different classifier from the ridge): " + "; ".join(linear)
               if linear else ""))


def _readme_block(scale_name: str, regime: Regime, others: list[Regime], seeds: int | None) -> str:
    records = regime.records
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
    split = [s for s in (split_sentence(records, metric) for metric in ("knn_k20_top1", "linear_top1")) if s]
    lines = [README_BEGIN,
             f"**Does CLIM help? What our runs say so far** (`clim ablate --scale {scale_name}`: {SCALES[scale_name].preset}, "
             f"the CPU demo's regime; {len(records.found.get(FULL_CLIM, {}))} of {planned} planned seed pairs recorded; "
             "CLIM − MoCo v2 per seed, mean [95 % t interval]):", "",
             "- " + sentence("mocov2", "equal epochs") + ".",
             "- " + sentence("mocov2-time", "MoCo v2 given at least CLIM's CPU minutes") + ".",
             "- MoCo v2 over the same backbone at random init: "
             + ("no record yet" if learned is None else f"kNN {format_paired(learned, 2)} points (n = {learned.n})") + ".",
             "- " + _where_the_gain_comes_from(records) + ".",
             "- Is it the selection? CLIM − MoCo v2 split into mixing (random positives + CutMix − MoCo v2) and "
             "selection (CLIM − random + CutMix), paired per seed on the seeds the three arms share: "
             + ("; ".join(split) if split else "no common seed yet") + ".",
             "- " + _pixel_sentence(regime) + ".",
             "- " + holm_sentence(records) + ".",
             *("- " + regime_line(other) for other in others),
             "", "Every claim of the paper, paired, with p and n, and the command behind each number: "
             "[RESULTS.md](RESULTS.md). Regenerate both with `clim ablate --scale cpu --report --results RESULTS.md "
             "--readme README.md` (it computes the raw-pixel references once, into `pixel_references.json` beside "
             "the records).", README_END]
    return "\n".join(lines)


def other_regimes(scale_name: str, records_dir: str | Path, regimes=None) -> list[tuple[str, Path]]:
    """``(name, records folder)`` of the regimes reported beside ``scale_name``'s own: ``regimes`` (names,
    or ``NAME=FOLDER``) when given, else :data:`OTHER_REGIMES`, each in a sibling folder of ``records_dir``."""
    chosen = OTHER_REGIMES.get(scale_name, ()) if regimes is None else regimes
    found = []
    for item in chosen:
        name, _, folder = item.partition("=")
        found.append((name, Path(folder) if folder else regime_folder(records_dir, name)))
    return found


def headline_text(scale_name: str, records_dir: str | Path, seeds: int | None = None, regimes=None) -> str:
    """The README's headline block: CLIM vs MoCo v2 from the records, with its paired 95 % intervals, the
    split of the gain, the raw-pixel references, what survives Holm, and the other regimes."""
    regime = load_regime(scale_name, records_dir, seeds)
    others = [load_regime(name, folder) for name, folder in other_regimes(scale_name, records_dir, regimes)]
    return _readme_block(scale_name, regime, others, seeds)


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


def _learning(records: Records) -> list[str]:
    arms = [name for name in SPLIT_HEADLINE if name in records.found or name in HEADLINE]
    rows = [[f"`{name}`", records.cell(name, "knn_k20_top1"), format_stat(records.stat(name, RANDOM_INIT)),
             *paired_cells(records.learned(name), 2)] for name in arms]
    return (["## Does the regime learn?", "",
             "kNN top-1 of the trained backbone minus that of the same backbone at random initialisation, drawn "
             "with the run's seed (as `clim demo` draws it). The issue asks for ≥ 3 points for MoCo v2. Learning "
             "is not the same as beating raw pixels: see the section above.", ""]
            + table(["variant", "trained kNN %", "random init kNN %", *PAIRED_HEADER], rows))


def _claims(records: Records) -> tuple[list[str], list[tuple[str, Paired | None]]]:
    verdicts, rows, differences, standing = [], [], [], []
    results = claim_results(records)
    for claim, result, holm_p in results:
        digits = METRICS[claim.metric][1]
        verdicts.append("not run" if result is None else result.verdict)
        paper = PAPER.get(claim.metric, {})
        paper_text = (f"{paper[claim.better]:g} vs {paper[claim.worse]:g}"
                      if claim.better in paper and claim.worse in paper else "direction only")
        cells = paired_cells(result, digits)
        cells.insert(2, format_probability(holm_p))
        rows.append([claim.text, f"`{claim.better}` vs `{claim.worse}`", METRICS[claim.metric][0], paper_text,
                     records.shared_cells(claim.better, claim.worse, claim.metric), *cells])
        if holm_p is not None and holm_p < 1 - CONFIDENCE:
            standing.append(f"{claim.text} ({result.verdict})")
        if claim.metric.endswith("top1"):  # the figure's axis is percentage points
            differences.append((claim.text, result))
    tested = sum(holm_p is not None for _, _, holm_p in results)
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
                 if standing else "none keeps p < 0.05 after it.")
              + " *Ours* shows both variants on the seeds they share, the seeds the difference is taken over.", ""]
             + table(["paper's claim", "variants", "metric", "paper", "ours, on shared seeds (mean ± std)", *header],
                     rows))
    return lines, differences


def _missing(records: Records, seeds: int | None) -> list[str]:
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


def _machines(records: Records) -> list[str]:
    found = records.all
    machines = []
    for record in found:
        if record["machine"] not in machines:
            machines.append(record["machine"])
    dates = sorted(record["created"] for record in found)
    total = sum(record["cpu_minutes"] for record in found)
    resumed = sum(not fully_counted(record) for record in found)
    commits = sorted({record.get("commit") or "?" for record in found})
    loads = [record["load_average"][1] for record in found if record.get("load_average")] or [float("nan")]
    keys = ("cpu", "cpu_count", "torch_threads", "device", "gpu", "torch", "python", "platform")
    rows = [[key, *(machine.get(key, "—") for machine in machines)] for key in keys]
    return ["## Machine", "",
            f"Records written between {dates[0]} and {dates[-1]} (UTC) by commit(s) {', '.join(commits)}: "
            f"{total / 60:.1f} CPU hours over {len(found)} runs ({total / len(found):.1f} CPU min per run"
            + (f"; {resumed} resumed run(s) lack a killed process's CPU time" if resumed else "") + "). "
            f"5-minute load average at the end of a run: {min(loads):.1f}–{max(loads):.1f} (other jobs shared the "
            "machine; CPU minutes are what a run costs on one core, wall time depends on the neighbours).", ""
            ] + table(["", *(f"machine {i + 1}" for i in range(len(machines)))], rows)


def _intro(scale_name: str, records: Records, runs: list[Run], records_dir: Path, base, command: str) -> list[str]:
    return [f"# CLIM ablations (`{scale_name}` scale)", "",
            f"Generated by `clim ablate --report` from the {len(records.all)} records of {len(runs)} planned runs in "
            f"`{portable_path(records_dir)}` ({len(records.missing)} missing: see the end). Run or resume the study "
            f"with `{command}`; regenerate this file with the same command plus `--report`.", "",
            f"Every run: {base.train.epochs} epochs of `{base.data.name}` at {base.data.image_size} px, "
            f"`{base.model.backbone}`, batch {base.train.batch_size}, positives refreshed every "
            f"{base.method.refresh_every} epoch(s) from epoch {base.method.refresh_every} on. Cells are mean ± sample "
            "standard deviation over seeds (n); *not run*: no record yet. **The paper's numbers are ImageNet linear "
            "top-1 of a ResNet-50 after 200 epochs (METHOD §6)**: compare directions, not values.", ""]


def _plots(regime: Regime, differences, folder: Path) -> list[str]:
    records = regime.records
    curves = {name: [record["curve"] for record in by_seed.values()] for name, by_seed in records.found.items()}
    random_init = summarize(v for name in HEADLINE for v in records.values(name, RANDOM_INIT).values())
    levels = {f"raw pixels {ref.image_size} px": ref.knn for ref in regime.references.values()
              if isinstance(ref, PixelReference) and ref.knn is not None}
    arms = tuple(name for name in SPLIT_HEADLINE if name in curves)
    return ["## Plots", ""] + plot_results(curves, differences, random_init.mean if random_init else None, arms,
                                           folder, levels)


def write_results(scale_name: str, records_dir: str | Path, path: str | Path | None = None, command: str | None = None,
                  overrides: list[str] | tuple[str, ...] = (), seeds: int | None = None, regimes=None) -> Path:
    """RESULTS.md (default ``records_dir/RESULTS.md``) and its plots, from the records of the planned runs,
    with the other regimes (``regimes``: names or ``NAME=FOLDER``; default :data:`OTHER_REGIMES`) after it."""
    records_dir = Path(records_dir)
    path = Path(path) if path else records_dir / "RESULTS.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    scale = SCALES[scale_name]
    runs = plan_runs(scale_name, records_dir, records_dir, seeds, None, overrides)
    regime = load_regime(scale_name, records_dir, seeds, overrides, runs=runs)
    records = regime.records
    others = [load_regime(name, folder) for name, folder in other_regimes(scale_name, records_dir, regimes)]
    command = command or f"clim ablate --scale {scale_name} --records {shlex.quote(portable_path(records_dir))}"
    lines = _intro(scale_name, records, runs, records_dir, load_config(scale.preset, overrides=overrides), command)
    lines += ["## Regimes", ""] + overview([regime, *others])
    if not records.all:
        lines += ["No records yet.", ""] + [line for other in others for line in focused_section(other)]
        path.write_text("\n".join(lines + _missing(records, seeds)))
        return path
    if scale.arms:  # a focused regime: its arms, not the paper's tables
        lines += focused_section(regime) + [line for other in others for line in focused_section(other)]
        lines += _setup(scale, runs, overrides) + _machines(records) + _missing(records, seeds)
        path.write_text("\n".join(lines))
        return path
    claims, differences = _claims(records)
    lines += _headline(records) + _control(regime) + _learning(records) + claims
    lines += matrix_tables(records, scale, overrides) + probe_section(records, regime.num_classes)
    lines += every_variant(records) + [line for other in others for line in focused_section(other)]
    lines += _plots(regime, differences, path.parent / PLOTS_DIR)
    lines += _setup(scale, runs, overrides) + _machines(records) + _missing(records, seeds)
    path.write_text("\n".join(lines))
    return path


def portable_path(path: str | Path) -> str:
    """A path as RESULTS.md may show it: relative paths as given, an absolute one by its last name only,
    so that a committed file names no folder of the machine it was made on."""
    path = Path(path)
    return str(path) if not path.is_absolute() else (path.name or str(path))
