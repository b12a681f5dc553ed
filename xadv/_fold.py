"""Eval-mode BatchNorm folded into the layer before it, for the passes of explainers.

In eval mode a BatchNorm layer is a fixed per-channel affine map, so a convolution (or a
linear layer) followed by it computes the same function as one convolution with rescaled
weights and a shifted bias. Input-gradient explainers (Saliency, Input x Gradient,
Integrated Gradients, SmoothGrad, GradientSHAP) and the forward-only ones (Occlusion,
LIME) only need that function and its gradient with respect to the input, so they run a
folded copy: on a ResNet it skips every BatchNorm pass forward and backward (about 7% of a
ResNet-18 or ResNet-50 gradient pass on a CPU). Attributions agree with the unfolded
model to float rounding (relative 1e-6 in float32).

The same traced copy also computes a class-token transformer's last block for the class
token alone (:mod:`xadv._tokens`; off inside ``class_token_pruning(False)``), and on a
CPU runs ``nn.MaxPool2d`` through the channels-last kernel
(:class:`FastMaxPool2d`; off inside ``fast_pooling(False)``), so the copy exists for
models with BatchNorm, with class-token attention, with max-pooling on a CPU, or any mix.

The copy is built once per model (``torch.fx`` trace, folding, one check pass on the
first rows of the call's input) and cached weakly. Only the folded layers are new; every
other module and parameter is the user's own object, so weight changes show up at once.
The folded weights are recomputed whenever a folded layer's parameters or statistics
change (an optimiser step, ``load_state_dict``, ``.to()``), and the copy is rebuilt when
the model's modules change. Nothing is folded, and the model itself runs, when:

* any module is in train mode (BatchNorm then uses batch statistics), or has hooks;
* the model cannot be traced by ``torch.fx`` (data-dependent control flow, ...), its
  forward needs more than one argument, or the check pass disagrees with the model;
* the call needs a graph (``create_graph=True``: gradients reach the user's parameters),
  attributes to a layer (Grad-CAM's family instead keeps its layer as itself in the
  copy: ``folded(model, x, keep=layer)``), or passes ``forward_args`` or several inputs;
* the input is not float32 / float64, or folding is switched off with
  ``xadv.explainers.folding(False)``.

The user's model is never changed: tracing runs its forward with symbolic values, and any
attribute that forward assigns is put back.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import weakref
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ._common import switched
from ._model import _hook_dicts

_ENABLED = [True]
_POOLING = [True]
_CACHE: "weakref.WeakKeyDictionary[nn.Module, Dict[tuple, _Plan]]" = weakref.WeakKeyDictionary()
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@contextlib.contextmanager
def folding(enabled: bool = True) -> Iterator[None]:
    """Switch BatchNorm folding on or off inside a ``with`` block (on by default).

    Explainers that only need the model's function and its input gradient run a copy in
    which every eval-mode BatchNorm is folded into the convolution or linear layer before
    it (same function, fewer passes; see :mod:`xadv._fold`). ``folding(False)`` makes them
    run the model itself, e.g. to time the difference or to rule the copy out.

    Examples
    --------
    >>> import torch, xadv
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.ReLU(),
    ...                           torch.nn.Flatten(), torch.nn.Linear(72, 3)).eval()
    >>> x = torch.rand(2, 1, 8, 8)
    >>> a = xadv.explainers.Saliency()(net, x, 0).attributions
    >>> with xadv.explainers.folding(False):
    ...     b = xadv.explainers.Saliency()(net, x, 0).attributions
    >>> bool(torch.allclose(a, b, atol=1e-6))
    True
    """
    with switched(_ENABLED, enabled):
        yield


@contextlib.contextmanager
def fast_pooling(enabled: bool = True) -> Iterator[None]:
    """Switch the channels-last max-pooling of the traced copy on or off inside a
    ``with`` block (on by default).

    On a CPU, PyTorch's max-pooling kernel for channels-first (NCHW) tensors is 2-3.5x
    slower than its channels-last kernel (2 threads, both layout changes counted:
    32x8x28x28 0.50 vs 0.19 ms, or 0.51 vs 0.27 ms with the indices a backward needs).
    Maximum is exact, so the traced copy of :mod:`xadv._fold` runs each ``nn.MaxPool2d``
    as: input to channels-last, pool, back to NCHW. With a gradient to take, the
    channels-last kernel also gives the argmax indices (the same first-of-ties positions)
    and the backward is the usual channels-first one on them. Values and gradients are
    bit for bit those of the model's own pooling.

    Examples
    --------
    >>> import torch, xadv
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
    ...                           torch.nn.Linear(36, 3)).eval()
    >>> x = torch.rand(2, 1, 8, 8)
    >>> occ = xadv.explainers.Occlusion(window=2)
    >>> with xadv.explainers.fast_pooling(False):
    ...     plain = occ(net, x, 0).attributions
    >>> bool(torch.allclose(occ(net, x, 0).attributions, plain, atol=1e-6))   # rows per pass may differ
    True
    """
    with switched(_POOLING, enabled):
        yield


def _own_copy(m: nn.Module, cls=None) -> nn.Module:
    """A shallow copy of ``m`` (as class ``cls``, default its own) with its own parameter,
    buffer and hook dictionaries: the same options, nothing shared that could change."""
    new = (cls or type(m)).__new__(cls or type(m))
    new.__dict__ = {k: (type(v)(v) if isinstance(v, dict) else v) for k, v in m.__dict__.items()}
    return new


class _ChannelsLastMaxPool(torch.autograd.Function):
    """Max-pooling of a channels-first tensor by the channels-last kernel (values and
    indices), with the channels-first backward on those indices: the gradient of
    ``F.max_pool2d`` bit for bit (same maxima, same first-of-ties positions)."""

    @staticmethod
    def forward(ctx, x, kernel, stride, padding, dilation, ceil_mode):
        out, idx = F.max_pool2d(x.contiguous(memory_format=torch.channels_last), kernel, stride, padding, dilation,
                                ceil_mode=ceil_mode, return_indices=True)
        idx = idx.contiguous()
        ctx.save_for_backward(x, idx)
        ctx.opts = (kernel, stride, padding, dilation, ceil_mode)
        ctx.mark_non_differentiable(idx)
        return out.contiguous()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        x, idx = ctx.saved_tensors
        kernel, stride, padding, dilation, ceil_mode = ctx.opts
        gx = torch.ops.aten.max_pool2d_with_indices_backward(g.contiguous(), x, kernel, stride, padding, dilation,
                                                             ceil_mode, idx)
        return gx, None, None, None, None, None


class FastMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` (same options, no parameters) that pools a channels-first CPU
    tensor through the channels-last kernel and returns it channels-first: the same
    values, 2-3.5x faster (see :func:`fast_pooling`). When a gradient flows through it,
    the channels-last kernel also gives the indices and the backward is the usual
    channels-first one on them (a bit-identical gradient). Anything else (another device
    or layout, unbatched or one-channel input, ``return_indices``) runs the usual pooling."""

    @classmethod
    def like(cls, m: nn.MaxPool2d) -> "FastMaxPool2d":
        return _own_copy(m, cls)

    def forward(self, x):
        if not (isinstance(x, torch.Tensor) and x.dim() == 4 and x.device.type == "cpu" and x.shape[1] > 1
                and not self.return_indices and x.is_contiguous()):
            return super().forward(x)
        if x.requires_grad and torch.is_grad_enabled():
            pair = nn.modules.utils._pair
            return _ChannelsLastMaxPool.apply(x, pair(self.kernel_size), pair(self.stride), pair(self.padding),
                                              pair(self.dilation), bool(self.ceil_mode))
        out = F.max_pool2d(x.contiguous(memory_format=torch.channels_last), self.kernel_size, self.stride,
                           self.padding, self.dilation, ceil_mode=self.ceil_mode)
        return out.contiguous()


