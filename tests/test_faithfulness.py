"""Deletion / insertion curves and AOPC (xadv.metrics.faithfulness)."""
from __future__ import annotations

import pytest
import torch

from xadv.explainers import IntegratedGradients, Saliency
from xadv.metrics import (aopc, curve_auc, deletion_auc, deletion_curve, fill_values, insertion_auc,
                          insertion_curve, remove_features, removal_order)


@pytest.fixture
def linear():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).double().eval()


@pytest.fixture
def x16():
    g = torch.Generator().manual_seed(3)
    return torch.rand(5, 1, 4, 4, generator=g, dtype=torch.float64)


def test_curve_matches_a_slow_loop(linear, x16):
    attr = torch.randn(x16.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    frac, s = deletion_curve(linear, x16, attr, target=1, steps=4, score="logit")
    assert frac.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    for i in range(5):
        order = torch.argsort(attr[i].flatten(), descending=True, stable=True)
        for j, k in enumerate([0, 4, 8, 12, 16]):
            xi = x16[i].flatten().clone()
            xi[order[:k]] = 0.0
            expect = linear(xi.reshape(1, 1, 4, 4))[0, 1]
            torch.testing.assert_close(s[i, j], expect)
    # insertion from a constant fill reveals the same features
    _, si = insertion_curve(linear, x16, attr, target=1, steps=4, score="logit", fill=0.5)
    for i in range(5):
        order = torch.argsort(attr[i].flatten(), descending=True, stable=True)
        xi = torch.full((16,), 0.5, dtype=torch.float64)
        xi[order[:4]] = x16[i].flatten()[order[:4]]
        torch.testing.assert_close(si[i, 1], linear(xi.reshape(1, 1, 4, 4))[0, 1])


def test_exact_contributions_are_optimal_on_a_linear_model(linear, x16):
    """For a linear logit and zero fill, removing features in order of x_i * w_i is the
    greedy optimum: its deletion curve lies below every other ordering's at every k."""
    t = 2
    exact = x16 * linear[1].weight[t].reshape(1, 1, 4, 4)
    _, best = deletion_curve(linear, x16, exact, target=t, steps=16, score="logit")
    _, best_ins = insertion_curve(linear, x16, exact, target=t, steps=16, score="logit", fill="zeros")
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        other = torch.randn(x16.shape, generator=g, dtype=torch.float64)
        _, s = deletion_curve(linear, x16, other, target=t, steps=16, score="logit")
        _, si = insertion_curve(linear, x16, other, target=t, steps=16, score="logit", fill="zeros")
        assert (best <= s + 1e-12).all() and (best_ins >= si - 1e-12).all()
    good = aopc(linear, x16, exact, target=t, score="logit", steps=16)
    bad = aopc(linear, x16, -exact, target=t, score="logit", steps=16)
    assert (good > bad).all()
    torch.testing.assert_close(good, (best[:, :1] - best).mean(1))


def test_explanation_input_uses_its_target_and_ig_is_faithful():
    from test_attacks import digits_model_and_data

    model, x, _ = digits_model_and_data(16)
    ig = IntegratedGradients(steps=16)(model, x)
    rnd = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
    d_ig = deletion_auc(model, x, ig, steps=10)
    d_rnd = deletion_auc(model, x, rnd, target=ig.target, steps=10)
    assert float(d_ig.mean()) < float(d_rnd.mean())
    assert float(insertion_auc(model, x, ig, steps=10, fill="zeros").mean()) > float(
        insertion_auc(model, x, rnd, target=ig.target, steps=10, fill="zeros").mean())
    frac, s = deletion_curve(model, x, ig, steps=10)
    with torch.no_grad():
        p = model(x).softmax(1).gather(1, ig.target[:, None]).squeeze(1)
    torch.testing.assert_close(s[:, 0], p)  # nothing removed: the model's own confidence
    torch.testing.assert_close(curve_auc(frac, s), d_ig)


def test_fills_and_helpers(x16):
    x3 = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    m = fill_values(x3, "mean")
    torch.testing.assert_close(m[:, :, 0, 0], x3.mean((2, 3)))
    assert fill_values(x3, "blur").shape == x3.shape
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    n1 = fill_values(x3, "noise", bounds=(-1, 2), generator=g1)
    assert torch.equal(n1, fill_values(x3, "noise", bounds=(-1, 2), generator=g2))
    assert float(n1.min()) >= -1 and float(n1.max()) <= 2
    with pytest.raises(ValueError, match="fill"):
        fill_values(x3, "gray")
    with pytest.raises(ValueError, match="images"):
        fill_values(torch.rand(2, 5), "blur")
    # pixels of colour images are removed over all channels together
    attr = torch.zeros_like(x3)
    attr[:, 1, 2, 3] = 5.0
    order = removal_order(attr, x3)
    assert order[:, 0].tolist() == [2 * 6 + 3] * 2
    out = remove_features(x3, order, 1, torch.zeros_like(x3))
    assert (out[:, :, 2, 3] == 0).all() and int((out != x3).sum()) <= 6
    with pytest.raises(ValueError, match="do not match"):
        deletion_curve(torch.nn.Flatten(), x16, torch.rand(5, 16))


def test_model_unchanged(linear, x16):
    linear.train()
    attr = Saliency()(linear, x16, 0)
    aopc(linear, x16, attr, steps=4)
    assert linear.training and all(p.grad is None for p in linear.parameters())
