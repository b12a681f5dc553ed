"""Own-model options of the explainers: callable GradientSHAP backgrounds and Occlusion
baselines (against captum with the equivalent tensors, and captum's own callable
``baselines``), and SmoothGrad around a layer explainer with several layers (against the
explicit mean of captum's layer methods over the same noisy copies). On a tabular MLP,
the digits CNN, a ResNet-style model at 3x32x32 and the token model."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import xadv
import xadv.data
import xadv.zoo
from xadv.explainers import GradientSHAP, InputXGradient, IntegratedGradients, Occlusion, Saliency, SmoothGrad

from test_explainers_more import _captum_occlusion, _our_draws

assert_close = torch.testing.assert_close

pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor .* did not already require gradients")


@pytest.fixture(scope="module")
def tabular64():
    model = xadv.zoo.tabular_mlp(pretrained=True).double().eval()
    x, _ = xadv.data.load_tabular(split="test")
    xb, _ = xadv.data.load_tabular(split="train")
    return model, x[:6].double(), xb[:30].double()


@pytest.fixture(scope="module")
def digits64():
    model = xadv.zoo.digits_cnn(pretrained=True).double().eval()
    x, y = xadv.data.load_digits(split="test")
    return model, x[:3].double(), y[:3]


@pytest.fixture(scope="module")
def resnet64():
    torch.manual_seed(0)
    net = xadv.zoo.resnet18(num_classes=3, width=4, small_input=True).double().eval()
    with torch.no_grad():
        net.fc.bias.zero_()
        net.fc.weight.mul_(50.0)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return net, x


def _captum_gshap(monkeypatch, model, x, target, baselines, m, n_samples, seed):
    """captum's GradientShap fed our draws (noise 0); ``baselines`` as captum takes them
    (a tensor or captum's callable form), ``m`` its number of rows."""
    from captum.attr import GradientShap
    idx, alphas, _ = _our_draws(seed, n_samples, x.shape[0], m, x, 0.0)
    monkeypatch.setattr(np.random, "choice", lambda mm, size: np.asarray(idx.t().reshape(-1)))
    monkeypatch.setattr(np.random, "uniform", lambda lo, hi, size: alphas.t().reshape(-1).numpy())
    out = GradientShap(model).attribute(x, baselines, n_samples=n_samples, stdevs=0.0, target=target)
    monkeypatch.undo()
    return out


def _blur(x):
    """A per-sample fill: the 3x3 box blur of each channel (depends on x)."""
    c = x.shape[1]
    k = torch.full((c, 1, 3, 3), 1 / 9, dtype=x.dtype)
    return nn.functional.conv2d(x, k, padding=1, groups=c)


# ============================================================================ GradientSHAP
@pytest.mark.reference
def test_gradient_shap_callable_background_matches_captum(monkeypatch, tabular64):
    model, x, xb = tabular64

    def fn(inp):  # reference rows built from the batch: the background shifted towards its mean
        return 0.5 * xb + 0.5 * inp.mean(0, keepdim=True)

    ours = GradientSHAP(fn, n_samples=12, seed=4)(model, x, 1)
    tensor = GradientSHAP(fn(x), n_samples=12, seed=4)(model, x, 1)
    ref = _captum_gshap(monkeypatch, model, x, 1, fn(x), xb.shape[0], 12, 4)
    ref_callable = _captum_gshap(monkeypatch, model, x, 1, fn, xb.shape[0], 12, 4)
    assert ours.attributions.abs().max() > 0.05
    assert_close(ours.attributions, ref, rtol=0, atol=1e-12)
    assert_close(ours.attributions, ref_callable, rtol=0, atol=1e-12)
    assert torch.equal(ours.attributions, tensor.attributions)
    # per call, and a single reference input (no leading M)
    one = GradientSHAP(n_samples=5, seed=1)(model, x, 1, background=lambda inp: inp.mean(0))
    assert_close(one.attributions, GradientSHAP(x.mean(0), n_samples=5, seed=1)(model, x, 1).attributions,
                 rtol=0, atol=0)


@pytest.mark.reference
def test_gradient_shap_callable_background_on_resnet(monkeypatch, resnet64):
    net, x = resnet64
    fn = lambda inp: torch.stack([_blur(inp).mean(0), inp.mean(0), torch.zeros_like(inp[0])])  # noqa: E731
    ours = GradientSHAP(fn, n_samples=6, seed=2)(net, x, 1)
    ref = _captum_gshap(monkeypatch, net, x, 1, fn(x), 3, 6, 2)
    assert ours.attributions.abs().max() > 1e-3
    assert_close(ours.attributions, ref, rtol=0, atol=1e-10)


def test_gradient_shap_callable_background_several_inputs_and_layer(tabular64):
    model, x, xb = tabular64
    two = lambda a, b: model(torch.cat([a, b], 1))  # noqa: E731
    xa, xc = x[:, :5], x[:, 5:]
    tup = GradientSHAP((xb[:, :5], xb[:, 5:]), n_samples=8, seed=0)(two, (xa, xc), 0)
    call = GradientSHAP(lambda xs: (xb[:, :5], xb[:, 5:]), n_samples=8, seed=0)(two, (xa, xc), 0)
    for p, q in zip(tup.attributions, call.attributions):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="same number M"):
        GradientSHAP(lambda xs: (xb[:4, :5], xb[:6, 5:]), n_samples=2)(two, (xa, xc), 0)
    # token ids: the reference token built from the batch (all pads), attributed at the embedding
    text = xadv.zoo.text_classifier()
    ids = torch.tensor([[2, 7, 9, 0, 5], [4, 8, 8, 0, 1]])
    e = GradientSHAP(lambda t: torch.zeros_like(t[:1]), n_samples=6, seed=0, layer="embedding")(text, ids, 1)
    r = GradientSHAP(torch.zeros(1, 5, dtype=torch.long), n_samples=6, seed=0, layer="embedding")(text, ids, 1)
    assert torch.equal(e.attributions, r.attributions)


