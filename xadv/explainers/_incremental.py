"""Incremental inference for Occlusion: each occluded image computed only where it
differs from the image (after Nakandala et al., 2019, "Incremental and approximate
inference for faster occlusion-based deep CNN explanations").

An occluded input equals the image outside its window. Through a convolution, a
pointwise activation, max-pooling or a residual add, the difference stays inside a box
that grows by each layer's receptive field: a 32 px window on a 224 px image differs in
an 11x11 to 17x17 box of a ResNet-50's 56x56 first-stage maps (4-9% of them) and a
10x10 to 16x16 box of its 28x28 second-stage maps.
So each occluded row is carried as ``clean + delta``: the image's own activation
(computed once per image) and the difference inside a box, and each layer is computed on
the box alone:

* ``Conv2d``: ``delta_out = conv(delta)`` without the bias on the box plus its halo (the
  convolution is linear, and its zero padding is the same for both terms);
* ``BatchNorm2d`` (eval, when not folded): ``delta`` times the per-channel scale;
* a pointwise activation ``f``: ``f(clean + delta) - f(clean)`` on the box;
* ``MaxPool2d``: the pooled box of ``clean + delta`` (padding ``-inf``) minus the pooled
  clean box;
* ``a + b``: both differences on the union of the two boxes.

Once a box covers more than :data:`MAX_SHARE` of its map (or the value reaches any other
operation, such as the global pooling, a flatten or a view), the rows are built in full
(``clean`` with ``delta`` added in the box) and the rest of the model runs on them as
usual. The model is the ``torch.fx`` graph of :mod:`xadv._fold` (BatchNorm folded), or a
trace of the model used only when it gives the model's outputs on the call's first two
rows; models that cannot be traced run as before. Results agree with the plain forward
passes to float rounding (tests, float64: model outputs to 1e-12 and maps to 1e-10 against
plain passes, maps to 1e-6 against captum's ``Occlusion``, which sums in float32).
"""
from __future__ import annotations

import contextlib
import operator
import weakref
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._common import switched
from .._fold import FastMaxPool2d
from ..nn import normalized

_ENABLED = [True]
#: A box covering more than this share of its map is built in full.
MAX_SHARE = 0.5
#: Smaller images (28x28 digits) run as plain passes: there a pass costs little more than
#: the bookkeeping of the boxes would, and the entry shortcut alone is as fast.
MIN_PIXELS = 32 * 32
_CACHE: "weakref.WeakKeyDictionary[nn.Module, object]" = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def incremental_occlusion(enabled: bool = True) -> Iterator[None]:
    """Turn Occlusion's incremental inference (:mod:`xadv.explainers._incremental`: each
    occluded row computed only inside the box where it differs from the image) on or off
    inside the block; on by default. Results agree either way to float rounding.

    >>> import torch, xadv
    >>> from xadv.zoo.architectures import resnet18
    >>> net = resnet18(num_classes=4, width=8)
    >>> x = torch.rand(2, 3, 32, 32)
    >>> occ = xadv.explainers.Occlusion(window=8, stride=8)
    >>> with xadv.explainers.incremental_occlusion(False):
    ...     plain = occ(net, x, target=0).attributions
    >>> torch.allclose(occ(net, x, target=0).attributions, plain, atol=1e-5)
    True
    """
    with switched(_ENABLED, enabled):
        yield


_ACTIVATIONS = {
    nn.ReLU: lambda m, t: F.relu(t), nn.ReLU6: lambda m, t: F.relu6(t), nn.SiLU: lambda m, t: F.silu(t),
    nn.GELU: lambda m, t: F.gelu(t, approximate=m.approximate), nn.Sigmoid: lambda m, t: torch.sigmoid(t),
    nn.Tanh: lambda m, t: torch.tanh(t), nn.Hardswish: lambda m, t: F.hardswish(t),
    nn.LeakyReLU: lambda m, t: F.leaky_relu(t, m.negative_slope), nn.ELU: lambda m, t: F.elu(t, m.alpha),
    nn.Mish: lambda m, t: F.mish(t), nn.Identity: lambda m, t: t,
    nn.Dropout: lambda m, t: t,   # the model is in eval mode (checked)
}
_FUNCTIONS = {F.relu: torch.relu, torch.relu: torch.relu, torch.sigmoid: torch.sigmoid, torch.tanh: torch.tanh,
              F.silu: F.silu, F.gelu: F.gelu}
