"""Complexity of explanations: how concentrated the attribution mass is.

A concise explanation puts its mass on few features. Every function takes
attributions ``a`` (N, ...) and returns (N,). By default absolute values are
scored (``abs=True``), as the papers define the metrics on relevance magnitude.

>>> import torch
>>> from xadv.metrics import sparseness, complexity
>>> peaked = torch.zeros(1, 1, 4, 4); peaked[0, 0, 0, 0] = 1.0
>>> flat = torch.ones(1, 1, 4, 4)
>>> bool(sparseness(peaked) > sparseness(flat)), bool(complexity(peaked) < complexity(flat))
(True, True)
"""
from __future__ import annotations

import torch

from ._base import check_attributions, check_nonnegative, flat, metric, prepare, sort_values_rows

__all__ = ["sparseness", "complexity", "effective_complexity"]


@metric("complexity", "higher", needs=())
def sparseness(a, *, abs: bool = True, normalise: bool = False) -> torch.Tensor:
    """Gini index of the attributions (Chalasani et al., 2020); higher is sparser.

    ``G = sum_i (2 i - d - 1) a_(i) / (d sum_i a_(i))`` over the ``d`` values sorted
    ascending, each shifted by 1e-7 (so an all-zero map scores 0, as in Quantus).

    Parameters
    ----------
    a : Tensor (N, ...)
        Attributions (an Explanation is accepted).
    abs : bool, default True
        Score ``|a|``.
    normalise : bool, default False
        Divide by the per-sample max of ``|a|`` first (does not change the Gini index).

    Returns
    -------
    Tensor (N,) in [0, 1].

    References
    ----------
    Chalasani, Chen, Chowdhury, Wu, Jha. Concise Explanations of Neural Networks using
    Adversarial Training. ICML 2020.

    Examples
    --------
    >>> import torch
    >>> sparseness(torch.tensor([[0.0, 0.0, 0.0, 1.0]]))
    tensor([0.7500])
    """
    f = flat(prepare(check_attributions(a), abs, normalise)) + 1e-7
    d = f.shape[1]
    s = sort_values_rows(f)
    i = torch.arange(1, d + 1, dtype=f.dtype, device=f.device)
    return ((2 * i - d - 1) * s).sum(1) / (d * s.sum(1))


@metric("complexity", "lower", needs=())
def complexity(a, *, abs: bool = True, normalise: bool = False) -> torch.Tensor:
    """Entropy of the attribution distribution ``p_i = |a_i| / sum_j |a_j|`` (Bhatt et al., 2020).

    ``-sum_i p_i log(p_i + 1e-12)``; lower is less complex (``log d`` for a uniform map).

    Parameters
    ----------
    a : Tensor (N, ...)
    abs : bool, default True
    normalise : bool, default False

    Returns
    -------
    Tensor (N,) in [0, log d].

    References
    ----------
    Bhatt, Weller, Moura. Evaluating and Aggregating Feature-based Model Explanations. IJCAI 2020.

    Examples
    --------
    >>> import torch, math
    >>> round(float(complexity(torch.ones(1, 8))), 4) == round(math.log(8), 4)
    True
    """
    f = flat(prepare(check_attributions(a), abs, normalise))
    p = f / f.abs().sum(1, keepdim=True)
    return -(p * torch.log(p + 1e-12)).sum(1)


@metric("complexity", "lower", needs=())
def effective_complexity(a, *, eps: float = 1e-5, abs: bool = True, normalise: bool = False) -> torch.Tensor:
    """Number of attributions above ``eps`` (Nguyen & Martinez, 2020); lower is simpler.

    Parameters
    ----------
    a : Tensor (N, ...)
    eps : float, default 1e-5
    abs : bool, default True
    normalise : bool, default False
        Divide by the per-sample max of ``|a|`` first, so ``eps`` is relative.

    Returns
    -------
    Tensor (N,) of counts (as floats).

    References
    ----------
    Nguyen, Martinez. On quantitative aspects of model interpretability. arXiv:2007.07584, 2020.

    Examples
    --------
    >>> import torch
    >>> effective_complexity(torch.tensor([[0.0, 0.5, -2.0, 1e-7]]))
    tensor([2.])
    """
    eps = check_nonnegative(eps, "eps")
    f = flat(prepare(check_attributions(a), abs, normalise))
    return (f > eps).sum(1).to(f.dtype)
