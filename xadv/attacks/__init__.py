"""Attacks derived from attributions (``import xadv.attacks``).

Every attack is built with its budget and called as ``attack(model, x, y) ->
AttackResult``. The gradient attacks are one projected-gradient engine
(:class:`ProjectedGradient`) whose step direction comes from an explainer: the
reversed explanation of the true class (untargeted) or the explanation of the
target class (targeted). ``FGSM``, ``PGD`` and ``RFGSM`` use the loss gradient
(``Saliency(score="log_softmax")``); ``ExplainerPGD`` any explainer.

>>> import torch, xadv.attacks
>>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
>>> res = xadv.attacks.PGD(eps=0.1, steps=5, seed=0)(net, torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0]))
>>> sorted(res.norms)
['l0', 'l2', 'linf']
"""
from __future__ import annotations

from .base import Attack, perturbation_norms, project
from .gradient import FGSM, PGD, RFGSM, ExplainerPGD, ProjectedGradient
from .apgd import APGD, APGDT, apgd_checkpoints
from .square import Square
from .autoattack import AutoAttack, GradientMaskingWarning
from .blackbox import SurrogateAttack, TransferAttack, train_substitute
from .deletion import JSMA, DeletionAttack
from .minimal import CarliniWagnerL2, DeepFool
from .universal import AdversarialPatch, ClassVisualizationPerturbation, DataFreeUAP, GradCAMHidingPatch, gradcam_mass

__all__ = [
    "Attack", "ProjectedGradient", "FGSM", "PGD", "RFGSM", "ExplainerPGD", "CarliniWagnerL2", "DeepFool",
    "DeletionAttack", "JSMA", "SurrogateAttack", "TransferAttack", "train_substitute",
    "ClassVisualizationPerturbation", "DataFreeUAP", "AdversarialPatch", "GradCAMHidingPatch", "gradcam_mass",
    "APGD", "APGDT", "apgd_checkpoints", "Square", "AutoAttack", "GradientMaskingWarning",
    "perturbation_norms", "project",
]
