"""What machine a number was measured on (every benchmark and RESULTS.md prints it next to the
number), and how many torch threads a CPU run should take on it now."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info(device: torch.device | str = "cpu") -> dict:
    device = torch.device(device)
    info = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. under taskset or a cgroup)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def choose_torch_threads(cores: int | None = None, load: float | None = None) -> tuple[int, str]:
    """``(threads, line)``: the usable cores minus the busy ones (the 1-minute load average, rounded),
    at least 1, and a line saying so. A thread on a busy core makes every parallel op wait for it
    (``make demo`` on 2 cores beside one CPU-bound job: 29 min with 2 threads, 5.7 min alone)."""
    cores = usable_cores() if cores is None else cores
    if load is None:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    threads = max(1, min(cores, cores - round(load)))
    return threads, (f"torch threads: {threads} of {cores} usable core(s), load average {load:.1f} over the "
                     "last minute (set OMP_NUM_THREADS to choose)")
