"""xadv's metric families against Quantus 0.6 on the same model, inputs, attributions and draws."""
import numpy as np
import pytest
import torch

import xadv
import xadv.metrics as M
from _refs import import_reference

quantus = import_reference("quantus")
pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    m = xadv.zoo.digits_cnn()
    x, y = xadv.data.load_digits("test")
    x, y = x[:6].contiguous(), y[:6].clone()
    a = xadv.explain(m, x, method="saliency", target=y).attributions
    return m, x, y, a


def _np(t):
    return t.detach().cpu().numpy()


def _explain(model, inputs, targets, **kw):
    xt = torch.as_tensor(inputs, dtype=torch.float32)
    return _np(xadv.explain(model, xt, method="saliency", target=torch.as_tensor(targets).long()).attributions)


def _q(metric, m, x, y, a, **kw):
    return np.asarray(metric(model=m, x_batch=_np(x), y_batch=_np(y), a_batch=None if a is None else _np(a),
                             device="cpu", **kw), dtype=float)


def _close(ours, ref, tol=1e-4):
    ours = _np(ours).astype(float)
    ref = np.asarray(ref, dtype=float)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    np.testing.assert_allclose(ours, ref, rtol=tol, atol=tol, equal_nan=True)
    return float(np.nanmax(np.abs(ours - ref))) if ours.size else 0.0


NOPRE = dict(abs=False, normalise=False, disable_warnings=True)


def test_complexity_family(setup):
    m, x, y, a = setup
    aa = a.abs()
    _close(M.sparseness(aa), _q(quantus.Sparseness(**NOPRE), m, x, y, aa))
    _close(M.complexity(aa), _q(quantus.Complexity(**NOPRE), m, x, y, aa))
    _close(M.effective_complexity(aa, eps=0.05), _q(quantus.EffectiveComplexity(eps=0.05, **NOPRE), m, x, y, aa))


def test_localisation_family(setup):
    m, x, y, a = setup
    g = torch.Generator().manual_seed(1)
    s = torch.zeros_like(x)
    s[..., 6:20, 5:22] = 1.0
    s[0, ..., 2:6, 2:6] = 0
    s[1, ..., :, :] = (torch.rand(1, 28, 28, generator=g) > 0.7).float()
    sa = dict(s_batch=_np(s))
    _close(M.pointing_game(a, s), _q(quantus.PointingGame(**NOPRE), m, x, y, a, **sa))
    _close(M.attribution_localisation(a, s), _q(quantus.AttributionLocalisation(positive_attributions=True, **NOPRE), m, x, y, a, **sa))
    _close(M.top_k_intersection(a, s, k=50), _q(quantus.TopKIntersection(k=50, **NOPRE), m, x, y, a, **sa))
    _close(M.relevance_rank_accuracy(a, s), _q(quantus.RelevanceRankAccuracy(**NOPRE), m, x, y, a, **sa))
    _close(M.relevance_mass_accuracy(a.abs(), s),
           _q(quantus.RelevanceMassAccuracy(**NOPRE), m, x, y, a.abs(), **sa))
    _close(M.auc(a, s), _q(quantus.AUC(**NOPRE), m, x, y, a, **sa))
    assert torch.isnan(M.pointing_game(a, torch.zeros_like(s))).all()  # empty masks (Quantus returns True)
    q = torch.tensor([[1, 0, 0, 1], [0, 1, 1, 0], [1, 1, 0, 0], [0, 0, 1, 1], [1, 0, 1, 0], [0, 1, 0, 1]])
    ref = quantus.Focus(**NOPRE)(model=m, x_batch=_np(x), y_batch=_np(y), a_batch=_np(a), custom_batch=_np(q),
                                 device="cpu")
    _close(M.focus(a, q), ref)


def test_faithfulness_correlation_same_draws(setup):
    m, x, y, a = setup
    n, f, runs, size = x.shape[0], x[0].numel(), 12, 60
    np.random.seed(7)
    idx = np.stack([np.stack([np.random.choice(f, size, replace=False) for _ in range(n)]) for _ in range(runs)], 1)
    np.random.seed(7)
    ref = _q(quantus.FaithfulnessCorrelation(nr_runs=runs, subset_size=size, perturb_baseline=0.0,
                                             return_aggregate=False, **NOPRE),
             m, x, y, a, softmax=False)
    _close(M.faithfulness_correlation(m, x, y, a, indices=torch.as_tensor(idx), baseline=0.0), ref)


