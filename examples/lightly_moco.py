"""MoCo v2 + CLIM with lightly's building blocks (issue 18): lightly's ``MoCoProjectionHead``,
``update_momentum`` and ``MemoryBankModule`` for MoCo; ``clim.PositiveBank``, ``clim.cutmix`` and
``clim.mixed_info_nce`` for CLIM. On sklearn's digits, in seconds on a CPU:
``python examples/lightly_moco.py`` (needs lightly: ``pip install -e '.[bench]'``).

lightly's memory bank returns its negatives as ``(d, K)`` by default (``feature_dim_first=True``);
clim's losses take the queue as ``[K, d]``, hence ``negatives.T`` below (a ``(d, K)`` queue is
rejected with that hint, not used silently).
"""

from __future__ import annotations

import copy
import sys

import torch
import torch.nn.functional as F
from tiny_digits import augment, backbone, digits, epochs_argument
from torch import nn

import clim

try:
    from lightly.models.modules import MoCoProjectionHead
    from lightly.models.modules.memory_bank import MemoryBankModule
    from lightly.models.utils import deactivate_requires_grad, update_momentum
except ImportError:
    sys.exit("this example needs lightly: pip install lightly (or pip install -e '.[bench]')")


def main(epochs: int = 6, refresh_every: int = 2, batch_size: int = 64, seed: int = 0) -> None:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    dataset = digits()
    images = dataset.tensors[0]
    query_encoder = nn.Sequential(backbone(), MoCoProjectionHead(64, 64, 32))
    key_encoder = copy.deepcopy(query_encoder)
    deactivate_requires_grad(key_encoder)
    memory = MemoryBankModule(size=(1024, 32))  # lightly's queue of negatives
    bank = clim.PositiveBank(num_samples=len(dataset))  # METHOD's defaults: center-wise, k = 40, P = 10
    optimizer = torch.optim.SGD(query_encoder.parameters(), lr=0.03, momentum=0.9, weight_decay=1e-4)
    for epoch in range(epochs):
        if epoch > 0 and epoch % refresh_every == 0:  # METHOD §2: the momentum encoder, eval mode, index order
            diagnostics = bank.refresh_from(key_encoder, dataset, seed=epoch)
            print(f"epoch {epoch + 1}: positives refreshed, precision {diagnostics['positive_precision']:.3f}")
        for index in torch.randperm(len(dataset), generator=generator).split(batch_size):
            x = images[index]
            update_momentum(query_encoder, key_encoder, m=0.99)
            query_view = augment(x, generator)
            q = query_encoder(query_view)
            with torch.no_grad():
                k = F.normalize(key_encoder(augment(x, generator)), dim=1)
            k, negatives = memory(k, update=True)  # negatives: (d, K) before this batch's keys
            loss = clim.info_nce(q, k, negatives.T)  # MoCo v2 (paper Eq. 1)
            if bank.filled:
                positive = images[bank.sample(index, generator)]
                mixed, lam = clim.cutmix(query_view, augment(positive, generator), generator=generator)
                with torch.no_grad():
                    k_positive = key_encoder(augment(positive, generator))
                loss = loss + clim.mixed_info_nce(query_encoder(mixed), k, k_positive, negatives.T, lam=lam)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch + 1}: loss {loss.item():.3f}")


if __name__ == "__main__":
    main(epochs_argument(__doc__))
