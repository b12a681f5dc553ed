"""Token explanations: tokens coloured by their attribution on one diverging scale."""
from __future__ import annotations

import html
from typing import Optional, Sequence, Union

import numpy as np

from ._style import current_cmap, styled

TokensLike = Union[Sequence[str], Sequence[Sequence[str]]]


def _rows(tokens: TokensLike, scores) -> tuple:
    s = scores.detach().cpu().numpy() if hasattr(scores, "detach") else np.asarray(scores, dtype=float)
    s = np.asarray(s, dtype=float)
    if tokens and isinstance(tokens[0], str):
        if s.size != len(tokens):
            raise ValueError(f"one sequence of {len(tokens)} tokens needs {len(tokens)} scores, got {s.size} "
                             f"(shape {s.shape}); pass one score per token")
        tokens, s = [list(tokens)], s.reshape(1, -1)
    tokens = [list(t) for t in tokens]
    if s.ndim != 2 or s.shape[0] != len(tokens):
        raise ValueError(f"scores must be (T,) for one sequence or (R, T) for R sequences, got {s.shape}")
    for r, t in enumerate(tokens):
        if len(t) > s.shape[1]:
            raise ValueError(f"sequence {r} has {len(t)} tokens but only {s.shape[1]} scores")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or Inf")
    return tokens, s


def _limit(tokens, s, vmax) -> float:
    if vmax is not None:
        if not vmax > 0:
            raise ValueError(f"vmax must be > 0, got {vmax!r}")
        return float(vmax)
    vals = np.concatenate([np.abs(s[r, :len(t)]) for r, t in enumerate(tokens)])
    m = float(vals.max()) if vals.size else 0.0
    return m if m > 0 else 1.0


@styled
def text(tokens: TokensLike, scores, *, vmax: Optional[float] = None, labels: Optional[Sequence[str]] = None,
         width: float = 6.75, colorbar: bool = True, fontsize: float = 8.0, style=None):
    """Tokens as coloured boxes, one row per sequence, on one diverging scale (red:
    for the class, blue: against it, white: zero; shared limit ``vmax``, default the
    largest ``|score|``).

    Parameters
    ----------
    tokens : list of str, or list of lists of str (R sequences)
    scores : array (T,) or (R, T)
        Per-token attributions, e.g. ``e.attributions.sum(-1)`` of a ``layer="embedding"``
        explanation; trailing scores beyond a sequence's tokens (padding) are ignored.
    vmax : float, optional
    labels : list of str, optional
        A label written left of each row (e.g. the class and the prediction).
    width : float, default 6.75 (inches)
    style : str, dict, path or xadv.plot.style, optional
        Style of this figure only (see :func:`xadv.plot.heatmap`); default: the current settings.

    Returns
    -------
    matplotlib Figure; save it as PDF/SVG/PNG with :func:`xadv.plot.save`.

    Examples
    --------
    >>> import xadv
    >>> fig = xadv.plot.text(["a", "great", "film"], [0.1, 2.0, -0.3])
    >>> len(fig.axes)
    2
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize
    from matplotlib.cm import ScalarMappable

    tokens, s = _rows(tokens, scores)
    lim = _limit(tokens, s, vmax)
    norm = Normalize(-lim, lim)
    cmap = current_cmap(True)
    line_h = fontsize / 72 * 2.0
    n_lines, rows = 0, []
    # lay out tokens greedily in lines of ``width`` (character-width estimate)
    char_w = fontsize / 72 * 0.62
    left0 = 1.2 if labels is not None else 0.05
    avail = width - left0 - 0.1
    for r, t in enumerate(tokens):
        x, placed, line = 0.0, [], 0
        for i, tok in enumerate(t):
            w = char_w * (len(tok) + 1.2)
            if x + w > avail and x > 0:
                x, line = 0.0, line + 1
            placed.append((tok, float(s[r, i]), x, w, line))
            x += w + 0.04
        rows.append((placed, n_lines))
        n_lines += line + 1
    height = line_h * (n_lines + 0.6) + (0.45 if colorbar else 0.0)
    fig = plt.figure(figsize=(width, height))
    bar_h = 0.45 / height if colorbar else 0.0
    ax = fig.add_axes([0, bar_h, 1, 1 - bar_h])
    ax.set_xlim(0, width)
    ax.set_ylim(height - (0.45 if colorbar else 0.0), 0)
    ax.axis("off")
    for r, (placed, first) in enumerate(rows):
        if labels is not None:
            ax.text(0.05, (first + 0.8) * line_h, str(labels[r]), fontsize=fontsize, va="center", ha="left")
        for tok, v, x, w, line in placed:
            y = (first + line + 0.3) * line_h
            ax.add_patch(plt.Rectangle((left0 + x, y), w, line_h * 0.9, facecolor=cmap(norm(v)),
                                       edgecolor="0.85", linewidth=0.4))
            ax.text(left0 + x + w / 2, y + line_h * 0.45, tok, fontsize=fontsize, ha="center", va="center",
                    color="white" if abs(v) > 0.65 * lim else "black")
    if colorbar:
        cax = fig.add_axes([0.3, 0.1 * bar_h, 0.4, 0.35 * bar_h])
        cb = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax, orientation="horizontal")
        cb.ax.tick_params(labelsize=fontsize * 0.8)
    return fig


def text_html(tokens: TokensLike, scores, *, vmax: Optional[float] = None,
              labels: Optional[Sequence[str]] = None) -> str:
    """The same view as :func:`text` as a self-contained HTML fragment (inline styles,
    escaped tokens, each score in the token's ``title``).

    Examples
    --------
    >>> s = text_html(["<b>", "ok"], [1.0, -1.0])
    >>> "&lt;b&gt;" in s and "title=" in s
    True
    """
    tokens, s = _rows(tokens, scores)
    lim = _limit(tokens, s, vmax)
    out = ['<div class="xadv-text" style="font-family:sans-serif;line-height:1.9">']
    for r, t in enumerate(tokens):
        out.append("<div>")
        if labels is not None:
            out.append(f'<span style="display:inline-block;min-width:8em">{html.escape(str(labels[r]))}</span>')
        for i, tok in enumerate(t):
            v = float(s[r, i])
            rgba = current_cmap(True)(0.5 + 0.5 * max(-1.0, min(1.0, v / lim)))
            color = "#%02x%02x%02x" % tuple(int(round(255 * c)) for c in rgba[:3])
            out.append(f'<span title="{v:.4g}" style="background:{color};padding:1px 3px;margin:1px;'
                       f'border-radius:2px">{html.escape(tok)}</span>')
        out.append("</div>")
    out.append("</div>")
    return "".join(out)
