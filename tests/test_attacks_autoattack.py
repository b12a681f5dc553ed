"""APGD, APGD-T, Square and AutoAttack: against torchattacks on the same models,
budgets and seeds, and the properties of the composition and its checks."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn

import xadv.attacks as A
from test_attacks import digits_model_and_data
from test_user_models import ResNetLike

torchattacks = pytest.importorskip("torchattacks")

_TA_NORM = {"linf": "Linf", "l2": "L2"}


@pytest.fixture(scope="module")
def digits():
    return digits_model_and_data(24)


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = ResNetLike(width=8, classes=10)
    for m in model.modules():  # BatchNorm statistics of the input distribution, so the logits vary
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.rand(64, 3, 16, 16, generator=torch.Generator().manual_seed(4)))
    model.eval()
    x = torch.rand(12, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = model(x).argmax(1)  # the model's own labels: every point starts correctly classified
    return model, x, y


def _ta_success(model, x_adv, y):
    with torch.no_grad():
        return model(x_adv).argmax(1) != y


def _assert_same(res, xt, model, y, atol=0.0):
    st = _ta_success(model, xt, y)
    assert torch.equal(res.success, st), (res.success.sum(), st.sum())
    both = st & res.success
    assert both.any()
    torch.testing.assert_close(res.x_adv[both], xt[both], atol=atol, rtol=0)


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.5)])
@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_apgd_equals_torchattacks(digits, norm, eps, loss):
    model, x, y = digits
    res = A.APGD(norm=norm, eps=eps, steps=10, loss=loss, seed=0)(model, x, y)
    xt = torchattacks.APGD(model, norm=_TA_NORM[norm], eps=eps, steps=10, loss=loss, seed=0)(x, y)
    _assert_same(res, xt, model, y, atol=0.0 if norm == "linf" else 1e-6)
    assert (res.norms[norm] <= eps * (1 + 1e-5)).all()


def test_apgd_restarts_equal_torchattacks(digits):
    model, x, y = digits
    res = A.APGD(eps=0.06, steps=8, restarts=3, seed=1)(model, x, y)
    xt = torchattacks.APGD(model, eps=0.06, steps=8, n_restarts=3, seed=1)(x, y)
    _assert_same(res, xt, model, y)
    once = A.APGD(eps=0.06, steps=8, restarts=1, seed=1)(model, x, y)
    assert res.success.sum() >= once.success.sum()


def test_apgdt_equals_torchattacks_linf(digits):
    model, x, y = digits
    res = A.APGDT(eps=0.08, steps=10, n_target_classes=3, seed=0)(model, x, y)
    xt = torchattacks.APGDT(model, eps=0.08, steps=10, n_classes=4, seed=0)(x, y)
    _assert_same(res, xt, model, y)


def test_apgdt_l2_at_least_torchattacks(digits):
    # torchattacks' APGDT L2 step uses the first sample's step size for the whole batch; ours is per sample
    model, x, y = digits
    res = A.APGDT(norm="l2", eps=1.5, steps=10, n_target_classes=3, seed=0)(model, x, y)
    xt = torchattacks.APGDT(model, norm="L2", eps=1.5, steps=10, n_classes=4, seed=0)(x, y)
    assert res.success.sum() >= _ta_success(model, xt, y).sum()
    assert (res.norms["l2"] <= 1.5 * (1 + 1e-5)).all()


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 3.0)])
def test_square_equals_torchattacks(digits, norm, eps):
    model, x, y = digits
    res = A.Square(norm=norm, eps=eps, n_queries=60, seed=0)(model, x, y)
    xt = torchattacks.Square(model, norm=_TA_NORM[norm], eps=eps, n_queries=60, seed=0)(x, y)
    _assert_same(res, xt, model, y, atol=0.0 if norm == "linf" else 1e-5)
    assert (res.norms[norm] <= eps * (1 + 1e-5)).all()
    assert int(res.queries.max()) <= 60 + 2  # start + iterations + the final check


def test_resnet_apgd_square_match(resnet):
    model, x, y = resnet
    for ours, theirs in [
        (A.APGD(eps=1 / 255, steps=10, seed=0), torchattacks.APGD(model, eps=1 / 255, steps=10, seed=0)),
        (A.APGDT(eps=1 / 255, steps=10, n_target_classes=3, seed=0),
         torchattacks.APGDT(model, eps=1 / 255, steps=10, n_classes=4, seed=0)),
        (A.Square(eps=4 / 255, n_queries=40, seed=0), torchattacks.Square(model, eps=4 / 255, n_queries=40, seed=0)),
    ]:
        res = ours(model, x, y)
        st = _ta_success(model, theirs(x, y), y)
        assert torch.equal(res.success, st)
        assert 0 < int(res.success.sum()) < len(y)  # a budget where the comparison means something


def test_apgd_targeted(digits):
    model, x, y = digits
    t = (y + 1) % 10
    for loss in ("ce", "dlr"):
        res = A.APGD(eps=0.3, steps=20, loss=loss, targeted=True)(model, x, t)
        assert res.targeted and res.success.float().mean() > 0.5
        assert torch.equal(res.success, res.pred_adv == t)


def test_apgd_beats_pgd_at_equal_budget(digits):
    model, x, y = digits
    apgd = A.APGD(eps=0.06, steps=20)(model, x, y)
    pgd = A.PGD(eps=0.06, steps=20, seed=0)(model, x, y)
    assert apgd.success.sum() >= pgd.success.sum()


def test_eot_averages_gradients(digits):
    model, x, y = digits
    one = A.APGD(eps=0.06, steps=5)(model, x, y)
    three = A.APGD(eps=0.06, steps=5, eot_iter=3)(model, x, y)
    assert torch.equal(one.success, three.success)
    torch.testing.assert_close(one.x_adv, three.x_adv)
    assert int(three.queries.sum()) > 2.5 * int(one.queries.sum())


def test_autoattack_worst_case(digits):
    model, x, y = digits
    aa = A.AutoAttack(eps=0.06, steps=10, n_target_classes=3, n_queries=50, warn=False)
    res = aa(model, x, y)
    ex = res.extras
    assert ex["attacks"] == ["apgd-ce", "apgd-t", "square"]
    acc = list(ex["robust_accuracy"].values())
    assert acc == sorted(acc, reverse=True)
    assert abs(acc[-1] - (1 - res.success.double().mean().item())) < 1e-6
    # each attack only runs on the points left robust by the earlier ones
    per = ex["per_attack"]
    assert per["apgd-ce"]["ran_on"] == len(y)
    assert per["apgd-t"]["ran_on"] == len(y) - per["apgd-ce"]["fooled"]
    assert per["square"]["ran_on"] == per["apgd-t"]["ran_on"] - per["apgd-t"]["fooled"]
    assert torch.equal(res.success, ex["fooled_by"] >= 0)
    # at least as strong as each member alone
    alone = A.APGD(eps=0.06, steps=10)(model, x, y)
    assert res.success.sum() >= alone.success.sum()
    assert (res.norms["linf"] <= 0.06 + 1e-6).all()


class _Quantised(nn.Module):
    """Gradient masking by input quantisation: the gradient is exactly zero everywhere."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(torch.round(x * 8) / 8)