def test_gradient_shap_callable_background_errors(tabular64):
    model, x, _ = tabular64
    with pytest.raises(ValueError, match=r"returned shape \(4, 3\).*\(M, 30\)"):
        GradientSHAP(lambda inp: torch.zeros(4, 3, dtype=inp.dtype), n_samples=2)(model, x, 0)
    with pytest.raises(TypeError, match="must return a tensor"):
        GradientSHAP(lambda inp: 0.0, n_samples=2)(model, x, 0)
    with pytest.raises(ValueError, match="NaN or Inf"):
        GradientSHAP(lambda inp: torch.full_like(inp, float("nan")), n_samples=2)(model, x, 0)


# =============================================================================== Occlusion
@pytest.mark.reference
def test_occlusion_callable_baseline_matches_captum(monkeypatch, digits64, resnet64):
    model, x, y = digits64
    ours = Occlusion(window=4, stride=2, baseline=_blur)(model, x, y)
    ref = _captum_occlusion(monkeypatch, model, x, y, (1, 4, 4), (1, 2, 2), _blur(x))
    assert ours.attributions.abs().max() > 0.1
    assert_close(ours.attributions, ref, rtol=0, atol=1e-12)
    net, xr = resnet64
    fill = lambda inp: inp.mean((2, 3), keepdim=True)  # noqa: E731  per-sample channel means (N, C, 1, 1)
    ours = Occlusion(window=8, stride=8, baseline=fill)(net, xr, 2)
    ref = _captum_occlusion(monkeypatch, net, xr, 2, (3, 8, 8), (3, 8, 8), fill(xr).expand_as(xr))
    assert ours.attributions.abs().max() > 1e-4
    assert_close(ours.attributions, ref, rtol=0, atol=1e-12)


