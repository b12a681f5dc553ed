"""Grad-CAM and Grad-CAM++ on any convolutional layer."""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F

from .._validation import find_module, resolve_target
from ..explanation import Explanation
from .base import Explainer, check_score, forward, input_leaf, select_score

_INTERP = ("bilinear", "nearest", "bicubic", "area")


def last_conv_layer(model: torch.nn.Module) -> str:
    """Dotted name of the last ``Conv2d`` in ``model.modules()`` order."""
    name = None
    for n, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            name = n
    if name is None:
        raise ValueError(
            "the model has no Conv2d layer; pass layer= (a dotted name or a module) whose "
            "output is (N, K, h, w)"
        )
    return name


class GradCAM(Explainer):
    """Gradient-weighted class activation maps (Selvaraju et al., 2017).

    The layer's activations ``A`` (N, K, h, w) are weighted by the spatial mean of
    ``d score / d A``; the sum over channels (ReLU'd when ``relu=True``) is the
    low-resolution map, kept in ``Explanation.raw`` (N, h, w). ``attributions`` is
    that map upsampled to the input's (H, W) and repeated over its channels.

    Parameters
    ----------
    layer : str or nn.Module, optional
        Dotted name (``"features.3"``) or the module itself; ``None`` takes the
        last ``Conv2d`` of the model.
    relu : bool, default True
        Apply the paper's ReLU; ``False`` keeps the signed map.
    interpolation : {"bilinear", "nearest", "bicubic", "area"}, default "bilinear"
    score : {"logit", "log_softmax", "softmax"} or callable, default "logit"

    Differentiable: with ``create_graph=True`` the map has a graph to the input and
    to the parameters (the gradient w.r.t. ``A`` is taken with ``create_graph``).

    References
    ----------
    Selvaraju et al. Grad-CAM: Visual Explanations from Deep Networks via
    Gradient-based Localization. ICCV 2017.

    Examples
    --------
    >>> import torch, xadv
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
    ...                           torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> e = xadv.explainers.GradCAM()(net, torch.rand(2, 1, 8, 8))
    >>> e.raw.shape, e.attributions.shape
    (torch.Size([2, 8, 8]), torch.Size([2, 1, 8, 8]))
    """

    name = "gradcam"
    differentiable = True
    min_dim = 4

    def __init__(self, layer: Optional[Union[str, torch.nn.Module]] = None, relu: bool = True,
                 interpolation: str = "bilinear", score="logit"):
        if interpolation not in _INTERP:
            raise ValueError(f"interpolation must be one of {_INTERP}, got {interpolation!r}")
        self.layer = layer
        self.relu = bool(relu)
        self.interpolation = interpolation
        self.score = check_score(score)

    def resolve_layer(self, model) -> torch.nn.Module:
        if not isinstance(model, torch.nn.Module):
            raise TypeError("Grad-CAM needs a torch.nn.Module to find its layer")
        layer = self.layer if self.layer is not None else last_conv_layer(model)
        return find_module(model, layer)

    def _layer_label(self, model, module) -> str:
        names = [n for n, m in model.named_modules() if m is module]
        return repr(names[0]) if names else type(module).__name__

    def channel_weights(self, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """Weights (N, K) of the channels: the spatial mean of the gradient."""
        return grads.mean(dim=(2, 3))

    def _explain(self, model, x, target, create_graph):
        module = self.resolve_layer(model)
        store = {"calls": 0}

        def hook(_m, _inp, output):
            if not isinstance(output, torch.Tensor) or output.dim() != 4:
                shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
                raise ValueError(f"the Grad-CAM layer must output (N, K, h, w), got {shape}")
            store["calls"] += 1
            store["a"] = output
            # the rest of the model gets a copy: in-place ops after the layer (an
            # ``nn.ReLU(inplace=True)``, a residual ``out += identity``) would otherwise
            # overwrite the stored activations and move their place in the graph
            return output.clone()

        xi = input_leaf(x, create_graph)
        handle = module.register_forward_hook(hook)
        try:
            with torch.enable_grad():
                out = forward(model, xi)
                if "a" not in store:
                    raise ValueError("the Grad-CAM layer was not called in the model's forward pass")
                if store["calls"] > 1:
                    raise ValueError(
                        f"the Grad-CAM layer {self._layer_label(model, module)} is called {store['calls']} times "
                        f"in one forward pass (one module object reused, like the ReLU of torchvision's "
                        f"BasicBlock), so it has no single activation map; pick a layer that runs once, "
                        f"e.g. the conv or BatchNorm before it or the enclosing block"
                    )
                acts = store["a"]
                t = resolve_target(target, out)
                s = select_score(out, t, self.score)
                (g,) = torch.autograd.grad(s.sum(), acts, create_graph=create_graph)
        finally:
            handle.remove()
        if not create_graph:
            acts, g, out = acts.detach(), g.detach(), out.detach()
        w = self.channel_weights(acts, g)
        cam = (w[:, :, None, None] * acts).sum(1)
        if self.relu:
            cam = F.relu(cam)
        size = x.shape[-2:]
        kw = {"align_corners": False} if self.interpolation in ("bilinear", "bicubic") else {}
        up = F.interpolate(cam[:, None], size=size, mode=self.interpolation, **kw)
        flat = cam.detach().flatten(1)
        const = (flat.amax(1) == flat.amin(1))[:, None, None, None]  # keep constant maps exactly constant
        up = torch.where(const, cam.flatten(1)[:, :1, None, None].expand_as(up), up)
        attr = up.expand(-1, x.shape[1], -1, -1)
        if not create_graph:
            attr = attr.contiguous()
            xi = x.detach()
        params = self._params_for_result()
        params["layer"] = self.layer if isinstance(self.layer, str) or self.layer is None else repr(self.layer)
        return Explanation(attr, xi, t, out, self.name, params, raw=cam)


class GradCAMPlusPlus(GradCAM):
    """Grad-CAM++ (Chattopadhay et al., 2018): pixel-wise weighted positive gradients.

    Channel weight ``w_k = sum_ij alpha_ij^k relu(g_ij^k)`` with
    ``alpha = g^2 / (2 g^2 + sum_ab A_ab g^3)`` (the exponential-score closed form).
    Same parameters as :class:`GradCAM`.

    References
    ----------
    Chattopadhay et al. Grad-CAM++: Generalized Gradient-Based Visual Explanations for
    Deep Convolutional Networks. WACV 2018.
    """

    name = "gradcam_pp"

    def channel_weights(self, acts, grads):
        # alpha * relu(g) = relu(g) / (2 + sum(A) g) wherever g > 0 (g^2 cancels) and 0 elsewhere; written
        # without g^2 / g^3 so the double backward does not overflow for tiny gradients (create_graph=True)
        pos = F.relu(grads)
        denom = 2 + acts.sum(dim=(2, 3), keepdim=True) * pos
        ok = denom.abs() > 1e-6
        safe = torch.where(ok, denom, torch.ones_like(denom))
        return torch.where(ok, pos / safe, torch.zeros_like(pos)).sum(dim=(2, 3))
