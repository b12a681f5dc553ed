"""Similarity of two explanations, sample by sample.

Every function takes two batches of maps and returns one value per sample, a
tensor of shape (N,). A "map" is any of

* an :class:`~xadv.explanation.Explanation` (reduced to a 2-D map with
  ``saliency_map(reduce)``, ``reduce="abs"`` by default as in Ghorbani et al.),
* a tensor (N, H, W) of 2-D maps,
* a tensor (N, C, H, W) of image attributions (reduced over channels like an
  Explanation), or (N, D) of tabular attributions.

The functions are differentiable where the metric is (Pearson, cosine, MSE,
SSIM, center of mass); rank metrics are not.

>>> import torch
>>> from xadv.metrics import spearman, topk_intersection
>>> a = torch.rand(3, 8, 8)
>>> spearman(a, a)
tensor([1., 1., 1.])
>>> topk_intersection(a, a, k=10).tolist()
[1.0, 1.0, 1.0]
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from .._validation import all_finite
from ..explanation import Explanation

MapLike = Union[Explanation, torch.Tensor]

__all__ = [
    "as_maps", "topk_intersection", "spearman", "kendall", "pearson", "cosine", "ssim", "mse",
    "center_of_mass", "center_of_mass_distance", "similarities", "SIMILARITY_METRICS",
]


def as_maps(a: MapLike, reduce: str = "abs") -> torch.Tensor:
    """Turn an explanation or an attribution tensor into a batch of maps.

    Returns (N, H, W) for image attributions, (N, D) for tabular ones; an
    Explanation or a (N, C, H, W) tensor is reduced over channels with ``reduce``
    (see :meth:`Explanation.saliency_map`). A (N, H, W) tensor is returned as it is.
    """
    if isinstance(a, Explanation):
        return a.saliency_map(reduce)
    if not isinstance(a, torch.Tensor):
        raise TypeError(f"expected an Explanation or a tensor of maps, got {type(a).__name__}")
    if not a.is_floating_point():
        raise TypeError(f"maps must be floating point, got dtype {a.dtype}")
    if a.dim() < 2:
        raise ValueError(f"maps must be batch-first (N, H, W), (N, C, H, W) or (N, D), got shape {tuple(a.shape)}")
    if a.dim() == 4:
        return Explanation(a, a, torch.zeros(a.shape[0], dtype=torch.long, device=a.device)).saliency_map(reduce)
    if a.dim() > 4:
        raise ValueError(f"maps must have at most 4 dimensions (N, C, H, W), got shape {tuple(a.shape)}")
    return a


def _pair(a: MapLike, b: MapLike, reduce: str) -> Tuple[torch.Tensor, torch.Tensor]:
    ma, mb = as_maps(a, reduce), as_maps(b, reduce)
    if ma.shape != mb.shape:
        raise ValueError(f"the two batches of maps differ in shape: {tuple(ma.shape)} vs {tuple(mb.shape)}")
    if ma.device != mb.device:
        raise ValueError(f"the two batches of maps are on different devices: {ma.device} vs {mb.device}")
    if ma.shape[0] == 0:
        raise ValueError("the batches of maps are empty (N = 0); pass at least one map")
    if not (all_finite(ma) and all_finite(mb)):
        raise ValueError("the maps contain NaN or Inf values")
    return ma, mb


def _flat(m: torch.Tensor) -> torch.Tensor:
    return m.reshape(m.shape[0], -1)


def _resolve_k(k: Union[int, float], d: int) -> int:
    if isinstance(k, bool):
        raise TypeError("k must be an int count or a float fraction, got bool")
    if isinstance(k, float):
        if not 0 < k <= 1:
            raise ValueError(f"a fractional k must be in (0, 1], got {k}")
        return max(1, int(round(k * d)))
    if not isinstance(k, int) or not 1 <= k <= d:
        raise ValueError(f"k must be an int in [1, {d}] or a fraction in (0, 1], got {k!r}")
    return k


def topk_intersection(a: MapLike, b: MapLike, k: Union[int, float] = 0.1, *, reduce: str = "abs") -> torch.Tensor:
    """Fraction of the ``k`` most important features of ``a`` that are also among the ``k`` of ``b``.

    Parameters
    ----------
    a, b : Explanation or Tensor (N, H, W) / (N, C, H, W) / (N, D)
    k : int or float, default 0.1
        A count, or a fraction of the features (Ghorbani et al. use 1000 of 50k pixels).
    reduce : str, default "abs"
        Channel reduction for Explanations and (N, C, H, W) tensors.

    Returns
    -------
    Tensor (N,) in [0, 1]; 1 means the same top-k set.

    References
    ----------
    Ghorbani, Abid, Zou. Interpretation of Neural Networks Is Fragile. AAAI 2019.
    """
    ma, mb = _pair(a, b, reduce)
    fa, fb = _flat(ma).detach(), _flat(mb).detach()
    kk = _resolve_k(k, fa.shape[1])
    ia = torch.zeros_like(fa, dtype=torch.bool).scatter_(1, fa.topk(kk, dim=1).indices, True)
    ib = torch.zeros_like(fb, dtype=torch.bool).scatter_(1, fb.topk(kk, dim=1).indices, True)
    return (ia & ib).sum(1).to(fa.dtype) / kk


def _average_ranks(f: torch.Tensor) -> torch.Tensor:
    """Ranks 1..D per row, ties get their average rank (as scipy.stats.rankdata)."""
    s, _ = f.sort(dim=1)
    left = torch.searchsorted(s, f.contiguous(), right=False)
    right = torch.searchsorted(s, f.contiguous(), right=True)
    return (left + right + 1).to(torch.float64) / 2.0


def _pearson_rows(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    xc = x - x.mean(1, keepdim=True)
    yc = y - y.mean(1, keepdim=True)
    num = (xc * yc).sum(1)
    den = (xc.pow(2).sum(1) * yc.pow(2).sum(1)).sqrt()
    out = num / den.clamp_min(torch.finfo(den.dtype).tiny)
    # a constant map has no defined correlation
    return torch.where(den > 0, out, torch.full_like(out, float("nan")))


def spearman(a: MapLike, b: MapLike, *, reduce: str = "abs") -> torch.Tensor:
    """Spearman rank correlation per sample (ties get average ranks, as scipy.stats.spearmanr).

    Returns
    -------
    Tensor (N,) in [-1, 1]; NaN where a map is constant.
    """
    ma, mb = _pair(a, b, reduce)
    fa, fb = _flat(ma).detach(), _flat(mb).detach()
    r = _pearson_rows(_average_ranks(fa), _average_ranks(fb))
    return r.to(fa.dtype)


def kendall(a: MapLike, b: MapLike, *, reduce: str = "abs", block: int = 4096) -> torch.Tensor:
    """Kendall's tau-b per sample (the variant scipy.stats.kendalltau computes by default).

    Exact O(D^2) pair count, evaluated in blocks of ``block`` rows so memory stays
    at ``block * D`` per sample.

    Returns
    -------
    Tensor (N,) in [-1, 1]; NaN where a map is constant.
    """
    ma, mb = _pair(a, b, reduce)
    fa, fb = _flat(ma).detach(), _flat(mb).detach()
    n, d = fa.shape
    out = torch.empty(n, dtype=torch.float64, device=fa.device)
    for i in range(n):
        x, y = fa[i], fb[i]
        s = torch.zeros((), dtype=torch.float64, device=fa.device)
        tx = torch.zeros((), dtype=torch.float64, device=fa.device)
        ty = torch.zeros((), dtype=torch.float64, device=fa.device)
        for start in range(0, d, block):
            sx = torch.sign(x[start:start + block, None] - x[None, :])
            sy = torch.sign(y[start:start + block, None] - y[None, :])
            s += (sx * sy).sum(dtype=torch.float64)
            tx += (sx == 0).sum(dtype=torch.float64)
            ty += (sy == 0).sum(dtype=torch.float64)
        # ordered pairs; the diagonal counts as a tie in both and is removed
        pairs = float(d * (d - 1))
        den = ((pairs - (tx - d)) * (pairs - (ty - d))).sqrt()
        out[i] = s / den if den > 0 else float("nan")
    return out.to(fa.dtype)


def pearson(a: MapLike, b: MapLike, *, reduce: str = "abs") -> torch.Tensor:
    """Pearson correlation per sample. Tensor (N,); NaN where a map is constant."""
    ma, mb = _pair(a, b, reduce)
    return _pearson_rows(_flat(ma), _flat(mb))


def cosine(a: MapLike, b: MapLike, *, reduce: str = "abs") -> torch.Tensor:
    """Cosine similarity per sample. Tensor (N,) in [-1, 1] (0 for an all-zero map)."""
    ma, mb = _pair(a, b, reduce)
    return F.cosine_similarity(_flat(ma), _flat(mb), dim=1, eps=1e-12)


def _normalize(m: torch.Tensor, how: Optional[str]) -> torch.Tensor:
    if how is None or how == "none":
        return m
    f = _flat(m)
    tiny = torch.finfo(f.dtype).tiny
    if how == "sum":
        f = f / f.abs().sum(1, keepdim=True).clamp_min(tiny)
    elif how == "max":
        f = f / f.abs().max(1, keepdim=True).values.clamp_min(tiny)
    elif how == "minmax":
        lo, hi = f.min(1, keepdim=True).values, f.max(1, keepdim=True).values
        f = (f - lo) / (hi - lo).clamp_min(tiny)
    else:
        raise ValueError(f"normalize must be None, 'sum', 'max' or 'minmax', got {how!r}")
    return f.reshape(m.shape)


def mse(a: MapLike, b: MapLike, *, reduce: str = "abs", normalize: Optional[str] = "sum") -> torch.Tensor:
    """Mean squared error per sample between the (normalised) maps.

    Parameters
    ----------
    normalize : {"sum", "max", "minmax", None}, default "sum"
        Per-sample scaling before comparing: ``sum`` makes ``|map|`` sum to one (as
        Dombrowski et al. compare maps), ``max`` divides by the largest ``|value|``,
        ``minmax`` maps to [0, 1], ``None`` compares raw values.
    """
    ma, mb = _pair(a, b, reduce)
    return (_flat(_normalize(ma, normalize)) - _flat(_normalize(mb, normalize))).pow(2).mean(1)


def ssim(a: MapLike, b: MapLike, *, reduce: str = "abs", normalize: Optional[str] = "minmax",
         data_range: Optional[float] = None, win_size: int = 7, k1: float = 0.01,
         k2: float = 0.03) -> torch.Tensor:
    """Structural similarity (Wang et al., 2004) per 2-D map, as scikit-image computes it.

    The defaults reproduce ``skimage.metrics.structural_similarity(a, b,
    data_range=...)``: a uniform ``win_size`` x ``win_size`` window, sample
    covariances, constants ``(k1 L)^2`` and ``(k2 L)^2``, the mean over the
    windows that lie fully inside the image.

    Parameters
    ----------
    a, b : maps of shape (N, H, W) (or anything :func:`as_maps` reduces to it)
    normalize : {"minmax", "max", "sum", None}, default "minmax"
        Per-sample scaling before comparing (explanations have arbitrary scale).
    data_range : float, optional
        ``L``; default 1.0 after ``minmax``/``max`` normalisation, else the largest
        per-sample value range of the two maps.
    win_size : int, default 7 (odd, at most min(H, W))

    Returns
    -------
    Tensor (N,), 1 for identical maps.

    References
    ----------
    Wang, Bovik, Sheikh, Simoncelli. Image quality assessment: from error visibility
    to structural similarity. IEEE TIP 2004.
    """
    ma, mb = _pair(a, b, reduce)
    if ma.dim() != 3:
        raise ValueError(f"SSIM needs 2-D maps (N, H, W), got shape {tuple(ma.shape)}")
    h, w = ma.shape[-2:]
    if win_size % 2 != 1 or win_size > min(h, w) or win_size < 3:
        raise ValueError(f"win_size must be odd, >= 3 and <= min(H, W) = {min(h, w)}, got {win_size}")
    ma, mb = _normalize(ma, normalize), _normalize(mb, normalize)
    if data_range is None:
        if normalize in ("minmax", "max"):
            data_range = 1.0
        else:
            ra = _flat(ma).max(1).values - _flat(ma).min(1).values
            rb = _flat(mb).max(1).values - _flat(mb).min(1).values
            data_range = torch.maximum(ra, rb).clamp_min(torch.finfo(ma.dtype).tiny)[:, None, None, None]
    x, y = ma[:, None], mb[:, None]
    kernel = torch.full((1, 1, win_size, win_size), 1.0 / win_size ** 2, dtype=x.dtype, device=x.device)
    np_ = win_size ** 2
    cov_norm = np_ / (np_ - 1.0)
    ux, uy = F.conv2d(x, kernel), F.conv2d(y, kernel)
    uxx, uyy, uxy = F.conv2d(x * x, kernel), F.conv2d(y * y, kernel), F.conv2d(x * y, kernel)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3))


def center_of_mass(a: MapLike, *, reduce: str = "abs") -> torch.Tensor:
    """Center of mass (row, col) in pixels of each non-negative 2-D map.

    The map is taken in absolute value. Returns Tensor (N, 2); the image center for
    an all-zero map. Differentiable.
    """
    m = as_maps(a, reduce)
    if m.dim() != 3:
        raise ValueError(f"center of mass needs 2-D maps (N, H, W), got shape {tuple(m.shape)}")
    m = m.abs()
    n, h, w = m.shape
    rows = torch.arange(h, dtype=m.dtype, device=m.device)
    cols = torch.arange(w, dtype=m.dtype, device=m.device)
    tot = m.sum(dim=(1, 2))
    safe = tot.clamp_min(torch.finfo(m.dtype).tiny)
    r = (m.sum(2) * rows).sum(1) / safe
    c = (m.sum(1) * cols).sum(1) / safe
    center = torch.tensor([(h - 1) / 2.0, (w - 1) / 2.0], dtype=m.dtype, device=m.device)
    com = torch.stack([r, c], dim=1)
    return torch.where((tot > 0)[:, None], com, center.expand(n, 2))


def center_of_mass_distance(a: MapLike, b: MapLike, *, reduce: str = "abs") -> torch.Tensor:
    """Euclidean distance in pixels between the centers of mass of two maps. Tensor (N,).

    References
    ----------
    Ghorbani, Abid, Zou. Interpretation of Neural Networks Is Fragile. AAAI 2019.
    """
    ma, mb = _pair(a, b, reduce)
    return (center_of_mass(ma) - center_of_mass(mb)).norm(dim=1)


#: names of the metrics :func:`similarities` returns; ``True`` when higher means more similar
SIMILARITY_METRICS = {
    "topk_intersection": True, "spearman": True, "kendall": True, "pearson": True, "cosine": True,
    "ssim": True, "mse": False, "center_of_mass_distance": False,
}


def similarities(a: MapLike, b: MapLike, *, k: Union[int, float] = 0.1, reduce: str = "abs",
               metrics: Optional[Tuple[str, ...]] = None) -> Dict[str, torch.Tensor]:
    """Every similarity metric between two batches of maps, as a dict of Tensor (N,).

    Parameters
    ----------
    a, b : Explanation or Tensor
    k : int or float, default 0.1
        For the top-k intersection.
    reduce : str, default "abs"
    metrics : tuple of str, optional
        A subset of :data:`SIMILARITY_METRICS`; default all. SSIM and the center of
        mass need 2-D maps and are skipped for tabular (N, D) attributions.

    Examples
    --------
    >>> import torch
    >>> sorted(similarities(torch.rand(2, 8, 8), torch.rand(2, 8, 8)))[:3]
    ['center_of_mass_distance', 'cosine', 'kendall']
    """
    ma, mb = _pair(a, b, reduce)
    ma, mb = ma.detach(), mb.detach()
    names = tuple(SIMILARITY_METRICS) if metrics is None else tuple(metrics)
    for name in names:
        if name not in SIMILARITY_METRICS:
            raise ValueError(f"unknown metric {name!r}; known: {', '.join(SIMILARITY_METRICS)}")
    two_d = ma.dim() == 3
    out: Dict[str, torch.Tensor] = {}
    for name in names:
        if name == "topk_intersection":
            out[name] = topk_intersection(ma, mb, k)
        elif name == "ssim":
            if two_d and min(ma.shape[-2:]) >= 7:
                out[name] = ssim(ma, mb)
        elif name == "center_of_mass_distance":
            if two_d:
                out[name] = center_of_mass_distance(ma, mb)
        else:
            out[name] = globals()[name](ma, mb)
    return out
