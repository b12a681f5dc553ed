"""xadv on the models users bring: torchvision-style ResNet, VGG and MobileNet blocks.

torchvision cannot be imported here, so the architectures are written out at small
widths with torchvision's habits: ``nn.ReLU(inplace=True)`` everywhere, one ReLU
module called twice per BasicBlock, residual ``out += identity`` in place,
BatchNorm, Dropout, AdaptiveAvgPool2d, ReLU6 / Hardswish, depthwise convolutions,
``torch.flatten`` and functional pooling in ``forward``. Random weights (seeded),
3x32x32 inputs, float64 so the comparisons with captum and torchattacks are exact.

Bugs these tests caught (regressions):

* Grad-CAM on a layer whose output is changed in place afterwards (a conv before
  ``ReLU(inplace=True)``, the BatchNorm before ``out += identity``) differed from
  captum by as much as the map itself; a layer called twice silently used its last call.
* ``smooth_relu`` built its Softplus modules in train mode inside an eval model, so
  ``preserved`` restored BatchNorm buffers with ``copy_`` and the version bump broke
  every ``create_graph=True`` double backward through a BatchNorm (TopKAttack on a
  ResNet raised); the same for any model left in train mode.
* ``nn.ReLU6`` was not smoothed (MobileNetV2 fooling ran on the piecewise-linear
  model), and fooling a model with functional ``F.relu`` silently did nothing.
* Mahalanobis and ML-LOO detectors with their default layers (every nn.ReLU)
  raised on any ResNet (the block ReLU runs twice).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xadv
import xadv.attacks as A
from xadv.detectors import SaliencyDetector
from xadv.explainers import (LIME, GradCAM, GradCAMPlusPlus, InputXGradient, IntegratedGradients, Saliency,
                             SmoothGrad)
from xadv.fooling import TopKAttack
from xadv.fooling._engine import make_twin, set_beta
from xadv.nn import (Normalize, SmoothingWarning, SoftplusReLU6, count_functional_relus, is_smoothed_relu,
                     smooth_relu, smoothed)

assert_close = torch.testing.assert_close


# --------------------------------------------------------------------------- architectures
def conv3x3(i: int, o: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(i, o, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: ``self.relu`` (inplace) called twice, ``out += identity``."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNetLike(nn.Module):
    def __init__(self, width: int = 8, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(width, width))
        down = nn.Sequential(nn.Conv2d(width, 2 * width, 1, stride=2, bias=False), nn.BatchNorm2d(2 * width))
        self.layer2 = nn.Sequential(BasicBlock(width, 2 * width, 2, down), BasicBlock(2 * width, 2 * width))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class VGGLike(nn.Module):
    def __init__(self, width: int = 8, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2))
        self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
        self.classifier = nn.Sequential(nn.Linear(8 * width, 32), nn.ReLU(True), nn.Dropout(0.5),
                                        nn.Linear(32, classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 project; ReLU6 in place."""

    def __init__(self, inp: int, oup: int, stride: int, expand: int):
        super().__init__()
        hidden = inp * expand
        self.use_res = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, oup, 1, bias=False), nn.BatchNorm2d(oup))

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetLike(nn.Module):
    def __init__(self, width: int = 8, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU6(inplace=True)),
            InvertedResidual(width, width, 1, 2),
            InvertedResidual(width, 2 * width, 2, 2),
            nn.Sequential(nn.Conv2d(2 * width, 4 * width, 1, bias=False), nn.BatchNorm2d(4 * width),
                          nn.Hardswish(inplace=True)))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(4 * width, classes))

    def forward(self, x):
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


