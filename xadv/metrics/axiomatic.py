"""Axiomatic properties of explanations: completeness, non-sensitivity, input invariance.

>>> import torch
>>> from xadv.metrics import completeness
>>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
>>> x = torch.rand(2, 1, 4, 4)
>>> a = x * net[1].weight[0].reshape(1, 1, 4, 4)   # gradient x input of a linear model
>>> bool((completeness(net, x, 0, a) < 1e-5).all())
True
"""
from __future__ import annotations

from typing import Optional

import torch

from .._model import preserved
from .._validation import check_positive_int
from ._base import (ExplainerLike, check_attributions, check_nonnegative, explanation_fn, flat, metric, setup,
                    scores_of, target_scores)
from .faithfulness.scores import BaselineLike, _masked_scores, _order_steps, _step_masks, baseline_values

__all__ = ["completeness", "non_sensitivity", "input_invariance", "ShiftedModel"]


@metric("axiomatic", "lower")
def completeness(model, x: torch.Tensor, y, a, *, baseline: BaselineLike = 0.0, softmax: bool = False,
                 relative: bool = False, batch_size: Optional[int] = None) -> torch.Tensor:
    """Completeness gap (Sundararajan et al., 2017): ``|sum_i a_i - (f(x) - f(x_0))|``.

    Parameters
    ----------
    model : nn.Module or callable
    x : Tensor (N, ...)
    y : None, int or LongTensor (N,)
    a : Tensor shaped like ``x``
    baseline : float, "mean", "black" or Tensor, default 0.0
        ``x_0``; IG is complete w.r.t. its own baseline.
    softmax : bool, default False
    relative : bool, default False
        Divide by ``|f(x) - f(x_0)|``.
    batch_size : int, optional

    Returns
    -------
    Tensor (N,); 0 for a complete explanation, lower is better. (Quantus' ``Completeness``
    reports whether the gap is exactly 0.)

    References
    ----------
    Sundararajan, Taly, Yan. Axiomatic Attribution for Deep Networks. ICML 2017.
    """
    x, out, t = setup(model, x, y, batch_size=batch_size)
    a = check_attributions(a, x)
    f0 = scores_of(out, t, softmax)
    fb = target_scores(model, baseline_values(x, baseline).contiguous(), t, batch_size, softmax)
    gap = (flat(a).sum(1) - (f0 - fb)).abs()
    if relative:
        d = (f0 - fb).abs()
        gap = gap / torch.where(d == 0, torch.ones_like(d), d)
    return gap


@metric("axiomatic", "lower")
def non_sensitivity(model, x: torch.Tensor, y, a, *, eps: float = 1e-5, features_in_step: int = 1,
                    baseline: BaselineLike = 0.0, softmax: bool = True, normalised: bool = False,
                    batch_size: Optional[int] = None) -> torch.Tensor:
    """Non-sensitivity (Nguyen & Martinez, 2020): the number of features where "zero
    attribution" and "the model ignores the feature" disagree.

    A feature group (``features_in_step`` features, in increasing attribution order)
    is ignored when setting it to the baseline moves the score by less than ``eps``;
    it has zero attribution when every ``|a_i| < eps``. Counted: features in exactly
    one of the two sets.

    Parameters
    ----------
    model, x, y, a : as in :func:`completeness`
    eps : float, default 1e-5
    features_in_step : int, default 1
    baseline : as in :func:`completeness`
    softmax : bool, default True
    normalised : bool, default False
        Divide by the number of features.
    batch_size : int, optional

    Returns
    -------
    Tensor (N,) of counts; lower is better.

    References
    ----------
    Nguyen, Martinez. On quantitative aspects of model interpretability. arXiv:2007.07584, 2020.
    """
    eps = check_nonnegative(eps, "eps")
    x, out, t = setup(model, x, y, batch_size=batch_size)
    a = check_attributions(a, x)
    af = flat(a)
    step = check_positive_int(features_in_step, "features_in_step")
    idx = _order_steps(af, step, descending=False)
    masks = _step_masks(idx, af.shape[1], cumulative=False)  # (S, N, F)
    y0 = scores_of(out, t, softmax)
    yp = _masked_scores(model, x, masks, baseline_values(x, baseline), t, batch_size, softmax)  # (N, S)
    ignored = (yp - y0[:, None]).abs() < eps  # (N, S)
    ignored_f = (masks.transpose(0, 1) & ignored[..., None]).any(1)  # (N, F)
    zero_f = af.abs() < eps
    v = (ignored_f ^ zero_f).sum(1).to(x.dtype)
    return v / af.shape[1] if normalised else v


class ShiftedModel(torch.nn.Module):
    """``f'(z) = f(z - shift)``: the model Kindermans et al. build by moving the first
    layer's bias, so ``f'(x + shift) = f(x)`` for every ``x``."""

    def __init__(self, model, shift):
        super().__init__()
        self.model = model
        self.shift = shift

    def forward(self, z):
        return self.model(z - self.shift)


@metric("axiomatic", "lower", needs=("model", "explainer"))
def input_invariance(model, x: torch.Tensor, y=None, a=None, *, explainer: ExplainerLike = "saliency",
                     shift: float = -1.0, rtol: float = 1e-3, batch_size: Optional[int] = None) -> torch.Tensor:
    """Input invariance (Kindermans et al., 2019): the relative change of the explanation
    when the input is shifted by a constant and the model compensates the shift.

    ``||e_{f'}(x + shift) - e_f(x)||_1 / ||e_f(x)||_1`` with ``f'(z) = f(z - shift)``
    (:class:`ShiftedModel`); both models compute the same function of the data, so
    an input-invariant explainer gives 0. Saliency and SmoothGrad (with the same
    noise) pass; Gradient x Input and IG with a zero baseline do not.

    Parameters
    ----------
    model : nn.Module or callable
    x : Tensor (N, ...)
    y : None, int or LongTensor (N,)
    a : Tensor, optional
        Explanation of ``x`` (computed when omitted).
    explainer : str, Explainer or function f(model, x, y), default "saliency"
    shift : float, default -1.0
        Kindermans et al.'s shift maps [0, 1] images to [-1, 0].
    rtol : float, default 1e-3
        Unused by the score; :func:`xadv.metrics.evaluate` counts a pass below it.
    batch_size : int, optional
        Rows per model call (default :func:`xadv.explainers.chunking.rows_per_pass`).

    Returns
    -------
    Tensor (N,); 0 is invariant, lower is better.

    References
    ----------
    Kindermans, Hooker, Adebayo, Alber, Schütt, Dähne, Erhan, Kim. The (Un)reliability
    of Saliency Methods. In Explainable AI, Springer 2019.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    >>> x = torch.rand(3, 4)
    >>> bool((input_invariance(net, x, 0, explainer="saliency") < 1e-5).all())
    True
    >>> bool((input_invariance(net, x, 0, explainer="input_x_gradient") > 0.1).all())
    True
    """
    explain = explanation_fn(explainer, batch_size)
    x, out, t = setup(model, x, y, batch_size=batch_size)
    with preserved(model):
        a0 = check_attributions(explain(model, x, t) if a is None else a, x)
        shifted = ShiftedModel(model, shift)
        a1 = check_attributions(explain(shifted, x + shift, t), x)
    den = flat(a0).abs().sum(1)
    return flat(a1 - a0).abs().sum(1) / torch.where(den == 0, torch.ones_like(den), den)
