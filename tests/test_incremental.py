"""Incremental Occlusion (xadv.explainers._incremental): each occluded row computed only
in the box where it differs from its image gives the plain passes' outputs and
attributions, for every layer kind it handles, at every window position (borders
included), and is used only where it applies."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xadv
from xadv._fold import folded
from xadv.explainers import Occlusion, folding, incremental_occlusion
from xadv.explainers._incremental import Runner, usable
from xadv.zoo.architectures import resnet18

captum = pytest.importorskip("captum")
import captum.attr  # noqa: E402


def _resnet(width=8):
    m = resnet18(num_classes=10, width=width).double().eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():   # BatchNorm statistics away from the identity
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.copy_(0.1 * torch.randn(mod.running_mean.shape, generator=g, dtype=torch.float64))
                mod.running_var.copy_(0.5 + torch.rand(mod.running_var.shape, generator=g, dtype=torch.float64))
                mod.weight.copy_(1 + 0.2 * torch.randn(mod.weight.shape, generator=g, dtype=torch.float64))
                mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=g, dtype=torch.float64))
    return m


class _Zoo(nn.Module):
    """Every layer kind the runner computes on boxes, then one it does not (a squeeze-
    excite gate: a mean over the map), then the head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 5, stride=2, padding=2)
        self.bn = nn.BatchNorm2d(8).eval()
        with torch.no_grad():
            self.bn.running_mean.normal_(0, 0.2)
            self.bn.running_var.uniform_(0.5, 1.5)
            self.bn.weight.normal_(1, 0.2)
        self.act = nn.GELU()
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.dil = nn.Conv2d(8, 8, 3, padding=2, dilation=2)
        self.group = nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.leaky = nn.LeakyReLU(0.2)
        self.down = nn.Conv2d(8, 12, 1, stride=2)             # kernel smaller than its stride
        self.wide = nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.silu = nn.SiLU()
        self.head = nn.Linear(12, 5)

    def forward(self, x):
        h = self.pool(self.act(self.bn(self.stem(x))))
        h = h + self.leaky(self.group(F.relu(self.dil(h))))
        h = self.silu(self.wide(h) + self.down(h))
        h = h * torch.sigmoid(h.mean((2, 3), keepdim=True))   # not on boxes: rows built in full
        return self.head(h.mean((2, 3)))


