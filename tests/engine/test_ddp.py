"""Two CPU processes (gloo) under torchrun: a CLIM run end to end, and the distributed positives
refresh against the single-process one."""

import json
import runpy
import sys
from pathlib import Path

import pytest
import torch

from clim.evaluation.common import load_run
from clim.runtime import checkpoint

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
    assert saved["step"] == 2 * 4  # 256 images / 64 (the global batch: 32 per rank) = 4 steps per epoch
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
from clim.method.bank import embed_dataset
from clim.method.positives import build_bank, refresh_positives, selection_encoder
from clim.models.moco import build_moco
from clim.runtime import distributed
from clim.specs import model_spec, selection_spec

torch.set_num_threads(1)
runtime = distributed.setup("cpu")
config = load_config("demo-cpu", overrides=sys.argv[2:])
full = build_dataset("digits", None, "pretrain")
dataset = ArrayDataset(full.images[:255], full.labels[:255], full.info, eval_transform_for(full.info, 8))
torch.manual_seed(0)
model = build_moco(model_spec(config, 8, runtime.world_size), 1)
bank = build_bank(selection_spec(config), len(dataset))
features, labels = embed_dataset(selection_encoder(model, selection_spec(config)), dataset, 64, runtime.device)
assert torch.equal(labels, dataset.labels)
diagnostics = refresh_positives(bank, model, dataset, selection_spec(config), 1, runtime.device)
torch.save({"features": features, "positives": bank.table.clone(), "diagnostics": diagnostics,
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


# Under torchrun or alone: one training step of MoCo v2 from the same initial weights, its gradients
# saved per rank. Shuffle-BN aside (randperm is the identity), views made deterministic (full-image
# crops, no flip / jitter / blur), so the only difference left is how the global batch is split.
_FIRST_STEP = """
import sys
import torch
from clim.config import load_config
from clim.data import build_dataset
from clim.data.pipeline import build_pipeline
from clim.engine.step import StepRunner
from clim.models.moco import build_moco
from clim.runtime import distributed
from clim.specs import loader_spec, model_spec, view_spec
from clim.summary import run_summary

torch.set_num_threads(1)
runtime = distributed.setup("cpu")
config = load_config("demo-cpu", overrides=sys.argv[2:])
dataset = build_dataset("digits", None, "pretrain")
torch.manual_seed(0)
model = build_moco(model_spec(config, 8, runtime.world_size), 1)
pipeline = build_pipeline(dataset, view_spec(config, 8), loader_spec(config, runtime.world_size), runtime.device,
                          runtime.rank)
runner = StepRunner(model, config, runtime.device)
batch = next(iter(pipeline.epoch(0)))
randperm = torch.randperm  # the one-process run executes inside pytest: put it back afterwards
torch.randperm = lambda n, **kwargs: torch.arange(n, device=kwargs.get("device"))
try:
    runner(batch, 0)
finally:
    torch.randperm = randperm
grads = {name: p.grad.clone() for name, p in model.encoder_q.named_parameters()}
splits = {m.num_splits for m in model.modules() if hasattr(m, "num_splits")}
torch.save({"grads": grads, "lr": config.lr, "index": batch["index"], "splits": splits,
            "summary": run_summary(config, runtime.world_size, sys.argv[1])}, f"{sys.argv[1]}/rank{runtime.rank}.pt")
distributed.teardown()
"""


def test_global_batch_two_processes_equal_one_process(tmp_path, tiny_overrides, run_python, monkeypatch):
    """train.batch_size is the global batch: two processes take 32 each, keep the lr of one process
    with 64, and (BN groups matched by model.bn_splits=2) give the same first-step gradients."""
    script = tmp_path / "first_step.py"
    script.write_text(_FIRST_STEP)
    overrides = tiny_overrides("train.batch_size=64", "model.bn_splits=2", "train.lr=null", "data.crop_min_scale=1.0",
                               "data.flip_p=0", "data.jitter_p=0", "data.grayscale_p=0", "data.blur_p=0")
    for name in ("ddp", "one"):
        (tmp_path / name).mkdir()
    ddp = run_python([script, tmp_path / "ddp", *overrides], launcher=LAUNCHER, log=tmp_path / "ddp.log")
    monkeypatch.setattr(sys, "argv", [str(script), str(tmp_path / "one"), *overrides])
    runpy.run_path(str(script), run_name="__main__")
    assert ddp.wait(timeout=300) == 0, (tmp_path / "ddp.log").read_text()[-4000:]

    one = torch.load(tmp_path / "one" / "rank0.pt")
    ranks = [torch.load(tmp_path / "ddp" / f"rank{r}.pt") for r in (0, 1)]
    assert len(one["index"]) == 64 and [len(r["index"]) for r in ranks] == [32, 32]
    assert torch.equal(torch.sort(torch.cat([r["index"] for r in ranks])).values, torch.sort(one["index"]).values)
    assert one["splits"] == {2} and all(r["splits"] == {1} for r in ranks)  # BN groups of 32 both ways
    assert one["lr"] == ranks[0]["lr"] == pytest.approx(0.03 * 64 / 256)
    assert "64 in all = 2 processes x 32" in ranks[0]["summary"] and "groups of 32" in one["summary"]
    for name, grad in one["grads"].items():
        for r in ranks:
            assert (r["grads"][name] - grad).abs().max() <= 1e-4 * grad.abs().max() + 1e-7, name
