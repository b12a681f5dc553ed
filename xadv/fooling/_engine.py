"""The shared engine of input-space fooling attacks.

An attack is this loop plus a per-sample loss on the explanation:

1. the explanation of the current inputs is computed on a softplus copy of the
   model (``xadv.nn.smooth_relu``: ``nn.ReLU`` and ``nn.ReLU6`` modules smoothed;
   relus applied functionally cannot be and are reported with a
   ``SmoothingWarning``) with ``create_graph=True``;
2. one signed-gradient (or Adam) step is taken, projected on the L-inf ball
   around ``x`` and on ``bounds``;
3. the candidate is checked on the ORIGINAL model: the explanation and the
   prediction come from the real (ReLU) network; a step that changes the
   prediction is rejected and that sample's step size is halved;
4. per sample, the best accepted iterate (by the attack's criterion measured on
   the original model) is returned.
"""
from __future__ import annotations

import copy
import math
import warnings
from typing import Any, Dict, Optional, Tuple, Union

import torch
from .._progress import bar as progress_bar
from .._validation import checked_inputs

from .._model import preserved
from .._validation import check_bounds, check_inputs, check_model, check_positive_int
from ..explainers import Explainer, get as get_explainer
from ..explanation import Explanation
from ..metrics.similarity import similarities
from ..nn import SmoothingWarning, count_functional_relus, has_smoothable, is_smoothed_relu, smooth_relu
from ..results import FoolingResult

BetaLike = Union[float, Tuple[float, float], None]
PoolBetaLike = Union[float, Tuple[float, float], None]


def resolve_explainer(explainer: Union[str, Explainer]) -> Explainer:
    if isinstance(explainer, Explainer):
        return explainer
    if isinstance(explainer, str):
        return get_explainer(explainer)
    raise TypeError(f"explainer must be a registry name or an xadv Explainer, got {type(explainer).__name__}")


def bind_explainer(explainer: Explainer, model: torch.nn.Module) -> Explainer:
    """A copy of ``explainer`` that works on deep copies of ``model``: layers given
    as module objects (Grad-CAM) are replaced by their dotted names."""
    layer = getattr(explainer, "layer", None)
    base = getattr(explainer, "base", None)
    members = getattr(explainer, "explainers", None)
    if not isinstance(layer, torch.nn.Module) and not isinstance(base, Explainer) and members is None:
        return explainer
    e = copy.copy(explainer)
    if isinstance(layer, torch.nn.Module):
        names = [n for n, m in model.named_modules() if m is layer]
        if not names:
            raise ValueError("the explainer's layer is not a submodule of the attacked model")
        e.layer = names[0]
    if isinstance(base, Explainer):
        e.base = bind_explainer(base, model)
    if members is not None:
        e.explainers = [bind_explainer(m, model) for m in members]
    return e


def check_explainer_differentiable(explainer: Explainer) -> None:
    if not explainer.differentiable:
        raise TypeError(
            f"{type(explainer).__name__} is not differentiable; fooling attacks need create_graph=True "
            f"(use saliency, input_x_gradient, integrated_gradients, smoothgrad with seed=, or gradcam)"
        )


_SCHEDULES = ("constant", "cosine", "step")


def _decay(schedule: str, t: int, steps: int) -> float:
    """Step-size multiplier at step ``t`` of ``steps``: 1, a cosine from 1 to 0.05, or
    /10 at 50 % and 75 % of the steps."""
    if schedule == "constant" or steps <= 1:
        return 1.0
    if schedule == "cosine":
        return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * t / (steps - 1)))
    return 1.0 if t < steps // 2 else (0.1 if t < (3 * steps) // 4 else 0.01)


def beta_schedule(beta: BetaLike, steps: int) -> Optional[list]:
    """Per-step softplus beta: constant, or geometric from ``beta[0]`` to ``beta[1]``."""
    if beta is None:
        return None
    if isinstance(beta, (tuple, list)):
        if len(beta) != 2:
            raise ValueError(f"beta must be a number or a pair (start, end), got {beta!r}")
        b0, b1 = float(beta[0]), float(beta[1])
    else:
        b0 = b1 = float(beta)
    if not (b0 > 0 and b1 > 0):
        raise ValueError(f"beta must be positive, got {beta!r}")
    if steps == 1:
        return [b1]
    return [b0 * (b1 / b0) ** (t / (steps - 1)) for t in range(steps)]


