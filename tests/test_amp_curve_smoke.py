"""Smoke test of benchmarks/amp_curve.py at a tiny size on the CPU (a subprocess, as a user runs it): it
must keep up with the model builder's and the trainer's API."""

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_amp_curve_runs_and_prints_both_losses_per_step():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "amp_curve.py"), "--device", "cpu",
                             "--steps", "2", "--every", "1", "--batch-size", "16", "--backbone", "resnet10"],
                            capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert result.returncode in (0, 1), result.stdout + result.stderr  # 1 = DISAGREE, still a finished run
    rows = re.findall(r"^\s+(\d+)-(\d+)\s+(\d+\.\d+)\s+(\d+\.\d+)\s+(\d+\.\d+)$", result.stdout, re.M)
    assert [(int(a), int(b)) for a, b, *_ in rows] == [(1, 1), (2, 2)], result.stdout
    assert all(float(fp32) > 0 and float(bf16) > 0 for _, _, fp32, bf16, _ in rows)
    assert re.search(r"^amp_curve: (agree|DISAGREE) \(largest relative difference", result.stdout, re.M)
