"""Backbones: small-image stem, input channels, feature dimensions, torchvision layout."""

import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from clim.config import Config
from clim.config import uses_small_stem
from clim.models.backbones import backbone_names, build_backbone
from clim.models.moco import build_moco
from clim.specs import model_spec


@pytest.mark.parametrize("name, dim", [("resnet10", 512), ("resnet18", 512), ("resnet50", 2048)])
def test_feature_dims(name, dim):
    torch.manual_seed(0)
    net, feature_dim = build_backbone(name, in_channels=1, small_stem=True)
    assert feature_dim == dim
    assert isinstance(net.fc, nn.Identity)
    with torch.no_grad():
        assert net.eval()(torch.randn(2, 1, 8, 8)).shape == (2, dim)


@pytest.mark.parametrize("channels", [1, 3])
def test_small_stem_keeps_resolution(channels):
    net, _ = build_backbone("resnet10", in_channels=channels, small_stem=True)
    assert net.conv1.in_channels == channels
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert isinstance(net.maxpool, nn.Identity)
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool).eval()
    with torch.no_grad():
        assert stem(torch.randn(2, channels, 28, 28)).shape == (2, 64, 28, 28)
        assert net.layer4(net.layer3(net.layer2(net.layer1(stem(torch.randn(1, channels, 32, 32)))))).shape \
            == (1, 512, 4, 4)


@pytest.mark.parametrize("channels", [1, 3])
def test_imagenet_stem_downsamples_by_four(channels):
    net, _ = build_backbone("resnet18", in_channels=channels, small_stem=False)
    assert net.conv1.in_channels == channels and net.conv1.kernel_size == (7, 7) and net.conv1.stride == (2, 2)
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool).eval()
    with torch.no_grad():
        assert stem(torch.randn(1, channels, 64, 64)).shape == (1, 64, 16, 16)


def test_torchvision_layout():
    net, _ = build_backbone("resnet18", in_channels=3, small_stem=False)
    reference = {k: v.shape for k, v in resnet18().state_dict().items() if not k.startswith("fc.")}
    assert {k: v.shape for k, v in net.state_dict().items()} == reference


def test_small_stem_rule_and_unknown_name():
    assert uses_small_stem(64, None) and not uses_small_stem(65, None)
    assert uses_small_stem(224, True) and not uses_small_stem(8, False)
    assert set(backbone_names()) == {"resnet10", "resnet18", "resnet34", "resnet50"}
    with pytest.raises(ValueError, match="resnet99"):
        build_backbone("resnet99")


def test_build_moco_follows_config():
    config = Config()
    config.model.backbone = "resnet10"
    config.model.queue_size = 32
    config.model.bn_splits = 2
    model = build_moco(model_spec(config, 8), 1)
    assert model.backbone_q.conv1.kernel_size == (3, 3)  # 8 px: small stem by default
    assert model.queue.shape == (32, 128)
    assert model.encoder_q[1][0].in_features == 512
