"""Notebook and shell views shared by the result types: short reprs, HTML tables with thumbnails,
sample indexing and per-sample data frames."""
from __future__ import annotations

import base64
import dataclasses
import html
import io
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

_THUMBS = 6


def check_index(idx, n: int, what: str):
    """``idx`` as something a tensor of length ``n`` can be indexed with; IndexError naming the valid range."""
    if isinstance(idx, bool):
        raise TypeError("index with an int, a slice, a list of ints or a boolean mask, not a bool")
    if isinstance(idx, (int, np.integer)):
        i = int(idx)
        if not -n <= i < n:
            raise IndexError(f"index {i} is out of range for {n} {what} (valid: 0..{n - 1}, or -{n}..-1)")
        i = i % n
        return slice(i, i + 1)
    if isinstance(idx, slice):
        return idx
    t = torch.as_tensor(idx)
    if t.dtype == torch.bool:
        if t.shape != (n,):
            raise IndexError(f"a boolean mask must have shape ({n},), got {tuple(t.shape)}")
        return t
    if t.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8) or t.dim() > 1:
        raise TypeError(f"index with an int, a slice, a list of ints or a boolean mask, got {type(idx).__name__}")
    t = t.long().reshape(-1)
    bad = t[(t < -n) | (t >= n)]
    if len(bad):
        raise IndexError(f"index {int(bad[0])} is out of range for {n} {what} (valid: 0..{n - 1}, or -{n}..-1)")
    return t % n


def pick(v, idx, n: int):
    """Index per-sample values (tensors with first dimension ``n``, Explanations, dicts of them)."""
    from .explanation import Explanation

    if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n:
        return v[idx.to(v.device) if isinstance(idx, torch.Tensor) else idx]
    if isinstance(v, Explanation) and len(v) == n:
        return v[idx]
    if isinstance(v, dict):
        return {k: pick(w, idx, n) for k, w in v.items()}
    if isinstance(v, tuple) and v and all(isinstance(w, torch.Tensor) for w in v):  # one tensor per model input
        return tuple(pick(w, idx, n) for w in v)
    return v


def subset(obj, idx):
    """A new dataclass ``obj`` holding only the samples ``idx``."""
    n = len(obj)
    idx = check_index(idx, n, "samples")
    return type(obj)(**{f.name: pick(getattr(obj, f.name), idx, n) for f in dataclasses.fields(obj)})


def shape(t) -> str:
    return "x".join(map(str, tuple(t.shape))) if isinstance(t, torch.Tensor) else "-"


def short(s: str, limit: int = 110) -> str:
    s = " ".join(str(s).split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if v != v else f"{v:.3g}"
    return str(v)


def to_png(a: np.ndarray, signed: bool = False, size: int = 56) -> str:
    """A 2-D (H, W) or (H, W, 3) array as a base64 PNG ``<img>`` tag."""
    import matplotlib

    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        lim = np.abs(a).max() or 1.0
        if signed:
            rgba = matplotlib.colormaps["bwr"]((a / lim + 1) / 2)
        else:
            lo, hi = a.min(), a.max()
            rgba = matplotlib.colormaps["gray"]((a - lo) / ((hi - lo) or 1.0))
        a = rgba[..., :3]
    a = np.clip(a, 0, 1)
    buf = io.BytesIO()
    import matplotlib.image as mpimg

    mpimg.imsave(buf, a, format="png")
    b64 = base64.b64encode(buf.getvalue()).decode("ascii")
    return (f'<img src="data:image/png;base64,{b64}" width="{size}" height="{size}" '
            f'style="image-rendering:pixelated;margin:1px" alt="thumbnail">')


def image_np(x: torch.Tensor) -> Optional[np.ndarray]:
    """(C, H, W) image as an (H, W[, 3]) array, or None for non-images."""
    if x.dim() != 3:
        return None
    a = x.detach().float().cpu().numpy()
    return a[0] if a.shape[0] == 1 else np.moveaxis(a[:3], 0, -1)


def html_table(title: str, summary: Dict[str, Any], rows: Sequence[Sequence[str]] = (),
               header: Sequence[str] = ()) -> str:
    s = [f'<div class="xadv-result"><b>{html.escape(title)}</b>',
         '<table style="border-collapse:collapse;font-size:12px">']
    for k, v in summary.items():
        s.append(f'<tr><td style="padding:1px 8px;text-align:left">{html.escape(str(k))}</td>'
                 f'<td style="padding:1px 8px;text-align:left">{html.escape(fmt(v))}</td></tr>')
    s.append("</table>")
    if rows:
        s.append('<table style="border-collapse:collapse;font-size:11px"><tr>' +
                 "".join(f"<th style='padding:1px 6px'>{html.escape(h)}</th>" for h in header) + "</tr>")
        for r in rows:
            s.append("<tr>" + "".join(f"<td style='padding:1px 6px;text-align:center'>{c}</td>" for c in r) + "</tr>")
        s.append("</table>")
    s.append("</div>")
    return "\n".join(s)


def frame(columns: Dict[str, Any]):
    """A pandas DataFrame of per-sample columns (pandas is an optional dependency)."""
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - depends on the installation
        raise ImportError("to_frame() needs pandas: pip install pandas (or pip install 'xadv[frames]')") from None
    out = {}
    for k, v in columns.items():
        if isinstance(v, torch.Tensor):
            v = v.detach().cpu()
            v = v.numpy() if v.dim() == 1 else [t.tolist() for t in v]
        out[k] = v
    return pd.DataFrame(out)


def per_sample(d: Dict[str, Any], n: int, prefix: str = "") -> Dict[str, Any]:
    return {f"{prefix}{k}": v for k, v in d.items() if isinstance(v, torch.Tensor) and v.dim() == 1 and len(v) == n}


def lines(parts: List[str]) -> str:
    return ", ".join(p for p in parts if p)
