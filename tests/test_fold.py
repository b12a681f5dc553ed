"""BatchNorm folding for the passes of input-gradient and forward-only explainers (xadv._fold)."""
import gc

import pytest
import torch
from torch import nn

import xadv
from xadv import _fold
from xadv.explainers import (IntegratedGradients, Occlusion, Saliency, SmoothGrad, GradientSHAP, InputXGradient,
                             folding)
from xadv.zoo import architectures as A


def _randomise_bn(model):
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model


def bn_cnn(dtype=torch.float64):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                        nn.Conv2d(6, 4, 3, bias=False), nn.BatchNorm2d(4, affine=False), nn.ReLU(),
                        nn.Flatten(), nn.Linear(4 * 6 * 6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 5))
    return _randomise_bn(net).to(dtype).eval()


def _bn_count(m):
    return sum(isinstance(q, nn.modules.batchnorm._BatchNorm) for q in m.modules())


def _unfolded(ex, model, x, target=0):
    with folding(False):
        return ex(model, x, target).attributions


EXPLAINERS = [Saliency(), InputXGradient(), IntegratedGradients(steps=8), SmoothGrad(n_samples=3, seed=0),
              GradientSHAP(n_samples=4, seed=0), Occlusion(window=4)]


@pytest.mark.parametrize("ex", EXPLAINERS, ids=lambda e: e.name)
def test_folded_maps_equal_the_model_in_float64(ex):
    model, x = bn_cnn(), torch.rand(3, 3, 8, 8, dtype=torch.float64)
    f = _fold.folded(model, x)
    assert f is not model and _bn_count(f) == 0 and _bn_count(model) == 3
    a, b = ex(model, x, 0).attributions, _unfolded(ex, model, x)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_resnet18_folds_every_batchnorm_and_matches_in_float32():
    model = _randomise_bn(A.resnet18(num_classes=10)).eval()
    x = torch.rand(2, 3, 32, 32)
    f = _fold.folded(model, x)
    assert _bn_count(model) == 20 and _bn_count(f) == 0
    with torch.no_grad():
        assert torch.allclose(f(x), model(x), rtol=1e-5, atol=1e-5)
    a, b = Saliency()(model, x, 3).attributions, _unfolded(Saliency(), model, x, 3)
    assert float((a - b).abs().max() / b.abs().max()) < 1e-4


