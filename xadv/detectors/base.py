"""The detector contract and the pieces every detector shares.

``fit(model, x_clean, x_adv)`` learns from clean and adversarial inputs of one model
(the model is given at call time, as for explainers and attacks), ``score(model, x)``
returns one number per input (higher = more likely adversarial), ``predict`` flags
``score > threshold`` with the threshold chosen at fit time on held-out clean inputs
(``fpr``, default 5 %), ``save``/``load`` round-trip a fitted detector.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, ClassVar, Dict, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._model import preserved
from .._validation import check_inputs, check_model, check_positive_int
from ..explainers import Explainer, get as get_explainer
from ..explainers.base import forward
from ..explanation import Explanation
from .metrics import auroc, threshold_at_fpr

_REGISTRY: Dict[str, type] = {}


def _register(cls):
    _REGISTRY[cls.__name__] = cls
    return cls


class InputMap(Explainer):
    """The input itself as an "explanation": lets an ensemble read the raw image next
    to its attribution maps (the ``"input"`` member of :class:`XEnsemble`)."""

    name = "input"
    differentiable = True

    def _explain(self, model, x, target, create_graph):
        xi = x if create_graph else x.detach()
        with torch.set_grad_enabled(create_graph):
            out = forward(model, xi)
        t = out.detach().argmax(1) if target is None else torch.as_tensor(target).to(x.device).expand(x.shape[0])
        return Explanation(xi, xi, t, out if create_graph else out.detach(), self.name, {})


def resolve_explainer(explainer: Union[str, Explainer], **defaults) -> Explainer:
    """An explainer instance from a registry name (``"input"`` included) or an instance.

    ``defaults`` are applied to names only (e.g. ``steps=16`` for IG)."""
    if isinstance(explainer, Explainer):
        return explainer
    if not isinstance(explainer, str):
        raise TypeError(f"explainer must be a registry name or an xadv Explainer, got {type(explainer).__name__}")
    if explainer.lower() == "input":
        return InputMap()
    key = explainer.lower()
    params = dict(_EXPLAINER_DEFAULTS.get(key, {}))
    params.update(defaults)
    return get_explainer(explainer, **params)


#: cheaper defaults than the explainers' own, for explainers built by name inside detectors
_EXPLAINER_DEFAULTS = {
    "integrated_gradients": {"steps": 8}, "ig": {"steps": 8},
    "smoothgrad": {"n_samples": 8, "noise": 0.1, "seed": 0}, "sg": {"n_samples": 8, "noise": 0.1, "seed": 0},
    # sampling explainers get fixed draws so fit and score see the same function
    "gradient_shap": {"n_samples": 8, "seed": 0}, "gradientshap": {"n_samples": 8, "seed": 0},
    "gshap": {"n_samples": 8, "seed": 0},
    "expected_gradients": {"n_samples": 8, "seed": 0}, "eg": {"n_samples": 8, "seed": 0},
}


def explain_batched(explainer: Explainer, model, x: torch.Tensor, *, create_graph: bool = False,
                    batch_size: int = 256) -> torch.Tensor:
    """Attributions of ``explainer`` for the predicted class, shape like ``x``.

    Without ``create_graph`` the batch is processed in chunks of ``batch_size`` and
    the result is detached; with it, in one call so the graph reaches ``x``.
    """
    if create_graph:
        return explainer(model, x, None, create_graph=True).attributions
    if getattr(explainer, "batch_size", False) is None:  # its internal passes (IG steps, samples) bounded too
        import copy

        explainer = copy.copy(explainer)
        explainer.batch_size = batch_size
    parts = [explainer(model, x[i:i + batch_size], None).attributions.detach()
             for i in range(0, x.shape[0], batch_size)]
    return torch.cat(parts)


def make_generator(seed: Optional[int], device=None) -> torch.Generator:
    g = torch.Generator(device=device if device is not None else "cpu")
    g.manual_seed(0 if seed is None else int(seed))
    return g


def seeded_module(factory, seed: Optional[int], device, dtype) -> nn.Module:
    """Build a module with parameters drawn from ``seed`` (global RNG state untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0 if seed is None else int(seed))
        net = factory()
    return net.to(device=device, dtype=dtype)


