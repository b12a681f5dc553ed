"""Layer and neuron attribution: the shared machinery behind ``layer=``,
``attribute_to_layer_input=`` and ``neuron=`` of the gradient and path explainers.

* :class:`Tap` hooks layers to capture their output (or input) or to replace it by a
  given tensor (the interpolated activations of layer Integrated Gradients);
* :func:`layer_gradient` differentiates the explained score w.r.t. the layers;
* :func:`layer_path` integrates gradients along a path in the layers' activation space
  (layer IG, layer GradientSHAP), in blocks of at most ``rows`` model rows;
* :class:`NeuronModel` turns a model into "inputs -> one neuron's value (N, 1)", so
  neuron attribution is input attribution of that scalar with every explainer.
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .._adapter import repeat_rows, sample_rows, unwrap
from .._validation import find_module

LayerLike = Union[str, nn.Module, Sequence[Union[str, nn.Module]]]
NeuronLike = Union[None, int, Tuple[Any, ...], Callable[[torch.Tensor], torch.Tensor]]


def check_layer(layer) -> Optional[LayerLike]:
    if layer is None or isinstance(layer, (str, nn.Module)):
        return layer
    if isinstance(layer, (list, tuple)) and layer and all(isinstance(v, (str, nn.Module)) for v in layer):
        return list(layer)
    raise TypeError(f"layer must be a dotted module name, a module, or a list of them, got {layer!r}")


def check_neuron(neuron) -> NeuronLike:
    if neuron is None or callable(neuron):
        return neuron
    if isinstance(neuron, bool):
        raise TypeError("neuron must be an int, a tuple of ints/slices or a callable, got bool")
    if isinstance(neuron, int):
        return (neuron,)
    if isinstance(neuron, (tuple, list)) and all(isinstance(v, (int, slice)) and not isinstance(v, bool)
                                                for v in neuron):
        return tuple(neuron)
    raise TypeError(f"neuron must be an int (a channel / unit), a tuple of ints or slices (one entry per "
                    f"dimension after the batch) or a callable (layer output -> (N,)), got {neuron!r}")


def resolve_layers(model, layer) -> Tuple[List[nn.Module], List[str], bool]:
    """``(modules, dotted names, several)`` of ``layer`` (a name, a module or a list)."""
    inner = unwrap(model)
    if not isinstance(inner, nn.Module):
        raise TypeError("layer= needs a torch.nn.Module model to find its layers")
    several = isinstance(layer, list)
    layers = layer if several else [layer]
    mods = [find_module(inner, v) for v in layers]
    names = []
    for m in mods:
        found = [n for n, mm in inner.named_modules() if mm is m and n]
        names.append(found[0] if found else type(m).__name__)
    return mods, names, several


def layer_label(names: List[str], several: bool):
    return list(names) if several else names[0]


class Tap:
    """Forward hooks on ``modules``: capture the output (``input_side=False``) or the
    first positional input, or replace it by ``replace[i]``.

    Captured activations that do not require grad (token ids through a frozen
    embedding) become leaves that do, so gradients w.r.t. them exist. The rest of the
    model gets a copy, so in-place operations after the layer cannot overwrite them.
    """

    def __init__(self, modules: Sequence[nn.Module], names: Sequence[str], input_side: bool = False,
                 replace: Optional[Sequence[torch.Tensor]] = None):
        self.modules, self.names, self.input_side = list(modules), list(names), input_side
        self.replace = replace
        self.acts: List[Optional[torch.Tensor]] = [None] * len(self.modules)
        self.calls = [0] * len(self.modules)
        self.handles = []

    def _take(self, i: int, value):
        side = "input" if self.input_side else "output"
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"the {side} of layer {self.names[i]!r} is a {type(value).__name__}, not a tensor; "
                             f"pick a submodule whose {side} is one tensor")
        self.calls[i] += 1
        if self.calls[i] > 1:
            raise ValueError(
                f"layer {self.names[i]!r} is called {self.calls[i]} times in one forward pass (one module "
                f"object reused), so it has no single activation; pick a layer that runs once")
        if self.replace is not None:
            r = self.replace[i]
            if r.shape != value.shape:
                raise RuntimeError(f"internal: replacement {tuple(r.shape)} for {tuple(value.shape)}")
            self.acts[i] = r
            return r.clone()
        if not value.is_floating_point():
            raise ValueError(f"the {side} of layer {self.names[i]!r} has dtype {value.dtype}; attribution needs "
                             f"floating point activations (for token ids use the embedding's output)")
        if not value.requires_grad and torch.is_grad_enabled():
            value = value.detach().requires_grad_(True)
        self.acts[i] = value
        return value.clone()

    def __enter__(self) -> "Tap":
        for i, m in enumerate(self.modules):
            if self.input_side:
                def pre(_m, args, i=i):
                    if not args:
                        raise ValueError(f"layer {self.names[i]!r} got no positional input to attribute to")
                    return (self._take(i, args[0]),) + tuple(args[1:])
                self.handles.append(m.register_forward_pre_hook(pre))
            else:
                def post(_m, _args, out, i=i):
                    return self._take(i, out)
                self.handles.append(m.register_forward_hook(post))
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def check_called(self) -> None:
        for name, c in zip(self.names, self.calls):
            if c == 0:
                raise ValueError(f"layer {name!r} was not called in the model's forward pass")


def _rows(inputs: Sequence[torch.Tensor], i0: int, i1: int, k: int) -> List[torch.Tensor]:
    """Inputs of samples i0..i1 repeated for k steps (step-major), as ``repeat_rows``."""
    return [t[i0:i1].repeat((k,) + (1,) * (t.dim() - 1)) for t in inputs]


def capture(model, inputs: Sequence[torch.Tensor], modules, names, input_side: bool, grad: bool):
    """One forward pass: ``(output (N, K), [activation per layer])``."""
    with torch.set_grad_enabled(grad), Tap(modules, names, input_side) as tap:
        out = model(*inputs)
    tap.check_called()
    return out, tap.acts


def capture_chunked(model, inputs: Sequence[torch.Tensor], modules, names, input_side: bool, grad: bool,
                    rows: int):
    """:func:`capture` in slices of at most ``rows`` samples (the clean pass of a layer
    method): ``(output (N, K), [activation (N, ...) per layer])``."""
    n = inputs[0].shape[0]
    if n <= rows:
        return capture(model, inputs, modules, names, input_side, grad)
    from .base import balanced_slices
    outs, acts = [], []
    for i0, i1 in balanced_slices(n, rows):
        with sample_rows(torch.arange(i0, i1, device=inputs[0].device), n):
            o, a = capture(model, [t[i0:i1] for t in inputs], modules, names, input_side, grad)
        outs.append(o)
        acts.append(a)
    return torch.cat(outs), [torch.cat([a[li] for a in acts]) for li in range(len(acts[0]))]


def layer_gradient(model, inputs, target_fn, score_fn, modules, names, input_side: bool, create_graph: bool):
    """Gradient of the explained score w.r.t. each layer's activation.

    Returns ``(grads, acts, output, target)``.
    """
    with torch.enable_grad(), Tap(modules, names, input_side) as tap:
        out = model(*inputs)
        tap.check_called()
        t = target_fn(out)
        s = score_fn(out, t)
        grads = torch.autograd.grad(s.sum(), tap.acts, create_graph=create_graph)
    return list(grads), tap.acts, out, t


def layer_path(model, inputs, t, score_fn, modules, names, input_side: bool, acts_x: List[torch.Tensor],
               base_acts: Callable[[int, int, int, int], List[torch.Tensor]], alphas: torch.Tensor,
               weights: torch.Tensor, rows: int, multiply: bool, create_graph: bool, blocks) -> List[torch.Tensor]:
    """``sum_s w_s [(a_x - a_b(s)) *] grad f(a_b(s) + alpha_s (a_x - a_b(s)))`` per layer.

    ``alphas`` (S, N) path points, ``weights`` (S,), ``base_acts(s0, s1, i0, i1)`` the
    baseline activations of steps s0..s1 and samples i0..i1 as (k, m, ...) per layer.
    The model runs on the inputs; the hooks put the interpolated activations in place of
    the layers' (as captum's LayerIntegratedGradients). All layers are interpolated together.
    """
    n = acts_x[0].shape[0]
    parts: List[dict] = [dict() for _ in modules]
    for s0, s1, i0, i1 in blocks(n, alphas.shape[0], rows):
        k, m = s1 - s0, i1 - i0
        bases = base_acts(s0, s1, i0, i1)
        leaves, diffs = [], []
        for ax, ab in zip(acts_x, bases):
            tail = tuple(ax.shape[1:])
            a = alphas[s0:s1, i0:i1].reshape((k, m) + (1,) * len(tail))
            diff = ax[None, i0:i1] - ab
            point = (ab + a * diff).reshape((k * m,) + tail)
            leaves.append(point if create_graph and point.requires_grad else point.detach().requires_grad_(True))
            diffs.append(diff)
        with torch.enable_grad(), Tap(modules, names, input_side, replace=leaves) as tap, \
                sample_rows(repeat_rows(i0, i1, k, t.device), n):
            o = model(*_rows(inputs, i0, i1, k))
            tap.check_called()
            s = score_fn(o, t[i0:i1].repeat(k))
            gs = torch.autograd.grad(s.sum(), leaves, create_graph=create_graph, allow_unused=True)
        # a layer whose effect is cut off by another replaced layer downstream gets zero gradient
        gs = [torch.zeros_like(v) if g is None else g for g, v in zip(gs, leaves)]
        for li, (g, diff) in enumerate(zip(gs, diffs)):
            g = g.reshape(diff.shape)
            term = diff * g if multiply else g
            part = torch.tensordot(weights[s0:s1], term, dims=1)
            if not create_graph:
                part = part.detach()
            store = parts[li]
            store[i0] = store[i0] + part if i0 in store else part
    out = []
    for store in parts:
        ps = [p for _, p in sorted(store.items())]
        out.append(ps[0] if len(ps) == 1 else torch.cat(ps))
    return out


class _Stop(Exception):
    pass


class NeuronModel(nn.Module):
    """``inputs -> (N, 1)``: one neuron (unit, channel, or a callable's selection) of a
    layer, so that any input-attribution explainer explains that neuron.

    ``neuron`` is a tuple of ints / slices indexing the layer's output after the batch
    dimension (selections with several entries are summed: an int for a conv layer is
    the sum of that channel's map), or a callable mapping the output (N, ...) to (N,).
    The forward pass stops at the layer.
    """

    def __init__(self, model, module: nn.Module, name: str, neuron: NeuronLike, input_side: bool = False):
        super().__init__()
        self.model = model
        self.module, self.name, self.neuron, self.input_side = module, name, neuron, input_side

    def select(self, a: torch.Tensor) -> torch.Tensor:
        if callable(self.neuron):
            v = self.neuron(a)
            if not isinstance(v, torch.Tensor) or v.shape != (a.shape[0],):
                raise ValueError(f"the neuron callable must return shape (N,) = ({a.shape[0]},), got "
                                 f"{tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__}")
            return v
        if len(self.neuron) > a.dim() - 1:
            raise ValueError(f"neuron={self.neuron} has {len(self.neuron)} entries but the output of layer "
                             f"{self.name!r} has shape {tuple(a.shape)} ({a.dim() - 1} dimensions after the batch)")
        for d, (v, size) in enumerate(zip(self.neuron, a.shape[1:])):
            if isinstance(v, int) and not -size <= v < size:
                raise ValueError(f"neuron={self.neuron} is out of range for layer {self.name!r} with output "
                                 f"shape {tuple(a.shape)} (dimension {d + 1} has {size} entries)")
        sel = a[(slice(None),) + tuple(self.neuron)]
        return sel.reshape(a.shape[0], -1).sum(1)

    def forward(self, *xs):
        store = {}

        def grab(value):
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"the output of layer {self.name!r} is not a tensor; pick a submodule")
            store["a"] = value
            raise _Stop

        if self.input_side:
            h = self.module.register_forward_pre_hook(lambda _m, args: grab(args[0]))
        else:
            h = self.module.register_forward_hook(lambda _m, _a, out: grab(out))
        try:
            self.model(*xs)
        except _Stop:
            pass
        finally:
            h.remove()
        if "a" not in store:
            raise ValueError(f"layer {self.name!r} was not called in the model's forward pass")
        return self.select(store["a"])[:, None]


# ------------------------------------------------------------------ the options
LAYER_DOC = """
    layer : str, nn.Module or list of them, optional
        Attribute to this layer instead of the input (a dotted module name such as
        ``"embedding"`` / ``"layer3.1.conv2"``, the module itself, or a list for several
        layers in one call; their attributions come back as a tuple). Integer inputs
        (token ids) are accepted then: attribute to the embedding's output.
        With ``neuron=``, the layer whose neuron is explained (attributions w.r.t. the input).
    attribute_to_layer_input : bool, default False
        Attribute to the layer's (first positional) input instead of its output.
    neuron : int, tuple of int/slice, or callable, optional
        Explain one neuron of ``layer`` instead of a class score: an index after the
        batch dimension (``(c, i, j)``; an int or a partial tuple selects a channel or
        slice, whose values are summed) or a callable mapping the layer's output (N, ...)
        to (N,). ``target`` is then not used."""


class LayerOptions:
    """``layer=``, ``attribute_to_layer_input=``, ``neuron=`` for an explainer; its
    ``_explain`` starts with ``r = self._layer_dispatch(...)`` and implements
    ``_explain_layer``."""

    layer = None
    attribute_to_layer_input = False
    neuron = None

    def _set_layer_options(self, layer, attribute_to_layer_input, neuron) -> None:
        self.layer = check_layer(layer)
        if not isinstance(attribute_to_layer_input, bool):
            raise TypeError("attribute_to_layer_input must be a bool")
        self.attribute_to_layer_input = attribute_to_layer_input
        self.neuron = check_neuron(neuron)
        if self.neuron is not None and self.layer is None:
            raise ValueError("neuron= needs layer= (the layer the neuron belongs to)")
        if self.neuron is not None and isinstance(self.layer, list):
            raise ValueError("neuron= explains a neuron of one layer; give one layer")

    def attributes_to_layer(self) -> bool:
        return self.layer is not None and self.neuron is None

    def _folds_batchnorm(self) -> bool:
        # the input gradient only needs the model's function; layer= and neuron= read a layer
        return self.layer is None

    def _layer_dispatch(self, model, x, target, create_graph):
        from .._adapter import ModelAdapter
        if self.layer is None or isinstance(model, NeuronModel):
            return None
        adapter = model if isinstance(model, ModelAdapter) else ModelAdapter(model)
        mods, names, several = resolve_layers(model, self.layer)
        if self.neuron is not None:
            nm = NeuronModel(adapter, mods[0], names[0], self.neuron, self.attribute_to_layer_input)
            e = self._explain(nm, x, 0, create_graph)
            neuron = self.neuron if not callable(self.neuron) else repr(self.neuron)
            params = dict(e.params, layer=names[0], neuron=neuron)
            return type(e)(**{**{f: getattr(e, f) for f in e.__dataclass_fields__}, "params": params})
        inputs = tuple(x) if isinstance(x, (tuple, list)) else (x,)
        e = self._explain_layer(adapter, inputs, target, create_graph, mods, names)
        return e

    def _leaves(self, inputs, create_graph):
        from .base import input_leaf
        return tuple(input_leaf(t, create_graph) if create_graph and t.is_floating_point() else t.detach()
                     for t in inputs)

    def _layer_result(self, attrs, inputs, t, out, create_graph, names, delta=None, extras=None):
        from ..explanation import Explanation
        several = isinstance(self.layer, list)
        if not create_graph:
            attrs = [a.detach() for a in attrs]
            out = out.detach()
            inputs = tuple(i.detach() for i in inputs)
        params = self._params_for_result()
        params["layer"] = layer_label(names, several)
        ex = {"attribute_to": "layer_input" if self.attribute_to_layer_input else "layer_output"}
        ex.update(extras or {})
        return Explanation(tuple(attrs) if several else attrs[0], inputs if len(inputs) > 1 else inputs[0], t, out,
                           self.name, params, delta=delta, extras=ex)


def add_layer_doc(cls):
    """Insert the ``layer`` / ``attribute_to_layer_input`` / ``neuron`` parameters into
    ``cls``'s docstring, at the end of its Parameters section."""
    doc = cls.__doc__ or ""
    ends = [doc.find(k) for k in ("\n\n    Shapes", "\n\n    Notes", "\n\n    Differentiable", "\n\n    References",
                                  "\n\n    Examples")]
    ends = [e for e in ends if e >= 0]
    at = min(ends) if ends else len(doc)
    cls.__doc__ = doc[:at] + LAYER_DOC + doc[at:]
    return cls
