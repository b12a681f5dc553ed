"""HiResCAM, XGrad-CAM and LayerCAM: Grad-CAM with another map from activations and gradients."""
from __future__ import annotations

import torch.nn.functional as F

from ..gradcam import GradCAM


class HiResCAM(GradCAM):
    """HiResCAM (Draelos & Carin, 2020): ``sum_k g_k * A_k`` elementwise, no spatial averaging.

    Same parameters, shapes and differentiability as :class:`~xadv.explainers.GradCAM`.

    References
    ----------
    Draelos & Carin. Use HiResCAM instead of Grad-CAM for faithful explanations of
    convolutional neural networks. arXiv:2011.08891, 2020.

    Examples
    --------
    >>> import torch, xadv
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
    ...                           torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> xadv.explainers.HiResCAM()(net, torch.rand(2, 1, 8, 8)).raw.shape
    torch.Size([2, 8, 8])
    """

    name = "hirescam"

    def cam_map(self, acts, grads):
        return (grads * acts).sum(1)


class XGradCAM(GradCAM):
    """XGrad-CAM (Fu et al., 2020): channel weights ``sum_ij g_ij A_ij / (sum_ij A_ij + 1e-7)``.

    Same parameters, shapes and differentiability as :class:`~xadv.explainers.GradCAM`.

    References
    ----------
    Fu et al. Axiom-based Grad-CAM: Towards Accurate Visualization and Explanation of
    CNNs. BMVC 2020.

    Examples
    --------
    >>> import torch, xadv
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
    ...                           torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> xadv.explainers.XGradCAM()(net, torch.rand(2, 1, 8, 8)).attributions.shape
    torch.Size([2, 1, 8, 8])
    """

    name = "xgradcam"

    def channel_weights(self, acts, grads):
        return (grads * acts).sum((2, 3)) / (acts.sum((2, 3)) + 1e-7)


class LayerCAM(GradCAM):
    """LayerCAM (Jiang et al., 2021): ``sum_k relu(g_k) * A_k`` elementwise.

    Same parameters, shapes and differentiability as :class:`~xadv.explainers.GradCAM`.

    References
    ----------
    Jiang et al. LayerCAM: Exploring Hierarchical Class Activation Maps for
    Localization. IEEE TIP 2021.

    Examples
    --------
    >>> import torch, xadv
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
    ...                           torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> bool((xadv.explainers.LayerCAM()(net, torch.rand(2, 1, 8, 8)).raw >= 0).all())
    True
    """

    name = "layercam"

    def cam_map(self, acts, grads):
        return (F.relu(grads) * acts).sum(1)
