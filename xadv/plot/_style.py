"""Figure styles (paper, notebook, dark; ``style=`` of every figure function) and reproducible saving of figures and arrays."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import matplotlib as mpl
import numpy as np

#: column widths in inches: 1 = one column of a two-column paper (IEEE/ACM/CVPR ~3.3-3.5 in),
#: 2 = the full text width of a two-column paper (~6.9-7.2 in)
COLUMN_WIDTHS: Dict[int, float] = {1: 3.4, 2: 7.0}

# DejaVu Sans ships with matplotlib: the same glyphs (and the same bytes) on every machine.
_COMMON: Dict[str, Any] = {
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],
    "mathtext.fontset": "dejavusans",
    "pdf.fonttype": 42,          # TrueType fonts embedded in PDF: text stays selectable / editable
    "ps.fonttype": 42,
    "svg.fonttype": "none",      # SVG text as <text> elements, not paths
    "svg.hashsalt": "xadv",      # deterministic SVG element ids
    "image.interpolation": "nearest",
    "image.resample": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.02,
}

_STYLES: Dict[str, Dict[str, Any]] = {
    "paper": {
        **_COMMON,
        "font.size": 8,
        "axes.titlesize": 8,
        "axes.labelsize": 8,
        "xtick.labelsize": 7,
        "ytick.labelsize": 7,
        "legend.fontsize": 7,
        "figure.titlesize": 9,
        "axes.linewidth": 0.6,
        "lines.linewidth": 1.2,
        "lines.markersize": 3.5,
        "xtick.major.width": 0.6,
        "ytick.major.width": 0.6,
        "xtick.major.size": 2.5,
        "ytick.major.size": 2.5,
        "figure.dpi": 150,
        "savefig.dpi": 300,
    },
    "notebook": {
        **_COMMON,
        "font.size": 10,
        "axes.titlesize": 10,
        "axes.labelsize": 10,
        "xtick.labelsize": 9,
        "ytick.labelsize": 9,
        "legend.fontsize": 9,
        "figure.titlesize": 11,
        "lines.linewidth": 1.6,
        "lines.markersize": 5,
        "figure.dpi": 100,
        "savefig.dpi": 150,
    },
}


_DARK_RC: Dict[str, Any] = {
    **_STYLES["notebook"],
    "figure.facecolor": "black", "axes.facecolor": "black", "savefig.facecolor": "black",
    "figure.edgecolor": "black", "savefig.edgecolor": "black",
    "text.color": "white", "axes.labelcolor": "white", "axes.edgecolor": "white",
    "xtick.color": "white", "ytick.color": "white", "grid.color": "white",
    "legend.labelcolor": "white",
}
_STYLES["dark"] = _DARK_RC

#: colour maps of signed and of absolute (non-negative) maps per named style; None = xadv's
#: DIVERGING / SEQUENTIAL (white at zero). On a dark background zero is black.
_STYLE_CMAPS: Dict[str, Dict[str, Any]] = {
    "paper": {"signed": None, "absolute": None},
    "notebook": {"signed": None, "absolute": None},
    "dark": {"signed": "berlin", "absolute": "inferno"},
}
#: the colour maps in force (set by :class:`style` and by ``style=`` of the figure functions)
_CURRENT_CMAPS: Dict[str, Any] = {"signed": None, "absolute": None}

#: keys of a ``style=`` dict that are not rcParams
_SPEC_KEYS = ("base", "columns", "aspect", "dpi", "font_size", "cmap_signed", "cmap_absolute")


def _style_rc(name: str, columns: int = 1, aspect: float = 0.75, dpi: Optional[int] = None,
              font_size: Optional[float] = None) -> Dict[str, Any]:
    """The rcParams of a named style (see :class:`style`)."""
    if name not in _STYLES:
        raise ValueError(f"unknown style {name!r}; choose one of {sorted(_STYLES)}")
    if columns not in COLUMN_WIDTHS:
        raise ValueError(f"columns must be 1 or 2, got {columns!r}")
    if not aspect > 0:
        raise ValueError(f"aspect must be positive, got {aspect}")
    rc = dict(_STYLES[name])
    width = COLUMN_WIDTHS[columns] if name == "paper" else 6.4 * columns
    rc["figure.figsize"] = (width, width * aspect)
    if dpi is not None:
        if isinstance(dpi, bool) or not isinstance(dpi, (int, float)) or not dpi > 0:
            raise ValueError(f"dpi must be a positive number, got {dpi!r}")
        rc["savefig.dpi"] = int(dpi)
    if font_size is not None:
        if isinstance(font_size, bool) or not isinstance(font_size, (int, float)) or not font_size > 1:
            raise ValueError(f"font_size must be a number of points > 1, got {font_size!r}")
        s = float(font_size)
        rc.update({"font.size": s, "axes.titlesize": s, "axes.labelsize": s,
                   "xtick.labelsize": s - 1, "ytick.labelsize": s - 1, "legend.fontsize": s - 1,
                   "figure.titlesize": s + 1})
    return rc


def _check_cmap(c: Any, what: str) -> Any:
    if c is None:
        return None
    import matplotlib.colors as mcolors

    if isinstance(c, mcolors.Colormap):
        return c
    if isinstance(c, str):
        try:
            return mpl.colormaps[c]
        except KeyError:
            raise ValueError(f"{what}: unknown colour map {c!r}; use a name of matplotlib.colormaps "
                             f"(e.g. 'RdBu_r', 'viridis') or a Colormap") from None
    raise TypeError(f"{what} must be a colour map name or a matplotlib Colormap, got {type(c).__name__}")


def resolve_style(spec: Any) -> Optional[Tuple[Dict[str, Any], Dict[str, Any]]]:
    """``(rcParams, colour maps)`` of a ``style=`` argument, or None for "the current settings".

    ``spec`` is None, a named style (``"paper"``, ``"notebook"``, ``"dark"``), one of
    matplotlib's style names (``"ggplot"``), a ``.mplstyle`` file, a :class:`style`
    object, or a dict of rcParams with optional keys ``base`` (a named style the dict
    starts from), ``columns``, ``aspect``, ``dpi``, ``font_size``, ``cmap_signed`` and
    ``cmap_absolute`` (colour maps of signed and of absolute attribution maps).
    """
    if spec is None:
        return None
    if isinstance(spec, style):
        return dict(spec.rc), dict(spec.cmaps)
    if isinstance(spec, Mapping):
        d = dict(spec)
        base = d.pop("base", None)
        opts = {k: d.pop(k) for k in ("columns", "aspect", "dpi", "font_size") if k in d}
        cm = {"signed": _check_cmap(d.pop("cmap_signed", None), "cmap_signed"),
              "absolute": _check_cmap(d.pop("cmap_absolute", None), "cmap_absolute")}
        if base is not None or opts:
            rc = _style_rc(base or "paper", **opts)
            cmaps = dict(_STYLE_CMAPS[base or "paper"])
        else:
            rc, cmaps = {}, {"signed": None, "absolute": None}
        bad = [k for k in d if k not in mpl.rcParams]
        if bad:
            raise ValueError(f"style: {bad} are not matplotlib rcParams (nor one of {', '.join(_SPEC_KEYS)}); "
                             f"see matplotlib.rcParams.keys()")
        rc.update(d)
        cmaps.update({k: v for k, v in cm.items() if v is not None})
        return rc, cmaps
    if isinstance(spec, (str, Path)):
        name = str(spec)
        if name in _STYLES:
            return _style_rc(name), dict(_STYLE_CMAPS[name])
        import matplotlib.style as mstyle

        if name in mstyle.library:
            return dict(mstyle.library[name]), {"signed": None, "absolute": None}
        p = Path(name)
        if p.suffix == ".mplstyle" or p.is_file():
            if not p.is_file():
                raise FileNotFoundError(f"style file {name!r} does not exist")
            # a plain key: value file; nothing in it is executed
            return dict(mpl.rc_params_from_file(str(p), use_default_template=False)), \
                {"signed": None, "absolute": None}
        raise ValueError(f"unknown style {name!r}; use one of {sorted(_STYLES)}, a matplotlib style "
                         f"(matplotlib.style.available), a .mplstyle file or a dict of rcParams")
    raise TypeError(f"style must be a name, a .mplstyle path, a dict of rcParams or xadv.plot.style(...), "
                    f"got {type(spec).__name__}")


class style:
    """Apply a figure style; also a context manager that restores the previous settings.

    To style one figure without touching the global settings, pass ``style=`` to the
    figure function instead (``xp.heatmap(e, style="dark")``).

    Parameters
    ----------
    name : {"paper", "notebook", "dark"}, default "paper"
        ``paper``: 8 pt text, thin lines, figure width of one or two columns,
        300 dpi PNG, TrueType fonts embedded in PDF (``pdf.fonttype`` 42) and SVG
        text kept as ``<text>``. ``notebook``: larger text for screens. ``dark``:
        the notebook sizes on black, with colour maps that are black at zero
        (``berlin`` for signed maps, ``inferno`` for absolute maps).
    columns : {1, 2}, default 1
        Figure width: one column (3.4 in) or the full width of a two-column
        paper (7.0 in). The height follows ``aspect``.
    aspect : float, default 0.75
        Default figure height / width.
    dpi : int, optional
        Resolution of saved raster images (PNG); overrides the style's.
    font_size : float, optional
        Base font size in points; titles and labels follow it.

    Examples
    --------
    >>> import xadv.plot as xp
    >>> with xp.style("paper", columns=2):
    ...     fig = xp.figure(aspect=0.3)
    >>> round(float(fig.get_figwidth()), 1)
    7.0
    """

    def __init__(self, name: str = "paper", columns: int = 1, *, aspect: float = 0.75,
                 dpi: Optional[int] = None, font_size: Optional[float] = None):
        self.rc = _style_rc(name, columns, aspect, dpi, font_size)
        self.cmaps = dict(_STYLE_CMAPS[name])
        self.name, self.columns, self.aspect = name, columns, aspect
        self._saved = dict(mpl.rcParams)
        self._saved_cmaps = dict(_CURRENT_CMAPS)
        mpl.rcParams.update(self.rc)
        _CURRENT_CMAPS.update(self.cmaps)

    @property
    def width(self) -> float:
        """Figure width in inches."""
        return float(self.rc["figure.figsize"][0])

    def __enter__(self) -> "style":
        return self

    def __exit__(self, *exc) -> None:
        with _quiet():
            mpl.rcParams.update(self._saved)
        _CURRENT_CMAPS.clear()
        _CURRENT_CMAPS.update(self._saved_cmaps)

    def __repr__(self) -> str:
        return f"style({self.name!r}, columns={self.columns})"


def _keep_save_settings(fig) -> None:
    """Record the style's save settings on ``fig``: :func:`save` uses them later, when the
    style is no longer in force (text, colours and tick labels are fixed on the artists
    when they are created, matplotlib copies later ticks from the first one)."""
    rc = mpl.rcParams
    fig._xadv_savefig = {k: rc[k] for k in ("savefig.dpi", "savefig.facecolor", "savefig.edgecolor",
                                             "savefig.bbox", "savefig.pad_inches", "savefig.transparent")}


def styled(fn):
    """Decorator of the figure functions: ``style=`` applies a style to that one figure.

    The rcParams (and xadv's colour maps) of the style are in force while the figure is
    built; its save settings (dpi, face colour) are recorded on the figure for :func:`save`,
    so the figure keeps its style when drawn or saved later. The global settings are unchanged.
    """
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        spec = kwargs.pop("style", None)
        resolved = resolve_style(spec)
        if resolved is None:
            return fn(*args, **kwargs)
        rc, cmaps = resolved
        ax = kwargs.get("ax")     # drawing into the user's Axes: their figure keeps its own save settings
        saved = dict(_CURRENT_CMAPS)
        try:
            with mpl.rc_context(rc):
                _CURRENT_CMAPS.update(cmaps)
                fig = fn(*args, **kwargs)
                if hasattr(fig, "savefig") and ax is None:
                    _keep_save_settings(fig)
        finally:
            _CURRENT_CMAPS.clear()
            _CURRENT_CMAPS.update(saved)
        return fig

    return wrapper


def current_cmap(signed: bool):
    """The colour map of signed (True) or absolute maps in force: a style's, else xadv's default."""
    c = _CURRENT_CMAPS["signed" if signed else "absolute"]
    if c is None:
        from ._maps import DIVERGING, SEQUENTIAL
        return DIVERGING if signed else SEQUENTIAL
    return mpl.colormaps[c] if isinstance(c, str) else c


class _quiet:
    """Restoring every rcParam re-sets deprecated ones; silence matplotlib's warnings."""

    def __enter__(self):
        import warnings
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


def figure(columns: Optional[int] = None, aspect: Optional[float] = None, **kw):
    """A new Figure sized for the current style: ``columns`` (1 or 2) and ``aspect`` (height/width).

    Without arguments the current ``figure.figsize`` is used.
    """
    import matplotlib.pyplot as plt

    w, h = mpl.rcParams["figure.figsize"]
    if columns is not None:
        if columns not in COLUMN_WIDTHS:
            raise ValueError(f"columns must be 1 or 2, got {columns!r}")
        w = COLUMN_WIDTHS[columns]
    if aspect is not None:
        h = w * aspect
    return plt.figure(figsize=(w, h), **kw)


_FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg", ".eps": "eps", ".ps": "ps",
            ".jpg": "jpg", ".jpeg": "jpg", ".tif": "tiff", ".tiff": "tiff"}

