"""Benchmark: training throughput of clim's MoCo v2 and CLIM steps next to lightly's MoCo v2 recipe.

Three variants, on the same backbone (a torchvision ResNet from ``clim.models.backbones``), batch
size, images, device and process:

* ``ours-mocov2``: clim's real training step, exactly as ``clim/engine/trainer.py`` runs it:
  ``clim.data.pipeline.build_pipeline`` (``data.augment=auto``: batched augmentation on the device
  for array data) + the trainer's own ``StepRunner`` (objective, SGD step, enqueue), with the trainer's
  per-step lr update, channels-last / bf16-autocast defaults (CUDA only), finiteness check and
  ``loss.item()``.
* ``ours-clim``: the same with ``method.name=clim`` (CutMix, one resolution) and the positives
  table filled with random valid indices, so the positive path (draw, extra views, mixed query,
  positive keys) is active on every step.
* ``lightly``: lightly's MoCo v2 recipe (its PyTorch example): ``MoCoV2Transform`` on PIL images in
  a ``torch.utils.data.DataLoader`` (``--workers`` processes, persistent), ``MoCoProjectionHead``,
  ``NTXentLoss(memory_bank_size=(K, 128))``, ``update_momentum`` on backbone and head. The
  augmentation parameters (crop scale, jitter strength / p, grayscale p, blur p, flip p) and the
  normalisation are clim's, so both sides run the same recipe. Lightly gets the same precision
  settings as ours (``--lightly-precision same``: bf16 autocast + channels-last on CUDA, fp32 on
  CPU); ``fp32`` runs its example as published.

Every variant is warmed up (``--warmup`` steps; lightly additionally ``workers × prefetch`` steps,
so the batches its workers prefetched while idle are used up before the clock starts) and then
``--steps`` steps are timed (CUDA synchronised at both ends). With ``--rounds R`` the variants are
timed in turn R times in the same process (interleaved, for a shared machine); the best round is
reported. The last line is ``ratio_vs_lightly=<ours-mocov2 images/s / lightly images/s>``.

    python benchmarks/throughput.py --quick                      # CPU smoke run (< 3 min on 2 cores)
    python benchmarks/throughput.py --device cuda                # one GPU, cifar10-shaped random data
    python benchmarks/throughput.py --device cpu --steps 20 --rounds 3
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext

import torch
import yaml

from clim.config import Config
from clim.data import build_dataset
from clim.data.arrays import ArrayDataset
from clim.data.pipeline import build_pipeline, prefetched, resolve_augment
from clim.data.registry import DatasetInfo
from clim.engine.step import StepRunner, cosine_lr
from clim.config import uses_small_stem
from clim.models.backbones import build_backbone
from clim.models.moco import build_moco
from clim.runtime.machine import cpu_model
from clim.specs import loader_spec, model_spec, view_spec

VARIANTS = ("ours-mocov2", "ours-clim", "lightly")
LIGHTLY_PREFETCH = 2  # DataLoader's default prefetch_factor
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


# ------------------------------------------------------------------------------------------- setup


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def random_cifar10(n: int, seed: int = 0) -> ArrayDataset:
    """cifar10-shaped random uint8 images [n, 3, 32, 32]: no files needed (GPU runs)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (n,), generator=generator)
    return ArrayDataset(images, labels, DatasetInfo("cifar10-random", 10, 3, 32, CIFAR_MEAN, CIFAR_STD))


