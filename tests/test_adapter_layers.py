"""The model adapter (several inputs, pass-through arguments, tuple/dict/scalar outputs),
layer and neuron attribution, transformers (Grad-CAM on tokens, double backward through
attention, rollout) and the reference architectures: against captum in float64."""
from __future__ import annotations

import dataclasses
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xadv
from xadv.explainers import (AttentionRollout, GradCAM, GradCAMPlusPlus, GradientSHAP, InputXGradient,
                             IntegratedGradients, Occlusion, Saliency, SmoothGrad)

captum_attr = pytest.importorskip("captum.attr")
ATOL = 1e-6


def close(a, b, atol=ATOL):
    torch.testing.assert_close(a, b.to(a.dtype), atol=atol, rtol=0)


@pytest.fixture(autouse=True)
def _captum_warnings():
    # captum warns that it sets requires_grad on inputs itself
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*required_grads has been set automatically.*")
        warnings.filterwarnings("ignore", message=".*Setting backward hooks.*")
        warnings.filterwarnings("ignore", message="Multiple layers provided.*")
        yield


class Tok(nn.Module):
    """Token model: embedding -> tanh -> masked mean -> linear."""

    def __init__(self, vocab=20, dim=6, classes=3):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.proj = nn.Linear(dim, dim)
        self.fc = nn.Linear(dim, classes)

    def forward(self, ids, mask=None):
        h = torch.tanh(self.proj(self.emb(ids)))
        if mask is not None:
            h = h * mask[..., None]
        return self.fc(h.mean(1))


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 5)
        self.b = nn.Conv1d(2, 5, 3)
        self.out = nn.Linear(5, 3)

    def forward(self, x1, x2, scale=None):
        h = torch.tanh(self.a(x1)) + torch.tanh(self.b(x2)).mean(-1)
        y = self.out(h)
        return y if scale is None else y * scale[:, None]


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 6), nn.Softplus(), nn.Linear(6, 3)).double()


@pytest.fixture
def tok():
    torch.manual_seed(1)
    return Tok().double().eval()


@pytest.fixture
def ids():
    torch.manual_seed(2)
    return torch.randint(1, 20, (4, 7))


@pytest.fixture
def x5():
    torch.manual_seed(3)
    return torch.rand(4, 5, dtype=torch.float64)


# ---------------------------------------------------------------------- adapter: inputs / outputs
def test_several_inputs_and_forward_args_match_captum():
    torch.manual_seed(0)
    m = TwoInputs().double()
    x1, x2 = torch.rand(3, 4, dtype=torch.float64), torch.rand(3, 2, 6, dtype=torch.float64)
    scale = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)
    e = IntegratedGradients(steps=20, batch_size=7)(m, (x1, x2), target=1, forward_args=(scale,))
    c, d = captum_attr.IntegratedGradients(m).attribute((x1, x2), target=1, additional_forward_args=(scale,),
                                                       n_steps=20, return_convergence_delta=True)
    assert isinstance(e.attributions, tuple) and len(e.attributions) == 2
    for a, b in zip(e.attributions, c):
        close(a, b)
    close(e.delta, d)
    # the scale follows its sample through the expanded batch: sample 2 has the opposite sign of scale 1
    e1 = IntegratedGradients(steps=20)(m, (x1, x2), target=1)
    close(e.attributions[0][2], -e1.attributions[0][2])
    g = Saliency()(m, (x1, x2), target=[2], forward_args={"scale": scale})
    cg = captum_attr.Saliency(m).attribute((x1, x2), target=2, additional_forward_args=(scale,), abs=False)
    for a, b in zip(g.attributions, cg):
        close(a, b)
    ixg = InputXGradient()(m, (x1, x2), target=0)
    for a, b in zip(ixg.attributions, captum_attr.InputXGradient(m).attribute((x1, x2), target=0)):
        close(a, b)
    assert ixg[1:].attributions[0].shape == (2, 4)


