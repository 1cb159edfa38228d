"""Benchmark: the trainer's own images/s, epoch by epoch, as ``clim pretrain`` reports them.

Runs ``python -m clim pretrain --out OUT <args after -->`` on a fresh OUT and prints, from OUT's
metrics.jsonl, each epoch's images/s and seconds (the first epoch includes warm-up: compare the
second). Used by benchmarks/gpu_check.sh next to lightly's example on the same data:

    python benchmarks/trainer_rate.py --out /tmp/fmnist -- --preset mocov2-fmnist \\
        --set train.batch_size=512 --set train.epochs=2 --set train.knn_every=0
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="run folder (emptied first)")
    args = parser.parse_args(argv[:split])
    pretrain_args = argv[split + 1:]
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "clim", "pretrain", "--out", str(out), *pretrain_args]
    print(f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print("$ " + " ".join(command), flush=True)
    code = subprocess.call(command, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    metrics = out / "metrics.jsonl"
    if not metrics.exists():
        print(f"no metrics.jsonl in {out} (exit code {code})")
        return code or 1
    for line in metrics.read_text().splitlines():
        record = json.loads(line)
        print(f"images/s of epoch {record['epoch']}: {record['images_per_s']:.0f} "
              f"({record['epoch_seconds']:.2f} s, loss {record['loss']:.4f})")
    return code


if __name__ == "__main__":
    sys.exit(main())
