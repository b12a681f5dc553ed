"""Gradient explainers: agreement with captum, properties from the papers, and
honest ``differentiable`` flags (gradcheck of create_graph attributions)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import xadv
from xadv.explainers import (GradCAM, GradCAMPlusPlus, InputXGradient, IntegratedGradients, Saliency,
                             SmoothGrad)
from xadv.explainers.integrated_gradients import gaussian_blur, quadrature

from conftest import small_cnn

try:  # captum is a test dependency; only the reference comparisons need it
    from captum.attr import IntegratedGradients as CaptumIG
    from captum.attr import InputXGradient as CaptumIxG
    from captum.attr import LayerAttribution, LayerGradCam, NoiseTunnel
    from captum.attr import Saliency as CaptumSaliency
    HAS_CAPTUM = True
except ImportError:  # pragma: no cover
    HAS_CAPTUM = False
needs_captum = pytest.mark.skipif(not HAS_CAPTUM, reason="captum is not installed")

RTOL = 1e-6

pytestmark = [
    pytest.mark.filterwarnings("ignore:Input Tensor .* did not already require gradients"),
    pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU activations"),
]


def assert_close(a, b, rtol=RTOL, atol=None):
    """Relative agreement measured against the scale of the reference."""
    a, b = torch.as_tensor(a).detach(), torch.as_tensor(b).detach()
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = b.abs().max().item()
    tol = rtol * max(scale, 1e-12) if atol is None else atol
    err = (a - b).abs().max().item()
    assert err <= tol, f"max abs error {err:.3e} > {tol:.3e} (reference scale {scale:.3e})"


@pytest.fixture
def targets6():
    return torch.tensor([0, 1, 2, 3, 4, 0])


@pytest.fixture
def rgb_cnn64():
    torch.manual_seed(3)
    return small_cnn(in_ch=3, classes=5, size=8).double().eval()


@pytest.fixture
def rgb64():
    g = torch.Generator().manual_seed(4)
    return torch.rand(4, 3, 8, 8, generator=g, dtype=torch.float64)


# --------------------------------------------------------------------------- captum
@pytest.mark.reference
@needs_captum
@pytest.mark.parametrize("model_name", ["cnn", "mlp"])
@pytest.mark.parametrize("use_abs", [False, True])
def test_saliency_matches_captum(model_name, use_abs, cnn64, mlp64, images64, rows64):
    net, x = (cnn64, images64) if model_name == "cnn" else (mlp64, rows64)
    t = torch.arange(x.shape[0]) % 4
    ours = Saliency(abs=use_abs)(net, x, t)
    ref = CaptumSaliency(net).attribute(x, target=t, abs=use_abs)
    assert_close(ours.attributions, ref)
    assert torch.equal(ours.target, t)
    assert_close(ours.output, net(x))
    if not use_abs:  # signed by default: some entries negative
        assert (ours.attributions < 0).any()


@pytest.mark.reference
@needs_captum
@pytest.mark.parametrize("model_name", ["cnn", "mlp"])
def test_input_x_gradient_matches_captum(model_name, cnn64, mlp64, images64, rows64):
    net, x = (cnn64, images64) if model_name == "cnn" else (mlp64, rows64)
    t = torch.arange(x.shape[0]) % 4
    ours = InputXGradient()(net, x, t)
    ref = CaptumIxG(net).attribute(x, target=t)
    assert_close(ours.attributions, ref)


@pytest.mark.reference
@needs_captum
@pytest.mark.parametrize("rule", ["riemann_left", "riemann_right", "riemann_middle", "gausslegendre"])
@pytest.mark.parametrize("steps", [4, 20])
def test_integrated_gradients_matches_captum(rule, steps, cnn64, images64, targets6):
    baseline = torch.full_like(images64[:1], 0.25)
    ours = IntegratedGradients(steps=steps, rule=rule, baseline=baseline)(cnn64, images64, targets6)
    ref, ref_delta = CaptumIG(cnn64).attribute(images64, baselines=baseline.expand_as(images64),
                                               target=targets6, n_steps=steps, method=rule,
                                               return_convergence_delta=True)
    assert_close(ours.attributions, ref)
    assert_close(ours.delta, ref_delta, atol=1e-9 + RTOL * ref.abs().sum((1, 2, 3)).max().item())


@pytest.mark.reference
@needs_captum
@pytest.mark.parametrize("model_name", ["cnn", "mlp"])
def test_integrated_gradients_zero_baseline_matches_captum(model_name, cnn64, mlp64, images64, rows64):
    net, x = (cnn64, images64) if model_name == "cnn" else (mlp64, rows64)
    t = torch.arange(x.shape[0]) % 4
    ours = IntegratedGradients(steps=16, rule="riemann_middle")(net, x, t)
    ref = CaptumIG(net).attribute(x, target=t, n_steps=16, method="riemann_middle")
    assert_close(ours.attributions, ref)


@pytest.mark.reference
@needs_captum
@pytest.mark.parametrize("steps", [2, 7, 25])
def test_trapezoid_is_the_true_trapezoid_rule_captum_is_scaled(steps, cnn64, images64, targets6):
    """captum's riemann_trapezoid weights sum to (n-1)/n (1/n per interval, half at the
    ends, over n nodes); ours are the trapezoid rule on n nodes (sum 1). Same nodes, so
    ours == captum * n / (n - 1) exactly."""
    ours = IntegratedGradients(steps=steps, rule="riemann_trapezoid")(cnn64, images64, targets6)
    ref = CaptumIG(cnn64).attribute(images64, target=targets6, n_steps=steps, method="riemann_trapezoid")
    assert_close(ours.attributions, ref * steps / (steps - 1))
    # and the difference is real: captum's result is not ours
    assert (ours.attributions - ref).abs().max() > 1e-3 * ref.abs().max()
    _, w = quadrature(steps, "riemann_trapezoid")
    assert w.sum() == pytest.approx(1.0, abs=1e-14)


@pytest.mark.reference
@needs_captum
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
@pytest.mark.parametrize("layer", [None, "0", "2"])
def test_gradcam_matches_captum(relu, interpolation, layer, rgb_cnn64, rgb64):
    net, x = rgb_cnn64, rgb64
    t = torch.tensor([0, 1, 2, 3])
    e = GradCAM(layer=layer, relu=relu, interpolation=interpolation)(net, x, t)
    module = net[2] if layer is None else net[int(layer)]
    lgc = LayerGradCam(net, module).attribute(x, target=t, relu_attributions=relu)
    ref = LayerAttribution.interpolate(lgc, (8, 8), interpolate_mode=interpolation)
    assert_close(e.raw, lgc[:, 0])
    for c in range(3):  # repeated over the input's channels
        assert_close(e.attributions[:, c], ref[:, 0])
    if not relu:
        assert (e.raw < 0).any()  # signed map kept


@pytest.mark.reference
@needs_captum
def test_gradcam_on_downsampled_layer_matches_captum():
    torch.manual_seed(5)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Softplus(), nn.Conv2d(4, 5, 3, stride=2), nn.Softplus(),
                        nn.Flatten(), nn.Linear(5 * 6 * 6, 3)).double().eval()
    x = torch.rand(3, 1, 13, 13, dtype=torch.float64)
    for mode in ("bilinear", "nearest"):
        e = GradCAM(interpolation=mode)(net, x, 1)
        lgc = LayerGradCam(net, net[2]).attribute(x, target=1, relu_attributions=True)
        assert e.raw.shape == (3, 6, 6)
        assert_close(e.attributions[:, 0], LayerAttribution.interpolate(lgc, (13, 13), mode)[:, 0])


def _captum_noise_patch(monkeypatch, eps_list, stdev_scale):
    """Make captum's NoiseTunnel add exactly ``stdev_scale * eps_j`` to copy ``j`` of
    each input (captum lays rows out sample-major: row i * k + j)."""
    eps = torch.stack(eps_list, 1)  # (N, k, ...)

    def add_noise(inp, stdev, k):
        assert k == eps.shape[1]
        assert stdev == pytest.approx(stdev_scale)
        return inp.repeat_interleave(k, dim=0) + stdev * eps.reshape((-1,) + tuple(inp.shape[1:]))

    monkeypatch.setattr(NoiseTunnel, "_add_noise_to_input", staticmethod(add_noise))


@pytest.mark.reference
@needs_captum
@pytest.mark.parametrize("variant", ["smoothgrad", "smoothgrad_sq", "vargrad"])
@pytest.mark.parametrize("batch_size", [None, 5])
def test_smoothgrad_matches_captum_noise_tunnel(variant, batch_size, monkeypatch, cnn64, images64, targets6):
    """Identical noise: our draw j is the j-th randn(x.shape) of a generator seeded with
    ``seed``; captum's noise function is patched to add the same draws."""
    k, noise, seed = 4, 0.3, 11
    g = torch.Generator().manual_seed(seed)
    eps = [torch.randn(images64.shape, generator=g, dtype=torch.float64) for _ in range(k)]
    _captum_noise_patch(monkeypatch, eps, noise)
    ours = SmoothGrad(n_samples=k, noise=noise, noise_mode="absolute", variant=variant, seed=seed,
                      batch_size=batch_size)(cnn64, images64, targets6)
    ref = NoiseTunnel(CaptumSaliency(cnn64)).attribute(
        images64, nt_type=variant, nt_samples=k, nt_samples_batch_size=k, stdevs=noise, target=targets6,
        abs=False)
    assert_close(ours.attributions, ref)
    # the patch is what made them equal: a different seed does not agree
    other = SmoothGrad(n_samples=k, noise=noise, noise_mode="absolute", variant=variant, seed=seed + 1)(
        cnn64, images64, targets6)
    assert (other.attributions - ref).abs().max() > 1e-3 * ref.abs().max()


