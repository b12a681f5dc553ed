"""Baselines that do not read explanations: Mahalanobis (Lee et al.) and KD + BU (Feinman et al.)."""
from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .._validation import check_positive_int, find_module
from ..explainers.base import forward
from .base import Detector, TorchLogistic, _register, batched_apply, make_generator
from .shap_signature import last_linear


def _capture(model, modules: List[nn.Module], x: torch.Tensor, pool: bool = True, every_call: bool = False):
    """Outputs of ``modules`` (spatially averaged when ``pool``) and the model output.

    ``every_call``: one feature per call in forward order (a module called twice, like
    the ReLU of torchvision's BasicBlock, gives two); otherwise each module must run
    exactly once.
    """
    store: List[torch.Tensor] = []

    def hook(_m, _i, out):
        # copied now: an in-place op later in forward (ReLU(inplace=True), ``+=``) must not change it
        store.append(out.mean(dim=tuple(range(2, out.dim()))) if (pool and out.dim() > 2) else out.flatten(1).clone())

    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        out = forward(model, x)
    finally:
        for h in handles:
            h.remove()
    if not every_call and len(store) != len(modules):
        raise ValueError("each feature layer must be called exactly once per forward pass; pass layers= explicitly")
    return store, out


@_register
class MahalanobisDetector(Detector):
    """Mahalanobis confidence scores at several layers, combined by a logistic regression.

    For each layer the (spatially averaged) activations get class-conditional Gaussians
    with a shared covariance fitted on clean inputs (classes = the model's predictions,
    which are the labels for the correctly classified inputs ``fit`` receives). The layer
    score is ``max_c -(f - mu_c)^T Sigma^-1 (f - mu_c)``; with ``noise > 0`` the input is
    first moved by ``noise`` along the sign of the gradient that increases it (Lee et al.'s
    input preprocessing; straight-through under adaptive attacks). A logistic regression
    on the layer scores (clean vs adversarial) gives the score.

    Parameters
    ----------
    layers : sequence of str or nn.Module, optional
        Default every call of every ``nn.ReLU`` module (a ReLU module called twice in
        ``forward``, as in torchvision's ResNet blocks, gives two feature layers); given
        layers must each run once per forward pass.
    noise : float, default 0.0
    shrinkage : float, default 1e-3
        Added to the covariance diagonal (times its mean variance) before inversion.
    C : float, default 1.0
    fpr, val_fraction, batch_size, seed, progress : see :class:`Detector`.

    References
    ----------
    Lee, Lee, Lee, Shin. A Simple Unified Framework for Detecting Out-of-Distribution
    Samples and Adversarial Attacks. NeurIPS 2018.

    Examples
    --------
    >>> import torch
    >>> from xadv.detectors import MahalanobisDetector
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> det = MahalanobisDetector().fit(net, torch.rand(40, 1, 4, 4), torch.rand(40, 1, 4, 4) * 0.2)
    >>> det.score(net, torch.rand(2, 1, 4, 4)).shape
    torch.Size([2])
    """

    uses_explanations = False
    second_order = False

    def __init__(self, layers: Optional[Sequence[Union[str, nn.Module]]] = None, *, noise: float = 0.0,
                 shrinkage: float = 1e-3, C: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.layers = None if layers is None else list(layers)
        if float(noise) < 0:
            raise ValueError(f"noise must be >= 0, got {noise!r}")
        self.noise = float(noise)
        self.shrinkage = float(shrinkage)
        self.C = float(C)

    def _modules(self, model):
        if not isinstance(model, nn.Module):
            raise TypeError("MahalanobisDetector needs a torch.nn.Module to read its layers")
        if self.layers is None:
            mods = [m for m in model.modules() if isinstance(m, nn.ReLU)]
            if not mods:
                raise ValueError("the model has no nn.ReLU module; pass layers= explicitly")
            return mods
        return [find_module(model, l) for l in self.layers]

    def _layer_scores(self, feats: List[torch.Tensor]) -> torch.Tensor:
        if len(feats) != len(self.means_):
            raise ValueError(f"the model gave {len(feats)} feature layers but the detector was fitted on "
                             f"{len(self.means_)}; score with the model it was fitted on")
        cols = []
        for f, mu, prec in zip(feats, self.means_, self.precisions_):
            mu, prec = mu.to(f.device, f.dtype), prec.to(f.device, f.dtype)
            d = f[:, None, :] - mu[None]  # (N, K, D)
            m = torch.einsum("nkd,de,nke->nk", d, prec, d)
            cols.append(-m.min(1).values)
        return torch.stack(cols, 1)

    def layer_scores(self, model, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        """Mahalanobis confidence per layer (N, n_layers), after input preprocessing."""
        mods = self._modules(model)
        every = self.layers is None
        if self.noise > 0:
            cols = []
            for j in range(len(mods)):
                with torch.enable_grad():
                    xi = x.detach().requires_grad_(True)
                    feats, _ = _capture(model, mods, xi, every_call=every)
                    s = self._layer_scores(feats)[:, j]
                    (g,) = torch.autograd.grad(s.sum(), xi)
                xp = x + self.noise * g.sign()  # straight-through: sign is a constant
                with torch.set_grad_enabled(create_graph):
                    feats, _ = _capture(model, mods, xp, every_call=every)
                    cols.append(self._layer_scores(feats)[:, j])
            return torch.stack(cols, 1)
        with torch.set_grad_enabled(create_graph):
            feats, _ = _capture(model, mods, x, every_call=every)
            return self._layer_scores(feats)

    def _fit(self, model, x_clean, x_adv):
        mods = self._modules(model)
        with torch.no_grad():
            feats, out = batched_apply(lambda z: _capture(model, mods, z, every_call=self.layers is None), x_clean,
                                       self.batch_size)
        pred = out.argmax(1)
        k = out.shape[1]
        self.means_, self.precisions_ = [], []
        for f in feats:
            f = f.double()
            mu = torch.stack([f[pred == c].mean(0) if (pred == c).any() else f.mean(0) for c in range(k)])
            centred = f - mu[pred]
            cov = centred.T @ centred / len(f)
            cov = cov + self.shrinkage * cov.diagonal().mean().clamp_min(1e-12) * torch.eye(len(cov), dtype=cov.dtype,
                                                                                               device=cov.device)
            self.means_.append(mu.to(x_clean.dtype))
            self.precisions_.append(torch.linalg.pinv(cov, hermitian=True).to(x_clean.dtype))
        sc = batched_apply(lambda z: self.layer_scores(model, z), x_clean, self.batch_size)
        sa = batched_apply(lambda z: self.layer_scores(model, z), x_adv, self.batch_size)
        lab = torch.cat([torch.zeros(len(sc)), torch.ones(len(sa))])
        self.lr_ = TorchLogistic.fit(torch.cat([sc, sa]), lab, C=self.C).to(x_clean.dtype)

    def _score(self, model, x, create_graph):
        return self.lr_.to(x.device)(self.layer_scores(model, x, create_graph))


@_register
class KDBUDetector(Detector):
    """Kernel density (KD) and Bayesian uncertainty (BU) features, logistic regression on top.

    KD: Gaussian kernel density of the penultimate representation (input of ``layer``,
    default the last ``nn.Linear``) among clean fitting inputs of the predicted class,
    as a log-density. BU: variance of the softmax output under Monte-Carlo dropout with
    rate ``dropout`` applied to the penultimate representation (the model's own dropout
    layers are not switched on; the same draws for every call: ``seed``). The two
    features are standardised and fed to a logistic regression, as in the paper.

    Parameters
    ----------
    layer : str or nn.Module, optional
    bandwidth : float, optional
        Kernel width; default the median distance between clean representations of the
        same class.
    n_samples : int, default 20
        Dropout draws for BU.
    dropout : float, default 0.5
    max_reference : int, default 1000
        Clean representations kept for the density.
    C : float, default 1.0
    fpr, val_fraction, batch_size, seed, progress : see :class:`Detector`.

    References
    ----------
    Feinman, Curtin, Shintre, Gardner. Detecting Adversarial Samples from Artifacts. 2017.

    Examples
    --------
    >>> import torch
    >>> from xadv.detectors import KDBUDetector
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> det = KDBUDetector(n_samples=4).fit(net, torch.rand(40, 1, 4, 4), torch.rand(40, 1, 4, 4) * 0.2)
    >>> det.features(net, torch.rand(2, 1, 4, 4)).shape
    torch.Size([2, 2])
    """

    uses_explanations = False
    second_order = False

    def __init__(self, layer: Optional[Union[str, nn.Module]] = None, *, bandwidth: Optional[float] = None,
                 n_samples: int = 20, dropout: float = 0.5, max_reference: int = 1000, C: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.layer = layer
        if bandwidth is not None and not float(bandwidth) > 0:
            raise ValueError(f"bandwidth must be positive, got {bandwidth!r}")
        self.bandwidth = None if bandwidth is None else float(bandwidth)
        self.n_samples = check_positive_int(n_samples, "n_samples", minimum=2)
        if not 0.0 < float(dropout) < 1.0:
            raise ValueError(f"dropout must be in (0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        self.max_reference = check_positive_int(max_reference, "max_reference")
        self.C = float(C)

    def _module(self, model):
        if not isinstance(model, nn.Module):
            raise TypeError("KDBUDetector needs a torch.nn.Module")
        return find_module(model, self.layer if self.layer is not None else last_linear(model))

    def _rep(self, model, x):
        mod = self._module(model)
        store = {}

        def pre(_m, args):
            store["h"] = args[0]

        h = mod.register_forward_pre_hook(pre)
        try:
            out = forward(model, x)
        finally:
            h.remove()
        return store["h"], out

    def features(self, model, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        """``[log KD, BU]`` per input, shape (N, 2)."""
        mod = self._module(model)
        with torch.set_grad_enabled(create_graph):
            h, out = self._rep(model, x)
            hf = h.flatten(1)
            pred = out.detach().argmax(1)
            ref = self.reference_.to(hf.device, hf.dtype)
            ref_lab = self.reference_labels_.to(hf.device)
            d2 = torch.cdist(hf, ref).pow(2)  # (N, R)
            logk = -d2 / self.bandwidth_ ** 2
            same = ref_lab[None, :] == pred[:, None]
            logk = torch.where(same, logk, torch.full_like(logk, -torch.inf))
            counts = same.sum(1).clamp_min(1).to(hf.dtype)
            kd = torch.logsumexp(logk, 1) - counts.log()
            kd = torch.where(torch.isfinite(kd), kd, torch.full_like(kd, -1e4))
            # Bayesian uncertainty: dropout on the penultimate representation, fixed draws
            g = make_generator(self.seed, None)
            probs = []
            for _ in range(self.n_samples):
                keep = (torch.rand(h.shape, generator=g) >= self.dropout).to(h.device, h.dtype) / (1 - self.dropout)

                def pre(_m, args, keep=keep):
                    return (args[0] * keep,) + tuple(args[1:])

                if self.head_is_layer_:  # dropout only changes the head: skip the rest of the network
                    probs.append(F.softmax(mod(h * keep), 1))
                    continue
                hd = mod.register_forward_pre_hook(pre)
                try:
                    probs.append(F.softmax(forward(model, x), 1))
                finally:
                    hd.remove()
            p = torch.stack(probs)  # (T, N, K)
            bu = (p * p).sum(2).mean(0) - (p.mean(0) ** 2).sum(1)
        return torch.stack([kd, bu], 1)

    def _fit(self, model, x_clean, x_adv):
        with torch.no_grad():
            h, out = batched_apply(lambda z: self._rep(model, z), x_clean, self.batch_size)
        hf = h.flatten(1)
        pred = out.argmax(1)
        with torch.no_grad():
            direct = self._module(model)(h)
            self.head_is_layer_ = direct.shape == out.shape and bool(torch.allclose(direct, out, atol=1e-5, rtol=1e-4))
        perm = torch.randperm(len(hf), generator=self._gen(3)).to(hf.device)
        half = len(hf) // 2  # the reference set and the clean inputs the regression sees are disjoint
        keep, rest = perm[: min(self.max_reference, half)], perm[half:]
        self.reference_ = hf[keep]
        self.reference_labels_ = pred[keep]
        if self.bandwidth is None:
            d = torch.cdist(self.reference_, self.reference_)
            same = (self.reference_labels_[:, None] == self.reference_labels_[None]) & ~torch.eye(len(d), dtype=torch.bool,
                                                                                                 device=d.device)
            self.bandwidth_ = float(d[same].median()) if same.any() else float(d.median())
        else:
            self.bandwidth_ = self.bandwidth
        fc = self.features(model, x_clean[rest])  # one call: the BU draws are seeded per call
        fa = self.features(model, x_adv)
        lab = torch.cat([torch.zeros(len(fc)), torch.ones(len(fa))])
        self.lr_ = TorchLogistic.fit(torch.cat([fc, fa]), lab, C=self.C).to(x_clean.dtype)

    def _score(self, model, x, create_graph):
        return self.lr_.to(x.device)(self.features(model, x, create_graph))
