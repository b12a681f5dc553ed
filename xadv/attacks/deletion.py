"""Feature-deletion (L0) attacks driven by explanations, and JSMA."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch

from .._model import preserved
from .._validation import check_bounds, check_inputs, check_model, check_positive_int, resolve_target
from ..explainers import Explainer
from ..explainers.base import forward
from ..metrics.faithfulness import FILLS, _expand_mask, feature_maps, fill_values, remove_features
from .base import Attack, AttackContext, QueryCounter, make_generator
from .gradient import resolve_explainer

FillLike = Union[str, float, torch.Tensor]


class DeletionAttack(Attack):
    """Remove the features an explanation credits most for the true class (L0 attack).

    The explainer ranks the features (pixels of images, over all channels, or
    columns of rows) for the true class; the top ``k`` are replaced by ``fill``.
    With ``steps > 1`` the deletion happens in rounds of ``k / steps`` features,
    re-explaining the partially deleted input each round and stopping per sample
    once it is misclassified. :meth:`success_vs_k` sweeps ``k`` from one explanation.

    Parameters
    ----------
    explainer : Explainer or str, default "saliency"
        Any explainer: saliency, IG, SmoothGrad, Grad-CAM, LIME, ... (registry names work).
        Note: a gradient explainer's default score is the logit; ``Saliency(abs=True)``
        ranks by magnitude instead of positive evidence.
    k : int, optional
        Features to delete. Give ``k`` or ``fraction`` (default ``fraction=0.05``).
    fraction : float in (0, 1], optional
    fill : {"zeros", "mean", "blur", "noise"}, float or Tensor, default "zeros"
        What a deleted feature becomes (see :func:`xadv.metrics.fill_values`).
    reduce : {"sum", "abs", "max"}, default "sum"
        Channel reduction of image attributions before ranking (signed sum:
        positive evidence for the class is deleted first).
    steps : int, default 1
        Deletion rounds (re-explaining between rounds).
    bounds : (float, float), default (0, 1)
    blur_sigma : float, default 2.0
    seed : int, optional; generator : torch.Generator, optional
        For ``fill="noise"``.

    Untargeted only. ``extras["mask"]`` is the (N, F) boolean mask of deleted features.

    References
    ----------
    Liu et al. Adversarial Attacks and Defenses: An Interpretation Perspective. 2020.
    Samek et al. Evaluating the visualization of what a deep neural network has learned. 2017.

    Examples
    --------
    >>> import torch, xadv.attacks
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> res = xadv.attacks.DeletionAttack("saliency", k=4)(net, torch.rand(2, 1, 4, 4), torch.tensor([0, 1]))
    >>> bool((res.norms["l0"] <= 4).all())
    True
    """

    supports_targeted = False

    def __init__(self, explainer: Union[Explainer, str] = "saliency", k: Optional[int] = None,
                 fraction: Optional[float] = None, fill: FillLike = "zeros", reduce: str = "sum",
                 steps: int = 1, bounds: Tuple[float, float] = (0.0, 1.0), blur_sigma: float = 2.0,
                 seed: Optional[int] = None, generator: Optional[torch.Generator] = None):
        self.explainer = resolve_explainer(explainer)
        if k is not None and fraction is not None:
            raise ValueError("give either k (a count) or fraction, not both")
        if k is not None:
            check_positive_int(k, "k")
        if fraction is not None and not (isinstance(fraction, (int, float)) and 0 < float(fraction) <= 1):
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
        self.k = k
        self.fraction = None if fraction is None else float(fraction)
        if isinstance(fill, str) and fill not in FILLS:
            raise ValueError(f"fill must be one of {FILLS}, a number or a tensor, got {fill!r}")
        self.fill = fill
        if reduce not in ("sum", "abs", "max"):
            raise ValueError(f"reduce must be 'sum', 'abs' or 'max', got {reduce!r}")
        self.reduce = reduce
        self.steps = check_positive_int(steps, "steps")
        self.bounds = check_bounds(bounds)
        self.blur_sigma = float(blur_sigma)
        self.seed = seed
        self.generator = generator
        self.targeted = False

    def n_features(self, x: torch.Tensor) -> int:
        return int(x[0, 0].numel()) if x.dim() == 4 else int(x[0].numel())

    def _count(self, x: torch.Tensor) -> int:
        f = self.n_features(x)
        if self.k is not None:
            return min(self.k, f)
        return max(1, int(round((0.05 if self.fraction is None else self.fraction) * f)))

    def _fill(self, x: torch.Tensor) -> torch.Tensor:
        gen = make_generator(self.seed, self.generator, x.device)
        return fill_values(x, self.fill, bounds=self.bounds, blur_sigma=self.blur_sigma, generator=gen)

    def _explain(self, ctx_model, x, y):
        return feature_maps(self.explainer._explain(ctx_model, x, y, False), x, self.reduce)

    def _attack(self, ctx: AttackContext) -> Tuple[torch.Tensor, Dict[str, Any]]:
        x, y = ctx.x, ctx.y
        k = self._count(x)
        base = self._fill(x)
        n, f = x.shape[0], self.n_features(x)
        deleted = torch.zeros(n, f, dtype=torch.bool, device=x.device)
        xa = x.clone()
        active = torch.ones(n, dtype=torch.bool, device=x.device)
        per_round = [k * (r + 1) // self.steps - k * r // self.steps for r in range(self.steps)]
        for r, kr in enumerate(per_round):
            idx = active.nonzero().squeeze(1)
            if idx.numel() == 0 or kr == 0:
                continue
            m = self._explain(ctx.model, xa[idx], y[idx])
            ctx.charge(idx)
            m = m.masked_fill(deleted[idx], float("-inf"))
            top = m.topk(kr, dim=1).indices
            deleted[idx] = deleted[idx].scatter(1, top, True)
            mask = _expand_mask(deleted[idx], x)
            xa[idx] = torch.where(mask, base[idx], x[idx])
            ctx.steps[idx] += 1
            if self.steps > 1 and r < self.steps - 1:
                with torch.no_grad():
                    out = forward(ctx.model, xa[idx])
                ctx.charge(idx)
                active[idx[ctx.is_success(out, y[idx])]] = False
        return xa, {"k": k, "mask": deleted, "fill": self.fill if isinstance(self.fill, (str, float)) else "tensor"}

    def success_vs_k(self, model, x: torch.Tensor, y, ks: Sequence[Union[int, float]]) -> Dict[str, Any]:
        """Success rate of deleting the top ``k`` features for each ``k`` (one explanation).

        Parameters
        ----------
        ks : sequence of int (counts) or float in (0, 1] (fractions)

        Returns
        -------
        dict with ``k`` (list of counts), ``success_rate`` (list of floats),
        ``success`` (BoolTensor (len(ks), N)), ``min_k`` (LongTensor (N,), the smallest
        ``k`` of ``ks`` that succeeds, -1 when none) and ``queries`` (per sample).
        """
        check_model(model)
        check_inputs(x, model)
        f = self.n_features(x)
        counts = []
        for k in ks:
            if isinstance(k, float):
                if not 0 < k <= 1:
                    raise ValueError(f"fractions in ks must be in (0, 1], got {k}")
                k = max(1, int(round(k * f)))
            counts.append(min(check_positive_int(int(k), "k"), f))
        x = x.detach()
        with preserved(model, freeze=True):
            counter = QueryCounter(model)
            try:
                with torch.no_grad():
                    out = forward(model, x)
                labels = resolve_target(y, out)
                counter.take()
                m = self._explain(counter.wrapped, x, labels)
                q = counter.take() // x.shape[0]
                order = torch.sort(m, dim=1, descending=True, stable=True).indices
                base = self._fill(x)
                succ = []
                with torch.no_grad():
                    for k in counts:
                        o = forward(model, remove_features(x, order, k, base))
                        succ.append(o.argmax(1) != labels)
            finally:
                counter.close()
        succ_t = torch.stack(succ)
        ks_t = torch.tensor(counts, device=x.device)
        first = torch.where(succ_t.any(0), succ_t.float().argmax(0), torch.full_like(labels, -1))
        min_k = torch.where(first >= 0, ks_t[first.clamp_min(0)], first)
        return {"k": counts, "success_rate": [float(s.float().mean()) for s in succ_t], "success": succ_t,
                "min_k": min_k, "queries": q + len(counts)}


class JSMA(Attack):
    """Jacobian-based saliency map attack (Papernot et al., 2016), targeted, L0.

    Each iteration computes the Jacobian of the logits (as the cleverhans and
    torchattacks implementations) with respect to the input features and,
    among the features still in the search domain, picks the *pair* of features ``(p, q)``
    maximising ``alpha * |beta|`` with ``alpha = sum_{i in p,q} dZ_t/dx_i > 0`` and
    ``beta = sum_{i in p,q} sum_{j != t} dZ_j/dx_i < 0`` (increasing features,
    ``theta > 0``; the signs swap for ``theta < 0``), and moves both by ``theta``
    (clipped to ``bounds``); both leave the search domain. It stops when the
    target is reached, no admissible pair is left, or after ``ceil(gamma * d / 2)``
    iterations (at most that many pairs change).

    Parameters
    ----------
    theta : float, default 1.0
        Change per selected feature, in units of ``bounds`` range (sign: direction).
    gamma : float, default 0.1
        Maximum fraction of the features that may change.
    bounds : (float, float), default (0, 1)

    Targeted only (``targeted=True`` implied): ``attack(model, x, targets)``.
    The Jacobian is batched over samples (``K`` backward passes per iteration); the
    pair search is per sample, O(d^2) memory.

    References
    ----------
    Papernot et al. The Limitations of Deep Learning in Adversarial Settings. EuroS&P 2016.

    Examples
    --------
    >>> import torch, xadv.attacks
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> res = xadv.attacks.JSMA(gamma=0.5)(net, 0.5 * torch.rand(2, 1, 4, 4), torch.tensor([2, 2]))
    >>> bool((res.norms["l0"] <= 8).all())
    True
    """

    supports_untargeted = False

    def __init__(self, theta: float = 1.0, gamma: float = 0.1, bounds: Tuple[float, float] = (0.0, 1.0)):
        self.theta = float(theta)
        if self.theta == 0:
            raise ValueError("theta must be non-zero (its sign is the direction of the change)")
        if not 0 < float(gamma) <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {gamma!r}")
        self.gamma = float(gamma)
        self.bounds = check_bounds(bounds)
        self.targeted = True

    def _attack(self, ctx: AttackContext) -> Tuple[torch.Tensor, Dict[str, Any]]:
        ctx.logits  # the clean pass (not a query): checks the targets against the model's classes
        x, t = ctx.x, ctx.y
        lo, hi = self.bounds
        n = ctx.n
        d = x[0].numel()
        increasing = self.theta > 0
        change = self.theta * (hi - lo)
        max_iters = int(-(-d * self.gamma // 2))
        xf = x.reshape(n, -1).clone()
        domain = (xf < hi) if increasing else (xf > lo)
        active = torch.ones(n, dtype=torch.bool, device=x.device)
        changed = torch.zeros(n, d, dtype=torch.bool, device=x.device)
        offdiag = ~torch.eye(d, dtype=torch.bool, device=x.device)
        for _ in range(max_iters):
            idx = active.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            xi = xf[idx].detach().requires_grad_(True)
            with torch.enable_grad():
                out = forward(ctx.model, xi.reshape((-1,) + x.shape[1:]))
                k = out.shape[1]
                jac = []
                for j in range(k):
                    (g,) = torch.autograd.grad(out[:, j].sum(), xi, retain_graph=j < k - 1)
                    jac.append(g)
            ctx.charge(idx)
            jac = torch.stack(jac, 1)  # (m, K, d)
            done = out.detach().argmax(1) == t[idx]
            for r in range(idx.numel()):
                i = int(idx[r])
                dom = domain[i]
                if bool(done[r]) or int(dom.sum()) < 2:
                    active[i] = False
                    continue
                tg = jac[r, t[i]]
                ot = jac[r].sum(0) - tg
                a = tg[:, None] + tg[None, :]
                b = ot[:, None] + ot[None, :]
                valid = dom[:, None] & dom[None, :] & offdiag
                valid &= ((a > 0) & (b < 0)) if increasing else ((a < 0) & (b > 0))
                if not bool(valid.any()):
                    active[i] = False
                    continue
                best = int(torch.where(valid, a * b.abs(), torch.zeros_like(a)).reshape(-1).argmax())
                p, q = best // d, best % d
                for f in (p, q):
                    xf[i, f] = (xf[i, f] + change).clamp(lo, hi)
                    changed[i, f] = True
                    domain[i, f] = False  # each feature is used once, as in the reference code
                ctx.steps[i] += 1
        return xf.reshape(x.shape), {"changed": changed}
