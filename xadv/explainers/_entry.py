"""The model's entry layer: the affine layer (``Conv1d/2d/3d``, ``Linear``) that the input
goes into first, when there is one, and three exact ways to do less work with it.

The input's first layer is cheap in multiply-adds but not in time: with 1-3 input
channels its kernels run far below the rest of the network. Measured at 32-64 rows with
2 threads, its backward (the input gradient) is 22% of a forward+backward pass of the
digits CNN, 14% of a ResNet-18 at 3x64x64, 4.6% of ViT-Tiny and 3.2% of a ResNet-50
(its forward: 4.7%, 2.9%, 0.7%, 0.7%).

* **Integrated Gradients** (:func:`with_entry`, :meth:`Entry.returning`): on the path
  ``x_a = x0 + a (x - x0)`` the entry's output is ``L(x0) + a W (x - x0)``, two entry
  passes per image instead of one per step, and ``sum_k w_k grad_x f(x_k) =
  W^T sum_k w_k grad_h f`` with ``grad_h`` taken at the entry's output, so its backward
  runs once per image.
* **Occlusion** (:meth:`Entry.add_box`): an occluded input differs from the input only
  inside the window, so the entry convolution is computed for the outputs that see the
  window, added to its output on the input.
* **Gradient maps and loss-gradient attacks** (:func:`fast_input_gradient`): the entry
  Conv2d takes its input gradient by one matrix product and a fold instead of the
  convolution's backward (2.2x faster on the digits CNN, 2.3x on ViT-Tiny's patch
  embedding, 1.2x on a ResNet stem).

The model itself still runs on the real rows (anything else it reads from them, shapes
or a second branch, sees the true input). In the first two, the entry module returns
the precomputed activation only for exactly the tensor object it was handed for that
pass (a check by identity: a shared module applied to anything else computes as usual),
and a gradient that reaches the input by another route is added. Results agree with the
plain computation to float rounding (tests: float64 to 1e-10). A model whose maps hinge
on exact ties (max-pooling over repeated pixel values) can see such rounding move a
gradient between tied positions, as any change of summation order would.

The entry is the first ``Conv*d``/``Linear`` module of exactly that class (not a
subclass) that receives the model's input tensor itself. It is found by hooks during a
model's first call on an input shape, dtype and device (no extra model call) and cached
weakly. Not used with ``create_graph``, for TorchScript or non-``nn.Module`` models,
with global module hooks, or inside ``entry_factoring(False)``; the first two need no
hooks on the entry module itself.
"""
from __future__ import annotations

import contextlib
import weakref
from typing import Any, Callable, Iterator, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._common import switched
from ._attention import fast_self_attention


_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()
_ENABLED = [True]


@contextlib.contextmanager
def entry_factoring(enabled: bool = True) -> Iterator[None]:
    """Turn the entry-layer shortcuts (IG's factored path, Occlusion's window boxes, the
    entry Conv2d's matrix-product input gradient) on or off inside the block; on by
    default. Results agree either way to float rounding.

    >>> import torch, xadv
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(64, 3))
    >>> x = torch.rand(2, 1, 6, 6)
    >>> ig = xadv.explainers.IntegratedGradients(steps=8)
    >>> with xadv.explainers.entry_factoring(False):
    ...     plain = ig(net, x, target=0).attributions   # the first layer on every path row
    >>> torch.allclose(ig(net, x, target=0).attributions, plain, atol=1e-6)
    True
    """
    with switched(_ENABLED, enabled):
        yield


def _global_hooks() -> bool:
    from torch.nn.modules import module as M
    return any(bool(getattr(M, name, None)) for name in (
        "_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
        "_global_backward_pre_hooks", "_global_forward_hooks_always_called"))


#: ids of the hooks :class:`_Recorder` puts on modules (not the user's)
_OURS: set = set()


def _own_hooks(m: nn.Module) -> bool:
    """Whether ``m`` has hooks of its own (other than a recorder's)."""
    for name in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
        d = getattr(m, name, None)
        if d and any(k not in _OURS for k in d):
            return True
    return False


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

        forward._xadv_entry = True
        m.forward = forward
        try:
            yield
        finally:
            if own is not None:
                m.forward = own
            else:
                del m.forward


def _usable(model, x) -> bool:
    # TorchScript modules take no hooks (and their forward cannot be replaced)
    return (_ENABLED[0] and isinstance(model, nn.Module) and not isinstance(model, torch.jit.ScriptModule)
            and x.is_floating_point() and not _global_hooks())


def _key(x: torch.Tensor) -> tuple:
    return (tuple(x.shape[1:]), x.dtype, x.device)


