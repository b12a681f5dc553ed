"""The affine entry layer factored out of gradient and occlusion passes (xadv.explainers._entry)."""
import pytest
import torch
from torch import nn

import xadv
from xadv.explainers import IntegratedGradients, entry_factoring
from xadv.explainers import _entry
from xadv.zoo import architectures as A


@pytest.fixture
def uses(monkeypatch):
    """How many passes ran with the entry's output substituted."""
    count = [0]
    original = _entry.Entry.returning

    def counting(self, x, h):
        count[0] += 1
        return original(self, x, h)
    monkeypatch.setattr(_entry.Entry, "returning", counting)
    return count


def _plain(ex, model, x, target):
    with entry_factoring(False):
        return ex(model, x, target)


def _close(a, b, tol):
    scale = b.abs().max()
    assert (a - b).abs().max() <= tol * scale, float((a - b).abs().max() / scale)


def test_ig_on_a_resnet_equals_the_unfactored_path(uses):
    # the stem conv (BatchNorm folded into it) is followed by ReLU(inplace=True)
    model = A.resnet18(num_classes=10).eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ig = IntegratedGradients(steps=8)
    e = ig(model, x, target=torch.tensor([1, 4]))
    assert uses[0] > 0
    uses[0] = 0
    p = _plain(ig, model, x, torch.tensor([1, 4]))
    assert uses[0] == 0
    _close(e.attributions, p.attributions, 1e-4)
    torch.testing.assert_close(e.delta, p.delta, rtol=1e-3, atol=1e-4)
    assert "forward" not in model.conv1.__dict__


def test_ig_on_a_vit_equals_captum():
    captum = pytest.importorskip("captum.attr")
    model = A.vit_tiny(num_classes=10, image_size=32, patch_size=8, num_layers=2).eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([2, 7])
    e = IntegratedGradients(steps=16)(model, x, y)
    ref = captum.IntegratedGradients(model).attribute(x, target=y, n_steps=16)
    _close(e.attributions, ref, 1e-4)


class TwoRoutes(nn.Module):
    """The input goes into the entry conv and, a second time, into a linear read-out."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.skip = nn.Linear(3 * 6 * 6, 5)
        self.head = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        return self.head(torch.tanh(self.conv(x)).flatten(1)) + self.skip(x.flatten(1)) * x.mean()


class Shared(nn.Module):
    """One conv applied twice: to the input and to its own output."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.head = nn.Linear(3 * 6 * 6, 5)

    def forward(self, x):
        return self.head(torch.relu(self.conv(torch.relu(self.conv(x)))).flatten(1))


class MyConv(nn.Conv2d):
    def forward(self, x):
        return super().forward(x) * 2


_MODELS = [
    TwoRoutes, Shared,
    lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(64, 5)),
    lambda: nn.Sequential(nn.Linear(6, 7), nn.Softplus(), nn.Flatten(), nn.Linear(3 * 6 * 7, 5)),
]
_IDS = ["second-route", "shared-module", "inplace-relu", "linear-entry"]


@pytest.mark.parametrize("make", _MODELS, ids=_IDS)
def test_ig_with_the_entry_factored_is_exact_in_float64(make, uses):
    torch.manual_seed(0)
    model = make().double().eval()
    x = torch.rand(3, 3, 6, 6, dtype=torch.float64)   # a Linear entry acts on the last dimension
    ig = IntegratedGradients(steps=12, baseline=0.3)
    e = ig(model, x, target=2)
    assert uses[0] > 0
    p = _plain(ig, model, x, 2)
    torch.testing.assert_close(e.attributions, p.attributions, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(e.delta, p.delta, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("make", _MODELS, ids=_IDS)
def test_smoothgrad_with_the_entry_factored_is_exact_in_float64(make, uses):
    torch.manual_seed(0)
    model = make().double().eval()
    x = torch.rand(3, 3, 6, 6, dtype=torch.float64)
    sg = xadv.explainers.SmoothGrad(n_samples=10, noise=0.2, seed=3, batch_size=7)  # passes split images
    e = sg(model, x, target=torch.tensor([0, 2, 4]))
    assert uses[0] > 0
    uses[0] = 0
    p = _plain(sg, model, x, torch.tensor([0, 2, 4]))
    assert uses[0] == 0
    torch.testing.assert_close(e.attributions, p.attributions, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(e.output, p.output)


@pytest.mark.parametrize("which", ["resnet", "vit"])
def test_smoothgrad_on_a_resnet_and_a_vit_equals_the_unfactored_path(which, uses):
    if which == "resnet":
        model = A.resnet18(num_classes=10).double().eval()
    else:
        model = A.vit_tiny(num_classes=10, image_size=32, patch_size=8, num_layers=2).double().eval()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sg = xadv.explainers.SmoothGrad(n_samples=6, seed=1)
    e = sg(model, x, target=torch.tensor([1, 4]))
    assert uses[0] > 0
    p = _plain(sg, model, x, torch.tensor([1, 4]))
    _close(e.attributions, p.attributions, 1e-10)
    assert "forward" not in model.__dict__


@pytest.mark.parametrize("kw", [
    dict(variant="smoothgrad_sq"), dict(variant="vargrad"),
    dict(base=xadv.explainers.Saliency(abs=True)),
    dict(base=xadv.explainers.InputXGradient()),
], ids=["sq", "vargrad", "abs", "input-x-gradient"])
def test_smoothgrad_not_a_mean_of_gradients_is_not_factored(kw, uses):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 5)).double().eval()
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64)
    sg = xadv.explainers.SmoothGrad(n_samples=5, seed=0, **kw)
    e = sg(model, x, target=1)
    assert uses[0] == 0
    torch.testing.assert_close(e.attributions, _plain(sg, model, x, 1).attributions)


