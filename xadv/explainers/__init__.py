"""Explainers: parameters in ``__init__``, called as ``explainer(model, x, target)``.

>>> import xadv
>>> ig = xadv.explainers.get("ig", steps=32)
>>> type(ig).__name__
'IntegratedGradients'
"""
from __future__ import annotations

from typing import Callable, Dict, List

from .._fold import fast_pooling, folding
from .._tokens import class_token_pruning
from ._incremental import incremental_occlusion
from ._attention import fast_attention
from ._entry import entry_factoring
from .base import Explainer, select_score
from .gradcam import GradCAM, GradCAMPlusPlus
from .gradient import InputXGradient, Saliency
from .gradient_shap import ExpectedGradients, GradientSHAP
from .integrated_gradients import IntegratedGradients
from .occlusion import Occlusion
from .rollout import AttentionRollout
from .smoothgrad import SmoothGrad
from .cam import AblationCAM, EigenCAM, HiResCAM, LayerCAM, ScoreCAM, XGradCAM
from .propagation import LRP, Deconvnet, DeepLift, DeepLiftShap, GuidedBackprop, GuidedGradCAM
from .perturbation import ExtremalPerturbation, MeaningfulPerturbation

_REGISTRY: Dict[str, Callable[..., Explainer]] = {}
_ALIASES: Dict[str, str] = {}


def register(name: str, factory: Callable[..., Explainer], aliases=()) -> None:
    """Add an explainer under ``name`` (and ``aliases``) to the registry."""
    _REGISTRY[name] = factory
    for a in aliases:
        _ALIASES[a] = name


def names() -> List[str]:
    """Registered explainer names (aliases not included)."""
    return sorted(_REGISTRY)


def get(name: str, **params) -> Explainer:
    """Build the explainer registered as ``name`` with ``params``.

    Examples
    --------
    >>> get("smoothgrad", n_samples=10).n_samples
    10
    """
    if isinstance(name, Explainer):
        if params:
            raise TypeError("parameters cannot be given together with an explainer instance")
        return name
    if not isinstance(name, str):
        raise TypeError(f"method must be a registry name or an Explainer, got {type(name).__name__}")
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in _REGISTRY:
        raise ValueError(
            f"unknown explainer {name!r}; known: {', '.join(names())} "
            f"(aliases: {', '.join(f'{a}={b}' for a, b in sorted(_ALIASES.items()))})"
        )
    return _REGISTRY[key](**params)


def _smoothgrad_factory(base=None, **params):
    if isinstance(base, str):
        base = get(base)
    return SmoothGrad(base=base, **params)


register("saliency", Saliency, aliases=("gradient", "grad"))
register("input_x_gradient", InputXGradient, aliases=("ixg", "inputxgradient"))
register("smoothgrad", _smoothgrad_factory, aliases=("sg",))
register("integrated_gradients", IntegratedGradients, aliases=("ig",))
register("gradcam", GradCAM, aliases=("grad_cam",))
register("gradcam_pp", GradCAMPlusPlus, aliases=("gradcam++", "gradcampp"))
register("occlusion", Occlusion)
register("attention_rollout", AttentionRollout, aliases=("rollout",))
register("gradient_shap", GradientSHAP, aliases=("gradientshap", "gshap"))
register("expected_gradients", ExpectedGradients, aliases=("eg",))
register("hirescam", HiResCAM, aliases=("hires_cam",))
register("xgradcam", XGradCAM, aliases=("xgrad_cam",))
register("layercam", LayerCAM, aliases=("layer_cam",))
register("scorecam", ScoreCAM, aliases=("score_cam",))
register("ablationcam", AblationCAM, aliases=("ablation_cam",))
register("eigencam", EigenCAM, aliases=("eigen_cam",))
register("lrp", LRP)
register("deeplift", DeepLift, aliases=("deep_lift",))
register("deeplift_shap", DeepLiftShap, aliases=("deepliftshap",))
register("guided_backprop", GuidedBackprop, aliases=("gbp", "guidedbackprop"))
register("deconvnet", Deconvnet, aliases=("deconvolution", "deconv"))
register("guided_gradcam", GuidedGradCAM, aliases=("guided_grad_cam", "guidedgradcam"))
register("meaningful_perturbation", MeaningfulPerturbation, aliases=("mp", "mask", "meaningful"))
register("extremal_perturbation", ExtremalPerturbation, aliases=("ep", "extremal"))

from .lime import LIME, TabularLIME  # noqa: E402

register("lime", LIME)
from .lime_features import FeatureLIME  # noqa: E402

register("feature_lime", FeatureLIME, aliases=("text_lime", "token_lime"))
register("tabular_lime", TabularLIME, aliases=("lime_tabular",))

__all__ = [
    "Explainer", "Saliency", "InputXGradient", "SmoothGrad", "IntegratedGradients", "GradCAM",
    "GradCAMPlusPlus", "Occlusion", "AttentionRollout", "GradientSHAP", "ExpectedGradients",
    "HiResCAM", "XGradCAM", "LayerCAM", "ScoreCAM", "AblationCAM", "EigenCAM", "LRP", "DeepLift", "DeepLiftShap", "GuidedBackprop", "Deconvnet", "GuidedGradCAM", "MeaningfulPerturbation",
    "ExtremalPerturbation", "class_token_pruning", "entry_factoring", "incremental_occlusion", "fast_attention", "fast_pooling", "folding", "get", "names", "register", "select_score",
]
if "LIME" in globals():
    __all__ += ["LIME", "TabularLIME", "FeatureLIME"]
