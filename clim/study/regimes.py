"""A regime of the study (one preset and dataset: the full matrix on Fashion-MNIST, the many-class glyphs arms):
its records, what needs no training (raw pixels at the training and the native resolution, the backbone at
random init), and CLIM's gain over MoCo v2 split into *mixing* (random positives + CutMix − MoCo v2: what
CutMix adds with a positive that carries no information) and *selection* (CLIM − random + CutMix: what
choosing the positive center-wise adds on top), paired per seed on the seeds the three arms share, where
they add up to CLIM − MoCo v2.

Raw-pixel references come from the records when the runs measured them (``pixel_knn_k20_top1`` ...), else
from ``pixel_references.json`` beside the records, else they are computed here (seconds for the embedded
Fashion-MNIST subset) and cached in that file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from clim.config import ConfigError
from clim.evaluation.cli import versus
from clim.study.claims import METRICS, Paired, format_paired, format_probability, format_stat, holm, paired, summarize
from clim.study.matrix import FULL_CLIM, SCALES, plan_runs, read_record
from clim.study.tables import RANDOM_INIT, Records, refresh_precision, seeds_text, table

REFERENCES_NAME = "pixel_references.json"
OTHER_REGIMES = {"cpu": ("glyphs",)}  # the regimes RESULTS.md of a scale reports beside its own
ARM_NAMES = {"mocov2": "MoCo v2", "random-cutmix": "random + CutMix", FULL_CLIM: "CLIM",
             "center_wise-none": "center-wise, no mixing", "knn-cutmix": "kNN + CutMix",
             "mocov2-time": "MoCo v2 (CLIM's CPU minutes)"}
ACCURACIES = ("knn_k20_top1", "linear_top1")


@dataclass(frozen=True)
class Comparison:
    label: str
    better: str
    worse: str


TOTAL = Comparison("CLIM − MoCo v2", FULL_CLIM, "mocov2")
MIXING = Comparison("mixing: random + CutMix − MoCo v2", "random-cutmix", "mocov2")
SELECTION = Comparison("selection: CLIM − random + CutMix", FULL_CLIM, "random-cutmix")
SPLIT_ARMS = ("mocov2", "random-cutmix", FULL_CLIM)
SPLIT_ROWS = ((TOTAL, True), (MIXING, True), (SELECTION, True))  # (comparison, on the split's shared seeds)
FOCUSED_EXTRA = (Comparison("CutMix on center-wise positives: CLIM − center-wise, no mixing", FULL_CLIM,
                            "center_wise-none"),
                 Comparison("center-wise vs kNN positives, both with CutMix: CLIM − kNN + CutMix", FULL_CLIM,
                            "knn-cutmix"))


@dataclass(frozen=True)
class PixelReference:
    image_size: int
    knn: float | None  # weighted kNN top-1 %, k = 20, T = 0.07
    linear: float | None  # ridge classifier top-1 %
    num_test: int | None
    num_classes: int | None
    source: str  # where the numbers were read


@dataclass
class Regime:
    name: str
    folder: Path
    records: Records
    dataset: str | None = None
    root: str | None = None
    image_size: int | None = None  # the training resolution
    native_size: int | None = None
    num_classes: int | None = None
    references: dict[str, PixelReference | str] = field(default_factory=dict)  # "training" / "native"
    note: str | None = None  # why the runs could not be planned


def regime_folder(records_dir: str | Path, name: str) -> Path:
    """Where a sibling regime's records are: ``<parent>/<name>`` (else ``<parent>/ablate-<name>`` if that exists)."""
    parent = Path(records_dir).parent
    return next((folder for folder in (parent / name, parent / f"ablate-{name}") if folder.is_dir()), parent / name)


def records_in_folder(folder: Path) -> Records:
    """Every record under ``folder`` (``<variant>/seed<k>.json``) whatever its spec: for a regime whose runs
    cannot be planned here."""
    records = Records([])
    for path in sorted(Path(folder).glob("*/seed*.json")):
        record = read_record(path)
        if record is not None and isinstance(record.get("seed"), int) and isinstance(record.get("metrics"), dict):
            records.found.setdefault(path.parent.name, {})[record["seed"]] = record
    return records


def compute_pixel_references(dataset: str, root: str | None, image_size: int) -> dict:
    from clim.evaluation.references import pixel_references

    return pixel_references(dataset, root, image_size)


