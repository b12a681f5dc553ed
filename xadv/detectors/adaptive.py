"""White-box adaptive attack on a detector: PGD through the classifier, the explainer and the detector."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .._model import preserved
from .._validation import check_bounds, check_inputs, check_model, check_positive_int, resolve_target
from ..explainers.base import forward
from ..nn import smooth_relu
from ..results import AttackResult
from .base import Detector, make_generator

_MODES = ("selective", "weighted")


def _has_relu(model) -> bool:
    return isinstance(model, nn.Module) and any(type(m) is nn.ReLU for m in model.modules())


class AdaptiveAttack:
    """PGD that fools the classifier and the detector at once (a white-box adaptive attack).

    Each step differentiates the classifier's margin loss and the detector's score; the
    detector's gradient goes through its explainer (``create_graph=True``) and its own
    network. ReLU networks have zero second derivative, so explanation-based scores are
    differentiated on a copy of the model whose ReLUs are ``Softplus(smooth_beta)``
    (:func:`xadv.nn.smooth_relu`); the classifier loss, the success test and the final
    scores use the original model. Non-differentiable detector parts (random forests,
    shap, LIME) are replaced by the detector's :meth:`~Detector.surrogate_score`
    (stated in ``extras["surrogate"]``).

    ``mode="selective"`` (default; Bryniarski et al.'s selective gradient): a sample that
    is still classified correctly steps on the classifier loss, a misclassified one
    steps on the detector score, so no weight has to be tuned. ``mode="weighted"``
    minimises ``max(margin, -kappa) + lam * (score - threshold) / scale`` (Carlini &
    Wagner's combined loss). The returned input is, per sample, the misclassified
    iterate with the lowest detector score (the last iterate when none fooled the model).

    Parameters
    ----------
    detector : Detector
        A fitted detector.
    eps : float, default 0.1
    norm : {"linf", "l2"}, default "linf"
    steps : int, default 40
    step_size : float, optional
        Default ``2.5 * eps / steps``.
    mode : {"selective", "weighted"}, default "selective"
    lam : float, default 1.0
        Weight of the detector term (``weighted`` only).
    kappa : float, default 0.0
        Margin kept on the classifier (``weighted`` only).
    smooth_beta : float or None, default 10.0
        Softplus beta of the smoothed copy used for the detector's gradient; None uses
        the model itself.
    random_start : bool, default True
    bounds : (float, float), default (0, 1)
    seed : int, default 0
    batch_size : int, default 64
        Inputs attacked at a time (the graph through the explainer is kept per batch).

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
    >>> res = AdaptiveAttack(det, eps=0.3, steps=5)(net, torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0]))
    >>> res.x_adv.shape
    torch.Size([4, 1, 4, 4])
    """

    def __init__(self, detector: Detector, eps: float = 0.1, *, norm: str = "linf", steps: int = 40,
                 step_size: Optional[float] = None, mode: str = "selective", lam: float = 1.0, kappa: float = 0.0,
                 smooth_beta: Optional[float] = 10.0, random_start: bool = True, bounds=(0.0, 1.0),
                 seed: Optional[int] = 0, batch_size: int = 64):
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
        self.detector = detector
        self.eps = float(eps)
        self.norm = norm
        self.steps = check_positive_int(steps, "steps")
        self.step_size = 2.5 * self.eps / self.steps if step_size is None else float(step_size)
        self.mode = mode
        self.lam = float(lam)
        self.kappa = float(kappa)
        self.smooth_beta = None if smooth_beta is None else float(smooth_beta)
        self.random_start = bool(random_start)
        self.bounds = check_bounds(bounds)
        self.seed = seed
        self.batch_size = check_positive_int(batch_size, "batch_size")

    def __repr__(self) -> str:
        return (f"AdaptiveAttack({type(self.detector).__name__}, eps={self.eps}, norm={self.norm!r}, "
                f"steps={self.steps}, mode={self.mode!r}, smooth_beta={self.smooth_beta})")

    @property
    def surrogate(self) -> str:
        """What the attack differentiates instead of the exact detector (empty when nothing)."""
        notes = []
        if not self.detector.differentiable or self.detector.surrogate_note:
            notes.append(self.detector.surrogate_note)
        if self.smooth_beta is not None and self.detector.second_order:
            notes.append(f"explainer gradients on a Softplus(beta={self.smooth_beta:g}) copy of the model")
        return "; ".join(n for n in notes if n)

    # ------------------------------------------------------------------ steps
    def _project(self, delta):
        if self.norm == "linf":
            return delta.clamp(-self.eps, self.eps)
        flat = delta.reshape(len(delta), -1)
        nrm = flat.norm(dim=1).clamp_min(1e-12)
        f = torch.clamp(self.eps / nrm, max=1.0)
        return delta * f.reshape((-1,) + (1,) * (delta.dim() - 1))

    def _step(self, g):
        if self.norm == "linf":
            return self.step_size * g.sign()
        flat = g.reshape(len(g), -1)
        nrm = flat.norm(dim=1).clamp_min(1e-12)
        return self.step_size * g / nrm.reshape((-1,) + (1,) * (g.dim() - 1))

    def _attack_batch(self, model, grad_model, x, y, gen):
        lo, hi = self.bounds
        det = self.detector
        thr, scale = det.threshold_, getattr(det, "score_scale_", 1.0)
        if self.random_start:
            if self.norm == "linf":
                delta = (torch.rand(x.shape, generator=gen, dtype=x.dtype) * 2 - 1).to(x.device) * self.eps
            else:
                d = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
                delta = self._project(d * self.eps * 0.5 / d.reshape(len(d), -1).norm(dim=1).reshape(
                    (-1,) + (1,) * (x.dim() - 1)))
        else:
            delta = torch.zeros_like(x)
        delta = (x + delta).clamp(lo, hi) - x
        best = (x + delta).detach().clone()
        best_score = torch.full((len(x),), float("inf"), dtype=x.dtype, device=x.device)
        found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        for _ in range(self.steps + 1):
            xa = (x + delta).detach().requires_grad_(True)
            with torch.enable_grad():
                logits = forward(model, xa)
                other = logits.clone()
                other.scatter_(1, y[:, None], -torch.inf)
                margin = logits.gather(1, y[:, None])[:, 0] - other.max(1).values
                s = det.surrogate_score(grad_model, xa)
            fooled = (margin < 0).detach()
            sd = det.score(model, xa.detach())  # the exact score picks the best iterate
            better = fooled & (sd < best_score)
            best[better] = xa.detach()[better]
            best_score[better] = sd[better]
            found |= fooled
            if _ == self.steps:
                break
            with torch.enable_grad():
                if self.mode == "selective":
                    g_cls, = torch.autograd.grad(margin.sum(), xa, retain_graph=True)
                    g_det, = torch.autograd.grad(s.sum(), xa)
                    sel = fooled.reshape((-1,) + (1,) * (x.dim() - 1))
                    g = torch.where(sel, g_det, g_cls)
                else:
                    loss = margin.clamp_min(-self.kappa) + self.lam * (s - thr) / scale
                    g, = torch.autograd.grad(loss.sum(), xa)
            delta = self._project(delta - self._step(g.detach()))
            delta = (x + delta).clamp(lo, hi) - x
        last = (x + delta).detach()
        best[~found] = last[~found]
        return best

    def __call__(self, model, x: torch.Tensor, y) -> AttackResult:
        """Attack ``model`` + detector on inputs ``x`` (N, ...) with true labels ``y`` (N,).

        Returns an :class:`~xadv.results.AttackResult`; ``extras["score_adv"]`` holds the
        detector's (exact) scores of ``x_adv`` and ``extras["detected"]`` whether they exceed
        the threshold; ``extras["surrogate"]`` what was differentiated instead.
        """
        check_model(model)
        check_inputs(x, model)
        lo, hi = self.bounds
        if float(x.min()) < lo - 1e-6 or float(x.max()) > hi + 1e-6:
            raise ValueError(f"x must lie inside bounds {self.bounds}")
        with preserved(model):
            with torch.no_grad():
                out = forward(model, x)
            y = resolve_target(y, out)
            grad_model = model
            if self.smooth_beta is not None and _has_relu(model) and self.detector.second_order:
                grad_model = smooth_relu(model, self.smooth_beta)
                for p in grad_model.parameters():
                    p.requires_grad_(False)
            gen = make_generator(self.seed)
            parts = [self._attack_batch(model, grad_model, x[i:i + self.batch_size], y[i:i + self.batch_size], gen)
                     for i in range(0, len(x), self.batch_size)]
            x_adv = torch.cat(parts)
            with torch.no_grad():
                out_adv = forward(model, x_adv)
        score = self.detector.score(model, x_adv)
        p_clean, p_adv = F.softmax(out, 1), F.softmax(out_adv, 1)
        delta = (x_adv - x).reshape(len(x), -1)
        return AttackResult(
            x_adv=x_adv, x=x.detach().clone(), y=y, success=out_adv.argmax(1) != y,
            pred_clean=out.argmax(1), pred_adv=out_adv.argmax(1),
            conf_clean=p_clean.max(1).values, conf_adv=p_adv.max(1).values,
            norms={"l0": (delta != 0).sum(1).to(x.dtype), "l2": delta.norm(dim=1), "linf": delta.abs().max(1).values},
            queries=torch.full((len(x),), self.steps + 1, dtype=torch.long),
            steps=torch.full((len(x),), self.steps, dtype=torch.long), targeted=False, attack=repr(self),
            extras={"score_adv": score, "detected": score > self.detector.threshold_, "surrogate": self.surrogate},
        )
