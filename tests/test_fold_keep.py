"""The traced copy with one module kept as itself (xadv._fold.folded(keep=...)): Grad-CAM's
forward runs BatchNorm-folded and fast-pooled while its hook sees the layer's output."""
import pytest
import torch
from torch import nn

import xadv
from xadv import _fold
from xadv._fold import FastMaxPool2d
from xadv.explainers import (AblationCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM, XGradCAM,
                             fast_pooling, folding)
from xadv.zoo import architectures as A, digits_cnn

from test_fold import _bn_count, _randomise_bn, bn_cnn


def resnet(dtype=torch.float64):
    torch.manual_seed(0)
    return _randomise_bn(A.resnet18(num_classes=10, width=8)).to(dtype).eval()


def _calls(model, module, x):
    seen = []
    h = module.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    try:
        with torch.no_grad():
            model(x)
    finally:
        h.remove()
    return seen


def test_the_kept_module_runs_as_itself_and_the_rest_is_folded():
    model, x = resnet(), torch.rand(2, 3, 32, 32, dtype=torch.float64)
    # a container: one node, its insides untouched; everything before and after folded
    f = _fold.folded(model, x, keep=model.layer4)
    assert f is not model and dict(f.named_modules())["layer4"] is model.layer4
    assert _calls(f, model.layer4, x) == _calls(model, model.layer4, x) == [torch.Size([2, 64, 1, 1])]
    assert _bn_count(f) == _bn_count(model.layer4) == 5
    assert type(dict(f.named_modules())["maxpool"]) is FastMaxPool2d
    # a convolution followed by BatchNorm: that pair stays, every other one is folded
    conv = model.layer4[1].conv2
    f = _fold.folded(model, x, keep=conv)
    assert _calls(f, conv, x) == _calls(model, conv, x)
    assert _bn_count(f) == 1 and model.layer4[1].bn2 in list(f.modules())
    # a BatchNorm, and a pooling layer
    f = _fold.folded(model, x, keep=model.bn1)
    assert _calls(f, model.bn1, x) and _bn_count(f) == 1
    f = _fold.folded(model, x, keep=model.maxpool)
    assert _calls(f, model.maxpool, x) and not any(type(m) is FastMaxPool2d for m in f.modules())
    with torch.no_grad():
        torch.testing.assert_close(f(x), model(x), rtol=1e-9, atol=1e-12)


def test_keep_outside_the_model_or_the_model_itself_gives_the_model():
    model, x = resnet(), torch.rand(2, 3, 32, 32, dtype=torch.float64)
    assert _fold.folded(model, x, keep=nn.Conv2d(3, 3, 1)) is model
    assert _fold.folded(model, x, keep=model) is model


def test_copies_with_and_without_a_kept_layer_are_cached_side_by_side(monkeypatch):
    model, x = resnet(), torch.rand(2, 3, 32, 32, dtype=torch.float64)
    builds = []
    real = _fold._build
    monkeypatch.setattr(_fold, "_build", lambda *a, **k: builds.append(1) or real(*a, **k))
    for _ in range(3):
        a = _fold.folded(model, x)
        b = _fold.folded(model, x, keep=model.layer4)
    assert len(builds) == 2 and a is not b
    # at most _PLANS_PER_MODEL copies per model; the least recently used goes first
    for i in range(_fold._PLANS_PER_MODEL):
        _fold.folded(model, torch.rand(2, 3, 32 + 8 * (i + 1), 32, dtype=torch.float64))
    assert len(_fold._CACHE[model]) == _fold._PLANS_PER_MODEL
    _fold.folded(model, x, keep=model.layer4)
    assert len(builds) == 2 + _fold._PLANS_PER_MODEL + 1


CAMS = [GradCAM, GradCAMPlusPlus, HiResCAM, XGradCAM, LayerCAM, ScoreCAM, AblationCAM]


@pytest.mark.parametrize("cls", CAMS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("where", ["layer4", "layer4.1.conv2", "layer3.0.bn1", "default"])
def test_cam_maps_equal_the_model_itself_in_float64(cls, where):
    model, x = resnet(), torch.rand(3, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ex = cls(layer=None if where == "default" else where, relu=False) if cls is GradCAM else \
        cls(layer=None if where == "default" else where)
    a = ex(model, x, [1, 2, 3])
    with folding(False), fast_pooling(False):
        b = ex(model, x, [1, 2, 3])
    assert a.params["layer"] == b.params["layer"]
    assert float(b.attributions.abs().max()) > 0
    torch.testing.assert_close(a.attributions, b.attributions, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(a.raw, b.raw, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(a.output, b.output, rtol=1e-9, atol=1e-12)


def test_gradcam_runs_the_copy_and_leaves_the_model_alone(monkeypatch):
    model, x = resnet(torch.float32), torch.rand(2, 3, 32, 32)
    bn_calls = []
    hooks = [m.register_forward_hook(lambda *a: bn_calls.append(1)) for m in model.modules()
             if isinstance(m, nn.BatchNorm2d) and m not in list(model.layer4.modules())]
    # the user's own hooks: the model itself runs (and sees every pass)
    GradCAM(layer="layer4")(model, x, 0)
    assert bn_calls
    for h in hooks:
        h.remove()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    used = []
    real = _fold.folded
    monkeypatch.setattr(xadv.explainers.gradcam, "folded", lambda *a, **k: used.append(real(*a, **k)) or used[-1])
    GradCAM(layer="layer4")(model, x, 0)
    assert used and used[-1] is not model
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert all(type(m) is not FastMaxPool2d for m in model.modules())
    assert not any(h for m in model.modules() for h in (m._forward_hooks, m._forward_pre_hooks))


def test_create_graph_and_adapters_use_the_model():
    model, x = bn_cnn(), torch.rand(2, 3, 8, 8, dtype=torch.float64)
    xg = x.clone().requires_grad_()
    e = GradCAM(layer=model[3])(model, xg, 0, create_graph=True)
    (gw,) = torch.autograd.grad(e.attributions.sum(), model[0].weight)   # parameters stay in the graph
    assert gw.abs().sum() > 0
    a = GradCAM(layer=model[3])(model, x, 0, output=lambda o: o)
    with folding(False):
        b = GradCAM(layer=model[3])(model, x, 0)
    torch.testing.assert_close(a.attributions, b.attributions, rtol=1e-9, atol=1e-12)


def test_digits_gradcam_is_the_same_with_fast_pooling():
    model = digits_cnn(pretrained=False).eval()
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    for layer in (model.features.conv3, model.features.pool2, None):
        a = GradCAM(layer=layer)(model, x, 3).attributions
        with fast_pooling(False):
            b = GradCAM(layer=layer)(model, x, 3).attributions
        assert torch.equal(a, b)
