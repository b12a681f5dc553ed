"""Defenses of explanations against fooling: smoothing, aggregation and training.

* :class:`BetaSmoothed` — compute any gradient explainer on a softplus copy of the
  model (Dombrowski et al., 2019): the curvature, hence the largest possible
  change of the map in a small ball, is bounded by ``beta``.
* :class:`Aggregate` — average the normalised maps of several explainers
  (Rieger & Hansen, 2020): a fooling attack has to move all of them at once.
* :class:`~xadv.explainers.SmoothGrad` — averaging over noise (re-exported).
* :func:`evaluate` — fooling success with and without each defense at an equal
  attack budget.
* :class:`AdversarialTraining` (PGD-AT, TRADES) and :class:`ExplanationRegularization`
  (curvature or gradient-norm penalty) — fine-tune a copy of the model so that its
  predictions and its explanations move less (:class:`TrainingResult`).

All of them are explainers, so every fooling attack, metric and plot takes them
in place of the undefended one (the attack then differentiates through the
defense: an adaptive attack).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Union

import torch

from ..explainers import Explainer, SmoothGrad, get as get_explainer
from ..explanation import Explanation
from ..nn import has_smoothable, smoothed

__all__ = ["BetaSmoothed", "Aggregate", "SmoothGrad", "evaluate", "AdversarialTraining", "ExplanationRegularization",
           "TrainingResult"]


def _as_explainer(e) -> Explainer:
    if isinstance(e, Explainer):
        return e
    if isinstance(e, str):
        return get_explainer(e)
    raise TypeError(f"expected an xadv Explainer or a registry name, got {type(e).__name__}")


class BetaSmoothed(Explainer):
    """Explain on a softplus version of the model (beta-smoothing, Dombrowski et al., 2019).

    Every ``nn.ReLU`` is replaced by ``Softplus(beta)`` (``nn.ReLU6`` by
    ``xadv.nn.SoftplusReLU6(beta)``, see :func:`xadv.nn.smooth_relu`) while the wrapped explainer
    runs (swapped in place with shared parameters and restored afterwards, also on
    error), so the explanation is that of a smooth network with bounded curvature:
    smaller ``beta`` gives smoother, more robust maps; ``beta -> inf`` recovers the
    plain explanation.

    Parameters
    ----------
    base : Explainer or str, default "saliency"
        A gradient explainer (Saliency, InputXGradient, IntegratedGradients, SmoothGrad, Grad-CAM).
    beta : float, default 3.0

    Shapes: as the base explainer. Differentiable when ``base`` is (the map is
    already twice differentiable, so attacks use it directly).

    References
    ----------
    Dombrowski et al. Explanations can be manipulated and geometry is to blame. NeurIPS 2019.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> e = BetaSmoothed("saliency", beta=2.0)(net, torch.rand(2, 4))
    >>> e.method, type(net[1]).__name__
    ('beta_smoothed', 'ReLU')
    """

    name = "beta_smoothed"
    #: the explanation is computed on a smooth model already; fooling attacks use the model as it is
    self_smoothing = True

    def __init__(self, base: Union[Explainer, str] = "saliency", beta: float = 3.0):
        self.base = _as_explainer(base)
        if not float(beta) > 0:
            raise ValueError(f"beta must be positive, got {beta!r}")
        self.beta = float(beta)
        self.min_dim = self.base.min_dim

    @property
    def differentiable(self) -> bool:  # type: ignore[override]
        return self.base.differentiable

    def _explain(self, model, x, target, create_graph):
        if not isinstance(model, torch.nn.Module):
            raise TypeError("BetaSmoothed needs a torch.nn.Module (its nn.ReLU modules are smoothed)")
        if not has_smoothable(model):
            raise ValueError("the model has no nn.ReLU module (nor nn.ReLU6) to smooth (functional relu cannot "
                             "be swapped); a model that is already smooth needs no beta-smoothing")
        with smoothed(model, self.beta):
            e = self.base(model, x, target, create_graph=create_graph)
        params = self._params_for_result()
        return Explanation(e.attributions, e.inputs, e.target, e.output, self.name, params, delta=e.delta,
                           raw=e.raw, extras=dict(e.extras, base_method=e.method))


class Aggregate(Explainer):
    """Average of the normalised maps of several explainers (Rieger & Hansen, 2020).

    Each member's 2-D map (``saliency_map(reduce)``) is scaled to unit sum per
    sample, the scaled maps are averaged (optionally weighted), and the result is
    spread evenly over the input channels, so ``saliency_map("abs")`` of the
    aggregate returns the averaged map.

    Parameters
    ----------
    explainers : sequence of Explainer or str, default ("saliency", "input_x_gradient", ("integrated_gradients"))
    weights : sequence of float, optional
    reduce : str, default "abs"

    References
    ----------
    Rieger, Hansen. A simple defense against adversarial attacks on heatmap explanations.
    ICML WHI 2020.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> agg = Aggregate(["saliency", "input_x_gradient"])
    >>> m = agg(net, torch.rand(2, 1, 4, 4)).saliency_map()
    >>> torch.allclose(m.sum((1, 2)), torch.ones(2))
    True
    """

    name = "aggregate"

    def __init__(self, explainers: Sequence[Union[Explainer, str]] = ("saliency", "input_x_gradient",
                                                                      "integrated_gradients"),
                 weights: Optional[Sequence[float]] = None, reduce: str = "abs"):
        if isinstance(explainers, (str, Explainer)) or len(explainers) < 1:
            raise ValueError("explainers must be a non-empty sequence of explainers or names")
        self.explainers = [_as_explainer(e) for e in explainers]
        if weights is not None:
            if len(weights) != len(self.explainers) or any(float(w) < 0 for w in weights) or sum(weights) <= 0:
                raise ValueError("weights must be non-negative, one per explainer, and not all zero")
            weights = [float(w) / float(sum(weights)) for w in weights]
        self.weights = weights
        self.reduce = reduce
        self.min_dim = max(e.min_dim for e in self.explainers)

    @property
    def differentiable(self) -> bool:  # type: ignore[override]
        return all(e.differentiable for e in self.explainers)

    def _explain(self, model, x, target, create_graph):
        n = x.shape[0]
        t = target
        total = None
        first = None
        w = self.weights or [1.0 / len(self.explainers)] * len(self.explainers)
        for wi, ex in zip(w, self.explainers):
            e = ex(model, x, t, create_graph=create_graph)
            if first is None:
                first, t = e, e.target
            m = e.saliency_map(self.reduce)
            f = m.reshape(n, -1)
            f = f / f.abs().sum(1, keepdim=True).clamp_min(1e-12)
            total = wi * f if total is None else total + wi * f
        avg = total.reshape(first.saliency_map(self.reduce).shape)
        if x.dim() == 4:
            attr = (avg[:, None] / x.shape[1]).expand_as(x)
        else:
            attr = avg.reshape(x.shape)
        if not create_graph:
            attr = attr.detach().contiguous()
        return Explanation(attr, first.inputs, first.target, first.output, self.name, self._params_for_result(),
                           extras={"members": [e.name or type(e).__name__ for e in self.explainers]})


def evaluate(attack, model, x: torch.Tensor, defenses: Dict[str, Union[Explainer, str]], y=None,
             metrics: Sequence[str] = ("topk_intersection", "spearman", "kendall", "ssim")) -> List[Dict[str, float]]:
    """Fooling success with and without each defense, at the attack's budget.

    The same attack (same eps, steps, step size, seed) is run once per explainer
    in ``defenses`` by swapping its ``explainer``; each row reports the mean of
    ``metrics`` between the clean and attacked explanations (higher similarity =
    more robust) and the share of kept predictions.

    Parameters
    ----------
    attack : xadv.fooling.FoolingAttack
    model : nn.Module
    x : Tensor (N, ...)
    defenses : dict name -> Explainer or registry name, e.g.
        ``{"none": "saliency", "beta=3": BetaSmoothed("saliency", 3.0)}``
    y : optional labels passed to the attack

    Returns
    -------
    list of dict with keys ``defense``, ``kept_rate`` and each metric.

    Examples
    --------
    >>> import torch
    >>> from xadv.fooling import TopKAttack
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> rows = evaluate(TopKAttack(eps=0.05, steps=3, k=4), net, torch.rand(2, 1, 4, 4),
    ...                 {"none": "saliency", "beta=2": BetaSmoothed("saliency", 2.0)}, metrics=("spearman",))
    >>> [r["defense"] for r in rows]
    ['none', 'beta=2']
    """
    import copy

    if not isinstance(defenses, dict) or not defenses:
        raise ValueError("defenses must be a non-empty dict name -> explainer")
    rows = []
    for name, ex in defenses.items():
        a = copy.copy(attack)
        a.explainer = _as_explainer(ex)
        if not a.explainer.differentiable:
            raise TypeError(f"defense {name!r} is not differentiable; the attack cannot run against it")
        res = a(model, x, y)
        row = {"defense": name, "kept_rate": float(res.kept.float().mean())}
        for m in metrics:
            row[m] = float(res.similarity[m].float().nanmean())
        rows.append(row)
    return rows


from .training import AdversarialTraining, ExplanationRegularization, TrainingResult  # noqa: E402
