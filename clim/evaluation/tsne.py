"""t-SNE of frozen features for 10 classes (paper Fig. 3; METHOD §5), saved as a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch


def sample_points(labels: torch.Tensor, classes: Sequence[int], max_points: int, seed: int) -> torch.Tensor:
    """Indices of up to ``max_points`` samples of ``classes``, an equal seeded share per class."""
    generator = torch.Generator().manual_seed(seed)
    per_class = max(1, max_points // max(1, len(classes)))
    chosen = []
    for label in classes:
        members = (labels == label).nonzero().flatten()
        chosen.append(members[torch.randperm(members.numel(), generator=generator)[:per_class]])
    return torch.cat(chosen).sort().values


def default_classes(labels: torch.Tensor, count: int = 10) -> list[int]:
    """The first ``count`` labels present (the figure shows 10 classes)."""
    present = labels[labels >= 0].unique().tolist()
    return [int(c) for c in present[:count]]


def tsne_embedding(feats: torch.Tensor, seed: int, perplexity: float = 30.0):
    """2-D t-SNE (sklearn, PCA init, seeded) of L2-normalised features, as a numpy array."""
    from sklearn.manifold import TSNE

    data = torch.nn.functional.normalize(feats.float(), dim=1).numpy()
    perplexity = min(perplexity, max(1.0, (data.shape[0] - 1) / 3))
    return TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(data)


def plot_tsne(embedding, labels: torch.Tensor, out_path: str | Path, class_names: Sequence[str] | None = None,
              title: str = "") -> Path:
    """Scatter plot, one colour per class, legend with class names when known."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(figsize=(8, 6))
    colours = plt.get_cmap("tab10")
    for position, label in enumerate(labels.unique().tolist()):
        mask = (labels == label).numpy()
        name = class_names[label] if class_names is not None and label < len(class_names) else str(label)
        axes.scatter(embedding[mask, 0], embedding[mask, 1], s=6, color=colours(position % 10), label=name)
    axes.set(xticks=[], yticks=[], title=title)
    axes.legend(markerscale=3, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    figure.tight_layout()
    figure.savefig(out_path, dpi=150)
    plt.close(figure)
    return out_path


def run_tsne(feats: torch.Tensor, labels: torch.Tensor, out_png: str | Path, classes: Sequence[int] | None = None,
             max_points: int = 2000, seed: int = 0, perplexity: float = 30.0,
             class_names: Sequence[str] | None = None, title: str = "") -> dict[str, object]:
    """Sample, embed and plot; returns the settings that reproduce the figure."""
    classes = list(classes) if classes is not None else default_classes(labels)
    if not classes:
        raise ValueError("t-SNE needs labelled features")
    chosen = sample_points(labels, classes, max_points, seed)
    path = plot_tsne(tsne_embedding(feats[chosen], seed, perplexity), labels[chosen], out_png, class_names, title)
    return {"png": str(path), "classes": classes, "num_points": int(chosen.numel()), "perplexity": perplexity}