def test_several_inputs_tuple_baselines_and_callable_baseline():
    torch.manual_seed(0)
    m = TwoInputs().double()
    x1, x2 = torch.rand(3, 4, dtype=torch.float64), torch.rand(3, 2, 6, dtype=torch.float64)
    b1, b2 = torch.full((1, 4), 0.2, dtype=torch.float64), torch.full((1, 2, 6), -0.1, dtype=torch.float64)
    e = IntegratedGradients(steps=16, baseline=(b1, b2))(m, (x1, x2), target=2)
    c = captum_attr.IntegratedGradients(m).attribute((x1, x2), baselines=(b1, b2), target=2, n_steps=16)
    for a, b in zip(e.attributions, c):
        close(a, b)
    e2 = IntegratedGradients(steps=16, baseline=lambda xs: (xs[0] * 0 + 0.2, xs[1] * 0 - 0.1))(m, (x1, x2), target=2)
    for a, b in zip(e2.attributions, c):
        close(a, b)
    net = mlp()
    x = torch.rand(4, 5, dtype=torch.float64)
    e3 = IntegratedGradients(steps=16, baseline=lambda t: 0.5 * t)(net, x, target=1)
    c3 = captum_attr.IntegratedGradients(net).attribute(x, baselines=0.5 * x, target=1, n_steps=16)
    close(e3.attributions, c3)


@pytest.mark.parametrize("form", ["dict", "tuple", "object", "callable", "key"])
def test_output_forms(form, x5):
    net = mlp()

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            y = self.net(x)
            if form in ("dict", "key"):
                return {"logits" if form == "dict" else "scores": y, "hidden": x}
            if form == "tuple":
                return (y, x)
            if form == "object":
                return type("Out", (), {"logits": y})()
            return [x, y]

    output = {"key": "scores", "callable": lambda o: o[1]}.get(form)
    e = IntegratedGradients(steps=12)(Wrapped(), x5, target=2, output=output)
    close(e.attributions, IntegratedGradients(steps=12)(net, x5, target=2).attributions)


def test_scalar_outputs_and_one_element_target(x5):
    net = mlp()
    scalar = lambda x: net(x)[:, 1]  # noqa: E731 - per-sample scalar (N,)
    e = Saliency()(scalar, x5)
    close(e.attributions, Saliency()(net, x5, target=1).attributions)
    c = captum_attr.Saliency(scalar).attribute(x5, abs=False)
    close(e.attributions, c)
    close(Saliency()(net, x5, target=torch.tensor([2])).attributions, Saliency()(net, x5, target=2).attributions)
    close(Saliency()(net, x5, target=[2]).attributions, Saliency()(net, x5, target=2).attributions)


def test_output_errors_are_clear(x5):
    net = mlp()
    with pytest.raises(TypeError, match="without 'logits'"):
        Saliency()(lambda x: {"out": net(x)}, x5)
    with pytest.raises(ValueError, match="not a key"):
        Saliency()(lambda x: {"out": net(x)}, x5, output="scores")
    with pytest.raises(TypeError, match="token ids are explained through the embedding"):
        Saliency()(Tok(), torch.randint(0, 5, (2, 3)))


def test_adapter_wraps_models_for_every_consumer(x5):
    net = mlp()
    dict_model = lambda x: {"logits": net(x)}  # noqa: E731
    m = xadv.adapt(dict_model)
    torch.testing.assert_close(m(x5), net(x5))
    two = TwoInputs().double()
    x1, x2 = torch.rand(3, 4, dtype=torch.float64), torch.rand(3, 2, 6, dtype=torch.float64)
    a = xadv.adapt(two, inputs=(x1, x2))
    z = a.pack(x1, x2)
    torch.testing.assert_close(a(z), two(x1, x2))
    assert [t.shape for t in a.unpack(z)] == [x1.shape, x2.shape]
    r = xadv.attacks.PGD(eps=0.1, steps=3)(a, z, two(x1, x2).argmax(1))
    assert r.x_adv.shape == z.shape


