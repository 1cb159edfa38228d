"""The ablation matrix: scales, variants (lists of ``--set`` overrides of full CLIM), the planned runs."""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass
from pathlib import Path

from clim.config import ConfigError, load_config
from clim.runtime.checkpoint import CHECKPOINT_NAME

SPEC_NAME = "ablate.json"  # what the subprocess runs: preset, overrides, evaluation settings
EVAL_NAME = "eval.json"  # written last, so its presence marks a finished run
LOG_NAME = "ablate.log"  # the subprocess's stdout + stderr
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
