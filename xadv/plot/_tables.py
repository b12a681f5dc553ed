"""Metric tables as LaTeX (booktabs) and Markdown."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

Rows = Union[Sequence[Mapping[str, Any]], Mapping[str, Mapping[str, Any]]]

_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  # symbols the figures and reports use, so tables compile with pdflatex
                  "×": r"$\times$", "ε": r"$\varepsilon$", "β": r"$\beta$", "∞": r"$\infty$", "±": r"$\pm$",
                  "≤": r"$\leq$", "≥": r"$\geq$"}


def _rows(rows: Rows, index_name: str) -> List[Dict[str, Any]]:
    if isinstance(rows, Mapping):
        out = []
        for k, r in rows.items():
            if not isinstance(r, Mapping):
                raise TypeError("a dict of rows must map a row name to a dict of values")
            out.append({index_name: k, **r})
        return out
    out = []
    for r in rows:
        if not isinstance(r, Mapping):
            raise TypeError(f"each row must be a dict of column -> value, got {type(r).__name__}")
        out.append(dict(r))
    return out


def _columns(rows: List[Dict[str, Any]], columns: Optional[Sequence[str]]) -> List[str]:
    if columns is not None:
        return list(columns)
    cols: List[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    return cols


def _num(v) -> Optional[float]:
    try:
        import torch
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(v, bool):
        return None
    try:
        import numpy as np
        if isinstance(v, np.generic):
            v = v.item()
    except ImportError:  # pragma: no cover
        pass
    return float(v) if isinstance(v, (int, float)) else None


def _fmt(v, digits: int) -> str:
    x = _num(v)
    if v is None:
        return "–"
    if x is None:
        return str(v)
    if isinstance(v, int) or (isinstance(x, float) and x.is_integer() and abs(x) >= 10 ** digits):
        return f"{int(x)}" if math.isfinite(x) else str(x)
    if math.isnan(x):
        return "–"
    if x != 0 and math.isfinite(x) and abs(x) < 0.5 * 10 ** -digits:
        return f"{x:.{max(digits - 1, 1)}e}"       # would print as 0.000: keep its significant digits
    return f"{x:.{digits}f}"


def _best(rows, cols, best: Optional[Mapping[str, str]]) -> Dict[str, Optional[float]]:
    out: Dict[str, Optional[float]] = {}
    for c, how in (best or {}).items():
        if how not in ("max", "min"):
            raise ValueError(f"best[{c!r}] must be 'max' or 'min', got {how!r}")
        vals = [x for x in (_num(r.get(c)) for r in rows) if x is not None and not math.isnan(x)]
        out[c] = (max(vals) if how == "max" else min(vals)) if vals else None
    return out


def latex_escape(s: str) -> str:
    """Escape LaTeX special characters in ``s`` (and write ×, ε, β, ∞, ±, ≤, ≥ as math)."""
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(s))


def to_latex(rows: Rows, columns: Optional[Sequence[str]] = None, *, digits: int = 3,
             best: Optional[Mapping[str, str]] = None, caption: Optional[str] = None,
             label: Optional[str] = None, headers: Optional[Mapping[str, str]] = None,
             index_name: str = "") -> str:
    r"""A booktabs LaTeX table (``\toprule``, ``\midrule``, ``\bottomrule``).

    Parameters
    ----------
    rows : list of dict, or dict row name -> dict
        One dict per row (column -> value); a dict of dicts puts the row names in a
        first column called ``index_name``.
    columns : sequence of str, optional
        Columns and their order (default: in order of appearance).
    digits : int, default 3
        Decimals of floats; integers are written as they are, NaN/None as "–".
    best : dict column -> "max" | "min", optional
        Bold the best value of these columns.
    caption, label : str, optional
        Wrap the tabular in a ``table`` environment with these.
    headers : dict column -> header text, optional
        Header text (LaTeX, not escaped); other headers are escaped column names.

    Returns
    -------
    str (needs ``\usepackage{booktabs}``)

    Examples
    --------
    >>> print(to_latex([{"attack": "PGD", "success": 0.91}], best={"success": "max"}))
    \begin{tabular}{lr}
    \toprule
    attack & success \\
    \midrule
    PGD & \textbf{0.910} \\
    \bottomrule
    \end{tabular}
    """
    rs = _rows(rows, index_name)
    cols = _columns(rs, columns)
    bests = _best(rs, cols, best)
    align = "".join("r" if any(_num(r.get(c)) is not None for r in rs) else "l" for c in cols)
    head = " & ".join((headers or {}).get(c, latex_escape(c)) for c in cols)
    lines = [rf"\begin{{tabular}}{{{align}}}", r"\toprule", head + r" \\", r"\midrule"]
    for r in rs:
        cells = []
        for c in cols:
            v = r.get(c)
            s = latex_escape(_fmt(v, digits)).replace("–", "--")
            x = _num(v)
            if bests.get(c) is not None and x is not None and x == bests[c]:
                s = rf"\textbf{{{s}}}"
            cells.append(s)
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    body = "\n".join(lines)
    if caption is None and label is None:
        return body
    parts = [r"\begin{table}[t]", r"\centering"]
    if caption is not None:
        parts.append(rf"\caption{{{latex_escape(caption)}}}")
    if label is not None:
        parts.append(rf"\label{{{label}}}")
    return "\n".join(parts + [body, r"\end{table}"])


def to_markdown(rows: Rows, columns: Optional[Sequence[str]] = None, *, digits: int = 3,
                best: Optional[Mapping[str, str]] = None, index_name: str = "") -> str:
    """A GitHub-flavoured Markdown table (numbers right-aligned, best values in bold).

    Parameters are those of :func:`to_latex`.

    Examples
    --------
    >>> print(to_markdown([{"attack": "PGD", "success": 0.91}]))
    | attack | success |
    |:--|--:|
    | PGD | 0.910 |
    """
    rs = _rows(rows, index_name)
    cols = _columns(rs, columns)
    bests = _best(rs, cols, best)
    align = ["--:" if any(_num(r.get(c)) is not None for r in rs) else ":--" for c in cols]
    out = ["| " + " | ".join(str(c) for c in cols) + " |", "|" + "|".join(align) + "|"]
    for r in rs:
        cells = []
        for c in cols:
            v = r.get(c)
            s = _fmt(v, digits).replace("|", r"\|")
            x = _num(v)
            if bests.get(c) is not None and x is not None and x == bests[c]:
                s = f"**{s}**"
            cells.append(s)
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def save_table(rows: Rows, path: Union[str, Path], columns: Optional[Sequence[str]] = None, **kw) -> Path:
    """Write a table as LaTeX (``.tex``) or Markdown (``.md``), chosen by the extension."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext == ".tex":
        text = to_latex(rows, columns, **kw)
    elif ext in (".md", ".markdown"):
        text = to_markdown(rows, columns, **kw)
    else:
        raise ValueError(f"save_table writes .tex or .md files, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    from .._io import write_text

    write_text(path, text + "\n")
    return path
