"""Two CPU processes (gloo) under torchrun: a CLIM run end to end, and the distributed positives
refresh against the single-process one."""

import json
import runpy
import sys
from pathlib import Path

import torch

from clim.engine import checkpoint
from clim.evaluation.common import load_run

TORCHRUN = Path(sys.executable).parent / "torchrun"
LAUNCHER = ([str(TORCHRUN)] if TORCHRUN.exists() else [sys.executable, "-m", "torch.distributed.run"]) + \
    ["--standalone", "--nproc_per_node=2"]


def test_two_process_clim_run(run_clim, tiny_overrides, tmp_path):
    args = ["pretrain", "--preset", "demo-cpu", "--out", str(tmp_path)]
    for item in tiny_overrides("train.device=cpu", clim=True):
        args += ["--set", item]
    result = run_clim(args, launcher=LAUNCHER, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]  # rank 0 alone writes
    assert "positive_precision" in lines[1]["selection"] and "knn_top1" in lines[1]
    saved = checkpoint.load(tmp_path / "checkpoint.pt")
    assert saved["step"] == 2 * 2  # 256 images / (64 x 2 ranks) = 2 steps per epoch
    positives = saved["model"]["positives"]
    assert positives.shape == (256, 10) and bool((positives >= 0).all())
    run = load_run(tmp_path)
    assert run.epoch == 2 and run.model.queue.shape == (256, 128)


# Under torchrun: each rank embeds its shard (uneven: 255 digits), the refresh selects on rank 0 and
# broadcasts; every rank writes what it holds.
_REFRESH = """
import sys
import torch
from clim.config import load_config
from clim.data import build_dataset
from clim.data.arrays import ArrayDataset
from clim.data.transforms import eval_transform_for
from clim.engine import distributed
from clim.models.moco import build_moco
from clim.positives import embed_dataset, refresh_positives, selection_encoder

torch.set_num_threads(1)
runtime = distributed.setup("cpu")
config = load_config("demo-cpu", overrides=sys.argv[2:])
full = build_dataset("digits", None, "pretrain")
dataset = ArrayDataset(full.images[:255], full.labels[:255], full.info, eval_transform_for(full.info, 8))
torch.manual_seed(0)
model = build_moco(config, 1, 8, len(dataset))
features = embed_dataset(selection_encoder(model, config), dataset, 64, runtime.device)
diagnostics = refresh_positives(model, dataset, dataset.labels, config, 1, runtime.device)
torch.save({"features": features, "positives": model.positives.clone(), "diagnostics": diagnostics,
            "world": distributed.world_size()}, f"{sys.argv[1]}/rank{runtime.rank}.pt")
distributed.teardown()
"""


def test_distributed_refresh_matches_single_process(tmp_path, tiny_overrides, run_python, monkeypatch):
    script = tmp_path / "refresh.py"
    script.write_text(_REFRESH)
    overrides = tiny_overrides(clim=True)
    for name in ("ddp", "one"):
        (tmp_path / name).mkdir()
    ddp = run_python([script, tmp_path / "ddp", *overrides], launcher=LAUNCHER, log=tmp_path / "ddp.log")
    monkeypatch.setattr(sys, "argv", [str(script), str(tmp_path / "one"), *overrides])
    runpy.run_path(str(script), run_name="__main__")  # the same script, one process, meanwhile
    assert ddp.wait(timeout=300) == 0, (tmp_path / "ddp.log").read_text()[-4000:]

    one = torch.load(tmp_path / "one" / "rank0.pt")
    ranks = [torch.load(tmp_path / "ddp" / f"rank{r}.pt") for r in (0, 1)]
    assert one["world"] == 1 and all(r["world"] == 2 for r in ranks)
    assert one["features"].shape == (255, 128)
    for r in ranks:  # every image exactly once, in index order, on every rank
        assert torch.equal(r["features"], one["features"])
    assert bool((one["positives"] >= 0).all())
    assert torch.equal(ranks[0]["positives"], one["positives"])
    assert torch.equal(ranks[1]["positives"], one["positives"])  # broadcast from rank 0
    assert ranks[0]["diagnostics"]["positive_precision"] == one["diagnostics"]["positive_precision"]
