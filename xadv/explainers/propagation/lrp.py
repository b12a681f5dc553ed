"""Layer-wise relevance propagation with rules assigned by a composite."""
from __future__ import annotations

from typing import Union

import torch

from ..._validation import resolve_target
from ...explanation import Explanation
from ..base import Explainer, check_score, forward, input_leaf, select_score
from .composites import COMPOSITES, composite_names
from .core import Composite, attached, true_inputs


def relevance_at_input(x: torch.Tensor, xi: torch.Tensor, g_x, carrier, r_carrier) -> torch.Tensor:
    """Input relevance: the first layer's relevance (reshaped to the input when it has
    the input's size) plus ``x * grad`` of every other path from the input."""
    attr = torch.zeros_like(xi) if g_x is None else xi * g_x
    if carrier is not None and r_carrier is not None:
        if r_carrier.shape != xi.shape:
            if r_carrier.numel() != xi.numel():
                raise ValueError(
                    f"the first linear layer takes shape {tuple(r_carrier.shape)}, which is not a reshape of the "
                    f"input {tuple(xi.shape)}; LRP reports relevance at the first layer's input and cannot map it "
                    f"back. Give the model its inputs in the first layer's shape")
            r_carrier = r_carrier.reshape(xi.shape)
        attr = attr + r_carrier
    return attr


class LRP(Explainer):
    """Layer-wise relevance propagation (Bach et al., 2015) with composites of rules.

    The relevance of the explained score (its value) is redistributed layer by layer;
    each conv/dense layer gets a rule by its type and position (the ``composite``),
    BatchNorm after a conv/dense layer is folded into it, ReLU and pooling pass
    relevance on, residual adds split it in proportion to the summands.

    Parameters
    ----------
    composite : str or Composite, default "epsilon_plus"
        ``"epsilon"`` (epsilon everywhere), ``"epsilon_plus"`` (z+ for convs, epsilon for
        dense), ``"epsilon_plus_flat"``, ``"epsilon_gamma_box"`` (z^B first conv, gamma
        convs, epsilon dense), ``"epsilon_alpha2_beta1"``, ``"epsilon_alpha2_beta1_flat"``,
        ``"z_plus"``; or a :class:`~xadv.explainers.propagation.Composite`.
    epsilon : float, default 1e-6
        Epsilon of the epsilon rule.
    gamma : float, default 0.25
    stabilizer : float, default 1e-6
        Added to denominators of the other rules (with their sign).
    low, high : float or Tensor, default 0.0, 1.0
        Input bounds for z^B (in the first layer's input space).
    canonize : bool, default True
        Fold BatchNorm into the preceding conv/dense layer (on the fly; the model is not written).
    score : {"logit", "log_softmax", "softmax"} or callable, default "logit"

    Shapes: ``x`` (N, ...) -> ``attributions`` (N, ...); ``delta`` (N,) is the score minus
    the summed relevance (0 for conservative rules on bias-free nets).

    Differentiable: the rules are tensor code, so ``create_graph=True`` gives relevance
    with a graph to the input and the parameters. On ReLU nets the second derivative
    through the activations vanishes; attacks smooth them (``xadv.nn.smooth_relu``,
    ``BetaSmoothed``) and relevance passes the softplus unchanged.

    References
    ----------
    Bach et al. On Pixel-Wise Explanations for Non-Linear Classifier Decisions by
    Layer-Wise Relevance Propagation. PLoS ONE 2015.
    Montavon et al. Layer-Wise Relevance Propagation: An Overview. 2019.

    Examples
    --------
    >>> import torch, xadv
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8, bias=False), torch.nn.ReLU(),
    ...                           torch.nn.Linear(8, 3, bias=False))
    >>> x = torch.rand(2, 4)
    >>> e = xadv.explainers.LRP("epsilon", epsilon=0.0)(net, x, target=1)
    >>> torch.allclose(e.attributions.sum(1), net(x)[:, 1])   # conservation
    True
    """

    name = "lrp"
    differentiable = True

    def __init__(self, composite: Union[str, Composite] = "epsilon_plus", epsilon: float = 1e-6,
                 gamma: float = 0.25, stabilizer: float = 1e-6, low=0.0, high=1.0, canonize: bool = True,
                 score="logit"):
        if isinstance(composite, str):
            if composite not in COMPOSITES:
                raise ValueError(f"unknown composite {composite!r}; known: {', '.join(composite_names())}, "
                                 f"or pass a Composite")
        elif not isinstance(composite, Composite):
            raise TypeError(f"composite must be a name or a Composite, got {type(composite).__name__}")
        self.composite = composite
        self.epsilon = float(epsilon)
        self.gamma = float(gamma)
        self.stabilizer = float(stabilizer)
        self.low, self.high = low, high
        self.canonize = bool(canonize)
        self.score = check_score(score)
        self.make_composite()  # parameters checked now, not at the first call

    def make_composite(self) -> Composite:
        """The composite used for one call."""
        if isinstance(self.composite, Composite):
            return self.composite
        return COMPOSITES[self.composite](epsilon=self.epsilon, gamma=self.gamma, stabilizer=self.stabilizer,
                                          low=self.low, high=self.high, canonize=self.canonize)

    def _explain(self, model, x, target, create_graph):
        if not isinstance(model, torch.nn.Module):
            raise TypeError("LRP needs a torch.nn.Module (rules are attached to its layers)")
        comp = self.make_composite()
        xi = input_leaf(x, create_graph)
        saved = true_inputs(model, comp, xi, create_graph)
        with torch.enable_grad(), attached(model, comp, carrier=True, saved=saved) as st:
            out = forward(model, xi)
            t = resolve_target(target, out)
            s = select_score(out, t, self.score)
            leaves = [xi] + ([st.carrier] if st.carrier is not None else [])
            grads = torch.autograd.grad(s.sum(), leaves, create_graph=create_graph, allow_unused=True)
            carrier = st.carrier
        attr = relevance_at_input(x, xi, grads[0], carrier, grads[1] if len(grads) > 1 else None)
        delta = s - attr.flatten(1).sum(1)
        if not create_graph:
            attr, out, delta, xi = attr.detach(), out.detach(), delta.detach(), x.detach()
        params = self._params_for_result()
        if isinstance(self.composite, Composite):
            params["composite"] = repr(self.composite)
        return Explanation(attr, xi, t, out, self.name, params, delta=delta)
