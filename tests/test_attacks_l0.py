"""L0 attacks: DeletionAttack (any explainer) and JSMA."""
from __future__ import annotations

import pytest
import torch

import xadv.attacks as A
import xadv.explainers as E
from xadv.explainers import Explainer
from xadv.explanation import Explanation

from conftest import small_cnn
from test_attacks import digits_model_and_data


class RandomExplainer(Explainer):
    """Uninformative attributions (a control for the deletion attack)."""

    name = "random"
    differentiable = False

    def __init__(self, seed: int = 0):
        self.seed = seed

    def _explain(self, model, x, target, create_graph):
        g = torch.Generator(device=x.device).manual_seed(self.seed)
        a = torch.rand(x.shape, generator=g, device=x.device, dtype=x.dtype)
        t = torch.zeros(x.shape[0], dtype=torch.long, device=x.device) if target is None else target
        return Explanation(a, x, t, None, self.name, {})


@pytest.fixture(scope="module")
def digits():
    return digits_model_and_data(32)


def test_deletion_attack_respects_k_and_uses_the_explanation(digits):
    model, x, y = digits
    ig = A.DeletionAttack(E.IntegratedGradients(steps=16), k=60)
    res = ig(model, x, y)
    assert (res.norms["l0"] <= 60).all() and res.extras["mask"].sum(1).max() == 60
    rnd = A.DeletionAttack(RandomExplainer(), k=60)(model, x, y)
    assert res.success_rate > rnd.success_rate + 0.2  # the explanation finds the evidence
    # deleted pixels equal the fill, the others are untouched
    changed = res.extras["mask"].reshape(x.shape)
    assert torch.equal(res.x_adv[~changed], x[~changed]) and (res.x_adv[changed] == 0).all()
    assert res.queries.tolist() == [16 + 2] * len(x)


def test_success_vs_k_and_rounds(digits):
    model, x, y = digits
    atk = A.DeletionAttack("saliency", k=100)
    curve = atk.success_vs_k(model, x, y, [10, 0.1, 200])
    assert curve["k"] == [10, 78, 200]
    rates = curve["success_rate"]
    assert rates[2] > rates[0] and len(curve["min_k"]) == len(x)
    ok = curve["min_k"] >= 0
    assert set(curve["min_k"][ok].tolist()) <= {10, 78, 200}
    one = atk(model, x, y)
    assert one.success_rate == pytest.approx(A.DeletionAttack("saliency", k=100).success_vs_k(
        model, x, y, [100])["success_rate"][0])
    rounds = A.DeletionAttack("saliency", k=100, steps=4)(model, x, y)
    assert rounds.success_rate >= one.success_rate
    assert (rounds.norms["l0"] <= 100).all() and rounds.steps.max() <= 4


@pytest.mark.parametrize("name,params", [("saliency", {}), ("smoothgrad", {"n_samples": 4, "seed": 0}),
                                         ("gradcam", {}), ("lime", {"n_samples": 40, "seed": 0})])
def test_deletion_with_every_explainer_family(name, params):
    if name not in E.names():
        pytest.skip(f"{name} not registered")
    torch.manual_seed(0)
    model = small_cnn(in_ch=3, classes=4, size=8).eval()
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    for fill in ("zeros", "mean", "blur", "noise"):
        res = A.DeletionAttack(E.get(name, **params), k=6, fill=fill, seed=0)(model, x, y)
        pix = (res.x_adv != x).any(1).reshape(3, -1).sum(1)
        assert (pix <= 6).all()  # k counts pixels (all channels of a pixel together)
        assert float(res.x_adv.min()) >= 0 and float(res.x_adv.max()) <= 1


def test_deletion_errors(digits):
    model, x, y = digits
    with pytest.raises(ValueError, match="either k"):
        A.DeletionAttack(k=3, fraction=0.1)
    with pytest.raises(ValueError, match="fill"):
        A.DeletionAttack(fill="grey")
    with pytest.raises(ValueError, match="fraction"):
        A.DeletionAttack(fraction=1.5)
    atk = A.DeletionAttack(k=3)
    atk.targeted = True
    with pytest.raises(ValueError, match="does not support targeted"):
        atk(model, x[:2], y[:2])


def test_jsma_targeted_on_small_model():
    torch.manual_seed(0)
    model = small_cnn(classes=4).double().eval()
    x = 0.5 * torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    t = (y + 1) % 4
    res = A.JSMA(gamma=0.5)(model, x, t)
    assert res.success_rate > 0.5  # chance 0.25
    assert (res.norms["l0"] <= 2 * 16).all() and float(res.x_adv.max()) <= 1
    assert torch.equal(res.extras["changed"].sum(1).to(res.norms["l0"].dtype), res.norms["l0"])
    with pytest.raises(ValueError, match="targeted only"):
        JSMA_untargeted = A.JSMA()
        JSMA_untargeted.targeted = False
        JSMA_untargeted(model, x, y)
    with pytest.raises(ValueError, match="target labels"):
        A.JSMA()(model, x)


@pytest.mark.reference
def test_jsma_equals_torchattacks(digits):
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = digits
    xs = 0.9 * x[:3]  # no pixel near torchattacks' 0.99 search-domain threshold
    with torch.no_grad():
        ys = model(xs).argmax(1)
    t = (ys + 1) % 10
    ours = A.JSMA(theta=1.0, gamma=0.04)(model, xs, t)
    ta = torchattacks.JSMA(model, theta=1.0, gamma=0.04)
    ta.set_mode_targeted_by_label(quiet=True)
    assert (ours.norms["l0"] > 0).all()
    torch.testing.assert_close(ours.x_adv, ta(xs, t), rtol=0, atol=1e-6)
