"""Benchmark check: a training run killed inside an epoch and run again ends as if never interrupted.

Starts ``python -m clim pretrain --out DIR <args after -->`` twice at once on fresh folders: the
reference runs to the end; the other is killed (SIGKILL) as soon as it has saved a checkpoint inside
epoch ``--kill-epoch`` (pass a tiny ``train.checkpoint_every_minutes``), then its command is run
again and must resume from that step and finish. Prints how many model tensors, optimiser buffers
and per-epoch losses are bit-identical to the reference (all of them, with ``train.deterministic=true``,
where the device's kernels are deterministic), with the largest difference otherwise; the last line
is ``resume_check: identical`` or ``resume_check: DIFFERENT`` (exit code 1, also when a run fails).
Used by benchmarks/gpu_check.sh on CUDA:

    python benchmarks/resume_check.py --out /tmp/resume -- --preset mocov2-fmnist --set data.name=fmnist-mini \\
        --set train.epochs=2 --set train.deterministic=true --set train.checkpoint_every_minutes=0.000001
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from clim.runtime import checkpoint


def _partial_epoch(path: Path) -> int | None:
    """The epoch a checkpoint saved inside an epoch belongs to (None: none, or not readable yet)."""
    try:
        state = checkpoint.load(path)
    except (FileNotFoundError, checkpoint.CheckpointError):
        return None
    return state["epoch"] if "partial" in state else None


def _compare(name: str, mine: list[torch.Tensor], reference: list[torch.Tensor]) -> bool:
    same = sum(torch.equal(a, b) for a, b in zip(mine, reference))
    worst = max(((a.double() - b.double()).abs().max().item() for a, b in zip(mine, reference)
                 if a.is_floating_point() and a.numel()), default=0.0)
    print(f"{name}: {same} of {len(reference)} bit-identical (largest |difference| {worst:.3g})")
    return same == len(reference) == len(mine)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="work folder (emptied first)")
    parser.add_argument("--kill-epoch", type=int, default=1, help="0-based epoch to kill the run inside")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args(argv[:split])
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def command(folder: Path) -> list[str]:
        return [sys.executable, "-m", "clim", "pretrain", "--out", str(folder), *argv[split + 1:]]

    print("$ " + " ".join(command(out / "reference")), flush=True)
    with open(out / "reference.log", "w") as log, open(out / "killed.log", "w") as killed_log:
        reference = subprocess.Popen(command(out / "reference"), stdout=log, stderr=subprocess.STDOUT, env=env)
        victim = subprocess.Popen(command(out / "resumed"), stdout=killed_log, stderr=subprocess.STDOUT, env=env)
        ckpt, seen, started = out / "resumed" / checkpoint.CHECKPOINT_FILE, None, time.monotonic()
        while victim.poll() is None and time.monotonic() - started < args.timeout:
            stamp = ckpt.stat().st_mtime_ns if ckpt.exists() else None
            if stamp is not None and stamp != seen:
                seen = stamp
                epoch = _partial_epoch(ckpt)
                if epoch is not None and epoch >= args.kill_epoch:
                    victim.send_signal(signal.SIGKILL)
                    break
            time.sleep(0.02)
        code = victim.wait()
    if code != -signal.SIGKILL:
        print(f"the run ended (exit code {code}) before a checkpoint inside epoch {args.kill_epoch + 1} was seen: "
              f"lower train.checkpoint_every_minutes / train.log_every ({out / 'killed.log'})")
        print("resume_check: DIFFERENT")
        return 1
    state = checkpoint.load(ckpt)
    where = state["partial"]["ranks"][0]["pipeline"]["step"]
    print(f"killed inside epoch {state['epoch'] + 1}, its checkpoint at step {where}; running it again", flush=True)
    again = subprocess.run(command(out / "resumed"), capture_output=True, text=True, env=env)
    (out / "resumed.log").write_text(again.stdout + again.stderr)
    resumed = f"step {where} of" in again.stderr and "saved inside the epoch" in again.stderr
    print(f"resumed run: exit code {again.returncode}, resumed from that step: {resumed}")
    if reference.wait(timeout=args.timeout) != 0 or again.returncode != 0 or not resumed:
        print(f"reference exit code {reference.returncode}; logs in {out}")
        print("resume_check: DIFFERENT")
        return 1
    mine = checkpoint.load(ckpt)
    ref = checkpoint.load(out / "reference" / checkpoint.CHECKPOINT_FILE)
    keys = sorted(ref["model"])
    same = _compare("model tensors", [mine["model"][k] for k in keys], [ref["model"][k] for k in keys])
    buffers = [[s["momentum_buffer"] for s in run["optimizer"]["state"].values()] for run in (mine, ref)]
    same &= _compare("optimiser buffers", *buffers)
    losses = [[record["loss"] for record in run["history"]] for run in (mine, ref)]
    print(f"per-epoch losses: resumed {losses[0]}, reference {losses[1]}")
    same &= losses[0] == losses[1]
    print(f"resume_check: {'identical' if same else 'DIFFERENT'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
