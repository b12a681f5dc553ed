"""One projected-gradient engine whose step direction comes from an explainer.

FGSM, PGD (Linf, L2, L0), R+FGSM and ExplainerPGD are the same loop with
different parameters: the direction is the *reversed* explanation of the true
class (untargeted) or the explanation of the target class (targeted). With
``Saliency(score="log_softmax")`` that direction is exactly the gradient of the
cross-entropy loss (Liu et al., survey eq. 7-8), which gives the classic attacks.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch

from .. import explainers as _explainers
from .._validation import check_bounds, check_positive_int, checked_inputs, resolve_target
from ..explainers import Explainer, Saliency
from ..explainers.base import forward, select_score
from ..explainers.chunking import prefers_channels_last
from .base import (Attack, AttackContext, check_batch_size, check_nonneg, check_norm, make_generator, map_rows,
                   project, view_batch)

_SCHEDULES = ("constant", "linear", "cosine", "step")
_STARTS = (False, True, "uniform", "sign")
_DEFAULT_EPS = {"linf": 8 / 255, "l2": 0.5, "l0": 10}
_FORMATS = ("auto", "contiguous", "channels_last")

Schedule = Union[str, Callable[[int, int], float]]


def resolve_explainer(explainer) -> Explainer:
    """An :class:`Explainer` from an instance, a registry name, or None (loss gradient)."""
    if explainer is None:
        return Saliency(score="log_softmax")
    if isinstance(explainer, Explainer):
        return explainer
    if isinstance(explainer, str):
        return _explainers.get(explainer)
    raise TypeError(
        f"explainer must be an xadv Explainer, a registry name ({', '.join(_explainers.names())}) or None, "
        f"got {type(explainer).__name__}"
    )


def schedule_factor(schedule: Schedule, t: int, steps: int) -> float:
    """Multiplier of ``step_size`` at iteration ``t`` (0-based) of ``steps``."""
    if callable(schedule):
        return float(schedule(t, steps))
    if schedule == "constant" or steps <= 1:
        return 1.0
    if schedule == "linear":
        return 1.0 - t / steps
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t / steps))
    if schedule == "step":  # divide by 10 at 50% and 75% of the steps (Madry et al. style)
        return 1.0 if t < steps // 2 else (0.1 if t < (3 * steps) // 4 else 0.01)
    raise ValueError(f"schedule must be one of {_SCHEDULES} or a callable (t, steps) -> factor, got {schedule!r}")


def step_direction(d: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-ascent unit step for a direction ``d``: sign (Linf), d/||d||_2 (L2),
    d/max|d| (L0, so the strongest feature moves by one ``step_size``)."""
    if norm == "linf":
        return d.sign()
    flat = d.reshape(d.shape[0], -1)
    if norm == "l2":
        return d / view_batch(flat.norm(p=2, dim=1) + 1e-10, d)
    return d / view_batch(flat.abs().max(1).values.clamp_min(1e-30), d)


def check_amp(amp) -> Union[bool, torch.dtype]:
    """``False``, ``True`` (float16 on CUDA, bfloat16 elsewhere) or a dtype for ``torch.autocast``."""
    if isinstance(amp, bool) or amp in (torch.float16, torch.bfloat16):
        return amp
    raise ValueError(f"amp must be False, True, torch.float16 or torch.bfloat16, got {amp!r}")


def amp_context(amp, device: torch.device):
    """``torch.autocast`` for ``amp`` on ``device`` (a no-op context when ``amp`` is False)."""
    if amp is False:
        return contextlib.nullcontext()
    dtype = amp if isinstance(amp, torch.dtype) else (torch.float16 if device.type == "cuda" else torch.bfloat16)
    return torch.autocast(device_type=device.type, dtype=dtype)


