"""``clim ablate``: the paper's ablation matrix at equal epochs, evaluated, summarised in RESULTS.md.

Every variant of paper Tables 6, 7, 9, 10 and 12 is a list of ``--set`` overrides of one base preset
per scale (``ablate-smoke`` / ``ablate-cpu`` / ``ablate-gpu``). The base preset *is* the full CLIM
run (center-wise positives + CutMix, α = 2, one resolution), so each comparison differs in exactly
the keys a variant names. MoCo v2 and full CLIM (the headline comparison) get ``--seeds-main``
seeds, every other variant ``--seeds-other``.

Each run trains and evaluates in its own subprocess (``python -m clim.ablate RUN_DIR``, which reads
``RUN_DIR/ablate.json``): memory is returned between runs, a crash costs one run instead of the
matrix, and an interrupted matrix resumes when the same command is repeated — a run whose
``eval.json`` was written for the same spec is skipped, a half-trained one resumes from its
checkpoint (the trainer does that by itself). Runs go seed-major, so an interrupted matrix already
holds one seed of every variant.

RESULTS.md puts each metric as mean ± sample std over seeds beside the paper's numbers (METHOD §6:
ImageNet, ResNet-50, 200 epochs, linear top-1), and states for each of the paper's claims whether
our difference points the same way and exceeds the seed spread; nothing in it is written by hand.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from clim.config import PRESET_DIR, ConfigError, load_config
from clim.engine.checkpoint import CHECKPOINT_NAME
from clim.evaluation.cli import positive_int

SPEC_NAME = "ablate.json"  # what the subprocess runs: preset, overrides, evaluation settings
EVAL_NAME = "eval.json"  # written last, so its presence marks a finished run
LOG_NAME = "ablate.log"  # the subprocess's stdout + stderr
PLOTS_DIR = "ablation_plots"  # next to RESULTS.md
EVAL_BATCH = 512
SEMISUP_FRACTION = 0.01


@dataclass(frozen=True)
class Scale:
    """How big the matrix is: the base preset and the evaluation presets that fit its budget."""

    preset: str
    resolutions: tuple[int, ...]  # the multi-resolution variant (METHOD §4), largest = image size
    linear_preset: str  # clim.evaluation.linear, trained on cached features (fast)
    semisup_preset: str  # clim.evaluation.semisup, 1 % of the labels
    # OMP threads per run: on a 2-core machine shared with other jobs one thread ran ResNet-10 at
    # 28 px about 3x faster than two (two threads spin-wait on each other); None: torch's default.
    threads: int | None


SCALES = {
    "smoke": Scale("ablate-smoke", (8, 6), "quick", "quick", 1),
    "cpu": Scale("ablate-cpu", (16, 12), "small", "small", 1),
    "gpu": Scale("ablate-gpu", (28, 20), "small", "small", None),
}


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: tuple[str, ...]  # relative to the scale's preset (= full CLIM)
    main: bool = False  # part of the headline comparison: --seeds-main seeds


SELECTIONS = ("random", "knn", "kmeans", "knn_kmeans", "center_wise")  # paper Table 6 rows
MIXINGS = ("none", "cutmix")  # paper Table 6 columns
FULL_CLIM = "clim"


def selection_variant(selection: str, mixing: str) -> str:
    return FULL_CLIM if (selection, mixing) == ("center_wise", "cutmix") else f"{selection}-{mixing}"


def build_matrix(scale: Scale) -> list[Variant]:
    """All variants; full CLIM serves as Table 6's center-wise + CutMix, Table 9's α = 2, Table 7's
    one resolution and Table 10's CutMix, so it is run once."""
    variants = [Variant("mocov2", ("method.name=mocov2",), main=True)]
    for selection in SELECTIONS:
        for mixing in MIXINGS:
            name = selection_variant(selection, mixing)
            overrides = () if name == FULL_CLIM else (f"method.selection={selection}", f"method.mixing={mixing}")
            variants.append(Variant(name, overrides, main=name == FULL_CLIM))
    sizes = ",".join(str(size) for size in scale.resolutions)
    variants += [Variant("mixup", ("method.mixing=mixup",)),
                 Variant("alpha1", ("method.alpha=1.0",)),
                 Variant("multires", (f"method.resolutions=[{sizes}]",)),
                 Variant("multicrop", ("method.multicrop=true",))]
    return variants


