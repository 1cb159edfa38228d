"""The value of one training step's loss, ``clim.method.objective.compute_step``, pinned against the
objective written out here (METHOD §3, §4; the module docstring of ``clim.method.objective``):

* MoCo v2 (and CLIM before its first refresh): ``L_nce(q, k)``;
* CLIM, ``mixing: none``: ``L_nce(q, k) + L_nce(q, k~)``;
* CLIM, ``cutmix`` / ``mixup``: ``L_nce(q, k) + λ·L_nce(q_mix, k) + (1−λ)·L_nce(q_mix, k~)``, with
  λ the anchor's share of the mixed query (exact pixel share for CutMix);
* several resolutions: the mean over ordered pairs (r, r′) of the above with queries at r and keys at
  r′; the mixed view is made once at the largest resolution and resized (bilinear, antialiased);
* keys come from the momentum encoder *after* its update (MoCo updates before encoding keys).

The encoders are fixed linear maps on a 4×4 average-pooled image, so the reference below needs
nothing from ``clim`` but the random box / λ draws of ``clim.method.mixing`` (replayed from a copy of the
step's generator). The mixed image those draws give is checked here to be a box paste (CutMix) or a
blend (Mixup), and λ is recomputed from its pixels, so a wrong λ weighting, a swapped key, a
missing term, a key encoded before the momentum update or a wrong α changes the value.
"""

import pytest
import torch
import torch.nn.functional as F

from clim.config import Config
from clim.method.mixing import cutmix, mixup
from clim.method.objective import compute_step
from clim.specs import objective_spec

B, C, D, K = 4, 3, 5, 7
POOL = 4
TAU = 0.3
MOMENTUM = 0.6
CUTMIX_ALPHA, MIXUP_ALPHA = 1.5, 1.0  # not the defaults: the step must read the config's α


class FixedEncoders:
    """The part of ``clim.models.moco.MoCo`` that ``compute_step`` uses, with linear encoders."""

    def __init__(self):
        g = torch.Generator().manual_seed(11)
        self.w_q = torch.randn(C * POOL * POOL, D, generator=g)
        self.w_k = torch.randn(C * POOL * POOL, D, generator=g)  # differs from w_q: the update matters
        self.queue = F.normalize(torch.randn(K, D, generator=g), dim=1)
        self.updates = 0

    def encode_query(self, x):
        return F.normalize(F.adaptive_avg_pool2d(x, POOL).flatten(1) @ self.w_q, dim=1)

    def encode_key(self, x):
        return F.normalize(F.adaptive_avg_pool2d(x, POOL).flatten(1) @ self.w_k, dim=1)

    def encode_queries(self, views):  # MoCo batches same-shaped views; one at a time is the same here
        return [self.encode_query(view) for view in views]

    def encode_keys(self, views):
        return [self.encode_key(view) for view in views]

    def momentum_update(self):
        self.updates += 1
        self.w_k = MOMENTUM * self.w_k + (1 - MOMENTUM) * self.w_q


# ------------------------------------------------------------------------------------------------
# The reference, in float64 with explicit exp / log
# ------------------------------------------------------------------------------------------------


def encode(x, w):
    feats = F.adaptive_avg_pool2d(x.double(), POOL).flatten(1) @ w.double()
    return feats / feats.norm(dim=1, keepdim=True)


def nce(q, k, queue):
    """Per sample: −log( exp(q·k/τ) / (exp(q·k/τ) + Σ_j exp(q·n_j/τ)) )."""
    pos = torch.exp((q * k).sum(dim=1) / TAU)
    neg = torch.exp(q @ queue.double().T / TAU).sum(dim=1)
    return -torch.log(pos / (pos + neg))


