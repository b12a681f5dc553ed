"""Properties of the metric families from their papers, the report card and input checks."""
import math

import pytest
import torch

import xadv
import xadv.metrics as M


@pytest.fixture(scope="module")
def linear():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x = torch.rand(4, 1, 4, 4)
    a = x * net[1].weight[0].detach().reshape(1, 1, 4, 4)  # exact contributions to logit 0
    return net, x, a


def test_exact_linear_contributions(linear):
    net, x, a = linear
    assert torch.allclose(M.sensitivity_n(net, x, 0, a, n=5, n_runs=20, seed=0), torch.ones(4), atol=1e-5)
    assert torch.allclose(M.faithfulness_estimate(net, x, 0, a), torch.ones(4), atol=1e-5)
    assert (M.completeness(net, x, 0, a) < 1e-5).all()
    assert (M.completeness(net, x, 0, -a) > 1e-3).all()
    # monotonicity: revealing features with positive contributions only raises the logit
    w = net[1].weight[0].detach()
    xp = torch.rand(4, 1, 4, 4)
    ap = xp * w.reshape(1, 1, 4, 4)
    pos = (w > 0).reshape(1, 1, 4, 4).float()
    assert M.monotonicity(net, xp * pos, 0, ap * pos, softmax=False).min() == 1.0


def test_input_invariance_kindermans():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    x = torch.rand(3, 1, 4, 4)
    assert (M.input_invariance(net, x, 0, explainer="saliency") < 1e-5).all()
    assert (M.input_invariance(net, x, 0, explainer="input_x_gradient") > 0.1).all()
    assert (M.input_invariance(net, x, 0, explainer=xadv.explainers.get("ig", steps=8)) > 0.1).all()


def test_mprt_independent_restores_and_model_unchanged():
    m = xadv.zoo.digits_cnn()
    x, y = xadv.data.load_digits("test")
    x, y = x[:4], y[:4]
    before = {k: v.clone() for k, v in m.state_dict().items()}
    cas = M.model_parameter_randomisation(m, x, y, abs=True)
    ind = M.model_parameter_randomisation(m, x, y, abs=True, independent=True)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert torch.allclose(cas.original, torch.ones(4))
    # the first step randomises the same layer either way
    assert torch.allclose(cas.scores[0], ind.scores[0])
    assert cas.scores[-1].mean() < ind.scores[-1].mean()  # cascading destroys more
    # saliency passes on the digits CNN, input x gradient does not (the hand check)
    assert M.mprt(m, x, y).mean() < 0.5 < M.mprt(m, x, y, explainer="input_x_gradient").mean()


def test_plain_function_source_and_nan_refused():
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    x = torch.rand(3, 4)

    def f(model, xb, yb):
        return xadv.explain(model, xb, method="saliency", target=yb).attributions.numpy()

    assert torch.allclose(M.avg_sensitivity(net, x, 0, explainer=f, seed=0),
                          M.avg_sensitivity(net, x, 0, explainer="saliency", seed=0), equal_nan=True)
    bad = torch.full((3, 4), float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        M.sparseness(bad)
    with pytest.raises(ValueError, match="radius"):
        M.avg_sensitivity(net, x, 0, radius=-1.0)
    with pytest.raises(TypeError, match="differentiable"):
        M.avg_sensitivity(net, x, 0, explainer=f, mode="attack")


def test_attack_mode_finds_at_least_its_random_start():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Softplus(), torch.nn.Linear(16, 3))
    x = torch.rand(5, 6)
    y = net(x).argmax(1)
    rnd = M.relative_input_stability(net, x, y, explainer="saliency", radius=0.03, n_samples=20, seed=0,
                                     nan_on_change=False)
    atk = M.relative_input_stability(net, x, y, explainer="saliency", mode="attack",
                                     attack=dict(eps=0.03, steps=20), seed=0)
    ok = ~torch.isnan(atk)
    assert ok.any() and (atk[ok] >= 0.9 * rnd[ok]).all()


def test_report_card():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    x = torch.rand(4, 1, 4, 4)
    mask = torch.zeros(4, 1, 4, 4, dtype=torch.bool)
    mask[..., :2, :2] = True
    card = M.evaluate(net, x, None, ["saliency", "input_x_gradient"],
                      ["sparseness", "input_invariance", "pointing_game", "faithfulness_estimate"], mask=mask)
    assert set(card.explainers) == {"saliency", "input_x_gradient"}
    assert card.directions["input_invariance"] == "lower"
    assert card.values["saliency"]["input_invariance"] < card.values["input_x_gradient"]["input_invariance"]
    assert "input_invariance ↓" in card.to_markdown() and "\\toprule" in card.to_latex()
    assert len(card.ranking()) == 2
    r = card.ranks()
    assert r["saliency"]["input_invariance"] == 1.0
    import matplotlib
    matplotlib.use("Agg")
    fig = card.figure()
    assert fig.axes
    before = dict(matplotlib.rcParams)
    dark = card.figure(style="dark")              # a style for this figure only
    assert dark.get_facecolor()[:3] == (0.0, 0.0, 0.0) and fig.get_facecolor()[:3] == (1.0, 1.0, 1.0)
    assert dict(matplotlib.rcParams) == before
    best, bh = M.bhatt_aggregate(net, x, None, ["saliency", "input_x_gradient"], n_samples=3)
    assert len(bh.values) == 3 and best
    w = M.warnecke_criteria(net, x, None, ["saliency"], attack={"steps": 3})
    assert set(w.directions) == {"descriptive_accuracy", "sparsity", "stability", "efficiency", "robustness",
                                 "completeness"}
    assert not math.isnan(w.values["saliency"]["robustness"])


def test_metadata_complete():
    for name, fn in M.REGISTRY.items():
        assert fn.family in M.FAMILIES and fn.direction in ("higher", "lower"), name
        assert fn.__doc__ and "Returns" in fn.__doc__, name


def test_evaluation_experiment_small():
    from xadv.experiments.evaluation import planted_evidence, run

    x, y, mask = planted_evidence(3, seed=1)
    assert mask.any() and mask.shape == x.shape
    assert torch.equal(planted_evidence(3, seed=1)[0], x)  # deterministic
    res = run(n=3, explainers=("saliency", "input_x_gradient", "smoothgrad"), models=("digits_cnn",))
    s = res["rows"]["digits_cnn"]["sanity"]
    assert s["saliency"]["passes_invariance"] == 1.0 and s["input_x_gradient"]["passes_invariance"] == 0.0
    assert "Sanity checks" in res["markdown"] and "Warnecke" in res["markdown"]


def test_evaluation_experiment_resnet_half():
    from xadv.experiments.evaluation import run

    res = run(n=2, explainers=("saliency",), models=("small_resnet",))
    rows = res["rows"]["small_resnet"]
    assert set(rows["sanity"]) == {"saliency"}
    assert rows["sanity"]["saliency"]["passes_invariance"] == 1.0
    assert all(math.isfinite(v) for v in rows["metrics"]["saliency"].values())
    assert "small_resnet" in res["markdown"]
