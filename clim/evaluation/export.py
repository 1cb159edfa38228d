"""Export the pretrained query backbone for transfer (METHOD §5, paper Tables 3–5).

Two formats:

* **torchvision** (``.pth`` via ``torch.save``, or ``.safetensors``): a ``torchvision.models.ResNet``
  state_dict without ``fc.*``. With the ImageNet stem and 3 input channels it loads into
  ``torchvision.models.resnet50(num_classes=C)`` (or 18/34) with ``strict=False``, missing exactly
  ``fc.weight`` and ``fc.bias``. A checkpoint pretrained with the small-image stem (3×3 stride-1
  ``conv1``, no max-pool; images ≤ 64 px) or with other than 3 input channels has a differently
  shaped ``conv1``: build the network with ``clim.models.backbones.build_backbone(name, in_channels,
  small_stem)`` (which replaces ``conv1`` and ``maxpool`` that way) and load the file into it.
  resnet10 has no torchvision constructor and always needs ``build_backbone``.
* **detectron2** (``.pkl``): MoCo's conversion convention, a pickle of
  ``{"model": {name: numpy array}, "__author__": "clim", "matching_heuristics": True}`` with the
  torchvision names renamed to detectron2's ResNet: ``conv1``→``stem.conv1``,
  ``bn1``→``stem.conv1.norm``, ``layerN.B.convK``→``res{N+1}.B.convK``,
  ``layerN.B.bnK``→``res{N+1}.B.convK.norm``, ``downsample.0``→``shortcut``,
  ``downsample.1``→``shortcut.norm``. ``num_batches_tracked`` counters are left out (detectron2's
  norms have no such buffer; MoCo's script keeps them and detectron2 then lists them as unused).

Transfer with MoCo's detection code (github.com/facebookresearch/moco, ``detection/``), which sets
the torchvision conventions (RGB input, ImageNet mean/std in 0–255, ``STRIDE_IN_1X1: False``, SyncBN):

    clim export --ckpt run/checkpoint.pt --to detectron2 --out clim_r50.pkl
    # VOC07+12 detection, Faster R-CNN R50-C4 (Table 3)
    python train_net.py --config-file configs/pascal_voc_R_50_C4_24k_moco.yaml \\
        --num-gpus 8 MODEL.WEIGHTS ./clim_r50.pkl
    # COCO detection / instance segmentation, Mask R-CNN R50-C4 (Table 4)
    python train_net.py --config-file configs/coco_R_50_C4_2x_moco.yaml \\
        --num-gpus 8 MODEL.WEIGHTS ./clim_r50.pkl
    # LVIS instance segmentation (Table 5): detectron2's LVIS config with MoCo's input conventions
    python train_net.py --config-file configs/LVISv0.5-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml \\
        --num-gpus 8 MODEL.WEIGHTS ./clim_r50.pkl INPUT.FORMAT RGB \\
        MODEL.PIXEL_MEAN "[123.675,116.280,103.530]" MODEL.PIXEL_STD "[58.395,57.120,57.375]" \\
        MODEL.RESNETS.STRIDE_IN_1X1 False MODEL.RESNETS.NORM SyncBN MODEL.FPN.NORM SyncBN

The detectron2 stem is the ImageNet one (7×7 conv, 3 channels); a small-stem checkpoint's ``conv1``
does not fit it, which the returned info says.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch

from clim.config import Config
from clim.models.backbones import torchvision_constructor, uses_small_stem
from clim.runtime import checkpoint

BACKBONE_PREFIX = "encoder_q.0."


def pretrained_backbone(ckpt: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The query backbone's state_dict (torchvision names) and a description of its layout."""
    ckpt_file, state = checkpoint.load_trainer_checkpoint(ckpt)
    config = Config.from_dict(state["config"])
    info = state["data_info"]
    weights = {name[len(BACKBONE_PREFIX):]: tensor for name, tensor in state["model"].items()
               if name.startswith(BACKBONE_PREFIX)}
    if not weights:
        raise ValueError(f"{ckpt} holds no query backbone (keys '{BACKBONE_PREFIX}*')")
    small_stem = uses_small_stem(info["image_size"], config.model.small_stem)
    layout = {
        "checkpoint": str(ckpt_file.resolve()),
        "checkpoint_epoch": state.get("epoch"),
        "backbone": config.model.backbone,
        "in_channels": info["in_channels"],
        "small_stem": small_stem,
        "pretrain_dataset": info["name"],
        "pretrain_image_size": info["image_size"],
        "mean": info["mean"],
        "std": info["std"],
    }
    return weights, layout