def _checked(m: Optional[nn.Module]) -> Optional[Entry]:
    if m is None or _own_hooks(m):
        return None
    own = m.__dict__.get("forward")
    if own is not None and not getattr(own, "_xadv_entry", False):
        return None   # somebody else's forward on the instance
    return Entry(m)


_UNKNOWN = object()


def _cached(model, x):
    """The cached entry module (or None: known to have none), or ``_UNKNOWN``."""
    ref = _CACHE.get(model, {}).get(_key(x), _UNKNOWN)
    if ref is _UNKNOWN or ref is None:
        return ref
    m = ref()
    return _UNKNOWN if m is None else m


class _Recorder:
    """Hooks that find, in the model's next call, the first affine module called on the
    model's own input tensor, and cache the answer for ``x``'s shape. ``on_found(module)``
    is called as soon as it is seen (its later calls can then be changed) and
    ``replace(module, input)`` may give the output that call returns instead (None: keep)."""

    def __init__(self, model: nn.Module, x: torch.Tensor, on_found: Optional[Callable] = None,
                 replace: Optional[Callable] = None):
        self.model, self.key, self.on_found, self.replace = model, _key(x), on_found, replace
        self.calls, self.input, self.found, self.pending = 0, None, None, False
        self.handles = [model.register_forward_pre_hook(self._top, with_kwargs=True),
                        model.register_forward_hook(self._done, with_kwargs=True)]
        for mod in model.modules():
            if type(mod) in _TYPES and mod is not model:   # exact classes: no ScriptModule among them
                self.handles.append(mod.register_forward_pre_hook(self._pre, with_kwargs=True))
                self.handles.append(mod.register_forward_hook(self._post, with_kwargs=True))
        _OURS.update(h.id for h in self.handles)

    def _top(self, mod, args, kwargs):
        self.calls += 1
        first = self.calls == 1 and len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor)
        self.input = args[0] if first else None

    def _pre(self, mod, args, kwargs):
        if (self.found is None and self.input is not None and len(args) == 1 and not kwargs
                and args[0] is self.input):
            self.found, self.pending = mod, True
            if self.on_found is not None:
                self.on_found(mod)

    def _post(self, mod, args, kwargs, out):
        if self.pending and mod is self.found:
            self.pending = False
            if self.replace is not None:
                return self.replace(mod, args[0])
        return None

    def _done(self, mod, args, kwargs, out):
        if self.calls == 1:
            _CACHE.setdefault(self.model, {})[self.key] = (weakref.ref(self.found) if self.found is not None
                                                           else None)
        self.input = None

    def close(self) -> None:
        for h in self.handles:
            h.remove()
            _OURS.discard(h.id)
        self.handles, self.input = [], None


def with_entry(model, x: torch.Tensor, run: Callable[[], Any]) -> Tuple[Any, Optional[Entry]]:
    """``(run(), entry)``: ``run`` is a call that runs ``model`` on rows like ``x`` (N, ...),
    such as the clean pass. The entry of ``model`` for inputs shaped like ``x`` is cached;
    the first time, forward hooks record during ``run`` which affine module receives the
    model's input tensor itself (no extra model call)."""
    if not _usable(model, x):
        return run(), None
    m = _cached(model, x)
    if m is not _UNKNOWN:
        return run(), _checked(m)
    rec = _Recorder(model, x)
    try:
        result = run()
    finally:
        rec.close()
    return result, _checked(rec.found)


