"""Interpretation-fooling attacks: change the explanation, keep the prediction.

Input space (``attack(model, x, y=None) -> FoolingResult``):
:class:`TopKAttack`, :class:`MassCenterAttack`, :class:`RandomSignAttack`
(Ghorbani et al.), :class:`TargetedManipulation` (Dombrowski et al.),
:class:`JointAttack` (ADV^2, Zhang et al.); :func:`reachable_target` gives a
map the model produces inside a budget, to calibrate targeted manipulation.

Model space: :class:`ModelManipulation` (Heo et al.), :class:`Scaffolding`
(Slack et al.), :class:`FeatureHiding` (Dimanov et al.).
"""
from ._engine import FoolingAttack
from .input_space import (JointAttack, MassCenterAttack, RandomSignAttack, TargetedManipulation, TopKAttack,
                          reachable_target)

__all__ = ["FoolingAttack", "TopKAttack", "MassCenterAttack", "RandomSignAttack", "TargetedManipulation",
           "JointAttack", "reachable_target"]

try:
    from .model_space import FeatureHiding, ManipulationResult, ModelManipulation  # noqa: F401
    from .scaffolding import Scaffolding, ScaffoldingReport, add_unrelated_features  # noqa: F401

    __all__ += ["ModelManipulation", "ManipulationResult", "FeatureHiding", "Scaffolding", "ScaffoldingReport",
                "add_unrelated_features"]
except ImportError:  # pragma: no cover
    pass
