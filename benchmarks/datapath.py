"""Benchmark: CPU cost per image of the file-dataset data paths (``data.augment=loader`` vs ``device``).

Everything runs in this one process (``data.num_workers=0``), so images/s here is images/s per CPU
core; a DataLoader with W workers on W free cores has about W times that much capacity. Measured,
interleaved, on a folder of random 256-512 px JPEGs (ImageNet-like, see throughput.py):

* ``loader``: the per-sample torchvision MoCo v2 transform (crop, jitter, grayscale, blur, flip,
  normalise) for two views, as the workers of ``data.augment=loader`` run it;
* ``device-workers``: what the workers of ``data.augment=device`` do per image: decode + two
  crop/flip views to uint8 (the photometric part runs batched on the GPU, not on these cores);
* ``device (all on CPU)``: the whole device path with the photometric part batched on the CPU.

    python benchmarks/datapath.py                 # 224 px, 384 JPEGs, 3 rounds
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from throughput import build_data, cpu_model, load_average, make_config, parse_args  # noqa: E402

from clim.data.pipeline import build_pipeline  # noqa: E402
from clim.data.views import SampleViews as CroppedViewsDataset  # noqa: E402
from clim.specs import loader_spec, view_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--n", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=4, help="timed batches per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--root", default=os.path.join(tempfile.gettempdir(), "clim-bench-jpegs-datapath"))
    mine = parser.parse_args()
    torch.set_num_threads(1)
    args = parse_args(["--device", "cpu", "--dataset", "jpeg-folder", "--root", mine.root, "--n", str(mine.n),
                       "--image-size", str(mine.image_size), "--batch-size", str(mine.batch_size)])
    dataset = build_data(args)
    print(f"machine: {cpu_model()} | {os.cpu_count()} logical CPUs | load average {load_average()} | "
          f"torch {torch.__version__} (1 thread)")
    print(f"data: {len(dataset)} random JPEGs 256-512 px -> {mine.image_size} px views, 2 views per image")

    def pipeline_rate(mode: str, round_index: int) -> float:
        args.augment = mode
        config = make_config(args, "mocov2")
        config.data.num_workers = 0
        batches = build_pipeline(dataset, view_spec(config, mine.image_size), loader_spec(config),
                                 torch.device("cpu")).epoch(round_index)
        next(batches)
        start, images = time.perf_counter(), 0
        for _ in range(mine.batches):
            images += len(next(batches)["index"])
        return images / (time.perf_counter() - start)

    def worker_rate(round_index: int) -> float:
        args.augment = "device"
        config = make_config(args, "mocov2")
        views = CroppedViewsDataset(dataset, view_spec(config, mine.image_size), config.train.seed)
        count = mine.batches * mine.batch_size
        offset = round_index * count % len(dataset)
        start = time.perf_counter()
        for i in range(count):
            views[(offset + i) % len(dataset)]
        return count / (time.perf_counter() - start)

    rates: dict[str, list[float]] = {"loader": [], "device-workers": [], "device (all on CPU)": []}
    for round_index in range(mine.rounds):
        rates["loader"].append(pipeline_rate("loader", round_index))
        rates["device-workers"].append(worker_rate(round_index))
        rates["device (all on CPU)"].append(pipeline_rate("device", round_index))
    print(f"{'path':<22}{'images/s per core (best)':>26}  rounds")
    for name, values in rates.items():
        print(f"{name:<22}{max(values):>26.1f}  " + " ".join(f"{v:.1f}" for v in values))
    print(f"worker CPU per image, loader / device: {max(rates['device-workers']) / max(rates['loader']):.2f}x")


if __name__ == "__main__":
    main()