# ---------------------------------------------------------------------- layer attribution vs captum
@pytest.mark.parametrize("multiply", [True, False])
@pytest.mark.parametrize("rule", ["gausslegendre", "riemann_middle"])
def test_layer_ig_on_embeddings_matches_captum(tok, ids, multiply, rule):
    mask = (torch.rand(4, 7, generator=torch.Generator().manual_seed(0)) > 0.3).double()
    e = IntegratedGradients(steps=24, baseline=0, layer="emb", rule=rule, multiply_by_inputs=multiply,
                            batch_size=9)(tok, ids, target=2, forward_args=(mask,))
    lig = captum_attr.LayerIntegratedGradients(tok, tok.emb, multiply_by_inputs=multiply)
    c = lig.attribute(ids, baselines=torch.zeros_like(ids), target=2, additional_forward_args=(mask,), n_steps=24,
                      method=rule, return_convergence_delta=multiply)
    if multiply:
        c, d = c
        close(e.delta, d)
        assert e.delta.abs().max() < 1e-3
    close(e.attributions, c)
    assert e.params["layer"] == "emb" and e.extras["attribute_to"] == "layer_output"
    # masked-out tokens get nothing
    if multiply:
        assert (e.attributions.sum(-1) * (1 - mask)).abs().max() < 1e-12


def test_layer_ig_layer_input_and_several_layers(tok, ids):
    e = IntegratedGradients(steps=16, baseline=0, layer="proj", attribute_to_layer_input=True)(tok, ids, target=1)
    c = captum_attr.LayerIntegratedGradients(tok, tok.proj).attribute(
        ids, baselines=torch.zeros_like(ids), target=1, n_steps=16, attribute_to_layer_input=True)
    close(e.attributions, c)
    assert e.extras["attribute_to"] == "layer_input"
    # several (independent) layers of a model with several inputs, in one call
    torch.manual_seed(0)
    m = TwoInputs().double()
    x1, x2 = torch.rand(3, 4, dtype=torch.float64), torch.rand(3, 2, 6, dtype=torch.float64)
    e2 = IntegratedGradients(steps=16, baseline=(0.0, 0.0), layer=["a", m.b])(m, (x1, x2), target=1)
    c2 = captum_attr.LayerIntegratedGradients(m, [m.a, m.b]).attribute((x1, x2), target=1, n_steps=16)
    assert isinstance(e2.attributions, tuple) and e2.params["layer"] == ["a", "b"]
    for a, b in zip(e2.attributions, c2):
        close(a, b)


def test_layer_gradient_x_activation_matches_captum(x5):
    net = mlp()
    for layer, side in [("1", False), ("2", True), ("3", False)]:
        e = InputXGradient(layer=layer, attribute_to_layer_input=side)(net, x5, target=1)
        c = captum_attr.LayerGradientXActivation(net, net[int(layer)]).attribute(
            x5, target=1, attribute_to_layer_input=side)
        close(e.attributions, c)
        e = InputXGradient(layer=layer, multiply_by_inputs=False, attribute_to_layer_input=side)(net, x5, target=1)
        c = captum_attr.LayerGradientXActivation(net, net[int(layer)], multiply_by_inputs=False).attribute(
            x5, target=1, attribute_to_layer_input=side)
        close(e.attributions, c)
        close(Saliency(layer=layer, attribute_to_layer_input=side)(net, x5, target=1).attributions, c)
    e = InputXGradient(layer=["1", "3"])(net, x5, target=0)
    c = captum_attr.LayerGradientXActivation(net, [net[1], net[3]]).attribute(x5, target=0)
    for a, b in zip(e.attributions, c):
        close(a, b)


def test_layer_attribution_on_resnet_matches_captum():
    m = xadv.zoo.resnet18(num_classes=4, width=4, small_input=True).double()
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    e = IntegratedGradients(steps=8, layer="layer3.0.conv1")(m, x, target=1)
    c = captum_attr.LayerIntegratedGradients(m, m.layer3[0].conv1).attribute(x, target=1, n_steps=8)
    close(e.attributions, c)
    e = InputXGradient(layer="layer2")(m, x, target=3)
    close(e.attributions, captum_attr.LayerGradientXActivation(m, m.layer2).attribute(x, target=3))


