"""Machinery shared by the metric families: metadata, explanation sources, checks.

Every metric is a plain function returning one value per sample, a tensor (N,),
with metadata as function attributes set by :func:`metric`:

* ``family`` -- one of :data:`FAMILIES`,
* ``direction`` -- ``"higher"`` or ``"lower"`` (which way is better),
* ``needs`` -- what the report card must pass: a subset of
  ``("model", "explainer", "mask", "retrain")``; every metric takes the
  attributions ``a``.
"""
from __future__ import annotations

import contextlib
import copy
import math
from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .._validation import all_finite, check_inputs, check_model, check_positive_int, resolve_target
from ..explainers.base import default_batch_rows, forward

FAMILIES = ("similarity", "randomisation", "axiomatic", "faithfulness", "robustness", "complexity", "localisation")

ExplainerLike = Union[str, Callable]
ExplainFn = Callable[..., torch.Tensor]

#: every function decorated with :func:`metric`, by name
REGISTRY = {}


def metric(family: str, direction: str, needs: Sequence[str] = ("model",), name: Optional[str] = None):
    """Attach ``family``, ``direction`` (of "better") and ``needs`` to a metric function."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    if direction not in ("higher", "lower"):
        raise ValueError(f"direction must be 'higher' or 'lower', got {direction!r}")

    def deco(fn):
        fn.family = family
        fn.direction = direction
        fn.higher_is_better = direction == "higher"
        fn.needs = tuple(needs)
        fn.metric_name = name or fn.__name__
        REGISTRY[fn.metric_name] = fn
        return fn

    return deco


def explanation_fn(explainer: ExplainerLike, batch_size: Optional[int] = None) -> ExplainFn:
    """Turn an explanation source into ``f(model, x, y) -> Tensor`` (detached, shaped like ``x``).

    ``explainer`` is a registry name (``"ig"``), an :class:`xadv.explainers.Explainer`
    or a plain function ``f(model, x, y)`` returning a tensor or an array of
    attributions (an :class:`~xadv.explanation.Explanation` is accepted too).

    ``f`` explains at most ``batch_size`` inputs per call of the source (default: the
    explainers' chunking policy, :func:`xadv.explainers.chunking.rows_per_pass` with
    gradients); an xadv explainer that expands
    its inputs (IG steps, SmoothGrad noise, GradientSHAP backgrounds, occlusion
    windows, LIME samples) and has no ``batch_size`` of its own gets this one, so
    every model call stays within ``batch_size`` rows. ``f.with_output(model, x, y)``
    returns ``(attributions, logits or None)``: the logits of the explainer's own
    forward pass on ``x`` when it reports them, which saves a separate prediction.
    """
    from ..explainers import Explainer, get
    from ..explanation import Explanation

    if batch_size is not None:
        check_positive_int(batch_size, "batch_size")
    if isinstance(explainer, str):
        explainer = get(explainer)
    if isinstance(explainer, Explainer):
        e = explainer
        if batch_size is not None and getattr(e, "batch_size", "absent") is None:
            e = copy.copy(e)
            e.batch_size = batch_size

        def one(model, x, y, create_graph=False):
            r = e(model, x, y, create_graph=create_graph)
            out = r.output if isinstance(r.output, torch.Tensor) and r.output.dim() == 2 \
                and r.output.shape[0] == x.shape[0] else None
            a = r.attributions
            return (a if create_graph else a.detach()), (None if out is None else out.detach())

        differentiable = e.differentiable
        source = e
        seeded = getattr(e, "seed", None) is not None or getattr(e, "generator", None) is not None
    elif callable(explainer):
        fn = explainer

        def one(model, x, y, create_graph=False):
            out = fn(model, x, y)
            if isinstance(out, Explanation):
                out = out.attributions
            if isinstance(out, np.ndarray):
                out = torch.as_tensor(out, device=x.device, dtype=x.dtype)
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"the explanation function must return a tensor or an array, got {type(out).__name__}")
            return (out if create_graph else out.detach()), None

        differentiable = False
        source = fn
        seeded = True  # unknown: keep the per-draw calls
    else:
        raise TypeError(f"explainer must be a registry name, an xadv Explainer or a function f(model, x, y), "
                        f"got {type(explainer).__name__}")

    def with_output(model, x, y, create_graph: bool = False, group: Optional[int] = None):
        """``group``: the rows come in groups (one perturbation draw of all N samples each).
        A source that may draw random numbers (a seeded explainer, a plain function) is
        called once per group, so every draw sees the same noise as the clean call of N
        rows (common random numbers); a deterministic explainer gets all groups at once."""
        if group is not None and seeded and x.shape[0] > group:
            return _cat([with_output(model, x[i:j], _rows(y, x, i, j), create_graph)
                         for i, j in chunks(x.shape[0], group)])
        rows = rows_per_call(x, batch_size, model=model, grad=True)
        if x.shape[0] <= rows:
            return one(model, x, y, create_graph)
        return _cat([one(model, x[i:j], _rows(y, x, i, j), create_graph) for i, j in chunks(x.shape[0], rows)])

    def f(model, x, y, create_graph: bool = False):
        return with_output(model, x, y, create_graph)[0]

    f.with_output = with_output  # type: ignore[attr-defined]
    f.explainer = source  # type: ignore[attr-defined]
    f.differentiable = differentiable  # type: ignore[attr-defined]
    f.batch_size = batch_size  # type: ignore[attr-defined]
    return f


def _rows(y, x, i, j):
    per_row = isinstance(y, (torch.Tensor, np.ndarray, list, tuple)) and len(y) == x.shape[0] and x.shape[0] > 1
    return y[i:j] if per_row else y


def _cat(parts):
    outs = [o for _, o in parts]
    return torch.cat([a for a, _ in parts]), (None if any(o is None for o in outs) else torch.cat(outs))


def check_attributions(a, x: Optional[torch.Tensor] = None, name: str = "attributions") -> torch.Tensor:
    """A finite float tensor (N, ...); broadcast to ``x``'s shape when ``x`` is given."""
    from ..explanation import Explanation

    if isinstance(a, Explanation):
        a = a.attributions
    if isinstance(a, np.ndarray):
        a = torch.as_tensor(a)
    if not isinstance(a, torch.Tensor):
        raise TypeError(f"{name} must be a tensor (N, ...), an array or an Explanation, got {type(a).__name__}")
    if not a.is_floating_point():
        raise TypeError(f"{name} must be floating point, got dtype {a.dtype}")
    if a.dim() < 2:
        raise ValueError(f"{name} must be batch-first (N, ...), got shape {tuple(a.shape)}")
    if not all_finite(a):
        raise ValueError(f"{name} contain NaN or Inf values; check the explainer (e.g. a zero baseline "
                         f"divided by zero) before evaluating it")
    if x is not None:
        if a.shape[0] != x.shape[0]:
            raise ValueError(f"{name} have {a.shape[0]} samples but x has {x.shape[0]}")
        if a.shape != x.shape:
            try:
                a = torch.broadcast_to(a, x.shape)
            except RuntimeError:
                raise ValueError(f"{name} of shape {tuple(a.shape)} do not broadcast to the inputs "
                                 f"{tuple(x.shape)}") from None
        a = a.to(device=x.device, dtype=x.dtype)
    return a.detach()


