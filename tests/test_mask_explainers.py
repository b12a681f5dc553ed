"""Meaningful perturbation (Fong & Vedaldi 2017) and extremal perturbation (Fong et al.
2019): the papers' properties on a model whose score depends on one known region, on
the digits CNN and on a ResNet-style net at 3x64x64."""
import pytest
import torch

import xadv
import xadv.data
import xadv.zoo
from xadv.explainers import ExtremalPerturbation, MeaningfulPerturbation
from xadv.explainers.perturbation import total_variation

REGIONS = [(2, 6, 8, 12), (8, 12, 2, 6), (10, 14, 10, 14)]


class RegionModel(torch.nn.Module):
    """Class 0's logit is an affine function of the mean of one 4x4 window only."""

    def __init__(self, region):
        super().__init__()
        self.region = region

    def forward(self, x):
        r0, r1, c0, c1 = self.region
        v = x[:, :, r0:r1, c0:c1].mean((1, 2, 3))
        return torch.stack([12 * (v - 0.5), torch.zeros_like(v), -torch.ones_like(v)], 1)


def _planted():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(len(REGIONS), 1, 16, 16, generator=g) * 0.3
    for i, (a, b, c, d) in enumerate(REGIONS):
        x[i, :, a:b, c:d] = 1.0
    return x


def _overlap(attr, region):
    """Share of the 16 highest-attributed pixels that lie in the 4x4 region."""
    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[region[0]:region[1], region[2]:region[3]] = True
    top = attr[0].flatten().topk(16).indices
    return float(inside.flatten()[top].float().mean())


@pytest.mark.parametrize("explainer", [
    MeaningfulPerturbation(mask_scale=2, perturbation="blur", steps=150),
    MeaningfulPerturbation(mask_scale=2, perturbation="constant", steps=150),
    ExtremalPerturbation(area=16 / 256, mask_scale=2, steps=300),
], ids=["mp-blur", "mp-constant", "extremal"])
def test_mask_finds_the_region_the_score_depends_on(explainer):
    x = _planted()
    for i, region in enumerate(REGIONS):
        e = explainer(RegionModel(region), x[i:i + 1], 0)
        assert _overlap(e.attributions[:, 0], region) >= 0.75, (i, region)


def test_extremal_area_constraint_and_rewards():
    x = _planted()[:1]
    e = ExtremalPerturbation(area=16 / 256, mask_scale=2)(RegionModel(REGIONS[0]), x, 0)
    assert abs(float(e.extras["area"][0]) - 16 / 256) < 0.02
    # preserving the selected 6 % keeps most of the score; deleting it loses most of it
    clean = float(e.extras["score_clean"][0])
    assert float(e.extras["score_preserved"][0]) > 0.6 * clean
    assert float(e.extras["score_deleted"][0]) < 0.5 * clean
    d = ExtremalPerturbation(area=16 / 256, mask_scale=2, steps=300, variant="delete")(RegionModel(REGIONS[0]), x, 0)
    assert _overlap(d.attributions[:, 0], REGIONS[0]) >= 0.75


@pytest.fixture(scope="module")
def digits():
    model = xadv.zoo.digits_cnn()
    x, y = xadv.data.load_digits("test")
    return model, x[:6], y[:6]


def test_deleting_the_mask_region_drops_the_score_more_than_a_random_region(digits):
    model, x, y = digits
    mp = MeaningfulPerturbation(steps=150, perturbation="constant", seed=0)   # 0 is the digits' background
    e = mp(model, x, y)
    # the margin score falls from about 10-20 logits to the floor (another class leads)
    assert (e.extras["score_deleted"] < 0).float().mean() >= 0.8
    assert float(e.attributions[:, 0].mean()) < 0.35   # by deleting a small part of the image
    # delete the top 15 % of pixels by the map, or 15 % chosen at random, with the same blur
    k = int(0.15 * 28 * 28)
    base = mp.perturbed_copy(x)
    g = torch.Generator().manual_seed(0)

    def prob(keep):
        z = keep * x + (1 - keep) * base
        return torch.softmax(model(z), 1).gather(1, y[:, None]).squeeze(1)

    top = torch.ones(len(x), 28 * 28)
    top.scatter_(1, e.saliency_map("sum").flatten(1).topk(k).indices, 0.0)
    rnd = torch.ones(len(x), 28 * 28)
    rnd.scatter_(1, torch.stack([torch.randperm(28 * 28, generator=g)[:k] for _ in range(len(x))]), 0.0)
    with torch.no_grad():
        p_top, p_rnd = prob(top.view(-1, 1, 28, 28)), prob(rnd.view(-1, 1, 28, 28))
    assert float(p_top.mean()) < float(p_rnd.mean()) - 0.3


