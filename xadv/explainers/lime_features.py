"""LIME over feature groups of any input: tokens of a sequence (ids replaced by a pad
id), or groups given by a ``feature_mask``."""
from __future__ import annotations

from typing import Optional, Union

import torch

from .chunking import chunked_forward, rows_per_pass
from .._adapter import sample_rows
from .._common import make_generator
from .._validation import check_positive_int, resolve_target
from ..explanation import Explanation
from .base import Explainer, balanced_slices, forward, select_score
from .lime import exponential_kernel, set_surrogate_options, weighted_ridge


class FeatureLIME(Explainer):
    """LIME (Ribeiro et al., 2016) with interpretable features = groups of input
    features: by default every position after the batch dimension (a token of an
    (N, T) id sequence, a column of (N, D) rows), or the groups of ``feature_mask``.

    Each of ``n_samples`` perturbations switches a random subset of the groups off
    (the first keeps all): switched-off features take ``baseline`` (the pad id for
    tokens). The model's score on each perturbation is regressed on the binary masks
    with a weighted ridge (``alpha``), weights ``sqrt(exp(-d^2 / kernel_width^2))`` of
    the cosine distance ``d`` between the mask and the all-on mask, as lime's
    ``LimeTextExplainer`` (``kernel_width=0.25`` on distances in [0, 1] equals its 25
    on distances x 100). Every feature gets its group's coefficient.

    Parameters
    ----------
    n_samples : int, default 500
    baseline : int, float or Tensor, default 0
        Value of switched-off features (broadcast to ``x``): the pad id for tokens.
    feature_mask : LongTensor, optional
        Group ids broadcastable to ``x`` ((1, ...) shared or (N, ...) per sample), e.g.
        the word of each sub-word token. Default: every feature its own group.
    sampling : {"uniform_count", "bernoulli"}, default "uniform_count"
        ``uniform_count`` switches off a number of groups drawn uniformly from 1..S (as
        lime's text explainer); ``bernoulli`` switches each off with probability 1/2.
    kernel_width : float, default 0.25
    alpha : float, default 1.0
    score : default "softmax"
    batch_size : int, optional
        Rows of every model call, the clean pass included; default: chosen by
        :mod:`xadv.explainers.chunking`.
    seed, generator : the draws.

    Shapes: ``x`` (N, ...) -> ``attributions`` (N, ...) (float); ``segment_weights``
    (N, S) the coefficients; ``extras["masks"]`` (N, n_samples, S), ``extras["weights"]``
    and ``extras["scores"]`` (N, n_samples) the surrogate's data.

    Examples
    --------
    >>> import torch, xadv
    >>> net = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Flatten(), torch.nn.Linear(12, 2))
    >>> e = xadv.explainers.FeatureLIME(n_samples=64, seed=0)(net, torch.tensor([[3, 4, 5]]), target=1)
    >>> e.attributions.shape
    torch.Size([1, 3])
    """

    name = "feature_lime"
    differentiable = False
    accepts_integer_inputs = True

    def __init__(self, n_samples: int = 500, baseline: Union[int, float, torch.Tensor] = 0,
                 feature_mask: Optional[torch.Tensor] = None, sampling: str = "uniform_count",
                 kernel_width: float = 0.25, alpha: float = 1.0, score="softmax", batch_size: Optional[int] = None,
                 seed: Optional[int] = None, generator: Optional[torch.Generator] = None):
        self.n_samples = check_positive_int(n_samples, "n_samples", minimum=2)
        if isinstance(baseline, bool) or not isinstance(baseline, (int, float, torch.Tensor)):
            raise TypeError(f"baseline must be a number or a tensor, got {type(baseline).__name__}")
        self.baseline = baseline
        if feature_mask is not None and (not isinstance(feature_mask, torch.Tensor) or feature_mask.is_floating_point()
                                         or feature_mask.dtype == torch.bool):
            raise TypeError("feature_mask must be an integer tensor of group ids broadcastable to x")
        self.feature_mask = feature_mask
        if sampling not in ("uniform_count", "bernoulli"):
            raise ValueError(f"sampling must be 'uniform_count' or 'bernoulli', got {sampling!r}")
        self.sampling = sampling
        set_surrogate_options(self, kernel_width=kernel_width, alpha=alpha, score=score, batch_size=batch_size,
                              seed=seed, generator=generator)

    def _groups(self, x: torch.Tensor) -> torch.Tensor:
        """Group index per feature, 0..S-1, shape (N, ...)."""
        n, feat = x.shape[0], tuple(x.shape[1:])
        if self.feature_mask is None:
            return torch.arange(int(torch.tensor(feat).prod()), device=x.device).reshape(feat).expand((n,) + feat)
        fm = self.feature_mask.to(x.device)
        if fm.dim() < x.dim():
            fm = fm.reshape((1,) * (x.dim() - fm.dim()) + tuple(fm.shape))
        try:
            fm = torch.broadcast_to(fm, x.shape)
        except RuntimeError:
            raise ValueError(f"feature_mask of shape {tuple(self.feature_mask.shape)} does not broadcast to the "
                             f"inputs {tuple(x.shape)}") from None
        _, inv = torch.unique(fm, return_inverse=True)
        return inv

    def _explain(self, model, x, target, create_graph):
        x = x.detach()
        n = x.shape[0]
        groups = self._groups(x)
        S = int(groups.max()) + 1
        base = self.baseline
        base = base.to(device=x.device, dtype=x.dtype) if isinstance(base, torch.Tensor) else \
            torch.tensor(base, device=x.device).to(x.dtype)
        base = torch.broadcast_to(base, x.shape)
        rows = rows_per_pass(model, x, batch_size=self.batch_size, work=n * self.n_samples, grad=False)
        out = chunked_forward(model, x, rows)
        t = resolve_target(target, out)
        gen = make_generator(self.seed, self.generator, x.device)
        m = self.n_samples - 1
        masks = torch.ones(n, self.n_samples, S, dtype=torch.bool, device=x.device)
        for i in range(n):
            if self.sampling == "bernoulli":
                z = torch.randint(0, 2, (m, S), generator=gen, device=x.device).bool()
            else:
                k = torch.randint(1, S + 1, (m, 1), generator=gen, device=x.device)
                rank = torch.rand(m, S, generator=gen, device=x.device).argsort(1).argsort(1)
                z = rank >= k
            masks[i, 1:] = z
        scores = torch.empty(n, self.n_samples, dtype=torch.float64, device=x.device)
        flat_mask = masks.reshape(n * self.n_samples, S)
        sid = torch.arange(n, device=x.device).repeat_interleave(self.n_samples)
        with torch.no_grad():
            for r0, r1 in balanced_slices(n * self.n_samples, rows):
                i = sid[r0:r1]
                keep = flat_mask[r0:r1].gather(1, groups[i].reshape(r1 - r0, -1)).reshape((r1 - r0,) + x.shape[1:])
                xs = torch.where(keep, x[i], base[i])
                with sample_rows(i, n):
                    o = forward(model, xs)
                scores.view(-1)[r0:r1] = select_score(o, t[i], self.score).double()
        zf = masks.double()
        cos = zf.sum(2) / (zf.sum(2).clamp_min(1).sqrt() * S ** 0.5)   # cosine similarity with all-on
        d = 1 - cos
        w = exponential_kernel(d, self.kernel_width)
        fit = weighted_ridge(zf, scores, w, alpha=self.alpha)
        coef = fit["coef"].to(out.dtype if out.is_floating_point() else torch.float64)
        attr = coef.gather(1, groups.reshape(n, -1)).reshape(x.shape)
        return Explanation(attr, x, t, out.detach(), self.name, self._params_for_result(), segment_weights=coef,
                           extras={"masks": masks, "weights": w, "scores": scores, "intercept": fit["intercept"],
                                   "score": fit["score"]})
