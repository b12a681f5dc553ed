"""Score-CAM and Ablation-CAM: channel weights from extra forward passes."""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F

from ..._adapter import ModelAdapter
from ..._fold import folded
from ..._validation import resolve_target
from ..base import balanced_slices, forward, select_score
from ..chunking import rows_per_pass
from ..gradcam import GradCAM
from ._common import finish, layer_activations


class _PassCAM(GradCAM):
    differentiable = False

    def __init__(self, layer: Optional[Union[str, torch.nn.Module]] = None, relu: bool = True,
                 interpolation: str = "bilinear", score="logit", batch_size: Optional[int] = None):
        super().__init__(layer=layer, relu=relu, interpolation=interpolation, score=score)
        if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) != batch_size
                                       or batch_size < 1):
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.batch_size = None if batch_size is None else int(batch_size)

    def _explain(self, model, x, target, create_graph):
        module = self.resolve_layer(model)
        x = x.detach()
        # the traced copy that calls the layer itself (BatchNorm folded, fast pooling; xadv._fold)
        model = model if isinstance(model, ModelAdapter) else folded(model, x, keep=module)
        self._rows = rows_per_pass(model, x, batch_size=self.batch_size, grad=False)
        with torch.no_grad():
            parts = [layer_activations(model, module, x[i0:i1])
                     for i0, i1 in balanced_slices(x.shape[0], self._rows)]
            out, acts = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
            t = resolve_target(target, out)
            w = torch.stack([self._weights(model, module, x[i:i + 1], acts[i:i + 1], t[i:i + 1], out[i:i + 1])
                             for i in range(x.shape[0])])
            cam = (w[:, :, None, None] * acts).sum(1)
        return finish(self, x, x, cam, t, out, False)


class ScoreCAM(_PassCAM):
    """Score-CAM (Wang et al., 2020): each channel, upsampled (bilinear) and min-max
    scaled to [0, 1], masks the input; the softmax over channels of the masked inputs'
    scores weighs the channels.

    Parameters
    ----------
    layer, relu, interpolation, score : as :class:`~xadv.explainers.GradCAM`
    batch_size : int, optional
        Rows of every model call (masked inputs per pass, K per input in all; the clean
        pass too). Default: chosen by :mod:`xadv.explainers.chunking`.

    Not differentiable (the weights come from K forward passes on masked inputs).

    References
    ----------
    Wang et al. Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural
    Networks. CVPR-W 2020.

    Examples
    --------
    >>> import torch, xadv
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
    ...                           torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> xadv.explainers.ScoreCAM()(net, torch.rand(2, 1, 8, 8)).raw.shape
    torch.Size([2, 8, 8])
    """

    name = "scorecam"

    def _weights(self, model, module, x, acts, t, out):
        up = F.interpolate(acts, size=x.shape[-2:], mode="bilinear", align_corners=True)[0]   # (K, H, W)
        flat = up.flatten(1)
        lo, hi = flat.min(1).values[:, None, None], flat.max(1).values[:, None, None]
        masks = (up - lo) / (hi - lo + 1e-8)
        scores = []
        for i0, i1 in balanced_slices(masks.shape[0], self._rows):
            xs = x * masks[i0:i1, None]
            scores.append(select_score(forward(model, xs), t.expand(i1 - i0), self.score))
        return torch.softmax(torch.cat(scores), 0)


class AblationCAM(_PassCAM):
    """Ablation-CAM (Desai & Ramaswamy, 2020): channel weight ``(y - y_k) / y``, the
    relative drop of the score when channel ``k`` of the layer is set to zero.

    Parameters
    ----------
    layer, relu, interpolation, score : as :class:`~xadv.explainers.GradCAM`
    batch_size : int, optional
        Rows of every model call (ablated copies per pass, K per input in all; the clean
        pass too). Default: chosen by :mod:`xadv.explainers.chunking`.

    Not differentiable (the weights come from K forward passes with ablated channels).

    References
    ----------
    Desai & Ramaswamy. Ablation-CAM: Visual Explanations for Deep Convolutional Network
    via Gradient-free Localization. WACV 2020.

    Examples
    --------
    >>> import torch, xadv
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
    ...                           torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> xadv.explainers.AblationCAM()(net, torch.rand(2, 1, 8, 8)).raw.shape
    torch.Size([2, 8, 8])
    """

    name = "ablationcam"

    def _weights(self, model, module, x, acts, t, out):
        y = select_score(out, t, self.score)
        k = acts.shape[1]
        drops = []
        for i0, i1 in balanced_slices(k, self._rows):
            m = i1 - i0
            ablated = acts.expand(m, -1, -1, -1).clone()
            ablated[torch.arange(m), torch.arange(i0, i1)] = 0

            def hook(_m, _i, _o, a=ablated):
                return a
            h = module.register_forward_hook(hook)
            try:
                s = select_score(forward(model, x.expand(m, *x.shape[1:])), t.expand(m), self.score)
            finally:
                h.remove()
            drops.append(s)
        return (y - torch.cat(drops)) / y
