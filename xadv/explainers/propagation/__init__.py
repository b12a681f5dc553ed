"""The propagation family: LRP, DeepLIFT, Guided Backprop, Deconvnet, Guided Grad-CAM.

One mechanism (:mod:`.core`): rules attached to modules by a composite, each a
differentiable backward; see :mod:`.rules` and :mod:`.composites`.
"""
from .composites import COMPOSITES, composite_names
from .core import Backward, Canonizer, Composite, MergeBatchNorm, Rule, attached, stabilize
from .deeplift import DeepLift, DeepLiftShap
from .guided import Deconvnet, GuidedBackprop, GuidedGradCAM
from .lrp import LRP
from .rules import (AlphaBeta, DeconvReLU, Epsilon, Flat, Gamma, GuidedReLU, MaxPoolRescale, Pass, Rescale,
                    WSquare, ZBox, ZPlus)

__all__ = [
    "LRP", "DeepLift", "DeepLiftShap", "GuidedBackprop", "Deconvnet", "GuidedGradCAM", "Composite", "Rule",
    "Backward", "Canonizer", "MergeBatchNorm", "attached", "stabilize", "COMPOSITES", "composite_names",
    "Epsilon", "ZPlus", "AlphaBeta", "Gamma", "ZBox", "Flat", "WSquare", "Pass", "GuidedReLU", "DeconvReLU",
    "Rescale", "MaxPoolRescale",
]
