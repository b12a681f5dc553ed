"""Localisation: does the explanation point at the evidence a ground-truth mask marks?

Every function takes attributions ``a`` (N, ...) and a mask (N, ...) of the same
shape or broadcastable to it (e.g. a (N, 1, H, W) mask for (N, C, H, W)
attributions, or a (N, H, W) mask for (N, H, W) maps) and returns (N,); a sample
with an empty mask scores NaN. :func:`xadv.data.planted_evidence` makes a
dataset with such masks.

>>> import torch
>>> from xadv.metrics import pointing_game, relevance_mass_accuracy
>>> mask = torch.zeros(1, 1, 4, 4, dtype=torch.bool); mask[..., :2, :2] = True
>>> a = mask.float() + 0.1
>>> pointing_game(a, mask), relevance_mass_accuracy(a, mask)
(tensor([1.]), tensor([0.7857]))
"""
from __future__ import annotations

import torch

from ._base import check_attributions, flat, metric, prepare

__all__ = ["pointing_game", "attribution_localisation", "top_k_intersection", "relevance_rank_accuracy",
           "relevance_mass_accuracy", "auc", "focus"]


def _pair(a, mask):
    a = check_attributions(a)
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a tensor shaped like the attributions, got {type(mask).__name__}")
    m = mask.to(device=a.device)
    if m.dim() == a.dim() - 1 and a.dim() == 4:
        m = m[:, None]
    try:
        m = torch.broadcast_to(m, a.shape)
    except RuntimeError:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to the attributions "
                         f"{tuple(a.shape)}") from None
    return a, flat(m != 0)


