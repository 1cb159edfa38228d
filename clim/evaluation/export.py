"""Export the pretrained query backbone for transfer (METHOD §5, paper Tables 3–5) in two formats.

* **torchvision** (``.pth`` via ``torch.save``, or ``.safetensors``): a ``torchvision.models.ResNet``
  state_dict without ``fc.*``. The result's ``load`` is ONE line of Python that builds the network
  ``m`` (``fc = Identity``: pooled features) and loads the file into it with ``strict=True``, checked
  before anything is written: ``torchvision.models.resnet50()`` (or 18/34) as is for the ImageNet stem
  and 3 input channels; else with ``m.conv1`` (and ``m.maxpool``) replaced to fit the small-image stem
  or the channel count. resnet10 is ``torchvision.models.ResNet(BasicBlock, [1, 1, 1, 1])``; a narrowed
  ``NAME_wN`` comes from ``clim.models.backbones.build_backbone`` (a ``torchvision.models.ResNet``).
* **detectron2** (``.pkl``): MoCo's conversion convention, a pickle of
  ``{"model": {name: numpy array}, "__author__": "clim", "matching_heuristics": True}`` with
  detectron2's ResNet names (:func:`detectron2_name`), without the ``num_batches_tracked`` counters
  (detectron2's norms have no such buffer; MoCo's script keeps them and detectron2 lists them unused).

Transfer with MoCo's detection code: the commands for Tables 3–5 are in docs/USAGE.md. The detectron2 stem is the
ImageNet one (7×7 conv, 3 channels); a small-stem checkpoint's ``conv1`` does not fit it, which the returned info says.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any, Callable

import torch

from clim.evaluation.common import check_output, fitted_model, load_strictly, trainer_state
from clim.config import uses_small_stem
from clim.models.backbones import STANDARD_WIDTH, build_backbone, parse_backbone, torchvision_constructor

BACKBONE_PREFIX = "encoder_q.0."


def pretrained_backbone(ckpt: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The query backbone's state_dict (torchvision names) and a description of its layout."""
    ckpt_file, state, config, info = trainer_state(ckpt)
    fitted_model(ckpt_file, state, config, info)  # every key there and of the right shape, else one line
    weights = {name[len(BACKBONE_PREFIX):]: tensor for name, tensor in state["model"].items()
               if name.startswith(BACKBONE_PREFIX)}
    return weights, {"checkpoint": str(ckpt_file.resolve()), "checkpoint_epoch": state.get("epoch"),
                     "backbone": config.model.backbone, "in_channels": info["in_channels"],
                     "small_stem": uses_small_stem(info["image_size"], config.model.small_stem),
                     "pretrain_dataset": info["name"], "pretrain_image_size": info["image_size"],
                     "mean": info["mean"], "std": info["std"]}


def _resnet_expression(name: str) -> tuple[str, str]:
    """``(torchvision expression building the standard-width network, what it is)``."""
    if torchvision_constructor(name) is not None:
        return f"torchvision.models.{name}()", f"torchvision's {name}"
    net, _ = build_backbone(name)
    block = type(net.layer1[0]).__name__
    layers = [len(getattr(net, f"layer{i}")) for i in range(1, 5)]
    return (f"torchvision.models.ResNet(torchvision.models.resnet.{block}, {layers})",
            f"{name}, which has no named torchvision constructor: torchvision's public ResNet({block}, {layers})")


def torchvision_recipe(layout: dict[str, Any]) -> tuple[str, str, bool]:
    """``(code, note, stock)``: one line of Python (imports included) that builds the network ``m`` the
    exported weights load into strictly, what it is, and whether it is a torchvision constructor's as is."""
    name, channels, small = layout["backbone"], int(layout["in_channels"]), bool(layout["small_stem"])
    base, width = parse_backbone(name)
    feature_dim = build_backbone(name, channels, small)[1]
    head = (f"m outputs the pooled {feature_dim}-d features (fc = Identity); for a classifier of C classes "
            f"set m.fc = torch.nn.Linear({feature_dim}, C)")
    if width != STANDARD_WIDTH:
        code = (f"import torch; from clim.models.backbones import build_backbone; "
                f"m = build_backbone('{name}', in_channels={channels}, small_stem={small})[0]")
        note = (f"{name} is narrowed (stage widths {width}, {2 * width}, {4 * width}, {8 * width} instead of "
                "64, 128, 256, 512): no torchvision constructor can be made to load it, so the network comes from "
                "clim.models.backbones.build_backbone (a torchvision.models.ResNet; see its docstring); ")
        return code, note + head, False
    expression, what = _resnet_expression(base)
    steps = [f"import torch, torchvision; m = {expression}"]
    if small:
        steps += [f"m.conv1 = torch.nn.Conv2d({channels}, {width}, 3, 1, 1, bias=False)",
                  "m.maxpool = torch.nn.Identity()"]
        stem = (f"; the stem differs from torchvision's: conv1 is the small-image 3x3 stride-1 conv with {channels} "
                "input channel(s) and maxpool is removed (every other layer matches)")
    elif channels != 3:
        steps.append(f"m.conv1 = torch.nn.Conv2d({channels}, {width}, 7, 2, 3, bias=False)")
        stem = (f"; only conv1 differs from torchvision's: a 7x7 stride-2 conv with {channels} input channel(s) "
                "instead of 3 (maxpool and every other layer match)")
    else:
        stem = " as is"
    steps.append("m.fc = torch.nn.Identity()")
    stock = not small and channels == 3 and torchvision_constructor(base) is not None
    if stock:
        head += (f"; torchvision.models.{base}(num_classes=C).load_state_dict(weights, strict=False) also "
                 "works, missing exactly fc.weight and fc.bias")
    return "; ".join(steps), what + stem + "; " + head, stock


