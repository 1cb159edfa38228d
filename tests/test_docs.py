"""Documentation that runs (issue 18): the README's Python blocks, the examples, and docs/API.md
as scripts/api_docs.py writes it from the docstrings."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def readme_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", (ROOT / "README.md").read_text(), flags=re.M | re.S)


def test_the_readme_has_its_own_loop_example():
    own_loop = [block for block in readme_blocks() if "clim.PositiveBank" in block]
    assert len(own_loop) == 1 and len(own_loop[0].splitlines()) <= 40


@pytest.mark.parametrize("number", range(len(readme_blocks())))
def test_readme_python_block_runs_as_written(number, tmp_path):
    script = tmp_path / f"readme_{number}.py"
    script.write_text(readme_blocks()[number])
    result = _run([str(script)], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]


def _epoch_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("epoch ")]


def test_simclr_example_runs_with_in_batch_negatives():
    result = _run([str(EXAMPLES / "simclr.py"), "--epochs", "3"], EXAMPLES)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = _epoch_lines(result.stdout)
    assert any("positives refreshed, precision" in line for line in lines) and len(lines) == 4


def test_lightly_example_runs():
    pytest.importorskip("lightly", reason="lightly is not installed (pip install -e '.[bench]')")
    result = _run([str(EXAMPLES / "lightly_moco.py"), "--epochs", "3"], EXAMPLES)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = _epoch_lines(result.stdout)
    assert any("positives refreshed, precision" in line for line in lines) and len(lines) == 4


def test_api_reference_is_fresh():
    spec = importlib.util.spec_from_file_location("api_docs", ROOT / "scripts" / "api_docs.py")
    api_docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(api_docs)
    assert api_docs.API_MD.read_text() == api_docs.render(), "docs/API.md is stale: run python scripts/api_docs.py"