def _nan_empty(score: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return torch.where(m.any(1), score, torch.full_like(score, float("nan")))


@metric("localisation", "higher", needs=("mask",))
def pointing_game(a, mask, *, weighted: bool = False, abs: bool = False, normalise: bool = False) -> torch.Tensor:
    """1 when a maximum of the attributions lies inside the mask, else 0 (Zhang et al., 2018).

    Parameters
    ----------
    a : Tensor (N, ...)
    mask : Tensor (N, ...), bool or 0/1, broadcastable to ``a``
    weighted : bool, default False
        Score a hit ``1 - |mask| / d`` (a small object is harder to hit by chance).
    abs, normalise : bool, default False
        Preprocessing (see :func:`xadv.metrics._base.prepare`).

    Returns
    -------
    Tensor (N,) in {0, 1} (or the weight); NaN for an empty mask.

    References
    ----------
    Zhang, Bargal, Lin, Brandt, Shen, Sclaroff. Top-down Neural Attention by Excitation
    Backprop. IJCV 2018.

    Examples
    --------
    >>> import torch
    >>> pointing_game(torch.tensor([[0.1, 0.9, 0.3]]), torch.tensor([[0, 1, 0]]))
    tensor([1.])
    """
    a, m = _pair(a, mask)
    f = flat(prepare(a, abs, normalise))
    hit = ((f == f.amax(1, keepdim=True)) & m).any(1).to(f.dtype)
    if weighted:
        hit = torch.where(hit > 0, 1 - m.sum(1).to(f.dtype) / m.shape[1], hit)
    return _nan_empty(hit, m)


@metric("localisation", "higher", needs=("mask",))
def attribution_localisation(a, mask, *, positive: bool = True, weighted: bool = False, abs: bool = False,
                             normalise: bool = False) -> torch.Tensor:
    """Share of the (positive) attribution mass inside the mask (Kohlbrenner et al., 2020).

    ``sum_{i in mask} a_i / (sum_i a_i + 1e-9)`` with ``a`` clipped at 0 when
    ``positive``; ``weighted`` multiplies by ``|mask| / d``.

    Parameters
    ----------
    a : Tensor (N, ...)
    mask : Tensor (N, ...)
    positive : bool, default True
    weighted : bool, default False
    abs, normalise : bool, default False

    Returns
    -------
    Tensor (N,) in [0, 1]; NaN for an empty mask.

    References
    ----------
    Kohlbrenner, Bauer, Nakajima, Binder, Samek, Lapuschkin. Towards Best Practice in
    Explaining Neural Network Decisions with LRP. IJCNN 2020.

    Examples
    --------
    >>> import torch
    >>> attribution_localisation(torch.tensor([[1.0, 3.0, -1.0]]), torch.tensor([[0, 1, 1]]))
    tensor([0.7500])
    """
    a, m = _pair(a, mask)
    f = flat(prepare(a, abs, normalise))
    if positive:
        f = f.clamp_min(0)
    r = (f * m).sum(1) / (f.sum(1) + 1e-9)
    if weighted:
        r = r * m.sum(1).to(f.dtype) / m.shape[1]
    return _nan_empty(r, m)


@metric("localisation", "higher", needs=("mask",))
def top_k_intersection(a, mask, *, k: int = 1000, concept_influence: bool = False, abs: bool = False,
                       normalise: bool = False) -> torch.Tensor:
    """Fraction of the ``k`` most attributed features that fall inside the mask (Theiner et al., 2021).

    Parameters
    ----------
    a : Tensor (N, ...)
    mask : Tensor (N, ...)
    k : int, default 1000
        Clipped to the number of features.
    concept_influence : bool, default False
        Divide by the mask's share of the features (chance level becomes 1).
    abs, normalise : bool, default False

    Returns
    -------
    Tensor (N,); NaN for an empty mask.

    References
    ----------
    Theiner, Müller-Budack, Ewerth. Interpretable Semantic Photo Geolocation. WACV 2022.

    Examples
    --------
    >>> import torch
    >>> top_k_intersection(torch.tensor([[0.9, 0.8, 0.1, 0.0]]), torch.tensor([[1, 0, 0, 0]]), k=2)
    tensor([0.5000])
    """
    a, m = _pair(a, mask)
    f = flat(prepare(a, abs, normalise))
    k = max(1, min(int(k), f.shape[1]))
    idx = torch.topk(f, k, dim=1).indices
    r = m.gather(1, idx).to(f.dtype).mean(1)
    if concept_influence:
        r = r * m.shape[1] / m.sum(1).to(f.dtype)
    return _nan_empty(r, m)


@metric("localisation", "higher", needs=("mask",))
def relevance_rank_accuracy(a, mask, *, abs: bool = False, normalise: bool = False) -> torch.Tensor:
    """Fraction of the ``K = |mask|`` most attributed features inside the mask (Arras et al., 2022).

    Parameters
    ----------
    a : Tensor (N, ...)
    mask : Tensor (N, ...)
    abs, normalise : bool, default False

    Returns
    -------
    Tensor (N,) in [0, 1]; NaN for an empty mask.

    References
    ----------
    Arras, Osman, Samek. CLEVR-XAI: A benchmark dataset for the ground truth evaluation of
    neural network explanations. Information Fusion 2022.

    Examples
    --------
    >>> import torch
    >>> relevance_rank_accuracy(torch.tensor([[0.9, 0.8, 0.1, 0.0]]), torch.tensor([[1, 0, 1, 0]]))
    tensor([0.5000])
    """
    a, m = _pair(a, mask)
    f = flat(prepare(a, abs, normalise))
    order = torch.sort(f, dim=1, descending=True, stable=True).indices
    k = m.sum(1)
    ranked = m.gather(1, order)
    top = torch.arange(f.shape[1], device=f.device)[None] < k[:, None]
    r = (ranked & top).sum(1).to(f.dtype) / k.clamp_min(1).to(f.dtype)
    return _nan_empty(r, m)


@metric("localisation", "higher", needs=("mask",))
def relevance_mass_accuracy(a, mask, *, abs: bool = False, normalise: bool = False) -> torch.Tensor:
    """Attribution mass inside the mask over the total mass (Arras et al., 2022).

    Parameters
    ----------
    a : Tensor (N, ...)
    mask : Tensor (N, ...)
    abs, normalise : bool, default False
        With signed attributions the ratio can leave [0, 1]; pass ``abs=True`` or
        non-negative maps.

    Returns
    -------
    Tensor (N,); NaN for an empty mask.

    Examples
    --------
    >>> import torch
    >>> relevance_mass_accuracy(torch.tensor([[1.0, 3.0]]), torch.tensor([[0, 1]]))
    tensor([0.7500])
    """
    a, m = _pair(a, mask)
    f = flat(prepare(a, abs, normalise))
    return _nan_empty((f * m).sum(1) / f.sum(1), m)


@metric("localisation", "higher", needs=("mask",))
def auc(a, mask, *, abs: bool = False, normalise: bool = False) -> torch.Tensor:
    """Area under the ROC curve of the attributions as a detector of mask features (Fawcett, 2006).

    Computed exactly from ranks (Mann-Whitney U, ties count one half), equal to
    ``sklearn.metrics.roc_auc_score(mask, a)`` per sample.

    Parameters
    ----------
    a : Tensor (N, ...)
    mask : Tensor (N, ...)
    abs, normalise : bool, default False

    Returns
    -------
    Tensor (N,) in [0, 1]; NaN when the mask is empty or full.

    Examples
    --------
    >>> import torch
    >>> auc(torch.tensor([[0.9, 0.2, 0.5, 0.1]]), torch.tensor([[1, 0, 1, 0]]))
    tensor([1.])
    """
    from ._base import rank_rows

    a, m = _pair(a, mask)
    f = flat(prepare(a, abs, normalise))
    r = rank_rows(f)
    p = m.sum(1).to(f.dtype)
    q = m.shape[1] - p
    u = (r * m).sum(1) - p * (p + 1) / 2
    out = u / (p * q)
    return torch.where((p > 0) & (q > 0), out, torch.full_like(out, float("nan")))


@metric("localisation", "higher", needs=("mask",))
def focus(a, quadrants, *, abs: bool = False, normalise: bool = False) -> torch.Tensor:
    """Share of the positive relevance on the quadrants of a 2x2 mosaic that show the
    explained class (Arias-Duart et al., 2022).

    Parameters
    ----------
    a : Tensor (N, C, H, W)
        Attributions of mosaics (see :func:`xadv.data.mosaics`).
    quadrants : Tensor (N, 4), bool or 0/1
        Which quadrants (top-left, top-right, bottom-left, bottom-right) hold the
        explained class.
    abs, normalise : bool, default False

    Returns
    -------
    Tensor (N,) in [0, 1]; 0.5 is chance for two target quadrants out of four.

    References
    ----------
    Arias-Duart, Parés, Garcia-Gasulla, Giménez-Ábalos. Focus! Rating XAI Methods and
    Finding Biases. FUZZ-IEEE 2022.

    Examples
    --------
    >>> import torch
    >>> a = torch.zeros(1, 1, 4, 4); a[..., :2, :2] = 1.0
    >>> focus(a, torch.tensor([[1, 0, 0, 1]]))
    tensor([1.])
    """
    a = check_attributions(a)
    if a.dim() != 4:
        raise ValueError(f"focus needs (N, C, H, W) attributions of mosaics, got shape {tuple(a.shape)}")
    q = torch.as_tensor(quadrants, device=a.device)
    if q.shape != (a.shape[0], 4):
        raise ValueError(f"quadrants must have shape (N, 4) = ({a.shape[0]}, 4), got {tuple(q.shape)}")
    q = (q != 0).to(a.dtype)
    a = prepare(a, abs, normalise).clamp_min(0)
    h, w = a.shape[2] // 2, a.shape[3] // 2
    s = torch.zeros_like(a)
    s[:, :, :h, :w] = q[:, 0, None, None, None]
    s[:, :, :h, w:] = q[:, 1, None, None, None]
    s[:, :, h:, :w] = q[:, 2, None, None, None]
    s[:, :, h:, w:] = q[:, 3, None, None, None]
    return flat(s * a).sum(1) / (flat(a).sum(1) + 1e-9)
