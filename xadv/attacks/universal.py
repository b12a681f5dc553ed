"""Model-level (universal) attacks: class-visualisation perturbations, data-free
GD-UAP perturbations and adversarial patches.

Each is fitted once per model (``fit``) and then applied to any batch:
``attack(model, x, y)`` fits on first use when nothing was fitted, and returns an
AttackResult for the batch; ``queries`` per sample are 0 at application time
(the fitting cost is in ``extras["fit_queries"]``).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from .._model import preserved
from .._validation import check_bounds, check_inputs, check_model, check_positive_int, find_module, resolve_target
from ..explainers import Explainer
from ..explainers.base import forward
from .base import Attack, AttackContext, QueryCounter, check_nonneg, check_norm, make_generator, project
from .gradient import resolve_explainer


class _Universal(Attack):
    perturbation_: Optional[torch.Tensor] = None
    fit_queries_: int = 0

    def _fitted_for(self, x: torch.Tensor) -> bool:
        p = self.perturbation_
        return p is not None and tuple(p.shape[1:]) == tuple(x.shape[1:])

    #: one perturbation for the whole batch: never split into per-sample runs
    per_sample_runs = False

    def __call__(self, model, x, y=None, **options):
        """Apply the universal perturbation to ``x``; ``y`` defaults to the target class
        (targeted) or the model's predictions (untargeted, i.e. the fooling rate).
        ``options`` as for every attack (``output``, ``forward_args``, ``perturb``)."""
        if y is None and self.targeted:
            y = self.target
        return super().__call__(model, x, y, **options)

    def _ensure_fit(self, model, x):
        if not self._fitted_for(x):
            self.fit(model, x[:1])

    def _count_fit(self, model, fn):
        check_model(model)
        with preserved(model, freeze=True):
            counter = QueryCounter(model)
            try:
                out = fn(counter.wrapped)
            finally:
                counter.close()
        self.fit_queries_ = counter.rows
        return out


class ClassVisualizationPerturbation(_Universal):
    """Targeted universal perturbation from the class visualisation of ``target``.

    Activation maximisation (Simonyan et al.) finds ``x' = argmax_v S_t(clip(p + v)) -
    reg * R(v)`` with ``R`` the squared L2 norm (``regularizer="l2"``) or the Linf norm,
    by projected steepest ascent inside the ball of radius ``eps / lambda``, on the
    model alone: ``p`` is a constant image or, with ``base="range"``, fresh uniform
    pseudo-inputs every step (no data). The attack returns ``clip(x + lambda * x')``
    (survey eq. 17), ``lambda = scale`` (default 1).

    Parameters
    ----------
    target : int
        Class the perturbation pushes towards.
    norm : {"linf", "l2"}, default "linf"
    eps : float, default 0.2
    steps : int, default 200
    lr : float, default 0.05
        Step as a fraction of the radius.
    reg : float, default 1e-3
    regularizer : {"l2", "linf"}, default "l2"
    score : {"logit", "log_softmax"}, default "logit"
    base : {"range", "zeros", "mid"} or float, default "range"
        Pseudo-inputs ``p``: uniform noise in ``bounds`` (the range prior of GD-UAP),
        ``bounds[0]``, the middle of ``bounds``, or a constant.
    n_samples : int, default 16
        Pseudo-inputs per step for ``base="range"``.
    scale : float, optional
        ``lambda`` (default 1); ``x'`` is optimised in the ball of radius ``eps / lambda``.
    bounds : (float, float), default (0, 1)
    seed : int, optional
        For ``base="range"``.

    ``perturbation_`` (1, ...) after ``fit``. ``attack(model, x)`` uses ``target`` for
    every sample (``y`` may be omitted); success means the target was reached.

    References
    ----------
    Simonyan, Vedaldi, Zisserman. Deep Inside Convolutional Networks. ICLR-W 2014.
    Liu et al. Adversarial Attacks and Defenses: An Interpretation Perspective. 2020 (eq. 17).

    Examples
    --------
    >>> import torch, xadv.attacks
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> atk = xadv.attacks.ClassVisualizationPerturbation(target=2, eps=0.1, steps=20)
    >>> res = atk(net, torch.rand(4, 1, 4, 4))
    >>> bool((res.norms["linf"] <= 0.1 + 1e-6).all()), res.y.tolist()
    (True, [2, 2, 2, 2])
    """

    def __init__(self, target: int, norm: str = "linf", eps: float = 0.2, steps: int = 200, lr: float = 0.05,
                 reg: float = 1e-3, regularizer: str = "l2", score: str = "logit",
                 base: Union[str, float] = "range", n_samples: int = 16, scale: Optional[float] = None,
                 bounds: Tuple[float, float] = (0.0, 1.0), seed: Optional[int] = None):
        if isinstance(target, bool) or not isinstance(target, int) or target < 0:
            raise ValueError(f"target must be a class index (int >= 0), got {target!r}")
        self.target = target
        self.norm = check_norm(norm, ("linf", "l2"))
        self.eps = check_nonneg(eps, "eps")
        self.steps = check_positive_int(steps, "steps")
        self.lr = check_nonneg(lr, "lr")
        self.reg = check_nonneg(reg, "reg")
        if regularizer not in ("l2", "linf"):
            raise ValueError(f"regularizer must be 'l2' or 'linf', got {regularizer!r}")
        self.regularizer = regularizer
        if score not in ("logit", "log_softmax"):
            raise ValueError(f"score must be 'logit' or 'log_softmax', got {score!r}")
        self.score = score
        if not (base in ("range", "zeros", "mid") or (isinstance(base, (int, float)) and not isinstance(base, bool))):
            raise ValueError(f"base must be 'range', 'zeros', 'mid' or a number, got {base!r}")
        self.base = base
        self.n_samples = check_positive_int(n_samples, "n_samples")
        self.seed = seed
        self.scale = None if scale is None else check_nonneg(scale, "scale")
        self.bounds = check_bounds(bounds)
        self.targeted = True

    def _base(self, like: torch.Tensor) -> torch.Tensor:
        lo, hi = self.bounds
        v = lo if self.base == "zeros" else (0.5 * (lo + hi) if self.base == "mid" else float(self.base))
        return torch.full_like(like, v)

    def fit(self, model, x: torch.Tensor) -> torch.Tensor:
        """Compute the class visualisation for inputs shaped like ``x[0]`` (values unused)."""
        check_inputs(x, model)
        lo, hi = self.bounds
        gen = make_generator(self.seed, None, x.device)
        budget = self.eps if self.scale is None else self.eps / max(self.scale, 1e-12)

        def run(m):
            shape = (1,) + tuple(x.shape[1:])
            v = torch.zeros(shape, device=x.device, dtype=x.dtype)
            for _ in range(self.steps):
                if self.base == "range":
                    p = lo + (hi - lo) * torch.rand((self.n_samples,) + shape[1:], generator=gen,
                                                    device=x.device, dtype=x.dtype)
                else:
                    p = self._base(v)
                vi = v.clone().requires_grad_(True)
                with torch.enable_grad():
                    out = forward(m, (p + vi).clamp(lo, hi))
                    if self.target >= out.shape[1]:
                        raise ValueError(f"target {self.target} out of range: the model has {out.shape[1]} classes")
                    sc = F.log_softmax(out, 1) if self.score == "log_softmax" else out
                    s = sc[:, self.target].mean()
                    r = vi.pow(2).sum() if self.regularizer == "l2" else vi.abs().max()
                    (g,) = torch.autograd.grad(s - self.reg * r, vi)
                with torch.no_grad():
                    step = g.sign() if self.norm == "linf" else g / g.norm().clamp_min(1e-12)
                    v = project(v + self.lr * budget * step, self.norm, budget)
            return v

        xv = self._count_fit(model, run)
        self.visualization_ = xv
        lam = 1.0 if self.scale is None else self.scale
        self.perturbation_ = project(lam * xv, self.norm, self.eps)
        return self.perturbation_

    def _attack(self, ctx: AttackContext) -> Tuple[torch.Tensor, Dict[str, Any]]:
        self._ensure_fit(ctx.model, ctx.x)
        ctx.counter.take()
        lo, hi = self.bounds
        return (ctx.x + self.perturbation_).clamp(lo, hi), {"fit_queries": self.fit_queries_,
                                                           "perturbation": self.perturbation_}


def _default_layers(model: torch.nn.Module) -> List[torch.nn.Module]:
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv1d))]
    if not layers:
        layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][:-1]
    if not layers:
        raise ValueError("the model has no Conv or hidden Linear layer; pass layers= (names or modules)")
    return layers


class DataFreeUAP(_Universal):
    """Data-free untargeted universal perturbation (GD-UAP, Mopuri et al., 2018).

    Maximises ``sum_l log ||A_l(p + delta)||_2`` over the ``eps`` ball, where ``A_l``
    are mid-layer activations (default: every convolution's output) and ``p`` are
    pseudo-inputs: uniform noise in ``bounds`` (``prior="range"``, the range prior)
    or the middle of ``bounds`` (``prior="none"``). No data is used; the resulting
    ``delta`` is added to any input. Success (fooling) means the prediction changed
    from ``y`` (default: the clean prediction).

    Parameters
    ----------
    norm : {"linf", "l2"}, default "linf"
    eps : float, default 0.2
    steps : int, default 200
    lr : float, default 0.1
        Adam step size (relative to ``eps``: the optimiser works on ``delta / eps``).
    layers : sequence of str or nn.Module, optional
    prior : {"range", "none"}, default "range"
    n_samples : int, default 16
        Pseudo-inputs per step for the range prior.
    bounds : (float, float), default (0, 1)
    seed : int, optional; generator : torch.Generator, optional

    References
    ----------
    Mopuri, Ganeshan, Babu. Generalizable Data-free Objective for Crafting Universal
    Adversarial Perturbations. TPAMI 2018.

    Examples
    --------
    >>> import torch, xadv.attacks
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> atk = xadv.attacks.DataFreeUAP(eps=0.1, steps=10, seed=0)
    >>> bool((atk(net, torch.rand(3, 1, 4, 4)).norms["linf"] <= 0.1 + 1e-6).all())
    True
    """

    def __init__(self, norm: str = "linf", eps: float = 0.2, steps: int = 200, lr: float = 0.1,
                 layers: Optional[Sequence[Union[str, torch.nn.Module]]] = None, prior: str = "range",
                 n_samples: int = 16, bounds: Tuple[float, float] = (0.0, 1.0), seed: Optional[int] = None,
                 generator: Optional[torch.Generator] = None):
        self.norm = check_norm(norm, ("linf", "l2"))
        self.eps = check_nonneg(eps, "eps")
        self.steps = check_positive_int(steps, "steps")
        self.lr = check_nonneg(lr, "lr")
        self.layers = layers
        if prior not in ("range", "none"):
            raise ValueError(f"prior must be 'range' or 'none', got {prior!r}")
        self.prior = prior
        self.n_samples = check_positive_int(n_samples, "n_samples")
        self.bounds = check_bounds(bounds)
        self.seed = seed
        self.generator = generator
        self.targeted = False

    def fit(self, model, x: torch.Tensor) -> torch.Tensor:
        """Optimise the perturbation for inputs shaped like ``x[0]`` (values unused)."""
        check_inputs(x, model)
        if not isinstance(model, torch.nn.Module):
            raise TypeError("DataFreeUAP needs an nn.Module (it reads mid-layer activations)")
        mods = _default_layers(model) if self.layers is None else [find_module(model, m) for m in self.layers]
        lo, hi = self.bounds
        gen = make_generator(self.seed, self.generator, x.device)

        # half precision (float16/bfloat16): Adam's state and the log-norms underflow or overflow
        # there (NaN perturbations), so the perturbation and the loss live in float32 and only
        # the model's forward pass runs in its own dtype
        work = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype

        def run(m):
            acts: List[torch.Tensor] = []
            hooks = [mod.register_forward_hook(lambda _m, _i, o: acts.append(o)) for mod in mods]
            try:
                shape = (1,) + tuple(x.shape[1:])
                kw = dict(generator=gen, device=x.device, dtype=work)
                z = ((torch.rand(shape, **kw) * 2 - 1)).requires_grad_(True)  # delta / eps
                opt = torch.optim.Adam([z], lr=self.lr)
                for _ in range(self.steps):
                    if self.prior == "range":
                        p = lo + (hi - lo) * torch.rand((self.n_samples,) + shape[1:], **kw)
                    else:
                        p = torch.full(shape, 0.5 * (lo + hi), device=x.device, dtype=work)
                    acts.clear()
                    with torch.enable_grad():
                        delta = project(z * self.eps, self.norm, self.eps)
                        forward(m, (p + delta).clamp(lo, hi).to(x.dtype))
                        loss = -sum(torch.log(a.reshape(a.shape[0], -1).float().norm(dim=1) + 1e-12).mean()
                                    for a in acts)
                        opt.zero_grad()
                        (g,) = torch.autograd.grad(loss, z)
                    z.grad = g
                    opt.step()
                    with torch.no_grad():
                        z.copy_(project(z * self.eps, self.norm, self.eps) / self.eps)
                return project(z.detach() * self.eps, self.norm, self.eps).to(x.dtype)
            finally:
                for h in hooks:
                    h.remove()

        self.perturbation_ = self._count_fit(model, run)
        return self.perturbation_

    def _attack(self, ctx: AttackContext) -> Tuple[torch.Tensor, Dict[str, Any]]:
        self._ensure_fit(ctx.model, ctx.x)
        ctx.counter.take()
        lo, hi = self.bounds
        return (ctx.x + self.perturbation_).clamp(lo, hi), {"fit_queries": self.fit_queries_,
                                                           "perturbation": self.perturbation_}


class AdversarialPatch(_Universal):
    """Universal adversarial patch (Brown et al., 2017; survey eq. 5): a square that
    *replaces* a region of the input, trained over random placements.

    ``fit(model, x_train)`` optimises the patch with Adam so that, pasted at uniformly
    random locations of training images, the model predicts ``target`` (targeted) or
    not the true class (``target=None``). Applying it, ``placement`` chooses where:
    ``"random"`` (seeded), ``"saliency"`` (the window of the explanation map with
    the largest total attribution: the model's evidence is covered and replaced),
    ``"center"``, or a fixed ``(row, col)``.

    Parameters
    ----------
    size : int or float, default 0.25
        Side in pixels, or as a fraction of the image side.
    target : int, optional
        Target class; ``None`` trains an untargeted patch.
    steps : int, default 300
    lr : float, default 0.05
    batch_size : int, default 32
    placement : {"random", "saliency", "center"} or (int, int), default "random"
    explainer : Explainer or str, default "saliency"
        For ``placement="saliency"`` (``"gradcam"`` works too); the map is reduced by
        absolute value over channels.
    bounds : (float, float), default (0, 1)
    seed : int, optional; generator : torch.Generator, optional

    ``extras["locations"]`` gives the (row, col) used per sample.

    References
    ----------
    Brown, Mané, Roy, Abadi, Gilmer. Adversarial Patch. 2017.
    Liu et al. Adversarial Attacks and Defenses: An Interpretation Perspective. 2020 (eq. 5).

    Examples
    --------
    >>> import torch, xadv.attacks
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    >>> atk = xadv.attacks.AdversarialPatch(size=3, target=1, steps=5, seed=0)
    >>> _ = atk.fit(net, torch.rand(8, 1, 8, 8))
    >>> res = atk(net, torch.rand(2, 1, 8, 8), 1)
    >>> int(res.norms["l0"].max()) <= 9
    True
    """

    def __init__(self, size: Union[int, float] = 0.25, target: Optional[int] = None, steps: int = 300,
                 lr: float = 0.05, batch_size: int = 32, placement: Union[str, Tuple[int, int]] = "random",
                 explainer: Union[Explainer, str] = "saliency", bounds: Tuple[float, float] = (0.0, 1.0),
                 seed: Optional[int] = None, generator: Optional[torch.Generator] = None):
        if isinstance(size, bool) or not isinstance(size, (int, float)) or size <= 0 or \
                (isinstance(size, float) and size > 1):
            raise ValueError(f"size must be pixels (int >= 1) or a fraction in (0, 1], got {size!r}")
        self.size = size
        if target is not None and (isinstance(target, bool) or not isinstance(target, int) or target < 0):
            raise ValueError(f"target must be None or a class index, got {target!r}")
        self.target = target
        self.steps = check_positive_int(steps, "steps")
        self.lr = check_nonneg(lr, "lr")
        self.batch_size = check_positive_int(batch_size, "batch_size")
        if not (placement in ("random", "saliency", "center") or
                (isinstance(placement, tuple) and len(placement) == 2)):
            raise ValueError(f"placement must be 'random', 'saliency', 'center' or (row, col), got {placement!r}")
        self.placement = placement
        self.explainer = resolve_explainer(explainer)
        self.bounds = check_bounds(bounds)
        self.seed = seed
        self.generator = generator
        self.targeted = target is not None

    def side(self, x: torch.Tensor) -> int:
        if x.dim() != 4:
            raise ValueError(f"AdversarialPatch needs (N, C, H, W) images, got shape {tuple(x.shape)}")
        h, w = x.shape[2:]
        s = self.size if isinstance(self.size, int) else max(1, int(round(self.size * min(h, w))))
        if s > min(h, w):
            raise ValueError(f"patch side {s} is larger than the image ({h}x{w})")
        return s

    @staticmethod
    def apply(x: torch.Tensor, patch: torch.Tensor, locations: torch.Tensor) -> torch.Tensor:
        """Paste ``patch`` (C, s, s) into ``x`` (N, C, H, W) at ``locations`` (N, 2) (top-left).
        Differentiable w.r.t. ``patch``."""
        n, c, h, w = x.shape
        s = patch.shape[-1]
        rows = torch.arange(h, device=x.device)
        cols = torch.arange(w, device=x.device)
        r0, c0 = locations[:, 0], locations[:, 1]
        in_r = (rows[None] >= r0[:, None]) & (rows[None] < r0[:, None] + s)  # (N, H)
        in_c = (cols[None] >= c0[:, None]) & (cols[None] < c0[:, None] + s)  # (N, W)
        mask = (in_r[:, :, None] & in_c[:, None, :])[:, None]  # (N, 1, H, W)
        ri = (rows[None] - r0[:, None]).clamp(0, s - 1)
        ci = (cols[None] - c0[:, None]).clamp(0, s - 1)
        canvas = patch[:, ri[:, :, None], ci[:, None, :]].permute(1, 0, 2, 3)  # (N, C, H, W)
        return torch.where(mask, canvas, x)

    def _random_locations(self, n, h, w, s, gen, device):
        r = torch.randint(0, h - s + 1, (n,), generator=gen, device=device)
        c = torch.randint(0, w - s + 1, (n,), generator=gen, device=device)
        return torch.stack([r, c], 1)

    def fit(self, model, x: torch.Tensor, y=None) -> torch.Tensor:
        """Train the patch on images ``x`` (labels ``y`` for an untargeted patch;
        default the model's predictions). Returns ``perturbation_`` (C, s, s)."""
        check_inputs(x, model)
        s = self.side(x)
        lo, hi = self.bounds
        n, c, h, w = x.shape
        gen = make_generator(self.seed, self.generator, x.device)
        x = x.detach()

        def run(m):
            with torch.no_grad():
                out0 = forward(m, x)
            labels = resolve_target(y, out0)
            if self.target is not None and self.target >= out0.shape[1]:
                raise ValueError(f"target {self.target} out of range: the model has {out0.shape[1]} classes "
                                 f"(0..{out0.shape[1] - 1})")
            patch = (lo + (hi - lo) * torch.rand((c, s, s), generator=gen, device=x.device,
                                                 dtype=x.dtype)).requires_grad_(True)
            opt = torch.optim.Adam([patch], lr=self.lr)
            for _ in range(self.steps):
                b = torch.randint(0, n, (min(self.batch_size, n),), generator=gen, device=x.device)
                loc = self._random_locations(b.numel(), h, w, s, gen, x.device)
                with torch.enable_grad():
                    xp = self.apply(x[b], patch, loc)
                    out = forward(m, xp)
                    if self.target is not None:
                        loss = F.cross_entropy(out, torch.full_like(b, self.target))
                    else:
                        loss = -F.cross_entropy(out, labels[b])
                    loss = loss + self._extra_loss(m, xp, loc, s, out)
                    (g,) = torch.autograd.grad(loss, patch)
                patch.grad = g
                opt.step()
                with torch.no_grad():
                    patch.clamp_(lo, hi)
            return patch.detach()

        self.perturbation_ = self._count_fit(model, run)
        return self.perturbation_

    def _extra_loss(self, model, xp: torch.Tensor, loc: torch.Tensor, s: int, out: torch.Tensor):
        """A further term of the training loss (0 here; :class:`GradCAMHidingPatch` adds one)."""
        return 0.0

    @staticmethod
    def region(x: torch.Tensor, loc: torch.Tensor, s: int) -> torch.Tensor:
        """(N, H, W) bool: the pixels an ``s x s`` patch at ``loc`` (N, 2) covers."""
        h, w = x.shape[-2:]
        rows = torch.arange(h, device=x.device)
        cols = torch.arange(w, device=x.device)
        in_r = (rows[None] >= loc[:, 0:1]) & (rows[None] < loc[:, 0:1] + s)
        in_c = (cols[None] >= loc[:, 1:2]) & (cols[None] < loc[:, 1:2] + s)
        return in_r[:, :, None] & in_c[:, None, :]
    def _fitted_for(self, x):
        p = self.perturbation_
        return p is not None and p.shape[0] == x.shape[1] and p.shape[-1] == self.side(x)

    def locations(self, model, x: torch.Tensor, gen=None) -> torch.Tensor:
        """(N, 2) top-left corners for ``x`` under the configured ``placement``."""
        n, _, h, w = x.shape
        s = self.side(x)
        if self.placement == "random":
            return self._random_locations(n, h, w, s, gen, x.device)
        if self.placement == "center":
            return torch.tensor([[(h - s) // 2, (w - s) // 2]], device=x.device).expand(n, 2).clone()
        if isinstance(self.placement, tuple):
            r, c = int(self.placement[0]), int(self.placement[1])
            if not (0 <= r <= h - s and 0 <= c <= w - s):
                raise ValueError(f"placement {self.placement} puts the {s}x{s} patch outside the {h}x{w} image")
            return torch.tensor([[r, c]], device=x.device).expand(n, 2).clone()
        e = self.explainer._explain(model, x, None, False)
        m = e.saliency_map("abs")[:, None]  # (N, 1, H, W)
        win = F.avg_pool2d(m, s, stride=1)  # (N, 1, H-s+1, W-s+1)
        flat = win.reshape(n, -1).argmax(1)
        return torch.stack([flat // win.shape[-1], flat % win.shape[-1]], 1)

    def _attack(self, ctx: AttackContext) -> Tuple[torch.Tensor, Dict[str, Any]]:
        if not self._fitted_for(ctx.x):
            raise ValueError("fit the patch first: attack.fit(model, x_train) (it needs training images)")
        gen = make_generator(self.seed, self.generator, ctx.x.device)
        loc = self.locations(ctx.model, ctx.x, gen)
        ctx.charge()
        return self.apply(ctx.x, self.perturbation_, loc), {"locations": loc, "fit_queries": self.fit_queries_,
                                                            "placement": self.placement}


def gradcam_mass(explainer: Explainer, model, x: torch.Tensor, region: torch.Tensor, target: torch.Tensor,
                 create_graph: bool = False) -> torch.Tensor:
    """Share of the (ReLU'd, upsampled) Grad-CAM map of ``target`` that lies in
    ``region`` (N, H, W): shape (N,), in [0, 1]; differentiable with ``create_graph``."""
    e = explainer(model, x, target, create_graph=create_graph)
    cam = e.attributions[:, 0].clamp_min(0)
    return (cam * region).flatten(1).sum(1) / cam.flatten(1).sum(1).clamp_min(1e-12)


class GradCAMHidingPatch(AdversarialPatch):
    """An adversarial patch that Grad-CAM does not point at (Subramanya, Pillai &
    Pirsiavash, 2019).

    Trained like :class:`AdversarialPatch` (Adam on the training images, at random
    placements, or at the fixed ``placement=(row, col)`` it will be applied at, as in
    the paper's corner patches) with the loss

    ``CE(f(x_patched), target) + lam * mass_in_patch(GradCAM_target(x_patched))``

    where ``mass_in_patch`` is the share of the target class's Grad-CAM map (ReLU'd,
    upsampled to the image) inside the patch; the map is computed with
    ``create_graph=True`` so the second term is differentiated through Grad-CAM. The
    patch then causes the targeted misclassification while the explanation of the
    target points elsewhere, so an analyst reading Grad-CAM does not find the patch.

    Parameters
    ----------
    size, steps, lr, batch_size, placement, bounds, seed, generator
        As in :class:`AdversarialPatch`.
    target : int
        The target class (required: the paper's patches are targeted).
    lam : float, default 1.0
        Weight of the Grad-CAM mass term (the cross-entropy is in nats, the mass in [0, 1]).
    gradcam : Explainer or str, default "gradcam"
        The explainer whose mass is hidden; any differentiable explainer works.

    ``extras["gradcam_mass_in_patch"]`` (N,) is measured on the applied patches.

    References
    ----------
    Subramanya, Pillai, Pirsiavash. Fooling Network Interpretation in Image
    Classification. ICCV 2019.

    Examples
    --------
    >>> import torch, xadv.attacks
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
    ...                           torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 3))
    >>> atk = xadv.attacks.GradCAMHidingPatch(size=3, target=1, steps=5, seed=0)
    >>> _ = atk.fit(net, torch.rand(8, 1, 8, 8))
    >>> res = atk(net, torch.rand(2, 1, 8, 8), 1)
    >>> res.extras["gradcam_mass_in_patch"].shape
    torch.Size([2])
    """

    def __init__(self, size: Union[int, float] = 0.25, target: Optional[int] = None, steps: int = 300,
                 lr: float = 0.05, batch_size: int = 32, placement: Union[str, Tuple[int, int]] = "random",
                 lam: float = 1.0, gradcam: Union[Explainer, str] = "gradcam",
                 bounds: Tuple[float, float] = (0.0, 1.0), seed: Optional[int] = None,
                 generator: Optional[torch.Generator] = None):
        if target is None:
            raise ValueError("GradCAMHidingPatch is targeted: give target= (the class the patch causes)")
        super().__init__(size=size, target=target, steps=steps, lr=lr, batch_size=batch_size, placement=placement,
                         explainer="saliency", bounds=bounds, seed=seed, generator=generator)
        self.lam = check_nonneg(lam, "lam")
        self.gradcam = resolve_explainer(gradcam)
        if not self.gradcam.differentiable:
            raise TypeError(f"{type(self.gradcam).__name__} is not differentiable; the hiding term needs "
                            f"create_graph=True (use gradcam or another differentiable explainer)")

    def _random_locations(self, n, h, w, s, gen, device):
        if isinstance(self.placement, tuple):   # trained where it will be applied, as in the paper
            return torch.tensor([[int(self.placement[0]), int(self.placement[1])]], device=device).expand(n, 2)
        return super()._random_locations(n, h, w, s, gen, device)

    def _extra_loss(self, model, xp, loc, s, out):
        if self.lam == 0:
            return 0.0
        t = torch.full((xp.shape[0],), self.target, dtype=torch.long, device=xp.device)
        region = self.region(xp, loc, s).to(xp.dtype)
        return self.lam * gradcam_mass(self.gradcam, model, xp, region, t, create_graph=True).mean()

    def _attack(self, ctx: AttackContext) -> Tuple[torch.Tensor, Dict[str, Any]]:
        x_adv, extras = super()._attack(ctx)
        loc = extras["locations"]
        t = torch.full((x_adv.shape[0],), self.target, dtype=torch.long, device=x_adv.device)
        region = self.region(x_adv, loc, self.perturbation_.shape[-1]).to(x_adv.dtype)
        extras["gradcam_mass_in_patch"] = gradcam_mass(self.gradcam, ctx.model, x_adv, region, t).detach()
        return x_adv, extras
