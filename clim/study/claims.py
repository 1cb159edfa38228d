"""Statistics over seeds and the paper's claims: mean ± sample std, and a verdict per claim (METHOD §6)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from clim.study.matrix import FULL_CLIM


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