def _write_jpegs(job: tuple[str, int, int]) -> None:
    folder, start, stop = job
    from PIL import Image

    torch.set_num_threads(1)  # one writer process per core

    for i in range(start, stop):
        g = torch.Generator().manual_seed(i)
        height, width = (int(v) for v in torch.randint(256, 513, (2,), generator=g))
        # Smooth random content (upsampled coarse noise + fine noise) compresses like a photo.
        coarse = torch.randint(0, 256, (3, height // 16 + 1, width // 16 + 1), generator=g).float()
        image = torch.nn.functional.interpolate(coarse[None], size=(height, width), mode="bilinear")[0]
        image = (image + 12 * torch.randn(image.shape, generator=g)).clamp(0, 255).to(torch.uint8)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(f"{folder}/c{i % 10}/{i:06d}.jpg", quality=90)


def jpeg_folder(root: str, n: int, workers: int) -> str:
    """``root/c0..c9/*.jpg``: n random 256-512 px JPEGs (an ImageNet-like folder; made once, then reused)."""
    from concurrent.futures import ProcessPoolExecutor

    marker = os.path.join(root, f".complete-{n}")
    if not os.path.exists(marker):
        for c in range(10):
            os.makedirs(os.path.join(root, f"c{c}"), exist_ok=True)
        chunk = max(1, n // (4 * max(1, workers)))
        jobs = [(root, lo, min(n, lo + chunk)) for lo in range(0, n, chunk)]
        with ProcessPoolExecutor(max(1, workers)) as pool:
            list(pool.map(_write_jpegs, jobs))
        open(marker, "w").close()
    return root


def build_data(args):
    name, n = args.dataset, args.n
    if name == "cifar10-random":
        return random_cifar10(n or 50_000)
    if name == "jpeg-folder":
        root = args.root or os.path.join(tempfile.gettempdir(), "clim-bench-jpegs")
        return build_dataset("imagefolder", jpeg_folder(root, n or 4096, args.workers), "pretrain",
                             image_size=args.image_size or 224, verify=False)
    dataset = build_dataset(name, args.root, "pretrain", image_size=args.image_size)
    if n is not None and n < len(dataset) and hasattr(dataset, "images"):
        dataset = ArrayDataset(dataset.images[:n], dataset.labels[:n], dataset.info)
    return dataset


def make_config(args, method: str) -> Config:
    config = Config()
    values = {
        "data.name": args.dataset, "data.image_size": args.image_size, "data.augment": args.augment,
        "data.decode": args.decode,
        "data.num_workers": args.workers if args.augment in ("loader", "device") else 0,
        "model.backbone": args.backbone, "model.small_stem": args.small_stem,
        "model.queue_size": args.queue_size, "model.momentum": 0.99, "model.temperature": 0.2,
        "train.batch_size": args.batch_size, "train.epochs": 1000, "train.device": args.device,
        "method.name": method, "method.mixing": "cutmix", "method.resolutions": None,
    }
    for key, value in values.items():
        config.set(key, value)
    for item in args.overrides:
        key, _, value = item.partition("=")
        config.set(key.strip(), yaml.safe_load(value))
    config.validate()
    return config


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------- variants


class OursRunner:
    """clim's training step: the trainer's own ``StepRunner`` over the real pipeline."""

    prefetch = 0  # the batched pipeline augments synchronously, on demand

    def __init__(self, dataset, args, device: torch.device, method: str):
        self.config = config = make_config(args, method)
        image_size = args.image_size or dataset.info.image_size
        self.pipeline = build_pipeline(dataset, view_spec(config, image_size), loader_spec(config), device)
        model = build_moco(model_spec(config, image_size), dataset.info.in_channels).to(device)
        self.runner = StepRunner(model, config, device)
        self.device = device
        self.prefetch_batches = args.prefetch
        self.table = (random_positives(len(dataset), config.method.num_positives, seed=args.seed).to(device)
                      if method == "clim" else None)
        self.total_steps = config.train.epochs * len(self.pipeline)
        self.step_index = 0
        self.batches = self._batches()

    def _batches(self):
        epoch = 0
        while True:
            if self.prefetch_batches:
                yield from prefetched(self.pipeline.epoch(epoch, self.table), self.device)
            else:
                yield from self.pipeline.epoch(epoch, self.table)
            epoch += 1

    def step(self) -> int:
        batch = next(self.batches)
        self.runner.set_lr(cosine_lr(self.config.lr, self.step_index, self.total_steps, 0))
        self.runner(batch, self.step_index)
        self.step_index += 1
        if self.step_index % self.config.train.log_every == 0:
            self.runner.meter.read()  # the loss read and NaN check, as often as the trainer does them
        return len(batch["index"])


def random_positives(num_samples: int, num_positives: int, seed: int = 0) -> torch.Tensor:
    """A positives table of random valid indices (never the anchor itself), long [N, P]."""
    generator = torch.Generator().manual_seed(seed)
    offsets = torch.randint(1, num_samples, (num_samples, num_positives), generator=generator)
    return (torch.arange(num_samples)[:, None] + offsets) % num_samples


class LightlyRunner:
    """lightly's MoCo v2 recipe (its PyTorch example), written against lightly's public API."""

    def __init__(self, dataset, args, device: torch.device):
        from lightly.loss import NTXentLoss
        from lightly.models.modules import MoCoProjectionHead
        from lightly.models.utils import deactivate_requires_grad, update_momentum
        from lightly.transforms.moco_transform import MoCoV2Transform

        self.update_momentum = update_momentum
        config = make_config(args, "mocov2")
        self.config = config
        self.device = device
        info = dataset.info
        image_size = args.image_size or info.image_size
        on_cuda = device.type == "cuda"
        same = args.lightly_precision == "same"
        self.channels_last = on_cuda and same
        self.autocast = (torch.autocast(device_type="cuda", dtype=torch.bfloat16) if self.channels_last
                         else nullcontext())

        backbone, feature_dim = build_backbone(config.model.backbone, info.in_channels,
                                               uses_small_stem(image_size, config.model.small_stem))
        self.backbone = backbone
        self.head = MoCoProjectionHead(feature_dim, feature_dim, config.model.head_dim)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.head_momentum = copy.deepcopy(self.head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.head_momentum)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        for module in (self.backbone, self.head, self.backbone_momentum, self.head_momentum):
            module.to(device, memory_format=memory_format)
        self.criterion = NTXentLoss(temperature=config.model.temperature,
                                    memory_bank_size=(config.model.queue_size, config.model.head_dim)).to(device)
        params = list(self.backbone.parameters()) + list(self.head.parameters())
        self.optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.train.momentum,
                                         weight_decay=config.train.weight_decay)
        self.momentum = config.model.momentum

        strength = config.data.jitter_strength
        transform = MoCoV2Transform(
            input_size=image_size, cj_prob=config.data.jitter_p, cj_strength=1.0, cj_bright=strength,
            cj_contrast=strength, cj_sat=strength, cj_hue=strength / 4, min_scale=config.data.crop_min_scale,
            random_gray_scale=config.data.grayscale_p, gaussian_blur=config.data.blur_p,
            hf_prob=config.data.flip_p, normalize={"mean": list(info.mean), "std": list(info.std)})
        pil_dataset = copy.copy(dataset)  # the same images as PIL, through lightly's transform
        pil_dataset.transform = transform
        self.workers = args.workers
        self.prefetch = self.workers * LIGHTLY_PREFETCH
        self.loader = torch.utils.data.DataLoader(
            pil_dataset, batch_size=config.train.batch_size, shuffle=True, drop_last=True,
            num_workers=self.workers, persistent_workers=self.workers > 0, pin_memory=on_cuda,
            prefetch_factor=LIGHTLY_PREFETCH if self.workers > 0 else None,
            generator=torch.Generator().manual_seed(args.seed))
        self.batches = self._batches()

    def _batches(self):
        while True:
            yield from self.loader

    def step(self) -> int:
        (x_query, x_key), _, _ = next(self.batches)
        self.update_momentum(self.backbone, self.backbone_momentum, m=self.momentum)
        self.update_momentum(self.head, self.head_momentum, m=self.momentum)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        x_query = x_query.to(self.device, non_blocking=True).contiguous(memory_format=memory_format)
        x_key = x_key.to(self.device, non_blocking=True).contiguous(memory_format=memory_format)
        with self.autocast:
            query = self.head(self.backbone(x_query).flatten(start_dim=1))
            with torch.no_grad():
                key = self.head_momentum(self.backbone_momentum(x_key).flatten(start_dim=1)).detach()
            loss = self.criterion(query.float(), key.float())
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        loss.item()
        return len(x_query)


# ------------------------------------------------------------------------------------------- timing


def run_steps(runner, steps: int, device: torch.device) -> tuple[int, float]:
    sync(device)
    start = time.perf_counter()
    images = sum(runner.step() for _ in range(steps))
    sync(device)
    return images, time.perf_counter() - start


def report_host_syncs(runners: dict, device: torch.device, steps: int = 20) -> None:
    """Count the host synchronisations of ``steps`` steps of our variants (torch's sync debug mode),
    by the source line that caused them; the trainer's loss read is one every train.log_every steps."""
    import collections
    import warnings

    for name, runner in runners.items():
        if name == "lightly":
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                for _ in range(steps):
                    runner.step()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        places = collections.Counter(f"{os.path.relpath(w.filename)}:{w.lineno}" for w in caught
                                     if "synchroniz" in str(w.message))
        print(f"host syncs in {steps} steps of {name}: {sum(places.values())}"
              + "".join(f"\n    {count:4d}  {place}" for place, count in places.most_common(12)))
    sys.stdout.flush()


def profile_steps(runners: dict, device: torch.device, steps: int) -> None:
    """torch.profiler over ``steps`` steps of each of our variants: the top operators by device time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    for name, runner in runners.items():
        if name == "lightly":
            continue
        with profile(activities=activities) as prof:
            run_steps(runner, steps, device)
        print(f"profile of {steps} steps of {name} (top operators by {sort}):")
        print(prof.key_averages().table(sort_by=sort, row_limit=22, max_name_column_width=48))
    sys.stdout.flush()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--small-stem", default=None, type=lambda s: s.lower() in ("1", "true", "yes"),
                        help="true/false (default: the small stem at <= 64 px, as training does)")
    parser.add_argument("--image-size", type=int, default=None, help="default: the dataset's native size")
    parser.add_argument("--batch-size", type=int, default=None, help="default 256 (CPU 64, --quick 32)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round (default 50, CPU 10)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10, CPU 2)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="interleaved timing rounds, best one reported (default 1, --quick 2)")
    parser.add_argument("--dataset", default=None,
                        help="fmnist-mini (CPU default, embedded), cifar10-random (GPU default, random uint8 "
                             "32 px), jpeg-folder (random 256-512 px JPEGs written to --root, ImageNet-like), or "
                             "any clim dataset name (with --root)")
    parser.add_argument("--root", default=None, help="dataset root (jpeg-folder: where the JPEGs are written)")
    parser.add_argument("--n", type=int, default=None, help="use only the first N images")
    parser.add_argument("--workers", type=int, default=None, help="lightly's DataLoader workers (default: all cores)")
    parser.add_argument("--queue-size", type=int, default=4096)
    parser.add_argument("--augment", default="auto", choices=("auto", "batched", "loader", "device"),
                        help="clim's data.augment for our variants (loader/device use --workers workers)")
    parser.add_argument("--decode", default="auto", choices=("auto", "cpu", "gpu"),
                        help="clim's data.decode with --augment device: gpu = workers read bytes, batched nvJPEG "
                             "decode + crops on the GPU; auto = gpu for image folders on CUDA")
    parser.add_argument("--lightly-precision", default="same", choices=("same", "fp32"),
                        help="same: lightly also gets bf16 autocast + channels-last on CUDA")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads in the main process (default: torch's; --quick: 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prefetch", default=True, type=lambda s: s.lower() in ("1", "true", "yes"),
                        help="ours: make the next batch while the step runs (side CUDA stream), as the "
                             "trainer does (default true)")
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="after timing, torch.profiler over STEPS steps of our variants (top operators)")
    parser.add_argument("--sync-debug", action="store_true",
                        help="CUDA: before timing, count the host synchronisations of 20 steps by source line")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="ours: any config override, e.g. train.compile=true or model.bn_splits=1 (repeatable)")
    parser.add_argument("--quick", action="store_true",
                        help="small CPU run, < 3 min on 2 shared cores: fmnist-mini, ImageNet stem, batch 32, "
                             "2 rounds of 6 steps after 1 warm-up, 1 torch thread; options still override")
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() and not args.quick else "cpu"
    on_cpu = args.device == "cpu"
    defaults = dict(
        dataset="fmnist-mini" if on_cpu else "cifar10-random",
        batch_size=32 if args.quick else (64 if on_cpu else 256),
        steps=6 if args.quick else (10 if on_cpu else 50),
        warmup=1 if args.quick else (2 if on_cpu else 10),
        rounds=2 if args.quick else 1,
        workers=usable_cores(),
    )
    if args.quick:
        # One thread: two threads on two cores shared with other work stall at every barrier; it
        # favours lightly if anything (its DataLoader workers still get the other core).
        defaults.update(threads=1, small_stem=False)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}")
    return args


def lightly_version() -> str | None:
    try:
        import lightly
    except ImportError:
        return None
    return lightly.__version__


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    lightly = lightly_version()
    if "lightly" in args.variants and lightly is None:
        print("lightly is not installed (pip install -e '.[bench]'): skipping the lightly variant")
        args.variants.remove("lightly")

    dataset = build_data(args)
    image_size = args.image_size or dataset.info.image_size
    small = uses_small_stem(image_size, args.small_stem)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none"
    print(f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"machine: {cpu_model()} | {os.cpu_count()} logical CPUs ({usable_cores()} usable) | "
          f"load average {load_average()} | python {platform.python_version()}")
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads) | device {device} (GPU: {gpu}) | "
          f"lightly {lightly or 'not installed'}")
    print(f"setup: {args.backbone} ({'small' if small else 'ImageNet'} stem) | {args.dataset} "
          f"N={len(dataset)} {dataset.info.in_channels}x{image_size}px | batch {args.batch_size} | "
          f"queue {args.queue_size} | {args.steps} timed steps x {args.rounds} round(s) after {args.warmup} warm-up | "
          f"lightly: {args.workers} DataLoader workers, precision {args.lightly_precision}")
    ours_mode = resolve_augment(make_config(args, "mocov2").data.augment, dataset, device)
    print(f"ours: prefetch={args.prefetch} overrides={args.overrides or 'none'}")
    print(f"ours: data.augment={args.augment} -> {ours_mode}"
          + (f" ({args.workers} DataLoader workers)" if ours_mode in ("loader", "device") else ""))
    sys.stdout.flush()

    runners = {}
    for name in args.variants:
        started = time.perf_counter()
        if name == "lightly":
            runners[name] = LightlyRunner(dataset, args, device)
        else:
            runners[name] = OursRunner(dataset, args, device, "clim" if name == "ours-clim" else "mocov2")
        run_steps(runners[name], args.warmup + runners[name].prefetch, device)
        print(f"  {name}: set-up + {args.warmup + runners[name].prefetch} warm-up steps "
              f"{time.perf_counter() - started:.1f} s")
        sys.stdout.flush()

    if args.sync_debug and device.type == "cuda":
        report_host_syncs(runners, device)
    if args.profile:
        profile_steps(runners, device, args.profile)

    rates: dict[str, list[float]] = {name: [] for name in runners}
    for round_index in range(args.rounds):
        for name, runner in runners.items():
            if round_index > 0 and runner.prefetch:
                run_steps(runner, runner.prefetch, device)  # batches prefetched while the others ran
            images, seconds = run_steps(runner, args.steps, device)
            rates[name].append(images / seconds)
    best = {name: max(values) for name, values in rates.items()}
    print(f"{'variant':<14}{'images/s (best)':>17}{'median':>10}  rounds")
    for name, values in rates.items():
        rounds = " ".join(f"{v:.1f}" for v in values)
        print(f"{name:<14}{best[name]:>17.1f}{statistics.median(values):>10.1f}  {rounds}")
    if "ours-mocov2" in best and "ours-clim" in best:
        print(f"ours-clim epoch time / ours-mocov2 epoch time: {best['ours-mocov2'] / best['ours-clim']:.2f} "
              f"(target <= 2.2)")
    if "ours-mocov2" in best and "lightly" in best:
        print(f"ratio_vs_lightly={best['ours-mocov2'] / best['lightly']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
