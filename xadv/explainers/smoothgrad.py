"""SmoothGrad, SmoothGrad-squared and VarGrad as a wrapper around any explainer."""
from __future__ import annotations

import copy
from typing import Optional

import torch

from .._adapter import ModelAdapter, repeat_rows, sample_rows
from .._validation import check_finite, check_positive_int, resolve_target
from .._common import make_generator
from ..explanation import Explanation
from ._entry import entry_gradients, with_entry
from .base import Explainer, balanced_slices, input_leaf
from .chunking import chunked_forward, rows_per_pass
from .gradient import Saliency

_VARIANTS = ("smoothgrad", "smoothgrad_sq", "vargrad")

#: rows (noisy copies x samples) per call of the base explainer when ``batch_size``
#: is None; None lets the chunking policy choose (:mod:`xadv.explainers.chunking`)
DEFAULT_BATCH_ROWS: Optional[int] = None


def _accumulate(store: dict, key: int, value: torch.Tensor, create_graph: bool) -> None:
    if key not in store:
        store[key] = value
    elif create_graph:
        store[key] = store[key] + value
    else:
        store[key] += value


def _gather(store: dict) -> torch.Tensor:
    parts = [v for _, v in sorted(store.items())]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


class SmoothGrad(Explainer):
    """Average an explainer over noisy copies of the input (Smilkov et al., 2017).

    Parameters
    ----------
    base : Explainer, default ``Saliency()``
        Any explainer; SmoothGrad is differentiable exactly when ``base`` is.
    n_samples : int, default 50
        Noisy copies per input.
    noise : float, default 0.15
        Standard deviation of the Gaussian noise. With ``noise_mode="range"`` a
        fraction of each sample's value range ``x.max() - x.min()`` (the paper's
        convention); with ``"absolute"`` in input units.
    variant : {"smoothgrad", "smoothgrad_sq", "vargrad"}, default "smoothgrad"
        Mean of the attributions, mean of their squares, or their variance
        (Adebayo et al., 2018).
    batch_size : int, optional
        Noisy rows per call of ``base`` and rows of the clean pass; also the bound of
        ``base``'s own model calls when ``base`` has ``batch_size=None``. Memory is
        bounded by it, results do not depend on it. Default: chosen per model, input shape and device by :mod:`xadv.explainers.chunking`
        (a memory probe, cached).
    seed : int, optional
        Same seed, same noise on every call (fixed draws, as fooling attacks need).
    generator : torch.Generator, optional
        Used instead of ``seed``; advances between calls.

    Shapes: ``x`` (N, ...) -> ``attributions`` (N, ...), or the layer's shape when
    ``base`` attributes to a layer (``layer=``; the noise is added to the inputs, which
    must then be floating point). Around several layers (``layer=[a, b]``) the result is
    a tuple with one averaged attribution per layer, every layer explained on the same
    noisy copies (captum's ``NoiseTunnel`` around a layer method with a list of layers).
    When ``base`` reports a completeness error (Integrated Gradients, GradientSHAP),
    ``delta`` (N,) is its mean over the noisy copies (the
    completeness error of the averaged attribution against the averaged score gap) and
    ``extras["deltas"]`` (n_samples, N) holds every copy's, as captum's ``NoiseTunnel``
    with ``return_convergence_delta=True``.

    References
    ----------
    Smilkov et al. SmoothGrad: removing noise by adding noise. 2017.
    Adebayo et al. Local explanation methods for deep neural networks lack sensitivity
    to parameter values. 2018.

    Examples
    --------
    >>> import torch, xadv
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3), torch.nn.Tanh())
    >>> sg = xadv.explainers.SmoothGrad(n_samples=8, noise=0.1, seed=0)
    >>> sg(net, torch.rand(2, 4), target=0).attributions.shape
    torch.Size([2, 4])
    """

    name = "smoothgrad"

    def __init__(self, base: Optional[Explainer] = None, n_samples: int = 50, noise: float = 0.15,
                 variant: str = "smoothgrad", batch_size: Optional[int] = None,
                 seed: Optional[int] = None, generator: Optional[torch.Generator] = None,
                 noise_mode: str = "range"):
        if base is None:
            base = Saliency()
        if not isinstance(base, Explainer):
            raise TypeError(f"base must be an xadv Explainer, got {type(base).__name__}")
        if variant not in _VARIANTS:
            raise ValueError(f"variant must be one of {_VARIANTS}, got {variant!r}")
        if noise_mode not in ("range", "absolute"):
            raise ValueError(f"noise_mode must be 'range' or 'absolute', got {noise_mode!r}")
        if not float(noise) >= 0:
            raise ValueError(f"noise must be >= 0, got {noise!r}")
        self.base = base
        self.n_samples = check_positive_int(n_samples, "n_samples")
        self.noise = float(check_finite(noise, "noise"))
        self.variant = variant
        self.batch_size = None if batch_size is None else check_positive_int(batch_size, "batch_size")
        self.seed = seed
        self.generator = generator
        self.noise_mode = noise_mode
        self.min_dim = base.min_dim

    @property
    def differentiable(self) -> bool:  # type: ignore[override]
        return self.base.differentiable

    def attributes_to_layer(self) -> bool:
        return self.base.attributes_to_layer()

    def _folds_batchnorm(self) -> bool:
        return self.base._folds_batchnorm()

    def _explains_neuron(self) -> bool:
        return self.base._explains_neuron()

    def _factors_entry(self, model, create_graph: bool) -> bool:
        """Whether the result is the mean of plain input gradients (SmoothGrad around a
        signed :class:`Saliency` of the input), so the entry layer can be factored out."""
        b = self.base
        return (self.variant == "smoothgrad" and type(b) is Saliency and not b.abs and b.layer is None
                and b.neuron is None and not create_graph and not isinstance(model, ModelAdapter))

    def _explain(self, model, x, target, create_graph):
        if isinstance(x, tuple):
            raise ValueError("SmoothGrad around a layer explainer takes one input tensor")
        if not x.is_floating_point():
            raise TypeError(f"SmoothGrad adds Gaussian noise to the inputs, which are {x.dtype} (token ids?); "
                            f"explain the embedding's output instead, e.g. with a float input model")
        xi = input_leaf(x, create_graph) if create_graph else x.detach()
        n = x.shape[0]
        rows = rows_per_pass(model, xi, batch_size=self.batch_size or DEFAULT_BATCH_ROWS, work=self.n_samples * n,
                             grad=self.base.differentiable)
        def clean():
            return chunked_forward(model, xi, rows, grad=create_graph)
        entry = None
        if self._factors_entry(model, create_graph):
            # the mean of plain gradients: the affine entry layer's W^T is applied once per
            # image to the gradients summed at its output (xadv.explainers._entry)
            out, entry = with_entry(model, xi, clean)
        else:
            out = clean()
        t = resolve_target(target, out)
        if self.noise_mode == "range":
            # with create_graph the noise scale depends on x too (it is part of the function)
            flat = xi.reshape(n, -1)
            sigma = self.noise * (flat.max(1).values - flat.min(1).values)
        else:
            sigma = torch.full((n,), self.noise, dtype=x.dtype, device=x.device)
        sigma = sigma.reshape((n,) + (1,) * (x.dim() - 1))
        gen = make_generator(self.seed, self.generator, x.device)
        base = self.base
        if self.batch_size is not None and getattr(base, "batch_size", 0) is None:
            # the user's bound holds for the base method's own model calls too
            base = copy.copy(base)
            base.batch_size = self.batch_size

        # Noise is drawn one full-batch copy at a time (draw j is always the j-th
        # ``randn(x.shape)`` of the generator, whatever ``batch_size``), then
        # ``k`` copies of a slice of ``m`` samples go through ``base`` at once.
        slices = balanced_slices(n, rows)
        m = slices[0][1] - slices[0][0]
        k_max = max(1, rows // m)
        k_max = -(-self.n_samples // -(-self.n_samples // k_max))  # near-equal passes
        tail = x.shape[1:]
        need_sq = self.variant != "smoothgrad"
        base_x = xi if create_graph else xi.detach()
        acc_h = acc_x = None   # with the entry factored: sums at its output and at the input
        sums = {}     # (layer, first sample) -> sum over the copies
        sums_sq = {}
        deltas = {}
        several = False
        layer_extras = {}
        for j0 in range(0, self.n_samples, k_max):
            k = min(k_max, self.n_samples - j0)
            eps = torch.stack([torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
                               for _ in range(k)])
            noisy = base_x[None] + sigma[None] * eps
            for i0, i1 in slices:
                bx = noisy[:, i0:i1].reshape((k * (i1 - i0),) + tail)
                bt = t[i0:i1].repeat(k)
                if entry is not None:
                    with torch.no_grad():
                        h = entry.full(bx)
                    with sample_rows(repeat_rows(i0, i1, k, x.device), n):
                        gh, gx = entry_gradients(model, entry, bx, h, bt, base.score)
                    if acc_h is None:
                        acc_h = gh.new_zeros((n,) + tuple(gh.shape[1:]))
                    acc_h[i0:i1] += gh.reshape((k, i1 - i0) + tuple(gh.shape[1:])).sum(0)
                    if gx is not None:  # the model also reads its input by another route
                        if acc_x is None:
                            acc_x = torch.zeros_like(base_x)
                        acc_x[i0:i1] += gx.reshape((k, i1 - i0) + tail).sum(0)
                    continue
                # inputs already checked and the model already preserved by our own
                # __call__: go straight to the base method (no re-validation per pass)
                with sample_rows(repeat_rows(i0, i1, k, x.device), n):
                    eb = base._explain(model, bx, bt, create_graph)
                several = isinstance(eb.attributions, tuple)  # several layers: one attribution each
                attrs = eb.attributions if several else (eb.attributions,)
                if eb.delta is not None:
                    deltas[(j0, i0)] = eb.delta.detach().reshape(k, i1 - i0)
                for key in ("attribute_to",):
                    if key in eb.extras:
                        layer_extras[key] = eb.extras[key]
                if "layer" in eb.params:
                    layer_extras["layer"] = eb.params["layer"]
                for li, a in enumerate(attrs):
                    if not create_graph:
                        a = a.detach()
                    a = a.reshape((k, i1 - i0) + tuple(a.shape[1:]))
                    sums.setdefault(li, {})
                    _accumulate(sums[li], i0, a.sum(0), create_graph)
                    if need_sq:
                        sums_sq.setdefault(li, {})
                        _accumulate(sums_sq[li], i0, (a * a).sum(0), create_graph)

        def combine(li):
            mean = _gather(sums[li]) / self.n_samples
            if self.variant == "smoothgrad":
                return mean
            mean_sq = _gather(sums_sq[li]) / self.n_samples
            return mean_sq if self.variant == "smoothgrad_sq" else mean_sq - mean * mean

        if entry is not None:
            g = entry.transpose(acc_h, base_x)
            attr = (g if acc_x is None else g + acc_x) / self.n_samples
        else:
            attr = tuple(combine(li) for li in sorted(sums)) if several else combine(0)
        params = self._params_for_result()
        extras = {}
        if "layer" in layer_extras:
            params["layer"] = layer_extras.pop("layer")
        extras.update(layer_extras)
        delta = None
        if deltas:
            all_d = torch.empty((self.n_samples, n), dtype=next(iter(deltas.values())).dtype, device=x.device)
            for (j0, i0), d in deltas.items():
                all_d[j0:j0 + d.shape[0], i0:i0 + d.shape[1]] = d
            extras["deltas"] = all_d
            delta = all_d.mean(0)
        if not create_graph:
            out = out.detach()
        return Explanation(attr, xi, t, out, self.name, params, delta=delta, extras=extras)
