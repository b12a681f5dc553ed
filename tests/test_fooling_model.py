"""Model-space fooling: Heo et al.'s manipulation, Slack et al.'s scaffolding (real lime/shap), Dimanov et al."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import xadv
import xadv.data
import xadv.zoo
from xadv.fooling import FeatureHiding, ModelManipulation, Scaffolding, add_unrelated_features
from xadv.fooling.model_space import ManipulationResult, region_mask
from xadv.fooling.scaffolding import ThresholdModel, feature_ranks, lime_perturbations, shap_perturbations


@pytest.fixture(scope="module")
def digits():
    torch.manual_seed(0)
    model = xadv.zoo.digits_cnn(pretrained=True)
    x, y = xadv.data.load_digits("train")
    xt, yt = xadv.data.load_digits("test")
    return model, x[:600], y[:600], xt[:200], yt[:200]


@pytest.fixture(scope="module")
def compas():
    ds = xadv.data.load_compas()
    tr, te = ds.split(0.2, seed=0)
    mu, sd = tr.X.mean(0), tr.X.std(0)
    return ds, (tr.X - mu) / sd, tr.y, (te.X - mu) / sd, te.y


def test_model_manipulation_topk_fools_and_keeps_accuracy(digits, tmp_path):
    model, x, y, xt, yt = digits
    state = {k: v.clone() for k, v in model.state_dict().items()}
    res = ModelManipulation("gradcam", kind="topk", epochs=1, lam=1.0, lr=3e-3)(model, x, y, xt, yt)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert res.model is not model and not res.model.training
    assert res.fsr_before == 0.0 and res.fsr > 0.5
    assert res.accuracy_after > res.accuracy_before - 0.03
    assert res.scores.shape == (200,) and len(res.history) == 1
    back = ManipulationResult.load(res.save(tmp_path / "m.pt"))
    assert back.fsr == res.fsr


def test_model_manipulation_location_moves_mass_into_the_corner(digits):
    model, x, y, xt, yt = digits
    res = ModelManipulation("gradcam", kind="location", region="corner", lam=5.0, epochs=2)(model, x, y, xt, yt)
    assert res.fsr > res.fsr_before + 0.2
    assert res.accuracy_after > 0.9


def test_model_manipulation_active_and_smoothed_saliency(digits):
    model, x, y, xt, yt = digits
    active = ModelManipulation("gradcam", kind="active", classes=(3, 8), epochs=1, lr=3e-3)(model, x, y, xt, yt)
    assert active.fsr > active.fsr_before + 0.3
    sal = ModelManipulation("saliency", kind="center_mass", beta=5.0, epochs=1)(model, x[:200], y[:200],
                                                                               xt[:50], yt[:50])
    assert 0 <= sal.fsr <= 1 and all(type(m) is not torch.nn.Softplus for m in sal.model.modules())


def test_region_mask_and_bad_arguments():
    m = region_mask((10, 10), "frame", width=0.1)
    assert int(m.sum()) == 100 - 64
    assert int(region_mask((10, 10), "corner").sum()) == 25
    with pytest.raises(ValueError, match="classes"):
        ModelManipulation(kind="active")
    with pytest.raises(ValueError, match="kind"):
        ModelManipulation(kind="nope")
    with pytest.raises(ValueError, match="region"):
        region_mask((4, 4), "middle")


def test_perturbation_samplers():
    rng = np.random.default_rng(0)
    X = np.c_[rng.normal(size=(50, 2)), rng.integers(0, 2, 50)]
    lp = lime_perturbations(X, 3, seed=1)
    sp = shap_perturbations(X, 3, seed=1)
    assert lp.shape == sp.shape == (150, 3)
    assert np.array_equal(lp, lime_perturbations(X, 3, seed=1))
    # SHAP-like rows mix the row with background values that exist in the data
    assert set(np.unique(sp[:, 2])) <= {0.0, 1.0}


@pytest.fixture(scope="module")
def scaffold(compas):
    ds, Xtr, _, Xte, _ = compas
    Xtr = add_unrelated_features(Xtr, 1, seed=0)
    Xte = add_unrelated_features(Xte, 1, seed=1)
    Xtr[:, -1] = (Xtr[:, -1] - 0.5) * 2
    Xte[:, -1] = (Xte[:, -1] - 0.5) * 2
    biased = ThresholdModel(ds.sensitive, threshold=0.0)
    innocuous = ThresholdModel(Xtr.shape[1] - 1, threshold=0.0)
    sc = Scaffolding(biased, innocuous, perturbations="lime", n_per_row=5, threshold=0.3, seed=0).fit(Xtr)
    return ds, sc, Xtr, Xte


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_scaffolding_hides_the_sensitive_feature_from_real_lime(scaffold):
    ds, sc, Xtr, Xte = scaffold
    rep = sc.evaluate(Xtr, Xte, ds.sensitive, unrelated=Xtr.shape[1] - 1, methods=("lime",), n_explain=12,
                      lime_samples=500, categorical=[3, 4, 5, 6, 7])
    assert rep.top_before["lime"] == 1.0          # the biased model is visibly biased ...
    assert rep.top_after["lime"] <= 0.25          # ... the scaffold is not
    assert rep.unrelated_top_after["lime"] >= 0.75
    assert rep.fidelity > 0.97                    # yet it decides like the biased model on real rows
    assert sc.ood_accuracy_ > 0.9
    assert rep.ranks["lime"]["after"].shape == (12, Xtr.shape[1])


@pytest.mark.reference
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_feature_ranks_with_real_shap_find_the_only_used_feature(compas):
    _, Xtr, _, Xte, _ = compas
    f = ThresholdModel(1, threshold=0.0).predict_proba
    state = np.random.get_state()
    r = feature_ranks(f, Xtr[:300], Xte[:4], method="shap", shap_samples=60)
    assert (r[:, 1] == 1).all()
    assert all(np.array_equal(a, b) for a, b in zip(state[1:2], np.random.get_state()[1:2]))
    r2 = feature_ranks(f, Xtr[:300], Xte[:4], method="lime", lime_samples=300)
    assert (r2[:, 1] == 1).all()


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_feature_hiding_transfers_to_lime_and_shap(compas):
    ds, Xtr, ytr, Xte, yte = compas
    torch.manual_seed(0)
    xtr, xte = torch.tensor(Xtr, dtype=torch.float32), torch.tensor(Xte, dtype=torch.float32)
    ytr_t, yte_t = torch.tensor(ytr).long(), torch.tensor(yte).long()
    net = torch.nn.Sequential(torch.nn.Linear(xtr.shape[1], 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xtr), ytr_t).backward()
        opt.step()
    res = FeatureHiding(ds.sensitive, lam=10.0, epochs=20, n_explain=10, lime_samples=300, shap_samples=80)(
        net, xtr, ytr_t, xte, yte_t)
    assert res.gradient_share_after < 0.5 * res.gradient_share_before
    assert res.accuracy_after > res.accuracy_before - 0.02
    assert res.rank_after["gradient"] > res.rank_before["gradient"]
    assert res.rank_after["lime"] > res.rank_before["lime"]
    assert res.rank_after["shap"] > res.rank_before["shap"]


def test_model_manipulation_says_when_functional_relus_cannot_be_smoothed():
    from xadv.nn import SmoothingWarning

    class Functional(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
            self.fc = torch.nn.Linear(4 * 8 * 8, 3)

        def forward(self, z):
            return self.fc(torch.nn.functional.relu(self.conv(z)).flatten(1))

    torch.manual_seed(0)
    net = Functional()
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 3, (8,))
    with pytest.warns(SmoothingWarning, match="ModelManipulation: the model applies relu 1 time"):
        ModelManipulation("saliency", kind="center_mass", beta=5.0, epochs=1, batch_size=4)(net, x, y, x, y)
    assert net.training  # the user's mode is kept
