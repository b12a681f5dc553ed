"""Attention rollout (Abnar & Zuidema, 2020) for vision transformers."""
from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .._adapter import unwrap
from .._validation import find_module, resolve_target
from ..explanation import Explanation
from .base import Explainer, forward, input_leaf
from .gradcam import tokens_to_maps

_FUSIONS = ("mean", "max", "min")


class AttentionRollout(Explainer):
    """Attention rollout: the attention of the class token to the patches, propagated
    through all layers (Abnar & Zuidema, 2020).

    Every layer's attention ``A_l`` (N, heads, T, T) is fused over the heads, the
    residual connection is added as ``0.5 A + 0.5 I``, the rows are renormalised, and the
    layers are multiplied: ``R = A_L ... A_1``. The map is the class token's row of ``R``
    without the class token itself, (N, h*w), arranged on the patch grid (``raw``,
    (N, h, w)) and upsampled to the image (``attributions``, as Grad-CAM).
    Class-agnostic: ``target`` is recorded but does not change the map.

    Parameters
    ----------
    head_fusion : {"mean", "max", "min"}, default "mean"
    discard_ratio : float, default 0.0
        Fraction of the smallest fused attention entries per layer and sample set to zero
        before the residual is added (the class token's self-attention is kept).
    residual : bool, default True
        Add the identity for the skip connection (``0.5 A + 0.5 I``).
    layers : list of str or nn.Module, optional
        The attention modules. Default: every ``nn.MultiheadAttention`` of the model, in
        call order (they are made to return their per-head weights during the call). A
        given module that is not ``nn.MultiheadAttention`` must return the attention
        probabilities (N, heads, T, T) or (N, T, T) (e.g. the softmax of a hand-written
        attention).
    class_token : bool, default True
        ``False`` for models without a class token: the map is the mean over the rows of
        ``R`` (the attention every token receives).

    Differentiable: the product of the attention matrices is built by autograd, so
    ``create_graph=True`` works (the fused kernels are avoided, see ``xadv._adapter``).

    References
    ----------
    Abnar, Zuidema. Quantifying Attention Flow in Transformers. ACL 2020.

    Examples
    --------
    >>> import torch, xadv
    >>> vit = xadv.zoo.vit_tiny(image_size=16, patch_size=4, num_classes=3, num_layers=2)
    >>> e = xadv.explainers.AttentionRollout()(vit.eval(), torch.rand(2, 3, 16, 16))
    >>> e.raw.shape, e.attributions.shape
    (torch.Size([2, 4, 4]), torch.Size([2, 3, 16, 16]))
    """

    name = "attention_rollout"
    differentiable = True
    multi_input = False

    def __init__(self, head_fusion: str = "mean", discard_ratio: float = 0.0, residual: bool = True,
                 layers: Optional[Sequence[Union[str, nn.Module]]] = None, class_token: bool = True):
        if head_fusion not in _FUSIONS:
            raise ValueError(f"head_fusion must be one of {_FUSIONS}, got {head_fusion!r}")
        if not 0.0 <= float(discard_ratio) < 1.0:
            raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio!r}")
        self.head_fusion = head_fusion
        self.discard_ratio = float(discard_ratio)
        self.residual = bool(residual)
        self.layers = None if layers is None else list(layers)
        self.class_token = bool(class_token)

    def _modules(self, model) -> List[nn.Module]:
        inner = unwrap(model)
        if not isinstance(inner, nn.Module):
            raise TypeError("attention rollout needs a torch.nn.Module")
        if self.layers is not None:
            return [find_module(inner, v) for v in self.layers]
        mods = [m for m in inner.modules() if isinstance(m, nn.MultiheadAttention)]
        if not mods:
            raise ValueError("the model has no nn.MultiheadAttention; pass layers= the modules whose outputs are "
                             "the attention probabilities (N, heads, T, T)")
        return mods

    def _fuse(self, a: torch.Tensor) -> torch.Tensor:
        if a.dim() == 3:
            return a
        if self.head_fusion == "mean":
            return a.mean(1)
        return a.max(1).values if self.head_fusion == "max" else a.min(1).values

    def _explain(self, model, x, target, create_graph):
        mods = self._modules(model)
        store: List[torch.Tensor] = []
        handles = []
        for m in mods:
            if isinstance(m, nn.MultiheadAttention):
                def pre(_m, args, kwargs):
                    kwargs = dict(kwargs, need_weights=True, average_attn_weights=False)
                    return args, kwargs

                def post(_m, _args, _kwargs, out):
                    store.append(out[1])
                handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
                handles.append(m.register_forward_hook(post, with_kwargs=True))
            else:
                handles.append(m.register_forward_hook(
                    lambda _m, _a, out: store.append(out if isinstance(out, torch.Tensor) else out[1])))
        # an input that requires grad keeps nn.TransformerEncoderLayer off its fused fast
        # path (which bypasses the attention module and its hooks)
        xi = input_leaf(x, create_graph)
        try:
            with torch.enable_grad():
                out = forward(model, xi)
        finally:
            for h in handles:
                h.remove()
        if not store:
            raise ValueError("no attention weights were recorded in the forward pass")
        t = resolve_target(target, out)
        n, T = store[0].shape[0], store[0].shape[-1]
        eye = torch.eye(T, dtype=store[0].dtype, device=store[0].device)
        joint = None
        for a in store:
            if a.shape[-2:] != (T, T) or a.shape[0] != n:
                raise ValueError(f"attention weights of shape {tuple(a.shape)} do not match (N, heads, {T}, {T})")
            a = self._fuse(a if create_graph else a.detach())
            if self.discard_ratio > 0:
                flat = a.reshape(n, -1)
                k = int(flat.shape[1] * self.discard_ratio)
                if k > 0:
                    low = flat.topk(k, dim=1, largest=False).indices
                    keep = torch.ones_like(flat).scatter(1, low, 0.0)
                    keep[:, 0] = 1.0
                    a = (flat * keep).reshape(a.shape)
            if self.residual:
                a = 0.5 * a + 0.5 * eye
            a = a / a.sum(-1, keepdim=True)
            joint = a if joint is None else a @ joint
        if self.class_token:
            scores = joint[:, 0, 1:]
        else:
            scores = joint.mean(1)
        size = tuple(x.shape[2:]) if x.dim() == 4 else None
        extras = {}
        if size is not None:
            raw = tokens_to_maps(scores[:, :, None], size)[:, 0]
            up = F.interpolate(raw[:, None], size=size, mode="bilinear", align_corners=False)
            attr = up.expand(-1, x.shape[1], -1, -1)
            if not create_graph:
                attr = attr.contiguous()
        else:
            raw = scores
            attr = scores
            extras["attribute_to"] = "layer_output"
        if not create_graph:
            out, attr, raw, xi = out.detach(), attr.detach(), raw.detach(), x.detach()
        params = self._params_for_result()
        names = {id(m): n for n, m in unwrap(model).named_modules()}
        params["layers"] = [names.get(id(m), type(m).__name__) for m in mods]
        return Explanation(attr, xi, t, out, self.name, params, raw=raw, extras=extras)
