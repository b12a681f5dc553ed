"""The one model adapter: whatever the user's model takes and returns, xadv sees
"a batch of tensors in, (N, K) scores out".

Forms handled here (and nowhere else):

* several input tensors: ``model(x1, x2, ...)``; explainers pack them into one flat
  (N, D1 + D2 + ...) tensor, explain that, and hand back one attribution per input;
* pass-through forward arguments (attention masks, lengths, flags) that are not
  attributed: ``forward_args`` (a tuple of extra positional arguments or a dict of
  keyword arguments). A tensor whose first dimension is the batch size N is per-sample
  and follows the rows when an explainer expands the batch (IG steps, SmoothGrad
  copies, occlusion windows); anything else is passed unchanged;
* outputs that are a tuple, a dict (``{"logits": ...}``), an object with ``.logits``
  (Hugging Face), or per-sample scalars (N,): ``output=`` (index, key, attribute name
  or callable) picks the (N, K) scores; (N,) becomes (N, 1) (target 0);
* the double backward through attention: :func:`double_backward_attention` chooses
  the math kernel of ``scaled_dot_product_attention`` (the fused kernels have no double
  backward) and restores the user's setting.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Mapping
from typing import Any, Callable, Iterator, Optional, Sequence, Tuple, Union

import torch
from torch import nn

OutputLike = Union[None, int, str, Callable[[Any], torch.Tensor]]
ForwardArgs = Union[None, tuple, list, dict]

# (row -> sample index LongTensor, batch size N) of the rows the next model call gets
_ROWS: contextvars.ContextVar = contextvars.ContextVar("xadv_sample_rows", default=None)


@contextlib.contextmanager
def sample_rows(idx: torch.Tensor, n: int) -> Iterator[None]:
    """Tell the adapter that the rows of the next model calls belong to samples ``idx``
    (LongTensor (rows,)) of a batch of ``n``. Nested calls compose (a SmoothGrad copy of
    an IG step maps back to the original sample)."""
    cur = _ROWS.get()
    if cur is not None:
        outer, n0 = cur
        idx = outer[idx.to(outer.device)]
        n = n0
    token = _ROWS.set((idx, n))
    try:
        yield
    finally:
        _ROWS.reset(token)


def repeat_rows(i0: int, i1: int, k: int, device) -> torch.Tensor:
    """Sample index of the rows ``x[None, i0:i1].expand(k, ...)`` flattened: (k * (i1 - i0),)."""
    return torch.arange(i0, i1, device=device).repeat(k)


def select_output(out: Any, output: OutputLike = None) -> torch.Tensor:
    """The (N, K) class scores in a model's output.

    ``output=None``: a tensor as it is; a dict's ``"logits"``; an object's ``.logits``;
    a tuple's or list's first element. An int indexes a tuple, a str keys a dict or names
    an attribute, a callable gets the raw output. Per-sample scalars (N,) become (N, 1).
    """
    if callable(output) and not isinstance(output, (str, int)):
        out = output(out)
    elif isinstance(output, bool):
        raise TypeError("output must be None, an int, a str or a callable, got bool")
    elif isinstance(output, int):
        if not isinstance(out, (tuple, list)):
            raise TypeError(f"output={output} indexes a tuple, but the model returned {type(out).__name__}")
        if not -len(out) <= output < len(out):
            raise ValueError(f"output={output} is out of range: the model returned {len(out)} outputs")
        out = out[output]
    elif isinstance(output, str):
        if isinstance(out, Mapping):
            if output not in out:
                raise ValueError(f"output={output!r} is not a key of the model's output; keys: {list(out)}")
            out = out[output]
        elif hasattr(out, output):
            out = getattr(out, output)
        else:
            raise TypeError(f"output={output!r} names a key or attribute, but the model returned "
                            f"{type(out).__name__}")
    elif output is not None:
        raise TypeError(f"output must be None, an int, a str or a callable, got {type(output).__name__}")
    elif not isinstance(out, torch.Tensor):
        if isinstance(out, Mapping):
            if "logits" not in out:
                raise TypeError(f"the model returned a dict without 'logits' (keys: {list(out)}); "
                                f"pass output='<key>' or a callable to choose the class scores")
            out = out["logits"]
        elif hasattr(out, "logits"):
            out = out.logits
        elif isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
            out = out[0]
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the model must return a tensor of class scores (or a tuple/dict holding one; "
                        f"choose it with output=), got {type(out).__name__}")
    if out.dim() == 1:
        out = out[:, None]
    return out


class Packing:
    """Several input tensors as one flat (N, D1 + D2 + ...) tensor and back.

    Examples
    --------
    >>> import torch
    >>> p = Packing((torch.zeros(2, 3), torch.ones(2, 1, 2)))
    >>> z = p.pack((torch.zeros(2, 3), torch.ones(2, 1, 2)))
    >>> z.shape, [t.shape for t in p.unpack(z)]
    (torch.Size([2, 5]), [torch.Size([2, 3]), torch.Size([2, 1, 2])])
    """

    def __init__(self, inputs: Sequence[torch.Tensor]):
        self.shapes = [tuple(t.shape[1:]) for t in inputs]
        self.sizes = [math.prod(s) for s in self.shapes]

    def pack(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(inputs) != len(self.shapes):
            raise ValueError(f"expected {len(self.shapes)} input tensors, got {len(inputs)}")
        parts = []
        for t, s in zip(inputs, self.shapes):
            if tuple(t.shape[1:]) != s:
                raise ValueError(f"an input of shape {tuple(t.shape)} does not match (N, {', '.join(map(str, s))})")
            parts.append(t.reshape(t.shape[0], -1))
        return torch.cat(parts, dim=1)

    def pack_like(self, values, like: Sequence[torch.Tensor], name: str = "baseline"):
        """Pack per-input values (a tuple of tensors/numbers, one per input) like ``like``."""
        if not isinstance(values, (tuple, list)) or len(values) != len(like):
            raise ValueError(f"with {len(like)} inputs, {name} must be a tuple of {len(like)} values "
                             f"(one per input), got {type(values).__name__}")
        parts = []
        for v, t in zip(values, like):
            if isinstance(v, torch.Tensor):
                v = v.to(device=t.device, dtype=t.dtype)
                rows = v.shape[0] if v.dim() == t.dim() else 1
                v = torch.broadcast_to(v if v.dim() == t.dim() else v[None], (rows,) + tuple(t.shape[1:]))
            else:
                v = torch.full((1,) + tuple(t.shape[1:]), float(v), dtype=t.dtype, device=t.device)
            parts.append(v.reshape(v.shape[0], -1))
        rows = max(p.shape[0] for p in parts)
        return torch.cat([p.expand(rows, -1) for p in parts], dim=1)

    def unpack(self, z: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        out, start = [], 0
        for s, d in zip(self.shapes, self.sizes):
            out.append(z[:, start:start + d].reshape((z.shape[0],) + s))
            start += d
        return tuple(out)


def _per_sample(v, rows: int):
    cur = _ROWS.get()
    if not isinstance(v, torch.Tensor) or cur is None:
        return v
    idx, n = cur
    if v.dim() == 0 or v.shape[0] != n:
        return v
    if idx.shape[0] != rows:  # pragma: no cover - an explainer that forgot to declare its rows
        raise RuntimeError(f"internal: {rows} rows sent to the model, {idx.shape[0]} declared")
    return v[idx.to(v.device)]


class ModelAdapter(nn.Module):
    """A model seen as "one tensor (or several) in, (N, K) scores out".

    Parameters
    ----------
    model : nn.Module or callable
        The user's model (kept as the submodule ``model``; never changed).
    output : None, int, str or callable, default None
        Which part of the model's output holds the class scores (see
        :func:`select_output`): ``None`` takes a tensor, a dict's ``"logits"``, an
        object's ``.logits`` or a tuple's first element; (N,) scalars become (N, 1).
    forward_args : tuple, list or dict, optional
        Extra positional (tuple/list) or keyword (dict) arguments passed through on every
        call and never attributed. Tensors whose first dimension is the batch size
        follow the rows when xadv expands the batch (e.g. an attention mask per sample).
    inputs : tensor or tuple of tensors, optional
        Example inputs of a model that takes several tensors: the adapter then takes
        ONE flat tensor (N, D1 + D2 + ...) (from :meth:`pack`) and unpacks it, so every
        attack, fooling attack, detector and metric can run on several inputs.

    Examples
    --------
    >>> import torch, xadv
    >>> class Net(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.fc = torch.nn.Linear(4, 3)
    ...     def forward(self, x, scale=1.0):
    ...         return {"logits": self.fc(x) * scale, "features": x}
    >>> m = xadv.adapt(Net(), output="logits", forward_args={"scale": 2.0})
    >>> m(torch.rand(5, 4)).shape
    torch.Size([5, 3])
    >>> two = xadv.adapt(lambda a, b: a.sum(1, keepdim=True) * b, inputs=(torch.rand(2, 3), torch.rand(2, 1)))
    >>> z = two.pack(torch.ones(2, 3), torch.full((2, 1), 2.0))
    >>> z.shape, two(z).flatten().tolist()
    (torch.Size([2, 4]), [6.0, 6.0])
    """
    _xadv_wrapper = True  # xadv._validation.check_fits_model looks through it

    def __init__(self, model, output: OutputLike = None, forward_args: ForwardArgs = None, inputs=None):
        super().__init__()
        if not isinstance(model, nn.Module) and not callable(model):
            raise TypeError(f"model must be a torch.nn.Module or a callable, got {type(model).__name__}")
        if isinstance(model, nn.Module):
            self.model = model
        else:
            object.__setattr__(self, "model", model)
        if forward_args is not None and not isinstance(forward_args, (tuple, list, dict)):
            raise TypeError("forward_args must be a tuple/list of extra positional arguments or a dict of "
                            f"keyword arguments, got {type(forward_args).__name__}")
        if output is not None and not isinstance(output, (int, str)) and not callable(output):
            raise TypeError(f"output must be None, an int, a str or a callable, got {type(output).__name__}")
        self.output = output
        self.forward_args = forward_args
        self.packing = None
        if inputs is not None:
            inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
            self.packing = Packing(inputs)
        # follow the user's model: an adapter is in the mode of what it wraps
        self.training = getattr(model, "training", False)

    def pack(self, *inputs: torch.Tensor) -> torch.Tensor:
        """The inputs as one flat tensor (N, D1 + D2 + ...) for this adapter."""
        if self.packing is None:
            raise ValueError("pack() needs an adapter built with inputs=(example tensors)")
        return self.packing.pack(inputs)

    def unpack(self, z: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """The inverse of :meth:`pack`: one tensor per input."""
        if self.packing is None:
            raise ValueError("unpack() needs an adapter built with inputs=(example tensors)")
        return self.packing.unpack(z)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if self.packing is not None:
            if len(xs) != 1:
                raise ValueError("this adapter takes one packed tensor (see pack())")
            xs = self.packing.unpack(xs[0])
        rows = xs[0].shape[0]
        args, kwargs = (), {}
        fa = self.forward_args
        if isinstance(fa, dict):
            kwargs = {k: _per_sample(v, rows) for k, v in fa.items()}
        elif fa is not None:
            args = tuple(_per_sample(v, rows) for v in fa)
        out = select_output(self.model(*xs, *args, **kwargs), self.output)
        return out

    def extra_repr(self) -> str:
        parts = []
        if self.output is not None:
            parts.append(f"output={self.output!r}")
        if self.forward_args is not None:
            parts.append(f"forward_args={type(self.forward_args).__name__}")
        if self.packing is not None:
            parts.append(f"inputs={self.packing.shapes}")
        return ", ".join(parts)


def adapt(model, output: OutputLike = None, forward_args: ForwardArgs = None, inputs=None) -> ModelAdapter:
    """Wrap ``model`` so it maps (N, ...) to (N, K) scores (see :class:`ModelAdapter`).

    Use it to hand any attack, fooling attack, detector or metric a model with dict or
    tuple outputs, per-sample scalar outputs, pass-through arguments or several inputs.
    """
    return ModelAdapter(model, output=output, forward_args=forward_args, inputs=inputs)


def unwrap(model):
    """The user's model inside any :class:`ModelAdapter` layers."""
    while isinstance(model, ModelAdapter):
        model = model.model
    return model


def _has_attention(model) -> bool:
    return isinstance(model, nn.Module) and any(isinstance(m, nn.MultiheadAttention) or "Attention" in
                                                type(m).__name__ for m in model.modules())


@contextlib.contextmanager
def double_backward_attention(enabled: bool = True) -> Iterator[None]:
    """Inside: ``scaled_dot_product_attention`` runs its math kernel (twice
    differentiable; the flash / memory-efficient kernels have no double backward).
    The user's kernel setting is restored on exit."""
    if not enabled:
        yield
        return
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - older torch
        yield
        return
    with sdpa_kernel([SDPBackend.MATH]):
        yield


class _LayerHead(nn.Module):
    def __init__(self, model, module, name, input_side):
        super().__init__()
        self.model, self.module, self.name, self.input_side = model, module, name, input_side

    def forward(self, acts, *inputs):
        from .explainers._layer import Tap
        with Tap([self.module], [self.name], self.input_side, replace=[acts]) as tap:
            out = self.model(*inputs)
        tap.check_called()
        return out


def layer_head(model, layer, inputs, *, attribute_to_layer_input: bool = False, forward_args: ForwardArgs = None,
               output: OutputLike = None) -> Tuple[torch.Tensor, ModelAdapter]:
    """Split ``model`` at ``layer``: ``(activations, head)`` where ``activations`` is the
    layer's output on ``inputs`` (N, ...) and ``head(a)`` the model's (N, K) scores with
    that output replaced by ``a``.

    ``head`` is an ordinary float-input model, so every explainer, attack, fooling
    attack and detector runs on it: e.g. attacks and explanation-fooling in the
    embedding space of a token model (give the attacks ``bounds`` that fit the
    activations). The inputs (token ids) follow their rows as pass-through arguments.

    Examples
    --------
    >>> import torch, xadv
    >>> text = xadv.zoo.text_classifier()
    >>> ids = torch.tensor([[2, 7, 9, 0], [4, 8, 8, 0]])
    >>> emb, head = xadv.layer_head(text, "embedding", ids)
    >>> emb.shape, torch.allclose(head(emb), text(ids))
    (torch.Size([2, 4, 16]), True)
    """
    _xadv_wrapper = True  # xadv._validation.check_fits_model looks through it
    from ._validation import find_module
    inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    inner = ModelAdapter(model, output=output, forward_args=forward_args)
    module = find_module(unwrap(model), layer)
    names = [n for n, m in unwrap(model).named_modules() if m is module and n]
    name = names[0] if names else type(module).__name__
    store = {}

    def grab(value):
        store["a"] = value

    if attribute_to_layer_input:
        h = module.register_forward_pre_hook(lambda _m, args: grab(args[0]))
    else:
        h = module.register_forward_hook(lambda _m, _a, out: grab(out))
    try:
        with torch.no_grad():
            inner(*inputs)
    finally:
        h.remove()
    if "a" not in store:
        raise ValueError(f"layer {name!r} was not called in the model's forward pass")
    head = ModelAdapter(_LayerHead(inner, module, name, attribute_to_layer_input), forward_args=inputs)
    return store["a"].detach(), head
