"""AdaptiveAttack: restarts, monotone selection, schedules, the soft-forest surrogate and the
worst case over adaptive configurations in ``evaluate``."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import xadv.detectors as D
from xadv.detectors.adaptive import SoftForest
from xadv.detectors.evaluate import PER_INPUT_BEST, config_label


@pytest.fixture(scope="module")
def setup():
    from xadv.attacks import PGD
    from xadv.data import load_digits
    from xadv.zoo import digits_cnn

    net = digits_cnn()
    xtr, ytr = load_digits("train")
    xte, yte = load_digits("test")
    xtr, ytr = xtr[:120], ytr[:120]
    res = PGD(eps=0.2, steps=5, seed=0)(net, xtr, ytr)
    det = D.SaliencyDetector(epochs=5, seed=0).fit(net, xtr, res.x_adv[res.success])
    ok = net(xte[:40]).argmax(1) == yte[:40]
    return net, det, xtr, ytr, res.x_adv[res.success], xte[:40][ok][:12], yte[:40][ok][:12]


def _old_selective(det, net, x, y, eps, steps, seed):
    """The attack before restarts existed (selective mode, L-inf, constant step): the reference for restarts=1."""
    from xadv.detectors.base import make_generator
    from xadv.nn import smooth_relu

    gm = smooth_relu(net, 10.0)
    step = 2.5 * eps / steps
    gen = make_generator(seed)
    delta = (torch.rand(x.shape, generator=gen, dtype=x.dtype) * 2 - 1) * eps
    delta = (x + delta).clamp(0, 1) - x
    best, best_s = (x + delta).clone(), torch.full((len(x),), float("inf"))
    found = torch.zeros(len(x), dtype=torch.bool)
    for t in range(steps + 1):
        xa = (x + delta).detach().requires_grad_(True)
        logits = net(xa)
        other = logits.clone()
        other.scatter_(1, y[:, None], -torch.inf)
        margin = logits.gather(1, y[:, None])[:, 0] - other.max(1).values
        fooled = (margin < 0).detach()
        sd = det.score(net, xa.detach())
        better = fooled & (sd < best_s)
        best[better], best_s[better] = xa.detach()[better], sd[better]
        found |= fooled
        if t == steps:
            break
        g_cls, = torch.autograd.grad(margin.sum(), xa)
        g_det, = torch.autograd.grad(det.surrogate_score(gm, xa).sum(), xa)
        g = torch.where(fooled[:, None, None, None], g_det, g_cls)
        delta = (delta - step * g.sign()).clamp(-eps, eps)
        delta = (x + delta).clamp(0, 1) - x
    best[~found] = (x + delta)[~found]
    return best


def test_restarts_1_is_the_previous_attack(setup):
    net, det, *_, x, y = setup
    res = D.AdaptiveAttack(det, eps=0.15, steps=4, step_size=2.5 * 0.15 / 4, schedule="constant", seed=3)(net, x, y)
    ref = _old_selective(det, net, x, y, 0.15, 4, 3)
    torch.testing.assert_close(res.x_adv, ref, rtol=0, atol=1e-6)
    assert (res.extras["restart"] == 0).all()


def test_restarts_keep_per_sample_best_of_single_runs(setup):
    net, det, *_, x, y = setup
    kw = dict(eps=0.15, steps=3, step_size=0.03)
    runs = [D.AdaptiveAttack(det, seed=s, **kw)(net, x, y) for s in (5, 6, 7)]
    multi = D.AdaptiveAttack(det, seed=5, restarts=3, **kw)(net, x, y)
    # reference: per sample, the first run among the fooled ones with the lowest exact score
    s = torch.stack([r.extras["score_adv"] for r in runs])
    ok = torch.stack([r.success for r in runs])
    s = torch.where(ok, s, torch.full_like(s, float("inf")))
    pick = s.argmin(0)
    pick[~ok.any(0)] = 0
    expect = torch.stack([r.x_adv for r in runs])[pick, torch.arange(len(x))]
    torch.testing.assert_close(multi.x_adv, expect, rtol=0, atol=1e-6)
    torch.testing.assert_close(multi.extras["restart"], pick)
    # never worse than one restart, per sample
    one = runs[0]
    assert bool((multi.success | ~one.success).all())
    both = one.success
    assert bool((multi.extras["score_adv"][both] <= one.extras["score_adv"][both] + 1e-5).all())
    assert int(multi.queries[0]) == 3 * 4


def test_more_steps_never_return_a_higher_exact_score(setup):
    """Fixed step size and constant schedule: the 3-step run is a prefix of the 9-step run."""
    net, det, *_, x, y = setup
    short = D.AdaptiveAttack(det, eps=0.15, steps=3, step_size=0.03, schedule="constant", seed=0)(net, x, y)
    long = D.AdaptiveAttack(det, eps=0.15, steps=9, step_size=0.03, schedule="constant", seed=0)(net, x, y)
    assert bool((long.success | ~short.success).all())
    m = short.success
    assert m.any()
    assert bool((long.extras["score_adv"][m] <= short.extras["score_adv"][m] + 1e-5).all())
    assert (long.extras["step"] <= 9).all() and (long.extras["step"] >= 0).all()
    # and the attack does improve on the detector: some sample gets a strictly lower score
    assert bool((long.extras["score_adv"][m] < short.extras["score_adv"][m] - 1e-4).any())


@pytest.mark.parametrize("norm,eps,schedule", [("linf", 0.1, "cosine"), ("l2", 1.5, "cosine"),
                                               ("linf", 0.1, "apgd"), ("l2", 1.5, "apgd")])
def test_ball_bounds_and_nothing_changed(setup, norm, eps, schedule):
    net, det, *_, x, y = setup
    params = [p.detach().clone() for p in net.parameters()]
    grads = [p.requires_grad for p in net.parameters()]
    net.train()  # the attack must restore train mode too
    thr, s_before = det.threshold_, det.score(net.eval(), x).clone()
    net.train()
    x0 = x.clone()
    res = D.AdaptiveAttack(det, eps=eps, norm=norm, steps=3, restarts=2, schedule=schedule, seed=1)(net, x, y)
    assert net.training
    net.eval()
    delta = (res.x_adv - x).reshape(len(x), -1)
    size = delta.abs().max(1).values if norm == "linf" else delta.norm(dim=1)
    assert float(size.max()) <= eps + 1e-5
    assert float(res.x_adv.min()) >= 0 and float(res.x_adv.max()) <= 1
    assert torch.equal(x, x0)
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), params))
    assert [p.requires_grad for p in net.parameters()] == grads
    assert det.threshold_ == thr
    torch.testing.assert_close(det.score(net, x), s_before)
    torch.testing.assert_close(res.extras["score_adv"], det.score(net, res.x_adv))


def test_schedule_changes_the_steps(setup):
    net, det, *_, x, y = setup
    kw = dict(eps=0.15, steps=4, step_size=0.05, seed=0, random_start=False)
    a = D.AdaptiveAttack(det, schedule="cosine", **kw)(net, x, y)
    b = D.AdaptiveAttack(det, schedule=lambda t, n: 0.0, **kw)(net, x, y)  # zero steps: stays at x
    assert not torch.equal(a.x_adv, b.x_adv)
    torch.testing.assert_close(b.x_adv, x)


def test_bad_arguments(setup):
    net, det, *_ = setup
    with pytest.raises(ValueError, match="restarts"):
        D.AdaptiveAttack(det, restarts=0)
    with pytest.raises(ValueError, match="schedule"):
        D.AdaptiveAttack(det, schedule="exp")
    with pytest.raises(ValueError, match="XEnsemble"):
        D.AdaptiveAttack(det, surrogate="soft_forest")
    with pytest.raises(ValueError, match="surrogate"):
        D.AdaptiveAttack(det, surrogate="forest")
    with pytest.raises(ValueError, match="step_size"):
        D.AdaptiveAttack(det, step_size=-1.0)


# ------------------------------------------------------------------ soft forest
@pytest.mark.reference
def test_soft_forest_tends_to_the_forest():
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4)) * np.array([1.0, 10.0, 0.1, 3.0])
    y = (X[:, 0] + X[:, 1] / 10 - X[:, 3] / 3 > 0).astype(int)
    rf = RandomForestClassifier(n_estimators=20, min_samples_leaf=2, class_weight="balanced", random_state=0).fit(X, y)
    Xt = rng.normal(size=(200, 4)) * np.array([1.0, 10.0, 0.1, 3.0])
    ref = rf.predict_proba(Xt.astype(np.float32))[:, 1]
    sharp = SoftForest(rf, temperature=1e-7, dtype=torch.float64).proba(torch.as_tensor(Xt)).numpy()
    np.testing.assert_allclose(sharp, ref, atol=1e-9)
    soft = SoftForest(rf, temperature=0.3, dtype=torch.float64)
    p = soft.proba(torch.as_tensor(Xt)).numpy()
    assert np.abs(p - ref).mean() < 0.1 and np.corrcoef(p, ref)[0, 1] > 0.9
    # log-odds: consistent with proba and with finite, non-zero gradients where the forest is certain
    xt = torch.as_tensor(Xt).requires_grad_(True)
    lo = soft(xt)
    torch.testing.assert_close(torch.sigmoid(lo), soft.proba(xt), atol=1e-5, rtol=0)
    g, = torch.autograd.grad(lo.sum(), xt)
    assert torch.isfinite(g).all() and bool((g.abs().sum(1) > 0).all())


def test_soft_forest_errors():
    from sklearn.ensemble import RandomForestClassifier

    with pytest.raises(TypeError, match="fitted"):
        SoftForest(RandomForestClassifier())
    X = np.random.default_rng(0).normal(size=(30, 2))
    rf3 = RandomForestClassifier(n_estimators=2, random_state=0).fit(X, np.arange(30) % 3)
    with pytest.raises(ValueError, match="binary"):
        SoftForest(rf3)
    rf2 = RandomForestClassifier(n_estimators=2, random_state=0).fit(X, np.arange(30) % 2)
    with pytest.raises(ValueError, match="temperature"):
        SoftForest(rf2, temperature=0)


def test_soft_forest_surrogate_on_xensemble(setup):
    net, _, xtr, _, xadv, x, y = setup
    det = D.XEnsemble(("input", "saliency"), epochs=3, n_estimators=10, seed=0).fit(net, xtr, xadv)
    att = D.AdaptiveAttack(det, eps=0.2, steps=2, surrogate="soft_forest", temperature=0.3, seed=0)
    assert "soft-split" in att.surrogate and "soft_forest" in repr(att)
    s = att.surrogate_score(net, x[:4].clone().requires_grad_(True))
    assert s.shape == (4,) and s.requires_grad
    res = att(net, x[:4], y[:4])
    torch.testing.assert_close(res.extras["score_adv"], det.score(net, res.x_adv))


# ------------------------------------------------------------------ worst case in evaluate
def test_evaluate_worst_case_over_configurations(setup):
    from xadv.attacks import FGSM

    net, _, xtr, ytr, _, x, y = setup
    det = D.MahalanobisDetector(seed=0)
    configs = [{"eps": 0.2, "steps": 2, "step_size": 0.06, "seed": 0},
               {"eps": 0.2, "steps": 8, "seed": 0},
               {"eps": 0.2, "steps": 8, "mode": "weighted", "lam": 3.0, "seed": 0},
               {"eps": 0.2, "steps": 8, "surrogate": "soft_forest", "seed": 0}]  # not a forest: skipped
    rep = D.evaluate({"Maha": det}, net, (xtr, ytr), (x, y), train_attacks={"FGSM@eps=0.2": FGSM(eps=0.2)},
                     test_attacks={}, adaptive={"eps=0.2": configs, "one": configs[0]})
    rows = {r["budget"]: r for r in rep.rows}
    tried = rep.meta["adaptive_configs"]["Maha|eps=0.2"]
    assert len(tried) == 4 and not any("soft_forest" in t["config"] for t in tried)
    runs, best = tried[:3], tried[3]
    # the per-input best of all configurations fools every input some configuration fools,
    # and evades wherever one of them evades
    assert best["config"] == PER_INPUT_BEST
    assert best["success_rate"] >= max(t["success_rate"] for t in runs)
    assert best["evasion_rate"] >= max(t["evasion_rate"] for t in runs)
    # the row is the lowest AUROC among runs that succeed at least half as often as the best one
    top = max(t["success_rate"] for t in tried)
    cand = [t for t in tried if t["success_rate"] >= 0.5 * top and not np.isnan(t["auroc"])]
    worst = min(cand, key=lambda t: (t["auroc"], -t["evasion_rate"]))
    assert rows["eps=0.2"]["auroc"] == pytest.approx(worst["auroc"])
    assert rows["eps=0.2"]["evasion_rate"] == pytest.approx(worst["evasion_rate"])
    assert rows["eps=0.2"]["config"] == worst["config"] and worst["config"] in rows["eps=0.2"]["note"]
    assert rows["eps=0.2"]["note"].startswith("worst of 4 configurations")
    assert rows["one"]["auroc"] == pytest.approx(runs[0]["auroc"], nan_ok=True)
    assert "worst of" not in rows["one"].get("note", "")
    # a run that rarely succeeds is not a candidate even with a lower AUROC
    from xadv.detectors.evaluate import _pick_worst

    fake = [{"config": "a", "auroc": 0.9, "success_rate": 1.0, "evasion_rate": 0.2},
            {"config": "b", "auroc": 0.1, "success_rate": 0.3, "evasion_rate": 0.1},
            {"config": "c", "auroc": 0.8, "success_rate": 0.6, "evasion_rate": 0.3},
            {"config": "d", "auroc": float("nan"), "success_rate": 0.9, "evasion_rate": 0.0}]
    assert _pick_worst(fake)["config"] == "c"
    assert config_label({"eps": 0.1, "steps": 5, "mode": "weighted", "lam": 3.0}) == "steps=5, mode='weighted', lam=3"
    with pytest.raises(ValueError, match="no adaptive configuration"):
        D.evaluate({"Maha": det}, net, (xtr, ytr), (x, y), train_attacks={}, test_attacks={}, fit=False,
                   adaptive={"eps=0.2": [configs[3]]})
    with pytest.raises(TypeError, match="list of"):
        D.evaluate({"Maha": det}, net, (xtr, ytr), (x, y), train_attacks={}, test_attacks={}, fit=False,
                   adaptive={"eps=0.2": []})


def test_orthogonal_mode_projects_out_the_other_gradient(setup):
    from xadv.detectors.adaptive import _reject

    g = torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    d = torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    r = _reject(g, d)
    dots = (r.reshape(5, -1) * d.reshape(5, -1)).sum(1)
    assert float(dots.abs().max()) < 1e-5
    torch.testing.assert_close(_reject(d, d), torch.zeros_like(d))
    net, det, *_, x, y = setup
    res = D.AdaptiveAttack(det, eps=0.15, steps=3, mode="orthogonal", seed=0)(net, x, y)
    sel = D.AdaptiveAttack(det, eps=0.15, steps=3, mode="selective", seed=0)(net, x, y)
    assert float((res.x_adv - x).abs().max()) <= 0.15 + 1e-6
    assert not torch.equal(res.x_adv, sel.x_adv)


def test_runner_up_runs_extend_the_first_run(setup):
    net, det, *_, x, y = setup
    kw = dict(eps=0.15, steps=4, step_size=0.03, seed=3)
    one = D.AdaptiveAttack(det, **kw)(net, x, y)
    more = D.AdaptiveAttack(det, runner_ups=2, **kw)(net, x, y)
    assert bool((more.success | ~one.success).all())  # the first run is the same, the best is kept
    both = one.success & more.success
    assert bool((more.extras["score_adv"][both] <= one.extras["score_adv"][both] + 1e-6).all())
    assert int(more.extras["restart"].max()) <= 2 and int(more.queries[0]) == 3 * 5
    with pytest.raises(ValueError, match="runner_ups"):
        D.AdaptiveAttack(det, runner_ups=-1)


# ------------------------------------------------------------------ APGD step-size control
def test_apgd_checkpoints_are_the_papers():
    """Croce & Hein 2020, section 3.2: p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)."""
    from xadv.attacks import apgd_checkpoints

    assert apgd_checkpoints(100) == [0, 22, 41, 57, 70, 80, 87, 93, 99]
    assert apgd_checkpoints(1000) == [0, 220, 410, 570, 700, 800, 870, 930, 990]
    assert apgd_checkpoints(50) == [0, 11, 21, 29, 35, 40, 44, 47, 50]  # ceil(p_j * 50)
    # the reference loop (auto-attack, and xadv.attacks.APGD) checks at the same iterations for 100 steps
    k, size_decr, n_min, at, w = 22, 3, 6, [], 0
    while w + k <= 100:
        w += k
        at.append(w)
        k = max(k - size_decr, n_min)
    assert at[:8] == apgd_checkpoints(100)[1:]
    assert apgd_checkpoints(3) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="steps"):
        apgd_checkpoints(0)


def test_apgd_schedule_halves_steps_and_stays_in_the_ball(setup):
    net, det, *_, x, y = setup
    x0 = x.clone()
    att = D.AdaptiveAttack(det, eps=0.15, steps=20, seed=0)  # schedule="apgd" is the default
    assert att.step_size == pytest.approx(0.3)  # APGD's initial 2 * eps
    res = att(net, x, y)
    assert torch.equal(x, x0)
    assert float((res.x_adv - x).abs().max()) <= 0.15 + 1e-6
    torch.testing.assert_close(res.extras["score_adv"], det.score(net, res.x_adv))
    # every final step is 2 eps / 2^k with k <= the 8 checkpoints after the first; some were halved
    k = torch.log2(0.3 / res.extras["step_size"])
    torch.testing.assert_close(k, k.round(), rtol=0, atol=1e-5)
    assert int(k.max()) >= 1 and int(k.max()) <= 8
    with pytest.raises(ValueError, match="rho"):
        D.AdaptiveAttack(det, schedule="apgd", rho=0.0)
    with pytest.raises(ValueError, match="momentum"):
        D.AdaptiveAttack(det, schedule="apgd", momentum=1.5)


def test_apgd_schedule_not_weaker_than_cosine(setup):
    """Seeded case: APGD step control fools the classifier and evades the detector at least as often."""
    net, det, *_, x, y = setup
    kw = dict(eps=0.15, steps=20, seed=0)
    old = D.AdaptiveAttack(det, step_size=0.015, schedule="cosine", **kw)(net, x, y)
    new = D.AdaptiveAttack(det, **kw)(net, x, y)  # the default

    def evaded(r):
        return int((r.success & ~r.extras["detected"]).sum())

    assert int(new.success.sum()) >= int(old.success.sum())
    assert evaded(new) >= evaded(old)
    both = old.success & new.success
    assert float(new.extras["score_adv"][both].mean()) <= float(old.extras["score_adv"][both].mean()) + 1e-6