def test_neuron_gradient_and_neuron_ig_match_captum(x5):
    net = mlp()
    for neuron in [2, (4,), (slice(1, 4),)]:
        e = Saliency(layer="2", neuron=neuron)(net, x5)
        c = captum_attr.NeuronGradient(net, net[2]).attribute(x5, neuron if isinstance(neuron, tuple) else (neuron,))
        close(e.attributions, c)
        e = IntegratedGradients(steps=20, layer="2", neuron=neuron)(net, x5)
        c = captum_attr.NeuronIntegratedGradients(net, net[2]).attribute(
            x5, neuron if isinstance(neuron, tuple) else (neuron,), n_steps=20)
        close(e.attributions, c)
    sel = lambda a: a[:, 1] - a[:, 0]  # noqa: E731
    close(Saliency(layer="2", neuron=sel)(net, x5).attributions,
          captum_attr.NeuronGradient(net, net[2]).attribute(x5, sel))
    e = IntegratedGradients(steps=20, layer="2", neuron=3, multiply_by_inputs=False)(net, x5)
    close(e.attributions, captum_attr.NeuronIntegratedGradients(net, net[2], multiply_by_inputs=False).attribute(
        x5, (3,), n_steps=20))
    assert e.params["layer"] == "2" and e.output.shape == (4, 1)
    with pytest.raises(ValueError, match="target is not used"):
        Saliency(layer="2", neuron=1)(net, x5, target=1)
    with pytest.raises(ValueError, match="out of range"):
        Saliency(layer="2", neuron=9)(net, x5)


def test_neuron_channel_on_conv_matches_captum():
    m = xadv.zoo.resnet18(num_classes=4, width=4, small_input=True).double()
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    e = IntegratedGradients(steps=6, layer="layer1.0.conv2", neuron=(2, 3, 4))(m, x)
    c = captum_attr.NeuronIntegratedGradients(m, m.layer1[0].conv2).attribute(x, (2, 3, 4), n_steps=6)
    close(e.attributions, c)
    # a channel: the sum of its map
    e = Saliency(layer="layer1.0.conv2", neuron=2)(m, x)
    c = captum_attr.NeuronGradient(m, m.layer1[0].conv2).attribute(x, (2, slice(None), slice(None)))
    close(e.attributions, c)


@pytest.mark.parametrize("shape", [(4, 5), (4, 3, 6)])
def test_layer_gradcam_on_non_conv_layers_matches_captum(shape):
    torch.manual_seed(0)
    x = torch.rand(shape, dtype=torch.float64)
    if len(shape) == 2:
        net = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
        layer = net[1]
    else:
        # a Linear over the last axis of (N, C, L): channels first, a 1-D map per sample
        net = nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Flatten(), nn.Linear(18, 3)).double()
        layer = net[1]
    for relu in (True, False):
        e = GradCAM(layer=layer, relu=relu, layout="channels_first")(net, x, target=2)
        c = captum_attr.LayerGradCam(net, layer).attribute(x, target=2, relu_attributions=relu)
        close(e.raw, c[:, 0])
    assert e.params["layer"] == "1"


def test_occlusion_feature_mask_and_tokens_match_captum(tok, ids):
    e = Occlusion(baseline=0)(tok, ids, target=1)
    close(e.attributions, captum_attr.FeatureAblation(tok).attribute(ids, target=1, baselines=0))
    words = torch.tensor([[0, 0, 1, 2, 2, 3, 3]])
    e = Occlusion(baseline=0, feature_mask=words)(tok, ids, target=1)
    close(e.attributions, captum_attr.FeatureAblation(tok).attribute(ids, target=1, baselines=0, feature_mask=words))
    m = xadv.zoo.resnet18(num_classes=4, width=4, small_input=True).double()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    cells = torch.arange(16).reshape(4, 4).repeat_interleave(2, 0).repeat_interleave(2, 1)[None, None]
    e = Occlusion(feature_mask=cells, baseline=0.5, batch_size=5)(m, x, target=0)
    close(e.attributions, captum_attr.FeatureAblation(m).attribute(x, target=0, baselines=0.5, feature_mask=cells))
    e = Occlusion(window=(3, 4, 4), stride=(3, 2, 2))(m, x, target=0)
    close(e.attributions, captum_attr.Occlusion(m).attribute(x, (3, 4, 4), strides=(3, 2, 2), target=0))


