"""Faithfulness of explanations: deletion and insertion curves, their areas, AOPC.

Features are removed (deletion) or revealed (insertion) in the order of their
attribution and the model's score of the explained class is tracked. A faithful
explanation makes the deletion curve fall fast (small area) and the insertion
curve rise fast (large area). AOPC (Samek et al.) averages the score drop over
the first ``steps`` removals. The same removal routine drives
:class:`xadv.attacks.DeletionAttack`.

"Features" are the entries of the 2-D map: pixels of (N, C, H, W) images (all
channels of a pixel together; attributions reduced over channels with
``reduce``) or columns of (N, D) rows.

>>> import torch
>>> from xadv.metrics import deletion_curve
>>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
>>> x = torch.rand(2, 1, 4, 4)
>>> frac, s = deletion_curve(net, x, torch.rand(2, 1, 4, 4), target=0, steps=4)
>>> frac.tolist(), s.shape
([0.0, 0.25, 0.5, 0.75, 1.0], torch.Size([2, 5]))
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F

from ..._model import preserved
from ..._validation import check_bounds, check_inputs, check_model, check_positive_int, resolve_target
from .._base import predict, predict_rows, rows_per_call
from ...explainers.integrated_gradients import gaussian_blur
from ...explanation import Explanation

__all__ = [
    "FILLS", "fill_values", "feature_maps", "removal_order", "remove_features", "deletion_curve",
    "insertion_curve", "deletion_auc", "insertion_auc", "aopc", "curve_auc",
]

FILLS = ("zeros", "mean", "blur", "noise")
_SCORES = ("softmax", "logit", "log_softmax")

AttrLike = Union[Explanation, torch.Tensor]


def fill_values(x: torch.Tensor, fill: Union[str, float, torch.Tensor] = "zeros", *,
                bounds: Tuple[float, float] = (0.0, 1.0), blur_sigma: float = 2.0,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Replacement values for removed features, shape of ``x``.

    ``"zeros"``: 0; ``"mean"``: per-sample, per-channel mean of ``x`` (per-sample mean
    for rows); ``"blur"``: ``x`` blurred with a Gaussian of ``blur_sigma`` pixels;
    ``"noise"``: uniform in ``bounds`` (use ``generator`` for reproducibility); a
    float or a tensor broadcastable to ``x``.
    """
    if isinstance(fill, torch.Tensor):
        try:
            return torch.broadcast_to(fill.to(device=x.device, dtype=x.dtype), x.shape).clone()
        except RuntimeError:
            raise ValueError(f"fill of shape {tuple(fill.shape)} does not broadcast to {tuple(x.shape)}") from None
    if isinstance(fill, (int, float)) and not isinstance(fill, bool):
        return torch.full_like(x, float(fill))
    if fill == "zeros":
        return torch.zeros_like(x)
    if fill == "mean":
        dims = tuple(range(2, x.dim())) if x.dim() >= 3 else (1,)
        return x.mean(dim=dims, keepdim=True).expand_as(x).clone()
    if fill == "blur":
        if x.dim() != 4:
            raise ValueError("fill='blur' needs (N, C, H, W) images; use 'zeros', 'mean' or 'noise' for rows")
        return gaussian_blur(x, blur_sigma)
    if fill == "noise":
        lo, hi = check_bounds(bounds)
        return lo + (hi - lo) * torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    raise ValueError(f"fill must be one of {FILLS}, a number or a tensor, got {fill!r}")


def feature_maps(attributions: AttrLike, x: torch.Tensor, reduce: str = "sum") -> torch.Tensor:
    """(N, F) feature scores: the 2-D map of images (reduced over channels) or the rows."""
    if isinstance(attributions, Explanation):
        a = attributions.attributions
    elif isinstance(attributions, torch.Tensor):
        a = attributions
    else:
        raise TypeError(f"attributions must be an Explanation or a tensor, got {type(attributions).__name__}")
    a = a.detach()
    if a.shape != x.shape:
        raise ValueError(f"attributions of shape {tuple(a.shape)} do not match the inputs {tuple(x.shape)}")
    if x.dim() == 4:
        if reduce == "sum":
            a = a.sum(1)
        elif reduce == "abs":
            a = a.abs().sum(1)
        elif reduce == "max":
            a = a.max(1).values
        else:
            raise ValueError(f"reduce must be 'sum', 'abs' or 'max', got {reduce!r}")
    elif reduce == "abs":
        a = a.abs()
    elif reduce not in ("sum", "max"):
        raise ValueError(f"reduce must be 'sum', 'abs' or 'max', got {reduce!r}")
    return a.reshape(a.shape[0], -1)


