"""Detection metrics on scores (higher = more likely adversarial).

Plain functions of ``labels`` (1 = adversarial, 0 = clean) and ``scores``; tensors
or arrays in, floats or numpy arrays out. They follow scikit-learn's definitions
(``roc_curve``, ``roc_auc_score``, ``average_precision_score``) and are tested
against them; they exist so that xadv needs scikit-learn only where it fits models.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch
from scipy.stats import rankdata


def _as_arrays(labels, scores) -> Tuple[np.ndarray, np.ndarray]:
    if isinstance(labels, torch.Tensor):
        labels = labels.numpy(force=True)
    if isinstance(scores, torch.Tensor):
        scores = scores.double().numpy(force=True)
    y = np.asarray(labels).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"labels and scores must have the same length, got {y.size} and {s.size}")
    if y.dtype == bool:
        y = y.astype(np.int64)
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (clean) or 1 (adversarial)")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or Inf")
    if y.sum() == 0 or y.sum() == y.size:
        raise ValueError(
            f"both classes are needed (got {int(y.sum())} adversarial and {int(y.size - y.sum())} clean); "
            f"check that the attack succeeded on some inputs"
        )
    return y.astype(np.int64), s


def roc_curve(labels, scores) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve: ``(fpr, tpr, thresholds)``, one point per distinct score plus (0, 0).

    A sample is flagged when ``score >= threshold``; the first threshold is ``+inf``.
    Same points as ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``.

    Examples
    --------
    >>> fpr, tpr, thr = roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    >>> fpr.tolist(), tpr.tolist()
    ([0.0, 0.0, 0.5, 0.5, 1.0], [0.0, 0.5, 0.5, 1.0, 1.0])
    """
    y, s = _as_arrays(labels, scores)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    tpr = np.r_[0.0, tps / y.sum()]
    fpr = np.r_[0.0, fps / (y.size - y.sum())]
    return fpr, tpr, np.r_[np.inf, s[last]]


def auroc(labels, scores) -> float:
    """Area under the ROC curve (ties count one half): the Mann-Whitney statistic.

    Examples
    --------
    >>> auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    """
    y, s = _as_arrays(labels, scores)
    ranks = rankdata(s)
    p = int(y.sum())
    n = y.size - p
    return float((ranks[y == 1].sum() - p * (p + 1) / 2.0) / (p * n))


def aupr(labels, scores) -> float:
    """Area under the precision-recall curve with adversarial as the positive class,
    as average precision ``sum_k (R_k - R_{k-1}) P_k`` over distinct thresholds
    (scikit-learn's ``average_precision_score``).

    Examples
    --------
    >>> round(aupr([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]), 4)
    0.8333
    """
    y, s = _as_arrays(labels, scores)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]
    tps = np.cumsum(y)[last]
    precision = tps / (last + 1)
    recall = tps / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def tpr_at_fpr(labels, scores, fpr: float) -> float:
    """Largest true positive rate among ROC operating points whose false positive
    rate is at most ``fpr`` (e.g. 0.01, 0.05).

    Examples
    --------
    >>> tpr_at_fpr([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], 0.0)
    0.5
    """
    if not 0.0 <= float(fpr) <= 1.0:
        raise ValueError(f"fpr must be in [0, 1], got {fpr}")
    f, t, _ = roc_curve(labels, scores)
    return float(t[f <= fpr + 1e-12].max())


def threshold_at_fpr(clean_scores, fpr: float) -> float:
    """Threshold ``t`` such that at most a fraction ``fpr`` of ``clean_scores`` is ``> t``.

    ``predict`` flags ``score > t``; on the scores it was chosen from, the false
    positive rate is therefore ``<= fpr``.

    Examples
    --------
    >>> threshold_at_fpr([0.1, 0.2, 0.3, 0.4], 0.25)
    0.3
    """
    if not 0.0 <= float(fpr) < 1.0:
        raise ValueError(f"fpr must be in [0, 1), got {fpr}")
    if isinstance(clean_scores, torch.Tensor):
        clean_scores = clean_scores.double().numpy(force=True)
    s = np.sort(np.asarray(clean_scores, dtype=np.float64).reshape(-1))
    if s.size == 0:
        raise ValueError("no clean scores to choose a threshold from")
    k = int(np.floor(fpr * s.size + 1e-9))  # number allowed above the threshold
    return float(s[s.size - 1 - k])


def detection_accuracy(labels, scores, threshold: float) -> float:
    """Balanced detection accuracy ``(TPR + TNR) / 2`` when flagging ``score > threshold``."""
    y, s = _as_arrays(labels, scores)
    flag = s > threshold
    return float(0.5 * (flag[y == 1].mean() + (~flag[y == 0]).mean()))
