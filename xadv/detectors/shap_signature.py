"""SHAP signatures of penultimate-layer neurons (Fidel, Bitton, Shabtai 2020)."""
from __future__ import annotations

from typing import Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from .._validation import check_positive_int, find_module
from ..explainers.base import forward
from ..explainers.integrated_gradients import quadrature
from .base import Detector, _register, batched_apply, seeded_module, train_binary

_ESTIMATORS = ("ig", "shap_deep", "shap_gradient")


def last_linear(model: nn.Module) -> str:
    """Dotted name of the last ``nn.Linear`` of ``model`` (whose input is the penultimate layer)."""
    name = None
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear):
            name = n
    if name is None:
        raise ValueError("the model has no nn.Linear layer; pass layer= (the module whose input is explained)")
    return name


class _Standardize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x):
        return (x - self.mean) / self.std


class _Head(nn.Module):
    """``h -> model output`` when ``h`` replaces the input of ``layer`` (for shap)."""

    def __init__(self, model, layer, anchor):
        super().__init__()
        self.model, self.layer, self.anchor = model, layer, anchor

    def forward(self, h):
        def pre(_m, args):
            return (h,) + tuple(args[1:])

        handle = self.layer.register_forward_pre_hook(pre)
        try:
            return self.model(self.anchor[:1].expand((h.shape[0],) + tuple(self.anchor.shape[1:])))
        finally:
            handle.remove()


