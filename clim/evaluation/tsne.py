"""t-SNE of frozen features for 10 classes (paper Fig. 3; METHOD §5), saved as a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from clim.evaluation.common import per_class_sample


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
    """2-D t-SNE (sklearn, PCA init, seeded) of up to ``max_points`` L2-normalised features of ``classes``
    (default: the first 10 labels present, as the figure), an equal seeded share per class, plotted into
    ``out_png``; returns the settings that reproduce the figure."""
    from sklearn.manifold import TSNE

    classes = list(classes) if classes is not None else [int(c) for c in labels[labels >= 0].unique().tolist()[:10]]
    if not classes:
        raise ValueError("t-SNE needs labelled features")
    per_class = max(1, max_points // len(classes))
    chosen = per_class_sample(labels, classes, lambda size: per_class, seed)
    data = torch.nn.functional.normalize(feats[chosen].float(), dim=1).numpy()
    tsne = TSNE(n_components=2, init="pca", perplexity=min(perplexity, max(1.0, (data.shape[0] - 1) / 3)),
                random_state=seed)
    path = plot_tsne(tsne.fit_transform(data), labels[chosen], out_png, class_names, title)
    return {"png": str(path), "classes": classes, "num_points": int(chosen.numel()), "perplexity": perplexity}
