"""torchvision ResNet backbones, with a small-image stem and any number of input channels.

For inputs of at most 64 px the ImageNet stem (7x7 stride-2 conv + max-pool) throws away 75 % of
the resolution before the first block; as in the MoCo CIFAR demo and solo-learn, we use a 3x3
stride-1 conv without max-pool there. The module stays a ``torchvision.models.ResNet``, so its
weights export to torchvision (stem shapes differ only with the small stem; see clim.export).
"""

from __future__ import annotations

from torch import nn
from torchvision.models import resnet
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

# resnet10 is not in torchvision: ResNet(BasicBlock, [1, 1, 1, 1]), a quick backbone for CPU demos.
_LAYOUTS = {
    "resnet10": (BasicBlock, [1, 1, 1, 1]),
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}
SMALL_IMAGE_MAX = 64


def backbone_names() -> list[str]:
    return list(_LAYOUTS)


def uses_small_stem(image_size: int, small_stem: bool | None) -> bool:
    return image_size <= SMALL_IMAGE_MAX if small_stem is None else small_stem


def build_backbone(name: str, in_channels: int = 3, small_stem: bool = False) -> tuple[ResNet, int]:
    """Return a ResNet without classifier (``fc = Identity``) and its pooled feature dimension."""
    if name not in _LAYOUTS:
        raise ValueError(f"unknown backbone '{name}' (known: {', '.join(_LAYOUTS)})")
    block, layers = _LAYOUTS[name]
    model = ResNet(block, layers, zero_init_residual=False)
    if small_stem:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    feature_dim = model.fc.in_features
    model.fc = nn.Identity()
    return model, feature_dim


def torchvision_constructor(name: str):
    """The torchvision constructor whose state_dict layout matches ``name`` (None for resnet10)."""
    return getattr(resnet, name, None)

