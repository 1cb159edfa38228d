"""Benchmark check: the loss curve under bf16 autocast against float32 over the same training steps.

Trains the trainer's own ``StepRunner`` twice from the same initial weights on the same batches of
the embedded fmnist-mini images (the pipeline and the key shuffles draw from seeded generators):
once with bf16 autocast, once in float32, the layout and batching otherwise the same (channels-last
and batched views as on CUDA). Prints both losses every ``--every`` steps, then the largest relative
difference of their ``--every``-step means, and ``amp_curve: agree`` when it is within ``--tolerance``.

    python benchmarks/amp_curve.py --device cuda                 # 100 steps, ResNet-18, batch 256
    python benchmarks/amp_curve.py --steps 4 --every 2 --batch-size 16 --backbone resnet10   # CPU smoke run
"""

from __future__ import annotations

import argparse
import datetime
import sys

import torch

from clim.data import build_dataset
from clim.data.pipeline import build_pipeline
from clim.engine.step import StepRunner, cosine_lr
from clim.models.moco import build_moco
from clim.specs import loader_spec, model_spec, view_spec
from op_count import step_config


def losses(amp: bool, dataset, args) -> list[float]:
    config = step_config("mocov2", 8, args, amp=amp)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_moco(model_spec(config, args.image_size), dataset.info.in_channels).to(device)
    runner = StepRunner(model, config, device)
    pipeline = build_pipeline(dataset, view_spec(config, args.image_size), loader_spec(config), device)
    values, epoch = [], 0
    while len(values) < args.steps:
        for batch in pipeline.epoch(epoch):
            runner.set_lr(cosine_lr(config.lr, len(values), args.steps, 0))
            values.append(runner(batch, len(values)).loss.detach().float())
            if len(values) == args.steps:
                break
        epoch += 1
    return torch.stack(values).tolist()  # one host sync, at the end


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--tolerance", type=float, default=0.05, help="largest relative difference of the means")
    args = parser.parse_args(argv)
    args.channels_last, args.image_size = True, 28
    dataset = build_dataset("fmnist-mini", None, "pretrain")
    print(f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}; torch {torch.__version__}; "
          f"device {args.device}; {args.backbone}, small stem, fmnist-mini, batch {args.batch_size}, "
          f"{args.steps} steps, bn_splits 8")
    bf16, fp32 = losses(True, dataset, args), losses(False, dataset, args)
    print(f"{'steps':>9}{'fp32 loss':>12}{'bf16 loss':>12}{'rel. diff':>11}")
    worst = 0.0
    for start in range(0, args.steps, args.every):
        a = sum(fp32[start:start + args.every]) / len(fp32[start:start + args.every])
        b = sum(bf16[start:start + args.every]) / len(bf16[start:start + args.every])
        worst = max(worst, abs(b - a) / abs(a))
        print(f"{start + 1:>4}-{min(args.steps, start + args.every):<4}{a:>12.4f}{b:>12.4f}{abs(b - a) / abs(a):>11.4f}")
    verdict = "agree" if worst <= args.tolerance else "DISAGREE"
    print(f"amp_curve: {verdict} (largest relative difference of {args.every}-step means {worst:.4f}, "
          f"tolerance {args.tolerance})")
    return 0 if verdict == "agree" else 1


if __name__ == "__main__":
    sys.exit(main())
