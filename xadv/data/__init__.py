"""Embedded data sets and loaders for local dataset files. Nothing is ever downloaded.

- :func:`load_digits` / :func:`digits_loaders`: scikit-learn's digits as (N, 1, 28, 28) images in [0, 1].
- :func:`load_tabular`: scikit-learn's breast cancer, standardised with train statistics.
- :func:`load_compas`, :func:`load_german_credit`: :class:`TabularDataset` with a sensitive column.
- :func:`load_mnist` (MNIST / Fashion-MNIST idx files) and :func:`load_cifar10` (python pickle batches)
  from a local folder.
"""
from __future__ import annotations

from .embedded import (digits_loaders, load_digits, load_tabular, stratified_split, tabular_feature_names,
                       tabular_statistics)
from .files import (CIFAR10_CLASSES, FASHION_MNIST_CLASSES, MNIST_CLASSES, load_cifar10, load_mnist,
                    read_idx)
from .tabular import TabularDataset, load_compas, load_german_credit

__all__ = ["load_digits", "digits_loaders", "load_tabular", "tabular_feature_names", "tabular_statistics",
           "stratified_split", "TabularDataset", "load_compas", "load_german_credit",
           "load_mnist", "load_cifar10", "read_idx", "MNIST_CLASSES", "FASHION_MNIST_CLASSES", "CIFAR10_CLASSES"]