def removal_order(attributions: AttrLike, x: torch.Tensor, reduce: str = "sum") -> torch.Tensor:
    """(N, F) feature indices, most attributed first (stable for ties)."""
    m = feature_maps(attributions, x, reduce)
    return torch.sort(m, dim=1, descending=True, stable=True).indices


def _expand_mask(mask_f: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(M, F) feature mask -> (M, ...) element mask for inputs shaped like ``x[0]``."""
    if x.dim() == 4:
        return mask_f.reshape(mask_f.shape[0], 1, *x.shape[2:]).expand(-1, x.shape[1], -1, -1)
    return mask_f.reshape((mask_f.shape[0],) + tuple(x.shape[1:]))


def remove_features(x: torch.Tensor, order: torch.Tensor, k: Union[int, torch.Tensor],
                    fill: torch.Tensor) -> torch.Tensor:
    """Replace the first ``k`` features of ``order`` (per sample) by ``fill``.

    ``k`` is an int or a LongTensor (N,) of per-sample counts.
    """
    n, f = order.shape
    if isinstance(k, int):
        k = torch.full((n,), k, dtype=torch.long, device=x.device)
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(f, device=x.device).expand(n, f))
    mask = ranks < k[:, None]
    mask = _expand_mask(mask, x)
    return torch.where(mask, fill, x)


def _score(out: torch.Tensor, t: torch.Tensor, score: str) -> torch.Tensor:
    if score == "softmax":
        out = F.softmax(out, dim=1)
    elif score == "log_softmax":
        out = F.log_softmax(out, dim=1)
    return out.gather(1, t[:, None]).squeeze(1)


def _curve(model, x, attributions, target, steps, fill, reduce, score, bounds, blur_sigma, seed,
           batch_size, insertion: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    check_model(model)
    check_inputs(x, model)
    steps = check_positive_int(steps, "steps")
    if score not in _SCORES:
        raise ValueError(f"score must be one of {_SCORES}, got {score!r}")
    x = x.detach()
    n = x.shape[0]
    order = removal_order(attributions, x, reduce)
    f = order.shape[1]
    steps = min(steps, f)
    ks = torch.round(torch.linspace(0, f, steps + 1)).long().tolist()
    gen = None
    if fill == "noise" and seed is not None:
        gen = torch.Generator(device=x.device).manual_seed(int(seed))
    base = fill_values(x, fill, bounds=bounds, blur_sigma=blur_sigma, generator=gen)
    rows = rows_per_call(x, batch_size, model=model, work=len(ks) * n, grad=False)
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(f, device=x.device).expand(n, f))
    kt = torch.tensor(ks, device=x.device)
    # insertion starts from the fill and reveals the top-k features; deletion removes them
    src, dst = (base, x) if insertion else (x, base)

    def build(i, j):  # rows i:j of the (levels x N) perturbed inputs, level-major
        r = torch.arange(i, j, device=x.device)
        k = r % n
        mask = _expand_mask(ranks[k] < kt[r // n][:, None], x)
        return torch.where(mask, dst[k], src[k])

    with preserved(model), torch.no_grad():
        out = predict(model, x, batch_size)
        t = resolve_target(target if not isinstance(attributions, Explanation) or target is not None
                           else attributions.target, out)
        o = predict_rows(model, len(ks) * n, build, rows, channels_last=True)
        scores = _score(o, t.repeat(len(ks)), score).reshape(len(ks), n).T.contiguous()
    fractions = torch.tensor(ks, dtype=x.dtype, device=x.device) / f
    return fractions, scores


def deletion_curve(model, x: torch.Tensor, attributions: AttrLike, target=None, *, steps: int = 20,
                   fill: Union[str, float, torch.Tensor] = "zeros", reduce: str = "sum",
                   score: str = "softmax", bounds: Tuple[float, float] = (0.0, 1.0), blur_sigma: float = 2.0,
                   seed: Optional[int] = None, batch_size: Optional[int] = None
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Score of the explained class as the most attributed features are removed.

    Parameters
    ----------
    model : nn.Module or callable, (N, ...) -> (N, K)
    x : Tensor (N, C, H, W) or (N, D)
    attributions : Explanation or Tensor shaped like ``x``
        Ranks the features (descending after ``reduce`` over channels).
    target : None, int or LongTensor (N,)
        Class whose score is tracked; default the Explanation's target, else the prediction.
    steps : int, default 20
        Curve points after the first: ``k = round(j * F / steps)`` features removed, j = 0..steps.
    fill : {"zeros", "mean", "blur", "noise"}, float or Tensor, default "zeros"
    reduce : {"sum", "abs", "max"}, default "sum"
        Channel reduction of image attributions (signed sum: positive evidence first).
    score : {"softmax", "logit", "log_softmax"}, default "softmax"
    bounds : (float, float), default (0, 1)   range of ``fill="noise"``
    blur_sigma : float, default 2.0
    seed : int, optional                      for ``fill="noise"``
    batch_size : int, optional                rows per model call (default ``chunking.rows_per_pass``)

    Returns
    -------
    fractions : Tensor (steps + 1,)   removed fraction of the features
    scores : Tensor (N, steps + 1)

    References
    ----------
    Petsiuk, Das, Saenko. RISE: Randomized Input Sampling for Explanation of
    Black-box Models. BMVC 2018.
    Samek et al. Evaluating the visualization of what a deep neural network has
    learned. IEEE TNNLS 2017.
    """
    return _curve(model, x, attributions, target, steps, fill, reduce, score, bounds, blur_sigma, seed,
                  batch_size, insertion=False)


def insertion_curve(model, x: torch.Tensor, attributions: AttrLike, target=None, *, steps: int = 20,
                    fill: Union[str, float, torch.Tensor] = "blur", reduce: str = "sum",
                    score: str = "softmax", bounds: Tuple[float, float] = (0.0, 1.0), blur_sigma: float = 2.0,
                    seed: Optional[int] = None, batch_size: Optional[int] = None
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Score of the explained class as the most attributed features are revealed on
    top of ``fill`` (default a blurred copy, as in RISE). Parameters and returns as
    :func:`deletion_curve`."""
    if fill == "blur" and x.dim() != 4:
        fill = "zeros"
    return _curve(model, x, attributions, target, steps, fill, reduce, score, bounds, blur_sigma, seed,
                  batch_size, insertion=True)


def curve_auc(fractions: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Trapezoidal area under (N, S) curves over ``fractions`` (S,): (N,)."""
    return torch.trapezoid(scores, fractions, dim=-1)


def deletion_auc(model, x, attributions, target=None, **kw) -> torch.Tensor:
    """Area under the deletion curve, (N,); lower is more faithful. Keywords as :func:`deletion_curve`."""
    return curve_auc(*deletion_curve(model, x, attributions, target, **kw))


def insertion_auc(model, x, attributions, target=None, **kw) -> torch.Tensor:
    """Area under the insertion curve, (N,); higher is more faithful. Keywords as :func:`insertion_curve`."""
    return curve_auc(*insertion_curve(model, x, attributions, target, **kw))


def aopc(model, x: torch.Tensor, attributions: AttrLike, target=None, *, steps: int = 20,
         fill: Union[str, float, torch.Tensor] = "zeros", reduce: str = "sum", score: str = "softmax",
         **kw) -> torch.Tensor:
    """Area over the perturbation curve (Samek et al., 2017), (N,); higher is more faithful.

    ``AOPC = 1 / (L + 1) * sum_{j=0..L} (f(x) - f(x^(j)))`` where ``x^(j)`` has the
    top ``round(j * F / L)`` features removed, ``L = steps``.

    Examples
    --------
    >>> import torch
    >>> from xadv.metrics import aopc
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 2))
    >>> x = torch.rand(3, 8)
    >>> w = net[1].weight[0].detach()
    >>> good, bad = aopc(net, x, x * w, target=0, score="logit"), aopc(net, x, -x * w, target=0, score="logit")
    >>> bool((good >= bad).all())
    True
    """
    _, s = deletion_curve(model, x, attributions, target, steps=steps, fill=fill, reduce=reduce, score=score, **kw)
    return (s[:, :1] - s).mean(1)
