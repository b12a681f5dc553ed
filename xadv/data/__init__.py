"""Embedded data sets and loaders for local dataset files. Nothing is ever downloaded."""
from __future__ import annotations

from .embedded import (digits_loaders, load_digits, load_tabular, stratified_split, tabular_feature_names,
                       tabular_statistics)

__all__ = ["load_digits", "digits_loaders", "load_tabular", "tabular_feature_names", "tabular_statistics",
           "stratified_split"]
