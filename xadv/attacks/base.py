"""The attack contract: budget in ``__init__``, model and batch at call time.

``attack(model, x, y) -> AttackResult``. The base class checks the inputs, keeps
the user's model unchanged (``xadv._model.preserved``), counts model queries,
runs ``_attack`` and fills every field of :class:`xadv.results.AttackResult`.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from .._common import ParamsMixin, make_generator  # noqa: F401  (make_generator re-exported)
from .._fold import folded
from ..explainers._entry import fast_input_gradient
from .._model import preserved
from .._validation import check_bounds, check_inputs, check_model, resolve_target
from ..explainers import Explainer
from ..explainers.base import forward
from ..explainers.chunking import PER_SAMPLE_ROWS, PROBING, prefers_channels_last as eval_channels_last  # noqa: F401
from ..results import AttackResult

_NORMS = ("linf", "l2", "l0")


def check_norm(norm: str, allowed=_NORMS) -> str:
    if not isinstance(norm, str) or norm.lower() not in allowed:
        raise ValueError(f"norm must be one of {allowed}, got {norm!r}")
    return norm.lower()


def check_nonneg(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}") from None
    if not v >= 0 or v != v or v == float("inf"):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def view_batch(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample (N,) tensor to broadcast against ``like`` (N, ...)."""
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


def check_batch_size(batch_size) -> Optional[int]:
    """``None`` or a positive int (rows per model call)."""
    if batch_size is None:
        return None
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int (rows per model call) or None, got {batch_size!r}")
    return batch_size


def row_chunks(n: int, rows: Optional[int]):
    """``(start, stop)`` row ranges of at most ``rows`` (one range when ``rows`` is None)."""
    if rows is None or rows >= n:
        return [(0, n)]
    return [(i, min(i + rows, n)) for i in range(0, n, rows)]


def map_rows(fn: Callable, rows: Optional[int], *tensors):
    """``fn`` on row chunks of ``tensors`` (None entries passed as None), outputs concatenated.

    ``fn`` returns a tensor or a tuple of tensors (None entries stay None). Samples are
    independent, so the result equals ``fn(*tensors)`` up to float rounding while every
    model call sees at most ``rows`` rows and only one chunk's graph lives at a time.
    """
    n = next(t.shape[0] for t in tensors if t is not None)
    spans = row_chunks(n, rows)
    if len(spans) == 1:
        return fn(*tensors)
    outs = [fn(*(None if t is None else t[a:b] for t in tensors)) for a, b in spans]
    if isinstance(outs[0], tuple):
        return tuple(None if parts[0] is None else torch.cat(parts) for parts in zip(*outs))
    return torch.cat(outs)


def forward_rows(model, x: torch.Tensor, rows: Optional[int]) -> torch.Tensor:
    """The model's (N, K) output without a graph, in calls of at most ``rows`` rows."""
    with torch.no_grad():
        return map_rows(lambda z: forward(model, z).detach(), rows, x)


def evaluation_pass(model, x: torch.Tensor, rows: Optional[int]) -> torch.Tensor:
    """The outputs for the result (predictions, confidences, success): a forward pass only,
    channels-last on a CPU when :func:`eval_channels_last` measured it faster for this
    model and shape (values equal to float rounding), else in the layout of ``x``."""
    if eval_channels_last(model, x, rows):
        try:
            return forward_rows(model, x.clone(memory_format=torch.channels_last), rows)
        except RuntimeError:
            pass
    return forward_rows(model, x, rows)


def perturbation_norms(delta: torch.Tensor) -> Dict[str, torch.Tensor]:
    """``l0`` (count of changed features), ``l2`` and ``linf`` of each sample's perturbation."""
    flat = delta.detach().reshape(delta.shape[0], -1)
    return {
        "l0": (flat != 0).sum(1).to(flat.dtype),
        "l2": flat.norm(p=2, dim=1),
        "linf": flat.abs().max(1).values if flat.shape[1] else flat.new_zeros(flat.shape[0]),
    }


