"""One optimisation step (:class:`StepRunner`: objective → backward → gradient average → SGD step →
enqueue, with no host synchronisation), its per-step cosine lr and its device-side loss meter. The
trainer runs it at every step; ``benchmarks/throughput.py``, ``op_count.py`` and ``amp_curve.py`` time it.
"""

from __future__ import annotations

import math
import random
from contextlib import nullcontext

import numpy as np
import torch

from clim.config import Config
from clim.specs import objective_spec
from clim.method.objective import StepOutput, compute_step
from clim.models.moco import MoCo
from clim.runtime import distributed


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cosine_lr(base_lr: float, step: int, total_steps: int, warmup_steps: int) -> float:
    """Per-step cosine schedule with optional linear warm-up (METHOD §1)."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class StepMeter:
    """The step losses on the device: every step adds its loss (and a non-finite flag, with the value
    and step of the first bad loss) to device scalars; :meth:`read` copies them to the host in one
    sync, which the trainer does every ``train.log_every`` steps and at each epoch's end. A non-finite
    loss therefore stops every rank within ``log_every`` steps (the weights after it are never saved)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        self.loss_sum, self.last, self.bad_value = zero.clone(), zero.clone(), zero.clone()
        self.images, self.lam = 0, None
        self.part_sums: dict[str, torch.Tensor] = {}
        self.part_last: dict[str, torch.Tensor] = {}
        self.bad = torch.zeros((), dtype=torch.bool, device=self.device)
        self.bad_step = torch.zeros((), dtype=torch.long, device=self.device)

    def add(self, loss: torch.Tensor, images: int, step: int, lam: torch.Tensor | None = None,
            parts: dict[str, torch.Tensor] | None = None) -> None:
        loss = loss.detach().to(torch.float64)
        first_bad = ~torch.isfinite(loss) & ~self.bad
        self.bad_value = torch.where(first_bad, loss, self.bad_value)
        self.bad_step = torch.where(first_bad, step, self.bad_step)
        self.bad = self.bad | first_bad
        self.loss_sum += loss * images
        self.images += images
        self.last = loss
        self.lam = None if lam is None else lam.detach()
        for name, value in (parts or {}).items():
            value = value.detach().to(torch.float64)
            self.part_sums[name] = self.part_sums.get(name, 0) + value * images
            self.part_last[name] = value

    def state(self) -> dict:
        """The running sums as plain numbers (a host sync), for a mid-epoch checkpoint."""
        return {"loss_sum": float(self.loss_sum), "images": self.images,
                "part_sums": {name: float(value) for name, value in self.part_sums.items()}}

    def load_state(self, state: dict) -> None:
        self.reset()
        self.loss_sum.fill_(state["loss_sum"])
        self.images = int(state["images"])
        self.part_sums = {name: torch.tensor(value, dtype=torch.float64, device=self.device)
                          for name, value in state["part_sums"].items()}

    def read(self) -> dict:
        """One host sync: ``loss_mean`` (since the last reset), ``loss`` (the latest step), ``lambda``,
        the loss's parts (``parts_mean``, ``parts``: loss_moco, loss_positive, ...), and, under DDP,
        whether any rank saw a non-finite loss (``bad``, with ``bad_value`` and ``bad_step`` of this
        rank's first one)."""
        names = sorted(self.part_sums)
        lam = self.lam.double().mean() if self.lam is not None else torch.zeros_like(self.last)
        values = torch.stack([self.loss_sum, self.last, self.bad.double(), self.bad_value, self.bad_step.double(),
                              lam, *(self.part_sums[n] for n in names),
                              *(self.part_last[n] for n in names)]).cpu().tolist()
        loss_sum, last, bad, bad_value, bad_step, lam_value = values[:6]
        sums, lasts = values[6:6 + len(names)], values[6 + len(names):]
        images = max(1, self.images)
        return {"loss_mean": loss_sum / images, "loss": last,
                "lambda": lam_value if self.lam is not None else None,
                "parts_mean": {n: v / images for n, v in zip(names, sums)}, "parts": dict(zip(names, lasts)),
                "bad": distributed.any_rank(bool(bad)), "bad_value": bad_value, "bad_step": int(bad_step)}


class StepRunner:
    """One optimisation step with the run's precision settings (bf16 autocast and channels_last on CUDA
    by default; float16 adds a GradScaler); the loss goes to a device-side :class:`StepMeter`.
    ``train.compile`` compiles both encoders with ``torch.compile`` (state_dict keys unchanged)."""

    def __init__(self, model: MoCo, config: Config, device: torch.device):
        on_cuda = device.type == "cuda"
        use_amp = on_cuda if config.train.amp is None else config.train.amp
        self.channels_last = on_cuda if config.train.channels_last is None else config.train.channels_last
        self.autocast = (torch.autocast(device_type=device.type, dtype=getattr(torch, config.train.amp_dtype))
                         if use_amp else nullcontext())
        # float16 needs loss scaling (older GPUs); bfloat16, the default, does not. GradScaler.step reads
        # its found-inf flag on the host (it skips the step on overflow): one sync per step with float16.
        self.scaler = torch.amp.GradScaler(device.type, enabled=use_amp and config.train.amp_dtype == "float16")
        if on_cuda:
            benchmark = config.train.cudnn_benchmark
            torch.backends.cudnn.benchmark = not config.train.deterministic if benchmark is None else benchmark
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        model.batch_views = on_cuda if config.train.batch_views is None else config.train.batch_views
        if config.train.compile:  # None (the default) = off until a GPU measurement says otherwise
            model.encoder_q.compile()
            model.encoder_k.compile()
        self.model, self.config, self.objective, self.meter = model, config, objective_spec(config), StepMeter(device)
        self.optimizer = torch.optim.SGD(model.encoder_q.parameters(), lr=config.lr, momentum=config.train.momentum,
                                         weight_decay=config.train.weight_decay)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def __call__(self, batch: dict, step: int = 0) -> StepOutput:
        if self.channels_last:
            batch = {k: ([v.contiguous(memory_format=torch.channels_last) for v in value]
                         if isinstance(value, list) else value) for k, value in batch.items()}
        with self.autocast:
            out = compute_step(self.model, batch, self.objective)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out.loss).backward()
        distributed.average_gradients(self.model.encoder_q.parameters())
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.model.enqueue(out.keys.float())
        self.meter.add(out.loss, len(batch["index"]) * distributed.world_size(), step, out.lam_mean, out.parts)
        return out
