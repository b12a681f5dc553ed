"""Activations of one layer without gradients, and the shared Explanation assembly."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...explanation import Explanation
from ..base import forward


def layer_activations(model, module, x):
    """``(output, activations)`` of ``model`` on ``x`` with ``module``'s (N, K, h, w) output."""
    store = {}

    def hook(_m, _i, out):
        if not isinstance(out, torch.Tensor) or out.dim() != 4:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"the CAM layer must output (N, K, h, w), got {shape}")
        store.setdefault("a", out)

    h = module.register_forward_hook(hook)
    try:
        out = forward(model, x)
    finally:
        h.remove()
    if "a" not in store:
        raise ValueError("the CAM layer was not called in the model's forward pass")
    return out, store["a"]


def finish(explainer, x, xi, cam, t, out, create_graph, extras=None):
    if explainer.relu:
        cam = F.relu(cam)
    kw = {"align_corners": False} if explainer.interpolation in ("bilinear", "bicubic") else {}
    up = F.interpolate(cam[:, None], size=x.shape[-2:], mode=explainer.interpolation, **kw)
    attr = up.expand(-1, x.shape[1], -1, -1)
    if not create_graph:
        attr, xi = attr.contiguous(), x.detach()
    params = explainer._params_for_result()
    params["layer"] = explainer.layer if isinstance(explainer.layer, str) or explainer.layer is None \
        else repr(explainer.layer)
    return Explanation(attr, xi, t, out, explainer.name, params, raw=cam, extras=extras or {})
