"""Stability of explanations under input changes, random and worst case.

Every metric here takes ``mode``:

* ``"random"`` -- the perturbations are random draws (uniform noise in the L-inf
  ball of ``radius`` by default, or the ``perturbations`` you pass, shape
  (S, N, ...)), as in Quantus;
* ``"attack"`` -- the same quantity maximised over the L-inf ball of ``eps`` by
  projected gradient ascent (signed steps, random start) through a softplus copy of
  the model, each iterate measured on the ORIGINAL model, predictions kept. Random
  draws sample the ball; the attack searches it, a tighter lower bound on the worst
  case. It needs a differentiable explainer (gradients, IG, SmoothGrad, Grad-CAM).

A sample whose prediction changes under any draw scores NaN (``nan_on_change=True``),
as in Quantus.

>>> import torch
>>> from xadv.metrics import avg_sensitivity
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 3))
>>> avg_sensitivity(net, torch.rand(2, 4), 0, explainer="saliency", seed=0, nan_on_change=False)  # constant gradient
tensor([0., 0.])
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch

from ..._model import preserved
from ..._validation import check_bounds, check_positive_int, find_module
from .._base import (ExplainerLike, check_attributions, check_nonnegative, chunks, explanation_fn, flat, generator,
                     metric, predict, rows_per_call, setup)
from ...explainers.base import forward
from .sensitivity import _check_perturbations

__all__ = ["avg_sensitivity", "continuity", "consistency", "relative_input_stability",
           "relative_output_stability", "relative_representation_stability", "worst_case"]

_MODES = ("random", "attack")


def _draws(x, n_samples, radius, perturbations, seed):
    if perturbations is None:
        check_positive_int(n_samples, "n_samples")
        r = check_nonnegative(radius, "radius")
        g = generator(seed, x.device)
        return (torch.rand((n_samples,) + tuple(x.shape), generator=g, device=x.device, dtype=x.dtype) * 2 - 1) * r
    return _check_perturbations(perturbations, x)


def worst_case(model, x: torch.Tensor, t: torch.Tensor, explain, objective: Callable, *, eps: float = 8 / 255,
               steps: int = 20, step_size: Optional[float] = None, bounds=(0.0, 1.0), beta: float = 10.0,
               seed: Optional[int] = None) -> torch.Tensor:
    """Maximise ``objective(x', a', out')`` -> (N,) over ``||x' - x||_inf <= eps``.

    ``explain`` is ``f(model, x, y, create_graph)``; gradients go through a softplus
    copy of the model (``beta``), each iterate is scored on the original model and
    only iterates that keep the prediction ``t`` count. Returns the best value per
    sample, (N,); ``-inf`` where no iterate kept the prediction.
    """
    from ...fooling._engine import make_twin

    eps = check_nonnegative(eps, "eps")
    steps = check_positive_int(steps, "steps")
    lo, hi = check_bounds(bounds)
    step = 2.5 * eps / steps if step_size is None else check_nonnegative(step_size, "step_size")
    if not getattr(explain, "differentiable", False):
        raise TypeError("mode='attack' needs a differentiable xadv explainer (gradient methods, IG, SmoothGrad, "
                        "Grad-CAM); use mode='random' for this one")
    expl = getattr(explain, "explainer", None)
    twin, _ = make_twin(model, expl, beta, x=x, who="worst-case robustness metric")
    g = generator(seed, x.device)
    delta = (torch.rand(x.shape, generator=g, device=x.device, dtype=x.dtype) * 2 - 1) * eps
    best = torch.full((x.shape[0],), -float("inf"), dtype=x.dtype, device=x.device)

    with_output = getattr(explain, "with_output", None)

    def measure(xa):
        a, out = with_output(model, xa, t) if with_output is not None else (explain(model, xa, t), None)
        if out is None:
            out = predict(model, xa)
        v = objective(xa, a, out).detach()
        ok = out.argmax(1) == t
        return torch.where(ok & torch.isfinite(v), v, torch.full_like(v, -float("inf")))

    for _ in range(steps):
        xa = (x + delta).clamp(lo, hi)
        best = torch.maximum(best, measure(xa))
        xi = xa.detach().requires_grad_(True)
        with torch.enable_grad():
            a = explain(twin, xi, t, create_graph=True)
            v = objective(xi, a, twin(xi))
            (gr,) = torch.autograd.grad(v.sum(), xi)
        delta = (delta + step * gr.sign()).clamp(-eps, eps)
        delta = (x + delta).clamp(lo, hi) - x
    return torch.maximum(best, measure((x + delta).clamp(lo, hi)))


def _rep(t: torch.Tensor, s: int) -> torch.Tensor:
    """``t`` (N, ...) repeated ``s`` times along the batch: row ``j * N + i`` is ``t[i]``."""
    return t.repeat((s,) + (1,) * (t.dim() - 1))


def _run(model, x, y, a, explainer, objective, mode, n_samples, radius, perturbations, seed, nan_on_change,
         reduce, attack, batch_size=None):
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    explain = explanation_fn(explainer, batch_size)
    x, out0, t = setup(model, x, y, batch_size=batch_size)
    with preserved(model):
        a0 = explain(model, x, t) if a is None else check_attributions(a, x)
        a0 = check_attributions(a0, x)

        if mode == "attack":  # the search runs on chunks of at most batch_size samples
            vs = []
            for i, j in chunks(x.shape[0], rows_per_call(x, batch_size, model=model, grad=True)):
                def obj(xp, ap, outp, i=i, j=j):
                    return objective(x[i:j], xp, a0[i:j], ap, out0[i:j], outp, torch.arange(i, j, device=x.device))

                vs.append(worst_case(model, x[i:j], t[i:j], explain, obj, seed=seed, **(attack or {})))
            v = torch.cat(vs)
            return torch.where(torch.isinf(v), torch.full_like(v, float("nan")), v)
        p = _draws(x, n_samples, radius, perturbations, seed)
        s, n = p.shape[0], x.shape[0]
        # every draw of every sample explained together, (S * N) rows, draw-major; the
        # explainer's own forward pass gives the predictions when it reports them
        xp = (x[None] + p).reshape((s * n,) + tuple(x.shape[1:]))
        ap, outp = explain.with_output(model, xp, t.repeat(s), group=n)
        if outp is None:
            outp = predict(model, xp, batch_size)
        ap = check_attributions(ap, xp)
        with torch.no_grad():
            v = objective(_rep(x, s), xp, _rep(a0, s), ap, _rep(out0, s), outp,
                          torch.arange(n, device=x.device).repeat(s)).reshape(s, n).T
        k = (outp.argmax(1) == _rep(out0, s).argmax(1)).reshape(s, n).T
        r = v.mean(1) if reduce == "mean" else v.amax(1)
        if nan_on_change:  # as Quantus: one draw that changes the prediction makes the sample NaN
            r = torch.where(k.all(1), r, torch.full_like(r, float("nan")))
        return r


_DOC_COMMON = """
    model : nn.Module or callable
    x : Tensor (N, ...)
    y : None, int or LongTensor (N,)
        Explained class (kept for the perturbed inputs).
    a : Tensor, optional
        Attributions of ``x`` (computed with ``explainer`` when omitted).
    explainer : str, Explainer or function f(model, x, y)
        Explains the perturbed inputs.
    mode : {"random", "attack"}, default "random"
    n_samples : int, default 10
        Random draws (``mode="random"``).
    radius : float, default 0.2
        Half-width of the uniform noise.
    perturbations : Tensor (S, N, ...), optional
        Use these draws instead.
    seed : int, optional
    nan_on_change : bool, default True
        NaN for a sample when a draw changes its prediction.
    attack : dict, optional
        ``eps`` (8/255), ``steps`` (20), ``step_size``, ``bounds``, ``beta`` of the
        worst-case search (``mode="attack"``).
    batch_size : int, optional
        Rows per model call (default :func:`xadv.explainers.chunking.rows_per_pass`):
        the S x N perturbed inputs are explained together in calls of at most this many
        inputs, and an expanding explainer without a ``batch_size`` of its own gets it.
"""

def _doc(fn):
    fn.__doc__ = fn.__doc__.replace("{common}", _DOC_COMMON)
    return fn


@metric("robustness", "lower", needs=("model", "explainer"))
@_doc
def avg_sensitivity(model, x: torch.Tensor, y=None, a=None, *, explainer: ExplainerLike = "saliency",
                    mode: str = "random", n_samples: int = 10, radius: float = 0.2,
                    perturbations: Optional[torch.Tensor] = None, seed: Optional[int] = None,
                    nan_on_change: bool = True, attack: Optional[dict] = None,
                    batch_size: Optional[int] = None) -> torch.Tensor:
    """Average sensitivity (Yeh et al., 2019): mean of ``||e(x + d) - e(x)||_2 / ||e(x)||_2``.

    Parameters
    ----------{common}
    Returns
    -------
    Tensor (N,); lower is more robust. ``mode="attack"`` gives the largest ratio found.

    References
    ----------
    Yeh, Hsieh, Suggala, Inouye, Ravikumar. On the (In)fidelity and Sensitivity of
    Explanations. NeurIPS 2019.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    >>> bool((avg_sensitivity(net, torch.rand(3, 4), 0, seed=0) > 0).all())
    True
    """
    def objective(x, xp, a0, ap, out0, outp, idx):
        den = flat(a0).norm(dim=1)
        return flat(a0 - ap).norm(dim=1) / torch.where(den == 0, torch.ones_like(den), den)

    return _run(model, x, y, a, explainer, objective, mode, n_samples, radius, perturbations, seed, nan_on_change,
                "mean", attack, batch_size)


def _rel(a0, ap, eps_min):
    return (a0 - ap) / (a0 + (a0 == 0) * eps_min)


@metric("robustness", "lower", needs=("model", "explainer"))
@_doc
def relative_input_stability(model, x: torch.Tensor, y=None, a=None, *, explainer: ExplainerLike = "saliency",
                             mode: str = "random", n_samples: int = 10, radius: float = 0.2,
                             perturbations: Optional[torch.Tensor] = None, seed: Optional[int] = None,
                             nan_on_change: bool = True, eps_min: float = 1e-6,
                             attack: Optional[dict] = None, batch_size: Optional[int] = None) -> torch.Tensor:
    """Relative input stability (Agarwal et al., 2022):
    ``max_d ||(e(x) - e(x')) / e(x)||_2 / max(||(x - x') / x||_2, eps_min)``.

    Parameters
    ----------{common}    eps_min : float, default 1e-6
        Replaces zeros in the divisions.

    Returns
    -------
    Tensor (N,); lower is more stable.

    References
    ----------
    Agarwal, Johnson, Pawelczyk, Krishna, Saxena, Zitnik, Lakkaraju. Rethinking Stability
    for Attribution-based Explanations. ICLR-W 2022.
    """
    def objective(x, xp, a0, ap, out0, outp, idx):
        num = flat(_rel(a0, ap, eps_min)).norm(dim=1)
        den = flat((x - xp) / (x + (x == 0) * eps_min)).norm(dim=1)
        return num / (den + (den == 0) * eps_min)

    return _run(model, x, y, a, explainer, objective, mode, n_samples, radius, perturbations, seed, nan_on_change,
                "max", attack, batch_size)


@metric("robustness", "lower", needs=("model", "explainer"))
@_doc
def relative_output_stability(model, x: torch.Tensor, y=None, a=None, *, explainer: ExplainerLike = "saliency",
                              mode: str = "random", n_samples: int = 10, radius: float = 0.2,
                              perturbations: Optional[torch.Tensor] = None, seed: Optional[int] = None,
                              nan_on_change: bool = True, eps_min: float = 1e-6,
                              attack: Optional[dict] = None, batch_size: Optional[int] = None) -> torch.Tensor:
    """Relative output stability (Agarwal et al., 2022): the explanation's relative change
    over the change of the logits, ``||h(x) - h(x')||_2``, maximised over the draws.

    Parameters
    ----------{common}    eps_min : float, default 1e-6

    Returns
    -------
    Tensor (N,); lower is more stable.
    """
    def objective(x, xp, a0, ap, out0, outp, idx):
        num = flat(_rel(a0, ap, eps_min)).norm(dim=1)
        den = (out0 - outp).norm(dim=1)
        return num / (den + (den == 0) * eps_min)

    return _run(model, x, y, a, explainer, objective, mode, n_samples, radius, perturbations, seed, nan_on_change,
                "max", attack, batch_size)


def _representation(model, layers: Sequence[str], batch_size: Optional[int] = None):
    mods = [find_module(model, n) for n in layers]

    def rep(xb):
        acts = []
        hs = [m.register_forward_hook(lambda mod, i, o: acts.append(o.reshape(o.shape[0], -1))) for m in mods]
        try:
            for i, j in chunks(xb.shape[0], rows_per_call(xb, batch_size, model=model,
                                                          grad=torch.is_grad_enabled())):
                forward(model, xb[i:j])  # grad as the caller has it (the worst-case search needs it)
        finally:
            for h in hs:
                h.remove()
        k = len(mods)
        return torch.cat([torch.cat(acts[c::k]) for c in range(k)], 1) if k else xb.new_zeros(xb.shape[0], 0)

    return rep


@metric("robustness", "lower", needs=("model", "explainer"))
@_doc
def relative_representation_stability(model, x: torch.Tensor, y=None, a=None, *,
                                      explainer: ExplainerLike = "saliency", layers: Union[str, Sequence[str]] = (),
                                      mode: str = "random", n_samples: int = 10, radius: float = 0.2,
                                      perturbations: Optional[torch.Tensor] = None, seed: Optional[int] = None,
                                      nan_on_change: bool = True, eps_min: float = 1e-6,
                                      attack: Optional[dict] = None,
                                      batch_size: Optional[int] = None) -> torch.Tensor:
    """Relative representation stability (Agarwal et al., 2022): the explanation's
    relative change over the relative change ``||(L(x) - L(x')) / L(x)||_2`` of the
    internal representation ``L`` (outputs of ``layers``, flattened and concatenated).

    Parameters
    ----------{common}    layers : str or sequence of str
        Dotted names of the modules whose outputs form ``L`` (default: every child of
        the model but the last).
    eps_min : float, default 1e-6

    Returns
    -------
    Tensor (N,); lower is more stable.
    """
    if isinstance(layers, str):
        layers = [layers]
    if not layers:
        names = [n for n, _ in model.named_children()]
        if len(names) < 2:
            raise ValueError("give layers=[...] (module names) for the representation")
        layers = names[:-1]
    rep = _representation(model, list(layers), batch_size)
    with torch.no_grad(), preserved(model):
        l0 = rep(x.detach())

    def objective(x, xp, a0, ap, out0, outp, idx):
        lp = rep(xp)
        lr = l0[idx]
        num = flat(_rel(a0, ap, eps_min)).norm(dim=1)
        den = ((lr - lp) / (lr + (lr == 0) * eps_min)).norm(dim=1)
        return num / (den + (den == 0) * eps_min)

    return _run(model, x, y, a, explainer, objective, mode, n_samples, radius, perturbations, seed, nan_on_change,
                "max", attack, batch_size)


def translate(x: torch.Tensor, dx: int, fill: torch.Tensor) -> torch.Tensor:
    """Shift (N, C, H, W) images by ``dx`` pixels along the width (right for dx > 0), filling with ``fill`` (N,)."""
    n, c, h, w = x.shape
    pad = fill.reshape(n, 1, 1, 1).expand(n, c, h, min(abs(dx), w))
    if dx < 0:
        return torch.cat([x, pad], 3)[..., -w:]
    return torch.cat([pad, x], 3)[..., :w]


@metric("robustness", "lower", needs=("model", "explainer"))
@_doc
def continuity(model, x: torch.Tensor, y=None, a=None, *, explainer: ExplainerLike = "saliency",
               mode: str = "random", n_steps: int = 28, nan_on_change: bool = False,
               attack: Optional[dict] = None, batch_size: Optional[int] = None) -> torch.Tensor:
    """Continuity (Montavon et al., 2018): the largest ``||e(x) - e(x')||_1 / ||x - x'||_2``
    over horizontal translations ``x'`` of the image (filled with its minimum), or
    over the L-inf ball (``mode="attack"``).

    Translations start at ``-W + dx`` and move by ``dx = (2W + 1) // n_steps``, as in
    Quantus; translations that change the prediction are excluded.

    Parameters
    ----------
    model, x, y, a, explainer : as in :func:`avg_sensitivity` (``x`` (N, C, H, W))
    mode : {"random", "attack"}, default "random"
        ``"random"`` here means the deterministic sweep of translations.
    n_steps : int, default 28
    nan_on_change : bool, default False
        NaN for a sample when a translation changes its prediction (Quantus' default
        is False here: large translations usually do).
    attack : dict, optional

    Returns
    -------
    Tensor (N,); lower is more continuous.

    References
    ----------
    Montavon, Samek, Müller. Methods for Interpreting and Understanding Deep Neural
    Networks. Digital Signal Processing 2018.
    """
    def objective(x, xp, a0, ap, out0, outp, idx):
        return flat(a0 - ap).abs().sum(1) / (flat(x - xp).norm(dim=1) + 1e-9)

    if mode == "attack":
        return _run(model, x, y, a, explainer, objective, mode, 1, 0.0, None, None, nan_on_change, "max", attack,
                    batch_size)
    if mode != "random":
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    x_, out0, t = setup(model, x, y, min_dim=4, batch_size=batch_size)
    w = x_.shape[3]
    dx = (2 * w + 1) // check_positive_int(n_steps, "n_steps")
    fill = flat(x_).amin(1)
    shifts = [-w + dx * (i + 1) for i in range(n_steps)]
    p = torch.stack([translate(x_, s, fill) - x_ for s in shifts])
    return _run(model, x_, t, a, explainer, objective, "random", None, None, p, None, nan_on_change, "max", None,
                batch_size)


@metric("robustness", "higher", needs=("model",))
def consistency(model, x: torch.Tensor, y=None, a=None, *, n: int = 5, discretise: str = "top_n",
                batch_size: Optional[int] = None) -> torch.Tensor:
    """Consistency (Dasgupta et al., 2022): among the other samples of the batch whose
    explanation falls in the same discrete class, the fraction with the same prediction.

    Parameters
    ----------
    model, x : as in :func:`avg_sensitivity`
    y : unused (predictions are compared)
    a : Tensor (N, ...)
        Attributions of ``x``.
    n : int, default 5
    discretise : {"top_n", "first_n_sign"}, default "top_n"
        ``"top_n"``: the set of the ``n`` most attributed features; ``"first_n_sign"``:
        the signs of the first ``n`` flattened entries (Quantus' ``top_n_sign``).
    batch_size : int, optional

    Returns
    -------
    Tensor (N,) in [0, 1]; 0 when no other sample shares the class. Higher is better.
    The worst case over a ball is not defined for this batch-level property.

    References
    ----------
    Dasgupta, Frost, Moshkovitz. Framework for Evaluating Faithfulness of Local
    Explanations. ICML 2022.
    """
    x, out, t = setup(model, x, y, batch_size=batch_size)
    af = flat(check_attributions(a, x))
    n = check_positive_int(n, "n")
    if discretise == "top_n":
        key = torch.sort(torch.topk(af, min(n, af.shape[1]), dim=1).indices, dim=1).values.to(af.dtype)
    elif discretise == "first_n_sign":
        key = torch.sign(af[:, :n])
    else:
        raise ValueError(f"discretise must be 'top_n' or 'first_n_sign', got {discretise!r}")
    same_a = (key[None] == key[:, None]).all(-1)
    pred = out.argmax(1)
    same_p = pred[None] == pred[:, None]
    off = ~torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    same_a, same_p = same_a & off, same_p & off
    return (same_a & same_p).sum(1).to(x.dtype) / (same_a.sum(1).to(x.dtype) + 1e-9)