def test_layer_gradient_shap_is_complete_in_expectation(tok, ids):
    bg = torch.zeros(2, 7, dtype=torch.long)
    e = GradientSHAP(bg, n_samples=400, seed=0, layer="emb", batch_size=64)(tok, ids, target=0)
    gap = tok(ids)[:, 0] - tok(bg[:1])[0, 0]
    assert (e.attributions.sum((1, 2)) - gap).abs().max() < 0.05
    # with one background row and the exact completeness error reported per draw
    assert e.delta.abs().max() < 0.05
    with pytest.raises(ValueError, match="noise"):
        GradientSHAP(bg, noise=0.1, layer="emb")(tok, ids)


def test_smoothgrad_around_layer_ig_reports_convergence_delta(x5):
    net = mlp()
    sg = SmoothGrad(IntegratedGradients(steps=40, layer="1"), n_samples=5, noise=0.05, seed=0,
                    noise_mode="absolute", batch_size=6)
    e = sg(net, x5, target=1)
    assert e.extras["deltas"].shape == (5, 4) and e.delta.shape == (4,)
    assert e.extras["deltas"].abs().max() < 1e-6
    assert e.attributions.shape == (4, 7) and e.params["layer"] == "1"
    # the same noise through captum's NoiseTunnel: compare against our own base on the same noisy copies
    gen = torch.Generator().manual_seed(0)
    noisy = torch.stack([x5 + 0.05 * torch.randn(x5.shape, generator=gen, dtype=x5.dtype) for _ in range(5)])
    lig = captum_attr.LayerIntegratedGradients(net, net[1])
    ref = torch.stack([lig.attribute(v, target=1, n_steps=40, baselines=torch.zeros_like(v)) for v in noisy]).mean(0)
    close(e.attributions, ref)


def test_layer_attributions_are_differentiable(tok, ids, x5):
    net = mlp()
    x = x5.clone().requires_grad_(True)
    e = IntegratedGradients(steps=8, layer="1")(net, x, target=0, create_graph=True)
    (g,) = torch.autograd.grad(e.attributions.pow(2).sum(), x)
    # finite differences of the same function
    f = lambda z: IntegratedGradients(steps=8, layer="1")(net, z, target=0).attributions.pow(2).sum()  # noqa
    h = 1e-6
    d = torch.zeros(4, 5, dtype=torch.float64)
    d[1, 2] = h
    assert abs(float((f(x5 + d) - f(x5 - d)) / (2 * h)) - float(g[1, 2])) < 1e-5
    e = InputXGradient(layer="emb")(tok, ids, target=1, create_graph=True)
    (gw,) = torch.autograd.grad(e.attributions.sum(), tok.fc.weight)
    assert gw.abs().sum() > 0


# ---------------------------------------------------------------------- transformers
@pytest.fixture
def vit():
    return xadv.zoo.vit_tiny(image_size=16, patch_size=4, num_classes=3, num_layers=2, hidden_dim=24,
                             num_heads=2, mlp_dim=48).double()


@pytest.fixture
def imgs():
    torch.manual_seed(5)
    return torch.rand(2, 3, 16, 16, dtype=torch.float64)