@pytest.mark.reference
@needs_captum
def test_smoothgrad_of_integrated_gradients_matches_captum(monkeypatch, mlp64, rows64):
    k, noise, seed = 3, 0.2, 2
    g = torch.Generator().manual_seed(seed)
    eps = [torch.randn(rows64.shape, generator=g, dtype=torch.float64) for _ in range(k)]
    _captum_noise_patch(monkeypatch, eps, noise)
    t = torch.arange(7) % 4
    ig = IntegratedGradients(steps=8, rule="riemann_left")
    ours = SmoothGrad(ig, n_samples=k, noise=noise, noise_mode="absolute", seed=seed)(mlp64, rows64, t)
    ref = NoiseTunnel(CaptumIG(mlp64)).attribute(rows64, nt_type="smoothgrad", nt_samples=k,
                                                  nt_samples_batch_size=k, stdevs=noise, target=t,
                                                  n_steps=8, method="riemann_left")
    assert_close(ours.attributions, ref)


# --------------------------------------------------------------------------- properties
def test_ig_completeness_delta_small_and_consistent(softplus_cnn64, images64):
    e = IntegratedGradients(steps=64)(softplus_cnn64, images64)
    with torch.no_grad():
        gap = softplus_cnn64(images64).gather(1, e.target[:, None])[:, 0] - \
            softplus_cnn64(torch.zeros_like(images64)).gather(1, e.target[:, None])[:, 0]
    # delta is exactly sum(attr) - (f(x) - f(x0))
    assert_close(e.delta, e.attributions.sum((1, 2, 3)) - gap, atol=1e-12)
    assert e.delta.abs().max() < 1e-8 * max(1.0, gap.abs().max().item())
    # Riemann error shrinks with more steps
    d8 = IntegratedGradients(steps=8, rule="riemann_left")(softplus_cnn64, images64).delta.abs().max()
    d64 = IntegratedGradients(steps=64, rule="riemann_left")(softplus_cnn64, images64).delta.abs().max()
    assert d64 < d8 / 4


