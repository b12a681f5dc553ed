"""The seeded mini-batch fine-tuning loop shared by model manipulation and training defenses."""
from __future__ import annotations

from typing import Dict, List

import torch
from tqdm.auto import tqdm


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
    it = tqdm(range(epochs), desc=desc) if progress else range(epochs)
    for _ in it:
        perm = torch.randperm(n, generator=g).to(x.device)
        sums: Dict[str, float] = {}
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            total, parts = losses(x[idx], y[idx])
            opt.zero_grad()
            total.backward()
            opt.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(idx)
        history.append({k: v / n for k, v in sums.items()})
    return history