def test_gradcam_on_vit_tokens_matches_pytorch_grad_cam(vit, imgs):
    from _refs import import_reference
    gc = import_reference("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    layer = vit.encoder.layers.encoder_layer_1.ln_1

    def reshape_transform(t, h=4, w=4):
        return t[:, 1:, :].reshape(t.size(0), h, w, t.size(2)).permute(0, 3, 1, 2)

    e = GradCAM(layer="encoder.layers.encoder_layer_1.ln_1")(vit, imgs, target=1)
    with gc.GradCAM(model=vit, target_layers=[layer], reshape_transform=reshape_transform) as cam:
        ref = cam(input_tensor=imgs.float().double(), targets=[ClassifierOutputTarget(1)] * 2)
    # pytorch-grad-cam min-max scales and resizes with OpenCV: compare the layer-level map up to scale
    raw = e.raw / e.raw.flatten(1).max(1).values[:, None, None].clamp_min(1e-12)
    assert raw.shape == (2, 4, 4) and ref.shape == (2, 16, 16)
    # our raw map vs. the un-resized reference at the patch centres
    ref_t = torch.as_tensor(ref, dtype=torch.float64)
    centres = ref_t[:, 2::4, 2::4]
    assert torch.corrcoef(torch.stack([raw.flatten(), centres.flatten()]))[0, 1] > 0.95
    # the same map from a user reshape callable, and from (N, h, w, D) with layout="channels_last"
    e2 = GradCAM(layer=layer, reshape=reshape_transform)(vit, imgs, target=1)
    close(e2.raw, e.raw)
    grid = lambda t: t[:, 1:].reshape(t.shape[0], 4, 4, -1)  # noqa: E731
    e3 = GradCAM(layer=layer, reshape=lambda t: grid(t).permute(0, 3, 1, 2))(vit, imgs, target=1)
    close(e3.raw, e.raw)


def test_gradcam_token_layouts():
    torch.manual_seed(0)
    d = 5

    class Tokens(nn.Module):
        def __init__(self, cls: bool, layout: str):
            super().__init__()
            self.cls, self.layout = cls, layout
            self.embed = nn.Conv2d(3, d, 2, 2)
            self.norm = nn.LayerNorm(d)
            self.head = nn.Linear(d, 3)

        def forward(self, x):
            t = self.embed(x)                                       # (N, D, 4, 4)
            if self.layout == "hwd":
                t = self.norm(t.permute(0, 2, 3, 1))                 # (N, 4, 4, D)
                return self.head(t.mean((1, 2)))
            t = t.flatten(2).transpose(1, 2)                         # (N, 16, D)
            if self.cls:
                t = torch.cat([t.mean(1, keepdim=True), t], 1)
            return self.head(self.norm(t).mean(1))

    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    maps = []
    for cls, layout in [(False, "tok"), (True, "tok"), (False, "hwd")]:
        m = Tokens(cls, layout).double()
        e = GradCAM(layer="norm", layout="channels_last" if layout == "hwd" else "auto")(m, x, target=0)
        assert e.raw.shape == (2, 4, 4) and e.attributions.shape == x.shape
        maps.append(e.raw)
    three_tokens = nn.Sequential(nn.Flatten(), nn.Unflatten(1, (3, 64)), nn.LayerNorm(64), nn.Flatten(),
                                 nn.Linear(192, 2)).double()
    with pytest.raises(ValueError, match="reshape="):
        GradCAM(layer="2")(three_tokens, x)


def test_vit_default_layer_error_lists_candidates(vit, imgs):
    with pytest.raises(ValueError, match="encoder_layer_1"):
        GradCAM()(vit, imgs)
    e = GradCAM()(xadv.zoo.resnet18(num_classes=3, width=4, small_input=True), imgs.float())
    assert e.params["layer"] == "layer4.1.conv2"


def test_double_backward_through_attention_restores_the_kernel_setting(vit, imgs):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from xadv.fooling import TopKAttack
    vit = vit.float()
    x = imgs.float()
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]):
        before = torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.math_sdp_enabled(), \
            torch.backends.cuda.mem_efficient_sdp_enabled()
        r = TopKAttack("saliency", eps=8 / 255, steps=3)(vit, x)
        after = torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.math_sdp_enabled(), \
            torch.backends.cuda.mem_efficient_sdp_enabled()
    assert before == after
    assert torch.isfinite(r.x_adv).all()
    xi = x.clone().requires_grad_(True)
    e = Saliency()(vit, xi, target=0, create_graph=True)
    (g,) = torch.autograd.grad(e.attributions.abs().sum(), xi)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


@pytest.mark.parametrize("explainer", [AttentionRollout(), GradCAM(layer="encoder.layers.encoder_layer_0"),
                                       IntegratedGradients(steps=3, layer="encoder.layers.encoder_layer_0.ln_1"),
                                       Saliency(layer="conv_proj", neuron=(0, 1, 1))])
def test_vit_is_unchanged_after_calls_and_errors(vit, imgs, explainer):
    state = {k: v.clone() for k, v in vit.state_dict().items()}
    vit.train()
    hooks = [(m, dict(m._forward_hooks), dict(m._forward_pre_hooks)) for m in vit.modules()]
    target = None if getattr(explainer, "neuron", None) is not None else 1
    explainer(vit, imgs, target)
    with pytest.raises(ValueError):
        explainer(vit, imgs, 7)
    assert all(m.training for m in vit.modules())
    assert all(dict(m._forward_hooks) == f and dict(m._forward_pre_hooks) == p for m, f, p in hooks)
    for k, v in vit.state_dict().items():
        assert torch.equal(v, state[k]), k


