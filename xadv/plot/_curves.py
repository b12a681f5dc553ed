"""Curves: attack success vs budget, deletion/insertion, ROC of detectors, fooling metrics vs budget."""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Union

import numpy as np

from ..results import AttackResult, DetectionReport, FoolingResult
from ._maps import _np
from ._style import styled

# colour-blind safe (Okabe-Ito) with line styles and markers, readable in grayscale print
_COLORS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442"]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
_LINES = ["-", "--", "-.", ":"]


def _cycle(i: int) -> Dict[str, Any]:
    import matplotlib as mpl

    c = _COLORS[i % len(_COLORS)]
    if c == "#000000":              # the black of the cycle is the text colour (white on a dark style)
        c = mpl.rcParams["text.color"]
    return {"color": c, "marker": _MARKERS[i % len(_MARKERS)],
            "linestyle": _LINES[(i // len(_COLORS)) % len(_LINES)]}


def _ax(ax, aspect=0.75):
    import matplotlib as mpl
    import matplotlib.pyplot as plt

    if ax is None:
        w = mpl.rcParams["figure.figsize"][0]
        w = min(w, 4.0)
        fig, ax = plt.subplots(figsize=(w, w * aspect))
        return fig, ax
    return ax.figure, ax


def _legend_outside(ax):
    """The legend right of the axes, so it never covers a curve (saved figures grow to hold it)."""
    return ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False,
                     handlelength=1.8)


def _series(values) -> Dict[str, np.ndarray]:
    if isinstance(values, Mapping):
        return {str(k): v for k, v in values.items()}
    return {"": values}


def _value(v, key: str) -> float:
    if isinstance(v, AttackResult):
        return v.success_rate if key == "success_rate" else float(v.summary()[key])
    if isinstance(v, FoolingResult):
        return float(v.summary()[key])
    return float(_np(v))


@styled
def budget_curve(budgets: Sequence[float], values, *, key: str = "success_rate", xlabel: str = "budget ε",
                 ylabel: str = "", ylim=None, title: Optional[str] = None, band=None, legend: bool = True,
                 ax=None, style=None):
    """A metric against the attack budget, one line per series.

    Parameters
    ----------
    budgets : sequence (B,)
    values : sequence (B,) or dict name -> sequence (B,)
        Numbers, or result objects (AttackResult / FoolingResult) whose ``summary()[key]``
        is plotted.
    key : str, default "success_rate"
        Summary entry read from result objects.
    band : sequence (B,) or dict name -> sequence, optional
        Half-width of a shaded band (e.g. a standard error).
    xlabel, ylabel, ylim, title, legend, ax : axis decoration and target Axes.
    style : str, dict, path or xadv.plot.style, optional
        Style of this figure only (see :func:`xadv.plot.heatmap`); default: the current settings.

    Returns
    -------
    matplotlib Figure
    """
    fig, ax = _ax(ax)
    b = np.asarray(budgets, dtype=float)
    if b.ndim != 1 or b.size == 0:
        raise ValueError(f"budgets must be a non-empty sequence of numbers, got shape {b.shape}")
    if not np.isfinite(b).all():
        raise ValueError(f"budgets must be finite numbers, got {b.tolist()}")
    bands = _series(band) if band is not None else {}
    for i, (name, vals) in enumerate(_series(values).items()):
        y = np.array([_value(v, key) for v in vals], dtype=float)
        if y.shape != b.shape:
            raise ValueError(f"series {name!r} has {y.size} values for {b.size} budgets")
        st = _cycle(i)
        ax.plot(b, y, label=name or None, **st)
        if name in bands:
            h = np.asarray(_np(bands[name]), dtype=float)
            ax.fill_between(b, y - h, y + h, color=st["color"], alpha=0.18, linewidth=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel or key.replace("_", " "))
    if ylim is not None:
        ax.set_ylim(*ylim)
    if title:
        ax.set_title(title)
    names = [n for n in _series(values) if n]
    if legend and names:
        if len(names) >= 3 and not title:  # many or long labels: above the axes, never over the lines
            ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.01), ncol=2, borderaxespad=0.2,
                      columnspacing=1.0, handlelength=1.8)
        else:
            ax.legend(loc="best", frameon=True, framealpha=0.85, edgecolor="none")
    ax.grid(True, linewidth=0.3, alpha=0.5)
    return fig


