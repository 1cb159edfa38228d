"""Benchmark: non-view aten ops of one training step, split-BN next to plain BN (a launch-overhead proxy).

On a GPU every aten op that is not a view is (at least) one kernel launch, so the op count of a
step is the part of its cost that no kernel speed-up removes. This script counts them with a
``TorchDispatchMode`` for one MoCo v2 and one CLIM step (CutMix, positives on) of the trainer's own
``StepRunner``, on **the CUDA code path run on any device**: channels-last, same-shaped views batched
into one pass, bf16 autocast. It prints, per method, the count with ``model.bn_splits=8`` and with
``bn_splits=1`` (plain BN, the reference) and their ratio, then the ops that differ most. (CLIM's
query and key views are batched, so even at ``bn_splits=1`` each view gets its own statistics through
the same grouped op: its ratio compares 8 groups with 1 per view; the count with plain
``F.batch_norm`` calls, one view per pass, is printed beside it.) ``--foreach`` gives SGD the
multi-tensor update it uses on CUDA (on CPU tensors torch loops over the parameters).

Last, the bf16 error of split-BN (channels-last, 8 groups, 2 chunks) at activation mean/std 2 and
13 against the exact per-group result (float64), next to rounding that exact result once to bf16.

    python benchmarks/op_count.py                         # ResNet-18, small stem, 32 px, batch 128, CPU
    python benchmarks/op_count.py --batch-size 32 --channels-last false --foreach
"""

from __future__ import annotations

import argparse
import collections
import datetime
import platform
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from clim.config import Config
from clim.data.arrays import ArrayDataset
from clim.data.pipeline import build_pipeline
from clim.data.registry import DatasetInfo
from clim.engine.step import StepRunner
from clim.method.positives import build_bank
from clim.models.grouped_norm import grouped_batch_norm
from clim.models.moco import SplitBatchNorm2d, build_moco
from clim.runtime.machine import cpu_model
from clim.specs import loader_spec, model_spec, selection_spec, view_spec


class OpCounter(TorchDispatchMode):
    """Counts every non-view aten op dispatched while active (ops called inside a kernel are not seen)."""

    def __init__(self):
        super().__init__()
        self.ops: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def random_dataset(n: int, size: int) -> ArrayDataset:
    """``n`` random 3-channel ``size`` px images (the op count does not depend on their content)."""
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    info = DatasetInfo("random", 10, 3, size, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    return ArrayDataset(images, torch.zeros(n, dtype=torch.long), info)


def step_config(method: str, bn_splits: int, args, **train) -> Config:
    """The step's config: ``args``' backbone (small stem), image size, batch size and device, the CUDA
    code path's precision settings (bf16 autocast, batched views; ``args.channels_last``) unless
    ``train`` overrides them, CutMix for CLIM."""
    config = Config()
    values = {
        "data.name": "random", "data.image_size": args.image_size, "model.backbone": args.backbone,
        "model.small_stem": True, "model.queue_size": 4096, "model.bn_splits": bn_splits,
        "train.batch_size": args.batch_size, "train.device": args.device, "train.amp": True,
        "train.channels_last": args.channels_last, "train.batch_views": True,
        "method.name": method, "method.mixing": "cutmix", "method.resolutions": None,
    }
    values.update({f"train.{key}": value for key, value in train.items()})
    for key, value in values.items():
        config.set(key, value)
    config.validate()
    return config


def step_ops(method: str, bn_splits: int, args, batch_views: bool = True) -> collections.Counter:
    """The ops of the second step (the first creates the optimiser state) of ``method``."""
    torch.manual_seed(0)
    size = args.image_size
    dataset = random_dataset(max(2 * args.batch_size, 64), size)  # two steps; CLIM's bank needs > k = 40
    config = step_config(method, bn_splits, args, batch_views=batch_views)
    device = torch.device(args.device)
    model = build_moco(model_spec(config, size), 3).to(device)
    bank = build_bank(selection_spec(config), len(dataset), device)
    table = None
    if bank is not None:  # any valid table: the step's ops do not depend on which positives it holds
        table = bank.table
        table.copy_((torch.arange(len(dataset))[:, None] + 1 + torch.arange(table.shape[1])) % len(dataset))
    runner = StepRunner(model, config, device)
    for group in runner.optimizer.param_groups:
        group["foreach"] = args.foreach or None
    batches = build_pipeline(dataset, view_spec(config, size), loader_spec(config), device).epoch(0, table)
    runner(next(batches), 0)
    batch = next(batches)
    with OpCounter() as counter:
        runner(batch, 1)
    return counter.ops


def bf16_error(mean_over_std: float) -> tuple[float, float]:
    """(split-BN's mean abs error on bf16 input, that of one rounding of the exact result to bf16)."""
    torch.manual_seed(1)
    x = ((torch.randn(64, 8, 8, 8) + mean_over_std) * 0.7).bfloat16().contiguous(memory_format=torch.channels_last)
    bn = SplitBatchNorm2d(8, num_splits=8, track_running_stats=False)
    bn.chunks = 2
    with torch.no_grad():
        out = bn(x).double()
        exact = grouped_batch_norm(x.double(), bn.double(), 8, 2)
    return float((out - exact).abs().mean()), float((exact.bfloat16().double() - exact).abs().mean())


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--channels-last", type=lambda v: v.lower() == "true", default=True,
                        help="true (the CUDA default) | false (the NCHW variant)")
    parser.add_argument("--splits", type=int, default=8)
    parser.add_argument("--foreach", action="store_true", help="SGD's multi-tensor update, as on CUDA")
    parser.add_argument("--top", type=int, default=8, help="how many of the most-changed ops to list")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    print(f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}; torch {torch.__version__}; "
          f"python {platform.python_version()}; device {args.device} ({cpu_model()})")
    print(f"{args.backbone}, small stem, {args.image_size} px, batch {args.batch_size}, bf16 autocast, "
          f"channels_last={args.channels_last}, batched views")
    for method in ("mocov2", "clim"):
        split, plain = step_ops(method, args.splits, args), step_ops(method, 1, args)
        total_split, total_plain = sum(split.values()), sum(plain.values())
        print(f"{method}: {total_split} ops with bn_splits={args.splits}, {total_plain} with bn_splits=1: "
              f"{total_split / total_plain:.2f}x")
        if method == "clim":
            unbatched = sum(step_ops(method, 1, args, batch_views=False).values())
            print(f"clim: {unbatched} ops with bn_splits=1 and one view per pass (plain F.batch_norm): "
                  f"bn_splits={args.splits} batched is {total_split / unbatched:.2f}x that")
        changed = sorted(set(split) | set(plain), key=lambda op: plain[op] - split[op])[:args.top]
        print("  most added: " + ", ".join(f"{op} {plain[op]}->{split[op]}" for op in changed))
    for mean_over_std in (2.0, 13.0):
        error, rounding = bf16_error(mean_over_std)
        print(f"bf16 split-BN at mean/std {mean_over_std:g}: mean abs error {error:.5f}, one bf16 rounding "
              f"{rounding:.5f}: {error / rounding:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
