"""xadv: explanations linked to adversarial attacks.

Explainers produce :class:`Explanation` objects; attacks, fooling attacks and
detectors consume them.

>>> import torch, xadv
>>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
>>> xadv.explain(net, torch.rand(2, 4), method="ig", steps=16).method
'integrated_gradients'
"""
from __future__ import annotations

import importlib as _importlib
from typing import Any as _Any

from . import data, explainers, nn, zoo
from ._adapter import ModelAdapter, adapt, layer_head
from ._progress import set_progress
from .explainers import Explainer
from .explanation import Explanation
from .results import AttackResult, DetectionReport, FoolingResult

# heavier sub-packages load on first use: ``xadv.attacks``, ``xadv.plot``, ...
_LAZY = ("attacks", "fooling", "detectors", "defenses", "metrics", "plot", "experiments", "cli")


def __getattr__(name: str) -> _Any:
    if name in _LAZY:
        module = _importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'xadv' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)

__version__ = "0.1.0"


def explain(model, x, method="saliency", target=None, *, create_graph: bool = False, forward_args=None,
            output=None, **params) -> Explanation:
    """Functional form: ``explainers.get(method, **params)(model, x, target, create_graph=...)``.

    Parameters
    ----------
    model : nn.Module or callable, (N, ...) -> (N, K)
    x : Tensor (N, ...)
    method : str or Explainer, default "saliency"
        A registry name (see ``xadv.explainers.names()``) or an explainer instance.
    target : None, int, sequence, LongTensor (N,) or callable
    forward_args, output : see :meth:`Explainer.__call__` (pass-through arguments, which
        part of the output holds the scores).
    **params : the explainer's parameters, e.g. ``steps=50`` for IG, ``layer="emb"``.
    """
    return explainers.get(method, **params)(model, x, target, create_graph=create_graph,
                                            forward_args=forward_args, output=output)


__all__ = [
    "Explanation", "Explainer", "AttackResult", "FoolingResult", "DetectionReport", "explain", "adapt", "layer_head",
    "set_progress",
    "ModelAdapter",
    "explainers", "nn", "data", "zoo", "__version__", *_LAZY,
]