@styled
def success_curve(budgets: Sequence[float], success, *, norm: Optional[str] = None, ax=None, style=None, **kw):
    """Attack success rate against the budget ε, one line per attack.

    Parameters
    ----------
    budgets : sequence (B,)
    success : sequence (B,) or dict attack name -> sequence (B,)
        Success rates in [0, 1] or AttackResult objects (one per budget).
    norm : {"linf", "l2", "l0"}, optional
        Written in the x label ("ε (L∞)").
    style : str, dict, path or xadv.plot.style, optional
        Style of this figure only (see :func:`xadv.plot.heatmap`); default: the current settings.
    **kw
        Passed to :func:`budget_curve`.

    Returns
    -------
    matplotlib Figure

    Examples
    --------
    >>> import xadv.plot as xp
    >>> fig = xp.success_curve([0.05, 0.1, 0.2], {"FGSM": [0.2, 0.5, 0.9], "PGD": [0.4, 0.9, 1.0]}, norm="linf")
    """
    lab = {"linf": "L∞", "l2": "L2", "l0": "L0"}.get(norm or "", norm)
    kw.setdefault("ylabel", "attack success rate")
    kw.setdefault("ylim", (-0.02, 1.02))
    return budget_curve(budgets, success, key="success_rate",
                        xlabel=f"budget ε ({lab})" if lab else "budget ε", ax=ax, **kw)


@styled
def fooling_curve(budgets: Sequence[float], metric, *, key: str = "spearman", ylabel: Optional[str] = None,
                  ax=None, style=None, **kw):
    """A fooling metric (e.g. rank correlation or top-k intersection between the maps
    before and after) against the budget, one line per attack or explainer.

    ``metric`` holds numbers or FoolingResult objects (``summary()[key]`` is plotted);
    ``style`` as in :func:`budget_curve`, other keywords are passed to it.
    """
    return budget_curve(budgets, metric, key=key, ylabel=ylabel or key.replace("_", " "), ax=ax, **kw)