def test_a_hooked_or_subclassed_entry_is_left_alone(uses):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 5)).double().eval()
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64)
    seen = []
    h = model[0].register_forward_hook(lambda m, i, o: seen.append(o.shape[0]))
    e = IntegratedGradients(steps=4, batch_size=100)(model, x, target=1)
    h.remove()
    assert uses[0] == 0 and seen == [3, 8]   # clean pass (x + one baseline row), then the path
    sub = nn.Sequential(MyConv(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 5)).double().eval()
    sub.load_state_dict(model.state_dict())
    s = IntegratedGradients(steps=4)(sub, x, target=1)
    assert uses[0] == 0
    torch.testing.assert_close(s.attributions, 2 * e.attributions, rtol=1e-9, atol=1e-12)


def test_the_entry_forward_is_restored_when_the_model_raises():
    class Fails(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            y = self.conv(x)
            if self.calls == 3:
                raise RuntimeError("boom")
            return y.flatten(1)[:, :5]

    model = Fails().eval()
    x = torch.rand(2, 3, 6, 6)
    with pytest.raises(RuntimeError, match="boom"):
        IntegratedGradients(steps=8, batch_size=2)(model, x, target=0)
    assert "forward" not in model.conv.__dict__
    assert model.calls == 3


def test_no_extra_model_call_and_entry_found_once():
    calls = []
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).eval()
    model.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    x = torch.rand(4, 1, 6, 6)
    # a hook on the model, not on the entry module: the factoring stays
    IntegratedGradients(steps=5, batch_size=100)(model, x, target=0)
    assert calls == [5, 20]
    assert len(_entry._CACHE[model]) == 1


def test_disabled_inside_entry_factoring_false(uses):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).eval()
    x = torch.rand(2, 1, 6, 6)
    with xadv.explainers.entry_factoring(False):
        IntegratedGradients(steps=4)(model, x, target=0)
    assert uses[0] == 0
    IntegratedGradients(steps=4)(model, x, target=0)
    assert uses[0] > 0


# ----------------------------------------------------------------------------- Occlusion
def _conv_net(conv, nd=2, size=9):
    layers = [conv, nn.ReLU(inplace=True), nn.Flatten()]
    with torch.no_grad():
        n_out = conv(torch.zeros((1, conv.in_channels) + (size,) * nd)).numel()
    return nn.Sequential(*layers, nn.Linear(n_out, 5)).double().eval()


@pytest.mark.parametrize("conv,window,stride", [
    (nn.Conv2d(3, 4, 5, stride=2, padding=2), 3, 2),
    (nn.Conv2d(3, 4, 3, stride=3), 4, 4),                        # windows that no output reads in part
    (nn.Conv2d(3, 4, 3, padding=2, dilation=2), (3, 2, 4), (3, 2, 3)),
    (nn.Conv2d(3, 6, (3, 2), padding=(1, 0), groups=3), (1, 3, 3), (1, 3, 3)),   # one channel per window
    (nn.Conv2d(3, 4, 2, stride=2), 4, 3),                        # border windows cut by the image
], ids=["stride2-pad2", "stride3", "dilation2", "groups-channel-windows", "cut-windows"])
def test_occlusion_with_the_entry_box_is_exact_in_float64(conv, window, stride, monkeypatch, uses):
    from xadv.explainers import occlusion
    monkeypatch.setattr(occlusion, "_ENTRY_MIN_MACS", 0)
    torch.manual_seed(0)
    model = _conv_net(conv)
    x = torch.rand(3, 3, 9, 9, dtype=torch.float64)
    oc = xadv.explainers.Occlusion(window=window, stride=stride, baseline=0.25)
    e = oc(model, x, target=1)
    assert uses[0] > 0
    p = _plain(oc, model, x, 1)
    torch.testing.assert_close(e.attributions, p.attributions, rtol=1e-9, atol=1e-12)


def test_occlusion_with_a_conv1d_entry(monkeypatch, uses):
    from xadv.explainers import occlusion
    monkeypatch.setattr(occlusion, "_ENTRY_MIN_MACS", 0)
    torch.manual_seed(0)
    model = _conv_net(nn.Conv1d(2, 3, 4, stride=2, padding=1), nd=1, size=12)
    x = torch.rand(2, 2, 12, dtype=torch.float64)
    oc = xadv.explainers.Occlusion(window=(2, 3), stride=(2, 2))
    e = oc(model, x, target=0)
    assert uses[0] > 0
    torch.testing.assert_close(e.attributions, _plain(oc, model, x, 0).attributions, rtol=1e-9, atol=1e-12)