class _Strided(nn.Module):
    """Strides larger than the kernels: some input rows reach no output."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.a = nn.Conv2d(3, 6, 1, stride=2)
        self.b = nn.Conv2d(6, 6, 2, stride=3)
        self.c = nn.Conv2d(6, 4, 3, padding=1)
        self.head = nn.LazyLinear(3)

    def forward(self, x):
        return self.head(torch.flatten(torch.tanh(self.c(F.relu(self.b(self.a(x))))), 1))


def _plain_rows(model, x, change, boxes, size):
    rows = []
    for (y0, x0) in boxes:
        o = x.clone()
        o[:, :, y0:y0 + size, x0:x0 + size] += change[:, :, :size, :size]
        rows.append(o)
    with torch.no_grad():
        return model(torch.cat(rows))


@pytest.mark.parametrize("fold,net", [(True, _Zoo), (False, _Zoo), (True, _Strided)])
def test_runner_equals_plain_passes_at_every_box(fold, net):
    m = net().double().eval()
    x = torch.rand(2, 3, 37, 41, dtype=torch.float64)
    m(x)   # shapes the lazy head
    with folding(fold):
        gm = usable(folded(m, x), x)
    assert gm is not None
    size = 7
    boxes = [(y, x0) for y in (0, 5, 13, 30) for x0 in (0, 1, 17, 34)]   # borders and odd offsets
    change = torch.randn(2, 3, size, size, dtype=torch.float64)
    with torch.no_grad():
        got = Runner(gm, x)(change.repeat(len(boxes), 1, 1, 1), boxes)
    want = _plain_rows(m, x, change, boxes, size)
    assert (want - m(x).repeat(len(boxes), 1)).abs().max() > 1e-3   # the boxes change the output
    assert torch.allclose(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("window,stride", [((3, 8, 8), (3, 8, 8)), ((3, 6, 6), (3, 4, 4)),
                                           ((3, 11, 11), (3, 7, 7)), ((1, 8, 8), (1, 8, 8)),
                                           ((3, 40, 40), (3, 40, 40))])
def test_occlusion_equals_plain_and_captum(window, stride):
    m = _resnet()
    x = torch.rand(3, 3, 40, 40, dtype=torch.float64)
    assert usable(folded(m, x), x) is not None
    occ = Occlusion(window=window, stride=stride)
    a = occ(m, x, target=1).attributions
    with incremental_occlusion(False):
        b = occ(m, x, target=1).attributions
    # captum sums its float64 differences into a float32 map
    ref = captum.attr.Occlusion(m).attribute(x, sliding_window_shapes=window, strides=stride, target=1).double()
    scale = float(ref.abs().max())
    assert scale > 0
    assert torch.allclose(a, b, rtol=0, atol=1e-10 * scale)
    assert torch.allclose(a, ref, rtol=0, atol=1e-6 * scale)


def test_normalisation_layer_first():
    # xadv.nn.Normalize traces as one call: the copy folds BatchNorm and the boxes start at the input
    m = nn.Sequential(xadv.nn.Normalize([0.4, 0.5, 0.6], [0.2, 0.25, 0.3]), _resnet()).double().eval()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    copy_ = folded(m, x)
    assert copy_ is not m and usable(copy_, x) is not None
    occ = Occlusion(window=8, stride=8)
    a = occ(m, x, target=1).attributions
    with incremental_occlusion(False), folding(False):
        b = occ(m, x, target=1).attributions
    assert torch.allclose(a, b, rtol=0, atol=1e-10 * float(b.abs().max()))
    with pytest.raises(ValueError, match="channels"):
        m(torch.rand(1, 1, 32, 32, dtype=torch.float64))


def test_several_image_slices():
    # more images than rows per pass: slices of images, each with its own activations
    m = _resnet()
    x = torch.rand(5, 3, 32, 32, dtype=torch.float64)
    occ = Occlusion(window=8, stride=8, batch_size=3)
    a = occ(m, x, target=2).attributions
    with incremental_occlusion(False):
        b = occ(m, x, target=2).attributions
    assert torch.allclose(a, b, rtol=0, atol=1e-10 * float(b.abs().max()))


def test_float32_resnet_standard_width():
    m = resnet18(num_classes=10).eval()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    occ = Occlusion(window=8, stride=8)
    a = occ(m, x, target=3).attributions
    with incremental_occlusion(False):
        b = occ(m, x, target=3).attributions
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))


def test_used_only_where_it_applies():
    x = torch.rand(2, 3, 32, 32)
    r = resnet18(num_classes=10, width=8).eval()
    assert usable(folded(r, x), x) is not None
    assert usable(folded(r, x), torch.rand(2, 3, 28, 28)) is None          # small images: plain passes
    assert usable(r.train(), x) is None                                     # train mode
    r.eval()
    h = r.layer1.register_forward_hook(lambda *a: None)
    assert usable(r, x) is None                                             # a user's hook
    h.remove()
    with incremental_occlusion(False):
        assert usable(folded(r, x), x) is None
    vit = xadv.zoo.vit_tiny(image_size=32, patch_size=8, num_layers=1, num_classes=3)
    assert usable(folded(vit, x), x) is None    # the input goes to a size check first
    lin = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 3))
    assert usable(lin, x) is None


class _Counting(nn.Module):
    """A forward that reads its own changing state: a trace would freeze it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 2)
        self.calls = [0]

    def forward(self, x):
        self.calls[0] += 1
        return self.head(self.conv(x).mean((2, 3))) * self.calls[0]


def test_trace_that_differs_from_the_model_is_not_used():
    x = torch.rand(2, 3, 32, 32)
    assert usable(_Counting().eval(), x) is None
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2)).eval()
    plain(x)
    assert usable(plain, x) is not None   # the same model without the state is traced and used


def test_user_model_untouched():
    m = _resnet()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    Occlusion(window=8, stride=8)(m, x, target=0)
    assert all(torch.equal(state[k], v) for k, v in m.state_dict().items())
    assert all("forward" not in vars(mod) for mod in m.modules())


def test_switch_rejects_non_bool():
    with pytest.raises(TypeError, match="bool"):
        with incremental_occlusion("yes"):
            pass


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    m = _resnet().float()
    x = torch.rand(2, 3, 40, 40)
    occ = Occlusion(window=8, stride=8)
    a = occ(m, x, target=1).attributions
    b = occ(m.cuda(), x.cuda(), target=1).attributions.cpu()
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(a.abs().max()))


class _TwoOutputs(nn.Module):
    """Returns (logits, features), as some user models do: the first element is scored."""

    def __init__(self):
        super().__init__()
        self.net = _resnet()

    def forward(self, x):
        return self.net(x), self.net.conv1(x)


def test_tuple_output():
    m = _TwoOutputs().eval()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    assert usable(folded(m, x), x) is not None
    occ = Occlusion(window=8, stride=8)
    a = occ(m, x, target=1).attributions
    with incremental_occlusion(False):
        b = occ(m, x, target=1).attributions
    assert torch.allclose(a, b, rtol=0, atol=1e-10 * float(b.abs().max()))
