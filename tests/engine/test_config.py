"""The config system: typed keys, one-line errors naming the key, presets and `base:` inheritance."""

import pytest

from clim.config import files as config_files
from clim.config import Config, ConfigError, load_config, preset_names


@pytest.mark.parametrize("override, key", [
    ("train.epoch=1", "train.epoch"),          # typo in a key
    ("trian.epochs=1", "trian.epochs"),        # unknown section
    ("train=1", "train"),                      # a section is not a key
    ("method.mixing=blend", "method.mixing"),  # value outside the choices
    ("model.backbone=vgg", "model.backbone"),
    ("train.epochs=0", "train.epochs"),        # must be > 0
    ("method.num_clusters=-5", "method.num_clusters"),  # else only fails at the first refresh
    ("train.lr=0", "train.lr"),
    ("model.momentum=1.5", "model.momentum"),
    ("train.epochs=abc", "train.epochs"),      # bad types
    ("train.epochs=2.5", "train.epochs"),
    ("train.amp=maybe", "train.amp"),
    ("train.lr=fast", "train.lr"),
    ("train.batch_size=", "train.batch_size"),  # required value missing
    ("method.resolutions=[]", "method.resolutions"),
])
def test_bad_key_or_value_names_the_key(override, key):
    with pytest.raises(ConfigError) as error:
        load_config("demo-cpu", overrides=[override])
    message = str(error.value)
    assert f"'{key}'" in message and "\n" not in message


def test_override_without_equals_sign():
    with pytest.raises(ConfigError, match="key=value"):
        load_config("demo-cpu", overrides=["train.epochs"])


def test_values_are_coerced_to_their_types():
    config = load_config("demo-cpu", overrides=[
        "train.epochs=3", "train.lr=1e-3", "train.weight_decay=0", "train.amp=false", "data.root=null",
        "method.resolutions=[8, 6]", "data.name=digits", "model.small_stem=true"])
    assert config.train.epochs == 3 and isinstance(config.train.epochs, int)
    assert config.train.lr == pytest.approx(1e-3) and isinstance(config.train.lr, float)
    assert config.train.weight_decay == 0.0 and isinstance(config.train.weight_decay, float)
    assert config.train.amp is False and config.data.root is None and config.model.small_stem is True
    assert config.method.resolutions == [8, 6]
    assert load_config("demo-cpu", overrides=["method.resolutions=8"]).method.resolutions == [8]


def test_lr_default_scales_with_batch():
    config = load_config("demo-cpu", overrides=["train.lr=null", "train.batch_size=512"])
    assert config.lr == pytest.approx(0.06)


def test_multicrop_and_several_resolutions_are_exclusive():
    with pytest.raises(ConfigError, match="multicrop"):
        load_config("demo-cpu", overrides=["method.multicrop=true", "method.resolutions=[28,20]"])


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_loads_and_round_trips(name):
    config = load_config(name)
    config.validate()
    assert Config.from_dict(config.to_dict()) == config


def test_presets_exist():
    assert {"demo-cpu", "clim-demo-cpu", "clim-imagenet-r50", "mocov2-imagenet-r50"} <= set(preset_names())


def test_base_inheritance_chain():
    config = load_config("clim-imagenet-r50-200ep")  # -> clim-imagenet-r50 -> mocov2-imagenet-r50
    assert config.train.epochs == 200                 # own key
    assert config.method.name == "clim" and config.method.resolutions == [224, 160]  # parent
    assert config.model.backbone == "resnet50" and config.data.name == "imagefolder"  # grandparent
    assert load_config("clim-imagenet-r50").train.epochs == 1200
    demo = load_config("clim-demo-cpu")
    assert demo.method.refresh_every == 2 and demo.model.queue_size == 4096 and demo.data.name == "fmnist-mini"


def test_config_file_with_base_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("base: demo-cpu\ntrain:\n  epochs: 3\n  lr: 1.0e-2\nmethod:\n  name: clim\n")
    config = load_config(config_file=str(path), overrides=["train.epochs=4"])
    assert config.train.epochs == 4 and config.train.lr == pytest.approx(0.01)
    assert config.method.name == "clim" and config.model.queue_size == 4096
    path.write_text("train:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match="'train.epochz'"):
        load_config(config_file=str(path))
    with pytest.raises(ConfigError, match="not found"):
        load_config(config_file=str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        load_config("nope")


def test_inheritance_loop_is_an_error(tmp_path, monkeypatch):
    (tmp_path / "a.yaml").write_text("base: b\n")
    (tmp_path / "b.yaml").write_text("base: a\n")
    monkeypatch.setattr(config_files, "PRESET_DIR", tmp_path)
    with pytest.raises(ConfigError, match="loops"):
        load_config("a")