_ADDS = (operator.add, torch.add)


class _Inc:
    """Rows ``j * m + i`` equal to ``clean[i] + delta[j * m + i]`` placed at the box of
    window ``j``, which starts at ``(y0[j], x0[j])``; ``delta`` (k * m, C, h, w)."""

    __slots__ = ("node", "delta", "y0", "x0")

    def __init__(self, node, delta, y0: List[int], x0: List[int]):
        self.node, self.delta, self.y0, self.x0 = node, delta, y0, x0


def _own_forward(m) -> bool:
    """No forward of the instance's own, other than the entry shortcut's (._entry), which
    computes the module's forward when no gradient is taken."""
    f = m.__dict__.get("forward")
    return f is None or getattr(f, "_xadv_entry", False)


def _conv_ok(m) -> bool:
    return (type(m) is nn.Conv2d and m.padding_mode == "zeros" and not isinstance(m.padding, str)
            and _own_forward(m))


def _pool_ok(m) -> bool:
    # FastMaxPool2d: the traced copy's pooling (same values)
    return (type(m) in (nn.MaxPool2d, FastMaxPool2d) and not m.ceil_mode and not m.return_indices
            and _pair(m.dilation) == (1, 1) and "forward" not in m.__dict__)


def _bn_ok(m) -> bool:
    return (type(m) is nn.BatchNorm2d and not m.training and m.running_mean is not None
            and "forward" not in m.__dict__)


def _pair(v) -> Tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _graph_of(model, x: torch.Tensor):
    """The fx graph module to run incrementally (the folded copy is one already, checked
    against the model when it was built), or None. Another model is traced once per
    module structure and input shape and used only when the trace computes what the model
    computes on the call's first two rows (a forward that branches on its own state, say,
    would not)."""
    import torch.fx as fx
    if isinstance(model, fx.GraphModule):
        return model
    if not isinstance(model, nn.Module) or isinstance(model, torch.jit.ScriptModule):
        return None
    key = (tuple(map(id, model.modules())), tuple(x.shape[1:]), x.dtype, x.device)
    got = _CACHE.get(model)
    if got is not None and got[0] == key:
        return got[1]
    from .._fold import _trace, computes_the_same
    try:
        gm = _trace(model, list(model.modules()))
    except Exception:
        gm = None
    if gm is not None and not computes_the_same(model, gm, x[:2].detach(), exact=True):
        gm = None
    _CACHE[model] = (key, gm)
    return gm


def usable(model, x: torch.Tensor) -> Optional[object]:
    """The graph module for incremental Occlusion of ``x`` (N, C, H, W) on ``model``, or
    None (switched off, not a float image batch of at least :data:`MIN_PIXELS` pixels, a
    model in train mode or with hooks, or a graph whose input does not go straight into
    ``Conv2d`` layers)."""
    if not _ENABLED[0] or x.dim() != 4 or not x.is_floating_point() or x.shape[2] * x.shape[3] < MIN_PIXELS:
        return None
    from .._model import _hook_dicts
    from ._entry import _Recorder, _global_hooks
    if not isinstance(model, nn.Module) or _global_hooks():
        return None

    def foreign(d):   # hooks other than the entry recorder's (xadv.explainers._entry)
        return any(not isinstance(getattr(f, "__self__", None), _Recorder) for n, h in d.items()
                   if not n.endswith("_with_kwargs") and not n.endswith("_always_called") for f in h.values())
    mods = list(model.modules())
    if any(m.training for m in mods) or any(foreign(_hook_dicts(m) or {}) for m in mods):
        return None
    gm = _graph_of(model, x)
    if gm is None:
        return None
    places = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(places) != 1 or not places[0].users:
        return None
    named = dict(gm.named_modules())
    def into_convs(node) -> bool:   # Conv2d layers, possibly after xadv.nn.Normalize
        if node.op == "call_module":
            return _conv_ok(named.get(node.target))
        return node.op == "call_function" and node.target is normalized and all(map(into_convs, node.users))
    if not all(map(into_convs, places[0].users)):
        return None
    return gm