class FunctionalNet(nn.Module):
    """ReLUs applied with ``F.relu`` in ``forward``: no module to smooth."""

    def __init__(self, width: int = 8, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, stride=2)
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """BatchNorm with non-trivial running statistics and affine parameters, as after training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
    return model


#: name -> (class, a Grad-CAM layer in a nested block, a layer whose output is changed in place later)
ARCHS = {
    "resnet": (ResNetLike, "layer2.1.conv2", "layer1.0.bn2"),      # bn2 then ``out += identity``
    "vgg": (VGGLike, "features.3", "features.0"),                  # conv then ReLU(inplace=True)
    "mobilenet": (MobileNetLike, "features.2.conv.3", "features.1.conv.1"),  # depthwise conv; BN then ReLU6(inplace)
}


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return randomize_bn(ARCHS[name][0]()).double().eval()


@pytest.fixture(scope="module")
def x64():
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


@pytest.fixture(scope="module", params=list(ARCHS))
def arch(request):
    return request.param, build(request.param)


def explainers(layer: str):
    return {
        "saliency": Saliency(),
        "input_x_gradient": InputXGradient(),
        "smoothgrad": SmoothGrad(n_samples=4, noise=0.1, seed=0),
        "integrated_gradients": IntegratedGradients(steps=8),
        # signed maps: with random weights the ReLU'd map of a class can be all zero
        "gradcam": GradCAM(layer=layer, relu=False),
        "gradcam_pp": GradCAMPlusPlus(layer=layer, relu=False),
    }


# --------------------------------------------------------------------------- model state
def snapshot(model: nn.Module) -> dict:
    """Everything an explainer or attack must leave as it was."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "modules": [(n, m) for n, m in model.named_modules()],
        "types": [type(m) for m in model.modules()],
        "inplace": [getattr(m, "inplace", None) for m in model.modules()],
        "modes": [m.training for m in model.modules()],
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
                   len(m._backward_pre_hooks)) for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad for p in model.parameters()],
    }


def assert_unchanged(model: nn.Module, snap: dict) -> None:
    now = snapshot(model)
    assert now["state"].keys() == snap["state"].keys()
    for k, v in snap["state"].items():  # parameters and buffers (BatchNorm running stats, counters)
        assert torch.equal(now["state"][k], v), k
    assert [n for n, _ in now["modules"]] == [n for n, _ in snap["modules"]]
    assert all(a is b for (_, a), (_, b) in zip(now["modules"], snap["modules"]))  # no module swapped
    for key in ("types", "inplace", "modes", "hooks", "requires_grad"):
        assert now[key] == snap[key], key
    assert all(g is None for g in now["grads"])


# --------------------------------------------------------------------------- every explainer
def test_every_explainer_runs_and_leaves_the_model_unchanged(arch, x64):
    name, model = arch
    layer = ARCHS[name][1]
    snap = snapshot(model)
    for key, e in explainers(layer).items():
        r = e(model, x64, target=1)
        assert r.attributions.shape == x64.shape, key
        assert r.attributions.dtype == torch.float64
        assert torch.isfinite(r.attributions).all(), key
        assert r.attributions.abs().sum() > 0, key
        assert_unchanged(model, snap)
    # float32, as most users run it: the same maps to float32 precision
    m32 = build(name).float()
    for key in ("saliency", "integrated_gradients", "gradcam"):
        e = explainers(layer)[key]
        a32 = e(m32, x64.float(), target=1).attributions
        a64 = e(model, x64, target=1).attributions
        assert a32.dtype == torch.float32
        assert (a32.double() - a64).abs().max() <= 1e-4 * a64.abs().max(), key
    # the same explainers by registry name and through xadv.explain
    assert_close(xadv.explain(model, x64, method="ig", target=1, steps=8).attributions,
                 IntegratedGradients(steps=8)(model, x64, 1).attributions)


def test_model_in_train_mode_is_left_in_train_mode_with_its_statistics(x64):
    """A user who forgot ``model.eval()``: explainers (and create_graph through BatchNorm)
    run in the mode given and leave mode, running statistics and counters as they were."""
    for name in ARCHS:
        model = build(name).train()
        snap = snapshot(model)
        layer = ARCHS[name][1]
        for key, e in explainers(layer).items():
            xr = x64.clone().requires_grad_(True)
            r = e(model, xr, target=1, create_graph=True)
            (g,) = torch.autograd.grad(r.attributions.pow(2).sum(), xr, allow_unused=True)
            assert g is None or torch.isfinite(g).all(), (name, key)
            assert_unchanged(model, snap)
        assert model.training and all(m.training for m in model.modules())


