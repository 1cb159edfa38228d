"""The Python API (``import clim``) refuses misuse in one sentence, and accepts lists and numpy arrays
where it takes labels or indices.

MISUSE is the table of cases: (case, call, expected exception type, a fragment of the message). Each
call gets the fixture ``api`` (a filled bank, its features and labels, small tensors).
"""

from __future__ import annotations

import importlib
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import clim

N, D, P, K, B = 60, 8, 4, 8, 6


class Items(torch.utils.data.Dataset):
    """N items made by ``make(i)``."""

    def __init__(self, make, n=N):
        self.make, self.n = make, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.make(i)


def _pil(i):
    from PIL import Image
    return Image.new("RGB", (4, 4))


@pytest.fixture(scope="module")
def api():
    g = torch.Generator().manual_seed(0)
    features = F.normalize(torch.randn(N, D, generator=g), dim=1)
    labels = torch.arange(N) % 3
    bank = clim.PositiveBank(N, num_positives=P, k=K, num_clusters=4)
    bank.refresh(features, labels, seed=0)
    images = torch.rand(B, 3, 8, 8, generator=g)
    q = torch.randn(B, D, generator=g)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(3 * 2 * 2, D))
    return SimpleNamespace(bank=bank, features=features, labels=labels, images=images, q=q, encoder=encoder,
                           image=lambda i: torch.full((3, 2, 2), float(i)))


MISUSE = [
    # PositiveBank.sample
    ("sample a negative index", lambda a: a.bank.sample(torch.tensor([3, -1])), IndexError, "in [0, 60)"),
    ("sample an index past the end", lambda a: a.bank.sample([0, 60]), IndexError, "got values from 0 to 60"),
    ("sample a 2-D index", lambda a: a.bank.sample([[1, 2]]), TypeError, "1-D tensor of integer dataset indices"),
    ("sample float indices", lambda a: a.bank.sample(torch.tensor([1.0])), TypeError, "got dtype torch.float32"),
    ("sample a string", lambda a: a.bank.sample("abc"), TypeError,
     "index must be a tensor, a list or a numpy array, got str"),
    ("sample an empty bank", lambda a: clim.PositiveBank(N, P, k=K).sample([1]), RuntimeError,
     "the PositiveBank is empty"),
    # PositiveBank.refresh / selection_diagnostics
    ("refresh with too few labels", lambda a: a.bank.refresh(a.features, [0, 1, 2]), ValueError,
     "labels must be [num_samples] = [60], one per image, got shape (3,)"),
    ("refresh with float labels", lambda a: a.bank.refresh(a.features, np.full(N, 0.5)), TypeError,
     "labels must be integers"),
    ("refresh with string labels", lambda a: a.bank.refresh(a.features, "cat"), TypeError,
     "labels must be a tensor, a list or a numpy array, got str"),
    ("refresh with features of another N", lambda a: a.bank.refresh(a.features[:10]), ValueError,
     "features must be [num_samples=60, d], got (10, 8)"),
    ("diagnostics with labels of another N",
     lambda a: clim.selection_diagnostics(clim.select_positives(a.features, k=K, num_positives=P), [1, 2]),
     ValueError, "labels must be [N] = [60]"),
    # PositiveBank.refresh_from: the dataset's items
    ("refresh_from dict items", lambda a: a.bank.refresh_from(a.encoder, Items(lambda i: {"image": a.image(i)})),
     TypeError, "dataset items must be (image, index, label), (image, label), (image,) or a bare image, with image "
                "a tensor (such as [C, H, W]) and label an int (−1 = unknown), but item 0 is a dict"),
    ("refresh_from PIL images", lambda a: a.bank.refresh_from(a.encoder, Items(lambda i: (_pil(i), 0))), TypeError,
     "item 0's image is a PIL image (give the dataset a transform ending in torchvision's ToTensor())"),
    ("refresh_from string labels", lambda a: a.bank.refresh_from(a.encoder, Items(lambda i: (a.image(i), "cat"))),
     TypeError, "item 0's label (its last part) is a str"),
    ("refresh_from too many parts", lambda a: a.bank.refresh_from(a.encoder, Items(lambda i: (a.image(i),) * 4)),
     TypeError, "item 0 has 4 parts"),
    ("refresh_from a dataset of another size", lambda a: a.bank.refresh_from(a.encoder, Items(a.image, n=10)),
     ValueError, "the dataset has 10 items but the bank was built for num_samples=60"),
    # cutmix / mixup
    ("cutmix a single image", lambda a: clim.cutmix(a.images[0], a.images[1]), ValueError,
     "cutmix needs images [B, C, H, W], got anchor of shape (3, 8, 8)"),
    ("cutmix mismatched shapes", lambda a: clim.cutmix(a.images, a.images[:, :, :4, :4]), ValueError,
     "anchor (6, 3, 8, 8), positive (6, 3, 4, 4)"),
    ("cutmix fewer positives", lambda a: clim.cutmix(a.images, a.images[:2]), ValueError,
     "anchor (6, 3, 8, 8), positive (2, 3, 8, 8)"),
    ("cutmix a list", lambda a: clim.cutmix(a.images, a.images.tolist()), TypeError,
     "cutmix needs positive as a tensor, got list"),
    ("mixup mismatched shapes", lambda a: clim.mixup(a.images, a.images[:3]), ValueError,
     "mixup needs one positive per anchor, of the anchor's shape: anchor (6, 3, 8, 8), positive (3, 3, 8, 8)"),
    ("mixup integer images", lambda a: clim.mixup(a.images.byte(), a.images.byte()), TypeError,
     "mixup needs floating-point images"),
    # losses
    ("mixed loss with lam of another length", lambda a: clim.mixed_info_nce(a.q, a.q, a.q, lam=torch.rand(3)),
     ValueError, "[B] = [6] for queries of shape (6, 8), got lam of shape (3,)"),
    ("mixed loss without lam", lambda a: clim.mixed_info_nce(a.q, a.q, a.q), TypeError, "mixed_info_nce needs lam"),
    ("keys of another shape", lambda a: clim.info_nce(a.q, a.q[:3]), ValueError,
     "keys must have the queries' shape (6, 8), got (3, 8)"),
    ("queries as a list", lambda a: clim.info_nce(a.q.tolist(), a.q), TypeError, "queries must be a tensor, got list"),
    ("queue as (d, K)", lambda a: clim.info_nce(a.q, a.q, torch.randn(D, 32)), ValueError, "pass bank.T"),
    ("in-batch negatives with one query", lambda a: clim.info_nce(a.q[:1], a.q[:1]), ValueError,
     "need a batch of at least 2"),
    # constructor
    ("unknown strategy", lambda a: clim.PositiveBank(N, strategy="nearest"), ValueError,
     "valid strategies: random, knn, kmeans, knn_kmeans, center_wise"),
]