def loss_gradient(model, x: torch.Tensor, y: torch.Tensor, score="log_softmax", amp=False, check: bool = False):
    """(gradient of ``score`` of class ``y`` w.r.t. ``x``, detached (N, K) output): one forward and
    one backward, no host synchronisation (``y`` is a checked LongTensor on ``x``'s device).
    With ``amp`` the forward runs under ``torch.autocast`` and the score in float32;
    ``check`` validates ``y`` against the output (once, before a step loop)."""
    xi = x.detach().requires_grad_(True)
    with torch.enable_grad():
        with amp_context(amp, x.device):
            out = forward(model, xi)
        if check:
            y = resolve_target(y, out)
        s = select_score(out.float() if amp is not False else out, y, score)
        (g,) = torch.autograd.grad(s.sum(), xi)
    return g, out.detach()


def check_memory_format(memory_format: str) -> str:
    if memory_format not in _FORMATS:
        raise ValueError(f"memory_format must be one of {_FORMATS}, got {memory_format!r}")
    return memory_format


def iterate_layout(memory_format: str, x: torch.Tensor, model=None, rows=None) -> bool:
    """Whether the iterates of an image batch ``x`` (N, C, H, W) are kept channels-last:
    always for ``"channels_last"``; for ``"auto"`` on a CPU where the layout probe
    (:func:`xadv.explainers.chunking.prefers_channels_last`) measures the model faster in it."""
    if x.dim() != 4:
        return False
    if memory_format == "channels_last":
        return True
    if memory_format != "auto" or x.device.type != "cpu":
        return False
    return model is None or prefers_channels_last(model, x, rows)


def channels_last(t: torch.Tensor) -> torch.Tensor:
    """A channels-last copy of ``t`` with explicit channels-last strides (also for C == 1,
    where ``contiguous(memory_format=...)`` keeps the NCHW strides and the model would
    run in NCHW)."""
    return t.clone(memory_format=torch.channels_last)


def _layout(t: torch.Tensor, cl: bool) -> torch.Tensor:
    """``t`` with explicit channels-last strides when ``cl`` (a copy only when needed)."""
    if not cl:
        return t
    n, c, h, w = t.shape
    if t.stride() == (c * h * w, 1, w * c, c):
        return t
    return channels_last(t)


