"""Square Attack (Andriushchenko et al., 2020): a query-only random search.

Each iteration proposes one change of the current best perturbation inside a
random square window and keeps it for the samples whose margin loss
``z_y - max_{j!=y} z_j`` goes down. The window's area is a fraction ``p`` of the
image that shrinks on a fixed schedule (``p_init`` halved at 10, 50, 200, 500,
1000, 2000, 4000, 6000 and 8000 of 10,000 iterations, rescaled to ``n_queries``).
L-inf proposals set the window to ``+-eps`` (one sign per channel) on top of a
start of vertical stripes; L2 proposals move mass between two windows with
the ``eta`` pattern of nested squares, keeping the norm at ``eps``.

No gradients are used, which makes Square the standard check for gradient
masking: if it succeeds where the gradient attacks fail, their numbers were not
a reliable bound.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from .._validation import check_bounds, check_positive_int
from ..explainers.base import forward
from .base import Attack, AttackContext, check_batch_size, check_nonneg, check_norm, make_generator, view_batch

_DEFAULT_EPS = {"linf": 8 / 255, "l2": 0.5}
_LOSSES = ("margin", "ce")


def p_schedule(it: int, p_init: float, n_queries: int, rescale: bool = True) -> float:
    """Fraction of the image a square covers at iteration ``it`` (Square Attack's schedule)."""
    if rescale:
        it = int(it / n_queries * 10000)
    for bound, div in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64),
                       (6000, 128), (8000, 256)):
        if it <= bound:
            return p_init / div
    return p_init / 512


