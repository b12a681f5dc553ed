"""Bad input gets a clear error: one table of (entry point, bad input, exception, message).

A new entry point gets the same checks by adding its rows (or its registry name to
``EXPLAINERS``): every explainer in the registry runs the generic input rows.
"""
from __future__ import annotations

import math

import numpy as np

import pytest
import torch
from torch import nn

import xadv
from xadv.explainers import GradientSHAP, IntegratedGradients, LIME, Occlusion, SmoothGrad
from xadv.explanation import Explanation


def _net(k=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 36, k)).eval()


X = torch.rand(4, 1, 6, 6)
SMALL = {"smoothgrad": {"n_samples": 2, "seed": 0}, "integrated_gradients": {"steps": 2},
         "lime": {"n_samples": 8, "seed": 0}, "gradient_shap": {"n_samples": 2, "seed": 0},
         "expected_gradients": {"n_samples": 2, "seed": 0}}
# tabular_lime: tabular rows (test_lime); attention_rollout needs a transformer (test_adapter_layers)
EXPLAINERS = [n for n in xadv.explainers.names() if n not in ("tabular_lime", "attention_rollout")]
#: rows that are valid input for an explainer: token ids are what FeatureLIME and Occlusion explain
VALID_FOR = {("feature_lime", "int dtype"), ("occlusion", "int dtype")}

#: (name, x, target, exception, message regex) run on every explainer in EXPLAINERS
INPUT_ROWS = [
    ("nan", X.clone().index_fill_(0, torch.tensor([1]), math.nan), None, ValueError, "NaN or Inf"),
    ("inf", X.clone().index_fill_(0, torch.tensor([0]), math.inf), None, ValueError, "NaN or Inf"),
    ("int dtype", (X * 255).long(), None, TypeError, "floating point"),
    ("wrong rank", X[0, 0, 0], None, ValueError, "batch-first|dimensions"),
    ("empty", X[:0], None, ValueError, "empty batch"),
    ("target out of range", X, 7, ValueError, "out of range"),
    ("negative target", X, -1, ValueError, "out of range"),
    ("target batch mismatch", X, torch.tensor([0, 1]), ValueError, "entries but the batch has"),
    ("float target", X, torch.tensor([0.5] * 4), TypeError, "integer tensor"),
    ("not a tensor", X.numpy(), None, TypeError, "torch.Tensor"),
]


@pytest.mark.parametrize("row", INPUT_ROWS, ids=[r[0] for r in INPUT_ROWS])
@pytest.mark.parametrize("name", EXPLAINERS)
def test_explainer_bad_inputs(name, row):
    rid, x, target, exc, msg = row
    if (name, rid) in VALID_FOR:
        pytest.skip(f"{rid} is valid input for {name}")
    ex = xadv.explainers.get(name, **SMALL.get(name, {}))
    with pytest.raises(exc, match=msg):
        ex(_net(), x, target)


