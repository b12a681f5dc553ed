"""The report card: every explainer scored by every metric, in one table.

>>> import torch, xadv
>>> net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
>>> card = xadv.metrics.evaluate(net, torch.rand(4, 6), 0, ["saliency", "input_x_gradient"],
...                              ["sparseness", "input_invariance"])
>>> card.ranking()[0] in ("saliency", "input_x_gradient")
True
"""
from __future__ import annotations

import inspect
import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch

from .._model import preserved
from ._base import REGISTRY, explanation_fn, setup

__all__ = ["ReportCard", "evaluate", "DEFAULT_METRICS", "bhatt_aggregate", "warnecke_criteria"]

#: metrics of :func:`evaluate` when none are named (cheap ones of every family)
DEFAULT_METRICS = ("mprt", "input_invariance", "faithfulness_correlation", "pixel_flipping", "avg_sensitivity",
                   "sparseness", "complexity")


@dataclass
class ReportCard:
    """Explainer x metric table of per-sample means, with the direction of "better".

    Attributes
    ----------
    values : dict explainer -> dict metric -> float
        Mean over the samples (NaN samples skipped).
    directions : dict metric -> "higher" or "lower"
    per_sample : dict explainer -> dict metric -> Tensor (N,)
    seconds : dict explainer -> dict metric -> float
    """

    values: Dict[str, Dict[str, float]]
    directions: Dict[str, str]
    per_sample: Dict[str, Dict[str, torch.Tensor]] = field(default_factory=dict)
    seconds: Dict[str, Dict[str, float]] = field(default_factory=dict)

    @property
    def explainers(self) -> List[str]:
        return list(self.values)

    @property
    def metrics(self) -> List[str]:
        return list(self.directions)

    def _header(self, m: str) -> str:
        return f"{m} {'↑' if self.directions[m] == 'higher' else '↓'}"

    def rows(self) -> List[Dict[str, Any]]:
        return [{"explainer": e, **{self._header(m): v for m, v in row.items()}} for e, row in self.values.items()]

    def _best(self):
        return {self._header(m): ("max" if d == "higher" else "min") for m, d in self.directions.items()}

    def to_markdown(self, digits: int = 3) -> str:
        """GitHub table; the best value of each column in bold; arrows show the better direction."""
        from ..plot._tables import to_markdown
        return to_markdown(self.rows(), digits=digits, best=self._best())

    def to_latex(self, digits: int = 3, **kw) -> str:
        """LaTeX tabular (booktabs), best value of each column in bold."""
        from ..plot._tables import to_latex
        return to_latex(self.rows(), digits=digits, best=self._best(), **kw)

    def ranks(self) -> Dict[str, Dict[str, float]]:
        """Rank (1 = best) of each explainer for each metric (ties share the mean rank; NaN last)."""
        out: Dict[str, Dict[str, float]] = {e: {} for e in self.values}
        for m, d in self.directions.items():
            vals = {e: self.values[e][m] for e in self.values}
            key = {e: (math.inf if math.isnan(v) else (-v if d == "higher" else v)) for e, v in vals.items()}
            order = sorted(key.values())
            for e, k in key.items():
                first = order.index(k)
                out[e][m] = first + (order.count(k) + 1) / 2
        return out

    def ranking(self) -> List[str]:
        """Explainers from best to worst by mean rank over the metrics."""
        r = self.ranks()
        return sorted(r, key=lambda e: sum(r[e].values()) / max(1, len(r[e])))

    def figure(self, ax=None, style=None):
        """Heat map of the ranks (1 = best) with the values written in the cells; returns the Figure.

        ``style``: a style for this figure only, as ``style=`` of :mod:`xadv.plot`'s functions
        (``"paper"``, ``"notebook"``, ``"dark"``, a matplotlib style, a ``.mplstyle`` file or a
        dict of rcParams); default the current settings.
        """
        if style is not None:
            from ..plot._style import styled

            return styled(type(self).figure)(self, ax=ax, style=style)
        import matplotlib.pyplot as plt
        import numpy as np

        r = self.ranks()
        ex, ms = self.explainers, self.metrics
        data = np.array([[r[e][m] for m in ms] for e in ex])
        if ax is None:
            fig, ax = plt.subplots(figsize=(1.1 * len(ms) + 2.0, 0.45 * len(ex) + 1.4))
        else:
            fig = ax.figure
        im = ax.imshow(data, cmap="RdYlGn_r", vmin=1, vmax=max(2, len(ex)), aspect="auto")
        ax.set_xticks(range(len(ms)), [self._header(m) for m in ms], rotation=35, ha="right")
        ax.set_yticks(range(len(ex)), ex)
        for i, e in enumerate(ex):
            for j, m in enumerate(ms):
                v = self.values[e][m]
                ax.text(j, i, "nan" if math.isnan(v) else f"{v:.3g}", ha="center", va="center", fontsize=7)
        fig.colorbar(im, ax=ax, label="rank (1 = best)")
        fig.tight_layout()
        return fig

    def __repr__(self) -> str:
        return self.to_markdown()