def _fast_pool_ok(m) -> bool:
    return type(m) is nn.MaxPool2d and not m.return_indices and "forward" not in m.__dict__


class _Plan:
    """What is cached per model: its module structure, the folded copy (or None when
    folding does not apply) and the (layer, norm, folded layer) triples."""

    __slots__ = ("structure", "key", "module", "pairs", "stamp")

    def __init__(self, structure, key, module, pairs):
        self.structure = structure
        self.key = key
        self.module = module
        self.pairs = pairs
        self.stamp = None


def _stamp(pairs) -> Tuple:
    """Identity and version of every tensor a folded layer is computed from."""
    out: List[Any] = []
    for layer, bn, _ in pairs:
        for t in (layer.weight, layer.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var):
            out.append(None if t is None else (id(t), t.data_ptr(), t._version, t.dtype, t.device))
        out.append(bn.eps)
    return tuple(out)


def _refold(pairs) -> None:
    from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights
    with torch.no_grad():
        for layer, bn, fused in pairs:
            gain = bn.weight if bn.weight is not None else torch.ones_like(bn.running_mean)
            shift = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
            fuse = fuse_conv_bn_weights if isinstance(layer, _CONV) else fuse_linear_bn_weights
            w, b = fuse(layer.weight, layer.bias, bn.running_mean, bn.running_var, bn.eps, gain, shift)
            fused.weight = nn.Parameter(w.detach().clone(), requires_grad=False)
            fused.bias = nn.Parameter(b.detach().clone(), requires_grad=False)


