"""Plain gradient explainers: Saliency and Input x Gradient."""
from __future__ import annotations

from .._validation import resolve_target
from ._layer import LayerOptions, add_layer_doc, layer_gradient
from .base import Explainer, check_score, gradient, select_score
from ..explanation import Explanation


def _layer_grads(self, model, inputs, target, create_graph, mods, names):
    ins = self._leaves(inputs, create_graph)
    grads, acts, out, t = layer_gradient(
        model, ins, lambda o: resolve_target(target, o), lambda o, tt: select_score(o, tt, self.score),
        mods, names, self.attribute_to_layer_input, create_graph)
    return ins, grads, acts, out, t


@add_layer_doc
class Saliency(LayerOptions, Explainer):
    """Gradient of the class score w.r.t. the input (Simonyan et al., 2014).

    Parameters
    ----------
    abs : bool, default False
        Return ``|grad|`` (the original saliency map) instead of the signed gradient.
        Signed is the default so the attribution stays an attack direction.
    score : {"logit", "log_softmax", "softmax"} or callable, default "logit"
        Which scalar per sample is differentiated.

    Shapes: ``x`` (N, ...) -> ``attributions`` (N, ...); with ``layer=`` the layer's
    activation shape (the layer gradient); with ``neuron=`` the neuron's gradient
    w.r.t. the input (captum's ``NeuronGradient``).

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

    def __init__(self, abs: bool = False, score="logit", layer=None, attribute_to_layer_input: bool = False,
                 neuron=None):
        self.abs = bool(abs)
        self.score = check_score(score)
        self._set_layer_options(layer, attribute_to_layer_input, neuron)

    def _explain(self, model, x, target, create_graph):
        r = self._layer_dispatch(model, x, target, create_graph)
        if r is not None:
            return r
        g, out, t, xs = gradient(model, x, target, score=self.score, create_graph=create_graph)
        attr = g.abs() if self.abs else g
        return Explanation(attr, xs, t, out, self.name, self._params_for_result())

    def _explain_layer(self, model, inputs, target, create_graph, mods, names):
        ins, grads, acts, out, t = _layer_grads(self, model, inputs, target, create_graph, mods, names)
        return self._layer_result([g.abs() if self.abs else g for g in grads], ins, t, out, create_graph, names)


@add_layer_doc
class InputXGradient(LayerOptions, Explainer):
    """Input times gradient (Shrikumar et al., 2016): ``x * d score / d x``.

    With ``layer=`` it is layer gradient x activation (captum's
    ``LayerGradientXActivation``): ``a * d score / d a`` for the layer's activation ``a``.

    Parameters
    ----------
    score : {"logit", "log_softmax", "softmax"} or callable, default "logit"
    multiply_by_inputs : bool, default True
        ``False`` returns the gradient alone (the input, or activation, is not multiplied
        in: a "local" attribution, as captum's ``multiply_by_inputs=False``).

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

    def __init__(self, score="logit", multiply_by_inputs: bool = True, layer=None,
                 attribute_to_layer_input: bool = False, neuron=None):
        self.score = check_score(score)
        self.multiply_by_inputs = bool(multiply_by_inputs)
        self._set_layer_options(layer, attribute_to_layer_input, neuron)

    def _explain(self, model, x, target, create_graph):
        r = self._layer_dispatch(model, x, target, create_graph)
        if r is not None:
            return r
        g, out, t, xs = gradient(model, x, target, score=self.score, create_graph=create_graph)
        attr = xs * g if self.multiply_by_inputs else g
        return Explanation(attr, xs, t, out, self.name, self._params_for_result())

    def _explain_layer(self, model, inputs, target, create_graph, mods, names):
        ins, grads, acts, out, t = _layer_grads(self, model, inputs, target, create_graph, mods, names)
        attrs = [a * g if self.multiply_by_inputs else g for a, g in zip(acts, grads)]
        return self._layer_result(attrs, ins, t, out, create_graph, names)