@_register
class ShapSignatureDetector(Detector):
    """SHAP values of the penultimate-layer neurons for every class, classified by an MLP.

    The representation ``h`` (N, D) is the input of ``layer`` (default the model's last
    ``nn.Linear``). Its Shapley values for each of the K class scores, with the mean
    ``h`` of clean background inputs as the reference, form the signature (N, K * D)
    (or (N, D) for the predicted class only). The estimator is xadv's own
    Integrated Gradients on the head (``"ig"``: differentiable; exact when the head is
    linear, as SHAP is), shap's ``DeepExplainer`` (``"shap_deep"``, layer must be the last
    module) or ``GradientExplainer`` (``"shap_gradient"``, expected gradients). With a shap
    estimator adaptive attacks differentiate the IG estimator instead (BPDA surrogate).

    Parameters
    ----------
    layer : str or nn.Module, optional
    estimator : {"ig", "shap_deep", "shap_gradient"}, default "ig"
    steps : int, default 8
        IG quadrature nodes (Gauss-Legendre); ``n_samples`` of shap's GradientExplainer.
    n_background : int, default 100
        Clean fitting inputs used as background / reference.
    classes : {"all", "predicted"}, default "all"
    hidden : int, default 64
    epochs, lr, weight_decay, train_batch_size : MLP training (Adam, balanced BCE).
    fpr, val_fraction, batch_size, seed, progress : see :class:`Detector`.

    References
    ----------
    Fidel, Bitton, Shabtai. When Explainability Meets Adversarial Learning: Detecting
    Adversarial Examples using SHAP Signatures. IJCNN 2020.
    Lundberg, Lee. A Unified Approach to Interpreting Model Predictions. NeurIPS 2017.

    Examples
    --------
    >>> import torch
    >>> from xadv.detectors import ShapSignatureDetector
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> det = ShapSignatureDetector(epochs=2).fit(net, torch.rand(40, 1, 4, 4), torch.rand(40, 1, 4, 4) * 0.2)
    >>> det.signature(net, torch.rand(2, 1, 4, 4)).shape
    torch.Size([2, 24])
    """

    def __init__(self, layer: Optional[Union[str, nn.Module]] = None, *, estimator: str = "ig", steps: int = 8,
                 n_background: int = 100, classes: str = "all", hidden: int = 64, epochs: int = 15,
                 lr: float = 1e-3, weight_decay: float = 1e-3, train_batch_size: int = 64, **kwargs):
        super().__init__(**kwargs)
        if estimator not in _ESTIMATORS:
            raise ValueError(f"estimator must be one of {_ESTIMATORS}, got {estimator!r}")
        if classes not in ("all", "predicted"):
            raise ValueError(f"classes must be 'all' or 'predicted', got {classes!r}")
        self.layer = layer
        self.estimator = estimator
        self.steps = check_positive_int(steps, "steps")
        self.n_background = check_positive_int(n_background, "n_background")
        self.classes = classes
        self.hidden = check_positive_int(hidden, "hidden")
        self.epochs = check_positive_int(epochs, "epochs")
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.train_batch_size = check_positive_int(train_batch_size, "train_batch_size")

    @property
    def differentiable(self) -> bool:  # type: ignore[override]
        return self.estimator == "ig"

    @property
    def second_order(self) -> bool:  # type: ignore[override]
        """A linear head makes the signature first-order in the representation."""
        return not getattr(self, "head_linear_", False)

    @property
    def surrogate_note(self) -> str:  # type: ignore[override]
        return "" if self.estimator == "ig" else f"{self.estimator} replaced by xadv's IG estimator (BPDA)"

    # ------------------------------------------------------------------ signature
    def _module(self, model) -> nn.Module:
        if not isinstance(model, nn.Module):
            raise TypeError("ShapSignatureDetector needs a torch.nn.Module (to read its penultimate layer)")
        return find_module(model, self.layer if self.layer is not None else last_linear(model))

    def representation(self, model, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(h, output)``: the flattened input of ``layer`` (N, D) and the model output (N, K)."""
        mod = self._module(model)
        store = {}

        def pre(_m, args):
            store["h"] = args[0]

        handle = mod.register_forward_pre_hook(pre)
        try:
            out = forward(model, x)
        finally:
            handle.remove()
        if "h" not in store:
            raise ValueError("the signature layer was not called in the forward pass")
        return store["h"], out

    def _head_outputs(self, model, x, h_new):
        """Model output when the layer's input is replaced by ``h_new`` (rows of ``x`` repeated)."""
        mod = self._module(model)
        if self.head_is_layer_:
            return mod(h_new)
        reps = h_new.shape[0] // x.shape[0]

        def pre(_m, args):
            return (h_new,) + tuple(args[1:])

        handle = mod.register_forward_pre_hook(pre)
        try:
            return forward(model, x.repeat((reps,) + (1,) * (x.dim() - 1)))
        finally:
            handle.remove()

    def _ig(self, model, x, h, create_graph):
        """IG attributions of every class to ``h``: (N, K, D)."""
        base = self.baseline_.to(h.device, h.dtype).expand_as(h)
        nodes, weights = quadrature(self.steps, "gausslegendre")
        alphas = torch.as_tensor(nodes, dtype=h.dtype, device=h.device)
        w = torch.as_tensor(weights, dtype=h.dtype, device=h.device)
        n = h.shape[0]
        diff = h - base
        path = (base[None] + alphas[:, None, None] * diff[None]).reshape(-1, h.shape[1])  # step-major
        with torch.enable_grad():
            leaf = path if create_graph else path.detach().requires_grad_(True)
            out = self._head_outputs(model, x, leaf.reshape((-1,) + self.h_shape_))
            k = out.shape[1]
            grads = []
            for c in range(k):
                (g,) = torch.autograd.grad(out[:, c].sum(), leaf, retain_graph=True, create_graph=create_graph)
                grads.append(g)
        g = torch.stack(grads, 1).reshape(self.steps, n, k, -1)  # (steps, N, K, D)
        avg = (g * w[:, None, None, None]).sum(0)
        return avg * diff[:, None, :]

    def _shap(self, model, x, h):
        import shap

        mod = self._module(model)
        bg = self.background_.to(h.device, h.dtype).reshape((-1,) + self.h_shape_)
        hh = h.detach().reshape((-1,) + self.h_shape_)
        if self.estimator == "shap_deep":
            expl = shap.DeepExplainer(mod, bg)
            vals = expl.shap_values(hh, check_additivity=False)
        else:
            head = _Head(model, mod, x.detach())
            expl = shap.GradientExplainer(head, bg, batch_size=max(1, self.batch_size))
            np.random.seed(0 if self.seed is None else int(self.seed))
            vals = expl.shap_values(hh, nsamples=self.steps)
        arr = np.stack(vals, 1) if isinstance(vals, list) else np.moveaxis(np.asarray(vals), -1, 1)
        return torch.as_tensor(arr.reshape(h.shape[0], arr.shape[1], -1), dtype=h.dtype, device=h.device)

    def shap_values(self, model, x: torch.Tensor, create_graph: bool = False, estimator: Optional[str] = None) -> torch.Tensor:
        """Shapley values of the penultimate neurons for every class: (N, K, D)."""
        est = estimator or self.estimator
        with torch.set_grad_enabled(create_graph):
            h, _ = self.representation(model, x)
        h = h.reshape(h.shape[0], -1)
        if est == "ig":
            return self._ig(model, x, h if create_graph else h.detach(), create_graph)
        return self._shap(model, x, h)

    def signature(self, model, x: torch.Tensor, create_graph: bool = False, estimator: Optional[str] = None) -> torch.Tensor:
        """The detector's input: (N, K * D) for ``classes="all"``, (N, D) for ``"predicted"``."""
        sv = self.shap_values(model, x, create_graph, estimator)
        if self.classes == "predicted":
            with torch.no_grad():
                pred = forward(model, x).argmax(1)
            return sv.gather(1, pred[:, None, None].expand(-1, 1, sv.shape[2]))[:, 0]
        return sv.reshape(sv.shape[0], -1)

    # ------------------------------------------------------------------ fit / score
    def _fit(self, model, x_clean, x_adv):
        mod = self._module(model)
        with torch.no_grad():
            nb = min(self.n_background, len(x_clean))
            g = self._gen(7)
            idx = torch.randperm(len(x_clean), generator=g)[:nb].to(x_clean.device)
            h, out = batched_apply(lambda z: self.representation(model, z), x_clean[idx], self.batch_size)
            self.h_shape_ = tuple(h.shape[1:])
            hf = h.reshape(nb, -1)
            self.background_ = hf
            self.baseline_ = hf.mean(0, keepdim=True)
            direct = mod(h)
            self.head_is_layer_ = direct.shape == out.shape and bool(torch.allclose(direct, out, atol=1e-5, rtol=1e-4))
            self.head_linear_ = self.head_is_layer_ and isinstance(mod, nn.Linear)
        if self.estimator == "shap_deep" and not self.head_is_layer_:
            raise ValueError("estimator='shap_deep' needs the signature layer to produce the model output "
                             "(e.g. the last nn.Linear); use estimator='ig' or 'shap_gradient'")
        sc = torch.cat([self.signature(model, x_clean[i:i + self.batch_size]) for i in range(0, len(x_clean), self.batch_size)])
        sa = torch.cat([self.signature(model, x_adv[i:i + self.batch_size]) for i in range(0, len(x_adv), self.batch_size)])
        feats = torch.cat([sc, sa]).detach()
        mean, std = sc.mean(0), sc.std(0).clamp_min(1e-6)
        d = feats.shape[1]
        self.net_ = seeded_module(lambda: nn.Sequential(_Standardize(mean, std), nn.Linear(d, self.hidden),
                                                        nn.ReLU(), nn.Linear(self.hidden, 1)),
                                  self.seed, x_clean.device, x_clean.dtype)
        lab = torch.cat([torch.zeros(len(sc)), torch.ones(len(sa))])
        train_binary(self.net_, feats, lab, epochs=self.epochs, lr=self.lr, weight_decay=self.weight_decay,
                     batch_size=self.train_batch_size, seed=self.seed, progress=self.progress,
                     desc="ShapSignatureDetector")

    def _score(self, model, x, create_graph):
        self.net_.to(x.device)
        return self.net_(self.signature(model, x, create_graph)).reshape(-1)

    def _surrogate(self, model, x):
        self.net_.to(x.device)
        return self.net_(self.signature(model, x, True, estimator="ig")).reshape(-1)
