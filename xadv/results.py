"""Result types shared by attacks, fooling attacks and detectors (and read by ``xadv.plot``).

Every result is a dataclass of tensors plus plain metadata, with ``save``/``load``
(safetensors + JSON files that cannot run code when read, written atomically) and ``summary()`` (a dict of floats).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch

from .explanation import Explanation


class _Saveable:
    def save(self, path: Union[str, Path]) -> Path:
        """Write the result to ``path`` (tensors detached, on CPU); read it with ``load``.

        The file is safetensors (tensors) plus JSON (everything else), written
        atomically: an interrupted save leaves any old file at ``path`` intact.
        """
        from ._io import save as _save

        return _save(path, type(self).__name__,
                     {f.name: getattr(self, f.name) for f in dataclasses.fields(self)})  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: Union[str, Path], map_location=None, *, trust: bool = False):
        """Read a result written by ``save``; loading never executes code.

        ``trust=True`` is needed only for files written by older xadv versions
        (``torch.save`` pickles), since unpickling can run code.
        """
        from ._io import load as _load

        def legacy(old):
            if not isinstance(old, dict) or old.get("__xadv__") != cls.__name__:
                raise ValueError(f"{path} is not an xadv {cls.__name__} file")
            out = {}
            for k, v in old.items():
                if isinstance(v, dict) and "__explanation__" in v:
                    v = Explanation(**v["__explanation__"])
                out[k] = v
            return out

        payload = _load(path, cls.__name__, map_location=map_location, trust=trust, legacy=legacy)
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in payload.items() if k in names})


@dataclass
class AttackResult(_Saveable):
    """What an attack returns.

    Attributes
    ----------
    x_adv : Tensor (N, ...)        adversarial inputs, inside ``bounds``
    x : Tensor (N, ...)            the clean inputs (a detached copy)
    y : LongTensor (N,)            true labels (untargeted) or target labels (targeted)
    success : BoolTensor (N,)      misclassified (untargeted) / classified as target (targeted)
    pred_clean, pred_adv : LongTensor (N,)
    conf_clean, conf_adv : Tensor (N,)   softmax probability of the predicted class
    norms : dict of Tensor (N,)    ``"l0"``, ``"l2"``, ``"linf"`` of ``x_adv - x``
    queries : LongTensor (N,)      model evaluations used per sample (forward passes)
    steps : LongTensor (N,)        iterations used per sample (early stop)
    targeted : bool
    attack : str                   repr of the attack
    extras : dict                  attack-specific (e.g. curves, masks)
    """

    x_adv: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    success: torch.Tensor
    pred_clean: torch.Tensor
    pred_adv: torch.Tensor
    conf_clean: torch.Tensor
    conf_adv: torch.Tensor
    norms: Dict[str, torch.Tensor] = field(default_factory=dict)
    queries: Optional[torch.Tensor] = None
    steps: Optional[torch.Tensor] = None
    targeted: bool = False
    attack: str = ""
    extras: Dict[str, Any] = field(default_factory=dict)

    @property
    def perturbation(self) -> torch.Tensor:
        return self.x_adv - self.x

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean()) if self.success.numel() else float("nan")

    def summary(self) -> Dict[str, float]:
        """Success rate, mean norms (over successful samples too) and mean queries."""
        out = {"n": float(self.success.numel()), "success_rate": self.success_rate}
        for k, v in self.norms.items():
            out[f"mean_{k}"] = float(v.float().mean())
            s = self.success.to(v.device)
            out[f"mean_{k}_success"] = float(v[s].float().mean()) if s.any() else float("nan")
        if self.queries is not None:
            out["mean_queries"] = float(self.queries.float().mean())
        return out

    def __len__(self) -> int:
        return self.x_adv.shape[0]


@dataclass
class FoolingResult(_Saveable):
    """What an interpretation-fooling attack returns.

    Attributes
    ----------
    x_adv : Tensor (N, ...)
    x : Tensor (N, ...)
    y : LongTensor (N,)                 labels whose prediction must be kept (or the target)
    explanation_clean, explanation_adv : Explanation   before and after (on the original model)
    pred_clean, pred_adv : LongTensor (N,)
    kept : BoolTensor (N,)              prediction unchanged (or reached the target, JointAttack)
    similarity : dict of Tensor (N,)    every similarity metric between the two maps
    norms : dict of Tensor (N,)
    attack : str
    extras : dict                       e.g. loss history, target map
    """

    x_adv: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    explanation_clean: Explanation
    explanation_adv: Explanation
    pred_clean: torch.Tensor
    pred_adv: torch.Tensor
    kept: torch.Tensor
    similarity: Dict[str, torch.Tensor] = field(default_factory=dict)
    norms: Dict[str, torch.Tensor] = field(default_factory=dict)
    attack: str = ""
    extras: Dict[str, Any] = field(default_factory=dict)

    def summary(self) -> Dict[str, float]:
        out = {"n": float(self.kept.numel()), "kept_rate": float(self.kept.float().mean())}
        for k, v in self.similarity.items():
            out[k] = float(v.float().mean())
        for k, v in self.norms.items():
            out[f"mean_{k}"] = float(v.float().mean())
        return out

    def __len__(self) -> int:
        return self.x_adv.shape[0]


@dataclass
class DetectionReport(_Saveable):
    """Evaluation of one or more detectors (see ``xadv.detectors.evaluate``).

    Attributes
    ----------
    rows : list of dict
        One row per (detector, attack, budget, adaptive) with keys ``detector``,
        ``attack``, ``budget``, ``held_out`` (bool), ``adaptive`` (bool), ``auroc``,
        ``aupr``, ``tpr_at_1fpr``, ``tpr_at_5fpr``, ``accuracy``, ``clean_accuracy``,
        ``n_clean``, ``n_adv`` and, where computed, ``note``.
    roc : dict
        ``{(detector, attack, budget, adaptive) as "a|b|c|d" string: (fpr, tpr) numpy arrays}``.
    meta : dict
        Protocol description: train attacks, thresholds, surrogate/BPDA notes.
    """

    rows: List[Dict[str, Any]] = field(default_factory=list)
    roc: Dict[str, Any] = field(default_factory=dict)
    meta: Dict[str, Any] = field(default_factory=dict)
