"""Randomisation (sanity) checks: does the explanation depend on what the model learned?

Adebayo et al. (2018): an explanation that barely changes when the model's weights
(or the training labels) are randomised cannot explain the model. The user's model
is never changed: randomisation happens on a deep copy.

* :func:`model_parameter_randomisation` -- per layer, the similarity between the
  explanation of the trained model and that of a copy with the layer re-initialised
  (cascading from the top or bottom, or one layer at a time);
  :func:`mprt` summarises it (similarity with everything randomised);
* :func:`smooth_mprt` -- the same with explanations averaged over noisy inputs
  (Hedström et al., 2023), which removes shattered-gradient noise from the test;
* :func:`efficient_mprt` -- the ratio of explanation complexity (histogram
  entropy) after and before full randomisation (Hedström et al., 2023);
* :func:`random_logit` -- similarity between the explanation of the true class and
  that of a random other class (Sixt et al., 2020);
* :func:`data_randomisation` -- similarity with the explanation of a model retrained
  on permuted labels by a function you supply.

>>> import torch
>>> from xadv.metrics import model_parameter_randomisation
>>> net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
>>> res = model_parameter_randomisation(net, torch.rand(4, 6), 0, explainer="saliency")
>>> res.layers, tuple(res.scores.shape)
(['2', '0'], (2, 4))
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, List, Optional, Union

import torch

from .._model import preserved
from .._validation import check_positive_int
from ._base import (ExplainerLike, check_attributions, check_nonnegative, explanation_fn, flat, generator, metric,
                    pearson_rows, prepare, rank_rows, setup, spearman_rows)

__all__ = ["RandomisationResult", "model_parameter_randomisation", "mprt", "smooth_mprt", "efficient_mprt",
           "random_logit", "data_randomisation", "randomisable_layers"]

_SIMS = {"spearman": spearman_rows, "pearson": pearson_rows}


def _similarity(name_or_fn):
    if callable(name_or_fn):
        return name_or_fn
    if name_or_fn not in _SIMS:
        raise ValueError(f"similarity must be one of {sorted(_SIMS)} or a function (N, D), (N, D) -> (N,), "
                         f"got {name_or_fn!r}")
    return _SIMS[name_or_fn]


@dataclass
class RandomisationResult:
    """Similarities of explanations before and after randomising each layer.

    Attributes
    ----------
    layers : list of str
        Randomised modules, in the order they were randomised.
    scores : Tensor (L, N)
        ``scores[l, i]``: similarity for sample ``i`` after step ``l``.
    original : Tensor (N,)
        Similarity of the original explanation with a recomputation (1 for a
        deterministic explainer; lower for sampling ones).
    """

    layers: List[str]
    scores: torch.Tensor
    original: torch.Tensor

    def last(self) -> torch.Tensor:
        """(N,) similarity after the last step (all layers random when cascading)."""
        return self.scores[-1]

    def mean(self) -> torch.Tensor:
        """(N,) similarity averaged over the steps."""
        return self.scores.mean(0)

    def to_dict(self):
        return {"original": self.original.tolist(), **{n: s.tolist() for n, s in zip(self.layers, self.scores)}}


def randomisable_layers(model: torch.nn.Module) -> List[str]:
    """Names of the modules with ``reset_parameters`` (conv, linear, norm layers), in forward order."""
    return [n for n, m in model.named_modules() if hasattr(m, "reset_parameters") and n]


def _explain_preprocessed(explain, model, x, t, abs, normalise):
    return flat(prepare(check_attributions(explain(model, x, t), x), abs, normalise))


def model_parameter_randomisation(model: torch.nn.Module, x: torch.Tensor, y=None, a=None, *,
                                  explainer: ExplainerLike = "saliency", order: str = "top_down",
                                  independent: bool = False, similarity: Union[str, Callable] = "spearman",
                                  layers: Optional[List[str]] = None, seed: int = 42, abs: bool = False,
                                  normalise: bool = False, explain_noise: Optional[Callable] = None,
                                  batch_size: Optional[int] = None) -> RandomisationResult:
    """Model-parameter randomisation test (Adebayo et al., 2018).

    Layers are re-initialised (``reset_parameters`` under ``torch.manual_seed(seed + 1)``,
    the protocol Quantus uses, so the same seed gives the same random weights) in a
    deep copy of the model, cumulatively (cascading) or one at a time
    (``independent=True``), and the explanation of each randomised copy is compared
    with the original one.

    Parameters
    ----------
    model : nn.Module
    x : Tensor (N, ...)
    y : None, int or LongTensor (N,)
        Explained class (kept for the randomised models).
    a : Tensor, optional
        Attributions of the trained model (computed when omitted).
    explainer : str, Explainer or function f(model, x, y), default "saliency"
    order : {"top_down", "bottom_up"}, default "top_down"
        Randomise from the output layer down (Adebayo et al.'s cascading order) or up.
    independent : bool, default False
        Randomise one layer at a time (the others trained).
    similarity : {"spearman", "pearson"} or callable, default "spearman"
        Compares flattened explanations row by row.
    layers : list of str, optional
        Modules to randomise (default :func:`randomisable_layers`).
    seed : int, default 42
    abs, normalise : bool, default False
        Preprocessing of both explanations (Adebayo et al. report ``abs=True``).
    explain_noise : callable, optional
        Replaces the explanation function (used by :func:`smooth_mprt`).
    batch_size : int, optional
        Rows per model call (default :func:`xadv.explainers.chunking.rows_per_pass`;
        an expanding explainer without a ``batch_size`` of its own gets this one).

    Returns
    -------
    RandomisationResult

    References
    ----------
    Adebayo, Gilmer, Muelly, Goodfellow, Hardt, Kim. Sanity Checks for Saliency Maps.
    NeurIPS 2018.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError("model parameter randomisation needs a torch.nn.Module (its layers are re-initialised)")
    if order not in ("top_down", "bottom_up"):
        raise ValueError(f"order must be 'top_down' or 'bottom_up', got {order!r}")
    sim = _similarity(similarity)
    explain = explain_noise or explanation_fn(explainer, batch_size)
    x, out, t = setup(model, x, y, batch_size=batch_size)
    names = randomisable_layers(model) if layers is None else list(layers)
    known = dict(model.named_modules())
    for n in names:
        if n not in known or not hasattr(known[n], "reset_parameters"):
            raise ValueError(f"layer {n!r} is not a module with reset_parameters; candidates: "
                             f"{', '.join(randomisable_layers(model))}")
    if order == "top_down":
        names = names[::-1]
    with preserved(model):
        if a is None:
            a0 = _explain_preprocessed(explain, model, x, t, abs, normalise)
        else:
            a0 = flat(prepare(check_attributions(a, x), abs, normalise))
        if sim is spearman_rows:  # rank the trained model's explanation once, not once per layer
            r0 = rank_rows(a0)

            def sim(a, b):
                return pearson_rows(r0, rank_rows(b))
        original = sim(a0, _explain_preprocessed(explain, model, x, t, abs, normalise))
        twin = copy.deepcopy(model)
        state = copy.deepcopy(model.state_dict()) if independent else None
        mods = dict(twin.named_modules())
        rows = []
        rng_state = torch.random.get_rng_state()
        try:
            for n in names:
                if independent:
                    twin.load_state_dict(state)
                torch.manual_seed(seed + 1)
                with torch.no_grad():
                    mods[n].reset_parameters()
                rows.append(sim(a0, _explain_preprocessed(explain, twin, x, t, abs, normalise)))
        finally:
            torch.random.set_rng_state(rng_state)
    return RandomisationResult(names, torch.stack(rows), original)


@metric("randomisation", "lower", needs=("model", "explainer"))
def mprt(model, x: torch.Tensor, y=None, a=None, *, explainer: ExplainerLike = "saliency", abs: bool = True,
         **kw) -> torch.Tensor:
    """Summary of the randomisation test: Spearman similarity between the explanations of the
    trained and of the fully randomised model (cascading, top-down), |attributions|.

    Parameters
    ----------
    model, x, y, a, explainer : as in :func:`model_parameter_randomisation`
    abs : bool, default True
    **kw : passed to :func:`model_parameter_randomisation`

    Returns
    -------
    Tensor (N,); lower is better (an explanation should change when the model does).
    Adebayo et al.'s test is passed when this is near 0.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    >>> mprt(net, torch.rand(4, 6), 0).shape
    torch.Size([4])
    """
    return model_parameter_randomisation(model, x, y, a, explainer=explainer, abs=abs, **kw).last()


@metric("randomisation", "lower", needs=("model", "explainer"))
def smooth_mprt(model, x: torch.Tensor, y=None, a=None, *, explainer: ExplainerLike = "saliency",
                n_samples: int = 10, noise: float = 0.1, seed: Optional[int] = 0, abs: bool = True,
                batch_size: Optional[int] = None, **kw) -> torch.Tensor:
    """Smooth MPRT (Hedström et al., 2023): the randomisation test with every explanation
    averaged over ``n_samples`` copies of the input with Gaussian noise of std
    ``noise * (max(x) - min(x))``, the same draws for the trained and random models.

    Parameters
    ----------
    model, x, y, explainer : as in :func:`model_parameter_randomisation`
    a : ignored (the smoothed explanation of the trained model is computed)
    n_samples : int, default 10
    noise : float, default 0.1
    seed : int, optional
    abs : bool, default True
    batch_size : int, optional
        Rows per model call (default :func:`xadv.explainers.chunking.rows_per_pass`;
        an expanding explainer without a ``batch_size`` of its own gets this one).
    **kw : passed to :func:`model_parameter_randomisation`

    Returns
    -------
    Tensor (N,): similarity after full randomisation, averaged over the cascade; lower is better.

    References
    ----------
    Hedström, Weber, Bareeva, Krakowczyk, Motzkus, Samek, Lapuschkin, Höhne. Sanity
    Checks Revisited: An Exploration to Repair the Model Parameter Randomisation Test.
    XAI in Action workshop, NeurIPS 2023.
    """
    base = explanation_fn(explainer, batch_size)
    n_samples = check_positive_int(n_samples, "n_samples")
    noise = check_nonnegative(noise, "noise")
    xd = x.detach()
    scale = flat(xd).amax(1) - flat(xd).amin(1)
    g = generator(seed, x.device)
    draws = torch.randn((n_samples,) + tuple(x.shape), generator=g, device=x.device, dtype=x.dtype)
    draws = draws * (noise * scale).reshape((1, -1) + (1,) * (x.dim() - 1))

    def smoothed(m, xb, t, create_graph=False):
        # all noisy copies of all samples explained together: (n_samples * N) rows
        xs = (xb[None] + draws).reshape((-1,) + tuple(xb.shape[1:]))
        ts = t.repeat(n_samples) if isinstance(t, torch.Tensor) and t.dim() == 1 and len(t) == len(xb) else t
        return base(m, xs, ts).reshape(draws.shape).mean(0)

    return model_parameter_randomisation(model, x, y, None, explain_noise=smoothed, abs=abs, batch_size=batch_size,
                                         **kw).mean()


def _histogram_entropy(f: torch.Tensor, n_bins: int) -> torch.Tensor:
    lo, hi = f.amin(1, keepdim=True), f.amax(1, keepdim=True)
    width = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    b = ((f - lo) / width * n_bins).long().clamp(0, n_bins - 1)
    counts = torch.zeros(f.shape[0], n_bins, dtype=f.dtype, device=f.device).scatter_add_(1, b, torch.ones_like(f))
    p = counts / counts.sum(1, keepdim=True)
    return -(p * torch.log(torch.where(p > 0, p, torch.ones_like(p)))).sum(1)


@metric("randomisation", "higher", needs=("model", "explainer"))
def efficient_mprt(model, x: torch.Tensor, y=None, a=None, *, explainer: ExplainerLike = "saliency",
                   n_bins: int = 100, abs: bool = True, normalise: bool = True, seed: int = 42,
                   order: str = "bottom_up", batch_size: Optional[int] = None) -> torch.Tensor:
    """Efficient MPRT (Hedström et al., 2023): how much more complex the explanation of the
    fully randomised model is, ``H(e_random) / H(e_trained)`` with ``H`` the entropy of a
    ``n_bins`` histogram of the (absolute, max-normalised) attributions.

    Parameters
    ----------
    model, x, y, a, explainer : as in :func:`model_parameter_randomisation`
    n_bins : int, default 100
    abs, normalise : bool, default True
    seed : int, default 42
    order : {"bottom_up", "top_down"}, default "bottom_up"
        Order of randomisation (the end state, every layer random, is the same).
    batch_size : int, optional
        Rows per model call (default :func:`xadv.explainers.chunking.rows_per_pass`;
        an expanding explainer without a ``batch_size`` of its own gets this one).

    Returns
    -------
    Tensor (N,); higher is better (a random model should give noisier explanations).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError("efficient_mprt needs a torch.nn.Module")
    n_bins = check_positive_int(n_bins, "n_bins")
    explain = explanation_fn(explainer, batch_size)
    x, out, t = setup(model, x, y, batch_size=batch_size)
    with preserved(model):
        a0 = explain(model, x, t) if a is None else a
        h0 = _histogram_entropy(flat(prepare(check_attributions(a0, x), abs, normalise)), n_bins)
        twin = copy.deepcopy(model)
        names = randomisable_layers(twin)
        if order == "top_down":
            names = names[::-1]
        mods = dict(twin.named_modules())
        rng_state = torch.random.get_rng_state()
        try:
            for n in names:
                torch.manual_seed(seed + 1)
                with torch.no_grad():
                    mods[n].reset_parameters()
        finally:
            torch.random.set_rng_state(rng_state)
        h1 = _histogram_entropy(flat(prepare(check_attributions(explain(twin, x, t), x), abs, normalise)), n_bins)
    return h1 / torch.where(h0 == 0, torch.ones_like(h0), h0)


@metric("randomisation", "lower", needs=("model", "explainer"))
def random_logit(model, x: torch.Tensor, y=None, a=None, *, explainer: ExplainerLike = "saliency",
                 similarity: Union[str, Callable] = "ssim", abs: bool = True, normalise: bool = False,
                 seed: Optional[int] = 42, other: Optional[torch.Tensor] = None,
                 batch_size: Optional[int] = None) -> torch.Tensor:
    """Random logit test (Sixt et al., 2020): similarity between the explanation of class
    ``y`` and that of a uniformly drawn other class.

    Parameters
    ----------
    model, x, y, a, explainer : as in :func:`model_parameter_randomisation`
    similarity : {"ssim", "spearman", "pearson"} or callable, default "ssim"
        ``"ssim"`` uses :func:`xadv.metrics.ssim` on the 2-D maps (images) and falls
        back to Pearson for rows.
    abs, normalise : bool
    seed : int, optional
    other : LongTensor (N,), optional
        The other classes (must differ from ``y``); drawn with ``seed`` otherwise.
    batch_size : int, optional
        Rows per model call (default :func:`xadv.explainers.chunking.rows_per_pass`;
        an expanding explainer without a ``batch_size`` of its own gets this one).

    Returns
    -------
    Tensor (N,); lower is better (class-sensitive explanations).

    References
    ----------
    Sixt, Granz, Landgraf. When Explanations Lie: Why Many Modified BP Attributions Fail. ICML 2020.
    """
    explain = explanation_fn(explainer, batch_size)
    x, out, t = setup(model, x, y, batch_size=batch_size)
    k = out.shape[1]
    if k < 2:
        raise ValueError("random_logit needs a model with at least two classes")
    if other is None:
        g = generator(seed, x.device)
        r = torch.randint(0, k - 1, t.shape, generator=g, device=x.device)
        other = r + (r >= t).long()
    other = torch.as_tensor(other, device=x.device).long()
    if (other == t).any():
        raise ValueError("other classes must differ from the explained ones")
    with preserved(model):
        if a is None:  # both classes in one call: (2N) rows
            xx = torch.cat([x, x])  # a seeded explainer sees the same noise for both classes
            both = check_attributions(explain.with_output(model, xx, torch.cat([t, other]), group=x.shape[0])[0], xx)
            a0, a1 = both[:x.shape[0]], both[x.shape[0]:]
        else:
            a0, a1 = check_attributions(a, x), check_attributions(explain(model, x, other), x)
        a0, a1 = prepare(a0, abs, normalise), prepare(a1, abs, normalise)
    if similarity == "ssim":
        if x.dim() == 4:
            from .similarity import ssim
            return ssim(a0, a1, reduce="sum")
        similarity = "pearson"
    return _similarity(similarity)(flat(a0), flat(a1))


@metric("randomisation", "lower", needs=("model", "explainer", "retrain"))
def data_randomisation(model, x: torch.Tensor, y=None, a=None, *, explainer: ExplainerLike = "saliency",
                       retrain: Callable[[], torch.nn.Module], similarity: Union[str, Callable] = "spearman",
                       abs: bool = True, normalise: bool = False, batch_size: Optional[int] = None) -> torch.Tensor:
    """Data randomisation test (Adebayo et al., 2018): similarity between the explanation of
    the model and that of a model trained on randomly permuted labels.

    Parameters
    ----------
    model, x, y, a, explainer : as in :func:`model_parameter_randomisation`
    retrain : callable () -> nn.Module
        Trains and returns a model of the same task on permuted labels (your training
        code: xadv does not know your data). Called once.
    similarity : {"spearman", "pearson"} or callable, default "spearman"
    abs, normalise : bool
    batch_size : int, optional
        Rows per model call (default :func:`xadv.explainers.chunking.rows_per_pass`;
        an expanding explainer without a ``batch_size`` of its own gets this one).

    Returns
    -------
    Tensor (N,); lower is better.
    """
    if not callable(retrain):
        raise TypeError("retrain must be a function () -> nn.Module trained on permuted labels")
    explain = explanation_fn(explainer, batch_size)
    x, out, t = setup(model, x, y, batch_size=batch_size)
    with preserved(model):
        a0 = explain(model, x, t) if a is None else a
        a0 = flat(prepare(check_attributions(a0, x), abs, normalise))
    rand = retrain()
    with preserved(rand):
        a1 = flat(prepare(check_attributions(explain(rand, x, t), x), abs, normalise))
    return _similarity(similarity)(a0, a1)