def _torchvision_note(layout: dict[str, Any]) -> tuple[bool, str]:
    name = layout["backbone"]
    loader = (f"clim.models.backbones.build_backbone('{name}', in_channels={layout['in_channels']}, "
              f"small_stem={layout['small_stem']})[0].load_state_dict(weights)")
    if torchvision_constructor(name) is None:
        return False, f"{name} has no torchvision constructor; load it with {loader}"
    channels = layout["in_channels"]
    if layout["small_stem"]:
        return False, (f"the stem differs from torchvision's: conv1 is the small-image 3x3 stride-1 conv with "
                       f"{channels} input channel(s) and maxpool is removed; load it with {loader}")
    if channels != 3:
        return False, (f"only conv1 differs from torchvision's: a 7x7 stride-2 conv with {channels} input "
                       f"channel(s) instead of 3 (maxpool and every other layer match); load it with {loader}, "
                       f"or set net.conv1 = torch.nn.Conv2d({channels}, 64, 7, 2, 3, bias=False) on "
                       f"net = torchvision.models.{name}(num_classes=C), then "
                       "net.load_state_dict(weights, strict=False) -> missing keys fc.weight, fc.bias")
    return True, (f"torchvision.models.{name}(num_classes=C).load_state_dict(weights, strict=False) "
                  "-> missing keys fc.weight, fc.bias")


def _write_info(out_path: Path, info: dict[str, Any]) -> None:
    Path(f"{out_path}.json").write_text(json.dumps(info, indent=2) + "\n")


def export_torchvision(ckpt: str | Path, out_path: str | Path) -> dict[str, Any]:
    """Write the backbone as a torchvision state_dict (``.safetensors`` by suffix, else torch.save).

    Returns (and writes to ``<out_path>.json``) the layout and how to load it; see the module doc.
    """
    out_path = Path(out_path)
    weights, layout = pretrained_backbone(ckpt)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if out_path.suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(out_path))
    else:
        torch.save({k: v.detach().cpu() for k, v in weights.items()}, out_path)
    compatible, note = _torchvision_note(layout)
    info = {"format": "torchvision", "path": str(out_path.resolve()), **layout,
            "torchvision_compatible": compatible, "load": note}
    _write_info(out_path, info)
    return info


def detectron2_name(name: str) -> str:
    """torchvision ResNet parameter name -> detectron2 ResNet name (MoCo's convention)."""
    parts = name.split(".")
    if not parts[0].startswith("layer"):
        module = "stem.conv1.norm" if parts[0] == "bn1" else f"stem.{parts[0]}"
        return ".".join([module, *parts[1:]])
    stage, block, module, rest = f"res{int(parts[0][5:]) + 1}", parts[1], parts[2], parts[3:]
    if module == "downsample":
        module, rest = ("shortcut" if rest[0] == "0" else "shortcut.norm"), rest[1:]
    elif module.startswith("bn"):
        module = f"conv{module[2:]}.norm"
    return ".".join([stage, block, module, *rest])


def export_detectron2(ckpt: str | Path, out_path: str | Path) -> dict[str, Any]:
    """Write the backbone as a detectron2 weights pickle; returns (and writes) its description."""
    out_path = Path(out_path)
    weights, layout = pretrained_backbone(ckpt)
    model = {detectron2_name(name): tensor.detach().cpu().numpy() for name, tensor in weights.items()
             if not name.endswith("num_batches_tracked")}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "wb") as handle:
        pickle.dump({"model": model, "__author__": "clim", "matching_heuristics": True}, handle)
    compatible = not layout["small_stem"] and layout["in_channels"] == 3
    if compatible:
        note = "load with MODEL.WEIGHTS and MoCo's input conventions (see clim.evaluation.export)"
    elif layout["small_stem"]:
        note = ("stem.conv1 is the small-image 3x3 stride-1 conv, not detectron2's 7x7 3-channel stem; "
                "detectron2 will skip it and train the stem from scratch")
    else:
        note = (f"only stem.conv1 differs from detectron2's stem ({layout['in_channels']} input channel(s) "
                "instead of 3); detectron2 will skip it and train it from scratch, every other layer loads")
    info = {"format": "detectron2", "path": str(out_path.resolve()), **layout,
            "detectron2_compatible": compatible, "load": note}
    _write_info(out_path, info)
    return info
