"""Learned perturbation masks: meaningful perturbation (Fong & Vedaldi, 2017) and
extremal perturbation (Fong, Patrick & Vedaldi, 2019).

Both learn a low-resolution mask, upsampled bilinearly to the image, that blends
the input with a perturbed copy of it (a blurred image, a constant or seeded
noise): ``x_m = m * x + (1 - m) * p(x)``. The mask is the explanation.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from ..._validation import check_positive_int, resolve_target
from ...explanation import Explanation
from ..base import Explainer, check_score, forward, select_score
from ..integrated_gradients import gaussian_blur

__all__ = ["MeaningfulPerturbation", "ExtremalPerturbation"]

_PERTURBATIONS = ("blur", "constant", "noise")


def total_variation(m: torch.Tensor, beta: float) -> torch.Tensor:
    """``mean |dm/du|^beta + mean |dm/dv|^beta`` of (N, 1, h, w) masks: shape (N,)."""
    dv = (m[:, :, 1:, :] - m[:, :, :-1, :]).abs()
    du = (m[:, :, :, 1:] - m[:, :, :, :-1]).abs()
    zero = m.new_zeros(m.shape[0])
    tv_v = dv.pow(beta).flatten(1).mean(1) if dv.numel() else zero
    tv_u = du.pow(beta).flatten(1).mean(1) if du.numel() else zero
    return tv_v + tv_u


def _check_number(value, name: str, *, low: float = 0.0, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    v = float(value)
    if (strict and not v > low) or (not strict and v < low):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {low:g}, got {value!r}")
    return v


class _MaskExplainer(Explainer):
    """Shared machinery: the perturbed copy, the mask parametrisation, jitter."""

    differentiable = False
    min_dim = 4
    multi_input = False

    def _init_common(self, steps, lr, mask_scale, perturbation, blur_sigma, fill, noise_std, jitter, score, seed):
        self.steps = check_positive_int(steps, "steps")
        self.lr = _check_number(lr, "lr", strict=True)
        self.mask_scale = check_positive_int(mask_scale, "mask_scale")
        if perturbation not in _PERTURBATIONS:
            raise ValueError(f"perturbation must be one of {_PERTURBATIONS}, got {perturbation!r}")
        self.perturbation = perturbation
        self.blur_sigma = None if blur_sigma is None else _check_number(blur_sigma, "blur_sigma", strict=True)
        self.fill = _check_number(fill, "fill", low=-math.inf)
        self.noise_std = _check_number(noise_std, "noise_std")
        self.jitter = check_positive_int(jitter, "jitter", minimum=0)
        self.score = score if score == "margin" else check_score(score)
        self.seed = None if seed is None else int(seed)

    # ------------------------------------------------------------ pieces
    def mask_shape(self, x: torch.Tensor) -> Tuple[int, int]:
        """Spatial size (h, w) of the learned mask for images ``x`` (N, C, H, W)."""
        h, w = x.shape[-2:]
        return max(1, -(-h // self.mask_scale)), max(1, -(-w // self.mask_scale))

    def perturbed_copy(self, x: torch.Tensor) -> torch.Tensor:
        """``p(x)``, what the mask blends the input with: (N, C, H, W)."""
        if self.perturbation == "blur":
            sigma = self.blur_sigma if self.blur_sigma is not None else max(1.0, min(x.shape[-2:]) / 10)
            return gaussian_blur(x, sigma)
        if self.perturbation == "constant":
            return torch.full_like(x, self.fill)
        g = torch.Generator(device=x.device)
        g.manual_seed(0 if self.seed is None else self.seed)
        noise = torch.randn(x.shape[1:], generator=g, device=x.device, dtype=x.dtype)
        return x + self.noise_std * noise   # the same draw for every sample and every step

    @staticmethod
    def upsample(m: torch.Tensor, size) -> torch.Tensor:
        """Bilinear upsampling of (N, 1, h, w) masks to ``size`` (H, W)."""
        if tuple(m.shape[-2:]) == tuple(size):
            return m
        return F.interpolate(m, size=tuple(size), mode="bilinear", align_corners=False)

    def shifts(self, steps: int, device) -> torch.Tensor:
        """(steps, 2) jitter translations in pixels, drawn from ``seed`` (one per step, the
        same for every sample, so a sample's mask does not depend on the batch)."""
        if not self.jitter:
            return torch.zeros(steps, 2, dtype=torch.long)
        g = torch.Generator()
        g.manual_seed(0 if self.seed is None else self.seed)
        return torch.randint(-self.jitter, self.jitter + 1, (steps, 2), generator=g)

    def jittered(self, z: torch.Tensor, shift) -> torch.Tensor:
        """``z`` translated by ``shift`` = (dy, dx) pixels, edges replicated."""
        dy, dx = int(shift[0]), int(shift[1])
        if dy == 0 and dx == 0:
            return z
        j = self.jitter
        h, w = z.shape[-2:]
        zp = F.pad(z, (j, j, j, j), mode="replicate")
        return zp[..., j - dy: j - dy + h, j - dx: j - dx + w]

    def _need_grad(self, x: torch.Tensor) -> None:
        if torch.is_inference_mode_enabled() or x.is_inference():
            raise RuntimeError(f"{type(self).__name__} optimises a mask by gradient descent; call it outside "
                               f"torch.inference_mode() (torch.no_grad() around it is fine) with an x made "
                               f"outside inference_mode")

    def _score(self, model, z, target, floor: bool = True) -> torch.Tensor:
        return self._select(forward(model, z), target, floor)

    def _select(self, out, target, floor: bool = True) -> torch.Tensor:
        if self.score == "margin":
            own = out.gather(1, target[:, None]).squeeze(1)
            other = out.scatter(1, target[:, None], float("-inf")).max(1).values
            return (own - other).clamp_min(getattr(self, "margin_floor", -math.inf) if floor else -math.inf)
        return select_score(out, target, self.score)

    def _result(self, x, t, out, mask_low, attr_full, extras) -> Explanation:
        c = x.shape[1]
        attr = attr_full.expand(-1, c, -1, -1).contiguous()
        return Explanation(attr, x.detach(), t, out, self.name, self._params_for_result(),
                           raw=mask_low[:, 0].detach(), extras=extras)


class MeaningfulPerturbation(_MaskExplainer):
    """Meaningful perturbation (Fong & Vedaldi, 2017): the smallest, smooth region whose
    deletion drops the class score.

    A mask ``m`` of ``ceil(H / mask_scale) x ceil(W / mask_scale)`` values in [0, 1]
    (1 keeps a pixel, 0 deletes it), upsampled bilinearly, blends the input with its
    perturbed copy ``p(x)``: ``x_m = m * x + (1 - m) * p(x)``. Adam minimises, per sample,

    ``l1 * mean|1 - m| + tv * TV_beta(m) + score(f(jitter(x_m)))[target]``

    from ``m = 1`` for ``steps`` steps, clipping ``m`` to [0, 1] after each step.
    ``TV_beta(m)`` is the mean of ``|m(u+1, v) - m(u, v)|^beta`` plus the same along
    the other axis; jitter translates the perturbed image by up to ``jitter`` pixels
    (a fresh seeded shift per step) so the mask cannot rely on pixel-exact artefacts.
    The attribution is the deletion map ``1 - m``, upsampled and repeated over
    channels; higher means more important for the class.

    Parameters
    ----------
    steps : int, default 300
        Adam steps (Fong & Vedaldi use 300 on ImageNet, learning rate 0.1).
    lr : float, default 0.1
    l1 : float, default 3.0
        Weight of the deleted area, ``mean|1 - m|`` (mean rather than sum, so the
        weight does not depend on the mask size), in units of the score (logits for
        the default margin score; with ``score="softmax"`` use about 0.05).
    tv : float, default 0.2
    tv_beta : float, default 3.0
        Exponent of the total variation (the paper's beta = 3).
    mask_scale : int, default 4
        Upsampling factor of the mask (the paper learns 28 x 28 masks for 224 x 224
        images, a factor of 8).
    perturbation : {"blur", "constant", "noise"}, default "blur"
        ``p(x)``: a Gaussian blur of ``x`` (``blur_sigma``, default a tenth of the image
        side, the paper's sigma 10 on 224 pixels is 4.5 %), the constant ``fill``,
        or ``x`` plus seeded Gaussian noise of ``noise_std``.
    blur_sigma : float, optional
    fill : float, default 0.0
    noise_std : float, default 0.2
    jitter : int, default 2
        Maximum translation in pixels per step (0 switches jitter off).
    score : {"margin", "softmax", "logit", "log_softmax"} or callable, default "margin"
        The class score that is deleted. ``"margin"`` is the target logit minus the
        largest other logit, clamped below at ``margin_floor``: bounded like the paper's
        softmax probability (deletion stops once another class leads by
        ``-margin_floor``) but not saturated. The softmax (and log-softmax) gradient
        vanishes on confident models: on the digits CNN (p = 1.0000 in float32) the
        mask never leaves ``m = 1``.
    margin_floor : float, default -1.0
    seed : int, optional
        Seeds the jitter shifts and the noise draw; ``None`` uses seed 0, so every call
        gives the same mask.

    The result's ``raw`` is the low-resolution mask ``m`` (N, h, w); ``extras`` hold
    ``mask`` (N, 1, H, W, upsampled), ``score_deleted`` (the class score on the
    perturbed input without jitter, (N,)), ``score_clean`` and ``loss`` (N,).

    References
    ----------
    Fong, Vedaldi. Interpretable Explanations of Black Boxes by Meaningful Perturbation.
    ICCV 2017.

    Examples
    --------
    >>> import torch
    >>> from xadv.explainers import MeaningfulPerturbation
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
    ...                           torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 3))
    >>> e = MeaningfulPerturbation(steps=20)(net, torch.rand(2, 1, 8, 8), target=0)
    >>> e.attributions.shape, e.raw.shape
    (torch.Size([2, 1, 8, 8]), torch.Size([2, 2, 2]))
    """

    name = "meaningful_perturbation"

    def __init__(self, *, steps: int = 300, lr: float = 0.1, l1: float = 3.0, tv: float = 0.2,
                 tv_beta: float = 3.0, mask_scale: int = 4, perturbation: str = "blur",
                 blur_sigma: Optional[float] = None, fill: float = 0.0, noise_std: float = 0.2, jitter: int = 2,
                 score: Union[str, Any] = "margin", margin_floor: float = -1.0, seed: Optional[int] = None):
        self._init_common(steps, lr, mask_scale, perturbation, blur_sigma, fill, noise_std, jitter, score, seed)
        self.margin_floor = _check_number(margin_floor, "margin_floor", low=-math.inf)
        self.l1 = _check_number(l1, "l1")
        self.tv = _check_number(tv, "tv")
        self.tv_beta = _check_number(tv_beta, "tv_beta", strict=True)

    # ---------------------------------------------- pieces the attacks use
    def blend(self, x: torch.Tensor, m_low: torch.Tensor, base: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``m * x + (1 - m) * p(x)`` with the low-resolution mask ``m_low`` (N, 1, h, w)."""
        base = self.perturbed_copy(x) if base is None else base
        m = self.upsample(m_low, x.shape[-2:])
        return m * x + (1 - m) * base

    def objective(self, model, x: torch.Tensor, m_low: torch.Tensor, target: torch.Tensor,
                  shift=(0, 0), base: Optional[torch.Tensor] = None, floor: bool = True) -> torch.Tensor:
        """The per-sample loss (N,) minimised over ``m_low`` (N, 1, h, w); differentiable
        w.r.t. ``x``, ``m_low`` and the model's parameters. ``floor=False`` drops the
        clamp of the margin score (attacks differentiate through it: below the floor
        the clamped score does not depend on ``x``)."""
        z = self.jittered(self.blend(x, m_low, base), shift)
        return (self.l1 * (1 - m_low).abs().flatten(1).mean(1) + self.tv * total_variation(m_low, self.tv_beta)
                + self._score(model, z, target, floor))

    def optimize(self, model, x: torch.Tensor, target: torch.Tensor, init: Optional[torch.Tensor] = None,
                 steps: Optional[int] = None, start: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
        """Run Adam on the mask: returns ``(m_low, loss)`` (N, 1, h, w) and (N,), detached.

        ``init`` warm-starts from a mask (default all ones); ``steps`` defaults to the
        explainer's; ``start`` offsets the jitter schedule (the attacks continue it).
        """
        self._need_grad(x)
        steps = self.steps if steps is None else int(steps)
        h, w = self.mask_shape(x)
        x = x.detach()
        base = self.perturbed_copy(x)
        m = (torch.ones(x.shape[0], 1, h, w, dtype=x.dtype, device=x.device) if init is None
             else init.detach().clone()).requires_grad_(True)
        opt = torch.optim.Adam([m], lr=self.lr)
        shifts = self.shifts(start + steps, x.device)
        loss = None
        with torch.enable_grad():
            for t in range(steps):
                loss = self.objective(model, x, m, target, shifts[start + t], base)
                opt.zero_grad(set_to_none=True)
                (g,) = torch.autograd.grad(loss.sum(), m)
                m.grad = g
                opt.step()
                with torch.no_grad():
                    m.clamp_(0.0, 1.0)
        with torch.no_grad():
            loss = self.objective(model, x, m, target, (0, 0), base)
        return m.detach(), loss.detach()

    def _explain(self, model, x, target, create_graph) -> Explanation:
        x = x.detach()
        with torch.no_grad():
            out = forward(model, x)
        t = resolve_target(target, out)
        m_low, loss = self.optimize(model, x, t)
        with torch.no_grad():
            m_up = self.upsample(m_low, x.shape[-2:])
            deleted = self._score(model, self.blend(x, m_low), t)
            clean = self._select(out, t)
        extras: Dict[str, Any] = {"mask": m_up, "score_deleted": deleted, "score_clean": clean, "loss": loss}
        return self._result(x, t, out, m_low, 1 - m_up, extras)


class ExtremalPerturbation(_MaskExplainer):
    """Extremal perturbation (Fong, Patrick & Vedaldi, 2019): the region of a fixed area
    that keeps (or deletes) the most class evidence.

    Instead of trading area against score with a weight, the area is fixed to a
    fraction ``area`` of the image by the regulariser ``||sort(m) - r_a||^2`` (``r_a``
    is ``(1 - area) H W`` zeros followed by ``area H W`` ones), whose weight starts at
    ``area_weight`` and grows by ``area_growth`` per step as in TorchRay. ``preserve``
    maximises the class score of ``m * x + (1 - m) * p(x)``; ``delete`` minimises that
    of ``(1 - m) * x + m * p(x)``. SGD with momentum 0.9 (dampening 0.9) and ``lr``
    0.01 on the low-resolution mask, clipped to [0, 1], as TorchRay does. The
    attribution is the upsampled mask ``m`` (1 = the selected region).

    Differences from TorchRay: the mask is upsampled bilinearly (TorchRay uses a smooth
    max-convolution of Gaussian bumps, ``step`` 7 / ``sigma`` 21 on 224 pixels), the
    perturbation is one blurred copy (TorchRay interpolates a pyramid of 8 blur levels
    per pixel), and jitter is a translation (TorchRay flips every other step).

    Parameters
    ----------
    area : float, default 0.1
        Fraction of the image the mask selects, in (0, 1).
    variant : {"preserve", "delete"}, default "preserve"
    steps : int, default 800
    lr : float, default 0.01
    area_weight : float, default 10.0
        Start weight of the area term. TorchRay starts at 300 for 224-pixel ImageNet
        models; the balance with the reward depends on the model's gradient scale, and
        on a 16 x 16 planted-region model (tests) 300 lets the area term pin the mask
        before the reward has ranked the pixels (10 to 30 find the region, 100 and 300
        do not).
    area_growth : float, default 1.0035
    mask_scale, perturbation, blur_sigma, fill, noise_std, jitter, seed
        As in :class:`MeaningfulPerturbation`.
    score : {"logit", "softmax", "log_softmax"} or callable, default "logit"
        The reward (TorchRay's ``simple_reward`` is the logit).

    ``extras``: ``mask`` (N, 1, H, W), ``score_preserved`` (class score of ``x`` kept on
    the mask only) and ``score_deleted`` (with the mask's region deleted), ``area``
    (the mask's mean, N).

    References
    ----------
    Fong, Patrick, Vedaldi. Understanding Deep Networks via Extremal Perturbations and
    Smooth Masks. ICCV 2019.

    Examples
    --------
    >>> import torch
    >>> from xadv.explainers import ExtremalPerturbation
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
    ...                           torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 3))
    >>> e = ExtremalPerturbation(area=0.25, steps=20)(net, torch.rand(2, 1, 8, 8), target=1)
    >>> e.attributions.shape
    torch.Size([2, 1, 8, 8])
    """

    name = "extremal_perturbation"

    def __init__(self, *, area: float = 0.1, variant: str = "preserve", steps: int = 800, lr: float = 0.01,
                 area_weight: float = 10.0, area_growth: float = 1.0035, mask_scale: int = 4,
                 perturbation: str = "blur", blur_sigma: Optional[float] = None, fill: float = 0.0,
                 noise_std: float = 0.2, jitter: int = 2, score: Union[str, Any] = "logit", seed: Optional[int] = None):
        self._init_common(steps, lr, mask_scale, perturbation, blur_sigma, fill, noise_std, jitter, score, seed)
        a = _check_number(area, "area", strict=True)
        if not a < 1:
            raise ValueError(f"area must be a fraction in (0, 1), got {area!r}")
        self.area = a
        if variant not in ("preserve", "delete"):
            raise ValueError(f"variant must be 'preserve' or 'delete', got {variant!r}")
        self.variant = variant
        self.area_weight = _check_number(area_weight, "area_weight", strict=True)
        self.area_growth = _check_number(area_growth, "area_growth", low=1.0)

    def _explain(self, model, x, target, create_graph) -> Explanation:
        self._need_grad(x)
        x = x.detach()
        n, _, H, W = x.shape
        with torch.no_grad():
            out = forward(model, x)
        t = resolve_target(target, out)
        base = self.perturbed_copy(x)
        h, w = self.mask_shape(x)
        ref = torch.ones(H * W, dtype=x.dtype, device=x.device)
        ref[: int(H * W * (1 - self.area))] = 0
        m = torch.ones(n, 1, h, w, dtype=x.dtype, device=x.device).requires_grad_(True)
        opt = torch.optim.SGD([m], lr=self.lr, momentum=0.9, dampening=0.9)
        shifts = self.shifts(self.steps, x.device)
        weight = self.area_weight
        sign = 1.0 if self.variant == "preserve" else -1.0
        with torch.enable_grad():
            for s in range(self.steps):
                mu = self.upsample(m, (H, W))
                keep = mu if self.variant == "preserve" else 1 - mu
                z = self.jittered(keep * x + (1 - keep) * base, shifts[s])
                reward = sign * self._score(model, z, t)
                regul = weight * (mu.flatten(1).sort(dim=1).values - ref).pow(2).mean(1)
                (g,) = torch.autograd.grad((regul - reward).sum(), m)
                m.grad = g
                opt.step()
                with torch.no_grad():
                    m.clamp_(0.0, 1.0)
                weight *= self.area_growth
        with torch.no_grad():
            m_low = m.detach()
            mu = self.upsample(m_low, (H, W))
            kept = self._score(model, mu * x + (1 - mu) * base, t)
            deleted = self._score(model, (1 - mu) * x + mu * base, t)
        extras = {"mask": mu, "score_preserved": kept, "score_deleted": deleted, "area": mu.flatten(1).mean(1),
                  "score_clean": self._select(out, t)}
        return self._result(x, t, out, m_low, mu, extras)