@pytest.mark.parametrize("call, error, fragment", [row[1:] for row in MISUSE], ids=[row[0] for row in MISUSE])
def test_misuse_is_refused_in_one_sentence(api, call, error, fragment):
    with pytest.raises(error, match=re.escape(fragment)) as caught:
        call(api)
    message = str(caught.value).strip("'")
    assert "\n" not in message and message.count(". ") == 0, message  # one sentence


def test_the_bank_survives_refused_calls(api):
    assert api.bank.filled and bool((api.bank.table >= 0).all())


@pytest.mark.parametrize("as_given", [list, np.asarray, lambda t: np.asarray(t, dtype=np.int32)],
                         ids=["list", "numpy", "numpy-int32"])
def test_sample_accepts_lists_and_numpy_like_a_tensor(api, as_given):
    index = torch.tensor([0, 5, 59, 5])
    expected = api.bank.sample(index, torch.Generator().manual_seed(1))
    got = api.bank.sample(as_given(index.tolist()), torch.Generator().manual_seed(1))
    assert got.dtype == torch.long and torch.equal(got, expected)


def test_sample_checks_a_cpu_index_by_default_and_check_false_skips_it(api, monkeypatch):
    reads = []
    original = torch.Tensor.min
    monkeypatch.setattr(torch.Tensor, "min", lambda self, *args: reads.append(1) or original(self, *args))
    api.bank.sample(torch.tensor([1, 2]))
    assert reads == [1]  # the range of a CPU index is read (free: no device to wait for)
    api.bank.sample(torch.tensor([1, 2]), check=False)
    assert reads == [1]  # not read with check=False (what an index on a GPU gets by default)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_sample_on_the_gpu_has_no_host_sync_by_default(api):
    bank = clim.PositiveBank(N, P, k=K, num_clusters=4).cuda()
    bank.refresh(api.features.cuda(), seed=0)
    index = torch.tensor([0, 1, 2], device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        positive = bank.sample(index)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert positive.device.type == "cuda" and positive.shape == (3,)
    with pytest.raises(IndexError, match=re.escape("in [0, 60)")):
        bank.sample(torch.tensor([-1], device="cuda"), check=True)  # asked for: one sync, then refused


@pytest.mark.parametrize("as_given", [list, np.asarray], ids=["list", "numpy"])
def test_labels_as_list_or_numpy_give_the_tensors_diagnostics(api, as_given):
    expected = clim.PositiveBank(N, P, k=K, num_clusters=4).refresh(api.features, api.labels, seed=2)
    got = clim.PositiveBank(N, P, k=K, num_clusters=4).refresh(api.features, as_given(api.labels.tolist()), seed=2)
    expected.pop("seconds"), got.pop("seconds")
    assert got == expected and "positive_precision" in got
    result = clim.select_positives(api.features, k=K, num_positives=P)
    assert (clim.selection_diagnostics(result, as_given(api.labels.tolist()))
            == clim.selection_diagnostics(result, api.labels))


def test_features_as_numpy_give_the_same_table(api):
    a, b = (clim.PositiveBank(N, P, k=K, num_clusters=4) for _ in range(2))
    a.refresh(api.features, seed=3)
    b.refresh(api.features.numpy(), seed=3)
    assert torch.equal(a.table, b.table)


@pytest.mark.parametrize("item", [
    lambda a, i: (a.image(i), i, int(a.labels[i])),  # this package's datasets
    lambda a, i: (a.image(i), int(a.labels[i])),  # torchvision's
    lambda a, i: [a.image(i), np.int64(a.labels[i])],  # a list, a numpy label
    lambda a, i: (a.image(i), a.labels[i]),  # a 0-d tensor label
    lambda a, i: (a.image(i),),
    lambda a, i: a.image(i),
], ids=["image-index-label", "image-label", "list-numpy-label", "tensor-label", "image-tuple", "bare-image"])
def test_refresh_from_accepts_the_documented_item_formats(api, item):
    bank = clim.PositiveBank(N, P, k=K, num_clusters=4)
    diagnostics = bank.refresh_from(api.encoder, Items(lambda i: item(api, i)), batch_size=16, seed=0)
    assert bank.filled and ("positive_precision" in diagnostics) == (not isinstance(item(api, 0), torch.Tensor)
                                                                   and len(item(api, 0)) > 1)


def test_mixed_loss_takes_lam_as_a_list_a_float_or_a_tensor(api):
    lam = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    expected = clim.mixed_info_nce(api.q, api.q.flip(0), api.q.roll(1, 0), lam=torch.tensor(lam))
    assert torch.equal(clim.mixed_info_nce(api.q, api.q.flip(0), api.q.roll(1, 0), lam=lam), expected)
    half = clim.mixed_info_nce(api.q, api.q.flip(0), api.q.roll(1, 0), lam=0.5)
    assert torch.equal(half, clim.mixed_info_nce(api.q, api.q.flip(0), api.q.roll(1, 0), lam=torch.full((B,), 0.5)))


def test_dir_lists_the_public_names_once():
    names = dir(clim)
    assert len(names) == len(set(names))
    assert set(clim.__all__) <= set(names) and {"selection", "mixing", "losses", "__version__"} <= set(names)
    assert not {"api", "importlib", "method", "engine", "config", "demo"} & set(names)
    api = importlib.import_module("clim.api")  # still importable, and still an attribute
    assert api is clim.api and api.info_nce is clim.info_nce and "api" not in dir(clim)


def test_in_batch_keys_carry_gradient_as_the_docstrings_say(api):
    """In an in-batch loop (queue=None) the keys are the trained encoder's output: the losses pass
    gradient to them (the SimCLR example relies on it); MoCo keys are simply given without one."""
    z1, z2, zp = (api.q.clone().requires_grad_() for _ in range(3))
    (clim.info_nce(z1, z2) + clim.mixed_info_nce(z1, z2, zp, lam=torch.full((B,), 0.3))).backward()
    assert all(z.grad is not None and z.grad.abs().sum() > 0 for z in (z1, z2, zp))
    assert "the keys come from the trained encoder and carry gradient" in " ".join(clim.mixed_info_nce.__doc__.split())
    assert "momentum encoder, no gradient" in " ".join(clim.mixed_info_nce.__doc__.split())
    assert "both carry gradient" in " ".join(clim.info_nce.__doc__.split())
