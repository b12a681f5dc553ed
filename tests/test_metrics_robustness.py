"""Robustness metrics: captum references on the same perturbations, and properties."""
from __future__ import annotations

import pytest
import torch

import xadv
from xadv.metrics import infidelity, local_lipschitz, max_sensitivity, worst_case_sensitivity
from xadv.metrics.robustness import gaussian_perturbations, uniform_perturbations


def _feeder(perturbations, n, s):
    """A captum perturb_func returning our draws in captum's order (each example repeated s times)."""
    flat = perturbations.transpose(0, 1).reshape((n * s,) + tuple(perturbations.shape[2:]))
    return flat


@pytest.mark.reference
@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")
def test_max_sensitivity_matches_captum(cnn64, images64):
    from captum.attr import Saliency as CSaliency
    from captum.metrics import sensitivity_max

    pert = uniform_perturbations(images64, 5, 0.05, seed=3)
    ours = max_sensitivity("saliency", cnn64, images64, target=2, perturbations=pert)
    flat = _feeder(pert, images64.shape[0], 5)

    def perturb(inputs):
        return inputs + flat

    ref = sensitivity_max(CSaliency(cnn64).attribute, images64, perturb_func=perturb, n_perturb_samples=5,
                          target=2, abs=False)
    assert torch.allclose(ours, ref, atol=1e-10)
    assert (ours > 0).all()


@pytest.mark.reference
@pytest.mark.parametrize("normalize", [False, True])
def test_infidelity_matches_captum(cnn64, images64, normalize):
    from captum.metrics import infidelity as cinfidelity

    e = xadv.explain(cnn64, images64, method="input_x_gradient", target=1)
    pert = gaussian_perturbations(images64, 4, 0.1, seed=5)
    ours = infidelity(e, cnn64, images64, perturbations=pert, normalize=normalize)
    flat = _feeder(pert, images64.shape[0], 4)

    def perturb(inputs):
        return flat, inputs - flat

    ref = cinfidelity(cnn64, perturb, images64, e.attributions, target=1, n_perturb_samples=4, normalize=normalize)
    assert torch.allclose(ours, ref, atol=1e-10)
    # same via an explainer name
    again = infidelity("input_x_gradient", cnn64, images64, target=1, perturbations=pert, normalize=normalize)
    assert torch.allclose(ours, again)


def test_infidelity_zero_for_exact_linear_attribution():
    torch.manual_seed(0)
    net = torch.nn.Linear(5, 3).double()
    x = torch.rand(4, 5, dtype=torch.float64)
    # for a linear model the gradient times the perturbation is exactly the output change
    assert infidelity("saliency", net, x, target=0, seed=1).abs().max() < 1e-20


def test_local_lipschitz_and_seeds(softplus_cnn64, images64):
    a = local_lipschitz("saliency", softplus_cnn64, images64, n_samples=4, radius=0.05, seed=0)
    b = local_lipschitz("saliency", softplus_cnn64, images64, n_samples=4, radius=0.05, seed=0)
    assert torch.equal(a, b) and (a > 0).all()
    # max-sensitivity grows with the radius for a smooth model
    small = max_sensitivity("saliency", softplus_cnn64, images64, radius=1e-4, n_samples=4, seed=0)
    large = max_sensitivity("saliency", softplus_cnn64, images64, radius=1e-1, n_samples=4, seed=0)
    assert (large > small).all()


def test_worst_case_exceeds_random_sampling(softplus_cnn64, images64):
    x = images64[:3]
    wc = worst_case_sensitivity("saliency", softplus_cnn64, x, eps=0.05, steps=10, metric="sensitivity", beta=None)
    rnd = max_sensitivity("saliency", softplus_cnn64, x, radius=0.05, n_samples=10, seed=0)
    assert wc.shape == (3,)
    assert float(wc.mean()) > float(rnd.mean())
    top = worst_case_sensitivity("saliency", softplus_cnn64, x, eps=0.05, steps=5, k=6, beta=None)
    assert ((top >= 0) & (top <= 1)).all()


def test_bad_arguments(cnn64, images64):
    with pytest.raises(ValueError, match="perturbations"):
        max_sensitivity("saliency", cnn64, images64, perturbations=torch.zeros(3, 2, 1, 8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="attack"):
        worst_case_sensitivity("saliency", cnn64, images64, attack="nope")
    with pytest.raises(ValueError, match="shape"):
        infidelity(torch.zeros(2, 3), cnn64, images64)