@pytest.mark.parametrize("rule", ["riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid",
                                  "gausslegendre"])
def test_ig_exact_for_linear_model(rule, rows64):
    torch.manual_seed(0)
    lin = nn.Linear(10, 3).double()
    x0 = torch.rand(1, 10, dtype=torch.float64)
    e = IntegratedGradients(steps=3, rule=rule, baseline=x0)(lin, rows64, 2)
    with torch.no_grad():
        expected = (rows64 - x0) * lin.weight[2]
        gap = lin(rows64)[:, 2] - lin(x0)[0, 2]
    assert_close(e.attributions, expected, atol=1e-12)
    assert_close(e.attributions.sum(1), gap, atol=1e-12)
    assert e.delta.abs().max() < 1e-12


@pytest.mark.parametrize("base", [Saliency(), InputXGradient(), IntegratedGradients(steps=5)])
def test_smoothgrad_one_sample_no_noise_equals_base(base, cnn64, images64):
    ref = base(cnn64, images64, 2).attributions
    for variant, expected in (("smoothgrad", ref), ("smoothgrad_sq", ref * ref),
                              ("vargrad", torch.zeros_like(ref))):
        sg = SmoothGrad(base, n_samples=1, noise=0.0, variant=variant, seed=0)(cnn64, images64, 2)
        assert_close(sg.attributions, expected, atol=1e-12 * max(1.0, ref.abs().max().item() ** 2))


