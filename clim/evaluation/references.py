"""What raw pixels give for free: weighted kNN and a ridge probe on the pixels of a registered dataset.

The pixels are the ones the network sees at evaluation (the dataset's eval transform at
``image_size``), flattened. kNN is :mod:`clim.evaluation.knn`'s (cosine, k = 20, T = 0.07); the
linear reference is a one-vs-rest ridge classifier on standardised pixels, its regularisation chosen
by leave-one-out (generalised) cross-validation on the train split alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from clim.evaluation.knn import weighted_knn

__all__ = ["RIDGE_ALPHAS", "dataset_pixels", "fit_ridge", "pixel_references"]

RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-1, 7, 9))  # 0.1 .. 1e7


def dataset_pixels(dataset, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pixels float [N, C * size * size], labels long [N])`` through the dataset's eval transform."""
    from clim.data.transforms import eval_transform_for

    transform = eval_transform_for(dataset.info, image_size)
    previous, dataset.transform = dataset.transform, None
    try:
        rows = [transform(dataset[i][0]).flatten() for i in range(len(dataset))]
    finally:
        dataset.transform = previous
    return torch.stack(rows), dataset.labels.clone()


def fit_ridge(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor
                ) -> tuple[float, float]:
    """(top-1 %, the chosen alpha) of a ridge classifier on standardised features, its alpha of
    RIDGE_ALPHAS chosen by leave-one-out on the train rows."""
    from sklearn.linear_model import RidgeClassifierCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), RidgeClassifierCV(alphas=RIDGE_ALPHAS))
    model.fit(train_x.numpy().astype(np.float64), train_y.numpy())
    accuracy = 100.0 * float((model.predict(test_x.numpy().astype(np.float64)) == test_y.numpy()).mean())
    return accuracy, float(model[-1].alpha_)


def pixel_references(dataset_name: str, root: str | Path | None, image_size: int, k: int = 20,
                     temperature: float = 0.07, linear: bool = True) -> dict:
    """Raw-pixel kNN (and, with ``linear``, ridge; else None) top-1 % on the test split of a registered
    dataset at ``image_size``, the train split as the bank / training set."""
    from clim.data import build_dataset

    train = build_dataset(dataset_name, root, "train", image_size=image_size)
    test = build_dataset(dataset_name, root, "test", image_size=image_size)
    train_x, train_y = dataset_pixels(train, image_size)
    test_x, test_y = dataset_pixels(test, image_size)
    labelled = train_y >= 0
    train_x, train_y = train_x[labelled], train_y[labelled]
    num_classes = train.info.num_classes or int(max(train_y.max(), test_y.max())) + 1
    result = {"pixel_knn_top1": weighted_knn(train_x, train_y, test_x, test_y, k, temperature, num_classes),
              "pixel_linear_top1": None, "pixel_linear_alpha": None}
    if linear:
        result["pixel_linear_top1"], result["pixel_linear_alpha"] = fit_ridge(train_x, train_y, test_x, test_y)
    return {**result, "image_size": int(image_size), "num_test": int(len(test_y)), "num_train": int(len(train_y)),
            "num_classes": int(num_classes), "knn_k": k, "knn_temperature": temperature}
