"""The seeded mini-batch fine-tuning loop shared by model manipulation and training defenses."""
from __future__ import annotations

from typing import Dict, List

import torch

from ._progress import bar as progress_bar


def fine_tune(model, x, y, losses, *, epochs, batch_size, lr, seed, progress, desc) -> List[Dict[str, float]]:
    """Adam over shuffled mini-batches (seeded permutation per epoch).

    ``losses(xb, yb)`` returns ``(total, parts)``; the history holds the sample-weighted
    mean of every part per epoch.
    """
    g = torch.Generator(device="cpu")
    g.manual_seed(0 if seed is None else int(seed))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    n = x.shape[0]
    per_epoch = -(-n // batch_size)
    bar = progress_bar(epochs * per_epoch, desc, progress=progress, unit="batch")
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g).to(x.device)
        sums: Dict[str, float] = {}
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            total, parts = losses(x[idx], y[idx])
            opt.zero_grad()
            total.backward()
            opt.step()
            bar.update(1)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(idx)
        history.append({k: v / n for k, v in sums.items()})
    bar.close()
    return history