def _auc(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


@styled
def deletion_curve(fractions: Sequence[float], scores, *, kind: str = "deletion", band: Optional[str] = "sem",
                   ylabel: str = "score of the explained class", auc: bool = True, ax=None, style=None):
    """Deletion or insertion curves: model score as pixels are removed / added in order of attribution.

    Parameters
    ----------
    fractions : sequence (S,)
        Fraction of pixels removed (deletion) or inserted (insertion) at each step.
    scores : array (S,) or (N, S), or dict method -> array
        Model score per step (per sample); the mean is drawn.
    kind : {"deletion", "insertion"}
        Labels the x axis; for deletion a lower area is better, for insertion higher.
    band : {"sem", "std", None}, default "sem"
        Shaded band around the mean over samples.
    auc : bool, default True
        Write the area under each mean curve in the legend.
    style : str, dict, path or xadv.plot.style, optional
        Style of this figure only (see :func:`xadv.plot.heatmap`); default: the current settings.

    Returns
    -------
    matplotlib Figure

    References
    ----------
    Petsiuk, Das, Saenko. "RISE: Randomized Input Sampling for Explanation of
    Black-box Models", BMVC 2018.
    """
    if kind not in ("deletion", "insertion"):
        raise ValueError(f"kind must be 'deletion' or 'insertion', got {kind!r}")
    if band not in ("sem", "std", None):
        raise ValueError(f"band must be 'sem', 'std' or None, got {band!r}")
    fig, ax = _ax(ax)
    f = np.asarray(fractions, dtype=float)
    for i, (name, s) in enumerate(_series(scores).items()):
        a = np.asarray(_np(s), dtype=float)
        a = a[None] if a.ndim == 1 else a
        if a.ndim != 2 or a.shape[1] != f.size:
            raise ValueError(f"scores of {name!r} must be (S,) or (N, S) with S={f.size}, got {a.shape}")
        mean = a.mean(0)
        st = _cycle(i)
        st["marker"] = None
        lab = name
        if auc:
            lab = f"{name} (AUC {_auc(f, mean):.3f})" if name else f"AUC {_auc(f, mean):.3f}"
        ax.plot(f, mean, label=lab or None, **st)
        if band and a.shape[0] > 1:
            h = a.std(0, ddof=1) / (np.sqrt(a.shape[0]) if band == "sem" else 1.0)
            ax.fill_between(f, mean - h, mean + h, color=st["color"], alpha=0.18, linewidth=0)
    ax.set_xlabel(f"fraction of pixels {'removed' if kind == 'deletion' else 'inserted'}")
    ax.set_ylabel(ylabel)
    ax.set_xlim(f.min(), f.max())
    ax.set_title(f"{kind} ({'lower' if kind == 'deletion' else 'higher'} AUC is better)")
    ax.grid(True, linewidth=0.3, alpha=0.5)
    if ax.get_legend_handles_labels()[1]:
        _legend_outside(ax)
    return fig


def _roc_label(key: str) -> str:
    parts = str(key).split("|")
    if len(parts) != 4:
        return str(key)
    det, attack, budget, adaptive = parts
    out = f"{det} vs {attack}"
    if budget not in ("", "None", "nan"):
        out += " " + (budget.replace("eps=", "ε=") if "=" in budget else f"ε={budget}")
    if adaptive.lower() in ("true", "1"):
        out += " (adaptive)"
    return out


_LOG_FPR_MIN = 1e-3


@styled
def roc_curve(curves: Union[DetectionReport, Mapping[str, Any]], *, keys: Optional[Sequence[str]] = None,
              labels: Optional[Mapping[str, str]] = None, log_fpr: bool = False, ax=None, style=None):
    """ROC curves of detectors, with AUROC in the legend and the chance diagonal.

    Parameters
    ----------
    curves : DetectionReport, or dict name -> (fpr, tpr), or dict name -> (scores, is_adversarial)
        From a report, every entry of ``report.roc`` (keys ``"detector|attack|budget|adaptive"``)
        is drawn, or those in ``keys``. A pair of equal-length arrays where the second
        holds only 0/1 is read as (scores, labels) and turned into a curve.
    keys : sequence of str, optional
        Subset (and order) of curves to draw.
    labels : dict key -> legend text, optional
    log_fpr : bool, default False
        Logarithmic FPR axis (to read TPR at 1% FPR).
    style : str, dict, path or xadv.plot.style, optional
        Style of this figure only (see :func:`xadv.plot.heatmap`); default: the current settings.

    Returns
    -------
    matplotlib Figure

    Examples
    --------
    >>> import numpy as np, xadv.plot as xp
    >>> s = np.r_[np.random.default_rng(0).normal(0, 1, 50), np.random.default_rng(1).normal(2, 1, 50)]
    >>> fig = xp.roc_curve({"detector": (s, np.r_[np.zeros(50), np.ones(50)])})
    """
    fig, ax = _ax(ax, aspect=0.9)
    if isinstance(curves, DetectionReport):
        data = dict(curves.roc)
        aurocs = {}
        for r in curves.rows:
            k = "|".join(str(r.get(f)) for f in ("detector", "attack", "budget", "adaptive"))
            if "auroc" in r:
                aurocs[k] = float(r["auroc"])
    elif isinstance(curves, Mapping):
        data, aurocs = dict(curves), {}
    else:
        raise TypeError(f"curves must be a DetectionReport or a dict, got {type(curves).__name__}")
    if keys is not None:
        missing = [k for k in keys if k not in data]
        if missing:
            raise KeyError(f"no ROC curve for {missing}; available: {sorted(data)}")
        data = {k: data[k] for k in keys}
    if not data:
        raise ValueError("no ROC curves to draw")
    for i, (name, pair) in enumerate(data.items()):
        a, b = (np.asarray(_np(p), dtype=float) for p in pair)
        if a.shape != b.shape:
            raise ValueError(f"curve {name!r}: the two arrays differ in shape {a.shape} vs {b.shape}")
        if set(np.unique(b)) <= {0.0, 1.0} and not (np.all(np.diff(a) >= 0) and np.all(np.diff(b) >= 0)):
            from sklearn.metrics import roc_curve as _roc
            fpr, tpr, _ = _roc(b.astype(int), a)
        else:
            fpr, tpr = a, b
        auroc = aurocs.get(name, _auc(fpr, tpr))
        text = (labels or {}).get(name, _roc_label(name))
        st = _cycle(i)
        st["marker"] = None
        if log_fpr:     # FPR 0 has no place on a log axis: draw it at the left edge
            fpr = np.clip(fpr, _LOG_FPR_MIN, 1.0)
        ax.plot(fpr, tpr, label=f"{text} (AUROC {auroc:.3f})", drawstyle="steps-post", **st)
    diag = np.logspace(np.log10(_LOG_FPR_MIN), 0, 50) if log_fpr else np.array([0.0, 1.0])
    ax.plot(diag, diag, color="0.6", linewidth=0.8, linestyle=":", label="chance")
    if log_fpr:
        ax.set_xscale("log")
        ax.set_xlim(_LOG_FPR_MIN, 1)
    else:
        ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_xlabel("false positive rate" + (" (log scale)" if log_fpr else ""))
    ax.grid(True, linewidth=0.3, alpha=0.5)
    _legend_outside(ax)
    return fig
