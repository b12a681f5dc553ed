"""The explainer contract: parameters in ``__init__``, model and batch at call time."""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable, ClassVar, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from .._adapter import ModelAdapter, _has_attention, double_backward_attention, select_output, unwrap
from .._common import ParamsMixin
from .._fold import folded
from ._entry import fast_input_gradient
from .._model import preserved
from .._validation import TargetLike, check_inputs, check_model, resolve_target
from ..explanation import Explanation

ScoreLike = Union[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]
_SCORES = ("logit", "log_softmax", "softmax")


#: default size of one batched pass (IG steps, SmoothGrad samples): as many rows as
#: hold about this many input elements. Moderate passes stay in the CPU's caches:
#: digits CNN, batch 64, one thread, interleaved medians: 128-row passes 1.1 s for
#: IG-50, 320-row passes 1.7 s, captum's default single 3200-row pass 3-4x slower.
#: Accelerators want large passes. Memory is bounded by the rows, never by
#: ``steps * N``.
BATCH_ELEMENTS = {"cpu": 2 ** 17, "other": 2 ** 22}
#: cap on the default rows per pass
MAX_BATCH_ROWS = {"cpu": 2048, "other": 8192}


def default_batch_rows(x: torch.Tensor) -> int:
    """Rows holding about ``BATCH_ELEMENTS`` input elements: the fallback of the chunking
    policy (:mod:`xadv.explainers.chunking`) for models it does not probe (training mode,
    plain callables)."""
    kind = "cpu" if x.device.type == "cpu" else "other"
    per_row = max(1, x[0].numel())
    return max(1, min(MAX_BATCH_ROWS[kind], BATCH_ELEMENTS[kind] // per_row))


def balanced_slices(n: int, rows: int):
    """Split ``range(n)`` into the fewest slices of at most ``rows``, of near-equal size."""
    parts = -(-n // max(1, rows))
    size = -(-n // parts)
    return [(i, min(i + size, n)) for i in range(0, n, size)]


def check_score(score: ScoreLike) -> ScoreLike:
    if callable(score) or score in _SCORES:
        return score
    raise ValueError(f"score must be one of {_SCORES} or a callable (output, target) -> (N,), got {score!r}")


def select_score(output: torch.Tensor, target: torch.Tensor, score: ScoreLike = "logit") -> torch.Tensor:
    """The per-sample scalar that is explained: shape (N,).

    ``logit`` takes ``output[n, target[n]]``; ``log_softmax``/``softmax`` apply that
    function first; a callable gets ``(output, target)`` and returns (N,).
    """
    if callable(score):
        s = score(output, target)
        if s.shape != (output.shape[0],):
            raise ValueError(f"the score callable must return shape (N,), got {tuple(s.shape)}")
        return s
    if score == "log_softmax":
        output = F.log_softmax(output, dim=1)
    elif score == "softmax":
        output = F.softmax(output, dim=1)
    return output.gather(1, target[:, None]).squeeze(1)


def forward(model, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` as (N, K) scores: dict (``"logits"``), ``.logits``, tuple (first
    element) and per-sample scalar (N,) outputs are turned into (N, K) by
    :func:`xadv._adapter.select_output` (choose another part with ``output=``)."""
    out = select_output(model(x))
    if out.dim() != 2 or out.shape[0] != x.shape[0]:
        raise ValueError(
            f"the model must return shape (N, K) for a batch of N={x.shape[0]}, got {tuple(out.shape)}"
        )
    return out


def input_leaf(x: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """A tensor to differentiate with respect to. With ``create_graph`` and an ``x``
    that is already part of a graph, ``x`` itself is kept so results stay connected."""
    if create_graph and x.requires_grad:
        return x
    return x.detach().requires_grad_(True)


def gradient(model, x: torch.Tensor, target: TargetLike, *, score: ScoreLike = "logit",
             create_graph: bool = False) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradient of the selected score w.r.t. ``x``.

    Returns ``(grad, output, target, inputs)`` where ``inputs`` is ``x`` detached, or
    with ``create_graph`` the tensor the graph starts from (``x`` itself when it
    already requires grad, else a fresh leaf that requires grad).
    """
    xi = input_leaf(x, create_graph)
    with torch.enable_grad():
        out = forward(model, xi)
        t = resolve_target(target, out)
        s = select_score(out, t, score)
        (g,) = torch.autograd.grad(s.sum(), xi, create_graph=create_graph)
    if not create_graph:
        return g, out.detach(), t, x.detach()
    return g, out, t, xi


class Explainer(ParamsMixin):
    """Base class of every explainer.

    Subclasses set ``name`` and ``differentiable`` and implement
    ``_explain(model, x, target, create_graph) -> Explanation``. Calling the
    explainer checks the inputs, keeps the model unchanged (mode, ``requires_grad``,
    hooks; restored even when an error is raised) and refuses ``create_graph=True``
    when the method cannot give a differentiable result.
    """

    name: ClassVar[str] = ""
    differentiable: ClassVar[bool] = True
    #: image methods need (N, C, H, W); others accept any batch-first shape
    min_dim: ClassVar[int] = 2

    #: whether integer inputs (token ids) are accepted without ``layer=`` (perturbation methods)
    accepts_integer_inputs: ClassVar[bool] = False
    #: whether a model with several input tensors is supported (packed into one flat tensor)
    multi_input: ClassVar[bool] = True

    def attributes_to_layer(self) -> bool:
        """Whether this explainer attributes to a layer (``layer=`` without ``neuron=``)."""
        return False

    def __call__(self, model, x, target: TargetLike = None, *, create_graph: bool = False,
                 forward_args=None, output=None) -> Explanation:
        """Explain ``model`` on the batch ``x``.

        Parameters
        ----------
        model : torch.nn.Module or callable
            Maps (N, ...) inputs to (N, K) class scores (or to a tuple/dict holding them,
            or to per-sample scalars (N,), see ``output``).
        x : Tensor (N, ...) or tuple of Tensors
            Floating point, batch first, on the model's device. A tuple is a model with
            several inputs, ``model(x[0], x[1], ...)``: the attributions come back as a
            tuple too, one tensor per input. Integer tensors (token ids) are accepted when
            the explainer attributes to a layer (``layer=`` the embedding) and by
            Occlusion (tokens replaced by a baseline id).
        target : None, int, sequence, LongTensor (N,) or (1,), or callable, default None
            Class to explain; ``None`` takes the predicted class; one value is used for
            the whole batch. Not used with ``neuron=`` (the neuron is explained).
        create_graph : bool, default False
            Keep the graph so attributions are differentiable w.r.t. ``x`` and the
            model's parameters (only for ``differentiable`` explainers).
        forward_args : tuple or dict, optional
            Passed through to the model after the inputs (a tuple of positional or a dict
            of keyword arguments) and not attributed, as captum's
            ``additional_forward_args``. Tensors whose first dimension is N follow their
            samples when the batch is expanded (IG steps, noisy copies, windows).
        output : None, int, str or callable, default None
            Which part of the model's output holds the (N, K) scores: an index into a
            tuple, a dict key / attribute name, or a callable on the raw output. ``None``
            takes a tensor, a dict's ``"logits"``, an object's ``.logits`` or a tuple's
            first element; per-sample scalars (N,) are explained as one class (target 0).
        """
        check_model(model)
        if not isinstance(create_graph, bool):
            raise TypeError("create_graph must be a bool")
        if create_graph and not self.differentiable:
            raise TypeError(
                f"{type(self).__name__} is not differentiable (it samples or fits a surrogate); "
                f"create_graph=True is supported by gradient methods and Grad-CAM"
            )
        if self.differentiable and (torch.is_inference_mode_enabled() or any(
                isinstance(t, torch.Tensor) and t.is_inference() for t in (x if isinstance(x, (tuple, list)) else (x,)))):
            raise RuntimeError(
                f"{type(self).__name__} needs gradients, but "
                + ("it was called inside torch.inference_mode()" if torch.is_inference_mode_enabled()
                   else "x was created inside torch.inference_mode() (an inference tensor)")
                + "; call it outside inference_mode (torch.no_grad() around it is fine) or pass x.clone() "
                  "made outside inference_mode"
            )
        multi = isinstance(x, (tuple, list))
        inputs = tuple(x) if multi else (x,)
        if not inputs:
            raise ValueError("x is an empty tuple; give one tensor or one tensor per model input")
        layer_mode = self.attributes_to_layer()
        if multi and not self.multi_input and not layer_mode:
            raise ValueError(f"{type(self).__name__} explains one input tensor (an image); this model takes "
                             f"{len(inputs)}: use a gradient, path or occlusion method for several inputs")
        allow_int = layer_mode or self.accepts_integer_inputs
        for i, t in enumerate(inputs):
            check_inputs(t, model, min_dim=2 if multi else self.min_dim, name=f"x[{i}]" if multi else "x",
                         allow_integer=allow_int, whole_input=not multi)
        if multi and len({t.shape[0] for t in inputs}) > 1:
            raise ValueError(f"the inputs have different batch sizes {[t.shape[0] for t in inputs]}")
        if target is not None and self._explains_neuron():
            raise ValueError("with neuron= the neuron's value is explained and target is not used; "
                             "leave target=None")
        attention = create_graph and _has_attention(unwrap(model))
        # parameters frozen inside unless the caller may differentiate w.r.t. them
        with preserved(model, freeze=not create_graph), double_backward_attention(attention):
            m = model
            plain = not create_graph and not multi and forward_args is None and self._folds_batchnorm()
            if plain:
                m = folded(model, x)   # eval-mode BatchNorm folded into the layer before it (xadv._fold)
            if multi or forward_args is not None or output is not None:
                m = ModelAdapter(model, output=output, forward_args=forward_args,
                                 inputs=inputs if multi and not layer_mode else None)
            if multi and not layer_mode:
                return self._explain_packed(m, inputs, target, create_graph)
            if plain and output is None:
                # the entry convolution's input gradient by a matrix product (xadv.explainers._entry)
                with fast_input_gradient(m, x):
                    return self._explain(m, x, target, create_graph)
            return self._explain(m, x if not multi else inputs, target, create_graph)

    def _folds_batchnorm(self) -> bool:
        """Whether this explainer only needs the model's function and its input gradient,
        so it may run the BatchNorm-folded copy (:mod:`xadv._fold`)."""
        return False

    def _explains_neuron(self) -> bool:
        return getattr(self, "neuron", None) is not None

    # ------------------------------------------------------- several inputs
    _PACKED_ATTRS = ("baseline", "background", "feature_mask")

    def _packed_copy(self, packing, inputs) -> "Explainer":
        """A shallow copy whose per-input options (tuples of baselines, backgrounds,
        feature masks; baseline callables) work on the packed inputs."""
        est = copy.copy(self)
        for name in self._PACKED_ATTRS:
            v = getattr(self, name, None)
            if isinstance(v, (tuple, list)):
                if name == "feature_mask":
                    parts = []
                    for mk, t in zip(v, inputs):
                        mk = torch.as_tensor(mk, device=t.device)
                        mk = mk if mk.dim() == t.dim() else mk[None]
                        parts.append(torch.broadcast_to(mk, (mk.shape[0],) + tuple(t.shape[1:])).reshape(mk.shape[0], -1))
                    rows = max(p.shape[0] for p in parts)
                    setattr(est, name, torch.cat([p.expand(rows, -1) for p in parts], dim=1))
                else:
                    setattr(est, name, packing.pack_like(v, inputs, name))
            elif name in ("baseline", "background") and callable(v) and not isinstance(v, (str, torch.Tensor)):
                def packed(z, fn=v, name=name):
                    parts = packing.unpack(z)
                    b = fn(parts)
                    b = b if isinstance(b, (tuple, list)) else (b,)
                    if name == "background":  # reference rows (M, ...) per input, equal M
                        if len(b) != len(parts) or not all(isinstance(t, torch.Tensor) for t in b):
                            raise ValueError(f"with {len(parts)} inputs the background callable must return a "
                                             f"tuple of {len(parts)} tensors (M, ...), one per input")
                        rows = {t.shape[0] for t, p in zip(b, parts) if t.dim() == p.dim()}
                        if len(rows - {1}) > 1:
                            raise ValueError(f"the background callable returned {sorted(rows)} reference rows "
                                             f"for the inputs; give every input the same number M")
                    return packing.pack_like(b, parts, name)
                setattr(est, name, packed)
        if hasattr(est, "base") and isinstance(est.base, Explainer):
            est.base = est.base._packed_copy(packing, inputs)
        return est

    def _explain_packed(self, m, inputs, target, create_graph) -> Explanation:
        packing = m.packing
        leaves = tuple(input_leaf(t, create_graph) if create_graph else t.detach() for t in inputs)
        z = packing.pack(leaves)
        e = self._packed_copy(packing, inputs)._explain(m, z, target, create_graph)
        extras = dict(e.extras)
        for k, v in e.extras.items():
            if isinstance(v, torch.Tensor) and v.shape == z.shape:
                extras[k] = packing.unpack(v)
        extras["inputs"] = len(inputs)
        return dataclasses.replace(e, attributions=packing.unpack(e.attributions), inputs=leaves, extras=extras)

    def _explain(self, model, x, target, create_graph) -> Explanation:  # pragma: no cover
        raise NotImplementedError

    # -------------------------------------------------------------- params
    def _params_for_result(self) -> Dict[str, Any]:
        out = {}
        for k, v in self.get_params().items():
            if isinstance(v, Explainer):
                out[k] = repr(v)
            elif isinstance(v, torch.Tensor):
                out[k] = "tensor" + str(tuple(v.shape))
            elif isinstance(v, torch.nn.Module):
                # the class, not the repr: a module's repr is its whole subtree (ResNet-50's
                # layer4: 0.13 ms per call); layer explainers record the dotted name instead
                out[k] = type(v).__name__
            elif isinstance(v, torch.Generator) or callable(v):
                out[k] = repr(v)
            else:
                out[k] = v
        if isinstance(out.get("layer"), (list, tuple)):
            out["layer"] = repr([type(v).__name__ if isinstance(v, torch.nn.Module) else v for v in out["layer"]])
        return out

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"