def test_smoothgrad_noise_scale_and_seed(cnn64, images64):
    a = SmoothGrad(n_samples=6, seed=3)(cnn64, images64).attributions
    b = SmoothGrad(n_samples=6, seed=3)(cnn64, images64).attributions
    c = SmoothGrad(n_samples=6, seed=4)(cnn64, images64).attributions
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    g = torch.Generator().manual_seed(3)
    d = SmoothGrad(n_samples=6, generator=g)(cnn64, images64).attributions
    assert torch.equal(a, d)  # a generator seeded alike gives the same first draws
    d2 = SmoothGrad(n_samples=6, generator=g)(cnn64, images64).attributions
    assert not torch.equal(d, d2)  # ... and advances between calls
    # "range" noise is a fraction of each sample's max - min: scaling x scales sigma
    lin = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).double()
    sq1 = SmoothGrad(InputXGradient(), n_samples=50, noise=0.5, variant="vargrad", seed=1)(lin, images64, 0)
    sq2 = SmoothGrad(InputXGradient(), n_samples=50, noise=0.5, variant="vargrad", seed=1)(lin, 2 * images64, 0)
    # input x gradient of a linear model: var = w^2 sigma^2 var(eps); doubling x doubles sigma
    assert_close(sq2.attributions, 4 * sq1.attributions, rtol=1e-9)


@pytest.mark.parametrize("batch_size", [1, 2, 5, 6, 7, 13, 64])
def test_ig_chunked_equals_unchunked(batch_size, cnn64, images64, targets6):
    ref = IntegratedGradients(steps=9, batch_size=10_000)(cnn64, images64, targets6)
    e = IntegratedGradients(steps=9, batch_size=batch_size)(cnn64, images64, targets6)
    assert_close(e.attributions, ref.attributions, rtol=1e-12)
    assert_close(e.delta, ref.delta, atol=1e-12)


@pytest.mark.parametrize("batch_size", [1, 4, 6, 7, 18, 100])
@pytest.mark.parametrize("variant", ["smoothgrad", "vargrad"])
def test_smoothgrad_chunked_equals_unchunked(batch_size, variant, cnn64, images64):
    kw = dict(n_samples=5, noise=0.2, variant=variant, seed=9)
    ref = SmoothGrad(batch_size=10_000, **kw)(cnn64, images64)
    e = SmoothGrad(batch_size=batch_size, **kw)(cnn64, images64)
    assert_close(e.attributions, ref.attributions, rtol=1e-12)


EXPLAINERS = {
    "saliency": lambda: Saliency(),
    "input_x_gradient": lambda: InputXGradient(),
    "smoothgrad": lambda: SmoothGrad(n_samples=3, seed=0),
    "integrated_gradients": lambda: IntegratedGradients(steps=4),
    "gradcam": lambda: GradCAM(),
    "gradcam_pp": lambda: GradCAMPlusPlus(),
}