def test_parameters_frozen_inside_input_gradient_work_and_restored(x64):
    """Explainers (without create_graph) and attacks need gradients w.r.t. inputs only, so
    they run with the parameters' requires_grad off (autograd then skips what weight
    gradients would save; 5-10% at ResNet/ViT sizes). Outside, every flag and .grad is
    the user's again, also after an error; with create_graph=True parameters keep their
    flags so attributions stay differentiable w.r.t. them."""
    model = build("resnet")
    model.fc.weight.requires_grad_(False)                 # the user froze one parameter
    model.conv1.weight.grad = torch.ones_like(model.conv1.weight)
    grad0 = model.conv1.weight.grad
    flags0 = [p.requires_grad for p in model.parameters()]
    seen = []
    h = model.conv1.register_forward_hook(lambda m, i, o: seen.append([p.requires_grad for p in model.parameters()]))
    try:
        for e in (Saliency(), IntegratedGradients(steps=4), GradCAM(layer="layer2.1.conv2")):
            seen.clear()
            e(model, x64, target=1)
            assert seen and all(not any(f) for f in seen), type(e).__name__
        seen.clear()
        A.PGD(eps=0.03, steps=2, seed=0)(model, x64)
        assert seen and all(not any(f) for f in seen)
        seen.clear()
        r = Saliency()(model, x64, target=1, create_graph=True)
        assert seen[0] == flags0
        (g,) = torch.autograd.grad(r.attributions.pow(2).sum(), model.conv1.weight)
        assert g.abs().max() > 0
    finally:
        h.remove()
    assert [p.requires_grad for p in model.parameters()] == flags0
    assert model.conv1.weight.grad is grad0 and bool((grad0 == 1).all())

    class Fails(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = build("resnet")

        def forward(self, x):
            if not self.net.conv1.weight.requires_grad:
                raise RuntimeError("boom")
            return self.net(x)

    bad = Fails()
    with pytest.raises(RuntimeError, match="boom"):
        Saliency()(bad, x64, target=1)
    with pytest.raises(RuntimeError, match="boom"):
        A.PGD(eps=0.03, steps=2, seed=0)(bad, x64)
    assert all(p.requires_grad for p in bad.parameters())


@pytest.mark.filterwarnings("ignore:Input Tensor")
@pytest.mark.reference
def test_matches_captum(arch, x64):
    from captum.attr import IntegratedGradients as CaptumIG
    from captum.attr import LayerGradCam
    from captum.attr import Saliency as CaptumSaliency

    name, model = arch
    t = torch.tensor([0, 3, 7])
    assert_close(Saliency()(model, x64, t).attributions, CaptumSaliency(model).attribute(x64, target=t, abs=False))
    ig = IntegratedGradients(steps=8)(model, x64, t).attributions
    assert_close(ig, CaptumIG(model).attribute(x64, target=t, n_steps=8, method="gausslegendre"))
    modules = dict(model.named_modules())
    # the nested layer, and a layer whose output is overwritten in place later in forward
    # (captum keeps a copy there too; before the fix xadv read the overwritten tensor)
    for layer in ARCHS[name][1:]:
        ref = LayerGradCam(model, modules[layer]).attribute(x64, target=t, relu_attributions=False)[:, 0]
        assert ref.abs().max() > 0
        assert_close(GradCAM(layer=layer, relu=False)(model, x64, t).raw, ref)
        assert_close(GradCAM(layer=modules[layer], relu=False)(model, x64, t).raw, ref)  # module object
        ref_relu = LayerGradCam(model, modules[layer]).attribute(x64, target=t, relu_attributions=True)[:, 0]
        assert_close(GradCAM(layer=layer)(model, x64, t).raw, ref_relu)


def test_create_graph_double_backward(arch, x64):
    """Double backward is finite for every differentiable explainer, on the model (ReLU:
    zero second derivative is allowed) and on its smooth copy (non-zero), w.r.t. the
    input and the parameters."""
    name, model = arch
    twin = smooth_relu(model, beta=10.0)
    for key, e in explainers(ARCHS[name][1]).items():
        assert e.differentiable
        for net, smooth in ((model, False), (twin, True)):
            xr = x64.clone().requires_grad_(True)
            r = e(net, xr, target=1, create_graph=True)
            params = [p for p in net.parameters()]
            grads = torch.autograd.grad(r.attributions.pow(2).sum(), [xr] + params, allow_unused=True)
            assert all(g is None or torch.isfinite(g).all() for g in grads), (name, key)
            if smooth:
                assert grads[0] is not None and grads[0].abs().max() > 0, (name, key)


# --------------------------------------------------------------------------- inputs and wrappers
def test_input_layouts_batch_of_one_and_normalize_wrapper(arch, x64):
    name, model = arch
    layer = ARCHS[name][1]
    big = torch.rand(3, 3, 40, 40, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    sliced = big[:, :, 4:36, 8:40]  # non-contiguous view
    assert not sliced.is_contiguous()
    before = sliced.clone()
    for e in (Saliency(), IntegratedGradients(steps=4), GradCAM(layer=layer)):
        ref = e(model, x64, 2).attributions
        cl = e(model, x64.contiguous(memory_format=torch.channels_last), 2).attributions
        assert_close(cl, ref)
        assert_close(e(model, sliced, 2).attributions, e(model, sliced.contiguous(), 2).attributions)
        # batch of one (eval mode: samples are independent)
        assert_close(e(model, x64[1:2], 2).attributions, ref[1:2])
    assert torch.equal(sliced, before)  # the user's tensor is not written to

    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    wrapped = nn.Sequential(Normalize(mean, std), model).eval()
    m_t = torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)
    s_t = torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
    # chain rule through the normalisation
    assert_close(Saliency()(wrapped, x64, 4).attributions, Saliency()(model, (x64 - m_t) / s_t, 4).attributions / s_t)
    inner = dict(model.named_modules())[layer]
    by_name = GradCAM(layer="1." + layer)(wrapped, x64, 4)
    assert_close(GradCAM(layer=inner)(wrapped, x64, 4).raw, by_name.raw)
    assert_close(by_name.raw, GradCAM(layer=layer)(model, (x64 - m_t) / s_t, 4).raw)


def test_gradcam_layer_called_twice_raises_and_block_output_works(x64):
    model = build("resnet")
    snap = snapshot(model)
    for layer in ("layer2.1.relu", model.layer2[1].relu):  # torchvision's reused ReLU
        with pytest.raises(ValueError, match=r"'layer2.1.relu' is called 2 times .*pick a layer that runs once"):
            GradCAM(layer=layer)(model, x64)
    assert_unchanged(model, snap)  # hook removed after the error
    e = GradCAM(layer="layer2.1")(model, x64, 1)  # the block's output (after its last ReLU)
    assert e.raw.shape == (3, 8, 8) and torch.isfinite(e.raw).all()
    with pytest.raises(ValueError, match="unknown layer 'layer4.1.conv2'.*layer2.1.conv2"):
        GradCAM(layer="layer4.1.conv2")(model, x64)


# --------------------------------------------------------------------------- smoothing
def test_smooth_relu_on_torchvision_style_models(x64):
    resnet = build("resnet")
    twin = smooth_relu(resnet, beta=5.0)
    # every ReLU attribute (inplace, and the one called twice per block) became one Softplus
    assert [type(m) for m in twin.modules() if isinstance(m, (nn.ReLU, nn.Softplus))] == [nn.Softplus] * 4
    assert all(is_smoothed_relu(m) for m in twin.modules() if isinstance(m, nn.Softplus))
    assert [m.training for m in twin.modules()] == [m.training for m in resnet.modules()]  # eval kept (regression)
    assert isinstance(resnet.relu, nn.ReLU) and resnet.relu.inplace
    out = resnet(x64)
    assert (smooth_relu(resnet, 1e5)(x64) - out).abs().max() < 1e-3 * out.abs().max()
    assert (twin(x64) - out).abs().max() > 1e-3 * out.abs().max()

    mobile = build("mobilenet")
    twin = smooth_relu(mobile, beta=5.0)
    assert sum(isinstance(m, SoftplusReLU6) for m in twin.modules()) == 5
    assert not any(type(m) is nn.ReLU6 for m in twin.modules())
    assert sum(isinstance(m, nn.Hardswish) for m in twin.modules()) == 1  # kept (smooth where it is not linear)
    out = mobile(x64)
    assert (smooth_relu(mobile, 1e5)(x64) - out).abs().max() < 1e-3 * out.abs().max()
    z = torch.linspace(-3, 9, 121, dtype=torch.float64)
    assert_close(SoftplusReLU6(beta=1e4)(z), F.relu6(z), atol=1e-4, rtol=0)

    # beta-smoothing (defense) of a ReLU6-only model: same maps as on the smooth copy
    from xadv.defenses import BetaSmoothed
    assert_close(BetaSmoothed(Saliency(), beta=5.0)(mobile, x64, 1).attributions,
                 Saliency()(smooth_relu(mobile, 5.0), x64, 1).attributions)
    assert all(type(a) is type(b) for a, b in zip(mobile.modules(), build("mobilenet").modules()))

    # in place, restored to the very same (inplace) modules
    relus = [(m, m.inplace) for m in resnet.modules() if isinstance(m, nn.ReLU)]
    with smoothed(resnet, 5.0):
        assert not any(isinstance(m, nn.ReLU) for m in resnet.modules())
        assert not any(m.training for m in resnet.modules())
    assert [(m, m.inplace) for m in resnet.modules() if isinstance(m, nn.ReLU)] == relus


def test_functional_relu_is_reported_not_silently_ignored(x64):
    torch.manual_seed(0)
    net = FunctionalNet().double().eval()
    assert count_functional_relus(net, x64[:1]) == 2
    assert count_functional_relus(build("resnet"), x64[:1]) == 0  # nn.ReLU calls are not functional
    assert count_functional_relus(build("mobilenet"), x64[:1]) == 0
    with pytest.raises(ValueError, match="functional relu cannot be swapped"):
        smooth_relu(net)
    # explainers are exact on it (no smoothing involved)
    assert torch.isfinite(Saliency()(net, x64, 1).attributions).all()
    # a fooling attack says that it cannot smooth the model (it used to return an unchanged map)
    snap = snapshot(net)
    with pytest.warns(SmoothingWarning, match=r"TopKAttack: the model applies relu 2 time\(s\)"):
        res = TopKAttack("saliency", eps=8 / 255, steps=2, k=50)(net, x64[:2])
    assert res.x_adv.shape == (2, 3, 32, 32)
    assert_unchanged(net, snap)

    class Mixed(nn.Module):  # one module relu, one functional
        def __init__(self):
            super().__init__()
            self.fc1, self.act, self.fc2 = nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)

        def forward(self, z):
            return self.fc2(self.act(self.fc1(z)).relu() + F.relu(z))

    assert count_functional_relus(Mixed(), torch.rand(2, 4)) == 2