def check_nonnegative(value, name: str) -> float:
    """A finite number >= 0 (radii, thresholds, eps)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def prepare(a: torch.Tensor, abs: bool = False, normalise: bool = False) -> torch.Tensor:
    """Optional preprocessing: divide by the per-sample max of ``|a|`` (Quantus'
    ``normalise_by_max``; all-zero maps kept), then take absolute values."""
    if normalise:
        m = a.reshape(a.shape[0], -1).abs().amax(1)
        m = torch.where(m == 0, torch.ones_like(m), m)
        a = a / m.reshape((-1,) + (1,) * (a.dim() - 1))
    if abs:
        a = a.abs()
    return a


def setup(model, x: torch.Tensor, y, min_dim: int = 2, batch_size: Optional[int] = None
          ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check model and inputs; return ``(x detached, logits on x, target (N,))``."""
    check_model(model)
    check_inputs(x, model, min_dim=min_dim)
    x = x.detach()
    out = predict(model, x, batch_size)
    return x, out, resolve_target(y, out)


def attributions_or_explain(a, explain: Optional[ExplainFn], model, x, y) -> torch.Tensor:
    if a is None:
        if explain is None:
            raise ValueError("give the attributions a or an explainer to compute them")
        a = explain(model, x, y)
    return check_attributions(a, x)


def rows_per_call(x: torch.Tensor, batch_size: Optional[int] = None, *, model=None, work: Optional[int] = None,
                  grad: bool = False) -> int:
    """Rows per model call: ``batch_size`` when given (a positive int, the user's bound on
    every call), else the explainers' chunking policy
    :func:`xadv.explainers.chunking.rows_per_pass` for ``model`` on rows shaped like
    ``x[0]`` (activation bytes per row, cached per model and shape; ``grad``: the passes
    keep a graph for a backward pass), at most ``work`` rows (default ``x.shape[0]``).
    Without a model, :func:`xadv.explainers.base.default_batch_rows`."""
    if batch_size is not None:
        return check_positive_int(batch_size, "batch_size")
    if model is None:
        return default_batch_rows(x)
    from ..explainers.chunking import rows_per_pass

    return rows_per_pass(model, x, work=x.shape[0] if work is None else max(1, int(work)), grad=grad)


def chunks(m: int, rows: int):
    """``(start, stop)`` slices of ``range(m)`` of at most ``rows``."""
    return [(i, min(i + rows, m)) for i in range(0, m, rows)]


