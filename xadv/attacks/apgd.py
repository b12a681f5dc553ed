"""Auto-PGD (Croce & Hein, 2020): PGD without a step-size parameter.

APGD starts from a random point of the ball, takes steps of size ``2 * eps``
with momentum 0.75, and at checkpoints (22%, then shrinking intervals of the
budget) halves the step size of every sample whose loss oscillated or stopped
improving, restarting it from its best point so far. Losses: cross-entropy and
the scale-invariant difference-of-logits ratio (DLR); :class:`APGDT` runs the
targeted DLR loss towards the clean output's runner-up classes in turn.

The loop follows the published algorithm step for step, and with the same seed it
draws the same random starts as the reference implementations (auto-attack,
torchattacks), so on a deterministic model the successes agree exactly.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from .._validation import check_bounds, check_positive_int
from ..explainers.base import forward
from .base import Attack, AttackContext, check_batch_size, check_nonneg, check_norm, make_generator, map_rows, view_batch

_LOSSES = ("ce", "dlr")
_DEFAULT_EPS = {"linf": 8 / 255, "l2": 0.5}


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference-of-logits ratio, (N,): ``-(z_y - max_{j!=y} z_j) / (z_pi1 - z_pi3)``.

    Invariant to shifting and rescaling the logits; larger means closer to
    misclassification (positive once ``y`` is not the top class). Needs K >= 3.
    """
    zs, ind = logits.sort(dim=1)
    top_is_y = (ind[:, -1] == y).to(logits.dtype)
    u = torch.arange(logits.shape[0], device=logits.device)
    zy = logits[u, y]
    return -(zy - zs[:, -2] * top_is_y - zs[:, -1] * (1.0 - top_is_y)) / (zs[:, -1] - zs[:, -3] + 1e-12)


