"""xadv.nn: Normalize, smooth_relu (a copy) and smoothed (in place, restored)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from xadv.explainers import Saliency
from xadv.nn import Normalize, smooth_relu, smoothed


def test_normalize_values_and_dtype():
    n = Normalize([0.5, 0.25], [0.5, 2.0])
    x = torch.rand(3, 2, 4, 4, dtype=torch.float64)
    y = n(x)
    assert y.dtype == torch.float64
    assert torch.allclose(y[:, 0], (x[:, 0] - 0.5) / 0.5)
    assert torch.allclose(y[:, 1], (x[:, 1] - 0.25) / 2.0)
    flat = Normalize(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 1.0, 1.0]))
    assert torch.equal(flat(torch.zeros(2, 3)), torch.tensor([[-1.0, -2.0, -3.0]] * 2))
    assert "mean=[0.5, 0.25]" in repr(n)
    assert set(dict(n.named_buffers())) == {"mean", "std"} and not list(n.parameters())


def test_normalize_errors():
    with pytest.raises(ValueError, match="same length"):
        Normalize([0.5, 0.5], [1.0])
    with pytest.raises(ValueError, match="std must be positive"):
        Normalize([0.5], [0.0])
    with pytest.raises(ValueError, match="expects 3 channels"):
        Normalize([0.0] * 3, [1.0] * 3)(torch.rand(2, 1, 4, 4))


def test_normalize_gradient_is_scaled():
    net = nn.Sequential(Normalize([0.0], [0.5]), nn.Flatten(), nn.Linear(4, 2))
    e = Saliency()(net, torch.rand(1, 1, 2, 2), 0)
    assert torch.allclose(e.attributions.flatten(), 2 * net[2].weight[0].detach())


def relu_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(),
                         nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.ReLU()),
                         nn.Flatten(), nn.Linear(3 * 16, 4)).double()


def test_smooth_relu_copy():
    net = relu_net().train()
    twin = smooth_relu(net, beta=4.0)
    assert isinstance(twin[1], nn.Softplus) and twin[1].beta == 4.0
    assert isinstance(twin[2][1], nn.Softplus)  # nested modules too
    assert isinstance(net[1], nn.ReLU) and isinstance(net[2][1], nn.ReLU)  # original untouched
    assert twin.training and twin[0].weight is not net[0].weight
    assert torch.equal(twin[0].weight, net[0].weight)
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    # converges to the ReLU network as beta grows, and differs for small beta
    far = (smooth_relu(net, 1.0)(x) - net(x)).abs().max()
    near = (smooth_relu(net, 1e4)(x) - net(x)).abs().max()
    assert near < 1e-3 and far > 10 * near
    # a ReLU net has no second derivative through its gradient; the smooth copy does
    xr = x.clone().requires_grad_()
    g = Saliency()(net.eval(), xr, 0, create_graph=True).attributions
    (h,) = torch.autograd.grad(g.pow(2).sum(), xr, allow_unused=True)
    assert h is None or h.abs().max() == 0
    g2 = Saliency()(twin.eval(), xr, 0, create_graph=True).attributions
    assert torch.autograd.grad(g2.pow(2).sum(), xr)[0].abs().max() > 0


def test_smooth_relu_errors():
    with pytest.raises(ValueError, match="no nn.ReLU module"):
        smooth_relu(nn.Sequential(nn.Linear(2, 2), nn.Tanh()))
    with pytest.raises(ValueError, match="beta must be positive"):
        smooth_relu(relu_net(), beta=0)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        smooth_relu(lambda x: x)


def test_smoothed_in_place_and_restored():
    net = relu_net()
    relu1, relu2 = net[1], net[2][1]
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    with smoothed(net, 3.0) as m:
        assert m is net
        assert isinstance(net[1], nn.Softplus) and isinstance(net[2][1], nn.Softplus)
        # shared parameters: a step inside the context changes the model's weights
        loss = m(x).sum()
        loss.backward()
        with torch.no_grad():
            net[0].weight -= 0.1 * net[0].weight.grad
    assert net[1] is relu1 and net[2][1] is relu2
    w = net[0].weight.detach().clone()
    with pytest.raises(RuntimeError, match="inside"):
        with smoothed(net, 3.0):
            raise RuntimeError("inside")
    assert net[1] is relu1 and net[2][1] is relu2
    assert torch.equal(net[0].weight, w)
    with pytest.raises(ValueError, match="beta must be positive"):
        with smoothed(net, -1.0):
            pass