def test_occlusion_on_a_resnet_and_a_vit_matches_captum(uses):
    captum = pytest.importorskip("captum.attr")
    for model, x in [(A.resnet18(num_classes=10).eval(), torch.rand(2, 3, 32, 32)),
                     (A.vit_tiny(num_classes=10, image_size=32, patch_size=8, num_layers=2).eval(),
                      torch.rand(2, 3, 32, 32))]:
        uses[0] = 0
        y = torch.tensor([3, 5])
        with xadv.explainers.incremental_occlusion(False):   # the entry boxes, not the whole-model boxes
            e = xadv.explainers.Occlusion(window=8, stride=4)(model, x, y)
        assert uses[0] > 0
        ref = captum.Occlusion(model).attribute(x, sliding_window_shapes=(3, 8, 8), strides=(3, 4, 4), target=y)
        _close(e.attributions, ref, 1e-4)


def test_occlusion_skips_a_cheap_entry(uses):
    # one input channel, 3x3: 9 multiply-adds per output, cheaper than copying it per row
    model = xadv.zoo.digits_cnn(pretrained=False).eval()
    xadv.explainers.Occlusion(window=4, stride=4)(model, torch.rand(2, 1, 28, 28), target=0)
    assert uses[0] == 0


# ----------------------------------------------------------------------------- fast input gradient
@pytest.mark.parametrize("conv,size", [
    (nn.Conv2d(1, 8, 3, padding=1), 28),
    (nn.Conv2d(3, 16, 7, stride=2, padding=3), 33),
    (nn.Conv2d(3, 8, 4, stride=4), 16),                  # a patch embedding: a reshape
    (nn.Conv2d(3, 8, 4, stride=4), 18),                  # the last 2 rows/columns are never read
    (nn.Conv2d(2, 5, 3, stride=2, padding=2, dilation=2), 11),
    (nn.Conv2d(3, 4, (3, 5), stride=(1, 2), padding=(1, 0)), 12),
], ids=["digits", "resnet-stem", "patchify", "patchify-remainder", "dilated", "rectangular"])
def test_the_matrix_product_input_gradient_equals_the_convolutions(conv, size):
    conv = conv.double()
    x = torch.rand(3, conv.in_channels, size, size, dtype=torch.float64, requires_grad=True)
    out = conv(x)
    g = torch.randn_like(out)
    (ref,) = torch.autograd.grad(out, x, g)
    got = _entry._input_gradient_conv2d(conv, g, x.shape)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


@pytest.fixture
def fast_calls(monkeypatch):
    count = [0]
    original = _entry._input_gradient_conv2d

    def counting(m, g, shape):
        count[0] += 1
        return original(m, g, shape)
    monkeypatch.setattr(_entry, "_input_gradient_conv2d", counting)
    return count


@pytest.mark.parametrize("name", ["saliency", "smoothgrad", "gradient_shap"])
def test_gradient_maps_with_the_fast_entry_gradient(name, fast_calls):
    torch.manual_seed(0)
    model = xadv.zoo.digits_cnn(pretrained=False).double().eval()
    x = torch.rand(4, 1, 28, 28, dtype=torch.float64)
    # (the default SmoothGrad factors the entry out altogether; its squared variant does not)
    kw = {"smoothgrad": dict(n_samples=4, seed=0, variant="smoothgrad_sq"),
          "gradient_shap": dict(background=torch.rand(3, 1, 28, 28, dtype=torch.float64), n_samples=4, seed=0)}
    ex = xadv.explainers.get(name, **kw.get(name, {}))
    first = ex(model, x, 3)            # the entry found during this call's first model call
    assert fast_calls[0] > 0
    second = ex(model, x, 3)
    assert torch.equal(first.attributions, second.attributions)
    n = fast_calls[0]
    p = _plain(ex, model, x, 3)
    assert fast_calls[0] == n
    torch.testing.assert_close(first.attributions, p.attributions, rtol=1e-10, atol=1e-13)
    # create_graph: the caller differentiates the map, the model's own backward is kept
    ex(model, x, 3, create_graph=True)
    assert fast_calls[0] == n
    assert "forward" not in model.features.conv1.__dict__


def test_pgd_with_the_fast_entry_gradient_is_the_same_attack(fast_calls):
    model = xadv.zoo.digits_cnn(pretrained=False).eval()
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    pgd = xadv.attacks.PGD(eps=0.1, steps=5, seed=0)
    a = pgd(model, x, torch.arange(8) % 10)
    assert fast_calls[0] > 0
    with entry_factoring(False):
        b = pgd(model, x, torch.arange(8) % 10)
    torch.testing.assert_close(a.x_adv, b.x_adv, rtol=0, atol=1e-6)
    assert torch.equal(torch.as_tensor(a.queries), torch.as_tensor(b.queries))
    assert "forward" not in model.features.conv1.__dict__