def entry_gradients(model, entry: Entry, x: torch.Tensor, h: torch.Tensor, target: torch.Tensor,
                    score) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The score gradients of the rows ``x`` (R, ...) when the model runs on ``x`` with
    the entry's output replaced by ``h`` (R, ...; its output on ``x``, or on the path as
    Integrated Gradients computes it): ``(at the entry's output, at the input)``, the
    second None unless the model also reads its input by another route."""
    from .base import forward, select_score

    path = x.detach().requires_grad_(True)
    leaf = h.detach().requires_grad_(True)
    with torch.enable_grad():
        # a copy, so that an in-place operation after the entry (ReLU(inplace=True)) leaves
        # the tensor the gradient is taken at untouched
        with entry.returning(path, leaf.clone()):
            o = forward(model, path)
        s = select_score(o, target, score)
        gh, gx = torch.autograd.grad(s.sum(), (leaf, path), allow_unused=True)
    return (torch.zeros_like(leaf) if gh is None else gh), gx


def _input_gradient_conv2d(m: nn.Conv2d, g: torch.Tensor, shape) -> torch.Tensor:
    """The input gradient of a (groups=1) Conv2d for the output cotangent ``g``: one
    matrix product with the weight and a fold of the patches (for a patch embedding,
    kernel = stride, a reshape). Faster than the convolution's own backward for few
    input channels: 2.2x on the digits CNN's 1-channel 3x3, 2.3x on ViT-Tiny's patch
    embedding, 1.2x on a ResNet stem (32-64 rows, 2 threads)."""
    n, c = shape[0], shape[1]
    kh, kw = m.kernel_size
    w = m.weight.reshape(m.out_channels, -1)                          # (C_out, C_in kh kw)
    oh, ow = g.shape[2], g.shape[3]
    if (m.stride == (kh, kw) and m.padding == (0, 0) and m.dilation == (1, 1)
            and shape[2] == oh * kh and shape[3] == ow * kw):
        cols = torch.matmul(g.permute(0, 2, 3, 1), w)                 # (N, oh, ow, C_in kh kw)
        return cols.reshape(n, oh, ow, c, kh, kw).permute(0, 3, 1, 4, 2, 5).reshape(shape)
    cols = torch.matmul(w.t(), g.reshape(n, m.out_channels, oh * ow))  # (N, C_in kh kw, L)
    return F.fold(cols, tuple(shape[2:]), m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride)


class _EntryConv2d(torch.autograd.Function):
    """The entry Conv2d's own forward, with :func:`_input_gradient_conv2d` as backward."""

    @staticmethod
    def forward(ctx, x, module):
        ctx.module = module
        ctx.shape = x.shape
        return type(module).forward(module, x)

    @staticmethod
    def backward(ctx, g):
        return _input_gradient_conv2d(ctx.module, g, ctx.shape), None


def _fast_eligible(m: Optional[nn.Module]) -> bool:
    # hooks on the module are no obstacle here: it computes the same output, only its
    # backward is another formula (a full backward hook wraps whatever forward runs)
    own = m.__dict__.get("forward") if m is not None else None
    return (m is not None and type(m) is nn.Conv2d and m.groups == 1 and m.padding_mode == "zeros"
            and not isinstance(m.padding, str) and not m.weight.requires_grad
            and (m.bias is None or not m.bias.requires_grad)
            and (own is None or getattr(own, "_xadv_entry", False)))


def _wants_fast(m: nn.Module, inp) -> bool:
    """A call whose input gradient will be taken (and not the weight's)."""
    return (isinstance(inp, torch.Tensor) and inp.requires_grad and torch.is_grad_enabled() and inp.dim() == 4
            and inp.dtype == m.weight.dtype and not m.weight.requires_grad
            and not torch.is_autocast_enabled(inp.device.type))


def _patch_fast(m: nn.Module):
    """Give ``m`` the fast input-gradient forward; returns the undo."""
    own = m.__dict__.get("forward")
    original = own if own is not None else type(m).forward.__get__(m)

    def forward(inp, *args, **kwargs):
        if args or kwargs or not _wants_fast(m, inp):
            return original(inp, *args, **kwargs)
        return _EntryConv2d.apply(inp, m)

    forward._xadv_entry = True
    m.forward = forward

    def undo():
        if own is not None:
            m.forward = own
        else:
            m.__dict__.pop("forward", None)
    return undo


@contextlib.contextmanager
def fast_input_gradient(model, x: torch.Tensor) -> Iterator[None]:
    """Inside the block, the model's entry Conv2d (groups 1, zero padding, frozen
    parameters) takes its input gradient by :func:`_input_gradient_conv2d` (the same
    forward values; the gradient agrees to float rounding), and its self-attention
    modules compute batch-first (:func:`xadv.explainers._attention.fast_self_attention`).
    For input-gradient work without ``create_graph``: Saliency, SmoothGrad, GradientSHAP,
    IG and the loss-gradient attacks. No extra model call: when the entry of the model
    and input shape is not cached yet, it is found during the block's first model call
    and changed from its next call on."""
    with fast_self_attention(model), _fast_entry_gradient(model, x):
        yield


@contextlib.contextmanager
def _fast_entry_gradient(model, x: torch.Tensor) -> Iterator[None]:
    if not _usable(model, x):
        yield
        return
    undo = []

    def found(mod):
        if _fast_eligible(mod):
            undo.append(_patch_fast(mod))

    def replace(mod, inp):
        # the call in which the entry was found: its output again, through the fast backward
        # (so that the first call gives the same gradients as the later ones)
        if undo and _wants_fast(mod, inp):
            return _EntryConv2d.apply(inp, mod)
        return None

    m = _cached(model, x)
    rec = None
    if m is _UNKNOWN:
        rec = _Recorder(model, x, on_found=found, replace=replace)
    else:
        found(m)
    try:
        yield
    finally:
        if rec is not None:
            rec.close()
        for u in undo:
            u()