def train_binary(net: nn.Module, x: torch.Tensor, labels: torch.Tensor, *, epochs: int, lr: float,
                 weight_decay: float, batch_size: int, seed: Optional[int], progress: Optional[bool] = None,
                 desc: str = "training detector") -> None:
    """Train ``net`` (x -> (N,) logits) with balanced binary cross-entropy and Adam."""
    g = make_generator(seed)
    labels = labels.to(device=x.device, dtype=x.dtype)
    pos = float(labels.sum())
    neg = float(labels.numel() - pos)
    pos_weight = torch.tensor(neg / max(pos, 1.0), dtype=x.dtype, device=x.device)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    net.train()
    from .._progress import track

    for _ in track(range(epochs), desc, progress=progress, unit="epoch"):
        perm = torch.randperm(x.shape[0], generator=g).to(x.device)
        for i in range(0, x.shape[0], batch_size):
            idx = perm[i:i + batch_size]
            logit = net(x[idx]).reshape(-1)
            loss = F.binary_cross_entropy_with_logits(logit, labels[idx], pos_weight=pos_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)


def map_net(shape: Tuple[int, ...], width: int = 16, hidden: int = 64) -> nn.Module:
    """A small binary classifier for maps: CNN for (C, H, W), MLP for (D,)."""
    if len(shape) == 3:
        c = shape[0]
        return nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
            nn.Flatten(), nn.Linear(2 * width * 16, hidden), nn.ReLU(), nn.Linear(hidden, 1),
        )
    d = int(np.prod(shape))
    return nn.Sequential(nn.Flatten(), nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 1))