#: (id, callable that must raise, exception, message regex)
CALL_ROWS = [
    ("unknown explainer", lambda: xadv.explainers.get("nope"), ValueError, "unknown explainer.*known"),
    ("IG nan baseline", lambda: IntegratedGradients(baseline=math.nan), ValueError, "baseline.*finite"),
    ("IG inf baseline tensor", lambda: IntegratedGradients(baseline=torch.tensor([math.inf])), ValueError,
     "baseline contains NaN or Inf"),
    ("GradientSHAP nan background", lambda: GradientSHAP(background=torch.full((2, 1, 6, 6), math.nan)),
     ValueError, "background contains NaN"),
    ("GradientSHAP inf noise", lambda: GradientSHAP(noise=math.inf), ValueError, "noise.*finite"),
    ("Occlusion inf baseline", lambda: Occlusion(baseline=math.inf), ValueError, "baseline.*finite"),
    ("LIME nan fill", lambda: LIME(fill=math.nan), ValueError, "fill.*finite"),
    ("SmoothGrad inf noise", lambda: SmoothGrad(noise=math.inf), ValueError, "noise.*finite"),
    ("steps wrong type", lambda: IntegratedGradients(steps=2.5), TypeError, "steps must be an integer"),
    ("steps negative", lambda: IntegratedGradients(steps=-3), ValueError, "steps must be an integer >= 1"),
    ("Explanation[17] of 4", lambda: _explanation()[17], IndexError, r"out of range for 4 samples.*0\.\.3"),
    ("Explanation[-5] of 4", lambda: _explanation()[-5], IndexError, "out of range"),
    ("inference_mode", lambda: _in_inference(), RuntimeError, "inference_mode.*outside"),
    ("similarity empty batch", lambda: xadv.metrics.similarity.spearman(torch.rand(0, 4, 4), torch.rand(0, 4, 4)),
     ValueError, "empty"),
    ("similarity NaN maps", lambda: xadv.metrics.similarity.ssim(torch.full((1, 8, 8), math.nan),
                                                                torch.rand(1, 8, 8)), ValueError, "NaN"),
    ("max_sensitivity negative radius", lambda: xadv.metrics.max_sensitivity("saliency", _net(), X, radius=-0.1,
                                                                             n_samples=2), ValueError, "radius must be > 0"),
    ("max_sensitivity nan radius", lambda: xadv.metrics.max_sensitivity("saliency", _net(), X, radius=math.nan,
                                                                        n_samples=2), ValueError, "radius must be a finite"),
]


def _explanation():
    return xadv.explain(_net(), X, method="saliency")


def _in_inference():
    with torch.inference_mode():
        return xadv.explain(_net(), X, method="saliency")


@pytest.mark.parametrize("row", CALL_ROWS, ids=[r[0] for r in CALL_ROWS])
def test_bad_calls(row):
    _, fn, exc, msg = row
    with pytest.raises(exc, match=msg):
        fn()


def test_wrong_type_is_also_a_value_error_for_old_code():
    with pytest.raises(ValueError):
        IntegratedGradients(steps="many")


def test_explanation_index_in_range_still_works():
    e = _explanation()
    assert len(e[3]) == 1 and torch.equal(e[-1].attributions, e.attributions[3:])


@pytest.fixture(scope="module")
def fitted():
    from xadv.detectors import MahalanobisDetector

    net = _net()
    g = torch.Generator().manual_seed(0)
    xc, xa = torch.rand(40, 1, 6, 6, generator=g) * 0.5, torch.rand(40, 1, 6, 6, generator=g)
    return net, MahalanobisDetector(seed=0).fit(net, xc, xa)


def test_detector_refuses_other_class_count_and_shape(fitted):
    net, det = fitted
    with pytest.raises(ValueError, match="model has 5 classes but the detector was fitted on a model with 3"):
        det.score(_net(5), X)
    with pytest.raises(ValueError, match="per-sample shape"):
        det.score(net, torch.rand(2, 1, 5, 5))


def test_detector_predict_checks(fitted):
    from xadv.detectors import SaliencyDetector

    net, det = fitted
    with pytest.raises(ValueError, match="threshold is NaN"):
        det.predict(net, X, threshold=math.nan)
    with pytest.raises(TypeError, match="threshold must be a number"):
        det.predict(net, X, threshold="high")
    with pytest.raises(RuntimeError, match="not fitted yet"):
        SaliencyDetector().predict(net, X)


def test_ssim_of_constant_equal_maps_is_one():
    from xadv.metrics.similarity import ssim

    for v in (0.0, 3.0):
        m = torch.full((2, 8, 8), v)
        assert torch.equal(ssim(m, m), torch.ones(2))


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_constant_gradcam_map_stays_exactly_constant(mode):
    from xadv.explainers import GradCAM

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(7), nn.Flatten(),
                        nn.Linear(98, 3)).eval()
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].bias.fill_(0.1234567)  # activations constant over space -> constant 7x7 CAM
    e = GradCAM(layer="2", interpolation=mode, relu=False)(net, torch.rand(2, 1, 28, 28), 0)
    assert e.attributions.abs().max() > 0
    a = e.attributions
    assert torch.equal(a, a.flatten(1)[:, :1, None, None].expand_as(a))


