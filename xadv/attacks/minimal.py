"""Minimum-norm L2 attacks: Carlini-Wagner L2 and DeepFool."""
from __future__ import annotations

from typing import Any, Dict, Tuple

import torch
import torch.nn.functional as F

from .._validation import check_bounds, check_positive_int
from ..explainers.base import forward
from .base import Attack, AttackContext, check_nonneg, view_batch


def _margin(logits: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
    """C&W's f without the clamp: ``max_{i!=t} Z_i - Z_t`` (targeted) or ``Z_y - max_{i!=y} Z_i``."""
    onehot = F.one_hot(labels, logits.shape[1]).bool()
    real = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.masked_fill(onehot, float("-inf")).max(1).values
    return other - real if targeted else real - other


class CarliniWagnerL2(Attack):
    """Carlini & Wagner's L2 attack with a binary search over the constant ``c``.

    Minimises ``||x' - x||_2^2 + c * max(Z_y(x') - max_{i != y} Z_i(x'), -kappa)``
    (targeted: ``max(max_{i != t} Z_i - Z_t, -kappa)``) over ``x' = lo + (hi - lo) *
    (tanh(w) + 1) / 2`` with Adam, for each ``c`` of a per-sample binary search;
    the smallest successful perturbation found is returned (the clean input when
    none is found; ``success`` says which).

    Parameters
    ----------
    c : float, default 1e-2
        Initial constant (per sample); multiplied by 10 while no upper bound is known.
    kappa : float, default 0.0
        Confidence margin (the paper's ``kappa``).
    steps : int, default 100
        Adam iterations per constant.
    binary_search_steps : int, default 9
    lr : float, default 5e-2
        Adam step size. The paper uses 1e-2 with up to 10,000 iterations; with the
        100-iteration default a larger step lets saturated pixels (0 or 1, far out
        in tanh space) move.
    abort_early : bool, default True
        Stop a constant's optimisation when the loss has not decreased by 0.01%
        over ``steps // 10`` iterations (as in the reference implementation).
    targeted : bool, default False
    bounds : (float, float), default (0, 1)

    Queries count one forward pass per Adam iteration and sample.

    References
    ----------
    Carlini, Wagner. Towards Evaluating the Robustness of Neural Networks. IEEE S&P 2017.

    Examples
    --------
    >>> import torch, xadv.attacks
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> x = torch.rand(4, 1, 4, 4)
    >>> res = xadv.attacks.CarliniWagnerL2(steps=50, binary_search_steps=4)(net, x, net(x).argmax(1))
    >>> res.norms["l2"].shape
    torch.Size([4])
    """

    def __init__(self, c: float = 1e-2, kappa: float = 0.0, steps: int = 100, binary_search_steps: int = 9,
                 lr: float = 5e-2, abort_early: bool = True, targeted: bool = False,
                 bounds: Tuple[float, float] = (0.0, 1.0)):
        self.c = check_nonneg(c, "c")
        if self.c == 0:
            raise ValueError("c must be > 0")
        self.kappa = check_nonneg(kappa, "kappa")
        self.steps = check_positive_int(steps, "steps")
        self.binary_search_steps = check_positive_int(binary_search_steps, "binary_search_steps")
        self.lr = check_nonneg(lr, "lr")
        self.abort_early = bool(abort_early)
        if not isinstance(targeted, bool):
            raise TypeError("targeted must be a bool")
        self.targeted = targeted
        self.bounds = check_bounds(bounds)

    def _folds_batchnorm(self) -> bool:
        return True   # the loss gradient

    def _attack(self, ctx: AttackContext) -> Tuple[torch.Tensor, Dict[str, Any]]:
        ctx.logits  # the clean pass (not a query): checks the labels against the model's classes
        x, y = ctx.x, ctx.y
        lo, hi = self.bounds
        n = ctx.n
        dev, dt = x.device, x.dtype

        def to_x(w):
            return lo + (hi - lo) * (torch.tanh(w) + 1) / 2

        # atanh of the inputs, pulled slightly inside (-1, 1) so saturated pixels can move
        z = ((x - lo) / (hi - lo) * 2 - 1).clamp(-1, 1) * (1 - 1e-6)
        w0 = torch.atanh(z)
        c = torch.full((n,), self.c, device=dev, dtype=dt)
        c_lo = torch.zeros(n, device=dev, dtype=dt)
        c_hi = torch.full((n,), 1e10, device=dev, dtype=dt)
        best_l2 = torch.full((n,), float("inf"), device=dev, dtype=dt)
        best_x = x.clone()
        c_used = torch.full((n,), float("nan"), device=dev, dtype=dt)
        for _ in range(self.binary_search_steps):
            w = w0.clone().requires_grad_(True)
            opt = torch.optim.Adam([w], lr=self.lr)
            found = torch.zeros(n, dtype=torch.bool, device=dev)
            prev = float("inf")
            check_every = max(self.steps // 10, 1)
            for it in range(self.steps):
                with torch.enable_grad():
                    xa = to_x(w)
                    logits = forward(ctx.model, xa)
                    l2 = (xa - x).reshape(n, -1).pow(2).sum(1)
                    f = _margin(logits, y, self.targeted).clamp_min(-self.kappa)
                    loss = (l2 + c * f).sum()
                    opt.zero_grad()
                    (g,) = torch.autograd.grad(loss, w)
                w.grad = g
                opt.step()
                ctx.charge()
                ctx.steps += 1
                with torch.no_grad():
                    m = _margin(logits.detach(), y, self.targeted)
                    ok = m < -self.kappa if self.kappa > 0 else ctx.is_success(logits.detach(), y)
                    better = ok & (l2.detach() < best_l2)
                    if bool(better.any()):
                        best_l2 = torch.where(better, l2.detach(), best_l2)
                        best_x = torch.where(view_batch(better, x), xa.detach(), best_x)
                        c_used = torch.where(better, c, c_used)
                    found |= ok
                if self.abort_early and it % check_every == 0:
                    cur = float(loss.detach())
                    if cur > prev * 0.9999:
                        break
                    prev = cur
            # binary search update per sample
            c_hi = torch.where(found, torch.minimum(c_hi, c), c_hi)
            c_lo = torch.where(found, c_lo, torch.maximum(c_lo, c))
            c = torch.where(c_hi < 1e9, (c_lo + c_hi) / 2, c * 10)
        return best_x, {"c": c_used, "best_l2": best_l2.sqrt()}


class DeepFool(Attack):
    """DeepFool (Moosavi-Dezfooli et al., 2016): iterative linearisation to the
    nearest decision boundary, L2.

    At each iteration and for each sample still classified as ``y``, the logits of
    the ``candidates`` classes ranked highest on the clean input are linearised;
    the step ``r = (|f_k| + 1e-4) / ||w_k||^2 * w_k`` towards the closest
    linearised boundary ``k`` is accumulated, and ``x + (1 + overshoot) * r_total``
    (clipped to ``bounds``) is the next iterate, as in the paper's reference code.

    Parameters
    ----------
    steps : int, default 50
        Maximum iterations.
    overshoot : float, default 0.02
    candidates : int, default 10
        Number of classes considered (the top ones of the clean logits, including ``y``).
    bounds : (float, float), default (0, 1)

    Untargeted only. Queries count one forward pass per iteration and sample (each
    iteration also takes ``candidates`` backward passes).

    References
    ----------
    Moosavi-Dezfooli, Fawzi, Frossard. DeepFool: a simple and accurate method to fool
    deep neural networks. CVPR 2016.

    Examples
    --------
    >>> import torch, xadv.attacks
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> x = 0.4 + 0.2 * torch.rand(4, 1, 4, 4)
    >>> res = xadv.attacks.DeepFool()(net, x, net(x).argmax(1))
    >>> res.steps.tolist()    # a linear model is fooled in one step (away from the bounds)
    [1, 1, 1, 1]
    """

    supports_targeted = False

    def __init__(self, steps: int = 50, overshoot: float = 0.02, candidates: int = 10,
                 bounds: Tuple[float, float] = (0.0, 1.0)):
        self.steps = check_positive_int(steps, "steps")
        self.overshoot = check_nonneg(overshoot, "overshoot")
        self.candidates = check_positive_int(candidates, "candidates", minimum=2)
        self.targeted = False
        self.bounds = check_bounds(bounds)

    def _folds_batchnorm(self) -> bool:
        return True   # the loss gradient

    def _attack(self, ctx: AttackContext) -> Tuple[torch.Tensor, Dict[str, Any]]:
        x, y = ctx.x, ctx.y
        lo, hi = self.bounds
        n = ctx.n
        k = min(self.candidates, ctx.logits.shape[1])
        # candidate classes: y first, then the other top-(k-1) clean classes
        order = ctx.logits.masked_fill(F.one_hot(y, ctx.logits.shape[1]).bool(), float("inf")).argsort(
            1, descending=True)[:, :k]
        r_tot = torch.zeros_like(x)
        xa = x.clone()
        active = torch.ones(n, dtype=torch.bool, device=x.device)
        for _ in range(self.steps):
            idx = active.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            xi = xa[idx].detach().requires_grad_(True)
            cls = order[idx]
            with torch.enable_grad():
                out = forward(ctx.model, xi)
                fk = out.gather(1, cls)  # (m, k), column 0 is y
                grads = []
                for j in range(k):
                    (g,) = torch.autograd.grad(fk[:, j].sum(), xi, retain_graph=j < k - 1)
                    grads.append(g)
            ctx.charge(idx)
            fk = fk.detach()
            done = out.detach().argmax(1) != y[idx]
            if bool(done.any()):
                active[idx[done]] = False
            keep = ~done
            if not bool(keep.any()):
                break
            idx, fk = idx[keep], fk[keep]
            gr = torch.stack(grads, 1)[keep]  # (m, k, ...)
            m = idx.numel()
            w = (gr[:, 1:] - gr[:, :1]).reshape(m, k - 1, -1)
            f = (fk[:, 1:] - fk[:, :1])
            wn = w.norm(dim=2).clamp_min(1e-12)
            dist = f.abs() / wn
            best = dist.argmin(1)
            wb = w[torch.arange(m), best]
            fb = f[torch.arange(m), best].abs()
            r = ((fb + 1e-4) / wn[torch.arange(m), best].pow(2))[:, None] * wb
            r_tot = r_tot.index_add(0, idx, r.reshape((m,) + x.shape[1:]))
            xn = (x[idx] + (1 + self.overshoot) * r_tot[idx]).clamp(lo, hi)
            xa = xa.index_copy(0, idx, xn)
            ctx.steps[idx] += 1
        return xa, {"overshoot": self.overshoot}
