"""``batch_size`` bounds every model call of the metrics, and chunking leaves the values unchanged."""
import pytest
import torch

import xadv
import xadv.metrics as M

ROWS = 5


class RowCounter(torch.nn.Module):
    """Wraps a model and records the rows of every call (deep copies share the record)."""

    def __init__(self, model, record):
        super().__init__()
        self.m = model
        self.register_forward_pre_hook(lambda mod, inp: record.append(inp[0].shape[0]))

    def forward(self, x):
        return self.m(x)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    x, y = xadv.data.load_digits("test")
    x, y = x[:6].contiguous(), y[:6].clone()
    record = []
    model = RowCounter(xadv.zoo.digits_cnn(), record)
    a = xadv.explain(model, x, method="saliency", target=y).attributions
    return model, x, y, a, record


STEP = dict(features_in_step=112)
CASES = {
    "faithfulness_correlation": lambda m, x, y, a, **k: M.faithfulness_correlation(m, x, y, a, n_runs=4,
                                                                                  subset_size=20, seed=0, **k),
    "faithfulness_estimate": lambda m, x, y, a, **k: M.faithfulness_estimate(m, x, y, a, **STEP, **k),
    "pixel_flipping": lambda m, x, y, a, **k: M.pixel_flipping(m, x, y, a, **STEP, return_curve=True, **k),
    "region_perturbation": lambda m, x, y, a, **k: M.region_perturbation(m, x, y, a, patch_size=7, regions=4,
                                                                         return_curve=True, **k),
    "selectivity": lambda m, x, y, a, **k: M.selectivity(m, x, y, a, patch_size=14, return_curve=True, **k),
    "sensitivity_n": lambda m, x, y, a, **k: M.sensitivity_n(m, x, y, a, n=20, n_runs=4, seed=0, **k),
    "monotonicity": lambda m, x, y, a, **k: M.monotonicity(m, x, y, a, **STEP, **k),
    "monotonicity_correlation": lambda m, x, y, a, **k: M.monotonicity_correlation(m, x, y, a, **STEP, **k),
    "irof": lambda m, x, y, a, **k: M.irof(m, x, y, a, patch_size=7, **k),
    "road": lambda m, x, y, a, **k: M.road(m, x, y, a, percentages=(20, 60), seed=0, return_curve=True, **k),
    "sufficiency": lambda m, x, y, a, **k: M.sufficiency(m, x, y, a, **k),
    "completeness": lambda m, x, y, a, **k: M.completeness(m, x, y, a, **k),
    "non_sensitivity": lambda m, x, y, a, **k: M.non_sensitivity(m, x, y, a, **STEP, **k),
    "input_invariance": lambda m, x, y, a, **k: M.input_invariance(m, x, y, **k),
    "avg_sensitivity": lambda m, x, y, a, **k: M.avg_sensitivity(m, x, y, a, n_samples=3, seed=0,
                                                                 nan_on_change=False, **k),
    # an expanding explainer (noisy copies) gets the metric's batch_size for its own passes
    "avg_sensitivity_smoothgrad": lambda m, x, y, a, **k: M.avg_sensitivity(
        m, x, y, None, explainer=xadv.explainers.get("smoothgrad", n_samples=4, seed=0), n_samples=2, seed=0,
        nan_on_change=False, **k),
    "avg_sensitivity_attack": lambda m, x, y, a, **k: M.avg_sensitivity(m, x, y, a, mode="attack", seed=0,
                                                                        attack={"steps": 2}, **k),
    "relative_input_stability": lambda m, x, y, a, **k: M.relative_input_stability(
        m, x, y, a, n_samples=3, seed=0, nan_on_change=False, **k),
    "relative_output_stability": lambda m, x, y, a, **k: M.relative_output_stability(
        m, x, y, a, n_samples=3, seed=0, nan_on_change=False, **k),
    "relative_representation_stability": lambda m, x, y, a, **k: M.relative_representation_stability(
        m, x, y, a, layers=["m.features.conv3"], n_samples=3, seed=0, nan_on_change=False, **k),
    "continuity": lambda m, x, y, a, **k: M.continuity(m, x, y, a, n_steps=4, **k),
    "consistency": lambda m, x, y, a, **k: M.consistency(m, x, y, a, **k),
    "max_sensitivity": lambda m, x, y, a, **k: M.max_sensitivity("saliency", m, x, y, n_samples=3, seed=0, **k),
    "local_lipschitz": lambda m, x, y, a, **k: M.local_lipschitz("saliency", m, x, y, n_samples=3, seed=0, **k),
    "infidelity": lambda m, x, y, a, **k: M.infidelity("saliency", m, x, y, n_samples=3, seed=0, **k),
    "mprt": lambda m, x, y, a, **k: M.model_parameter_randomisation(m, x, y, a, **k).scores,
    "smooth_mprt": lambda m, x, y, a, **k: M.smooth_mprt(m, x, y, n_samples=2, **k),
    "efficient_mprt": lambda m, x, y, a, **k: M.efficient_mprt(m, x, y, a, **k),
    "random_logit": lambda m, x, y, a, **k: M.random_logit(m, x, y, **k),
    "deletion_curve": lambda m, x, y, a, **k: M.deletion_curve(m, x, a, y, steps=5, **k)[1],
    "insertion_curve": lambda m, x, y, a, **k: M.insertion_curve(m, x, a, y, steps=5, **k)[1],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_batch_size_bounds_every_call(setup, name):
    model, x, y, a, record = setup
    record.clear()
    free = CASES[name](model, x, y, a)
    assert record and max(record) > ROWS, "the case must need more than ROWS rows, or it tests nothing"
    record.clear()
    bounded = CASES[name](model, x, y, a, batch_size=ROWS)
    assert record and max(record) <= ROWS, (name, sorted(set(record)))
    if name in ("avg_sensitivity_attack", "avg_sensitivity_smoothgrad"):
        return  # the search restarts per chunk of samples; SmoothGrad draws its noise per call
    # relative representation change divides by small activations: float noise of other batch shapes grows
    tol = 1e-3 if name == "relative_representation_stability" else 1e-4
    torch.testing.assert_close(bounded, free, rtol=tol, atol=1e-5, equal_nan=True)


def test_report_card_batch_size(setup):
    model, x, y, a, record = setup
    record.clear()
    M.evaluate(model, x, y, ["saliency"], ["faithfulness_estimate", "avg_sensitivity", "sparseness"],
               params={"faithfulness_estimate": STEP, "avg_sensitivity": {"n_samples": 2, "seed": 0}},
               batch_size=ROWS)
    assert record and max(record) <= ROWS


def test_bad_batch_size(setup):
    model, x, y, a, _ = setup
    for bad in (0, -3, 2.5):
        with pytest.raises((ValueError, TypeError), match="batch_size"):
            M.pixel_flipping(model, x, y, a, batch_size=bad)
        with pytest.raises((ValueError, TypeError), match="batch_size"):
            M.avg_sensitivity(model, x, y, a, batch_size=bad)


def test_seeded_explainer_keeps_common_noise(setup):
    """A seeded SmoothGrad sees the same noise on every draw as on the clean batch (one call per
    draw), so avg-sensitivity measures the input change, not a change of noise."""
    model, x, y, a, _ = setup
    sg = xadv.explainers.get("smoothgrad", n_samples=4, seed=0)
    p = (torch.rand((3,) + tuple(x.shape), generator=torch.Generator().manual_seed(2)) * 2 - 1) * 0.05
    a0 = sg(model, x, y).attributions
    ref = torch.stack([(sg(model, x + d, y).attributions - a0).flatten(1).norm(dim=1) / a0.flatten(1).norm(dim=1)
                       for d in p]).mean(0)
    got = M.avg_sensitivity(model, x, y, None, explainer=sg, perturbations=p, nan_on_change=False)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)
    got = M.max_sensitivity(sg, model, x, y, perturbations=p)
    ref = torch.stack([(sg(model, x + d, y).attributions - a0).flatten(1).norm(dim=1) / a0.flatten(1).norm(dim=1)
                       for d in p]).amax(0)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)