@pytest.mark.parametrize("data,labels,msg", [
    (np.full((2, 3072), 300.7), [0, 1], "pixel values must be whole numbers in 0..255"),
    (np.full((2, 3072), -1), [0, 1], "pixel values must be whole numbers in 0..255"),
    (np.zeros((2, 3072), dtype=np.uint8), [0, 99], "labels must be integers in 0..9"),
    (np.zeros((2, 3072), dtype=np.uint8), [0, -1], "labels must be integers in 0..9"),
])
def test_cifar_loader_refuses_out_of_range_values(tmp_path, data, labels, msg):
    import pickle

    from xadv.data import load_cifar10

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps({b"data": data, b"labels": labels}, protocol=2))
    with pytest.raises(ValueError, match=msg):
        load_cifar10(tmp_path, "train")


# ------------------------------------------------------------------ attacks
import xadv.attacks as A  # noqa: E402
import xadv.fooling as Fo  # noqa: E402


class _WrongShape(nn.Module):
    """A model whose output has the wrong shape."""

    def __init__(self, kind):
        super().__init__()
        self.kind, self.body = kind, _net()

    def forward(self, x):
        z = self.body(x)
        return {"1-d": z[:, 0], "3-d": z[:, :, None].expand(-1, -1, 2), "batch": z[:1]}[self.kind]


def _linear(k=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, k)).eval()


Y = torch.tensor([0, 1, 2, 0])
#: every attack runs the generic rows; a new attack is one line here
ATTACKS = {
    "FGSM": lambda: A.FGSM(eps=0.1), "PGD": lambda: A.PGD(eps=0.1, steps=2, seed=0),
    "RFGSM": lambda: A.RFGSM(eps=0.1, seed=0), "ExplainerPGD": lambda: A.ExplainerPGD("saliency", eps=0.1, steps=2),
    "CW": lambda: A.CarliniWagnerL2(steps=2, binary_search_steps=1), "DeepFool": lambda: A.DeepFool(steps=2),
    "Deletion": lambda: A.DeletionAttack(k=3), "APGD": lambda: A.APGD(eps=0.1, steps=2),
    "Square": lambda: A.Square(eps=0.1, n_queries=4),
    "Surrogate": lambda: A.SurrogateAttack(steps=1, n_samples=4, patch=2, seed=0),
}
#: (id, x, y, model kind (None: the conv net), exception, message regex)
ATTACK_ROWS = [
    ("nan", INPUT_ROWS[0][1], Y, None, ValueError, "NaN or Inf"),
    ("inf", INPUT_ROWS[1][1], Y, None, ValueError, "NaN or Inf"),
    ("int dtype", (X * 255).long(), Y, None, TypeError, "floating point"),
    ("wrong rank", X[0, 0, 0], None, None, ValueError, "batch-first|dimensions"),
    ("empty", X[:0], Y[:0], None, ValueError, "empty batch"),
    ("5-D into a Conv2d model", X[:, None], Y, None, ValueError, r"5-D.*Conv2d\) takes 4-D batches \(N, 1, H, W\)"),
    ("not a tensor", X.numpy(), Y, None, TypeError, "torch.Tensor"),
    ("label out of range", X, 7, None, ValueError, "out of range.*3 classes"),
    ("negative label", X, -1, None, ValueError, "out of range.*>= 0"),
    ("label batch mismatch", X, torch.tensor([0, 1]), None, ValueError, "entries but the batch has"),
    ("float labels", X, torch.tensor([0.5] * 4), None, TypeError, "integer tensor"),
    # a per-sample scalar (N,) is a one-score model (xadv.adapt): labels 1 and 2 do not exist
    ("model output 1-d", X, Y, "1-d", ValueError, r"out of range: the model has 1 classes"),
    ("model output 3-d", X, Y, "3-d", ValueError, r"must return shape \(N, K\) for a batch of N=4, got \(4, 3, 2\)"),
    ("model output other batch", X, Y, "batch", ValueError, r"must return shape \(N, K\) for a batch of N=4, got \(1, 3\)"),
]


