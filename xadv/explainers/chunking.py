"""Rows per model call: the one chunking policy of the explainers.

Every explainer that batches work (Integrated Gradients steps, SmoothGrad and
GradientSHAP draws, Occlusion windows, DeepLiftShap references, LIME samples,
Score-CAM / Ablation-CAM masks) asks :func:`rows_per_pass` how many rows to send to
the model at once, and sends its clean pass (the prediction on ``x`` itself) through
:func:`chunked_forward` with the same bound, or, with a baseline beside it, through
:func:`clean_passes`, which puts both in as few model calls as the bound allows. ``batch_size=`` on an explainer fixes the
rows of **every** model call it makes; without it the policy chooses:

1. **What a row costs in memory.** One forward pass of a single row with hooks on the
   model's leaf modules measures the activation bytes per row. Passes that keep their
   graph for a backward pass (gradient methods) are capped at ``MEMORY_BUDGET["grad"]``
   bytes of activations, forward-only passes at ``MEMORY_BUDGET["forward"]``; on CUDA
   the budget is a quarter of the free device memory.
2. **Rows from the activation size.** The choice is the power of two of rows holding
   about ``PRIOR_BYTES`` (48 MiB) of activations, at least ``MIN_ROWS`` (8), never more
   than the work to do or the memory cap; models with many parameters get at least one
   row per 2^17 parameters (a power of two: 64 rows for a ResNet-18), which amortises
   reading the weights. It depends only on the model, the input
   shape, dtype and device, so the same call gives the same bits in every process.
   **Optional timed search** (``SEARCH_SECONDS > 0``, or the environment variable
   ``XADV_CHUNK_SEARCH=<seconds>``): forward passes of that choice, twice and four times
   as many rows and half as many are timed, best of two each, and the smallest row
   count within 3% of the fastest time per row is taken; results then differ between
   processes by float summation order.
3. **Cached** per (model, input shape after the batch, dtype, device, grad or
   forward-only). The cache holds the model weakly (it does not keep it alive) and is
   dropped with :func:`clear_cache`.

Results do not depend on the chunking beyond float summation order (the tests compare ``batch_size``
1, small and None against one pass). A model in training mode (batch-norm statistics,
dropout) is never probed: the policy then falls back to rows holding about 2^17 input
elements (:func:`xadv.explainers.base.default_batch_rows`), as it does for plain
callables that are not ``nn.Module``.
"""
from __future__ import annotations

import contextvars
import math
import os
import time
import weakref
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .._adapter import sample_rows, unwrap

__all__ = ["rows_per_pass", "chunked_forward", "prefers_channels_last", "clear_cache", "MEMORY_BUDGET", "SEARCH_SECONDS", "MAX_ROWS",
           "PRIOR_BYTES", "MIN_ROWS", "TENSOR_BYTES_CPU", "clean_passes"]

#: bytes of activations per pass: with a graph kept for backward ("grad") or forward-only
MEMORY_BUDGET = {"grad": 1 << 30, "forward": 1 << 30}
#: CPU: the largest single activation tensor of a pass (rows x its bytes per row) stays
#: within this many bytes. glibc serves larger blocks by fresh mmap calls (its dynamic
#: threshold grows to at most 32 MiB), which page-fault the memory in again on every pass:
#: a ResNet-50 at 3x224x224 (stem output 3.1 MiB a row) runs no-grad forward passes of
#: 6 / 8 / 10 / 11 / 12 rows at 80 / 79 / 82 / 89 / 97 ms a row (2 threads); with the mmap
#: threshold raised by environment variables, 12 rows are the fastest
TENSOR_BYTES_CPU = 32 << 20
#: wall-clock limit of one timed search (seconds)
SEARCH_SECONDS = float(os.environ.get("XADV_CHUNK_SEARCH", "0") or 0)
#: upper bound of the chosen rows (CPU, other devices)
MAX_ROWS = {"cpu": 1024, "other": 8192}
#: activation bytes per pass of the first candidate (the prior), and its least rows
PRIOR_BYTES = 48 << 20
MIN_ROWS = 8

Inputs = Union[torch.Tensor, Sequence[torch.Tensor]]
_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_FALLBACK: Dict[tuple, int] = {}


def clear_cache() -> None:
    """Forget every chosen row count and layout (the next call of each explainer probes again)."""
    _CACHE.clear()
    _LAYOUT_CACHE.clear()


def _as_tuple(x: Inputs) -> Tuple[torch.Tensor, ...]:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _key(xs: Tuple[torch.Tensor, ...], grad: bool) -> tuple:
    return tuple((tuple(t.shape[1:]), t.dtype, str(t.device)) for t in xs) + (grad,)


