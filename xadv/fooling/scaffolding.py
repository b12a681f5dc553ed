"""Scaffolding (Slack et al., 2020): a biased classifier that LIME and SHAP cannot see.

LIME and KernelSHAP query the model on perturbed points that break the
correlations of real data. A scaffold routes real-looking inputs to a biased
model and off-manifold inputs to an innocuous one, so the explanations describe
the innocuous model while every real decision comes from the biased one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np

from ..results import _Saveable

__all__ = ["ThresholdModel", "Scaffolding", "ScaffoldingReport", "add_unrelated_features", "lime_perturbations",
           "shap_perturbations", "feature_ranks"]


def _as_2d(X) -> np.ndarray:
    X = np.asarray(X, dtype=float)
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-D array (n_samples, n_features), got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError("X contains NaN or Inf values")
    return X


def _proba(model, X: np.ndarray) -> np.ndarray:
    if hasattr(model, "predict_proba"):
        p = model.predict_proba(X)
    elif callable(model):
        p = model(X)
    else:
        raise TypeError(f"a model must have predict_proba or be callable, got {type(model).__name__}")
    p = np.asarray(p, dtype=float)
    if p.ndim != 2 or p.shape[0] != X.shape[0]:
        raise ValueError(f"predict_proba must return (n_samples, n_classes), got shape {p.shape}")
    return p


class ThresholdModel:
    """A classifier that looks at one feature only: class 1 when ``X[:, feature] > threshold``.

    Slack et al.'s biased model (``feature`` = the sensitive column) and innocuous
    model (``feature`` = an unrelated synthetic column) are of this kind.

    Parameters
    ----------
    feature : int
    threshold : float, default 0.5
    invert : bool, default False
        Predict class 1 below the threshold instead.

    Examples
    --------
    >>> import numpy as np
    >>> ThresholdModel(1).predict(np.array([[0.0, 1.0], [1.0, 0.0]])).tolist()
    [1, 0]
    """

    def __init__(self, feature: int, threshold: float = 0.5, invert: bool = False):
        self.feature = int(feature)
        self.threshold = float(threshold)
        self.invert = bool(invert)

    def predict(self, X) -> np.ndarray:
        X = np.asarray(X, dtype=float)
        out = X[:, self.feature] > self.threshold
        return (~out if self.invert else out).astype(int)

    def predict_proba(self, X) -> np.ndarray:
        p = self.predict(X).astype(float)
        return np.stack([1 - p, p], axis=1)

    def __repr__(self) -> str:
        return f"ThresholdModel(feature={self.feature}, threshold={self.threshold}, invert={self.invert})"


def add_unrelated_features(X, n: int = 1, seed: Optional[int] = 0) -> np.ndarray:
    """Append ``n`` random 0/1 columns, independent of everything else (Slack et al.'s
    "unrelated columns" the innocuous model uses). Returns (n_samples, d + n)."""
    X = _as_2d(X)
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    rng = np.random.default_rng(seed)
    return np.concatenate([X, rng.integers(0, 2, size=(X.shape[0], n)).astype(float)], axis=1)


def _categorical(X: np.ndarray, categorical: Optional[Sequence[int]]) -> np.ndarray:
    if categorical is None:  # binary indicator columns
        return np.array([j for j in range(X.shape[1]) if len(np.unique(X[:, j])) <= 2], dtype=int)
    return np.asarray(list(categorical), dtype=int)


def lime_perturbations(X, n_per_row: int = 10, std: float = 0.3, categorical: Optional[Sequence[int]] = None,
                       seed: Optional[int] = 0) -> np.ndarray:
    """LIME-like samples, half of each kind:

    * the samples ``lime.lime_tabular`` draws (``discretize_continuous=False``):
      continuous features independently from a Gaussian with the training mean and
      standard deviation, categorical ones from their training frequencies;
    * Slack et al.'s samples: each row plus Gaussian noise (``std`` times each
      feature's standard deviation) on the continuous features.

    Both break the correlations between features. ``categorical`` lists the
    categorical columns (default: the binary ones). Returns (n_rows * n_per_row, d).
    """
    X = _as_2d(X)
    rng = np.random.default_rng(seed)
    n, d = X.shape
    cat = _categorical(X, categorical)
    cont = np.setdiff1d(np.arange(d), cat)
    rep = np.repeat(X, n_per_row, axis=0)
    m = rep.shape[0]
    mu, sd = X.mean(0), X.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    lime_like = np.empty_like(rep)
    lime_like[:, cont] = mu[cont] + rng.normal(size=(m, len(cont))) * sd[cont]
    for j in cat:
        vals, counts = np.unique(X[:, j], return_counts=True)
        lime_like[:, j] = rng.choice(vals, size=m, p=counts / counts.sum())
    noisy = rep.copy()
    noisy[:, cont] += rng.normal(size=(m, len(cont))) * std * sd[cont]
    half = rng.random(m) < 0.5
    return np.where(half[:, None], lime_like, noisy)


def shap_perturbations(X, n_per_row: int = 10, background: Optional[np.ndarray] = None, n_background: int = 10,
                       seed: Optional[int] = 0) -> np.ndarray:
    """KernelSHAP-like samples: each row with a random subset of its features replaced
    by the values of a background row (k-means centers of ``X`` snapped to values
    present in the data by default, as ``shap.kmeans`` gives). Returns (n_rows * n_per_row, d)."""
    X = _as_2d(X)
    rng = np.random.default_rng(seed)
    if background is None:
        from sklearn.cluster import KMeans

        km = KMeans(n_clusters=min(n_background, X.shape[0]), n_init=3, random_state=0 if seed is None else seed)
        background = km.fit(X).cluster_centers_
        # as shap.kmeans(round_values=True): every center value snapped to the nearest value in the data
        for j in range(X.shape[1]):
            vals = np.unique(X[:, j])
            idx = np.abs(background[:, j][:, None] - vals[None, :]).argmin(1)
            background[:, j] = vals[idx]
    background = _as_2d(background)
    rep = np.repeat(X, n_per_row, axis=0)
    m, d = rep.shape
    size = rng.integers(1, d, size=m)  # coalition sizes 1..d-1 (the model sees mixtures)
    order = rng.random((m, d)).argsort(1)
    mask = order < size[:, None]
    bg = background[rng.integers(0, background.shape[0], size=m)]
    return np.where(mask, bg, rep)


class Scaffolding:
    """Adversarial classifier that hides a biased model from LIME and SHAP (Slack et al., 2020).

    ``predict_proba(X)`` returns the biased model's output where the out-of-
    distribution detector says "real data", the innocuous model's elsewhere.

    Parameters
    ----------
    biased : estimator with ``predict_proba`` or callable X -> (n, 2)
        E.g. ``ThresholdModel(sensitive_column)``.
    innocuous : same
        E.g. ``ThresholdModel(unrelated_column)``.
    perturbations : {"lime", "shap", "both"}, default "both"
        Which perturbation families the detector is trained to recognise.
    n_per_row : int, default 10
        Perturbed copies of each training row.
    categorical : sequence of int, optional
        Categorical columns (sampled as LIME samples them); default the binary ones.
    detector : sklearn classifier, optional
        Default ``RandomForestClassifier(n_estimators=50, min_samples_leaf=2)``, trained on 80 %
        of the real and perturbed rows with balanced class weights (20 % held out for
        ``ood_accuracy_``).
    threshold : float, default 0.5
        Detector probability of "real" above which the biased model answers; lower
        values raise the fidelity on real data and let more perturbations through.
    seed : int, default 0

    Attributes
    ----------
    detector_ : the fitted detector; ``ood_accuracy_`` its held-out accuracy.

    References
    ----------
    Slack, Hilgard, Jia, Singh, Lakkaraju. Fooling LIME and SHAP: Adversarial Attacks
    on Post hoc Explanation Methods. AIES 2020.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = add_unrelated_features(np.c_[rng.normal(size=(300, 2)), rng.integers(0, 2, 300)])
    >>> X[:, 0] += 3 * X[:, 2]                       # correlation the perturbations break
    >>> sc = Scaffolding(ThresholdModel(2), ThresholdModel(3), seed=0).fit(X)
    >>> sc.fidelity(X) > 0.9
    True
    """

    def __init__(self, biased, innocuous, *, perturbations: str = "both", n_per_row: int = 10, detector=None,
                 categorical: Optional[Sequence[int]] = None, threshold: float = 0.5, seed: Optional[int] = 0):
        if not 0 < float(threshold) < 1:
            raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
        self.threshold = float(threshold)
        if perturbations not in ("lime", "shap", "both"):
            raise ValueError(f"perturbations must be 'lime', 'shap' or 'both', got {perturbations!r}")
        if not isinstance(n_per_row, int) or n_per_row < 1:
            raise ValueError(f"n_per_row must be a positive int, got {n_per_row!r}")
        self.biased = biased
        self.innocuous = innocuous
        self.perturbations = perturbations
        self.categorical = categorical
        self.n_per_row = n_per_row
        self.detector = detector
        self.seed = seed

    def fit(self, X) -> "Scaffolding":
        """Train the out-of-distribution detector: rows of ``X`` (label 1) against their
        perturbations (label 0)."""
        from sklearn.base import clone
        from sklearn.ensemble import RandomForestClassifier
        from sklearn.model_selection import train_test_split

        X = _as_2d(X)
        parts = []
        if self.perturbations in ("lime", "both"):
            parts.append(lime_perturbations(X, self.n_per_row, categorical=self.categorical, seed=self.seed))
        if self.perturbations in ("shap", "both"):
            parts.append(shap_perturbations(X, self.n_per_row, seed=self.seed))
        fake = np.concatenate(parts)
        # a real row reproduced exactly by a perturbation is not out of distribution
        Xa = np.concatenate([X, fake])
        ya = np.concatenate([np.ones(len(X)), np.zeros(len(fake))])
        det = clone(self.detector) if self.detector is not None else RandomForestClassifier(
            n_estimators=50, min_samples_leaf=2, random_state=self.seed, n_jobs=1)
        Xtr, Xte, ytr, yte = train_test_split(Xa, ya, test_size=0.2, random_state=self.seed, stratify=ya)
        w = np.where(ytr == 1, (ytr == 0).sum() / max((ytr == 1).sum(), 1), 1.0)  # balance the classes
        det.fit(Xtr, ytr, sample_weight=w)
        self.ood_accuracy_ = float((det.predict(Xte) == yte).mean())
        self.detector_ = det
        self.n_features_in_ = X.shape[1]
        return self

    def in_distribution(self, X) -> np.ndarray:
        """Boolean (n,): the detector's "real data" decision."""
        if not hasattr(self, "detector_"):
            raise RuntimeError("call fit(X) first")
        X = _as_2d(X)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, the scaffold was fitted on {self.n_features_in_}")
        return self.detector_.predict_proba(X)[:, list(self.detector_.classes_).index(1.0)] >= self.threshold

    def predict_proba(self, X) -> np.ndarray:
        X = _as_2d(X)
        real = self.in_distribution(X)
        return np.where(real[:, None], _proba(self.biased, X), _proba(self.innocuous, X))

    def predict(self, X) -> np.ndarray:
        return self.predict_proba(X).argmax(1)

    def fidelity(self, X) -> float:
        """Share of rows of ``X`` where the scaffold predicts as the biased model."""
        X = _as_2d(X)
        return float((self.predict(X) == _proba(self.biased, X).argmax(1)).mean())

    def evaluate(self, X_train, X_test, feature: int, unrelated: Optional[int] = None,
                 methods: Sequence[str] = ("lime", "shap"), n_explain: int = 50, lime_samples: int = 2000,
                 shap_samples: int = 200, categorical: Optional[Sequence[int]] = None,
                 discretize_continuous: bool = False, seed: Optional[int] = 0) -> "ScaffoldingReport":
        """Explain the biased model and the scaffold with the real ``lime`` / ``shap``.

        Reports, per method, the share of ``n_explain`` test rows where ``feature``
        (the sensitive column) ranks first for the biased model ("before") and for
        the scaffold ("after"), the share where ``unrelated`` ranks first after, the
        scaffold's fidelity to the biased model on all of ``X_test``, and the
        detector's held-out accuracy. ``discretize_continuous`` is passed to LIME
        (Slack et al. use ``False``: continuous features sampled from a Gaussian).
        """
        X_train, X_test = _as_2d(X_train), _as_2d(X_test)
        rows = X_test[:n_explain]
        rep = ScaffoldingReport(fidelity=self.fidelity(X_test),
                                ood_accuracy=getattr(self, "ood_accuracy_", float("nan")),
                                n_explained=len(rows), feature=int(feature), unrelated=unrelated)
        for method in methods:
            before = feature_ranks(lambda Z: _proba(self.biased, Z), X_train, rows, method=method,
                                   lime_samples=lime_samples, shap_samples=shap_samples, categorical=categorical,
                                   discretize_continuous=discretize_continuous, seed=seed)
            after = feature_ranks(self.predict_proba, X_train, rows, method=method, lime_samples=lime_samples,
                                  shap_samples=shap_samples, categorical=categorical,
                                  discretize_continuous=discretize_continuous, seed=seed)
            rep.top_before[method] = float((before[:, feature] == 1).mean())
            rep.top_after[method] = float((after[:, feature] == 1).mean())
            if unrelated is not None:
                rep.unrelated_top_after[method] = float((after[:, unrelated] == 1).mean())
            rep.ranks[method] = {"before": before, "after": after}
        return rep