class ProjectedGradient(Attack):
    """Projected gradient ascent with the step direction given by an explainer.

    Each iteration explains the current adversarial inputs (true class, sign
    reversed, when untargeted; target class when targeted), takes a steepest-ascent
    step in the chosen norm, projects onto the ``eps`` ball around ``x`` and clips
    to ``bounds``. Samples that already succeed are frozen when ``early_stop``.

    Parameters
    ----------
    explainer : Explainer, str or None, default None
        Source of the direction. ``None`` is ``Saliency(score="log_softmax")``, i.e.
        the cross-entropy gradient. Any explainer works (gradient-free ones such as
        LIME too, at their cost); a registry name is built with default parameters.
    norm : {"linf", "l2", "l0"}, default "linf"
        Ball of the perturbation. ``l0``: ``eps`` is the number of features that may
        change (int; a float in (0, 1) is a fraction of the features); each step
        moves by ``step_size * d / max|d|`` and the projection keeps the
        ``eps`` largest changes.
    eps : float, optional
        Radius in input units (default 8/255 Linf, 0.5 L2, 10 features L0).
    steps : int, default 10
    step_size : float, optional
        Default ``2.5 * eps / steps`` (Linf, L2; Madry et al.) and ``(hi - lo) / 4`` (L0).
    random_start : bool or {"uniform", "sign"}, default False
        ``True``/``"uniform"``: uniform in the ball (L0: ``eps`` random features set
        to uniform values); ``"sign"``: ``init_size * sign(N(0, 1))`` (R+FGSM).
    init_size : float, optional
        Size of the ``"sign"`` start (default ``eps``).
    early_stop : bool, default False
        Freeze each sample as soon as it is adversarial (smallest-step result; fewer
        queries). ``False`` runs every step, as in Madry et al. and torchattacks.
    schedule : {"constant", "linear", "cosine", "step"} or callable, default "constant"
        Step-size multiplier per iteration; a callable gets ``(t, steps)``.
    targeted : bool, default False
    bounds : (float, float), default (0, 1)
    seed : int, optional; generator : torch.Generator, optional
        Randomness of the start (and nothing else).
    memory_format : {"contiguous", "channels_last", "auto"}, default "contiguous"
        Layout of the iterates of image batches (N, C, H, W). ``"channels_last"`` runs
        the model on channels-last inputs, where PyTorch's CPU convolutions and
        max-pooling are 1.5-2x faster for the digits CNN (a ResNet with NCHW weights
        runs about 2x slower in it); ``"auto"`` uses channels-last on a CPU only where a
        cached timing probe (:func:`xadv.explainers.chunking.prefers_channels_last`)
        measures the model at least 15% faster in it (never on a GPU). The values agree up to float rounding, but a gradient
        entry at rounding level can change sign, so in float32 a few pixels of
        ``x_adv`` may differ from the contiguous run, and with ``"auto"`` the layout
        (so those pixels) depends on a timing: the default keeps the same bits in every
        process. ``"contiguous"`` on a model
        without BatchNorm matches torchattacks bit for bit (with BatchNorm, which xadv
        folds into the convolutions, to float rounding; ``xadv.explainers.folding(False)``
        runs the model as it is). A model that rejects channels-last inputs (a
        ``.view`` of a conv activation) falls back to contiguous automatically.
        ``x_adv`` has the layout of ``x``.
    batch_size : int, optional
        Rows per model call; None = the whole batch in one call. The clean pass, every
        step and the final evaluation are split into chunks of at most ``batch_size``
        rows, each chunk's forward and backward done before the next, so memory stays
        flat in N; the result equals the unchunked one up to float rounding. An
        explainer direction bounds its own internal passes with its ``batch_size``.
    amp : bool or torch.dtype, default False
        Mixed precision: the model's forward passes of the loss gradient run under
        ``torch.autocast`` (True: float16 on CUDA, bfloat16 elsewhere; or the dtype),
        the loss in float32; iterates stay in the dtype of ``x``. Faster on GPUs with
        tensor cores; directions differ from float32 at the rounding of the lower
        precision. Only for the loss gradient (``explainer=None``).

    Returns an :class:`~xadv.results.AttackResult`; ``steps`` counts the updates
    applied per sample and ``queries`` the forward passes (rows) spent per sample,
    e.g. ``steps`` for the loss gradient, ``steps * ig_steps`` for IG.

    References
    ----------
    Madry et al. Towards Deep Learning Models Resistant to Adversarial Attacks. ICLR 2018.
    Liu et al. Adversarial Attacks and Defenses: An Interpretation Perspective. 2020.

    Examples
    --------
    >>> import torch, xadv.attacks
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> atk = xadv.attacks.ProjectedGradient(norm="l2", eps=0.5, steps=5)
    >>> res = atk(net, torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0]))
    >>> bool((res.norms["l2"] <= 0.5 + 1e-6).all())
    True
    """

    def __init__(self, explainer: Optional[Union[Explainer, str]] = None, norm: str = "linf",
                 eps: Optional[float] = None, steps: int = 10, step_size: Optional[float] = None,
                 random_start: Union[bool, str] = False, init_size: Optional[float] = None,
                 early_stop: bool = False, schedule: Schedule = "constant", targeted: bool = False,
                 bounds: Tuple[float, float] = (0.0, 1.0), seed: Optional[int] = None,
                 generator: Optional[torch.Generator] = None, memory_format: str = "contiguous",
                 batch_size: Optional[int] = None, amp: Union[bool, torch.dtype] = False):
        self.explainer = resolve_explainer(explainer)
        self.norm = check_norm(norm)
        self.eps = _DEFAULT_EPS[self.norm] if eps is None else eps
        if self.norm == "l0":
            e = self.eps
            if isinstance(e, bool) or not isinstance(e, (int, float)) or e <= 0 or \
                    (isinstance(e, float) and not (e < 1 or float(e).is_integer())):
                raise ValueError(f"for norm='l0' eps must be a number of features (int >= 1) or a fraction "
                                 f"in (0, 1), got {e!r}")
        else:
            self.eps = check_nonneg(self.eps, "eps")
        self.steps = check_positive_int(steps, "steps")
        self.step_size = None if step_size is None else check_nonneg(step_size, "step_size")
        if random_start not in _STARTS:
            raise ValueError(f"random_start must be one of {_STARTS}, got {random_start!r}")
        self.random_start = random_start
        self.init_size = None if init_size is None else check_nonneg(init_size, "init_size")
        self.early_stop = bool(early_stop)
        if not callable(schedule):
            schedule_factor(schedule, 0, 2)
        self.schedule = schedule
        if not isinstance(targeted, bool):
            raise TypeError("targeted must be a bool")
        self.targeted = targeted
        self.bounds = check_bounds(bounds)
        self.seed = seed
        self.generator = generator
        self.memory_format = check_memory_format(memory_format)
        self.batch_size = check_batch_size(batch_size)
        self.amp = check_amp(amp)
        if self.amp is not False and not self._loss_direction():
            raise ValueError("amp= applies to the loss gradient (explainer=None or Saliency(score=...)); "
                             "for an explainer direction run the explainer in the precision you want")

    # ------------------------------------------------------------------ helpers
    def _loss_direction(self) -> bool:
        ex = self.explainer
        return type(ex) is Saliency and not ex.abs and getattr(ex, "layer", None) is None \
            and getattr(ex, "neuron", None) is None
    def _l0_count(self, x: torch.Tensor) -> int:
        d = x[0].numel()
        e = self.eps
        return max(1, int(round(e * d))) if isinstance(e, float) and e < 1 else min(int(e), d)

    def _radius(self, x: torch.Tensor) -> float:
        return float(self._l0_count(x)) if self.norm == "l0" else float(self.eps)

    def _step_size(self) -> float:
        if self.step_size is not None:
            return self.step_size
        if self.norm == "l0":
            return 0.25 * (self.bounds[1] - self.bounds[0])
        return 2.5 * float(self.eps) / self.steps

    def _start(self, x: torch.Tensor, gen) -> torch.Tensor:
        lo, hi = self.bounds
        eps = self._radius(x)
        rs = self.random_start
        if rs is False:
            return x.clone()
        shape, kw = x.shape, dict(generator=gen, device=x.device, dtype=x.dtype)
        if rs == "sign":
            size = eps if self.init_size is None else self.init_size
            delta = size * torch.randn(shape, **kw).sign()
            return (x + delta).clamp(lo, hi)
        if self.norm == "linf":
            delta = (torch.rand(shape, **kw) * 2 - 1) * eps
        elif self.norm == "l2":
            d = x[0].numel()
            v = torch.randn(shape, **kw)
            v = v / view_batch(v.reshape(shape[0], -1).norm(dim=1).clamp_min(1e-30), x)
            r = torch.rand(shape[0], **kw) ** (1.0 / d) * eps
            delta = v * view_batch(r, x)
        else:
            k = int(eps)
            scores = torch.rand(shape[0], x[0].numel(), **kw)
            idx = scores.topk(k, dim=1).indices
            keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, idx, True).reshape(shape)
            target = lo + (hi - lo) * torch.rand(shape, **kw)
            delta = torch.where(keep, target - x, torch.zeros_like(x))
        return (x + delta).clamp(lo, hi)

    def _direction(self, ctx: AttackContext, xa: torch.Tensor, labels: torch.Tensor):
        """(attributions, logits at xa or None); the ascent direction is the attributions
        (targeted) or minus them (untargeted)."""
        e = self.explainer._explain(ctx.model, xa, labels, False)
        a = e.attributions.detach()
        if a.shape != xa.shape:
            raise ValueError(f"the explainer returned attributions of shape {tuple(a.shape)} for inputs "
                             f"{tuple(xa.shape)}; an attack direction must be input-shaped")
        out = e.output
        if out is not None and (out.shape[0] != xa.shape[0] or out.dim() != 2):
            out = None
        return a, (None if out is None else out.detach())

    def _gradient_step(self, ctx: AttackContext, xs: torch.Tensor, ys: torch.Tensor, first: bool = False):
        """(attributions, logits at xs or None), in chunks of ``batch_size`` rows; ``first``
        checks the labels against the model's classes (the later steps do not synchronise)."""
        if self._loss_direction():  # the loss gradient, without building an Explanation
            score = self.explainer.score
            return map_rows(lambda a, b: loss_gradient(ctx.model, a, b, score, self.amp, first), ctx.rows, xs, ys)
        with contextlib.nullcontext() if first else checked_inputs():  # labels checked at the first step
            return map_rows(lambda a, b: self._direction(ctx, a, b), ctx.rows, xs, ys)

    # ------------------------------------------------------------------ loop
    def _folds_batchnorm(self) -> bool:
        return self.explainer._folds_batchnorm()   # the loss gradient (Saliency) and other input-gradient directions

    def _attack(self, ctx: AttackContext) -> Tuple[torch.Tensor, Dict[str, Any]]:
        x, y = ctx.x, ctx.y
        lo, hi = self.bounds
        eps = self._radius(x)
        alpha = self._step_size()
        gen = make_generator(self.seed, self.generator, x.device)
        xa = self._start(x, gen)
        if self.random_start is not False:
            xa = (x + project(xa - x, self.norm, eps)).clamp(lo, hi)
        else:  # the clean inputs, inside bounds up to the 1e-6 tolerance of the input check
            xa = xa.clamp_(lo, hi)
        ctx.charge()
        # the iterates (and x, to keep every elementwise op in one layout) channels-last
        # on a CPU: the same values, computed by faster convolution and pooling kernels
        cl = iterate_layout(self.memory_format, x, ctx.model, ctx.rows)
        if cl:
            x, xa = channels_last(x), channels_last(xa)
        n = ctx.n
        sign = 1.0 if self.targeted else -1.0
        active = torch.ones(n, dtype=torch.bool, device=x.device)
        if self.early_stop:  # already adversarial on the clean input: nothing to do
            active = ~ctx.is_success(ctx.logits, y)
            xa = torch.where(view_batch(active, x), xa, x)
        for t in range(self.steps):
            idx = active.nonzero().squeeze(1) if self.early_stop else None
            if idx is not None and idx.numel() == 0:
                break
            xs = xa if idx is None else _layout(xa[idx], cl)
            ys = y if idx is None else y[idx]
            try:
                d, out = self._gradient_step(ctx, xs, ys, t == 0)
            except RuntimeError:
                if not (cl and t == 0):
                    raise
                # a model (or explainer) that rejects channels-last inputs, e.g. a ``.view``
                # of a conv activation: the plain layout from here on
                ctx.counter.take()  # rows of the failed call are not queries
                cl = False
                x, xa = ctx.x, xa.clone(memory_format=torch.contiguous_format)
                xs = xa if idx is None else xa[idx]
                d, out = self._gradient_step(ctx, xs, ys, True)
            if t == 0 and idx is None and self.random_start is False and out is not None:
                ctx.provide_logits(out)  # the first step evaluated the clean inputs
            if self.early_stop:
                if out is None:
                    out = ctx.forward(xs)
                done = ctx.is_success(out, ys)
                ctx.charge(idx)
                if bool(done.any()):
                    active[idx[done]] = False
                    keep = ~done
                    idx, xs, d = idx[keep], xs[keep], d[keep]
                    if idx.numel() == 0:
                        break
            else:
                ctx.charge()
            a = sign * alpha * schedule_factor(self.schedule, t, self.steps)
            x0 = x if idx is None else x[idx]
            if self.norm == "linf":
                # in place on one new tensor in the layout of xs (an op's own output would
                # fall back to NCHW strides for C == 1); a * sign(d) is exact, so the values
                # are bit-identical to (x0 + clamp(xs + a * sign(d) - x0, -eps, eps)).clamp(lo, hi)
                xn = torch.sign(d, out=torch.empty_like(xs))
                xn.mul_(a).add_(xs).sub_(x0).clamp_(-eps, eps).add_(x0).clamp_(lo, hi)
            else:
                xn = xs + a * step_direction(d, self.norm)
                delta = project(xn - x0, self.norm, eps)
                if self.norm == "l0":  # clip first so the projection ranks changes that survive clipping
                    delta = project((x0 + delta).clamp(lo, hi) - x0, "l0", eps)
                xn = _layout((x0 + delta).clamp(lo, hi), cl)
            if idx is None:
                xa = xn
                ctx.steps += 1
            else:
                xa = xa.index_copy(0, idx, xn)
                ctx.steps[idx] += 1
        return xa, {"eps": eps, "norm": self.norm, "step_size": alpha,
                    "explainer": repr(self.explainer)}


