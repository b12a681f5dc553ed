"""On a CUDA machine: explainers, attacks and fooling attacks give the CPU's results within
float tolerance, batch_size bounds peak memory, and mixed precision / channels-last run.
Skipped where CUDA is not available (``torch.cuda.is_available()``)."""
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

DEV = "cuda"


def _pair(seed=0, classes=5):
    from xadv.zoo.architectures import resnet18

    torch.manual_seed(seed)
    net = resnet18(num_classes=classes).eval()
    x = torch.rand(4, 3, 32, 32)
    return net, x


def _both(net, x):
    import copy

    return (net, x), (copy.deepcopy(net).to(DEV), x.to(DEV))


@pytest.fixture(autouse=True)
def _exact_kernels():
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


@pytest.mark.parametrize("method,params", [
    ("saliency", {}), ("ig", {"steps": 16}), ("smoothgrad", {"n_samples": 8, "seed": 0}),
    ("gradcam", {}), ("occlusion", {"window": 8, "stride": 8}),
])
def test_explainers_match_cpu(method, params):
    import xadv

    (nc, xc), (ng, xg) = _both(*_pair())
    y = torch.tensor([0, 1, 2, 3])
    a = xadv.explain(nc, xc, method=method, target=y, **params).attributions
    b = xadv.explain(ng, xg, method=method, target=y.to(DEV), **params).attributions
    assert b.device.type == "cuda"
    scale = a.abs().max().clamp_min(1e-12)
    assert float((a - b.cpu()).abs().max() / scale) < 1e-3


def test_pgd_and_apgd_match_cpu():
    import xadv.attacks as A

    (nc, xc), (ng, xg) = _both(*_pair())
    y = torch.tensor([0, 1, 2, 3])
    for atk in (A.PGD(eps=4 / 255, steps=5, random_start=False), A.APGD(eps=4 / 255, steps=5, seed=0)):
        rc, rg = atk(nc, xc, y), atk(ng, xg, y.to(DEV))
        assert rg.x_adv.device.type == "cuda"
        # sign steps: a gradient entry at rounding level may flip, so compare most pixels and the budget
        same = (rc.x_adv - rg.x_adv.cpu()).abs() < 1e-5
        assert float(same.float().mean()) > 0.95
        assert float((rg.x_adv - xg).abs().max()) <= 4 / 255 + 1e-6


def test_fooling_matches_cpu():
    from xadv.fooling import TopKAttack

    (nc, xc), (ng, xg) = _both(*_pair())
    atk = TopKAttack(eps=4 / 255, steps=5, beta=None, pool_beta=None)
    rc, rg = atk(nc, xc), atk(ng, xg)
    assert rg.x_adv.device.type == "cuda"
    assert float((rc.x_adv - rg.x_adv.cpu()).abs().max()) <= 8 / 255 + 1e-6
    assert torch.equal(rc.pred_clean, rg.pred_clean.cpu())


def test_batch_size_bounds_peak_memory():
    import xadv.attacks as A

    net, _ = _pair()
    net = net.to(DEV)
    x = torch.rand(256, 3, 32, 32, device=DEV)
    y = torch.zeros(256, dtype=torch.long, device=DEV)

    def peak(bs):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        A.PGD(eps=4 / 255, steps=2, seed=0, batch_size=bs)(net, x, y)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    whole, chunked = peak(None), peak(16)
    assert chunked < 0.5 * whole, (chunked, whole)


def test_amp_and_channels_last_run_on_cuda():
    import xadv.attacks as A

    net, x = _pair()
    net, x = net.to(DEV), x.to(DEV)
    y = torch.tensor([0, 1, 2, 3], device=DEV)
    r32 = A.PGD(eps=4 / 255, steps=5, seed=0)(net, x, y)
    r16 = A.PGD(eps=4 / 255, steps=5, seed=0, amp=True)(net, x, y)
    rcl = A.PGD(eps=4 / 255, steps=5, seed=0, memory_format="channels_last")(net, x, y)
    for r in (r16, rcl):
        assert r.x_adv.dtype == torch.float32 and r.x_adv.device.type == "cuda"
        assert float((r.x_adv - x).abs().max()) <= 4 / 255 + 1e-6
    assert float((rcl.x_adv - r32.x_adv).abs().lt(1e-5).float().mean()) > 0.95