@dataclass
class ScaffoldingReport(_Saveable):
    """What :meth:`Scaffolding.evaluate` measures.

    Attributes
    ----------
    fidelity : float              agreement of the scaffold with the biased model on real test rows
    ood_accuracy : float          held-out accuracy of the out-of-distribution detector
    top_before, top_after : dict  method -> share of rows where the sensitive feature ranks first
    unrelated_top_after : dict    method -> share where the unrelated feature ranks first (scaffold)
    ranks : dict                  method -> {"before", "after"}: (n, d) int arrays of ranks (1 = top)
    """

    fidelity: float
    ood_accuracy: float
    n_explained: int
    feature: int
    unrelated: Optional[int] = None
    top_before: Dict[str, float] = field(default_factory=dict)
    top_after: Dict[str, float] = field(default_factory=dict)
    unrelated_top_after: Dict[str, float] = field(default_factory=dict)
    ranks: Dict[str, Any] = field(default_factory=dict)

    def summary(self) -> Dict[str, float]:
        out = {"fidelity": self.fidelity, "ood_accuracy": self.ood_accuracy, "n": float(self.n_explained)}
        for m in self.top_before:
            out[f"{m}_sensitive_top_before"] = self.top_before[m]
            out[f"{m}_sensitive_top_after"] = self.top_after[m]
            if m in self.unrelated_top_after:
                out[f"{m}_unrelated_top_after"] = self.unrelated_top_after[m]
        return out


