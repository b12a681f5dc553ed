"""Query-only attacks (local surrogate, substitute transfer) and universal attacks
(class visualisation, data-free GD-UAP, adversarial patch)."""
from __future__ import annotations

import pytest
import torch

import xadv.attacks as A

from conftest import small_cnn
from test_attacks import digits_model_and_data


@pytest.fixture(scope="module")
def digits():
    return digits_model_and_data(48)


def _no_grad_model(model):
    """A callable that refuses gradients: proves an attack is query-only."""

    def f(x):
        if torch.is_grad_enabled() and x.requires_grad:
            raise AssertionError("a query-only attack asked for gradients")
        with torch.no_grad():
            return model(x)

    return f


# --------------------------------------------------------------------------- surrogate
def test_surrogate_attack_is_query_only_and_counts_queries(digits):
    model, x, y = digits
    x, y = x[:24], y[:24]
    atk = A.SurrogateAttack(eps=0.3, steps=8, n_samples=32, patch=4, seed=0)
    res = atk(_no_grad_model(model), x, y)
    assert res.success_rate >= 0.5
    assert float(res.norms["linf"].max()) <= 0.3 + 1e-6
    assert (res.queries <= 8 * 33).all() and (res.queries == res.steps * 33).all()
    assert (res.queries[res.success] > 0).all()
    # a tight cap stops early, and the count never exceeds it
    capped = A.SurrogateAttack(eps=0.3, steps=8, n_samples=32, max_queries=70, seed=0)(model, x, y)
    assert (capped.queries <= 70).all() and capped.steps.max() <= 2
    assert capped.success_rate <= res.success_rate
    # the surrogate's weights follow the model's loss gradient pooled over the patches
    fit = A.SurrogateAttack(n_samples=200, patch=4, sigma=0.05, seed=0).surrogate(model, x[:8], y[:8])
    xi = x[:8].clone().requires_grad_(True)
    lp = torch.log_softmax(model(xi), 1)
    own = lp.gather(1, y[:8, None]).squeeze(1)
    other = lp.masked_fill(torch.nn.functional.one_hot(y[:8], 10).bool(), float("-inf")).max(1).values
    (g,) = torch.autograd.grad((own - other).sum(), xi)
    pooled = torch.nn.functional.avg_pool2d(g, 4).flatten(1)
    cos = torch.nn.functional.cosine_similarity(pooled, fit["coef"], dim=1)
    assert float(cos.mean()) > 0.5 and float(fit["r2"].mean()) > 0.5
    assert fit["weights"].shape == x[:8].shape
    again = atk(model, x, y)
    assert torch.equal(again.x_adv, res.x_adv)  # seeded


def test_surrogate_l2_and_targeted_on_small_model():
    torch.manual_seed(0)
    model = small_cnn(classes=3).double().eval()
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    res = A.SurrogateAttack(norm="l2", eps=2.0, steps=10, n_samples=40, patch=2, seed=1)(model, x, y)
    assert (res.norms["l2"] <= 2.0 + 1e-9).all() and res.success_rate > 0.5
    t = (y + 1) % 3
    tg = A.SurrogateAttack(eps=0.5, steps=10, n_samples=40, patch=2, targeted=True, seed=1)(model, x, t)
    assert tg.success_rate > 1 / 3 and torch.equal(tg.pred_adv[tg.success], t[tg.success])
    with pytest.raises(ValueError, match="norm"):
        A.SurrogateAttack(norm="l0")


def test_substitute_transfer(digits):
    import xadv.data

    model, x, y = digits
    xt, _ = xadv.data.load_digits("train")
    sub, q = A.train_substitute(model, xt[:100], type(model)(), rounds=2, epochs=4, seed=0)
    assert q == 200  # 100 seeds + 100 augmented points, one label query each
    assert not sub.training
    res = A.TransferAttack(A.PGD(eps=0.3, steps=10, seed=0), sub, q)(model, x, y)
    assert res.queries.sum() == 0 and res.extras["substitute_queries"] == 200
    white = A.PGD(eps=0.3, steps=10, seed=0)(model, x, y)
    assert 0.2 < res.success_rate <= white.success_rate
    with pytest.raises(TypeError, match="xadv Attack"):
        A.TransferAttack("pgd", sub)


# --------------------------------------------------------------------------- universal
def test_class_visualization_perturbation_is_universal_and_targeted(digits):
    model, x, y = digits
    atk = A.ClassVisualizationPerturbation(target=3, eps=0.3, steps=60, seed=0)
    res = atk(model, x)  # fitted on first use, data-free
    assert torch.equal(res.y, torch.full_like(y, 3)) and res.targeted
    d = res.x_adv - x
    assert float(d.abs().max()) <= 0.3 + 1e-6
    assert res.success_rate > 0.5  # chance ~0.1
    weak = A.ClassVisualizationPerturbation(target=3, eps=0.05, steps=60, seed=0)(model, x)
    assert weak.success_rate < res.success_rate
    # the same perturbation on every sample (up to clipping)
    p = atk.perturbation_
    inside = ((x + p) >= 0) & ((x + p) <= 1)
    assert torch.allclose(d[inside], (p.expand_as(x))[inside], atol=1e-6)
    assert atk.fit_queries_ == 60 * 16


def test_data_free_uap_beats_random_noise(digits):
    model, x, y = digits
    atk = A.DataFreeUAP(eps=0.3, steps=60, lr=0.1, seed=0)
    res = atk(model, x)
    assert float(res.norms["linf"].max()) <= 0.3 + 1e-6
    g = torch.Generator().manual_seed(0)
    noise = 0.3 * torch.randn(x[:1].shape, generator=g).sign()
    with torch.no_grad():
        rnd = (model((x + noise).clamp(0, 1)).argmax(1) != y).float().mean()
    assert res.success_rate > float(rnd)
    with pytest.raises(ValueError, match="unknown layer"):
        A.DataFreeUAP(layers=["nope"], steps=1)(model, x[:2])


def test_adversarial_patch_and_saliency_placement(digits):
    import xadv.data

    model, x, y = digits
    xt, _ = xadv.data.load_digits("train")
    atk = A.AdversarialPatch(size=8, target=3, steps=80, seed=0)
    with pytest.raises(ValueError, match="fit the patch"):
        atk(model, x)
    atk.fit(model, xt[:256])
    res = atk(model, x)
    pix = (res.x_adv != x).any(1).reshape(len(x), -1).sum(1)
    assert (pix <= 64).all() and res.success_rate > 0.2
    loc = res.extras["locations"]
    assert ((loc >= 0) & (loc <= 20)).all()
    # the patch replaces the window at the given location
    r, c = int(loc[0, 0]), int(loc[0, 1])
    assert torch.equal(res.x_adv[0, :, r:r + 8, c:c + 8], atk.perturbation_)
    atk.placement = "saliency"
    sal = atk(model, x)
    # saliency placement covers the window with the largest attribution mass
    from xadv.explainers import Saliency

    m = Saliency()(model, x[:1]).saliency_map("abs")[0]
    r, c = [int(v) for v in sal.extras["locations"][0]]
    best = max(float(m[i:i + 8, j:j + 8].sum()) for i in range(21) for j in range(21))
    assert float(m[r:r + 8, c:c + 8].sum()) == pytest.approx(best, rel=1e-5)
    assert sal.success_rate >= 0.0
    with pytest.raises(ValueError, match="larger than the image"):
        A.AdversarialPatch(size=40, steps=1).fit(model, x[:2])
