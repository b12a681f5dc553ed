"""Eigen-CAM: the first principal component of a layer's activations."""
from __future__ import annotations

import torch

from ..._validation import resolve_target
from ..base import input_leaf
from ..gradcam import GradCAM
from ._common import finish, layer_activations


class EigenCAM(GradCAM):
    """Eigen-CAM (Muhammad & Yeasin, 2020): the activations (h*w pixels x K channels),
    centred over pixels, projected on their first right singular vector. Class-agnostic
    (``target`` only fills ``Explanation.target``).

    The singular vector's sign is arbitrary; it is chosen so that the projection
    correlates positively with the channel sum of the activations. Same parameters as
    :class:`~xadv.explainers.GradCAM` (``score`` unused). Differentiable through the SVD
    (``create_graph=True``) where the first two singular values differ.

    References
    ----------
    Muhammad & Yeasin. Eigen-CAM: Class Activation Map using Principal Components. IJCNN 2020.

    Examples
    --------
    >>> import torch, xadv
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
    ...                           torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> xadv.explainers.EigenCAM()(net, torch.rand(2, 1, 8, 8)).raw.shape
    torch.Size([2, 8, 8])
    """

    name = "eigencam"

    def _explain(self, model, x, target, create_graph):
        module = self.resolve_layer(model)
        xi = input_leaf(x, create_graph) if create_graph else x.detach()
        with torch.set_grad_enabled(create_graph):
            out, acts = layer_activations(model, module, xi)
            n, k, h, w = acts.shape
            a = acts.flatten(2).transpose(1, 2)                  # (N, h*w, K)
            a = a - a.mean(1, keepdim=True)
            _, _, vh = torch.linalg.svd(a, full_matrices=False)
            proj = (a @ vh[:, 0, :, None]).squeeze(-1)          # (N, h*w)
            ref = acts.sum(1).flatten(1)
            ref = ref - ref.mean(1, keepdim=True)
            sign = torch.where((proj * ref).sum(1) >= 0, 1.0, -1.0).to(proj).detach()
            cam = (proj * sign[:, None]).view(n, h, w)
        t = resolve_target(target, out.detach())
        return finish(self, x, xi, cam, t, out if create_graph else out.detach(), create_graph)
