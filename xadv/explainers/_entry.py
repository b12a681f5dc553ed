"""The model's entry layer: the affine layer (``Conv1d/2d/3d``, ``Linear``) that the input
goes into first, when there is one.

An affine entry ``L(z) = W z + b`` lets a gradient method do less work without any
change to its result:

* **straight paths** (Integrated Gradients): on ``x_a = x0 + a (x - x0)`` the entry's
  output is ``L(x0) + a W(x - x0)``, two entry passes per image instead of one per step;
* **sums of input gradients**: ``sum_k w_k grad_x f(x_k) = W^T sum_k w_k grad_h f``,
  with ``grad_h`` the gradient at the entry's output, so the entry's backward runs once
  per image instead of once per row.

The model itself still runs on the real path rows ``x_k`` (anything else it reads from
them, shapes or a second branch, sees the true input); only the entry module returns the
precomputed activation for exactly the tensor object it was handed for that pass (a
check by identity, so a shared module applied to anything else computes as usual), and
any gradient that reaches ``x_k`` by another route is added. For a ResNet-18 at 3x64x64
the stem convolution is 6.5% of the multiply-adds, for ViT-Tiny's patch embedding 2.3%.

The entry is the first ``Conv*d``/``Linear`` module of exactly that class (not a
subclass) that receives the model's input tensor itself, with no hooks of its own and no
global module hooks. It is found by hooks during the first clean pass on a model, input
shape, dtype and device (no extra model call) and cached weakly. Not used with ``create_graph``,
for models that are not ``nn.Module``, or while queries are counted per sample
(``xadv.explainers.chunking.PER_SAMPLE_ROWS``).
"""
from __future__ import annotations

import contextlib
import weakref
from typing import Any, Callable, Iterator, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .chunking import PER_SAMPLE_ROWS

_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()
_ENABLED = [True]


@contextlib.contextmanager
def entry_factoring(enabled: bool = True) -> Iterator[None]:
    """Turn the entry-layer factoring on or off inside the block (on by default).

    >>> import xadv
    >>> with xadv.explainers.entry_factoring(False):
    ...     pass  # IG here runs the first layer on every path row, as captum does
    """
    old = _ENABLED[0]
    _ENABLED[0] = bool(enabled)
    try:
        yield
    finally:
        _ENABLED[0] = old


def _global_hooks() -> bool:
    from torch.nn.modules import module as M
    return any(bool(getattr(M, name, None)) for name in (
        "_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
        "_global_backward_pre_hooks", "_global_forward_hooks_always_called"))


def _own_hooks(m: nn.Module) -> bool:
    return any(bool(getattr(m, name, None)) for name in (
        "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"))


