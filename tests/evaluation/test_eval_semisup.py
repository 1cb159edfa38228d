import pytest
import torch
from torch import nn

from clim.evaluation.semisup import SEMISUP_PRESETS, balanced_subset, finetune, split_file_subset


def test_balanced_subset_is_class_balanced_seeded_and_reproducible():
    labels = torch.tensor([0] * 100 + [1] * 50 + [2] * 7 + [-1] * 20)
    subset = balanced_subset(labels, 0.1, seed=3)
    counts = torch.bincount(labels[subset], minlength=3).tolist()
    assert counts == [10, 5, 1]  # 10 % of each class, at least one
    assert (labels[subset] >= 0).all() and subset.unique().numel() == subset.numel()
    assert torch.equal(subset, balanced_subset(labels, 0.1, seed=3))
    assert not torch.equal(subset, balanced_subset(labels, 0.1, seed=4))
    with pytest.raises(ValueError):
        balanced_subset(labels, 0.0)


def test_split_file_selects_by_file_name(tmp_path):
    paths = ["/data/train/n01/n01_1.JPEG", "/data/train/n01/n01_2.JPEG", "/data/train/n02/n02_7.JPEG"]
    split = tmp_path / "1percent.txt"
    split.write_text("n02_7.JPEG\nn01_1.JPEG\n\n")
    assert split_file_subset(paths, split).tolist() == [0, 2]
    split.write_text("n01_1.JPEG\nmissing.JPEG\n")
    with pytest.raises(FileNotFoundError, match="missing.JPEG"):
        split_file_subset(paths, split)


def test_paper_preset_values():
    paper = SEMISUP_PRESETS["paper"]
    assert (paper.lr_backbone, paper.lr_fc, paper.epochs, paper.step_every) == (1e-4, 10.0, 60, 20)


def test_finetune_updates_backbone_and_reports_accuracy():
    class Items(torch.utils.data.Dataset):
        def __init__(self, n, seed):
            gen = torch.Generator().manual_seed(seed)
            self.y = torch.arange(2).repeat(n)
            self.x = torch.nn.functional.one_hot(self.y, 4).float() * 3 + 0.1 * torch.randn(2 * n, 4, generator=gen)

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            return self.x[i], i, int(self.y[i])

    backbone = nn.Sequential(nn.Linear(4, 6), nn.ReLU())
    before = backbone[0].weight.clone()
    preset = SEMISUP_PRESETS["quick"]
    result = finetune(backbone, 6, Items(16, 0), Items(8, 1), 2, preset, seed=0)
    assert not torch.equal(before, backbone[0].weight)  # all layers are fine-tuned
    assert result["semisup_top1"] >= 90.0
