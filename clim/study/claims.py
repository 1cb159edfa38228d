"""Statistics over seeds and the paper's claims (METHOD §6): mean ± std, and paired tests per claim.

Runs with the same seed share their data order and initialisation, so a claim "A beats B" is judged on
the per-seed differences A_s − B_s (a paired design): their mean, a 95 % Student-t interval, the
two-sided paired t-test's p-value, the sign count and n. The verdict is *agrees* when the interval
lies wholly on the paper's side of 0, *disagrees* when it lies wholly on the other side, and
*inconclusive* otherwise (or with fewer than two pairs, where no interval exists).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from clim.study.matrix import FULL_CLIM

CONFIDENCE = 0.95


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
    spread = "" if stat.std is None else f" ± {stat.std:.{digits}f}"  # None: a single run
    return f"{stat.mean:.{digits}f}{spread} (n={stat.n})"


AGREES, DISAGREES, INCONCLUSIVE, NOT_RUN = "agrees", "disagrees", "inconclusive", "not run"


@dataclass(frozen=True)
class Paired:
    """``better − worse`` over the seeds both have."""

    n: int
    mean: float
    low: float | None  # 95 % t interval of the mean difference; None for n < 2
    high: float | None
    p: float | None  # two-sided paired t-test; None for n < 2
    wins: int  # seeds where better > worse
    losses: int

    @property
    def verdict(self) -> str:
        if self.low is not None and self.low > 0:
            return AGREES
        if self.high is not None and self.high < 0:
            return DISAGREES
        return INCONCLUSIVE


def paired(better: dict[int, float], worse: dict[int, float]) -> Paired | None:
    """Paired statistics of ``better[s] − worse[s]`` over the seeds ``s`` in both (None: no such seed)."""
    differences = [float(better[s]) - float(worse[s]) for s in sorted(set(better) & set(worse))]
    stat = summarize(differences)
    if stat is None:
        return None
    n, mean = stat.n, stat.mean
    wins, losses = sum(d > 0 for d in differences), sum(d < 0 for d in differences)
    if stat.std is None:
        return Paired(n, mean, None, None, None, wins, losses)
    if stat.std == 0.0:  # every seed gave the same difference: the interval is the point itself
        return Paired(n, mean, mean, mean, 1.0 if mean == 0.0 else 0.0, wins, losses)
    from scipy import stats

    standard_error = stat.std / math.sqrt(n)
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * standard_error
    p = float(2.0 * stats.t.sf(abs(mean) / standard_error, n - 1))
    return Paired(n, mean, mean - half, mean + half, p, wins, losses)


def format_paired(result: Paired | None, digits: int = 2) -> str:
    if result is None:
        return "—"
    text = f"{result.mean:+.{digits}f}"
    if result.low is not None:
        text += f" [{result.low:+.{digits}f}, {result.high:+.{digits}f}]"
    return text


def format_probability(p: float | None) -> str:
    return "—" if p is None else f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def format_p(result: Paired | None) -> str:
    return format_probability(None if result is None else result.p)


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of the p-values present (None stays None): the family-wise error
    over all of them stays ≤ α when each adjusted p is compared with α."""
    present = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(present):
        running = max(running, min(1.0, (len(present) - rank) * p))
        adjusted[i] = running
    return adjusted


def agreement_summary(verdicts: list[str]) -> str:
    """One sentence counting the verdicts, for the top of RESULTS.md."""
    count = verdicts.count
    return (f"Of the paper's {len(verdicts)} claims tested here, {count(AGREES)} agree with our runs (the 95 % "
            f"interval of the paired difference excludes 0 on the paper's side), {count(DISAGREES)} disagree (it "
            f"excludes 0 on the other side), {count(INCONCLUSIVE)} are inconclusive (the interval contains 0, or "
            f"fewer than 2 paired seeds) and {count(NOT_RUN)} lack runs.")


@dataclass(frozen=True)
class Claim:
    text: str
    better: str
    worse: str
    metric: str = "linear_top1"


# METHOD §6: ImageNet, ResNet-50, 200 epochs, linear top-1 (Table 12: intra-class cosine).
PAPER = {
    "linear_top1": {"mocov2": 67.5, "random-none": 62.3, "random-cutmix": 67.1, "knn_kmeans-none": 68.5,
                    FULL_CLIM: 70.1, "alpha1": 69.7, "alpha1.5": 69.9, "alpha2.5": 69.8, "multires": 72.3,
                    "multicrop": 69.7},
    "intra_class_similarity": {"mocov2": 0.58, FULL_CLIM: 0.65},
}
PAPER_SUPERVISED_SIMILARITY = 0.75

CLAIMS = (
    Claim("CLIM beats MoCo v2 at equal epochs (linear)", FULL_CLIM, "mocov2"),
    Claim("CLIM beats MoCo v2 at equal epochs (kNN)", FULL_CLIM, "mocov2", "knn_k20_top1"),
    Claim("CLIM beats MoCo v2 given at least CLIM's CPU minutes (linear)", FULL_CLIM, "mocov2-time"),
    Claim("CLIM beats MoCo v2 given at least CLIM's CPU minutes (kNN)", FULL_CLIM, "mocov2-time", "knn_k20_top1"),
    Claim("CLIM has a higher intra-class similarity than MoCo v2 (Table 12)", FULL_CLIM, "mocov2",
          "intra_class_similarity"),
    Claim("CutMix helps with random positives (Table 6)", "random-cutmix", "random-none"),
    Claim("kNN ∩ k-means positives beat random ones, no mixing (Table 6)", "knn_kmeans-none", "random-none"),
    Claim("kNN ∩ k-means positives without mixing beat MoCo v2 (Table 6)", "knn_kmeans-none", "mocov2"),
    Claim("center-wise beats kNN ∩ k-means, no mixing (Table 6)", "center_wise-none", "knn_kmeans-none"),
    Claim("center-wise + CutMix beats random + CutMix (Table 6)", FULL_CLIM, "random-cutmix"),
    Claim("center-wise + CutMix beats kNN + CutMix (Table 6)", FULL_CLIM, "knn-cutmix"),
    Claim("CutMix helps center-wise positives (Table 6)", FULL_CLIM, "center_wise-none"),
    Claim("α = 2 beats α = 1 (Table 9)", FULL_CLIM, "alpha1"),
    Claim("α = 2 beats α = 1.5 (Table 9)", FULL_CLIM, "alpha1.5"),
    Claim("α = 2 beats α = 2.5 (Table 9)", FULL_CLIM, "alpha2.5"),
    Claim("CutMix beats Mixup (Table 10: the paper keeps CutMix)", FULL_CLIM, "mixup"),
    Claim("multi-resolution beats one resolution (Table 7)", "multires", FULL_CLIM),
    Claim("multi-resolution beats multi-crop (Table 7)", "multires", "multicrop"),
    Claim("one resolution + CutMix beats multi-crop (Table 7)", FULL_CLIM, "multicrop"),
)

METRICS = {  # key in a record's "metrics": (column title, decimals)
    "knn_k20_top1": ("kNN top-1 % (k=20)", 2),
    "linear_top1": ("linear top-1 %", 2),
    "semisup_top1": ("1 % labels top-1 %", 2),
    "intra_class_similarity": ("intra-class similarity", 3),
    "positive_precision": ("final positive precision", 3),
}
