"""The explainer contract: parameters in ``__init__``, model and batch at call time."""
from __future__ import annotations

from typing import Any, Callable, ClassVar, Dict, Tuple, Union

import torch
import torch.nn.functional as F

from .._common import ParamsMixin
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
    """Rows per batched pass when ``batch_size`` is not given, from ``x``'s device and
    the size of one sample (see ``BATCH_ELEMENTS``)."""
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
    out = model(x)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the model must return a tensor of class scores, got {type(out).__name__}")
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

    def __call__(self, model, x: torch.Tensor, target: TargetLike = None, *,
                 create_graph: bool = False) -> Explanation:
        """Explain ``model`` on the batch ``x``.

        Parameters
        ----------
        model : torch.nn.Module or callable
            Maps (N, ...) inputs to (N, K) class scores.
        x : Tensor (N, ...)
            Floating point, batch first, on the model's device.
        target : None, int, sequence, LongTensor (N,) or callable, default None
            Class to explain; ``None`` takes the predicted class.
        create_graph : bool, default False
            Keep the graph so attributions are differentiable w.r.t. ``x`` and the
            model's parameters (only for ``differentiable`` explainers).
        """
        check_model(model)
        check_inputs(x, model, min_dim=self.min_dim)
        if not isinstance(create_graph, bool):
            raise TypeError("create_graph must be a bool")
        if create_graph and not self.differentiable:
            raise TypeError(
                f"{type(self).__name__} is not differentiable (it samples or fits a surrogate); "
                f"create_graph=True is supported by gradient methods and Grad-CAM"
            )
        if self.differentiable and (torch.is_inference_mode_enabled() or x.is_inference()):
            raise RuntimeError(
                f"{type(self).__name__} needs gradients, but "
                + ("it was called inside torch.inference_mode()" if torch.is_inference_mode_enabled()
                   else "x was created inside torch.inference_mode() (an inference tensor)")
                + "; call it outside inference_mode (torch.no_grad() around it is fine) or pass x.clone() "
                  "made outside inference_mode"
            )
        with preserved(model):
            return self._explain(model, x, target, create_graph)

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
            elif isinstance(v, torch.Generator) or callable(v):
                out[k] = repr(v)
            else:
                out[k] = v
        return out

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"