def _torchvision_note(layout: dict[str, Any]) -> tuple[bool, str]:
    """``(stock, note)`` of :func:`torchvision_recipe`, the note ending with the line that builds ``m``."""
    code, note, stock = torchvision_recipe(layout)
    return stock, f"{note}; build it with: {code}"


def _write_atomically(out_path: Path, write: Callable[[Any], None]) -> None:
    """``write(binary handle)`` into a temporary file beside ``out_path``, renamed over it when complete."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_info(out_path: Path, info: dict[str, Any]) -> dict[str, Any]:
    text = (json.dumps(info, indent=2) + "\n").encode()
    _write_atomically(Path(f"{out_path}.json"), lambda handle: handle.write(text))
    return info


def export_torchvision(ckpt: str | Path, out_path: str | Path) -> dict[str, Any]:
    """Write the backbone as a torchvision state_dict (``.safetensors`` by suffix, else torch.save);
    returns (and writes to ``<out_path>.json``) the layout and the line that loads it (``load``)."""
    out_path = Path(out_path)
    check_output(out_path)
    weights, layout = pretrained_backbone(ckpt)
    weights = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
    code, note, stock = torchvision_recipe(layout)
    namespace: dict[str, Any] = {}  # the construction line (clim's own text: a validated backbone name, integers)
    exec(code, namespace)  # noqa: S102 - the line the user is told to run, checked here as is
    load_strictly(namespace["m"], weights, f"the exported weights would not load into the network of `{code}`")
    target = repr(str(out_path.resolve()))
    if out_path.suffix == ".safetensors":
        from safetensors.torch import save

        _write_atomically(out_path, lambda handle: handle.write(save(weights)))
        load = f"{code}; from safetensors.torch import load_file; m.load_state_dict(load_file({target}))"
    else:
        _write_atomically(out_path, lambda handle: torch.save(weights, handle))
        load = f"{code}; m.load_state_dict(torch.load({target}, weights_only=True))"
    info = {"format": "torchvision", "path": str(out_path.resolve()), **layout, "torchvision_compatible": stock,
            "loader": "clim" if "clim.models" in code else "torchvision", "load": load,
            "load_checked": "strict load into the network of 'load' checked before writing", "note": note}
    return _write_info(out_path, info)


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
    check_output(out_path)
    weights, layout = pretrained_backbone(ckpt)  # weights checked strictly against the checkpoint's backbone
    model = {detectron2_name(name): tensor.detach().cpu().numpy() for name, tensor in weights.items()
             if not name.endswith("num_batches_tracked")}
    _write_atomically(out_path, lambda handle: pickle.dump(
        {"model": model, "__author__": "clim", "matching_heuristics": True}, handle))
    compatible = not layout["small_stem"] and layout["in_channels"] == 3
    if compatible:
        note = "load with MODEL.WEIGHTS and MoCo's input conventions (see clim.evaluation.export)"
    elif layout["small_stem"]:
        note = ("stem.conv1 is the small-image 3x3 stride-1 conv, not detectron2's 7x7 3-channel stem; "
                "detectron2 will skip it and train the stem from scratch")
    else:
        note = (f"only stem.conv1 differs from detectron2's stem ({layout['in_channels']} input channel(s) "
                "instead of 3); detectron2 will skip it and train it from scratch, every other layer loads")
    return _write_info(out_path, {"format": "detectron2", "path": str(out_path.resolve()), **layout,
                                  "detectron2_compatible": compatible, "load": note})
