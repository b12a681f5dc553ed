"""The Explanation result type: views, indexing, numpy and save/load."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import xadv
from xadv import Explanation
from xadv.explainers import GradCAM, IntegratedGradients, Saliency


def make(attr, **kw):
    n = attr.shape[0]
    return Explanation(attr, torch.zeros_like(attr), torch.zeros(n, dtype=torch.long), **kw)


@pytest.fixture
def rgb():
    a = torch.tensor([[[[1.0, -2.0], [0.5, 0.0]],
                       [[-3.0, 1.0], [0.5, 0.0]],
                       [[1.0, 1.0], [-2.0, 0.0]]]])  # (1, 3, 2, 2)
    return make(a)


def test_shape_mismatch_rejected():
    with pytest.raises(ValueError, match="same shape"):
        Explanation(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))


def test_saliency_map_reductions(rgb):
    a = rgb.attributions
    assert torch.equal(rgb.saliency_map(), torch.tensor([[[5.0, 4.0], [3.0, 0.0]]]))
    assert torch.equal(rgb.saliency_map("abs"), a.abs().sum(1))
    assert torch.equal(rgb.saliency_map("sum"), torch.tensor([[[-1.0, 0.0], [-1.0, 0.0]]]))
    assert torch.equal(rgb.saliency_map("max"), torch.tensor([[[1.0, 1.0], [0.5, 0.0]]]))
    assert torch.equal(rgb.saliency_map("abs_max"), torch.tensor([[[3.0, 2.0], [2.0, 0.0]]]))
    assert torch.allclose(rgb.saliency_map("l2"), a.pow(2).sum(1).sqrt())
    assert rgb.saliency_map("none") is a
    with pytest.raises(ValueError, match="reduce must be one of"):
        rgb.saliency_map("mean")


def test_saliency_map_of_flat_attributions():
    e = make(torch.tensor([[1.0, -2.0, 3.0]]))
    assert torch.equal(e.saliency_map("abs"), torch.tensor([[1.0, 2.0, 3.0]]))
    assert torch.equal(e.saliency_map("sum"), e.attributions)


def test_gradcam_map_not_summed_over_channels():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 16, 2))
    e = GradCAM(relu=False)(net, torch.rand(2, 3, 4, 4))
    assert torch.equal(e.saliency_map("sum"), e.attributions[:, 0])
    assert torch.equal(e.saliency_map("abs"), e.attributions[:, 0].abs())
    assert torch.equal(e.attributions[:, 1], e.attributions[:, 0])


def test_normalized_modes(rgb):
    m = rgb.normalized()  # abs map / its max
    assert torch.allclose(m, torch.tensor([[[1.0, 0.8], [0.6, 0.0]]]))
    s = rgb.normalized(reduce="sum")
    assert s.min() == -1 and s.max() == 0
    mm = rgb.normalized(mode="minmax")
    assert mm.min() == 0 and mm.max() == 1
    su = rgb.normalized(mode="sum")
    assert torch.allclose(su.abs().sum(), torch.tensor(1.0))
    p = rgb.normalized(percentile=50.0)  # clipped at the median
    assert p.max() == 1 and (p == 1).sum() >= 2
    zero = make(torch.zeros(1, 1, 2, 2))
    assert torch.equal(zero.normalized(), torch.zeros(1, 2, 2))  # no division by zero
    with pytest.raises(ValueError, match="mode must be"):
        rgb.normalized(mode="z")


def test_topk_mask(rgb):
    m = rgb.topk_mask(2)
    assert m.dtype == torch.bool and m.shape == (1, 2, 2)
    assert torch.equal(m, torch.tensor([[[True, True], [False, False]]]))
    assert rgb.topk_mask(0.75).sum() == 3
    assert rgb.topk_mask(1.0).all()
    for bad in (0, 5, 1.5, 0.0, "2"):
        with pytest.raises(ValueError):
            rgb.topk_mask(bad)


def test_numpy_and_detach():
    x = torch.rand(2, 3, requires_grad=True)
    e = Explanation(x * 2, x, torch.zeros(2, dtype=torch.long))
    a = e.numpy()
    assert isinstance(a, np.ndarray) and a.shape == (2, 3)
    np.testing.assert_allclose(a, (x * 2).detach().numpy())
    assert e.numpy("abs").shape == (2, 3)
    d = e.detach()
    assert not d.attributions.requires_grad and not d.inputs.requires_grad
    assert e.attributions.requires_grad  # the original is unchanged (frozen)
    with pytest.raises(Exception):
        e.method = "x"


def test_indexing_selects_per_sample_fields():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    e = IntegratedGradients(steps=4)(net, torch.rand(5, 1, 4, 4), target=[0, 1, 2, 0, 1])
    one = e[1]
    assert len(one) == 1 and one.target.tolist() == [1]
    assert torch.equal(one.attributions, e.attributions[1:2])
    assert torch.equal(one.delta, e.delta[1:2]) and torch.equal(one.output, e.output[1:2])
    last = e[-1]
    assert last.target.tolist() == [1] and torch.equal(last.inputs, e.inputs[4:])
    sl = e[1:4]
    assert len(sl) == 3 and sl.params == e.params and sl.method == e.method
    mask = torch.tensor([True, False, True, False, False])
    assert e[mask].target.tolist() == [0, 2]
    assert e.shape == (5, 1, 4, 4)


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(2 * 16, 3))
    x = torch.rand(3, 1, 4, 4)
    for e in (IntegratedGradients(steps=3, baseline="uniform", seed=1)(net, x),
              GradCAM()(net, x, 2), Saliency()(net, x, create_graph=True)):
        path = e.save(tmp_path / f"{e.method}.pt")
        back = Explanation.load(path)
        assert back.method == e.method and back.params == e.params
        for f in ("attributions", "inputs", "target", "output", "delta", "raw"):
            a, b = getattr(e, f), getattr(back, f)
            assert (a is None and b is None) or torch.equal(a.detach(), b)
        assert not back.attributions.requires_grad
        if "baseline" in e.extras:
            assert torch.equal(back.extras["baseline"], e.extras["baseline"])
        assert repr(back) == repr(e.detach())
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an xadv Explanation"):
        Explanation.load(tmp_path / "other.pt")


def test_params_recorded_and_repr():
    ig = IntegratedGradients(steps=7, baseline=torch.zeros(1, 4), rule="riemann_middle")
    e = ig(torch.nn.Linear(4, 2), torch.rand(2, 4), 1)
    assert e.params["steps"] == 7 and e.params["rule"] == "riemann_middle"
    assert e.params["baseline"] == "tensor(1, 4)"
    assert "IntegratedGradients(steps=7" in repr(ig)
    assert "method='integrated_gradients'" in repr(e)
    sg = xadv.explainers.SmoothGrad(ig, n_samples=2)
    assert "IntegratedGradients" in sg._params_for_result()["base"]


def test_indexing_slices_per_sample_extras(cnn64, images64):
    e = xadv.explain(cnn64, images64, method="ig", steps=4)
    sub = e[1:3]
    assert torch.equal(sub.extras["baseline"], e.extras["baseline"][1:3])
    assert torch.equal(sub.delta, e.delta[1:3])
    one = e[4]
    assert one.attributions.shape[0] == 1 and one.extras["baseline"].shape[0] == 1
