"""One projected-gradient engine whose step direction comes from an explainer.

FGSM, PGD (Linf, L2, L0), R+FGSM and ExplainerPGD are the same loop with
different parameters: the direction is the *reversed* explanation of the true
class (untargeted) or the explanation of the target class (targeted). With
``Saliency(score="log_softmax")`` that direction is exactly the gradient of the
cross-entropy loss (Liu et al., survey eq. 7-8), which gives the classic attacks.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch

from .. import explainers as _explainers
from .._validation import check_bounds, check_positive_int
from ..explainers import Explainer, Saliency
from ..explainers.base import forward
from .base import Attack, AttackContext, check_nonneg, check_norm, make_generator, project, view_batch

_SCHEDULES = ("constant", "linear", "cosine", "step")
_STARTS = (False, True, "uniform", "sign")
_DEFAULT_EPS = {"linf": 8 / 255, "l2": 0.5, "l0": 10}

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
                 generator: Optional[torch.Generator] = None):
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

    # ------------------------------------------------------------------ helpers
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
        """(direction, logits at xa or None)."""
        e = self.explainer._explain(ctx.model, xa, labels, False)
        a = e.attributions.detach()
        if a.shape != xa.shape:
            raise ValueError(f"the explainer returned attributions of shape {tuple(a.shape)} for inputs "
                             f"{tuple(xa.shape)}; an attack direction must be input-shaped")
        out = e.output
        if out is not None and (out.shape[0] != xa.shape[0] or out.dim() != 2):
            out = None
        return (a if self.targeted else -a), (None if out is None else out.detach())

    # ------------------------------------------------------------------ loop
    def _attack(self, ctx: AttackContext) -> Tuple[torch.Tensor, Dict[str, Any]]:
        x, y = ctx.x, ctx.y
        lo, hi = self.bounds
        eps = self._radius(x)
        alpha = self._step_size()
        gen = make_generator(self.seed, self.generator, x.device)
        xa = self._start(x, gen)
        xa = (x + project(xa - x, self.norm, eps)).clamp(lo, hi)
        ctx.charge()
        n = ctx.n
        active = torch.ones(n, dtype=torch.bool, device=x.device)
        if self.early_stop:  # already adversarial on the clean input: nothing to do
            active = ~ctx.is_success(ctx.logits, y)
            xa = torch.where(view_batch(active, x), xa, x)
        for t in range(self.steps):
            idx = active.nonzero().squeeze(1) if self.early_stop else None
            if idx is not None and idx.numel() == 0:
                break
            xs = xa if idx is None else xa[idx]
            ys = y if idx is None else y[idx]
            d, out = self._direction(ctx, xs, ys)
            if t == 0 and idx is None and self.random_start is False and out is not None:
                ctx.provide_logits(out)  # the first step evaluated the clean inputs
            if self.early_stop:
                if out is None:
                    with torch.no_grad():
                        out = forward(ctx.model, xs)
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
            a = alpha * schedule_factor(self.schedule, t, self.steps)
            xn = xs + a * step_direction(d, self.norm)
            x0 = x if idx is None else x[idx]
            delta = project(xn - x0, self.norm, eps)
            if self.norm == "l0":  # clip first so the projection ranks changes that survive clipping
                delta = project((x0 + delta).clamp(lo, hi) - x0, "l0", eps)
            xn = (x0 + delta).clamp(lo, hi)
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
                 generator: Optional[torch.Generator] = None):
        super().__init__(None, norm=norm, eps=eps, steps=steps, step_size=step_size,
                         random_start=random_start, early_stop=early_stop, schedule=schedule,
                         targeted=targeted, bounds=bounds, seed=seed, generator=generator)


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

    def __init__(self, eps: float = 8 / 255, targeted: bool = False, bounds: Tuple[float, float] = (0.0, 1.0)):
        super().__init__(None, norm="linf", eps=eps, steps=1, step_size=eps, random_start=False,
                         targeted=targeted, bounds=bounds)

    def get_params(self):
        return {"eps": self.eps, "targeted": self.targeted, "bounds": self.bounds}


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
                 generator: Optional[torch.Generator] = None):
        eps = check_nonneg(eps, "eps")
        self.alpha = eps / 2 if alpha is None else check_nonneg(alpha, "alpha")
        if self.alpha > eps:
            raise ValueError(f"alpha must be <= eps, got alpha={alpha} > eps={eps}")
        if step_size is None:
            step_size = eps - self.alpha if steps == 1 else self.alpha
        super().__init__(None, norm="linf", eps=eps, steps=steps, step_size=step_size,
                         random_start="sign", init_size=self.alpha, targeted=targeted, bounds=bounds,
                         seed=seed, generator=generator)

    def get_params(self):
        return {"eps": self.eps, "alpha": self.alpha, "steps": self.steps, "step_size": self.step_size,
                "targeted": self.targeted, "bounds": self.bounds, "seed": self.seed}


class ExplainerPGD(ProjectedGradient):
    """PGD whose step follows an explainer's attribution instead of the loss gradient.

    With ``SmoothGrad`` this is an averaged-gradient attack; with
    ``IntegratedGradients`` the step follows the path-integrated attribution. Any
    explainer with input-shaped attributions works.

    Parameters
    ----------
    explainer : Explainer or str
        Required, e.g. ``SmoothGrad(n_samples=8, seed=0)``, ``"ig"``.
    norm, eps, steps, step_size, random_start, early_stop, schedule, targeted, bounds, seed, generator
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
                 generator: Optional[torch.Generator] = None):
        if explainer is None:
            raise TypeError("ExplainerPGD needs an explainer (an instance or a registry name); "
                            "use PGD for the loss gradient")
        super().__init__(explainer, norm=norm, eps=eps, steps=steps, step_size=step_size,
                         random_start=random_start, early_stop=early_stop, schedule=schedule,
                         targeted=targeted, bounds=bounds, seed=seed, generator=generator)
