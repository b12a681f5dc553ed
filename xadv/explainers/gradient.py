"""Plain gradient explainers: Saliency and Input x Gradient."""
from __future__ import annotations

from .base import Explainer, check_score, gradient
from ..explanation import Explanation


class Saliency(Explainer):
    """Gradient of the class score w.r.t. the input (Simonyan et al., 2014).

    Parameters
    ----------
    abs : bool, default False
        Return ``|grad|`` (the original saliency map) instead of the signed gradient.
        Signed is the default so the attribution stays an attack direction.
    score : {"logit", "log_softmax", "softmax"} or callable, default "logit"
        Which scalar per sample is differentiated.

    Shapes: ``x`` (N, ...) -> ``attributions`` (N, ...).

    References
    ----------
    Simonyan, Vedaldi, Zisserman. Deep Inside Convolutional Networks. ICLR-W 2014.

    Examples
    --------
    >>> import torch, xadv
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> e = xadv.explainers.Saliency()(net, torch.rand(5, 4), target=1)
    >>> torch.allclose(e.attributions[0], net[1].weight[1])
    True
    """

    name = "saliency"
    differentiable = True

    def __init__(self, abs: bool = False, score="logit"):
        self.abs = bool(abs)
        self.score = check_score(score)

    def _explain(self, model, x, target, create_graph):
        g, out, t, xs = gradient(model, x, target, score=self.score, create_graph=create_graph)
        attr = g.abs() if self.abs else g
        return Explanation(attr, xs, t, out, self.name, self._params_for_result())


class InputXGradient(Explainer):
    """Input times gradient (Shrikumar et al., 2016): ``x * d score / d x``.

    Parameters
    ----------
    score : {"logit", "log_softmax", "softmax"} or callable, default "logit"

    Examples
    --------
    >>> import torch, xadv
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> x = torch.rand(2, 4)
    >>> e = xadv.explainers.InputXGradient()(net, x, target=0)
    >>> torch.allclose(e.attributions, x * net[1].weight[0])
    True
    """

    name = "input_x_gradient"
    differentiable = True

    def __init__(self, score="logit"):
        self.score = check_score(score)

    def _explain(self, model, x, target, create_graph):
        g, out, t, xs = gradient(model, x, target, score=self.score, create_graph=create_graph)
        return Explanation(xs * g, xs, t, out, self.name, self._params_for_result())
