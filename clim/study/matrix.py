"""The ablation matrix: scales, variants (lists of ``--set`` overrides of full CLIM), the planned runs.

Runs go group after group (:data:`GROUPS`, priority order), seed-major within a group so that pairs of
the same seed finish together. A run counts as finished when its record (``RECORDS/<variant>/seed<k>.json``,
kept in git) exists with the same spec; its own folder under ``OUT/runs/`` (checkpoint, metrics, log) is
not needed after that.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass
from pathlib import Path

from clim.config import ConfigError, load_config

SPEC_NAME = "ablate.json"  # what the subprocess runs: preset, overrides, evaluation settings, record path
LOG_NAME = "ablate.log"  # the subprocess's stdout + stderr
SEMISUP_FRACTION = 0.01
FULL_CLIM = "clim"


@dataclass(frozen=True)
class Scale:
    """How big the matrix is: the base preset and the evaluation presets that fit its budget."""

    preset: str
    resolutions: tuple[int, ...]  # the multi-resolution variant (METHOD §4), largest = image size
    linear_preset: str  # clim.evaluation.linear, trained on cached features, lr chosen on a held-out split
    semisup_preset: str  # clim.evaluation.semisup, 1 % of the labels
    # OMP threads per run: on a 2-core machine shared with other jobs one thread ran ResNet-10 at
    # 28 px about 3x faster than two (two threads spin-wait on each other); None: torch's default.
    threads: int | None
    # MoCo v2 epochs that cost at least the CPU time of CLIM's schedule (the equal-time comparison),
    # measured on the preset (see its header)
    equal_time_epochs: int
    clusters: tuple[int, int, int]  # Table 8: m below, at and above N / 100 (the middle one is full CLIM's)
    # a focused regime: only these variants, every one in the headline group (its seeds, seed-major across
    # them); empty: the whole matrix
    arms: tuple[str, ...] = ()
    # records also carry raw-pixel kNN / ridge at the training resolution (clim.evaluation.references)
    pixel_references: bool = False


# The many-class regime (glyphs: 200 characters, test fonts of families never seen in pretraining,
# clim.data.glyphs): does CLIM's center-wise selection beat random or kNN-only positives when a random
# positive has the query's class 0.5 % of the time?
GLYPHS_ARMS = ("mocov2", "clim", "random-cutmix", "center_wise-none", "knn-cutmix")

SCALES = {
    "smoke": Scale("ablate-smoke", (8, 6), "quick", "quick", 1, 3, (7, 14, 28)),
    "cpu": Scale("ablate-cpu", (16, 12), "small", "small", 1, 30, (50, 100, 200)),
    "gpu": Scale("ablate-gpu", (28, 20), "small", "small", None, 30, (300, 600, 1200)),
    "glyphs": Scale("ablate-glyphs", (20, 14), "small", "small", 1, 30, (43, 86, 172), arms=GLYPHS_ARMS,
                    pixel_references=True),
}

# priority order, and the seeds each group gets by default
GROUPS = {"headline": 8, "table6": 3, "table9_10": 3, "table7": 2, "table8": 2}
SELECTIONS = ("random", "knn", "kmeans", "knn_kmeans", "center_wise")  # paper Table 6 rows
MIXINGS = ("none", "cutmix")  # paper Table 6 columns
ALPHAS = (1.0, 1.5, 2.5)  # paper Table 9, besides full CLIM's 2
TABLE8_K = (20, 40, 60)
DEFAULT_K = 40


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: tuple[str, ...]  # relative to the scale's preset (= full CLIM)
    group: str


def selection_variant(selection: str, mixing: str) -> str:
    return FULL_CLIM if (selection, mixing) == ("center_wise", "cutmix") else f"{selection}-{mixing}"


def alpha_variant(alpha: float) -> str:
    return f"alpha{alpha:g}"


def table8_variant(clusters: int, k: int) -> str:
    return f"m{clusters}-k{k}"


def build_matrix(scale: Scale) -> list[Variant]:
    """All variants in priority order; full CLIM serves as Table 6's center-wise + CutMix, Table 9's
    α = 2, Table 7's one resolution, Table 10's CutMix and Table 8's m = N/100, k = 40, so it runs once."""
    variants = [Variant("mocov2", ("method.name=mocov2",), "headline"), Variant(FULL_CLIM, (), "headline"),
                Variant("mocov2-time", ("method.name=mocov2", f"train.epochs={scale.equal_time_epochs}"), "headline")]
    variants += [Variant(selection_variant(s, m), (f"method.selection={s}", f"method.mixing={m}"), "table6")
                 for s in SELECTIONS for m in MIXINGS if selection_variant(s, m) != FULL_CLIM]
    variants += [Variant(alpha_variant(alpha), (f"method.alpha={alpha}",), "table9_10") for alpha in ALPHAS]
    variants.append(Variant("mixup", ("method.mixing=mixup",), "table9_10"))
    sizes = ",".join(str(size) for size in scale.resolutions)
    variants += [Variant("multires", (f"method.resolutions=[{sizes}]",), "table7"),
                 Variant("multicrop", ("method.multicrop=true",), "table7")]
    variants += [Variant(table8_variant(m, k), (f"method.num_clusters={m}", f"method.knn_k={k}"), "table8")
                 for m in scale.clusters for k in TABLE8_K if (m, k) != (scale.clusters[1], DEFAULT_K)]
    if scale.arms:
        named = {variant.name: variant for variant in variants}
        return [Variant(name, named[name].overrides, "headline") for name in scale.arms]
    return variants


