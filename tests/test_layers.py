"""The import contracts of pyproject.toml (docs/ARCHITECTURE.md): no import climbs a layer.

``lint-imports`` checks every import of the package, lazy ones inside functions included; a module
that imports from a layer above its own fails here, and so ``make test``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import clim

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports() -> str | None:
    beside_python = Path(sys.executable).with_name("lint-imports")
    return str(beside_python) if beside_python.exists() else shutil.which("lint-imports")


def test_import_contracts_hold():
    command = _lint_imports()
    if command is None:
        pytest.skip("import-linter is not installed (pip install -e '.[dev]' installs it)")
    result = subprocess.run([command, "--no-cache", "--no-logo"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_no_import_is_exempt_from_the_contracts():
    """The engine and evaluation share the split builder (clim.data.splits) and the kNN classifier
    (clim.runtime.features) from layers below both, so no contract needs an exemption."""
    tomllib = pytest.importorskip("tomllib")
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    assert [contract["id"] for contract in contracts if contract.get("ignore_imports")] == []
    engine = next(contract for contract in contracts if contract["id"] == "engine")
    assert {"clim.evaluation", "matplotlib"} <= set(engine["forbidden_modules"])


def test_every_top_level_module_has_a_layer():
    """A new module or package directly under clim/ must be placed in a layer, or it would escape
    the contract."""
    tomllib = pytest.importorskip("tomllib")
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(contract["layers"] for contract in contracts if contract["type"] == "layers")
    placed = {name.strip() for layer in layers for name in layer.replace(":", "|").split("|")}
    package = Path(clim.__file__).parent
    modules = {f"clim.{path.stem}" for path in package.glob("*.py") if path.stem != "__init__"}
    packages = {f"clim.{path.parent.name}" for path in package.glob("*/__init__.py")}
    assert modules | packages == placed


def test_pinned_public_names_still_import():
    """The names earlier issues pinned live on as re-exports of clim.method."""
    from clim.losses import info_nce, mixed_info_nce
    from clim.method import losses, mixing, selection
    from clim.mixing import cutmix, mixup
    from clim.selection import select_positives

    assert select_positives is selection.select_positives
    assert (cutmix, mixup) == (mixing.cutmix, mixing.mixup)
    assert (info_nce, mixed_info_nce) == (losses.info_nce, losses.mixed_info_nce)


def test_import_clim_is_light_and_exposes_the_python_api():
    """``import clim`` loads no torch (``clim --help`` stays fast); the API's names appear on first
    use, exactly those ``clim.api`` imports (the list in clim/__init__.py cannot drift)."""
    light = subprocess.run([sys.executable, "-c", "import sys, clim; print('torch' in sys.modules)"],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert light.stdout.strip() == "False", light.stderr
    import clim.api
    from clim.method.bank import PositiveBank

    assert {name for name in vars(clim.api) if not name.startswith("_")} == set(clim.__all__)
    assert all(getattr(clim, name) is getattr(clim.api, name) for name in clim.__all__)
    assert clim.PositiveBank is PositiveBank and clim.losses.info_nce is clim.info_nce
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        clim.nothing  # noqa: B018


# The evaluation split builder applies `--set` overrides to a checkpoint's config: config work, not the data path.
RESOLVES_A_CONFIG = {"clim/data/splits.py"}


def test_model_method_and_data_path_never_see_the_whole_config():
    """The config is resolved once (clim.specs); below the engine a module gets the spec it needs, so it
    neither imports ``Config`` nor names it."""
    import ast

    offenders = []
    for folder in ("models", "method", "data"):
        for path in sorted((ROOT / "clim" / folder).glob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative in RESOLVES_A_CONFIG:
                continue
            names = {node.id for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Name)}
            names |= {alias.name for node in ast.walk(ast.parse(path.read_text()))
                      if isinstance(node, ast.ImportFrom) for alias in node.names}
            if "Config" in names:
                offenders.append(relative)
    assert not offenders, f"modules below the engine that take the whole Config: {offenders}"
    assert (ROOT / "clim" / "specs.py").is_file()