def pool_schedule(pool_beta, betas: list) -> Optional[list]:
    """Per-step inverse temperature of the softmax pooling of the smooth copy.

    ``None``: max pooling is kept. A number: the start value, sharpened in proportion
    to the softplus ``beta`` (``pool_beta * betas[t] / betas[0]``). A pair
    ``(start, end)``: geometric from ``start`` to ``end`` over the steps.
    """
    if pool_beta is None:
        return None
    if isinstance(pool_beta, (tuple, list)):
        if len(pool_beta) != 2:
            raise ValueError(f"pool_beta must be a number, a pair (start, end) or None, got {pool_beta!r}")
        p0, p1 = float(pool_beta[0]), float(pool_beta[1])
        if not (p0 > 0 and p1 > 0):
            raise ValueError(f"pool_beta must be positive or None, got {pool_beta!r}")
        n = len(betas)
        return [p0 * (p1 / p0) ** (t / (n - 1)) for t in range(n)] if n > 1 else [p1]
    p = float(pool_beta)
    if not p > 0:
        raise ValueError(f"pool_beta must be positive or None, got {pool_beta!r}")
    return [p * b / betas[0] for b in betas]


class SoftMaxPool2d(torch.nn.Module):
    """Max pooling smoothed by a softmax over each window: ``sum softmax(beta p) p``.

    Tends to ``nn.MaxPool2d`` as ``beta`` grows. Max pooling switches between
    inputs like ReLU does, so its second derivative vanishes too; fooling attacks
    replace it in their smooth copy of the model.
    """

    def __init__(self, pool: torch.nn.MaxPool2d, beta: float):
        super().__init__()
        pair = torch.nn.modules.utils._pair
        self.kernel_size, self.stride, self.padding = pair(pool.kernel_size), pair(pool.stride or pool.kernel_size), \
            pair(pool.padding)
        self.beta = float(beta)

    @staticmethod
    def supports(pool: torch.nn.MaxPool2d) -> bool:
        return (not pool.ceil_mode and not pool.return_indices
                and torch.nn.modules.utils._pair(pool.dilation) == (1, 1))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        n, c, h, w = a.shape
        kh, kw = self.kernel_size
        ph, pw = self.padding
        if ph or pw:
            a = torch.nn.functional.pad(a, (pw, pw, ph, ph), value=float(a.detach().min()) - 1e4)
        p = torch.nn.functional.unfold(a, self.kernel_size, stride=self.stride)
        oh = (h + 2 * ph - kh) // self.stride[0] + 1
        ow = (w + 2 * pw - kw) // self.stride[1] + 1
        p = p.view(n, c, kh * kw, oh * ow)
        wts = torch.softmax(self.beta * p, dim=2)
        return (wts * p).sum(2).view(n, c, oh, ow)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, beta={self.beta}"


def smooth_pools(module: torch.nn.Module, beta: float) -> int:
    """Replace every supported ``nn.MaxPool2d`` in ``module`` (in place) by :class:`SoftMaxPool2d`."""
    count = 0
    for name, child in module.named_children():
        if type(child) is torch.nn.MaxPool2d and SoftMaxPool2d.supports(child):
            setattr(module, name, SoftMaxPool2d(child, beta))
            count += 1
        else:
            count += smooth_pools(child, beta)
    return count


def set_beta(twin: torch.nn.Module, beta: float, pool_beta: Optional[float] = None) -> None:
    """Set the beta of the smoothed relus of ``twin`` (the model's own Softplus modules keep theirs)."""
    for m in twin.modules():
        if is_smoothed_relu(m):
            m.beta = beta
        elif isinstance(m, SoftMaxPool2d) and pool_beta is not None:
            m.beta = pool_beta