def test_fooling_twin_anneals_only_the_replaced_relus():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Softplus(beta=1.0), nn.Conv2d(4, 4, 3), nn.ReLU(),
                        nn.Flatten(), nn.Linear(4 * 28 * 28, 3)).double().eval()
    twin, smooth = make_twin(net, Saliency(), 3.0)
    assert smooth and twin[1].beta == 1.0 and twin[3].beta == 3.0
    set_beta(twin, 30.0)
    assert twin[1].beta == 1.0 and twin[3].beta == 30.0  # the model's own softplus is kept
    mobile = build("mobilenet")
    twin, smooth = make_twin(mobile, Saliency(), 3.0)  # ReLU6 only: smoothed too
    assert smooth and not any(p.requires_grad for p in twin.parameters())
    set_beta(twin, 30.0)
    assert {m.beta for m in twin.modules() if isinstance(m, SoftplusReLU6)} == {30.0}


# --------------------------------------------------------------------------- consumers
def test_topk_fooling_and_saliency_detector_on_resnet(x64):
    model = build("resnet")
    snap = snapshot(model)
    res = TopKAttack("saliency", eps=8 / 255, steps=3, k=50)(model, x64)  # raised before the fix
    assert res.kept.all()
    assert (res.x_adv - x64).abs().max() <= 8 / 255 + 1e-12
    assert res.similarity["topk_intersection"].mean() < 0.9
    assert_unchanged(model, snap)

    xs = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    y = model(xs).argmax(1)
    adv = A.PGD(eps=8 / 255, steps=3, seed=0)(model, xs, y)
    det = SaliencyDetector(width=4, hidden=8, epochs=2, val_fraction=0.25).fit(model, xs[:8], adv.x_adv[8:])
    s = det.score(model, torch.cat([xs[:3], adv.x_adv[:3]]))
    assert s.shape == (6,) and torch.isfinite(s).all()
    assert_unchanged(model, snap)


