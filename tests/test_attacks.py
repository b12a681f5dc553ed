"""Gradient attacks (one engine), Carlini-Wagner L2 and DeepFool: properties and contracts."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import xadv.attacks as A
from xadv.explainers import IntegratedGradients, Saliency, SmoothGrad
from xadv.results import AttackResult

from conftest import small_cnn


def digits_model_and_data(n: int = 64):
    """The embedded digits CNN and the first ``n`` test digits it classifies correctly."""
    import xadv.data
    import xadv.zoo

    x, y = xadv.data.load_digits("test")
    try:
        model = xadv.zoo.digits_cnn(pretrained=True)
    except (FileNotFoundError, ValueError):  # weights missing or being regenerated: train a quick one
        from xadv.zoo.train import train_digits

        model, _ = train_digits(seed=0, epochs=2, progress=False)
        model.eval()
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    return model, x[ok][:n].clone(), y[ok][:n].clone()


@pytest.fixture(scope="module")
def digits():
    return digits_model_and_data(64)


@pytest.fixture
def cnn():
    torch.manual_seed(0)
    return small_cnn(classes=5).double().eval()


@pytest.fixture
def imgs():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(8, 1, 8, 8, generator=g, dtype=torch.float64)
    return x


def _labels(model, x):
    with torch.no_grad():
        return model(x).argmax(1)


# --------------------------------------------------------------------------- the engine
def test_fgsm_direction_is_reversed_log_softmax_saliency(cnn, imgs):
    y = _labels(cnn, imgs)
    sal = Saliency(score="log_softmax")(cnn, imgs, y).attributions
    xi = imgs.clone().requires_grad_(True)
    (g_ce,) = torch.autograd.grad(F.cross_entropy(cnn(xi), y, reduction="sum"), xi)
    torch.testing.assert_close(-sal, g_ce)  # survey eq. 7-8: the loss gradient is the reversed explanation
    eps = 0.05
    res = A.FGSM(eps=eps)(cnn, imgs, y)
    torch.testing.assert_close(res.x_adv, (imgs - eps * sal.sign()).clamp(0, 1), rtol=0, atol=1e-12)
    # targeted: the explanation of the target class itself
    t = (y + 1) % 5
    sal_t = Saliency(score="log_softmax")(cnn, imgs, t).attributions
    res_t = A.FGSM(eps=eps, targeted=True)(cnn, imgs, t)
    torch.testing.assert_close(res_t.x_adv, (imgs + eps * sal_t.sign()).clamp(0, 1), rtol=0, atol=1e-12)


@pytest.mark.parametrize("norm,eps", [("linf", 0.03), ("linf", 0.2), ("l2", 0.3), ("l2", 1.5), ("l0", 3),
                                      ("l0", 0.1)])
@pytest.mark.parametrize("seed", [0, 1])
def test_stays_in_ball_and_bounds(cnn, imgs, norm, eps, seed):
    y = _labels(cnn, imgs)
    bounds = (0.0, 1.0) if seed == 0 else (-0.5, 1.5)
    x = imgs if seed == 0 else imgs * 2 - 0.5
    for atk in [
        A.ProjectedGradient(norm=norm, eps=eps, steps=4, random_start=True, seed=seed, bounds=bounds),
        A.ProjectedGradient(norm=norm, eps=eps, steps=3, step_size=0.5, seed=seed, bounds=bounds,
                            schedule="cosine", early_stop=True),
        A.ExplainerPGD(SmoothGrad(n_samples=3, seed=seed), norm=norm, eps=eps, steps=2, bounds=bounds),
    ]:
        res = atk(cnn, x, y)
        d = (res.x_adv - x).reshape(len(x), -1)
        assert float(res.x_adv.min()) >= bounds[0] and float(res.x_adv.max()) <= bounds[1]
        if norm == "linf":
            assert float(d.abs().max()) <= eps + 1e-12
        elif norm == "l2":
            assert float(d.norm(dim=1).max()) <= eps * (1 + 1e-9)
        else:
            k = eps if isinstance(eps, int) else max(1, round(eps * d.shape[1]))
            assert int((d != 0).sum(1).max()) <= k
            assert int((d != 0).sum(1).max()) > 0
        torch.testing.assert_close(res.norms["l2"], d.norm(dim=1))


def test_result_fields_and_counts(cnn, imgs):
    y = _labels(cnn, imgs)
    res = A.PGD(eps=0.1, steps=5, seed=0)(cnn, imgs, y)
    assert isinstance(res, AttackResult) and len(res) == len(imgs)
    assert res.queries.tolist() == [5] * len(imgs) and res.steps.tolist() == [5] * len(imgs)
    with torch.no_grad():
        p = F.softmax(cnn(res.x_adv), 1)
    assert torch.equal(res.pred_adv, p.argmax(1))
    torch.testing.assert_close(res.conf_adv, p.max(1).values)
    assert torch.equal(res.success, res.pred_adv != y)
    assert torch.equal(res.pred_clean, y) and not res.targeted
    assert "PGD(" in res.attack and "eps=0.1" in res.attack
    # queries of an explainer direction: SmoothGrad with 3 samples costs 3 rows + 1 clean forward per step
    r2 = A.ExplainerPGD(SmoothGrad(n_samples=3, seed=0), eps=0.1, steps=2)(cnn, imgs, y)
    assert r2.queries.tolist() == [2 * 4] * len(imgs)


def test_early_stop_freezes_successes(digits):
    model, x, y = digits
    y2 = y.clone()
    y2[:4] = (y[:4] + 1) % 10  # wrong labels: already "misclassified" before the attack
    res = A.PGD(eps=0.2, steps=10, early_stop=True, seed=0)(model, x[:16], y2[:16])
    assert torch.equal(res.x_adv[:4], x[:4]) and res.steps[:4].tolist() == [0] * 4
    full = A.PGD(eps=0.2, steps=10, seed=0)(model, x[:16], y2[:16])
    assert int(res.queries.sum()) < int(full.queries.sum())
    assert res.success_rate >= full.success_rate - 1 / 16


def test_success_increases_with_eps_and_targeted_beats_chance(digits):
    model, x, y = digits
    rates = [A.PGD(eps=e, steps=10, random_start=False)(model, x, y).success_rate for e in (0.02, 0.08, 0.15, 0.3)]
    assert rates == sorted(rates) and rates[-1] > rates[0] + 0.3, rates
    t = (y + 3) % 10
    res = A.PGD(eps=0.3, steps=20, targeted=True, seed=0)(model, x, t)
    assert res.success_rate > 0.5  # chance is 0.1
    assert torch.equal(res.y, t) and res.targeted
    l2 = [A.PGD(norm="l2", eps=e, steps=10, random_start=False)(model, x, y).success_rate for e in (0.5, 3.0)]
    assert l2[1] > l2[0]


def test_explainer_pgd_with_ig_and_smoothgrad(digits):
    model, x, y = digits
    x, y = x[:16], y[:16]
    ig = A.ExplainerPGD(IntegratedGradients(steps=8, score="log_softmax"), eps=0.2, steps=5)(model, x, y)
    sg = A.ExplainerPGD("smoothgrad", eps=0.2, steps=5)
    assert sg.explainer.name == "smoothgrad"
    res_sg = A.ExplainerPGD(SmoothGrad(n_samples=4, noise=0.1, seed=0), eps=0.2, steps=5)(model, x, y)
    for r in (ig, res_sg):
        assert r.success_rate > 0.2
        assert float(r.norms["linf"].max()) <= 0.2 + 1e-6
    assert ig.queries[0] == 5 * (8 + 2)  # steps x (IG rows + baseline + input)


def test_determinism_with_seed(cnn, imgs):
    y = _labels(cnn, imgs)
    for mk in (lambda s: A.PGD(eps=0.1, steps=3, seed=s), lambda s: A.RFGSM(eps=0.1, seed=s),
               lambda s: A.PGD(norm="l0", eps=4, steps=3, seed=s)):
        a, b, c = mk(3)(cnn, imgs, y), mk(3)(cnn, imgs, y), mk(4)(cnn, imgs, y)
        assert torch.equal(a.x_adv, b.x_adv)
        assert not torch.equal(a.x_adv, c.x_adv)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(A.PGD(eps=0.1, steps=2, generator=g1)(cnn, imgs, y).x_adv,
                       A.PGD(eps=0.1, steps=2, generator=g2)(cnn, imgs, y).x_adv)


def _all_attacks():
    return [
        A.FGSM(eps=0.1), A.PGD(eps=0.1, steps=2, seed=0), A.PGD(norm="l2", eps=0.5, steps=2, seed=0),
        A.RFGSM(eps=0.1, seed=0), A.ExplainerPGD("ig", eps=0.1, steps=1),
        A.CarliniWagnerL2(steps=3, binary_search_steps=2), A.DeepFool(steps=3),
    ]


@pytest.mark.parametrize("atk", _all_attacks(), ids=lambda a: type(a).__name__)
def test_model_and_inputs_unchanged(atk, imgs):
    torch.manual_seed(0)
    model = small_cnn(classes=5).double()
    model.train()  # the attack must not switch the mode permanently
    model[0].weight.requires_grad_(False)
    handle = model.register_forward_hook(lambda m, i, o: None)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = imgs.clone()
    y = _labels(model, x)
    y0 = y.clone()
    res = atk(model, x, y)
    assert model.training and all(m.training for m in model.modules())
    assert not model[0].weight.requires_grad and model[2].weight.requires_grad
    assert len(model._forward_hooks) == 1 and len(model._forward_pre_hooks) == 0
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])
    assert torch.equal(x, imgs) and not x.requires_grad and torch.equal(y, y0)
    assert res.x_adv.data_ptr() != x.data_ptr() and res.x.data_ptr() != x.data_ptr()
    handle.remove()


def test_bad_inputs(cnn, imgs):
    y = _labels(cnn, imgs)
    atk = A.PGD(eps=0.1, steps=1)
    with pytest.raises(TypeError, match="floating point"):
        atk(cnn, (imgs * 255).long(), y)
    with pytest.raises(ValueError, match="outside bounds"):
        atk(cnn, imgs * 3, y)
    with pytest.raises(ValueError, match="out of range"):
        atk(cnn, imgs, y + 10)
    with pytest.raises(ValueError, match="entries"):
        atk(cnn, imgs, y[:3])
    with pytest.raises(ValueError, match="target labels"):
        A.PGD(targeted=True)(cnn, imgs)
    with pytest.raises(ValueError, match="norm"):
        A.PGD(norm="l3")
    with pytest.raises(ValueError, match="eps"):
        A.PGD(eps=-1.0)
    with pytest.raises(ValueError, match="eps"):
        A.PGD(norm="l0", eps=2.5)
    with pytest.raises(ValueError, match="random_start"):
        A.PGD(random_start="gauss")
    with pytest.raises(ValueError, match="schedule"):
        A.PGD(schedule="exp")
    with pytest.raises(TypeError, match="explainer"):
        A.ExplainerPGD(explainer=None)
    with pytest.raises(ValueError, match="unknown explainer"):
        A.ExplainerPGD("nope")
    with pytest.raises(ValueError, match="targeted"):
        A.DeepFool()
        A.DeepFool.__call__  # noqa: B018
        dfa = A.DeepFool()
        dfa.targeted = True
        dfa(cnn, imgs, y)
    with pytest.raises(ValueError, match="alpha"):
        A.RFGSM(eps=0.1, alpha=0.2)
    with pytest.raises(ValueError, match="c must be"):
        A.CarliniWagnerL2(c=0)


def test_deepfool_targeted_refused(cnn, imgs):
    atk = A.DeepFool()
    atk.targeted = True
    with pytest.raises(ValueError, match="does not support targeted"):
        atk(cnn, imgs, _labels(cnn, imgs))


def test_repr_and_save_load(cnn, imgs, tmp_path):
    y = _labels(cnn, imgs)
    atk = A.ExplainerPGD(IntegratedGradients(steps=4), norm="l2", eps=0.5, steps=2)
    r = repr(atk)
    assert r.startswith("ExplainerPGD(explainer=IntegratedGradients(steps=4") and "norm='l2'" in r
    assert repr(A.FGSM(eps=0.1)) == "FGSM(eps=0.1, targeted=False, bounds=(0.0, 1.0), batch_size=None)"
    res = atk(cnn, imgs, y)
    back = AttackResult.load(res.save(tmp_path / "r.pt"))
    assert torch.equal(back.x_adv, res.x_adv) and back.attack == res.attack
    assert torch.equal(back.norms["l2"], res.norms["l2"])


# --------------------------------------------------------------------------- DeepFool
def test_deepfool_is_exact_on_a_linear_model():
    torch.manual_seed(0)
    lin = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4)).double()
    x = 0.45 + 0.1 * torch.rand(6, 1, 3, 4, dtype=torch.float64)
    y = _labels(lin, x)
    res = A.DeepFool(overshoot=0.0)(lin, x, y)
    assert res.success.all() and res.steps.tolist() == [1] * 6
    # distance to the closest linear boundary |f_k - f_y| / ||w_k - w_y||
    w, b = lin[1].weight, lin[1].bias
    with torch.no_grad():
        f = lin(x)
        dist = []
        for i in range(6):
            d = [(f[i, k] - f[i, y[i]]).abs() / (w[k] - w[y[i]]).norm() for k in range(4) if k != y[i]]
            dist.append(min(d))
    dist = torch.stack(dist)
    assert (res.norms["l2"] >= dist).all() and (res.norms["l2"] <= dist + 1e-3).all()


def test_deepfool_minimal_vs_pgd(digits):
    model, x, y = digits
    x, y = x[:24], y[:24]
    res = A.DeepFool()(model, x, y)
    assert res.success_rate >= 0.95
    # a smaller L2 than the L2 PGD needs for the same success: the L2 PGD at DeepFool's median norm fools fewer
    med = float(res.norms["l2"].median())
    pgd = A.PGD(norm="l2", eps=0.5 * med, steps=20, random_start=False)(model, x, y)
    assert pgd.success_rate < res.success_rate


# --------------------------------------------------------------------------- Carlini-Wagner
def test_cw_binary_search_beats_fixed_c(digits):
    model, x, y = digits
    x, y = x[:16], y[:16]
    fixed = A.CarliniWagnerL2(c=0.1, steps=25, binary_search_steps=1, lr=0.05)(model, x, y)
    search = A.CarliniWagnerL2(c=0.1, steps=25, binary_search_steps=4, lr=0.05)(model, x, y)
    assert search.success_rate > fixed.success_rate and search.success_rate >= 0.8
    assert torch.equal(search.x_adv[~search.success], x[~search.success])  # failures return the clean input
    assert float(search.x_adv.min()) >= 0 and float(search.x_adv.max()) <= 1
    assert torch.isfinite(search.extras["c"][search.success]).all()
    t = (y + 1) % 10
    tgt = A.CarliniWagnerL2(c=0.1, steps=25, binary_search_steps=4, lr=0.05, targeted=True)(model, x, t)
    assert tgt.success_rate >= 0.6 and torch.equal(tgt.pred_adv[tgt.success], t[tgt.success])


def test_experiment_runs_and_renders(digits):
    from xadv.experiments import attacks as exp

    out = exp.run(n=6, n_slow=4, sections=["explainer"])
    rows = out["rows"]
    assert len(rows) == 12 and {r["section"] for r in rows} == {"explainer"}
    assert all(0.0 <= r["success_rate"] <= 1.0 for r in rows)
    assert "| attack | budget |" in out["markdown"] and "ExplainerPGD" in out["markdown"]


# --------------------------------------------------------------------------- layouts
class _ViewNet(torch.nn.Module):
    """Rejects channels-last activations (``.view`` of a conv output)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).view(x.shape[0], -1))


