"""Every consumer runs with the propagation family and the new CAMs: ExplainerPGD,
DeletionAttack, TopKAttack (Ghorbani on DeepLIFT), TargetedManipulation (Dombrowski on LRP and
Guided Backprop, with and without beta-smoothing), ModelManipulation (Heo on LRP),
SaliencyDetector, XEnsemble members, BetaSmoothed."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import xadv
import xadv.data
import xadv.zoo
from xadv.defenses import BetaSmoothed
from xadv.explainers import LRP, DeepLift, GuidedBackprop


@pytest.fixture(scope="module")
def digits():
    model = xadv.zoo.digits_cnn(pretrained=True).eval()
    x, y = xadv.data.load_digits(split="test")
    return model, x[:6], y[:6]


@pytest.mark.parametrize("name", ["lrp", "deeplift", "guided_backprop", "guided_gradcam", "hirescam"])
def test_explainer_pgd_and_deletion(digits, name):
    model, x, y = digits
    ex = xadv.explainers.get(name)
    res = xadv.attacks.ExplainerPGD(ex, eps=0.1, steps=1, step_size=0.1)(model, x, y)
    a = ex(model, x, y).attributions
    torch.testing.assert_close(res.x_adv, (x - 0.1 * a.sign()).clamp(0, 1), rtol=0, atol=1e-6)
    d = xadv.attacks.DeletionAttack(ex, k=40)(model, x, y)
    assert (d.norms["l0"] <= 40).all()


def test_topk_attack_on_deeplift_moves_the_map(digits):
    from xadv.fooling import TopKAttack
    model, x, _ = digits
    res = TopKAttack(DeepLift(), eps=8 / 255, steps=5, seed=0)(model, x[:3])
    assert res.kept.all() and float(res.norms["linf"].max()) <= 8 / 255 + 1e-6
    assert float(res.similarity["topk_intersection"].mean()) < 1.0


@pytest.mark.parametrize("ex", [LRP("epsilon_plus"), GuidedBackprop(), BetaSmoothed(LRP("epsilon_plus"), beta=5.0),
                                BetaSmoothed(GuidedBackprop(), beta=5.0)],
                         ids=["lrp", "gbp", "lrp-beta", "gbp-beta"])
def test_targeted_manipulation_of_lrp_and_gbp(digits, ex):
    from xadv.fooling import TargetedManipulation
    model, x, _ = digits
    target = ex(model, x[:4].roll(1, 0)).attributions
    res = TargetedManipulation(target, explainer=ex, eps=0.3, steps=25, gamma=1.0)(model, x[:4])
    e = res.extras
    assert torch.isfinite(e["target_mse_after"]).all()
    assert float(e["target_mse_after"].mean()) < float(e["target_mse_before"].mean())


def test_model_manipulation_of_lrp(digits):
    from xadv.fooling import ModelManipulation
    model, _, _ = digits
    x, y = xadv.data.load_digits(split="train")
    xt, yt = xadv.data.load_digits(split="test")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    res = ModelManipulation(LRP("epsilon_plus"), kind="location", region="corner", lam=5.0, epochs=1)(
        model, x[:300], y[:300], xt[:60], yt[:60])
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert res.fsr > res.fsr_before


def test_detectors_with_propagation_members():
    from xadv.detectors import SaliencyDetector, XEnsemble
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 3)).eval()
    g = torch.Generator().manual_seed(1)
    clean = torch.rand(120, 1, 8, 8, generator=g) * 0.5
    checker = ((torch.arange(8)[:, None] + torch.arange(8)[None]) % 2).float()
    adv = (torch.rand(120, 1, 8, 8, generator=g) * 0.5 + 0.4 * checker).clamp(0, 1)
    labels = torch.cat([torch.zeros(40), torch.ones(40)])
    for name in ("lrp", "deeplift"):
        det = SaliencyDetector(name, epochs=8, seed=0).fit(net, clean[:80], adv[:80])
        s = torch.cat([det.score(net, clean[80:]), det.score(net, adv[80:])])
        assert xadv.detectors.auroc(labels, s) > 0.8, name
    ens = XEnsemble(("lrp", "guided_backprop", "layercam"), epochs=5, n_estimators=10, seed=0).fit(
        net, clean[:80], adv[:80])
    s = torch.cat([ens.score(net, clean[80:]), ens.score(net, adv[80:])])
    assert xadv.detectors.auroc(labels, s) > 0.8