class TorchLogistic(nn.Module):
    """Standardise features and apply a logistic regression fitted by scikit-learn.

    Differentiable stand-in: ``forward`` returns the decision function (logit)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, coef: torch.Tensor, intercept: float):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.register_buffer("coef", coef)
        self.register_buffer("intercept", torch.tensor(float(intercept), dtype=coef.dtype))

    @classmethod
    def fit(cls, feats: torch.Tensor, labels: torch.Tensor, C: float = 1.0, sample_weight=None,
            balanced: bool = True) -> "TorchLogistic":
        from sklearn.linear_model import LogisticRegression

        f = feats.detach().double()
        mean = f.mean(0)
        std = f.std(0).clamp_min(1e-8)
        z = ((f - mean) / std).numpy(force=True)  # scikit-learn works on host memory
        lr = LogisticRegression(C=C, class_weight="balanced" if balanced else None, max_iter=2000)
        lr.fit(z, labels.numpy(force=True).astype(int), sample_weight=sample_weight)
        dt, dev = feats.dtype, feats.device
        return cls(mean.to(dev, dt), std.to(dev, dt), torch.as_tensor(lr.coef_[0]).to(dev, dt), float(lr.intercept_[0]))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        z = (feats - self.mean.to(feats.dtype)) / self.std.to(feats.dtype)
        return z @ self.coef.to(feats.dtype) + self.intercept.to(feats.dtype)


class Detector:
    """Base class of every detector.

    Subclasses implement ``_fit(model, x_clean, x_adv)`` and
    ``_score(model, x, create_graph) -> Tensor (N,)``. The base class checks inputs,
    keeps the model unchanged, holds out ``val_fraction`` of the clean inputs to set
    the threshold at the requested false positive rate, batches scoring and saves.

    Parameters (shared by every detector)
    ----------
    fpr : float, default 0.05
        False positive rate on held-out clean inputs that sets ``threshold_``.
    val_fraction : float, default 0.2
        Fraction of the clean (and adversarial) inputs held out from fitting; the
        threshold and ``fit_info_["val_auroc"]`` come from them. 0 uses the fitting data.
    batch_size : int, default 256
        Rows per model call when fitting and scoring without a graph (an explainer
        built by name, or one whose ``batch_size`` is None, gets it for its internal
        passes too); ``score(..., create_graph=True)`` runs the batch in one call.
    seed : int, default 0
        Seeds the split, network initialisation and shuffling: same seed, same detector.
    progress : bool or None, default None
        tqdm bars while training.

    Class attributes: ``differentiable`` (``score(..., create_graph=True)`` is the exact
    score), ``needs_adversarial`` (``fit`` requires ``x_adv``), ``surrogate_note`` (what
    :meth:`surrogate_score` replaces for adaptive attacks when not differentiable).
    """

    differentiable: ClassVar[bool] = True
    needs_adversarial: ClassVar[bool] = True
    uses_explanations: ClassVar[bool] = True
    #: the score differentiates the model (gradient explanations): adaptive attacks need a smooth copy
    second_order: ClassVar[bool] = True
    surrogate_note: ClassVar[str] = ""

    def __init__(self, *, fpr: float = 0.05, val_fraction: float = 0.2, batch_size: int = 256,
                 seed: Optional[int] = 0, progress: Optional[bool] = None):
        if not 0.0 < float(fpr) < 1.0:
            raise ValueError(f"fpr must be in (0, 1), got {fpr!r}")
        if not 0.0 <= float(val_fraction) < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
        self.fpr = float(fpr)
        self.val_fraction = float(val_fraction)
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.seed = seed
        self.progress = progress

    # ------------------------------------------------------------------ API
    def fit(self, model, x_clean: torch.Tensor, x_adv: Optional[torch.Tensor] = None) -> "Detector":
        """Fit on clean inputs ``x_clean`` (N, ...) and adversarial inputs ``x_adv`` (M, ...).

        Pass only adversarial examples that fool ``model`` and clean inputs it
        classifies correctly (``xadv.detectors.evaluate`` does this). Returns ``self``.
        """
        check_model(model)
        check_inputs(x_clean, model, name="x_clean")
        if x_adv is None:
            if self.needs_adversarial:
                raise ValueError(f"{type(self).__name__} is supervised: pass adversarial examples as x_adv")
        else:
            check_inputs(x_adv, model, name="x_adv")
            if x_adv.shape[1:] != x_clean.shape[1:]:
                raise ValueError(
                    f"x_adv has per-sample shape {tuple(x_adv.shape[1:])} but x_clean has "
                    f"{tuple(x_clean.shape[1:])}; both must come from the same input space"
                )
            if x_adv.dtype != x_clean.dtype:
                raise TypeError(f"x_adv ({x_adv.dtype}) and x_clean ({x_clean.dtype}) must have the same dtype")
        xc_fit, xc_val = self._split(x_clean)
        xa_fit, xa_val = (None, None) if x_adv is None else self._split(x_adv, offset=1)
        if xc_fit.shape[0] < 4 or (xa_fit is not None and xa_fit.shape[0] < 4):
            raise ValueError(
                f"too few inputs to fit: {xc_fit.shape[0]} clean and "
                f"{0 if xa_fit is None else xa_fit.shape[0]} adversarial after holding out "
                f"val_fraction={self.val_fraction}; pass at least ~20 of each"
            )
        self.input_shape_ = tuple(x_clean.shape[1:])
        with preserved(model):
            with torch.no_grad():
                self.num_classes_ = int(forward(model, x_clean[:1]).shape[1])
            self._fit(model, xc_fit.detach(), None if xa_fit is None else xa_fit.detach())
        self.fitted_ = True
        ref = xc_val if xc_val is not None else xc_fit
        s_clean = self.score(model, ref)
        self.threshold_ = threshold_at_fpr(s_clean, self.fpr)
        self.score_scale_ = float(s_clean.double().std().clamp_min(1e-12)) if s_clean.numel() > 1 else 1.0
        info: Dict[str, Any] = {"n_clean_fit": int(xc_fit.shape[0]), "n_clean_val": 0 if xc_val is None else int(xc_val.shape[0]),
                                "n_adv_fit": 0 if xa_fit is None else int(xa_fit.shape[0])}
        aref = xa_val if xa_val is not None else xa_fit
        if aref is not None:
            s_adv = self.score(model, aref)
            lab = np.r_[np.zeros(len(s_clean)), np.ones(len(s_adv))]
            info["val_auroc"] = auroc(lab, np.r_[s_clean.numpy(force=True), s_adv.numpy(force=True)])
        self.fit_info_ = info
        return self

    def score(self, model, x: torch.Tensor, *, create_graph: bool = False) -> torch.Tensor:
        """Adversarial score of each input, shape (N,); higher = more likely adversarial.

        With ``create_graph=True`` the score is differentiable w.r.t. ``x`` (exactly for
        ``differentiable`` detectors; others raise and offer :meth:`surrogate_score`).
        """
        self._check_fitted()
        self._check_x(model, x)
        if create_graph:
            if not self.differentiable:
                raise TypeError(
                    f"{type(self).__name__} is not differentiable ({self.surrogate_note}); "
                    f"use surrogate_score for gradient-based (adaptive) attacks"
                )
            with preserved(model):
                return self._score(model, x, True)
        with preserved(model):
            parts = [self._score(model, x[i:i + self.batch_size], False).detach()
                     for i in range(0, x.shape[0], self.batch_size)]
        return torch.cat(parts)

    def surrogate_score(self, model, x: torch.Tensor) -> torch.Tensor:
        """A differentiable score (N,) for adaptive attacks: the score itself when the
        detector is ``differentiable``, otherwise the surrogate named in ``surrogate_note``."""
        self._check_fitted()
        self._check_x(model, x)
        with preserved(model):
            return self._surrogate(model, x)

    def predict(self, model, x: torch.Tensor, threshold: Optional[float] = None) -> torch.Tensor:
        """BoolTensor (N,): ``score > threshold`` (default ``threshold_`` from ``fit``)."""
        self._check_fitted()
        if threshold is None:
            thr = self.threshold_
        else:
            if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
                raise TypeError(f"threshold must be a number, got {type(threshold).__name__}")
            thr = float(threshold)
            if thr != thr:
                raise ValueError("threshold is NaN; pass a number (or None for the fitted threshold_)")
        return self.score(model, x) > thr

    # ------------------------------------------------------------ subclass hooks
    def _fit(self, model, x_clean, x_adv) -> None:  # pragma: no cover
        raise NotImplementedError

    def _score(self, model, x, create_graph) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _surrogate(self, model, x) -> torch.Tensor:
        return self._score(model, x, True)

    # ------------------------------------------------------------------ helpers
    def _split(self, x: torch.Tensor, offset: int = 0):
        n = x.shape[0]
        n_val = int(round(self.val_fraction * n))
        if n_val == 0:
            return x, None
        g = make_generator(None if self.seed is None else int(self.seed) + offset)
        perm = torch.randperm(n, generator=g).to(x.device)
        return x[perm[n_val:]], x[perm[:n_val]]

    def _check_fitted(self) -> None:
        if not getattr(self, "fitted_", False):
            raise RuntimeError(f"this {type(self).__name__} is not fitted yet; call fit(model, x_clean, x_adv) first")

    def _check_x(self, model, x) -> None:
        check_model(model)
        check_inputs(x, model)
        if tuple(x.shape[1:]) != self.input_shape_:
            raise ValueError(
                f"x has per-sample shape {tuple(x.shape[1:])} but the detector was fitted on "
                f"{self.input_shape_}"
            )
        k = getattr(self, "num_classes_", None)
        if k is not None:
            with torch.no_grad(), preserved(model):
                got = forward(model, x[:1]).shape[1]
            if got != k:
                raise ValueError(f"the model has {got} classes but the detector was fitted on a model with {k}; "
                                 f"fit the detector on this model")

    def _gen(self, offset: int = 0) -> torch.Generator:
        return make_generator(None if self.seed is None else int(self.seed) + offset)

    # -------------------------------------------------------------- params / io
    def get_params(self) -> Dict[str, Any]:
        """Constructor parameters (scikit-learn style), including the shared ones."""
        out = {}
        for klass in type(self).__mro__:
            if klass is object or "__init__" not in klass.__dict__:
                continue
            sig = inspect.signature(klass.__init__)
            for p, par in list(sig.parameters.items())[1:]:
                if par.kind in (par.VAR_KEYWORD, par.VAR_POSITIONAL) or p in out:
                    continue
                if hasattr(self, p):
                    out[p] = getattr(self, p)
        return out

    def __repr__(self) -> str:
        shared = {"fpr", "val_fraction", "batch_size", "seed", "progress"}
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items() if k not in shared)
        return f"{type(self).__name__}({args})"

    def _state(self) -> Dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k.endswith("_") and not k.startswith("_")}

    def save(self, path: Union[str, Path]) -> Path:
        """Write the fitted detector (parameters and learned state) to ``path``.

        Safetensors + JSON, written atomically; networks are stored as their layer list
        and weights, scikit-learn forests as their tree arrays, so :meth:`load` rebuilds
        them without unpickling anything.
        """
        from .._io import save as _save

        self._check_fitted()
        return _save(path, "Detector", {"detector": type(self).__name__, "params": self.get_params(),
                                        "state": self._state()})

    @classmethod
    def load(cls, path: Union[str, Path], map_location=None, *, trust: bool = False) -> "Detector":
        """Read a detector written by :meth:`save` (``Detector.load`` returns the saved subclass).

        Loading never executes code. ``trust=True`` is needed only for files written by
        older xadv versions (``torch.save`` pickles), since unpickling can run code.
        """
        from .._io import load as _load

        def legacy(old):
            if not isinstance(old, dict) or "__xadv_detector__" not in old:
                raise ValueError(f"{path} is not an xadv detector file (written by Detector.save)")
            return {"detector": old["__xadv_detector__"], "params": old["params"], "state": old["state"]}

        try:
            payload = _load(path, "Detector", map_location=map_location, trust=trust, legacy=legacy)
        except ValueError as e:
            if "not an xadv" in str(e) and "detector" not in str(e):
                raise ValueError(f"{path} is not an xadv detector file (written by Detector.save)") from None
            raise
        name = payload["detector"]
        klass = _REGISTRY.get(name)
        if klass is None:
            raise ValueError(f"{path} holds an unknown detector type {name!r}")
        if cls is not Detector and not issubclass(klass, cls):
            raise ValueError(f"{path} holds a {name}, not a {cls.__name__}")
        obj = klass(**payload["params"])
        for k, v in payload["state"].items():
            setattr(obj, k, v)
        return obj


def batched_apply(fn, x: torch.Tensor, batch_size: int):
    """``fn`` on row chunks of ``x``; tensors, or tuples/lists of tensors, concatenated."""
    outs = [fn(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    if isinstance(outs[0], (tuple, list)):
        return type(outs[0])(batched_apply_join(parts) for parts in zip(*outs))
    return torch.cat(outs)


def batched_apply_join(parts):
    if isinstance(parts[0], (tuple, list)):
        return type(parts[0])(batched_apply_join(p) for p in zip(*parts))
    return torch.cat(parts)


def check_fraction(value, name: str) -> float:
    if not 0.0 < float(value) < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {value!r}")
    return float(value)


def as_list(value) -> list:
    if isinstance(value, (str, Explainer)):
        return [value]
    return list(value)


__all__ = ["Detector", "InputMap", "resolve_explainer", "explain_batched", "TorchLogistic"]