def _one_argument(model) -> Optional[dict]:
    """``concrete_args`` for tracing ``model(x)``: the defaults of every parameter after
    the first, or None when the forward needs more than one argument or takes ``*args``."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    if not params or params[0].kind not in (inspect.Parameter.POSITIONAL_ONLY,
                                            inspect.Parameter.POSITIONAL_OR_KEYWORD):
        return None
    concrete = {}
    for p in params[1:]:
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            return None
        if p.default is inspect.Parameter.empty:
            return None
        concrete[p.name] = p.default
    return concrete


def _trace(model, modules, leaves=()):
    """``torch.fx.symbolic_trace(model)`` with the modules' attributes put back afterwards
    (a forward that stores something on ``self`` would otherwise keep a symbolic value);
    the modules in ``leaves`` are called as themselves (one node each), not traced through."""
    import torch.fx as fx
    concrete = _one_argument(model)
    if concrete is None:
        return None
    saved = [(m, dict(m.__dict__)) for m in modules]
    try:
        if not leaves:
            return fx.symbolic_trace(model, concrete_args=concrete or None)

        class Tracer(fx.Tracer):
            def is_leaf_module(self, m, qualname):
                return any(m is q for q in leaves) or super().is_leaf_module(m, qualname)
        graph = Tracer().trace(model, concrete_args=concrete or None)
        return fx.GraphModule(model, graph, model.__class__.__name__)
    except Exception:
        return None
    finally:
        for m, d in saved:
            if m.__dict__.keys() != d.keys() or any(m.__dict__[k] is not v for k, v in d.items()):
                m.__dict__.clear()
                m.__dict__.update(d)


def _build(model, modules, x, fold: bool = True, prune: bool = False,
           pool: bool = False, keep: Optional[nn.Module] = None) -> Tuple[Optional[nn.Module], list]:
    import torch.fx as fx
    gm = _trace(model, modules, () if keep is None else (keep,))
    if gm is None:
        return None, []
    named = dict(gm.named_modules())
    probe = x[:2].detach()
    if prune:   # shapes for the class-token analysis (xadv._tokens), from the probe rows
        from torch.fx.passes.shape_prop import ShapeProp
        try:
            with torch.no_grad():
                ShapeProp(gm).propagate(probe)
        except Exception:
            prune = False
    graph = copy.deepcopy(gm.graph)
    uses: dict = {}
    for node in graph.nodes:
        if node.op == "call_module":
            uses[node.target] = uses.get(node.target, 0) + 1
    pairs, replaced = [], {}
    for node in list(graph.nodes) if fold else ():
        if node.op != "call_module" or not isinstance(named.get(node.target), _BN):
            continue
        bn = named[node.target]
        prev = node.args[0] if node.args else None
        if (len(node.args) != 1 or node.kwargs or not isinstance(prev, fx.Node) or prev.op != "call_module"
                or len(prev.users) != 1 or uses.get(node.target) != 1 or uses.get(prev.target) != 1):
            continue
        layer = named.get(prev.target)
        if keep is not None and (layer is keep or bn is keep):
            continue   # the kept module's own output must stay observable
        ok = isinstance(layer, _CONV) and type(bn) is {nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d,
                                                       nn.Conv3d: nn.BatchNorm3d}.get(type(layer))
        ok = ok or (type(layer) is nn.Linear and type(bn) is nn.BatchNorm1d)
        if (not ok or not bn.track_running_stats or bn.running_mean is None or bn.running_var is None
                or layer.weight.dtype != x.dtype or layer.weight.device != x.device):
            continue
        # a shallow copy with its own parameter and hook dictionaries: the same options
        # (stride, padding, groups, ...), new weights set by _refold
        fused = _own_copy(layer)
        pairs.append((layer, bn, fused))
        replaced[prev.target] = fused
        node.replace_all_uses_with(prev)
        graph.erase_node(node)
    if prune:
        from ._tokens import prune_class_token
        replaced.update(prune_class_token(graph, named))
    for node in graph.nodes if pool else ():
        m = named.get(node.target) if node.op == "call_module" else None
        if _fast_pool_ok(m) and m is not keep and node.target not in replaced:
            replaced[node.target] = FastMaxPool2d.like(m)
    if not replaced:
        return None, []
    if pairs:
        _refold(pairs)
    root = {}
    for node in graph.nodes:
        if node.op == "call_module":
            root[node.target] = replaced.get(node.target) or gm.get_submodule(node.target)
        elif node.op == "get_attr":
            obj = gm
            for part in node.target.split("."):
                obj = getattr(obj, part)
            root[node.target] = obj
    graph.lint()
    folded = fx.GraphModule(root, graph, class_name="XadvFolded")
    folded._xadv_folded = True
    folded._xadv_source = weakref.ref(model)   # rows-per-pass policies are kept per user model
    folded.eval()
    # one check pass on the first rows: the copy must compute what the model computes
    return (folded, pairs) if computes_the_same(model, folded, probe) else (None, [])


def computes_the_same(model, copy_, probe: torch.Tensor, exact: bool = False) -> bool:
    """Whether ``copy_(probe)`` gives ``model(probe)`` (same structure, shapes, dtypes;
    floating values within float rounding of the folded weights, or bit for bit with
    ``exact``); False when either raises."""
    try:
        with torch.no_grad():
            a, b = model(probe), copy_(probe)
    except Exception:
        return False
    fa, fb = _leaves(a), _leaves(b)
    if fa is None or fb is None or len(fa) != len(fb):
        return False
    for u, v in zip(fa, fb):
        if isinstance(u, torch.Tensor) != isinstance(v, torch.Tensor):
            return False
        if isinstance(u, torch.Tensor):
            if u.shape != v.shape or u.dtype != v.dtype:
                return False
            if u.is_floating_point() and not exact:
                scale = float(u.abs().max()) if u.numel() else 0.0
                tol = (1e-4 if u.dtype == torch.float32 else 1e-9) * max(scale, 1.0)
                if u.numel() and float((u - v).abs().max()) > tol:
                    return False
            elif not torch.equal(u, v):
                return False
        elif u != v:
            return False
    return True


def _leaves(o) -> Optional[list]:
    """The tensors and other values of a model output (tensor, tuple, list, dict such as a
    ``ModelOutput``), in order; None for anything else."""
    if isinstance(o, torch.Tensor) or o is None or isinstance(o, (int, float, bool, str)):
        return [o]
    if isinstance(o, (tuple, list)):
        parts = [_leaves(v) for v in o]
    elif isinstance(o, dict):
        parts = [[k] for k in o.keys()] + [_leaves(v) for v in o.values()]
    else:
        return None
    if any(p is None for p in parts):
        return None
    return [v for p in parts for v in p]


def _structure(model, modules) -> Tuple:
    """Identity of every module, parameter and buffer: the traced copy refers to these objects."""
    return (tuple(map(id, modules)), tuple(map(id, model.parameters())), tuple(map(id, model.buffers())))


#: traced copies kept per model (input shapes, kept layers): the least recently used go first
_PLANS_PER_MODEL = 4


def folded(model, x, keep: Optional[nn.Module] = None) -> Any:
    """``model``, or its copy with eval-mode BatchNorm folded, for passes on inputs like ``x``.

    Parameters
    ----------
    model : nn.Module or callable
        The model an explainer was given.
    x : Tensor (N, ...)
        The call's input; its first two rows feed the check pass when the copy is built.
    keep : nn.Module, optional
        A module of ``model`` that the copy must call as itself, so that a forward hook on
        it sees its output (Grad-CAM's layer): it is not traced into, folded or replaced,
        and the class-token shortcut is not used.

    Returns
    -------
    The folded copy (a ``torch.fx.GraphModule`` sharing every unfolded module with
    ``model``) or ``model`` itself when folding does not apply (see the module docstring).
    """
    from . import _tokens
    if (not isinstance(model, nn.Module) or isinstance(model, torch.jit.ScriptModule)
            or getattr(model, "_xadv_folded", False) or not isinstance(x, torch.Tensor)
            or x.dtype not in (torch.float32, torch.float64) or x.dim() < 2 or x.shape[0] < 1):
        return model
    modules = list(model.modules())
    fold = _ENABLED[0] and any(isinstance(m, _BN) for m in modules)
    prune = keep is None and _tokens.enabled() and any(isinstance(m, _tokens.CANDIDATES) for m in modules)
    pool = _POOLING[0] and x.device.type == "cpu" and any(_fast_pool_ok(m) for m in modules)
    if not (fold or prune or pool):
        return model
    if any(m.training for m in modules) or any(_hook_dicts(m) for m in modules):
        return model
    structure = _structure(model, modules)
    if keep is not None and (keep is model or not any(m is keep for m in modules)):
        return model
    key = (x.dtype, x.device, tuple(x.shape[1:]), fold, prune, pool, None if keep is None else id(keep))
    plans = _CACHE.setdefault(model, {})
    plan = plans.pop(key, None)
    if plan is None or plan.structure != structure:
        try:
            module, pairs = _build(model, modules, x, fold, prune, pool, keep)
        except Exception:
            module, pairs = None, []
        plan = _Plan(structure, key, module, pairs)
        plan.stamp = _stamp(pairs)
    plans[key] = plan   # most recently used last
    while len(plans) > _PLANS_PER_MODEL:
        del plans[next(iter(plans))]
    if plan.module is None:
        return model
    stamp = _stamp(plan.pairs)
    if stamp != plan.stamp:
        _refold(plan.pairs)
        plan.stamp = stamp
    return plan.module
