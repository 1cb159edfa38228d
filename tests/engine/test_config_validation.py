"""Every bad config value is refused before training, as one ConfigError line that names the key, the
value and what is allowed; good values (presets, edge values) still pass."""

import sys
import types
import typing

import pytest

from clim.config import files as config_files
from clim.cli import main
from clim.config import MIN_IMAGE_SIZE, SEED_LIMIT, Config, ConfigError, check_training, load_config, preset_names
from clim.specs import check_device, check_for_dataset

# (key, value as typed after --set, a fragment of the expected message)
BAD_VALUES = [
    # failed late, after data loading or at the first refresh
    ("method.alpha", "0", "must be > 0"),
    ("method.alpha", "-1", "must be > 0"),
    ("method.mixup_alpha", "0", "must be > 0"),
    ("data.num_workers", "-1", "must be >= 0"),
    # failed with a traceback before training
    ("train.log_every", "0", "must be > 0"),
    ("data.image_size", "1", f"must be >= {MIN_IMAGE_SIZE}"),
    ("data.image_size", "0", f"must be >= {MIN_IMAGE_SIZE}"),
    ("train.momentum", "-1", "must be in [0, 1)"),
    ("train.weight_decay", "-1", "must be >= 0"),
    ("train.seed", "-1", f"must be in [0, {SEED_LIMIT - 1}]"),
    ("train.seed", "99999999999", "below 2**32"),
    ("method.resolutions", "[0]", f"every size must be >= {MIN_IMAGE_SIZE}"),
    ("method.resolutions", "[16,-8]", f"every size must be >= {MIN_IMAGE_SIZE}"),
    ("method.resolutions", "[16,1]", "3-tap kernel"),
    ("data.jitter_strength", "-1", "must be in [0, 2]"),
    # accepted silently
    ("model.temperature", "-1", "must be > 0"),
    ("model.temperature", "0", "must be > 0"),
    ("model.temperature", "nan", "finite"),
    ("train.warmup_epochs", "-1", "must be >= 0"),
    ("train.knn_k", "0", "must be > 0"),
    ("train.knn_temperature", "0", "must be > 0"),
    ("train.knn_temperature", "-0.07", "must be > 0"),
    ("data.crop_min_scale", "2", "must be in (0, 1]"),
    ("data.crop_min_scale", "-1", "must be in (0, 1]"),
    ("data.crop_min_scale", "0", "must be in (0, 1]"),
    ("data.jitter_p", "5", "a probability: must be in [0, 1]"),
    ("data.flip_p", "-1", "a probability: must be in [0, 1]"),
    ("data.grayscale_p", "1.5", "a probability: must be in [0, 1]"),
    ("data.blur_p", "nan", "finite"),
    ("data.jitter_strength", "3", "hue jitter is strength / 4"),
    ("model.queue_size", "1", "must be >= train.batch_size=128"),
    ("model.queue_size", "127", "must be >= train.batch_size=128"),
    ("train.log_every", "-5", "must be > 0"),
    ("train.checkpoint_every_minutes", "-1", "must be >= 0"),
    ("train.checkpoint_every_minutes", "nan", "finite"),
    ("method.multicrop_size", "0", f"must be >= {MIN_IMAGE_SIZE}"),
    ("method.multicrop_size", "1", f"must be >= {MIN_IMAGE_SIZE}"),
    ("train.knn_every", "-1", "must be >= 0"),
    ("train.lr", "nan", "finite"),
    ("train.lr", "inf", "finite"),
    ("train.lr", "-0.1", "must be > 0"),
    ("train.momentum", "1", "must be in [0, 1)"),
    ("model.momentum", "nan", "finite"),
    ("model.momentum", "-0.5", "0 <= m < 1"),
    ("data.val_fraction", "1", "0 < f < 1"),
    # every float key: NaN and infinities
    *[(key, value, "finite") for key in (
        "data.val_fraction", "data.crop_min_scale", "data.jitter_strength", "data.jitter_p", "data.grayscale_p",
        "data.blur_p", "data.flip_p", "model.momentum", "model.temperature", "train.lr", "train.momentum",
        "train.weight_decay", "train.knn_temperature", "train.checkpoint_every_minutes", "method.alpha",
        "method.mixup_alpha") for value in ("nan", "inf", "-inf")],
]

# values at the edge of what is allowed, which must keep passing
GOOD_VALUES = [
    "data.crop_min_scale=1", "data.crop_min_scale=0.01", "data.jitter_p=0", "data.jitter_p=1", "data.flip_p=0",
    "data.flip_p=1", "data.blur_p=0", "data.blur_p=1", "data.grayscale_p=0", "data.grayscale_p=1",
    "data.jitter_strength=0", "data.jitter_strength=2", "train.checkpoint_every_minutes=0", "train.knn_every=0",
    "train.warmup_epochs=0", "train.weight_decay=0", "train.momentum=0", "model.momentum=0", "train.seed=0",
    f"train.seed={SEED_LIMIT - 1}", "data.num_workers=0", f"data.image_size={MIN_IMAGE_SIZE}", "data.image_size=null",
    f"method.resolutions=[{MIN_IMAGE_SIZE}]", "method.resolutions=[8,6]", f"method.multicrop_size={MIN_IMAGE_SIZE}",
    "method.multicrop_size=null", "model.queue_size=128", "train.lr=null", "train.lr=1e-6", "method.alpha=0.1",
    "model.temperature=1e-3",
]


