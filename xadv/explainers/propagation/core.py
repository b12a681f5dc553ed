"""One mechanism for every modified-backward explainer (LRP, DeepLIFT, Guided Backprop,
Deconvnet): rules attached to modules for one forward pass, written as differentiable
tensor operations.

How it works
------------
A :class:`Composite` says which :class:`Rule` a module gets. While :func:`attached` is
active, a forward hook replaces the output of every module with a rule by the output of
``_Propagate``, an autograd function whose forward returns the same value and whose
backward is the rule. The backward is ordinary tensor code (modified forward passes and
vector-Jacobian products taken with ``create_graph`` when the outer call asks for it), so
``torch.autograd.grad(..., create_graph=True)`` through the rules gives attributions with
a graph to the input and to the parameters: second order works.

Gradient convention
-------------------
What flows backward is a gradient ``g``; the relevance of any tensor ``a`` is
``a * g``. Rules return the modified gradient at their input. Modules without a rule keep
their gradient, which is the right propagation for everything linear without parameters:
reshapes, max pooling (winner takes all), average pooling and residual adds written as
``a + b`` (the relevance splits in proportion to the summands, LRP's ``Norm`` rule
without a stabiliser), and ReLU (relevance passes). So residual networks need no
canonizer for their adds. Input-layer rules that are not of the form ``x * (...)``
(z^B, flat, w^2) hand their relevance to a zero "carrier" tensor, whose gradient is the
attribution at the first layer's input.

BatchNorm folding (:class:`MergeBatchNorm`) is done on the fly: a BatchNorm in eval
mode whose input is the output of a hooked conv/linear layer makes that layer act with
the folded weights ``w * gamma / sigma`` and bias ``(b - mu) gamma / sigma + beta``,
computed as tensor expressions of the original parameters. Nothing of the model is
written, so the user's model is unchanged and the result stays differentiable with
respect to the BatchNorm parameters too.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Type, Union

import torch
from torch import nn
import torch.nn.functional as F

#: modules whose parameters the LRP rules modify
LINEAR_TYPES: Tuple[Type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
BATCHNORM_TYPES: Tuple[Type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
#: elementwise activations
ACTIVATION_TYPES: Tuple[Type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Softplus, nn.Sigmoid,
    nn.Tanh, nn.Hardtanh, nn.Mish,
)
MAXPOOL_TYPES: Tuple[Type[nn.Module], ...] = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)


def stabilize(z: torch.Tensor, eps: float) -> torch.Tensor:
    """``z + eps * sign(z)`` with ``sign(0) = 1``: a denominator that is never 0."""
    return z + eps * torch.where(z >= 0, torch.ones_like(z), -torch.ones_like(z))


@dataclass
class Backward:
    """What a rule sees in the backward pass of one module call.

    ``x`` is the module's input (for DeepLIFT the batch ``[x; x_ref]``), ``params`` the
    (possibly BatchNorm-folded) weight and bias of a linear layer, ``g`` the gradient at
    the module's output, ``op(x, *params)`` the module's forward as a function.
    ``create`` says whether the outer call builds a graph (``create_graph=True``).
    """

    module: nn.Module
    op: Callable[..., torch.Tensor]
    x: torch.Tensor
    params: Tuple[Optional[torch.Tensor], ...]
    g: torch.Tensor
    create: bool

    def vjp(self, outputs, inputs, grads):
        """One vector-Jacobian product per pair: ``(d out_k / d in_k)^T grad_k`` (lists)."""
        res = []
        for o, i, g in zip(outputs, inputs, grads):
            (r,) = torch.autograd.grad(o, i, g, create_graph=self.create, retain_graph=True, allow_unused=True)
            res.append(torch.zeros_like(i) if r is None else r)
        return res


class Rule:
    """A modified backward for one module.

    Subclasses implement :meth:`gradient` (the gradient at the input given ``b.g``) and,
    for rules meant for the first layer only, :meth:`relevance`.
    """

    #: z^B, flat and w^2 give relevance that is not ``x * (...)``: first layer only
    first_layer_only = False

    def gradient(self, b: Backward) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def relevance(self, b: Backward) -> torch.Tensor:
        """Relevance at the input (for the first layer); ``x * gradient`` by default."""
        return b.x * self.gradient(b)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


@dataclass
class _Spec:
    rule: Rule
    module: nn.Module
    op: Callable[..., torch.Tensor]
    first: bool
    n_params: int


class _Propagate(torch.autograd.Function):
    """Forward: the module's output value. Backward: ``spec.rule``."""

    @staticmethod
    def forward(ctx, spec, value, x, carrier, x_saved, *params):  # noqa: D401
        ctx.spec = spec
        ctx.has_bias = [p is not None for p in params]
        ctx.save_for_backward(x_saved, *[p for p in params if p is not None])
        return value.clone()

    @staticmethod
    def backward(ctx, g):
        spec: _Spec = ctx.spec
        saved = ctx.saved_tensors
        x, rest = saved[0], list(saved[1:])
        params = tuple(rest.pop(0) if has else None for has in ctx.has_bias)
        create = torch.is_grad_enabled()
        with torch.enable_grad():
            if not create or not x.requires_grad:
                x = x.detach().requires_grad_(True)
            if not create:
                params = tuple(None if p is None else p.detach() for p in params)
                g = g.detach()
            b = Backward(spec.module, spec.op, x, params, g, create)
            if spec.first:
                r = spec.rule.relevance(b)
                out = (None, None, None, r if create else r.detach(), None)
            else:
                gi = spec.rule.gradient(b)
                out = (None, None, gi if create else gi.detach(), None, None)
        return out + (None,) * len(params)


