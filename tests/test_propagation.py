"""The propagation family (LRP, DeepLIFT, Guided Backprop, Deconvnet, Guided Grad-CAM):
zennit and captum references in float64 on VGG- and ResNet-style nets with BatchNorm and
residual adds, the papers' properties, gradcheck of create_graph, no mutation, consumers."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import xadv
import xadv.data
import xadv.zoo
from _refs import import_reference
from xadv.explainers import LRP, Deconvnet, DeepLift, DeepLiftShap, GuidedBackprop, GuidedGradCAM

COMPOSITES = ["epsilon_plus", "epsilon_gamma_box", "epsilon_alpha2_beta1", "epsilon_plus_flat",
              "epsilon_alpha2_beta1_flat"]
ZENNIT = {"epsilon_plus": "EpsilonPlus", "epsilon_gamma_box": "EpsilonGammaBox",
          "epsilon_alpha2_beta1": "EpsilonAlpha2Beta1", "epsilon_plus_flat": "EpsilonPlusFlat",
          "epsilon_alpha2_beta1_flat": "EpsilonAlpha2Beta1Flat"}


def _bn(c, eps=0.0):
    # eps 0: zennit's merged BatchNorm keeps computing x / sqrt(1 + eps), a relative
    # 5e-6 change of the model with the default eps; xadv folds exactly
    m = nn.BatchNorm2d(c, eps=eps)
    with torch.no_grad():
        m.running_mean.uniform_(-0.5, 0.5)
        m.running_var.uniform_(0.5, 2.0)
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.2, 0.2)
    return m


class Add(nn.Module):
    """``a + b``; zennit needs its ``Sum`` module to see an add, set as ``self.sum``."""

    def __init__(self):
        super().__init__()
        self.sum = None

    def forward(self, a, b):
        return a + b if self.sum is None else self.sum(torch.stack([a, b], -1))


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1, self.bn1, self.relu1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), _bn(cout), nn.ReLU()
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), _bn(cout)
        self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _bn(cout)) \
            if (stride != 1 or cin != cout) else nn.Identity()
        self.add, self.relu2 = Add(), nn.ReLU()

    def forward(self, x):
        return self.relu2(self.add(self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))), self.short(x)))


def resnet_style():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), _bn(8), nn.ReLU(), Block(8, 8, 1),
                         Block(8, 12, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5)).double().eval()


def vgg_style():
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), _bn(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 12, 3, padding=1), _bn(12), nn.ReLU(), nn.Conv2d(12, 12, 3, padding=1),
                         nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(12 * 4 * 4, 16), nn.ReLU(),
                         nn.Linear(16, 5)).double().eval()


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(3)
    return torch.rand(4, 3, 16, 16, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 4])


def zennit_lrp(net, x, t, name):
    zennit = import_reference("zennit")
    from zennit.attribution import Gradient
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.layer import Sum
    from zennit.rules import Norm
    from zennit.types import AvgPool
    net = copy.deepcopy(net)
    for m in net.modules():
        if isinstance(m, Add):
            m.sum = Sum()
    # the adds and average pools with the Norm rule without stabiliser: xadv passes them by the
    # exact gradient (zennit's default Norm adds 1e-6 to the denominator)
    kw = dict(low=0.0, high=1.0) if "box" in name else {}
    comp = getattr(zennit.composites, ZENNIT[name])(canonizers=[SequentialMergeBatchNorm()],
                                                    layer_map=[((Sum, AvgPool), Norm(1e-300))], **kw)
    with Gradient(net, comp) as attributor:
        out, rel = attributor(x.clone().requires_grad_(), lambda o: o * torch.eye(o.shape[1], dtype=o.dtype)[t])
    return rel


@pytest.mark.reference
@pytest.mark.parametrize("arch", ["vgg", "resnet"])
@pytest.mark.parametrize("name", COMPOSITES)
def test_lrp_composites_match_zennit(arch, name, batch):
    net = vgg_style() if arch == "vgg" else resnet_style()
    x, t = batch
    ref = zennit_lrp(net, x, t, name)
    before = copy.deepcopy(net.state_dict())
    e = LRP(name)(net, x, t)
    assert ref.abs().max() > 1e-5
    torch.testing.assert_close(e.attributions, ref, rtol=0, atol=1e-10 * ref.abs().max().item())
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())  # nothing folded into the model
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())


def test_lrp_epsilon_conserves_relevance_on_a_bias_free_net(batch):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(6, 6, 3, padding=1, bias=False), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                        nn.Flatten(), nn.Linear(24, 5, bias=False)).double().eval()
    x, t = batch
    score = net(x)[torch.arange(4), t]
    gaps = []
    for eps in (1e-1, 1e-3, 1e-6, 0.0):
        e = LRP("epsilon", epsilon=eps)(net, x, t)
        gaps.append((e.attributions.sum((1, 2, 3)) - score).abs().max().item())
        torch.testing.assert_close(e.delta, score - e.attributions.sum((1, 2, 3)), rtol=0, atol=1e-12)
    assert gaps[0] > gaps[1] > gaps[2] and gaps[3] < 1e-12
    # resnet-style: residual adds conserve as well (bias-free except the folded BatchNorm)
    for m in (r := resnet_style()).modules():
        if isinstance(m, nn.BatchNorm2d):
            m.bias.data.zero_(), m.running_mean.zero_()
    r[-1].bias.data.zero_()
    e = LRP("epsilon", epsilon=0.0)(r, x, t)
    torch.testing.assert_close(e.attributions.sum((1, 2, 3)), r(x)[torch.arange(4), t], rtol=0, atol=1e-10)


def test_z_plus_is_non_negative(batch):
    x, t = batch
    net = vgg_style()
    e = LRP("z_plus")(net, x, t)
    # positive inputs: z+ keeps the sign of the explained score in every input relevance
    sign = net(x)[torch.arange(4), t].sign().detach()
    signed = e.attributions * sign[:, None, None, None]
    assert (signed >= 0).all() and (signed > 0).float().mean() > 0.5


def test_lrp_first_layer_only_rules_and_bad_parameters():
    from xadv.explainers.propagation import Composite, Flat
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(ValueError, match="first layer only"):
        LRP(Composite([(nn.Linear, Flat())]))(net, torch.rand(2, 4))
    with pytest.raises(ValueError, match="unknown composite"):
        LRP("epsilon_plus_plus")
    with pytest.raises(ValueError, match="alpha - beta"):
        from xadv.explainers.propagation import AlphaBeta
        AlphaBeta(2.0, 2.0)


# ================================================================================ captum
@pytest.fixture(scope="module")
def digits64():
    model = xadv.zoo.digits_cnn(pretrained=True).double().eval()
    x, y = xadv.data.load_digits(split="test")
    xb, _ = xadv.data.load_digits(split="train")
    return model, x[:4].double(), y[:4], xb[:6].double()


def _nets(digits64):
    model, x, y, bg = digits64
    r = resnet_style()
    g = torch.Generator().manual_seed(5)
    xr = torch.rand(3, 3, 16, 16, generator=g, dtype=torch.float64)
    return {"digits": (model, x, y, bg), "resnet": (r, xr, torch.tensor([0, 3, 1]), xr.flip(0) * 0.5)}


@pytest.mark.reference
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("arch", ["digits", "resnet"])
def test_deeplift_family_matches_captum(digits64, arch):
    import captum.attr as ca
    model, x, y, bg = _nets(digits64)[arch]
    ref, ref_delta = ca.DeepLift(model).attribute(x, target=y, return_convergence_delta=True)
    e = DeepLift()(model, x, y)
    assert e.delta.abs().max() < 1e-9   # summation to delta
    if arch == "digits":
        # captum's DeepLift misses summation-to-delta on the digits CNN by 0.26-2.8 (its
        # maxpool multipliers after zero-padded convs); ours sums exactly, so no comparison here
        assert ref_delta.abs().max() > 0.1
        return
    torch.testing.assert_close(e.attributions, ref, rtol=0, atol=1e-10)
    base = bg[:1] * 0.7
    torch.testing.assert_close(DeepLift(baseline=base)(model, x, y).attributions,
                               ca.DeepLift(model).attribute(x, baselines=base.expand_as(x), target=y), rtol=0, atol=1e-10)
    ref = ca.DeepLiftShap(model).attribute(x, baselines=bg, target=y)
    e = DeepLiftShap(bg, batch_size=5)(model, x, y)
    torch.testing.assert_close(e.attributions, ref, rtol=0, atol=1e-10)
    gap = model(x)[torch.arange(len(y)), y] - model(bg)[:, y].mean(0)
    torch.testing.assert_close(e.attributions.flatten(1).sum(1), gap.detach(), rtol=0, atol=1e-9)


@pytest.mark.reference
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("arch", ["digits", "resnet"])
def test_guided_methods_match_captum(digits64, arch):
    import captum.attr as ca
    model, x, y, _ = _nets(digits64)[arch]
    torch.testing.assert_close(GuidedBackprop()(model, x, y).attributions,
                               ca.GuidedBackprop(model).attribute(x, target=y), rtol=0, atol=1e-12)
    torch.testing.assert_close(Deconvnet()(model, x, y).attributions,
                               ca.Deconvolution(model).attribute(x, target=y), rtol=0, atol=1e-12)
    layer = model.features.conv3 if arch == "digits" else model[4].conv2
    name = "features.conv3" if arch == "digits" else "4.conv2"
    ref = ca.GuidedGradCam(model, layer).attribute(x, target=y)
    ours = GuidedGradCAM(layer=name)(model, x, y).attributions
    assert ref.abs().max() > 0
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12 * max(1.0, ref.abs().max().item()))


@pytest.mark.reference
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_lrp_epsilon_matches_captum(digits64):
    import captum.attr as ca
    model, x, y, _ = digits64

    class Net(nn.Module):   # the digits CNN with a functional flatten: captum's LRP needs a rule per module
        def __init__(self):
            super().__init__()
            self.features, self.fc = model.features, model.classifier.fc

        def forward(self, z):
            return self.fc(self.features(z).flatten(1))
    model = Net().eval()
    ref = ca.LRP(copy.deepcopy(model)).attribute(x, target=y)
    e = LRP("epsilon", epsilon=1e-9)(model, x, y)
    # measured: 3e-6 of the largest relevance (captum's rules on the pooling layers); zennit agrees to 1e-10
    torch.testing.assert_close(e.attributions, ref, rtol=0, atol=1e-5 * ref.abs().max().item())


# ======================================================================= create_graph
class SoftNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = _bn(3, eps=1e-5)
        self.act1, self.pool = nn.Softplus(beta=2.0), nn.AvgPool2d(2)
        self.fc1, self.act2, self.fc2 = nn.Linear(12, 6), nn.Softplus(beta=3.0), nn.Linear(6, 3)

    def forward(self, x):
        return self.fc2(self.act2(self.fc1(self.pool(self.act1(self.bn(self.conv(x)))).flatten(1))))


@pytest.mark.parametrize("make", [
    lambda: LRP("epsilon", epsilon=0.1), lambda: LRP("epsilon_plus"), lambda: LRP("epsilon_gamma_box"),
    lambda: LRP("epsilon_alpha2_beta1"), lambda: LRP("epsilon_plus_flat"),
    lambda: DeepLift(baseline=0.2), lambda: DeepLiftShap(torch.rand(3, 1, 4, 4, dtype=torch.float64)),
    lambda: GuidedBackprop(), lambda: Deconvnet(),
], ids=["eps", "eps_plus", "gamma_box", "alpha2beta1", "plus_flat", "deeplift", "deeplift_shap", "gbp", "deconv"])
def test_gradcheck_create_graph(make):
    torch.manual_seed(2)
    net = SoftNet().double().eval()
    ex = make()
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64) + 0.05
    t = torch.tensor([0, 2])
    plain = ex(net, x, t).attributions
    graph = ex(net, x.clone().requires_grad_(), t, create_graph=True)
    assert graph.attributions.requires_grad and not plain.requires_grad
    torch.testing.assert_close(graph.attributions.detach(), plain, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(lambda xx: ex(net, xx, t, create_graph=True).attributions,
                                    (x.clone().requires_grad_(),))
    # and to the parameters: a graph to the conv weight and the BatchNorm scale
    a = ex(net, x, t, create_graph=True).attributions
    gw, gb = torch.autograd.grad(a.pow(2).sum(), [net.conv.weight, net.bn.weight], allow_unused=True)
    assert gw is not None and gw.abs().sum() > 0


def test_functional_relu_is_refused():
    class F(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(torch.relu(x))
    for ex in (GuidedBackprop(), DeepLift()):
        with pytest.raises(ValueError, match="nn.ReLU modules"):
            ex(F(), torch.rand(2, 3))


def test_model_comes_back_unchanged_also_after_an_error(batch):
    net = resnet_style()
    x, t = batch
    state = copy.deepcopy(net.state_dict())
    for ex in (LRP("epsilon_gamma_box"), DeepLift(), GuidedBackprop(), GuidedGradCAM()):
        ex(net, x, t)
        with pytest.raises(Exception):
            ex(net, x, torch.tensor([0, 1, 2, 99]))
        assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in net.modules())
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in state.items())
