"""The evaluation protocol and the adaptive attack, on the embedded digits CNN with xadv.attacks."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import xadv.detectors as D
from xadv.results import AttackResult, DetectionReport


@pytest.fixture(scope="module")
def digits():
    from xadv.attacks import PGD
    from xadv.data import load_digits
    from xadv.zoo import digits_cnn

    net = digits_cnn()
    xtr, ytr = load_digits("train")
    xte, yte = load_digits("test")
    xtr, ytr, xte, yte = xtr[:160], ytr[:160], xte[:64], yte[:64]
    pgd = PGD(eps=0.2, steps=10, seed=0)
    res = pgd(net, xtr, ytr)
    det = D.SaliencyDetector(epochs=15, seed=0).fit(net, xtr, res.x_adv[res.success])
    return net, det, xtr, ytr, xte, yte


def test_adaptive_attack_lowers_auroc_of_differentiable_detector(digits):
    from xadv.attacks import PGD

    net, det, _, _, xte, yte = digits
    s_clean = det.score(net, xte)
    plain = PGD(eps=0.2, steps=20, seed=1)(net, xte, yte)
    adapt = D.AdaptiveAttack(det, eps=0.2, steps=20, seed=1)(net, xte, yte)
    assert adapt.success.float().mean() > 0.5

    def auc(res, scores=None):
        s = det.score(net, res.x_adv[res.success]) if scores is None else scores[res.success]
        lab = torch.cat([torch.zeros(len(s_clean)), torch.ones(len(s))])
        return D.auroc(lab, torch.cat([s_clean, s]))

    a_plain, a_adapt = auc(plain), auc(adapt, adapt.extras["score_adv"])
    assert a_plain > 0.9
    assert a_adapt < a_plain - 0.2, (a_plain, a_adapt)
    # the result reports exact scores and stays in the budget
    torch.testing.assert_close(adapt.extras["score_adv"], det.score(net, adapt.x_adv))
    assert float((adapt.x_adv - xte).abs().max()) <= 0.2 + 1e-6
    assert float(adapt.x_adv.min()) >= 0 and float(adapt.x_adv.max()) <= 1
    assert "Softplus" in adapt.extras["surrogate"]


def _fake_attack(shift):
    """A deterministic 'attack': adds ``shift`` and calls it a success when the prediction changes."""
    def attack(model, x, y):
        xa = (x + shift).clamp(0, 1)
        with torch.no_grad():
            pa, pc = model(xa).argmax(1), model(x).argmax(1)
        z = torch.zeros(len(x))
        return AttackResult(x_adv=xa, x=x, y=y, success=pa != y, pred_clean=pc, pred_adv=pa, conf_clean=z,
                            conf_adv=z)
    return attack


def test_evaluate_protocol_rows_and_metrics(digits, tmp_path):
    from xadv.attacks import FGSM, PGD

    net, _, xtr, ytr, xte, yte = digits
    dets = {"LOO": D.LOODetector(patch=7, seed=0), "Maha": D.MahalanobisDetector(seed=0)}
    yte_noisy = yte.clone()
    yte_noisy[:3] = (yte_noisy[:3] + 1) % 10  # three "misclassified" clean inputs
    rep = D.evaluate(dets, net, (xtr, ytr), (xte, yte_noisy),
                     train_attacks={"FGSM@eps=0.2": FGSM(eps=0.2)},
                     test_attacks={"FGSM@eps=0.2": FGSM(eps=0.2), ("PGD", "eps=0.1"): PGD(eps=0.1, steps=5, seed=0),
                                   ("noise", "0.9"): _fake_attack(0.9)},
                     adaptive={"eps=0.2": {"eps": 0.2, "steps": 3}}, n_adaptive=8)
    assert isinstance(rep, DetectionReport)
    by = {(r["detector"], r["attack"], r["adaptive"]): r for r in rep.rows}
    assert len(rep.rows) == 2 * 4
    assert by[("LOO", "FGSM", False)]["held_out"] is False
    assert by[("LOO", "PGD", False)]["held_out"] is True
    assert by[("LOO", "adaptive PGD", True)]["held_out"] is True
    assert rep.meta["misclassified_clean"]["n"] >= 3
    assert set(rep.meta["misclassified_clean"]["flagged"]) == {"LOO", "Maha"}
    n_clean = by[("LOO", "FGSM", False)]["n_clean"]
    assert n_clean == len(xte) - rep.meta["misclassified_clean"]["n"]
    # recompute one row by hand with scikit-learn
    from sklearn.metrics import roc_auc_score

    ok = net(xte).argmax(1) == yte_noisy
    xc, yc = xte[ok], yte_noisy[ok]
    res = PGD(eps=0.1, steps=5, seed=0)(net, xc, yc)
    det = dets["Maha"]
    s = torch.cat([det.score(net, xc), det.score(net, res.x_adv[res.success])]).numpy()
    lab = np.r_[np.zeros(len(xc)), np.ones(int(res.success.sum()))]
    row = by[("Maha", "PGD", False)]
    assert row["n_adv"] == int(res.success.sum())
    assert row["auroc"] == pytest.approx(roc_auc_score(lab, s))
    assert 0 <= row["clean_accuracy"] <= 1 and 0 <= row["evasion_rate"] <= row["success_rate"] <= 1
    # an attack that never succeeds gives a NaN row with a note, not an exception
    noise = by[("LOO", "noise", False)]
    if noise["n_adv"] == 0:
        assert math.isnan(noise["auroc"]) and "no successful" in noise["note"]
    # views and persistence
    md = D.to_markdown(rep)
    assert md.count("\n") == len(rep.rows) + 1 and "| yes |" in md
    assert "\\toprule" in D.to_latex(rep) and "TPR@1\\%" in D.to_latex(rep)
    import json

    json.dumps(D.to_dict(rep))
    back = DetectionReport.load(rep.save(tmp_path / "rep.pt"))
    assert back.rows == rep.rows
    import matplotlib.pyplot as plt
    import xadv.plot as xp

    keys = [k for k in back.roc if k.startswith("Maha|")]
    assert "Maha|adaptive PGD|eps=0.2|True" in keys
    fig = xp.roc_curve(back, keys=keys)
    assert len(fig.axes[0].lines) == len(keys) + 1  # the curves and the chance line
    plt.close(fig)
    with pytest.raises(TypeError, match="DetectionReport"):
        D.to_markdown({"rows": []})


def test_detection_experiment_runs_end_to_end_small():
    """The table's code path (all attacks incl. C&W and the black-box one), at toy sizes."""
    from xadv.experiments import detection

    res = detection.run(n_train=60, n_test=16, n_adaptive=4, adaptive_steps=2,
                        detectors={"Saliency-CNN": D.SaliencyDetector(epochs=2), "Mahalanobis": D.MahalanobisDetector()})
    rep = res["report"]
    attacks = {(r["attack"], r["budget"], r["held_out"], r["adaptive"]) for r in rep.rows}
    assert ("PGD", "eps=0.1", False, False) in attacks and ("PGD", "eps=0.2", True, False) in attacks
    assert ("CW-L2", "kappa=5", True, False) in attacks
    assert ("black-box (surrogate)", "eps=0.2", True, False) in attacks
    assert ("adaptive PGD", "eps=0.2", True, True) in attacks
    assert ("AutoAttack", "eps=0.1", True, False) in attacks
    assert len(rep.rows) == 2 * (9 + 2)
    assert res["markdown"].startswith("| detector |")
    assert set(detection.summary(rep)) == {"Saliency-CNN"}