# ------------------------------------------------------------------------------ composites
ModuleTypes = Union[Type[nn.Module], Tuple[Type[nn.Module], ...]]


class Canonizer:
    """Marker base of model rewrites done on the fly (see :class:`MergeBatchNorm`)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class MergeBatchNorm(Canonizer):
    """Fold an eval-mode BatchNorm into the conv/linear layer whose output it takes.

    The folded layer computes ``BN(layer(x))`` with the weight ``w * gamma / sigma`` and
    bias ``(b - mu) * gamma / sigma + beta``, so its rule sees one linear layer (as
    zennit's ``SequentialMergeBatchNorm`` arranges by rewriting the parameters). Here
    the parameters are not touched: the folded ones are tensor expressions used for one
    pass, and the model comes back unchanged. BatchNorms in train mode, after something
    other than a hooked linear layer, or followed by it are left alone (their rule, if
    any, applies).
    """


@dataclass
class Composite:
    """Which rule a module gets: ``layer_map`` pairs of (module types, rule), the first
    match wins; ``first_map`` is tried for the first linear layer called in the forward
    pass. Modules without a rule keep their gradient.

    Parameters
    ----------
    layer_map : sequence of (type or tuple of types, Rule)
    first_map : sequence of (type or tuple of types, Rule), default ()
    canonizers : sequence of Canonizer, default (MergeBatchNorm(),)

    Examples
    --------
    >>> from torch import nn
    >>> from xadv.explainers.propagation import Composite, Epsilon, ZPlus
    >>> c = Composite([(nn.Conv2d, ZPlus()), (nn.Linear, Epsilon(0.1))])
    >>> c.rule_for(nn.Linear(2, 2), first=False)
    Epsilon(epsilon=0.1)
    """

    layer_map: Sequence[Tuple[ModuleTypes, Rule]]
    first_map: Sequence[Tuple[ModuleTypes, Rule]] = ()
    canonizers: Sequence[Canonizer] = field(default_factory=lambda: (MergeBatchNorm(),))

    def rule_for(self, module: nn.Module, first: bool) -> Optional[Rule]:
        if first:
            for types, rule in self.first_map:
                if isinstance(module, types):
                    return rule
        for types, rule in self.layer_map:
            if isinstance(module, types):
                return rule
        return None

    @property
    def merges_batchnorm(self) -> bool:
        return any(isinstance(c, MergeBatchNorm) for c in self.canonizers)


def _linear_op(module: nn.Module):
    if isinstance(module, nn.Linear):
        return lambda x, w, b: F.linear(x, w, b)
    return lambda x, w, b: module._conv_forward(x, w, b)


def _plain_op(module: nn.Module):
    inplace = bool(getattr(module, "inplace", False))

    def op(x):
        return module.forward(x.clone() if inplace else x)
    return op


class _State:
    def __init__(self, composite: Composite, carrier: bool):
        self.composite = composite
        self.use_carrier = carrier
        self.first_seen = False
        self.carrier: Optional[torch.Tensor] = None
        self.linear_out: Dict[int, tuple] = {}
        self.inputs: Dict[int, torch.Tensor] = {}
        self.saved: Optional[Dict[int, List[torch.Tensor]]] = None


def _apply(state, module, spec: _Spec, value, x, carrier, params):
    saved = x
    if state.saved is not None:
        queue = state.saved.get(id(module))
        if not queue:
            raise RuntimeError(f"{type(module).__name__} was called more often than in the recorded pass")
        saved = queue.pop(0)
    return _Propagate.apply(spec, value, x, carrier, saved, *params)


def _hooked(model: nn.Module, composite: Composite):
    for m in model.modules():
        if isinstance(m, LINEAR_TYPES + BATCHNORM_TYPES) or composite.rule_for(m, False) is not None:
            yield m


@contextlib.contextmanager
def recorded(model: nn.Module, composite: Composite) -> Iterator[Dict[int, List[torch.Tensor]]]:
    """Record the inputs of the modules :func:`attached` hooks, with their true graph.

    A forward pass inside the block fills ``{id(module): [input per call]}``. Given to
    :func:`attached` as ``saved``, the rules' backward uses these tensors, so the second
    derivative follows the model's true forward dependence (the hooked pass's tensors
    carry the modified backward as their derivative).
    """
    store: Dict[int, List[torch.Tensor]] = {}

    def pre(module, inputs):
        x = inputs[0]
        store.setdefault(id(module), []).append(x.clone() if getattr(module, "inplace", False) else x)

    handles = [m.register_forward_pre_hook(pre) for m in _hooked(model, composite)]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def attached(model: nn.Module, composite: Composite, *, carrier: bool = False,
             saved: Optional[Dict[int, List[torch.Tensor]]] = None) -> Iterator[_State]:
    """Attach ``composite``'s rules to ``model`` for the duration of the block.

    Parameters
    ----------
    model : nn.Module
    composite : Composite
    carrier : bool, default False
        Give the first linear layer's relevance to ``state.carrier`` (a zero tensor shaped
        like that layer's input, created in the forward pass): LRP reads its gradient.

    Yields the state; all hooks are removed on exit, also after an exception.
    """
    state = _State(composite, carrier)
    state.saved = None if saved is None else {k: list(v) for k, v in saved.items()}
    handles = []

    def pre_hook(module, inputs):
        if inputs and isinstance(inputs[0], torch.Tensor) and getattr(module, "inplace", False):
            state.inputs[id(module)] = inputs[0].clone()

    def linear_hook(module, inputs, output):
        x = inputs[0]
        first = not state.first_seen
        state.first_seen = True
        rule = composite.rule_for(module, first)
        if rule is None:
            if state.saved is not None and id(module) in state.saved:
                state.saved[id(module)].pop(0)
            return None
        if rule.first_layer_only and not first:
            raise ValueError(f"{rule!r} is a rule for the first layer only; it was assigned to a later "
                             f"{type(module).__name__}")
        use_carrier = first and state.use_carrier
        c = None
        if use_carrier:
            c = torch.zeros_like(x).requires_grad_(True)
            state.carrier = c
        params = (module.weight, module.bias)
        spec = _Spec(rule, module, _linear_op(module), use_carrier, 2)
        if state.saved is not None:  # the true input, also for a BatchNorm folded later
            x_true = state.saved[id(module)][0]
        else:
            x_true = x
        new = _apply(state, module, spec, output.detach(), x, c, params)
        state.linear_out[id(new)] = (new, module, x, rule, use_carrier, c, x_true)
        return new

    def batchnorm_hook(module, inputs, output):
        x = inputs[0]
        rec = state.linear_out.get(id(x))
        if composite.merges_batchnorm and rec is not None and rec[0] is x and not module.training \
                and module.running_mean is not None:
            _, lin, lin_x, rule, use_carrier, c, x_true = rec
            if state.saved is not None:
                state.saved[id(module)].pop(0)
            var = module.running_var.to(x.dtype)
            scale = (module.weight if module.weight is not None else torch.ones_like(var)) / torch.sqrt(var + module.eps)
            shift = module.bias if module.bias is not None else torch.zeros_like(var)
            w = lin.weight * scale.view((-1,) + (1,) * (lin.weight.dim() - 1))
            b0 = lin.bias if lin.bias is not None else torch.zeros_like(var)
            b = (b0 - module.running_mean) * scale + shift
            spec = _Spec(rule, lin, _linear_op(lin), use_carrier, 2)
            new = _Propagate.apply(spec, output.detach(), lin_x, c, x_true, w, b)
            state.linear_out[id(new)] = (new, lin, lin_x, rule, use_carrier, c, x_true)
            return new
        return plain_hook(module, inputs, output)

    def plain_hook(module, inputs, output):
        rule = composite.rule_for(module, False)
        if rule is None:
            if state.saved is not None and id(module) in state.saved:
                state.saved[id(module)].pop(0)
            return None
        x = state.inputs.pop(id(module), inputs[0])
        spec = _Spec(rule, module, _plain_op(module), False, 0)
        return _apply(state, module, spec, output.detach(), x, None, ())

    try:
        for m in _hooked(model, composite):
            if isinstance(m, LINEAR_TYPES):
                handles.append(m.register_forward_hook(linear_hook))
            elif isinstance(m, BATCHNORM_TYPES):
                handles.append(m.register_forward_hook(batchnorm_hook))
            elif composite.rule_for(m, False) is not None:
                if getattr(m, "inplace", False):
                    handles.append(m.register_forward_pre_hook(pre_hook))
                handles.append(m.register_forward_hook(plain_hook))
        yield state
    finally:
        for h in handles:
            h.remove()
        state.linear_out.clear()
        state.inputs.clear()


def true_inputs(model: nn.Module, composite: Composite, x: torch.Tensor,
                create_graph: bool) -> Optional[Dict[int, List[torch.Tensor]]]:
    """With ``create_graph``: one plain forward pass on ``x`` recording the hooked modules'
    inputs (see :func:`recorded`); ``None`` otherwise (first order needs none)."""
    if not create_graph:
        return None
    with torch.enable_grad(), recorded(model, composite) as store:
        model(x)
    return store