class PGD(ProjectedGradient):
    """Projected gradient descent on the cross-entropy loss (Madry et al., 2018).

    :class:`ProjectedGradient` with the loss gradient as direction. Parameters as
    there; ``random_start`` defaults to True as in the paper.

    References
    ----------
    Madry et al. Towards Deep Learning Models Resistant to Adversarial Attacks. ICLR 2018.

    Examples
    --------
    >>> import torch, xadv.attacks
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> res = xadv.attacks.PGD(eps=0.1, steps=5, seed=0)(net, torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0]))
    >>> bool((res.norms["linf"] <= 0.1 + 1e-6).all())
    True
    """

    def __init__(self, norm: str = "linf", eps: Optional[float] = None, steps: int = 10,
                 step_size: Optional[float] = None, random_start: Union[bool, str] = True,
                 early_stop: bool = False, schedule: Schedule = "constant", targeted: bool = False,
                 bounds: Tuple[float, float] = (0.0, 1.0), seed: Optional[int] = None,
                 generator: Optional[torch.Generator] = None, memory_format: str = "contiguous",
                 batch_size: Optional[int] = None, amp: Union[bool, torch.dtype] = False):
        super().__init__(None, norm=norm, eps=eps, steps=steps, step_size=step_size,
                         random_start=random_start, early_stop=early_stop, schedule=schedule,
                         targeted=targeted, bounds=bounds, seed=seed, generator=generator,
                         memory_format=memory_format, batch_size=batch_size, amp=amp)


