"""LIME for images (superpixels) and tabular data, batched on the model's device.

Both explainers follow the ``lime`` package (Ribeiro et al., 2016) step by step:
perturb interpretable features, evaluate the model on every perturbation, weight
the perturbations by an exponential kernel of their distance to the instance and
fit a weighted ridge regression whose coefficients are the explanation. xadv
differs in *how* this runs: perturbed inputs are built on the tensor's device by
gathering per-segment masks, all of them go through the model in large batched
forward passes (across images too), and the ridge is solved in closed form,
batched over images, on the device.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .._validation import all_finite, check_finite, check_positive_int, resolve_target
from ..explanation import Explanation
from .base import Explainer, check_score, forward, select_score
from .integrated_gradients import gaussian_blur
from .._common import make_generator
from .._progress import bar as progress_bar

__all__ = ["LIME", "TabularLIME", "weighted_ridge", "exponential_kernel", "segment"]

_SEGMENTATIONS = ("slic", "quickshift", "felzenszwalb")
_SAMPLINGS = ("bernoulli", "uniform")
_FORMATS = ("auto", "contiguous", "channels_last")

#: input elements (rows x C x H x W) per forward pass when ``batch_size`` is None: on a
#: CPU, passes that keep the activations in cache are fastest (measured on the zoo CNNs:
#: 1000-row passes cost up to 1.8x more per row than 64-row ones); accelerators like
#: large passes.
DEFAULT_BATCH_ELEMENTS = {"cpu": 1 << 17, "other": 1 << 22}
#: bounds on rows per forward pass when ``batch_size`` is None
DEFAULT_ROWS = {"cpu": (8, 256), "other": (8, 1000)}


def default_rows(x: torch.Tensor, row_numel: int) -> int:
    """Rows per forward pass for inputs like ``x`` with ``row_numel`` elements per row."""
    kind = "cpu" if x.device.type == "cpu" else "other"
    lo, hi = DEFAULT_ROWS[kind]
    return max(lo, min(hi, DEFAULT_BATCH_ELEMENTS[kind] // max(1, row_numel)))
#: bytes of surrogate design matrix per group of images (bounds memory for large N)
_GROUP_BYTES = 64 << 20
#: with progress=None, a bar only for at least this many perturbed samples (a few seconds)
_BAR_ROWS = 2000

SegmentationLike = Union[str, torch.Tensor, np.ndarray, Callable[[np.ndarray], Any]]


# --------------------------------------------------------------------------- helpers
def exponential_kernel(d: torch.Tensor, width: float) -> torch.Tensor:
    """LIME's similarity kernel ``sqrt(exp(-d^2 / width^2))`` (shape of ``d``)."""
    return torch.exp(-(d * d) / (width * width)).sqrt()


def _solve_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def weighted_ridge(X: torch.Tensor, y: torch.Tensor, w: torch.Tensor, alpha: float = 1.0,
                   n_features: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """Weighted ridge regression with an intercept, batched, in closed form.

    Minimises ``sum_i w_i (y_i - b - X_i beta)^2 + alpha * ||beta||^2`` for every
    problem of the batch, as ``sklearn.linear_model.Ridge(alpha).fit(X, y,
    sample_weight=w)`` does: centre ``X`` and ``y`` with the weighted means, solve
    ``(Xc' W Xc + alpha I) beta = Xc' W yc``, ``b = ybar - xbar' beta``.

    Parameters
    ----------
    X : Tensor (B, n, S)
        Design matrices (B problems, n samples, S features).
    y : Tensor (B, n)
        Targets.
    w : Tensor (B, n)
        Non-negative sample weights (not all zero).
    alpha : float, default 1.0
        L2 penalty on ``beta`` (not on the intercept).
    n_features : LongTensor (B,), optional
        Only the first ``n_features[b]`` columns of problem ``b`` are used; the
        others (padding) get coefficient 0.

    Returns
    -------
    dict with ``coef`` (B, S), ``intercept`` (B,), ``score`` (B,) (weighted R^2 of
    the fit, sklearn's ``score`` with ``sample_weight``) and ``fitted`` (B, n).

    Examples
    --------
    >>> import torch
    >>> X = torch.rand(1, 50, 3, dtype=torch.float64)
    >>> y = X @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + 3
    >>> r = weighted_ridge(X, y, torch.ones(1, 50, dtype=torch.float64), alpha=0.0)
    >>> torch.allclose(r["coef"][0], torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    True
    """
    if X.dim() != 3 or y.shape != X.shape[:2] or w.shape != X.shape[:2]:
        raise ValueError(
            f"weighted_ridge needs X (B, n, S), y (B, n) and w (B, n); got {tuple(X.shape)}, "
            f"{tuple(y.shape)}, {tuple(w.shape)}"
        )
    dt = _solve_dtype(X.device)
    X, y, w = X.to(dt), y.to(dt), w.to(dt)
    b, n, s = X.shape
    sw = w.sum(1, keepdim=True)
    if bool((sw <= 0).any()):
        raise ValueError("the sample weights of every problem must have a positive sum")
    # sums over the samples as batched products: fewer (B, n, S) temporaries
    xbar = (w[:, None, :] @ X)[:, 0] / sw  # (B, S)
    ybar = (w * y).sum(1, keepdim=True) / sw  # (B, 1)
    Xc = X - xbar[:, None, :]
    yc = y - ybar
    if n_features is not None:
        keep = torch.arange(s, device=X.device)[None, :] < n_features.to(X.device)[:, None]
        Xc.mul_(keep[:, None, :])
    else:
        keep = torch.ones(b, s, dtype=torch.bool, device=X.device)
    WXc = w[:, :, None] * Xc
    WXcT = WXc.transpose(1, 2)
    A = WXcT @ Xc  # (B, S, S)
    rhs = (WXcT @ yc[:, :, None])[:, :, 0]  # (B, S)
    # + alpha on the diagonal; padding columns get 1 (their beta is 0)
    A.diagonal(dim1=1, dim2=2).add_(torch.full((b, s), float(alpha), dtype=dt, device=X.device).masked_fill_(~keep, 1.0))
    coef, info = torch.linalg.solve_ex(A, rhs[:, :, None])
    coef = coef[:, :, 0]
    bad = info != 0
    if bool(bad.any()):  # singular (alpha = 0 and a column without variation): least norm
        coef[bad] = (torch.linalg.pinv(A[bad]) @ rhs[bad][:, :, None])[:, :, 0]
    coef = coef * keep.to(dt)
    intercept = ybar[:, 0] - (xbar * coef).sum(1)
    fitted = intercept[:, None] + (X @ coef[:, :, None])[:, :, 0]
    ss_res = (w * (y - fitted) ** 2).sum(1)
    ss_tot = (w * yc ** 2).sum(1)
    score = torch.where(ss_tot > 0, 1 - ss_res / ss_tot.clamp_min(torch.finfo(dt).tiny),
                        torch.where(ss_res > 0, torch.zeros_like(ss_res), torch.ones_like(ss_res)))
    return {"coef": coef, "intercept": intercept, "score": score, "fitted": fitted}


def _check_kwargs(kwargs, name: str) -> Dict[str, Any]:
    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict):
        raise TypeError(f"{name} must be a dict of keyword arguments, got {type(kwargs).__name__}")
    return dict(kwargs)