# Metadata that would otherwise carry the time of writing or the software version.
_METADATA: Dict[str, Dict[str, Any]] = {
    "pdf": {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None},
    "svg": {"Date": None, "Creator": None},
    "png": {"Software": None},
    "eps": {"Creator": None},
    "ps": {"Creator": None},
}


def save(fig, path: Union[str, Path], *, dpi: Optional[int] = None, attributions=None,
         metadata: Optional[Mapping[str, Any]] = None, close: bool = False, **kwargs) -> Path:
    """Save ``fig`` to ``path``, the format chosen by the extension, reproducibly.

    The same figure gives the same bytes: no dates, software versions or random
    ids in PDF, SVG, PNG or EPS files (``svg.hashsalt`` is fixed while saving).
    Fonts are embedded as TrueType in PDF and SVG text stays text (the settings of
    :func:`style`, applied here as well).

    Parameters
    ----------
    fig : matplotlib Figure
    path : str or Path
        ``.png``, ``.pdf``, ``.svg``, ``.eps``, ``.jpg`` or ``.tif``. Parent
        directories are created.
    dpi : int, optional
        Raster resolution; default ``savefig.dpi`` of the current style.
    attributions : Explanation, Tensor, array or dict of them, optional
        Raw attributions saved next to the figure as ``<path without suffix>.npz``
        (see :func:`export_attributions`).
    metadata : dict, optional
        Extra metadata (e.g. ``{"Title": ...}``) merged over the reproducible defaults.
    close : bool, default False
        Close the figure after saving (frees memory in loops).
    **kwargs
        Passed on to ``fig.savefig``.

    Returns
    -------
    Path of the figure.

    Examples
    --------
    >>> import matplotlib.pyplot as plt, tempfile, os, xadv.plot as xp
    >>> fig, ax = plt.subplots(); _ = ax.plot([0, 1], [1, 0])
    >>> d = tempfile.mkdtemp()
    >>> a = xp.save(fig, os.path.join(d, "a.pdf")).read_bytes()
    >>> a == xp.save(fig, os.path.join(d, "b.pdf")).read_bytes()
    True
    """
    path = Path(path)
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(
            f"cannot tell the format of {str(path)!r} from its extension; use one of "
            f"{', '.join(sorted(_FORMATS))}"
        )
    if not hasattr(fig, "savefig"):
        raise TypeError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    path.parent.mkdir(parents=True, exist_ok=True)
    md = dict(_METADATA.get(fmt, {}))
    if metadata:
        md.update(metadata)
    rc = dict(getattr(fig, "_xadv_savefig", {}))    # a figure drawn with style= keeps its dpi, colours
    rc.update({k: _COMMON[k] for k in ("pdf.fonttype", "ps.fonttype", "svg.fonttype", "svg.hashsalt")})
    opts: Dict[str, Any] = {"format": fmt}
    if md and fmt not in ("jpg", "tiff"):
        opts["metadata"] = md
    if dpi is not None:
        opts["dpi"] = dpi
    opts.update(kwargs)
    import os
    old_epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if fmt in ("eps", "ps"):  # the PostScript backend dates files unless this is set
        os.environ["SOURCE_DATE_EPOCH"] = "0"
    try:
        with mpl.rc_context(rc):
            from .._io import atomic_write

            with atomic_write(path, "wb") as f:  # an interrupted save leaves no half-written file
                fig.savefig(f, **opts)
    finally:
        if fmt in ("eps", "ps"):
            if old_epoch is None:
                os.environ.pop("SOURCE_DATE_EPOCH", None)
            else:
                os.environ["SOURCE_DATE_EPOCH"] = old_epoch
    if attributions is not None:
        export_attributions(path.with_suffix(".npz"), attributions)
    if close:
        import matplotlib.pyplot as plt
        plt.close(fig)
    return path