def feature_ranks(predict_proba: Callable[[np.ndarray], np.ndarray], X_train, X_explain, *, method: str = "lime",
                  class_index: int = 1, lime_samples: int = 2000, shap_samples: int = 200, n_background: int = 10,
                  categorical: Optional[Sequence[int]] = None, discretize_continuous: bool = False,
                  seed: Optional[int] = 0) -> np.ndarray:
    """Rank of every feature (1 = largest absolute attribution) per explained row,
    from the real ``lime.lime_tabular.LimeTabularExplainer`` or ``shap.KernelExplainer``.

    Parameters
    ----------
    predict_proba : callable (n, d) -> (n, classes)
    X_train : (n, d) array      LIME's training statistics / SHAP's background (k-means)
    X_explain : (m, d) array
    method : {"lime", "shap"}
    class_index : int, default 1   the class whose explanation is ranked
    lime_samples, shap_samples : int   ``num_samples`` of LIME, ``nsamples`` of KernelSHAP
    categorical : sequence of int, optional   LIME's ``categorical_features``
    discretize_continuous : bool, default False   LIME's option (False as in Slack et al.)

    Returns
    -------
    int array (m, d).
    """
    X_train, X_explain = _as_2d(X_train), _as_2d(X_explain)
    m, d = X_explain.shape
    ranks = np.zeros((m, d), dtype=int)
    if method == "lime":
        from lime.lime_tabular import LimeTabularExplainer

        ex = LimeTabularExplainer(X_train, mode="classification", discretize_continuous=discretize_continuous,
                                  categorical_features=list(categorical) if categorical is not None else None,
                                  random_state=seed)
        for i in range(m):
            e = ex.explain_instance(X_explain[i], predict_proba, labels=(class_index,), num_features=d,
                                    num_samples=lime_samples)
            order = [f for f, _ in sorted(e.as_map()[class_index], key=lambda t: -abs(t[1]))]
            ranks[i, order] = np.arange(1, d + 1)
    elif method == "shap":
        import shap

        bg = shap.kmeans(X_train, n_background)
        ex = shap.KernelExplainer(predict_proba, bg)
        # KernelExplainer samples coalitions from numpy's global RNG: seed it, then restore the caller's state
        state = np.random.get_state()
        try:
            np.random.seed(0 if seed is None else seed)
            sv = ex.shap_values(X_explain, nsamples=shap_samples, silent=True)
        finally:
            np.random.set_state(state)
        sv = np.asarray(sv[class_index]) if isinstance(sv, list) else np.asarray(sv)[..., class_index]
        order = np.argsort(-np.abs(sv), axis=1, kind="stable")
        for i in range(m):
            ranks[i, order[i]] = np.arange(1, d + 1)
    else:
        raise ValueError(f"method must be 'lime' or 'shap', got {method!r}")
    return ranks
