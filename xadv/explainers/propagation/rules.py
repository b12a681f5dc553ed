"""Rules of the propagation family, each a small differentiable backward.

LRP rules for linear layers (conv and fully connected) follow zennit's definitions
(Epsilon, Gamma, ZPlus, AlphaBeta, ZBox, Flat, WSquare); ``Pass`` lets relevance through
elementwise modules; ``GuidedReLU`` and ``DeconvReLU`` are Guided Backprop's and
Deconvnet's backward of a ReLU; ``Rescale`` and ``MaxPoolRescale`` are DeepLIFT's
multipliers. See :mod:`xadv.explainers.propagation.core` for the gradient convention:
``gradient`` returns the modified gradient at the input; relevance is input times it.

References
----------
Bach et al. On Pixel-Wise Explanations for Non-Linear Classifier Decisions by Layer-Wise
Relevance Propagation. PLoS ONE 2015.
Montavon et al. Explaining nonlinear classification decisions with deep Taylor
decomposition. Pattern Recognition 2017.
Montavon et al. Layer-Wise Relevance Propagation: An Overview. 2019.
Shrikumar et al. Learning Important Features Through Propagating Activation Differences. ICML 2017.
Springenberg et al. Striving for Simplicity: The All Convolutional Net. ICLR-W 2015.
Zeiler & Fergus. Visualizing and Understanding Convolutional Networks. ECCV 2014.
"""
from __future__ import annotations

from typing import Union

import torch
from torch import nn

from .core import Backward, Rule, stabilize


def _pos(p):
    return None if p is None else p.clamp(min=0)


def _neg(p):
    return None if p is None else p.clamp(max=0)


