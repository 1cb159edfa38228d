"""`clim demo`'s refresh line and `clim inspect`'s panel: two neighbour precisions, each labelled as what it is."""

import torch

from clim.config import load_config
from clim.demo import refresh_line
from clim.engine.preview import Inspection, precision_panel
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
