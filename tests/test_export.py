import json
import pickle

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import load_file

from clim.config import Config
from clim.evaluation.export import detectron2_name, export_detectron2, export_torchvision
from clim.models.moco import build_moco
from clim.runtime.checkpoint import CheckpointError, save_atomic
from clim.specs import model_spec


def _checkpoint(tmp_path, backbone="resnet18", in_channels=3, image_size=224):
    torch.manual_seed(0)
    config = Config()
    config.model.backbone = backbone
    config.model.queue_size = 64
    model = build_moco(model_spec(config, image_size), in_channels)
    with torch.no_grad():  # non-default BN statistics and affine terms, so that exporting them matters
        for module in model.backbone_q.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    info = {"name": "x", "num_classes": 10, "in_channels": in_channels, "image_size": image_size,
            "mean": [0.5] * in_channels, "std": [0.25] * in_channels}
    path = tmp_path / "checkpoint.pt"
    save_atomic({"config": config.to_dict(), "model": model.state_dict(), "epoch": 1, "step": 1,
                 "data_info": info, "num_samples": 0}, path)
    return path, model


@pytest.fixture(scope="module")
def resnet18_ckpt(tmp_path_factory):
    """ImageNet stem, 3 channels: the layout torchvision and detectron2 take as is."""
    return _checkpoint(tmp_path_factory.mktemp("r18"))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_torchvision_round_trip_gives_identical_features(resnet18_ckpt, tmp_path, suffix):
    path, model = resnet18_ckpt
    out = tmp_path / f"backbone{suffix}"
    info = export_torchvision(path, out)
    assert info["torchvision_compatible"] is True
    weights = load_file(str(out)) if suffix == ".safetensors" else torch.load(out, weights_only=True)
    net = torchvision.models.resnet18(num_classes=10)
    result = net.load_state_dict(weights, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and result.unexpected_keys == []
    net.fc = torch.nn.Identity()
    net.eval()
    ours = model.backbone_q.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(x), ours(x), atol=1e-5)


@pytest.mark.parametrize("backbone, in_channels, image_size, loader", [
    ("resnet18", 1, 28, "torchvision"),   # small stem, 1 channel: the CPU presets' layout
    ("resnet10", 1, 28, "torchvision"),   # no named constructor: torchvision's public ResNet class
    ("resnet18", 3, 32, "torchvision"),   # small stem, 3 channels
    ("resnet10_w8", 1, 28, "clim"),       # narrowed: no torchvision network fits
])
def test_load_line_followed_literally_loads_strictly_with_identical_features(tmp_path, backbone, in_channels,
                                                                             image_size, loader):
    path, model = _checkpoint(tmp_path, backbone=backbone, in_channels=in_channels, image_size=image_size)
    info = export_torchvision(path, tmp_path / "small.pth")
    assert info["torchvision_compatible"] is False and info["small_stem"] is True and info["loader"] == loader
    assert "\n" not in info["load"] and str(tmp_path / "small.pth") in info["load"]
    assert ("clim" in info["load"]) == (loader == "clim")
    if loader == "clim":
        assert "narrowed" in info["note"] and "no torchvision constructor" in info["note"]
    else:
        assert f"torch.nn.Conv2d({in_channels}, 64, 3, 1, 1, bias=False)" in info["load"]
        assert "m.maxpool = torch.nn.Identity()" in info["load"]
    namespace = {}
    exec(info["load"], namespace)  # the printed line as a user would paste it; load_state_dict is strict
    net = namespace["m"].eval()
    x = torch.randn(2, in_channels, image_size, image_size)
    with torch.no_grad():
        assert torch.allclose(net(x), model.backbone_q.eval()(x), atol=1e-5)


def test_safetensors_load_line_and_imagenet_stem_line(resnet18_ckpt, tmp_path):
    path, model = resnet18_ckpt
    info = export_torchvision(path, tmp_path / "b.safetensors")
    assert info["torchvision_compatible"] is True and "load_file(" in info["load"]
    assert info["load"].startswith("import torch, torchvision; m = torchvision.models.resnet18(); m.fc = ")
    namespace = {}
    exec(info["load"], namespace)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(namespace["m"].eval()(x), model.backbone_q.eval()(x), atol=1e-5)


def test_export_refuses_weights_that_would_not_load_into_the_load_line(resnet18_ckpt, tmp_path, monkeypatch):
    """The strict load into the line's network is checked before writing: a line that did not fit
    (here a wrong conv1 on purpose) stops the export and nothing is written."""
    path, _ = resnet18_ckpt
    from clim.evaluation import export

    wrong = "import torch, torchvision; m = torchvision.models.resnet18(); m.conv1 = torch.nn.Conv2d(3, 64, 3)"
    monkeypatch.setattr(export, "torchvision_recipe", lambda layout: (wrong, "", False))
    with pytest.raises(CheckpointError, match=r"'conv1.weight' has shape \(64, 3, 7, 7\), expected \(64, 3, 3, 3\)"):
        export_torchvision(path, tmp_path / "never.pth")
    with pytest.raises(CheckpointError, match="2 missing key"):  # fc.weight, fc.bias: fc was not replaced
        monkeypatch.setattr(export, "torchvision_recipe",
                            lambda layout: ("import torchvision; m = torchvision.models.resnet18()", "", False))
        export_torchvision(path, tmp_path / "never.pth")
    assert list(tmp_path.iterdir()) == []


