"""Shared fixtures: a tiny-config factory, a digits subset for fast runs, a `clim` runner for subprocesses.

The suite runs on a few shared CPU cores: one intra-op thread per process (set before torch and
faiss load) is several times faster there than two threads fighting over loaded cores.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
# Image-folder verification indexes (clim.data.imagefolder) go to a throw-away cache, not the user's.
if "CLIM_CACHE" not in os.environ:
    import tempfile

    os.environ["CLIM_CACHE"] = tempfile.mkdtemp(prefix="clim-test-cache-")

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from clim.config import load_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# Every run: digits (8x8, 1 channel), resnet10 with the small stem, batch 64, queue 256, kNN each epoch.
TINY = ["data.name=digits", "data.image_size=null", "data.num_workers=0", "model.backbone=resnet10",
        "model.small_stem=true", "model.queue_size=256", "train.batch_size=64", "train.knn_every=1",
        "train.epochs=2", "train.lr=0.06", "train.log_every=1000"]
# CLIM with a refresh before epoch 2 (refresh_every 1), so a 2-epoch run trains with positives.
CLIM = ["method.name=clim", "method.refresh_every=1", "method.num_clusters=4"]

# digits has 1,437 pretrain/train and 360 test images; runs use a prefix of each split so that an
# epoch is 4 steps of 64: the real data through the real registry, just fewer images.
SUBSET = {"pretrain": 256, "train": 256, "test": 128}
_SUBSET_CODE = f"""
from clim.data import registry as _registry
from clim.data.arrays import ArrayDataset as _ArrayDataset

def digits_subset(name, root=None, split="pretrain", transform=None, image_size=None, **kwargs):
    dataset = _registry.build_dataset(name, root, split, transform, image_size, **kwargs)
    if name != "digits":
        return dataset
    n = {SUBSET!r}[split]
    return _ArrayDataset(dataset.images[:n], dataset.labels[:n], dataset.info, transform, dataset.classes)
"""
exec(_SUBSET_CODE)  # defines digits_subset here; the same code goes into the subprocess script below

# `python -m clim` on the digits subset: the CLI's own main() in a fresh process (torchrun-able).
_SCRIPT = f"""import sys
import clim.data
{_SUBSET_CODE}
clim.data.build_dataset = digits_subset  # before clim.engine.trainer imports it
from clim.cli import main
sys.exit(main())
"""


@pytest.fixture(scope="session")
def tiny_config():
    """``tiny_config(*overrides, clim=False, preset="demo-cpu")`` -> a validated Config."""
    def make(*extra: str, clim: bool = False, preset: str = "demo-cpu"):
        return load_config(preset, overrides=TINY + (CLIM if clim else []) + list(extra))
    return make


@pytest.fixture(scope="session")
def tiny_overrides():
    """``tiny_overrides(*extra, clim=False)`` -> the ``--set`` values of a tiny run."""
    return lambda *extra, clim=False: TINY + (CLIM if clim else []) + list(extra)


@pytest.fixture(scope="session")
def subset_builder():
    """``build_dataset`` returning the digits subset (for module-scoped monkeypatching)."""
    return digits_subset


@pytest.fixture
def small_digits(monkeypatch):
    """The trainer (and its kNN monitor) see the digits subset; returns the subset sizes."""
    monkeypatch.setattr("clim.engine.trainer.build_dataset", digits_subset)
    return dict(SUBSET)


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


@pytest.fixture(scope="session")
def clim_script(tmp_path_factory) -> Path:
    """A script equivalent to `python -m clim`, on the digits subset."""
    path = tmp_path_factory.mktemp("bin") / "clim_small.py"
    path.write_text(_SCRIPT)
    return path


def _run(command: list[str], log: Path | None, timeout: float):
    if log is not None:  # started in the background, output into ``log``
        with open(log, "w") as handle:
            return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=_env(), cwd=REPO)
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=_env(), cwd=REPO)


@pytest.fixture(scope="session")
def run_clim(clim_script):
    """``run_clim(args, small=True, launcher=None, log=None)``: `python -m clim ARGS` in a subprocess (the
    digits-subset script when ``small``); a CompletedProcess, or a running Popen writing to ``log``."""
    def run(args, small: bool = True, launcher: list[str] | None = None, log: Path | None = None,
            timeout: float = 300):
        command = (launcher or [sys.executable]) + ([str(clim_script)] if small else ["-m", "clim"]) + list(args)
        return _run(command, log, timeout)
    return run


@pytest.fixture
def run_python():
    """``run_python(args, launcher=None, log=None)``: ``python ARGS`` (or ``LAUNCHER ARGS``) like run_clim."""
    def run(args, launcher: list[str] | None = None, log: Path | None = None, timeout: float = 300):
        return _run((launcher or [sys.executable]) + [str(a) for a in args], log, timeout)
    return run


@pytest.fixture(scope="session")
def load_script():
    """``load_script("scripts/NAME.py")`` -> the script imported as a module (its ``main`` not run)."""
    import importlib.util

    def load(relative: str):
        path = Path(__file__).resolve().parents[1] / relative
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load