def native_size(dataset: str, root: str | None) -> int:
    from clim.data import build_dataset

    return int(build_dataset(dataset, root, "test").info.image_size)


def reference_command(dataset: str, root: str | None, image_size: int) -> str:
    return (f"python -c \"from clim.evaluation.references import pixel_references; "
            f"print(pixel_references({dataset!r}, {root!r}, {image_size}))\"")


def _from_records(records: Records, size: int) -> PixelReference | None:
    found = [r["metrics"] for r in records.all if r["metrics"].get("pixel_knn_k20_top1") is not None
             and r["metrics"].get("pixel_image_size") == size]
    if not found:
        return None
    linear = summarize(m.get("pixel_linear_top1") for m in found)
    spread = len({m["pixel_knn_k20_top1"] for m in found}) > 1
    source = f"the records ({len(found)}" + ("; they differ: mean shown" if spread else "; all equal") + ")"
    knn = summarize(m["pixel_knn_k20_top1"] for m in found).mean
    return PixelReference(size, knn, linear.mean if linear else None, found[0].get("num_test"),
                          found[0].get("num_classes"), source)


def _from_result(result: dict, source: str) -> PixelReference:
    return PixelReference(int(result["image_size"]), result.get("pixel_knn_top1"), result.get("pixel_linear_top1"),
                          result.get("num_test"), result.get("num_classes"), source)


def _read_cache(folder: Path, dataset: str, root: str | None) -> dict:
    """``pixel_references.json`` beside a regime's records: pixel_references() results by image size."""
    cache = {"dataset": dataset, "root": root, "native_image_size": None, "references": {}}
    try:
        found = json.loads((folder / REFERENCES_NAME).read_text())
    except (OSError, ValueError):
        found = None
    if isinstance(found, dict) and (found.get("dataset"), found.get("root")) == (dataset, root):
        cache.update(found)
    return cache


