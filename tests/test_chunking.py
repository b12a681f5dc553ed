"""The chunking policy: results do not depend on the rows per pass, ``batch_size`` bounds
every model call (clean passes included), the cache is keyed right and holds models weakly."""
from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch import nn

import xadv
from xadv.explainers import (LIME, AblationCAM, DeepLift, DeepLiftShap, FeatureLIME, GradientSHAP,
                             IntegratedGradients, Occlusion, ScoreCAM, SmoothGrad)
from xadv.explainers import chunking
from xadv.zoo.architectures import resnet18


class Counting(nn.Module):
    """The wrapped model, recording the rows of every call."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.rows = []
        self.train(model.training)

    def forward(self, x, *args, **kwargs):
        self.rows.append(x.shape[0])
        return self.model(x, *args, **kwargs)


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 5)).double().eval()


def small_resnet():
    return resnet18(num_classes=5, width=8, small_input=True).double().eval()


def data(n=5, size=12):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, size, size, generator=g, dtype=torch.float64), torch.arange(n) % 5


BG = torch.rand(4, 3, 12, 12, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

# (name, factory(batch_size) -> explainer, model factory)
CASES = [
    ("ig", lambda b: IntegratedGradients(steps=6, batch_size=b), small_resnet),
    ("ig_uniform", lambda b: IntegratedGradients(steps=5, baseline="uniform", seed=0, batch_size=b), small_cnn),
    ("smoothgrad", lambda b: SmoothGrad(n_samples=5, noise=0.1, seed=0, batch_size=b), small_resnet),
    ("smoothgrad_ig", lambda b: SmoothGrad(IntegratedGradients(steps=3), n_samples=3, seed=0, batch_size=b),
     small_cnn),
    ("gradient_shap", lambda b: GradientSHAP(BG, n_samples=7, noise=0.05, seed=0, batch_size=b, delta=True), small_resnet),
    ("occlusion", lambda b: Occlusion(window=6, stride=3, batch_size=b), small_resnet),
    ("feature_ablation", lambda b: Occlusion(feature_mask=torch.arange(16).reshape(1, 1, 4, 4)
                                             .repeat_interleave(3, 2).repeat_interleave(3, 3), batch_size=b),
     small_cnn),
    ("deeplift", lambda b: DeepLift(batch_size=b), small_cnn),
    ("deeplift_shap", lambda b: DeepLiftShap(BG, batch_size=b), small_cnn),
    ("lime", lambda b: LIME(n_samples=12, segmentation=torch.arange(16).reshape(4, 4).repeat_interleave(3, 0)
                            .repeat_interleave(3, 1), seed=0, batch_size=b), small_cnn),
    ("feature_lime", lambda b: FeatureLIME(n_samples=10, feature_mask=torch.arange(9).reshape(1, 1, 3, 3)
                                           .repeat_interleave(4, 2).repeat_interleave(4, 3), seed=0,
                                           batch_size=b), small_cnn),
    ("scorecam", lambda b: ScoreCAM(batch_size=b), small_cnn),
    ("ablationcam", lambda b: AblationCAM(batch_size=b), small_cnn),
]


@pytest.fixture(autouse=True)
def quick_search(monkeypatch):
    """Keep the timed search short in tests (the choice is still a real measurement)."""
    monkeypatch.setattr(chunking, "SEARCH_SECONDS", 0.2)


def _attr(e):
    return e.attributions


@pytest.mark.parametrize("name,make,model_fn", CASES, ids=[c[0] for c in CASES])
def test_chunking_does_not_change_results(name, make, model_fn):
    model = model_fn()
    x, y = data()
    ref = make(10_000)(model, x, y)
    for b in (1, 3, None):
        e = make(b)(model, x, y)
        torch.testing.assert_close(_attr(e), _attr(ref), rtol=1e-9, atol=1e-10, msg=f"{name}, batch_size={b}")
        if ref.delta is not None:
            torch.testing.assert_close(e.delta, ref.delta, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name,make,model_fn", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("b", [1, 3])
def test_batch_size_bounds_every_model_call(name, make, model_fn, b):
    counted = Counting(model_fn())
    x, y = data()
    make(b)(counted, x, y)
    assert counted.rows, "the model was never called"
    # DeepLIFT sends [x; x'] together: at least one pair, two rows
    bound = max(b, 2) if name.startswith("deeplift") else b
    assert max(counted.rows) <= bound, (name, b, counted.rows)


def test_batch_size_bounds_layer_ig_and_forward_args():
    from xadv.zoo.text import TextClassifier
    torch.manual_seed(0)
    model = TextClassifier().eval()
    counted = Counting(model)
    ids = torch.randint(1, 64, (5, 12))
    mask = torch.ones(5, 12, dtype=torch.bool)
    one = IntegratedGradients(steps=4, layer=model.embedding, batch_size=10_000)(
        counted, ids, target=1, forward_args=(mask,))
    counted.rows.clear()
    e = IntegratedGradients(steps=4, layer=model.embedding, batch_size=3)(counted, ids, target=1,
                                                                         forward_args=(mask,))
    assert max(counted.rows) <= 3
    torch.testing.assert_close(e.attributions, one.attributions, rtol=1e-5, atol=1e-6)
    counted.rows.clear()
    FeatureLIME(n_samples=8, seed=0, batch_size=3)(counted, ids, target=1, forward_args=(mask,))
    assert max(counted.rows) <= 3


def test_policy_cache_is_keyed_and_weak():
    chunking.clear_cache()
    counted = Counting(small_cnn())
    x = torch.rand(4, 3, 12, 12, dtype=torch.float64)
    r = chunking.rows_per_pass(counted, x, work=64)
    assert 1 <= r <= 64
    probes = len(counted.rows)
    assert probes > 0
    assert max(counted.rows) <= 64                       # the search never exceeds the work
    assert chunking.rows_per_pass(counted, x, work=64) == r
    assert len(counted.rows) == probes                   # cached: no new probe
    chunking.rows_per_pass(counted, torch.rand(4, 3, 10, 10, dtype=torch.float64), work=64)
    assert len(counted.rows) > probes                    # another input shape: its own entry
    chunking.rows_per_pass(counted, x, work=64, grad=False)
    assert len(chunking._CACHE[counted]) == 3            # (shape, dtype, device, grad) keys
    assert chunking.rows_per_pass(counted, x, batch_size=7) == 7
    ref = weakref.ref(counted)
    del counted
    gc.collect()
    assert ref() is None                                  # the cache does not keep the model alive
    assert len(chunking._CACHE) == 0


def test_policy_cache_holds_when_memory_bounds_the_rows(monkeypatch):
    """A choice bounded by the memory cap (ResNet-50 at 224 px: 8 rows) is reused by later
    calls with the same or more work; one bounded by the work is made again for more work."""
    monkeypatch.setattr(chunking, "SEARCH_SECONDS", 0)
    chunking.clear_cache()
    counted = Counting(small_cnn())
    x = torch.rand(4, 3, 12, 12, dtype=torch.float64)
    act, _ = chunking._activation_bytes(counted, counted, (x,), 4)
    monkeypatch.setitem(chunking.MEMORY_BUDGET, "grad", 3 * act)
    counted.rows.clear()
    assert chunking.rows_per_pass(counted, x, work=64) == 3
    probes = len(counted.rows)
    assert probes == 1
    for work in (64, 200, 10):
        assert chunking.rows_per_pass(counted, x, work=work) == 3
    assert len(counted.rows) == probes                   # no new probe
    chunking.clear_cache()
    monkeypatch.setitem(chunking.MEMORY_BUDGET, "grad", 1 << 30)
    assert chunking.rows_per_pass(counted, x, work=2) == 2
    probes = len(counted.rows)
    assert chunking.rows_per_pass(counted, x, work=64) > 2   # bounded by the work: chosen again
    assert len(counted.rows) > probes
    chunking.clear_cache()


def test_policy_keeps_the_largest_tensor_of_a_pass_within_the_mmap_bound(monkeypatch):
    """On a CPU no activation tensor of a pass exceeds ``TENSOR_BYTES_CPU`` (glibc maps
    larger blocks afresh on every pass), whatever the memory budget and the size floor."""
    monkeypatch.setattr(chunking, "SEARCH_SECONDS", 0)
    chunking.clear_cache()
    wide = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(64, 5)).eval()
    x = torch.rand(2, 3, 32, 32)
    act, largest = chunking._activation_bytes(wide, wide, (x,), 2)
    assert largest == 64 * 32 * 32 * 4 and act >= 2 * largest     # the conv and ReLU outputs
    monkeypatch.setattr(chunking, "TENSOR_BYTES_CPU", 5 * largest + 7)
    for grad in (True, False):
        assert chunking.rows_per_pass(wide, x, work=1000, grad=grad) == 5
    chunking.clear_cache()
    monkeypatch.setattr(chunking, "TENSOR_BYTES_CPU", 1 << 40)
    assert chunking.rows_per_pass(wide, x, work=1000) > 5
    chunking.clear_cache()


def test_policy_keys_on_the_user_model_through_adapters():
    chunking.clear_cache()
    model = small_cnn()
    x, y = data()
    IntegratedGradients(steps=4)(model, x, y, output=None, forward_args=())
    IntegratedGradients(steps=4)(model, x, y)
    assert list(chunking._CACHE.keys()) == [model]


def test_policy_does_not_probe_a_training_model():
    chunking.clear_cache()
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(3))
    model(torch.rand(2, 3, 8, 8))
    model.train()
    counted = Counting(model)
    stats = model[1].running_mean.clone()
    r = chunking.rows_per_pass(counted, torch.rand(4, 3, 8, 8), work=100)
    assert counted.rows == [] and r >= 1
    assert torch.equal(model[1].running_mean, stats)
    assert len(chunking._CACHE) == 0


def test_plain_callable_uses_the_fallback():
    net = small_cnn()
    r = chunking.rows_per_pass(lambda z: net(z), torch.rand(4, 3, 12, 12, dtype=torch.float64), work=50)
    assert 1 <= r <= 50


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_policy_on_any_device(device):
    chunking.clear_cache()
    model = small_cnn().float().to(device)
    x = torch.rand(3, 3, 12, 12, device=device)
    r = chunking.rows_per_pass(model, x, work=40)
    assert 1 <= r <= 40
    (key,) = chunking._CACHE[model].keys()
    assert key[0][2] == str(x.device)
    e = IntegratedGradients(steps=4)(model, x, target=0)
    assert e.attributions.device == x.device
    if device != "cpu":
        cpu = IntegratedGradients(steps=4)(model.cpu(), x.cpu(), target=0)
        torch.testing.assert_close(e.attributions.cpu(), cpu.attributions, rtol=1e-4, atol=1e-5)


def test_chunked_forward_slices():
    counted = Counting(small_cnn())
    x, _ = data(n=7)
    out = chunking.chunked_forward(counted, x, 3)
    assert counted.rows == [3, 2, 2] or max(counted.rows) <= 3
    torch.testing.assert_close(out, counted.model(x))
    assert not out.requires_grad


def test_clean_passes_merge_and_send_equal_rows_once():
    counted = Counting(small_cnn())
    x, _ = data(n=5)
    zeros = torch.zeros_like(x)
    blur = x.flip(0)
    out, out_z, out_b = chunking.clean_passes(counted, x, [zeros, blur], 100)
    # one call: 5 rows of x, 1 row for the all-equal baseline, 5 for the other
    assert counted.rows == [11]
    torch.testing.assert_close(out, counted.model(x))
    torch.testing.assert_close(out_z, counted.model(zeros))
    torch.testing.assert_close(out_b, counted.model(blur))
    for rows in (1, 2, 4, 7):   # slices across the boundaries between the batches
        counted.rows.clear()
        got = chunking.clean_passes(counted, x, [zeros, blur], rows)
        assert max(counted.rows) <= rows and sum(counted.rows) == 11
        for a, b in zip(got, (out, out_z, out_b)):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # a model in training mode (batch statistics) gets every batch on its own
    bn = Counting(nn.Sequential(nn.Flatten(), nn.Linear(432, 4), nn.BatchNorm1d(4)).double().train())
    a, b = chunking.clean_passes(bn, x, [zeros], 100)
    assert bn.rows == [5, 5]
    # IG sends the clean passes together: at most rows of the path plus one merged call
    counted.rows.clear()
    e = IntegratedGradients(steps=4, batch_size=100)(counted, x, target=1)
    assert counted.rows == [6, 20], counted.rows
    ref = IntegratedGradients(steps=4, batch_size=1)(counted.model, x, target=1)
    torch.testing.assert_close(e.delta, ref.delta, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(e.output, counted.model(x))


def test_clean_passes_keep_per_sample_rows_through_adapters():
    """With per-sample forward arguments the zero baseline is not collapsed to one row:
    each baseline row is scored with its own sample's arguments (``delta`` is exact)."""
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = small_cnn()

        def forward(self, x, scale):
            return self.net(x) * scale[:, None] + scale[:, None] ** 2

    model = Scaled().eval()
    x, _ = data(n=4)
    scale = torch.tensor([1.0, 2.0, -1.0, 3.0], dtype=torch.float64)
    e = IntegratedGradients(steps=64)(model, x, target=1, forward_args=(scale,))
    gap = model(x, scale)[:, 1] - model(torch.zeros_like(x), scale)[:, 1]
    torch.testing.assert_close(e.output, model(x, scale))
    torch.testing.assert_close(e.delta, e.attributions.reshape(4, -1).sum(1) - gap, rtol=1e-9, atol=1e-10)
    assert e.delta.abs().max() < 1e-3


