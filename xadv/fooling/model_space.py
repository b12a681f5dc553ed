"""Model-space fooling: fine-tune a copy of the model so its explanations lie.

* :class:`ModelManipulation` (Heo et al., 2019): cross-entropy plus a fooling
  loss on the explanation (location, top-k, center-mass, active).
* :class:`FeatureHiding` (Dimanov et al., 2020): cross-entropy plus a penalty on
  the input gradient of one feature; its effect on LIME and SHAP is measured with
  the real packages.

The user's model is never changed: a deep copy is trained and returned.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from .._model import preserved
from .._validation import check_inputs, check_positive_int
from ..explainers import Explainer
from ..metrics.similarity import _resolve_k, center_of_mass, pearson, topk_intersection
from ..nn import smoothed
from ..results import _Saveable
from .._training import fine_tune as _fine_tune
from ._engine import bind_explainer, check_explainer_differentiable, resolve_explainer, warn_functional_relus

__all__ = ["ModelManipulation", "ManipulationResult", "FeatureHiding", "HidingResult", "region_mask"]

_KINDS = ("location", "topk", "center_mass", "active")


def region_mask(shape: Tuple[int, int], region: Union[str, torch.Tensor] = "frame", width: float = 0.1,
                device=None) -> torch.Tensor:
    """Boolean (H, W) mask of a target region: ``"frame"`` (a border ``width`` of the
    side thick), ``"corner"`` (the top-left quarter), or a given (H, W) mask."""
    h, w = shape
    if isinstance(region, torch.Tensor):
        if region.shape != (h, w):
            raise ValueError(f"a region mask must have shape {(h, w)}, got {tuple(region.shape)}")
        return region.to(device=device, dtype=torch.bool)
    m = torch.zeros(h, w, dtype=torch.bool, device=device)
    if region == "frame":
        b = max(1, int(round(width * min(h, w))))
        m[:b], m[-b:], m[:, :b], m[:, -b:] = True, True, True, True
    elif region == "corner":
        m[: h // 2, : w // 2] = True
    else:
        raise ValueError(f"region must be 'frame', 'corner' or a (H, W) boolean tensor, got {region!r}")
    return m


def _unit(m: torch.Tensor) -> torch.Tensor:
    """|map| scaled to unit sum; an all-zero map becomes uniform (so erasing the map
    is never a cheap way to satisfy a fooling loss)."""
    f = m.reshape(m.shape[0], -1).abs() + 1e-10
    return f / f.sum(1, keepdim=True)


def _nonzero(m: torch.Tensor) -> torch.Tensor:
    return m.reshape(m.shape[0], -1).abs().sum(1) > 0


def _accuracy(model, x, y, batch_size) -> float:
    correct = 0
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            correct += int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
    return correct / x.shape[0]


@dataclass
class ManipulationResult(_Saveable):
    """What :class:`ModelManipulation` returns.

    Attributes
    ----------
    model : nn.Module        the manipulated copy (eval mode, ReLU as the original)
    accuracy_before, accuracy_after : float   on the held-out data
    fsr : float              Fooling Success Rate of the manipulated model on held-out data
    fsr_before : float       the same criterion on the original model (the chance level)
    scores : Tensor (N,)     per held-out sample fooling score (see ``ModelManipulation.score``)
    kind : str
    history : list of dict   per epoch: mean CE and fooling loss
    """

    model: Any
    accuracy_before: float
    accuracy_after: float
    fsr: float
    fsr_before: float
    scores: torch.Tensor
    kind: str
    history: List[Dict[str, float]] = field(default_factory=list)
    extras: Dict[str, Any] = field(default_factory=dict)

    def summary(self) -> Dict[str, float]:
        return {"accuracy_before": self.accuracy_before, "accuracy_after": self.accuracy_after,
                "fsr": self.fsr, "fsr_before": self.fsr_before}


class ModelManipulation:
    """Adversarial model manipulation (Heo et al., 2019).

    Fine-tunes a deep copy of the model on ``CE + lam * fooling_loss`` where the
    fooling loss acts on the explanation (taken with ``create_graph=True`` so it is
    differentiable w.r.t. the parameters):

    * ``location``: share of the attribution mass outside ``region`` (a frame or a corner);
    * ``topk``: mass on the top-k features of the original model's explanation;
    * ``center_mass``: minus the distance between the centers of mass of the
      manipulated and the original explanations;
    * ``active``: swap the explanations of ``classes = (a, b)``: the map for ``a``
      should look like the original map for ``b`` and vice versa.

    Fooling success on held-out data (per sample, thresholds in ``fsr_threshold``):
    location — more than ``fsr_threshold`` (default 0.5) of the mass inside the
    region; topk — top-k intersection with the original below 0.3; center_mass —
    centers of mass more than 0.25 of the image side apart; active — the map for
    ``a`` correlates more with the original map for ``b`` than with the original
    map for ``a`` (and the same for ``b``).

    Parameters
    ----------
    explainer : str or Explainer, default "gradcam"
    kind : {"location", "topk", "center_mass", "active"}, default "location"
    lam : float, default 1.0
    epochs : int, default 3
    lr : float, default 1e-3 (Adam)
    batch_size : int, default 64
    beta : float or None, default None
        Train through ``Softplus(beta)`` (needed for gradient explainers of ReLU
        networks, whose parameter gradient of the map is otherwise degenerate); the
        result is evaluated with ReLU.
    region : "frame", "corner" or (H, W) bool tensor, default "frame"
    k : int or float, default 0.1
    classes : (int, int), optional  for ``active``
    fsr_threshold : float, optional
    seed : int, default 0
    progress : bool or None, default None

    References
    ----------
    Heo, Joo, Moon. Fooling Neural Network Interpretations via Adversarial Model
    Manipulation. NeurIPS 2019.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
    ...                           torch.nn.Flatten(), torch.nn.Linear(64, 3))
    >>> x, y = torch.rand(16, 1, 4, 4), torch.randint(0, 3, (16,))
    >>> res = ModelManipulation("gradcam", kind="location", epochs=1)(net, x, y, x, y)
    >>> 0 <= res.fsr <= 1
    True
    """

    def __init__(self, explainer: Union[str, Explainer] = "gradcam", kind: str = "location", *, lam: float = 1.0,
                 epochs: int = 3, lr: float = 1e-3, batch_size: int = 64, beta: Optional[float] = None,
                 region: Union[str, torch.Tensor] = "frame", k: Union[int, float] = 0.1,
                 classes: Optional[Tuple[int, int]] = None, fsr_threshold: Optional[float] = None,
                 seed: Optional[int] = 0, progress: Optional[bool] = None):
        self.explainer = resolve_explainer(explainer)
        check_explainer_differentiable(self.explainer)
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
        if kind == "active" and (classes is None or len(classes) != 2 or classes[0] == classes[1]):
            raise ValueError("kind='active' needs classes=(a, b) with two different classes")
        if not float(lam) >= 0:
            raise ValueError(f"lam must be >= 0, got {lam!r}")
        if beta is not None and not float(beta) > 0:
            raise ValueError(f"beta must be positive or None, got {beta!r}")
        self.kind = kind
        self.lam = float(lam)
        self.epochs = check_positive_int(epochs, "epochs")
        self.lr = float(lr)
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.beta = None if beta is None else float(beta)
        self.region = region
        self.k = k
        self.classes = tuple(int(c) for c in classes) if classes is not None else None
        defaults = {"location": 0.5, "topk": 0.3, "center_mass": 0.25, "active": 0.0}
        self.fsr_threshold = float(fsr_threshold) if fsr_threshold is not None else defaults[kind]
        self.seed = seed
        self.progress = progress

    # ------------------------------------------------------------ losses
    def _maps(self, model, x, target, create_graph) -> torch.Tensor:
        e = self.explainer(model, x, target, create_graph=create_graph)
        m = e.saliency_map("abs")
        if m.dim() != 3:
            raise ValueError("ModelManipulation needs image inputs (N, C, H, W)")
        return m

    def _fool_loss(self, model, x, y, ref: Dict[str, torch.Tensor]) -> torch.Tensor:
        if self.kind == "active":
            a, b = self.classes
            ma = _unit(self._maps(model, x, a, True))
            mb = _unit(self._maps(model, x, b, True))
            d = ma.shape[1]
            return d * ((ma - ref["b"]).pow(2).sum(1) + (mb - ref["a"]).pow(2).sum(1))
        m = self._maps(model, x, y, True)
        u = _unit(m)
        if self.kind == "location":
            return 1 - (u * ref["mask"].reshape(1, -1)).sum(1)
        if self.kind == "topk":
            return (u * ref["top"]).sum(1)
        com = center_of_mass(m)
        return -(com - ref["com"]).pow(2).sum(1).add(1e-12).sqrt() / max(m.shape[-2:])

    def _reference(self, original, x, y) -> Dict[str, torch.Tensor]:
        ref: Dict[str, torch.Tensor] = {}
        if self.kind == "location":
            ref["mask"] = region_mask(tuple(x.shape[-2:]), self.region, device=x.device)
        elif self.kind == "topk":
            m = self._maps(original, x, y, False).detach()
            f = m.reshape(m.shape[0], -1)
            kk = _resolve_k(self.k, f.shape[1])
            ref["top"] = torch.zeros_like(f).scatter_(1, f.topk(kk, 1).indices, 1.0)
        elif self.kind == "center_mass":
            ref["com"] = center_of_mass(self._maps(original, x, y, False)).detach()
        else:
            a, b = self.classes
            ref["a"] = _unit(self._maps(original, x, a, False)).detach()
            ref["b"] = _unit(self._maps(original, x, b, False)).detach()
        return ref

    def score(self, original, manipulated, x, y) -> torch.Tensor:
        """Per-sample success (bool, N) of the manipulation on ``x`` (labels ``y``)."""
        expl = self.explainer
        # an all-zero map (e.g. Grad-CAM's ReLU cutting everything) never counts as fooled
        if self.kind == "location":
            m1 = self._maps(manipulated, x, y, False)
            u = _unit(m1)
            mask = region_mask(tuple(x.shape[-2:]), self.region, device=x.device).reshape(1, -1)
            return ((u * mask).sum(1) > self.fsr_threshold) & _nonzero(m1)
        if self.kind == "topk":
            m0, m1 = self._maps(original, x, y, False), self._maps(manipulated, x, y, False)
            return (topk_intersection(m0, m1, self.k) < self.fsr_threshold) & _nonzero(m1)
        if self.kind == "center_mass":
            m1 = self._maps(manipulated, x, y, False)
            c0 = center_of_mass(self._maps(original, x, y, False))
            c1 = center_of_mass(m1)
            return ((c1 - c0).norm(dim=1) > self.fsr_threshold * max(x.shape[-2:])) & _nonzero(m1)
        a, b = self.classes
        oa, ob = self._maps(original, x, a, False), self._maps(original, x, b, False)
        na, nb = self._maps(manipulated, x, a, False), self._maps(manipulated, x, b, False)
        del expl
        ok = _nonzero(na) & _nonzero(nb)
        return ok & (pearson(na, ob).nan_to_num(0) - pearson(na, oa).nan_to_num(0) > self.fsr_threshold) & \
            (pearson(nb, oa).nan_to_num(0) - pearson(nb, ob).nan_to_num(0) > self.fsr_threshold)

    # ------------------------------------------------------------ run
    def __call__(self, model: torch.nn.Module, x_train: torch.Tensor, y_train: torch.Tensor,
                 x_test: torch.Tensor, y_test: torch.Tensor) -> ManipulationResult:
        """Fine-tune a copy of ``model`` on (x_train, y_train); evaluate on (x_test, y_test).

        Returns
        -------
        ManipulationResult (the manipulated copy in ``.model``).
        """
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        for name, t in (("x_train", x_train), ("x_test", x_test)):
            check_inputs(t, model, min_dim=4, name=name)
        for name, t, xx in (("y_train", y_train, x_train), ("y_test", y_test, x_test)):
            if not isinstance(t, torch.Tensor) or t.dtype != torch.long or t.shape != (xx.shape[0],):
                raise ValueError(f"{name} must be a LongTensor of shape ({xx.shape[0]},)")
        if self.beta is not None:
            with preserved(model):
                warn_functional_relus(model, x_train[:2], type(self).__name__)
        original = copy.deepcopy(model).eval()
        for p in original.parameters():
            p.requires_grad_(False)
        manip = copy.deepcopy(model).train()
        for p in manip.parameters():
            p.requires_grad_(True)
        self.explainer = bind_explainer(self.explainer, model)
        def losses(xb, yb):
            ref = self._reference(original, xb, yb)
            with (smoothed(manip, self.beta) if self.beta is not None else contextlib.nullcontext()):
                ce = F.cross_entropy(manip(xb), yb)
                fl = self._fool_loss(manip, xb, yb, ref).mean()
            return ce + self.lam * fl, {"ce": ce, "fooling_loss": fl}

        history = _fine_tune(manip, x_train, y_train, losses, epochs=self.epochs, batch_size=self.batch_size,
                             lr=self.lr, seed=self.seed, progress=self.progress, desc="ModelManipulation")
        manip.eval()
        for p in manip.parameters():
            p.requires_grad_(False)
        acc0 = _accuracy(original, x_test, y_test, 256)
        acc1 = _accuracy(manip, x_test, y_test, 256)
        s1 = torch.cat([self.score(original, manip, x_test[i:i + 256], y_test[i:i + 256])
                        for i in range(0, x_test.shape[0], 256)])
        s0 = torch.cat([self.score(original, original, x_test[i:i + 256], y_test[i:i + 256])
                        for i in range(0, x_test.shape[0], 256)])
        return ManipulationResult(model=manip, accuracy_before=acc0, accuracy_after=acc1,
                                  fsr=float(s1.float().mean()), fsr_before=float(s0.float().mean()),
                                  scores=s1.cpu(), kind=self.kind, history=history,
                                  extras={"lam": self.lam, "explainer": repr(self.explainer)})

    def __repr__(self) -> str:
        return (f"ModelManipulation(explainer={self.explainer!r}, kind={self.kind!r}, lam={self.lam}, "
                f"epochs={self.epochs}, lr={self.lr}, beta={self.beta})")



@dataclass
class HidingResult(_Saveable):
    """What :class:`FeatureHiding` returns.

    Attributes
    ----------
    model : nn.Module               the fine-tuned copy
    accuracy_before, accuracy_after : float
    gradient_share_before, gradient_share_after : float
        Mean share of ``|saliency|`` on the hidden feature (held-out rows).
    rank_before, rank_after : dict  method ("gradient", "lime", "shap") -> mean rank of the feature (1 = top)
    """

    model: Any
    accuracy_before: float
    accuracy_after: float
    gradient_share_before: float
    gradient_share_after: float
    rank_before: Dict[str, float] = field(default_factory=dict)
    rank_after: Dict[str, float] = field(default_factory=dict)
    history: List[Dict[str, float]] = field(default_factory=list)

    def summary(self) -> Dict[str, float]:
        out = {"accuracy_before": self.accuracy_before, "accuracy_after": self.accuracy_after,
               "gradient_share_before": self.gradient_share_before,
               "gradient_share_after": self.gradient_share_after}
        for k in self.rank_before:
            out[f"{k}_rank_before"] = self.rank_before[k]
            out[f"{k}_rank_after"] = self.rank_after[k]
        return out


class FeatureHiding:
    """Hide one feature from gradient explanations by fine-tuning (Dimanov et al., 2020).

    Fine-tunes a copy of a tabular classifier on
    ``CE + lam * mean((d log p_y / d x_feature)^2)``: the gradient of the predicted
    log-probability w.r.t. the hidden feature is penalised while the fit is kept.
    Whether the hiding transfers to LIME and SHAP (which never look at gradients)
    is measured with the real packages (``methods``).

    Parameters
    ----------
    feature : int            column to hide
    lam : float, default 10.0
    epochs : int, default 20
    lr : float, default 1e-3
    batch_size : int, default 128
    methods : sequence of {"lime", "shap"}, default ("lime", "shap")
    n_explain : int, default 30     held-out rows explained by LIME / SHAP
    seed : int, default 0
    progress : bool or None, default None

    References
    ----------
    Dimanov, Bhatt, Jamnik, Weller. You Shouldn't Trust Me: Learning Models Which
    Conceal Unfairness From Multiple Explanation Methods. ECAI 2020.

    Examples
    --------
    >>> import torch
    >>> x = torch.randn(200, 3); y = (x[:, 0] + x[:, 1] > 0).long()
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> res = FeatureHiding(0, epochs=2, methods=())(net, x, y, x, y)
    >>> sorted(res.rank_after)
    ['gradient']
    """

    def __init__(self, feature: int, *, lam: float = 10.0, epochs: int = 20, lr: float = 1e-3,
                 batch_size: int = 128, methods: Sequence[str] = ("lime", "shap"), n_explain: int = 30,
                 lime_samples: int = 1000, shap_samples: int = 200, seed: Optional[int] = 0,
                 progress: Optional[bool] = None):
        self.feature = int(feature)
        if not float(lam) >= 0:
            raise ValueError(f"lam must be >= 0, got {lam!r}")
        for m in methods:
            if m not in ("lime", "shap"):
                raise ValueError(f"methods must be among ('lime', 'shap'), got {m!r}")
        self.lam = float(lam)
        self.epochs = check_positive_int(epochs, "epochs")
        self.lr = float(lr)
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.methods = tuple(methods)
        self.n_explain = check_positive_int(n_explain, "n_explain")
        self.lime_samples, self.shap_samples = int(lime_samples), int(shap_samples)
        self.seed = seed
        self.progress = progress

    def _share_and_rank(self, model, x) -> Tuple[float, float]:
        xi = x.detach().requires_grad_(True)
        with torch.enable_grad():
            out = F.log_softmax(model(xi), 1)
            s = out.gather(1, out.argmax(1, keepdim=True)).sum()
            (g,) = torch.autograd.grad(s, xi)
        a = g.abs()
        share = float((a[:, self.feature] / a.sum(1).clamp_min(1e-12)).mean())
        rank = (a > a[:, self.feature:self.feature + 1]).sum(1) + 1
        return share, float(rank.float().mean())

    def _predict_fn(self, model):
        dev = next(model.parameters()).device
        dtype = next(model.parameters()).dtype

        def f(X: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return F.softmax(model(torch.as_tensor(X, dtype=dtype, device=dev)), 1).cpu().numpy().astype(float)
        return f

    def __call__(self, model: torch.nn.Module, x_train: torch.Tensor, y_train: torch.Tensor,
                 x_test: torch.Tensor, y_test: torch.Tensor) -> HidingResult:
        """Fine-tune a copy of ``model`` and measure the hidden feature's attribution.

        ``x_*`` are (N, D) float tensors, ``y_*`` LongTensors (N,).
        """
        from .scaffolding import feature_ranks

        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_inputs(x_train, model, name="x_train")
        check_inputs(x_test, model, name="x_test")
        if x_train.dim() != 2 or not 0 <= self.feature < x_train.shape[1]:
            raise ValueError(f"FeatureHiding needs (N, D) rows and 0 <= feature < D; got shape "
                             f"{tuple(x_train.shape)} and feature {self.feature}")
        original = copy.deepcopy(model).eval()
        manip = copy.deepcopy(model).train()
        for p in manip.parameters():
            p.requires_grad_(True)
        def losses(xb, yb):
            xb = xb.detach().requires_grad_(True)
            out = manip(xb)
            ce = F.cross_entropy(out, yb)
            lp = F.log_softmax(out, 1)
            s = lp.gather(1, out.detach().argmax(1, keepdim=True)).sum()
            (gx,) = torch.autograd.grad(s, xb, create_graph=True)
            pen = gx[:, self.feature].pow(2).mean()
            return ce + self.lam * pen, {"ce": ce, "penalty": pen}

        history = _fine_tune(manip, x_train, y_train, losses, epochs=self.epochs, batch_size=self.batch_size,
                             lr=self.lr, seed=self.seed, progress=self.progress, desc="FeatureHiding")
        manip.eval()
        for p in manip.parameters():
            p.requires_grad_(False)
        share0, rank0 = self._share_and_rank(original, x_test)
        share1, rank1 = self._share_and_rank(manip, x_test)
        res = HidingResult(model=manip, accuracy_before=_accuracy(original, x_test, y_test, 1024),
                           accuracy_after=_accuracy(manip, x_test, y_test, 1024), gradient_share_before=share0,
                           gradient_share_after=share1, rank_before={"gradient": rank0},
                           rank_after={"gradient": rank1}, history=history)
        Xtr = x_train.detach().cpu().double().numpy()
        Xex = x_test[: self.n_explain].detach().cpu().double().numpy()
        for m in self.methods:
            for tag, net in (("before", original), ("after", manip)):
                r = feature_ranks(self._predict_fn(net), Xtr, Xex, method=m, lime_samples=self.lime_samples,
                                  shap_samples=self.shap_samples, seed=self.seed)
                getattr(res, f"rank_{tag}")[m] = float(r[:, self.feature].mean())
        return res

    def __repr__(self) -> str:
        return f"FeatureHiding(feature={self.feature}, lam={self.lam}, epochs={self.epochs}, lr={self.lr})"
