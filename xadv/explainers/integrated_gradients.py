"""Integrated Gradients with several baselines and quadrature rules."""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from .._adapter import ModelAdapter, repeat_rows, sample_rows
from .._validation import check_bounds, check_finite, check_positive_int, resolve_target
from ..explanation import Explanation
from ._layer import LayerOptions, add_layer_doc, capture_chunked, layer_path
from .base import Explainer, balanced_slices, check_score, forward, input_leaf, select_score
from .chunking import chunked_forward, clean_passes, rows_per_pass
from ._entry import entry_gradients, with_entry
from .._common import make_generator

_METHODS = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")
_BASELINES = ("zeros", "uniform", "blur", "mean")

#: rows (interpolation steps x samples) per forward pass when ``batch_size`` is None;
#: None lets the chunking policy choose (:mod:`xadv.explainers.chunking`)
DEFAULT_BATCH_ROWS: Optional[int] = None


def quadrature(steps: int, method: str) -> Tuple[np.ndarray, np.ndarray]:
    """Nodes ``alpha`` in [0, 1] and weights for integrating over the straight path.

    Riemann rules use equal weights ``1/steps``; the trapezoid rule puts half weight
    on both ends; Gauss-Legendre maps the Legendre nodes from [-1, 1] to [0, 1].
    """
    if method == "riemann_left":
        return np.arange(steps) / steps, np.full(steps, 1.0 / steps)
    if method == "riemann_right":
        return np.arange(1, steps + 1) / steps, np.full(steps, 1.0 / steps)
    if method == "riemann_middle":
        return (np.arange(steps) + 0.5) / steps, np.full(steps, 1.0 / steps)
    if method == "riemann_trapezoid":
        if steps < 2:
            raise ValueError("the trapezoid rule needs steps >= 2")
        w = np.full(steps, 1.0 / (steps - 1))
        w[0] = w[-1] = 0.5 / (steps - 1)
        return np.linspace(0, 1, steps), w
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return 0.5 * (nodes + 1), 0.5 * weights
    raise ValueError(f"rule must be one of {_METHODS}, got {method!r}")


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W) images with reflect padding."""
    if x.dim() != 4:
        raise ValueError(f"a blurred baseline needs (N, C, H, W) images, got shape {tuple(x.shape)}")
    if sigma <= 0:
        return x
    radius = max(1, int(math.ceil(3 * sigma)))
    coords = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (coords / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    h, w = x.shape[-2:]
    pad_h, pad_w = min(radius, h - 1), min(radius, w - 1)
    kh = k[radius - pad_h: radius + pad_h + 1]
    kw = k[radius - pad_w: radius + pad_w + 1]
    kh, kw = kh / kh.sum(), kw / kw.sum()
    y = F.pad(x, (pad_w, pad_w, 0, 0), mode="reflect") if pad_w else x
    y = F.conv2d(y, kw.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    y = F.pad(y, (0, 0, pad_h, pad_h), mode="reflect") if pad_h else y
    return F.conv2d(y, kh.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def _blocks(n: int, steps: int, rows: int):
    """Cover the (steps x n) grid with blocks of at most ``rows`` rows: yields
    ``(s0, s1, i0, i1)``; whole batches of samples with several steps when
    ``n <= rows``, else slices of ``rows`` samples one step at a time."""
    slices = balanced_slices(n, rows)
    m = slices[0][1] - slices[0][0]
    k = max(1, rows // m)
    k = -(-steps // -(-steps // k))  # same number of passes, near-equal steps per pass
    for s0 in range(0, steps, k):
        s1 = min(s0 + k, steps)
        for i0, i1 in slices:
            yield s0, s1, i0, i1


def _path_gradient_sum(model, base, diff, t, alphas, weights, rows, score, create_graph):
    """``sum_k w_k grad f(base + alpha_k diff)``, shape of ``base``, in blocks of
    at most ``rows`` forward rows (so memory is bounded by ``rows``)."""
    n = base.shape[0]
    tail = base.shape[1:]
    ones = (1,) * len(tail)
    if not create_graph:
        base, diff = base.detach(), diff.detach()
        acc = torch.zeros_like(base)
    parts = {}
    for s0, s1, i0, i1 in _blocks(n, alphas.shape[0], rows):
        k, m = s1 - s0, i1 - i0
        a = alphas[s0:s1].view((k, 1) + ones)
        path = (base[None, i0:i1] + a * diff[None, i0:i1]).reshape((k * m,) + tail)
        with torch.enable_grad():
            leaf = path if create_graph else path.requires_grad_(True)
            with sample_rows(repeat_rows(i0, i1, k, t.device), n):
                o = forward(model, leaf)
            s = select_score(o, t[i0:i1].repeat(k), score)
            (g,) = torch.autograd.grad(s.sum(), leaf, create_graph=create_graph)
        # weighted sum over the block's steps: (k,) x (k, m, ...) -> (m, ...)
        part = torch.tensordot(weights[s0:s1], g.reshape((k, m) + tail), dims=1)
        if create_graph:
            parts.setdefault(i0, []).append(part)
        else:
            acc[i0:i1] += part
    if not create_graph:
        return acc
    return torch.cat([torch.stack(p).sum(0) if len(p) > 1 else p[0] for _, p in sorted(parts.items())])


def _entry_path_gradient_sum(model, entry, base, diff, t, alphas, weights, rows, score):
    """:func:`_path_gradient_sum` with the entry layer factored out: its output on the
    path is ``L(base) + alpha W diff`` (two entry passes per image), the gradient is
    summed at its output and taken through ``W^T`` once; a gradient reaching the
    input by another route is added."""
    n = base.shape[0]
    tail = base.shape[1:]
    ones = (1,) * len(tail)
    with torch.no_grad():
        h0 = entry.full(base)
        dh = entry.linear(diff)
    htail = h0.shape[1:]
    hones = (1,) * len(htail)
    acc_h = torch.zeros_like(h0)
    acc = None
    for s0, s1, i0, i1 in _blocks(n, alphas.shape[0], rows):
        k, m = s1 - s0, i1 - i0
        a = alphas[s0:s1].view((k, 1) + ones)
        path = (base[None, i0:i1] + a * diff[None, i0:i1]).reshape((k * m,) + tail)
        ah = alphas[s0:s1].view((k, 1) + hones)
        h = (h0[None, i0:i1] + ah * dh[None, i0:i1]).reshape((k * m,) + htail)
        with sample_rows(repeat_rows(i0, i1, k, t.device), n):
            gh, gx = entry_gradients(model, entry, path, h, t[i0:i1].repeat(k), score)
        w = weights[s0:s1]
        acc_h[i0:i1] += torch.tensordot(w, gh.reshape((k, m) + htail), dims=1)
        if gx is not None:  # the model also reads its input by another route
            if acc is None:
                acc = torch.zeros_like(base)
            acc[i0:i1] += torch.tensordot(w, gx.reshape((k, m) + tail), dims=1)
    g = entry.transpose(acc_h, base)
    return g if acc is None else g + acc


@add_layer_doc
class IntegratedGradients(LayerOptions, Explainer):
    """Integrated Gradients (Sundararajan et al., 2017).

    ``attr = (x - x0) * integral_0^1 grad f(x0 + a (x - x0)) da``, the integral taken by
    a quadrature rule. Completeness: ``attr.sum() ~= f(x) - f(x0)``; the error is on
    the result as ``delta``.

    Parameters
    ----------
    steps : int, default 50
        Quadrature nodes.
    baseline : {"zeros", "uniform", "blur", "mean"}, float, Tensor or callable, default "zeros"
        ``x0``: zeros; a constant; uniform noise within ``bounds``; the input blurred
        with ``blur_sigma`` (Gaussian, pixels); the per-sample mean value; a tensor
        broadcastable to ``x`` (e.g. (1, C, H, W) or (N, C, H, W)); or a callable
        ``x -> x0``. For token ids (with ``layer=``) an int or an integer tensor: the
        reference token (e.g. the pad id); the baseline activations are the layer's on it.
        Several inputs: a tuple, one baseline per input.
    rule : str, default "gausslegendre"
        Quadrature rule (captum calls it ``method``): ``riemann_left``, ``riemann_right``, ``riemann_middle``,
        ``riemann_trapezoid`` or ``gausslegendre`` (as in captum).
    batch_size : int, optional
        Rows of every model call: the steps x samples of each forward/backward pass and
        the clean pass on ``x`` and the baseline (together, sliced; a baseline whose rows
        are all equal, like zeros, is sent as one row). Memory is
        bounded by it and not by ``steps * N``; results do not depend on it. Default: chosen per model, input shape and device by :mod:`xadv.explainers.chunking`
        (a memory probe, cached).
    score : {"logit", "log_softmax", "softmax"} or callable, default "logit"
    multiply_by_inputs : bool, default True
        ``False`` returns the path-averaged gradient without the factor ``x - x0``
        (captum's ``multiply_by_inputs=False``); ``delta`` is then None.
    bounds : (float, float), default (0, 1)
        Range of the uniform baseline.
    blur_sigma : float, default 5.0
    seed, generator : for the uniform baseline.

    References
    ----------
    Sundararajan, Taly, Yan. Axiomatic Attribution for Deep Networks. ICML 2017.

    Examples
    --------
    >>> import torch, xadv
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    >>> e = xadv.explainers.IntegratedGradients(steps=64)(net, torch.rand(4, 3), target=1)
    >>> bool(e.delta.abs().max() < 1e-3)
    True
    """

    name = "integrated_gradients"
    differentiable = True

    def __init__(self, steps: int = 50, baseline: Union[str, float, torch.Tensor] = "zeros",
                 rule: str = "gausslegendre", batch_size: Optional[int] = None, score="logit",
                 bounds=(0.0, 1.0), blur_sigma: float = 5.0, seed: Optional[int] = None,
                 generator: Optional[torch.Generator] = None, multiply_by_inputs: bool = True, layer=None,
                 attribute_to_layer_input: bool = False, neuron=None):
        self.steps = check_positive_int(steps, "steps")
        if rule not in _METHODS:
            raise ValueError(f"rule must be one of {_METHODS}, got {rule!r}")
        quadrature(self.steps, rule)
        if isinstance(baseline, str) and baseline not in _BASELINES:
            raise ValueError(f"baseline must be one of {_BASELINES}, a number or a tensor, got {baseline!r}")
        if isinstance(baseline, bool) or not (isinstance(baseline, (str, float, int, torch.Tensor, tuple, list))
                                              or callable(baseline)):
            raise TypeError(f"baseline must be a string, a number, a tensor, a callable or a tuple of them (one per "
                            f"input), got {type(baseline).__name__}")
        self.baseline = check_finite(baseline, "baseline")
        self.rule = rule
        self.batch_size = None if batch_size is None else check_positive_int(batch_size, "batch_size")
        self.score = check_score(score)
        self.bounds = check_bounds(bounds)
        self.blur_sigma = float(blur_sigma)
        self.seed = seed
        self.generator = generator
        self.multiply_by_inputs = bool(multiply_by_inputs)
        self._set_layer_options(layer, attribute_to_layer_input, neuron)

    def make_baseline(self, x: torch.Tensor, baseline=None) -> torch.Tensor:
        """The baseline for the batch ``x``, shape (N, ...)."""
        b = self.baseline if baseline is None else baseline
        if callable(b) and not isinstance(b, (str, torch.Tensor)):
            v = b(x)
            if not isinstance(v, torch.Tensor):
                raise TypeError(f"the baseline callable must return a tensor, got {type(v).__name__}")
            b = v
        if isinstance(b, (tuple, list)):
            raise ValueError("a tuple of baselines is for a model with several inputs (one per input)")
        if not x.is_floating_point():
            if isinstance(b, str) and b != "zeros" or isinstance(b, float) and not float(b).is_integer():
                raise ValueError(f"token-id inputs need a reference token id as baseline (an int or an integer "
                                 f"tensor, e.g. the pad id), got {b!r}")
            if isinstance(b, torch.Tensor):
                return torch.broadcast_to(b.to(device=x.device, dtype=x.dtype), x.shape)
            return torch.full_like(x, 0 if isinstance(b, str) else int(b))
        if isinstance(b, torch.Tensor):
            if not b.is_floating_point():
                raise TypeError("a baseline tensor must be floating point")
            try:
                return torch.broadcast_to(b.to(device=x.device, dtype=x.dtype), x.shape)
            except RuntimeError:
                raise ValueError(
                    f"baseline of shape {tuple(b.shape)} does not broadcast to the inputs {tuple(x.shape)}"
                ) from None
        if isinstance(b, (int, float)):
            return torch.full_like(x, float(b))
        if b == "zeros":
            return torch.zeros_like(x)
        if b == "mean":
            m = x.reshape(x.shape[0], -1).mean(1)
            return m.reshape((-1,) + (1,) * (x.dim() - 1)).expand_as(x).clone()
        if b == "uniform":
            g = make_generator(self.seed, self.generator, x.device)
            lo, hi = self.bounds
            return lo + (hi - lo) * torch.rand(x.shape, generator=g, device=x.device, dtype=x.dtype)
        return gaussian_blur(x, self.blur_sigma)

    def _explain(self, model, x, target, create_graph):
        r = self._layer_dispatch(model, x, target, create_graph)
        if r is not None:
            return r
        xi = input_leaf(x, create_graph) if create_graph else x.detach()
        # with create_graph a baseline computed from x (blur, mean) stays differentiable
        base = self.make_baseline(xi)
        n = x.shape[0]
        rows = rows_per_pass(model, xi, batch_size=self.batch_size or DEFAULT_BATCH_ROWS, work=self.steps * n)
        # the clean passes on x and on the baseline, together in slices of at most ``rows``;
        # no graph unless the result must be differentiable
        if self.multiply_by_inputs:  # the baseline's output is for ``delta`` only
            def clean():
                return clean_passes(model, xi, [base], rows, grad=create_graph)
        else:
            def clean():
                return chunked_forward(model, xi, rows, grad=create_graph), None
        if create_graph or isinstance(model, ModelAdapter):
            (out, out_base), entry = clean(), None
        else:  # the affine entry layer is factored out of the path (xadv.explainers._entry)
            (out, out_base), entry = with_entry(model, xi, clean)
        t = resolve_target(target, out)
        alphas_np, weights_np = quadrature(self.steps, self.rule)
        alphas = torch.as_tensor(alphas_np, dtype=x.dtype, device=x.device)
        weights = torch.as_tensor(weights_np, dtype=x.dtype, device=x.device)
        diff = xi - base
        if entry is not None:
            grad_sum = _entry_path_gradient_sum(model, entry, base.detach(), diff.detach(), t, alphas, weights,
                                                rows, self.score)
        else:
            grad_sum = _path_gradient_sum(model, base, diff, t, alphas, weights, rows, self.score, create_graph)
        attr = diff * grad_sum if self.multiply_by_inputs else grad_sum
        delta = None
        if self.multiply_by_inputs:
            with torch.no_grad():
                gap = select_score(out.detach(), t, self.score) - select_score(out_base.detach(), t, self.score)
                delta = attr.detach().reshape(n, -1).sum(1) - gap
        if not create_graph:
            out = out.detach()
            attr = attr.detach()
        return Explanation(attr, xi, t, out, self.name, self._params_for_result(), delta=delta,
                           extras={"baseline": base.detach()})

    def _layer_baselines(self, inputs):
        b = self.baseline
        if isinstance(b, (tuple, list)):
            if len(b) != len(inputs):
                raise ValueError(f"{len(b)} baselines for {len(inputs)} inputs")
            return [self.make_baseline(t, v) for t, v in zip(inputs, b)]
        if len(inputs) > 1:
            raise ValueError("a model with several inputs needs a tuple of baselines, one per input")
        return [self.make_baseline(inputs[0])]

    def _explain_layer(self, model, inputs, target, create_graph, mods, names):
        """Layer Integrated Gradients: the straight path between the layer's activations
        on the baseline inputs and on the inputs (captum's ``LayerIntegratedGradients``)."""
        ins = self._leaves(inputs, create_graph)
        bases = self._layer_baselines(ins)
        n = ins[0].shape[0]
        side = self.attribute_to_layer_input
        rows = rows_per_pass(model, ins, batch_size=self.batch_size or DEFAULT_BATCH_ROWS, work=self.steps * n)
        out, acts_x = capture_chunked(model, ins, mods, names, side, create_graph, rows)
        out_base, acts_b = capture_chunked(model, bases, mods, names, side, create_graph, rows)
        t = resolve_target(target, out)
        ref = acts_x[0]
        alphas_np, weights_np = quadrature(self.steps, self.rule)
        alphas = torch.as_tensor(alphas_np, dtype=ref.dtype, device=ref.device)[:, None].expand(-1, n)
        weights = torch.as_tensor(weights_np, dtype=ref.dtype, device=ref.device)

        def base_acts(s0, s1, i0, i1):
            return [ab[None, i0:i1].expand((s1 - s0,) + tuple(ab[i0:i1].shape)) for ab in acts_b]

        attrs = layer_path(model, ins, t, lambda o, tt: select_score(o, tt, self.score), mods, names, side,
                           acts_x, base_acts, alphas, weights, rows, self.multiply_by_inputs, create_graph, _blocks)
        delta = None
        if self.multiply_by_inputs:
            with torch.no_grad():
                gap = select_score(out.detach(), t, self.score) - select_score(out_base.detach(), t, self.score)
                delta = sum(a.detach().reshape(n, -1).sum(1) for a in attrs) - gap
        return self._layer_result(attrs, ins, t, out, create_graph, names, delta=delta,
                                  extras={"baseline_activations": tuple(a.detach() for a in acts_b)
                                          if len(acts_b) > 1 else acts_b[0].detach()})
