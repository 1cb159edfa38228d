"""`clim demo`'s refresh line and `clim inspect`'s panel: two neighbour precisions, each labelled as what it is."""

import torch

from clim.config import load_config
from clim.demo import refresh_line
from clim.inspect.figure import Inspection, precision_panel
from clim.method.bank import anchor_details
from clim.method.selection import SelectionResult, selection_diagnostics


def test_demo_and_inspect_name_the_neighbours_they_count():
    # 8 images in 2 classes (parity); each row's 2 nearest neighbours share the class, the next 2 do not
    n, labels = 8, torch.arange(8) % 2
    neighbors = torch.stack([torch.tensor([(i + 2) % n, (i + 4) % n, (i + 1) % n, (i + 3) % n]) for i in range(n)])
    positives = neighbors[:, :2]
    result = SelectionResult(positives, neighbors, None, None, None, torch.zeros(n, dtype=torch.bool))
    config = load_config("clim-demo-cpu", overrides=["method.knn_k=4", "method.num_positives=2"])
    selection = selection_diagnostics(result, labels)
    assert selection["knn_precision"] == 0.5  # all k = 4 neighbours: the demo's number
    line = refresh_line({"epoch": 3, "selection": selection}, config)
    assert selection["knn_top_p_precision"] == 1.0  # the 2 nearest: what kNN-only selection picks
    assert "precision 1.000 (the 2 nearest kNN neighbours 1.000; all 4: 0.500)" in line  # compared at equal P
    inspection = Inspection(positives, labels, None, None, anchor_details(result), 3, config)
    _, title = precision_panel(inspection)
    assert "(the 2 nearest neighbours: 1.000)" in title  # inspect's number: the P nearest


def _bars(split: str):
    """4 classes, class c a bright vertical bar at columns 2c, 2c + 1 of an 8 x 8 image, plus noise."""
    from clim.data.arrays import ArrayDataset
    from clim.data.registry import DatasetInfo

    per_class = 10 if split == "train" else 4
    generator = torch.Generator().manual_seed(0 if split == "train" else 1)
    labels = torch.arange(4).repeat_interleave(per_class)
    images = torch.randint(0, 80, (labels.numel(), 1, 8, 8), generator=generator)
    for i, label in enumerate(labels.tolist()):
        images[i, 0, :, 2 * label:2 * label + 2] += 170
    return ArrayDataset(images.to(torch.uint8), labels, DatasetInfo("bars", 4, 1, 8, (0.3,), (0.3,)))


def test_demo_table_has_raw_pixels_at_the_training_and_the_native_resolution():
    from clim.demo import format_table, pixel_rows, reference_words
    from clim.evaluation.knn import weighted_knn
    from clim.evaluation.references import dataset_pixels

    train, test = _bars("train"), _bars("test")
    rows = pixel_rows(train, test, 4, 4)  # trained at 4 px, the data's native size is 8
    assert list(rows) == ["raw pixels training size", "raw pixels"]  # the training resolution first
    assert (rows["raw pixels"]["image_size"], rows["raw pixels training size"]["image_size"]) == (8, 4)
    direct = weighted_knn(*dataset_pixels(train, 4), dataset_pixels(test, 4)[0], test.labels, 20, 0.07, 4)
    assert rows["raw pixels training size"]["knn_k20_top1"] == direct  # the evaluation's kNN on the pixels at 4 px
    assert rows["raw pixels"]["ridge_top1"] == 100.0 and rows["raw pixels"]["num_test"] == 16  # separable bars
    assert list(pixel_rows(train, test, 8, 4)) == ["raw pixels"]  # trained at the native size: one row
    rows = {"trained": {"knn_k20_top1": 90.0, "knn_k200_top1": 80.0, "ridge_top1": 95.0},
            "random init": {"knn_k20_top1": 50.0, "knn_k200_top1": 40.0, "ridge_top1": 60.0}, **rows}
    table = format_table(rows)
    assert "| raw pixels, 4 px (training resolution) | " in table and "| raw pixels, 8 px (native) | " in table
    assert "| trained | 90.00 % | 80.00 % | 95.00 % |" in table
    words = reference_words(rows)
    assert words.startswith("trained backbone: kNN k=20 90.00 %: above random init by 40.00 points, below raw "
                            "pixels, 4 px (training resolution) by 10.00 points, ")
    assert direct == 100.0 and "below raw pixels, 4 px (training resolution) by 10.00 points" in words
    assert words.endswith("; ridge 95.00 %: above random init by 35.00 points, below raw pixels, 4 px (training "
                          "resolution) by 5.00 points, below raw pixels, 8 px (native) by 5.00 points")


def test_ridge_reference_on_features():
    from clim.demo import ridge_top1

    labels = torch.arange(3).repeat(20)
    features = torch.nn.functional.one_hot(labels, 3).float() + 0.01 * torch.randn(60, 3)
    assert ridge_top1(features, labels, features[:9], labels[:9]) == 100.0
    unlabelled = torch.cat([labels[:-3], torch.full((3,), -1)])  # rows labelled -1 are left out of the fit
    assert ridge_top1(features, unlabelled, features[:9], labels[:9]) == 100.0