def segment(images: torch.Tensor, method: str = "slic", **kwargs) -> torch.Tensor:
    """Superpixels of (N, C, H, W) images with scikit-image.

    Parameters
    ----------
    images : Tensor (N, C, H, W)
        Images in the model's domain; one channel is segmented as grey, three as
        RGB (converted to Lab by ``slic``/``quickshift`` as scikit-image does).
    method : {"slic", "quickshift", "felzenszwalb"}, default "slic"
    **kwargs
        Passed to the scikit-image function. Defaults: slic ``n_segments=50``,
        ``compactness=10`` for RGB and ``0.1`` otherwise (scikit-image's own value
        assumes Lab colours in [0, 100]), ``start_label=0``; quickshift lime's
        ``kernel_size=4, max_dist=200, ratio=0.2`` (grey images are repeated to RGB);
        felzenszwalb ``scale=1, sigma=0.5, min_size=5``.

    Returns
    -------
    LongTensor (N, H, W) on ``images.device``, labels 0..S_n-1 per image.

    Examples
    --------
    >>> import torch
    >>> segment(torch.rand(2, 1, 16, 16), "slic", n_segments=10).shape
    torch.Size([2, 16, 16])
    """
    from skimage import segmentation as sks

    if method not in _SEGMENTATIONS:
        raise ValueError(f"segmentation must be one of {_SEGMENTATIONS}, a label mask or a callable, "
                         f"got {method!r}")
    if images.dim() != 4:
        raise ValueError(f"segmentation needs (N, C, H, W) images, got shape {tuple(images.shape)}")
    arr = images.numpy(force=True).astype(np.float64)
    c = arr.shape[1]
    out = []
    for img in arr:
        hwc = np.moveaxis(img, 0, -1)
        if method == "slic":
            kw = {"n_segments": 50, "compactness": 10.0 if c == 3 else 0.1, "start_label": 0}
            kw.update(kwargs)
            if c == 1:
                lab = sks.slic(hwc[..., 0], channel_axis=None, **kw)
            else:
                kw.setdefault("convert2lab", c == 3)
                lab = sks.slic(hwc, channel_axis=-1, **kw)
        elif method == "quickshift":
            kw = {"kernel_size": 4, "max_dist": 200, "ratio": 0.2, "rng": 0}
            kw.update(kwargs)
            if c == 1:
                hwc = np.repeat(hwc, 3, axis=-1)
            elif c != 3:
                kw.setdefault("convert2lab", False)
            lab = sks.quickshift(hwc, **kw)
        else:
            kw = {"scale": 1.0, "sigma": 0.5, "min_size": 5}
            kw.update(kwargs)
            img2 = hwc[..., 0] if c == 1 else hwc
            lab = sks.felzenszwalb(img2, channel_axis=None if c == 1 else -1, **kw)
        out.append(np.asarray(lab, dtype=np.int64))
    return torch.as_tensor(np.stack(out), device=images.device)


