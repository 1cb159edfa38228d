"""train.compile: the encoders go through torch.compile without graph breaks and compute the same step.

Inductor's code generation takes minutes on this 2-core CPU, so the test swaps in dynamo's "eager"
backend: it traces the model exactly as a real compile does (graph breaks included) and runs the
captured graphs with eager kernels.
"""

import functools

import torch

from clim.data import build_dataset
from clim.data.pipeline import build_pipeline
from clim.engine.step import StepRunner
from clim.models.moco import build_moco
from clim.specs import loader_spec, model_spec, view_spec


def test_compiled_encoders_trace_whole_and_give_the_same_step(tiny_config, monkeypatch):
    import torch._dynamo
    from torch._dynamo.utils import counters

    config = tiny_config("train.compile=true", "model.bn_splits=2", "train.batch_size=16", clim=True)
    dataset = build_dataset("digits", None, "pretrain")
    pipeline = build_pipeline(dataset, view_spec(config, 8), loader_spec(config), torch.device("cpu"))
    batch = next(iter(pipeline.epoch(0)))

    def step(compiled: bool):
        torch.manual_seed(0)
        config.train.compile = compiled
        model = build_moco(model_spec(config, 8), 1)
        runner = StepRunner(model, config, torch.device("cpu"))
        torch.manual_seed(1)
        out = runner(batch, 0)
        return out.loss.detach(), [p.detach().clone() for p in model.encoder_q.parameters()]

    plain_loss, plain_params = step(False)
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    torch._dynamo.reset()
    counters.clear()
    compiled_loss, compiled_params = step(True)
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] >= 2  # the query encoder (with grad) and the key encoder
    torch.testing.assert_close(compiled_loss, plain_loss, rtol=1e-5, atol=1e-6)
    for a, b in zip(compiled_params, plain_params):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
