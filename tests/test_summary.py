"""The run summary printed before pretraining and the output list printed after it."""

import subprocess
import sys

from clim.config import load_config
from clim.summary import output_paths, run_summary


def _line(text, start):
    (line,) = [l for l in text.splitlines() if l.startswith(start)]
    return line


def test_summary_of_the_paper_recipe_on_eight_processes(tmp_path):
    config = load_config("clim-imagenet-r50", overrides=["data.root=/data/imagenet"])
    text = run_summary(config, world_size=8, out_dir=tmp_path / "run")
    assert "imagefolder at /data/imagenet" in _line(text, "data") and "224 px" in text
    assert "resnet50 (ImageNet stem)" in _line(text, "model") and "queue K 65536" in text
    method = _line(text, "method")
    assert "CLIM" in method and "center_wise" in method and "CutMix (alpha 2)" in method
    assert "resolutions [224, 160]" in method and "MoCo v2 for the first 5 epoch(s), positives from epoch 6 on" in method
    assert _line(text, "batch") == ("batch     512 in all = 8 processes x 64; BatchNorm: per-GPU BN, "
                                    "groups of 64 (shuffle-BN for keys)")
    # the same BN groups of 512 / bn_splits = 64 on two processes and on one
    two = _line(run_summary(config, world_size=2, out_dir=tmp_path), "batch")
    assert two == ("batch     512 in all = 2 processes x 256; BatchNorm: split-BN in 4 groups per process, "
                   "groups of 64 (shuffle-BN for keys)")
    assert _line(run_summary(config, world_size=1, out_dir=tmp_path), "batch") == \
        "batch     512, one process; split-BN in 8 groups: groups of 64"
    assert _line(text, "lr").startswith("lr        0.06, SGD momentum 0.9")  # the preset's lr
    assert _line(text, "output") == f"output    {(tmp_path / 'run').resolve()}"


def test_summary_single_process_split_bn_and_explicit_lr(tmp_path):
    config = load_config("demo-cpu", overrides=["train.batch_size=64", "model.bn_splits=4", "train.lr=0.01",
                                                "data.image_size=null"])
    text = run_summary(config, 1, "relative/run", data_info={"image_size": 28, "in_channels": 1,
                                                             "num_samples": 10000})
    assert _line(text, "batch") == "batch     64, one process; split-BN in 4 groups: groups of 16"
    assert _line(text, "lr").startswith("lr        0.01, SGD")  # no rule shown for an explicit lr
    assert "MoCo v2" in _line(text, "method")
    clim = run_summary(load_config("clim-demo-cpu"), 1, "x", data_info={"num_samples": 10000})
    assert "100 (N/100) clusters" in _line(clim, "method")
    assert "10000 images, 28 px, 1 channel(s)" in _line(text, "data")
    assert str((tmp_path.cwd() / "relative/run").resolve()) in _line(text, "output")


def test_summary_shows_the_lr_rule():
    config = load_config("demo-cpu", overrides=["train.batch_size=128", "train.lr=null"])
    assert _line(run_summary(config, 2, "x"), "lr").startswith("lr        0.015 (0.03 x 128/256), SGD")


def test_summary_names_a_batch_that_does_not_divide():
    config = load_config("demo-cpu", overrides=["train.batch_size=30", "model.bn_splits=4"])
    assert "model.bn_splits=4 does not divide the batch of 30 images per process" in run_summary(config, 1, "x")
    assert "train.batch_size=30 (the global batch) does not divide over 4 processes" in run_summary(config, 4, "x")


def test_output_paths_are_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = output_paths("run")
    assert text.splitlines()[0] == f"outputs in {tmp_path / 'run'}:"
    for name in ("checkpoint.pt", "metrics.jsonl", "tensorboard", "config.json"):
        assert f"  {tmp_path / 'run' / name}  (" in text
    assert f"clim eval knn --ckpt {tmp_path / 'run' / 'checkpoint.pt'}" in text


def test_summary_module_does_not_import_torch():
    code = "import sys, clim.summary; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def _warnings(text):
    return [line for line in text.splitlines() if line.startswith("warning")]


def test_no_warning_for_the_presets_as_shipped():
    assert _warnings(run_summary(load_config("clim-demo-cpu"), 1, "x", data_info={"num_samples": 10000})) == []
    assert _warnings(run_summary(load_config("clim-cifar10"), 1, "x", data_info={"num_samples": 50000})) == []


def test_a_clim_run_that_never_reaches_its_first_refresh_is_named():
    for epochs in (3, 5):  # positives join at epoch refresh_every + 1 = 6
        config = load_config("clim-cifar10", overrides=[f"train.epochs={epochs}"])
        (line,) = _warnings(run_summary(config, 1, "x", data_info={"num_samples": 50000}))
        assert f"train.epochs={epochs} <= method.refresh_every=5" in line and "plain MoCo v2" in line
        assert f"set method.refresh_every below {epochs}" in line
    one = load_config("clim-cifar10", overrides=["train.epochs=1", "method.refresh_every=1"])
    assert "train 2 epochs or more with method.refresh_every=1" in _warnings(run_summary(one, 1, "x"))[0]
    assert _warnings(run_summary(load_config("clim-cifar10", overrides=["train.epochs=6"]), 1, "x")) == []
    assert _warnings(run_summary(load_config("mocov2-cifar10", overrides=["train.epochs=3"]), 1, "x")) == []


def test_a_queue_as_large_as_the_dataset_is_named():
    config = load_config("demo-cpu", overrides=["model.queue_size=4096"])
    (line,) = _warnings(run_summary(config, 1, "x", data_info={"num_samples": 3000}))
    assert "model.queue_size=4096 >= the 3000 training images" in line and "their own keys" in line
    assert "below 3000, e.g. 1024" in line
    assert _warnings(run_summary(config, 1, "x", data_info={"num_samples": 4097})) == []
    assert _warnings(run_summary(config, 1, "x")) == []  # the dataset size unknown: nothing claimed


def test_an_evaluation_holdout_seen_in_pretraining_is_named(tmp_path):
    (tmp_path / "pets" / "cat").mkdir(parents=True)
    config = load_config("demo-cpu", overrides=["data.name=imagefolder", f"data.root={tmp_path / 'pets'}"])
    (line,) = _warnings(run_summary(config, 1, "x", data_info={"num_samples": 10000}))
    assert f"{tmp_path / 'pets'} has no val/ or test/ folder" in line and "data.val_fraction=0.2" in line
    assert "pretraining sees" in line and "add a val/ folder" in line
    (tmp_path / "pets" / "val").mkdir()
    assert _warnings(run_summary(config, 1, "x", data_info={"num_samples": 10000})) == []