def test_default_rows_follow_the_chunking_policy(setup, monkeypatch):
    """Without ``batch_size`` the rows of a call come from ``chunking.rows_per_pass``:
    forward-only for the perturbation passes, with gradients for the explanations."""
    from xadv.explainers import chunking

    model, x, y, a, record = setup
    asked = []

    def policy(m, xb, *, batch_size=None, work=None, grad=True):
        asked.append(grad)
        return 4

    monkeypatch.setattr(chunking, "rows_per_pass", policy)
    free = M.pixel_flipping(model, x, y, a, **STEP, return_curve=True)
    assert asked and not any(asked)
    record.clear()
    M.pixel_flipping(model, x, y, a, **STEP, return_curve=True)
    assert max(record) <= 4
    asked.clear()
    M.avg_sensitivity(model, x, y, a, n_samples=2, seed=0, nan_on_change=False)
    assert True in asked and False in asked
    monkeypatch.undo()
    torch.testing.assert_close(M.pixel_flipping(model, x, y, a, **STEP, return_curve=True), free,
                               rtol=1e-4, atol=1e-5)


class _Flat(torch.nn.Module):
    """Rejects channels-last inputs of more than one channel (``.view`` of a non-contiguous tensor)."""

    def __init__(self, features):
        super().__init__()
        self.lin = torch.nn.Linear(features, 10)

    def forward(self, x):
        return self.lin(x.view(x.shape[0], -1))


@pytest.mark.parametrize("name", ["pixel_flipping", "region_perturbation", "faithfulness_correlation", "road",
                                  "deletion_curve"])
def test_channels_last_passes_keep_the_values(setup, monkeypatch, name):
    """Forward-only image passes go channels-last where the probe says so: the same values
    to float rounding, and a model that rejects that layout falls back to the plain one."""
    from xadv.explainers import chunking

    model, x, y, a, _ = setup
    g = torch.Generator().manual_seed(3)
    x3 = torch.rand(4, 3, 28, 28, generator=g)
    flat = _Flat(3 * 28 * 28).eval()
    with pytest.raises(RuntimeError):
        flat(x3.contiguous(memory_format=torch.channels_last))
    a3 = xadv.explain(flat, x3, method="saliency", target=0).attributions
    work = [(model, x, y, a), (flat, x3, torch.zeros(4, dtype=torch.long), a3)]
    monkeypatch.setattr(chunking, "prefers_channels_last", lambda m, xb, rows: False)
    plain = [CASES[name](*w) for w in work]
    monkeypatch.setattr(chunking, "prefers_channels_last", lambda m, xb, rows: True)
    last = [CASES[name](*w) for w in work]
    for p, q in zip(plain, last):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5, equal_nan=True)
