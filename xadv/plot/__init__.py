"""Figures for notebooks and papers, from xadv's result types.

Maps (:func:`heatmap`, :func:`overlay`, :func:`bar` for tabular rows, :func:`grid` and the ready-made
:func:`explanation_grid`, :func:`attack_grid`, :func:`fooling_grid`), curves
(:func:`success_curve`, :func:`deletion_curve`, :func:`roc_curve`,
:func:`fooling_curve`), the ``paper``, ``notebook`` and ``dark`` styles (:func:`style`, or
``style=`` on every figure function for one figure), reproducible
:func:`save` (PNG, PDF, SVG chosen by extension), raw attributions as ``.npz``
(:func:`export_attributions`) and metric tables (:func:`to_latex`,
:func:`to_markdown`, :func:`save_table`).

Signed maps are drawn on a diverging colormap with white at exactly zero
(:data:`DIVERGING`, ``TwoSlopeNorm`` with symmetric limits); absolute maps on a
sequential one. Every function returns the matplotlib Figure.

>>> import torch, xadv, xadv.plot as xp
>>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
>>> e = xadv.explain(net, torch.rand(2, 1, 8, 8), method="ig", steps=8)
>>> with xp.style("paper", columns=1):
...     fig = xp.overlay(e, colorbar=True)
"""
from __future__ import annotations

from ._curves import budget_curve, deletion_curve, fooling_curve, roc_curve, success_curve
from ._maps import (DIVERGING, SEQUENTIAL, Column, attack_grid, bar, color_limit, default_reduce,
                    explanation_grid, fooling_grid, grid, heatmap, norm_for, overlay, to_image, to_map)
from ._html import html_report, markdown_to_html
from ._style import COLUMN_WIDTHS, export_attributions, figure, resolve_style, save, style
from ._tables import latex_escape, save_table, to_latex, to_markdown
from ._text import text, text_html

__all__ = [
    "html_report", "markdown_to_html",
    "style", "resolve_style", "figure", "save", "export_attributions", "COLUMN_WIDTHS",
    "heatmap", "overlay", "bar", "grid", "Column", "explanation_grid", "attack_grid", "fooling_grid",
    "to_image", "to_map", "color_limit", "norm_for", "default_reduce", "DIVERGING", "SEQUENTIAL",
    "success_curve", "fooling_curve", "budget_curve", "deletion_curve", "roc_curve",
    "to_latex", "to_markdown", "save_table", "latex_escape", "text", "text_html",
]