def _ids(rows):
    return [f"{key}={value}" for key, value, _ in rows]


@pytest.mark.parametrize("key, value, fragment", BAD_VALUES, ids=_ids(BAD_VALUES))
def test_bad_value_is_one_line_naming_key_value_and_rule(key, value, fragment):
    with pytest.raises(ConfigError) as error:
        load_config("demo-cpu", overrides=[f"{key}={value}"])
    message = str(error.value)
    typed = Config()
    typed.set(key, value)  # the value as the message shows it (types only; set() does not validate)
    assert message.startswith(f"invalid value {typed.get(key)!r} for '{key}' ("), message
    assert fragment in message and "\n" not in message


@pytest.mark.parametrize("key, value, fragment", BAD_VALUES, ids=_ids(BAD_VALUES))
def test_bad_value_set_on_a_config_is_refused_too(key, value, fragment):
    config = load_config("demo-cpu")
    config.set(key, value)
    with pytest.raises(ConfigError, match=f"'{key}'"):
        config.validate()
        check_training(config)


def test_every_float_key_is_checked_for_nan_and_infinity():
    sections = typing.get_type_hints(Config)
    floats = {f"{section}.{name}" for section in sections
              for name, hint in typing.get_type_hints(sections[section]).items()
              if float in (hint, *typing.get_args(hint))}
    for value in ("nan", "inf", "-inf"):
        assert {key for key, bad, _ in BAD_VALUES if bad == value} == floats


@pytest.mark.parametrize("override", GOOD_VALUES)
def test_edge_values_still_pass(override):
    key, _, value = override.partition("=")
    config = load_config("demo-cpu", overrides=[override])
    expected = Config()
    expected.set(key, value)
    assert config.get(key) == expected.get(key)


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_still_validates(name):
    config = load_config(name)
    config.validate()
    check_training(config)


def test_values_assigned_as_attributes_are_type_checked():
    config = Config()
    config.train.epochs = "3"
    with pytest.raises(ConfigError, match=r"invalid value '3' for 'train.epochs' \(expected an integer\)"):
        config.validate()
    config = Config()
    config.data.flip_p = True
    with pytest.raises(ConfigError, match=r"'data.flip_p' \(expected a number\)"):
        config.validate()
    config = Config()
    config.method.resolutions = (32, 24)
    with pytest.raises(ConfigError, match=r"'method.resolutions' \(expected a list of integers or null\)"):
        config.validate()
    config = Config()
    config.train.lr = 1  # an int is a number
    config.validate()


def test_combinations():
    # CLIM's k-means seed (train.seed * 10000 + epoch) must fit faiss' 32-bit int ...
    with pytest.raises(ConfigError) as error:
        load_config("clim-demo-cpu", overrides=["train.seed=300000"])
    message = str(error.value)
    assert "'train.seed'" in message and "300000" in message and "32-bit" in message
    limit = (2**31 - 1 - load_config("clim-demo-cpu").train.epochs) // 10_000
    assert load_config("clim-demo-cpu", overrides=[f"train.seed={limit}"]).train.seed == limit
    # ... which does not bind MoCo v2 or selections without k-means
    assert load_config("demo-cpu", overrides=["train.seed=300000"]).train.seed == 300000
    assert load_config("clim-demo-cpu", overrides=["train.seed=300000", "method.selection=knn"]).train.seed == 300000
    # the queue takes a global batch of keys per step
    with pytest.raises(ConfigError, match="'model.queue_size'.*train.batch_size=512"):
        load_config("demo-cpu", overrides=["train.batch_size=512", "model.queue_size=256"])
    with pytest.raises(ConfigError, match="'method.num_positives'"):
        load_config("demo-cpu", overrides=["method.knn_k=5", "method.num_positives=6"])


def test_a_checkpoint_config_is_not_held_to_the_training_rules():
    # an older run with a queue smaller than its batch can still be loaded (evaluation)
    config = Config()
    config.model.queue_size = 64  # train.batch_size 256
    assert Config.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="'model.queue_size'"):
        check_training(config)


