"""SmoothGrad, SmoothGrad-squared and VarGrad as a wrapper around any explainer."""
from __future__ import annotations

from typing import Optional

import torch

from .._validation import check_positive_int, resolve_target
from ..explanation import Explanation
from .base import Explainer, forward, input_leaf
from .gradient import Saliency

_VARIANTS = ("smoothgrad", "smoothgrad_sq", "vargrad")

#: rows (noisy copies x samples) per forward pass when ``batch_size`` is None
DEFAULT_BATCH_ROWS = 512


def make_generator(seed: Optional[int], generator: Optional[torch.Generator], device) -> Optional[torch.Generator]:
    """A fresh generator for ``seed`` (same draws on every call), the user's
    ``generator`` (advances between calls), or None (torch's global RNG)."""
    if generator is not None:
        return generator
    if seed is None:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


class SmoothGrad(Explainer):
    """Average an explainer over noisy copies of the input (Smilkov et al., 2017).

    Parameters
    ----------
    base : Explainer, default ``Saliency()``
        Any explainer; SmoothGrad is differentiable exactly when ``base`` is.
    n_samples : int, default 50
        Noisy copies per input.
    noise : float, default 0.15
        Standard deviation of the Gaussian noise. With ``noise_mode="range"`` a
        fraction of each sample's value range ``x.max() - x.min()`` (the paper's
        convention); with ``"absolute"`` in input units.
    variant : {"smoothgrad", "smoothgrad_sq", "vargrad"}, default "smoothgrad"
        Mean of the attributions, mean of their squares, or their variance
        (Adebayo et al., 2018).
    batch_size : int, optional
        Noisy rows per call of ``base``; memory is bounded by it, results do not
        depend on it. Default 512.
    seed : int, optional
        Same seed, same noise on every call (fixed draws, as fooling attacks need).
    generator : torch.Generator, optional
        Used instead of ``seed``; advances between calls.

    Shapes: ``x`` (N, ...) -> ``attributions`` (N, ...).

    References
    ----------
    Smilkov et al. SmoothGrad: removing noise by adding noise. 2017.
    Adebayo et al. Local explanation methods for deep neural networks lack sensitivity
    to parameter values. 2018.

    Examples
    --------
    >>> import torch, xadv
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3), torch.nn.Tanh())
    >>> sg = xadv.explainers.SmoothGrad(n_samples=8, noise=0.1, seed=0)
    >>> sg(net, torch.rand(2, 4), target=0).attributions.shape
    torch.Size([2, 4])
    """

    name = "smoothgrad"

    def __init__(self, base: Optional[Explainer] = None, n_samples: int = 50, noise: float = 0.15,
                 variant: str = "smoothgrad", batch_size: Optional[int] = None,
                 seed: Optional[int] = None, generator: Optional[torch.Generator] = None,
                 noise_mode: str = "range"):
        if base is None:
            base = Saliency()
        if not isinstance(base, Explainer):
            raise TypeError(f"base must be an xadv Explainer, got {type(base).__name__}")
        if variant not in _VARIANTS:
            raise ValueError(f"variant must be one of {_VARIANTS}, got {variant!r}")
        if noise_mode not in ("range", "absolute"):
            raise ValueError(f"noise_mode must be 'range' or 'absolute', got {noise_mode!r}")
        if not float(noise) >= 0:
            raise ValueError(f"noise must be >= 0, got {noise!r}")
        self.base = base
        self.n_samples = check_positive_int(n_samples, "n_samples")
        self.noise = float(noise)
        self.variant = variant
        self.batch_size = None if batch_size is None else check_positive_int(batch_size, "batch_size")
        self.seed = seed
        self.generator = generator
        self.noise_mode = noise_mode
        self.min_dim = base.min_dim

    @property
    def differentiable(self) -> bool:  # type: ignore[override]
        return self.base.differentiable

    def _explain(self, model, x, target, create_graph):
        xi = input_leaf(x, create_graph) if create_graph else x.detach()
        with torch.set_grad_enabled(create_graph):
            out = forward(model, xi)
        t = resolve_target(target, out)
        n = x.shape[0]
        if self.noise_mode == "range":
            flat = xi.detach().reshape(n, -1)
            sigma = self.noise * (flat.max(1).values - flat.min(1).values)
        else:
            sigma = torch.full((n,), self.noise, dtype=x.dtype, device=x.device)
        sigma = sigma.reshape((n,) + (1,) * (x.dim() - 1))
        gen = make_generator(self.seed, self.generator, x.device)
        rows = self.batch_size or DEFAULT_BATCH_ROWS

        total = None
        total_sq = None
        buf_x, buf_t, buf_idx = [], [], []
        buffered = 0
        idx_all = torch.arange(n, device=x.device)

        def flush(final: bool):
            nonlocal total, total_sq, buf_x, buf_t, buf_idx, buffered
            bx = torch.cat(buf_x)
            bt = torch.cat(buf_t)
            bi = torch.cat(buf_idx)
            start = 0
            while bx.shape[0] - start >= rows or (final and start < bx.shape[0]):
                stop = min(start + rows, bx.shape[0])
                a = self.base(model, bx[start:stop], bt[start:stop], create_graph=create_graph).attributions
                if not create_graph:
                    a = a.detach()
                idx = bi[start:stop]
                s = torch.zeros_like(xi, dtype=a.dtype).index_add(0, idx, a)
                total = s if total is None else total + s
                if self.variant != "smoothgrad":
                    s2 = torch.zeros_like(xi, dtype=a.dtype).index_add(0, idx, a * a)
                    total_sq = s2 if total_sq is None else total_sq + s2
                start = stop
            buf_x, buf_t, buf_idx = [bx[start:]], [bt[start:]], [bi[start:]]
            buffered = bx.shape[0] - start

        for _ in range(self.n_samples):
            eps = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
            buf_x.append(xi + sigma * eps)
            buf_t.append(t)
            buf_idx.append(idx_all)
            buffered += n
            if buffered >= rows:
                flush(False)
        if buffered:
            flush(True)

        mean = total / self.n_samples
        if self.variant == "smoothgrad":
            attr = mean
        elif self.variant == "smoothgrad_sq":
            attr = total_sq / self.n_samples
        else:
            attr = total_sq / self.n_samples - mean * mean
        params = self._params_for_result()
        if not create_graph:
            out = out.detach()
        return Explanation(attr, xi, t, out, self.name, params)