@pytest.mark.parametrize("step", [28, 56])
def test_ordered_removal_family(setup, step):
    m, x, y, a = setup
    kw = dict(features_in_step=step, perturb_baseline=0.0, **NOPRE)
    _close(M.faithfulness_estimate(m, x, y, a, features_in_step=step),
           _q(quantus.FaithfulnessEstimate(**kw), m, x, y, a, softmax=False))
    curve = _q(quantus.PixelFlipping(**kw), m, x, y, a, softmax=True)
    _close(M.pixel_flipping(m, x, y, a, features_in_step=step, return_curve=True), curve)
    # Quantus' own AUC calls np.trapz, gone in NumPy 2: its documented definition instead
    _close(M.pixel_flipping(m, x, y, a, features_in_step=step), np.trapezoid(curve, axis=1))
    _close(M.monotonicity_correlation(m, x, y, a, features_in_step=step),
           _q(quantus.MonotonicityCorrelation(nr_samples=2, **kw), m, x, y, a, softmax=True))


@pytest.mark.parametrize("patch", [4, 6])
def test_patch_family(setup, patch):
    m, x, y, a = setup
    kw = dict(patch_size=patch, perturb_baseline=0.0, **NOPRE)
    _close(M.region_perturbation(m, x, y, a, patch_size=patch, regions=12, return_curve=True),
           _q(quantus.RegionPerturbation(regions_evaluation=12, **kw), m, x, y, a, softmax=True))
    _close(M.selectivity(m, x, y, a, patch_size=patch, return_curve=True),
           _q(quantus.Selectivity(**kw), m, x, y, a, softmax=True))


def test_sufficiency_and_consistency(setup):
    m, x, y, a = setup
    _close(M.sufficiency(m, x, y, a, threshold=0.6), _q(quantus.Sufficiency(threshold=0.6, **NOPRE), m, x, y, a))
    _close(M.consistency(m, x, y, a, discretise="first_n_sign"),
           _q(quantus.Consistency(**NOPRE), m, x, y, a))


def _noise(shape, lo, hi, seed, s):
    np.random.seed(seed)
    return torch.as_tensor(np.stack([np.random.uniform(lo, hi, size=shape) for _ in range(s)]), dtype=torch.float32)


def test_stability_family_same_draws(setup):
    m, x, y, a = setup
    n, s = x.shape[0], 4
    flatshape = (n, x[0].numel())
    p = _noise(flatshape, -0.2, 0.2, 3, s).reshape((s,) + tuple(x.shape))
    np.random.seed(3)
    ref = _q(quantus.AvgSensitivity(nr_samples=s, lower_bound=0.2, **NOPRE), m, x, y, a, explain_func=_explain)
    _close(M.avg_sensitivity(m, x, y, a, explainer="saliency", perturbations=p), ref)
    p = _noise(flatshape, 0.02, 0.2, 4, s).reshape((s,) + tuple(x.shape))
    for cls, fn in [(quantus.RelativeInputStability, M.relative_input_stability),
                    (quantus.RelativeOutputStability, M.relative_output_stability)]:
        np.random.seed(4)
        ref = _q(cls(nr_samples=s, **NOPRE), m, x, y, a, explain_func=_explain)
        _close(fn(m, x, y, a, explainer="saliency", perturbations=p), ref, tol=1e-3)
    np.random.seed(4)
    ref = _q(quantus.RelativeRepresentationStability(nr_samples=s, layer_names=["features.conv3"], **NOPRE),
             m, x, y, a, explain_func=_explain)
    _close(M.relative_representation_stability(m, x, y, a, explainer="saliency", perturbations=p,
                                                layers=["features.conv3"]), ref, tol=1e-3)


def test_continuity(setup):
    m, x, y, a = setup
    ref = _q(quantus.Continuity(nr_steps=7, **NOPRE), m, x, y, a, explain_func=_explain)
    _close(M.continuity(m, x, y, a, explainer="saliency", n_steps=7), ref, tol=1e-3)


@pytest.mark.parametrize("order", ["top_down", "bottom_up"])
def test_mprt_matches_quantus(setup, order):
    m, x, y, a = setup
    ref = quantus.MPRT(layer_order=order, seed=42, **NOPRE)(model=m, x_batch=_np(x), y_batch=_np(y),
                                                             a_batch=_np(a), explain_func=_explain, device="cpu")
    ours = M.model_parameter_randomisation(m, x, y, a, explainer="saliency", order=order, seed=42)
    assert ours.layers == [k for k in ref if k != "original"]
    for name, row in zip(ours.layers, ours.scores):
        _close(row, ref[name], tol=1e-4)
