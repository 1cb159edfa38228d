"""scripts/config_table.py: docs/CONFIG.md's key table is generated from clim/config/schema.py and cannot go stale."""

import dataclasses
import importlib.util
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from clim.config import Config

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("config_table", REPO / "scripts" / "config_table.py")
config_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(config_table)


def test_config_doc_table_is_the_generated_one():
    assert config_table.TARGET == REPO / "docs" / "CONFIG.md"
    document = config_table.TARGET.read_text()
    assert config_table.document_table(document) == config_table.generated_table(), \
        "docs/CONFIG.md's config key table is stale: run python scripts/config_table.py --write"
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "config_table.py"), "--check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_the_readme_links_the_key_table_instead_of_holding_it():
    readme = (REPO / "README.md").read_text()
    assert config_table.BEGIN not in readme and "(docs/CONFIG.md)" in readme


def test_every_key_has_a_row_with_its_default_and_a_meaning():
    table = config_table.rows((REPO / "clim" / "config" / "schema.py").read_text(), Config)
    hints = typing.get_type_hints(Config)
    keys = [f"{s.name}.{f.name}" for s in dataclasses.fields(Config) for f in dataclasses.fields(hints[s.name])]
    assert [key for key, _, _ in table] == keys
    row = {key: (default, meaning) for key, default, meaning in table}
    for key in ("model.head_dim", "train.momentum", "train.weight_decay", "train.amp_dtype", "train.deterministic",
                "method.multicrop_size"):
        assert row[key][1], key
    assert row["train.weight_decay"][0] == "0.0001" and "5e-4" in row["train.weight_decay"][1]
    assert row["train.lr"][0] == "null" and row["model.symmetric"][0] == "false"
    assert row["data.augment"][1].startswith("Where augmentation runs")  # the comment block above the field


def test_the_weight_decay_row_names_the_presets_truthfully():
    """What the train.weight_decay comment says about the presets (which set 1e-4, which 5e-4)."""
    from clim.config import load_config, preset_names

    decays = {name: load_config(name).train.weight_decay for name in preset_names()}
    assert {name for name, wd in decays.items() if wd == 1e-4} == \
        {"clim-imagenet-r50", "clim-imagenet-r50-200ep", "mocov2-imagenet-r50", "ablate-smoke"}
    assert set(decays.values()) == {1e-4, 5e-4}


_SOURCE = '''
from dataclasses import dataclass, field


@dataclass
class Extra:
    # two lines
    # above
    first: int = 1  # and trailing
    second: list[int] | None = None
    cudnn_benchmark: bool = False  # a key another change adds


@dataclass
class Root:
    extra: Extra = field(default_factory=Extra)
'''


def test_a_new_field_gets_a_row_and_one_without_a_comment_is_named(tmp_path, monkeypatch):
    path = tmp_path / "fake_config.py"
    path.write_text(_SOURCE)
    spec = importlib.util.spec_from_file_location("fake_config", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "fake_config", module)  # dataclasses resolve annotations through it
    spec.loader.exec_module(module)
    meanings = config_table.field_meanings(_SOURCE, "Extra")
    assert meanings == {"first": "two lines above and trailing", "second": "",
                        "cudnn_benchmark": "a key another change adds"}
    with pytest.raises(SystemExit, match="no comment in clim/config/schema.py for extra.second"):
        config_table.rows(_SOURCE, module.Root)
    documented = _SOURCE.replace("    second: list[int] | None = None", "    second: list[int] | None = None  # sizes")
    table = config_table.markdown(config_table.rows(documented, module.Root))
    assert "| `extra.second` | `null` | sizes |" in table and "| `extra.cudnn_benchmark` | `false` |" in table