def _resolve_metric(m) -> Callable:
    if callable(m):
        if not hasattr(m, "direction"):
            raise TypeError("a metric function needs the attributes family/direction/needs (decorate it with "
                            "xadv.metrics._base.metric)")
        return m
    if m not in REGISTRY:
        raise ValueError(f"unknown metric {m!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[m]


def _name(e) -> str:
    if isinstance(e, str):
        return e
    return getattr(e, "name", None) or getattr(e, "__name__", None) or type(e).__name__


def evaluate(model, x: torch.Tensor, y=None, explainers: Union[Sequence, Mapping[str, Any]] = ("saliency",),
             metrics: Optional[Sequence] = None, *, mask: Optional[torch.Tensor] = None,
             quadrants: Optional[torch.Tensor] = None, retrain: Optional[Callable] = None,
             params: Optional[Mapping[str, dict]] = None, batch_size: Optional[int] = None) -> ReportCard:
    """Score every explainer with every metric on one batch.

    Parameters
    ----------
    model : nn.Module
    x : Tensor (N, ...)
    y : None, int or LongTensor (N,)
        Explained classes (default: the predictions).
    explainers : sequence of names / Explainers / functions, or a dict name -> one of those
        Any registry name works (``xadv.explainers.names()``), so new explainers plug in.
    metrics : sequence of metric names or functions, default :data:`DEFAULT_METRICS`
        Names from ``xadv.metrics.REGISTRY``.
    mask : Tensor (N, ...), optional
        Ground truth for the localisation metrics (see :func:`xadv.data.planted_evidence`).
    quadrants : Tensor (N, 4), optional
        For :func:`~xadv.metrics.focus`.
    retrain : callable, optional
        For :func:`~xadv.metrics.data_randomisation`.
    params : dict metric name -> dict, optional
        Keyword arguments per metric.
    batch_size : int, optional
        Rows per model call, passed to every metric that calls the model (unless its
        ``params`` set one) and used for the explanations (default
        :func:`xadv.explainers.chunking.rows_per_pass`).

    Returns
    -------
    ReportCard
    """
    metrics = list(DEFAULT_METRICS if metrics is None else metrics)
    fns = [(_name(m), _resolve_metric(m)) for m in metrics]
    params = dict(params or {})
    if not isinstance(explainers, Mapping):
        explainers = {_name(e): e for e in explainers}
    x, out, t = setup(model, x, y, batch_size=batch_size)
    values: Dict[str, Dict[str, float]] = {}
    per: Dict[str, Dict[str, torch.Tensor]] = {}
    secs: Dict[str, Dict[str, float]] = {}
    with preserved(model):
        for ename, e in explainers.items():
            explain = explanation_fn(e, batch_size)
            t0 = time.perf_counter()
            a = explain(model, x, t)
            t_explain = time.perf_counter() - t0
            values[ename], per[ename], secs[ename] = {}, {}, {"explain": t_explain}
            for mname, fn in fns:
                kw = dict(params.get(mname, {}))
                if batch_size is not None and "batch_size" in inspect.signature(fn).parameters:
                    kw.setdefault("batch_size", batch_size)
                t0 = time.perf_counter()
                if fn.needs == ():
                    v = fn(a, **kw)
                elif "mask" in fn.needs:
                    kw.setdefault("abs", True)  # localisation scores relevance magnitude
                    if mname == "focus":
                        if quadrants is None:
                            raise ValueError("metric 'focus' needs quadrants=(N, 4)")
                        v = fn(a, quadrants, **kw)
                    else:
                        if mask is None:
                            raise ValueError(f"metric {mname!r} needs mask= (ground-truth evidence)")
                        v = fn(a.sum(1, keepdim=True) if a.dim() == 4 else a, mask, **kw)
                elif "retrain" in fn.needs:
                    if retrain is None:
                        raise ValueError(f"metric {mname!r} needs retrain= (a function returning a model "
                                         f"trained on permuted labels)")
                    v = fn(model, x, t, a, explainer=e, retrain=retrain, **kw)
                elif "explainer" in fn.needs:
                    v = fn(model, x, t, a, explainer=e, **kw)
                else:
                    v = fn(model, x, t, a, **kw)
                secs[ename][mname] = time.perf_counter() - t0
                v = v.detach().float()
                per[ename][mname] = v
                values[ename][mname] = float(v.nanmean()) if (~torch.isnan(v)).any() else float("nan")
    return ReportCard(values, {m: f.direction for m, f in fns}, per, secs)


def bhatt_aggregate(model, x: torch.Tensor, y=None, explainers: Sequence = ("saliency", "smoothgrad", "ig"), *,
                    max_size: Optional[int] = None, **sensitivity_kw):
    """Bhatt et al.'s aggregation: the combination of explainers whose averaged explanation
    (each map scaled to unit L2 norm first) has the lowest average sensitivity.

    Parameters
    ----------
    model, x, y : as in :func:`evaluate`
    explainers : sequence of names / Explainers
    max_size : int, optional
        Largest combination tried (default all).
    **sensitivity_kw : passed to :func:`xadv.metrics.avg_sensitivity` (``seed``, ``radius`` ...)

    Returns
    -------
    (best combination as a tuple of names, ReportCard with one row per combination and
    the column ``avg_sensitivity``)

    References
    ----------
    Bhatt, Weller, Moura. Evaluating and Aggregating Feature-based Model Explanations. IJCAI 2020.
    """
    from .robustness import avg_sensitivity

    named = {_name(e): explanation_fn(e) for e in explainers}
    sensitivity_kw.setdefault("seed", 0)
    rows, per = {}, {}
    for k in range(1, (max_size or len(named)) + 1):
        for combo in itertools.combinations(named, k):
            fs = [named[c] for c in combo]

            def agg(m, xb, yb, fs=fs):
                maps = [f(m, xb, yb) for f in fs]
                maps = [mp / mp.reshape(mp.shape[0], -1).norm(dim=1).clamp_min(1e-12).reshape(
                    (-1,) + (1,) * (mp.dim() - 1)) for mp in maps]
                return sum(maps) / len(maps)

            v = avg_sensitivity(model, x, y, explainer=agg, **sensitivity_kw)
            name = " + ".join(combo)
            rows[name] = {"avg_sensitivity": float(v.nanmean())}
            per[name] = {"avg_sensitivity": v}
    card = ReportCard(rows, {"avg_sensitivity": "lower"}, per)
    best = card.ranking()[0]
    return tuple(best.split(" + ")), card


def warnecke_criteria(model, x: torch.Tensor, y=None, explainers: Sequence = ("saliency", "ig"), *,
                      seed: int = 0, attack: Optional[dict] = None,
                      batch_size: Optional[int] = None) -> ReportCard:
    """Warnecke et al.'s six criteria as one table.

    * descriptive accuracy -- faithfulness correlation (higher better),
    * sparsity -- Gini sparseness of |attributions| (higher better),
    * stability -- average sensitivity under random noise (lower better),
    * efficiency -- seconds per sample to explain (lower better),
    * robustness -- worst-case sensitivity found by the projected-gradient search
      (lower better; NaN for non-differentiable explainers),
    * completeness -- share of samples with a finite, non-degenerate explanation
      (higher better).

    References
    ----------
    Warnecke, Arp, Wressnegger, Rieck. Evaluating Explanation Methods for Deep Learning
    in Security. EuroS&P 2020.

    ``batch_size`` bounds the rows of every model call (as in :func:`evaluate`).
    """
    from .complexity import sparseness
    from .faithfulness.scores import faithfulness_correlation
    from .robustness import avg_sensitivity

    x, out, t = setup(model, x, y, batch_size=batch_size)
    n = x.shape[0]
    rows = {}
    for e in explainers:
        f = explanation_fn(e, batch_size)
        t0 = time.perf_counter()
        a = f(model, x, t)
        eff = (time.perf_counter() - t0) / n
        ok = torch.isfinite(a.reshape(n, -1)).all(1) & (a.reshape(n, -1).abs().sum(1) > 0)
        rob = float("nan")
        if getattr(f, "differentiable", False):
            rob = float(avg_sensitivity(model, x, t, a, explainer=e, mode="attack", seed=seed,
                                        attack=attack or {"steps": 10}, batch_size=batch_size).nanmean())
        rows[_name(e)] = {
            "descriptive_accuracy": float(faithfulness_correlation(model, x, t, a, seed=seed,
                                                                   subset_size=min(224, x[0].numel() // 4),
                                                                   batch_size=batch_size).nanmean()),
            "sparsity": float(sparseness(a).mean()),
            "stability": float(avg_sensitivity(model, x, t, a, explainer=e, seed=seed, radius=0.05,
                                               batch_size=batch_size).nanmean()),
            "efficiency": eff,
            "robustness": rob,
            "completeness": float(ok.float().mean()),
        }
    dirs = {"descriptive_accuracy": "higher", "sparsity": "higher", "stability": "lower", "efficiency": "lower",
            "robustness": "lower", "completeness": "higher"}
    return ReportCard(rows, dirs)