def test_check_for_dataset():
    clim = load_config("clim-demo-cpu")  # batch 128, knn_k 40 (METHOD's)
    check_for_dataset(clim, 3000)
    with pytest.raises(ConfigError, match=r"'method.num_clusters' \(must be <= the 3000 training images"):
        check_for_dataset(load_config("clim-demo-cpu", overrides=["method.num_clusters=100000"]), 3000)
    check_for_dataset(load_config("clim-demo-cpu", overrides=["method.num_clusters=3000"]), 3000)
    with pytest.raises(ConfigError) as error:
        check_for_dataset(load_config("clim-demo-cpu", overrides=["train.batch_size=32", "method.knn_k=40"]), 40)
    assert "'method.knn_k'" in str(error.value) and "40 training images" in str(error.value)
    check_for_dataset(load_config("clim-demo-cpu", overrides=["train.batch_size=32"]), 41)
    with pytest.raises(ConfigError, match=r"'train.batch_size' \(must be <= the 100 training images"):
        check_for_dataset(clim, 100)
    # MoCo v2 uses neither clusters nor neighbours; a queue larger than the dataset only gets a warning
    mocov2 = load_config("demo-cpu", overrides=["method.num_clusters=100000", "method.knn_k=500"])
    check_for_dataset(mocov2, 300)
    # k-means is not run by the knn and random selections
    check_for_dataset(load_config("clim-demo-cpu", overrides=["method.num_clusters=100000",
                                                              "method.selection=knn"]), 3000)


def test_check_device(monkeypatch):
    import torch

    cuda = load_config("demo-cpu", overrides=["train.device=cuda"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError) as error:
        check_device(cuda)
    assert str(error.value) == ("train.device='cuda' but no CUDA device is visible (torch.cuda.is_available() is "
                                "False); use train.device=auto or cpu")
    for device in ("auto", "cpu"):
        check_device(load_config("demo-cpu", overrides=[f"train.device={device}"]))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    check_device(cuda)


@pytest.mark.parametrize("name", ["../../../../tmp/trav", "/etc/passwd", "sub/demo-cpu", "..", "demo..cpu",
                                  "", "demo-cpu\\x"])
def test_preset_is_a_name_not_a_path(name):
    with pytest.raises(ConfigError) as error:
        load_config(name)
    message = str(error.value)
    assert f"invalid preset name {name!r} for --preset" in message and "--config FILE" in message
    assert "\n" not in message


def test_preset_path_is_refused_even_where_the_file_exists(tmp_path, monkeypatch):
    presets = tmp_path / "presets"
    presets.mkdir()
    (tmp_path / "trav.yaml").write_text("train:\n  epochs: 7\n")
    monkeypatch.setattr(config_files, "PRESET_DIR", presets)
    with pytest.raises(ConfigError, match="invalid preset name '../trav'"):
        load_config("../trav")


def test_base_is_a_name_not_a_path(tmp_path):
    (tmp_path / "other.yaml").write_text("train:\n  epochs: 7\n")
    run = tmp_path / "run.yaml"
    run.write_text(f"base: {tmp_path / 'other'}\n")
    with pytest.raises(ConfigError) as error:
        load_config(config_file=str(run))
    message = str(error.value)
    assert f"for 'base' in {run}" in message and "\n" not in message
    run.write_text("base: ../../presets/demo-cpu\n")
    with pytest.raises(ConfigError, match="invalid preset name"):
        load_config(config_file=str(run))
    run.write_text("base: [demo-cpu]\n")
    with pytest.raises(ConfigError, match="invalid preset name"):
        load_config(config_file=str(run))
    # a file naming a preset under base: as before
    run.write_text("base: demo-cpu\ntrain:\n  epochs: 3\n")
    assert load_config(config_file=str(run)).train.epochs == 3


# ------------------------------------------------------------------------------------------------
# Through the CLI: exit code 2 and one line, before any training code runs
# ------------------------------------------------------------------------------------------------

CLI_ROWS = [("method.alpha", "0"), ("data.num_workers", "-1"), ("train.seed", "-1"), ("model.queue_size", "1"),
            ("data.blur_p", "nan"), ("method.resolutions", "[16,-8]")]


@pytest.fixture
def no_training(monkeypatch):
    """clim.engine.trainer replaced by a module whose pretrain records that it was reached."""
    calls = []
    stub = types.ModuleType("clim.engine.trainer")
    stub.pretrain = lambda *args, **kwargs: calls.append(args)
    monkeypatch.setitem(sys.modules, "clim.engine.trainer", stub)
    return calls


@pytest.mark.parametrize("key, value", CLI_ROWS)
def test_cli_refuses_before_training(key, value, tmp_path, capsys, no_training):
    out = tmp_path / "run"
    assert main(["pretrain", "--preset", "demo-cpu", "--set", f"{key}={value}", "--out", str(out)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("clim: error: invalid value") and f"'{key}'" in lines[0]
    assert no_training == [] and not out.exists()


def test_cli_preset_path_is_refused(tmp_path, capsys):
    assert main(["config", "--preset", "../../../../tmp/trav"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "invalid preset name" in lines[0] and "--config FILE" in lines[0]


def test_cli_refuses_before_torch_is_imported(run_python, tmp_path):
    code = ("import sys\nfrom clim.cli import main\n"
            f"code = main(['pretrain', '--preset', 'demo-cpu', '--set', 'model.temperature=nan', '--out', "
            f"{str(tmp_path / 'run')!r}])\n"
            "print('torch imported' if 'torch' in sys.modules else 'torch not imported')\nsys.exit(code)")
    result = run_python(["-c", code], timeout=120)
    assert result.returncode == 2 and result.stdout.strip() == "torch not imported", result.stdout + result.stderr
    assert "'model.temperature'" in result.stderr and "finite" in result.stderr
