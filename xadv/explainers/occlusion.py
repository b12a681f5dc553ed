"""Occlusion: the drop of the class score when a sliding window is replaced by a baseline."""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import torch

from .._adapter import ModelAdapter, repeat_rows, sample_rows
from .._progress import bar as progress_bar
from .._validation import check_finite, check_positive_int, resolve_target
from ..explanation import Explanation
from .base import Explainer, check_score, forward, input_leaf, select_score
from ._entry import with_entry
from ._incremental import Runner as IncrementalRunner, usable as incremental_graph
from .chunking import chunked_forward, layout_forward, prefers_channels_last, rows_per_pass
from .integrated_gradients import _blocks

#: with progress=None, a bar only for at least this many occluded rows (a few seconds)
_BAR_ROWS = 2000

#: the entry convolution is computed around each window only when each of its outputs
#: costs at least this many multiply-adds (a ResNet stem 147, a ViT patch embedding 768);
#: below that (the digits CNN's 3x3 on one channel: 9) copying its output for every
#: occluded row costs more than the convolution (measured: 1.3x slower on the digits CNN)
_ENTRY_MIN_MACS = 64

#: rows (window positions x samples) per forward pass when ``batch_size`` is None;
#: None lets the chunking policy choose (:mod:`xadv.explainers.chunking`)
DEFAULT_BATCH_ROWS: Optional[int] = None

SizeLike = Union[int, Sequence[int], None]


def _check_size(value: SizeLike, name: str) -> Union[int, Tuple[int, ...], None]:
    if value is None:
        return None
    if isinstance(value, (tuple, list)):
        if len(value) == 0:
            raise ValueError(f"{name} must be a positive int or a non-empty tuple of positive ints, got {value!r}")
        return tuple(check_positive_int(v, f"every entry of {name}") for v in value)
    return check_positive_int(value, name)


def _per_dim(value: Union[int, Tuple[int, ...]], feat: Tuple[int, ...], name: str,
             default_channel: int) -> Tuple[int, ...]:
    """Expand ``value`` to one entry per feature dimension of ``feat`` = ``x.shape[1:]``.

    (N, D) inputs: an int is the window over the features. Inputs with 3+ dims are
    channels-first: an int or a tuple with one entry per spatial dimension leaves the
    channel entry at ``default_channel``; a tuple with one entry per feature dimension
    (channels included, as captum's ``sliding_window_shapes``) is taken as it is.
    """
    nd = len(feat)
    if isinstance(value, int):
        return (value,) if nd == 1 else (default_channel,) + (value,) * (nd - 1)
    if len(value) == nd:
        return value
    if nd >= 2 and len(value) == nd - 1:
        return (default_channel,) + value
    spatial = f" or {nd - 1} (spatial dimensions; the channel entry spans all channels)" if nd >= 2 else ""
    raise ValueError(f"{name} {value!r} has {len(value)} entries; inputs of shape (N, "
                     f"{', '.join(map(str, feat))}) need {nd} (one per dimension after the batch){spatial}")


def _window_start(p: int, positions: Sequence[int], stride: Sequence[int]) -> List[int]:
    """Start per dimension of window ``p`` (row-major over ``positions``)."""
    box = []
    for d in reversed(range(len(positions))):
        box.append(p % positions[d] * stride[d])
        p //= positions[d]
    return box[::-1]


