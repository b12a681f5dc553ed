"""Training defenses: PGD adversarial training, TRADES and explanation (curvature) regularisation."""
from __future__ import annotations

import pytest
import torch

import xadv
from xadv.attacks import PGD
from xadv.defenses import AdversarialTraining, ExplanationRegularization, TrainingResult
from xadv.fooling import TopKAttack


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    model = xadv.zoo.digits_cnn()
    x, y = xadv.data.load_digits("train")
    xt, yt = xadv.data.load_digits("test")
    x, y = x[:600], y[:600]
    kw = dict(epochs=3, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = {
        "standard": ExplanationRegularization(lam=0.0, **kw)(model, x, y, xt[:200], yt[:200]),
        "pgd": AdversarialTraining(eps=0.1, steps=5, **kw)(model, x, y, xt[:200], yt[:200]),
        "curvature": ExplanationRegularization(lam=1.0, **kw)(model, x, y, xt[:200], yt[:200]),
    }
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the user's model was changed"
    return model, (x, y), (xt[200:300], yt[200:300]), out


def test_adversarial_training_raises_robust_accuracy_over_the_same_fine_tuning(trained):
    model, _, (xt, yt), out = trained
    rob = {k: float((PGD(eps=0.1, steps=10, seed=0)(r.model, xt, yt).success == 0).float().mean())
           for k, r in out.items() if k in ("standard", "pgd")}
    assert rob["pgd"] > rob["standard"] + 0.2, rob
    assert out["pgd"].accuracy_after > 0.93 and out["pgd"].accuracy_before > 0.97


def test_curvature_regularisation_makes_saliency_maps_harder_to_fool(trained):
    # the adaptive top-k attack (it differentiates the fine-tuned model) at 8/255 keeps more of the map
    model, _, (xt, _), out = trained
    sp = {k: float(TopKAttack("saliency", eps=8 / 255, steps=10, seed=0)(out[k].model, xt[:32])
                   .similarity["spearman"].mean()) for k in ("standard", "curvature")}
    assert sp["curvature"] > sp["standard"] + 0.1, sp
    assert out["curvature"].accuracy_after > 0.95
    hist = out["curvature"].history
    assert hist[-1]["penalty"] < hist[0]["penalty"]


def test_trades_and_regularisation_with_zero_weight_are_plain_fine_tuning(trained):
    model, (x, y), _, out = trained
    x, y = x[:200], y[:200]
    plain = ExplanationRegularization(lam=0.0, epochs=2, seed=3)(model, x, y)
    trades = AdversarialTraining(method="trades", beta=0.0, steps=2, epochs=2, seed=3)(model, x, y)
    assert [h["ce"] for h in plain.history] == pytest.approx([h["ce"] for h in trades.history], rel=1e-6)
    for a, b in zip(plain.model.parameters(), trades.model.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_same_seed_same_model_and_results_round_trip(trained, tmp_path):
    model, (x, y), _, _ = trained
    x, y = x[:128], y[:128]
    d = AdversarialTraining(eps=0.1, steps=2, epochs=1, seed=5)
    r1, r2 = d(model, x, y), d(model, x, y)
    assert all(torch.equal(a, b) for a, b in zip(r1.model.parameters(), r2.model.parameters()))
    assert not r1.model.training and not any(p.requires_grad for p in r1.model.parameters())
    r3 = ExplanationRegularization(epochs=1, seed=5)(model, x, y)
    r4 = ExplanationRegularization(epochs=1, seed=5)(model, x, y)
    assert r3.history == r4.history
    r1.save(tmp_path / "t.pt")
    back = TrainingResult.load(tmp_path / "t.pt")
    assert back.method == "pgd" and back.history == r1.history and back.params["eps"] == 0.1
    assert torch.equal(back.model(x[:4]), r1.model(x[:4]))


def test_training_defenses_reject_bad_input(trained):
    model, (x, y), _, _ = trained
    with pytest.raises(ValueError, match="method"):
        AdversarialTraining(method="fgsm")
    with pytest.raises(ValueError, match="eps"):
        AdversarialTraining(eps=0)
    with pytest.raises(ValueError, match="penalty"):
        ExplanationRegularization(penalty="hessian")
    with pytest.raises(ValueError, match="direction"):
        ExplanationRegularization(direction="up")
    with pytest.raises(ValueError, match="LongTensor"):
        ExplanationRegularization(epochs=1)(model, x[:8], y[:8].float())
    with pytest.raises(ValueError, match="bounds"):
        AdversarialTraining(epochs=1)(model, x[:8] * 3, y[:8])
    with pytest.raises(ValueError, match="x_val and y_val"):
        AdversarialTraining(epochs=1)(model, x[:8], y[:8], x_val=x[:4])