@pytest.mark.parametrize("row", ATTACK_ROWS, ids=[r[0] for r in ATTACK_ROWS])
@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_bad_inputs(name, row):
    _, x, y, kind, exc, msg = row
    model = _net() if kind is None else _WrongShape(kind)
    with pytest.raises(exc, match=msg):
        ATTACKS[name]()(model, x, y)


ATTACK_CALLS = [
    ("FGSM eps<0", lambda: A.FGSM(eps=-0.1), ValueError, "eps must be a finite number >= 0"),
    ("FGSM eps nan", lambda: A.FGSM(eps=math.nan), ValueError, "eps must be a finite number"),
    ("PGD eps inf", lambda: A.PGD(eps=math.inf), ValueError, "eps must be a finite number"),
    ("PGD steps=0", lambda: A.PGD(steps=0), ValueError, "steps"),
    ("PGD steps=2.5", lambda: A.PGD(steps=2.5), TypeError, "steps must be an integer"),
    ("PGD norm l3", lambda: A.PGD(norm="l3"), ValueError, "norm must be one of"),
    ("PGD reversed bounds", lambda: A.PGD(bounds=(1.0, 0.0)), ValueError, "bounds"),
    ("JSMA target above range", lambda: A.JSMA(gamma=0.5)(_linear(), X, torch.tensor([7, 7, 7, 7])), ValueError,
     r"target out of range: the model has 3 classes \(0\.\.2\)"),
    ("JSMA negative target", lambda: A.JSMA(gamma=0.5)(_linear(), X, torch.tensor([-1, 0, 0, 0])), ValueError,
     r"target out of range: target labels are class indices >= 0, got \[-1, 0, 0, 0\]"),
    ("Deletion k<0", lambda: A.DeletionAttack(k=-3), ValueError, "k"),
    ("Deletion fraction>1", lambda: A.DeletionAttack(fraction=1.5), ValueError, "fraction"),
    ("float16 model, float32 x", lambda: A.DataFreeUAP(steps=2, n_samples=2, seed=0)(_net().half(), X), ValueError,
     r"x is torch.float32 but the model's parameters are torch.float16.*x.to\(torch.float16\)"),
    ("AdversarialPatch size=0", lambda: A.AdversarialPatch(size=0), ValueError, "size"),
    ("AdversarialPatch target out of range",
     lambda: A.AdversarialPatch(size=2, target=7, steps=1, batch_size=4, seed=0).fit(_net(), X), ValueError,
     r"target 7 out of range: the model has 3 classes"),
]


@pytest.mark.parametrize("row", ATTACK_CALLS, ids=[r[0] for r in ATTACK_CALLS])
def test_attack_bad_calls(row):
    _, fn, exc, msg = row
    with pytest.raises(exc, match=msg):
        fn()


def test_jsma_in_range_target_still_works():
    res = A.JSMA(gamma=0.5)(_linear(), 0.5 * X, torch.tensor([2, 2, 2, 2]))
    assert (res.norms["l0"] <= 18).all() and res.y.tolist() == [2, 2, 2, 2]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_data_free_uap_in_half_precision_is_finite_and_matches_float32(dtype):
    """Half-precision model and input: a finite perturbation within eps (it was all NaN in float16)."""
    atk = A.DataFreeUAP(eps=0.1, steps=5, n_samples=4, seed=0)
    res = atk(_net().to(dtype), X.to(dtype))
    assert res.x_adv.dtype == dtype and torch.isfinite(res.x_adv).all()
    p = atk.perturbation_
    assert p.dtype == dtype and torch.isfinite(p).all() and float(p.abs().max()) <= 0.1 + 1e-3
    assert float(p.abs().max()) > 0.05  # the optimisation moved (the ball's edge under sign-like Adam steps)
    p32 = A.DataFreeUAP(eps=0.1, steps=5, n_samples=4, seed=0).fit(_net(), X)
    agree = (torch.sign(p.float()) == torch.sign(p32)).float().mean()
    assert agree > 0.8, agree  # same optimisation up to rounding