@pytest.mark.parametrize("norm,early_stop", [("linf", False), ("l2", False), ("linf", True)])
def test_channels_last_iterates_equal_contiguous(cnn, imgs, norm, early_stop):
    """memory_format only changes the layout: float64 results equal, x_adv in the layout of x."""
    y = _labels(cnn, imgs)
    kw = dict(norm=norm, eps=0.3 if norm == "linf" else 1.0, steps=4, early_stop=early_stop, seed=0)
    ref = A.PGD(**kw)(cnn, imgs, y)
    res = A.PGD(memory_format="channels_last", **kw)(cnn, imgs, y)
    assert res.x_adv.stride() == imgs.stride()
    for f in ("x_adv", "conf_clean", "conf_adv"):
        torch.testing.assert_close(getattr(res, f), getattr(ref, f), rtol=0, atol=1e-12)
    for f in ("pred_clean", "pred_adv", "success", "queries", "steps"):
        assert torch.equal(getattr(res, f), getattr(ref, f)), f
    assert "memory_format='channels_last'" in res.attack
    with pytest.raises(ValueError, match="memory_format"):
        A.PGD(memory_format="nhwc")


def test_channels_last_falls_back_for_a_view_model():
    torch.manual_seed(0)
    net = _ViewNet().double().eval()
    x = torch.rand(4, 3, 6, 6, dtype=torch.float64)
    y = _labels(net, x)
    with pytest.raises(RuntimeError):  # the model indeed rejects channels-last inputs
        net(x.clone(memory_format=torch.channels_last))
    ref = A.PGD(eps=0.1, steps=3, random_start=False)(net, x, y)
    res = A.PGD(eps=0.1, steps=3, random_start=False, memory_format="channels_last")(net, x, y)
    torch.testing.assert_close(res.x_adv, ref.x_adv, rtol=0, atol=1e-12)
    assert torch.equal(res.queries, ref.queries) and res.x_adv.is_contiguous()


def test_pgd_result_evaluates_x_adv(digits):
    """The result's adversarial predictions/confidences are the model's on x_adv (the engine
    evaluates x_adv itself, channels-last on a CPU), and the clean ones the model's on x."""
    model, x, y = digits
    res = A.PGD(eps=0.1, steps=3, random_start=False)(model, x[:16], y[:16])
    with torch.no_grad():
        pa, pc = model(res.x_adv).softmax(1), model(x[:16]).softmax(1)
    assert torch.equal(res.pred_adv, pa.argmax(1)) and torch.equal(res.pred_clean, pc.argmax(1))
    torch.testing.assert_close(res.conf_adv, pa.max(1).values, rtol=0, atol=1e-5)
    torch.testing.assert_close(res.conf_clean, pc.max(1).values, rtol=0, atol=1e-5)
    assert torch.equal(res.success, res.pred_adv != y[:16])