def select_variants(variants: list[Variant], only: str | None) -> list[Variant]:
    """``only``: comma-separated glob patterns of variant names (``mocov2,clim``, ``random-*``)."""
    if not only:
        return variants
    patterns = [pattern.strip() for pattern in only.split(",") if pattern.strip()]
    chosen = [v for v in variants if any(fnmatch.fnmatchcase(v.name, p) for p in patterns)]
    if not chosen:
        raise ConfigError(f"--only '{only}' matches no variant (variants: {', '.join(v.name for v in variants)})")
    return chosen


@dataclass
class Run:
    variant: Variant
    seed: int
    directory: Path
    spec: dict

    @property
    def label(self) -> str:
        return f"{self.variant.name} seed{self.seed}"


def plan_runs(scale_name: str, out: str | Path, seeds_main: int = 3, seeds_other: int = 2,
              only: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> list[Run]:
    """The runs, seed-major; every run's config is built here, so a bad ``--set`` fails at once."""
    if scale_name not in SCALES:
        raise ConfigError(f"unknown scale '{scale_name}' (choose from {', '.join(SCALES)})")
    scale = SCALES[scale_name]
    variants = select_variants(build_matrix(scale), only)
    evaluation = {"linear_preset": scale.linear_preset, "semisup_preset": scale.semisup_preset,
                  "semisup_fraction": SEMISUP_FRACTION}
    runs = []
    for seed in range(max(seeds_main, seeds_other)):
        for variant in variants:
            if seed >= (seeds_main if variant.main else seeds_other):
                continue
            spec = {"scale": scale_name, "variant": variant.name, "seed": seed, "preset": scale.preset,
                    "overrides": [*variant.overrides, *overrides, f"train.seed={seed}"], "evaluation": evaluation}
            load_config(scale.preset, overrides=spec["overrides"])
            runs.append(Run(variant, seed, Path(out) / "runs" / variant.name / f"seed{seed}", spec))
    return runs


def read_eval(run: Run) -> dict | None:
    """The run's results when it finished with the same spec (and its checkpoint is there), else None."""
    path = run.directory / EVAL_NAME
    if not path.exists() or not (run.directory / CHECKPOINT_NAME).exists():
        return None
    record = json.loads(path.read_text())
    return record if record.get("spec") == run.spec else None


# ---------------------------------------------------------------- one run (the subprocess)


def evaluate_run(run_dir: Path, evaluation: dict, seed: int) -> dict:
    """kNN, linear (cached features), 1 % semi-supervised and intra-class similarity (METHOD §5)."""
    from torch.utils.data import Subset

    from clim.evaluation.common import (crop_flip_transform, eval_dataset, eval_datasets, eval_spec, load_run,
                                        num_classes_of, plain_backbone, resolve_device)
    from clim.evaluation.features import extract_features
    from clim.evaluation.knn import run_knn
    from clim.evaluation.linear import LINEAR_PRESETS, linear_on_features
    from clim.evaluation.semisup import SEMISUP_PRESETS, balanced_subset, finetune
    from clim.evaluation.similarity import intra_class_similarity

    run = load_run(run_dir, "cpu")
    config = run.config
    device = resolve_device(config.train.device)
    run.model.to(device)
    workers = config.data.num_workers
    train_ds, test_ds = eval_datasets(config, run.data_info)
    classes = num_classes_of(train_ds)
    backbone = run.model.backbone_q
    train_feats, train_labels = extract_features(backbone, train_ds, EVAL_BATCH, device, workers, False)
    test_feats, test_labels = extract_features(backbone, test_ds, EVAL_BATCH, device, workers, False)
    results = run_knn(train_feats, train_labels, test_feats, test_labels, classes, device=device)
    labelled = train_labels >= 0
    linear = linear_on_features(train_feats[labelled], train_labels[labelled], test_feats, test_labels, classes,
                                LINEAR_PRESETS[evaluation["linear_preset"]], seed, device, False)
    similarity = intra_class_similarity(test_feats, test_labels)

    preset = SEMISUP_PRESETS[evaluation["semisup_preset"]]
    spec = eval_spec(config, run.data_info)
    train_aug = eval_dataset(config, run.data_info, (), "train", crop_flip_transform(spec, preset.crop_scale))
    subset = balanced_subset(train_aug.labels, evaluation["semisup_fraction"], seed)
    network, feature_dim = plain_backbone(config, run.data_info, run.model)
    semisup = finetune(network, feature_dim, Subset(train_aug, subset.tolist()), test_ds, classes, preset, seed,
                       device, workers, False)
    return {**results, "linear_top1": linear["linear_top1"], "semisup_top1": semisup["semisup_top1"],
            "semisup_labelled": int(subset.numel()),
            "intra_class_similarity": similarity["intra_class_similarity"],
            "all_pairs_similarity": similarity["all_pairs_similarity"]}


def run_one(run_dir: str | Path) -> dict:
    """Train (or resume) and evaluate one run from its ``ablate.json``; writes ``eval.json``."""
    from clim.engine.trainer import pretrain
    from clim.evaluation.common import resolve_device, write_result
    from clim.machine import machine_info

    run_dir = Path(run_dir)
    spec = json.loads((run_dir / SPEC_NAME).read_text())
    started = time.perf_counter()
    config = load_config(spec["preset"], overrides=spec["overrides"])
    history = pretrain(config, run_dir)
    trained = time.perf_counter()
    results = evaluate_run(run_dir, spec["evaluation"], config.train.seed)
    precision = [r["selection"]["positive_precision"] for r in history
                 if "positive_precision" in r.get("selection", {})]
    record = {"spec": spec, **results, "positive_precision": precision[-1] if precision else None,
              "machine": machine_info(resolve_device(config.train.device)),
              "epochs": len(history), "train_step_seconds": sum(r["epoch_seconds"] for r in history),
              "train_seconds": trained - started, "eval_seconds": time.perf_counter() - trained,
              "seconds": time.perf_counter() - started}
    write_result(run_dir / EVAL_NAME, record)
    return record


# ---------------------------------------------------------------- the matrix


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _execute(run: Run, threads: int | None) -> int:
    run.directory.mkdir(parents=True, exist_ok=True)
    (run.directory / SPEC_NAME).write_text(json.dumps(run.spec, indent=2) + "\n")
    env = dict(os.environ)
    if threads:
        env.setdefault("OMP_NUM_THREADS", str(threads))
    with open(run.directory / LOG_NAME, "a") as log:
        return subprocess.run([sys.executable, "-m", "clim.ablate", str(run.directory)], stdout=log,
                              stderr=subprocess.STDOUT, env=env).returncode


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def run_matrix(scale: str, out: str | Path, seeds_main: int = 3, seeds_other: int = 2, only: str | None = None,
               overrides: list[str] | tuple[str, ...] = (), results: str | Path | None = None,
               command: str | None = None) -> dict:
    """Run every unfinished run, then write RESULTS.md over the whole matrix found in ``out``.

    Returns ``{"runs", "ran", "failed", "results"}`` (``ran``: runs started by this call).
    """
    out = Path(out)
    runs = plan_runs(scale, out, seeds_main, seeds_other, only, overrides)
    finished = {run.label: read_eval(run) for run in runs}
    todo = [run for run in runs if finished[run.label] is None]
    durations = [record["seconds"] for record in finished.values() if record]
    print(f"clim ablate --scale {scale}: {len(runs)} runs in {out / 'runs'}, {len(runs) - len(todo)} done, "
          f"{len(todo)} to run", flush=True)
    failed = []
    for position, run in enumerate(todo, 1):
        prefix = f"[{position}/{len(todo)}] {run.label}"
        print(f"{prefix}: training + evaluation (log: {run.directory / LOG_NAME})", flush=True)
        started = time.perf_counter()
        code = _execute(run, SCALES[scale].threads)
        seconds = time.perf_counter() - started
        record = read_eval(run)
        if code != 0 or record is None:
            failed.append(run.label)
            print(f"{prefix}: FAILED (exit code {code}) after {_duration(seconds)}; last lines of the log:\n"
                  f"{_tail(run.directory / LOG_NAME)}", flush=True)
        else:
            durations.append(seconds)
            print(f"{prefix}: done in {_duration(seconds)}: kNN {record['knn_k20_top1']:.2f} %, linear "
                  f"{record['linear_top1']:.2f} %, 1 % labels {record['semisup_top1']:.2f} %", flush=True)
        left = len(todo) - position
        if left and durations:
            mean = sum(durations) / len(durations)
            print(f"    matrix ETA {_duration(left * mean)}: {left} run(s) left at the mean so far, "
                  f"{_duration(mean)} per run", flush=True)
    complete = plan_runs(scale, out, seeds_main, seeds_other, None, overrides)
    path = write_results(scale, out, complete, results, command, overrides, only)
    print(f"results: {path}" + (f"; {len(failed)} run(s) failed: {', '.join(failed)}" if failed else ""), flush=True)
    return {"runs": len(runs), "ran": len(todo), "failed": failed, "results": path}


# ---------------------------------------------------------------- statistics and the paper's claims


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float | None  # sample standard deviation (n - 1); None for a single run
    n: int


def summarize(values) -> Stat | None:
    values = [float(v) for v in values if v is not None]
    if not values:
        return None
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return Stat(mean, std, len(values))


def format_stat(stat: Stat | None, digits: int = 2) -> str:
    if stat is None:
        return "—"
    if stat.std is None:
        return f"{stat.mean:.{digits}f} (n=1)"
    return f"{stat.mean:.{digits}f} ± {stat.std:.{digits}f} (n={stat.n})"


AGREES, DISAGREES = "agrees", "disagrees"
SAME_WITHIN, OPPOSITE_WITHIN = "same direction, within the spread", "opposite direction, within the spread"
SAME_SINGLE, OPPOSITE_SINGLE = "same direction, one seed", "opposite direction, one seed"
NOT_RUN = "not run"


def compare(better: Stat | None, worse: Stat | None, digits: int = 2) -> tuple[str, str]:
    """Our verdict on a claim that ``better`` > ``worse``, and the numbers behind it.

    The spread is ``sqrt(std_a² + std_b²)``, the standard deviation of a difference between two
    single runs: a difference larger than that is unlikely to be seed noise.
    """
    if better is None or worse is None:
        return NOT_RUN, ""
    difference = better.mean - worse.mean
    if better.std is None or worse.std is None:
        return (SAME_SINGLE if difference > 0 else OPPOSITE_SINGLE), f"Δ = {difference:+.{digits}f}"
    spread = math.hypot(better.std, worse.std)
    if abs(difference) > spread:
        verdict = AGREES if difference > 0 else DISAGREES
    else:
        verdict = SAME_WITHIN if difference > 0 else OPPOSITE_WITHIN
    return verdict, f"Δ = {difference:+.{digits}f}, spread {spread:.{digits}f}"


def agreement_summary(verdicts: list[str]) -> str:
    """One sentence counting the verdicts, e.g. for the top of RESULTS.md."""
    count = {verdict: verdicts.count(verdict) for verdict in
             (AGREES, DISAGREES, SAME_WITHIN, OPPOSITE_WITHIN, SAME_SINGLE, OPPOSITE_SINGLE, NOT_RUN)}
    return (f"Of the paper's {len(verdicts)} claims, {count[AGREES]} agree with our runs beyond the seed spread and "
            f"{count[DISAGREES]} disagree beyond it; {count[SAME_WITHIN]} point the same way and "
            f"{count[OPPOSITE_WITHIN]} the other way within the spread (possibly seed noise); "
            f"{count[SAME_SINGLE] + count[OPPOSITE_SINGLE]} rest on single seeds ({count[SAME_SINGLE]} same way, "
            f"{count[OPPOSITE_SINGLE]} other way, spread unknown); {count[NOT_RUN]} lack runs.")


@dataclass(frozen=True)
class Claim:
    text: str
    better: str
    worse: str
    metric: str = "linear_top1"


# METHOD §6: ImageNet, ResNet-50, 200 epochs, linear top-1 (Table 12: intra-class cosine).
PAPER = {
    "linear_top1": {"mocov2": 67.5, "random-none": 62.3, "random-cutmix": 67.1, "knn_kmeans-none": 68.5,
                    FULL_CLIM: 70.1, "alpha1": 69.7, "multires": 72.3, "multicrop": 69.7},
    "intra_class_similarity": {"mocov2": 0.58, FULL_CLIM: 0.65},
}
PAPER_SUPERVISED_SIMILARITY = 0.75
PAPER_SEMISUP_1PCT = 59.3  # the final CLIM model, not the 200-epoch ablation one

CLAIMS = (
    Claim("CLIM beats MoCo v2 at equal epochs", FULL_CLIM, "mocov2"),
    Claim("CLIM has a higher intra-class similarity than MoCo v2 (Table 12)", FULL_CLIM, "mocov2",
          "intra_class_similarity"),
    Claim("CutMix helps with random positives (Table 6)", "random-cutmix", "random-none"),
    Claim("kNN ∩ k-means positives beat random ones, no mixing (Table 6)", "knn_kmeans-none", "random-none"),
    Claim("kNN ∩ k-means positives without mixing beat MoCo v2 (Table 6)", "knn_kmeans-none", "mocov2"),
    Claim("center-wise + CutMix beats random + CutMix (Table 6)", FULL_CLIM, "random-cutmix"),
    Claim("multi-resolution beats one resolution (Table 7)", "multires", FULL_CLIM),
    Claim("multi-resolution beats multi-crop (Table 7)", "multires", "multicrop"),
    Claim("one resolution + CutMix beats multi-crop (Table 7)", FULL_CLIM, "multicrop"),
    Claim("α = 2 beats α = 1 (Table 9)", FULL_CLIM, "alpha1"),
    Claim("CutMix beats Mixup (Table 10: the paper keeps CutMix)", FULL_CLIM, "mixup"),
)

METRICS = {  # key in eval.json: (column title, decimals)
    "knn_k20_top1": ("kNN top-1 % (k=20)", 2),
    "linear_top1": ("linear top-1 %", 2),
    "semisup_top1": ("1 % labels top-1 %", 2),
    "intra_class_similarity": ("intra-class similarity", 3),
    "positive_precision": ("final positive precision", 3),
}


# ---------------------------------------------------------------- RESULTS.md


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


def _plots(results: _Results, folder: Path) -> list[str]:
    """kNN top-1 over epochs per variant; positive precision over refreshes per selection strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    folder.mkdir(parents=True, exist_ok=True)
    histories = results.histories()
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
            f"{_duration(total)} over {len(records)} runs ({_duration(total / len(records))} per run on average; "
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

    from clim.data.pipeline import multicrop_size

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
    lines += ["## Plots", ""] + _plots(results, path.parent / PLOTS_DIR)
    lines += _setup(scale, runs, overrides) + _machines(results)
    path.write_text("\n".join(lines))
    return path


# ---------------------------------------------------------------- command line


def portable_path(path: str | Path) -> str:
    """A path as RESULTS.md may show it: relative paths as given, an absolute one by its last name only,
    so that a committed file names no folder of the machine it was made on."""
    path = Path(path)
    return str(path) if not path.is_absolute() else (path.name or str(path))


def command_line(args: argparse.Namespace) -> str:
    """The call that reproduces the whole matrix (``--only`` left out), for RESULTS.md."""
    parts = ["clim", "ablate", "--scale", args.scale, "--out", portable_path(args.out),
             "--seeds-main", str(args.seeds_main), "--seeds-other", str(args.seeds_other)]
    for item in args.overrides:
        parts += ["--set", item]
    if args.results:
        parts += ["--results", portable_path(args.results)]
    return shlex.join(parts)


def _ablate(args: argparse.Namespace) -> int:
    if args.dry_run:
        for run in plan_runs(args.scale, args.out, args.seeds_main, args.seeds_other, args.only, args.overrides):
            state = "done" if read_eval(run) else "to run"
            print(f"{run.label:28s} {state:7s} {' '.join(run.spec['overrides'])}")
        return 0
    summary = run_matrix(args.scale, args.out, args.seeds_main, args.seeds_other, args.only, args.overrides,
                         args.results, command_line(args))
    return 1 if summary["failed"] else 0


def register(subparsers) -> None:
    """Add ``ablate`` to the ``clim`` argparse sub-commands."""
    parser = subparsers.add_parser(
        "ablate", help="run the paper's ablation matrix (Tables 6, 7, 9, 10, 12) and write RESULTS.md")
    parser.add_argument("--scale", required=True, choices=list(SCALES),
                        help="smoke: seconds per run (tests); cpu: ~2 h on 2 cores; gpu: <= 8 min per run on an H100")
    parser.add_argument("--out", required=True, help="matrix folder (runs/<variant>/seed<k>/); rerun to resume")
    parser.add_argument("--seeds-main", type=positive_int, default=3, help="seeds of MoCo v2 and full CLIM")
    parser.add_argument("--seeds-other", type=positive_int, default=2, help="seeds of every other variant")
    parser.add_argument("--only", help="comma-separated glob patterns of variants to run, e.g. 'mocov2,clim'")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key in every run (changes the runs' spec: they rerun)")
    parser.add_argument("--results", help="RESULTS.md path (default: OUT/RESULTS.md); plots go next to it")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their state, run nothing")
    parser.set_defaults(func=_ablate)


if __name__ == "__main__":
    run_one(sys.argv[1])