# ------------------------------------------------------------------ fooling attacks
FOOLING = {
    "TopK": lambda **kw: Fo.TopKAttack("saliency", **{"eps": 0.05, "steps": 2, "seed": 0, **kw}),
    "MassCenter": lambda **kw: Fo.MassCenterAttack("saliency", **{"eps": 0.05, "steps": 2, "seed": 0, **kw}),
    "RandomSign": lambda **kw: Fo.RandomSignAttack("saliency", **{"eps": 0.05, "steps": 2, "seed": 0, **kw}),
}
FOOLING_ROWS = [r for r in ATTACK_ROWS if r[0] not in ("model output 1-d", "model output other batch")]


@pytest.mark.parametrize("row", FOOLING_ROWS, ids=[r[0] for r in FOOLING_ROWS])
@pytest.mark.parametrize("name", list(FOOLING))
def test_fooling_bad_inputs(name, row):
    rid, x, y, kind, exc, msg = row
    if rid == "negative label":
        msg = "out of range"
    model = _net() if kind is None else _WrongShape(kind)
    with pytest.raises(exc, match=msg if "model output" not in rid else "shape|classes|output"):
        FOOLING[name]()(model, x, y)


@pytest.mark.parametrize("kw,exc,msg", [
    ({"eps": -1.0}, ValueError, "eps"), ({"eps": math.nan}, ValueError, "eps"), ({"k": 0}, ValueError, "k"),
    ({"k": 1.5}, ValueError, "k"), ({"steps": 0}, ValueError, "steps"),
], ids=["eps<0", "eps nan", "k=0", "k=1.5", "steps=0"])
@pytest.mark.parametrize("name", list(FOOLING))
def test_fooling_bad_parameters(name, kw, exc, msg):
    with pytest.raises(exc, match=msg):
        FOOLING[name](**kw)(_net(), X)


@pytest.mark.parametrize("name", ["TopK", "MassCenter"])
def test_fooling_a_linear_model_is_a_clear_error(name):
    """The gradient map of a linear model is the same for every input: nothing to fool in input space."""
    with pytest.raises(ValueError, match="does not depend on the input.*linear in x"):
        FOOLING[name]()(_linear(), X, Y)


def test_random_sign_baseline_on_a_linear_model_is_valid():
    res = FOOLING["RandomSign"]()(_linear(), X, Y)
    assert torch.allclose(res.explanation_adv.attributions, res.explanation_clean.attributions)


@pytest.mark.parametrize("target,msg", [
    (torch.rand(4, 1, 5, 5), "shape"), (torch.full((4, 1, 6, 6), math.nan), "NaN"), (torch.rand(2, 1, 6, 6), "batch|shape"),
], ids=["map shape", "map NaN", "map batch"])
def test_targeted_manipulation_bad_target_maps(target, msg):
    with pytest.raises(ValueError, match=msg):
        Fo.TargetedManipulation(target, steps=2)(_net(), X)