def project(delta: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """Project perturbations onto the ``norm`` ball of radius ``eps`` (per sample).

    ``linf``: clamp; ``l2``: rescale samples whose norm exceeds ``eps``; ``l0``: keep
    the ``int(eps)`` largest-magnitude features and zero the others.
    """
    if norm == "linf":
        return delta.clamp(-eps, eps)
    n = delta.shape[0]
    flat = delta.reshape(n, -1)
    if norm == "l2":
        nrm = flat.norm(p=2, dim=1)
        factor = torch.where(nrm > eps, eps / nrm.clamp_min(1e-30), torch.ones_like(nrm))
        return delta * view_batch(factor, delta)
    if norm == "l0":
        k = int(eps)
        if k >= flat.shape[1]:
            return delta
        if k <= 0:
            return torch.zeros_like(delta)
        idx = flat.abs().topk(k, dim=1).indices
        keep = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, idx, True)
        return (flat * keep).reshape(delta.shape)
    raise ValueError(f"unknown norm {norm!r}")


class QueryCounter:
    """Counts the rows (samples) passed through the model's forward while active.

    For an ``nn.Module`` a forward pre-hook is attached (the hook dictionary is
    restored by ``preserved``); a plain callable is wrapped instead.
    """

    def __init__(self, model):
        self.rows = 0
        self.model = model
        self._handle = None
        # explainers inside the attack give every sample its own rows (no shared baseline
        # row), so the per-sample counts do not depend on the batch
        self._token = PER_SAMPLE_ROWS.set(True)
        if isinstance(model, torch.nn.Module):
            self._handle = model.register_forward_pre_hook(self._hook)
            self.wrapped = model
        else:
            def wrapped(x):
                if not PROBING.get():
                    self.rows += int(x.shape[0])
                return model(x)
            self.wrapped = wrapped

    def _hook(self, module, args):
        # the rows-per-pass policy's timing probes are not queries of the attack
        if args and isinstance(args[0], torch.Tensor) and not PROBING.get():
            self.rows += int(args[0].shape[0])

    def take(self) -> int:
        """Rows counted since the last ``take``."""
        r, self.rows = self.rows, 0
        return r

    def close(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if self._token is not None:
            PER_SAMPLE_ROWS.reset(self._token)
            self._token = None


class Attack(ParamsMixin):
    """Base class of every attack.

    Subclasses implement ``_attack(ctx) -> (x_adv, extras)`` where ``ctx`` is an
    :class:`AttackContext`, and set ``norm``/``bounds``/``targeted`` attributes.
    Calling the attack validates inputs, keeps the model and the inputs unchanged,
    counts queries and returns an :class:`~xadv.results.AttackResult`.
    """

    #: whether the attack needs gradients of the model (False: query-only)
    white_box: bool = True
    #: whether ``targeted=True`` is supported
    supports_targeted: bool = True
    #: whether ``targeted=False`` is supported
    supports_untargeted: bool = True

    targeted: bool = False
    bounds: Tuple[float, float] = (0.0, 1.0)
    #: rows per model call (clean pass, attack steps, final evaluation); None = the whole batch
    batch_size: Optional[int] = None

    def __call__(self, model, x, y=None, *, forward_args=None, output=None, perturb=None,
                 eps=None) -> AttackResult:
        """Attack ``model`` on the batch ``x``.

        Parameters
        ----------
        model : torch.nn.Module or callable
            Maps (N, ...) inputs in ``bounds`` to (N, K) class scores (logits), or to a
            dict (``"logits"``), an object with ``.logits``, a tuple (first element) or
            per-sample scalars (N,); choose another part with ``output``.
        x : Tensor (N, ...) or tuple of Tensors
            Clean inputs inside ``bounds``; never modified. A tuple is a model with several
            inputs, ``model(x[0], x[1], ...)`` (as for explainers).
        y : int, sequence or LongTensor (N,), optional
            True labels (untargeted) or target labels (``targeted=True``). ``None``
            uses the model's predictions (untargeted only).
        forward_args : tuple or dict, optional
            Passed to the model after the inputs and never perturbed (a tuple of positional
            or a dict of keyword arguments). Tensors whose first dimension is N follow
            their samples.
        output : None, int, str or callable, default None
            Which part of the model's output holds the (N, K) scores: a tuple index, a dict
            key / attribute name, or a callable on the raw output (as for explainers).
        perturb : int, sequence of int or "all", default "all"
            With several inputs: which of them the attack changes; the others are passed
            through unchanged. One perturbed input keeps its shape (image attacks such as
            Square run on it); several are attacked as one packed vector (one joint budget;
            Square, AutoAttack's standard version and patches then refuse).
        eps : sequence of float, optional
            With several inputs and an Linf/L2 attack: one budget per input (None or 0 for
            inputs that are not perturbed). Linf: ``|x_adv[i] - x[i]| <= eps[i]``; L2:
            ``sum_i (||x_adv[i] - x[i]|| / eps[i])^2 <= 1``. Default: the attack's ``eps``.
            Every perturbed input stays inside the attack's ``bounds``.

        Returns
        -------
        AttackResult
            With several inputs, ``x`` and ``x_adv`` are the perturbed input (one) or the
            perturbed inputs flattened and concatenated (several), and
            ``extras["inputs_adv"]`` holds every input for ``model(*res.extras["inputs_adv"])``
            (``extras["norms_per_input"]``: the norms of each perturbed input).

        Examples
        --------
        A model taking an image and a tabular side input, returning a dict:

        >>> import torch, xadv
        >>> class TwoInputs(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.img, self.tab = torch.nn.Linear(16, 3), torch.nn.Linear(2, 3)
        ...     def forward(self, image, side):
        ...         return {"logits": self.img(image.flatten(1)) + self.tab(side), "aux": side}
        >>> net, img, side = TwoInputs(), torch.rand(4, 1, 4, 4), torch.rand(4, 2)
        >>> res = xadv.attacks.PGD(eps=0.1, steps=5, seed=0)(net, (img, side), perturb=0)
        >>> res.x_adv.shape, torch.equal(res.extras["inputs_adv"][1], side)
        (torch.Size([4, 1, 4, 4]), True)
        >>> both = xadv.attacks.PGD(eps=0.1, steps=5, seed=0)(net, (img, side), eps=(0.1, 0.05))
        >>> norms = both.extras["norms_per_input"]
        >>> [round(float(norms[i]["linf"].max()), 3) for i in (0, 1)]
        [0.1, 0.05]
        """
        if isinstance(x, (tuple, list)) or forward_args is not None or output is not None \
                or perturb is not None or eps is not None:
            return self._call_inputs(model, x, y, forward_args, output, perturb, eps)
        return self._call_tensor(model, x, y)

    def _call_inputs(self, model, x, y, forward_args, output, perturb, eps) -> AttackResult:
        """The call with several inputs / pass-through arguments / a chosen output
        (:mod:`xadv.attacks._inputs`)."""
        from . import _inputs
        check_model(model)
        multi = isinstance(x, (tuple, list))
        engine, im, u = _inputs.prepare(self, model, x, forward_args, output, perturb, eps)
        with preserved(model, freeze=True):   # input gradients only
            res = _inputs.run(self, engine, im, u, model, x, y, forward_args, output, perturb, eps)
        return _inputs.finish(res, im, multi)

    def _call_tensor(self, model, x: torch.Tensor, y=None) -> AttackResult:
        check_model(model)
        check_inputs(x, model, min_dim=2)
        lo, hi = self.bounds
        tol = 1e-6 * (hi - lo)
        if float(x.min()) < lo - tol or float(x.max()) > hi + tol:
            raise ValueError(
                f"x has values in [{float(x.min()):.4g}, {float(x.max()):.4g}] outside bounds=({lo}, {hi}); "
                f"pass the inputs in the model's domain and set bounds= accordingly (put normalisation "
                f"inside the model with xadv.nn.Normalize)"
            )
        if self.targeted and y is None:
            raise ValueError("a targeted attack needs the target labels: attack(model, x, y=targets)")
        if self.targeted and not self.supports_targeted:
            raise ValueError(f"{type(self).__name__} does not support targeted=True")
        if not self.targeted and not self.supports_untargeted:
            raise ValueError(f"{type(self).__name__} is targeted only; pass targeted=True and target labels")
        x0 = x.detach().clone()
        if callable(y) and not isinstance(y, torch.Tensor):
            raise TypeError("y must be labels (int, sequence or LongTensor), not a callable")
        with preserved(model, freeze=True):   # input gradients only
            fast = contextlib.nullcontext()
            if self._folds_batchnorm():   # eval-mode BatchNorm folded into the layer before it (xadv._fold)
                model = folded(model, x0)
                # the entry convolution's input gradient by a matrix product (xadv.explainers._entry)
                fast = fast_input_gradient(model, x0)
            with fast:
                return self._run_tensor(model, x0, y)

    def _run_tensor(self, model, x0: torch.Tensor, y) -> AttackResult:
        """The attack on one tensor batch inside ``preserved`` (the model possibly folded)."""
        counter = QueryCounter(model)
        try:
            out_clean = None
            rows = self.batch_size
            if y is None:
                out_clean = forward_rows(model, x0, rows)
                counter.take()
                labels = resolve_target(None, out_clean)
            else:  # range-checked against the model's classes once its output is known
                _check_nonnegative_labels(y, "target labels" if self.targeted else "labels")
                labels = resolve_target(y, x0.new_zeros(1, 1).expand(x0.shape[0], 1 << 30))  # no memory: stride 0
            ctx = AttackContext(self, counter, x0, labels, out_clean)
            if out_clean is not None:
                ctx.check_labels()
            x_adv, extras = self._attack(ctx)
            x_adv = x_adv.detach()
            counter.take()
            out_adv = ctx.adv_logits  # evaluated by the attack, or here
            if out_adv is None or out_adv.shape[0] != x_adv.shape[0]:
                if ctx._logits is None:  # the clean outputs, N rows per call like the user's batch
                    # (a model closing over per-sample tensors follows; no 2N-row stack)
                    ctx.provide_logits(evaluation_pass(model, x0, rows))
                out_adv = evaluation_pass(model, x_adv, rows)
            out_clean = ctx.logits
            if x_adv.stride() != x0.stride():  # e.g. channels-last iterates: the layout of x
                x_adv = torch.empty_like(x0).copy_(x_adv)
        finally:
            counter.close()
        return build_result(self, x0, x_adv, labels, out_clean, out_adv, ctx.queries, ctx.steps, extras)

    def _folds_batchnorm(self) -> bool:
        """Whether the attack only needs the model's function and its input gradient, so it
        may run the BatchNorm-folded copy (:mod:`xadv._fold`; single-tensor calls only)."""
        return False

    def _attack(self, ctx: "AttackContext") -> Tuple[torch.Tensor, Dict[str, Any]]:  # pragma: no cover
        raise NotImplementedError

    # -------------------------------------------------------------- params
    def __repr__(self) -> str:
        def fmt(v):
            if isinstance(v, float):
                return f"{v:.6g}"
            if isinstance(v, torch.Tensor):
                return "tensor" + str(tuple(v.shape))
            if isinstance(v, torch.Generator):
                return "Generator"
            return repr(v)

        args = ", ".join(f"{k}={fmt(v)}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


def _check_nonnegative_labels(y, what: str) -> None:
    """Negative class indices, named before the model's class count is known."""
    if isinstance(y, bool):
        return
    if isinstance(y, int):
        bad = y < 0
    elif isinstance(y, torch.Tensor):
        bad = y.numel() > 0 and not y.is_floating_point() and y.dtype != torch.bool and bool((y < 0).any())
    elif isinstance(y, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in y):
        bad = any(v < 0 for v in y)
    else:
        return
    if bad:
        vals = y.tolist() if isinstance(y, torch.Tensor) else y
        raise ValueError(f"target out of range: {what} are class indices >= 0, got {vals}")


class AttackContext:
    """Everything ``_attack`` needs: the model (with query counting), clean inputs,
    labels, clean logits (computed on first use, or handed over by the attack when
    its first step already evaluated the clean inputs), and per-sample
    ``queries``/``steps`` accumulators."""

    def __init__(self, attack: Attack, counter: QueryCounter, x: torch.Tensor, y: torch.Tensor,
                 logits: Optional[torch.Tensor] = None):
        self.attack = attack
        self.counter = counter
        self.model = counter.wrapped
        self.x = x
        self.y = y
        self._logits = None if logits is None else logits.detach()
        self.n = x.shape[0]
        #: rows per model call (the attack's ``batch_size``; None: the whole batch)
        self.rows: Optional[int] = getattr(attack, "batch_size", None)
        self.queries = torch.zeros(self.n, dtype=torch.long, device=x.device)
        self.steps = torch.zeros(self.n, dtype=torch.long, device=x.device)
        #: the model's output on the returned x_adv, when the attack evaluated it itself
        #: (not counted as queries); otherwise the base class evaluates x_adv
        self.adv_logits: Optional[torch.Tensor] = None

    @property
    def logits(self) -> torch.Tensor:
        """The model's output on the clean inputs, (N, K) (not counted as queries)."""
        if self._logits is None:
            pending = self.counter.take()
            self._logits = forward_rows(self.model, self.x, self.rows)
            self.counter.take()
            self.counter.rows = pending
            self.check_labels()
        return self._logits

    def provide_logits(self, logits: torch.Tensor) -> None:
        """Hand over the clean logits computed as part of an attack step."""
        if self._logits is None:
            self._logits = logits.detach()
            self.check_labels()

    def check_labels(self) -> None:
        k = self._logits.shape[1]
        if self._logits.dim() != 2:
            resolve_target(self.y, self._logits)
        if self.n and (int(self.y.min()) < 0 or int(self.y.max()) >= k):
            raise ValueError(f"target out of range: the model has {k} classes (0..{k - 1}), got {self.y.tolist()}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The model's output at ``x`` without a graph, in calls of at most ``rows`` rows
        (counted as queries)."""
        return forward_rows(self.model, x, self.rows)

    def charge(self, idx: Optional[torch.Tensor] = None) -> None:
        """Spread the rows counted since the last call over the samples ``idx`` (all when None)."""
        rows = self.counter.take()
        if idx is None:
            m = self.n
            self.queries += rows // max(m, 1)
        else:
            m = int(idx.numel()) if idx.dtype != torch.bool else int(idx.sum())
            if m:
                self.queries[idx] += rows // m

    def is_success(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pred = logits.argmax(1)
        return pred == labels if self.attack.targeted else pred != labels


def build_result(attack: Attack, x, x_adv, y, out_clean, out_adv, queries, steps, extras) -> AttackResult:
    pc = F.softmax(out_clean.detach().float(), dim=1)
    pa = F.softmax(out_adv.detach().float(), dim=1)
    pred_clean, pred_adv = pc.argmax(1), pa.argmax(1)
    success = pred_adv == y if attack.targeted else pred_adv != y
    return AttackResult(
        x_adv=x_adv, x=x, y=y, success=success, pred_clean=pred_clean, pred_adv=pred_adv,
        conf_clean=pc.gather(1, pred_clean[:, None]).squeeze(1).to(x.dtype),
        conf_adv=pa.gather(1, pred_adv[:, None]).squeeze(1).to(x.dtype),
        norms=perturbation_norms(x_adv - x), queries=queries, steps=steps,
        targeted=bool(attack.targeted), attack=repr(attack), extras=dict(extras or {}),
    )


def loss_direction(model, x: torch.Tensor, labels: torch.Tensor, targeted: bool,
                   explainer: Explainer) -> torch.Tensor:
    """The ascent direction of the attack objective from an explainer.

    Untargeted: minus the explanation of the true class; targeted: the
    explanation of the target class. With ``Saliency(score="log_softmax")`` this
    is exactly the gradient of the cross-entropy loss (resp. minus it).
    """
    a = explainer(model, x, labels).attributions.detach()
    return a if targeted else -a


def checked_bounds(bounds) -> Tuple[float, float]:
    return check_bounds(bounds)


Direction = Callable[[Any, torch.Tensor, torch.Tensor], torch.Tensor]