def test_activation_detectors_read_every_call_of_a_reused_relu():
    """Mahalanobis and ML-LOO read every nn.ReLU by default: on a ResNet the block ReLU
    runs twice, which used to raise; now each call is one feature layer (1 + 3 x 2 = 7)."""
    from xadv.detectors import LOODetector, MahalanobisDetector

    model = build("resnet")
    snap = snapshot(model)
    xs = torch.rand(24, 3, 32, 32, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    adv = A.PGD(eps=8 / 255, steps=2, seed=0)(model, xs, model(xs).argmax(1)).x_adv
    maha = MahalanobisDetector().fit(model, xs[:12], adv[12:])
    assert len(maha.means_) == 7 and maha.layer_scores(model, xs[:2]).shape == (2, 7)
    assert torch.isfinite(maha.score(model, adv[:3])).all()
    loo = LOODetector(patch=8).fit(model, xs[:12], adv[12:])
    assert loo.features(model, xs[:2]).shape == (2, 8 * len(loo.stats))
    assert torch.isfinite(loo.score(model, adv[:3])).all()
    assert_unchanged(model, snap)
    with pytest.raises(ValueError, match="exactly once"):  # an explicit reused layer is still refused
        MahalanobisDetector(layers=["layer1.0.relu"]).fit(model, xs[:12], adv[12:])


@pytest.mark.reference
def test_pgd_and_fgsm_match_torchattacks_on_resnet(x64):
    torchattacks = pytest.importorskip("torchattacks")
    model = build("resnet")
    y = model(x64).argmax(1)
    snap = snapshot(model)
    ours = A.PGD(eps=8 / 255, steps=5, step_size=2 / 255, random_start=False)(model, x64, y).x_adv
    fgsm = A.FGSM(eps=8 / 255)(model, x64, y).x_adv
    assert_unchanged(model, snap)
    ref = torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=5, random_start=False)(x64, y)
    assert_close(ours, ref, rtol=0, atol=1e-12)
    assert_close(fgsm, torchattacks.FGSM(model, eps=8 / 255)(x64, y), rtol=0, atol=1e-12)
    assert (ours != x64).any()


def test_lime_on_vgg(x64):
    model = build("vgg")
    snap = snapshot(model)
    e = LIME(n_samples=64, seed=0, segmentation_kwargs={"n_segments": 16})(model, x64[:2], target=1)
    assert e.attributions.shape == (2, 3, 32, 32) and torch.isfinite(e.attributions).all()
    assert e.segments.shape == (2, 32, 32)
    assert_unchanged(model, snap)
    # the same channels-last input gives the same explanation
    e2 = LIME(n_samples=64, seed=0, segmentation_kwargs={"n_segments": 16})(
        model, x64[:2].contiguous(memory_format=torch.channels_last), target=1)
    assert_close(e2.attributions, e.attributions)
