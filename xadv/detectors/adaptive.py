"""White-box adaptive attack on a detector: PGD through the classifier, the explainer and the detector."""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._model import preserved
from .._validation import check_bounds, check_inputs, check_model, check_positive_int, resolve_target, checked_inputs
from ..attacks.apgd import apgd_checkpoints
from ..attacks.gradient import schedule_factor
from ..explainers.base import forward
from ..nn import smooth_relu
from ..results import AttackResult
from .base import Detector, make_generator

_MODES = ("selective", "orthogonal", "weighted")
_SURROGATES = ("detector", "soft_forest")
_SCHEDULES = ("apgd", "constant", "linear", "cosine", "step")


def _has_relu(model) -> bool:
    return isinstance(model, nn.Module) and any(type(m) is nn.ReLU for m in model.modules())


def _lex_better(f1, s1, m1, f0, s0, m0) -> torch.Tensor:
    """(N,) bool: is state 1 better than state 0 for the attacker? Misclassified beats
    correctly classified; then the lower detector score (misclassified) or the lower
    classifier margin (correctly classified)."""
    return (f1 & ~f0) | (f1 & f0 & (s1 < s0)) | (~f1 & ~f0 & (m1 < m0))


def _reject(g: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """``g`` minus its projection on ``d``, per sample (Bryniarski et al.'s orthogonal step)."""
    gf, df = g.reshape(len(g), -1), d.reshape(len(d), -1)
    coef = (gf * df).sum(1) / (df * df).sum(1).clamp_min(1e-30)
    return (gf - coef[:, None] * df).reshape(g.shape)


class SoftForest(nn.Module):
    """A differentiable copy of a fitted scikit-learn random forest (binary classifier).

    Every split ``x[f] <= t`` of every tree becomes the soft decision
    ``sigmoid((x[f] - t) / (temperature * scale[f]))`` (probability of going right); a
    leaf is reached with the product of the soft decisions on its path and the forest's
    probability of class 1 is the mean over trees of the reach-weighted leaf values.
    As ``temperature -> 0`` this is exactly ``forest.predict_proba(x)[:, 1]`` (tested);
    ``scale[f]`` is the standard deviation of the forest's thresholds on feature ``f``,
    so one temperature fits features of any range. ``forward`` returns the log-odds
    ``log p - log(1 - p)`` (gradients do not saturate where the forest is certain).

    Parameters
    ----------
    forest : sklearn.ensemble.RandomForestClassifier
        Fitted, two classes; class 1 is the positive ("adversarial") class.
    temperature : float, default 0.1
    dtype : torch.dtype, default torch.float32

    Examples
    --------
    >>> import numpy as np, torch
    >>> from sklearn.ensemble import RandomForestClassifier
    >>> from xadv.detectors.adaptive import SoftForest
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 3)); y = (X[:, 0] + X[:, 1] > 0).astype(int)
    >>> rf = RandomForestClassifier(n_estimators=10, random_state=0).fit(X, y)
    >>> sf = SoftForest(rf, temperature=1e-6, dtype=torch.float64)
    >>> bool(np.allclose(sf.proba(torch.as_tensor(X)).numpy(), rf.predict_proba(X)[:, 1], atol=1e-6))
    True
    """

    def __init__(self, forest, temperature: float = 0.1, dtype: torch.dtype = torch.float32):
        super().__init__()
        if not hasattr(forest, "estimators_"):
            raise TypeError("forest must be a fitted scikit-learn RandomForestClassifier (no estimators_ found)")
        if len(getattr(forest, "classes_", ())) != 2:
            raise ValueError("SoftForest supports binary forests only (two classes)")
        if not float(temperature) > 0:
            raise ValueError(f"temperature must be positive, got {temperature!r}")
        self.temperature = float(temperature)
        feats, thrs, paths, signs, vals = [], [], [], [], []
        offset = 0
        for est in forest.estimators_:
            t = est.tree_
            left, right = t.children_left, t.children_right
            internal = np.flatnonzero(left != -1)
            gid = {int(n): offset + i for i, n in enumerate(internal)}
            offset += len(internal)
            feats.extend(int(t.feature[n]) for n in internal)
            thrs.extend(float(t.threshold[n]) for n in internal)
            stack = [(0, [], [])]
            while stack:
                node, p, sg = stack.pop()
                if left[node] == -1:
                    v = t.value[node, 0]
                    paths.append(p)
                    signs.append(sg)
                    vals.append(float(v[1] / max(v.sum(), 1e-12)))
                    continue
                stack.append((int(left[node]), p + [gid[node]], sg + [-1.0]))
                stack.append((int(right[node]), p + [gid[node]], sg + [1.0]))
        depth = max(1, max(len(p) for p in paths))
        idx = torch.zeros(len(paths), depth, dtype=torch.long)
        sgn = torch.zeros(len(paths), depth, dtype=torch.float64)
        for i, (p, sg) in enumerate(zip(paths, signs)):
            idx[i, :len(p)] = torch.tensor(p, dtype=torch.long)
            sgn[i, :len(sg)] = torch.tensor(sg, dtype=torch.float64)
        feat = torch.tensor(feats, dtype=torch.long)
        thr = torch.tensor(thrs, dtype=torch.float64)
        n_feat = int(forest.n_features_in_)
        scale = torch.ones(n_feat, dtype=torch.float64)
        for f in range(n_feat):
            sel = thr[feat == f]
            if len(sel) > 1 and float(sel.std()) > 0:
                scale[f] = sel.std()
        self.n_trees = len(forest.estimators_)
        self.register_buffer("feature", feat)
        self.register_buffer("threshold", thr.to(dtype))
        self.register_buffer("scale", scale[feat].to(dtype) if len(feat) else scale[:0].to(dtype))
        self.register_buffer("path", idx)
        self.register_buffer("sign", sgn.to(dtype))
        self.register_buffer("mask", (sgn != 0).to(dtype))
        self.register_buffer("leaf_value", torch.tensor(vals, dtype=dtype))

    def _logreach(self, feats: torch.Tensor) -> torch.Tensor:
        dt = feats.dtype
        z = (feats[:, self.feature] - self.threshold.to(dt)) / (self.temperature * self.scale.to(dt))
        zp = z[:, self.path] * self.sign.to(dt)                      # (N, leaves, depth)
        return (F.logsigmoid(zp) * self.mask.to(dt)).sum(-1)         # (N, leaves)

    def proba(self, feats: torch.Tensor) -> torch.Tensor:
        """Soft forest probability of class 1, shape (N,), for features (N, F)."""
        if len(self.feature) == 0:  # every tree is a single leaf
            return self.leaf_value.to(feats.dtype).mean().expand(len(feats))
        return (self._logreach(feats).exp() * self.leaf_value.to(feats.dtype)).sum(1) / self.n_trees

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """Log-odds ``log p - log(1 - p)`` of :meth:`proba`, computed in the log domain
        (finite gradients also where the forest is certain), shape (N,)."""
        v = self.leaf_value.to(feats.dtype)
        if len(self.feature) == 0:
            lr = torch.zeros(len(feats), len(v), dtype=feats.dtype, device=feats.device)
        else:
            lr = self._logreach(feats)
        tiny = 1e-6 / self.n_trees  # keeps log(0) finite for pure leaves
        lp = torch.logsumexp(lr + torch.log(v + tiny), 1)
        ln = torch.logsumexp(lr + torch.log(1 - v + tiny), 1)
        return lp - ln


class AdaptiveAttack:
    """PGD that fools the classifier and the detector at once (a white-box adaptive attack).

    Each step differentiates the classifier's margin loss and the detector's score; the
    detector's gradient goes through its explainer (``create_graph=True``) and its own
    network. ReLU networks have zero second derivative, so explanation-based scores are
    differentiated on a copy of the model whose ReLUs are ``Softplus(smooth_beta)``
    (:func:`xadv.nn.smooth_relu`); the classifier loss, the success test and the
    selection of the returned iterate use the original model and the EXACT detector
    score. Non-differentiable detector parts are replaced by a surrogate (stated in
    ``extras["surrogate"]``): the detector's :meth:`~Detector.surrogate_score`
    (``surrogate="detector"``), a :class:`SoftForest` copy of :class:`XEnsemble`'s random
    forest (``surrogate="soft_forest"``), or any callable ``f(grad_model, x) -> (N,)``.

    ``mode="selective"`` (default; Bryniarski et al.'s selective gradient): a sample that
    is still classified correctly steps on the classifier loss, a misclassified one
    steps on the detector score, so no weight has to be tuned. ``mode="orthogonal"``
    (their orthogonal PGD) does the same with each gradient projected orthogonally to
    the other, so a detector step does not undo the misclassification and vice versa. ``mode="weighted"``
    minimises ``max(margin, -kappa) + lam * (score - threshold) / scale`` (Carlini &
    Wagner's combined loss). Every iterate is scored by the exact detector; the
    returned input is, per sample, the misclassified iterate with the lowest exact score
    over all steps and restarts (when none fooled the model: the last iterate of the
    first restart, or with ``schedule="apgd"`` its lowest-margin iterate). Restart ``r`` is the run with seed ``seed + r``, so ``restarts=k`` returns
    per sample the best of the ``k`` single runs with seeds ``seed, ..., seed + k - 1``;
    with a fixed ``step_size`` and ``schedule="constant"`` more steps or restarts never
    return a higher exact score (the shorter run is a prefix of the longer one).

    Parameters
    ----------
    detector : Detector
        A fitted detector.
    eps : float, default 0.1
    norm : {"linf", "l2"}, default "linf"
    steps : int, default 100
    step_size : float, optional
        Initial step. Default ``2 * eps`` with ``schedule="apgd"`` (APGD's), otherwise
        ``eps / 10``; L2 steps are ``step_size`` per unit-norm gradient step.
    schedule : {"apgd", "constant", "linear", "cosine", "step"} or callable, default "apgd"
        ``"apgd"``: Croce & Hein's step-size control. Steps with momentum ``momentum``;
        at the checkpoints of :func:`xadv.attacks.apgd_checkpoints` a sample halves its
        step and restarts from its best iterate when fewer than ``rho`` of its steps
        since the last checkpoint improved its objective (misclassified beats not;
        then the lower exact detector score, or the lower margin while still correctly
        classified), or when neither its step nor its best objective changed since the
        last checkpoint. It evaded the digits detectors more often than cosine steps of
        ``eps / 10`` at the same budget (docs/detectors.md). The other values are
        multipliers of a fixed ``step_size`` at step ``t`` of ``steps`` (as in
        :class:`xadv.attacks.PGD`), no momentum.
    rho : float, default 0.75
        ``"apgd"`` only: fraction of improving steps below which the step is halved.
    momentum : float, default 0.75
        ``"apgd"`` only: weight of the new step against the previous update (APGD's alpha).
    runner_ups : int, default 0
        Further runs after the ``restarts``, run ``j`` stepping towards the clean
        output's ``(j + 1)``-th runner-up class (targeted margin ``z_y - z_t`` as the
        classifier term, as APGD-T does), seeds continuing ``seed + restarts + j``; the
        best iterate over all runs is kept as for restarts.
    restarts : int, default 1
        Independent random starts (seeds ``seed + r``); the best per sample is kept.
    mode : {"selective", "orthogonal", "weighted"}, default "selective"
    lam : float, default 1.0
        Weight of the detector term (``weighted`` only).
    kappa : float, default 0.0
        Margin kept on the classifier (``weighted`` only).
    smooth_beta : float or None, default 10.0
        Softplus beta of the smoothed copy used for the detector's gradient; None uses
        the model itself.
    surrogate : {"detector", "soft_forest"} or callable, default "detector"
        What is differentiated for the detector score. ``"soft_forest"`` needs a detector
        with a random forest on sub-scores (:class:`XEnsemble`).
    temperature : float, default 0.1
        Temperature of the ``"soft_forest"`` surrogate (relative to the spread of each
        feature's split thresholds).
    random_start : bool, default True
    bounds : (float, float), default (0, 1)
    seed : int, default 0
    batch_size : int, default 64
        Inputs attacked at a time (the graph through the explainer is kept per batch).
    progress : bool or None, default None
        tqdm bar over restarts x batches.

    References
    ----------
    Carlini, Wagner. Adversarial Examples Are Not Easily Detected: Bypassing Ten Detection
    Methods. AISec 2017.
    Athalye, Carlini, Wagner. Obfuscated Gradients Give a False Sense of Security. ICML 2018.
    Tramer, Carlini, Brendel, Madry. On Adaptive Attacks to Adversarial Example Defenses.
    NeurIPS 2020.
    Bryniarski, Hingun, Pachuca, Wang, Carlini. Evading Adversarial Example Detection
    Defenses with Orthogonal Projected Gradient Descent. ICLR 2022.

    Examples
    --------
    >>> import torch
    >>> from xadv.detectors import LOODetector, AdaptiveAttack
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> det = LOODetector(patch=2).fit(net, torch.rand(40, 1, 4, 4), torch.rand(40, 1, 4, 4) * 0.2)
    >>> att = AdaptiveAttack(det, eps=0.3, steps=5, restarts=2)
    >>> res = att(net, torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0]))
    >>> res.x_adv.shape, res.extras["restart"].shape
    (torch.Size([4, 1, 4, 4]), torch.Size([4]))
    """

    def __init__(self, detector: Detector, eps: float = 0.1, *, norm: str = "linf", steps: int = 100,
                 step_size: Optional[float] = None, schedule: Union[str, Callable[[int, int], float]] = "apgd",
                 restarts: int = 1, mode: str = "selective", lam: float = 1.0, kappa: float = 0.0,
                 smooth_beta: Optional[float] = 10.0, surrogate: Union[str, Callable] = "detector",
                 temperature: float = 0.1, random_start: bool = True, bounds=(0.0, 1.0),
                 seed: Optional[int] = 0, batch_size: int = 64, progress: Optional[bool] = None, runner_ups: int = 0,
                 rho: float = 0.75, momentum: float = 0.75):
        if not isinstance(detector, Detector):
            raise TypeError(f"detector must be an xadv Detector, got {type(detector).__name__}")
        if not getattr(detector, "fitted_", False):
            raise ValueError("the detector must be fitted before it can be attacked")
        if not float(eps) > 0:
            raise ValueError(f"eps must be positive, got {eps!r}")
        if norm not in ("linf", "l2"):
            raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        if not (callable(schedule) or schedule in _SCHEDULES):
            raise ValueError(f"schedule must be one of {_SCHEDULES} or a callable (t, steps) -> factor, got {schedule!r}")
        if not (callable(surrogate) or surrogate in _SURROGATES):
            raise ValueError(f"surrogate must be one of {_SURROGATES} or a callable (model, x) -> (N,) scores, "
                             f"got {surrogate!r}")
        if surrogate == "soft_forest" and not (hasattr(detector, "forest_") and hasattr(detector, "sub_scores")):
            raise ValueError(f"surrogate='soft_forest' needs a detector with a random forest on sub-scores "
                             f"(XEnsemble), got {type(detector).__name__}; use surrogate='detector'")
        if step_size is not None and not float(step_size) > 0:
            raise ValueError(f"step_size must be positive, got {step_size!r}")
        if not float(temperature) > 0:
            raise ValueError(f"temperature must be positive, got {temperature!r}")
        self.detector = detector
        self.eps = float(eps)
        self.norm = norm
        self.steps = check_positive_int(steps, "steps")
        if not 0 < float(rho) <= 1:
            raise ValueError(f"rho must be in (0, 1], got {rho!r}")
        if not 0 <= float(momentum) <= 1:
            raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
        self.rho = float(rho)
        self.momentum = float(momentum)
        if step_size is None:
            step_size = 2 * self.eps if schedule == "apgd" else self.eps / 10
        self.step_size = float(step_size)
        self.schedule = schedule
        self.restarts = check_positive_int(restarts, "restarts")
        self.mode = mode
        self.lam = float(lam)
        self.kappa = float(kappa)
        self.smooth_beta = None if smooth_beta is None else float(smooth_beta)
        self.surrogate_kind = surrogate
        self.temperature = float(temperature)
        self.random_start = bool(random_start)
        self.bounds = check_bounds(bounds)
        self.seed = seed
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.progress = progress
        if isinstance(runner_ups, bool) or not isinstance(runner_ups, int) or runner_ups < 0:
            raise ValueError(f"runner_ups must be an int >= 0, got {runner_ups!r}")
        self.runner_ups = runner_ups
        self._soft_forest: Optional[SoftForest] = None

    def __repr__(self) -> str:
        extra = ""
        if self.restarts > 1:
            extra += f", restarts={self.restarts}"
        if self.runner_ups:
            extra += f", runner_ups={self.runner_ups}"
        if self.schedule != "apgd":
            extra += f", schedule={self.schedule!r}"
        if self.mode == "weighted":
            extra += f", lam={self.lam:g}"
        if self.surrogate_kind != "detector":
            name = self.surrogate_kind if isinstance(self.surrogate_kind, str) else "custom"
            extra += f", surrogate={name!r}"
        return (f"AdaptiveAttack({type(self.detector).__name__}, eps={self.eps}, norm={self.norm!r}, "
                f"steps={self.steps}, mode={self.mode!r}, smooth_beta={self.smooth_beta}{extra})")

    @property
    def surrogate(self) -> str:
        """What the attack differentiates instead of the exact detector (empty when nothing)."""
        notes = []
        if callable(self.surrogate_kind):
            notes.append(f"detector score replaced by {getattr(self.surrogate_kind, '__name__', 'a custom surrogate')}")
        elif self.surrogate_kind == "soft_forest":
            notes.append(f"random forest replaced by its soft-split copy (temperature {self.temperature:g})")
        elif not self.detector.differentiable or self.detector.surrogate_note:
            notes.append(self.detector.surrogate_note)
        if self.smooth_beta is not None and self.detector.second_order:
            notes.append(f"explainer gradients on a Softplus(beta={self.smooth_beta:g}) copy of the model")
        return "; ".join(n for n in notes if n)

    def surrogate_score(self, grad_model, x: torch.Tensor) -> torch.Tensor:
        """The differentiable score (N,) the attack descends (see ``surrogate``)."""
        if callable(self.surrogate_kind):
            return self.surrogate_kind(grad_model, x)
        if self.surrogate_kind == "soft_forest":
            det = self.detector
            if self._soft_forest is None:
                self._soft_forest = SoftForest(det.forest_, self.temperature, dtype=x.dtype)
            self._soft_forest.to(x.device)
            with preserved(grad_model):
                f = det.sub_scores(grad_model, x, create_graph=True).to(x.dtype)
            return self._soft_forest(f)
        return self.detector.surrogate_score(grad_model, x)

    # ------------------------------------------------------------------ steps
    def _project(self, delta):
        if self.norm == "linf":
            return delta.clamp(-self.eps, self.eps)
        flat = delta.reshape(len(delta), -1)
        nrm = flat.norm(dim=1).clamp_min(1e-12)
        f = torch.clamp(self.eps / nrm, max=1.0)
        return delta * f.reshape((-1,) + (1,) * (delta.dim() - 1))

    def _step(self, g, t):
        size = self.step_size * schedule_factor(self.schedule, t, self.steps)
        if self.norm == "linf":
            return size * g.sign()
        flat = g.reshape(len(g), -1)
        nrm = flat.norm(dim=1).clamp_min(1e-12)
        return size * g / nrm.reshape((-1,) + (1,) * (g.dim() - 1))

    def _start(self, x, gen):
        """The first iterate: a uniform (L-inf) or Gaussian (L2, radius eps / 2) random start, or ``x``."""
        lo, hi = self.bounds
        if self.random_start:
            if self.norm == "linf":
                delta = (torch.rand(x.shape, generator=gen, dtype=x.dtype) * 2 - 1).to(x.device) * self.eps
            else:
                d = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
                delta = self._project(d * self.eps * 0.5 / d.reshape(len(d), -1).norm(dim=1).reshape(
                    (-1,) + (1,) * (x.dim() - 1)))
        else:
            delta = torch.zeros_like(x)
        return (x + delta).clamp(lo, hi) - x

    def _evaluate(self, model, xa, y, target):
        """Classifier margin (graph kept; targeted ``z_y - z_target`` when ``target`` is given),
        whether ``xa`` is misclassified, and the EXACT detector score."""
        with torch.enable_grad():
            logits = forward(model, xa)
            other = logits.clone()
            other.scatter_(1, y[:, None], -torch.inf)
            margin = logits.gather(1, y[:, None])[:, 0] - other.max(1).values
        fooled = (margin < 0).detach()
        if target is not None:  # step towards the runner-up class
            with torch.enable_grad():
                margin = logits.gather(1, y[:, None])[:, 0] - logits.gather(1, target[:, None])[:, 0]
        sd = self.detector.score(model, xa.detach())  # the exact score picks the best iterate
        return margin, fooled, sd

    def _direction(self, grad_model, xa, margin, fooled):
        """The gradient the attack descends at ``xa`` (selective, orthogonal or weighted)."""
        det = self.detector
        with torch.enable_grad():
            s = self.surrogate_score(grad_model, xa)
            if self.mode in ("selective", "orthogonal"):
                g_cls, = torch.autograd.grad(margin.sum(), xa, retain_graph=True)
                g_det, = torch.autograd.grad(s.sum(), xa)
                if self.mode == "orthogonal":  # each gradient without its component along the other
                    g_cls, g_det = _reject(g_cls, g_det), _reject(g_det, g_cls)
                sel = fooled.reshape((-1,) + (1,) * (xa.dim() - 1))
                g = torch.where(sel, g_det, g_cls)
            else:
                thr, scale = det.threshold_, getattr(det, "score_scale_", 1.0)
                loss = margin.clamp_min(-self.kappa) + self.lam * (s - thr) / scale
                g, = torch.autograd.grad(loss.sum(), xa)
        return g.detach()

    def _attack_batch(self, model, grad_model, x, y, gen, target=None):
        """One restart on one batch: (best input, its exact score, fooled at some step, step index).

        ``target`` (N,): the classifier term is the targeted margin ``z_y - z_target``
        (a misclassification into any class still counts as fooled)."""
        if self.schedule == "apgd":
            return self._attack_batch_apgd(model, grad_model, x, y, gen, target)
        lo, hi = self.bounds
        delta = self._start(x, gen)
        best = (x + delta).detach().clone()
        best_score = torch.full((len(x),), float("inf"), dtype=x.dtype, device=x.device)
        best_step = torch.full((len(x),), -1, dtype=torch.long, device=x.device)
        found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        for t in range(self.steps + 1):
            xa = (x + delta).detach().requires_grad_(True)
            margin, fooled, sd = self._evaluate(model, xa, y, target)
            better = fooled & (sd < best_score)  # torch.where: boolean indexing would synchronise
            best = torch.where(better.reshape((-1,) + (1,) * (x.dim() - 1)), xa.detach(), best)
            best_score = torch.where(better, sd, best_score)
            best_step = torch.where(better, torch.full_like(best_step, t), best_step)
            found |= fooled
            if t == self.steps:
                break
            g = self._direction(grad_model, xa, margin, fooled)
            delta = self._project(delta - self._step(g, t))
            delta = (x + delta).clamp(lo, hi) - x
        last = (x + delta).detach()
        best = torch.where(found.reshape((-1,) + (1,) * (x.dim() - 1)), best, last)
        best_step = torch.where(found, best_step, torch.full_like(best_step, self.steps))
        final = self.step_size * schedule_factor(self.schedule, self.steps - 1, self.steps)
        return best, best_score, found, best_step, torch.full((len(x),), final, dtype=x.dtype, device=x.device)

    def _attack_batch_apgd(self, model, grad_model, x, y, gen, target=None):
        """One restart with APGD's step-size control (Croce & Hein 2020, Algorithm 1).

        Per sample the objective is ordered lexicographically: a misclassified iterate
        beats a correctly classified one; among misclassified iterates the lower EXACT
        detector score is better, among correctly classified ones the lower margin. A
        step is a success when its iterate is better than the previous one. At each
        checkpoint of :func:`xadv.attacks.apgd_checkpoints` (after the first), a sample
        halves its step and restarts from its best iterate (and that iterate's gradient)
        when fewer than ``rho`` of the steps since the last checkpoint were successes,
        or when its step was not halved at the last checkpoint and its best iterate has
        not improved since. Steps use momentum ``self.momentum`` (none on the first)."""
        lo, hi = self.bounds
        n = len(x)
        shape = (-1,) + (1,) * (x.dim() - 1)
        checkpoints = set(apgd_checkpoints(self.steps)[1:])

        def proj(z):
            return (x + self._project(z - x)).clamp(lo, hi)

        def unit(g):
            if self.norm == "linf":
                return g.sign()
            return g / g.reshape(n, -1).norm(dim=1).clamp_min(1e-12).reshape(shape)

        xa = (x + self._start(x, gen)).detach().requires_grad_(True)
        margin, fooled, sd = self._evaluate(model, xa, y, target)
        g = self._direction(grad_model, xa, margin, fooled)
        m = margin.detach()
        best, best_g = xa.detach().clone(), g.clone()
        best_f, best_s, best_m = fooled.clone(), sd.clone(), m.clone()
        best_step = torch.zeros(n, dtype=torch.long, device=x.device)
        prev_f, prev_s, prev_m = fooled, sd, m
        step = torch.full((n,), self.step_size, dtype=x.dtype, device=x.device)
        ups = torch.zeros(n, dtype=x.dtype, device=x.device)
        improved = torch.zeros(n, dtype=torch.bool, device=x.device)
        reduced_last = torch.ones(n, dtype=torch.bool, device=x.device)
        last_cp = 0
        cur = xa.detach()
        x_prev = cur
        for t in range(1, self.steps + 1):
            with torch.no_grad():
                a = 1.0 if t == 1 else self.momentum
                z = proj(cur - step.reshape(shape) * unit(g))
                nxt = proj(cur + a * (z - cur) + (1 - a) * (cur - x_prev))
                x_prev = cur
            xa = nxt.detach().requires_grad_(True)
            margin, fooled, sd = self._evaluate(model, xa, y, target)
            m = margin.detach()
            g = self._direction(grad_model, xa, margin, fooled) if t < self.steps else g
            cur = xa.detach()
            ups += _lex_better(fooled, sd, m, prev_f, prev_s, prev_m).to(x.dtype)
            prev_f, prev_s, prev_m = fooled, sd, m
            better = _lex_better(fooled, sd, m, best_f, best_s, best_m)
            # torch.where throughout: boolean indexing and .any() would synchronise with the host
            bx = better.reshape(shape)
            best, best_g = torch.where(bx, cur, best), torch.where(bx, g, best_g)
            best_f, best_s, best_m = (torch.where(better, fooled, best_f), torch.where(better, sd, best_s),
                                      torch.where(better, m, best_m))
            best_step = torch.where(better, torch.full_like(best_step, t), best_step)
            improved |= better
            if t in checkpoints and t < self.steps:
                red = (ups < self.rho * (t - last_cp)) | (~reduced_last & ~improved)
                rx = red.reshape(shape)
                step = torch.where(red, step / 2.0, step)
                cur, g = torch.where(rx, best, cur), torch.where(rx, best_g, g)
                prev_f, prev_s, prev_m = (torch.where(red, best_f, prev_f), torch.where(red, best_s, prev_s),
                                          torch.where(red, best_m, prev_m))
                reduced_last = red
                improved = torch.zeros_like(improved)
                ups.zero_()
                last_cp = t
        best_score = torch.where(best_f, best_s, torch.full_like(best_s, float("inf")))
        return best, best_score, best_f, best_step, step

    def __call__(self, model, x: torch.Tensor, y) -> AttackResult:
        """Attack ``model`` + detector on inputs ``x`` (N, ...) with true labels ``y`` (N,).

        Returns an :class:`~xadv.results.AttackResult`; ``extras["score_adv"]`` holds the
        detector's (exact) scores of ``x_adv``, ``extras["detected"]`` whether they exceed
        the threshold, ``extras["surrogate"]`` what was differentiated instead,
        ``extras["restart"]`` and ``extras["step"]`` (LongTensor (N,)) the restart and
        the step of the returned iterate, ``extras["step_size"]`` (N,) the last step size
        of the run it came from (``schedule="apgd"``: after the halvings of that sample).
        """
        check_model(model)
        check_inputs(x, model)
        lo, hi = self.bounds
        if float(x.min()) < lo - 1e-6 or float(x.max()) > hi + 1e-6:
            raise ValueError(f"x must lie inside bounds {self.bounds}")
        with preserved(model, freeze=True):
            with torch.no_grad():
                out = forward(model, x)
            y = resolve_target(y, out)
            grad_model = model
            if self.smooth_beta is not None and _has_relu(model) and self.detector.second_order:
                grad_model = smooth_relu(model, self.smooth_beta)
                for p in grad_model.parameters():
                    p.requires_grad_(False)
            starts = range(0, len(x), self.batch_size)
            from .._progress import bar as progress_bar

            bar = progress_bar((self.restarts + self.runner_ups) * len(starts), type(self).__name__,
                               progress=self.progress, unit="batch")
            x_adv = score = found = restart = step = None
            ranked = out.argsort(dim=1, descending=True)
            k = out.shape[1]
            for r in range(self.restarts + self.runner_ups):
                gen = make_generator((0 if self.seed is None else int(self.seed)) + r)
                target = None
                if r >= self.restarts:  # runner-up j: the (j + 2)-th highest clean logit
                    j = min(r - self.restarts + 1, k - 1)
                    target = ranked[:, j]
                    target = torch.where(target == y, ranked[:, 0], target)
                parts = []
                for i in starts:
                    with checked_inputs():  # x and y were checked: no host-side checks inside the step loop
                        parts.append(self._attack_batch(model, grad_model, x[i:i + self.batch_size],
                                                        y[i:i + self.batch_size], gen,
                                                        None if target is None else target[i:i + self.batch_size]))
                    bar.update(1)
                xr, sr, fr, tr, hr = (torch.cat(c) for c in zip(*parts))
                if x_adv is None:
                    x_adv, score, found, step, size = xr, sr, fr, tr, hr
                    restart = torch.zeros(len(x), dtype=torch.long, device=x.device)
                    continue
                better = fr & (~found | (sr < score))  # strict: ties keep the earlier restart
                x_adv[better], score[better], step[better] = xr[better], sr[better], tr[better]
                size[better] = hr[better]
                restart[better] = r
                found |= fr
            if bar is not None:
                bar.close()
            with torch.no_grad():
                out_adv = forward(model, x_adv)
        score = self.detector.score(model, x_adv)
        p_clean, p_adv = F.softmax(out, 1), F.softmax(out_adv, 1)
        delta = (x_adv - x).reshape(len(x), -1)
        n_q = (self.restarts + self.runner_ups) * (self.steps + 1)
        return AttackResult(
            x_adv=x_adv, x=x.detach().clone(), y=y, success=out_adv.argmax(1) != y,
            pred_clean=out.argmax(1), pred_adv=out_adv.argmax(1),
            conf_clean=p_clean.max(1).values, conf_adv=p_adv.max(1).values,
            norms={"l0": (delta != 0).sum(1).to(x.dtype), "l2": delta.norm(dim=1), "linf": delta.abs().max(1).values},
            queries=torch.full((len(x),), n_q, dtype=torch.long),
            steps=torch.full((len(x),), (self.restarts + self.runner_ups) * self.steps, dtype=torch.long),
            targeted=False,
            attack=repr(self),
            extras={"score_adv": score, "detected": score > self.detector.threshold_, "surrogate": self.surrogate,
                    "restart": restart, "step": step, "step_size": size},
        )
