"""Faithfulness scores: do the features an explanation ranks high matter to the model?

Each function takes the model, inputs ``x`` (N, ...), the explained classes ``y``
and the attributions ``a`` (shaped like ``x`` or broadcastable to it, e.g. a
(N, 1, H, W) map for (N, C, H, W) images) and returns (N,). Features are the
entries of ``a`` broadcast to ``x`` (as in Quantus); a removed feature takes the
``baseline`` value (a number, ``"mean"`` for the per-sample mean or ``"black"``
for the per-sample minimum, or a tensor broadcastable to ``x``). Every perturbed
input of a call is built at once and sent to the model in chunks of
``batch_size`` rows (default: the explainers' chunking policy,
:func:`xadv.explainers.chunking.rows_per_pass`, for forward-only passes); image rows go
channels-last where a cached probe measures that faster for the model
(:func:`xadv.explainers.chunking.prefers_channels_last`).

>>> import torch
>>> from xadv.metrics import faithfulness_estimate
>>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
>>> x = torch.rand(2, 1, 4, 4)
>>> a = x * net[1].weight[0].reshape(1, 1, 4, 4)   # exact contributions of a linear model
>>> faithfulness_estimate(net, x, 0, a).round(decimals=4)
tensor([1., 1.])
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

from ..._validation import check_positive_int
from .._base import (check_attributions, check_nonnegative, flat, generator, metric, pearson_rows, predict,
                     predict_rows, prepare, rows_per_call, scores_of, setup, spearman_rows)

__all__ = ["faithfulness_correlation", "faithfulness_estimate", "pixel_flipping", "region_perturbation",
           "selectivity", "sensitivity_n", "monotonicity", "monotonicity_correlation", "irof", "road",
           "sufficiency", "baseline_values", "noisy_linear_imputation"]

BaselineLike = Union[float, str, torch.Tensor]


def baseline_values(x: torch.Tensor, baseline: BaselineLike) -> torch.Tensor:
    """The replacement values of removed features, shaped like ``x`` (N, ...).

    ``baseline`` is a number, ``"mean"`` (per-sample mean), ``"black"`` (per-sample
    minimum), ``"white"`` (per-sample maximum) or a tensor broadcastable to ``x``.
    """
    if isinstance(baseline, torch.Tensor):
        return torch.broadcast_to(baseline.to(device=x.device, dtype=x.dtype), x.shape)
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full_like(x, float(baseline))
    f = flat(x)
    stats = {"mean": lambda: f.mean(1), "black": lambda: f.amin(1), "white": lambda: f.amax(1)}
    if baseline not in stats:
        raise ValueError(f"baseline must be a number, a tensor or one of {sorted(stats)}, got {baseline!r}")
    return stats[baseline]().reshape((-1,) + (1,) * (x.dim() - 1)).expand_as(x)


def _masked_scores(model, x: torch.Tensor, masks: torch.Tensor, base: torch.Tensor, t: torch.Tensor, batch_size,
                   softmax: bool, crop=None) -> torch.Tensor:
    """Target scores (N, S) of the S x N inputs ``x`` with ``masks`` (S, N, F) set to ``base``.

    The perturbed rows are built per model call (at most ``batch_size`` rows, step-major),
    so memory holds the boolean masks and one call's rows, never all S x N inputs.
    """
    s, n, f = masks.shape
    xf, bf, mf = flat(x), flat(base), masks.reshape(s * n, f)
    shape = tuple(x.shape[1:])

    def build(i, j):
        k = torch.arange(i, j, device=x.device) % n
        xs = torch.where(mf[i:j], bf[k], xf[k]).reshape((j - i,) + shape)
        return xs if crop is None else crop(xs)

    probe = x[:1] if crop is None else crop(x[:1])
    rows = rows_per_call(probe, batch_size, model=model, work=s * n, grad=False)
    out = predict_rows(model, s * n, build, rows, softmax, channels_last=True)
    return out.gather(1, t.repeat(s)[:, None]).reshape(s, n).T


def _setup(model, x, y, a, min_dim=2, batch_size=None):
    x, out, t = setup(model, x, y, min_dim, batch_size)
    return x, out, t, check_attributions(a, x)


def _order_steps(af: torch.Tensor, step: int, descending: bool = True) -> torch.Tensor:
    """(N, F) attributions -> (N, S, step) feature indices per step (last step padded with -1)."""
    n, f = af.shape
    order = torch.sort(af, dim=1, descending=descending, stable=True).indices
    s = math.ceil(f / step)
    pad = s * step - f
    if pad:
        order = torch.cat([order, order.new_full((n, pad), -1)], 1)
    return order.reshape(n, s, step)


def _step_masks(idx: torch.Tensor, f: int, cumulative: bool) -> torch.Tensor:
    """(N, S, k) indices (-1 = none) -> (S, N, F) bool masks (cumulative over steps if asked)."""
    n, s, k = idx.shape
    m = torch.zeros(n, s, f + 1, dtype=torch.bool, device=idx.device)
    m.scatter_(2, torch.where(idx < 0, torch.full_like(idx, f), idx), True)
    m = m[..., :f]
    if cumulative:
        m = m.cumsum(1) > 0
    return m.transpose(0, 1)


@metric("faithfulness", "higher")
def faithfulness_correlation(model, x: torch.Tensor, y, a, *, n_runs: int = 100, subset_size: int = 224,
                             baseline: BaselineLike = 0.0, softmax: bool = False,
                             indices: Optional[torch.Tensor] = None, seed: Optional[int] = None,
                             batch_size: Optional[int] = None) -> torch.Tensor:
    """Faithfulness correlation (Bhatt et al., 2020).

    Over ``n_runs`` random subsets ``S`` of ``subset_size`` features: the Pearson
    correlation between ``sum_{i in S} a_i`` and the score drop ``f(x) - f(x_S)``
    when ``S`` is set to the baseline.

    Parameters
    ----------
    model : nn.Module or callable, (N, ...) -> (N, K)
    x : Tensor (N, ...)
    y : None, int or LongTensor (N,)
        Explained class (``None``: the prediction).
    a : Tensor shaped like (or broadcastable to) ``x``
    n_runs : int, default 100
    subset_size : int, default 224
    baseline : float, "mean", "black", "white" or Tensor, default 0.0
    softmax : bool, default False
        Score probabilities instead of logits.
    indices : LongTensor (N, n_runs, subset_size), optional
        The subsets themselves (to replay draws); otherwise drawn with ``seed``.
    seed : int, optional
    batch_size : int, optional
        Rows per model call.

    Returns
    -------
    Tensor (N,) in [-1, 1]; higher is more faithful.

    References
    ----------
    Bhatt, Weller, Moura. Evaluating and Aggregating Feature-based Model Explanations. IJCAI 2020.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> x = torch.rand(2, 1, 4, 4); a = x * net[1].weight[1].reshape(1, 1, 4, 4)
    >>> faithfulness_correlation(net, x, 1, a, n_runs=20, subset_size=4, seed=0).round(decimals=4)
    tensor([1., 1.])
    """
    x, out, t, a = _setup(model, x, y, a, batch_size=batch_size)
    n, f = x.shape[0], x[0].numel()
    if indices is None:
        check_positive_int(n_runs, "n_runs")
        if not 0 < subset_size <= f:
            raise ValueError(f"subset_size must be in 1..{f} (the number of features), got {subset_size!r}")
        g = generator(seed, x.device)
        # a uniform random subset per run: the positions of the subset_size largest uniforms
        indices = torch.rand(n, n_runs, f, generator=g, device=x.device).topk(subset_size, -1).indices
    indices = indices.to(x.device).long()
    if indices.dim() != 3 or indices.shape[0] != n:
        raise ValueError(f"indices must have shape (N, n_runs, subset_size), got {tuple(indices.shape)}")
    masks = _step_masks(indices, f, cumulative=False)
    y0 = scores_of(out, t, softmax)
    yp = _masked_scores(model, x, masks, baseline_values(x, baseline), t, batch_size, softmax)
    att = flat(a).gather(1, indices.reshape(n, -1)).reshape(indices.shape).sum(-1)
    return pearson_rows(att, y0[:, None] - yp)


@metric("faithfulness", "higher")
def faithfulness_estimate(model, x: torch.Tensor, y, a, *, features_in_step: int = 1,
                          baseline: BaselineLike = 0.0, softmax: bool = False,
                          batch_size: Optional[int] = None) -> torch.Tensor:
    """Faithfulness estimate (Alvarez-Melis & Jaakkola, 2018).

    Features are removed one group of ``features_in_step`` at a time (each group
    alone, in decreasing attribution order); the Pearson correlation between the
    groups' attribution sums and the score drops.

    Parameters
    ----------
    model, x, y, a : as in :func:`faithfulness_correlation`
    features_in_step : int, default 1
    baseline, softmax, batch_size : as in :func:`faithfulness_correlation`

    Returns
    -------
    Tensor (N,) in [-1, 1]; higher is more faithful.

    References
    ----------
    Alvarez-Melis, Jaakkola. Towards Robust Interpretability with Self-Explaining Neural
    Networks. NeurIPS 2018.
    """
    x, out, t, a = _setup(model, x, y, a, batch_size=batch_size)
    step = check_positive_int(features_in_step, "features_in_step")
    af = flat(a)
    idx = _order_steps(af, step)
    masks = _step_masks(idx, af.shape[1], cumulative=False)
    y0 = scores_of(out, t, softmax)
    yp = _masked_scores(model, x, masks, baseline_values(x, baseline), t, batch_size, softmax)
    att = (masks.transpose(0, 1) * af[:, None]).sum(-1)
    return pearson_rows(att, y0[:, None] - yp)


def _trapz(curve: torch.Tensor) -> torch.Tensor:
    if curve.shape[1] < 2:
        return torch.zeros(curve.shape[0], dtype=curve.dtype, device=curve.device)
    return torch.trapezoid(curve, dim=1)


@metric("faithfulness", "lower")
def pixel_flipping(model, x: torch.Tensor, y, a, *, features_in_step: int = 1, baseline: BaselineLike = 0.0,
                   softmax: bool = True, return_curve: bool = False,
                   batch_size: Optional[int] = None) -> torch.Tensor:
    """Pixel flipping (Bach et al., 2015): the score while the most attributed features
    are removed cumulatively, ``features_in_step`` at a time.

    Parameters
    ----------
    model, x, y, a : as in :func:`faithfulness_correlation`
    features_in_step : int, default 1
    baseline : as in :func:`faithfulness_correlation`
    softmax : bool, default True
    return_curve : bool, default False
        Return the curve (N, ceil(F / features_in_step)) instead of its area.
    batch_size : int, optional

    Returns
    -------
    Tensor (N,): the area under the curve (trapezoid, unit spacing, as Quantus'
    ``return_auc_per_sample``); lower is more faithful.

    References
    ----------
    Bach, Binder, Montavon, Klauschen, Müller, Samek. On Pixel-Wise Explanations for
    Non-Linear Classifier Decisions by Layer-Wise Relevance Propagation. PLoS ONE 2015.
    """
    x, out, t, a = _setup(model, x, y, a, batch_size=batch_size)
    af = flat(a)
    idx = _order_steps(af, check_positive_int(features_in_step, "features_in_step"))
    masks = _step_masks(idx, af.shape[1], cumulative=True)
    curve = _masked_scores(model, x, masks, baseline_values(x, baseline), t, batch_size, softmax)
    return curve if return_curve else _trapz(curve)


def _patches(x: torch.Tensor, a: torch.Tensor, patch_size: int):
    """Edge-padded x, zero-padded a, and (N, P, C*p*p) flat indices of the patches into the padded input."""
    if x.dim() != 4:
        raise ValueError(f"patch-based metrics need (N, C, H, W) images, got shape {tuple(x.shape)}")
    p = check_positive_int(patch_size, "patch_size")
    n, c, h, w = x.shape

    def pads(d):
        r = d % p
        if r == 0:
            return 0, 0
        tot = p - r
        return tot // 2, tot - tot // 2

    (ph0, ph1), (pw0, pw1) = pads(h), pads(w)
    xp = F.pad(x, (pw0, pw1, ph0, ph1), mode="replicate") if (ph0 + ph1 + pw0 + pw1) else x
    ap = F.pad(a, (pw0, pw1, ph0, ph1)) if (ph0 + ph1 + pw0 + pw1) else a
    H, W = xp.shape[2:]
    ids = torch.arange(c * H * W, device=x.device).reshape(c, H, W)
    blocks = ids.reshape(c, H // p, p, W // p, p).permute(1, 3, 0, 2, 4).reshape((H // p) * (W // p), -1)
    return xp, ap, blocks, (ph0, ph1, pw0, pw1)


def _patch_curve(model, x, t, a, patch_size, baseline, order, regions, softmax, batch_size, generator_=None):
    xp, ap, blocks, (ph0, ph1, pw0, pw1) = _patches(x, a, patch_size)
    n = x.shape[0]
    sums = flat(ap)[:, blocks].sum(-1)  # (N, P)
    if order == "morf":
        o = torch.sort(sums, dim=1, descending=True, stable=True).indices
    elif order == "lerf":
        o = torch.sort(sums, dim=1, stable=True).indices
    elif order == "random":
        o = torch.rand(sums.shape, generator=generator_, device=x.device).argsort(1)
    else:
        raise ValueError(f"order must be 'morf', 'lerf' or 'random', got {order!r}")
    o = o[:, :regions]
    idx = blocks[o]  # (N, R, C p p)
    masks = _step_masks(idx, xp[0].numel(), cumulative=True)
    H, W = xp.shape[2:]
    crop = (lambda z: z[..., ph0:H - ph1, pw0:W - pw1]) if (ph0 + ph1 + pw0 + pw1) else None
    return _masked_scores(model, xp, masks, baseline_values(xp, baseline), t, batch_size, softmax, crop)


@metric("faithfulness", "higher")
def region_perturbation(model, x: torch.Tensor, y, a, *, patch_size: int = 8, regions: int = 100,
                        order: str = "morf", baseline: BaselineLike = 0.0, softmax: bool = True,
                        return_curve: bool = False, seed: Optional[int] = None,
                        batch_size: Optional[int] = None) -> torch.Tensor:
    """Region perturbation (Samek et al., 2017): the score drop ``f(x) - f(x^(k))`` as
    the ``k`` most relevant square patches are removed, k = 1..``regions``.

    Patches tile the image (edge-padded to a multiple of ``patch_size``, as Quantus);
    a patch's relevance is its attribution sum over channels and pixels.

    Parameters
    ----------
    model, x, y, a : (N, C, H, W) images; as in :func:`faithfulness_correlation`
    patch_size : int, default 8
    regions : int, default 100
    order : {"morf", "lerf", "random"}, default "morf"
        Most relevant first, least relevant first, or random (with ``seed``).
    baseline, softmax, batch_size : as in :func:`pixel_flipping`
    return_curve : bool, default False
        Return the (N, regions) curve instead of its area.

    Returns
    -------
    Tensor (N,): area under the drop curve (trapezoid, unit spacing); higher is more
    faithful for ``"morf"``.

    References
    ----------
    Samek, Binder, Montavon, Lapuschkin, Müller. Evaluating the Visualization of What a
    Deep Neural Network Has Learned. IEEE TNNLS 2017.
    """
    x, out, t, a = _setup(model, x, y, a, min_dim=4, batch_size=batch_size)
    g = generator(seed, x.device) if order == "random" else None
    curve = _patch_curve(model, x, t, a, patch_size, baseline, order, check_positive_int(regions, "regions"),
                         softmax, batch_size, g)
    curve = scores_of(out, t, softmax)[:, None] - curve
    return curve if return_curve else _trapz(curve)


@metric("faithfulness", "lower")
def selectivity(model, x: torch.Tensor, y, a, *, patch_size: int = 8, baseline: BaselineLike = 0.0,
                softmax: bool = True, return_curve: bool = False,
                batch_size: Optional[int] = None) -> torch.Tensor:
    """Selectivity (Montavon et al., 2018): the score while all patches are removed in
    decreasing relevance; a faithful map makes it fall fast.

    Parameters
    ----------
    model, x, y, a : (N, C, H, W) images
    patch_size : int, default 8
    baseline, softmax, return_curve, batch_size : as in :func:`region_perturbation`

    Returns
    -------
    Tensor (N,): area under the score curve (trapezoid, unit spacing); lower is better.

    References
    ----------
    Montavon, Samek, Müller. Methods for Interpreting and Understanding Deep Neural
    Networks. Digital Signal Processing 2018.
    """
    x, out, t, a = _setup(model, x, y, a, min_dim=4, batch_size=batch_size)
    curve = _patch_curve(model, x, t, a, patch_size, baseline, "morf", 10 ** 9, softmax, batch_size)
    return curve if return_curve else _trapz(curve)


@metric("faithfulness", "higher")
def sensitivity_n(model, x: torch.Tensor, y, a, *, n: Union[int, float] = 0.1, n_runs: int = 100,
                  baseline: BaselineLike = 0.0, softmax: bool = False, indices: Optional[torch.Tensor] = None,
                  seed: Optional[int] = None, batch_size: Optional[int] = None) -> torch.Tensor:
    """Sensitivity-n (Ancona et al., 2018): Pearson correlation, over ``n_runs`` random
    subsets of ``n`` features, between the subset's attribution sum and the score drop
    when the subset is removed.

    An explanation satisfies sensitivity-n when the correlation is 1; Gradient x Input
    with a zero baseline does on a linear model for every ``n``.

    Parameters
    ----------
    model, x, y, a : as in :func:`faithfulness_correlation`
    n : int or float, default 0.1
        Subset size (a float in (0, 1] is a fraction of the features).
    n_runs, baseline, softmax, indices, seed, batch_size : as in :func:`faithfulness_correlation`

    Returns
    -------
    Tensor (N,) in [-1, 1]; higher is better.

    Notes
    -----
    Quantus' ``SensitivityN`` correlates across the samples of a batch instead of
    across subsets of one sample; this follows the paper.

    References
    ----------
    Ancona, Ceolini, Öztireli, Gross. Towards Better Understanding of Gradient-based
    Attribution Methods for Deep Neural Networks. ICLR 2018.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> x = torch.rand(2, 1, 4, 4); a = x * net[1].weight[2].reshape(1, 1, 4, 4)
    >>> sensitivity_n(net, x, 2, a, n=3, n_runs=30, seed=0).round(decimals=4)
    tensor([1., 1.])
    """
    f = x[0].numel()
    k = max(1, int(round(n * f))) if isinstance(n, float) else int(n)
    if not 0 < k <= f:
        raise ValueError(f"n must select between 1 and {f} features, got {n!r}")
    return faithfulness_correlation(model, x, y, a, n_runs=n_runs, subset_size=k, baseline=baseline,
                                    softmax=softmax, indices=indices, seed=seed, batch_size=batch_size)


@metric("faithfulness", "higher")
def monotonicity(model, x: torch.Tensor, y, a, *, features_in_step: int = 1, baseline: BaselineLike = 0.0,
                 softmax: bool = True, batch_size: Optional[int] = None) -> torch.Tensor:
    """Monotonicity (Arya et al., 2019): starting from the baseline, features are added
    back in increasing attribution order; 1 when the score never decreases, else 0.

    Parameters
    ----------
    model, x, y, a : as in :func:`faithfulness_correlation`
    features_in_step : int, default 1
    baseline, softmax, batch_size : as in :func:`pixel_flipping`

    Returns
    -------
    Tensor (N,) in {0, 1}; higher is better.

    References
    ----------
    Arya et al. One Explanation Does Not Fit All: A Toolkit and Taxonomy of AI
    Explainability Techniques. arXiv:1909.03012, 2019.
    """
    x, out, t, a = _setup(model, x, y, a, batch_size=batch_size)
    af = flat(a)
    idx = _order_steps(af, check_positive_int(features_in_step, "features_in_step"), descending=False)
    masks = _step_masks(idx, af.shape[1], cumulative=True)
    base = baseline_values(x, baseline)
    # revealed features take x's values, the rest the baseline
    curve = _masked_scores(model, base, masks, x, t, batch_size, softmax)
    return (curve[:, 1:] - curve[:, :-1] >= 0).all(1).to(x.dtype)


@metric("faithfulness", "higher")
def monotonicity_correlation(model, x: torch.Tensor, y, a, *, features_in_step: int = 1,
                             baseline: BaselineLike = 0.0, eps: float = 1e-5, softmax: bool = True,
                             batch_size: Optional[int] = None) -> torch.Tensor:
    """Monotonicity correlation (Nguyen & Martinez, 2020): Spearman correlation between
    each group's attribution sum and the squared score change ``(f(x) - f(x_g))^2 / f(x)^2``
    when that group alone is removed (groups of ``features_in_step`` in increasing
    attribution order).

    Parameters
    ----------
    model, x, y, a : as in :func:`faithfulness_correlation`
    features_in_step : int, default 1
    baseline : as in :func:`faithfulness_correlation` (a fixed baseline: one draw suffices)
    eps : float, default 1e-5
        ``|f(x)|`` below ``eps`` is not divided by.
    softmax, batch_size : as in :func:`pixel_flipping`

    Returns
    -------
    Tensor (N,) in [-1, 1]; higher is better.

    References
    ----------
    Nguyen, Martinez. On quantitative aspects of model interpretability. arXiv:2007.07584, 2020.
    """
    x, out, t, a = _setup(model, x, y, a, batch_size=batch_size)
    eps = check_nonnegative(eps, "eps")
    af = flat(a)
    idx = _order_steps(af, check_positive_int(features_in_step, "features_in_step"), descending=False)
    masks = _step_masks(idx, af.shape[1], cumulative=False)
    y0 = scores_of(out, t, softmax)
    inv = torch.where(y0.abs() >= eps, 1.0 / y0.abs(), torch.ones_like(y0)) ** 2
    yp = _masked_scores(model, x, masks, baseline_values(x, baseline), t, batch_size, softmax)
    var = (yp - y0[:, None]) ** 2 * inv[:, None]
    att = (masks.transpose(0, 1) * af[:, None]).sum(-1)
    return spearman_rows(att, var)


def grid_segments(x: torch.Tensor, patch_size: int = 4) -> torch.Tensor:
    """(N, H, W) segment labels of a regular grid of ``patch_size`` squares."""
    h, w = x.shape[-2:]
    r = torch.arange(h, device=x.device) // patch_size
    c = torch.arange(w, device=x.device) // patch_size
    lab = r[:, None] * math.ceil(w / patch_size) + c[None]
    return lab.expand(x.shape[0], h, w)


@metric("faithfulness", "higher")
def irof(model, x: torch.Tensor, y, a, *, segments: Optional[torch.Tensor] = None, patch_size: int = 4,
         baseline: BaselineLike = 0.0, softmax: bool = True, batch_size: Optional[int] = None) -> torch.Tensor:
    """Iterative removal of features (Rieger & Hansen, 2020): the area over the curve of
    ``f(x^(k)) / f(x)`` as segments are removed in decreasing mean attribution.

    Parameters
    ----------
    model, x, y, a : (N, C, H, W) images
    segments : LongTensor (N, H, W), optional
        Segment labels 0..S-1 (e.g. superpixels from ``skimage.segmentation.slic``);
        by default a grid of ``patch_size`` squares.
    patch_size : int, default 4
    baseline, softmax, batch_size : as in :func:`pixel_flipping`

    Returns
    -------
    Tensor (N,): ``S - trapz(curve)`` (unit spacing, as Quantus); higher is better.

    References
    ----------
    Rieger, Hansen. IROF: a low resource evaluation metric for explanation methods.
    ICLR-W 2020.
    """
    x, out, t, a = _setup(model, x, y, a, min_dim=4, batch_size=batch_size)
    if segments is None:
        segments = grid_segments(x, check_positive_int(patch_size, "patch_size"))
    segments = torch.as_tensor(segments, device=x.device).long()
    if segments.shape != (x.shape[0],) + tuple(x.shape[2:]):
        raise ValueError(f"segments must have shape (N, H, W) = {(x.shape[0],) + tuple(x.shape[2:])}, "
                         f"got {tuple(segments.shape)}")
    n, c = x.shape[:2]
    ns = int(segments.max()) + 1
    onehot = F.one_hot(segments.reshape(n, -1), ns).to(x.dtype)  # (N, HW, S)
    sums = torch.einsum("nch,nhs->ns", a.reshape(n, c, -1), onehot)
    counts = onehot.sum(1) * c
    present = counts > 0
    mean = torch.where(present, sums / counts.clamp_min(1), torch.full_like(sums, -float("inf")))
    order = torch.sort(mean, dim=1, descending=True, stable=True).indices  # absent segments last
    # cumulative masks: rank of each segment, pixel removed at step k if rank(segment) <= k
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(ns, device=x.device).expand(n, ns))
    pix_rank = rank.gather(1, segments.reshape(n, -1))  # (N, HW)
    steps = torch.arange(ns, device=x.device)
    masks = (pix_rank[None] <= steps[:, None, None])  # (S, N, HW)
    masks = masks[:, :, None, :].expand(-1, -1, c, -1).reshape(ns, n, -1)
    y0 = scores_of(out, t, softmax)
    curve = _masked_scores(model, x, masks, baseline_values(x, baseline), t, batch_size, softmax)
    curve = curve / y0[:, None]
    valid = (steps[None] < present.sum(1, keepdim=True)).to(x.dtype)
    curve = curve * valid
    return valid.sum(1) - _trapz(curve)


def noisy_linear_imputation(x: torch.Tensor, mask: torch.Tensor, *, noise: float = 0.01, iters: int = 400,
                            generator_: Optional[torch.Generator] = None) -> torch.Tensor:
    """Fill the masked pixels of (N, C, H, W) images from their neighbours (Rong et al., 2022).

    Each removed pixel becomes the weighted mean of its 8 neighbours (weight 1/6 for
    the 4 direct, 1/12 for the diagonal ones, renormalised at borders), solved for all
    removed pixels jointly (Jacobi iterations), plus Gaussian noise of std ``noise``.
    ``mask`` (N, 1 or C, H, W) is True where a pixel is removed.
    """
    n, c, h, w = x.shape
    m = torch.broadcast_to(mask.to(torch.bool), x.shape)
    k = torch.tensor([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0.0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]],
                     dtype=x.dtype, device=x.device).expand(c, 1, 3, 3)
    wsum = F.conv2d(torch.ones(1, c, h, w, dtype=x.dtype, device=x.device), k, padding=1, groups=c)
    v = torch.where(m, torch.zeros_like(x), x)
    for _ in range(iters):
        nv = F.conv2d(v, k, padding=1, groups=c) / wsum
        v = torch.where(m, nv, x)
    if noise:
        v = v + torch.where(m, noise * torch.randn(x.shape, generator=generator_, device=x.device, dtype=x.dtype),
                            torch.zeros_like(x))
    return v


@metric("faithfulness", "lower")
def road(model, x: torch.Tensor, y, a, *, percentages: Sequence[float] = tuple(range(10, 100, 10)),
         noise: float = 0.01, order: str = "morf", seed: Optional[int] = None, return_curve: bool = False,
         batch_size: Optional[int] = None) -> torch.Tensor:
    """Remove And Debias (ROAD, Rong et al., 2022): accuracy of the model when the top
    ``p`` % of the features are replaced by noisy linear imputation, p in ``percentages``.

    Parameters
    ----------
    model, x, y, a : (N, C, H, W) images; ``y`` the labels the accuracy is measured against
    percentages : sequence of float, default 10, 20, ..., 90
    noise : float, default 0.01
        Std of the imputation noise.
    order : {"morf", "lerf"}, default "morf"
        Remove the most (or least) relevant features first.
    seed : int, optional
    return_curve : bool, default False
        Return (N, len(percentages)) 0/1 hits instead of their mean.
    batch_size : int, optional

    Returns
    -------
    Tensor (N,): mean accuracy over the percentages; lower is more faithful for "morf".

    References
    ----------
    Rong, Leemann, Borisov, Kasneci, Kasneci. A Consistent and Efficient Evaluation
    Strategy for Attribution Methods. ICML 2022.
    """
    x, out, t, a = _setup(model, x, y, a, min_dim=4, batch_size=batch_size)
    if order not in ("morf", "lerf"):
        raise ValueError(f"order must be 'morf' or 'lerf', got {order!r}")
    af = flat(a)
    f = af.shape[1]
    o = torch.sort(af, dim=1, descending=order == "morf", stable=True).indices
    rank = torch.empty_like(o).scatter_(1, o, torch.arange(f, device=x.device).expand_as(o))
    g = generator(seed, x.device)
    ks = torch.tensor([int(f * float(p) / 100) for p in percentages], device=x.device)
    # every percentage of every sample imputed together: (P * N, ...) rows, percentage-major
    masks = (rank[None] < ks[:, None, None]).reshape((-1,) + tuple(x.shape[1:]))
    xi = noisy_linear_imputation(x.repeat((len(ks),) + (1,) * (x.dim() - 1)), masks, noise=noise, generator_=g)
    pred = predict(model, xi, batch_size, channels_last=True).argmax(1)
    hits = (pred == t.repeat(len(ks))).to(x.dtype).reshape(len(ks), -1)
    curve = hits.T
    return curve if return_curve else curve.mean(1)


@metric("faithfulness", "higher")
def sufficiency(model, x: torch.Tensor, y, a, *, threshold: float = 0.6, abs: bool = False,
                normalise: bool = False, batch_size: Optional[int] = None) -> torch.Tensor:
    """Sufficiency (Dasgupta et al., 2022): among the other samples of the batch whose
    explanation is within ``threshold`` of this one's, the fraction with the same prediction.

    Distances are standardised Euclidean (each feature divided by its variance over
    the batch, as ``scipy.spatial.distance.cdist(..., "seuclidean")``; features with
    zero variance are skipped), divided by the largest distance in the batch.

    Parameters
    ----------
    model, x, y, a : as in :func:`faithfulness_correlation` (``y`` is not used: the
        predictions are compared)
    threshold : float, default 0.6
    abs, normalise : bool, default False
        Preprocessing of the attributions.
    batch_size : int, optional

    Returns
    -------
    Tensor (N,) in [0, 1]; 0 when no other explanation is close. Higher is better.

    References
    ----------
    Dasgupta, Frost, Moshkovitz. Framework for Evaluating Faithfulness of Local
    Explanations. ICML 2022.
    """
    x, out, t, a = _setup(model, x, y, a, batch_size=batch_size)
    threshold = check_nonnegative(threshold, "threshold")
    af = flat(prepare(a, abs, normalise))
    var = af.var(0, unbiased=True) if af.shape[0] > 1 else torch.ones(af.shape[1], dtype=af.dtype)
    keep = var > 0
    z = af[:, keep] / var[keep].sqrt()
    d = torch.cdist(z[None], z[None])[0]
    dmax = d.abs().max()
    if dmax > 0:
        d = d / dmax
    sim = (d <= threshold).to(x.dtype) * (1 - torch.eye(x.shape[0], dtype=x.dtype, device=x.device))
    pred = out.argmax(1)
    same = (pred[None] == pred[:, None]).to(x.dtype)
    cnt = sim.sum(1)
    return torch.where(cnt > 0, (same * sim).sum(1) / cnt.clamp_min(1), torch.zeros_like(cnt))
