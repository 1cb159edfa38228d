"""A SimCLR-style loop with CLIM's positives (issue 18): in-batch negatives (``queue=None``), no
momentum encoder, on sklearn's digits. Runs on a CPU in seconds: ``python examples/simclr.py``.

Each step: two views of the batch give the symmetric InfoNCE with the other images of the batch as
negatives. Once the bank is filled, each anchor's query view is CutMix-ed with a view of one of its
positives and the mixed query gets CLIM's mixture loss (paper Eq. 3) against the anchor's second
view and the positive's view, with the same in-batch negatives.
"""

from __future__ import annotations


import torch
from tiny_digits import augment, backbone, digits, epochs_argument
from torch import nn

import clim


def main(epochs: int = 6, refresh_every: int = 2, batch_size: int = 64, seed: int = 0) -> None:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    dataset = digits()
    images = dataset.tensors[0]
    encoder = nn.Sequential(backbone(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))
    bank = clim.PositiveBank(num_samples=len(dataset))  # METHOD's defaults: center-wise, k = 40, P = 10
    optimizer = torch.optim.SGD(encoder.parameters(), lr=0.03, momentum=0.9, weight_decay=1e-4)
    for epoch in range(epochs):
        if epoch > 0 and epoch % refresh_every == 0:  # SimCLR has no momentum encoder: the encoder itself
            diagnostics = bank.refresh_from(encoder, dataset, seed=epoch)
            print(f"epoch {epoch + 1}: positives refreshed, precision {diagnostics['positive_precision']:.3f}")
        for index in torch.randperm(len(dataset), generator=generator).split(batch_size):
            x = images[index]
            query_view = augment(x, generator)
            z1, z2 = encoder(query_view), encoder(augment(x, generator))
            loss = 0.5 * (clim.info_nce(z1, z2) + clim.info_nce(z2, z1))  # in-batch negatives
            if bank.filled:
                positive = images[bank.sample(index, generator)]
                mixed, lam = clim.cutmix(query_view, augment(positive, generator), generator=generator)
                loss = loss + clim.mixed_info_nce(encoder(mixed), z2, encoder(augment(positive, generator)), lam=lam)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch + 1}: loss {loss.item():.3f}")


if __name__ == "__main__":
    main(epochs_argument(__doc__))