class FGSM(ProjectedGradient):
    """Fast gradient sign method (Goodfellow et al., 2015): ``x + eps * sign(grad CE)``.

    One step of :class:`ProjectedGradient` with the loss gradient, i.e. the
    reversed Saliency explanation of ``log_softmax`` of the true class.

    Parameters
    ----------
    eps : float, default 8/255
    targeted : bool, default False
        Targeted: step towards the target (``x - eps * sign(grad CE(target))``).
    bounds : (float, float), default (0, 1)
    batch_size : int, optional
        Rows per model call; None = the whole batch in one call.

    References
    ----------
    Goodfellow, Shlens, Szegedy. Explaining and Harnessing Adversarial Examples. ICLR 2015.

    Examples
    --------
    >>> import torch, xadv.attacks
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> res = xadv.attacks.FGSM(eps=0.05)(net, torch.rand(2, 1, 4, 4), torch.tensor([0, 1]))
    >>> res.x_adv.shape
    torch.Size([2, 1, 4, 4])
    """

    def __init__(self, eps: float = 8 / 255, targeted: bool = False, bounds: Tuple[float, float] = (0.0, 1.0),
                 batch_size: Optional[int] = None):
        super().__init__(None, norm="linf", eps=eps, steps=1, step_size=eps, random_start=False,
                         targeted=targeted, bounds=bounds, batch_size=batch_size)

    def get_params(self):
        return {"eps": self.eps, "targeted": self.targeted, "bounds": self.bounds, "batch_size": self.batch_size}


