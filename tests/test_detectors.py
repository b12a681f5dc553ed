"""Detectors: known-answer synthetic cases, reference metrics, save/load, seeds, bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import xadv.detectors as D
from xadv.detectors import (Detector, ExplanationAutoencoder, KDBUDetector, LOODetector, MahalanobisDetector,
                            SaliencyDetector, ShapSignatureDetector, XEnsemble)


# ---------------------------------------------------------------- synthetic data
def _smooth_images(n, g, size=8):
    """Smooth blobs in [0, 1]: clean inputs."""
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    c = torch.rand(n, 2, generator=g) * (size - 1)
    w = 1.0 + torch.rand(n, generator=g) * 2
    img = torch.exp(-((yy - c[:, 0, None, None]) ** 2 + (xx - c[:, 1, None, None]) ** 2) / (2 * w[:, None, None] ** 2))
    return (0.8 * img)[:, None]


def _perturbed(x, g, amp=0.15):
    """The known answer: adversarial inputs carry a random-sign high-frequency pattern."""
    size = x.shape[-1]
    checker = ((torch.arange(size)[:, None] + torch.arange(size)[None]) % 2 * 2 - 1).float()
    signs = torch.where(torch.rand(x.shape[0], 1, 1, 1, generator=g) < 0.5, -1.0, 1.0)
    return (x + amp * signs * checker).clamp(0, 1)


def _planted_net():
    """A small CNN with one planted unit: a zero-sum checkerboard filter with a negative bias.

    It stays off on smooth (clean) images and switches on under the checkerboard
    perturbation, so the perturbation shows in the gradient, in the activations and in
    occlusion attributions: every detector has a known signal to find."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 6, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(6 * 64, 5)).eval()
    k = ((torch.arange(3)[:, None] + torch.arange(3)[None]) % 2 == 0).float()
    k = torch.where(k > 0, torch.ones(3, 3), torch.full((3, 3), -1.25))
    with torch.no_grad():
        net[0].weight[0, 0] = k
        net[0].bias[0] = -0.3
        net[2].weight[:, 0] *= 3.0
    return net


@pytest.fixture(scope="module")
def synth():
    net = _planted_net()
    g = torch.Generator().manual_seed(1)
    xc = _smooth_images(240, g)
    xa = _perturbed(_smooth_images(240, g), g)
    return net, xc[:160], xa[:160], xc[160:], xa[160:]


FAST = {
    "saliency": lambda: SaliencyDetector(epochs=15, seed=0),
    "xensemble": lambda: XEnsemble(("input", "saliency", "gradcam"), epochs=10, n_estimators=30, seed=0),
    "loo": lambda: LOODetector(patch=2, seed=0),
    "shap": lambda: ShapSignatureDetector(epochs=20, seed=0),
    "autoencoder": lambda: ExplanationAutoencoder("input_x_gradient", epochs=40, seed=0),
    "mahalanobis": lambda: MahalanobisDetector(seed=0),
    "kdbu": lambda: KDBUDetector(n_samples=5, seed=0),
}


def _auc(det, net, xc, xa):
    s = torch.cat([det.score(net, xc), det.score(net, xa)])
    lab = torch.cat([torch.zeros(len(xc)), torch.ones(len(xa))])
    return D.auroc(lab, s)


@pytest.mark.parametrize("name", sorted(FAST))
def test_detector_beats_chance_on_known_synthetic_case(synth, name):
    net, xc, xa, xc_te, xa_te = synth
    det = FAST[name]().fit(net, xc, None if name == "autoencoder" else xa)
    assert _auc(det, net, xc_te, xa_te) > 0.8
    # threshold at ~5% FPR on held-out clean data: the flag rate on fresh clean data stays low
    assert det.predict(net, xc_te).float().mean() < 0.3


def test_detector_at_chance_when_nothing_differs(synth):
    """Same distribution for both classes: AUROC must stay near 1/2 (the pipeline does not leak labels)."""
    net, xc, _, xc_te, _ = synth
    g = torch.Generator().manual_seed(5)
    fake_adv = _smooth_images(160, g)
    det = SaliencyDetector(epochs=10, seed=0).fit(net, xc, fake_adv)
    assert 0.3 < _auc(det, net, xc_te, _smooth_images(80, g)) < 0.7


