"""Similarity metrics of explanations: references (scipy, scikit-image) and properties."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch

import xadv
from xadv.metrics import (center_of_mass, center_of_mass_distance, cosine, kendall, mse, pearson, similarities,
                          spearman, ssim, topk_intersection)


@pytest.fixture(scope="module")
def maps():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(4, 9, 11, generator=g, dtype=torch.float64)
    b = a + 0.6 * torch.rand(4, 9, 11, generator=g, dtype=torch.float64)
    b[0, :3] = 0.0          # ties in b
    a[1, :2] = 0.25         # ties in a
    b[2] = a[2].flip(0)
    return a, b


@pytest.mark.reference
def test_rank_correlations_match_scipy(maps):
    a, b = maps
    s, k = spearman(a, b), kendall(a, b, block=17)
    for i in range(a.shape[0]):
        ref_s = scipy.stats.spearmanr(a[i].flatten(), b[i].flatten())[0]
        ref_k = scipy.stats.kendalltau(a[i].flatten(), b[i].flatten())[0]
        assert float(s[i]) == pytest.approx(ref_s, abs=1e-10)
        assert float(k[i]) == pytest.approx(ref_k, abs=1e-10)


@pytest.mark.reference
def test_pearson_matches_scipy(maps):
    a, b = maps
    p = pearson(a, b)
    for i in range(a.shape[0]):
        assert float(p[i]) == pytest.approx(scipy.stats.pearsonr(a[i].flatten(), b[i].flatten())[0], abs=1e-10)


@pytest.mark.reference
@pytest.mark.parametrize("win_size", [3, 7])
def test_ssim_matches_skimage(maps, win_size):
    from skimage.metrics import structural_similarity

    a, b = maps
    got = ssim(a, b, normalize=None, data_range=1.5, win_size=win_size)
    for i in range(a.shape[0]):
        ref = structural_similarity(a[i].numpy(), b[i].numpy(), data_range=1.5, win_size=win_size)
        assert float(got[i]) == pytest.approx(ref, abs=1e-10)
    # default: min-max normalised maps compared with data_range 1
    norm = lambda m: (m - m.min()) / (m.max() - m.min())  # noqa: E731
    ref0 = structural_similarity(norm(a[0]).numpy(), norm(b[0]).numpy(), data_range=1.0)
    assert float(ssim(a, b)[0]) == pytest.approx(ref0, abs=1e-10)


def test_topk_intersection_counts_by_hand():
    a = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    b = torch.tensor([[5.0, 0.0, 3.0, 9.0, 1.0, 0.5]])
    # top-3 of a: {0, 1, 2}; of b: {3, 0, 2} -> 2 of 3
    assert topk_intersection(a, b, k=3).tolist() == pytest.approx([2 / 3])
    assert topk_intersection(a, b, k=0.5).tolist() == pytest.approx([2 / 3])
    assert topk_intersection(a, a, k=1).tolist() == [1.0]


def test_identical_and_opposite_maps(maps):
    a, _ = maps
    for f in (spearman, kendall, pearson, cosine, ssim):
        assert torch.allclose(f(a, a), torch.ones(4, dtype=a.dtype))
    assert torch.allclose(mse(a, a), torch.zeros(4, dtype=a.dtype))
    assert torch.allclose(spearman(a, -a, reduce="none"), -torch.ones(4, dtype=a.dtype))
    assert torch.allclose(kendall(a, -a), -torch.ones(4, dtype=a.dtype))


def test_center_of_mass_in_pixels():
    m = torch.zeros(2, 5, 7)
    m[0, 1, 2] = 1.0
    m[1, 4, 6] = 2.0
    m[1, 0, 0] = 2.0
    assert center_of_mass(m).tolist() == [[1.0, 2.0], [2.0, 3.0]]
    assert center_of_mass_distance(m, m.roll(3, dims=2))[0].item() == pytest.approx(3.0)
    # an all-zero map sits at the image center
    assert center_of_mass(torch.zeros(1, 5, 7)).tolist() == [[2.0, 3.0]]


def test_explanations_and_channel_reduction(images64, cnn64):
    e = xadv.explain(cnn64, images64, method="saliency")
    d = similarities(e, e.attributions)  # (N, C, H, W) tensors are reduced like Explanations
    assert set(d) == set(xadv.metrics.SIMILARITY_METRICS) - {"ssim"} | ({"ssim"} if min(images64.shape[-2:]) >= 7 else set())
    assert torch.allclose(d["spearman"], torch.ones(len(e), dtype=d["spearman"].dtype))
    tab = similarities(torch.rand(3, 10), torch.rand(3, 10))
    assert "ssim" not in tab and "center_of_mass_distance" not in tab and tab["kendall"].shape == (3,)


def test_differentiable_metrics_have_gradients(maps):
    a, b = maps
    a = a.clone().requires_grad_(True)
    for f in (pearson, cosine, mse, ssim, center_of_mass_distance):
        (g,) = torch.autograd.grad(f(a, b).sum(), a)
        assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="differ in shape"):
        spearman(torch.rand(2, 4, 4), torch.rand(2, 4, 5))
    with pytest.raises(ValueError, match="k must be"):
        topk_intersection(torch.rand(2, 4, 4), torch.rand(2, 4, 4), k=100)
    with pytest.raises(ValueError, match="NaN"):
        pearson(torch.full((1, 3, 3), float("nan")), torch.rand(1, 3, 3))
    with pytest.raises(TypeError):
        cosine(np.zeros((2, 3)), torch.rand(2, 3))
    with pytest.raises(ValueError, match="win_size"):
        ssim(torch.rand(1, 5, 5), torch.rand(1, 5, 5))
    with pytest.raises(ValueError, match="unknown metric"):
        similarities(torch.rand(1, 8, 8), torch.rand(1, 8, 8), metrics=("nope",))
