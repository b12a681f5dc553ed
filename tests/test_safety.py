"""Explainers never change the user's model or data, remove their hooks even when
they raise, and reject bad input with messages that say what to do."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import xadv
from xadv.explainers import GradCAM, IntegratedGradients, Saliency, SmoothGrad

SMALL = {
    "smoothgrad": {"n_samples": 3, "seed": 0},
    "integrated_gradients": {"steps": 4},
    "lime": {"n_samples": 16, "seed": 0},
}


def make_explainer(name):
    if name == "tabular_lime":
        return xadv.explainers.get(name, training_data=torch.rand(20, 1 * 6 * 6).double().numpy(),
                                   n_samples=16, seed=0)
    return xadv.explainers.get(name, **SMALL.get(name, {}))


class Counter:
    """A user hook that only counts calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, *args):
        self.calls += 1


class UserNet(nn.Module):
    """Conv + BatchNorm + Dropout, some parameters frozen, user hooks attached."""

    def __init__(self, flat: bool = False):
        super().__init__()
        self.flat = flat
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                      nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        if self.flat:
            x = x.view(-1, 1, 6, 6)
        return self.fc(self.drop(self.features(x).flatten(1)))


def snapshot(model):
    return {
        "modes": [m.training for m in model.modules()],
        "flags": [p.requires_grad for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
                   len(getattr(m, "_backward_pre_hooks", {}))) for m in model.modules()],
        "hook_ids": [tuple(m._forward_hooks) + tuple(m._forward_pre_hooks) for m in model.modules()],
    }


def assert_same(before, after):
    assert before["modes"] == after["modes"], "train/eval mode changed"
    assert before["flags"] == after["flags"], "requires_grad changed"
    assert before["hooks"] == after["hooks"], "hooks left behind or removed"
    assert before["hook_ids"] == after["hook_ids"]
    for a, b in zip(before["grads"], after["grads"]):
        assert (a is None and b is None) or torch.equal(a, b), ".grad changed"
    assert before["state"].keys() == after["state"].keys()
    for k in before["state"]:
        assert torch.equal(before["state"][k], after["state"][k]), f"{k} changed"


def user_model(train: bool, flat: bool = False):
    torch.manual_seed(0)
    net = UserNet(flat).double()
    net.train(train)
    net.features[0].bias.requires_grad_(False)  # a frozen parameter
    net.fc.weight.grad = torch.ones_like(net.fc.weight)  # a user's accumulated gradient
    counter = Counter()
    net.features[3].register_forward_hook(counter)
    net.fc.register_forward_pre_hook(counter)
    if not train:
        net.features[1].train()  # mixed modes: one BatchNorm in train mode inside an eval model
    return net, counter


# attention rollout needs a transformer: its safety checks are in test_adapter_layers
ALL = sorted(n for n in xadv.explainers.names() if n != "attention_rollout")


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("name", ALL)
def test_model_and_data_unchanged_after_a_call(name, train):
    flat = name == "tabular_lime"
    net, counter = user_model(train, flat)
    x = torch.rand(4, 36 if flat else 1, *(() if flat else (6, 6)), dtype=torch.float64)
    x_copy = x.clone()
    before = snapshot(net)
    e = make_explainer(name)(net, x, 1)
    assert e.attributions.shape == x.shape
    assert counter.calls > 0  # the user's hooks ran ...
    assert_same(before, snapshot(net))  # ... and everything is as it was, BatchNorm statistics included
    assert torch.equal(x, x_copy) and not x.requires_grad and x.grad is None


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("name", ALL)
def test_model_unchanged_after_a_call_that_raised(name, train):
    flat = name == "tabular_lime"
    net, _ = user_model(train, flat)
    x = torch.rand(4, 36 if flat else 1, *(() if flat else (6, 6)), dtype=torch.float64)
    before = snapshot(net)
    with pytest.raises(ValueError, match="out of range"):  # raised after the first forward
        make_explainer(name)(net, x, 7)
    assert_same(before, snapshot(net))


