"""GradientSHAP and Expected Gradients: Integrated Gradients averaged over baselines drawn
from a background set and random points on the path."""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch

from .._adapter import ModelAdapter, repeat_rows, sample_rows
from .._common import make_generator
from .._validation import TargetLike, check_finite, check_positive_int, resolve_target
from ..explanation import Explanation
from ._layer import LayerOptions, add_layer_doc, capture, capture_chunked, layer_path
from .integrated_gradients import _blocks
from .base import Explainer, balanced_slices, check_score, forward, input_leaf, select_score
from .chunking import chunked_forward, rows_per_pass

#: rows (draws x samples) per forward/backward pass when ``batch_size`` is None;
#: None lets the chunking policy choose (:mod:`xadv.explainers.chunking`)
DEFAULT_BATCH_ROWS: Optional[int] = None

BackgroundLike = Union[None, float, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]


def _check_background(background: BackgroundLike) -> BackgroundLike:
    if background is None:
        return None
    if callable(background) and not isinstance(background, (torch.Tensor, str)):
        return background  # (x) -> reference inputs; its result is checked in make_background
    if isinstance(background, (tuple, list)):
        return tuple(_check_background(b) for b in background)
    if isinstance(background, torch.Tensor):
        if background.is_complex() or background.dtype == torch.bool:
            raise TypeError("the background must be a real tensor (M, ...) of reference inputs "
                            "(floating point, or token ids with layer=)")
        if background.dim() == 0 or background.shape[0] == 0:
            raise ValueError(f"the background must hold at least one reference input, got shape "
                             f"{tuple(background.shape)}")
        return check_finite(background, "background")
    if isinstance(background, bool) or not isinstance(background, (int, float)):
        raise TypeError(f"background must be None, a number, a tensor (M, ...) of reference inputs or a callable "
                        f"(x) -> tensor, got {type(background).__name__}")
    return check_finite(background, "background")


