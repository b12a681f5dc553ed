"""Metrics of explanations, by the evaluation taxonomy (one module or folder per family).

* :mod:`.similarity` -- two explanations compared (top-k intersection, rank
  correlations, SSIM ...);
* :mod:`.randomisation` -- sanity checks: model-parameter randomisation (MPRT,
  smooth, efficient), random logit, data randomisation;
* :mod:`.axiomatic` -- completeness, non-sensitivity, input invariance;
* :mod:`.faithfulness` -- deletion / insertion / AOPC curves and the scores of
  Quantus' faithfulness family;
* :mod:`.robustness` -- sensitivity, stability and continuity, random and worst case;
* :mod:`.complexity` -- sparseness, complexity, effective complexity;
* :mod:`.localisation` -- agreement with ground-truth masks.

Plain batched functions on tensors, no state; every scoring function returns one
value per sample (N,) and carries ``family``, ``direction`` ("higher"/"lower" is
better) and ``needs`` as attributes. :func:`evaluate` builds the report card.
"""
from .faithfulness import *  # noqa: F401,F403
from .similarity import *  # noqa: F401,F403
from .robustness import *  # noqa: F401,F403
from .randomisation import *  # noqa: F401,F403
from .axiomatic import *  # noqa: F401,F403
from .complexity import *  # noqa: F401,F403
from .localisation import *  # noqa: F401,F403
from ._base import FAMILIES, REGISTRY, explanation_fn
from .report import *  # noqa: F401,F403
from . import axiomatic, faithfulness, localisation, randomisation, report, robustness, similarity
import importlib as _importlib
_complexity_module = _importlib.import_module(".complexity", __name__)
from .complexity import complexity  # the function keeps the name; the module is xadv.metrics.complexity

__all__ = (faithfulness.__all__ + similarity.__all__ + robustness.__all__ + randomisation.__all__
           + axiomatic.__all__ + _complexity_module.__all__ + localisation.__all__ + report.__all__
           + ["FAMILIES", "REGISTRY", "explanation_fn"])