class Runner:
    """Forward passes of occluded rows of the ``m`` images ``x`` (m, C, H, W) on the graph
    module ``gm``; the images' own activations are computed as they are needed and kept
    for the next passes of the same images. Rows come in groups of ``m``, one group per
    window, and a group shares its box, so every gather and placement is ``k`` slice
    copies (no index tensors, no host synchronisation on a GPU)."""

    def __init__(self, gm, x: torch.Tensor):
        self.gm = gm
        self.named = dict(gm.named_modules())
        self.nodes = list(gm.graph.nodes)
        self.x = x
        self.m = x.shape[0]
        self.clean: Dict = {}

    # ------------------------------------------------------------ helpers
    def _gather(self, src: torch.Tensor, y0: List[int], x0: List[int], h: int, w: int) -> torch.Tensor:
        """(k * m, C, h, w): window j's box of ``src`` (m, C, H, W) for rows j * m + i."""
        return torch.cat([src[:, :, a:a + h, b:b + w] for a, b in zip(y0, x0)])

    def _place(self, delta: torch.Tensor, oy: List[int], ox: List[int], H: int, W: int,
               out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(k * m, C, H, W) zeros (or ``out``, added into) with group j's ``delta`` at
        (oy[j], ox[j]); the parts outside [0, H) x [0, W) are dropped (a strided layer
        whose kernel is smaller than its stride sees only some of its input)."""
        m = self.m
        h, w = delta.shape[2], delta.shape[3]
        buf = delta.new_zeros(delta.shape[:2] + (H, W)) if out is None else out
        for j, (a, b) in enumerate(zip(oy, ox)):
            a0, a1, b0, b1 = max(a, 0), min(a + h, H), max(b, 0), min(b + w, W)
            if a1 <= a0 or b1 <= b0:
                continue
            tgt = buf[j * m:(j + 1) * m, :, a0:a1, b0:b1]
            src = delta[j * m:(j + 1) * m, :, a0 - a:a1 - a, b0 - b:b1 - b]
            if out is None:
                tgt.copy_(src)
            else:
                tgt.add_(src)
        return buf

    def _clean(self, node, compute):
        if node not in self.clean:
            self.clean[node] = compute()
        return self.clean[node]

    def _full(self, v, k: int, cache: Dict):
        """A value as a tensor: an incremental value built in full (once per pass)."""
        if not isinstance(v, _Inc):
            return v
        if v.node not in cache:
            c = self.clean[v.node]
            rows = c.repeat((k,) + (1,) * (c.dim() - 1))
            cache[v.node] = self._place(v.delta, v.y0, v.x0, c.shape[2], c.shape[3], out=rows)
        return cache[v.node]

    @staticmethod
    def _out_box(y0: List[int], h: int, k: int, s: int, p: int, d: int, H_out: int):
        """Output box (starts per window, size) of a window op (kernel k, stride s,
        padding p, dilation d) whose input differs in the boxes [y0, y0 + h)."""
        size = min((h - 1 + d * (k - 1)) // s + 1, H_out)
        return [min(max(-(-(a + p - d * (k - 1)) // s), 0), H_out - size) for a in y0], size

    # ------------------------------------------------------------ one pass
    def __call__(self, change: torch.Tensor, boxes: Sequence[Tuple[int, int]]) -> torch.Tensor:
        """Model outputs for the rows ``j * m + i``: image ``i`` with ``change[j * m + i]``
        (k * m, C, h, w) added in window ``j``'s box starting at ``boxes[j] = (y0, x0)``."""
        k = len(boxes)
        y0, x0 = [int(b[0]) for b in boxes], [int(b[1]) for b in boxes]
        env: Dict = {}
        full_cache: Dict = {}
        for node in self.nodes:
            if node.op == "placeholder":
                self.clean.setdefault(node, self.x)
                env[node] = _Inc(node, change, y0, x0)
                continue
            if node.op == "output":   # a tensor, or a tuple / dict of them, in full
                return torch.fx.node.map_arg(node.args[0], lambda a: self._full(env[a], k, full_cache))
            incs = [a for a in node.all_input_nodes if isinstance(env.get(a), _Inc)]
            got = self._step(node, env) if incs else None
            if got is None:   # as the model computes it, on full rows
                def load(a):
                    return self._full(env[a], k, full_cache) if isinstance(a, torch.fx.Node) else a
                args = torch.fx.node.map_arg(node.args, load)
                kwargs = torch.fx.node.map_arg(node.kwargs, load)
                if node.op == "call_module":
                    got = self.gm.get_submodule(node.target)(*args, **kwargs)
                elif node.op == "call_function":
                    got = node.target(*args, **kwargs)
                elif node.op == "call_method":
                    got = getattr(args[0], node.target)(*args[1:], **kwargs)
                else:   # get_attr
                    got = self.gm
                    for part in node.target.split("."):
                        got = getattr(got, part)
            env[node] = got
            for a in node.all_input_nodes:   # free values no later node reads
                if a in env and all(u in env for u in a.users):
                    del env[a]
                    full_cache.pop(a, None)
        raise RuntimeError("graph without an output")

    def _step(self, node, env):
        """``node`` on incremental inputs, or None (to be computed on full rows)."""
        if node.op == "call_module" and len(node.args) == 1 and not node.kwargs:
            mod = self.named.get(node.target)
            a = env[node.args[0]]
            if not isinstance(a, _Inc):
                return None
            c_in = self.clean[a.node]
            if _conv_ok(mod):
                return self._conv(node, mod, a, c_in)
            if _pool_ok(mod):
                return self._pool(node, mod, a, c_in)
            if _bn_ok(mod):
                self._clean(node, lambda: mod(c_in))
                scale = mod.running_var.add(mod.eps).rsqrt()
                if mod.weight is not None:
                    scale = scale * mod.weight
                return _Inc(node, a.delta * scale[:, None, None].to(a.delta.dtype), a.y0, a.x0)
            fn = _ACTIVATIONS.get(type(mod))
            if fn is not None and _own_forward(mod):
                return self._pointwise(node, lambda t: fn(mod, t), a, c_in)
            return None
        if node.op == "call_function" and node.target is normalized and len(node.args) == 3 and not node.kwargs:
            a, mean, std = (env.get(v) if isinstance(v, torch.fx.Node) else v for v in node.args)
            if (isinstance(a, _Inc) and isinstance(mean, torch.Tensor) and isinstance(std, torch.Tensor)
                    and std.dim() == 1 and std.numel() == a.delta.shape[1]):
                c_in = self.clean[a.node]
                self._clean(node, lambda: normalized(c_in, mean, std))
                return _Inc(node, a.delta / std.to(a.delta.dtype)[:, None, None], a.y0, a.x0)
            return None
        if node.op == "call_function" and node.target in _FUNCTIONS and len(node.args) == 1 and not node.kwargs:
            a = env[node.args[0]]
            if isinstance(a, _Inc):
                return self._pointwise(node, _FUNCTIONS[node.target], a, self.clean[a.node])
            return None
        if (node.op == "call_function" and node.target in _ADDS and len(node.args) == 2 and not node.kwargs) or (
                node.op == "call_method" and node.target == "add" and len(node.args) == 2 and not node.kwargs):
            a, b = (env.get(v) if isinstance(v, torch.fx.Node) else v for v in node.args)
            if isinstance(a, _Inc) and isinstance(b, _Inc):
                return self._add(node, a, b)
        return None

    @staticmethod
    def _share_ok(h, w, H, W) -> bool:
        return h * w <= MAX_SHARE * H * W

    def _conv(self, node, mod, a: _Inc, c_in):
        c = self._clean(node, lambda: mod(c_in))
        (kh, kw), (sh, sw) = mod.kernel_size, mod.stride
        (ph, pw), (dh, dw) = mod.padding, mod.dilation
        H, W = c.shape[2], c.shape[3]
        h, w = a.delta.shape[2], a.delta.shape[3]
        oy, hh = self._out_box(a.y0, h, kh, sh, ph, dh, H)
        ox, ww = self._out_box(a.x0, w, kw, sw, pw, dw, W)
        if not self._share_ok(hh, ww, H, W):
            return None
        hin, win = (hh - 1) * sh + dh * (kh - 1) + 1, (ww - 1) * sw + dw * (kw - 1) + 1
        crop = self._place(a.delta, [p - (q * sh - ph) for p, q in zip(a.y0, oy)],
                           [p - (q * sw - pw) for p, q in zip(a.x0, ox)], hin, win)
        d = F.conv2d(crop, mod.weight, None, mod.stride, 0, mod.dilation, mod.groups)
        return _Inc(node, d, oy, ox)

    def _pool(self, node, mod, a: _Inc, c_in):
        c = self._clean(node, lambda: mod(c_in))
        kh, kw = _pair(mod.kernel_size)
        sh, sw = _pair(mod.stride if mod.stride is not None else mod.kernel_size)
        ph, pw = _pair(mod.padding)
        H, W = c.shape[2], c.shape[3]
        h, w = a.delta.shape[2], a.delta.shape[3]
        oy, hh = self._out_box(a.y0, h, kh, sh, ph, 1, H)
        ox, ww = self._out_box(a.x0, w, kw, sw, pw, 1, W)
        if not self._share_ok(hh, ww, H, W):
            return None
        hin, win = (hh - 1) * sh + kh, (ww - 1) * sw + kw
        padded = self._clean(("pad", node), lambda: F.pad(c_in, (pw, pw, ph, ph), value=float("-inf")))
        # the crops of the padded clean input start at output start * stride (>= 0)
        full = self._gather(padded, [q * sh for q in oy], [q * sw for q in ox], hin, win)
        full = self._place(a.delta, [p - (q * sh - ph) for p, q in zip(a.y0, oy)],
                           [p - (q * sw - pw) for p, q in zip(a.x0, ox)], hin, win, out=full)
        pooled = F.max_pool2d(full, (kh, kw), (sh, sw))
        return _Inc(node, pooled - self._gather(c, oy, ox, hh, ww), oy, ox)

    def _pointwise(self, node, f, a: _Inc, c_in):
        c = self._clean(node, lambda: f(c_in))
        h, w = a.delta.shape[2], a.delta.shape[3]
        before = self._gather(c_in, a.y0, a.x0, h, w)
        return _Inc(node, f(before + a.delta) - self._gather(c, a.y0, a.x0, h, w), a.y0, a.x0)

    def _add(self, node, a: _Inc, b: _Inc):
        ca, cb = self.clean[a.node], self.clean[b.node]
        if ca.shape != cb.shape:
            return None
        c = self._clean(node, lambda: ca + cb)
        H, W = c.shape[2], c.shape[3]
        ha, wa = a.delta.shape[2:]
        hb, wb = b.delta.shape[2:]
        y_lo = [min(p, q) for p, q in zip(a.y0, b.y0)]
        x_lo = [min(p, q) for p, q in zip(a.x0, b.x0)]
        hh = max(max(p + ha, q + hb) - lo for p, q, lo in zip(a.y0, b.y0, y_lo))
        ww = max(max(p + wa, q + wb) - lo for p, q, lo in zip(a.x0, b.x0, x_lo))
        if not self._share_ok(hh, ww, H, W):
            return None
        y0 = [min(v, H - hh) for v in y_lo]
        x0 = [min(v, W - ww) for v in x_lo]
        d = self._place(a.delta, [p - q for p, q in zip(a.y0, y0)], [p - q for p, q in zip(a.x0, x0)], hh, ww)
        d = self._place(b.delta, [p - q for p, q in zip(b.y0, y0)], [p - q for p, q in zip(b.x0, x0)], hh, ww, out=d)
        return _Inc(node, d, y0, x0)
