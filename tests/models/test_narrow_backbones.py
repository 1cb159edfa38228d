"""Narrowed ResNets (``NAME_wN``): stage widths N, 2N, 4N, 8N, torchvision module names, config check."""

import pytest
import torch

from clim.config import ConfigError, load_config
from clim.evaluation.export import _torchvision_note
from clim.models.backbones import build_backbone, parse_backbone


def test_parse_backbone():
    assert parse_backbone("resnet18") == ("resnet18", 64)
    assert parse_backbone("resnet10_w16") == ("resnet10", 16)
    for bad in ("resnet10_w0", "resnet11_w16", "resnet10w16", "resnet10_w"):
        with pytest.raises(ValueError, match="NAME_wN"):
            parse_backbone(bad)


@pytest.mark.parametrize("small_stem", [True, False])
def test_widths_and_feature_dim(small_stem):
    net, dim = build_backbone("resnet10_w16", in_channels=1, small_stem=small_stem)
    assert dim == 128
    assert [net.layer1[0].conv1.out_channels, net.layer2[0].conv1.out_channels,
            net.layer3[0].conv1.out_channels, net.layer4[0].conv1.out_channels] == [16, 32, 64, 128]
    assert net.conv1.in_channels == 1 and net.conv1.out_channels == 16 and net.bn1.num_features == 16
    with torch.no_grad():
        assert net.eval()(torch.randn(2, 1, 16, 16)).shape == (2, 128)
    _, bottleneck_dim = build_backbone("resnet50_w8", in_channels=3)
    assert bottleneck_dim == 8 * 8 * 4


def test_same_names_as_the_standard_width():
    narrow, _ = build_backbone("resnet18_w32", in_channels=3)
    standard, _ = build_backbone("resnet18", in_channels=3)
    assert narrow.state_dict().keys() == standard.state_dict().keys()
    assert narrow.layer4[1].conv2.weight.shape == (256, 256, 3, 3)
    # the standard width is exactly the torchvision layout; a narrowed one says how to load it
    ok, note = _torchvision_note({"backbone": "resnet18_w32", "in_channels": 3, "small_stem": False})
    assert not ok and "build_backbone('resnet18_w32'" in note


def test_config_accepts_narrow_names_only():
    assert load_config(overrides=["model.backbone=resnet10_w8"]).model.backbone == "resnet10_w8"
    for bad in ("resnet10_w0", "resnet12", "vgg_w8"):
        with pytest.raises(ConfigError, match="model.backbone"):
            load_config(overrides=[f"model.backbone={bad}"])