# ---------------------------------------------------------------- metrics vs scikit-learn
@pytest.mark.reference
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_sklearn(seed):
    from sklearn import metrics as skm

    rng = np.random.RandomState(seed)
    y = rng.randint(0, 2, 300)
    s = np.round(rng.randn(300) + y * 0.8, 1)  # rounding makes ties
    assert D.auroc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert D.aupr(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
    fpr, tpr, thr = D.roc_curve(y, s)
    f2, t2, th2 = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, f2)
    np.testing.assert_allclose(tpr, t2)
    np.testing.assert_allclose(thr[1:], th2[1:])
    for a in (0.01, 0.05, 0.2):
        assert D.tpr_at_fpr(y, s, a) == pytest.approx(t2[f2 <= a].max())
    t = D.threshold_at_fpr(s[y == 0], 0.05)
    assert (s[y == 0] > t).mean() <= 0.05
    assert (s[y == 0] >= t).mean() > 0.05 - 1e-12


def test_metrics_bad_input():
    with pytest.raises(ValueError, match="both classes"):
        D.auroc([1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="same length"):
        D.auroc([0, 1], [0.1])
    with pytest.raises(ValueError, match="NaN"):
        D.aupr([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="0 \\(clean\\) or 1"):
        D.auroc([0, 2], [0.1, 0.2])


# ---------------------------------------------------------------- save / load, seeds, no mutation
@pytest.mark.parametrize("name", ["saliency", "xensemble", "loo", "shap", "kdbu"])
def test_save_load_round_trip(synth, name, tmp_path):
    net, xc, xa, xc_te, xa_te = synth
    det = FAST[name]().fit(net, xc[:60], xa[:60])
    path = det.save(tmp_path / "det.pt")
    back = Detector.load(path)
    assert type(back) is type(det)
    assert back.threshold_ == det.threshold_
    torch.testing.assert_close(back.score(net, xa_te[:10]), det.score(net, xa_te[:10]))
    assert torch.equal(back.predict(net, xc_te[:10]), det.predict(net, xc_te[:10]))
    assert repr(back) == repr(det)
    with pytest.raises(ValueError, match="not a MahalanobisDetector"):
        MahalanobisDetector.load(path)


def test_load_rejects_other_files(tmp_path):
    p = tmp_path / "x.pt"
    torch.save({"a": 1}, p)
    with pytest.raises(ValueError, match="not an xadv detector"):
        Detector.load(p)


def test_same_seed_same_detector(synth):
    net, xc, xa, xc_te, _ = synth
    a = SaliencyDetector(epochs=3, seed=3).fit(net, xc[:60], xa[:60]).score(net, xc_te[:8])
    b = SaliencyDetector(epochs=3, seed=3).fit(net, xc[:60], xa[:60]).score(net, xc_te[:8])
    c = SaliencyDetector(epochs=3, seed=4).fit(net, xc[:60], xa[:60]).score(net, xc_te[:8])
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_model_is_left_unchanged(synth):
    net, xc, xa, _, _ = synth
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    flags = [p.requires_grad for p in net.parameters()]
    det = LOODetector(patch=2).fit(net, xc[:40], xa[:40])
    D.AdaptiveAttack(det, eps=0.1, steps=2)(net, xc[:4], net(xc[:4]).argmax(1))
    SaliencyDetector(epochs=1).fit(net, xc[:40], xa[:40]).score(net, xc[:4])
    assert net.training
    assert [p.requires_grad for p in net.parameters()] == flags
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())
    net.eval()


def test_differentiable_score_has_gradient(synth):
    net, xc, xa, _, _ = synth
    smooth = torch.nn.Sequential(*[torch.nn.Softplus(10.0) if isinstance(m, torch.nn.ReLU) else m for m in net])
    det = SaliencyDetector(epochs=3).fit(net, xc[:40], xa[:40])
    x = xa[:3].clone().requires_grad_(True)
    s = det.score(smooth, x, create_graph=True)
    (g,) = torch.autograd.grad(s.sum(), x)
    assert g.abs().sum() > 0
    assert not x.grad  # the user's tensor gets no .grad


def test_non_differentiable_detector_refuses_graph_and_offers_surrogate(synth):
    net, xc, xa, _, _ = synth
    det = FAST["xensemble"]().fit(net, xc[:80], xa[:80])
    with pytest.raises(TypeError, match="surrogate_score"):
        det.score(net, xa[:2], create_graph=True)
    x = xa[:3].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(det.surrogate_score(net, x).sum(), x)
    assert torch.isfinite(g).all()
    assert "random forest" in det.surrogate_note


# ---------------------------------------------------------------- SHAP estimator
@pytest.mark.reference
@pytest.mark.filterwarnings("ignore")
def test_ig_shap_signature_matches_shap_deep_explainer():
    """On the zoo CNN (linear head) our IG estimator equals shap's DeepExplainer."""
    pytest.importorskip("shap")
    from xadv.data import load_digits
    from xadv.zoo import digits_cnn

    net = digits_cnn()
    x, _ = load_digits("test")
    xc, xa = x[:40], (x[40:80] + 0.2 * torch.randn(40, 1, 28, 28, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    ig = ShapSignatureDetector(estimator="ig", epochs=1, n_background=30).fit(net, xc, xa)
    deep = ShapSignatureDetector(estimator="shap_deep", epochs=1, n_background=30).fit(net, xc, xa)
    a = ig.shap_values(net, x[100:104])
    b = deep.shap_values(net, x[100:104])
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert a.shape == (4, 10, 1568)
    # shap's GradientExplainer (expected gradients, sampled backgrounds) agrees up to sampling error
    grad = ShapSignatureDetector(estimator="shap_gradient", steps=16, epochs=1, n_background=30).fit(net, xc, xa)
    grad.steps = 300
    c = grad.shap_values(net, x[100:102])
    assert float((c - a[:2]).norm() / a[:2].norm()) < 0.15
    assert not grad.differentiable and "IG" in grad.surrogate_note


def test_ig_estimator_completeness_on_nonlinear_head():
    """Shapley/IG efficiency: per class the attributions sum to f(h) - f(reference)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 12), torch.nn.Tanh(), torch.nn.Linear(12, 8),
                              torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    g = torch.Generator().manual_seed(0)
    xc = torch.rand(40, 1, 4, 4, generator=g, dtype=torch.float64)
    xa = torch.rand(40, 1, 4, 4, generator=g, dtype=torch.float64)
    det = ShapSignatureDetector(layer="3", steps=32, epochs=1).fit(net, xc, xa)  # head = Linear-Tanh-Linear
    assert not det.head_is_layer_
    x = torch.rand(5, 1, 4, 4, generator=g, dtype=torch.float64)
    sv = det.shap_values(net, x)
    head = torch.nn.Sequential(net[3], net[4], net[5])
    h = net[2](net[1](net[0](x)))
    gap = head(h) - head(det.baseline_)
    torch.testing.assert_close(sv.sum(2), gap, rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------- bad input
def test_bad_input_messages(synth):
    net, xc, xa, _, _ = synth
    with pytest.raises(ValueError, match="unknown explainer"):
        SaliencyDetector("nope")
    with pytest.raises(ValueError, match="fpr"):
        LOODetector(fpr=1.5)
    with pytest.raises(ValueError, match="stats"):
        LOODetector(stats=("median",))
    with pytest.raises(ValueError, match="estimator"):
        ShapSignatureDetector(estimator="kernel")
    det = LOODetector(patch=2)
    with pytest.raises(RuntimeError, match="not fitted"):
        det.score(net, xc)
    with pytest.raises(ValueError, match="supervised"):
        det.fit(net, xc)
    with pytest.raises(TypeError, match="floating point"):
        det.fit(net, (xc * 255).long(), xa)
    with pytest.raises(ValueError, match="per-sample shape"):
        det.fit(net, xc, xa[:, :, :4])
    with pytest.raises(ValueError, match="too few"):
        det.fit(net, xc[:3], xa[:3])
    bad = xc.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        det.fit(net, bad, xa)
    det.fit(net, xc[:40], xa[:40])
    with pytest.raises(ValueError, match="fitted on"):
        det.score(net, torch.rand(2, 1, 6, 6))
    with pytest.raises(TypeError, match="Detector"):
        D.AdaptiveAttack("loo")
    with pytest.raises(ValueError, match="fitted"):
        D.AdaptiveAttack(LOODetector())
    with pytest.raises(TypeError, match="not an xadv Detector"):
        D.evaluate({"a": object()}, net, (xc, torch.zeros(len(xc), dtype=torch.long)),
                   (xc, torch.zeros(len(xc), dtype=torch.long)), train_attacks={}, test_attacks={})


@pytest.mark.filterwarnings("ignore")
def test_xensemble_with_lime_member_uses_bpda(synth):
    """LIME is not differentiable: it can still be a member; the surrogate holds its map constant."""
    from xadv.explainers import LIME

    net, xc, xa, _, _ = synth
    grid = (torch.arange(8)[:, None] // 2) * 4 + torch.arange(8)[None] // 2  # 2x2 patches as superpixels
    lime = LIME(segmentation=grid, n_samples=30, seed=0)
    det = XEnsemble(("saliency", lime), epochs=3, n_estimators=10, seed=0).fit(net, xc[:40], xa[:40])
    assert not det.detectors_[1].differentiable and "BPDA" in det.detectors_[1].surrogate_note
    x = xa[:2].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(det.surrogate_score(net, x).sum(), x)
    assert torch.isfinite(g).all()
