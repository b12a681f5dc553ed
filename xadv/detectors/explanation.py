"""Detectors that read explanation maps: SaliencyDetector, XEnsemble, ExplanationAutoencoder."""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._validation import check_positive_int
from ..explainers import Explainer
from .base import (Detector, TorchLogistic, _register, as_list, check_fraction, explain_batched, make_generator,
                   map_net, resolve_explainer, seeded_module, train_binary)


def _map_scale(maps: torch.Tensor) -> torch.Tensor:
    """Per-channel standard deviation of maps (N, C, ...) -> (1, C, 1, ...), floored."""
    if maps.dim() < 3:
        return maps.std().clamp_min(1e-12).reshape(1, 1)
    dims = [0] + list(range(2, maps.dim()))
    s = maps.std(dim=dims, keepdim=True)
    return s.clamp_min(1e-12)


@_register
class SaliencyDetector(Detector):
    """A small CNN trained on explanation maps of clean vs adversarial inputs.

    The explainer (any xadv explainer, or several; default plain gradients) explains the model's
    predicted class; maps are divided by their per-channel standard deviation on clean
    fitting data (so magnitudes, which differ between clean and adversarial inputs,
    are kept) and classified by a two-layer CNN (an MLP for non-image inputs). The score
    is the CNN's logit.

    Parameters
    ----------
    explainer : str, Explainer or a sequence of them, default "saliency"
        Registry name (``"input"`` reads the raw input instead) or an instance. Names
        get cheap defaults (IG ``steps=8``, SmoothGrad ``n_samples=8, noise=0.1, seed=0``).
        With several explainers their maps are stacked as channels, e.g.
        ``("saliency", Saliency(score="log_softmax"))``: the logit gradient exposes
        large perturbations, the log-probability gradient (near zero for confident
        inputs) exposes minimal ones that end near the decision boundary (C&W).
    with_input : bool, default False
        Stack the input next to the map as extra channels.
    width, hidden : int, default 16, 64
        Channels of the first conv layer and units of the dense layer.
    epochs, lr, weight_decay, train_batch_size : training of the CNN (Adam, balanced BCE).
    fpr, val_fraction, batch_size, seed, progress : see :class:`Detector`.

    Differentiable when the explainer is (adaptive attacks go through the explainer with
    ``create_graph=True`` and through the CNN).

    References
    ----------
    Zhang, Yang, Ye. Detecting Adversarial Perturbations with Saliency. ICSIP 2018.
    Wang, Wu, Li, Lin, Wu, Li. Interpretability is a Kind of Safety: An Interpreter-based
    Ensemble for Adversary Defense. KDD 2020 (one such detector per interpreter).

    Examples
    --------
    >>> import torch
    >>> from xadv.detectors import SaliencyDetector
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> xc, xa = torch.rand(40, 1, 4, 4), torch.rand(40, 1, 4, 4) * 0.2
    >>> det = SaliencyDetector(epochs=2).fit(net, xc, xa)
    >>> det.score(net, xc[:5]).shape
    torch.Size([5])
    """

    def __init__(self, explainer: Union[str, Explainer] = "saliency", *, with_input: bool = False, width: int = 16,
                 hidden: int = 64, epochs: int = 20, lr: float = 2e-3, weight_decay: float = 1e-4,
                 train_batch_size: int = 64, **kwargs):
        super().__init__(**kwargs)
        self.explainer = explainer if isinstance(explainer, (str, Explainer)) else tuple(explainer)
        self.explainers_ = [resolve_explainer(e) for e in as_list(explainer)]  # fail early on a bad name
        if not self.explainers_:
            raise ValueError("explainer must name at least one explainer")
        self.explainer_ = self.explainers_[0]
        self.with_input = bool(with_input)
        self.width = check_positive_int(width, "width")
        self.hidden = check_positive_int(hidden, "hidden")
        self.epochs = check_positive_int(epochs, "epochs")
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.train_batch_size = check_positive_int(train_batch_size, "train_batch_size")

    @property
    def differentiable(self) -> bool:  # type: ignore[override]
        return all(e.differentiable for e in self.explainers_)

    @property
    def surrogate_note(self) -> str:  # type: ignore[override]
        bad = [e.name for e in self.explainers_ if not e.differentiable]
        if not bad:
            return ""
        return f"{', '.join(bad)} not differentiable: map held constant (BPDA, zero gradient)"

    def _raw_maps(self, model, x, create_graph):
        parts = [explain_batched(e, model, x, create_graph=create_graph and e.differentiable,
                                 batch_size=self.batch_size) for e in self.explainers_]
        return torch.cat(parts, 1) if len(parts) > 1 else parts[0]

    def maps(self, model, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        """The CNN's input: scaled explanation maps, one block of channels per explainer
        (and the input with ``with_input``)."""
        a = self._raw_maps(model, x, create_graph)
        a = a / self.scale_.to(a.device, a.dtype)
        if self.with_input:
            a = torch.cat([a, x], dim=1)
        return a

    def _fit(self, model, x_clean, x_adv):
        a_clean = self._raw_maps(model, x_clean, False)
        a_adv = self._raw_maps(model, x_adv, False)
        self.scale_ = _map_scale(a_clean)
        feats = torch.cat([a_clean, a_adv]) / self.scale_
        if self.with_input:
            feats = torch.cat([feats, torch.cat([x_clean, x_adv])], dim=1)
        labels = torch.cat([torch.zeros(len(a_clean)), torch.ones(len(a_adv))])
        shape = tuple(feats.shape[1:])
        self.net_ = seeded_module(lambda: map_net(shape, self.width, self.hidden), self.seed, x_clean.device,
                                  x_clean.dtype)
        train_binary(self.net_, feats, labels, epochs=self.epochs, lr=self.lr, weight_decay=self.weight_decay,
                     batch_size=self.train_batch_size, seed=self.seed, progress=self.progress,
                     desc=f"SaliencyDetector({'+'.join(e.name for e in self.explainers_)})")

    def _score(self, model, x, create_graph):
        self.net_.to(device=x.device)
        m = self.maps(model, x, create_graph)
        return self.net_(m.to(next(self.net_.parameters()).dtype)).reshape(-1)


@_register
class XEnsemble(Detector):
    """One :class:`SaliencyDetector` per explainer, combined by a random forest.

    The clean and adversarial fitting inputs are split: a fraction ``1 - stack_fraction``
    trains the sub-detectors, the rest trains the scikit-learn ``RandomForestClassifier``
    on their scores (so the forest never sees scores of inputs a sub-detector was trained
    on). The score is the forest's probability of "adversarial".

    Not differentiable (a forest): :meth:`surrogate_score` replaces the forest by a
    logistic regression fitted to the forest's probabilities on the stacking split
    (``surrogate="logistic"``) or by the sum of the members' standardised scores
    (``"members"``: an input that evades every member evades the forest; weaker in our
    runs); the members stay exact (explainers differentiated with ``create_graph=True``).

    Parameters
    ----------
    explainers : sequence of str, Explainer or tuples of them,
        default ("input", "saliency", "integrated_gradients", "smoothgrad", "gradcam")
        One sub-detector per entry; a tuple gives one sub-detector on stacked maps.
        ``"lime"`` may be added; its map is constant under the surrogate (BPDA).
    n_estimators : int, default 100
    stack_fraction : float, default 0.3
    surrogate : {"logistic", "members"}, default "logistic"
    epochs, lr, weight_decay, width, hidden, train_batch_size : for every sub-detector.
    fpr, val_fraction, batch_size, seed, progress : see :class:`Detector`.

    References
    ----------
    Wang, Wu, Li, Lin, Wu, Li. Interpretability is a Kind of Safety: An Interpreter-based
    Ensemble for Adversary Defense (X-Ensemble). KDD 2020.

    Examples
    --------
    >>> import torch
    >>> from xadv.detectors import XEnsemble
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> det = XEnsemble(explainers=("input", "saliency"), epochs=2, n_estimators=10)
    >>> det = det.fit(net, torch.rand(40, 1, 4, 4), torch.rand(40, 1, 4, 4) * 0.2)
    >>> det.predict(net, torch.rand(3, 1, 4, 4)).dtype
    torch.bool
    """

    differentiable = False

    def __init__(self, explainers: Sequence[Union[str, Explainer]] = ("input", "saliency", "integrated_gradients",
                                                                         "smoothgrad", "gradcam"),
                 *, n_estimators: int = 100, stack_fraction: float = 0.3, epochs: int = 20, lr: float = 2e-3,
                 weight_decay: float = 1e-4, width: int = 16, hidden: int = 64, train_batch_size: int = 64,
                 surrogate: str = "logistic", **kwargs):
        super().__init__(**kwargs)
        if surrogate not in ("members", "logistic"):
            raise ValueError(f"surrogate must be 'members' or 'logistic', got {surrogate!r}")
        self.surrogate = surrogate
        self.explainers = tuple(e if isinstance(e, (str, Explainer)) else tuple(e) for e in as_list(explainers))
        if not self.explainers:
            raise ValueError("explainers must name at least one explainer")
        for e in self.explainers:
            for one in as_list(e):
                resolve_explainer(one)
        self.n_estimators = check_positive_int(n_estimators, "n_estimators")
        self.stack_fraction = check_fraction(stack_fraction, "stack_fraction")
        self.epochs = check_positive_int(epochs, "epochs")
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.width = width
        self.hidden = hidden
        self.train_batch_size = train_batch_size

    def _split2(self, x, offset):
        g = self._gen(100 + offset)
        perm = torch.randperm(x.shape[0], generator=g).to(x.device)
        k = max(2, int(round(self.stack_fraction * x.shape[0])))
        return x[perm[k:]], x[perm[:k]]

    def sub_scores(self, model, x, create_graph: bool = False) -> torch.Tensor:
        """Scores of every sub-detector, shape (N, len(explainers))."""
        cols = []
        for d in self.detectors_:
            if create_graph:
                cols.append(d._surrogate(model, x))
            else:
                cols.append(d._score(model, x, False).detach())
        return torch.stack(cols, 1)

    def _fit(self, model, x_clean, x_adv):
        from sklearn.ensemble import RandomForestClassifier

        ca, cb = self._split2(x_clean, 0)
        aa, ab = self._split2(x_adv, 1)
        self.detectors_ = []
        for i, e in enumerate(self.explainers):
            d = SaliencyDetector(e, epochs=self.epochs, lr=self.lr, weight_decay=self.weight_decay, width=self.width,
                                 hidden=self.hidden, train_batch_size=self.train_batch_size, val_fraction=0.0,
                                 batch_size=self.batch_size, seed=None if self.seed is None else int(self.seed) + i,
                                 progress=self.progress)
            d.fit(model, ca, aa)
            self.detectors_.append(d)
        feats = torch.cat([self.sub_scores(model, cb), self.sub_scores(model, ab)]).double()
        labels = np.r_[np.zeros(len(cb)), np.ones(len(ab))].astype(int)
        rs = None if self.seed is None else int(self.seed)
        self.forest_ = RandomForestClassifier(n_estimators=self.n_estimators, min_samples_leaf=2, random_state=rs,
                                              class_weight="balanced", n_jobs=1)
        self.forest_.fit(feats.numpy(force=True), labels)
        # surrogate: logistic regression on the same features, fitted to the forest's probabilities
        p = self.forest_.predict_proba(feats.numpy(force=True))[:, 1]
        both = torch.cat([feats, feats])
        lab = torch.cat([torch.ones(len(p)), torch.zeros(len(p))]).to(feats.device)
        w = np.r_[p, 1.0 - p] + 1e-6
        self.surrogate_ = TorchLogistic.fit(both, lab, C=1.0, sample_weight=w, balanced=False).to(x_clean.dtype)

    def _score(self, model, x, create_graph):
        f = self.sub_scores(model, x).double().numpy(force=True)
        p = self.forest_.predict_proba(f)[:, 1]
        return torch.as_tensor(p, dtype=x.dtype, device=x.device)

    @property
    def surrogate_note(self) -> str:  # type: ignore[override]
        if self.surrogate == "members":
            return ("random forest replaced by the sum of the members' standardised scores "
                    "(evading every member evades the forest)")
        return "random forest replaced by a logistic regression fitted to its probabilities"

    def _surrogate(self, model, x):
        f = self.sub_scores(model, x, create_graph=True).to(x.dtype)
        if self.surrogate == "members":
            thr = torch.tensor([d.threshold_ for d in self.detectors_], dtype=x.dtype, device=x.device)
            scale = torch.tensor([d.score_scale_ for d in self.detectors_], dtype=x.dtype, device=x.device)
            return ((f - thr) / scale).sum(1)
        return self.surrogate_.to(x.device)(f)


@_register
class ExplanationAutoencoder(Detector):
    """Unsupervised: an autoencoder of clean explanation maps; the score is the
    reconstruction error (Ko & Lim).

    Maps of the predicted class are scaled by their clean standard deviation, flattened
    and reconstructed by an MLP autoencoder; with ``conditional=True`` the decoder also
    receives the predicted class (one-hot), standing in for the paper's one
    reconstructor per class. Only clean inputs are needed: ``fit(model, x_clean)``; the
    adversarial inputs, when given, are used only for ``fit_info_["val_auroc"]``.

    Parameters
    ----------
    explainer : str or Explainer, default "saliency"
    latent, hidden : int, default 32, 256
    conditional : bool, default True
    epochs, lr, weight_decay, train_batch_size : training (Adam, MSE).
    fpr, val_fraction, batch_size, seed, progress : see :class:`Detector`.

    References
    ----------
    Ko, Lim. Unsupervised Detection of Adversarial Examples with Model Explanations.
    KDD AdvML workshop 2021.

    Examples
    --------
    >>> import torch
    >>> from xadv.detectors import ExplanationAutoencoder
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> det = ExplanationAutoencoder(epochs=2).fit(net, torch.rand(40, 1, 4, 4))
    >>> det.score(net, torch.rand(2, 1, 4, 4)).shape
    torch.Size([2])
    """

    needs_adversarial = False

    def __init__(self, explainer: Union[str, Explainer] = "saliency", *, latent: int = 32, hidden: int = 256,
                 conditional: bool = True, epochs: int = 60, lr: float = 2e-3, weight_decay: float = 0.0,
                 train_batch_size: int = 64, **kwargs):
        super().__init__(**kwargs)
        self.explainer = explainer
        self.explainer_ = resolve_explainer(explainer)
        self.latent = check_positive_int(latent, "latent")
        self.hidden = check_positive_int(hidden, "hidden")
        self.conditional = bool(conditional)
        self.epochs = check_positive_int(epochs, "epochs")
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.train_batch_size = check_positive_int(train_batch_size, "train_batch_size")

    @property
    def differentiable(self) -> bool:  # type: ignore[override]
        return bool(self.explainer_.differentiable)

    def _codes(self, model, x, create_graph):
        cg = create_graph and self.explainer_.differentiable
        if cg:
            e = self.explainer_(model, x, None, create_graph=True)
            a, pred = e.attributions, e.target
        else:
            parts = [self.explainer_(model, x[i:i + self.batch_size], None) for i in range(0, len(x), self.batch_size)]
            a = torch.cat([p.attributions.detach() for p in parts])
            pred = torch.cat([p.target for p in parts])
        return a, pred

    def _reconstruct(self, flat, pred):
        z = self.encoder_(flat)
        if self.conditional:
            z = torch.cat([z, F.one_hot(pred, self.num_classes_).to(z.dtype)], 1)
        return self.decoder_(z)

    def _fit(self, model, x_clean, x_adv):
        a, pred = self._codes(model, x_clean, False)
        self.scale_ = _map_scale(a)
        flat = (a / self.scale_).reshape(len(a), -1)
        d = flat.shape[1]
        k = self.num_classes_ if self.conditional else 0
        dev, dt = x_clean.device, x_clean.dtype
        self.encoder_ = seeded_module(lambda: nn.Sequential(nn.Linear(d, self.hidden), nn.ReLU(),
                                                            nn.Linear(self.hidden, self.latent)), self.seed, dev, dt)
        self.decoder_ = seeded_module(lambda: nn.Sequential(nn.Linear(self.latent + k, self.hidden), nn.ReLU(),
                                                            nn.Linear(self.hidden, d)),
                                      None if self.seed is None else int(self.seed) + 1, dev, dt)
        params = list(self.encoder_.parameters()) + list(self.decoder_.parameters())
        opt = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        g = make_generator(self.seed)
        from .._progress import track

        for _ in track(range(self.epochs), "ExplanationAutoencoder", progress=self.progress, unit="epoch"):
            perm = torch.randperm(len(flat), generator=g).to(dev)
            for i in range(0, len(flat), self.train_batch_size):
                idx = perm[i:i + self.train_batch_size]
                loss = F.mse_loss(self._reconstruct(flat[idx], pred[idx]), flat[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        for p in params:
            p.requires_grad_(False)

    def _score(self, model, x, create_graph):
        self.encoder_.to(x.device)
        self.decoder_.to(x.device)
        a, pred = self._codes(model, x, create_graph)
        flat = (a / self.scale_.to(a.device, a.dtype)).reshape(len(a), -1)
        rec = self._reconstruct(flat, pred)
        return (rec - flat).pow(2).mean(1)