class RFGSM(ProjectedGradient):
    """R+FGSM (Tramèr et al., 2018): a random sign step of size ``alpha``, then
    gradient sign steps, projected on the Linf ball of radius ``eps``.

    Parameters
    ----------
    eps : float, default 8/255
    alpha : float, optional
        Size of the random step, default ``eps / 2``.
    steps : int, default 1
        Gradient steps after the random one. One step of size ``eps - alpha`` is the
        paper's attack; with ``steps > 1`` each step has size ``step_size``
        (default ``alpha``, as torchattacks).
    step_size : float, optional
    targeted : bool, default False
    bounds : (float, float), default (0, 1)
    seed : int, optional; generator : torch.Generator, optional
    batch_size : int, optional
        Rows per model call; None = the whole batch in one call.

    References
    ----------
    Tramèr et al. Ensemble Adversarial Training: Attacks and Defenses. ICLR 2018.

    Examples
    --------
    >>> import torch, xadv.attacks
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> res = xadv.attacks.RFGSM(eps=0.1, seed=0)(net, torch.rand(2, 1, 4, 4), torch.tensor([0, 1]))
    >>> bool((res.norms["linf"] <= 0.1 + 1e-6).all())
    True
    """

    def __init__(self, eps: float = 8 / 255, alpha: Optional[float] = None, steps: int = 1,
                 step_size: Optional[float] = None, targeted: bool = False,
                 bounds: Tuple[float, float] = (0.0, 1.0), seed: Optional[int] = None,
                 generator: Optional[torch.Generator] = None, batch_size: Optional[int] = None):
        eps = check_nonneg(eps, "eps")
        self.alpha = eps / 2 if alpha is None else check_nonneg(alpha, "alpha")
        if self.alpha > eps:
            raise ValueError(f"alpha must be <= eps, got alpha={alpha} > eps={eps}")
        if step_size is None:
            step_size = eps - self.alpha if steps == 1 else self.alpha
        super().__init__(None, norm="linf", eps=eps, steps=steps, step_size=step_size,
                         random_start="sign", init_size=self.alpha, targeted=targeted, bounds=bounds,
                         seed=seed, generator=generator, batch_size=batch_size)

    def get_params(self):
        return {"eps": self.eps, "alpha": self.alpha, "steps": self.steps, "step_size": self.step_size,
                "targeted": self.targeted, "bounds": self.bounds, "seed": self.seed, "batch_size": self.batch_size}