def select_variants(variants: list[Variant], only: str | None) -> list[Variant]:
    """``only``: comma-separated glob patterns of variant or group names (``mocov2,clim``, ``random-*``,
    ``table6``)."""
    if not only:
        return variants
    patterns = [pattern.strip() for pattern in only.split(",") if pattern.strip()]
    chosen = [v for v in variants if any(fnmatch.fnmatchcase(v.name, p) or p == v.group for p in patterns)]
    if not chosen:
        raise ConfigError(f"--only '{only}' matches no variant or group (groups: {', '.join(GROUPS)}; variants: "
                          f"{', '.join(v.name for v in variants)})")
    return chosen


@dataclass
class Run:
    variant: Variant
    seed: int
    directory: Path  # checkpoint, metrics, log (not kept)
    record_path: Path  # the finished run's record (kept in git)
    spec: dict

    @property
    def label(self) -> str:
        return f"{self.variant.name} seed{self.seed}"


def seeds_of(group: str, seeds: int | None) -> int:
    return GROUPS[group] if seeds is None else min(GROUPS[group], seeds)


def plan_runs(scale_name: str, out: str | Path, records: str | Path, seeds: int | None = None,
              only: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> list[Run]:
    """The runs, group by group in priority order, seed-major inside a group; every run's config is
    built here, so a bad ``--set`` fails at once."""
    if scale_name not in SCALES:
        raise ConfigError(f"unknown scale '{scale_name}' (choose from {', '.join(SCALES)})")
    scale = SCALES[scale_name]
    variants = select_variants(build_matrix(scale), only)
    evaluation = {"linear_preset": scale.linear_preset, "linear_lr": "holdout-sweep",
                  "semisup_preset": scale.semisup_preset, "semisup_fraction": SEMISUP_FRACTION}
    if scale.pixel_references:  # (only then: a new key would orphan the other scales' records)
        evaluation["pixel_references"] = True
    runs = []
    for group in GROUPS:
        members = [v for v in variants if v.group == group]
        for seed in range(seeds_of(group, seeds)):
            for variant in members:
                spec = {"scale": scale_name, "variant": variant.name, "seed": seed, "preset": scale.preset,
                        "overrides": [*variant.overrides, *overrides, f"train.seed={seed}"],
                        "evaluation": evaluation}
                spec["config"] = load_config(scale.preset, overrides=spec["overrides"]).to_flat_dict()
                runs.append(Run(variant, seed, Path(out) / "runs" / variant.name / f"seed{seed}",
                                Path(records) / variant.name / f"seed{seed}.json", spec))
    return runs


def same_spec(recorded: dict, planned: dict) -> bool:
    """Whether a record was made for the planned run: the same variant, seed, preset, overrides and
    evaluation, and every config key it recorded resolves to the same value today (so editing a preset
    invalidates its records; a key added to the code later, absent from the record, is not compared)."""
    config = planned.get("config", {})
    return ({**recorded, "config": None} == {**planned, "config": None}
            and all(key in config and config[key] == value for key, value in recorded.get("config", {}).items()))


def read_record(path: str | Path, spec: dict | None = None) -> dict | None:
    """A finished run's record, or None when missing, unreadable or made for another spec."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return record if spec is None or same_spec(record.get("spec", {}), spec) else None