def test_detection_experiment_adaptive_presets():
    from xadv.experiments import detection

    single = detection.adaptive_configs(0.1)
    assert single == [{"eps": 0.1, "seed": 0, "batch_size": 64, "steps": 20}]
    conv = detection.adaptive_configs(0.2, "converged", seed=3)
    assert len(conv) == 7 and all(c["steps"] == 100 and c["eps"] == 0.2 and c["seed"] == 3 for c in conv)
    assert any(c.get("random_start") is False for c in conv)
    assert any(c.get("surrogate") == "soft_forest" for c in conv) and any(c.get("restarts", 1) > 1 for c in conv)
    assert sorted(c["lam"] for c in conv if c.get("mode") == "weighted") == [0.1, 1.0, 10.0]
    assert all(c["runner_ups"] == 3 for c in conv if c.get("mode") == "weighted")
    for c in conv:  # every configuration is a valid AdaptiveAttack
        kw = {k: v for k, v in c.items() if k != "surrogate"}
        assert repr(D.AdaptiveAttack(_FittedStub(), **kw)).startswith("AdaptiveAttack(")
    with pytest.raises(ValueError, match="preset"):
        detection.adaptive_configs(0.1, "strong")


class _FittedStub(D.Detector):
    """The smallest fitted detector (constant score) to construct attacks without fitting."""
    fitted_ = True
    threshold_ = 0.0

    def _score(self, model, x, create_graph):
        return x.reshape(len(x), -1).sum(1) * 0
