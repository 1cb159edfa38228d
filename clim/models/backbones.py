"""torchvision ResNet backbones, with a small-image stem and any number of input channels.

For inputs of at most 64 px the ImageNet stem (7x7 stride-2 conv + max-pool) throws away 75 % of
the resolution before the first block; as in the MoCo CIFAR demo and solo-learn, a 3x3 stride-1 conv
without max-pool replaces it. The module stays a ``torchvision.models.ResNet`` (torchvision's
state_dict keys; only the small stem's shapes differ, see clim.evaluation.export). A ``_wN`` suffix
(``resnet10_w16``) narrows the stages to N, 2N, 4N, 8N channels, which no torchvision constructor
builds (:func:`build_backbone` does): on small images and a CPU many more epochs per minute (README
"The CPU demo")."""

from __future__ import annotations

import re

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

STANDARD_WIDTH = 64
_NAME = re.compile(r"(resnet\d+)(?:_w(\d+))?")


def backbone_names() -> list[str]:
    """The base layouts; each also exists narrowed as ``NAME_wN`` (stage widths N, 2N, 4N, 8N)."""
    return list(_LAYOUTS)


def parse_backbone(name: str) -> tuple[str, int]:
    """``'resnet10_w16'`` -> ``('resnet10', 16)``; ``'resnet18'`` -> ``('resnet18', 64)``."""
    match = _NAME.fullmatch(name)
    if not match or match.group(1) not in _LAYOUTS or (match.group(2) is not None and int(match.group(2)) < 1):
        raise ValueError(f"unknown backbone '{name}' (known: {', '.join(_LAYOUTS)}, each optionally "
                         "narrowed as NAME_wN, e.g. resnet10_w16)")
    return match.group(1), int(match.group(2) or STANDARD_WIDTH)


def build_backbone(name: str, in_channels: int = 3, small_stem: bool = False) -> tuple[ResNet, int]:
    """Return a ResNet without classifier (``fc = Identity``) and its pooled feature dimension.

    ``name``: ``resnet10``, ``resnet18``, ``resnet34`` or ``resnet50``, optionally narrowed as
    ``NAME_wN``. ``small_stem``: ``conv1`` is a 3x3 stride-1 conv and ``maxpool`` is removed (what
    pretraining uses at 64 px or less); otherwise the ImageNet 7x7 stride-2 stem; ``in_channels``
    input channels either way. With torchvision's state_dict keys, a backbone exported with
    ``clim export --to torchvision`` loads into it strictly (the export's ``load`` line names the
    arguments of the checkpoint at hand; for standard widths torchvision alone builds it)::

        net, dim = build_backbone("resnet10_w8", in_channels=1, small_stem=True)
        net.load_state_dict(torch.load("backbone.pth", weights_only=True))   # features: net(x), [B, dim]
    """
    base, width = parse_backbone(name)
    block, layers = _LAYOUTS[base]
    model = ResNet(block, layers, zero_init_residual=False)
    if width != STANDARD_WIDTH:
        _narrow(model, block, layers, width)
    if small_stem:
        model.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
    feature_dim = model.fc.in_features
    model.fc = nn.Identity()
    return model, feature_dim


def _narrow(model: ResNet, block, layers: list[int], width: int) -> None:
    """Rebuild the stem and the four stages of ``model`` with widths N, 2N, 4N, 8N (torchvision's
    own ``_make_layer``, so initialisation and module names stay torchvision's)."""
    model.inplanes = width
    model.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    model.bn1 = nn.BatchNorm2d(width)
    for i, blocks in enumerate(layers):  # layer1 .. layer4, stride 2 from layer2 on
        setattr(model, f"layer{i + 1}", model._make_layer(block, 2**i * width, blocks, stride=2 if i else 1))
    model.fc = nn.Linear(8 * width * block.expansion, model.fc.out_features)
    for module in model.modules():  # torchvision's initialisation of the rebuilt layers
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.constant_(module.weight, 1)
            nn.init.constant_(module.bias, 0)


def torchvision_constructor(name: str):
    """The torchvision constructor whose state_dict layout matches ``name`` (None for resnet10 and
    every narrowed ``NAME_wN``)."""
    return getattr(resnet, name, None)