def _relabel(seg: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per image, map labels to 0..S_n-1 (sorted). Returns (segments, counts)."""
    segs, counts = [], []
    for s in seg:
        _, inv = torch.unique(s, return_inverse=True)
        segs.append(inv.reshape(s.shape))
        counts.append(int(inv.max()) + 1)
    return torch.stack(segs), torch.tensor(counts, dtype=torch.long, device=seg.device)


def set_surrogate_options(est, *, kernel_width, alpha, score, batch_size, seed, generator) -> None:
    """Check and store the options of the weighted-ridge surrogate that LIME and FeatureLIME share:
    ``kernel_width`` > 0, ``alpha`` >= 0, the score, ``batch_size`` and the random source."""
    if not float(kernel_width) > 0:
        raise ValueError(f"kernel_width must be > 0, got {kernel_width!r}")
    est.kernel_width = float(kernel_width)
    if not float(alpha) >= 0:
        raise ValueError(f"alpha must be >= 0, got {alpha!r}")
    est.alpha = float(alpha)
    est.score = check_score(score)
    est.batch_size = None if batch_size is None else check_positive_int(batch_size, "batch_size")
    est.seed = seed
    est.generator = generator


# --------------------------------------------------------------------------- image LIME
class LIME(Explainer):
    """LIME for images: a weighted linear surrogate over superpixels.

    For each image: split it into superpixels, draw ``n_samples`` binary masks
    (the first keeps every segment), replace the switched-off segments by ``fill``,
    evaluate the model on all masked images, weight each mask ``z`` by
    ``sqrt(exp(-d^2 / kernel_width^2))`` with ``d`` the cosine distance between
    ``z`` and the all-ones mask, and fit a weighted ridge regression of the
    explained score on the masks. The coefficients are the segment weights; each
    pixel (all channels) gets the weight of its segment.

    Faster than the ``lime`` package for the same computation: masked images are
    built on the device by gathering per-segment masks, the perturbations of many
    images go through the model together in forward passes of ``batch_size`` rows,
    and the ridge regressions are solved in closed form, batched.

    Parameters
    ----------
    segmentation : {"slic", "quickshift", "felzenszwalb"}, int mask or callable, default "slic"
        A scikit-image method (see :func:`segment` for the defaults), a label mask
        (integer tensor or array of shape (H, W) for every image, or (N, H, W)),
        or a callable ``f(image) -> labels`` called per image with a NumPy array
        (H, W, C) and returning (H, W) integer labels.
    segmentation_kwargs : dict, optional
        Keyword arguments for the scikit-image method.
    n_samples : int, default 1000
        Perturbations per image, the unperturbed one included.
    fill : "mean", "blur", float or Tensor, default "mean"
        What a switched-off segment shows: its mean colour (``lime``'s
        ``hide_color=None``), a Gaussian blur of the image (``blur_sigma``), a
        constant (``lime``'s ``hide_color=value``), or a tensor broadcastable to
        the input batch (N, C, H, W).
    blur_sigma : float, optional
        Standard deviation (pixels) for ``fill="blur"``; default ``max(H, W) / 8``.
    sampling : {"bernoulli", "uniform"}, default "bernoulli"
        ``bernoulli``: every segment is kept with probability 1/2, as
        ``lime_image`` does. ``uniform``: the number of switched-off segments is
        uniform in 1..S and the segments are chosen at random, as ``lime_text``
        does. The first sample always keeps all segments.
    kernel_width : float, default 0.25
    alpha : float, default 1.0
        Ridge penalty (``lime`` uses ``Ridge(alpha=1)``).
    score : {"softmax", "logit", "log_softmax"} or callable, default "softmax"
        The explained quantity; ``softmax`` is the class probability, as ``lime``
        explains ``predict_proba``.
    batch_size : int, optional
        Rows of every model call (perturbed images per forward pass, and the clean
        pass). Default: chosen per model, input shape and device by :mod:`xadv.explainers.chunking`
        (a memory probe, cached).
        Results do not depend on it.
    seed : int, optional
        Same seed, same masks on every call.
    generator : torch.Generator, optional
        Used instead of ``seed``. Masks are drawn image after image, so explaining
        a batch equals explaining its images one at a time in order with the same
        generator.
    progress : bool or None, default None
        Progress bar over the perturbed samples (integer counts). None: shown in terminals
        and notebooks for 2000 samples or more (off in tests and pipes; see
        :func:`xadv.set_progress`).
    memory_format : {"auto", "contiguous", "channels_last"}, default "auto"
        Layout of the perturbed batches handed to the model. ``auto`` uses
        channels-last on a CPU when a timed probe (once per model and input shape,
        :func:`xadv.explainers.chunking.prefers_channels_last`) finds it at least 15%
        faster: about 2x on the digits CNN, while a ResNet with NCHW weights runs about 2x
        slower in it. A model that cannot take it (e.g. a ``.view`` of a channels-last
        activation) falls back to contiguous batches.

    Shapes: ``x`` (N, C, H, W) -> ``attributions`` (N, C, H, W); ``segments``
    (N, H, W) long; ``segment_weights`` (N, S_max) (zero-padded when images have
    different numbers of segments). ``extras``: ``n_segments`` (N,), ``intercept``
    (N,), ``score`` (N,) (weighted R^2 of the surrogate), ``local_prediction`` (N,)
    (surrogate at the unperturbed image), ``prediction`` (N,) (the model's explained
    score at the image).

    References
    ----------
    Ribeiro, Singh, Guestrin. "Why Should I Trust You?": Explaining the Predictions
    of Any Classifier. KDD 2016.

    Examples
    --------
    >>> import torch, xadv
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    >>> e = xadv.explainers.LIME(n_samples=200, seed=0)(net, torch.rand(2, 1, 8, 8))
    >>> e.attributions.shape, e.segments.shape
    (torch.Size([2, 1, 8, 8]), torch.Size([2, 8, 8]))
    """

    name = "lime"
    differentiable = False
    min_dim = 4

    def _folds_batchnorm(self) -> bool:
        return True   # forward passes only

    def __init__(self, segmentation: SegmentationLike = "slic",
                 segmentation_kwargs: Optional[dict] = None, n_samples: int = 1000,
                 fill: Union[str, float, torch.Tensor] = "mean",
                 blur_sigma: Optional[float] = None, sampling: str = "bernoulli",
                 kernel_width: float = 0.25, alpha: float = 1.0, score="softmax",
                 batch_size: Optional[int] = None, seed: Optional[int] = None,
                 generator: Optional[torch.Generator] = None, progress: Optional[bool] = None,
                 memory_format: str = "auto"):
        if memory_format not in _FORMATS:
            raise ValueError(f"memory_format must be one of {_FORMATS}, got {memory_format!r}")
        self.memory_format = memory_format
        if isinstance(segmentation, str):
            if segmentation not in _SEGMENTATIONS:
                raise ValueError(f"segmentation must be one of {_SEGMENTATIONS}, an integer label mask "
                                 f"(H, W) or (N, H, W), or a callable image -> labels; got {segmentation!r}")
        elif isinstance(segmentation, (torch.Tensor, np.ndarray)):
            t = torch.as_tensor(segmentation)
            if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
                raise TypeError(f"a segmentation mask must hold integer labels, got dtype {t.dtype}")
            if t.dim() not in (2, 3):
                raise ValueError("a segmentation mask must have shape (H, W) or (N, H, W), "
                                 f"got {tuple(t.shape)}")
        elif not callable(segmentation):
            raise TypeError("segmentation must be a method name, an integer label mask or a callable, "
                            f"got {type(segmentation).__name__}")
        self.segmentation = segmentation
        self.segmentation_kwargs = _check_kwargs(segmentation_kwargs, "segmentation_kwargs")
        self.n_samples = check_positive_int(n_samples, "n_samples", minimum=2)
        if isinstance(fill, str):
            if fill not in ("mean", "blur"):
                raise ValueError(f"fill must be 'mean', 'blur', a number or a tensor, got {fill!r}")
        elif isinstance(fill, bool) or not isinstance(fill, (int, float, torch.Tensor)):
            raise TypeError("fill must be 'mean', 'blur', a number or a tensor, "
                            f"got {type(fill).__name__}")
        self.fill = check_finite(fill, "fill")
        if blur_sigma is not None and not float(blur_sigma) > 0:
            raise ValueError(f"blur_sigma must be > 0, got {blur_sigma!r}")
        self.blur_sigma = blur_sigma
        if sampling not in _SAMPLINGS:
            raise ValueError(f"sampling must be one of {_SAMPLINGS}, got {sampling!r}")
        self.sampling = sampling
        set_surrogate_options(self, kernel_width=kernel_width, alpha=alpha, score=score, batch_size=batch_size,
                              seed=seed, generator=generator)
        self.progress = progress

    # ---------------------------------------------------------------- pieces
    def segments_for(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Superpixels of ``x`` (N, C, H, W): (segments (N, H, W) long, counts (N,))."""
        n, _, h, w = x.shape
        seg = self.segmentation
        if isinstance(seg, str):
            labels = segment(x.detach(), seg, **self.segmentation_kwargs)
        elif isinstance(seg, (torch.Tensor, np.ndarray)):
            labels = torch.as_tensor(seg).to(device=x.device, dtype=torch.long)
            if labels.dim() == 2:
                labels = labels.expand(n, -1, -1)
            if tuple(labels.shape) != (n, h, w):
                raise ValueError(
                    f"the segmentation mask has shape {tuple(torch.as_tensor(seg).shape)} but the images need "
                    f"(H, W) = {(h, w)} or (N, H, W) = {(n, h, w)}"
                )
        else:
            arr = x.numpy(force=True)
            out = []
            for i in range(n):
                lab = seg(np.moveaxis(arr[i], 0, -1))
                lab = lab.numpy(force=True) if isinstance(lab, torch.Tensor) else lab
                lab_t = torch.as_tensor(np.asarray(lab))
                if tuple(lab_t.shape) != (h, w):
                    raise ValueError(f"the segmentation callable must return (H, W) = {(h, w)} labels, "
                                     f"got shape {tuple(lab_t.shape)}")
                if lab_t.is_floating_point() or lab_t.dtype == torch.bool:
                    raise TypeError("the segmentation callable must return integer labels, "
                                    f"got {lab_t.dtype}")
                out.append(lab_t.long())
            labels = torch.stack(out).to(x.device)
        return _relabel(labels)

    def fill_images(self, x: torch.Tensor, segments: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """What switched-off segments show: (N, C, H, W)."""
        n, c, h, w = x.shape
        if isinstance(self.fill, torch.Tensor):
            f = self.fill.to(device=x.device, dtype=x.dtype)
            try:
                return torch.broadcast_to(f, x.shape)
            except RuntimeError:
                raise ValueError(f"a fill tensor must broadcast to the inputs {tuple(x.shape)}, "
                                 f"got {tuple(f.shape)}") from None
        if not isinstance(self.fill, str):
            return torch.full_like(x, float(self.fill))
        if self.fill == "blur":
            sigma = self.blur_sigma if self.blur_sigma is not None else max(h, w) / 8
            return gaussian_blur(x, float(sigma))
        # segment mean colour
        s_max = int(counts.max())
        flat = segments.reshape(n, 1, h * w).expand(n, c, h * w)
        sums = torch.zeros(n, c, s_max, dtype=x.dtype, device=x.device)
        sums.scatter_add_(2, flat, x.reshape(n, c, -1))
        cnt = torch.zeros(n, 1, s_max, dtype=x.dtype, device=x.device).scatter_add_(
            2, segments.reshape(n, 1, -1), torch.ones(n, 1, h * w, dtype=x.dtype, device=x.device))
        means = sums / cnt.clamp_min(1)
        return means.gather(2, flat).reshape(x.shape)

    def sample_masks(self, counts: torch.Tensor, gen, device) -> torch.Tensor:
        """Binary masks (N, n_samples, S_max) as bool; the first keeps everything,
        padding columns are True. Drawn image after image from ``gen``."""
        n_img = counts.shape[0]
        s_max = int(counts.max())
        z = torch.ones(n_img, self.n_samples, s_max, dtype=torch.bool, device=device)
        m = self.n_samples - 1
        for i, s in enumerate(counts.tolist()):
            if self.sampling == "bernoulli":
                zi = torch.randint(0, 2, (m, s), generator=gen, device=device).bool()
            else:
                k = torch.randint(1, s + 1, (m, 1), generator=gen, device=device)
                rank = torch.rand(m, s, generator=gen, device=device).argsort(1).argsort(1)
                zi = rank >= k
            z[i, 1:, :s] = zi
        return z

    # ---------------------------------------------------------------- main
    def _rows_per_batch(self, model, x: torch.Tensor) -> int:
        from .chunking import rows_per_pass
        return rows_per_pass(model, x, batch_size=self.batch_size, work=x.shape[0] * (self.n_samples - 1),
                             grad=False)

    def _format(self, x: torch.Tensor, model=None, rows=None) -> torch.memory_format:
        """``"auto"``: channels-last on a CPU where :func:`xadv.explainers.chunking.prefers_channels_last`
        measured this model faster with it (the digits CNN; a ResNet with NCHW weights is not)."""
        if self.memory_format == "channels_last":
            return torch.channels_last
        if self.memory_format == "auto" and x.device.type == "cpu":
            from .chunking import prefers_channels_last
            if model is None or prefers_channels_last(model, x, rows):
                return torch.channels_last
        return torch.contiguous_format

    def _explain(self, model, x, target, create_graph):
        from .chunking import chunked_forward

        x = x.detach()
        n, c, h, w = x.shape
        rows = self._rows_per_batch(model, x)
        out = chunked_forward(model, x, rows)
        t = resolve_target(target, out)
        segments, counts = self.segments_for(x)
        fill = self.fill_images(x, segments, counts)
        diff = x - fill
        gen = make_generator(self.seed, self.generator, x.device)
        masks = self.sample_masks(counts, gen, x.device)  # (N, n, S_max) bool
        s_max = masks.shape[2]
        ns = self.n_samples
        with torch.no_grad():
            pred = select_score(out, t, self.score).detach()

        # groups of images bound the memory of the design matrices
        group = max(1, min(n, _GROUP_BYTES // max(1, ns * s_max * 8)))
        fmt = self._format(x, model, rows)
        bar = progress_bar(n * (ns - 1), "LIME", progress=self.progress, unit="sample", min_total=_BAR_ROWS)
        coef_l, icpt_l, score_l, local_l = [], [], [], []
        seg_flat = segments.reshape(n, h * w)
        # one input batch and one pixel-mask buffer, reused by every forward pass: fresh
        # allocations of this size cost page faults on a CPU on every pass
        xbuf = pbuf = None
        try:
            for g0 in range(0, n, group):
                g1 = min(n, g0 + group)
                gm = masks[g0:g1]  # (G, ns, S)
                gz = gm.to(x.dtype)
                ys = torch.empty(g1 - g0, ns, dtype=pred.dtype, device=x.device)
                ys[:, 0] = pred[g0:g1]
                # rows (image, sample) with sample >= 1; sample 0 is x itself
                m = ns - 1
                total = (g1 - g0) * m
                yflat = torch.empty(total, dtype=pred.dtype, device=x.device)
                trows = t[g0:g1].repeat_interleave(m)
                for r0 in range(0, total, rows):
                    r1 = min(total, r0 + rows)
                    if xbuf is None or xbuf.shape[0] < r1 - r0:
                        xbuf = torch.empty((min(rows, total), c, h, w), dtype=x.dtype, device=x.device,
                                           memory_format=fmt)
                        pbuf = torch.empty((min(rows, total), h * w), dtype=x.dtype, device=x.device)
                    xb = xbuf[: r1 - r0]
                    # each run of rows from one image: its masks, broadcast against its image
                    for i in range(r0 // m, (r1 - 1) // m + 1):
                        a, b = max(r0, i * m), min(r1, (i + 1) * m)
                        z = gz[i, a - i * m + 1: b - i * m + 1]  # (rows of image i, S)
                        pix = torch.index_select(z, 1, seg_flat[g0 + i], out=pbuf[: b - a]).view(-1, 1, h, w)
                        torch.addcmul(fill[g0 + i], diff[g0 + i], pix, out=xb[a - r0: b - r0])
                    with torch.no_grad():
                        try:
                            ob = forward(model, xb)
                        except RuntimeError:
                            if fmt is torch.contiguous_format:
                                raise
                            # e.g. a ``.view`` in the model: plain layout from here on
                            fmt = torch.contiguous_format
                            xbuf = None
                            ob = forward(model, xb.clone(memory_format=torch.contiguous_format))
                        sc = select_score(ob, trows[r0:r1], self.score)
                        yflat[r0:r1] = sc.detach().to(yflat.dtype)
                    bar.update(r1 - r0)
                ys[:, 1:] = yflat.view(g1 - g0, m)
                dt = _solve_dtype(x.device)
                zf = gm.to(dt)
                k = zf.sum(2)  # segments kept (padding included)
                kept = k - (s_max - counts[g0:g1, None].to(dt))
                dist = 1 - (kept / counts[g0:g1, None].to(dt)).sqrt()
                weights = exponential_kernel(dist, self.kernel_width)
                fit = weighted_ridge(zf, ys.to(dt), weights, self.alpha, n_features=counts[g0:g1])
                coef_l.append(fit["coef"])
                icpt_l.append(fit["intercept"])
                score_l.append(fit["score"])
                local_l.append(fit["fitted"][:, 0])
        finally:
            bar.close()

        coef = torch.cat(coef_l).to(x.dtype)
        attr = coef.gather(1, seg_flat).reshape(n, 1, h, w).expand(n, c, h, w).contiguous()
        params = self._params_for_result()
        if isinstance(self.segmentation, (torch.Tensor, np.ndarray)):
            params["segmentation"] = "mask" + str(tuple(np.shape(self.segmentation)))
        elif callable(self.segmentation):
            params["segmentation"] = repr(self.segmentation)
        extras = {
            "n_segments": counts,
            "intercept": torch.cat(icpt_l).to(x.dtype),
            "score": torch.cat(score_l).to(x.dtype),
            "local_prediction": torch.cat(local_l).to(x.dtype),
            "prediction": pred,
        }
        return Explanation(attr, x, t, out.detach(), self.name, params, segments=segments,
                           segment_weights=coef, extras=extras)


# --------------------------------------------------------------------------- tabular LIME
def _as_float64(a, name: str) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        t = torch.as_tensor(a.numpy(force=True), dtype=torch.float64)
    else:
        try:
            t = torch.as_tensor(np.asarray(a, dtype=np.float64))
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a numeric array or tensor of shape (M, D), got "
                            f"{type(a).__name__}") from None
    if t.dim() != 2 or t.shape[0] < 2:
        raise ValueError(f"{name} must have shape (M, D) with M >= 2 rows, got {tuple(t.shape)}")
    if not all_finite(t):
        raise ValueError(f"{name} contains NaN or Inf values")
    return t


def _value_table(columns: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Padded (F, V) tables of distinct values and their training frequencies."""
    vmax = max(int(c.numel()) for c in columns)
    vals = torch.zeros(len(columns), vmax, dtype=torch.float64)
    probs = torch.zeros(len(columns), vmax, dtype=torch.float64)
    for i, col in enumerate(columns):
        v, cnt = torch.unique(col, return_counts=True)
        vals[i, : v.numel()] = v
        probs[i, : v.numel()] = cnt.double() / cnt.sum()
    return vals, probs


class TabularLIME(Explainer):
    """LIME for tabular data, with perturbations drawn from training statistics.

    Follows ``lime.lime_tabular.LimeTabularExplainer``:

    * continuous features: ``value = mean + std * e`` with ``e ~ N(0, 1)`` and the
      training mean and standard deviation (``sample_around_instance=True``:
      ``value = x + std * e``); the surrogate sees the scaled value
      ``(value - mean) / std``.
    * categorical features (``categorical``): values drawn from their training
      frequencies; the surrogate sees 1 where the value equals the instance's.
    * ``discretize=True``: every continuous feature is cut at its training
      quartiles (lime's ``QuartileDiscretizer``); a bin is drawn from the training
      bin frequencies, the model sees a value from a normal with that bin's
      training mean and std truncated to the bin, and the surrogate sees 1 where
      the bin equals the instance's bin.
    * the first sample is the instance itself; weights ``sqrt(exp(-d^2 /
      kernel_width^2))`` with ``d`` the Euclidean distance to it in the
      surrogate's (scaled) space; weighted ridge (``alpha``) with an intercept.

    For a model whose explained score is linear, ``f(x) = w.x + b``, and
    ``discretize=False``, the surrogate is exact: its coefficient of a continuous
    feature ``j`` is ``w_j * std_j`` (``std_j`` the training standard deviation),
    up to the ridge shrinkage (none with ``alpha=0``).

    Parameters
    ----------
    training_data : Tensor or array (M, D)
        Statistics (means, stds, value frequencies, quartiles) come from it.
    n_samples : int, default 5000
        Perturbations per row, the row itself included.
    kernel_width : float, optional
        Default ``0.75 * sqrt(D)``.
    sample_around_instance : bool, default False
    categorical : sequence of int, optional
        Indices of categorical columns (their values are sampled from the training
        frequencies, never scaled).
    discretize : bool, default False
        Quartile discretisation of the continuous features, as above.
    alpha : float, default 1.0
        Ridge penalty.
    score : {"softmax", "logit", "log_softmax"} or callable, default "softmax"
    batch_size : int, optional
        Rows of every model call, the clean pass included. Default: chosen per model, input shape and device by :mod:`xadv.explainers.chunking`
        (a memory probe, cached).
    seed, generator
        Reproducible sampling; draws are made row after row, so a batch equals its
        rows explained one at a time with the same generator.
    progress : bool or None, default None
        Progress bar over the perturbed samples, as :class:`LIME`.

    Shapes: ``x`` (N, D) -> ``attributions`` (N, D), the surrogate's
    coefficients (also in ``segment_weights``). ``extras``: ``intercept``,
    ``score`` (weighted R^2), ``local_prediction``, ``prediction`` (N,) each, and
    ``feature_scale`` (D,) (the std used for continuous features, 1 otherwise).

    References
    ----------
    Ribeiro, Singh, Guestrin. "Why Should I Trust You?": Explaining the Predictions
    of Any Classifier. KDD 2016.

    Examples
    --------
    >>> import torch, xadv
    >>> train = torch.randn(100, 4)
    >>> net = torch.nn.Linear(4, 2)
    >>> e = xadv.explainers.TabularLIME(train, n_samples=500, seed=0)(net, train[:3])
    >>> e.attributions.shape
    torch.Size([3, 4])
    """

    name = "tabular_lime"
    differentiable = False
    min_dim = 2

    def __init__(self, training_data, n_samples: int = 5000, kernel_width: Optional[float] = None,
                 sample_around_instance: bool = False, categorical: Optional[Sequence[int]] = None,
                 discretize: bool = False, alpha: float = 1.0, score="softmax",
                 batch_size: Optional[int] = None, seed: Optional[int] = None,
                 generator: Optional[torch.Generator] = None, progress: Optional[bool] = None):
        data = _as_float64(training_data, "training_data")
        self.training_data = training_data
        d = data.shape[1]
        self.n_samples = check_positive_int(n_samples, "n_samples", minimum=2)
        if kernel_width is not None and not float(kernel_width) > 0:
            raise ValueError(f"kernel_width must be > 0, got {kernel_width!r}")
        self.kernel_width = kernel_width
        self.sample_around_instance = bool(sample_around_instance)
        cats = [] if categorical is None else list(categorical)
        for j in cats:
            if isinstance(j, bool) or not isinstance(j, (int, np.integer)) or not -d <= j < d:
                raise ValueError(f"categorical must hold column indices in [0, {d}), got {categorical!r}")
        cats = sorted({int(j) % d for j in cats})
        self.categorical = categorical
        self.discretize = bool(discretize)
        if not float(alpha) >= 0:
            raise ValueError(f"alpha must be >= 0, got {alpha!r}")
        self.alpha = float(alpha)
        self.score = check_score(score)
        self.batch_size = None if batch_size is None else check_positive_int(batch_size, "batch_size")
        self.seed = seed
        self.generator = generator
        self.progress = progress

        # ---- training statistics (float64, CPU; moved at call time)
        self._d = d
        self._cat = torch.tensor(cats, dtype=torch.long)
        cont = [j for j in range(d) if j not in set(cats)]
        self._cont = torch.tensor(cont, dtype=torch.long)
        mean = data.mean(0)
        std = data.std(0, unbiased=False)
        std = torch.where(std > 0, std, torch.ones_like(std))  # sklearn's StandardScaler rule
        mean[self._cat] = 0.0
        std[self._cat] = 1.0
        self._mean, self._std = mean, std
        self._kw = float(kernel_width) if kernel_width is not None else 0.75 * math.sqrt(d)
        if cats:
            self._cat_vals, self._cat_probs = _value_table([data[:, j] for j in cats])
        if self.discretize and cont:
            qts, bmean, bstd, bmin, bmax, bprob = [], [], [], [], [], []
            for j in cont:
                col = data[:, j]
                q = torch.unique(torch.as_tensor(np.percentile(col.numpy(), [25, 50, 75])))
                b = torch.searchsorted(q.contiguous(), col.contiguous())
                nb = q.numel() + 1
                means = torch.zeros(nb, dtype=torch.float64)
                stds = torch.zeros(nb, dtype=torch.float64)
                freq = torch.zeros(nb, dtype=torch.float64)
                for k in range(nb):
                    sel = col[b == k]
                    if sel.numel():
                        means[k] = sel.mean()
                        stds[k] = sel.std(unbiased=False)
                        freq[k] = sel.numel()
                qts.append(q)
                bmean.append(means)
                bstd.append(stds + 1e-11)
                bmin.append(torch.cat([col.min()[None], q]))
                bmax.append(torch.cat([q, col.max()[None]]))
                bprob.append(freq / freq.sum())
            nbmax = max(int(p.numel()) for p in bprob)

            def pad(ts, value=0.0):
                out = torch.full((len(ts), nbmax), value, dtype=torch.float64)
                for i, t_ in enumerate(ts):
                    out[i, : t_.numel()] = t_
                return out

            self._qts = pad(qts, float("inf"))[:, : nbmax - 1].contiguous()
            self._bin_mean, self._bin_std = pad(bmean), pad(bstd, 1.0)
            self._bin_min, self._bin_max = pad(bmin), pad(bmax)
            self._bin_prob = pad(bprob)

    def get_params(self) -> Dict[str, Any]:
        p = super().get_params()
        p["training_data"] = "array" + str(tuple(np.shape(self.training_data)))
        return p

    # ---------------------------------------------------------------- sampling
    def _sample_row(self, xr: torch.Tensor, gen,
                    st: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """(values (n, D) for the model, features (n, D) for the surrogate) of one row."""
        m = self.n_samples - 1
        dev, dt = xr.device, st["mean"].dtype
        values = xr.to(dt).expand(self.n_samples, -1).clone()
        feats = torch.empty_like(values)
        cont, cat = st["cont"], st["cat"]
        if cont.numel():
            if self.discretize:
                probs = st["bin_prob"]
                bins = torch.multinomial(probs, m, replacement=True, generator=gen).T  # (m, Dc)
                u = torch.rand(m, cont.numel(), generator=gen, device=dev, dtype=dt)
                mu = st["bin_mean"].gather(1, bins.T).T
                sd = st["bin_std"].gather(1, bins.T).T
                lo = (st["bin_min"].gather(1, bins.T).T - mu) / sd
                hi = (st["bin_max"].gather(1, bins.T).T - mu) / sd
                n01 = torch.distributions.Normal(torch.zeros((), dtype=dt, device=dev),
                                                 torch.ones((), dtype=dt, device=dev))
                plo, phi = n01.cdf(lo), n01.cdf(hi)
                eps = torch.finfo(dt).eps
                q = (plo + u * (phi - plo)).clamp(eps, 1 - eps)
                v = mu + sd * torch.special.ndtri(q)
                v = torch.minimum(torch.maximum(v, mu + sd * lo), mu + sd * hi)
                values[1:, cont] = v
                inst = xr.to(dt)[cont][:, None].contiguous()
                inst_bin = torch.searchsorted(st["qts"], inst).reshape(-1)
                feats[:, cont] = 1.0
                feats[1:, cont] = (bins == inst_bin[None, :]).to(dt)
            else:
                e = torch.randn(m, cont.numel(), generator=gen, device=dev, dtype=dt)
                centre = xr.to(dt)[cont] if self.sample_around_instance else st["mean"][cont]
                values[1:, cont] = centre + e * st["std"][cont]
                feats[:, cont] = (values[:, cont] - st["mean"][cont]) / st["std"][cont]
        if cat.numel():
            idx = torch.multinomial(st["cat_probs"], m, replacement=True, generator=gen)  # (Dk, m)
            v = st["cat_vals"].gather(1, idx).T  # (m, Dk)
            values[1:, cat] = v
            feats[:, cat] = 1.0
            feats[1:, cat] = (v == xr.to(dt)[cat][None, :]).to(dt)
        return values, feats

    def _stats(self, device, dtype) -> Dict[str, torch.Tensor]:
        keys = ["_mean", "_std", "_cat_vals", "_cat_probs", "_qts", "_bin_mean", "_bin_std", "_bin_min",
                "_bin_max", "_bin_prob"]
        st = {k[1:]: getattr(self, k).to(device=device, dtype=dtype) for k in keys if hasattr(self, k)}
        st["cont"] = self._cont.to(device)
        st["cat"] = self._cat.to(device)
        return st

    def _explain(self, model, x, target, create_graph):
        x = x.detach()
        if x.dim() != 2 or x.shape[1] != self._d:
            raise ValueError(f"TabularLIME was fitted on {self._d} features and needs x of shape "
                             f"(N, {self._d}), "
                             f"got {tuple(x.shape)}")
        from .chunking import chunked_forward, rows_per_pass
        n = x.shape[0]
        ns, d = self.n_samples, self._d
        rows = rows_per_pass(model, x, batch_size=self.batch_size, work=n * (ns - 1), grad=False)
        out = chunked_forward(model, x, rows)
        t = resolve_target(target, out)
        with torch.no_grad():
            pred = select_score(out, t, self.score).detach()
        dt = _solve_dtype(x.device)
        st = self._stats(x.device, dt)
        gen = make_generator(self.seed, self.generator, x.device)
        group = max(1, min(n, _GROUP_BYTES // max(1, ns * d * 8)))
        bar = progress_bar(n * (ns - 1), "TabularLIME", progress=self.progress, unit="sample", min_total=_BAR_ROWS)
        coef_l, icpt_l, score_l, local_l = [], [], [], []
        try:
            for g0 in range(0, n, group):
                g1 = min(n, g0 + group)
                vals, feats = zip(*(self._sample_row(x[i], gen, st) for i in range(g0, g1)))
                vals = torch.stack(vals)  # (G, ns, D)
                feats = torch.stack(feats)
                ys = torch.empty(g1 - g0, ns, dtype=dt, device=x.device)
                ys[:, 0] = pred[g0:g1].to(dt)
                flat = vals[:, 1:].reshape(-1, d).to(x.dtype)
                tt = t[g0:g1].repeat_interleave(ns - 1)
                yflat = torch.empty(flat.shape[0], dtype=dt, device=x.device)
                for r0 in range(0, flat.shape[0], rows):
                    r1 = min(flat.shape[0], r0 + rows)
                    with torch.no_grad():
                        ob = forward(model, flat[r0:r1])
                        yflat[r0:r1] = select_score(ob, tt[r0:r1], self.score).to(dt)
                    bar.update(r1 - r0)
                ys[:, 1:] = yflat.reshape(g1 - g0, ns - 1)
                dist = (feats - feats[:, :1]).pow(2).sum(2).sqrt()
                weights = exponential_kernel(dist, self._kw)
                fit = weighted_ridge(feats, ys, weights, self.alpha)
                coef_l.append(fit["coef"])
                icpt_l.append(fit["intercept"])
                score_l.append(fit["score"])
                local_l.append(fit["fitted"][:, 0])
        finally:
            bar.close()
        coef = torch.cat(coef_l).to(x.dtype)
        extras = {
            "intercept": torch.cat(icpt_l).to(x.dtype),
            "score": torch.cat(score_l).to(x.dtype),
            "local_prediction": torch.cat(local_l).to(x.dtype),
            "prediction": pred,
            "feature_scale": st["std"].to(x.dtype),
        }
        return Explanation(coef, x, t, out.detach(), self.name, self._params_for_result(),
                           segment_weights=coef, extras=extras)