def resize(view, size):
    if view.shape[-1] == size:
        return view
    return F.interpolate(view, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def cutmix_share(mixed, anchor, positive):
    """λ from the pixels: the mixed image must be the anchor outside one box and the positive inside."""
    from_positive = (mixed == positive).all(dim=1)  # [B, H, W]
    assert bool(((mixed == anchor).all(dim=1) ^ from_positive).all())  # every pixel from exactly one
    for box in from_positive:
        if box.any():
            rows, cols = box.any(dim=1).nonzero(), box.any(dim=0).nonzero()
            y1, y2, x1, x2 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
            assert bool(box[y1:y2, x1:x2].all()) and int(box.sum()) == (y2 - y1) * (x2 - x1)
    return 1.0 - from_positive.double().flatten(1).mean(dim=1)


def mixup_share(mixed, anchor, positive):
    diff = (anchor - positive).double().flatten(1)
    lam = ((mixed - positive).double().flatten(1) * diff).sum(dim=1) / (diff * diff).sum(dim=1)
    blend = lam.view(-1, 1, 1, 1) * anchor.double() + (1 - lam.view(-1, 1, 1, 1)) * positive.double()
    torch.testing.assert_close(mixed.double(), blend, atol=1e-5, rtol=0)
    return lam


def reference(model, batch, method, mixing, generator_state):
    w_k = MOMENTUM * model.w_k + (1 - MOMENTUM) * model.w_q  # keys after the momentum update
    queries = [encode(v, model.w_q) for v in batch["query"]]
    keys = [encode(v, w_k) for v in batch["key"]]
    use_positives = method == "clim" and batch["positive_key"] is not None
    if use_positives:
        positive_keys = [encode(v, w_k) for v in batch["positive_key"]]
    if use_positives and mixing != "none":
        generator = torch.Generator().set_state(generator_state)
        anchor, positive = batch["query"][0], batch["positive_query"][0]
        if mixing == "cutmix":
            mixed, _ = cutmix(anchor, positive, CUTMIX_ALPHA, generator=generator)
            lam = cutmix_share(mixed, anchor, positive)
        else:
            mixed, _ = mixup(anchor, positive, MIXUP_ALPHA, generator=generator)
            lam = mixup_share(mixed, anchor, positive)
        assert bool(((lam > 0.05) & (lam < 0.95)).any())  # the λ weighting is exercised
        mixed_queries = [encode(resize(mixed, v.shape[-1]), model.w_q) for v in batch["query"]]
    pairs = []
    for r, q in enumerate(queries):
        for r_key, k in enumerate(keys):
            per_sample = nce(q, k, model.queue)
            if use_positives and mixing == "none":
                per_sample = per_sample + nce(q, positive_keys[r_key], model.queue)
            elif use_positives:
                per_sample = (per_sample + lam * nce(mixed_queries[r], k, model.queue)
                              + (1 - lam) * nce(mixed_queries[r], positive_keys[r_key], model.queue))
            pairs.append(per_sample.mean())
    return sum(pairs) / len(pairs), keys[0]


# ------------------------------------------------------------------------------------------------


def views(seed, sizes):
    """Distinct continuous pixel values (so CutMix's box can be read back), one crop at every size."""
    big = torch.rand(B, C, sizes[0], sizes[0], generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return [resize(big, s) for s in sizes]


def make_batch(sizes, with_positives=True):
    return {
        "index": torch.arange(B), "label": torch.zeros(B, dtype=torch.long),
        "query": views(1, sizes), "key": views(2, sizes),
        "positive_index": torch.arange(B) + B if with_positives else None,
        "positive_query": views(3, sizes) if with_positives else None,
        "positive_key": views(4, sizes) if with_positives else None,
        "small_crops": None,
        "generator": torch.Generator().manual_seed(5),
    }


def make_config(method, mixing):
    config = Config()
    for key, value in {"method.name": method, "method.mixing": mixing, "method.alpha": CUTMIX_ALPHA,
                       "method.mixup_alpha": MIXUP_ALPHA, "model.temperature": TAU}.items():
        config.set(key, value)
    return config


CASES = [("mocov2", "none"), ("clim", "none"), ("clim", "cutmix"), ("clim", "mixup")]


@pytest.mark.parametrize("sizes", [[8], [8, 6]], ids=["one-resolution", "two-resolutions"])
@pytest.mark.parametrize("method,mixing", CASES, ids=[f"{m}-{x}" for m, x in CASES])
def test_step_loss_matches_written_out_objective(method, mixing, sizes):
    model = FixedEncoders()
    batch = make_batch(sizes)
    expected, expected_keys = reference(model, batch, method, mixing, batch["generator"].get_state())
    out = compute_step(model, batch, objective_spec(make_config(method, mixing)))
    assert model.updates == 1
    assert out.loss.dtype == torch.float32 and out.loss.dim() == 0
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # only the anchor key at the largest resolution is enqueued
    torch.testing.assert_close(out.keys.double(), expected_keys, atol=1e-6, rtol=0)


@pytest.mark.parametrize("sizes", [[8], [8, 6]], ids=["one-resolution", "two-resolutions"])
def test_clim_before_first_refresh_is_mocov2(sizes):
    model = FixedEncoders()
    batch = make_batch(sizes, with_positives=False)
    expected, _ = reference(model, batch, "mocov2", "cutmix", None)
    out = compute_step(model, batch, objective_spec(make_config("clim", "cutmix")))
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_reference_tells_the_variants_apart():
    """The pinned values differ enough between variants that a swapped key or weight is caught."""
    batch = make_batch([8, 6])
    state = batch["generator"].get_state()
    values = {case: reference(FixedEncoders(), batch, *case, state)[0].item() for case in CASES}
    assert len({round(v, 4) for v in values.values()}) == len(CASES)
