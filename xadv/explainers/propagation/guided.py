"""Guided Backprop, Deconvnet and Guided Grad-CAM: modified ReLU backward passes."""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from ..._validation import resolve_target
from ...explanation import Explanation
from ..base import Explainer, check_score, forward, input_leaf, select_score
from ..gradcam import GradCAM
from .core import Composite, attached, true_inputs
from .deeplift import check_module_relus
from .rules import DeconvReLU, GuidedReLU

_RELU_LIKE = (nn.ReLU, nn.Softplus)


class _ModifiedReLU(Explainer):
    differentiable = True
    rule = GuidedReLU()

    def __init__(self, score="logit"):
        self.score = check_score(score)

    def _explain(self, model, x, target, create_graph):
        check_module_relus(model, x, type(self).__name__)
        xi = input_leaf(x, create_graph)
        comp = Composite([(_RELU_LIKE, self.rule)], canonizers=())
        saved = true_inputs(model, comp, xi, create_graph)
        with torch.enable_grad(), attached(model, comp, saved=saved):
            out = forward(model, xi)
            t = resolve_target(target, out)
            s = select_score(out, t, self.score)
            (g,) = torch.autograd.grad(s.sum(), xi, create_graph=create_graph)
        if not create_graph:
            g, out, xi = g.detach(), out.detach(), x.detach()
        return Explanation(g, xi, t, out, self.name, self._params_for_result())


class GuidedBackprop(_ModifiedReLU):
    """Guided Backpropagation (Springenberg et al., 2015): the gradient with every ReLU
    passing back only positive gradient where its input was positive.

    Parameters
    ----------
    score : {"logit", "log_softmax", "softmax"} or callable, default "logit"

    Shapes: ``x`` (N, ...) -> ``attributions`` (N, ...). ReLUs must be ``nn.ReLU`` modules;
    a softplus (``nn.Softplus``, e.g. after beta-smoothing) uses its slope
    ``sigmoid(beta x)`` as the mask, which makes the map smooth in ``x`` (Dombrowski
    et al.'s beta-smoothing). Differentiable (``create_graph=True``); on ReLU nets the
    map is piecewise constant in ``x``, so attacks smooth the model.

    References
    ----------
    Springenberg et al. Striving for Simplicity: The All Convolutional Net. ICLR-W 2015.

    Examples
    --------
    >>> import torch, xadv
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> xadv.explainers.GuidedBackprop()(net, torch.rand(2, 4)).attributions.shape
    torch.Size([2, 4])
    """

    name = "guided_backprop"
    rule = GuidedReLU()


class Deconvnet(_ModifiedReLU):
    """Deconvnet (Zeiler & Fergus, 2014): ReLUs pass back the positive part of the
    gradient regardless of the forward pass.

    Parameters
    ----------
    score : {"logit", "log_softmax", "softmax"} or callable, default "logit"

    Shapes: ``x`` (N, ...) -> ``attributions`` (N, ...).

    References
    ----------
    Zeiler & Fergus. Visualizing and Understanding Convolutional Networks. ECCV 2014.

    Examples
    --------
    >>> import torch, xadv
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> xadv.explainers.Deconvnet()(net, torch.rand(2, 4)).attributions.shape
    torch.Size([2, 4])
    """

    name = "deconvnet"
    rule = DeconvReLU()


class GuidedGradCAM(Explainer):
    """Guided Grad-CAM (Selvaraju et al., 2017): Guided Backprop times the Grad-CAM map
    upsampled to the input.

    Parameters
    ----------
    layer : str or nn.Module, optional
        Grad-CAM layer; the last ``Conv2d`` by default.
    interpolation : str, default "nearest"
        Upsampling of the Grad-CAM map (captum's default).
    score : {"logit", "log_softmax", "softmax"} or callable, default "logit"

    Shapes: ``x`` (N, C, H, W) -> ``attributions`` (N, C, H, W), ``raw`` (N, h, w) the Grad-CAM map.

    References
    ----------
    Selvaraju et al. Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
    Localization. ICCV 2017.

    Examples
    --------
    >>> import torch, xadv
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
    ...                           torch.nn.Flatten(), torch.nn.Linear(4 * 36, 3))
    >>> xadv.explainers.GuidedGradCAM()(net, torch.rand(2, 1, 6, 6)).attributions.shape
    torch.Size([2, 1, 6, 6])
    """

    name = "guided_gradcam"
    differentiable = True
    min_dim = 4

    def __init__(self, layer: Optional[Union[str, nn.Module]] = None, interpolation: str = "nearest",
                 score="logit"):
        self.layer = layer
        self.interpolation = interpolation
        self.score = check_score(score)
        self._cam = GradCAM(layer=layer, relu=True, interpolation=interpolation, score=score)

    def _explain(self, model, x, target, create_graph):
        xi = input_leaf(x, create_graph) if create_graph else x
        gbp = GuidedBackprop(score=self.score)._explain(model, xi, target, create_graph)
        cam = self._cam._explain(model, xi, gbp.target, create_graph)
        attr = gbp.attributions * cam.attributions
        params = self._params_for_result()
        params["layer"] = cam.params.get("layer")
        return Explanation(attr, gbp.inputs, gbp.target, gbp.output, self.name, params, raw=cam.raw)