def predict(model, xs: torch.Tensor, batch_size: Optional[int] = None, softmax: bool = False,
            samples: Optional[torch.Tensor] = None, channels_last: bool = False) -> torch.Tensor:
    """Model scores of a (M, ...) batch in calls of at most ``batch_size`` rows, no grad: (M, K).
    ``samples`` (LongTensor (M,)): the sample of the batch each row belongs to, told to the
    model's adapter (:func:`xadv._adapter.sample_rows`) so per-sample side inputs follow.
    ``channels_last``: as in :func:`predict_rows`."""
    return predict_rows(model, xs.shape[0], lambda i, j: xs[i:j],
                        rows_per_call(xs, batch_size, model=model, grad=False), softmax, samples,
                        channels_last=channels_last)


def predict_rows(model, m: int, build: Callable[[int, int], torch.Tensor], rows: int,
                 softmax: bool = False, samples: Optional[torch.Tensor] = None,
                 channels_last: bool = False) -> torch.Tensor:
    """Model scores of ``m`` rows built chunk by chunk (``build(i, j)`` -> rows ``i:j``):
    the perturbed inputs of a metric never exist all at once. (M, K).

    ``channels_last``: image rows (4-D) go to the model channels-last on a CPU when
    :func:`xadv.explainers.chunking.prefers_channels_last` measured that faster for this model and
    shape (a cached timing probe; values equal to float rounding); a model that rejects
    channels-last inputs gets the plain layout."""
    from .._adapter import sample_rows
    from ..explainers.chunking import layout_forward, prefers_channels_last

    outs = []
    n = None if samples is None else int(samples.max()) + 1
    last = None
    with torch.no_grad():
        for i, j in chunks(m, rows):
            xb = build(i, j)
            if channels_last and last is None:  # decided on the first chunk
                last = xb.dim() == 4 and prefers_channels_last(model, xb, rows)
            with contextlib.ExitStack() as stack:
                if samples is not None:
                    stack.enter_context(sample_rows(samples[i:j], n))
                o, last = layout_forward(model, xb, bool(last))
            outs.append(torch.softmax(o, 1) if softmax else o)
    return torch.cat(outs)


def target_scores(model, xs: torch.Tensor, t: torch.Tensor, batch_size=None, softmax: bool = False) -> torch.Tensor:
    """Score of class ``t`` (len M) for each row of ``xs`` (M, ...): (M,)."""
    return predict(model, xs, batch_size, softmax).gather(1, t[:, None]).squeeze(1)


def scores_of(out: torch.Tensor, t: torch.Tensor, softmax: bool = False) -> torch.Tensor:
    """Score of class ``t`` in already computed logits ``out`` (M, K): (M,)."""
    return (torch.softmax(out, 1) if softmax else out).gather(1, t[:, None]).squeeze(1)


def pearson_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of the rows of two (N, S) tensors: (N,) (NaN for a constant row,
    like ``scipy.stats.pearsonr``)."""
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    den = a.norm(dim=-1) * b.norm(dim=-1)
    return (a * b).sum(-1) / den


def _host(f: torch.Tensor) -> bool:
    return f.device.type == "cpu" and not f.requires_grad and f.dtype in (torch.float32, torch.float64)


def sort_values_rows(f: torch.Tensor) -> torch.Tensor:
    """Values sorted ascending along the last dimension. On the CPU NumPy's vectorised sort
    (zero-copy views) is ~20x faster than ``torch.sort`` at attribution-map sizes."""
    if _host(f):
        return torch.from_numpy(np.sort(f.contiguous().numpy(), axis=-1))
    return torch.sort(f, dim=-1).values


def argsort_rows(f: torch.Tensor) -> torch.Tensor:
    """Ascending order along the last dimension, ties in any order (NumPy's on the CPU, ~4x
    faster than ``torch.sort``); use it only where the order of ties does not matter."""
    if _host(f):
        return torch.from_numpy(np.argsort(f.contiguous().numpy(), axis=-1))
    return torch.sort(f, dim=-1).indices


def rank_rows(f: torch.Tensor) -> torch.Tensor:
    """Average ranks (ties share the mean rank) along the last dimension."""
    n = f.shape[-1]
    idx = argsort_rows(f)  # ties are averaged below, so their order does not matter
    s = f.gather(-1, idx)
    ranks = torch.arange(1, n + 1, dtype=f.dtype, device=f.device).expand_as(s)
    # average over runs of equal values
    new = torch.ones_like(s, dtype=torch.bool)
    new[..., 1:] = s[..., 1:] != s[..., :-1]
    grp = new.cumsum(-1) - 1
    sums = torch.zeros_like(s).scatter_add_(-1, grp, ranks)
    cnt = torch.zeros_like(s).scatter_add_(-1, grp, torch.ones_like(s))
    avg = (sums / cnt.clamp_min(1)).gather(-1, grp)
    return torch.empty_like(avg).scatter_(-1, idx, avg)


def spearman_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of the rows of two (N, S) tensors: (N,)."""
    return pearson_rows(rank_rows(a), rank_rows(b))


def flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def generator(seed: Optional[int], device) -> torch.Generator:
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(int(seed))
    return g