def test_the_users_model_is_not_changed():
    model, x = bn_cnn(), torch.rand(2, 3, 8, 8, dtype=torch.float64)
    params = {n: p for n, p in model.named_parameters()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    attrs = [dict(m.__dict__) for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    IntegratedGradients(steps=4)(model, x, 1)
    assert _fold.folded(model, x) is not model   # folding happened
    assert {n: p for n, p in model.named_parameters()} == params
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert [dict(m.__dict__).keys() for m in model.modules()] == [a.keys() for a in attrs]
    assert [p.requires_grad for p in model.parameters()] == flags
    assert not model.training and _bn_count(model) == 3


def test_weight_and_statistic_changes_are_followed():
    model, x = bn_cnn(), torch.rand(2, 3, 8, 8, dtype=torch.float64)
    ex = Saliency()
    ex(model, x, 0)
    f = _fold.folded(model, x)
    # an optimiser step on a folded conv, new running statistics, a load_state_dict
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model(x)[:, 0].sum().backward()
    opt.step()
    model.zero_grad()
    with torch.no_grad():
        model[1].running_var.mul_(3.0)
    torch.testing.assert_close(ex(model, x, 0).attributions, _unfolded(ex, model, x), rtol=1e-9, atol=1e-12)
    other = bn_cnn()
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(-1.5)
    model.load_state_dict(other.state_dict())
    torch.testing.assert_close(ex(model, x, 0).attributions, _unfolded(ex, model, x), rtol=1e-9, atol=1e-12)
    assert _fold.folded(model, x) is f   # the same copy, refolded
    # a replaced module (structure change) rebuilds the copy
    model[10] = nn.Linear(8, 5).double()
    assert _fold.folded(model, x) is not f
    torch.testing.assert_close(ex(model, x, 0).attributions, _unfolded(ex, model, x), rtol=1e-9, atol=1e-12)


class Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.body = bn_cnn()

    def forward(self, x):
        if x.sum() > 0:
            return self.body(x)
        return -self.body(x)


class OptionalArg(nn.Module):
    """A default argument that switches a branch, and a forward that stores on self."""

    def __init__(self):
        super().__init__()
        self.body = bn_cnn()
        self.last = None

    def forward(self, x, scale=None):
        out = self.body(x)
        self.last = out.detach()
        if scale is not None:
            out = out * scale
        return {"logits": out}


class WrongFold(nn.Module):
    """Linear + BatchNorm1d on a 3-d tensor: BatchNorm normalises dim 1, the linear layer
    the last dim, so folding would compute another function (the check pass sees it)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.bn = nn.BatchNorm1d(4)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.bn(self.lin(x.reshape(-1, 4, 4))).flatten(1))


def test_no_fold_where_it_would_not_be_the_same_function():
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    for model in (Branchy().eval(), bn_cnn().train()):
        assert _fold.folded(model, x) is model
    hooked = bn_cnn()
    h = hooked[1].register_forward_hook(lambda m, i, o: None)
    assert _fold.folded(hooked, x) is hooked
    h.remove()
    assert _fold.folded(hooked, x) is not hooked
    wrong = _randomise_bn(WrongFold()).double().eval()
    x16 = torch.rand(2, 16, dtype=torch.float64)
    assert _fold.folded(wrong, x16) is wrong
    torch.testing.assert_close(Saliency()(wrong, x16, 0).attributions, _unfolded(Saliency(), wrong, x16))
    plain = bn_cnn()
    with folding(False):
        assert _fold.folded(plain, x) is plain
    assert _fold.folded(plain, x) is not plain
    assert _fold.folded(plain, x.float()) is plain   # float64 weights, float32 input: left alone
    with pytest.raises(TypeError, match="bool"):
        with folding("no"):
            pass


def test_default_arguments_and_stored_attributes():
    model, x = OptionalArg().eval(), torch.rand(2, 3, 8, 8, dtype=torch.float64)
    f = _fold.folded(model, x)
    assert f is not model
    assert model.last is None or isinstance(model.last, torch.Tensor)   # no symbolic value left behind
    torch.testing.assert_close(Saliency()(model, x, 0).attributions, _unfolded(Saliency(), model, x),
                               rtol=1e-9, atol=1e-12)


def test_layer_modes_graphs_and_forward_args_use_the_model():
    model, x = bn_cnn(), torch.rand(2, 3, 8, 8, dtype=torch.float64)
    seen = []

    def spy(m, i, o):
        seen.append(1)

    # a hook placed by the explainer itself (layer=) sees the real model; create_graph keeps parameters
    e = IntegratedGradients(steps=2, layer=model[1])(model, x, 0)
    assert e.attributions.shape == (2, 6, 8, 8)
    xg = x.clone().requires_grad_()
    e = Saliency()(model, xg, 0, create_graph=True)
    (gw,) = torch.autograd.grad(e.attributions.sum(), model[0].weight)
    assert gw.abs().sum() > 0
    assert Saliency()._folds_batchnorm() is True
    assert Saliency(layer=model[1])._folds_batchnorm() is False
    assert SmoothGrad(base=Saliency(layer=model[1]), n_samples=2)._folds_batchnorm() is False
    assert xadv.explainers.get("gradcam")._folds_batchnorm() is False
    assert xadv.explainers.get("lrp")._folds_batchnorm() is False
    # a user's hook anywhere: the model itself runs, so the hook sees the passes
    h = model[4].register_forward_hook(spy)
    Saliency()(model, x, 0)
    h.remove()
    assert seen


def test_folding_pays_for_itself_in_passes():
    """The folded copy runs no BatchNorm: count the module calls of one explanation."""
    model, x = _randomise_bn(A.resnet18(num_classes=10)).eval(), torch.rand(2, 3, 32, 32)
    f = _fold.folded(model, x)
    calls = []
    hooks = [m.register_forward_hook(lambda *a: calls.append(1)) for m in f.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    Saliency()(model, x, 0)
    for h in hooks:
        h.remove()
    assert not calls and _bn_count(f) == 0


def test_cache_is_weak():
    """The cached copy does not keep the user's model alive."""
    import weakref
    model, x = bn_cnn(), torch.rand(2, 3, 8, 8, dtype=torch.float64)
    assert _fold.folded(model, x) is not model
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_folding_on_the_gpu_matches_the_cpu():
    model, x = bn_cnn(torch.float32), torch.rand(2, 3, 8, 8)
    cpu = Saliency()(model, x, 0).attributions
    gpu = Saliency()(model.cuda(), x.cuda(), 0).attributions
    assert _fold.folded(model, x.cuda()) is not model
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-5)


def test_attacks_run_the_folded_copy_with_the_same_result_and_queries():
    model, x = bn_cnn(), torch.rand(4, 3, 8, 8, dtype=torch.float64)
    for atk in (xadv.attacks.PGD(eps=0.05, steps=5, seed=0), xadv.attacks.APGD(eps=0.05, steps=5, seed=0),
                xadv.attacks.Square(eps=0.05, n_queries=20, seed=0)):
        a = atk(model, x)
        with folding(False):
            b = atk(model, x)
        torch.testing.assert_close(a.x_adv, b.x_adv, rtol=1e-9, atol=1e-12)
        assert torch.equal(a.queries, b.queries) and torch.equal(a.success, b.success)
    f = _fold.folded(model, x)
    assert f is not model and not any(_model_hooks(m) for m in f.modules())   # the query counter left


def _model_hooks(m):
    from xadv._model import _hook_dicts
    return _hook_dicts(m)
