"""Query-only attacks: a local linear surrogate (LIME/KernelSHAP-style sampling) and
transfer from a locally trained substitute model."""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from .._model import preserved
from .._validation import check_bounds, check_inputs, check_model, check_positive_int, resolve_target
from ..explainers.base import forward
from ..explainers.lime import exponential_kernel, weighted_ridge
from .base import Attack, AttackContext, check_nonneg, check_norm, make_generator, project, view_batch


def _margin_loss(logits: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
    """Log-probability margin, minimised by the attack: ``log p_y - max_{j != y} log p_j``
    (untargeted) or ``max_{j != t} log p_j - log p_t`` (targeted). Negative = success."""
    lp = F.log_softmax(logits, dim=1)
    own = lp.gather(1, labels[:, None]).squeeze(1)
    other = lp.masked_fill(F.one_hot(labels, lp.shape[1]).bool(), float("-inf")).max(1).values
    return other - own if targeted else own - other


class SurrogateAttack(Attack):
    """Black-box attack through a local linear surrogate of the model's decision.

    Around the current point, ``n_samples`` perturbations are drawn in an
    interpretable feature space (``patch x patch`` blocks of images, single
    features of rows), the model is queried for its output scores, and a
    LIME-weighted ridge regression of the log-probability margin on the
    perturbation coefficients gives a local linear surrogate. The attack steps
    against its weights (sign step for Linf, normalised step for L2), projects on
    the ``eps`` ball, refits, and repeats until success or the query cap. No
    gradient of the model is used.

    Parameters
    ----------
    eps : float, default 0.3
    norm : {"linf", "l2"}, default "linf"
    steps : int, default 20
        Surrogate refits (outer iterations).
    n_samples : int, default 64
        Queries per refit (plus one to check the new point).
    sigma : float, default 0.1
        Standard deviation of the sampled perturbations (input units).
    step_size : float, optional
        Default ``eps / 4`` (Linf) or ``eps / 4`` in L2 norm.
    patch : int, default 4
        Side of the square blocks that form the surrogate's features on (N, C, H, W)
        images (1 = every pixel); rows always use single features.
    kernel_width : float, optional
        LIME kernel width on the coefficient distance; default ``0.75 * sqrt(S)``.
    alpha : float, default 1.0
        Ridge penalty.
    max_queries : int, optional
        Cap per sample (default: ``steps * (n_samples + 1)``).
    targeted : bool, default False
    bounds : (float, float), default (0, 1)
    seed : int, optional; generator : torch.Generator, optional

    ``queries`` in the result counts every model evaluation per sample;
    ``extras["surrogate_r2"]`` the mean weighted R^2 of the last fits.

    References
    ----------
    Ribeiro, Singh, Guestrin. "Why should I trust you?" (LIME). KDD 2016.
    Lundberg, Lee. A unified approach to interpreting model predictions (KernelSHAP). NeurIPS 2017.
    Liu et al. Adversarial Attacks and Defenses: An Interpretation Perspective. 2020.

    Examples
    --------
    >>> import torch, xadv.attacks
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> atk = xadv.attacks.SurrogateAttack(eps=0.3, steps=3, n_samples=16, patch=2, seed=0)
    >>> res = atk(net, torch.rand(2, 1, 4, 4), torch.tensor([0, 1]))
    >>> bool((res.queries <= 3 * 17).all())
    True
    """

    white_box = False

    def __init__(self, eps: float = 0.3, norm: str = "linf", steps: int = 20, n_samples: int = 64,
                 sigma: float = 0.1, step_size: Optional[float] = None, patch: int = 4,
                 kernel_width: Optional[float] = None, alpha: float = 1.0, max_queries: Optional[int] = None,
                 targeted: bool = False, bounds: Tuple[float, float] = (0.0, 1.0), seed: Optional[int] = None,
                 generator: Optional[torch.Generator] = None):
        self.eps = check_nonneg(eps, "eps")
        self.norm = check_norm(norm, ("linf", "l2"))
        self.steps = check_positive_int(steps, "steps")
        self.n_samples = check_positive_int(n_samples, "n_samples", minimum=2)
        self.sigma = check_nonneg(sigma, "sigma")
        self.step_size = None if step_size is None else check_nonneg(step_size, "step_size")
        self.patch = check_positive_int(patch, "patch")
        self.kernel_width = None if kernel_width is None else check_nonneg(kernel_width, "kernel_width")
        self.alpha = check_nonneg(alpha, "alpha")
        self.max_queries = None if max_queries is None else check_positive_int(max_queries, "max_queries")
        if not isinstance(targeted, bool):
            raise TypeError("targeted must be a bool")
        self.targeted = targeted
        self.bounds = check_bounds(bounds)
        self.seed = seed
        self.generator = generator

    def _to_input(self, u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Coefficients (M, S) -> input-shaped perturbations (M, ...)."""
        if x.dim() == 4 and self.patch > 1:
            h, w = x.shape[2:]
            gh, gw = math.ceil(h / self.patch), math.ceil(w / self.patch)
            u = u.reshape(u.shape[0], x.shape[1], gh, gw)
            u = u.repeat_interleave(self.patch, 2).repeat_interleave(self.patch, 3)[:, :, :h, :w]
            return u
        return u.reshape((u.shape[0],) + tuple(x.shape[1:]))

    def n_features(self, x: torch.Tensor) -> int:
        if x.dim() == 4 and self.patch > 1:
            h, w = x.shape[2:]
            return x.shape[1] * math.ceil(h / self.patch) * math.ceil(w / self.patch)
        return x[0].numel()

    def _fit(self, model, xa: torch.Tensor, y: torch.Tensor, gen) -> Tuple[torch.Tensor, torch.Tensor]:
        """Sample, query and fit the local surrogate at ``xa``: (coef (k, S), R^2 (k,))."""
        lo, hi = self.bounds
        k, s, m = xa.shape[0], self.n_features(xa), self.n_samples
        width = self.kernel_width or 0.75 * math.sqrt(s)
        u = torch.randn(k, m, s, generator=gen, device=xa.device, dtype=xa.dtype)
        pert = self._to_input(u.reshape(k * m, s), xa).reshape((k, m) + tuple(xa.shape[1:]))
        z = (xa[:, None] + self.sigma * pert).clamp(lo, hi).reshape((k * m,) + tuple(xa.shape[1:]))
        with torch.no_grad():
            out = forward(model, z)
        loss = _margin_loss(out, y.repeat_interleave(m), self.targeted).reshape(k, m)
        wts = exponential_kernel(u.norm(dim=2), width)
        fit = weighted_ridge(u, loss, wts, alpha=self.alpha)
        return fit["coef"].to(xa.dtype), fit["score"].to(xa.dtype)

    def surrogate(self, model, x: torch.Tensor, y) -> Dict[str, torch.Tensor]:
        """Fit the local linear surrogate of the margin loss at ``x`` (no attack step).

        Returns ``coef`` (N, S) (weights of the interpretable features), ``weights``
        (input-shaped: each feature's weight spread over its pixels) and ``r2`` (N,)
        (weighted R^2 of the fit). Costs ``n_samples`` queries per sample.
        """
        check_model(model)
        check_inputs(x, model)
        with preserved(model), torch.no_grad():
            labels = resolve_target(y, forward(model, x))
            gen = make_generator(self.seed, self.generator, x.device)
            coef, r2 = self._fit(model, x.detach(), labels, gen)
        return {"coef": coef, "weights": self._to_input(coef, x), "r2": r2}

    def _attack(self, ctx: AttackContext) -> Tuple[torch.Tensor, Dict[str, Any]]:
        x, y = ctx.x, ctx.y
        lo, hi = self.bounds
        n, s, m = ctx.n, self.n_features(x), self.n_samples
        gen = make_generator(self.seed, self.generator, x.device)
        cap = self.max_queries or self.steps * (m + 1)
        alpha = self.step_size if self.step_size is not None else self.eps / 4
        xa = x.clone()
        active = ~ctx.is_success(ctx.logits, y)
        r2 = torch.full((n,), float("nan"), device=x.device, dtype=x.dtype)
        for _ in range(self.steps):
            active &= ctx.queries + m + 1 <= cap
            idx = active.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            k = idx.numel()
            coef, score = self._fit(ctx.model, xa[idx], y[idx], gen)
            ctx.charge(idx)
            r2[idx] = score
            d = -self._to_input(coef, x)  # descend the surrogate's margin
            if self.norm == "linf":
                step = d.sign()
            else:
                step = d / view_batch(d.reshape(k, -1).norm(dim=1).clamp_min(1e-12), d)
            xn = xa[idx] + alpha * step
            xn = (x[idx] + project(xn - x[idx], self.norm, self.eps)).clamp(lo, hi)
            with torch.no_grad():
                out = forward(ctx.model, xn)
            ctx.charge(idx)
            xa = xa.index_copy(0, idx, xn)
            ctx.steps[idx] += 1
            done = ctx.is_success(out, y[idx])
            active[idx[done]] = False
        return xa, {"surrogate_r2": float(r2[~r2.isnan()].mean()) if bool((~r2.isnan()).any()) else float("nan"),
                    "max_queries": cap, "n_features": s}


def train_substitute(model, x_seed: torch.Tensor, substitute: torch.nn.Module, *, rounds: int = 3,
                     epochs: int = 10, lam: float = 0.1, lr: float = 1e-3, batch_size: int = 64,
                     bounds: Tuple[float, float] = (0.0, 1.0), seed: Optional[int] = 0,
                     progress: Optional[bool] = None) -> Tuple[torch.nn.Module, int]:
    """Train a substitute on labels obtained by querying ``model`` (Papernot et al., 2017).

    Starts from the seed inputs, labels them with the model's predictions (one query
    each), trains ``substitute`` (a fresh copy; the argument is not changed), and
    grows the set ``rounds - 1`` times by Jacobian-based augmentation
    ``x + lam * sign(d Z_label / d x)`` of the substitute.

    Returns
    -------
    (substitute, queries) : the trained copy (eval mode) and the number of label queries.

    References
    ----------
    Papernot et al. Practical Black-Box Attacks against Machine Learning. AsiaCCS 2017.
    """
    import copy

    check_model(model)
    check_inputs(x_seed, model)
    lo, hi = check_bounds(bounds)
    sub = copy.deepcopy(substitute)
    sub.train()
    g = torch.Generator(device="cpu").manual_seed(0 if seed is None else int(seed))
    data = x_seed.detach().clone()
    queries = 0
    labels = torch.empty(0, dtype=torch.long, device=x_seed.device)
    opt = torch.optim.Adam(sub.parameters(), lr=lr)
    from .._progress import track

    for r in track(range(rounds), "substitute", progress=progress, unit="round"):
        new = data[labels.shape[0]:]
        with preserved(model), torch.no_grad():
            labels = torch.cat([labels, forward(model, new).argmax(1)])
        queries += new.shape[0]
        for _ in range(epochs):
            perm = torch.randperm(data.shape[0], generator=g).to(data.device)
            for i in range(0, data.shape[0], batch_size):
                b = perm[i:i + batch_size]
                loss = F.cross_entropy(sub(data[b]), labels[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
        if r < rounds - 1:
            xi = data.clone().requires_grad_(True)
            out = sub(xi)
            (gr,) = torch.autograd.grad(out.gather(1, labels[:, None]).sum(), xi)
            data = torch.cat([data, (data + lam * gr.sign()).clamp(lo, hi)])
    sub.eval()
    for p in sub.parameters():
        p.grad = None
    return sub, queries


class TransferAttack(Attack):
    """Transfer attack: run a white-box ``attack`` on a ``substitute`` model and
    evaluate the adversarial inputs on the target model (zero queries at attack time).

    Parameters
    ----------
    attack : Attack
        Any xadv attack (its ``targeted`` setting is used).
    substitute : nn.Module
        A local model, e.g. from :func:`train_substitute`.
    substitute_queries : int, default 0
        Label queries spent to train the substitute (reported in ``extras``).

    Examples
    --------
    >>> import torch, xadv.attacks
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> sub = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> res = xadv.attacks.TransferAttack(xadv.attacks.FGSM(eps=0.1), sub)(net, torch.rand(2, 1, 4, 4), torch.tensor([0, 1]))
    >>> res.queries.tolist()
    [0, 0]
    """

    white_box = False

    def __init__(self, attack: Attack, substitute: torch.nn.Module, substitute_queries: int = 0):
        if not isinstance(attack, Attack):
            raise TypeError(f"attack must be an xadv Attack, got {type(attack).__name__}")
        check_model(substitute)
        self.attack = attack
        self.substitute = substitute
        self.substitute_queries = int(substitute_queries)
        self.targeted = attack.targeted
        self.bounds = attack.bounds

    def get_params(self):
        return {"attack": self.attack, "substitute": type(self.substitute).__name__,
                "substitute_queries": self.substitute_queries}

    def _attack(self, ctx: AttackContext) -> Tuple[torch.Tensor, Dict[str, Any]]:
        from ._inputs import InputsModel
        sub = self.substitute
        if isinstance(ctx.counter.model, InputsModel):  # several inputs / side inputs: the same view
            sub = ctx.counter.model.with_model(sub)
        inner = self.attack(sub, ctx.x, ctx.y)
        return inner.x_adv, {"substitute_success": inner.success, "substitute_queries": self.substitute_queries}
