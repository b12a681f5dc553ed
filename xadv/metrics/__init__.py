"""Metrics of explanations: similarity, robustness and faithfulness.

Plain batched functions on tensors, no state.
"""
from .faithfulness import *  # noqa: F401,F403
from .similarity import *  # noqa: F401,F403
from .robustness import *  # noqa: F401,F403
from . import faithfulness, robustness, similarity

__all__ = faithfulness.__all__ + similarity.__all__ + robustness.__all__
