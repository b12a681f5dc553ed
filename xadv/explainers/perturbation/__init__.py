"""Perturbation explainers that learn a mask: meaningful and extremal perturbation."""
from .meaningful import ExtremalPerturbation, MeaningfulPerturbation, total_variation

__all__ = ["MeaningfulPerturbation", "ExtremalPerturbation", "total_variation"]
