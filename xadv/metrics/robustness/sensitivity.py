"""Robustness of an explainer: how much its explanation moves when the input moves.

* :func:`max_sensitivity` and :func:`infidelity` (Yeh et al., 2019) by Monte Carlo
  over random perturbations (the same numbers as ``captum.metrics`` given the same
  perturbations),
* :func:`local_lipschitz` (Alvarez-Melis & Jaakkola, 2018),
* :func:`worst_case_sensitivity`: the explanation change a fooling attack finds
  inside the budget while the prediction is kept — the adversarial counterpart
  that random-noise metrics do not measure.

Every function returns one value per sample, a tensor of shape (N,).
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch

from ..._model import preserved
from ..._validation import check_inputs, check_model, check_positive_int, resolve_target
from ...explanation import Explanation
from .._base import explanation_fn, predict, rows_per_call

__all__ = ["max_sensitivity", "infidelity", "local_lipschitz", "worst_case_sensitivity", "uniform_perturbations",
           "gaussian_perturbations"]

ExplainerLike = Union[str, Callable]


def _explainer(explainer):
    from ...explainers import Explainer, get

    if isinstance(explainer, Explainer):
        return explainer
    if isinstance(explainer, str):
        return get(explainer)
    raise TypeError(f"explainer must be a registry name or an xadv Explainer, got {type(explainer).__name__}")


def _generator(seed: Optional[int], device) -> torch.Generator:
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(int(seed))
    return g


def uniform_perturbations(x: torch.Tensor, n_samples: int, radius: float, seed: Optional[int] = None) -> torch.Tensor:
    """Uniform noise in the L-inf ball of ``radius``: Tensor (n_samples, N, ...).

    (captum's ``default_perturb_func`` for ``sensitivity_max`` draws the same law.)
    """
    from ..._validation import check_finite

    check_finite(radius, "radius")
    if not float(radius) > 0:
        raise ValueError(f"radius must be > 0 (an L-inf radius in input units), got {radius!r}")
    g = _generator(seed, x.device)
    return (torch.rand((n_samples,) + tuple(x.shape), generator=g, device=x.device, dtype=x.dtype) * 2 - 1) * radius


def gaussian_perturbations(x: torch.Tensor, n_samples: int, std: float, seed: Optional[int] = None) -> torch.Tensor:
    """Gaussian noise ``N(0, std^2)``: Tensor (n_samples, N, ...) (Yeh et al.'s infidelity noise)."""
    g = _generator(seed, x.device)
    return torch.randn((n_samples,) + tuple(x.shape), generator=g, device=x.device, dtype=x.dtype) * std


def _check_perturbations(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if not isinstance(p, torch.Tensor) or p.dim() != x.dim() + 1 or tuple(p.shape[1:]) != tuple(x.shape):
        raise ValueError(f"perturbations must be a tensor (n_samples, *x.shape) = (S, {', '.join(map(str, x.shape))}), "
                         f"got {tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__}")
    return p.to(device=x.device, dtype=x.dtype)


def _attr(explainer, model, x, target) -> torch.Tensor:
    return explainer(model, x, target).attributions.detach()


def _norm(t: torch.Tensor, ord) -> torch.Tensor:
    f = t.reshape(t.shape[0], -1)
    if ord == "fro":
        return f.norm(dim=1)
    return torch.linalg.vector_norm(f, ord=float(ord), dim=1)


def max_sensitivity(explainer: ExplainerLike, model, x: torch.Tensor, target=None, *, radius: float = 0.02,
                    n_samples: int = 10, norm="fro", perturbations: Optional[torch.Tensor] = None,
                    seed: Optional[int] = None, batch_size: Optional[int] = None) -> torch.Tensor:
    """Max-sensitivity (Yeh et al., 2019): ``max_j ||e(x + d_j) - e(x)|| / ||e(x)||``.

    Parameters
    ----------
    explainer : str or Explainer
    model : nn.Module
    x : Tensor (N, ...)
    target : None, int or LongTensor (N,)
        Explained class; ``None`` is the prediction on ``x`` (kept fixed for the
        perturbed inputs).
    radius : float, default 0.02
        L-inf radius of the uniform perturbations (captum's default).
    n_samples : int, default 10
    norm : "fro" or a number, default "fro"
    perturbations : Tensor (n_samples, N, ...), optional
        Use these perturbations instead of drawing them.
    seed : int, optional
    batch_size : int, optional
        Rows per model call (default :func:`xadv.explainers.chunking.rows_per_pass`):
        all ``n_samples x N`` perturbed inputs are explained together in calls of at
        most this many inputs (an expanding explainer without a ``batch_size`` of its
        own gets this one).

    Returns
    -------
    Tensor (N,). Equal to ``captum.metrics.sensitivity_max`` on the same perturbations.

    References
    ----------
    Yeh, Hsieh, Suggala, Inouye, Ravikumar. On the (In)fidelity and Sensitivity of
    Explanations. NeurIPS 2019.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3))
    >>> max_sensitivity("saliency", net, torch.rand(2, 4), seed=0)  # a linear model's gradient is constant
    tensor([0., 0.])
    """
    def ratio(d, a, a0):
        den = _norm(a0, norm)
        return _norm(a - a0, norm) / torch.where(den == 0, torch.ones_like(den), den)

    return _sampled_max(explainer, model, x, target, ratio, radius, n_samples, perturbations, seed, batch_size,
                        -float("inf"))


def _sampled_max(explainer, model, x, target, ratio, radius, n_samples, perturbations, seed, batch_size, floor):
    """``max_j ratio(d_j, e(x + d_j), e(x))`` with every draw of every sample explained together."""
    from .._base import explanation_fn

    explainer = _explainer(explainer)
    explain = explanation_fn(explainer, batch_size)
    check_model(model)
    check_inputs(x, model)
    x = x.detach()
    with preserved(model):
        e0 = explainer(model, x, target) if x.shape[0] <= rows_per_call(x, batch_size, model=model, grad=True) \
            else None
        if e0 is None:  # a large batch: the clean explanation in bounded calls too
            t = resolve_target(target, predict(model, x, batch_size))
            a0 = explain(model, x, t)
        else:
            t, a0 = e0.target, e0.attributions.detach()
        if perturbations is None:
            perturbations = uniform_perturbations(x, check_positive_int(n_samples, "n_samples"), radius, seed)
        perturbations = _check_perturbations(perturbations, x)
        s, n = perturbations.shape[:2]
        xp = (x[None] + perturbations).reshape((s * n,) + tuple(x.shape[1:]))
        a = explain.with_output(model, xp, t.repeat(s), group=n)[0]
        rep = (s,) + (1,) * (x.dim() - 1)
        r = ratio(perturbations.reshape(xp.shape), a, a0.repeat(rep)).reshape(s, n)
        best = torch.maximum(r.amax(0), torch.full_like(r[0], floor))
    return best


def infidelity(explainer: Union[ExplainerLike, Explanation, torch.Tensor], model, x: torch.Tensor, target=None, *,
               n_samples: int = 10, std: float = 0.1, perturbations: Optional[torch.Tensor] = None,
               normalize: bool = False, seed: Optional[int] = None,
               batch_size: Optional[int] = None) -> torch.Tensor:
    """Infidelity (Yeh et al., 2019): ``E_I[(I . a - (f(x) - f(x - I)))^2]``.

    ``f`` is the target logit, ``a`` the attributions and ``I`` a random
    perturbation (Gaussian with ``std`` by default).

    Parameters
    ----------
    explainer : str, Explainer, Explanation or Tensor (N, ...)
        How to get the attributions, or the attributions themselves.
    model, x, target : as in :func:`max_sensitivity`
    n_samples : int, default 10
    std : float, default 0.1
    perturbations : Tensor (n_samples, N, ...), optional
        ``I`` itself; the perturbed input is ``x - I`` (captum's convention).
    normalize : bool, default False
        Scale the attributions by the least-squares optimal ``beta`` first (captum's
        ``normalize=True``), making the metric invariant to the attributions' scale.
    seed : int, optional
    batch_size : int, optional
        Rows per model call (default :func:`xadv.explainers.chunking.rows_per_pass`).

    Returns
    -------
    Tensor (N,); lower is more faithful. Equal to ``captum.metrics.infidelity`` on
    the same perturbations.

    References
    ----------
    Yeh et al. On the (In)fidelity and Sensitivity of Explanations. NeurIPS 2019.
    """
    check_model(model)
    check_inputs(x, model)
    x = x.detach()
    with preserved(model), torch.no_grad():
        out0 = predict(model, x, batch_size)
        if isinstance(explainer, Explanation):
            attr = explainer.attributions.detach()
            t = resolve_target(explainer.target if target is None else target, out0)
        elif isinstance(explainer, torch.Tensor):
            attr, t = explainer.detach(), resolve_target(target, out0)
        else:
            with torch.enable_grad():
                t = resolve_target(target, out0)
                attr = explanation_fn(_explainer(explainer), batch_size)(model, x, t)
        if attr.shape != x.shape:
            raise ValueError(f"attributions {tuple(attr.shape)} must have the shape of x {tuple(x.shape)}")
        if perturbations is None:
            perturbations = gaussian_perturbations(x, check_positive_int(n_samples, "n_samples"), std, seed)
        perturbations = _check_perturbations(perturbations, x)
        f0 = out0.gather(1, t[:, None]).squeeze(1)
        s, n = perturbations.shape[:2]
        xp = (x[None] - perturbations).reshape((s * n,) + tuple(x.shape[1:]))
        rows_of = torch.arange(n, device=x.device).repeat(s)  # row r is a perturbation of sample r % n
        fp = predict(model, xp, batch_size, samples=rows_of).gather(1, t.repeat(s)[:, None]).reshape(s, n)
        df = f0[None] - fp
        ia = (perturbations * attr[None]).reshape(s, n, -1).sum(-1)
        s_aa, s_af, s_ff = (ia * ia).sum(0), (ia * df).sum(0), (df * df).sum(0)
        s_err = ((ia - df) ** 2).sum(0)
        s = perturbations.shape[0]
        if normalize:
            beta = torch.where(s_aa != 0, s_af / torch.where(s_aa != 0, s_aa, torch.ones_like(s_aa)),
                               torch.zeros_like(s_aa))
            return (beta * beta * s_aa - 2 * beta * s_af + s_ff) / s
        return s_err / s


def local_lipschitz(explainer: ExplainerLike, model, x: torch.Tensor, target=None, *, radius: float = 0.02,
                    n_samples: int = 20, norm="fro", perturbations: Optional[torch.Tensor] = None,
                    seed: Optional[int] = None, batch_size: Optional[int] = None) -> torch.Tensor:
    """Local Lipschitz estimate (Alvarez-Melis & Jaakkola, 2018).

    ``max_j ||e(x + d_j) - e(x)|| / ||d_j||`` over random perturbations ``d_j`` in the
    L-inf ball of ``radius`` (norms are Euclidean unless ``norm`` says otherwise).
    Parameters as :func:`max_sensitivity` (``batch_size`` included).

    Returns
    -------
    Tensor (N,). Higher means less robust.

    References
    ----------
    Alvarez-Melis, Jaakkola. On the Robustness of Interpretability Methods. ICML-W 2018.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
    >>> bool((local_lipschitz("saliency", net, torch.rand(2, 4), seed=0) > 0).all())
    True
    """
    def ratio(d, a, a0):
        dn = _norm(d, norm)
        r = _norm(a - a0, norm) / torch.where(dn == 0, torch.ones_like(dn), dn)
        return torch.where(dn == 0, torch.zeros_like(r), r)

    return _sampled_max(explainer, model, x, target, ratio, radius, n_samples, perturbations, seed, batch_size, 0.0)


def worst_case_sensitivity(explainer: ExplainerLike, model, x: torch.Tensor, target=None, *, eps: float = 8 / 255,
                           steps: int = 30, attack: str = "topk", metric: str = "topk_intersection",
                           norm="fro", bounds=(0.0, 1.0), seed: Optional[int] = None, **attack_params) -> torch.Tensor:
    """The largest explanation change a fooling attack finds with the prediction kept.

    Runs a fooling attack (:class:`xadv.fooling.TopKAttack` by default) with L-inf
    budget ``eps`` against ``explainer`` and reports, per sample, the change of the
    explanation on the ORIGINAL model. Random-noise metrics (max-sensitivity,
    captum's and Quantus' estimators) sample the ball; this searches it, so it is a
    tighter lower bound on the true worst case.

    Parameters
    ----------
    explainer : str or Explainer (differentiable)
    model : nn.Module
    x : Tensor (N, ...) within ``bounds``
    target : None or LongTensor (N,)
    eps : float, default 8/255
    steps : int, default 30
    attack : {"topk", "mass_center", "random_sign"}, default "topk"
    metric : {"topk_intersection", "spearman", "kendall", "pearson", "cosine", "ssim", "sensitivity"}
        ``sensitivity`` reports ``||e(x') - e(x)|| / ||e(x)||`` (comparable with
        :func:`max_sensitivity`); a similarity metric ``s`` is reported as ``1 - s``
        so that higher always means less robust.
    **attack_params : passed to the attack (``k``, ``beta``, ``step_size`` ...)

    Returns
    -------
    Tensor (N,); higher means less robust.

    References
    ----------
    Ghorbani, Abid, Zou. Interpretation of Neural Networks Is Fragile. AAAI 2019.
    """
    from ... import fooling

    attacks = {"topk": fooling.TopKAttack, "mass_center": fooling.MassCenterAttack,
               "random_sign": fooling.RandomSignAttack}
    if attack not in attacks:
        raise ValueError(f"attack must be one of {sorted(attacks)}, got {attack!r}")
    sims = ("topk_intersection", "spearman", "kendall", "pearson", "cosine", "ssim")
    if metric not in sims + ("sensitivity",):
        raise ValueError(f"metric must be one of {sims + ('sensitivity',)}, got {metric!r}")
    res = attacks[attack](explainer, eps=eps, steps=steps, bounds=bounds, seed=seed, **attack_params)(model, x, target)
    if metric == "sensitivity":
        a0 = res.explanation_clean.attributions
        a1 = res.explanation_adv.attributions
        den = _norm(a0, norm)
        return _norm(a1 - a0, norm) / torch.where(den == 0, torch.ones_like(den), den)
    return 1 - res.similarity[metric]