@add_layer_doc
class GradientSHAP(LayerOptions, Explainer):
    """GradientSHAP (Lundberg & Lee, 2017), as captum's ``GradientShap`` and shap's
    ``GradientExplainer``: Integrated Gradients in expectation over a background set.

    ``attr = E[(x~ - b) * grad f(b + a (x~ - b))]`` with ``b`` drawn uniformly from the
    background rows, ``a ~ U(0, 1)`` and ``x~ = x + N(0, noise^2)``, estimated with
    ``n_samples`` draws per input. Completeness holds in expectation: for ``noise=0``,
    ``attr.sum() -> f(x) - E_b f(b)``; ``delta`` on the result is
    ``attr.sum() - (f(x) - mean of f(b) over the drawn baselines)``.
    With ``noise=0`` it is Expected Gradients (:class:`ExpectedGradients`).

    Parameters
    ----------
    background : Tensor (M, ...) or (...), float, callable or None, default None
        Reference inputs the baselines are drawn from (Erion et al. recommend training
        samples, e.g. 100-1000 of them), shape ``x.shape[1:]`` per row; one input
        without the leading M is a single baseline; a number is a constant baseline.
        A callable ``(x) -> Tensor (M, ...)`` builds the reference inputs from the batch
        (captum's callable ``baselines``), e.g. ``lambda x: x.mean(0, keepdim=True)``; its
        result is a constant of the explanation (not differentiated). Several inputs: a
        tuple, one per input, or one callable taking the tuple of inputs and returning a
        tuple. ``None``: the zero baseline (then the method is Integrated Gradients from
        zeros with random path points). Can also be given per call:
        ``explainer(model, x, target, background=b)``.
    n_samples : int, default 50
        Draws (baseline, path point, noise) per input (captum's ``n_samples``, shap's
        ``nsamples``).
    noise : float, default 0.0
        Standard deviation of the Gaussian noise added to the input, in input units
        (captum's ``stdevs``, shap's ``local_smoothing``). As in both, the attribution
        multiplies by ``x~ - b``, the noisy input minus the baseline.
    batch_size : int, optional
        Rows of every model call: the draws x samples of each forward/backward pass, the
        clean pass on ``x`` and the background scores. Memory is bounded by it and
        results do not depend on it. Default: chosen per model, input shape and device by :mod:`xadv.explainers.chunking`
        (a memory probe, cached).
    score : {"logit", "log_softmax", "softmax"} or callable, default "logit"
    seed : int, optional
        Same seed, same draws on every call (fixed draws, as fooling attacks need).
    generator : torch.Generator, optional
        Used instead of ``seed``; advances between calls.
    multiply_by_inputs : bool, default True
        ``False``: the averaged gradients without the factor ``x~ - b`` (``delta`` None).
    delta : bool, default False
        Also compute the completeness gap ``delta`` (N,) for input attributions, as
        captum's ``return_convergence_delta``. It needs a forward pass on every drawn
        background row, up to N * n_samples extra rows (a third more work at real
        sizes), so it is off by default, as in captum and shap. With ``layer=`` the
        background activations are computed anyway and ``delta`` is always given.

    Shapes: ``x`` (N, ...) -> ``attributions`` (N, ...); background (M, ...). With
    ``layer=`` the path runs in the layer's activation space: draw ``j`` interpolates
    between the layer's activations on background row ``idx[j, n]`` and on ``x`` (the
    same draws as without ``layer``; ``noise`` must be 0 there). Captum's
    ``LayerGradientShap`` interpolates the inputs instead, which token ids do not allow.

    Notes
    -----
    Draw order (what a seed fixes, whatever ``batch_size``): ``idx = randint(M, (n_samples,
    N))``, then ``alpha = rand(n_samples, N)``, then for ``noise > 0`` one
    ``randn(x.shape)`` per draw ``j = 0 .. n_samples - 1``. Draw ``j`` of sample ``n``
    uses background row ``idx[j, n]`` and path point ``alpha[j, n]``.
    ``extras["baseline_index"]`` and ``extras["alpha"]`` hold them.

    References
    ----------
    Lundberg, Lee. A Unified Approach to Interpreting Model Predictions. NeurIPS 2017.
    Erion, Janizek, Sturmfels, Lundberg, Lee. Improving performance of deep learning
    models with axiomatic attribution priors and expected gradients. Nature Machine
    Intelligence 2021.

    Examples
    --------
    >>> import torch, xadv
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    >>> background = torch.randn(20, 3)
    >>> gs = xadv.explainers.GradientSHAP(background, n_samples=500, seed=0, delta=True)
    >>> e = gs(net, torch.rand(4, 3), target=1)
    >>> e.attributions.shape
    torch.Size([4, 3])
    >>> bool(e.delta.abs().max() < 0.05)   # completeness, up to Monte-Carlo error
    True
    >>> around = xadv.explainers.GradientSHAP(lambda x: x.mean(0) + 0.1 * background[:5], n_samples=20, seed=0)
    >>> around(net, torch.rand(4, 3), target=1).attributions.shape   # reference rows built from the batch
    torch.Size([4, 3])
    """

    name = "gradient_shap"
    differentiable = True

    def __init__(self, background: BackgroundLike = None, n_samples: int = 50, noise: float = 0.0,
                 batch_size: Optional[int] = None, score="logit", seed: Optional[int] = None,
                 generator: Optional[torch.Generator] = None, multiply_by_inputs: bool = True, layer=None,
                 attribute_to_layer_input: bool = False, neuron=None, delta: bool = False):
        if not isinstance(delta, bool):
            raise TypeError(f"delta must be a bool, got {type(delta).__name__}")
        self.delta = delta
        self.background = _check_background(background)
        self.n_samples = check_positive_int(n_samples, "n_samples")
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not float(noise) >= 0:
            raise ValueError(f"noise must be a number >= 0 (standard deviation in input units), got {noise!r}")
        self.noise = float(check_finite(noise, "noise"))
        self.batch_size = None if batch_size is None else check_positive_int(batch_size, "batch_size")
        self.score = check_score(score)
        self.seed = seed
        self.generator = generator
        self.multiply_by_inputs = bool(multiply_by_inputs)
        self._set_layer_options(layer, attribute_to_layer_input, neuron)
        bgs = self.background if isinstance(self.background, tuple) else (self.background,)
        if not self.attributes_to_layer() and any(isinstance(b, torch.Tensor) and not b.is_floating_point()
                                                  for b in bgs):
            raise TypeError("the background must be a floating point tensor (M, ...) of reference inputs; "
                            "integer token ids are for layer= (the embedding)")

    def __call__(self, model, x: torch.Tensor, target: TargetLike = None, *, create_graph: bool = False,
                 background: BackgroundLike = None, **kwargs) -> Explanation:
        """Explain ``model`` on ``x`` (see :meth:`Explainer.__call__`, also for
        ``forward_args`` and ``output``); ``background`` replaces the constructor's
        background for this call."""
        if background is None:
            return super().__call__(model, x, target, create_graph=create_graph, **kwargs)
        params = dict(self.get_params(), background=background)
        return type(self)(**params)(model, x, target, create_graph=create_graph, **kwargs)

    def make_background(self, x: torch.Tensor) -> torch.Tensor:
        """The background rows for inputs ``x``: (M, ...) on ``x``'s device and dtype."""
        b = self.background
        feat = tuple(x.shape[1:])
        if callable(b) and not isinstance(b, torch.Tensor):
            v = b(x.detach())
            if not isinstance(v, torch.Tensor):
                raise TypeError(f"the background callable must return a tensor (M, {', '.join(map(str, feat))}) "
                                f"of reference inputs, got {type(v).__name__}")
            if tuple(v.shape) != feat and (v.dim() < 1 or tuple(v.shape[1:]) != feat or v.shape[0] == 0):
                raise ValueError(f"the background callable returned shape {tuple(v.shape)} for inputs "
                                 f"{tuple(x.shape)}: return (M, {', '.join(map(str, feat))}) reference inputs "
                                 f"(M >= 1) or a single one")
            b = _check_background(v)
        if isinstance(b, tuple):
            raise ValueError("a tuple of backgrounds is for a model with several inputs (one per input)")
        if b is None or not isinstance(b, torch.Tensor):
            return torch.full((1,) + feat, 0.0 if b is None else float(b), dtype=x.dtype, device=x.device)
        if tuple(b.shape) == feat:
            b = b[None]
        elif tuple(b.shape[1:]) != feat:
            raise ValueError(f"the background of shape {tuple(b.shape)} does not match the inputs {tuple(x.shape)}: "
                             f"give (M, {', '.join(map(str, feat))}) reference inputs or a single one")
        return b.detach().to(device=x.device, dtype=x.dtype)

    def _explain(self, model, x, target, create_graph):
        r = self._layer_dispatch(model, x, target, create_graph)
        if r is not None:
            return r
        xi = input_leaf(x, create_graph) if create_graph else x.detach()
        bg = self.make_background(x)
        n, tail, S = x.shape[0], tuple(x.shape[1:]), self.n_samples
        ones = (1,) * len(tail)
        rows = rows_per_pass(model, xi, batch_size=self.batch_size or DEFAULT_BATCH_ROWS, work=S * n)
        out = chunked_forward(model, xi, rows, grad=create_graph)
        t = resolve_target(target, out)
        gen = make_generator(self.seed, self.generator, x.device)
        idx = torch.randint(bg.shape[0], (S, n), generator=gen, device=x.device)
        alphas = torch.rand((S, n), generator=gen, device=x.device, dtype=x.dtype)

        # k draws of a slice of m samples per pass; the noise of draw j is the j-th
        # randn(x.shape) of the generator whatever the passes
        slices = balanced_slices(n, rows)
        m0 = slices[0][1] - slices[0][0]
        k_max = max(1, rows // m0)
        k_max = -(-S // -(-S // k_max))
        parts = {}
        for j0 in range(0, S, k_max):
            k = min(k_max, S - j0)
            if self.noise > 0:
                eps = torch.stack([torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
                                   for _ in range(k)])
            for i0, i1 in slices:
                m = i1 - i0
                xs = xi[None, i0:i1]
                if self.noise > 0:
                    xs = xs + self.noise * eps[:, i0:i1]
                b = bg[idx[j0:j0 + k, i0:i1]]                                   # (k, m, ...)
                diff = xs - b
                a = alphas[j0:j0 + k, i0:i1].reshape((k, m) + ones)
                with torch.enable_grad():
                    path = (b + a * diff).reshape((k * m,) + tail)
                    leaf = path if create_graph else path.detach().requires_grad_(True)
                    with sample_rows(repeat_rows(i0, i1, k, x.device), n):
                        o = forward(model, leaf)
                    s = select_score(o, t[i0:i1].repeat(k), self.score)
                    (g,) = torch.autograd.grad(s.sum(), leaf, create_graph=create_graph)
                    g = g.reshape((k, m) + tail)
                    part = (diff * g).sum(0) if self.multiply_by_inputs else g.sum(0)
                if not create_graph:
                    part = part.detach()
                parts[i0] = parts[i0] + part if i0 in parts else part
        summed = torch.cat([p for _, p in sorted(parts.items())]) if len(parts) > 1 else parts[0]
        attr = summed / S

        delta = None
        if self.multiply_by_inputs and self.delta:
            with torch.no_grad():
                s_b = self._background_scores(model, bg, idx, t, rows)
                gap = select_score(out.detach(), t, self.score) - s_b
                delta = attr.detach().reshape(n, -1).sum(1) - gap
        if not create_graph:
            out = out.detach()
            attr = attr.detach()
        return Explanation(attr, xi, t, out, self.name, self._params_for_result(), delta=delta,
                           extras={"baseline_index": idx.t().contiguous(), "alpha": alphas.t().contiguous()})


    def _background_scores(self, model, bg, idx, t, rows) -> torch.Tensor:
        """Mean over the draws of the score of the drawn background rows, (N,)."""
        S, n = idx.shape
        if isinstance(model, ModelAdapter) and model.forward_args is not None:
            # per-sample pass-through arguments: each drawn row with its sample's arguments
            flat = idx.reshape(-1)
            sid = torch.arange(n, device=idx.device).repeat(S)
            outs = []
            for r0, r1 in balanced_slices(flat.numel(), rows):
                with sample_rows(sid[r0:r1], n):
                    outs.append(forward(model, bg[flat[r0:r1]]))
            return select_score(torch.cat(outs), t.repeat(S), self.score).reshape(S, n).mean(0)
        # f(b) once per used background row
        used, inverse = torch.unique(idx, return_inverse=True)
        outs = torch.cat([forward(model, bg[used[u0:u1]]) for u0, u1 in balanced_slices(used.numel(), rows)])
        return select_score(outs[inverse.reshape(-1)], t.repeat(S), self.score).reshape(S, n).mean(0)

    def _explain_layer(self, model, inputs, target, create_graph, mods, names):
        """GradientSHAP in the layer's activation space (``noise`` must be 0)."""
        if self.noise > 0:
            raise ValueError("GradientSHAP with layer= interpolates activations and does not add input noise; "
                             "use noise=0 (or wrap it in SmoothGrad for float inputs)")
        if len(inputs) > 1:
            raise ValueError("GradientSHAP with layer= explains models with one input tensor")
        ins = self._leaves(inputs, create_graph)
        x = ins[0]
        bg = self.make_background(x)
        n, S = x.shape[0], self.n_samples
        side = self.attribute_to_layer_input
        rows = rows_per_pass(model, [x], batch_size=self.batch_size or DEFAULT_BATCH_ROWS, work=S * n)
        with torch.set_grad_enabled(create_graph):
            out, acts = capture_chunked(model, [x], mods, names, side, create_graph, rows)
        t = resolve_target(target, out)
        ref = acts[0]
        gen = make_generator(self.seed, self.generator, x.device)
        idx = torch.randint(bg.shape[0], (S, n), generator=gen, device=x.device)
        alphas = torch.rand((S, n), generator=gen, device=x.device, dtype=ref.dtype)
        weights = torch.full((S,), 1.0 / S, dtype=ref.dtype, device=ref.device)
        scores_b = torch.zeros((S, n), dtype=ref.dtype, device=ref.device)

        def base_acts(s0, s1, i0, i1):
            k, m = s1 - s0, i1 - i0
            rows_b = bg[idx[s0:s1, i0:i1].reshape(-1)]
            with torch.no_grad(), sample_rows(repeat_rows(i0, i1, k, x.device), n):
                ob, ab = capture(model, [rows_b], mods, names, side, grad=False)
            scores_b[s0:s1, i0:i1] = select_score(ob, t[i0:i1].repeat(k), self.score).reshape(k, m)
            return [a.reshape((k, m) + tuple(a.shape[1:])) for a in ab]

        attrs = layer_path(model, ins, t, lambda o, tt: select_score(o, tt, self.score), mods, names, side,
                           acts, base_acts, alphas, weights, rows, self.multiply_by_inputs, create_graph, _blocks)
        delta = None
        if self.multiply_by_inputs:
            gap = select_score(out.detach(), t, self.score) - scores_b.mean(0)
            delta = sum(a.detach().reshape(n, -1).sum(1) for a in attrs) - gap
        return self._layer_result(attrs, ins, t, out, create_graph, names, delta=delta,
                                  extras={"baseline_index": idx.t().contiguous(), "alpha": alphas.t().contiguous()})


class ExpectedGradients(GradientSHAP):
    """Expected Gradients (Erion et al., 2021): GradientSHAP without input noise.

    ``attr = E_{b ~ background, a ~ U(0, 1)}[(x - b) * grad f(b + a (x - b))]``, an
    unbiased Monte-Carlo estimate of Integrated Gradients averaged over the background
    distribution; ``attr.sum() -> f(x) - E_b f(b)``. Same parameters, draws and result as
    :class:`GradientSHAP` with ``noise=0``.

    Parameters
    ----------
    background : Tensor (M, ...) or (...), float or None, default None
        Reference inputs (training samples in the paper); ``None`` is the zero baseline.
    n_samples : int, default 50
        Draws (baseline, path point) per input.
    batch_size : int, optional
    score : {"logit", "log_softmax", "softmax"} or callable, default "logit"
    seed : int, optional
    generator : torch.Generator, optional
    delta : bool, default False
        Also compute the completeness gap ``delta`` (N,), as :class:`GradientSHAP`.

    References
    ----------
    Erion, Janizek, Sturmfels, Lundberg, Lee. Improving performance of deep learning
    models with axiomatic attribution priors and expected gradients. Nature Machine
    Intelligence 2021.

    Examples
    --------
    >>> import torch, xadv
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> background = torch.rand(10, 4)
    >>> x = torch.rand(2, 4)
    >>> e = xadv.explainers.ExpectedGradients(background, n_samples=8, seed=0)(net, x, target=0)
    >>> used = background[e.extras["baseline_index"]].mean(1)      # (N, ...) mean drawn baseline
    >>> torch.allclose(e.attributions, (x - used) * net[1].weight[0], atol=1e-6)   # linear model
    True
    """

    name = "expected_gradients"

    def __init__(self, background: BackgroundLike = None, n_samples: int = 50, batch_size: Optional[int] = None,
                 score="logit", seed: Optional[int] = None, generator: Optional[torch.Generator] = None,
                 multiply_by_inputs: bool = True, layer=None, attribute_to_layer_input: bool = False, neuron=None,
                 delta: bool = False):
        super().__init__(background, n_samples=n_samples, noise=0.0, batch_size=batch_size, score=score,
                         seed=seed, generator=generator, multiply_by_inputs=multiply_by_inputs, layer=layer,
                         attribute_to_layer_input=attribute_to_layer_input, neuron=neuron, delta=delta)
