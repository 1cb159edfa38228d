"""Smoke test of benchmarks/op_count.py with tiny sizes (a subprocess, as a user runs it): it must keep
up with the trainer's API (it once broke silently when the positives table moved to PositiveBank)."""

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_op_count_prints_both_methods_and_the_bf16_errors():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "op_count.py"), "--backbone", "resnet10",
                             "--batch-size", "16", "--image-size", "16", "--foreach"],
                            capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    counts = dict(re.findall(r"^(mocov2|clim): (\d+) ops with bn_splits=8", result.stdout, re.M))
    plain = dict(re.findall(r"^(mocov2|clim): \d+ ops with bn_splits=8, (\d+) with bn_splits=1", result.stdout, re.M))
    assert set(counts) == {"mocov2", "clim"}, result.stdout
    assert int(counts["mocov2"]) > int(plain["mocov2"]) > 0  # 8 groups per layer cost more ops than plain BN
    assert len(re.findall(r"^bf16 split-BN at mean/std (2|13): mean abs error", result.stdout, re.M)) == 2