def _owner(user):
    """The model a policy is cached for: the user's model, also for its traced copy
    (:mod:`xadv._fold`), so that one model has one policy whichever of the two runs."""
    ref = getattr(user, "_xadv_source", None)
    src = ref() if ref is not None else None
    return user if src is None else src


def _training(m) -> bool:
    return isinstance(m, nn.Module) and any(mod.training for mod in m.modules())


def _rows_of(xs: Tuple[torch.Tensor, ...], r: int) -> Tuple[torch.Tensor, ...]:
    return tuple(t[:1].expand((r,) + tuple(t.shape[1:])).contiguous() for t in xs)


#: True while the policy's own probe passes run: query counters (attacks) skip them
PROBING: "contextvars.ContextVar[bool]" = contextvars.ContextVar("xadv_chunking_probe", default=False)


#: True while an attack counts queries per sample (:class:`xadv.attacks.base.QueryCounter`):
#: :func:`clean_passes` then sends every sample its own baseline row, so each sample is
#: charged what attacking it alone would cost, whatever the batch
PER_SAMPLE_ROWS: "contextvars.ContextVar[bool]" = contextvars.ContextVar("xadv_per_sample_rows", default=False)


def _call(model, xs, n: int) -> None:
    r = xs[0].shape[0]
    token = PROBING.set(True)
    try:
        with torch.no_grad(), sample_rows(torch.zeros(r, dtype=torch.long, device=xs[0].device), n):
            model(*xs)
    finally:
        PROBING.reset(token)


def _activation_bytes(model, user, xs, n) -> Tuple[int, int]:
    """Bytes of leaf-module outputs of one row, in all and of the largest (a single
    no-grad forward pass)."""
    total = [0, 0]

    def hook(_m, _i, out):
        for o in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(o, torch.Tensor):
                b = o.numel() * o.element_size()
                total[0] += b
                total[1] = max(total[1], b)

    handles = []
    if isinstance(user, nn.Module):
        handles = [m.register_forward_hook(hook) for m in user.modules() if not list(m.children())]
    try:
        _call(model, _rows_of(xs, 1), n)
    finally:
        for h in handles:
            h.remove()
    inputs = [t[:1].numel() * t.element_size() for t in xs]
    return max(total[0], sum(inputs)), max([total[1]] + inputs)