@pytest.mark.parametrize("name", sorted(EXPLAINERS))
def test_target_forms_agree(name, cnn64, images64):
    ex = EXPLAINERS[name]()
    with torch.no_grad():
        pred = cnn64(images64).argmax(1)
    ref = ex(cnn64, images64, pred)
    forms = [None, pred.tolist(), tuple(pred.tolist()), pred.numpy(), lambda out: out.argmax(1)]
    for target in forms:
        e = ex(cnn64, images64, target)
        assert torch.equal(e.target, pred)
        assert e.target.dtype == torch.long
        assert torch.equal(e.attributions, ref.attributions)
    e3 = ex(cnn64, images64, 3)
    assert torch.equal(e3.target, torch.full((6,), 3))
    e3b = ex(cnn64, images64, torch.tensor(3))
    assert torch.equal(e3.attributions, e3b.attributions)
    assert torch.equal(e3.attributions, ex(cnn64, images64, lambda out: 3).attributions)
    if name not in ("gradcam", "gradcam_pp"):  # class 3 really is a different explanation
        assert not torch.allclose(e3.attributions, ref.attributions)


def test_functional_and_registry_agree(cnn64, images64):
    a = xadv.explain(cnn64, images64, method="ig", target=1, steps=7).attributions
    b = xadv.explainers.get("integrated_gradients", steps=7)(cnn64, images64, 1).attributions
    c = IntegratedGradients(steps=7)(cnn64, images64, 1).attributions
    assert torch.equal(a, b) and torch.equal(b, c)
    sg = xadv.explainers.get("smoothgrad", base="input_x_gradient", n_samples=2, seed=0)
    assert isinstance(sg.base, InputXGradient)
    assert xadv.explain(cnn64, images64, method=sg).method == "smoothgrad"
    assert set(EXPLAINERS) <= set(xadv.explainers.names())


# --------------------------------------------------------------------------- baselines
def test_baselines(cnn64, images64):
    x = images64

    def base_of(**kw):
        return IntegratedGradients(steps=2, **kw)(cnn64, x, 0).extras["baseline"]

    assert torch.equal(base_of(), torch.zeros_like(x))
    assert torch.equal(base_of(baseline=0.5), torch.full_like(x, 0.5))
    assert torch.equal(base_of(baseline=1), torch.ones_like(x))
    u1, u2 = base_of(baseline="uniform", seed=1), base_of(baseline="uniform", seed=1)
    assert torch.equal(u1, u2)
    assert not torch.equal(u1, base_of(baseline="uniform", seed=2))
    ub = base_of(baseline="uniform", seed=1, bounds=(-2.0, -1.0))
    assert ub.min() >= -2 and ub.max() <= -1 and ub.std() > 0.2
    m = base_of(baseline="mean")
    assert_close(m, x.mean((1, 2, 3), keepdim=True).expand_as(x), atol=1e-15)
    t = torch.rand(1, 1, 8, 8, dtype=torch.float64)
    assert torch.equal(base_of(baseline=t), t.expand_as(x))
    full = torch.rand(6, 1, 8, 8, dtype=torch.float64)
    assert torch.equal(base_of(baseline=full), full)
    # IG with a baseline equal to the input attributes nothing
    e = IntegratedGradients(steps=3, baseline=x.clone())(cnn64, x, 0)
    assert e.attributions.abs().max() == 0


@pytest.mark.parametrize("sigma", [0.7, 1.0, 2.0])
def test_blur_baseline_matches_scipy(sigma, cnn64, images64):
    from scipy.ndimage import gaussian_filter
    b = IntegratedGradients(steps=2, baseline="blur", blur_sigma=sigma)(cnn64, images64, 0).extras["baseline"]
    ref = gaussian_filter(images64.numpy(), sigma=(0, 0, sigma, sigma), mode="mirror",
                          truncate=np.ceil(3 * sigma) / sigma)  # our radius: ceil(3 sigma)
    assert_close(b, torch.from_numpy(ref), rtol=1e-12)
    assert torch.equal(gaussian_blur(images64, 0.0), images64)