def test_detectron2_pickle_names_and_shapes(resnet18_ckpt, tmp_path):
    path, model = resnet18_ckpt
    info = export_detectron2(path, tmp_path / "d2.pkl")
    assert info["detectron2_compatible"] is True
    with open(tmp_path / "d2.pkl", "rb") as handle:
        obj = pickle.load(handle)
    assert obj["__author__"] == "clim" and obj["matching_heuristics"] is True
    weights = obj["model"]
    assert all(isinstance(v, np.ndarray) for v in weights.values())
    shapes = {
        "stem.conv1.weight": (64, 3, 7, 7),
        "stem.conv1.norm.running_mean": (64,),
        "stem.conv1.norm.weight": (64,),
        "res2.0.conv1.weight": (64, 64, 3, 3),
        "res2.1.conv2.norm.running_var": (64,),
        "res5.1.conv2.norm.bias": (512,),
        "res3.0.shortcut.weight": (128, 64, 1, 1),
        "res3.0.shortcut.norm.running_mean": (128,),
    }
    for name, shape in shapes.items():
        assert weights[name].shape == shape, name
    source = model.backbone_q.state_dict()
    assert np.array_equal(weights["res5.1.conv2.norm.bias"], source["layer4.1.bn2.bias"].numpy())
    assert not any(k.endswith("num_batches_tracked") or k.startswith(("layer", "bn1", "conv1", "fc"))
                   for k in weights)
    assert len(weights) == sum(not k.endswith("num_batches_tracked") for k in source)


def test_detectron2_names_for_bottleneck_blocks():
    assert detectron2_name("layer1.0.bn3.running_var") == "res2.0.conv3.norm.running_var"
    assert detectron2_name("layer4.2.conv3.weight") == "res5.2.conv3.weight"
    assert detectron2_name("layer2.0.downsample.1.bias") == "res3.0.shortcut.norm.bias"
    assert detectron2_name("bn1.running_mean") == "stem.conv1.norm.running_mean"


def test_export_json_records_absolute_paths(resnet18_ckpt, tmp_path, monkeypatch):
    path, _ = resnet18_ckpt
    monkeypatch.chdir(tmp_path)
    info = export_torchvision(path.parent, "sub/backbone.pth")  # the run folder and a relative output
    assert info["checkpoint"] == str(path.resolve()) and info["path"] == str((tmp_path / "sub/backbone.pth"))
    saved = json.loads((tmp_path / "sub" / "backbone.pth.json").read_text())
    assert saved["checkpoint"] == str(path.resolve()) and saved["path"] == info["path"]
    info = export_detectron2(path, "d2.pkl")
    assert info["path"] == str(tmp_path / "d2.pkl")


def test_one_channel_imagenet_stem_note_says_only_conv1_differs(tmp_path):
    path, model = _checkpoint(tmp_path, backbone="resnet18", in_channels=1, image_size=96)
    info = export_torchvision(path, tmp_path / "gray.pth")
    assert info["torchvision_compatible"] is False and info["small_stem"] is False
    assert "only conv1 differs" in info["note"] and "maxpool" in info["note"]
    assert "m.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)" in info["load"]
    # the recipe in the note works: torchvision's resnet18 with only conv1 replaced
    net = torchvision.models.resnet18(num_classes=10)
    net.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    result = net.load_state_dict(torch.load(tmp_path / "gray.pth", weights_only=True), strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and result.unexpected_keys == []
    assert "only stem.conv1 differs" in export_detectron2(path, tmp_path / "gray.pkl")["load"]


@pytest.mark.parametrize("exporter, suffix", [(export_torchvision, ".pth"), (export_detectron2, ".pkl")])
def test_checkpoints_that_load_but_do_not_fit_are_refused_before_writing(tmp_path, exporter, suffix):
    path, _ = _checkpoint(tmp_path, backbone="resnet10", in_channels=1, image_size=28)
    state = torch.load(path, weights_only=True)
    state["model"]["encoder_q.0.conv1.weight"] = torch.zeros(3)
    save_atomic(state, tmp_path / "bad.pt")
    torch.save({"config": {}, "model": {}, "data_info": {}}, tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match=r"'encoder_q.0.conv1.weight' has shape \(3,\), expected \(64, 1, 3, 3\)"):
        exporter(tmp_path / "bad.pt", tmp_path / "out" / f"bad{suffix}")
    with pytest.raises(CheckpointError, match=r"missing key\(s\) config.model.backbone, data_info.name, "
                                              r"data_info.in_channels"):
        exporter(tmp_path / "empty.pt", tmp_path / "out" / f"empty{suffix}")
    assert not (tmp_path / "out").exists()
