"""The CAM family beyond Grad-CAM / Grad-CAM++: HiResCAM, XGrad-CAM, LayerCAM (gradient
based, differentiable), Eigen-CAM (principal component, differentiable), Score-CAM and
Ablation-CAM (extra forward passes per channel, not differentiable)."""
from .gradient_cams import HiResCAM, LayerCAM, XGradCAM
from .eigen_cam import EigenCAM
from .perturbation_cams import AblationCAM, ScoreCAM

__all__ = ["HiResCAM", "XGradCAM", "LayerCAM", "EigenCAM", "ScoreCAM", "AblationCAM"]
