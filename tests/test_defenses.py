"""Defenses: beta-smoothing, aggregation, SmoothGrad, measured at equal attack budget."""
from __future__ import annotations

import pytest
import torch

import xadv
import xadv.data
import xadv.zoo
from xadv.defenses import Aggregate, BetaSmoothed, SmoothGrad, evaluate
from xadv.fooling import TopKAttack


@pytest.fixture(scope="module")
def digits():
    model = xadv.zoo.digits_cnn(pretrained=True)
    x, _ = xadv.data.load_digits("test")
    return model, x[:12]


def test_smaller_beta_raises_robustness_at_equal_budget(digits):
    model, x = digits
    rows = evaluate(TopKAttack(eps=8 / 255, steps=12), model, x,
                    {"none": "saliency", "beta=30": BetaSmoothed("saliency", 30.0),
                     "beta=1": BetaSmoothed("saliency", 1.0)})
    r = {row["defense"]: row for row in rows}
    assert all(row["kept_rate"] >= 0.99 for row in rows)
    assert r["beta=1"]["spearman"] > r["beta=30"]["spearman"] + 0.03
    assert r["beta=1"]["spearman"] > r["none"]["spearman"] + 0.1
    assert r["beta=1"]["topk_intersection"] > r["none"]["topk_intersection"] + 0.1
    assert all(type(m) is not torch.nn.Softplus for m in model.modules())


def test_smoothgrad_and_aggregation_are_more_robust_than_saliency(digits):
    model, x = digits
    sg = SmoothGrad(n_samples=6, noise=0.1, seed=0)
    rows = evaluate(TopKAttack(eps=8 / 255, steps=8), model, x[:8],
                    {"none": "saliency", "smoothgrad": sg,
                     "aggregate": Aggregate(["saliency", "input_x_gradient", sg])},
                    metrics=("spearman",))
    r = {row["defense"]: row["spearman"] for row in rows}
    assert r["smoothgrad"] > r["none"] + 0.1
    assert r["aggregate"] > r["none"] + 0.05


def test_beta_smoothed_equals_the_explainer_on_a_softplus_copy(cnn64, images64):
    e = BetaSmoothed("saliency", beta=4.0)(cnn64, images64, target=1)
    ref = xadv.explain(xadv.nn.smooth_relu(cnn64, 4.0), images64, target=1)
    assert torch.allclose(e.attributions, ref.attributions)
    assert e.method == "beta_smoothed" and e.extras["base_method"] == "saliency"
    # approaches the plain explanation as beta grows
    plain = xadv.explain(cnn64, images64, target=1).attributions
    far = (BetaSmoothed("saliency", 1.0)(cnn64, images64, 1).attributions - plain).abs().mean()
    near = (BetaSmoothed("saliency", 1e4)(cnn64, images64, 1).attributions - plain).abs().mean()
    assert near < 0.1 * far
    assert all(type(m) is torch.nn.ReLU for m in cnn64 if not isinstance(m, (torch.nn.Conv2d, torch.nn.Flatten,
                                                                             torch.nn.Linear)))


def test_beta_smoothed_restores_relus_on_error(cnn64, images64):
    with pytest.raises(ValueError):
        BetaSmoothed("saliency", 2.0)(cnn64, images64, target=99)
    assert sum(type(m) is torch.nn.ReLU for m in cnn64.modules()) == 2
    with pytest.raises(ValueError, match="no nn.ReLU"):
        BetaSmoothed()(torch.nn.Sequential(torch.nn.Linear(4, 2)), torch.rand(2, 4))
    with pytest.raises(ValueError, match="beta"):
        BetaSmoothed(beta=0)


def test_aggregate_is_the_mean_of_unit_maps_and_differentiable(softplus_cnn64, images64):
    agg = Aggregate(["saliency", "input_x_gradient"], weights=[3, 1])
    e = agg(softplus_cnn64, images64, target=0)
    m1 = xadv.explain(softplus_cnn64, images64, target=0).saliency_map()
    m2 = xadv.explain(softplus_cnn64, images64, method="ixg", target=0).saliency_map()
    unit = lambda m: m / m.sum((1, 2), keepdim=True)  # noqa: E731
    assert torch.allclose(e.saliency_map(), 0.75 * unit(m1) + 0.25 * unit(m2))
    x = images64.clone().requires_grad_(True)
    out = agg(softplus_cnn64, x, target=0, create_graph=True).attributions
    (g,) = torch.autograd.grad(out.pow(2).sum(), x)
    assert g.abs().sum() > 0
    with pytest.raises(ValueError, match="weights"):
        Aggregate(["saliency"], weights=[1, 2])
    with pytest.raises(ValueError):
        Aggregate([])