class Entry:
    """The affine entry module of a model; see the module docstring."""

    def __init__(self, module: nn.Module):
        self.module = module

    def full(self, z: torch.Tensor) -> torch.Tensor:
        """``L(z) = W z + b``."""
        return type(self.module).forward(self.module, z)

    def linear(self, z: torch.Tensor) -> torch.Tensor:
        """``W z`` (no bias)."""
        m = self.module
        if isinstance(m, nn.Linear):
            return F.linear(z, m.weight)
        return m._conv_forward(z, m.weight, None)

    def transpose(self, g: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``W^T g``: the input gradient for an output cotangent ``g``; ``like`` gives the
        input's shape, dtype and device."""
        with torch.enable_grad():
            z = torch.zeros_like(like).requires_grad_(True)
            (gz,) = torch.autograd.grad(self.linear(z), z, g)
        return gz

    @property
    def local(self) -> bool:
        """Whether :meth:`add_box` applies: a convolution with zero padding given as numbers."""
        m = self.module
        return (isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and m.padding_mode == "zeros"
                and not isinstance(m.padding, str))

    @property
    def macs_per_output(self) -> int:
        """Multiply-adds per output element (``C_in / groups * prod(kernel)``)."""
        m = self.module
        if isinstance(m, nn.Linear):
            return m.in_features
        k = 1
        for v in m.kernel_size:
            k *= v
        return m.in_channels // m.groups * k

    def add_box(self, h: torch.Tensor, delta: torch.Tensor, lo, hi) -> None:
        """Add ``W delta`` to ``h`` in place, for an input change that is zero outside a
        box: ``h`` (m, C_out, *out) holds the entry's outputs on the unchanged inputs,
        ``delta`` (m, C_in, *box) the change inside ``[lo_d, hi_d)`` of each spatial
        dimension. Only the outputs whose receptive field meets the box are computed,
        by one convolution of the box (padded to whole receptive fields)."""
        m = self.module
        nd = delta.dim() - 2
        outs, pads, cuts = [], [], []
        for d in range(nd):
            k, st, p, dl = m.kernel_size[d], m.stride[d], m.padding[d], m.dilation[d]
            reach = dl * (k - 1)
            o0 = max(0, -(-(lo[d] + p - reach) // st))
            o1 = min(h.shape[2 + d] - 1, (hi[d] - 1 + p) // st)
            c0, c1 = st * o0 - p, st * o1 - p + reach + 1
            a, b = max(lo[d], c0), min(hi[d], c1)
            if o0 > o1 or a >= b:
                return   # no output reads the box in this dimension
            outs.append(slice(o0, o1 + 1))
            cuts.append(slice(a - lo[d], b - lo[d]))
            pads.append((a - c0, c1 - b))
        z = delta[(slice(None), slice(None)) + tuple(cuts)]
        flat = [v for pair in reversed(pads) for v in pair]
        if any(flat):
            z = F.pad(z, flat)
        conv = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
        h[(slice(None), slice(None)) + tuple(outs)] += conv(z, m.weight, None, m.stride, 0, m.dilation, m.groups)

    @contextlib.contextmanager
    def returning(self, x: torch.Tensor, h: torch.Tensor) -> Iterator[None]:
        """Inside the block the entry module returns ``h`` when it is called on the
        tensor ``x`` itself (by identity) and computes as usual on anything else."""
        m = self.module
        own = m.__dict__.get("forward")
        original = own if own is not None else type(m).forward.__get__(m)

        def forward(inp, *args, **kwargs):
            if inp is x and not args and not kwargs:
                return h
            return original(inp, *args, **kwargs)

        m.forward = forward
        try:
            yield
        finally:
            if own is not None:
                m.forward = own
            else:
                del m.forward


def with_entry(model, x: torch.Tensor, run: Callable[[], Any]) -> Tuple[Any, Optional[Entry]]:
    """``(run(), entry)``: ``run`` is a call that runs ``model`` on rows like ``x`` (N, ...),
    such as the clean pass. The entry of ``model`` for inputs shaped like ``x`` is cached;
    the first time, forward pre-hooks on the affine modules record during ``run`` which
    one receives the model's input tensor itself (no extra model call)."""
    usable = (_ENABLED[0] and isinstance(model, nn.Module) and x.is_floating_point()
              and not PER_SAMPLE_ROWS.get() and not _global_hooks())
    if not usable:
        return run(), None
    key = (tuple(x.shape[1:]), x.dtype, x.device)
    per_model = _CACHE.setdefault(model, {})
    if key in per_model:
        ref = per_model[key]
        m = ref() if ref is not None else None
        result = run()
    else:
        result, m = _recorded(model, run)
        per_model[key] = weakref.ref(m) if m is not None else None
    if m is None or _own_hooks(m) or "forward" in m.__dict__:
        return result, None
    return result, Entry(m)


def _recorded(model: nn.Module, run):
    """``run()`` with hooks that find the first affine module called on the model's
    own input tensor in the first model call."""
    state = {"input": None, "calls": 0, "found": None}
    handles = []

    def top(mod, args, kwargs):
        state["calls"] += 1
        if state["calls"] == 1 and len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor):
            state["input"] = args[0]
        else:
            state["input"] = None

    def pre(mod, args, kwargs):
        if (state["found"] is None and state["calls"] == 1 and state["input"] is not None
                and len(args) == 1 and not kwargs and args[0] is state["input"]):
            state["found"] = mod

    handles.append(model.register_forward_pre_hook(top, with_kwargs=True))
    try:
        for mod in model.modules():
            if type(mod) in _TYPES and mod is not model:
                handles.append(mod.register_forward_pre_hook(pre, with_kwargs=True))
        result = run()
    finally:
        for h in handles:
            h.remove()
        state["input"] = None
    return result, state["found"]
