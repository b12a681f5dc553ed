"""Attribution maps: heatmaps, overlays on the image and grids of samples x methods/stages."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from matplotlib.colors import LinearSegmentedColormap, Normalize, TwoSlopeNorm

from ..explanation import Explanation
from ..results import AttackResult, FoolingResult
from ._style import current_cmap, nice_factor, styled

ArrayLike = Any

# Diverging map with exactly white at zero (ColorBrewer RdBu, centre replaced by pure white):
# blue = negative evidence, red = positive evidence.
DIVERGING = LinearSegmentedColormap.from_list(
    "xadv_diverging",
    ["#053061", "#2166ac", "#4393c3", "#92c5de", "#d1e5f0", "#ffffff",
     "#fddbc7", "#f4a582", "#d6604d", "#b2182b", "#67001f"], N=257)  # odd N: 0.5 hits the white entry
#: sequential map for absolute / non-negative maps: white at zero, then the red half of DIVERGING
SEQUENTIAL = LinearSegmentedColormap.from_list(
    "xadv_sequential", ["#ffffff", "#fddbc7", "#f4a582", "#d6604d", "#b2182b", "#67001f"], N=256)
#: methods whose signed sum over channels is not meaningful: shown as absolute maps
_ABSOLUTE_BY_DEFAULT = ("saliency", "smoothgrad")
_SIGNS = ("auto", "signed", "absolute")


# ---------------------------------------------------------------------------- conversion
def _np(x) -> np.ndarray:
    try:
        import torch
        if isinstance(x, torch.Tensor):
            return x.detach().cpu().to(torch.float64 if x.is_floating_point() else x.dtype).numpy()
    except ImportError:  # pragma: no cover
        pass
    return np.asarray(x)


def to_image(image: ArrayLike) -> np.ndarray:
    """One image as a displayable (H, W) or (H, W, 3) float array in [0, 1].

    Accepts (H, W), (C, H, W) with C in {1, 3} (channels first, as in torch),
    (H, W, C) and a batch of one ((1, C, H, W)). Values outside [0, 1] (e.g.
    normalised inputs) are min-max scaled for display.
    """
    a = _np(image).astype(np.float64)
    if a.ndim == 4:
        if a.shape[0] != 1:
            raise ValueError(f"expected one image, got a batch of {a.shape[0]}; select one, e.g. x[0]")
        a = a[0]
    if a.ndim == 3:
        if a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
            a = np.moveaxis(a, 0, -1)
        elif a.shape[0] in (1, 3) and a.shape[-1] in (1, 3) and a.shape[0] != a.shape[-1]:
            a = np.moveaxis(a, 0, -1)
        if a.shape[-1] == 1:
            a = a[..., 0]
        elif a.shape[-1] != 3:
            raise ValueError(f"an image needs 1 or 3 channels, got shape {a.shape}")
    elif a.ndim != 2:
        raise ValueError(f"an image must be (H, W), (C, H, W) or (H, W, C), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("the image contains NaN or Inf values")
    lo, hi = float(a.min()), float(a.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        a = (a - lo) / max(hi - lo, 1e-12)
    return np.clip(a, 0.0, 1.0)


def default_reduce(method: str) -> str:
    """How a method's attributions are reduced over channels by default: ``abs`` for
    gradients (saliency, SmoothGrad), ``sum`` (signed) for everything else."""
    return "abs" if method in _ABSOLUTE_BY_DEFAULT else "sum"


def to_map(attributions: Union[Explanation, ArrayLike], index: int = 0, reduce: Optional[str] = None,
           shape: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """One 2-D attribution map (H, W) as float64, upsampled bilinearly to ``shape`` if needed.

    ``attributions`` may be an :class:`Explanation` (sample ``index``, channels
    reduced with ``reduce``, default :func:`default_reduce` of its method), a
    (H, W) map, a (C, H, W) / (1, C, H, W) attribution (signed sum over channels,
    or ``reduce``), or a low-resolution map such as Grad-CAM's ``raw``.
    """
    if isinstance(attributions, Explanation):
        r = reduce or default_reduce(attributions.method)
        m = _np(attributions[index].saliency_map(r))[0]
    else:
        m = _np(attributions).astype(np.float64)
        if m.ndim == 4:
            if m.shape[0] != 1:  # a batch (N, C, H, W): sample ``index``
                from .._views import check_index

                m = m[check_index(index, m.shape[0], "maps")]
            m = m[0]
        if m.ndim == 3:
            if m.shape[-1] in (1, 3) and m.shape[0] not in (1, 3):
                m = np.moveaxis(m, -1, 0)
            r = reduce or "sum"
            m = {"sum": m.sum(0), "abs": np.abs(m).sum(0), "max": m.max(0),
                 "abs_max": np.abs(m).max(0), "l2": np.sqrt((m ** 2).sum(0))}.get(r)
            if m is None:
                raise ValueError(f"reduce must be sum, abs, max, abs_max or l2, got {r!r}")
        elif m.ndim != 2:
            raise ValueError(f"an attribution map must be (H, W) or (C, H, W), got shape {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError("the attribution map contains NaN or Inf values")
    if shape is not None and tuple(m.shape) != tuple(shape):
        m = _resize(m, shape)
    return m


def _resize(m: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    t = torch.as_tensor(m, dtype=torch.float64)[None, None]
    return F.interpolate(t, size=tuple(shape), mode="bilinear", align_corners=False)[0, 0].numpy()


def _signed(m: np.ndarray, sign: str) -> bool:
    if sign not in _SIGNS:
        raise ValueError(f"sign must be one of {_SIGNS}, got {sign!r}")
    if sign == "auto":
        return bool((m < 0).any())
    return sign == "signed"


def color_limit(maps: Sequence[np.ndarray], signed: bool, percentile: float = 99.5) -> float:
    """The upper color limit shared by ``maps``: the ``percentile`` of ``|m|`` (signed)
    or of ``m`` (absolute), pooled over all maps; outliers above it saturate."""
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    v = np.concatenate([np.abs(m).ravel() if signed else np.clip(m, 0, None).ravel() for m in maps])
    lim = float(np.percentile(v, percentile)) if v.size else 0.0
    if not lim > 0:
        lim = float(v.max()) if v.size and v.max() > 0 else 1.0
    return lim


def mark_constant(ax, m: np.ndarray, what: str = "map") -> bool:
    """Warn about and visibly mark a constant map (e.g. an all-zero Grad-CAM, a one-segment LIME map).

    Returns True when ``m`` is constant: its colours would otherwise suggest structure
    that is not there (the colour scale of a constant map is arbitrary).
    """
    m = np.asarray(m, dtype=float)
    if m.size == 0 or not np.isfinite(m).all() or np.ptp(m) > 0:
        return False
    import warnings

    warnings.warn(f"{what} is constant ({float(m.flat[0]):g} everywhere): it carries no ranking of the input; "
                  f"the panel is marked 'constant'", UserWarning, stacklevel=3)
    ax.text(0.5, 0.5, f"constant\n({float(m.flat[0]):.2g})", transform=ax.transAxes, ha="center", va="center",
            fontsize="small", color="0.15", bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85,
                                                  "edgecolor": "0.4", "linewidth": 0.6})
    return True


def norm_for(signed: bool, limit: float):
    """Color normalisation: ``TwoSlopeNorm`` centred at 0 on [-limit, limit] for signed
    maps (so zero is white in :data:`DIVERGING`), ``Normalize(0, limit)`` otherwise."""
    if signed:
        return TwoSlopeNorm(vcenter=0.0, vmin=-limit, vmax=limit)
    return Normalize(vmin=0.0, vmax=limit)


def _clean_axes(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


def _new_ax(ax, size=(2.4, 2.4)):
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=size)
        return fig, ax
    return ax.figure, ax


def _colorbar(fig, ax, im, label: Optional[str] = None):
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    cb.ax.tick_params(length=2)
    cb.outline.set_linewidth(0.4)
    if label:
        cb.set_label(label)
    return cb


# ---------------------------------------------------------------------------- single panels
@styled
def heatmap(attributions: Union[Explanation, ArrayLike], *, index: int = 0, reduce: Optional[str] = None,
            sign: str = "auto", cmap=None, percentile: float = 99.5, limit: Optional[float] = None,
            colorbar: bool = False, title: Optional[str] = None, ax=None, style=None):
    """Draw an attribution map on its own.

    Signed maps use :data:`DIVERGING` centred at zero (white = no attribution,
    red positive, blue negative) with symmetric limits; absolute maps use a
    sequential colormap from white.

    Parameters
    ----------
    attributions : Explanation or array/tensor (H, W), (C, H, W)
    index : int, default 0
        Sample of an Explanation to draw.
    reduce : str, optional
        Channel reduction (see :meth:`Explanation.saliency_map`); default ``abs`` for
        saliency/SmoothGrad and ``sum`` (signed) otherwise.
    sign : {"auto", "signed", "absolute"}, default "auto"
        ``auto`` draws a diverging map when the map has negative values.
    cmap : colormap, optional
    percentile : float, default 99.5
        Colour limit at this percentile of ``|map|``; larger values saturate.
    limit : float, optional
        Explicit colour limit (overrides ``percentile``; used for shared scales).
    colorbar : bool, default False
        A colour bar labelled ``attribution`` (signed) or ``|attribution|`` (absolute).
    title : str, optional
    ax : matplotlib Axes, optional
    style : str, dict, path or xadv.plot.style, optional
        Style of this figure only (the global settings are left as they are): ``"paper"``,
        ``"notebook"``, ``"dark"``, a matplotlib style name or ``.mplstyle`` file, or a dict
        of rcParams (with optional ``base``, ``dpi``, ``font_size``, ``cmap_signed``,
        ``cmap_absolute``); see :func:`xadv.plot.resolve_style`. Default: the current settings.

    Returns
    -------
    matplotlib Figure

    Examples
    --------
    >>> import numpy as np, xadv.plot as xp
    >>> fig = xp.heatmap(np.array([[-1.0, 0.0], [0.5, 1.0]]), colorbar=True)
    """
    m = to_map(attributions, index, reduce)
    fig, ax = _new_ax(ax)
    s = _signed(m, sign)
    if not s:
        m = np.abs(m) if sign == "absolute" else m
    lim = limit if limit is not None else color_limit([m], s, percentile)
    im = ax.imshow(m, cmap=cmap or current_cmap(s), norm=norm_for(s, lim),
                   interpolation="nearest")
    mark_constant(ax, m, title or "the map")
    _clean_axes(ax)
    if title:
        ax.set_title(title)
    if colorbar:
        _colorbar(fig, ax, im, "attribution" if s else "|attribution|")
    return fig


@styled
def overlay(image: Union[Explanation, ArrayLike], attributions: Union[Explanation, ArrayLike, None] = None, *,
            index: int = 0, reduce: Optional[str] = None, sign: str = "auto", cmap=None, alpha: float = 0.75,
            percentile: float = 99.5, limit: Optional[float] = None, colorbar: bool = False,
            title: Optional[str] = None, ax=None, style=None):
    """Attribution heatmap over the image it explains.

    The image is drawn in gray (RGB images desaturated), the map on top with an
    opacity that grows with ``|map|``: zero attribution leaves the image visible,
    strong attribution shows the full colour. Signed maps use the diverging
    colormap centred at zero, absolute maps a sequential one; low-resolution maps
    (Grad-CAM's ``raw``) are upsampled bilinearly to the image.

    Parameters
    ----------
    image : Explanation or array/tensor (H, W), (C, H, W), (H, W, C)
        The image; an Explanation supplies both image (its ``inputs``) and map.
    attributions : Explanation or array/tensor, optional
        The map, when ``image`` is not an Explanation.
    index : int, default 0
        Sample of an Explanation.
    reduce, sign, cmap, percentile, limit, colorbar, title, ax, style
        As in :func:`heatmap`.
    alpha : float in [0, 1], default 0.75
        Opacity of the map where ``|map|`` reaches the colour limit.

    Returns
    -------
    matplotlib Figure

    Examples
    --------
    >>> import torch, xadv, xadv.plot as xp
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    >>> e = xadv.explain(net, torch.rand(2, 1, 8, 8), method="ig", steps=8)
    >>> fig = xp.overlay(e, index=1, colorbar=True)
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if isinstance(image, Explanation):
        if attributions is None:
            attributions = image
        img = to_image(image[index].inputs[0])  # Explanation[index]: IndexError naming the valid range
    else:
        if attributions is None:
            raise TypeError("overlay needs attributions: pass an Explanation, or an image and a map")
        img = to_image(image)
    m = to_map(attributions, index, reduce, shape=img.shape[:2])
    fig, ax = _new_ax(ax)
    s = _signed(m, sign)
    if not s and sign == "absolute":
        m = np.abs(m)
    lim = limit if limit is not None else color_limit([m], s, percentile)
    gray = img if img.ndim == 2 else img @ np.array([0.299, 0.587, 0.114])
    ax.imshow(gray, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    strength = np.clip(np.abs(m) / lim, 0.0, 1.0)
    im = ax.imshow(m, cmap=cmap or current_cmap(s), norm=norm_for(s, lim),
                   alpha=alpha * strength, interpolation="nearest")
    _clean_axes(ax)
    if title:
        ax.set_title(title)
    if colorbar:
        # the colorbar shows the colours at full strength
        import matplotlib.cm as cm
        sm = cm.ScalarMappable(norm=im.norm, cmap=im.cmap)
        _colorbar(fig, ax, sm, "attribution" if s else "|attribution|")
    return fig


# ---------------------------------------------------------------------------- grids
@dataclass
class Column:
    """One column of a :func:`grid`: N panels of the same kind.

    Parameters
    ----------
    data : Tensor/array (N, C, H, W) or (N, H, W), or Explanation
    kind : {"image", "map", "overlay", "perturbation"}, default "image"
        ``image`` draws the inputs; ``map`` the attribution map alone (diverging,
        white at zero); ``overlay`` the map over ``images``; ``perturbation``
        draws ``0.5 + k * data`` with a round factor ``k`` shown in the title.
    title : str
        Column header.
    pred, conf : sequence (N,), optional
        Predicted class and its probability, written under each panel
        ("3 · 97%"). Taken from an Explanation's ``output`` when not given.
    images : (N, ...) images for ``kind="overlay"`` (default: the Explanation's inputs).
    group : str, optional
        Columns with the same group share one colour scale (when ``share`` is on);
        default: the column's own title.
    reduce, sign : channel reduction and sign handling, as in :func:`heatmap`.
    label : str, optional
        Label of the column's colour bar (default: "attribution (signed, shared scale)" or
        "|attribution| (absolute, shared scale)").
    """

    data: Any
    kind: str = "image"
    title: str = ""
    pred: Optional[Sequence[int]] = None
    conf: Optional[Sequence[float]] = None
    images: Any = None
    group: Optional[str] = None
    reduce: Optional[str] = None
    sign: str = "auto"
    extras: Dict[str, Any] = field(default_factory=dict)
    label: Optional[str] = None

    def __post_init__(self):
        if self.kind not in ("image", "map", "overlay", "perturbation"):
            raise ValueError(f"Column kind must be image, map, overlay or perturbation, got {self.kind!r}")
        if self.kind == "perturbation" and isinstance(self.data, Explanation):
            raise TypeError("a perturbation column needs a tensor of x_adv - x, not an Explanation")
        if isinstance(self.data, Explanation) and self.data.output is not None and self.pred is None:
            import torch
            p = torch.softmax(self.data.output.detach().double(), 1)
            c, k = p.max(1)
            self.pred, self.conf = k.cpu().tolist(), c.cpu().tolist()

    def __len__(self) -> int:
        return len(self.data) if isinstance(self.data, Explanation) else int(_np(self.data).shape[0])


def _label(pred, conf, i, class_names) -> Optional[str]:
    if pred is None:
        return None
    p = int(_np(pred)[i]) if not isinstance(pred, list) else int(pred[i])
    name = class_names[p] if class_names is not None else str(p)
    if conf is None:
        return name
    c = float(_np(conf)[i]) if not isinstance(conf, list) else float(conf[i])
    return f"{name} ({100 * c:.0f}%)"


@styled
def grid(columns: Sequence[Column], *, n: Optional[int] = None, share: str = "column",
         percentile: float = 99.5, colorbar: bool = True, class_names: Optional[Sequence[str]] = None,
         alpha: float = 0.75, panel_size: Optional[float] = None, row_labels: Optional[Sequence[str]] = None,
         fig=None, style=None):
    """Rows of samples, columns of methods or stages.

    Parameters
    ----------
    columns : sequence of :class:`Column`
    n : int, optional
        Number of samples (rows); default all.
    share : {"column", "row", "all", "none"}, default "column"
        ``column``: ONE colour scale per column (or per ``Column.group``, so a
        "map before" and "map after" column in the same group are comparable),
        shown by a colorbar under the column; ``row``: one scale per sample over
        all map columns; ``all``: one scale for the whole figure; ``none``: each
        panel scaled on its own.
    percentile : float, default 99.5
        Colour limit at this percentile of ``|map|`` pooled over the shared panels.
    colorbar : bool, default True
        One labelled colour bar per shared colour scale: under each column (or group of
        adjacent columns) with ``share="column"``, under all map columns with ``"all"``,
        right of each row with ``"row"`` (none with ``"none"``: every panel has its own
        scale). The label is the column's ``label`` or says what is shown, e.g.
        "attribution (signed, shared scale)".
    class_names : sequence of str, optional
        Names used in the "class (confidence)" labels.
    alpha : float, default 0.75
        Overlay opacity.
    panel_size : float, optional
        Panel edge in inches; default: the style's figure width divided by the
        number of columns (at most 1.6 in), so a grid fills one or two paper columns.
    row_labels : sequence of str, optional
        Text left of each row.
    fig : Figure, optional
    style : str, dict, path or xadv.plot.style, optional
        Style of this figure only (the global settings are left as they are): ``"paper"``,
        ``"notebook"``, ``"dark"``, a matplotlib style name or ``.mplstyle`` file, or a dict
        of rcParams (with optional ``base``, ``dpi``, ``font_size``, ``cmap_signed``,
        ``cmap_absolute``); see :func:`xadv.plot.resolve_style`. Default: the current settings.

    Returns
    -------
    matplotlib Figure

    Examples
    --------
    >>> import torch, xadv, xadv.plot as xp
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    >>> x = torch.rand(3, 1, 8, 8)
    >>> e = xadv.explain(net, x, method="ig", steps=8)
    >>> fig = xp.grid([xp.Column(x, "image", "input"), xp.Column(e, "map", "IG")])
    """
    import matplotlib.pyplot as plt

    columns = list(columns)
    if not columns:
        raise ValueError("grid needs at least one Column")
    for c in columns:
        if not isinstance(c, Column):
            raise TypeError(f"grid takes xadv.plot.Column objects, got {type(c).__name__}")
    if share not in ("column", "row", "all", "none"):
        raise ValueError(f"share must be column, row, all or none, got {share!r}")
    sizes = {len(c) for c in columns}
    if len(sizes) != 1:
        raise ValueError(f"all columns need the same number of samples, got {sorted(sizes)}")
    total = sizes.pop()
    rows = total if n is None else min(int(n), total)
    if rows < 1:
        raise ValueError("n must be at least 1")

    # prepare every panel's array
    panels: List[List[Dict[str, Any]]] = []
    for c in columns:
        col = []
        for i in range(rows):
            if c.kind == "image":
                src = c.data.inputs if isinstance(c.data, Explanation) else c.data
                col.append({"img": to_image(_np(src)[i])})
            elif c.kind == "perturbation":
                d = _np(c.data)[i]
                col.append({"delta": d})
            else:
                imgs = c.images if c.images is not None else (
                    c.data.inputs if isinstance(c.data, Explanation) else None)
                img = to_image(_np(imgs)[i]) if imgs is not None else None
                shape = img.shape[:2] if img is not None else None
                src = c.data if isinstance(c.data, Explanation) else _np(c.data)[i]
                m = to_map(src, i if isinstance(c.data, Explanation) else 0, c.reduce, shape=shape)
                if c.kind == "overlay" and img is None:
                    raise ValueError(f"overlay column {c.title!r} needs images= (or an Explanation)")
                col.append({"map": m, "img": img})
        panels.append(col)

    # signedness per column, colour limits per sharing unit
    signed = []
    for c, col in zip(columns, panels):
        if c.kind in ("map", "overlay"):
            signed.append(any(_signed(p["map"], c.sign) for p in col))
        else:
            signed.append(False)
    map_cols = [j for j, c in enumerate(columns) if c.kind in ("map", "overlay")]
    limits: Dict[Tuple[int, int], float] = {}
    units: Dict[Any, List[Tuple[int, int]]] = {}
    for j in map_cols:
        for i in range(rows):
            key = {"column": ("g", columns[j].group or f"col{j}"), "row": ("r", i),
                   "all": ("all",), "none": (i, j)}[share]
            units.setdefault(key, []).append((i, j))
    unit_signed: Dict[Tuple[int, int], bool] = {}
    for key, cells in units.items():
        sg = any(signed[j] for _, j in cells)
        lim = color_limit([panels[j][i]["map"] for i, j in cells], sg, percentile)
        for cell in cells:
            limits[cell] = lim
            # one scale, one colour map: absolute maps sharing a scale with signed ones use its upper half
            unit_signed[cell] = sg if share in ("all", "row") else signed[cell[1]]
    # perturbations share one factor per column
    factors = {}
    for j, c in enumerate(columns):
        if c.kind == "perturbation":
            mx = max(float(np.abs(p["delta"]).max()) for p in panels[j])
            factors[j] = nice_factor(mx)

    ncols = len(columns)
    if panel_size is None:
        import matplotlib as mpl
        panel_size = min(1.6, (float(mpl.rcParams["figure.figsize"][0]) - (0.3 if row_labels else 0.0)) / ncols)
    if not panel_size > 0:
        raise ValueError(f"panel_size must be positive, got {panel_size}")
    show_cb = bool(colorbar and share != "none" and map_cols)
    has_labels = any(c.pred is not None for c in columns)
    titles = []
    for j, c in enumerate(columns):
        t = c.title
        if c.kind == "perturbation":
            t = f"{t or 'perturbation'} (×{factors[j][1]})"
        titles.append(_wrap_title(t, panel_size))
    lines = max((t.count("\n") + 1 for t in titles if t), default=1)
    title_h = 0.42 + 0.2 * (lines - 1)
    label_h = 0.17 if has_labels else 0.02

    # one colour bar per colour scale: spans of adjacent map columns that share a scale (and a colour map)
    spans: List[List[int]] = []
    if show_cb and share in ("column", "all"):
        for j in map_cols:
            prev = spans[-1] if spans else None
            same = prev is not None and (share == "all" or (
                prev[-1] == j - 1 and signed[j] == signed[prev[0]] and columns[j].group is not None
                and columns[j].group == columns[prev[0]].group))
            if same:
                prev.append(j)
            else:
                spans.append([j])
    scope = {"column": "shared scale", "all": "one scale for all panels", "row": "per row"}.get(share, "")

    def cb_label(j: int) -> str:
        if columns[j].label:
            return columns[j].label
        sg = unit_signed[(0, j)]
        if share in ("all", "row") and len({signed[k] for k in map_cols}) > 1:
            return f"attribution ({scope}; absolute maps use the positive half)"
        return f"{'attribution' if sg else '|attribution|'} ({'signed' if sg else 'absolute'}, {scope})"

    from matplotlib.font_manager import FontProperties
    cb_pts = FontProperties(size="small").get_size_in_points()
    cb_labels = {span[0]: _wrap(cb_label(span[0]), (span[-1] - span[0] + 1) * panel_size * 0.98, cb_pts)
                 for span in spans}
    cb_lines = max((t.count("\n") + 1 for t in cb_labels.values()), default=0)
    cb_h = (0.42 + cb_lines * cb_pts * 1.3 / 72) if spans else 0.0
    # share="row": a vertical bar right of each row
    row_cb = show_cb and share == "row"
    row_cb_w = 0.75 if row_cb else 0.0
    row_label = ""
    if row_cb:
        j0 = map_cols[0]
        row_label = _wrap(cb_label(j0), panel_size + label_h, cb_pts)
    left_w = 0.3 if row_labels else 0.0
    width = ncols * panel_size + left_w + row_cb_w
    height = rows * (panel_size + label_h) + title_h + cb_h
    if fig is None:
        fig = plt.figure(figsize=(width, height))
    heights = [panel_size + label_h] * rows + ([0.147] if spans else [])
    widths = [panel_size] * ncols + ([row_cb_w * 0.9] if row_cb else [])
    gs = fig.add_gridspec(len(heights), len(widths), height_ratios=heights, width_ratios=widths,
                          left=(left_w / width if row_labels else 0.01), right=0.99,
                          top=1 - title_h / height, bottom=((cb_h - 0.147) / height if spans else 0.01),
                          hspace=0.12 + (0.25 if has_labels else 0.0), wspace=0.06)
    mappables: Dict[int, Any] = {}
    for j, (c, col) in enumerate(zip(columns, panels)):
        for i in range(rows):
            ax = fig.add_subplot(gs[i, j])
            p = col[i]
            if c.kind == "image":
                img = p["img"]
                ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
            elif c.kind == "perturbation":
                k, _ = factors[j]
                d = p["delta"]
                shown = to_image(np.clip(0.5 + k * d, 0, 1)) if d.ndim >= 2 else None
                ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0, vmax=1,
                          interpolation="nearest")
            else:
                s = unit_signed[(i, j)]
                m = p["map"] if signed[j] else np.abs(p["map"]) if c.sign == "absolute" else p["map"]
                lim = limits[(i, j)]
                cm_ = current_cmap(s)
                if c.kind == "overlay":
                    img = p["img"]
                    gray = img if img.ndim == 2 else img @ np.array([0.299, 0.587, 0.114])
                    ax.imshow(gray, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                    im = ax.imshow(m, cmap=cm_, norm=norm_for(s, lim), interpolation="nearest",
                                   alpha=alpha * np.clip(np.abs(m) / lim, 0, 1))
                else:
                    im = ax.imshow(m, cmap=cm_, norm=norm_for(s, lim), interpolation="nearest")
                mark_constant(ax, p["map"], f"{c.title or 'map'} of sample {i}")
                mappables[j] = im
            _clean_axes(ax)
            if i == 0:
                ax.set_title(titles[j], pad=3)
            lab = _label(c.pred, c.conf, i, class_names)
            if lab is not None:
                ax.set_xlabel(lab, labelpad=2, fontsize="small")
            if row_labels is not None and j == 0 and i < len(row_labels):
                ax.set_ylabel(row_labels[i])
    import matplotlib.cm as cm
    for span in spans:
        j = span[0]
        lim = limits[(0, j)]
        sg = unit_signed[(0, j)]
        holder = fig.add_subplot(gs[rows, span[0]:span[-1] + 1])
        holder.axis("off")
        w = 0.72 if len(span) == 1 else 0.6
        cax = holder.inset_axes([(1 - w) / 2, 0.0, w, 1.0])  # narrower than the panels: end labels fit
        sm = cm.ScalarMappable(norm=norm_for(sg, lim), cmap=current_cmap(sg))
        cb = fig.colorbar(sm, cax=cax, orientation="horizontal")
        cb.ax.tick_params(labelsize="x-small", length=2, pad=1)
        cb.outline.set_linewidth(0.4)
        cb.set_ticks([-lim, 0, lim] if sg else [0, lim])
        cb.ax.xaxis.set_major_formatter(_short_formatter())
        cb.set_label(cb_labels[j], fontsize="small", labelpad=2, linespacing=1.1)
    if row_cb:
        for i in range(rows):
            sg = unit_signed[(i, map_cols[0])]
            lim = limits[(i, map_cols[0])]
            holder = fig.add_subplot(gs[i, ncols])
            holder.axis("off")
            cax = holder.inset_axes([0.06, 0.08, 0.12, 0.84])
            sm = cm.ScalarMappable(norm=norm_for(sg, lim), cmap=current_cmap(sg))
            cb = fig.colorbar(sm, cax=cax, orientation="vertical")
            cb.ax.tick_params(labelsize="x-small", length=2, pad=1)
            cb.outline.set_linewidth(0.4)
            cb.set_ticks([-lim, 0, lim] if sg else [0, lim])
            cb.ax.yaxis.set_major_formatter(_short_formatter())
            cb.set_label(row_label, fontsize="small", labelpad=2, linespacing=1.1)
    return fig


def _wrap(text: str, width_in: float, pts: float, max_lines: int = 3) -> str:
    """Break ``text`` on spaces so each line fits ``width_in`` inches at ``pts`` points."""
    import textwrap

    chars = max(6, int(width_in * 72 / (0.56 * pts)))
    return "\n".join(textwrap.wrap(text, chars, break_long_words=False, max_lines=max_lines, placeholder="…"))


def _wrap_title(title: str, panel_size: float) -> str:
    """Break a column title on spaces so each line fits the panel width (at most 3 lines)."""
    if not title or "\n" in title:
        return title
    import textwrap

    import matplotlib as mpl
    from matplotlib.font_manager import FontProperties
    pts = FontProperties(size=mpl.rcParams["axes.titlesize"]).get_size_in_points()
    width = max(6, int(panel_size * 72 / (0.55 * pts)))   # average glyph ~0.55 em
    return "\n".join(textwrap.wrap(title, width, break_long_words=False, max_lines=3, placeholder="…"))


def _short_formatter():
    from matplotlib.ticker import FuncFormatter

    def f(v, _pos):
        if v == 0:
            return "0"
        a = abs(v)
        return f"{v:.2g}" if 1e-2 <= a < 1e3 else f"{v:.0e}"
    return FuncFormatter(f)


_LABELS = {"saliency": "Saliency", "input_x_gradient": "Input×Grad", "smoothgrad": "SmoothGrad",
           "integrated_gradients": "IG", "gradcam": "Grad-CAM", "gradcam_pp": "Grad-CAM++", "lime": "LIME",
           "occlusion": "Occlusion", "gradient_shap": "GradientSHAP", "expected_gradients": "Expected gradients"}


def method_label(method: str) -> str:
    """How figures name an explainer: ``"gradcam"`` -> ``"Grad-CAM"`` (unknown names pass through)."""
    return _LABELS.get(method, method)


def as_explanations(explanations) -> "Dict[str, Explanation]":
    """One Explanation, a list of them or a dict name -> Explanation, as a dict (labels from the methods)."""
    if isinstance(explanations, Explanation):
        return {method_label(explanations.method): explanations}
    if isinstance(explanations, Mapping):
        return dict(explanations)
    if isinstance(explanations, (list, tuple)):
        out: Dict[str, Explanation] = {}
        for e in explanations:
            if not isinstance(e, Explanation):
                raise TypeError(f"a list of explanations must hold Explanation objects, got {type(e).__name__}")
            name, i = method_label(e.method), 2
            while name in out:
                name, i = f"{method_label(e.method)} ({i})", i + 1
            out[name] = e
        return out
    raise TypeError(f"explanations must be an Explanation, a list or a dict of them, got "
                    f"{type(explanations).__name__}")


def _budget(attack: str) -> str:
    """``"ε=0.05"`` from an attack's repr (``"...eps=0.05..."``), else ``""``."""
    import re

    m = re.search(r"\beps=([0-9.]+(?:e-?[0-9]+)?)", attack or "")
    try:
        return f"ε={float(m.group(1)):.3g}" if m else ""
    except ValueError:
        return ""


@styled
def explanation_grid(explanations, *, n: Optional[int] = 4, kind: str = "map",
                     share: str = "column", class_names=None, style=None, **kw):
    """Input | one column per method, for explanations of the same batch.

    Parameters
    ----------
    explanations : Explanation, list of Explanation or dict name -> Explanation
        All of the same inputs (the first one's inputs are drawn). Lists and single
        explanations are labelled as figures name the methods (``Grad-CAM``, ``IG``).
    kind : {"map", "overlay"}, default "map"
    n, share, class_names, style, **kw : see :func:`grid`

    Returns
    -------
    matplotlib Figure

    Examples
    --------
    >>> import torch, xadv, xadv.plot as xp
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    >>> x = torch.rand(2, 1, 8, 8)
    >>> fig = xp.explanation_grid({m: xadv.explain(net, x, method=m) for m in ["saliency", "ig"]})
    """
    explanations = as_explanations(explanations)
    if not explanations:
        raise ValueError("explanations is empty")
    first = next(iter(explanations.values()))
    head = Column(first, "image", "input")  # prediction and confidence from the first explanation
    cols = [head]
    for name, e in explanations.items():
        if not isinstance(e, Explanation):
            raise TypeError(f"explanations[{name!r}] must be an Explanation, got {type(e).__name__}")
        if e.inputs.shape != first.inputs.shape:
            raise ValueError(f"explanations[{name!r}] is for inputs of another shape than the first one")
        c = Column(e, kind, name)
        c.pred = c.conf = None  # the prediction is shown once, under the input
        cols.append(c)
    return grid(cols, n=n, share=share, class_names=class_names, **kw)


@styled
def attack_grid(result: AttackResult, before: Optional[Explanation] = None, after: Optional[Explanation] = None,
                *, n: Optional[int] = 4, share: str = "column", class_names=None, style=None, **kw):
    """Input | adversarial | perturbation (amplified) [| map before | map after] for an attack.

    Titles carry the predicted class and confidence on the clean and the
    adversarial input. The two map columns share one colour scale (same group),
    so changes of magnitude are visible.

    Parameters
    ----------
    result : AttackResult
    before, after : Explanation, optional
        Explanations of ``result.x`` and ``result.x_adv``.
    n, share, class_names, style, **kw : see :func:`grid`

    Returns
    -------
    matplotlib Figure
    """
    if not isinstance(result, AttackResult):
        raise TypeError(f"result must be an AttackResult, got {type(result).__name__}")
    cols = [Column(result.x, "image", "input", pred=result.pred_clean, conf=result.conf_clean),
            Column(result.x_adv, "image", "adversarial", pred=result.pred_adv, conf=result.conf_adv),
            Column(result.x_adv - result.x, "perturbation", f"perturbation {_budget(result.attack)}".strip())]
    for e, t in ((before, "before"), (after, "after")):
        if e is not None:
            c = Column(e, "map", f"{method_label(e.method)} {t}" if e.method else f"map {t}", group="maps")
            c.pred = c.conf = None
            cols.append(c)
    return grid(cols, n=n, share=share, class_names=class_names, **kw)


@styled
def fooling_grid(result: FoolingResult, *, n: Optional[int] = 4, share: str = "column", kind: str = "map",
                 class_names=None, difference: bool = True, style=None, **kw):
    """Input | manipulated input | perturbation | map before | map after | difference for a fooling attack.

    Column titles name the explainer (``Saliency before``) and the budget
    (``perturbation ε=0.05``); ``difference=True`` adds ``after − before`` of the two
    maps, each scaled to unit max first (red: attribution gained, blue: lost).

    For a :class:`~xadv.fooling.TargetedManipulation` result a last column shows the
    target map, and the three maps are drawn as unit-sum absolute maps (the scale the
    attack compares them on). The maps share one colour scale. Each panel title shows the prediction
    (kept by a successful fooling attack).

    Parameters
    ----------
    result : FoolingResult
    kind : {"map", "overlay"}, default "map"
    difference : bool, default True
    n, share, class_names, style, **kw : see :func:`grid`

    Returns
    -------
    matplotlib Figure
    """
    if not isinstance(result, FoolingResult):
        raise TypeError(f"result must be a FoolingResult, got {type(result).__name__}")

    eb, ea = result.explanation_clean, result.explanation_adv
    budget = _budget(result.attack)
    cb, ca = Column(eb, "image", "input"), Column(ea, "image", "manipulated")
    cols = [Column(result.x, "image", "input", pred=cb.pred if cb.pred is not None else result.pred_clean,
                   conf=cb.conf),
            Column(result.x_adv, "image", "manipulated", pred=ca.pred if ca.pred is not None else result.pred_adv,
                   conf=ca.conf),
            Column(result.x_adv - result.x, "perturbation", f"perturbation {budget}".strip())]
    label = method_label(eb.method)
    for e, t in ((eb, f"{label} before"), (ea, f"{label} after")):
        c = Column(e, kind, t, group="maps", images=e.inputs)
        c.pred = c.conf = None
        cols.append(c)
    target = result.extras.get("target_map") if isinstance(result.extras, dict) else None
    if difference and target is None:
        # after - before, each map scaled to unit max |map| first: where the attribution moved
        def unit_max(e):
            m = e.saliency_map(default_reduce(e.method) if kind == "map" else "abs").detach().float()
            return m / m.abs().reshape(m.shape[0], -1).max(1).values.clamp_min(1e-12).view(-1, *[1] * (m.dim() - 1))
        cols.append(Column(unit_max(ea) - unit_max(eb), "map", "after − before", group="difference",
                           sign="signed", label="after − before (maps at unit max)"))
    if target is not None:
        # TargetedManipulation: the map it imitates, on the same (unit-sum) scale as the two maps
        def unit(m):
            m = m.detach().abs().reshape(m.shape[0], -1)
            return m / m.sum(1, keepdim=True).clamp_min(1e-12)
        shape = eb.saliency_map("abs").shape
        scale = [unit(e.saliency_map("abs")).reshape(shape) for e in (eb, ea)]
        cols[-2].data, cols[-1].data = scale
        cols[-2].kind = cols[-1].kind = "map"
        cols[-2].label = cols[-1].label = "|attribution| (unit sum, shared scale)"
        cols.append(Column(unit(target.to(scale[0].device)).reshape(shape), "map", "target map", group="maps"))
    return grid(cols, n=n, share=share, class_names=class_names, **kw)


@styled
def bar(attributions: Union[Explanation, ArrayLike], *, index: int = 0, feature_names: Optional[Sequence[str]] = None,
        top: Optional[int] = 10, title: Optional[str] = None, ax=None, style=None):
    """Signed attributions of one tabular sample as horizontal bars, largest |value| on top.

    Red bars raise the explained class score, blue bars lower it (the colours of
    :data:`DIVERGING`); zero is the axis line.

    Parameters
    ----------
    attributions : Explanation with (N, D) attributions, or array/tensor (D,) or (N, D)
    index : int, default 0
        Sample to draw.
    feature_names : sequence of str (D,), optional
        Default ``x0, x1, ...``.
    top : int or None, default 10
        Draw the ``top`` features by ``|attribution|`` (None: all).
    title : str, optional
    ax : matplotlib Axes, optional
    style : optional
        As in :func:`heatmap`.

    Returns
    -------
    matplotlib Figure

    Examples
    --------
    >>> import numpy as np, xadv.plot as xp
    >>> fig = xp.bar(np.array([0.5, -0.2, 0.1]), feature_names=["age", "income", "debt"])
    """
    a = _np(attributions.attributions if isinstance(attributions, Explanation) else attributions).astype(np.float64)
    if a.ndim == 2:
        a = a[index]
    if a.ndim != 1:
        raise ValueError(f"bar draws tabular attributions (D,) or (N, D), got shape {a.shape}; use heatmap for images")
    d = a.shape[0]
    names = list(feature_names) if feature_names is not None else [f"x{i}" for i in range(d)]
    if len(names) != d:
        raise ValueError(f"feature_names has {len(names)} names for {d} features")
    order = np.argsort(-np.abs(a), kind="stable")[: (top or d)]
    vals = a[order][::-1]
    labels = [names[i] for i in order][::-1]
    import matplotlib as mpl
    import matplotlib.pyplot as plt

    if ax is None:
        w = min(float(mpl.rcParams["figure.figsize"][0]), 4.0)
        fig, ax = plt.subplots(figsize=(w, 0.5 + 0.18 * len(vals)))
    else:
        fig = ax.figure
    cmap = current_cmap(True)
    colors = [cmap(0.85) if v > 0 else cmap(0.15) for v in vals]
    ax.barh(np.arange(len(vals)), vals, color=colors, height=0.7)
    ax.set_yticks(np.arange(len(vals)))
    ax.set_yticklabels(labels)
    ax.axvline(0, color="0.3", linewidth=0.6)
    lim = float(np.abs(vals).max()) if len(vals) else 1.0
    ax.set_xlim(-1.08 * lim if (vals < 0).any() else 0, 1.08 * lim if (vals > 0).any() else 0.0)
    ax.set_xlabel("attribution")
    if title:
        ax.set_title(title)
    return fig
