"""Data sets that ship with scikit-learn, ready as tensors: digits images and breast-cancer rows.

Nothing is downloaded: scikit-learn bundles both data sets in its wheel.
"""
from __future__ import annotations

from functools import lru_cache
from typing import List, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

Pair = Tuple[torch.Tensor, torch.Tensor]

_SPLITS = ("train", "test", "all")


def stratified_split(y: np.ndarray, test_fraction: float = 0.25, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Indices of a stratified train/test split: each class contributes ``test_fraction`` of its rows.

    Uses ``numpy.random.RandomState(seed)``, whose stream NumPy keeps fixed across
    versions, so the same seed gives the same split on every machine.

    Parameters
    ----------
    y : array (N,) of class labels
    test_fraction : float in (0, 1), default 0.25
    seed : int, default 0

    Returns
    -------
    train_idx, test_idx : sorted int64 arrays that partition ``range(N)``

    Examples
    --------
    >>> tr, te = stratified_split(np.array([0, 0, 0, 0, 1, 1, 1, 1]), 0.5, seed=0)
    >>> len(tr), len(te)
    (4, 4)
    """
    y = np.asarray(y)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"y must be a non-empty 1-D array of labels, got shape {y.shape}")
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.RandomState(seed)
    test = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(idx.size)]
        n_test = int(round(test_fraction * idx.size))
        test.append(idx[:n_test])
    test_idx = np.sort(np.concatenate(test)).astype(np.int64)
    mask = np.ones(y.size, dtype=bool)
    mask[test_idx] = False
    return np.flatnonzero(mask).astype(np.int64), test_idx


def _check_split(split) -> Optional[str]:
    if split is not None and split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS} or None (both splits), got {split!r}")
    return split


def _select(x: torch.Tensor, y: torch.Tensor, split, test_fraction: float, seed: int):
    if split == "all":
        return x.clone(), y.clone()
    tr, te = stratified_split(y.numpy(), test_fraction, seed)
    tr, te = torch.from_numpy(tr), torch.from_numpy(te)
    if split == "train":
        return x[tr], y[tr]
    if split == "test":
        return x[te], y[te]
    return (x[tr], y[tr]), (x[te], y[te])


@lru_cache(maxsize=4)
def _digits_images(size: int) -> Pair:
    from sklearn.datasets import load_digits as _sk_digits

    d = _sk_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)  # (N, 1, 8, 8) in [0, 1]
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp_(0.0, 1.0)
    return x.contiguous(), torch.from_numpy(d.target.astype(np.int64))


def load_digits(split: Optional[str] = "train", size: int = 28, test_fraction: float = 0.25,
                seed: int = 0) -> Union[Pair, Tuple[Pair, Pair]]:
    """scikit-learn's handwritten digits (1,797 images, 10 classes) as image tensors.

    The 8x8 images (grey levels 0..16) are scaled to [0, 1] and upsampled with
    bicubic interpolation to ``size x size`` (clamped back into [0, 1]), so a small
    CNN has several conv stages and Grad-CAM maps have a useful resolution. The
    train/test split is stratified and fixed by ``seed`` (see :func:`stratified_split`);
    the default split (1,347 train / 450 test images) is the one the shipped
    :func:`xadv.zoo.digits_cnn` was trained and evaluated on.

    Parameters
    ----------
    split : {"train", "test", "all"} or None, default "train"
        ``"all"`` returns every image in the original order; ``None`` returns both
        splits as ``((x_train, y_train), (x_test, y_test))``.
    size : int, default 28
        Side of the output images (8 keeps the original resolution).
    test_fraction : float, default 0.25
    seed : int, default 0

    Returns
    -------
    x : FloatTensor (N, 1, size, size), values in [0, 1]
    y : LongTensor (N,), labels 0..9

    Examples
    --------
    >>> x, y = load_digits("test")
    >>> tuple(x.shape), y.dtype
    ((450, 1, 28, 28), torch.int64)
    """
    split = _check_split(split)
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an int >= 8, got {size!r}")
    x, y = _digits_images(size)
    return _select(x, y, split, test_fraction, seed)


def digits_loaders(batch_size: int = 64, size: int = 28, seed: int = 0, shuffle_train: bool = True):
    """``(train_loader, test_loader)``: torch DataLoaders over :func:`load_digits`.

    Parameters
    ----------
    batch_size : int, default 64
    size : int, default 28
    seed : int, default 0
        Seeds both the split and the training loader's shuffling.
    shuffle_train : bool, default True

    Examples
    --------
    >>> train, test = digits_loaders(batch_size=128)
    >>> xb, yb = next(iter(test))
    >>> tuple(xb.shape)
    (128, 1, 28, 28)
    """
    from torch.utils.data import DataLoader, TensorDataset

    (xtr, ytr), (xte, yte) = load_digits(None, size=size, seed=seed)
    g = torch.Generator().manual_seed(seed)
    train = DataLoader(TensorDataset(xtr, ytr), batch_size=batch_size, shuffle=shuffle_train, generator=g)
    test = DataLoader(TensorDataset(xte, yte), batch_size=batch_size, shuffle=False)
    return train, test


@lru_cache(maxsize=1)
def _breast_cancer():
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    return d.data.astype(np.float64), d.target.astype(np.int64), tuple(str(n) for n in d.feature_names)


def tabular_feature_names() -> List[str]:
    """The 30 feature names of :func:`load_tabular`, in column order (e.g. ``"mean radius"``)."""
    return list(_breast_cancer()[2])


def tabular_statistics(test_fraction: float = 0.25, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """``(mean, std)`` per feature of the raw breast-cancer TRAIN split, used by :func:`load_tabular`.

    Use them to standardise new raw rows the same way: ``(raw - mean) / std``.
    """
    X, y, _ = _breast_cancer()
    tr, _ = stratified_split(y, test_fraction, seed)
    mean = X[tr].mean(axis=0)
    std = X[tr].std(axis=0)
    return mean, np.where(std > 0, std, 1.0)


def load_tabular(split: Optional[str] = "train", test_fraction: float = 0.25, seed: int = 0,
                 standardize: bool = True, dtype: torch.dtype = torch.float32) -> Union[Pair, Tuple[Pair, Pair]]:
    """scikit-learn's Wisconsin breast-cancer data (569 rows, 30 features, 2 classes) as tensors.

    Features are standardised with the mean and standard deviation of the TRAIN
    split only (:func:`tabular_statistics`), so test rows carry no information into
    the scaling. Labels follow scikit-learn: 0 = malignant, 1 = benign. Feature
    names: :func:`tabular_feature_names`. The default split (427 train / 142 test)
    is the one :func:`xadv.zoo.tabular_mlp` was trained and evaluated on.

    Parameters
    ----------
    split : {"train", "test", "all"} or None, default "train"
        ``None`` returns ``((x_train, y_train), (x_test, y_test))``.
    test_fraction : float, default 0.25
    seed : int, default 0
    standardize : bool, default True
        False returns the raw measurements.
    dtype : torch floating dtype, default torch.float32

    Returns
    -------
    x : Tensor (N, 30) of ``dtype``
    y : LongTensor (N,)

    Examples
    --------
    >>> x, y = load_tabular("train")
    >>> tuple(x.shape), abs(float(x.mean())) < 1e-6
    ((427, 30), True)
    """
    split = _check_split(split)
    X, y, _ = _breast_cancer()
    if standardize:
        mean, std = tabular_statistics(test_fraction, seed)
        X = (X - mean) / std
    x = torch.from_numpy(X).to(dtype)
    return _select(x, torch.from_numpy(y.copy()), split, test_fraction, seed)