def _budget(device: torch.device, grad: bool) -> int:
    if device.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        return max(1 << 20, free // 4)
    return MEMORY_BUDGET["grad" if grad else "forward"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _prior(act_bytes: int, cap: int) -> int:
    """Rows holding ``PRIOR_BYTES`` of activations (a power of two, at least ``MIN_ROWS``)."""
    r = max(MIN_ROWS, PRIOR_BYTES // max(1, act_bytes))
    return max(1, min(cap, 1 << int(math.log2(r))))


def _search(model, xs, n: int, cap: int, prior: int) -> int:
    """Time forward passes of ``prior``, then twice and four times as many rows, then half
    as many (within ``cap`` and ``SEARCH_SECONDS``); the smallest within 3% of the fastest
    time per row. The prior is always measured first, so a cut-off search keeps it."""
    device = xs[0].device
    order = [prior, 2 * prior, 4 * prior, prior // 2]
    per_row: Dict[int, float] = {}
    t_start = time.perf_counter()
    for r in order:
        r = min(cap, r)
        if r < 1 or r in per_row:
            continue
        batch = _rows_of(xs, r)
        _call(model, batch, n)  # warm-up at this size (allocator, kernels)
        best = math.inf
        for _ in range(2):
            _sync(device)
            t0 = time.perf_counter()
            _call(model, batch, n)
            _sync(device)
            best = min(best, time.perf_counter() - t0)
        per_row[r] = best / r
        if time.perf_counter() - t_start > SEARCH_SECONDS:
            break
    fastest = min(per_row.values())
    return min(k for k, v in per_row.items() if v <= 1.03 * fastest)


def rows_per_pass(model, x: Inputs, *, batch_size: Optional[int] = None, work: Optional[int] = None,
                  grad: bool = True) -> int:
    """Rows per model call for explaining ``model`` on inputs like ``x``.

    Parameters
    ----------
    model : nn.Module or callable
        The model as the explainer calls it (adapters are looked through for the cache key).
    x : Tensor (N, ...) or tuple of Tensors
        The inputs of one model call (only their shape after the batch, dtype and device
        and their first row are used).
    batch_size : int, optional
        The user's bound: returned as it is.
    work : int, optional
        Rows the explainer has to send in all (e.g. ``steps * N``): the search never
        tries more.
    grad : bool, default True
        Whether the passes keep a graph for a backward pass (memory cap ``"grad"``).

    Returns
    -------
    int
        At least 1.

    Examples
    --------
    >>> import torch
    >>> from xadv.explainers.chunking import rows_per_pass
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).eval()
    >>> rows_per_pass(net, torch.rand(4, 3, 4), batch_size=16)
    16
    >>> 1 <= rows_per_pass(net, torch.rand(4, 3, 4), work=200) <= 200
    True
    """
    if batch_size is not None:
        return int(batch_size)
    from .base import default_batch_rows

    xs = _as_tuple(x)
    user = unwrap(model)
    device = xs[0].device
    kind = "cpu" if device.type == "cpu" else "other"
    cap = MAX_ROWS[kind] if work is None else max(1, min(MAX_ROWS[kind], int(work)))
    if not isinstance(user, nn.Module) or _training(user):
        return max(1, min(cap, default_batch_rows(xs[0])))
    key = _key(xs, grad)
    try:
        per_model = _CACHE.setdefault(_owner(user), {})
    except TypeError:  # not weak-referenceable
        per_model = {}
    hit = per_model.get(key)
    if hit is not None and (hit[1] >= cap or hit[0] < hit[1]):
        return max(1, min(cap, hit[0]))
    n = xs[0].shape[0]
    act, largest = _activation_bytes(model, user, xs, n)
    mem_cap = max(1, _budget(device, grad) // act)
    if kind == "cpu":
        mem_cap = min(mem_cap, max(1, TENSOR_BYTES_CPU // largest))
    limit = max(1, min(cap, mem_cap))
    prior = _prior(act, limit)
    # large models amortise their weights over more rows: at least 2^-17 rows per
    # parameter (ResNet-18: 64 rows, measured 1.5x faster than 16 at 3x64x64)
    n_params = sum(p.numel() for p in user.parameters())
    floor = 1 << int(math.log2(max(1, n_params >> 17)))
    prior = max(prior, min(floor, limit))
    chosen = _search(model, xs, n, limit, prior) if SEARCH_SECONDS > 0 else prior
    # remember the work cap the choice was made under: a later call with more work chooses
    # again only when the choice stopped at that cap (not when memory or the policy bounded it)
    per_model[key] = (chosen, cap)
    return chosen


def chunked_forward(model, x: torch.Tensor, rows: int, *, grad: bool = False) -> torch.Tensor:
    """``forward(model, x)`` in slices of at most ``rows`` rows (the clean pass of an
    explainer), with the adapter told which samples each slice holds; (N, K)."""
    from .base import balanced_slices, forward

    n = x.shape[0]
    if n <= rows:
        with torch.set_grad_enabled(grad):
            return forward(model, x)
    outs = []
    for i0, i1 in balanced_slices(n, rows):
        with torch.set_grad_enabled(grad), sample_rows(torch.arange(i0, i1, device=x.device), n):
            outs.append(forward(model, x[i0:i1]))
    return torch.cat(outs)


def _same_rows(t: torch.Tensor) -> bool:
    """Whether every row of ``t`` equals its first (a zero or constant baseline)."""
    if t.shape[0] <= 1 or t.stride(0) == 0:
        return True
    with torch.no_grad():
        return bool(torch.equal(t[1:], t[:1].expand_as(t[1:])))


def clean_passes(model, x: torch.Tensor, others: Sequence[torch.Tensor], rows: int, *,
                 grad: bool = False) -> Tuple[torch.Tensor, ...]:
    """``(forward(model, x), forward(model, o) for o in others)``, each (N, K), in as few
    model calls of at most ``rows`` rows as possible.

    The clean pass on ``x`` and a baseline pass beside it (Integrated Gradients) go to the
    model together, and a batch ``o`` whose rows are all equal (a zero or constant
    baseline) is sent as one row, its output repeated (not while an attack counts queries
    per sample: :data:`PER_SAMPLE_ROWS`). On a small batch this replaces two
    inefficient passes by one (ViT-Tiny, 2 images: 72 ms -> 54 ms). Rows are merged only
    for an ``nn.Module`` in eval mode (a model in training mode or a plain callable may
    depend on the batch), and equal rows are sent once only when no adapter passes
    per-sample forward arguments; otherwise every batch gets its own
    :func:`chunked_forward`. Outputs equal the separate passes up to float summation order
    (batch-size dependent kernels)."""
    from .._adapter import ModelAdapter
    from .base import balanced_slices, forward

    n = x.shape[0]
    user = unwrap(model)
    if not isinstance(user, nn.Module) or _training(user):
        return tuple(chunked_forward(model, t, rows, grad=grad) for t in (x,) + tuple(others))
    single = not isinstance(model, ModelAdapter) and not PER_SAMPLE_ROWS.get()
    sends, idx = [x], [torch.arange(n, device=x.device)]
    for o in others:
        if single and _same_rows(o):
            sends.append(o[:1])
            idx.append(torch.zeros(1, dtype=torch.long, device=x.device))
        else:
            sends.append(o)
            idx.append(torch.arange(o.shape[0], device=x.device))
    rows_of = torch.cat(idx)
    starts = [0]
    for t in sends:
        starts.append(starts[-1] + t.shape[0])
    outs = []
    for i0, i1 in balanced_slices(starts[-1], rows):
        # the slice's rows of the (virtual) concatenation: only they are copied
        parts = [t[max(i0, a) - a:min(i1, b) - a] for t, a, b in zip(sends, starts, starts[1:]) if a < i1 and b > i0]
        with torch.set_grad_enabled(grad), sample_rows(rows_of[i0:i1], n):
            outs.append(forward(model, torch.cat(parts) if len(parts) > 1 else parts[0]))
    out = torch.cat(outs) if len(outs) > 1 else outs[0]
    parts = [out[a:b] for a, b in zip(starts, starts[1:])]
    return tuple(p.expand(n, -1) if p.shape[0] == 1 and n > 1 else p for p in parts)


# ----------------------------------------------------------------------------- layout
_LAYOUT_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def prefers_channels_last(model, x: torch.Tensor, rows: Optional[int]) -> bool:
    """Whether forward passes of the image batch ``x`` (N, C, H, W) run faster channels-last.

    Decided once per model, input shape, dtype and device by timing forward passes of up
    to 32 rows in each layout (a warm-up each, then the best of three, interleaved);
    channels-last is chosen when it is at least 15% faster. Cached on the model (weakly;
    :func:`clear_cache` forgets it). The
    digits CNN runs about twice as fast channels-last (its pooling kernels), a ResNet-18
    with NCHW weights about twice as slow (every convolution reorders its weights), so no
    fixed rule fits both. Only CPUs are probed; on other devices the layout of ``x`` stays.
    The probe passes are not counted as queries."""
    if x.dim() != 4 or x.device.type != "cpu" or not isinstance(model, torch.nn.Module):
        return False
    key = (tuple(x.shape[1:]), x.dtype, str(x.device))
    user = unwrap(model)
    per_model = _LAYOUT_CACHE.setdefault(user, {})
    if key in per_model:
        return per_model[key]
    if not any(isinstance(m, nn.Conv2d) for m in user.modules()):
        per_model[key] = False  # no 2-D convolution (an MLP, a ViT after its patch embedding): nothing to gain
        return False
    from .base import forward

    k = min(x.shape[0], rows or x.shape[0], 32)
    probe = x[:k].detach()
    cl = probe.clone(memory_format=torch.channels_last)
    token = PROBING.set(True)
    try:
        with torch.no_grad():
            plain = lambda: forward(model, probe)  # noqa: E731
            last = lambda: forward(model, cl)  # noqa: E731
            plain()
            try:
                last()
            except Exception:  # noqa: BLE001 - a model that rejects channels-last inputs (a ``.view``)
                per_model[key] = False
                return False
            # interleaved, best of three each: a busy machine slows single passes at random
            t_plain = t_last = float("inf")
            for _ in range(3):
                t_plain = min(t_plain, _timed(plain))
                t_last = min(t_last, _timed(last))
    finally:
        PROBING.reset(token)
    per_model[key] = choice = t_last < 0.85 * t_plain
    return choice


def layout_forward(model, x: torch.Tensor, channels_last: bool) -> Tuple[torch.Tensor, bool]:
    """``(forward(model, x), channels_last)``: with ``channels_last`` the batch goes to the
    model as a channels-last copy (explicit strides, also for one channel, where
    ``contiguous(memory_format=...)`` keeps NCHW strides); if the model raises on it (a
    ``.view`` of a conv activation), the plain batch is used and the returned flag is
    False, so a loop of passes keeps the plain layout from then on."""
    from .base import forward

    if channels_last:
        try:
            return forward(model, x.clone(memory_format=torch.channels_last)), True
        except RuntimeError:
            pass
    return forward(model, x), False
