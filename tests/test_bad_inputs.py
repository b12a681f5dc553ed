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