# ------------------------------------------------------------------ the input check against the first layer
class _Video(nn.Module):
    """Takes (N, T, C, H, W) and folds the frames into the batch for its Conv2d: 5-D input is valid."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 2, 3, padding=1), nn.Linear(2 * 36, 3)

    def forward(self, x):
        n, t = x.shape[:2]
        z = self.conv(x.reshape((n * t,) + x.shape[2:])).relu().flatten(1)
        return self.fc(z).reshape(n, t, 3).mean(1)


def test_models_that_reshape_their_input_pass_the_first_layer_check():
    x = torch.rand(2, 3, 1, 6, 6)
    e = xadv.explain(_Video().eval(), x, method="saliency")
    assert e.attributions.shape == x.shape
    res = A.PGD(eps=0.1, steps=2, seed=0)(_Video().eval(), x, torch.tensor([0, 1]))
    assert res.x_adv.shape == x.shape


def test_first_layer_check_names_conv1d_and_conv3d_shapes():
    c1 = nn.Sequential(nn.Conv1d(2, 2, 3), nn.Flatten(), nn.LazyLinear(3))
    with pytest.raises(ValueError, match=r"Conv1d\) takes 3-D batches \(N, 2, L\)"):
        xadv.explain(c1, torch.rand(2, 2, 5, 5), method="saliency")
    c3 = nn.Sequential(nn.Conv3d(1, 2, 3), nn.Flatten(), nn.LazyLinear(3))
    with pytest.raises(ValueError, match=r"Conv3d\) takes 5-D batches \(N, 1, D, H, W\)"):
        xadv.explain(c3, torch.rand(2, 1, 5, 5), method="saliency")


def test_first_layer_check_leaves_the_model_as_it_was():
    net = _net().train()
    bn = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(72, 3)).train()
    state = {k: v.clone() for k, v in bn.state_dict().items()}
    for m in (net, bn):
        with pytest.raises(ValueError, match="5-D"):
            xadv.explain(m, X[:, None], method="saliency")
    assert net.training and bn.training
    assert all(torch.equal(state[k], v) for k, v in bn.state_dict().items())


# ------------------------------------------------------------------ plots
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import xadv.plot as xp  # noqa: E402


@pytest.fixture(scope="module")
def plotted():
    e = _explanation()
    res = A.FGSM(eps=0.1)(_net(), X, Y)
    fres = Fo.TopKAttack("saliency", eps=0.05, steps=2, seed=0)(_net(), X, Y)
    return e, res, fres


PLOT_ROWS = [
    ("heatmap index=17", lambda e, r, f: xp.heatmap(e, index=17), IndexError, r"index 17 is out of range for 4 samples \(valid: 0\.\.3"),
    ("heatmap index=-5", lambda e, r, f: xp.heatmap(e, index=-5), IndexError, "out of range for 4 samples"),
    ("heatmap array index=9", lambda e, r, f: xp.heatmap(e.attributions.numpy(), index=9), IndexError,
     r"index 9 is out of range for 4 maps \(valid: 0\.\.3"),
    ("overlay index=17", lambda e, r, f: xp.overlay(e, index=17), IndexError, "index 17 is out of range for 4 samples"),
    ("bar on images", lambda e, r, f: xp.bar(e, index=9), ValueError, "tabular"),
    ("heatmap NaN map", lambda e, r, f: xp.heatmap(torch.full((1, 1, 6, 6), math.nan)), ValueError, "NaN or Inf"),
    ("heatmap 5-D", lambda e, r, f: xp.heatmap(torch.rand(1, 1, 1, 6, 6)), ValueError, "shape"),
    ("heatmap percentile=150", lambda e, r, f: xp.heatmap(e, percentile=150), ValueError, "percentile"),
    ("heatmap percentile=nan", lambda e, r, f: xp.heatmap(e, percentile=math.nan), ValueError, "percentile"),
    ("explanation_grid n=0", lambda e, r, f: xp.explanation_grid({"a": e}, n=0), ValueError, "n must be at least 1"),
    ("explanation_grid empty", lambda e, r, f: xp.explanation_grid({}), ValueError, "explanation|empty|column"),
    ("attack_grid n=-1", lambda e, r, f: xp.attack_grid(r, n=-1), ValueError, "n must be at least 1"),
    ("attack_grid before batch", lambda e, r, f: xp.attack_grid(r, e[:2], e, n=4), ValueError, "sample|batch|rows"),
    ("fooling_grid n=0", lambda e, r, f: xp.fooling_grid(f, n=0), ValueError, "n must be at least 1"),
    ("success_curve lengths", lambda e, r, f: xp.success_curve([0.1, 0.2], {"PGD": [0.5]}), ValueError,
     "1 values for 2 budgets"),
    ("success_curve NaN budget", lambda e, r, f: xp.success_curve([math.nan, 0.2], {"PGD": [0.5, 0.6]}), ValueError,
     "budgets must be finite"),
    ("roc_curve unknown key", lambda e, r, f: xp.roc_curve({"a": ([0, 1], [0, 1])}, keys=["b"]), KeyError, "available"),
    ("deletion_curve lengths", lambda e, r, f: xp.deletion_curve([0, 0.5, 1], {"IG": torch.rand(2, 4)}), ValueError,
     r"scores of 'IG' must be \(S,\) or \(N, S\) with S=3, got \(2, 4\)"),
    ("text tokens vs scores", lambda e, r, f: xp.text(["a", "b"], [0.1, 0.2, 0.3]), ValueError,
     "2 tokens needs 2 scores, got 3"),
]


@pytest.mark.parametrize("row", PLOT_ROWS, ids=[r[0] for r in PLOT_ROWS])
def test_plot_bad_inputs(row, plotted):
    _, fn, exc, msg = row
    try:
        with pytest.raises(exc, match=msg):
            fn(*plotted)
    finally:
        plt.close("all")


def test_heatmap_of_an_array_batch_draws_the_indexed_sample():
    a = np.random.default_rng(0).normal(size=(4, 2, 6, 6))
    for i in (2, -1):
        fig = xp.heatmap(a, index=i)
        assert np.allclose(fig.axes[0].images[0].get_array(), a[i].sum(0))
    plt.close("all")


class _TwoInputs(nn.Module):
    """A Conv2d on the image and a Linear on a (N, 3) side input."""

    def __init__(self):
        super().__init__()
        self.conv, self.side, self.fc = nn.Conv2d(1, 2, 3, padding=1), nn.Linear(3, 2), nn.Linear(2 * 36 + 2, 3)

    def forward(self, img, side):
        return self.fc(torch.cat([self.conv(img).relu().flatten(1), self.side(side)], 1))


def test_first_layer_check_leaves_several_inputs_alone():
    """A 2-D side input of a model whose first layer is a Conv2d: not checked against that layer."""
    x = (torch.rand(2, 1, 6, 6), torch.rand(2, 3))
    e = xadv.explain(_TwoInputs().eval(), x, method="integrated_gradients", steps=4, target=0)
    assert [a.shape for a in e.attributions] == [x[0].shape, x[1].shape]


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64, torch.complex64])
def test_all_finite_matches_the_elementwise_check(dtype):
    """The sum decides only when it is finite: a non-finite sum of finite values (an
    overflow) must still count as finite, and every NaN/Inf pattern as not."""
    from xadv._validation import all_finite
    big = torch.finfo(torch.float16 if dtype == torch.float16 else
                      torch.float32 if dtype in (torch.float32, torch.complex64) else torch.float64).max
    real = torch.float64 if dtype in (torch.float64, torch.complex64) else dtype
    cases = [torch.rand(3, 5), torch.full((4, 7), big, dtype=real), torch.full((4, 7), -big, dtype=real),
             torch.zeros(0, 3)]
    for pos in ([0, 0], [2, 4]):
        for bad in (math.nan, math.inf, -math.inf):
            t = torch.rand(3, 5, dtype=torch.float64)
            t[pos[0], pos[1]] = bad
            cases.append(t)
    t = torch.rand(3, 5, dtype=torch.float64)
    t[0, 0], t[1, 1] = math.inf, -math.inf  # a NaN sum from two infinities
    cases.append(t)
    for c in cases:
        c = c.to(dtype)
        assert all_finite(c) == bool(torch.isfinite(c).all()), c
    assert all_finite(torch.full((4, 7), big, dtype=real).to(dtype))  # the sum overflows, every value is finite
    assert all_finite(torch.arange(5))  # integers are always finite