# --------------------------------------------------------------------------- Grad-CAM++
def slow_gradcam_pp(model, layer, x, target):
    """Grad-CAM++ from the paper (Chattopadhay et al. 2018, eq. 19 with the
    exponential score), one channel and one pixel at a time."""
    store = {}
    h = layer.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    try:
        out = model(x)
    finally:
        h.remove()
    a = store["a"]
    score = out[torch.arange(x.shape[0]), target].sum()
    (g,) = torch.autograd.grad(score, a)
    a, g = a.detach().numpy(), g.numpy()
    n, k, hh, ww = a.shape
    cams = np.zeros((n, hh, ww))
    for i in range(n):
        for c in range(k):
            s = a[i, c].sum()
            w = 0.0
            for p in range(hh):
                for q in range(ww):
                    gij = g[i, c, p, q]
                    den = 2 * gij ** 2 + s * gij ** 3
                    alpha = gij ** 2 / den if den != 0 else 0.0
                    w += alpha * max(gij, 0.0)
            cams[i] += w * a[i, c]
    return torch.from_numpy(np.maximum(cams, 0))


def test_gradcam_pp_matches_slow_paper_formula(softplus_cnn64, images64):
    x = images64[:3]
    e = GradCAMPlusPlus(layer="2")(softplus_cnn64, x, [0, 1, 2])
    ref = slow_gradcam_pp(softplus_cnn64, softplus_cnn64[2], x, torch.tensor([0, 1, 2]))
    assert_close(e.raw, ref, rtol=1e-10)
    plain = GradCAM(layer="2")(softplus_cnn64, x, [0, 1, 2])
    assert not torch.allclose(plain.raw, e.raw)


def test_gradcam_default_layer_and_module(cnn64, images64):
    by_none = GradCAM()(cnn64, images64, 1)
    by_module = GradCAM(layer=cnn64[2])(cnn64, images64, 1)
    assert torch.equal(by_none.raw, by_module.raw)
    assert by_none.raw.shape == (6, 8, 8)
    assert by_none.attributions.shape == images64.shape
    assert (by_none.raw >= 0).all()