def _write_cache(folder: Path, cache: dict) -> None:
    tmp = folder / f".{REFERENCES_NAME}.tmp{os.getpid()}"
    tmp.write_text(json.dumps(cache, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, folder / REFERENCES_NAME)


def pixel_references_of(regime: Regime) -> None:
    """Fill ``regime.native_size``, ``regime.references`` (a PixelReference, or why there is none) and, when
    the records do not say, ``regime.num_classes``."""
    if regime.dataset is None or not regime.records.all:
        regime.references = {"training": "not computed (no records yet)"}
        return
    cache = _read_cache(regime.folder, regime.dataset, regime.root)
    read = json.dumps(cache, sort_keys=True)  # written back only when this call adds to it
    regime.native_size = cache.get("native_image_size")
    if regime.native_size is None:
        try:
            regime.native_size = cache["native_image_size"] = native_size(regime.dataset, regime.root)
        except (OSError, ValueError) as error:
            regime.references["native"] = f"not computed (the data is not here: {error})"
    training = regime.image_size = regime.image_size or regime.native_size
    for role, size in (("training", training), ("native", regime.native_size)):
        if size is None or (role == "native" and size == training) or role in regime.references:
            continue
        found = _from_records(regime.records, size)
        if found is None and str(size) in cache["references"]:
            found = _from_result(cache["references"][str(size)], f"`{REFERENCES_NAME}` beside the records")
        if found is None:
            try:
                result = compute_pixel_references(regime.dataset, regime.root, size)
            except (OSError, ValueError, ImportError) as error:
                regime.references[role] = f"not computed ({type(error).__name__}: {error})"
                continue
            command = reference_command(regime.dataset, regime.root, size)
            cache["references"][str(size)] = {**result, "command": command}
            found = _from_result(result, f"computed, cached in `{REFERENCES_NAME}` beside the records")
        regime.references[role] = found
    if json.dumps(cache, sort_keys=True) != read and regime.folder.is_dir():
        _write_cache(regime.folder, cache)
    known = [ref.num_classes for ref in regime.references.values() if isinstance(ref, PixelReference)]
    regime.num_classes = regime.num_classes or next((n for n in known if n), None)


def load_regime(name: str, folder: str | Path, seeds: int | None = None, overrides=(), runs=None) -> Regime:
    """A regime's records (planned runs when ``name`` is a scale whose preset loads, else every record in
    ``folder``), its dataset and its raw-pixel references."""
    folder, note = Path(folder), None
    if runs is None and name in SCALES:
        try:
            runs = plan_runs(name, folder, folder, seeds, None, overrides)
        except (ConfigError, OSError) as error:
            note = f"its runs cannot be planned with this code ({error})"
    records = Records(runs) if runs else records_in_folder(folder)
    config = records.all[0].get("spec", {}).get("config", {}) if records.all else runs[0].spec["config"] if runs else {}
    classes = {r["metrics"]["num_classes"] for r in records.all if r["metrics"].get("num_classes")}
    regime = Regime(name, folder, records, config.get("data.name"), config.get("data.root"),
                    config.get("data.image_size"), num_classes=min(classes) if len(classes) == 1 else None, note=note)
    pixel_references_of(regime)
    return regime


def _resolution(regime: Regime, role: str) -> str:
    size = regime.image_size if role == "training" else regime.native_size
    return f"{size} px" if size else "?"


def pixel_words(regime: Regime, arm: str, metric: str) -> str:
    """How an arm's mean compares with every raw-pixel reference, in words."""
    stat = regime.records.stat(arm, metric)
    if stat is None:
        return ""
    name = "raw pixels" if metric == "knn_k20_top1" else "the ridge on raw pixels"
    values = {role: ref.knn if metric == "knn_k20_top1" else ref.linear
              for role, ref in regime.references.items() if isinstance(ref, PixelReference)}
    return ", ".join(versus(stat.mean, value, f"{name} at {_resolution(regime, role)}")
                     for role, value in values.items() if value is not None)


def references_section(regime: Regime, arms: tuple[str, ...]) -> list[str]:
    """What needs no training beside the trained arms, and where each arm falls in words."""
    records, training = regime.records, _resolution(regime, "training")
    rows = []
    for role, ref in regime.references.items():
        label = f"{_resolution(regime, role)} ({role} resolution)"
        if isinstance(ref, str):
            rows.append(["raw pixels", label, ref, ref, "—"])
        else:
            ridge = "—" if ref.linear is None else f"{ref.linear:.2f} (ridge)"
            rows.append(["raw pixels", label, f"{ref.knn:.2f}", ridge, ref.source])
    random_init = {seed: value for arm in arms for seed, value in records.values(arm, RANDOM_INIT).items()}
    rows.append(["backbone at random init (the run's seed)", training, format_stat(summarize(random_init.values())),
                 "not measured", "the records"])
    rows += [[f"`{arm}` (trained)", training, records.cell(arm, "knn_k20_top1"), records.cell(arm, "linear_top1"),
              "the records"] for arm in arms if arm in records.found]
    commands = "; ".join(f"`{reference_command(regime.dataset, regime.root, ref.image_size)}`"
                         for ref in regime.references.values() if isinstance(ref, PixelReference))
    words = []
    for arm in arms:
        texts = [f"{'kNN' if metric == 'knn_k20_top1' else 'linear'} {records.stat(arm, metric).mean:.2f} "
                 f"(n={records.stat(arm, metric).n}) is {pixel_words(regime, arm, metric)}"
                 for metric in ACCURACIES if pixel_words(regime, arm, metric)]
        if texts:
            words.append(f"- `{arm}`: " + "; ".join(texts) + ".")
    return (["Raw pixels need no training: the test images at a resolution (resized, normalised, flattened), "
             "classified by the same weighted kNN against the train split (k = 20, T = 0.07), and by a ridge "
             "classifier on standardised pixels (one-vs-rest, regularisation chosen by leave-one-out on the train "
             "split; clim.evaluation.references). The trained arms' linear column is the study's linear probe "
             "(softmax on frozen backbone features), a different classifier from the ridge: compare the kNN "
             "columns first.", ""]
            + table(["features", "resolution", "kNN top-1 % (k=20)", "linear top-1 %", "source"], rows)
            + words + ([""] if words else [])
            + ([f"Raw-pixel numbers: {commands}.", ""] if commands else []))


def split_seeds(records: Records, metric: str) -> set[int]:
    return set.intersection(*(set(records.values(arm, metric)) for arm in SPLIT_ARMS))


def compare(records: Records, comparison: Comparison, metric: str, split: bool) -> tuple[Paired | None, set[int]]:
    """The paired difference, on the split's shared seeds (``split``) or on the seeds the pair shares."""
    seeds = split_seeds(records, metric) if split else None
    better, worse = (records.values(name, metric, seeds) for name in (comparison.better, comparison.worse))
    return paired(better, worse), set(better) & set(worse)


def comparison_table(records: Records, rows: list[tuple[Comparison, bool]], holm_family: set[str]) -> list[str]:
    """One row per comparison and accuracy; Holm's adjustment over the rows whose label is in ``holm_family``."""
    cells = [(comparison, metric, *compare(records, comparison, metric, split))
             for comparison, split in rows for metric in ACCURACIES]
    adjusted = holm([result.p if result is not None and comparison.label in holm_family else None
                     for comparison, _, result, _ in cells])
    body = []
    for (comparison, metric, result, seeds), holm_p in zip(cells, adjusted):
        means = [format_stat(records.stat(name, metric, seeds)) for name in (comparison.better, comparison.worse)]
        body.append([comparison.label, METRICS[metric][0], seeds_text(seeds) or "—", *means,
                     format_paired(result, 2), format_probability(None if result is None else result.p),
                     format_probability(holm_p) if comparison.label in holm_family else "not in the family",
                     "—" if result is None else f"{result.wins}/{result.n}",
                     f"**{'not run' if result is None else result.verdict}**"])
    return table(["comparison", "metric", "seeds", "first arm", "second arm", "paired difference [95 % CI]",
                  "p (paired t)", "p (Holm)", "ahead on seeds", "verdict"], body)


def split_sentence(records: Records, metric: str) -> str | None:
    """``mixing +2.0 [..] points, selection -0.5 [..]`` on the shared seeds, or None without them."""
    seeds = split_seeds(records, metric)
    if not seeds:
        return None
    means = {arm: summarize(records.values(arm, metric, seeds).values()).mean for arm in SPLIT_ARMS}
    parts = {c: compare(records, c, metric, True)[0] for c in (TOTAL, MIXING, SELECTION)}
    arms = ", ".join(f"{ARM_NAMES[arm]} {means[arm]:.2f}" for arm in SPLIT_ARMS)
    return (f"{METRICS[metric][0]} on seeds {seeds_text(seeds)} (n = {len(seeds)}): {arms}; CLIM − MoCo v2 "
            f"{format_paired(parts[TOTAL], 2)} = mixing {format_paired(parts[MIXING], 2)} "
            f"(**{parts[MIXING].verdict}**) + selection {format_paired(parts[SELECTION], 2)} "
            f"(**{parts[SELECTION].verdict}**)")


def split_sentences(records: Records) -> list[str]:
    return [s for s in (split_sentence(records, metric) for metric in ACCURACIES) if s]


def split_section(records: Records) -> list[str]:
    """CLIM's gain over MoCo v2 as mixing + selection, for the two accuracies; Holm over the four parts."""
    sentences = split_sentences(records)
    if not sentences:
        return ["The split of CLIM's gain needs MoCo v2, random + CutMix and CLIM on a common seed: none yet.", ""]
    return (["CLIM − MoCo v2 per seed, split into *mixing* (random positives + CutMix − "
             "MoCo v2: CutMix with a positive that carries no information) and *selection* (CLIM − random + "
             "CutMix: choosing the positive center-wise), each paired per seed with its 95 % t interval on the "
             "seeds the three arms share, so the two parts add up to the total on those seeds. *p (Holm)* adjusts "
             "the four parts (two per accuracy) for each other (family-wise error 5 %); the total is the headline "
             "claim, adjusted with the paper's claims.", ""]
            + [f"- {sentence}." for sentence in sentences] + [""]
            + comparison_table(records, SPLIT_ROWS, {MIXING.label, SELECTION.label}))


def status(regime: Regime, plan: bool = True) -> str:
    """How many records the regime has (of how many planned runs, with ``plan``), or that it has none yet."""
    found, planned = len(regime.records.all), sum(len(runs) for runs in regime.records.planned.values())
    of = f" of {planned} planned runs" if planned and plan else ""
    if not found:
        return f"no record yet{of} in `{regime.folder.name}`: the regime is running or not started"
    return f"{found} record(s){of} in `{regime.folder.name}`"


def _describe(regime: Regime) -> str:
    parts = {f"`{regime.dataset}`": regime.dataset, f"{regime.num_classes} classes": regime.num_classes,
             f"trained at {regime.image_size} px": regime.image_size}
    return ", ".join(text for text, known in parts.items() if known)


def focused_section(regime: Regime) -> list[str]:
    """A regime of a few arms: the arms side by side on their shared seeds, what needs no training, the
    split of CLIM's gain and the other comparisons, Holm-adjusted together."""
    lines = [f"## Regime `{regime.name}`" + (f": {_describe(regime)}" if _describe(regime) else ""), ""]
    if regime.note:
        lines += [f"Note: {regime.note}.", ""]
    said = status(regime)
    said = said[0].upper() + said[1:]
    if not regime.records.all:
        return lines + [f"{said}. This section fills in as its records land (regenerate with the command at the "
                        "top).", ""]
    records = regime.records
    arms = tuple(name for name in (records.planned or records.found) if name in records.found)
    shared = set.intersection(*(records.seeds(arm) for arm in arms)) or None
    chance = (f" A randomly chosen positive has the anchor's class about 1/{regime.num_classes} = "
              f"{100 / regime.num_classes:.1f} % of the time." if regime.num_classes else "")
    metrics = ("knn_k20_top1", "linear_top1", "semisup_top1", "positive_precision")
    rows = [[f"`{arm}`", ARM_NAMES.get(arm, arm), *(records.cell(arm, m, seeds=shared) for m in metrics),
             str(len(records.found[arm]))] for arm in arms]
    lines += [f"{said}.{chance} Cells: mean ± std over "
              + (f"seeds {seeds_text(shared)}, the seeds every arm has" if shared else "each arm's seeds")
              + " (n per cell).", ""]
    lines += table(["arm", "", *(METRICS[m][0] for m in metrics), "records"], rows) + refresh_precision(records, arms, shared)
    lines += [f"`clim inspect RUN_DIR --anchors 8 --compare knn --compare random` (green: the anchor's class): "
              f"![{png.stem}]({png.as_posix()})\n" for png in sorted(regime.folder.glob("*.png")) if not png.is_absolute()]
    lines += references_section(regime, arms)
    sentences = split_sentences(records)
    comparisons = [(c, split) for c, split in (*SPLIT_ROWS, *((c, False) for c in FOCUSED_EXTRA))
                   if c.better in records.found and c.worse in records.found]
    lines += ["Paired comparisons. The first three rows use the seeds MoCo v2, random + CutMix and CLIM share, "
              "so mixing + selection = CLIM − MoCo v2 on them; the others the seeds their pair shares. "
              f"*p (Holm)* adjusts all {2 * len(comparisons)} tests of this table for each other.", ""]
    lines += [f"- {sentence}." for sentence in sentences] + ([""] if sentences else [])
    return lines + comparison_table(records, comparisons, {c.label for c, _ in comparisons})


def regime_line(regime: Regime) -> str:
    """One README line: the regime's state, its split and its raw-pixel reference at the training resolution."""
    if not regime.records.all:  # the plan may still be changing: only what the records say
        return f"Regime `{regime.name}`: {status(regime, plan=False)}."
    head = f"Regime `{regime.name}`" + (f" ({_describe(regime)})" if _describe(regime) else "")
    parts = [status(regime), *split_sentences(regime.records)]
    reference = regime.references.get("training")
    if isinstance(reference, PixelReference):
        ridge = "" if reference.linear is None else f", ridge {reference.linear:.2f} %"
        parts.append(f"raw pixels at {reference.image_size} px: kNN {reference.knn:.2f} %{ridge}")
        words = pixel_words(regime, FULL_CLIM, "knn_k20_top1")
        if words:
            parts.append(f"CLIM's kNN is {words}")
    return f"{head}: " + "; ".join(parts) + "."


def overview(regimes: list[Regime]) -> list[str]:
    """One row per regime: records, data, classes, resolution and the raw-pixel references."""
    def reference(regime: Regime, role: str) -> str:
        found = regime.references.get(role)
        if found is None:
            return "same as training" if role == "native" and regime.native_size == regime.image_size else "—"
        if isinstance(found, str):
            return found
        ridge = "—" if found.linear is None else f"{found.linear:.2f}"
        return f"{found.knn:.2f} / {ridge} ({found.image_size} px)"

    rows = [[f"`{r.name}`", status(r), f"`{r.dataset}`" if r.dataset else "—", r.num_classes or "—",
             f"{r.image_size} px" if r.image_size else "—", reference(r, "training"), reference(r, "native")]
            for r in regimes]
    return table(["regime", "records", "dataset", "classes", "training resolution",
                  "raw pixels kNN / ridge %, training resolution", "raw pixels kNN / ridge %, native"], rows)
