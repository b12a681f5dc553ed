"""DeepLIFT (rescale rule) and DeepLiftShap."""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from ..._validation import resolve_target
from ...explanation import Explanation
from ...nn import count_functional_relus
from ..._adapter import sample_rows
from ..base import Explainer, balanced_slices, check_score, forward, input_leaf, select_score
from ..chunking import chunked_forward, rows_per_pass
from .core import ACTIVATION_TYPES, MAXPOOL_TYPES, Composite, attached, true_inputs
from .rules import MaxPoolRescale, Rescale

#: elementwise nonlinearities that get the rescale rule (captum's set and more)
RESCALE_TYPES = ACTIVATION_TYPES


def _check_batch_size(batch_size):
    if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return None if batch_size is None else int(batch_size)


def deeplift_composite(eps: float) -> Composite:
    return Composite([(RESCALE_TYPES, Rescale(eps)), (MAXPOOL_TYPES, MaxPoolRescale(eps))], canonizers=())


def check_module_relus(model, x, method: str) -> None:
    """Raise when relus are called as functions (no module to attach a rule to)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{method} needs a torch.nn.Module (rules are attached to its activation modules)")
    n = count_functional_relus(model, x[:1].detach())
    if n:
        raise ValueError(
            f"the model calls relu {n} time(s) as a function (F.relu / torch.relu / Tensor.relu) in forward; "
            f"{method} changes the backward of activation modules only. Use nn.ReLU modules instead")


def _check_baseline(baseline):
    if isinstance(baseline, torch.Tensor):
        if not baseline.is_floating_point():
            raise TypeError("baseline must be a floating point tensor")
        return baseline
    if isinstance(baseline, bool) or not isinstance(baseline, (int, float)):
        raise TypeError(f"baseline must be a number or a tensor, got {type(baseline).__name__}")
    return float(baseline)


def deeplift_rows(model, xi, x0, t, score, eps, create_graph, samples=None, n_total=None):
    """DeepLIFT attributions of rows ``xi`` against references ``x0`` (same shape) for
    targets ``t``: ``(x - x0) * m`` with the multipliers ``m``; also the score gaps.
    The model sees ``[xi; x0]``, ``2 * len(xi)`` rows (``samples``: their sample ids)."""
    n = xi.shape[0]
    comp = deeplift_composite(eps)
    with torch.enable_grad():   # the graph runs from xi through the concatenation, also under no_grad()
        xin = torch.cat([xi, x0])
    if samples is None:
        samples, n_total = torch.arange(n, device=xi.device), n
    with sample_rows(torch.cat([samples, samples]), n_total):
        saved = true_inputs(model, comp, xin, create_graph)
        with torch.enable_grad(), attached(model, comp, saved=saved):
            both = forward(model, xin)
            s = select_score(both[:n], t, score)
            total = s.sum()
        (g,) = torch.autograd.grad(total, xi, create_graph=create_graph)
    s_ref = select_score(both[n:], t, score)
    return (xi - x0) * g, s - s_ref, both[:n]


class DeepLift(Explainer):
    """DeepLIFT with the rescale rule (Shrikumar et al., 2017).

    Attributions ``(x - x') * m`` with multipliers ``m`` that replace each nonlinearity's
    derivative by ``(f(x) - f(x')) / (x - x')`` and route max-pooling differences as
    captum does, so they sum to the score difference ``f(x) - f(x')`` (``delta`` is the
    gap that is left, 0 up to rounding).

    Parameters
    ----------
    baseline : float or Tensor, default 0.0
        The reference ``x'``: a number, or a tensor broadcastable to ``x``.
    eps : float, default 1e-10
        Below this ``|x - x'|`` a unit uses its gradient.
    score : {"logit", "log_softmax", "softmax"} or callable, default "logit"
    batch_size : int, optional
        Rows per model call: each pass sends ``[x; x']`` for ``batch_size // 2`` inputs
        (at least one input, two rows), the clean pass at most ``batch_size`` rows.
        Default: chosen by :mod:`xadv.explainers.chunking`.

    Shapes: ``x`` (N, ...) -> ``attributions`` (N, ...), ``delta`` (N,).

    The nonlinearities must be modules (``nn.ReLU``, ``nn.Softplus``, ``nn.MaxPool2d``...);
    functional relus raise an error. Differentiable: the multipliers are tensor code
    (``create_graph=True``); unlike the gradient, they are not piecewise constant in
    ``x`` on ReLU nets.

    References
    ----------
    Shrikumar, Greenside, Kundaje. Learning Important Features Through Propagating
    Activation Differences. ICML 2017.

    Examples
    --------
    >>> import torch, xadv
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> x = torch.rand(2, 4)
    >>> e = xadv.explainers.DeepLift()(net, x, target=0)
    >>> gap = net(x)[:, 0] - net(torch.zeros(1, 4))[:, 0]
    >>> torch.allclose(e.attributions.sum(1), gap, atol=1e-5)
    True
    """

    name = "deeplift"
    differentiable = True

    def __init__(self, baseline: Union[float, torch.Tensor] = 0.0, eps: float = 1e-10, score="logit",
                 batch_size: Optional[int] = None):
        self.baseline = _check_baseline(baseline)
        self.eps = float(eps)
        self.score = check_score(score)
        self.batch_size = _check_batch_size(batch_size)

    def _reference(self, x):
        b = self.baseline
        if isinstance(b, torch.Tensor):
            try:
                return torch.broadcast_to(b.to(x), x.shape)
            except RuntimeError:
                raise ValueError(f"baseline of shape {tuple(b.shape)} does not broadcast to x {tuple(x.shape)}") from None
        return torch.full_like(x, b)

    def _explain(self, model, x, target, create_graph):
        check_module_relus(model, x, "DeepLift")
        xi = input_leaf(x, create_graph)
        n = x.shape[0]
        rows = rows_per_pass(model, x, batch_size=self.batch_size, work=2 * n)
        t = resolve_target(target, chunked_forward(model, x.detach(), rows))
        ref = self._reference(x).detach()
        parts = []
        for i0, i1 in balanced_slices(n, max(1, rows // 2)):
            with torch.enable_grad():   # the slice stays in the graph under an outer no_grad()
                rows_x = xi[i0:i1]
            parts.append(deeplift_rows(model, rows_x, ref[i0:i1], t[i0:i1], self.score, self.eps, create_graph,
                                       torch.arange(i0, i1, device=x.device), n))
        attr, gap, out = (torch.cat(p) for p in zip(*parts))
        delta = gap - attr.flatten(1).sum(1)
        if not create_graph:
            attr, out, delta, xi = attr.detach(), out.detach(), delta.detach(), x.detach()
        return Explanation(attr, xi, t, out, self.name, self._params_for_result(), delta=delta)


class DeepLiftShap(Explainer):
    """DeepLIFT averaged over a background of references (Lundberg & Lee, 2017).

    For every input the DeepLIFT attributions against each background row are averaged
    (captum's ``DeepLiftShap``); they sum to ``f(x)`` minus the mean background score.

    Parameters
    ----------
    background : Tensor (M, ...), optional
        Reference inputs, shaped like one batch of ``x``; ``None`` takes a single zero
        input (DeepLIFT against zero).
    eps : float, default 1e-10
    score : {"logit", "log_softmax", "softmax"} or callable, default "logit"
    batch_size : int, optional
        Rows per model call: a pass sends ``[x; x']`` for ``batch_size // 2`` (input,
        reference) pairs (at least one pair, two rows), the clean pass at most
        ``batch_size`` rows. Default: chosen by :mod:`xadv.explainers.chunking`.

    Shapes: ``x`` (N, ...) -> ``attributions`` (N, ...), ``delta`` (N,).

    References
    ----------
    Lundberg & Lee. A Unified Approach to Interpreting Model Predictions. NeurIPS 2017.

    Examples
    --------
    >>> import torch, xadv
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> bg, x = torch.rand(5, 4), torch.rand(2, 4)
    >>> e = xadv.explainers.DeepLiftShap(bg)(net, x, target=2)
    >>> gap = net(x)[:, 2] - net(bg)[:, 2].mean()
    >>> torch.allclose(e.attributions.sum(1), gap, atol=1e-5)
    True
    """

    name = "deeplift_shap"
    differentiable = True

    def __init__(self, background: Optional[torch.Tensor] = None, eps: float = 1e-10, score="logit",
                 batch_size: Optional[int] = None):
        if background is not None and (not isinstance(background, torch.Tensor) or not background.is_floating_point()
                                       or background.dim() < 2):
            raise TypeError("background must be a floating point tensor (M, ...) of reference inputs")
        if background is not None and background.shape[0] < 1:
            raise ValueError("background must hold at least one row")
        self.background = background
        self.eps = float(eps)
        self.score = check_score(score)
        self.batch_size = _check_batch_size(batch_size)

    def _explain(self, model, x, target, create_graph):
        check_module_relus(model, x, "DeepLiftShap")
        bg = torch.zeros_like(x[:1]) if self.background is None else self.background.to(x)
        if bg.shape[1:] != x.shape[1:]:
            raise ValueError(f"background rows have shape {tuple(bg.shape[1:])}, inputs {tuple(x.shape[1:])}")
        xi = input_leaf(x, create_graph)
        n, m = x.shape[0], bg.shape[0]
        rows = rows_per_pass(model, x, batch_size=self.batch_size, work=2 * n * m)
        out = chunked_forward(model, x.detach(), rows)
        t = resolve_target(target, out)
        # (input, reference) pairs, input-major; each pass sends 2 rows per pair
        pair_x = torch.arange(n, device=x.device).repeat_interleave(m)
        pair_b = torch.arange(m, device=x.device).repeat(n)
        attr = torch.zeros_like(x) if not create_graph else None
        attrs = []
        gap = torch.zeros(n, dtype=x.dtype, device=x.device)
        for p0, p1 in balanced_slices(n * m, max(1, rows // 2)):
            ix = pair_x[p0:p1]
            with torch.enable_grad():   # xi[ix] stays in the graph under an outer no_grad()
                rows_x = xi[ix]
            a, g, _ = deeplift_rows(model, rows_x, bg[pair_b[p0:p1]], t[ix], self.score, self.eps, create_graph,
                                    ix, n)
            if create_graph:
                attrs.append(a)
            else:
                attr.index_add_(0, ix, a.detach())
            gap.index_add_(0, ix, g.detach() if not create_graph else g)
        if create_graph:
            attr = torch.zeros_like(x).index_add(0, pair_x, torch.cat(attrs))
        attr, gap = attr / m, gap / m
        delta = gap - attr.flatten(1).sum(1)
        if create_graph:
            out = chunked_forward(model, xi, rows, grad=True)
        else:
            attr, delta, xi = attr.detach(), delta.detach(), x.detach()
        return Explanation(attr, xi, t, out, self.name, self._params_for_result(), delta=delta)
