import math

import torch
from torch import nn

from clim.runtime.features import extract_features
from clim.evaluation.linear import (LINEAR_PRESETS, linear_on_backbone, linear_on_features, linear_probe,
                                    resolve_preset, topk_accuracy)


class _Items(torch.utils.data.Dataset):
    """(image, index, label) items, as the dataset registry yields them."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], i, int(self.y[i])


def _separable(n_per_class, classes=5, dim=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.eye(dim)[:classes] * 4.0
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    return centres[labels] + 0.3 * torch.randn(labels.numel(), dim, generator=gen), labels


def test_linear_on_separable_features_reaches_full_accuracy():
    train_x, train_y = _separable(40)
    test_x, test_y = _separable(10, seed=1)
    result = linear_on_features(train_x, train_y, test_x, test_y, 5, LINEAR_PRESETS["quick"], seed=0)
    assert result["linear_top1"] >= 99.0
    assert result["linear_top5"] == 100.0  # 5 classes: top-5 is reported and trivially 100 %


def test_linear_protocol_trains_on_a_frozen_backbone():
    train_x, train_y = _separable(20, classes=3, dim=8)
    test_x, test_y = _separable(10, classes=3, dim=8, seed=1)
    backbone = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8))
    backbone.train()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    result = linear_on_backbone(backbone, _Items(train_x, train_y), _Items(test_x, test_y), 3,
                                LINEAR_PRESETS["quick"], seed=0)
    assert result["linear_top1"] >= 95.0 and "linear_top5" not in result  # < 5 classes: no top-5
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())  # frozen, BN stats too
    assert backbone.training  # mode restored


def test_topk_and_presets():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.5], [0.0, 0.4, 0.6]])
    labels = torch.tensor([1, 2, 1])
    acc = topk_accuracy(logits, labels, [1, 2])
    assert abs(acc[1] - 100 / 3) < 1e-4 and abs(acc[2] - 100.0) < 1e-4
    assert resolve_preset("auto", 224, LINEAR_PRESETS)[0] == "paper"
    assert resolve_preset("auto", 32, LINEAR_PRESETS)[0] == "small"
    paper = LINEAR_PRESETS["paper"]
    assert (paper.lr, paper.momentum, paper.weight_decay, paper.epochs, paper.milestones, paper.batch_size) == \
        (30.0, 0.9, 0.0, 100, (60, 80), 256)


def test_extract_features_restores_mode_and_keeps_order():
    x = torch.randn(10, 4)
    module = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.9))
    module.train()
    feats, labels = extract_features(module, _Items(x, torch.arange(10)), batch_size=3, progress=False)
    assert module.training
    assert torch.allclose(feats, module[0](x).detach(), atol=1e-6)  # eval mode: no dropout
    assert labels.tolist() == list(range(10)) and feats.dtype == torch.float32


def _blobs(n: int = 600, noise: float = 2.5, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    features = torch.randn(10, 16, generator=generator)[labels] + noise * torch.randn(n, 16, generator=generator)
    return features, labels


def test_linear_probe_chooses_its_lr_on_held_out_train_images_never_the_test_split():
    features, labels = _blobs()
    train, test = slice(0, 500), slice(500, 600)
    lrs = (0.001, 0.1, 3.0)
    result = linear_probe(features[train], labels[train], features[test], labels[test], 10, LINEAR_PRESETS["quick"],
                          lrs=lrs)
    sweep = {float(lr): top1 for lr, top1 in result["linear_sweep"].items()}
    assert set(sweep) == set(lrs) and result["linear_lr"] == max(sweep, key=lambda lr: (sweep[lr], -lr))
    shuffled = labels[test][torch.randperm(100, generator=torch.Generator().manual_seed(1))]
    again = linear_probe(features[train], labels[train], features[test], shuffled, 10, LINEAR_PRESETS["quick"], lrs=lrs)
    assert again["linear_sweep"] == result["linear_sweep"] and again["linear_lr"] == result["linear_lr"]
    assert again["linear_top1"] != result["linear_top1"]  # the test labels only change the reported accuracy
    assert result["final_train_loss"] < math.log(10) and not result["train_loss_above_chance"]


def test_linear_probe_flags_a_train_loss_above_ln_c(capsys):
    features, labels = _blobs(noise=1.0)
    result = linear_probe(100 * features[:500], labels[:500], 100 * features[500:], labels[500:], 10,
                          LINEAR_PRESETS["quick"], lrs=(300.0,))
    assert result["final_train_loss"] > math.log(10) and result["train_loss_above_chance"]
    assert "above ln C" in capsys.readouterr().err