def dlr_loss_targeted(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR, (N,): ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``. Needs K >= 4."""
    zs, _ = logits.sort(dim=1)
    u = torch.arange(logits.shape[0], device=logits.device)
    return -(logits[u, y] - logits[u, target]) / (zs[:, -1] - 0.5 * (zs[:, -3] + zs[:, -4]) + 1e-12)


def apgd_checkpoints(steps: int) -> List[int]:
    """APGD's checkpoints ``w_j = ceil(p_j * steps)`` (Croce & Hein, 2020, section 3.2).

    ``p_0 = 0``, ``p_1 = 0.22`` and ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``,
    up to ``p_j <= 1``: the intervals between checkpoints shrink from 22% of the budget
    to 6%. The fractions are multiples of 0.01, so they are computed in integer hundredths
    (no rounding error in the ceiling). At each checkpoint after the first, APGD decides
    whether to halve the step size.

    Parameters
    ----------
    steps : int
        The iteration budget ``N_iter``.

    Returns
    -------
    list of int
        Increasing iteration indices, starting with 0 (duplicates removed for tiny budgets).

    Examples
    --------
    >>> apgd_checkpoints(100)
    [0, 22, 41, 57, 70, 80, 87, 93, 99]
    """
    steps = check_positive_int(steps, "steps")
    p = [0, 22]  # hundredths
    while True:
        nxt = p[-1] + max(p[-1] - p[-2] - 3, 6)
        if nxt > 100:
            break
        p.append(nxt)
    out: List[int] = []
    for q in p:
        w = -(-q * steps // 100)  # exact ceil(q * steps / 100)
        if not out or w > out[-1]:
            out.append(w)
    return out


def _l2(t: torch.Tensor) -> torch.Tensor:
    return view_batch(t.reshape(t.shape[0], -1).norm(p=2, dim=1), t)


def _normalize(t: torch.Tensor, norm: str) -> torch.Tensor:
    flat = t.reshape(t.shape[0], -1)
    n = flat.abs().max(1).values if norm == "linf" else flat.norm(p=2, dim=1)
    return t / (view_batch(n, t) + 1e-12)


class APGD(Attack):
    """Auto-PGD with the cross-entropy or the DLR loss (Croce & Hein, 2020).

    Parameters
    ----------
    norm : {"linf", "l2"}, default "linf"
    eps : float, optional
        Radius (default 8/255 Linf, 0.5 L2).
    steps : int, default 100
        Iterations per restart (AutoAttack's standard budget).
    restarts : int, default 1
        Random restarts; each restart attacks only the samples not yet fooled.
    loss : {"ce", "dlr"}, default "ce"
        Untargeted: cross-entropy of the true class, or DLR (needs >= 3 classes).
        Targeted (``targeted=True``): minus the cross-entropy of the target, or the
        targeted DLR with the strongest other class in place of the true one.
    rho : float, default 0.75
        A checkpoint halves the step when the loss increased in fewer than
        ``rho`` of the steps since the last checkpoint.
    momentum : float, default 0.75
        Weight of the new step against the previous update (the paper's alpha).
    eot_iter : int, default 1
        Gradients averaged per step (expectation over transformation, for
        randomised models).
    targeted : bool, default False
    bounds : (float, float), default (0, 1)
    seed : int or None, default 0
        Seed of the random starts (None: torch's global RNG). The same seed draws the
        same starts as auto-attack's and torchattacks' ``seed``.
    generator : torch.Generator, optional
    batch_size : int, optional
        Rows per model call; None = the whole batch in one call. Every pass (clean,
        steps, final evaluation) is split into chunks of at most ``batch_size`` rows;
        the result equals the unchunked one up to float rounding.

    Returns an :class:`~xadv.results.AttackResult`. A fooled sample gets the first
    adversarial iterate found; a sample that stays robust gets its highest-loss
    iterate. ``extras``: ``zero_grad`` (samples whose first gradient is exactly zero,
    a gradient-masking sign), ``restarts_used``, ``loss``.

    References
    ----------
    Croce, Hein. Reliable evaluation of adversarial robustness with an ensemble of
    diverse parameter-free attacks. ICML 2020.

    Examples
    --------
    >>> import torch, xadv.attacks
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> res = xadv.attacks.APGD(eps=0.1, steps=10)(net, torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0]))
    >>> bool((res.norms["linf"] <= 0.1 + 1e-6).all())
    True
    """

    def __init__(self, norm: str = "linf", eps: Optional[float] = None, steps: int = 100, restarts: int = 1,
                 loss: str = "ce", rho: float = 0.75, momentum: float = 0.75, eot_iter: int = 1,
                 targeted: bool = False, bounds: Tuple[float, float] = (0.0, 1.0), seed: Optional[int] = 0,
                 generator: Optional[torch.Generator] = None, batch_size: Optional[int] = None):
        self.norm = check_norm(norm, ("linf", "l2"))
        self.eps = check_nonneg(_DEFAULT_EPS[self.norm] if eps is None else eps, "eps")
        self.steps = check_positive_int(steps, "steps")
        self.restarts = check_positive_int(restarts, "restarts")
        if loss not in _LOSSES:
            raise ValueError(f"loss must be one of {_LOSSES}, got {loss!r}")
        self.loss = loss
        self.rho = check_nonneg(rho, "rho")
        self.momentum = check_nonneg(momentum, "momentum")
        if self.momentum > 1:
            raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
        self.eot_iter = check_positive_int(eot_iter, "eot_iter")
        if not isinstance(targeted, bool):
            raise TypeError("targeted must be a bool")
        self.targeted = targeted
        self.bounds = check_bounds(bounds)
        self.seed = seed
        self.generator = generator
        self.batch_size = check_batch_size(batch_size)

    # ------------------------------------------------------------ pieces
    def _min_classes(self) -> int:
        return {"ce": 2, "dlr": 4 if self.targeted else 3}[self.loss]

    def _check_classes(self, k: int) -> None:
        need = self._min_classes()
        if k < need:
            raise ValueError(f"{type(self).__name__} with loss={self.loss!r} needs a model with at least {need} "
                             f"classes, this one has {k}; use loss='ce'")

    def _loss(self, logits: torch.Tensor, y: torch.Tensor, target: Optional[torch.Tensor]) -> torch.Tensor:
        """Per-sample loss to maximise. Untargeted: ``y`` true labels; targeted: ``y`` targets."""
        if target is not None:  # APGDT: true labels y, target classes target
            return dlr_loss_targeted(logits, y, target)
        if not self.targeted:
            return F.cross_entropy(logits, y, reduction="none") if self.loss == "ce" else dlr_loss(logits, y)
        if self.loss == "ce":
            return -F.cross_entropy(logits, y, reduction="none")
        other = logits.detach().clone()
        other.scatter_(1, y[:, None], float("-inf"))
        return dlr_loss_targeted(logits, other.argmax(1), y)

    def _fooled(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        pred = logits.argmax(1)
        return pred == y if self.targeted else pred != y

    def _grad(self, ctx: AttackContext, xa: torch.Tensor, y: torch.Tensor, target):
        def one(xc, yc, tc):
            xi = xc.detach().requires_grad_(True)
            with torch.enable_grad():
                logits = forward(ctx.model, xi)
                li = self._loss(logits, yc, tc)
                (gi,) = torch.autograd.grad(li.sum(), xi)
            return gi.detach(), logits.detach(), li.detach()

        g = torch.zeros_like(xa)
        for _ in range(self.eot_iter):
            gi, logits, li = map_rows(one, ctx.rows, xa, y, target)
            g += gi
        return g / self.eot_iter, logits, li

    def _start(self, x: torch.Tensor, gen) -> torch.Tensor:
        lo, hi = self.bounds
        kw = dict(generator=gen, device=x.device)  # drawn in the default dtype as the references do
        if self.norm == "linf":
            t = (2 * torch.rand(x.shape, **kw) - 1).to(x.dtype)
            n = view_batch(t.reshape(t.shape[0], -1).abs().max(1).values, t)
        else:
            t = torch.randn(x.shape, **kw).to(x.dtype)
            n = _l2(t) + 1e-12
        return (x + self.eps * torch.ones_like(x) * t / n).clamp(lo, hi)  # the reference's rounding

    def _project(self, x: torch.Tensor, xn: torch.Tensor, tiny: float = 0.0) -> torch.Tensor:
        lo, hi = self.bounds
        if self.norm == "linf":
            return torch.min(torch.max(xn, x - self.eps), x + self.eps).clamp(lo, hi)
        d = xn - x
        return (x + _normalize(d, "l2") * torch.clamp(_l2(d) + tiny, max=self.eps)).clamp(lo, hi)

    def _run(self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor, target, gen, idx):
        """One APGD run on the sub-batch ``x`` (rows ``idx`` of the batch).

        Returns ``(x_best, fooled, loss_best, x_best_adv, zero_grad)``."""
        n_it = self.steps
        n_it2, n_min, size_decr = max(int(0.22 * n_it), 1), max(int(0.06 * n_it), 1), max(int(0.03 * n_it), 1)
        m = x.shape[0]
        xa = self._start(x, gen)
        x_best, x_best_adv = xa.clone(), xa.clone()
        loss_steps = torch.zeros(n_it, m, device=x.device, dtype=x.dtype)
        grad, logits, loss_i = self._grad(ctx, xa, y, target)
        ctx.charge(idx)
        zero_grad = grad.reshape(m, -1).abs().sum(1) == 0
        grad_best = grad.clone()
        fooled = self._fooled(logits, y)
        loss_best = loss_i.clone()
        step = torch.full((m,) + (1,) * (x.dim() - 1), 2.0 * self.eps, device=x.device, dtype=x.dtype)
        x_old = xa.clone()
        k, counter = n_it2, 0
        loss_best_last = loss_best.clone()
        reduced_last = torch.ones(m, dtype=torch.bool, device=x.device)
        for i in range(n_it):
            with torch.no_grad():
                upd = xa - x_old
                x_old = xa.clone()
                a = self.momentum if i > 0 else 1.0
                if self.norm == "linf":
                    z = self._project(x, xa + step * grad.sign())
                else:
                    z = self._project(x, xa + step * _normalize(grad, "l2"))
                xa = self._project(x, xa + (z - xa) * a + upd * (1 - a), tiny=1e-12 if self.norm == "l2" else 0.0)
            grad, logits, loss_i = self._grad(ctx, xa, y, target)
            ctx.charge(idx)
            ctx.steps[idx] += 1
            # masks applied with torch.where: boolean indexing would synchronise with the host
            now = self._fooled(logits, y)
            fooled |= now
            x_best_adv = torch.where(view_batch(now, xa), xa, x_best_adv)
            loss_steps[i] = loss_i
            better = loss_i > loss_best
            x_best = torch.where(view_batch(better, xa), xa, x_best)
            grad_best = torch.where(view_batch(better, xa), grad, grad_best)
            loss_best = torch.where(better, loss_i, loss_best)
            counter += 1
            if counter == k:
                ups = torch.zeros(m, device=x.device, dtype=x.dtype)
                for c in range(k):  # index -1 wraps to the last row, as in the reference
                    ups += (loss_steps[i - c] > loss_steps[i - c - 1]).to(x.dtype)
                osc = ups <= k * self.rho
                no_impr = ~reduced_last & (loss_best_last >= loss_best)
                red = osc | no_impr
                reduced_last = red.clone()
                loss_best_last = loss_best.clone()
                rv = view_batch(red, xa)
                step = torch.where(rv, step / 2.0, step)
                xa = torch.where(rv, x_best, xa)
                grad = torch.where(rv, grad_best, grad)
                counter = 0
                k = max(k - size_decr, n_min)
        return x_best, fooled, loss_best, x_best_adv, zero_grad

    # ------------------------------------------------------------ driver
    def _folds_batchnorm(self) -> bool:
        return True   # the loss gradient

    def _attack(self, ctx: AttackContext) -> Tuple[torch.Tensor, Dict[str, Any]]:
        x, y = ctx.x, ctx.y
        logits = ctx.logits
        self._check_classes(logits.shape[1])
        gen = make_generator(self.seed, self.generator, x.device)
        robust = ~self._fooled(logits, y)
        adv = x.clone()
        best_loss = torch.full((ctx.n,), float("-inf"), device=x.device, dtype=x.dtype)
        zero_grad = torch.zeros(ctx.n, dtype=torch.bool, device=x.device)
        runs = 0
        for rank in self._passes():
            for _ in range(self.restarts):
                idx = robust.nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                xs, ys = x[idx], y[idx]
                target = None
                if rank is not None:
                    out = ctx.forward(xs)
                    ctx.charge(idx)
                    target = out.sort(dim=1)[1][:, -rank]
                xb, fooled, lb, xba, zg = self._run(ctx, xs, ys, target, gen, idx)
                runs += 1
                zero_grad[idx] |= zg
                f = idx[fooled]
                adv[f] = xba[fooled]
                robust[f] = False
                keep = ~fooled & (lb > best_loss[idx])
                adv[idx[keep]] = xb[keep]
                best_loss[idx[keep]] = lb[keep]
        return adv, {"eps": self.eps, "norm": self.norm, "loss": self._loss_name(), "runs": runs,
                     "zero_grad": zero_grad}

    def _passes(self):
        return [None]

    def _loss_name(self) -> str:
        return ("targeted-" if self.targeted else "") + self.loss


class APGDT(APGD):
    """APGD on the targeted DLR loss towards the runner-up classes (Croce & Hein, 2020).

    An untargeted attack: for each of the ``n_target_classes`` runner-up classes of
    the clean output in turn (2nd, 3rd, ... highest logit), ``restarts`` APGD runs
    maximise ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)`` on the samples not yet
    misclassified. ``y`` are the true labels. Needs a model with >= 4 classes.

    Parameters
    ----------
    n_target_classes : int, default 9
        How many runner-ups to try (capped at K - 1). AutoAttack's standard
        version uses 9.
    Others as :class:`APGD` (no ``loss``, ``targeted``).

    Examples
    --------
    >>> import torch, xadv.attacks
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 5))
    >>> res = xadv.attacks.APGDT(eps=0.1, steps=5, n_target_classes=2)(net, torch.rand(3, 1, 4, 4), torch.tensor([0, 1, 2]))
    >>> res.x_adv.shape
    torch.Size([3, 1, 4, 4])
    """

    def __init__(self, norm: str = "linf", eps: Optional[float] = None, steps: int = 100, restarts: int = 1,
                 n_target_classes: int = 9, rho: float = 0.75, momentum: float = 0.75, eot_iter: int = 1,
                 bounds: Tuple[float, float] = (0.0, 1.0), seed: Optional[int] = 0,
                 generator: Optional[torch.Generator] = None,
                 batch_size: Optional[int] = None):
        super().__init__(norm=norm, eps=eps, steps=steps, restarts=restarts, loss="dlr", rho=rho,
                         momentum=momentum, eot_iter=eot_iter, targeted=False, bounds=bounds, seed=seed,
                         generator=generator, batch_size=batch_size)
        self.n_target_classes = check_positive_int(n_target_classes, "n_target_classes")

    def _check_classes(self, k: int) -> None:
        if k < 4:
            raise ValueError(f"APGDT (targeted DLR loss) needs a model with at least 4 classes, this one has {k}; "
                             f"use APGD(loss='ce')")
        self._k = k

    def _passes(self):
        return list(range(2, min(self.n_target_classes, self._k - 1) + 2))

    def _loss_name(self) -> str:
        return "dlr-targeted"
