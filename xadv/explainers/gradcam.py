"""Grad-CAM and Grad-CAM++ on any convolutional layer."""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F

import math

from .._adapter import ModelAdapter, unwrap
from .._fold import folded
from .._validation import find_module, resolve_target
from ..explanation import Explanation
from .base import Explainer, check_score, forward, input_leaf, select_score

_INTERP = ("bilinear", "nearest", "bicubic", "area")
_LAYOUTS = ("auto", "channels_first", "channels_last", "tokens")
_CHANNELS_FIRST_TYPES = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.BatchNorm1d,
                         torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.MaxPool1d, torch.nn.AvgPool1d,
                         torch.nn.AdaptiveAvgPool1d, torch.nn.AdaptiveMaxPool1d)


def is_transformer(model) -> bool:
    """Whether ``model`` has attention blocks (then a conv is not a sensible default layer)."""
    model = unwrap(model)
    for m in model.modules():
        name = type(m).__name__
        if isinstance(m, (torch.nn.MultiheadAttention, torch.nn.TransformerEncoderLayer,
                          torch.nn.TransformerDecoderLayer)) or "SelfAttention" in name or "MultiHead" in name:
            return True
    return False


def layer_candidates(model, limit: int = 8):
    """Dotted names of modules that make good CAM layers: transformer blocks and their
    norms, convolutions, the last of each kind first."""
    model = unwrap(model)
    out = []
    for n, m in model.named_modules():
        name = type(m).__name__
        if n and (isinstance(m, (torch.nn.TransformerEncoderLayer, torch.nn.LayerNorm, torch.nn.Conv2d))
                  or "Block" in name or "EncoderLayer" in name):
            out.append(n)
    return out[::-1][:limit]


def tokens_to_maps(a: torch.Tensor, size=None) -> torch.Tensor:
    """(N, T, D) tokens -> (N, D, h, w) maps: ``T = h * w`` or ``1 + h * w`` (a leading
    class token, dropped). With ``size`` (the input's (H, W)) the grid is the one of
    square patches tiling the input, else a square grid."""
    n, t, d = a.shape
    for start in (0, 1):
        cells = t - start
        if cells <= 0:
            continue
        shapes = []
        if size is not None:
            # square patches tiling the input: H / h == W / w
            H, W = size
            h = int(round(math.sqrt(cells * H / W)))
            if h > 0 and cells % h == 0:
                w = cells // h
                if H % h == 0 and W % w == 0 and H // h == W // w:
                    shapes.append((h, w))
        else:
            r = math.isqrt(cells)
            shapes.append((r, r))
        for hw in shapes:
            if hw[0] * hw[1] == cells:
                return a[:, start:].transpose(1, 2).reshape(n, d, hw[0], hw[1])
    raise ValueError(f"cannot arrange {t} tokens as an h x w grid (with or without one class token); pass "
                     f"reshape=<callable (N, T, D) -> (N, D, h, w)> to GradCAM")


