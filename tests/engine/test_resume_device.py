"""Resuming on a device that is not the CPU: the checkpoint is read onto the CPU and placed from there.

No GPU is needed: the resumed run trains on the ``meta`` device, which holds no data, the way a
CUDA run holds its tensors away from the host. Had the loader mapped the checkpoint to the training
device (``map_location=device``), the RNG states would arrive on it too, and ``torch.set_rng_state``
/ ``.numpy()`` reject them there (as they reject CUDA tensors). The resumed run has nothing left to
train, so only the resume itself runs: state placed by load_state_dict, generators restored.
"""

import numpy as np
import pytest
import torch

import clim.engine.trainer as trainer
from clim.runtime import checkpoint, distributed


@pytest.fixture
def saved_runs(small_digits, tiny_config, tmp_path, monkeypatch):
    """(folder with an epoch-end checkpoint, folder with one saved inside epoch 2) of one 2-epoch run."""
    inside = tmp_path / "inside"
    real_save = checkpoint.save_atomic

    def save_and_keep_the_first_partial(state, path):
        real_save(state, path)
        if "partial" in state and state["epoch"] == 1 and not inside.exists():
            real_save(state, inside / checkpoint.CHECKPOINT_FILE)

    monkeypatch.setattr(checkpoint, "save_atomic", save_and_keep_the_first_partial)
    config = tiny_config("train.knn_every=0", "train.log_every=1", "train.checkpoint_every_minutes=0.000001")
    trainer.pretrain(config, tmp_path / "done")
    monkeypatch.setattr(checkpoint, "save_atomic", real_save)
    return tmp_path / "done", inside


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter:UserWarning")
@pytest.mark.parametrize("which", ["epoch end", "inside an epoch"])
def test_resume_on_a_non_cpu_device_restores_the_saved_generators(which, saved_runs, tiny_config, monkeypatch):
    folder = saved_runs[0] if which == "epoch end" else saved_runs[1]
    saved = checkpoint.load(folder / checkpoint.CHECKPOINT_FILE)
    rng = saved["partial"]["ranks"][0]["rng"] if which == "inside an epoch" else saved["rng"]
    assert (which == "inside an epoch") == ("partial" in saved)
    meta = distributed.Runtime(0, 1, 0, torch.device("meta"))
    monkeypatch.setattr(trainer.distributed, "setup", lambda device: meta)
    torch.manual_seed(12345)  # anything but the saved state
    history = trainer.pretrain(tiny_config("train.knn_every=0", "train.epochs=1"), folder)
    assert len(history) == saved["epoch"]
    assert torch.equal(torch.get_rng_state(), rng["torch"])
    assert np.array_equal(np.random.get_state()[1], rng["numpy"]["keys"].numpy().astype(np.uint32))
