"""Explanation-based adversarial detectors and an honest evaluation protocol.

Detectors follow scikit-learn's shape with the model given at call time:
``fit(model, x_clean, x_adv)``, ``score(model, x)`` (higher = more likely adversarial),
``predict(model, x)`` (threshold set at fit time on held-out clean inputs), ``save``/``load``.
:func:`evaluate` fits on some attacks and tests on held-out attacks/budgets, and
:class:`AdaptiveAttack` attacks each detector through its explainer.

>>> from xadv.detectors import SaliencyDetector, LOODetector, evaluate, AdaptiveAttack
"""
from __future__ import annotations

from .adaptive import AdaptiveAttack
from .base import Detector, InputMap, explain_batched, resolve_explainer
from .baselines import KDBUDetector, MahalanobisDetector
from .evaluate import METRIC_DEFINITIONS, evaluate, to_dict, to_latex, to_markdown
from .explanation import ExplanationAutoencoder, SaliencyDetector, XEnsemble
from .loo import LOODetector
from .metrics import aupr, auroc, detection_accuracy, roc_curve, threshold_at_fpr, tpr_at_fpr
from .shap_signature import ShapSignatureDetector

__all__ = [
    "Detector", "SaliencyDetector", "XEnsemble", "LOODetector", "ShapSignatureDetector", "ExplanationAutoencoder",
    "MahalanobisDetector", "KDBUDetector", "AdaptiveAttack", "evaluate", "to_markdown", "to_latex", "to_dict",
    "METRIC_DEFINITIONS", "auroc", "aupr", "roc_curve", "tpr_at_fpr", "threshold_at_fpr", "detection_accuracy",
    "InputMap", "explain_batched", "resolve_explainer",
]