def _manual_attention(mha, h):
    d = mha.embed_dim
    q, k, _ = F.linear(h, mha.in_proj_weight, mha.in_proj_bias).split(d, -1)
    nh = mha.num_heads
    q = q.reshape(h.shape[0], -1, nh, d // nh).transpose(1, 2)
    k = k.reshape(h.shape[0], -1, nh, d // nh).transpose(1, 2)
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // nh), -1)


def test_attention_rollout_equals_the_definition(vit, imgs):
    # the attention matrices recomputed by hand from the projections and the block inputs
    blocks = list(vit.encoder.layers)
    ins = []
    hs = [b.ln_1.register_forward_hook(lambda _m, _a, out: ins.append(out)) for b in blocks]
    with torch.no_grad():
        vit(imgs)
    for h in hs:
        h.remove()
    joint = None
    eye = torch.eye(17, dtype=torch.float64)
    for b, h in zip(blocks, ins):
        a = _manual_attention(b.self_attention, h).mean(1)
        a = 0.5 * a + 0.5 * eye
        a = a / a.sum(-1, keepdim=True)
        joint = a if joint is None else a @ joint
    e = AttentionRollout()(vit, imgs)
    close(e.raw.flatten(1), joint[:, 0, 1:])
    assert e.attributions.shape == imgs.shape
    assert AttentionRollout(head_fusion="max", discard_ratio=0.5)(vit, imgs).raw.shape == (2, 4, 4)
    assert xadv.explainers.get("rollout").name == "attention_rollout"
    xi = imgs.clone().requires_grad_(True)
    e = AttentionRollout()(vit, xi, create_graph=True)
    gx, gw = torch.autograd.grad(e.raw.pow(2).sum(), (xi, vit.encoder.layers.encoder_layer_0.self_attention.in_proj_weight))
    assert gx.abs().max() > 0 and gw.abs().max() > 0
    assert not AttentionRollout()(vit, imgs).attributions.requires_grad


# ---------------------------------------------------------------------- reference architectures
def test_zoo_state_dict_keys_follow_torchvision():
    with torch.device("meta"):  # full sizes without allocating their weights
        _full_size_keys()
    # same seed, same weights; the global RNG is left alone
    state = torch.random.get_rng_state()
    torch.testing.assert_close(xadv.zoo.resnet18(width=8, num_classes=3).fc.weight,
                               xadv.zoo.resnet18(width=8, num_classes=3).fc.weight)
    assert torch.equal(state, torch.random.get_rng_state())


def _full_size_keys():
    r18 = xadv.zoo.resnet18()
    assert sum(p.numel() for p in r18.parameters()) == 11_689_512
    keys = set(r18.state_dict())
    assert {"conv1.weight", "layer2.0.downsample.0.weight", "layer4.1.bn2.running_var", "fc.bias"} <= keys
    r50 = xadv.zoo.resnet50()
    assert sum(p.numel() for p in r50.parameters()) == 25_557_032
    v = xadv.zoo.vgg11_bn()
    assert sum(p.numel() for p in v.parameters()) == 132_868_840
    assert {"features.0.weight", "features.1.running_mean", "classifier.6.weight"} <= set(v.state_dict())
    vit = xadv.zoo.vit_b_16()
    assert sum(p.numel() for p in vit.parameters()) == 86_567_656
    assert {"class_token", "conv_proj.weight", "encoder.pos_embedding",
            "encoder.layers.encoder_layer_11.self_attention.in_proj_weight",
            "encoder.layers.encoder_layer_0.mlp.3.bias", "encoder.ln.weight", "heads.head.weight"} <= set(vit.state_dict())


def _sharpen(model, head):
    """Random networks map every input to nearly the same logits; a zero-bias head with
    large weights makes the predictions input-dependent, so attacks can succeed."""
    with torch.no_grad():
        head.bias.zero_()
        head.weight.mul_(50.0)
    return model


def _small_models():
    models = _raw_small_models()
    heads = {"resnet18": "fc", "resnet50": "fc", "vgg11_bn": "classifier.6", "vit_tiny": "heads.head"}
    return {k: (_sharpen(m, m.get_submodule(heads[k])), layer) for k, (m, layer) in models.items()}


def _raw_small_models():
    return {
        "resnet18": (xadv.zoo.resnet18(num_classes=3, width=4, small_input=True), None),
        "resnet50": (xadv.zoo.resnet50(num_classes=3, width=2, small_input=True), None),
        "vgg11_bn": (xadv.zoo.vgg11_bn(num_classes=3, width=4, hidden=16, pool=1), None),
        "vit_tiny": (xadv.zoo.vit_tiny(num_classes=3, image_size=16, patch_size=4, num_layers=2, hidden_dim=24,
                                       num_heads=2, mlp_dim=48), "encoder.layers.encoder_layer_1.ln_1"),
    }


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "vgg11_bn", "vit_tiny"])
def test_every_explainer_and_consumer_on_reference_architectures(name):
    from xadv.detectors import SaliencyDetector, evaluate
    from xadv.fooling import TargetedManipulation, TopKAttack
    model, cam_layer = _small_models()[name]
    torch.manual_seed(0)
    size = 32 if name == "vgg11_bn" else 16
    x = torch.rand(48, 3, size, size)
    y = model(x).argmax(1)
    explainers = [Saliency(), InputXGradient(), IntegratedGradients(steps=4), GradientSHAP(n_samples=4, seed=0),
                  SmoothGrad(n_samples=3, seed=0), GradCAM(layer=cam_layer), GradCAMPlusPlus(layer=cam_layer),
                  Occlusion(window=8, stride=8)]
    if name == "vit_tiny":
        explainers.append(AttentionRollout())
    for ex in explainers:
        e = ex(model, x[:2], target=y[:2])
        a = e.attributions
        assert a.shape == x[:2].shape and torch.isfinite(a).all(), type(ex).__name__
    layer = cam_layer or ("layer1" if "resnet" in name else "features.4")
    e = IntegratedGradients(steps=4, layer=layer)(model, x[:2], target=y[:2])
    assert e.params["layer"] == layer
    r = xadv.attacks.PGD(eps=0.5, steps=3)(model, x, y)
    assert r.x_adv.shape == x.shape
    xadv.attacks.ExplainerPGD("saliency", eps=4 / 255, steps=2)(model, x[:2], y[:2])
    TopKAttack("saliency", eps=4 / 255, steps=2)(model, x[:2])
    TargetedManipulation(torch.rand(2, size, size), explainer="saliency", eps=4 / 255, steps=2)(model, x[:2])
    det = SaliencyDetector(explainer="saliency").fit(model, x[:24], r.x_adv[:24])
    s = det.score(model, x[24:])
    assert s.shape == (24,) and torch.isfinite(s).all()
    def pgd(model_, x_, y_):
        # random networks are hard to flip: every PGD output counts as a positive here,
        # this test is about the detector pipeline running on the architecture
        res = xadv.attacks.PGD(eps=0.5, steps=3)(model_, x_, y_)
        return dataclasses.replace(res, success=torch.ones_like(res.success))

    rep = evaluate({"saliency": SaliencyDetector(explainer="saliency")}, model, (x[:24], y[:24]), (x[24:], y[24:]),
                   train_attacks={"pgd@0.5": pgd}, test_attacks={"pgd@0.5": pgd})
    assert rep is not None


def test_the_docs_examples_for_own_models_run(tmp_path, monkeypatch):
    """The code blocks of docs/explainers.md from "Several inputs" to "Correctness" run."""
    import re
    from pathlib import Path
    text = (Path(__file__).resolve().parents[1] / "docs" / "explainers.md").read_text()
    part = text[text.index("### Several inputs, pass-through"):text.index("## Correctness: what the tests check")]
    code = "\n".join(re.findall(r"```python\n(.*?)```", part, re.S))
    assert "xadv.adapt" in code and "AttentionRollout" in code
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/explainers.md", "exec"), {})
    assert (tmp_path / "tokens.pdf").is_file()