@pytest.mark.parametrize("name", ["saliency", "input_x_gradient", "smoothgrad", "integrated_gradients",
                                  "gradcam", "gradcam_pp"])
def test_model_unchanged_when_the_model_itself_raises_midway(name):
    net, _ = user_model(True)

    class Boom(RuntimeError):
        pass

    def explode(module, inputs, output):  # a user hook that fails after Grad-CAM's hook is attached
        if output.shape[0] > 4:
            raise Boom("user hook failed")

    net.features[4].register_forward_hook(explode)
    before = snapshot(net)
    x = torch.rand(4, 1, 6, 6, dtype=torch.float64)
    ex = make_explainer(name)
    if name in ("smoothgrad", "integrated_gradients"):
        with pytest.raises(Boom):  # the batched passes have more than 4 rows
            ex(net, x, 1)
    else:
        with pytest.raises(Boom):
            ex(net, torch.rand(5, 1, 6, 6, dtype=torch.float64), 1)
    assert_same(before, snapshot(net))


def test_create_graph_does_not_touch_parameter_grads():
    net, _ = user_model(False)
    net.eval()
    x = torch.rand(3, 1, 6, 6, dtype=torch.float64, requires_grad=True)
    before = snapshot(net)
    e = IntegratedGradients(steps=3)(net, x, 0, create_graph=True)
    assert e.inputs is x  # connected to the user's tensor
    assert_same(before, snapshot(net))
    assert x.grad is None


def test_gradcam_hook_removed_and_leak_free():
    net, _ = user_model(False)
    n_hooks = len(net.features[3]._forward_hooks)
    for _ in range(3):
        GradCAM()(net, torch.rand(2, 1, 6, 6, dtype=torch.float64))
    assert len(net.features[3]._forward_hooks) == n_hooks


# --------------------------------------------------------------------------- bad input
@pytest.fixture
def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))


@pytest.fixture
def x():
    return torch.rand(2, 1, 6, 6)


def test_wrong_rank(net, x):
    with pytest.raises(ValueError, match=r"at least 4 dimensions.*unsqueeze\(0\)"):
        GradCAM()(net, x[0])
    with pytest.raises(ValueError, match=r"batch-first with at least 2 dimensions"):
        Saliency()(net, torch.rand(36))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.bool])
def test_integer_dtype(net, x, dtype):
    with pytest.raises(TypeError, match=r"floating point.*\.float\(\)"):
        Saliency()(net, (x * 255).to(dtype))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_inf(net, x, bad):
    y = x.clone()
    y[1, 0, 2, 3] = bad
    for ex in (Saliency(), IntegratedGradients(steps=2), SmoothGrad(n_samples=2), GradCAM()):
        with pytest.raises(ValueError, match="NaN or Inf"):
            ex(net, y)


def test_not_a_tensor_and_empty(net, x):
    with pytest.raises(TypeError, match="torch.Tensor"):
        Saliency()(net, x.numpy())
    with pytest.raises(ValueError, match="empty batch"):
        Saliency()(net, x[:0])
    with pytest.raises(TypeError, match="model must be"):
        Saliency()("not a model", x)


@pytest.mark.parametrize("target", [3, -1, [0, 5], torch.tensor([0, 3])])
def test_target_out_of_range(net, x, target):
    for ex in (Saliency(), IntegratedGradients(steps=2), SmoothGrad(n_samples=2), GradCAM()):
        with pytest.raises(ValueError, match=r"target out of range: the model has 3 classes \(0..2\)"):
            ex(net, x, target)


# a one-element target is used for the whole batch (issue 11), so it is no mismatch
@pytest.mark.parametrize("target", [[0, 1, 2], torch.zeros(3, dtype=torch.long)])
def test_target_batch_mismatch(net, x, target):
    for ex in (Saliency(), IntegratedGradients(steps=2), SmoothGrad(n_samples=2), GradCAM()):
        with pytest.raises(ValueError, match=r"target has \d entries but the batch has 2 samples"):
            ex(net, x, target)


@pytest.mark.parametrize("target", [1.0, torch.tensor([0.0, 1.0]), True, "cat", torch.tensor([True, False])])
def test_target_wrong_type(net, x, target):
    with pytest.raises(TypeError, match="target must be"):
        Saliency()(net, x, target)


