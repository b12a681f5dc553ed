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

from . import _views as V
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


@dataclass(repr=False)
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

    # ---------------------------------------------------------------- views
    def __getitem__(self, idx) -> "AttackResult":
        """The samples ``idx`` (int, slice, list of ints or boolean mask) as a new AttackResult.

        An int keeps the batch axis (``res[0]`` has one sample); an index outside
        ``-len(res)..len(res)-1`` raises IndexError naming the valid range.
        """
        return V.subset(self, idx)

    def __repr__(self) -> str:
        s = self.summary()
        norms = ", ".join(f"mean_{k}={V.fmt(s[f'mean_{k}'])}" for k in self.norms)
        return (f"AttackResult(n={len(self)}, x={V.shape(self.x)}, success_rate={V.fmt(self.success_rate)}"
                f"{', ' + norms if norms else ''}, targeted={self.targeted}, attack={V.short(self.attack)!r})")

    def to_frame(self):
        """One row per sample: label, predictions, confidences, success, norms, queries, steps (pandas)."""
        n = len(self)
        cols = {"y": self.y, "pred_clean": self.pred_clean, "pred_adv": self.pred_adv, "success": self.success,
                "conf_clean": self.conf_clean, "conf_adv": self.conf_adv, **V.per_sample(self.norms, n)}
        cols.update(V.per_sample({"queries": self.queries, "steps": self.steps}, n))
        return V.frame(cols)

    def _repr_html_(self) -> str:
        s = {"samples": len(self), "input shape": V.shape(self.x[0]) if len(self) else "-", **{
            k: v for k, v in self.summary().items() if k != "n"}, "targeted": self.targeted,
            "attack": V.short(self.attack, 200)}
        rows = []
        for i in range(min(len(self), V._THUMBS)):
            a, b = V.image_np(self.x[i]), V.image_np(self.x_adv[i])
            d = V.image_np(self.x_adv[i] - self.x[i])
            thumbs = [V.to_png(a), V.to_png(b), V.to_png(d if d.ndim == 2 else d.sum(-1), signed=True)] \
                if a is not None else ["", "", ""]
            rows.append([str(i), *thumbs, f"{int(self.y[i])}", f"{int(self.pred_adv[i])}",
                         "yes" if bool(self.success[i]) else "no"])
        return V.html_table(f"AttackResult ({len(self)} samples)", s, rows,
                            ["#", "input", "adversarial", "perturbation", "label", "adv. pred", "success"])


@dataclass(repr=False)
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

    # ---------------------------------------------------------------- views
    def __getitem__(self, idx) -> "FoolingResult":
        """The samples ``idx`` (int, slice, list of ints or boolean mask) as a new FoolingResult.

        Both explanations are indexed too; an int keeps the batch axis.
        """
        return V.subset(self, idx)

    def __repr__(self) -> str:
        s = self.summary()
        sim = ", ".join(f"{k}={V.fmt(s[k])}" for k in list(self.similarity)[:4])
        return (f"FoolingResult(n={len(self)}, x={V.shape(self.x)}, method={self.explanation_clean.method!r}, "
                f"kept_rate={V.fmt(s['kept_rate'])}{', ' + sim if sim else ''}, attack={V.short(self.attack)!r})")

    def to_frame(self):
        """One row per sample: label, predictions, kept, every similarity and norm (pandas)."""
        n = len(self)
        return V.frame({"y": self.y, "pred_clean": self.pred_clean, "pred_adv": self.pred_adv, "kept": self.kept,
                        **V.per_sample(self.similarity, n), **V.per_sample(self.norms, n)})

    def _repr_html_(self) -> str:
        s = {"samples": len(self), "explainer": self.explanation_clean.method,
             **{k: v for k, v in self.summary().items() if k != "n"}, "attack": V.short(self.attack, 200)}
        rows = []
        before = self.explanation_clean.saliency_map("abs").detach().float().cpu().numpy()
        after = self.explanation_adv.saliency_map("abs").detach().float().cpu().numpy()
        for i in range(min(len(self), V._THUMBS)):
            a = V.image_np(self.x[i])
            if a is None or before.ndim != 3:
                thumbs = ["", "", ""]
            else:
                thumbs = [V.to_png(a), V.to_png(before[i]), V.to_png(after[i])]
            rows.append([str(i), *thumbs, "yes" if bool(self.kept[i]) else "no"])
        return V.html_table(f"FoolingResult ({len(self)} samples)", s, rows,
                            ["#", "input", "map before", "map after", "kept"])


@dataclass(repr=False)
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

    # ---------------------------------------------------------------- views
    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx) -> "DetectionReport":
        """Rows by position (int, slice, list) or by detector name: ``rep["saliency"]``.

        The ROC curves of the kept rows come along; ``meta`` is shared.
        """
        if isinstance(idx, str):
            keep = [i for i, r in enumerate(self.rows) if r.get("detector") == idx]
            if not keep:
                names = sorted({str(r.get("detector")) for r in self.rows})
                raise KeyError(f"no detector {idx!r} in this report; detectors: {', '.join(names)}")
        else:
            n = len(self.rows)
            sel = V.check_index(idx, n, "rows")
            keep = torch.arange(n)[sel].tolist()
        rows = [self.rows[i] for i in keep]
        keys = {"|".join(str(r.get(k)) for k in ("detector", "attack", "budget", "adaptive")) for r in rows}
        roc = {k: v for k, v in self.roc.items() if k in keys}
        return DetectionReport(rows=rows, roc=roc, meta=self.meta)

    def __repr__(self) -> str:
        dets = sorted({str(r.get("detector")) for r in self.rows})
        atks = sorted({str(r.get("attack")) for r in self.rows})
        au = [r["auroc"] for r in self.rows if isinstance(r.get("auroc"), float) and r["auroc"] == r["auroc"]]
        rng = f", auroc={min(au):.3f}..{max(au):.3f}" if au else ""
        return f"DetectionReport(rows={len(self.rows)}, detectors={dets}, attacks={atks}{rng}, roc_curves={len(self.roc)})"

    def to_frame(self):
        """The rows as a pandas DataFrame (one row per detector, attack, budget, adaptive)."""
        try:
            import pandas as pd
        except ImportError:  # pragma: no cover
            raise ImportError("to_frame() needs pandas: pip install pandas") from None
        return pd.DataFrame(self.rows)

    def _repr_html_(self) -> str:
        cols = [c for c in ("detector", "attack", "budget", "held_out", "adaptive", "auroc", "tpr_at_5fpr")
                if any(c in r for r in self.rows)]
        rows = [[V.html.escape(V.fmt(r.get(c, ""))) for c in cols] for r in self.rows[:40]]
        return V.html_table(f"DetectionReport ({len(self.rows)} rows)", {"ROC curves": len(self.roc)}, rows, cols)