# --------------------------------------------------------------------------- second order
class SoftNet(nn.Module):
    """A tiny softplus CNN whose first conv weight can be swapped for any tensor."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1)
        self.act1 = nn.Softplus(beta=2.0)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1)
        self.act2 = nn.Softplus(beta=2.0)
        self.fc = nn.Linear(3 * 5 * 5, 3)

    def forward(self, x):
        return self.fc(self.act2(self.conv2(self.act1(self.conv1(x)))).flatten(1))


@pytest.fixture(scope="module")
def softnet():
    torch.manual_seed(7)
    return SoftNet().double().eval()


def with_conv1_weight(net, w):
    twin = copy.deepcopy(net)
    del twin.conv1._parameters["weight"]
    twin.conv1.weight = w
    return twin


GRADCHECK = {
    "saliency": lambda: Saliency(),
    "input_x_gradient": lambda: InputXGradient(),
    "smoothgrad": lambda: SmoothGrad(n_samples=2, noise=0.1, seed=0),
    "smoothgrad_sq": lambda: SmoothGrad(InputXGradient(), n_samples=2, noise=0.1, variant="smoothgrad_sq",
                                        noise_mode="absolute", seed=1),
    "integrated_gradients": lambda: IntegratedGradients(steps=3),
    "ig_blur": lambda: IntegratedGradients(steps=2, baseline="blur", blur_sigma=1.0),
    "gradcam": lambda: GradCAM(layer="conv2", relu=False),
}


@pytest.mark.parametrize("name", sorted(GRADCHECK))
def test_gradcheck_create_graph_attributions(name, softnet):
    ex = GRADCHECK[name]()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 5, 5, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 2])

    def f_input(xx):
        return ex(softnet, xx, t, create_graph=True).attributions

    assert torch.autograd.gradcheck(f_input, (x.clone().requires_grad_(),))

    def f_param(w):
        return ex(with_conv1_weight(softnet, w), x, t, create_graph=True).attributions

    w0 = softnet.conv1.weight.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(f_param, (w0,))


@pytest.mark.parametrize("name", sorted(xadv.explainers.names()))
def test_differentiable_flag_is_honest(name, softplus_cnn64, images64):
    params = {"smoothgrad": {"n_samples": 2, "seed": 0}, "integrated_gradients": {"steps": 3},
              "lime": {"n_samples": 20, "seed": 0}}.get(name, {})
    if name == "tabular_lime":
        pytest.skip("tabular method: covered in the LIME tests")
    if name == "attention_rollout":
        pytest.skip("needs a transformer: covered in test_adapter_layers")
    ex = xadv.explainers.get(name, **params)
    x = images64[:2].clone().requires_grad_()
    if not ex.differentiable:
        with pytest.raises(TypeError, match="not differentiable"):
            ex(softplus_cnn64, x, 0, create_graph=True)
        return
    e = ex(softplus_cnn64, x, 0, create_graph=True)
    assert e.attributions.requires_grad
    loss = (e.attributions ** 2).sum()
    gx, gw = torch.autograd.grad(loss, (x, softplus_cnn64[0].weight))
    # Deconvnet's backward ignores the forward pass: without max pooling its map does not depend on x
    assert (gx.abs().max() > 0 or name == "deconvnet") and gw.abs().max() > 0
    # without create_graph nothing is attached
    plain = ex(softplus_cnn64, images64[:2], 0)
    assert not plain.attributions.requires_grad and not plain.output.requires_grad


def test_default_rows_and_blocks_cover_the_grid_once():
    from xadv.explainers.base import balanced_slices, default_batch_rows
    from xadv.explainers.integrated_gradients import _blocks
    assert default_batch_rows(torch.zeros(64, 1, 28, 28)) == 2 ** 17 // 784
    assert default_batch_rows(torch.zeros(2, 3)) == 2048  # capped
    assert default_batch_rows(torch.zeros(1, 3, 1024, 1024)) == 1
    assert balanced_slices(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert [b - a for a, b in balanced_slices(64, 42)] == [32, 32]
    for n, steps, rows in [(6, 9, 1), (6, 9, 4), (6, 9, 13), (64, 50, 334), (5, 7, 1000), (100, 3, 42)]:
        seen = torch.zeros(steps, n, dtype=torch.long)
        for s0, s1, i0, i1 in _blocks(n, steps, rows):
            assert (s1 - s0) * (i1 - i0) <= rows
            seen[s0:s1, i0:i1] += 1
        assert (seen == 1).all()


@pytest.mark.parametrize("name", sorted(xadv.explainers.names()))
def test_same_result_inside_no_grad(name, cnn64, images64):
    """An explainer called inside ``torch.no_grad()`` (e.g. from an evaluation loop) gives
    the map it gives outside: gradient methods enable gradients themselves."""
    params = {"smoothgrad": {"n_samples": 2, "seed": 0}, "integrated_gradients": {"steps": 3},
              "lime": {"n_samples": 20, "seed": 0}, "feature_lime": {"n_samples": 20, "seed": 0},
              "gradient_shap": {"n_samples": 3, "seed": 0}, "expected_gradients": {"n_samples": 3, "seed": 0},
              "meaningful_perturbation": {"steps": 3}, "extremal_perturbation": {"steps": 3}}.get(name, {})
    if name == "tabular_lime":
        pytest.skip("tabular method: covered in the LIME tests")
    if name == "attention_rollout":
        pytest.skip("needs a transformer: covered in test_adapter_layers")
    try:
        ex = xadv.explainers.get(name, **params)
    except TypeError:
        ex = xadv.explainers.get(name, **{k: v for k, v in params.items() if k != "seed"})
    x = images64[:3]
    a = ex(cnn64, x, 0).attributions
    with torch.no_grad():
        b = ex(cnn64, x, 0).attributions
    assert_close(b, a, atol=1e-6, rtol=1e-5)