def warn_functional_relus(model, x: torch.Tensor, who: str) -> None:
    """Warn (:class:`xadv.nn.SmoothingWarning`) when ``model`` applies relus that no
    module makes: they stay in the smooth copy as they are."""
    n = count_functional_relus(model, x)
    if n:
        warnings.warn(
            f"{who}: the model applies relu {n} time(s) per forward pass without a module (F.relu, "
            f"torch.relu or x.relu() in forward); only nn.ReLU / nn.ReLU6 modules can be swapped for a "
            f"softplus, so the second derivative through those calls is zero and the attack's gradient "
            f"ignores them (with gradient explainers on a model whose relus are all functional the map "
            f"cannot move at all). Use nn.ReLU modules in the model's forward to attack it properly.",
            SmoothingWarning, stacklevel=4)


def make_twin(model, explainer: Explainer, beta0: Optional[float], pool_beta: Optional[float] = None,
              x: Optional[torch.Tensor] = None, who: str = "fooling attack"):
    """The model the attack differentiates through: a smooth copy (:func:`xadv.nn.smooth_relu`)
    with frozen parameters (max pooling softened too when ``pool_beta`` is given), or
    the model itself when it has no nn.ReLU / nn.ReLU6 module (already smooth), when
    ``beta`` is None, or when the explainer smooths on its own (``self_smoothing``).
    With ``x`` given, functional relus in the model's forward are counted on it and
    reported with a :class:`xadv.nn.SmoothingWarning`."""
    if beta0 is None or getattr(explainer, "self_smoothing", False) or not isinstance(model, torch.nn.Module):
        return model, False
    if x is not None:
        warn_functional_relus(model, x, who)
    if not has_smoothable(model):
        return model, False
    twin = smooth_relu(model, beta0)
    if pool_beta is not None:
        smooth_pools(twin, pool_beta)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin, True


def normalized_map(e: Explanation, reduce: str = "abs") -> torch.Tensor:
    """The 2-D (or tabular) map scaled so ``|map|`` has mean one per sample: (N, D) flat.

    Mean one (sum D) rather than sum one keeps loss values O(1) for any size.
    """
    m = e.saliency_map(reduce)
    f = m.reshape(m.shape[0], -1)
    d = f.shape[1]
    return f * (d / f.abs().sum(1, keepdim=True).clamp_min(1e-12))


def norms(delta: torch.Tensor) -> Dict[str, torch.Tensor]:
    f = delta.detach().reshape(delta.shape[0], -1)
    return {"linf": f.abs().max(1).values, "l2": f.norm(dim=1), "l0": (f != 0).sum(1)}


def _slice_ctx(ctx: Dict[str, Any], n: int, a: int, b: int) -> Dict[str, Any]:
    """The per-call context for rows ``a:b``: per-sample tensors and explanations sliced."""
    out = {}
    for k, v in ctx.items():
        if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n:
            v = v[a:b]
        elif isinstance(v, Explanation) and len(v) == n:
            v = v[a:b]
        out[k] = v
    return out


def cat_explanations(parts) -> Explanation:
    """One explanation from explanations of consecutive row chunks (per-sample fields concatenated)."""
    import dataclasses

    if len(parts) == 1:
        return parts[0]
    sizes = [len(e) for e in parts]

    def join(vals, size_of=None):
        v0 = vals[0]
        if isinstance(v0, torch.Tensor) and v0.dim() > 0 and all(
                isinstance(v, torch.Tensor) and v.shape[0] == m for v, m in zip(vals, sizes)):
            return torch.cat(vals)
        return v0

    kw = {}
    for f in dataclasses.fields(Explanation):
        vals = [getattr(e, f.name) for e in parts]
        kw[f.name] = {k: join([e.extras.get(k) for e in parts]) for k in vals[0]} if f.name == "extras" \
            else join(vals)
    return Explanation(**kw)