class _Noisy(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x + 0.05 * torch.randn_like(x))


def test_autoattack_flags_gradient_masking(digits):
    model, x, y = digits
    masked = _Quantised(model).eval()
    with torch.no_grad():
        ok = masked(x).argmax(1) == y
    aa = A.AutoAttack(eps=0.15, steps=5, n_target_classes=2, n_queries=200)
    with pytest.warns(A.GradientMaskingWarning) as rec:
        res = aa(masked, x[ok], y[ok])
    flags = res.extras["flags"]
    assert any("zero gradient" in f for f in flags)
    assert any("Square" in f for f in flags)
    assert res.extras["per_attack"]["apgd-ce"]["fooled"] == 0 and res.extras["per_attack"]["square"]["fooled"] > 0
    assert len(rec) == len(flags)
    clean = A.AutoAttack(eps=0.02, steps=3, n_target_classes=2, n_queries=5, warn=False)(model, x, y)
    assert not any("zero gradient" in f or "changes between" in f for f in clean.extras["flags"])


def test_autoattack_flags_randomness_and_rand_version(digits):
    model, x, y = digits
    noisy = _Noisy(model).eval()
    res = A.AutoAttack(eps=0.02, steps=2, n_target_classes=2, n_queries=2, warn=False)(noisy, x[:6], y[:6])
    assert any("randomised" in f for f in res.extras["flags"])
    rand = A.AutoAttack(eps=0.02, version="rand", steps=2, eot_iter=2, warn=False)(noisy, x[:6], y[:6])
    assert rand.extras["attacks"] == ["apgd-ce", "apgd-dlr"]
    assert not any("randomised" in f for f in rand.extras["flags"])


def test_errors_and_model_unchanged(digits):
    model, x, y = digits
    two = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 2))
    with pytest.raises(ValueError, match="at least 3 classes"):
        A.APGD(loss="dlr", steps=2)(two, x[:2], torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="at least 4 classes"):
        A.APGDT(steps=2)(two, x[:2], torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="image inputs"):
        A.Square(n_queries=2)(nn.Linear(5, 3), torch.rand(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="norm"):
        A.APGD(norm="l0")
    with pytest.raises(ValueError, match="custom"):
        A.AutoAttack(version="custom")
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    A.APGD(steps=2)(model, x[:4], y[:4])
    assert model.training
    model.eval()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