def _check_float(name, value, *, positive=False, nonneg=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if positive and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if nonneg and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


class Epsilon(Rule):
    """LRP-epsilon: ``R_i = sum_k x_i w_ik / (z_k + eps sign z_k) R_k`` (``epsilon=0``: LRP-0).

    Examples
    --------
    >>> Epsilon(0.25)
    Epsilon(epsilon=0.25)
    """

    def __init__(self, epsilon: float = 1e-6):
        self.epsilon = _check_float("epsilon", epsilon, nonneg=True)

    def gradient(self, b: Backward):
        w, bias = b.params
        z = b.op(b.x, w, bias)
        (gi,) = b.vjp([z], [b.x], [b.g * z / stabilize(z, self.epsilon)])
        return gi


class ZPlus(Rule):
    """LRP-z+: positive contributions only (alpha=1, beta=0); positive inputs with the
    positive weights, negative inputs with the negative ones (as zennit)."""

    def __init__(self, stabilizer: float = 1e-6):
        self.stabilizer = _check_float("stabilizer", stabilizer, nonneg=True)

    def gradient(self, b: Backward):
        w, bias = b.params
        xp, xn = b.x.clamp(min=0), b.x.clamp(max=0)
        z = b.op(b.x, w, bias)
        z1, z2 = b.op(xp, _pos(w), _pos(bias)), b.op(xn, _neg(w), None)
        c = b.g * z / stabilize(z1 + z2, self.stabilizer)
        g1, g2 = b.vjp([z1, z2], [xp, xn], [c, c])
        return torch.where(b.x > 0, g1, g2)


class AlphaBeta(Rule):
    """LRP-alpha-beta: ``alpha`` times the positive minus ``beta`` times the negative
    contributions, each normalised by its own total; ``alpha - beta = 1``."""

    def __init__(self, alpha: float = 2.0, beta: float = 1.0, stabilizer: float = 1e-6):
        self.alpha = _check_float("alpha", alpha, nonneg=True)
        self.beta = _check_float("beta", beta, nonneg=True)
        if abs(self.alpha - self.beta - 1.0) > 1e-12:
            raise ValueError(f"alpha - beta must be 1 (conservation), got alpha={alpha}, beta={beta}")
        self.stabilizer = _check_float("stabilizer", stabilizer, nonneg=True)

    def gradient(self, b: Backward):
        w, bias = b.params
        xp, xn = b.x.clamp(min=0), b.x.clamp(max=0)
        z = b.op(b.x, w, bias)
        a1, a2 = b.op(xp, _pos(w), _pos(bias)), b.op(xn, _neg(w), None)
        n1, n2 = b.op(xp, _neg(w), _neg(bias)), b.op(xn, _pos(w), None)
        R = b.g * z
        cp = R / stabilize(a1 + a2, self.stabilizer)
        cn = R / stabilize(n1 + n2, self.stabilizer)
        v1, v2, v3, v4 = b.vjp([a1, a2, n1, n2], [xp, xn, xp, xn], [cp, cp, cn, cn])
        return torch.where(b.x > 0, self.alpha * v1 - self.beta * v3, self.alpha * v2 - self.beta * v4)


class Gamma(Rule):
    """Generalised LRP-gamma (zennit's form): positive contributions boosted by
    ``gamma`` for positive outputs, negative ones for negative outputs."""

    def __init__(self, gamma: float = 0.25, stabilizer: float = 1e-6):
        self.gamma = _check_float("gamma", gamma, nonneg=True)
        self.stabilizer = _check_float("stabilizer", stabilizer, nonneg=True)

    def gradient(self, b: Backward):
        w, bias = b.params
        gm = self.gamma

        def boost(p, sign):
            if p is None:
                return None
            return p + gm * (p.clamp(min=0) if sign > 0 else p.clamp(max=0))

        xp, xn = b.x.clamp(min=0), b.x.clamp(max=0)
        z = b.op(b.x, w, bias)
        o1, o2 = b.op(xp, boost(w, 1), boost(bias, 1)), b.op(xn, boost(w, -1), None)
        o3, o4 = b.op(xp, boost(w, -1), boost(bias, -1)), b.op(xn, boost(w, 1), None)
        R = b.g * z
        cp = (z > 0).to(z) * R / stabilize(o1 + o2, self.stabilizer)
        cn = (z < 0).to(z) * R / stabilize(o3 + o4, self.stabilizer)
        v1, v2, v3, v4 = b.vjp([o1, o2, o3, o4], [xp, xn, xp, xn], [cp, cp, cn, cn])
        return torch.where(b.x > 0, v1 + v3, v2 + v4)


class ZBox(Rule):
    """LRP-z^B for inputs bounded by ``low <= x <= high`` (first layer only).

    ``low``/``high``: floats or tensors broadcastable to one input, e.g. (1, C, 1, 1).
    """

    first_layer_only = True

    def __init__(self, low: Union[float, torch.Tensor] = 0.0, high: Union[float, torch.Tensor] = 1.0,
                 stabilizer: float = 1e-6):
        self.low, self.high = low, high
        self.stabilizer = _check_float("stabilizer", stabilizer, nonneg=True)

    def relevance(self, b: Backward):
        w, bias = b.params
        lo = (torch.zeros_like(b.x) + torch.as_tensor(self.low).to(b.x)).detach().requires_grad_(True)
        hi = (torch.zeros_like(b.x) + torch.as_tensor(self.high).to(b.x)).detach().requires_grad_(True)
        z = b.op(b.x, w, bias)
        zl, zh = b.op(lo, _pos(w), _pos(bias)), b.op(hi, _neg(w), _neg(bias))
        c = b.g * z / stabilize(z - zl - zh, self.stabilizer)
        vx, vl, vh = b.vjp([z, zl, zh], [b.x, lo, hi], [c, c, c])
        return b.x * vx - lo * vl - hi * vh


class WSquare(Rule):
    """LRP-w^2: relevance by squared weights, independent of the input (first layer only)."""

    first_layer_only = True

    def __init__(self, stabilizer: float = 1e-6):
        self.stabilizer = _check_float("stabilizer", stabilizer, nonneg=True)

    def _mod(self, w, bias):
        return w ** 2, None if bias is None else bias ** 2

    def relevance(self, b: Backward):
        w, bias = b.params
        ones = torch.ones_like(b.x).requires_grad_(True)
        z = b.op(b.x, w, bias)
        zm = b.op(ones, *self._mod(w, bias))
        (v,) = b.vjp([zm], [ones], [b.g * z / stabilize(zm, self.stabilizer)])
        return v


class Flat(WSquare):
    """LRP-flat: relevance spread uniformly over each output's receptive field (first layer only)."""

    def _mod(self, w, bias):
        return torch.ones_like(w), None


class Pass(Rule):
    """Relevance passes an elementwise module unchanged (activations, unfolded BatchNorm):
    ``g_in = g * f(x) / x`` (ReLU exactly: ``g * [x > 0]``)."""

    def __init__(self, stabilizer: float = 1e-6):
        self.stabilizer = _check_float("stabilizer", stabilizer, nonneg=True)

    def gradient(self, b: Backward):
        if type(b.module) is nn.ReLU:
            return b.g * (b.x > 0).to(b.g)
        return b.g * b.op(b.x) / stabilize(b.x, self.stabilizer)


def _activation_slope(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(module, nn.Softplus):
        bx = module.beta * x
        return torch.where(bx > module.threshold, torch.ones_like(x), torch.sigmoid(bx))
    if isinstance(module, nn.ReLU):
        return (x > 0).to(x)
    raise TypeError(f"Guided Backprop is defined for ReLU (and its softplus smoothing), got {type(module).__name__}")


class GuidedReLU(Rule):
    """Guided Backprop's ReLU: ``g_in = f'(x) * relu(g)`` (``f' = [x > 0]``; for a
    softplus-smoothed ReLU ``f' = sigmoid(beta x)``)."""

    def gradient(self, b: Backward):
        return _activation_slope(b.module, b.x) * b.g.clamp(min=0)


class DeconvReLU(Rule):
    """Deconvnet's ReLU: ``g_in = relu(g)``, the forward pass's mask ignored."""

    def gradient(self, b: Backward):
        return b.g.clamp(min=0)


class Rescale(Rule):
    """DeepLIFT's rescale multiplier ``(f(x) - f(x')) / (x - x')`` for an elementwise
    nonlinearity; the gradient where ``|x - x'| < eps``. The batch holds ``[x; x']``."""

    def __init__(self, eps: float = 1e-10):
        self.eps = _check_float("eps", eps, nonneg=True)

    def gradient(self, b: Backward):
        xa, xr = b.x.chunk(2)
        ga = b.g.chunk(2)[0]
        ya, yr = b.op(xa), b.op(xr)
        dx = xa - xr
        small = dx.abs() < self.eps
        (std,) = b.vjp([ya], [xa], [ga])
        m = torch.where(small, std, ga * (ya - yr) / torch.where(small, torch.ones_like(dx), dx))
        return torch.cat([m, torch.zeros_like(m)])


class MaxPoolRescale(Rescale):
    """DeepLIFT's max pooling: the output differences ``max(y, y') - y'`` and
    ``y - max(y, y')`` routed to the argmax positions of input and reference, divided by
    the input difference (captum's convention)."""

    def gradient(self, b: Backward):
        xa, xr = b.x.chunk(2)
        ga = b.g.chunk(2)[0]
        ya, yr = b.op(xa), b.op(xr)
        top = torch.maximum(ya, yr)
        ua, ur, std = b.vjp([ya, yr, ya], [xa, xr, xa], [ga * (top - yr), ga * (ya - top), ga])
        dx = xa - xr
        small = dx.abs() < self.eps
        m = torch.where(small, std, (ua + ur) / torch.where(small, torch.ones_like(dx), dx))
        return torch.cat([m, torch.zeros_like(m)])