def test_occlusion_callable_baseline_feature_mask_tokens_and_several_inputs(tabular64):
    model, x, _ = tabular64
    mask = (torch.arange(30) // 3)[None]  # ten groups of three features
    a = Occlusion(feature_mask=mask, baseline=lambda inp: inp.flip(0))(model, x, 1)
    b = Occlusion(feature_mask=mask, baseline=x.flip(0))(model, x, 1)
    assert torch.equal(a.attributions, b.attributions)
    text = xadv.zoo.text_classifier()
    ids = torch.tensor([[2, 7, 9, 0, 5], [4, 8, 8, 0, 1]])
    t1 = Occlusion(baseline=lambda t: torch.zeros_like(t))(text, ids, 1)
    assert torch.equal(t1.attributions, Occlusion(baseline=0)(text, ids, 1).attributions)
    two = lambda p, q: model(torch.cat([p, q], 1))  # noqa: E731
    xa, xc = x[:, :5], x[:, 5:]
    tup = Occlusion(window=2, baseline=(0.5, xc.mean(0)))(two, (xa, xc), 0)
    call = Occlusion(window=2, baseline=lambda xs: (torch.full_like(xs[0], 0.5), xs[1].mean(0)))(two, (xa, xc), 0)
    for p, q in zip(tup.attributions, call.attributions):
        assert torch.equal(p, q)


def test_occlusion_callable_baseline_errors(tabular64):
    model, x, _ = tabular64
    with pytest.raises(ValueError, match=r"returned shape \(3,\), which does not broadcast"):
        Occlusion(baseline=lambda inp: torch.zeros(3, dtype=inp.dtype))(model, x, 0)
    with pytest.raises(TypeError, match="must return a tensor"):
        Occlusion(baseline=lambda inp: 0.5)(model, x, 0)
    with pytest.raises(TypeError, match="dtype torch.int64"):
        Occlusion(baseline=lambda inp: torch.zeros(inp.shape, dtype=torch.long))(model, x, 0)


# =========================================================================== SmoothGrad + layers
def _noisy_copies(x, n_samples, noise, seed):
    """SmoothGrad's documented draws (absolute noise): copy j is x + noise * randn_j."""
    g = torch.Generator().manual_seed(seed)
    return [x + noise * torch.randn(x.shape, generator=g, dtype=x.dtype) for _ in range(n_samples)]


DIFFS: dict = {}


class TwoBranch(nn.Module):
    """Two convolutions side by side on one image (independent layers, as captum's
    LayerIntegratedGradients with a list of layers requires)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.a = nn.Conv2d(1, 3, 3)
        self.b = nn.Conv2d(1, 2, 5)
        self.fc = nn.Linear(3 * 6 * 6 + 2 * 4 * 4, 4)

    def forward(self, x):
        return self.fc(torch.cat([torch.tanh(self.a(x)).flatten(1), torch.sigmoid(self.b(x)).flatten(1)], 1) * 4)


@pytest.mark.reference
@pytest.mark.filterwarnings("ignore:Multiple layers provided")
@pytest.mark.parametrize("method", ["gxa", "ig"])
def test_smoothgrad_around_several_layers_matches_captum(digits64, method):
    """The explicit mean over the noisy copies of captum's layer method with the list of
    layers; each layer also equals SmoothGrad around that layer alone (same seed)."""
    from captum.attr import LayerGradientXActivation, LayerIntegratedGradients
    if method == "gxa":  # the digits CNN, two stacked layers
        model, x, y = digits64
        names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))][:2]
        base = InputXGradient(layer=names)
        ref_method = LayerGradientXActivation(model, [model.get_submodule(n) for n in names])
        kw = {}
    else:
        model = TwoBranch().double().eval()
        x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        y = model(x).argmax(1)
        names = ["a", "b"]
        base = IntegratedGradients(steps=8, rule="gausslegendre", layer=names)
        ref_method = LayerIntegratedGradients(model, [model.a, model.b])
        kw = dict(n_steps=8, method="gausslegendre")
    sg = SmoothGrad(base, n_samples=4, noise=0.1, noise_mode="absolute", seed=5)
    ours = sg(model, x, y)
    assert isinstance(ours.attributions, tuple) and len(ours.attributions) == 2
    refs = [ref_method.attribute(c, target=y, **kw) for c in _noisy_copies(x, 4, 0.1, 5)]
    for li in range(2):
        want = torch.stack([r[li] for r in refs]).mean(0)
        assert want.abs().max() > 1e-3
        # captum multiplies by float32 quadrature weights (torch.tensor(step_sizes)): ~1e-8 relative
        assert_close(ours.attributions[li], want, rtol=0, atol=1e-12 if method == "gxa" else 1e-8)
        DIFFS[method] = max(DIFFS.get(method, 0.0), float((ours.attributions[li] - want).detach().abs().max()))
        if method == "gxa":  # (IG with a list patches both layers jointly, as captum)
            single = SmoothGrad(InputXGradient(layer=names[li]), n_samples=4, noise=0.1, noise_mode="absolute",
                                seed=5)(model, x, y)
            assert_close(ours.attributions[li], single.attributions, rtol=0, atol=1e-12)
    if method == "ig":
        assert ours.delta.shape == (3,) and ours.extras["deltas"].shape == (4, 3)


def test_smoothgrad_several_layers_variants_create_graph_and_resnet(resnet64):
    net, x = resnet64
    names = ["layer1", "layer2"]
    for variant in ("smoothgrad_sq", "vargrad"):
        both = SmoothGrad(Saliency(layer=names), n_samples=3, noise=0.05, variant=variant, seed=0,
                          batch_size=2)(net, x, 1)
        for li, n in enumerate(names):
            one = SmoothGrad(Saliency(layer=n), n_samples=3, noise=0.05, variant=variant, seed=0)(net, x, 1)
            assert_close(both.attributions[li], one.attributions, rtol=1e-9, atol=1e-12)
        assert both.attributions[0].shape[1:] == (4, 32, 32) and both.attributions[1].shape[1:] == (8, 16, 16)
    xr = x.clone().requires_grad_(True)
    e = SmoothGrad(InputXGradient(layer=names), n_samples=2, noise=0.05, seed=0)(net, xr, 1, create_graph=True)
    (g,) = torch.autograd.grad(sum(a.pow(2).sum() for a in e.attributions), xr)
    assert torch.isfinite(g).all() and g.abs().max() > 0
    text = xadv.zoo.text_classifier()
    with pytest.raises(TypeError, match="token ids"):
        SmoothGrad(InputXGradient(layer=["embedding", "conv"]), n_samples=2)(text, torch.tensor([[2, 7, 0]]), 1)