class ExplainerPGD(ProjectedGradient):
    """PGD whose step follows an explainer's attribution instead of the loss gradient.

    With ``SmoothGrad`` this is an averaged-gradient attack; with
    ``IntegratedGradients`` the step follows the path-integrated attribution. Any
    explainer with input-shaped attributions works.

    Parameters
    ----------
    explainer : Explainer or str
        Required, e.g. ``SmoothGrad(n_samples=8, seed=0)``, ``"ig"``.
    norm, eps, steps, step_size, random_start, early_stop, schedule, targeted, bounds, seed, generator, memory_format, batch_size
        As :class:`ProjectedGradient`.

    References
    ----------
    Liu et al. Adversarial Attacks and Defenses: An Interpretation Perspective. 2020.

    Examples
    --------
    >>> import torch, xadv.attacks
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> atk = xadv.attacks.ExplainerPGD("ig", eps=0.1, steps=3)
    >>> atk(net, torch.rand(2, 1, 4, 4), torch.tensor([0, 1])).queries.tolist()
    [156, 156]
    """

    def __init__(self, explainer: Union[Explainer, str], norm: str = "linf", eps: Optional[float] = None,
                 steps: int = 10, step_size: Optional[float] = None, random_start: Union[bool, str] = False,
                 early_stop: bool = False, schedule: Schedule = "constant", targeted: bool = False,
                 bounds: Tuple[float, float] = (0.0, 1.0), seed: Optional[int] = None,
                 generator: Optional[torch.Generator] = None, memory_format: str = "contiguous",
                 batch_size: Optional[int] = None):
        if explainer is None:
            raise TypeError("ExplainerPGD needs an explainer (an instance or a registry name); "
                            "use PGD for the loss gradient")
        super().__init__(explainer, norm=norm, eps=eps, steps=steps, step_size=step_size,
                         random_start=random_start, early_stop=early_stop, schedule=schedule,
                         targeted=targeted, bounds=bounds, seed=seed, generator=generator,
                         memory_format=memory_format, batch_size=batch_size)