def test_device_mismatch(net, x):
    with pytest.raises(ValueError, match=r"x is on meta but the model is on cpu.*\.to\('cpu'\)"):
        Saliency()(net, x.to("meta"))
    meta_net = nn.Sequential(nn.Flatten(), nn.Linear(36, 3)).to("meta")
    for ex in (Saliency(), IntegratedGradients(steps=2), GradCAM()):
        with pytest.raises(ValueError, match=r"x is on cpu but the model is on meta"):
            ex(meta_net, x)


def test_unknown_layer_lists_candidates(net, x):
    with pytest.raises(ValueError, match=r"unknown layer 'conv9'.*layers are: 0, 1, 2, 3"):
        GradCAM(layer="conv9")(net, x)
    with pytest.raises(ValueError, match="not a submodule"):
        GradCAM(layer=nn.Conv2d(1, 1, 1))(net, x)
    # a (N, C) layer has no spatial map: the layer-level map, as captum's LayerGradCam (N, 1)
    assert GradCAM(layer="3")(net, x).extras["attribute_to"] == "layer_output"
    with pytest.raises(ValueError, match="no Conv2d layer"):
        GradCAM()(nn.Sequential(nn.Flatten(), nn.Linear(36, 3)), x)
    with pytest.raises(TypeError, match=r"needs a torch.nn.Module"):
        GradCAM()(lambda z: net(z), x)


def test_unknown_method_lists_names(net, x):
    with pytest.raises(ValueError, match=r"unknown explainer 'pattern_attribution'; known: .*gradcam.*saliency"):
        xadv.explain(net, x, method="pattern_attribution")
    with pytest.raises(ValueError, match=r"aliases: .*ig=integrated_gradients"):
        xadv.explainers.get("nope")
    with pytest.raises(TypeError, match="registry name or an Explainer"):
        xadv.explainers.get(3)


def test_bad_parameters():
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        IntegratedGradients(steps=0)
    with pytest.raises(ValueError, match="rule must be one of"):
        IntegratedGradients(rule="simpson")
    with pytest.raises(ValueError, match="trapezoid rule needs steps >= 2"):
        IntegratedGradients(steps=1, rule="riemann_trapezoid")
    with pytest.raises(ValueError, match="baseline must be one of"):
        IntegratedGradients(baseline="black")
    with pytest.raises(ValueError, match="n_samples must be an integer >= 1"):
        SmoothGrad(n_samples=0)
    with pytest.raises(ValueError, match="noise must be >= 0"):
        SmoothGrad(noise=-0.1)
    with pytest.raises(ValueError, match="variant must be one of"):
        SmoothGrad(variant="mean")
    with pytest.raises(TypeError, match="base must be an xadv Explainer"):
        SmoothGrad(base=lambda m, x: x)
    with pytest.raises(ValueError, match="interpolation must be one of"):
        GradCAM(interpolation="cubic")
    with pytest.raises(ValueError, match="score must be one of"):
        Saliency(score="probability")
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        IntegratedGradients(batch_size=0)


def test_bad_baseline_tensor(net, x):
    with pytest.raises(ValueError, match=r"baseline of shape \(3, 6, 6\) does not broadcast"):
        IntegratedGradients(steps=2, baseline=torch.zeros(3, 6, 6))(net, x)
    with pytest.raises(TypeError, match="baseline tensor must be floating point"):
        IntegratedGradients(steps=2, baseline=torch.zeros(1, 1, 6, 6, dtype=torch.long))(net, x)


def test_model_output_checked(x):
    with pytest.raises(TypeError, match="must return a tensor"):
        Saliency()(lambda z: ("scores",), x)
    with pytest.raises(ValueError, match=r"must return shape \(N, K\)"):
        Saliency()(lambda z: z.sum(), x)


def test_create_graph_must_be_bool(net, x):
    with pytest.raises(TypeError, match="create_graph must be a bool"):
        Saliency()(net, x, create_graph="yes")
