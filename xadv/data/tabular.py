"""Tabular data sets with a sensitive attribute (COMPAS, German credit) for fooling / fairwashing work."""
from __future__ import annotations

import csv
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ._paths import asset_path
from .embedded import stratified_split

PathLike = Union[str, Path]

COMPAS_FILE = "compas_screening.csv"
GERMAN_FILE = "german_credit.csv"


@dataclass(frozen=True)
class TabularDataset:
    """A numeric tabular data set with a binary label and a marked sensitive feature.

    Attributes
    ----------
    X : ndarray (N, D) float64
        Numeric encoding: numeric columns as they are (not standardised), binary
        categoricals as one 0/1 column, other categoricals one-hot (one 0/1 column per level).
    y : ndarray (N,) int64, labels 0/1
    feature_names : list of str, length D
    sensitive : int
        Column index of the sensitive feature (a 0/1 column) in ``X``.
    categorical : list of int
        Indices of the 0/1 (categorical) columns; the other columns are numeric.
    frame_columns : list of str, length D
        For each column of ``X``, the column of the source CSV it was derived from
        (one-hot columns of the same categorical share one name).
    name : str
    label_name : str
        What ``y == 1`` means.
    """

    X: np.ndarray
    y: np.ndarray
    feature_names: List[str]
    sensitive: int
    categorical: List[int]
    frame_columns: List[str]
    name: str
    label_name: str = ""
    info: Dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        X, y = np.asarray(self.X), np.asarray(self.y)
        if X.ndim != 2 or y.shape != (X.shape[0],):
            raise ValueError(f"X must be (N, D) and y (N,), got {X.shape} and {y.shape}")
        if len(self.feature_names) != X.shape[1] or len(self.frame_columns) != X.shape[1]:
            raise ValueError("feature_names and frame_columns need one entry per column of X")
        if not 0 <= self.sensitive < X.shape[1]:
            raise ValueError(f"sensitive index {self.sensitive} out of range for {X.shape[1]} columns")

    def __len__(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1])

    @property
    def sensitive_name(self) -> str:
        """Name of the sensitive column, e.g. ``"race_African-American"``."""
        return self.feature_names[self.sensitive]

    @property
    def numeric(self) -> List[int]:
        """Indices of the numeric (non-categorical) columns."""
        cat = set(self.categorical)
        return [i for i in range(self.n_features) if i not in cat]

    def subset(self, index) -> "TabularDataset":
        """The rows ``index`` (int array, slice or boolean mask) as a new data set (copies)."""
        return replace(self, X=np.array(self.X[index], dtype=np.float64), y=np.array(self.y[index], dtype=np.int64))

    def split(self, test_fraction: float = 0.2, seed: int = 0) -> Tuple["TabularDataset", "TabularDataset"]:
        """Stratified (by label) train/test split, fixed by ``seed``; see :func:`xadv.data.stratified_split`.

        Examples
        --------
        >>> train, test = load_compas().split(test_fraction=0.2, seed=0)
        >>> len(train) + len(test)
        6172
        """
        tr, te = stratified_split(self.y, test_fraction, seed)
        return self.subset(tr), self.subset(te)

    def standardizer(self, numeric_only: bool = True) -> Tuple[np.ndarray, np.ndarray]:
        """``(mean, std)`` of this data set's columns, for ``(X - mean) / std`` (fit on the TRAIN part).

        With ``numeric_only`` (default) the categorical columns get mean 0 and std 1,
        so they stay 0/1. Constant columns get std 1.
        """
        mean = self.X.mean(axis=0)
        std = self.X.std(axis=0)
        std = np.where(std > 0, std, 1.0)
        if numeric_only and self.categorical:
            mean[self.categorical] = 0.0
            std[self.categorical] = 1.0
        return mean, std

    def tensors(self, dtype: torch.dtype = torch.float32) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` as torch tensors: x (N, D) of ``dtype``, y LongTensor (N,)."""
        return torch.as_tensor(self.X, dtype=dtype), torch.as_tensor(self.y, dtype=torch.long)

    def frame(self, label: Optional[str] = "label"):
        """A pandas DataFrame of ``X`` with ``feature_names`` as columns, plus ``y`` as column ``label``.

        Requires pandas (not a dependency of xadv). ``label=None`` leaves the label out.
        """
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("TabularDataset.frame() needs pandas: pip install pandas") from None
        df = pd.DataFrame(self.X, columns=list(self.feature_names))
        if label is not None:
            df[label] = self.y
        return df

    def __repr__(self) -> str:
        return (f"TabularDataset(name={self.name!r}, n={len(self)}, features={self.n_features}, "
                f"sensitive={self.sensitive_name!r}, positive rate={float(self.y.mean()):.3f})")


def _read_csv(path: Path, required: Sequence[str]) -> Dict[str, List[str]]:
    if not path.is_file():
        raise FileNotFoundError(f"CSV file {str(path)!r} does not exist")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{str(path)!r} lacks the columns {missing}; expected at least {list(required)}")
        rows = list(reader)
    if not rows:
        raise ValueError(f"{str(path)!r} has no data rows")
    return {c: [r[c].strip() for r in rows] for c in reader.fieldnames}


def _numeric(values: List[str], column: str, path: Path) -> np.ndarray:
    try:
        return np.array([float(v) for v in values], dtype=np.float64)
    except ValueError:
        raise ValueError(f"column {column!r} of {str(path)!r} must be numeric") from None


class _Builder:
    def __init__(self):
        self.cols: List[np.ndarray] = []
        self.names: List[str] = []
        self.frame: List[str] = []
        self.cat: List[int] = []

    def add(self, values: np.ndarray, name: str, frame: str, categorical: bool) -> int:
        if categorical:
            self.cat.append(len(self.cols))
        self.cols.append(values.astype(np.float64))
        self.names.append(name)
        self.frame.append(frame)
        return len(self.cols) - 1

    def one_hot(self, values: List[str], frame: str) -> None:
        for level in sorted(set(values)):
            self.add(np.array([v == level for v in values]), f"{frame}_{level}", frame, True)


_COMPAS_COLUMNS = ("age", "sex", "race", "priors_count", "c_charge_degree", "length_of_stay", "two_year_recid",
                   "score_text")


def load_compas(path: Optional[PathLike] = None) -> TabularDataset:
    """ProPublica's COMPAS screening data (6,172 defendants) with race as the sensitive feature.

    Encoding follows Slack et al. (2020): label ``y = 1`` when ``score_text == "High"``
    (18.5 % of rows), else 0. Features, in order: ``age``, ``priors_count``,
    ``length_of_stay`` (days in jail), ``two_year_recid`` (0/1, numeric as in the source),
    ``c_charge_degree_F`` (1 = felony, 0 = misdemeanour), ``sex_Male`` (0/1) and
    ``race_African-American`` (0/1, the sensitive column; every other race is 0).
    ``categorical`` lists the 0/1 columns (two_year_recid, charge degree, sex, race).
    Values are not standardised; use :meth:`TabularDataset.standardizer` on a train split.

    Parameters
    ----------
    path : path, optional
        A CSV with the columns of ``assets/compas_screening.csv`` (age, sex, race,
        priors_count, c_charge_degree, length_of_stay, two_year_recid, score_text).
        Default: the processed copy shipped with xadv (provenance in ``assets/README.md``).

    Returns
    -------
    TabularDataset

    References
    ----------
    J. Angwin, J. Larson, S. Mattu, L. Kirchner. Machine Bias. ProPublica, 2016.
    D. Slack, S. Hilgard, E. Jia, S. Singh, H. Lakkaraju. Fooling LIME and SHAP:
    Adversarial Attacks on Post hoc Explanation Methods. AIES 2020.

    Examples
    --------
    >>> ds = load_compas()
    >>> ds.X.shape, ds.sensitive_name
    ((6172, 7), 'race_African-American')
    """
    path = Path(path) if path is not None else asset_path(COMPAS_FILE)
    d = _read_csv(path, _COMPAS_COLUMNS)
    b = _Builder()
    for c in ("age", "priors_count", "length_of_stay"):
        b.add(_numeric(d[c], c, path), c, c, False)
    recid = _numeric(d["two_year_recid"], "two_year_recid", path)
    b.add(recid, "two_year_recid", "two_year_recid", True)
    b.add(np.array([v == "F" for v in d["c_charge_degree"]]), "c_charge_degree_F", "c_charge_degree", True)
    b.add(np.array([v == "Male" for v in d["sex"]]), "sex_Male", "sex", True)
    sens = b.add(np.array([v == "African-American" for v in d["race"]]), "race_African-American", "race", True)
    y = np.array([v == "High" for v in d["score_text"]], dtype=np.int64)
    return TabularDataset(X=np.stack(b.cols, axis=1), y=y, feature_names=b.names, sensitive=sens,
                          categorical=b.cat, frame_columns=b.frame, name="compas",
                          label_name='score_text == "High"', info={"source": str(path)})


def load_german_credit(path: Optional[PathLike] = None) -> TabularDataset:
    """UCI Statlog German credit data (1,000 applicants) in Slack et al.'s processed form; gender is sensitive.

    Label ``y = 1`` for a good customer (``GoodCustomer == 1``, 70 % of rows), 0 for
    ``GoodCustomer == -1``. Features: the 28 numeric/0-1 columns of the CSV in their
    order, except that ``Gender`` becomes ``Gender_Female`` (0/1, the sensitive
    column, in the position of ``Gender``) and ``PurposeOfLoan`` is one-hot encoded
    (``PurposeOfLoan_<level>``, 10 levels, appended at the end): 38 columns. Columns
    whose values are all 0/1 are listed in ``categorical``.

    Parameters
    ----------
    path : path, optional
        A CSV with the columns of ``assets/german_credit.csv``. Default: the copy
        shipped with xadv (provenance in ``assets/README.md``).

    Returns
    -------
    TabularDataset

    References
    ----------
    H. Hofmann. Statlog (German Credit Data). UCI Machine Learning Repository, 1994
    (CC BY 4.0). D. Slack et al., Fooling LIME and SHAP, AIES 2020.

    Examples
    --------
    >>> ds = load_german_credit()
    >>> ds.sensitive_name, float(ds.y.mean())
    ('Gender_Female', 0.7)
    """
    path = Path(path) if path is not None else asset_path(GERMAN_FILE)
    d = _read_csv(path, ("GoodCustomer", "Gender", "PurposeOfLoan"))
    b = _Builder()
    sens = -1
    for c in d:
        if c in ("GoodCustomer", "PurposeOfLoan"):
            continue
        if c == "Gender":
            levels = set(d[c])
            if not levels <= {"Male", "Female"}:
                raise ValueError(f"Gender in {str(path)!r} must be Male/Female, got {sorted(levels)}")
            sens = b.add(np.array([v == "Female" for v in d[c]]), "Gender_Female", "Gender", True)
            continue
        v = _numeric(d[c], c, path)
        b.add(v, c, c, bool(np.isin(v, (0.0, 1.0)).all()))
    b.one_hot(d["PurposeOfLoan"], "PurposeOfLoan")
    good = _numeric(d["GoodCustomer"], "GoodCustomer", path)
    if not np.isin(good, (1.0, -1.0)).all():
        raise ValueError(f"GoodCustomer in {str(path)!r} must be 1 or -1")
    return TabularDataset(X=np.stack(b.cols, axis=1), y=(good == 1).astype(np.int64), feature_names=b.names,
                          sensitive=sens, categorical=b.cat, frame_columns=b.frame, name="german_credit",
                          label_name="GoodCustomer == 1", info={"source": str(path)})
