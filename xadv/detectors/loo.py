"""ML-LOO: dispersion of leave-one-out attributions across layers (Yang et al., 2020)."""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._validation import check_positive_int, find_module
from ..explainers.base import forward
from .base import Detector, TorchLogistic, _register

_STATS = ("iqr", "std", "mad")


def occlusion_masks(shape: Tuple[int, ...], patch: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Masks (S, *shape) with one occluded region each: ``patch x patch`` squares over
    (H, W) of images (all channels), groups of ``patch`` consecutive features otherwise."""
    if len(shape) == 3:
        c, h, w = shape
        rows = list(range(0, h, patch))
        cols = list(range(0, w, patch))
        m = torch.zeros(len(rows) * len(cols), c, h, w, device=device, dtype=dtype)
        k = 0
        for r in rows:
            for q in cols:
                m[k, :, r:r + patch, q:q + patch] = 1
                k += 1
        return m
    d = int(np.prod(shape))
    starts = list(range(0, d, patch))
    m = torch.zeros(len(starts), d, device=device, dtype=dtype)
    for k, s in enumerate(starts):
        m[k, s:s + patch] = 1
    return m.reshape((len(starts),) + tuple(shape))


def _dispersion(delta: torch.Tensor, stat: str) -> torch.Tensor:
    """Dispersion over dim 1 (the occlusions) of (N, S, D) -> (N, D)."""
    if stat == "iqr":
        q = torch.quantile(delta, torch.tensor([0.25, 0.75], dtype=delta.dtype, device=delta.device), dim=1)
        return q[1] - q[0]
    if stat == "std":
        return delta.std(1)
    return (delta - delta.mean(1, keepdim=True)).abs().mean(1)


@_register
class LOODetector(Detector):
    """ML-LOO: statistics of leave-one-out (occlusion) attributions at several layers,
    classified by a logistic regression.

    For every input ``x`` and occluded copy ``x_(s)`` (region ``s`` set to ``baseline``)
    the attribution of ``s`` at a layer is the change of the layer's activations
    ``h(x) - h(x_(s))`` (conv activations averaged over space) and, at the output, the
    drop of the predicted class's probability. The dispersion of these attributions over
    the regions (inter-quartile range by default, as in the paper) averaged over the
    layer's units gives one feature per layer and statistic; adversarial inputs have
    more dispersed attributions. Regions are ``patch x patch`` squares (a coarse
    "superpixel" leave-one-out; ``patch=1`` is the pixel-wise original).

    Differentiable (forward passes on occluded copies only).

    Parameters
    ----------
    layers : sequence of str or nn.Module, optional
        Hidden layers whose outputs are read (each must run once per forward pass);
        default every call of every ``nn.ReLU`` module (a ReLU module called twice in
        ``forward``, as in torchvision's ResNet blocks, gives two layers).
    patch : int, default 7
    baseline : float, default 0.0
        Value of occluded features.
    stats : sequence of {"iqr", "std", "mad"}, default ("iqr",)
    C : float, default 1.0
        Inverse regularisation of the logistic regression.
    fpr, val_fraction, batch_size, seed, progress : see :class:`Detector`.

    References
    ----------
    Yang, Chen, Hsieh, Wang, Jordan. ML-LOO: Detecting Adversarial Examples with
    Feature Attribution. AAAI 2020.

    Examples
    --------
    >>> import torch
    >>> from xadv.detectors import LOODetector
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> det = LOODetector(patch=2).fit(net, torch.rand(40, 1, 4, 4), torch.rand(40, 1, 4, 4) * 0.2)
    >>> det.features(net, torch.rand(3, 1, 4, 4)).shape
    torch.Size([3, 2])
    """

    uses_explanations = True
    second_order = False

    def __init__(self, layers: Optional[Sequence[Union[str, nn.Module]]] = None, *, patch: int = 7,
                 baseline: float = 0.0, stats: Sequence[str] = ("iqr",), C: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.layers = None if layers is None else list(layers)
        self.patch = check_positive_int(patch, "patch")
        self.baseline = float(baseline)
        stats = (stats,) if isinstance(stats, str) else tuple(stats)
        bad = [s for s in stats if s not in _STATS]
        if bad or not stats:
            raise ValueError(f"stats must be a non-empty subset of {_STATS}, got {stats!r}")
        self.stats = stats
        self.C = float(C)

    def _modules(self, model) -> List[nn.Module]:
        if self.layers is None:
            if not isinstance(model, nn.Module):
                return []
            return [m for m in model.modules() if isinstance(m, nn.ReLU)]
        return [find_module(model, l) for l in self.layers]

    def features(self, model, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        """ML-LOO features (N, (n_layers + 1) * len(stats))."""
        masks = occlusion_masks(tuple(x.shape[1:]), self.patch, x.device, x.dtype)
        s = masks.shape[0]
        if create_graph:
            return self._features(model, x, masks)
        per = max(1, self.batch_size // (s + 1))
        with torch.no_grad():  # a sample's s + 1 rows may exceed batch_size: forward passes split further
            return torch.cat([self._features(model, x[i:i + per], masks, self.batch_size)
                              for i in range(0, len(x), per)])

    def _features(self, model, x, masks, rows=None):
        n, s = x.shape[0], masks.shape[0]
        occl = x[:, None] * (1 - masks[None]) + self.baseline * masks[None]
        batch = torch.cat([x[:, None], occl], 1).reshape((n * (s + 1),) + tuple(x.shape[1:]))
        store: List[torch.Tensor] = []
        mods = self._modules(model)

        def hook(_m, _i, out):
            if isinstance(out, torch.Tensor):
                # copied now: an in-place op later in forward (ReLU(inplace=True)) must not change it
                store.append(out.mean(dim=tuple(range(2, out.dim()))) if out.dim() > 2 else out.clone())

        handles = [m.register_forward_hook(hook) for m in mods]
        try:
            total = batch.shape[0]
            step = total if rows is None else rows
            outs, chunks = [], []
            for a in range(0, total, step):
                store.clear()
                outs.append(forward(model, batch[a:a + step]))
                chunks.append(list(store))
            out = torch.cat(outs) if len(outs) > 1 else outs[0]
            store[:] = [torch.cat(parts) for parts in zip(*chunks)] if len(chunks) > 1 else chunks[0]
        finally:
            for h in handles:
                h.remove()
        if self.layers is not None and len(store) != len(mods):
            raise ValueError("a LOO layer was not called exactly once per forward pass; pass layers= explicitly")
        if not store and mods:
            raise ValueError("no LOO layer was called in the forward pass; pass layers= explicitly")
        prob = F.softmax(out, 1).reshape(n, s + 1, -1)
        pred = prob[:, 0].detach().argmax(1)
        p = prob.gather(2, pred[:, None, None].expand(n, s + 1, 1))  # (N, S+1, 1)
        reps = [h.reshape(n, s + 1, -1) for h in store] + [p]
        feats = []
        for h in reps:
            delta = h[:, :1] - h[:, 1:]
            for st in self.stats:
                feats.append(_dispersion(delta, st).mean(1))
        return torch.stack(feats, 1)

    def _fit(self, model, x_clean, x_adv):
        fc = self.features(model, x_clean)
        fa = self.features(model, x_adv)
        f = torch.cat([fc, fa])
        lab = torch.cat([torch.zeros(len(fc)), torch.ones(len(fa))])
        self.lr_ = TorchLogistic.fit(f, lab, C=self.C).to(x_clean.dtype)

    def _score(self, model, x, create_graph):
        return self.lr_.to(x.device)(self.features(model, x, create_graph))
