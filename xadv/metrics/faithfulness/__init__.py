"""Faithfulness of explanations: do highly attributed features matter to the model?

* :mod:`.curves` -- deletion / insertion curves, their areas, AOPC;
* :mod:`.scores` -- faithfulness correlation and estimate, pixel flipping, region
  perturbation, selectivity, sensitivity-n, monotonicity (and its correlation),
  IROF, ROAD, sufficiency;
* infidelity lives with the sensitivity estimators in :mod:`xadv.metrics.robustness`.
"""
from .curves import *  # noqa: F401,F403
from .curves import _expand_mask, _score, removal_order  # noqa: F401  (used by xadv.attacks.deletion)
from .scores import *  # noqa: F401,F403
from . import curves, scores

__all__ = curves.__all__ + scores.__all__
