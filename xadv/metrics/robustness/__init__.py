"""Robustness of explanations: how much an explanation moves when the input moves.

* :mod:`.sensitivity` -- max-sensitivity, infidelity, local Lipschitz estimate and the
  fooling-attack worst case (:func:`worst_case_sensitivity`);
* :mod:`.stability` -- avg-sensitivity, continuity, consistency, relative input /
  output / representation stability, each with ``mode="random"`` (noise draws) or
  ``mode="attack"`` (the worst case a budgeted projected-gradient search finds).
"""
from .sensitivity import *  # noqa: F401,F403
from .sensitivity import _explainer, _norm  # noqa: F401
from .stability import *  # noqa: F401,F403
from . import sensitivity, stability

__all__ = sensitivity.__all__ + stability.__all__