class FoolingAttack:
    """Base class of the input-space fooling attacks (see :mod:`xadv.fooling`).

    Subclasses implement ``loss(e, ctx) -> (N,)`` (lower is better for the attacker,
    differentiable w.r.t. the explanation) and may override ``criterion`` (the
    per-sample quantity, measured on the original model, used to keep the best
    iterate), ``accept`` and ``setup``.
    """

    name = "fooling"
    maximize_similarity = False

    def __init__(self, explainer: Union[str, Explainer] = "saliency", *, eps: float = 8 / 255,
                 steps: int = 300, step_size: Optional[float] = None, bounds=(0.0, 1.0),
                 beta: BetaLike = (30.0, 300.0), k: Union[int, float] = 0.1, reduce: str = "abs",
                 optimizer: str = "sign", pool_beta: PoolBetaLike = (3.0, 3000.0), seed: Optional[int] = None,
                 progress: Optional[bool] = None, schedule: str = "cosine", restarts: int = 1,
                 batch_size: Optional[int] = None):
        self.explainer = resolve_explainer(explainer)
        if not self.accepts_mask_explainer(self.explainer):
            check_explainer_differentiable(self.explainer)
        if not float(eps) > 0:
            raise ValueError(f"eps must be positive (L-inf radius in input units), got {eps!r}")
        self.eps = float(eps)
        self.steps = check_positive_int(steps, "steps")
        self.step_size = float(step_size) if step_size is not None else None
        if self.step_size is not None and not self.step_size > 0:
            raise ValueError(f"step_size must be positive, got {step_size!r}")
        self.bounds = check_bounds(bounds)
        beta_schedule(beta, 2)
        self.beta = beta
        self.k = k
        self.reduce = reduce
        if optimizer not in ("sign", "adam"):
            raise ValueError(f"optimizer must be 'sign' or 'adam', got {optimizer!r}")
        self.optimizer = optimizer
        pool_schedule(pool_beta, [1.0, 1.0])
        self.pool_beta = pool_beta if isinstance(pool_beta, (tuple, list)) or pool_beta is None else float(pool_beta)
        self.seed = seed
        if progress is not None and not isinstance(progress, bool):
            raise TypeError(f"progress must be True, False or None, got {type(progress).__name__}")
        self.progress = progress
        if schedule not in _SCHEDULES:
            raise ValueError(f"schedule must be one of {_SCHEDULES}, got {schedule!r}")
        self.schedule = schedule
        self.restarts = check_positive_int(restarts, "restarts")
        if batch_size is not None:
            batch_size = check_positive_int(batch_size, "batch_size")
        self.batch_size = batch_size

    # ------------------------------------------------------------- hooks
    def accepts_mask_explainer(self, explainer: Explainer) -> bool:
        """Whether this attack handles ``explainer`` although it is not differentiable
        (:class:`JointAttack` attacks mask explainers by a bilevel scheme)."""
        return False

    def evaluate(self, model, x: torch.Tensor, ctx: Dict[str, Any]) -> Explanation:
        """The explanation of a candidate on the ORIGINAL model, for the accept /
        criterion checks of each step. Default: the explainer itself, in chunks of
        ``batch_size`` rows."""
        return self._explain_rows(model, x, self.target_for(ctx))

    def setup(self, model, x: torch.Tensor, y: torch.Tensor, e0: Explanation) -> Dict[str, Any]:
        """Per-call context (reference maps etc.)."""
        return {"x": x, "y": y, "e0": e0, "ref_map": normalized_map(e0, self.reduce).detach(),
                "out0": e0.output.detach()}

    def target_for(self, ctx) -> torch.Tensor:
        """The class each sample's explanation is taken for during the attack."""
        return ctx["y"]

    def loss(self, e: Explanation, ctx: Dict[str, Any]) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def criterion(self, e: Explanation, ctx: Dict[str, Any]) -> torch.Tensor:
        """Per-sample score on the ORIGINAL model, lower is better. Default: the loss."""
        return self.loss(e, ctx).detach()

    def accept(self, pred: torch.Tensor, ctx: Dict[str, Any]) -> torch.Tensor:
        """Which candidates are accepted: by default those whose prediction is kept."""
        return pred == ctx["pred0"]

    def valid(self, pred: torch.Tensor, ctx: Dict[str, Any]) -> torch.Tensor:
        """Which accepted iterates may become the returned one."""
        return pred == ctx["pred0"]

    def after_step(self, pred: torch.Tensor, ctx: Dict[str, Any]) -> None:
        """Called after each step with the original model's predictions of the iterate."""

    def _explain_rows(self, model, x: torch.Tensor, target) -> Explanation:
        """The explainer on ``x`` without a graph, in chunks of ``batch_size`` rows."""
        n = x.shape[0]
        rows = self.batch_size or n
        if rows >= n:
            return self.explainer(model, x, target)
        tt = target if isinstance(target, torch.Tensor) and target.dim() > 0 and target.shape[0] == n else None
        return cat_explanations([self.explainer(model, x[a:a + rows], target if tt is None else tt[a:a + rows])
                                 for a in range(0, n, rows)])

    def _loss_grad(self, expl, twin, x_cur, ctx) -> torch.Tensor:
        """Gradient of ``loss`` w.r.t. the inputs, chunk by chunk (each double backward done
        before the next chunk: the loss of one sample depends on that sample only)."""
        n = x_cur.shape[0]
        rows = self.batch_size or n
        parts = []
        for a in range(0, n, rows):
            b = min(n, a + rows)
            c = ctx if (a, b) == (0, n) else _slice_ctx(ctx, n, a, b)
            xa = x_cur[a:b].detach().requires_grad_(True)
            with torch.enable_grad():
                e = expl(twin, xa, self.target_for(c), create_graph=True)
                loss = self.loss(e, c)
                g = None
                if loss.requires_grad:
                    (g,) = torch.autograd.grad(loss.sum(), xa, allow_unused=True)
            if g is None:
                raise ValueError(
                    f"{type(self).__name__}: the {type(self.explainer).__name__} map of this model does not depend "
                    f"on the input (a model that is linear in x, e.g. Flatten + Linear, has the same gradient map "
                    f"for every input), so no input change can fool it; attack a model with non-linearities, or an "
                    f"explainer whose map changes with x (e.g. input_x_gradient or integrated_gradients)")
            parts.append(g)
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def candidate(self, model, twin, x_cur, step, t, ctx, state) -> torch.Tensor:
        """Next candidate from ``x_cur`` (N, ...): one gradient step of ``loss`` on ``twin``."""
        expl = bind_explainer(self.explainer, model) if twin is not model else self.explainer
        g = self._loss_grad(expl, twin, x_cur, ctx)
        if self.optimizer == "sign":
            d = -g.sign()
        else:
            m, v = state.setdefault("m", torch.zeros_like(g)), state.setdefault("v", torch.zeros_like(g))
            m.mul_(0.9).add_(g, alpha=0.1)
            v.mul_(0.999).addcmul_(g, g, value=0.001)
            mh = m / (1 - 0.9 ** (t + 1))
            vh = v / (1 - 0.999 ** (t + 1))
            d = -mh / (vh.sqrt() + 1e-12)
        view = (-1,) + (1,) * (x_cur.dim() - 1)
        return x_cur + step.view(view) * d

    # ------------------------------------------------------------- run
    def __call__(self, model, x: torch.Tensor, y=None) -> FoolingResult:
        """Run the attack.

        Parameters
        ----------
        model : nn.Module
            The original (ReLU) model; it is not changed.
        x : Tensor (N, ...)
            Inputs within ``bounds``.
        y : None, int or LongTensor (N,), optional
            Class whose explanation is attacked; default the predicted class.

        Returns
        -------
        FoolingResult
        """
        check_model(model)
        check_inputs(x, model, min_dim=self.explainer.min_dim)
        lo, hi = self.bounds
        if float(x.min()) < lo - 1e-6 or float(x.max()) > hi + 1e-6:
            raise ValueError(f"x must lie within bounds {self.bounds}; got values in "
                             f"[{float(x.min()):.4g}, {float(x.max()):.4g}]")
        x = x.detach().clone()
        betas = beta_schedule(self.beta, self.steps)
        with preserved(model, freeze=True):
            e0 = self._explain_rows(model, x, y).detach()
            yt = e0.target
            pred0 = e0.output.argmax(1)
            ctx = self.setup(model, x, yt, e0)
            ctx["pred0"] = pred0
            pools = pool_schedule(self.pool_beta, betas) if betas else None
            n0 = x.shape[0]  # the probe for functional relus: one chunk
            twin, smoothed = make_twin(model, self.explainer, betas[0] if betas else None,
                                       pools[0] if pools else None, x[: self.batch_size or n0],
                                       type(self).__name__)
            n = x.shape[0]
            # a step that does not shrink with ``steps``; the schedule decays it
            base_step = self.step_size if self.step_size is not None else self.eps / 10
            best_x = x.clone()
            with torch.no_grad():
                best_c = self.criterion(e0, ctx).clone()
            best_ok = self.valid(pred0, ctx).clone()
            if not bool(best_ok.all()):
                best_c = torch.where(best_ok, best_c, torch.full_like(best_c, math.inf))
            history = []
            accepted = torch.zeros(n, dtype=torch.long, device=x.device)
            view = (-1,) + (1,) * (x.dim() - 1)
            gen = None
            bar = progress_bar(self.restarts * self.steps, type(self).__name__, progress=self.progress, unit="step")
            for r in range(self.restarts):
                step = torch.full((n,), base_step, dtype=x.dtype, device=x.device)
                x_cur = x.clone()
                if r > 0:  # a random start in the ball, where it keeps the prediction
                    if gen is None:
                        gen = torch.Generator(device=x.device)
                        gen.manual_seed(0 if self.seed is None else int(self.seed))
                    u = torch.rand(x.shape, generator=gen, device=x.device).to(x.dtype)
                    start = (x + (2 * u - 1) * self.eps).clamp(lo, hi)
                    with torch.no_grad():
                        ok0 = self.accept(self._explain_rows(model, start, self.target_for(ctx)).output.argmax(1), ctx)
                    x_cur = torch.where(ok0.view(view), start, x)
                state: Dict[str, Any] = {}
                with checked_inputs():  # x and the targets were checked above: no host sync per step
                    for t in range(self.steps):
                        if smoothed and betas is not None:
                            # pooling sharpens with the softplus so the copy converges to the model
                            set_beta(twin, betas[t], None if pools is None else pools[t])
                        cand = self.candidate(model, twin, x_cur, step * _decay(self.schedule, t, self.steps),
                                              t, ctx, state).detach()
                        cand = torch.min(torch.max(cand, x - self.eps), x + self.eps).clamp(lo, hi)
                        ec = self.evaluate(model, cand, ctx)
                        pred = ec.output.argmax(1)
                        ok = self.accept(pred, ctx)
                        x_cur = torch.where(ok.view(view), cand, x_cur)
                        step = torch.where(ok, step, step * 0.5)
                        accepted += ok.long()
                        c = self.criterion(ec.detach(), ctx)
                        better = ok & self.valid(pred, ctx) & (c < best_c)
                        best_c = torch.where(better, c, best_c)
                        best_x = torch.where(better.view(view), cand, best_x)
                        self.after_step(pred, ctx)
                        # the mean finite criterion, on the device (nan when none is finite): no host sync per step
                        finite = torch.isfinite(best_c)
                        history.append(torch.where(finite, best_c, torch.zeros_like(best_c)).sum() / finite.sum())
                        bar.update(1)
            bar.close()
            history = torch.stack(history).tolist() if history else []
            e_adv = self._explain_rows(model, best_x, self.target_for(ctx) if self.explain_adv_for_target
                                       else yt).detach()
            pred_adv = e_adv.output.argmax(1)
            if not self.explain_adv_for_target:
                kept = pred_adv == pred0
            else:
                kept = pred_adv == self.target_for(ctx)
        sim = similarities(e0, e_adv, k=self.k, reduce=self.reduce)
        extras = {"criterion_history": history, "accepted_steps": accepted.cpu(), "beta": self.beta,
                  "criterion": best_c.detach().cpu()}
        extras.update(self.extra_results(e0, e_adv, ctx))
        return FoolingResult(x_adv=best_x.detach(), x=x, y=yt, explanation_clean=e0, explanation_adv=e_adv,
                             pred_clean=pred0, pred_adv=pred_adv, kept=kept, similarity=sim,
                             norms=norms(best_x - x), attack=repr(self), extras=extras)

    explain_adv_for_target = False

    def extra_results(self, e0: Explanation, e_adv: Explanation, ctx) -> Dict[str, Any]:
        return {}

    def get_params(self) -> Dict[str, Any]:
        keys = ["explainer", "eps", "steps", "step_size", "bounds", "beta", "k", "optimizer", "pool_beta", "seed",
                "schedule", "restarts", "batch_size"]
        return {k: getattr(self, k) for k in keys if hasattr(self, k)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(" + ", ".join(f"{k}={v!r}" for k, v in self.get_params().items()) + ")"