def test_deterministic_with_seed_and_independent_of_the_batch(digits):
    model, x, y = digits
    mp = MeaningfulPerturbation(steps=30, perturbation="constant", seed=3)
    a = mp(model, x[:3], y[:3]).attributions
    b = mp(model, x[:3], y[:3]).attributions
    assert torch.equal(a, b)
    one = mp(model, x[1:2], y[1:2]).attributions
    torch.testing.assert_close(one, a[1:2], rtol=1e-5, atol=1e-6)
    other = MeaningfulPerturbation(steps=30, perturbation="constant", seed=4)(model, x[:3], y[:3]).attributions
    assert not torch.equal(a, other)   # the jitter shifts follow the seed


class _PlantedResNet(torch.nn.Module):
    """A ResNet-style trunk (BatchNorm, residual adds) plus a head that reads one window:
    the score depends on the 16x16 window through the planted term."""

    def __init__(self, region):
        super().__init__()
        from test_propagation import resnet_style
        self.trunk = resnet_style().float()
        self.region = region

    def forward(self, x):
        r0, r1, c0, c1 = self.region
        v = x[:, :, r0:r1, c0:c1].mean((1, 2, 3))
        planted = torch.stack([12 * (v - 0.5)] + [torch.zeros_like(v)] * 4, 1)
        return self.trunk(x) + planted


def test_resnet_style_3x64x64():
    region = (16, 32, 40, 56)
    net = _PlantedResNet(region).eval()
    g = torch.Generator().manual_seed(2)
    x = torch.rand(1, 3, 64, 64, generator=g) * 0.3
    x[:, :, 16:32, 40:56] = 1.0
    inside = torch.zeros(64, 64, dtype=torch.bool)
    inside[16:32, 40:56] = True
    for ex in (MeaningfulPerturbation(steps=60, perturbation="constant"),
               ExtremalPerturbation(area=0.0625, steps=200)):
        e = ex(net, x, target=0)
        assert e.attributions.shape == x.shape and e.raw.shape == (1, 16, 16)
        assert float(e.attributions.min()) >= 0 and float(e.attributions.max()) <= 1
        top = e.saliency_map("sum").flatten(1).topk(256).indices
        assert float(inside.flatten()[top].float().mean()) >= 0.75, type(ex).__name__
    assert (e.extras["score_deleted"] < e.extras["score_clean"] - 1).all()


def test_total_variation_and_contract(digits):
    m = torch.zeros(1, 1, 3, 3)
    m[..., 1, 1] = 1.0
    # 4 unit jumps over 6 vertical and 6 horizontal pairs: 2/6 + 2/6
    torch.testing.assert_close(total_variation(m, 3.0), torch.tensor([4 / 6]))
    model, x, y = digits
    before = {k: v.clone() for k, v in model.state_dict().items()}
    e = xadv.explain(model, x[:2], method="mp", target=y[:2], steps=5)
    assert e.method == "meaningful_perturbation" and e.attributions.shape == x[:2].shape
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(xadv.explainers.get("extremal", area=0.2), ExtremalPerturbation)
    with pytest.raises(TypeError, match="not differentiable"):
        MeaningfulPerturbation(steps=2)(model, x[:1], create_graph=True)
    with torch.no_grad():   # the mask is optimised under enable_grad: no_grad around the call is fine
        assert MeaningfulPerturbation(steps=2)(model, x[:1]).attributions.shape == x[:1].shape
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        ExtremalPerturbation(steps=2)(model, x[:1].clone())
    with pytest.raises(ValueError, match="perturbation must be one of"):
        MeaningfulPerturbation(perturbation="zero")
    with pytest.raises(ValueError, match="area must be a fraction"):
        ExtremalPerturbation(area=1.5)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)|4"):
        MeaningfulPerturbation(steps=2)(torch.nn.Linear(4, 2), torch.rand(3, 4))