class Square(Attack):
    """Square Attack, L-inf and L2 (Andriushchenko, Croce, Flammarion, Hein, 2020).

    Parameters
    ----------
    norm : {"linf", "l2"}, default "linf"
    eps : float, optional
        Radius (default 8/255 Linf, 0.5 L2).
    n_queries : int, default 5000
        Iterations per restart (one model query per still-robust sample each).
    restarts : int, default 1
    p_init : float, default 0.8
        Initial fraction of the image covered by a square.
    loss : {"margin", "ce"}, default "margin"
        Quantity the search decreases (margin, or minus the cross-entropy); a
        sample counts as fooled once its margin is <= 0 in either case.
    rescale_schedule : bool, default True
        Scale the ``p`` schedule (written for 10,000 iterations) to ``n_queries``.
    targeted : bool, default False
    bounds : (float, float), default (0, 1)
    seed : int or None, default 0; generator : torch.Generator, optional
        The same seed draws the same squares as auto-attack's and torchattacks'.
    batch_size : int, optional
        Rows per model call; None = the whole batch in one call. Every pass (clean,
        steps, final evaluation) is split into chunks of at most ``batch_size`` rows;
        the result equals the unchunked one up to float rounding.

    Inputs must be images (N, C, H, W). ``queries`` in the result counts the
    model rows spent per sample. ``x_adv`` holds each sample's lowest-loss point.

    References
    ----------
    Andriushchenko, Croce, Flammarion, Hein. Square Attack: a query-efficient
    black-box adversarial attack via random search. ECCV 2020.

    Examples
    --------
    >>> import torch, xadv.attacks
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    >>> res = xadv.attacks.Square(eps=0.1, n_queries=20)(net, torch.rand(2, 1, 8, 8), torch.tensor([0, 1]))
    >>> bool((res.norms["linf"] <= 0.1 + 1e-6).all())
    True
    """

    white_box = False

    def __init__(self, norm: str = "linf", eps: Optional[float] = None, n_queries: int = 5000, restarts: int = 1,
                 p_init: float = 0.8, loss: str = "margin", rescale_schedule: bool = True, targeted: bool = False,
                 bounds: Tuple[float, float] = (0.0, 1.0), seed: Optional[int] = 0,
                 generator: Optional[torch.Generator] = None, batch_size: Optional[int] = None):
        self.norm = check_norm(norm, ("linf", "l2"))
        self.eps = check_nonneg(_DEFAULT_EPS[self.norm] if eps is None else eps, "eps")
        self.n_queries = check_positive_int(n_queries, "n_queries")
        self.restarts = check_positive_int(restarts, "restarts")
        self.p_init = check_nonneg(p_init, "p_init")
        if not 0 < self.p_init <= 1:
            raise ValueError(f"p_init must be in (0, 1], got {p_init!r}")
        if loss not in _LOSSES:
            raise ValueError(f"loss must be one of {_LOSSES}, got {loss!r}")
        self.loss = loss
        self.rescale_schedule = bool(rescale_schedule)
        if not isinstance(targeted, bool):
            raise TypeError("targeted must be a bool")
        self.targeted = targeted
        self.bounds = check_bounds(bounds)
        self.seed = seed
        self.generator = generator
        self.batch_size = check_batch_size(batch_size)

    # ------------------------------------------------------------ pieces
    def _margin_loss(self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor):
        logits = ctx.forward(x).clone()
        ctx.charge(idx)
        u = torch.arange(x.shape[0], device=x.device)
        xent = F.cross_entropy(logits, y, reduction="none")
        zy = logits[u, y].clone()
        logits[u, y] = float("-inf")
        other = logits.max(dim=1).values
        if self.targeted:
            margin = other - zy
            return margin, (xent if self.loss == "ce" else margin)
        margin = zy - other
        return margin, (-xent if self.loss == "ce" else margin)

    def _rand(self, shape, gen, like):
        # drawn in the default dtype as the references do, so a seed gives their squares
        return torch.rand(shape, generator=gen, device=like.device).to(like.dtype)

    def _sign(self, shape, gen, like):
        return torch.sign(2 * self._rand(shape, gen, like) - 1)

    def _int(self, low: int, high: int, gen, like) -> int:
        return int((low + (high - low) * self._rand([1], gen, like)).long())

    def _eta_rect(self, a: int, b: int, like) -> torch.Tensor:
        d = torch.zeros(a, b, device=like.device, dtype=like.dtype)
        xc, yc = a // 2 + 1, b // 2 + 1
        c0, c1 = xc - 1, yc - 1
        for r in range(max(xc, yc)):
            d[max(c0, 0):min(c0 + 2 * r + 1, a), max(0, c1):min(c1 + 2 * r + 1, b)] += 1.0 / (r + 1) ** 2
            c0 -= 1
            c1 -= 1
        return d / d.pow(2).sum().sqrt()

    def _eta(self, s: int, gen, like) -> torch.Tensor:
        d = torch.zeros(s, s, device=like.device, dtype=like.dtype)
        d[: s // 2] = self._eta_rect(s // 2, s, like)
        d[s // 2:] = -self._eta_rect(s - s // 2, s, like)
        d = d / d.pow(2).sum().sqrt()
        if bool(self._rand([1], gen, like) > 0.5):
            d = d.t()
        return d

    @staticmethod
    def _l2(t: torch.Tensor) -> torch.Tensor:
        return view_batch(t.reshape(t.shape[0], -1).norm(p=2, dim=1), t)

    # ------------------------------------------------------------ one run
    def _run(self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor, gen, idx: torch.Tensor):
        lo, hi = self.bounds
        eps = self.eps
        n, c, h, w = x.shape
        n_features = c * h * w
        if self.norm == "linf":
            x_best = (x + eps * self._sign([n, c, 1, w], gen, x)).clamp(lo, hi)
        else:
            delta = torch.zeros_like(x)
            s = max(h // 5, 1)
            sp = (h - s * 5) // 2
            vh = sp
            for _ in range(h // s):
                vw = sp
                for _ in range(w // s):
                    delta[:, :, vh:vh + s, vw:vw + s] += (self._eta(s, gen, x).view(1, 1, s, s)
                                                          * self._sign([n, c, 1, 1], gen, x))
                    vw += s
                vh += s
            x_best = (x + delta / (self._l2(delta) + 1e-12) * eps).clamp(lo, hi)
        margin_min, loss_min = self._margin_loss(ctx, x_best, y, idx)
        if bool((margin_min < 0).all()):
            return x_best, margin_min
        for it in range(self.n_queries):
            act = (margin_min > 0).nonzero().squeeze(1)
            if act.numel() == 0:
                break
            xc, xbc, yc = x[act], x_best[act], y[act]
            mmc, lmc = margin_min[act], loss_min[act]
            p = p_schedule(it, self.p_init, self.n_queries, self.rescale_schedule)
            if self.norm == "linf":
                s = min(max(int(round(math.sqrt(p * n_features / c))), 1), min(h, w))
                vh, vw = self._int(0, h - s, gen, x), self._int(0, w - s, gen, x)
                new = torch.zeros(c, h, w, device=x.device, dtype=x.dtype)
                new[:, vh:vh + s, vw:vw + s] = 2.0 * eps * self._sign([c, 1, 1], gen, x)
                x_new = torch.min(torch.max(xbc + new, xc - eps), xc + eps).clamp(lo, hi)
            else:
                dc = xbc - xc
                s = max(int(round(math.sqrt(p * n_features / c))), 3)
                if s % 2 == 0:
                    s += 1
                s = min(s, min(h, w))
                vh, vw = self._int(0, h - s, gen, x), self._int(0, w - s, gen, x)
                m1 = torch.zeros_like(xc)
                m1[:, :, vh:vh + s, vw:vw + s] = 1.0
                nw1 = dc[:, :, vh:vh + s, vw:vw + s].pow(2).sum(dim=(-2, -1), keepdim=True).sqrt()
                vh2, vw2 = self._int(0, h - s, gen, x), self._int(0, w - s, gen, x)
                m2 = torch.zeros_like(xc)
                m2[:, :, vh2:vh2 + s, vw2:vw2 + s] = 1.0
                n_img = self._l2(xbc - xc)
                n_win = (dc * torch.max(m1, m2)).pow(2).sum(dim=(-2, -1), keepdim=True).sqrt()
                new = torch.ones(xc.shape[0], c, s, s, device=x.device, dtype=x.dtype)
                new = new * (self._eta(s, gen, x).view(1, 1, s, s) * self._sign([xc.shape[0], c, 1, 1], gen, x))
                new = new + dc[:, :, vh:vh + s, vw:vw + s] / (1e-12 + nw1)
                new = new / (1e-12 + new.pow(2).sum(dim=(-2, -1), keepdim=True).sqrt()) * (
                    torch.max((eps * torch.ones_like(new)) ** 2 - n_img ** 2, torch.zeros_like(new)) / c
                    + n_win ** 2).sqrt()
                dc[:, :, vh2:vh2 + s, vw2:vw2 + s] = 0.0
                dc[:, :, vh:vh + s, vw:vw + s] = new
                x_new = (xc + dc / (self._l2(dc) + 1e-12) * eps).clamp(lo, hi)
            margin, loss = self._margin_loss(ctx, x_new, yc, idx[act])
            ctx.steps[idx[act]] += 1
            improved = loss < lmc
            loss_min[act] = torch.where(improved, loss, lmc)
            improved = improved | (margin <= 0)
            margin_min[act] = torch.where(improved, margin, mmc)
            x_best[act] = torch.where(view_batch(improved, x_new), x_new, xbc)
        return x_best, margin_min

    def _folds_batchnorm(self) -> bool:
        return True   # forward passes only

    def _attack(self, ctx: AttackContext) -> Tuple[torch.Tensor, Dict[str, Any]]:
        x, y = ctx.x, ctx.y
        if x.dim() != 4:
            raise ValueError(f"Square needs image inputs (N, C, H, W), got shape {tuple(x.shape)}")
        logits = ctx.logits
        pred = logits.argmax(1)
        robust = pred != y if self.targeted else pred == y
        gen = make_generator(self.seed, self.generator, x.device)
        adv = x.clone()
        best = torch.full((ctx.n,), float("inf"), device=x.device, dtype=logits.dtype)
        for _ in range(self.restarts):
            idx = robust.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            xb, mm = self._run(ctx, x[idx], y[idx], gen, idx)
            out = ctx.forward(xb)
            ctx.charge(idx)
            p = out.argmax(1)
            fooled = p == y[idx] if self.targeted else p != y[idx]
            take = fooled | (mm < best[idx])
            adv[idx[take]] = xb[take]
            best[idx[take]] = mm[take].to(best.dtype)
            robust[idx[fooled]] = False
        return adv, {"eps": self.eps, "norm": self.norm, "n_queries": self.n_queries}