def last_conv_layer(model: torch.nn.Module) -> str:
    """Dotted name of the last ``Conv2d`` in ``model.modules()`` order."""
    name = None
    model = unwrap(model)
    if is_transformer(model):
        raise ValueError(
            "the model has attention blocks, so the last Conv2d (a patch embedding) is no CAM layer; pass "
            "layer= one of its token layers, e.g. " + ", ".join(repr(c) for c in layer_candidates(model)) +
            " (token outputs (N, 1 + h*w, D), (N, h*w, D) or (N, h, w, D) with layout='channels_last' are "
            "arranged on the patch grid)")
    for n, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            name = n
    if name is None:
        cands = layer_candidates(model) or [n for n, _ in model.named_modules() if n][::-1][:8]
        raise ValueError(
            "the model has no Conv2d layer; pass layer= (a dotted name or a module), e.g. "
            + ", ".join(repr(c) for c in cands)
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
        last ``Conv2d`` of a CNN (a model with attention blocks must name its layer; the
        error lists candidates). The resolved name is in ``Explanation.params["layer"]``.
        Outputs (N, C, *spatial) are channels-first (any number of spatial dimensions,
        none for (N, C): then ``raw`` is (N,) as captum's ``LayerGradCam`` (N, 1));
        transformer tokens (N, T, D) are put on the patch grid (see ``layout``).
    layout : {"auto", "channels_first", "channels_last", "tokens"}, default "auto"
        How the layer's output is read. ``tokens``: (N, h*w, D) or (N, 1 + h*w, D) with
        a leading class token (dropped), on an h x w grid with the input's aspect ratio;
        ``channels_last``: (N, h, w, D); ``auto``: 3-D outputs of convolution, batch-norm
        and pooling modules are (N, C, L), other 3-D outputs tokens, everything else
        channels-first.
    reshape : callable, optional
        ``activations -> (N, C, h, w)`` for other layouts; applied to the activations and
        to their gradients alike (so it must only rearrange values).
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

    @property
    def min_dim(self) -> int:  # type: ignore[override]
        """Images (N, C, H, W) for the default layer; any batch-first input with ``layer=``."""
        return 4 if self.layer is None else 2

    multi_input = False

    def __init__(self, layer: Optional[Union[str, torch.nn.Module]] = None, relu: bool = True,
                 interpolation: str = "bilinear", score="logit", layout: str = "auto", reshape=None):
        if interpolation not in _INTERP:
            raise ValueError(f"interpolation must be one of {_INTERP}, got {interpolation!r}")
        if layout not in _LAYOUTS:
            raise ValueError(f"layout must be one of {_LAYOUTS}, got {layout!r}")
        if reshape is not None and not callable(reshape):
            raise TypeError("reshape must be a callable (activations -> (N, C, h, w))")
        self.layout = layout
        self.reshape = reshape
        self.layer = layer
        self.relu = bool(relu)
        self.interpolation = interpolation
        self.score = check_score(score)

    def resolve_layer(self, model) -> torch.nn.Module:
        return self._resolve(model)[0]

    def _resolve(self, model):
        """(module, dotted name) of the layer, in one walk over the model's modules."""
        if not isinstance(model, torch.nn.Module):
            raise TypeError("Grad-CAM needs a torch.nn.Module to find its layer")
        layer = self.layer if self.layer is not None else last_conv_layer(model)
        if isinstance(layer, torch.nn.Module):
            for n, m in unwrap(model).named_modules():
                if m is layer:
                    return m, (n or type(m).__name__)
        module = find_module(model, layer)  # a dotted name, or the error for a foreign module
        return module, self.layer_name(model, module)

    def _layer_label(self, model, module) -> str:
        names = [n for n, m in unwrap(model).named_modules() if m is module]
        return repr(names[0]) if names else type(module).__name__

    def layer_name(self, model, module) -> str:
        """Dotted name of the resolved layer (recorded in ``params["layer"]``)."""
        names = [n for n, m in unwrap(model).named_modules() if m is module and n]
        return names[0] if names else type(module).__name__

    def to_maps(self, a: torch.Tensor, module, size=None) -> torch.Tensor:
        """The layer's activations (or their gradients) as (N, C, *spatial)."""
        if self.reshape is not None:
            m = self.reshape(a)
            if not isinstance(m, torch.Tensor) or m.dim() < 2 or m.shape[0] != a.shape[0]:
                raise ValueError("reshape must return a tensor (N, C, h, w)")
            return m
        layout = self.layout
        if layout == "auto":
            layout = "tokens" if a.dim() == 3 and not isinstance(module, _CHANNELS_FIRST_TYPES) else "channels_first"
        if layout == "channels_first":
            return a
        if layout == "channels_last":
            return a.movedim(-1, 1)
        if a.dim() != 3:
            raise ValueError(f"layout='tokens' needs a (N, T, D) layer output, got {tuple(a.shape)}")
        return tokens_to_maps(a, size)

    def channel_weights(self, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """Weights (N, K) of the channels: the spatial mean of the gradient."""
        return grads.mean(dim=tuple(range(2, grads.dim()))) if grads.dim() > 2 else grads

    def cam_map(self, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """The (N, *spatial) map before the ReLU: channel weights times activations, summed."""
        w = self.channel_weights(acts, grads)
        return (w.reshape(w.shape + (1,) * (acts.dim() - 2)) * acts).sum(1)

    def _explain(self, model, x, target, create_graph):
        module, layer_name = self._resolve(model)
        store = {"calls": 0}

        def hook(_m, _inp, output):
            if not isinstance(output, torch.Tensor) or output.dim() < 2:
                shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
                raise ValueError(f"the Grad-CAM layer must output one tensor (N, C, ...) or tokens (N, T, D), "
                                 f"got {shape}; pick a submodule")
            store["calls"] += 1
            if not output.requires_grad:
                # the forward before the layer built no graph (input not differentiated,
                # parameters frozen): the gradient starts here
                output = output.detach().requires_grad_(True)
            store["a"] = output
            # the rest of the model gets a copy: in-place ops after the layer (an
            # ``nn.ReLU(inplace=True)``, a residual ``out += identity``) would otherwise
            # overwrite the stored activations and move their place in the graph
            return output.clone()

        # without create_graph nothing is differentiated w.r.t. the input: the layers before
        # the hooked one run without recording a graph, in the traced copy of xadv._fold
        # (BatchNorm folded, fast pooling) that calls the layer itself
        xi = input_leaf(x, create_graph) if create_graph else x.detach()
        run = model if create_graph or isinstance(model, ModelAdapter) else folded(model, xi, keep=module)
        handle = module.register_forward_hook(hook)
        try:
            with torch.enable_grad():
                out = forward(run, xi)
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
        size = tuple(x.shape[2:]) if x.dim() == 4 else None
        acts, g = self.to_maps(acts, module, size), self.to_maps(g, module, size)
        cam = self.cam_map(acts, g)
        if self.relu:
            cam = F.relu(cam)
        extras = {}
        spatial = cam.dim() - 1
        if spatial >= 1 and x.dim() == spatial + 2:
            # same number of spatial dimensions as the input: upsample and repeat over channels
            mode = self.interpolation
            if spatial != 2:
                mode = {1: "linear", 3: "trilinear"}.get(spatial, "nearest") if mode in ("bilinear", "bicubic") \
                    else ("nearest" if mode != "area" else "area")
            kw = {"align_corners": False} if mode in ("bilinear", "bicubic", "linear", "trilinear") else {}
            up = F.interpolate(cam[:, None], size=tuple(x.shape[2:]), mode=mode, **kw)
            flat = cam.detach().flatten(1)
            const = (flat.amax(1) == flat.amin(1)).reshape((-1,) + (1,) * (spatial + 1))
            # keep constant maps exactly constant (interpolation leaves ~1e-9 ripple); the
            # test reads the small layer-level map, and on a CPU (no device sync to fear) the
            # replacement runs only when some map is constant
            if cam.device.type != "cpu" or bool(const.any()):
                up = torch.where(const, cam.flatten(1)[:, :1].reshape((-1,) + (1,) * (spatial + 1)).expand_as(up), up)
            attr = up.expand((-1, x.shape[1]) + (-1,) * spatial)
            if not create_graph:
                attr = attr.contiguous()
        else:
            # no map on the input's grid (a (N, C) layer, a 1-D map of an image model): the layer-level map
            attr = cam
            extras["attribute_to"] = "layer_output"
        if not create_graph:
            xi = x.detach()
        params = self._params_for_result()
        params["layer"] = layer_name
        if self.reshape is not None:
            params["reshape"] = repr(self.reshape)
        return Explanation(attr, xi, t, out, self.name, params, raw=cam, extras=extras)


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
        dims = tuple(range(2, grads.dim()))
        pos = F.relu(grads)
        denom = 2 + (acts.sum(dim=dims, keepdim=True) if dims else acts) * pos
        ok = denom.abs() > 1e-6
        safe = torch.where(ok, denom, torch.ones_like(denom))
        w = torch.where(ok, pos / safe, torch.zeros_like(pos))
        return w.sum(dim=dims) if dims else w
