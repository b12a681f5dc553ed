"""Channels-last max-pooling of no-gradient passes in the traced copy (xadv._fold.FastMaxPool2d)."""
import itertools

import pytest
import torch
from torch import nn

import xadv
from xadv import _fold
from xadv._fold import FastMaxPool2d
from xadv.explainers import LIME, Occlusion, Saliency, fast_pooling
from xadv.zoo import architectures as A, digits_cnn

OPTIONS = [dict(kernel_size=k, stride=s, padding=p, dilation=d, ceil_mode=c)
           for k, s, p, d, c in itertools.product((2, 3), (None, 1, 2), (0, 1), (1, 2), (False, True))
           if p <= k // 2]


def _values(shape, dtype, g):
    """Few distinct values (many exact ties), with -inf and a NaN."""
    x = torch.randint(-3, 4, shape, generator=g).to(dtype) / 2
    x.view(-1)[::17] = float("-inf")
    x.view(-1)[5] = float("nan")
    return x


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(f"{k[0]}{int(v or 0)}" for k, v in o.items()))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fast_pool_equals_maxpool_bit_for_bit(opts, dtype):
    g = torch.Generator().manual_seed(sum(int(v or 0) for v in opts.values()))
    pool = nn.MaxPool2d(**opts)
    fast = FastMaxPool2d.like(pool)
    for shape in [(3, 5, 11, 9), (2, 16, 8, 8), (1, 3, 7, 12)]:
        x = _values(shape, dtype, g)
        with torch.no_grad():
            a, b = pool(x), fast(x)
        assert b.is_contiguous() and b.shape == a.shape and b.dtype == a.dtype
        torch.testing.assert_close(b, a, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("opts", OPTIONS[::3], ids=lambda o: "-".join(f"{k[0]}{int(v or 0)}" for k, v in o.items()))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fast_pool_gradient_equals_maxpool_bit_for_bit(opts, dtype):
    """Tied maxima (few distinct values) must send the gradient to the same position."""
    g = torch.Generator().manual_seed(7)
    pool = nn.MaxPool2d(**opts)
    fast = FastMaxPool2d.like(pool)
    for shape in [(3, 5, 11, 9), (2, 16, 8, 8)]:
        x = (torch.randint(-2, 3, shape, generator=g).to(dtype) / 2).requires_grad_(True)
        ya, yb = pool(x), fast(x)
        assert yb.is_contiguous() and torch.equal(ya, yb)
        w = torch.randn(ya.shape, generator=g, dtype=dtype)
        (ga,) = torch.autograd.grad((ya * w).sum(), x)
        (gb,) = torch.autograd.grad((yb * w).sum(), x)
        assert torch.equal(ga, gb)
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fast, (x,))


def test_the_channels_last_kernel_runs_for_values_and_indices(monkeypatch):
    seen = []
    real = _fold.F.max_pool2d

    def spy(x, *a, **k):
        seen.append((x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous(),
                     bool(k.get("return_indices"))))
        return real(x, *a, **k)
    monkeypatch.setattr(_fold.F, "max_pool2d", spy)
    fast = FastMaxPool2d.like(nn.MaxPool2d(2))
    x = torch.rand(2, 4, 8, 8)
    with torch.no_grad():
        fast(x)
    fast(x)                                   # no input gradient: values only
    xg = x.clone().requires_grad_(True)
    fast(xg)                                  # a gradient to take: values and indices
    assert seen == [(True, False), (True, False), (True, True)]
    seen.clear()
    with torch.no_grad():                     # unbatched and one-channel inputs: usual kernel
        fast(x[0])
        fast(torch.rand(2, 1, 8, 8))
        assert not any(s[0] for s in seen)
        xc = x.contiguous(memory_format=torch.channels_last)   # a channels-last input stays so
        a, b = fast(xc), nn.MaxPool2d(2)(xc)
    assert torch.equal(a, b) and a.stride() == b.stride()


def test_the_copy_of_a_model_without_batchnorm_pools_fast_and_the_model_is_untouched():
    model = digits_cnn(pretrained=False).eval()
    x = torch.rand(4, 1, 28, 28)
    f = _fold.folded(model, x)
    assert f is not model
    pools = [m for m in f.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 2 and all(type(m) is FastMaxPool2d for m in pools)
    assert all(type(m) is nn.MaxPool2d for m in model.modules() if isinstance(m, nn.MaxPool2d))
    with torch.no_grad():
        assert torch.equal(f(x), model(x))
    with fast_pooling(False):
        assert _fold.folded(model, x) is model
    with pytest.raises(TypeError):
        with fast_pooling(1):
            pass


def test_pools_that_return_indices_or_have_their_own_forward_are_kept():
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(27, 2)).eval()
    x = torch.rand(2, 1, 8, 8)
    assert _fold.folded(net, x) is not net
    net[1].forward = lambda t: nn.functional.max_pool2d(t, 2)
    assert _fold.folded(net, x) is net        # a forward of its own on the instance
    del net[1].forward

    class WithIndices(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.pool, self.unpool = nn.Conv2d(1, 3, 3), nn.MaxPool2d(2, return_indices=True), \
                nn.MaxUnpool2d(2)

        def forward(self, t):
            v, i = self.pool(self.conv(t))
            return self.unpool(v, i).flatten(1)
    w = WithIndices().eval()
    assert _fold.folded(w, x) is w


@pytest.mark.parametrize("make", [lambda: Occlusion(window=4, stride=2), lambda: LIME(n_samples=64, seed=0),
                                  lambda: Saliency()], ids=["occlusion", "lime", "saliency"])
def test_explanations_are_the_same_with_and_without(make):
    model = digits_cnn(pretrained=False).eval()
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    a = make()(model, x, 2).attributions
    with fast_pooling(False):
        b = make()(model, x, 2).attributions
    # the pooled values are bit for bit the same; rows per pass (timed per model) may
    # change a convolution's summation order
    assert float((a - b).abs().max()) <= 1e-5 * float(a.abs().max())


def test_pgd_and_resnet_occlusion_are_the_same_with_and_without():
    model = digits_cnn(pretrained=False).eval()
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    pgd = xadv.attacks.PGD(eps=0.1, steps=3, seed=0)
    r = pgd(model, x, torch.tensor([0, 1, 2, 3]))
    with fast_pooling(False):
        r0 = pgd(model, x, torch.tensor([0, 1, 2, 3]))
    assert torch.equal(r.x_adv, r0.x_adv) and torch.equal(r.pred_adv, r0.pred_adv)
    # evaluation passes pick their layout by a timed probe per model: rounding may differ
    torch.testing.assert_close(r.conf_clean, r0.conf_clean, rtol=1e-5, atol=1e-7)
    # a ResNet stem's pooling inside incremental Occlusion (xadv.explainers._incremental)
    net = A.resnet18(num_classes=10).eval()
    xi = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    assert any(type(m) is FastMaxPool2d for m in _fold.folded(net, xi).modules())
    occ = Occlusion(window=8, stride=8)
    a = occ(net, xi, 1).attributions
    with fast_pooling(False):
        b = occ(net, xi, 1).attributions
    assert float((a - b).abs().max()) <= 1e-5 * float(a.abs().max())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_passes_keep_the_model_pooling():
    model = digits_cnn(pretrained=False).eval().cuda()
    x = torch.rand(2, 1, 28, 28, device="cuda")
    assert _fold.folded(model, x) is model   # no BatchNorm: nothing to copy for on a GPU