class Occlusion(Explainer):
    """Occlusion (Zeiler & Fergus, 2014): slide a window over the input, replace it by a
    baseline and record how much the class score drops.

    ``attr[i] = mean over the windows w covering feature i of (f(x) - f(x with w occluded))``,
    the convention of captum's ``Occlusion``. Windows start at ``0, stride, 2 stride, ...``
    in every dimension until the end is covered; the last one is cut at the border when
    the stride does not divide ``size - window``.

    Parameters
    ----------
    window : int or tuple of int, optional
        Window size. Inputs with 3 or more dimensions are channels-first (N, C, ...): an
        int or a tuple with one entry per spatial dimension sizes the spatial window and
        the window spans all channels (as ``(C, h, w)`` in captum); a tuple with one entry
        per dimension after the batch, channels included, is used as it is (``(1, 3, 3)``
        occludes one channel at a time). For (N, D) tabular inputs an int is the number
        of adjacent features occluded together. Default: 4 per spatial dimension for
        images, 1 for tabular features (feature ablation).
    stride : int or tuple of int, optional
        Shift between window positions, same format as ``window``; at most the window
        where the window is smaller than the input (else features are skipped). The
        channel entry defaults to the channel window. Default: half the window
        (at least 1), so windows overlap.
    baseline : float, Tensor or "mean", default 0.0
        Fill value of the occluded window: a number; a tensor broadcastable to ``x``
        ((N, ...) per sample, (1, C, 1, 1) per channel, ...); ``"mean"``, each
        sample's mean value; or a callable ``(x) -> Tensor`` returning such fill values
        for the batch, e.g. a blurred copy ``lambda x: blur(x)`` (a constant of the
        explanation, not differentiated). Several inputs: a tuple, one per input, or one
        callable taking the tuple of inputs and returning a tuple.
    batch_size : int, optional
        Rows of every model call: window positions x samples per forward pass, and the
        clean pass on ``x``. Memory is bounded by it and results do not depend on it.
        Default: chosen per model, input shape and device by :mod:`xadv.explainers.chunking`
        (a memory probe, cached).
    score : {"logit", "log_softmax", "softmax"} or callable, default "logit"
        The scalar whose drop is recorded.
    feature_mask : LongTensor, optional
        Feature groups instead of sliding windows (captum's ``FeatureAblation``): an
        integer tensor broadcastable to ``x`` ((1, ...) shared or (N, ...) per sample, e.g.
        (1, 1, H, W) superpixels for all channels, or (N, T) word ids of sub-word
        tokens); the features of one group are replaced together and each gets the
        group's score drop. ``window`` and ``stride`` are then not used. Several inputs:
        a tuple of masks; equal ids in different inputs form one group.
    progress : bool or None, default None
        Progress bar over the occluded rows (windows x samples, integer counts). None:
        shown in terminals and notebooks for 2000 rows or more (off in tests and pipes;
        see :func:`xadv.set_progress`).

    Shapes: ``x`` (N, ...) -> ``attributions`` (N, ...). One forward pass per window
    position (or group) and sample (``extras["windows"]`` per sample), no backward pass.
    Integer inputs (token ids, (N, T)) are accepted: the default window is one token and
    an occluded token is replaced by the baseline id (``baseline=pad_id``). For
    embedded tokens (N, T, D) use ``window=(1, D)`` or a (1, T, 1) ``feature_mask`` so a
    window covers whole tokens (the default treats dimension 1 as channels).

    Notes
    -----
    Differentiable: every occluded input is ``x + mask * (baseline - x)``, so with
    ``create_graph=True`` the attributions are differentiable w.r.t. ``x`` and the
    model's parameters through all forward passes (the graph holds one forward pass per
    window and sample).

    References
    ----------
    Zeiler, Fergus. Visualizing and Understanding Convolutional Networks. ECCV 2014.

    Examples
    --------
    >>> import torch, xadv
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> x = torch.rand(2, 4)
    >>> e = xadv.explainers.Occlusion(window=1)(net, x, target=0)
    >>> torch.allclose(e.attributions, x * net[1].weight[0], atol=1e-6)   # linear: x_i * w_i
    True
    >>> xadv.explainers.Occlusion(window=2, stride=2)(net, x, target=0).extras["windows"]
    2
    >>> mean_fill = xadv.explainers.Occlusion(window=1, baseline=lambda b: b.mean(0, keepdim=True))(net, x, target=0)
    >>> torch.allclose(mean_fill.attributions, (x - x.mean(0)) * net[1].weight[0], atol=1e-6)
    True
    """

    name = "occlusion"
    differentiable = True
    accepts_integer_inputs = True

    def _folds_batchnorm(self) -> bool:
        return True   # forward passes only

    def __init__(self, window: SizeLike = None, stride: SizeLike = None,
                 baseline: Union[float, torch.Tensor, str] = 0.0, batch_size: Optional[int] = None,
                 score="logit", feature_mask: Optional[torch.Tensor] = None, progress: Optional[bool] = None):
        self.window = _check_size(window, "window")
        self.stride = _check_size(stride, "stride")
        if isinstance(baseline, str):
            if baseline != "mean":
                raise ValueError(f"baseline must be a number, a tensor or 'mean', got {baseline!r}")
        elif isinstance(baseline, torch.Tensor):
            if baseline.is_complex() or baseline.dtype == torch.bool:
                raise TypeError("a baseline tensor must be real (floating point, or token ids)")
        elif isinstance(baseline, tuple):
            pass  # one baseline per input of a model with several inputs
        elif callable(baseline) and not isinstance(baseline, bool):
            pass  # (x) -> fill values; its result is checked in make_baseline
        elif isinstance(baseline, bool) or not isinstance(baseline, (int, float)):
            raise TypeError(f"baseline must be a number, a tensor, 'mean' or a callable (x) -> tensor, "
                            f"got {type(baseline).__name__}")
        self.baseline = check_finite(baseline, "baseline")
        self.batch_size = None if batch_size is None else check_positive_int(batch_size, "batch_size")
        self.score = check_score(score)
        if feature_mask is not None and not isinstance(feature_mask, (tuple, list)):
            if not isinstance(feature_mask, torch.Tensor) or feature_mask.is_floating_point() \
                    or feature_mask.dtype == torch.bool:
                raise TypeError("feature_mask must be an integer tensor of group ids broadcastable to x")
        self.feature_mask = feature_mask
        if progress is not None and not isinstance(progress, bool):
            raise TypeError(f"progress must be True, False or None, got {type(progress).__name__}")
        self.progress = progress

    # ------------------------------------------------------------ geometry
    def geometry(self, shape: Sequence[int]) -> Tuple[Tuple[int, ...], Tuple[int, ...], Tuple[int, ...]]:
        """``(window, stride, positions)`` per dimension for inputs of shape ``(N, ...)``.

        Examples
        --------
        >>> Occlusion(window=4, stride=3).geometry((8, 1, 28, 28))
        ((1, 4, 4), (1, 3, 3), (1, 9, 9))
        """
        feat = tuple(shape[1:])
        nd = len(feat)
        if nd == 0:
            raise ValueError("Occlusion needs inputs with at least one dimension after the batch")
        if self.window is None:
            window = (1,) if nd == 1 else (feat[0],) + (4,) * (nd - 1)
        else:
            window = _per_dim(self.window, feat, "window", feat[0])
        if self.stride is None:
            stride = tuple(max(1, w // 2) for w in window)
            if nd >= 2 and (self.window is None or not isinstance(self.window, tuple) or len(self.window) < nd):
                stride = (window[0],) + stride[1:]
        else:
            stride = _per_dim(self.stride, feat, "stride", window[0])
        window = tuple(min(w, s) if self.window is None else w for w, s in zip(window, feat))
        for d, (w, s, size) in enumerate(zip(window, stride, feat)):
            if w > size:
                raise ValueError(f"window {window} does not fit inputs of shape {tuple(shape)}: "
                                 f"{w} > {size} in dimension {d + 1}")
            if w < size and s > w:
                raise ValueError(f"stride {stride} is larger than the window {window} in dimension {d + 1}: "
                                 f"features between windows would never be occluded")
        positions = tuple(math.ceil((size - w) / s) + 1 for w, s, size in zip(window, stride, feat))
        return window, stride, positions

    def make_baseline(self, x: torch.Tensor) -> torch.Tensor:
        """The fill values for the batch ``x``, shape (N, ...)."""
        b = self.baseline
        if callable(b) and not isinstance(b, (str, torch.Tensor)):
            v = b(x.detach())
            if not isinstance(v, torch.Tensor):
                raise TypeError(f"the baseline callable must return a tensor broadcastable to the inputs "
                                f"{tuple(x.shape)}, got {type(v).__name__}")
            if v.is_complex() or v.dtype == torch.bool or (x.is_floating_point() and not v.is_floating_point()):
                raise TypeError(f"the baseline callable returned dtype {v.dtype}; return "
                                f"{'floating point' if x.is_floating_point() else 'token id'} fill values")
            try:
                return torch.broadcast_to(check_finite(v, "the baseline callable's result").to(
                    device=x.device, dtype=x.dtype), x.shape)
            except RuntimeError:
                raise ValueError(f"the baseline callable returned shape {tuple(v.shape)}, which does not broadcast "
                                 f"to the inputs {tuple(x.shape)}; return (N, ...) fill values or a shape that "
                                 f"broadcasts, e.g. (1, C, 1, 1)") from None
        if isinstance(b, str):  # "mean"
            m = x.reshape(x.shape[0], -1).mean(1)
            return m.reshape((-1,) + (1,) * (x.dim() - 1)).expand_as(x)
        if isinstance(b, torch.Tensor):
            try:
                return torch.broadcast_to(b.to(device=x.device, dtype=x.dtype), x.shape)
            except RuntimeError:
                raise ValueError(
                    f"baseline of shape {tuple(b.shape)} does not broadcast to the inputs {tuple(x.shape)}"
                ) from None
        return torch.full_like(x, float(b))

    @staticmethod
    def _masks(covers: List[torch.Tensor], positions: Tuple[int, ...], p0: int, p1: int,
               dtype: torch.dtype) -> torch.Tensor:
        """Masks of the windows ``p0 .. p1 - 1`` (row-major over ``positions``): (k, ...)."""
        device = covers[0].device
        p = torch.arange(p0, p1, device=device)
        nd = len(covers)
        mask = None
        for d in reversed(range(nd)):
            idx = p % positions[d]
            p = p // positions[d]
            shape = [p1 - p0] + [1] * nd
            shape[d + 1] = covers[d].shape[1]
            part = covers[d][idx].to(dtype).reshape(shape)
            mask = part if mask is None else mask * part
        return mask

    def _group_masks(self, x: torch.Tensor):
        """``(ids (G,), masks (G, R, ...))`` of the feature groups, R = 1 or N."""
        fm = self.feature_mask.to(x.device)
        if fm.dim() < x.dim():
            fm = fm.reshape((1,) * (x.dim() - fm.dim()) + tuple(fm.shape))
        try:
            fm = torch.broadcast_to(fm, (fm.shape[0],) + tuple(x.shape[1:]))
        except RuntimeError:
            raise ValueError(f"feature_mask of shape {tuple(self.feature_mask.shape)} does not broadcast to the "
                             f"inputs {tuple(x.shape)}") from None
        if fm.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"feature_mask has {fm.shape[0]} rows; give 1 (shared) or N={x.shape[0]}")
        ids = torch.unique(fm)
        return ids, fm

    def _mix(self, xs, mask, base):
        if xs.is_floating_point():
            return xs + mask * (base - xs)
        return torch.where(mask.bool(), base, xs)

    def _explain(self, model, x, target, create_graph):
        if self.feature_mask is not None:
            return self._explain_groups(model, x, target, create_graph)
        xi = input_leaf(x, create_graph) if create_graph and x.is_floating_point() else x.detach()
        n = x.shape[0]
        feat = tuple(x.shape[1:])
        window, stride, positions = self.geometry(x.shape)
        # covers[d][q, i]: window position q of dimension d covers index i
        covers = []
        for w, s, c, size in zip(window, stride, positions, feat):
            start = torch.arange(c, device=x.device)[:, None] * s
            i = torch.arange(size, device=x.device)[None, :]
            covers.append((i >= start) & (i < start + w))
        # windows covering each feature: the outer product of the per-dimension counts
        count = None
        for d, cov in enumerate(covers):
            shape = [1] * len(feat)
            shape[d] = feat[d]
            part = cov.sum(0).to(x.dtype if x.is_floating_point() else torch.get_default_dtype()).reshape(shape)
            count = part if count is None else count * part
        total = math.prod(positions)

        base = self.make_baseline(xi)
        rows = rows_per_pass(model, xi, batch_size=self.batch_size or DEFAULT_BATCH_ROWS,
                             work=total * n, grad=create_graph)
        def clean():
            return chunked_forward(model, xi, rows, grad=create_graph)
        # each occluded row computed only where it differs from its image (._incremental)
        inc = None if create_graph or isinstance(model, ModelAdapter) else incremental_graph(model, xi)
        if create_graph or not xi.is_floating_point() or isinstance(model, ModelAdapter) or inc is not None:
            out, entry = clean(), None
        else:  # the entry convolution computed only around each window (xadv.explainers._entry)
            out, entry = with_entry(model, xi, clean)
            if entry is not None and not (entry.local and xi.dim() == entry.module.weight.dim()
                                          and xi.shape[1] == entry.module.in_channels
                                          and entry.macs_per_output >= _ENTRY_MIN_MACS):
                entry = None
        t = resolve_target(target, out)
        s0 = select_score(out, t, self.score)
        if not create_graph:
            s0 = s0.detach()
        parts = {}
        # forward-only image passes channels-last where a probe measured it faster (CPU)
        cl = (inc is None and not create_graph and xi.dim() == 4 and xi.is_floating_point()
              and prefers_channels_last(model, xi, rows))
        if entry is not None:
            with torch.no_grad():
                h_x = entry.full(xi.clone(memory_format=torch.channels_last) if cl else xi)
                change = base - xi
        bar = progress_bar(n * total, "Occlusion", progress=self.progress, unit="row", min_total=_BAR_ROWS)
        blocks = list(_blocks(n, total, rows))
        runner, runner_rows = None, None
        if inc is not None:   # the images' own activations are computed once per slice of images
            blocks.sort(key=lambda b: (b[2], b[0]))
        for p0, p1, i0, i1 in blocks:
            k, m = p1 - p0, i1 - i0
            bar.update(k * m)
            mask = self._masks(covers, positions, p0, p1, s0.dtype)          # (k, ...)
            xs = xi[None, i0:i1]
            with torch.set_grad_enabled(create_graph), sample_rows(repeat_rows(i0, i1, k, x.device), n):
                if inc is not None:
                    if runner_rows != (i0, i1):
                        runner = None   # free the previous slice's activations first
                        runner, runner_rows = IncrementalRunner(inc, xi[i0:i1]), (i0, i1)
                    o = self._incremental_forward(runner, mask, base[i0:i1], xi[i0:i1], range(p0, p1),
                                                  window, stride, positions)
                else:
                    occluded = self._mix(xs, mask[:, None], base[None, i0:i1])   # (k, m, ...)
                    if entry is None:
                        o, cl = layout_forward(model, occluded.reshape((k * m,) + feat), cl)
                    else:
                        o = self._entry_forward(model, entry, occluded.reshape((k * m,) + feat), h_x[i0:i1],
                                                change[i0:i1], range(p0, p1), window, stride, positions, cl)
                s = select_score(o, t[i0:i1].repeat(k), self.score).reshape(k, m)
                drop = s0[None, i0:i1] - s
                part = torch.tensordot(drop.t(), mask, dims=1)                 # (m, ...)
            if i0 in parts:
                parts[i0] = parts[i0] + part if create_graph else parts[i0].add_(part)
            else:
                parts[i0] = part
        bar.close()
        summed = torch.cat([p for _, p in sorted(parts.items())]) if len(parts) > 1 else parts[0]
        attr = summed / count
        if not create_graph:
            out = out.detach()
            attr = attr.detach()
        return Explanation(attr, xi, t, out, self.name, self._params_for_result(),
                           extras={"window": window, "stride": stride, "windows": total})

    @staticmethod
    def _incremental_forward(runner, mask, base, x, windows, window, stride, positions):
        """The model on the occluded rows ``j * m + i`` (window ``j``, image ``i`` of the m
        images ``x``), each computed only in the box where it differs from its image."""
        size = [min(w, s) for w, s in zip(window[1:], x.shape[2:])]
        change, boxes = [], []
        for j, p in enumerate(windows):
            box = _window_start(p, positions, stride)
            # one box size for all windows: a window cut by the border is a box shifted inside
            y0, x0 = (min(b, s - w) for b, w, s in zip(box[1:], size, x.shape[2:]))
            sl = (slice(None), slice(y0, y0 + size[0]), slice(x0, x0 + size[1]))
            change.append(mask[j][sl] * (base[(slice(None),) + sl] - x[(slice(None),) + sl]))
            boxes.append((y0, x0))
        change = torch.cat(change)
        return forward(lambda _: runner(change, boxes), change)   # (N, K) scores as from the model

    @staticmethod
    def _entry_forward(model, entry, rows, h_x, change, windows, window, stride, positions, channels_last):
        """The model on ``rows`` (k*m, C, ...), the occluded inputs of ``m`` samples for
        the ``k`` ``windows``, with the entry convolution's output built from ``h_x``
        (m, ...), its output on the samples, plus the convolution of each window's
        ``change`` (m, C, ...) alone."""
        m = h_x.shape[0]
        fmt = torch.channels_last if channels_last and rows.dim() == 4 else torch.contiguous_format
        if fmt is torch.channels_last:
            rows = rows.clone(memory_format=fmt)
        h = torch.empty((rows.shape[0],) + tuple(h_x.shape[1:]), dtype=h_x.dtype, device=h_x.device,
                        memory_format=fmt)
        for j, p in enumerate(windows):
            box = _window_start(p, positions, stride)
            hi = [min(b + w, size) for b, w, size in zip(box, window, rows.shape[1:])]
            hj = h[j * m:(j + 1) * m]
            hj.copy_(h_x)
            z = change[(slice(None),) + tuple(slice(b, e) for b, e in zip(box, hi))]
            if z.shape[1] != change.shape[1]:   # a window over some channels: the others do not change
                full = z.new_zeros((m, change.shape[1]) + tuple(z.shape[2:]))
                full[:, box[0]:hi[0]] = z
                z = full
            entry.add_box(hj, z, box[1:], hi[1:])
        with entry.returning(rows, h):
            return forward(model, rows)

    def _explain_groups(self, model, x, target, create_graph):
        """Feature ablation over the groups of ``feature_mask``."""
        xi = input_leaf(x, create_graph) if create_graph and x.is_floating_point() else x.detach()
        n, feat = x.shape[0], tuple(x.shape[1:])
        ids, fm = self._group_masks(x)
        base = self.make_baseline(xi)
        rows = rows_per_pass(model, xi, batch_size=self.batch_size or DEFAULT_BATCH_ROWS,
                             work=ids.numel() * n, grad=create_graph)
        out = chunked_forward(model, xi, rows, grad=create_graph)
        t = resolve_target(target, out)
        s0 = select_score(out, t, self.score)
        if not create_graph:
            s0 = s0.detach()
        G = ids.numel()
        attr = None
        parts = {}
        bar = progress_bar(n * G, "Occlusion", progress=self.progress, unit="row", min_total=_BAR_ROWS)
        for g0, g1, i0, i1 in _blocks(n, G, rows):
            k, m = g1 - g0, i1 - i0
            bar.update(k * m)
            sel = fm if fm.shape[0] == 1 else fm[i0:i1]
            mask = (sel[None] == ids[g0:g1].reshape((k, 1) + (1,) * len(feat))).to(s0.dtype)  # (k, 1|m, ...)
            xs = xi[None, i0:i1]
            with torch.set_grad_enabled(create_graph), sample_rows(repeat_rows(i0, i1, k, x.device), n):
                occluded = self._mix(xs, mask, base[None, i0:i1])
                o = forward(model, occluded.reshape((k * m,) + feat))
                s = select_score(o, t[i0:i1].repeat(k), self.score).reshape(k, m)
                drop = s0[None, i0:i1] - s
                part = (drop.reshape((k, m) + (1,) * len(feat)) * mask).sum(0)
            parts[i0] = parts[i0] + part if i0 in parts else part
        bar.close()
        attr = torch.cat([p for _, p in sorted(parts.items())]) if len(parts) > 1 else parts[0]
        if not create_graph:
            out, attr = out.detach(), attr.detach()
        return Explanation(attr, xi, t, out, self.name, self._params_for_result(),
                           extras={"windows": G, "groups": ids})