# ----------------------------------------------------------------------------- layout probe
class ViewAfterConv(nn.Module):
    """``.view`` of a conv activation: fails on channels-last inputs."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        return self.fc(self.conv(x).view(x.shape[0], -1))


def test_layout_probe_is_cached_weak_and_keyed():
    chunking.clear_cache()
    model = small_cnn().float()
    x = torch.rand(6, 3, 8, 8)
    first = chunking.prefers_channels_last(model, x, None)
    assert isinstance(first, bool)
    calls = []
    h = model.register_forward_pre_hook(lambda m, i: calls.append(1))
    assert chunking.prefers_channels_last(model, x, None) is first  # from the cache: no pass
    assert not calls
    chunking.prefers_channels_last(model, torch.rand(6, 3, 10, 10), None)  # another shape: probed
    assert calls
    h.remove()
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None  # the cache does not keep the model alive


def test_layout_probe_refuses_what_it_cannot_use():
    x = torch.rand(4, 3, 8, 8)
    assert chunking.prefers_channels_last(ViewAfterConv().eval(), x, None) is False  # fails channels-last
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(192, 3))
    assert chunking.prefers_channels_last(mlp, x, None) is False  # no convolution
    assert chunking.prefers_channels_last(small_cnn(), torch.rand(4, 12).double(), None) is False  # not images
    assert chunking.prefers_channels_last(lambda z: z.flatten(1), x, None) is False  # not a module


SEG = (torch.arange(64).reshape(8, 8) % 8 // 2 + 4 * (torch.arange(64).reshape(8, 8) // 32))  # 8 regions


@pytest.mark.parametrize("choice", [True, False])
def test_layout_choice_does_not_change_results(monkeypatch, choice):
    """Occlusion, LIME and the attack evaluation give the same numbers in either layout."""
    model = small_cnn()
    x = torch.rand(3, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    import xadv.attacks.base as AB
    import xadv.explainers.occlusion as OC
    for mod, name in ((chunking, "prefers_channels_last"), (OC, "prefers_channels_last"), (AB, "eval_channels_last")):
        monkeypatch.setattr(mod, name, lambda *a, **k: False)
    ref_occ = Occlusion(window=2, stride=2)(model, x, 1).attributions
    ref_lime = LIME(n_samples=40, seed=0, segmentation=SEG)(model, x, 1).attributions
    ref_adv = xadv.attacks.PGD(eps=0.05, steps=3, seed=0)(model, x, torch.tensor([0, 1, 2]))
    for mod, name in ((chunking, "prefers_channels_last"), (OC, "prefers_channels_last"), (AB, "eval_channels_last")):
        monkeypatch.setattr(mod, name, lambda *a, **k: choice)
    assert torch.allclose(Occlusion(window=2, stride=2)(model, x, 1).attributions, ref_occ, atol=1e-12)
    assert torch.allclose(LIME(n_samples=40, seed=0, segmentation=SEG)(model, x, 1).attributions, ref_lime,
                          atol=1e-10)
    adv = xadv.attacks.PGD(eps=0.05, steps=3, seed=0)(model, x, torch.tensor([0, 1, 2]))
    assert torch.equal(adv.x_adv, ref_adv.x_adv)
    assert torch.equal(adv.pred_adv, ref_adv.pred_adv)
    assert torch.allclose(adv.conf_adv, ref_adv.conf_adv, atol=1e-12)


def test_layout_probe_passes_are_not_queries():
    chunking.clear_cache()
    model = small_cnn().float()
    x = torch.rand(4, 3, 8, 8)
    res = xadv.attacks.PGD(eps=0.05, steps=2, seed=0, early_stop=False)(model, x, torch.tensor([0, 1, 2, 3]))
    again = xadv.attacks.PGD(eps=0.05, steps=2, seed=0, early_stop=False)(model, x, torch.tensor([0, 1, 2, 3]))
    assert torch.equal(res.queries, again.queries)  # the first call probed, the second did not