def _to_numpy(v) -> Any:
    try:
        import torch
        if isinstance(v, torch.Tensor):
            return v.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    return v


def _arrays_of(obj) -> Dict[str, np.ndarray]:
    from ..explanation import Explanation

    if isinstance(obj, Explanation):
        out = {"attributions": obj.attributions, "inputs": obj.inputs, "target": obj.target}
        for k in ("output", "delta", "raw", "segments", "segment_weights"):
            if getattr(obj, k) is not None:
                out[k] = getattr(obj, k)
        out["method"] = np.array(obj.method)
        return {k: np.asarray(_to_numpy(v)) for k, v in out.items()}
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if isinstance(v, Explanation):
                for kk, vv in _arrays_of(v).items():
                    out[f"{k}/{kk}"] = vv
            else:
                out[str(k)] = np.asarray(_to_numpy(v))
        return out
    return {"attributions": np.asarray(_to_numpy(obj))}


def export_attributions(path: Union[str, Path], attributions) -> Path:
    """Write raw attributions to a reproducible ``.npz`` file (read it with ``numpy.load``).

    Parameters
    ----------
    path : str or Path
        Destination; ``.npz`` is appended when missing.
    attributions : Explanation, Tensor, array, or dict of them
        An :class:`~xadv.Explanation` is stored with its ``attributions``,
        ``inputs``, ``target``, ``output`` (and ``delta``, ``raw``, ``segments``
        when present) and ``method``; a dict stores each entry under its key
        (explanations as ``"<key>/attributions"`` etc.).

    Returns
    -------
    Path of the file. Unlike ``numpy.savez`` the archive carries no time stamps, so
    the same arrays always give the same bytes.

    Examples
    --------
    >>> import numpy as np, tempfile, os, xadv.plot as xp
    >>> p = xp.export_attributions(os.path.join(tempfile.mkdtemp(), "a"), {"m": np.ones((2, 3))})
    >>> np.load(p)["m"].shape
    (2, 3)
    """
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    arrays = _arrays_of(attributions)
    path.parent.mkdir(parents=True, exist_ok=True)
    from .._io import atomic_write

    with atomic_write(path, "wb") as fh, zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            if arr.dtype == object:
                raise TypeError(f"entry {name!r} is not a numeric or string array; convert it first")
            buf = io.BytesIO()
            arr = arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)  # (keeps 0-d arrays 0-d)
            np.lib.format.write_array(buf, arr, allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())
    return path


def nice_factor(max_abs: float, target: float = 0.5) -> Tuple[float, str]:
    """A round amplification factor ``k`` with ``k * max_abs <= target`` (1, 2, 5, 10, 20, ...)."""
    if not np.isfinite(max_abs) or max_abs <= 0:
        return 1.0, "1"
    raw = target / max_abs
    if raw < 1:
        return 1.0, "1"
    exp = int(np.floor(np.log10(raw)))
    best = 1.0
    for m in (1, 2, 5, 10):
        k = m * 10.0 ** exp
        if k <= raw * (1 + 1e-9):
            best = k
    return best, (f"{best:g}")
