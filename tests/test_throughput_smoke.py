"""Smoke test of benchmarks/throughput.py --quick with tiny sizes (a subprocess, as a user runs it).

The lightly comparison needs the benchmark-only extra (``pip install -e '.[bench]'``); ``make test``
does not install it, so that test is skipped without lightly. Our two variants run either way.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = ["--quick", "--backbone", "resnet10", "--batch-size", "16", "--steps", "2", "--warmup", "1", "--rounds", "1",
        "--n", "256", "--queue-size", "64", "--workers", "1"]


def _run(*extra: str) -> list[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "throughput.py"), *TINY, *extra],
                            capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip().splitlines()


def test_quick_last_line_is_the_ratio_vs_lightly():
    pytest.importorskip("lightly", reason="lightly is a benchmark-only extra: pip install -e '.[bench]'")
    lines = _run()
    match = re.fullmatch(r"ratio_vs_lightly=(\S+)", lines[-1])
    assert match, lines[-1]
    assert float(match.group(1)) > 0
    assert any(line.startswith("machine: ") for line in lines) and any(line.startswith("date: ") for line in lines)


def test_our_variants_run_without_lightly():
    lines = _run("--variants", "ours-mocov2,ours-clim")
    rates = {line.split()[0]: float(line.split()[1]) for line in lines if line.startswith("ours-")
             and len(line.split()) >= 2 and re.fullmatch(r"[\d.]+", line.split()[1])}
    assert set(rates) == {"ours-mocov2", "ours-clim"} and all(r > 0 for r in rates.values())
    assert "epoch time" in lines[-1]
