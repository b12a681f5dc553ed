"""Attacks and robustness metrics on the models users bring: dict / tuple / ``.logits``
outputs, several inputs (an image and a tabular side input), pass-through arguments,
per-input budgets, a ResNet-style model at 3x32x32 and the token model.

References: torchattacks and xadv itself on a wrapper module that picks the logits (or
closes over the side input); the same seeds give the same adversarial inputs.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import xadv
import xadv.attacks as A

assert_close = torch.testing.assert_close


class HFStyle(nn.Module):
    """A Hugging Face-style classifier: returns {"logits", "hidden_states"}."""

    def __init__(self, channels: int = 1, classes: int = 4, side: int = 0, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(channels, 6, 3)
        self.fc = nn.Linear(6 * 6 * 6, classes)
        self.side = nn.Linear(side, classes) if side else None

    def forward(self, img, side=None, scale=1.0):
        h = torch.tanh(self.conv(img - 0.5)).flatten(1)
        logits = self.fc(h)
        if self.side is not None:
            logits = logits + self.side(side)
        return {"logits": logits * scale, "hidden_states": h}


class Picks(nn.Module):
    """The reference's view: a module returning the logits only (side inputs closed over)."""

    def __init__(self, model, key="logits", **kwargs):
        super().__init__()
        self.model, self.key, self.kwargs = model, key, kwargs

    def forward(self, x):
        out = self.model(x, **self.kwargs)
        return out[self.key] if isinstance(out, dict) else out


class Obj:
    def __init__(self, logits):
        self.logits = logits


def same_as_torchattacks(res, xt, ref_model, y):
    """Equal success masks, and equal adversarial inputs where the attack succeeded
    (torchattacks' APGD and Square hand back the clean input where they fail)."""
    with torch.no_grad():
        st = ref_model(xt).argmax(1) != y
    assert torch.equal(res.success, st)
    assert st.any()
    assert_close(res.x_adv[st].detach(), xt[st].detach(), rtol=0, atol=1e-8)  # torchattacks draws its random starts in float32
    DIFFS.append(float((res.x_adv[st] - xt[st]).detach().abs().max()))


DIFFS: list = []


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, model.training


def unchanged(model, snap):
    state, mode = snap
    return model.training == mode and all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


@pytest.fixture(scope="module")
def hf():
    torch.manual_seed(0)
    m = HFStyle().double().eval()
    with torch.no_grad():
        m.fc.weight.mul_(8)
    x = torch.rand(10, 1, 8, 8, dtype=torch.float64)
    return m, x, m(x)["logits"].argmax(1)


@pytest.fixture(scope="module")
def two():
    torch.manual_seed(1)
    m = HFStyle(side=3).double().eval()
    with torch.no_grad():
        m.fc.weight.mul_(8)
    img = torch.rand(8, 1, 8, 8, dtype=torch.float64)
    side = torch.rand(8, 3, dtype=torch.float64)
    return m, img, side, m(img, side)["logits"].argmax(1)


def _attacks():
    return {
        "fgsm": lambda: A.FGSM(eps=0.05),
        "pgd": lambda: A.PGD(eps=0.05, steps=6, step_size=0.01, random_start=False),
        "pgd_rand": lambda: A.PGD(eps=0.05, steps=6, seed=3),
        "pgd_l2": lambda: A.PGD(norm="l2", eps=0.5, steps=6, seed=3),
        "apgd": lambda: A.APGD(eps=0.05, steps=6, seed=0),
        "square": lambda: A.Square(eps=0.05, n_queries=40, seed=0),
        "autoattack": lambda: A.AutoAttack(eps=0.05, version="custom", attacks=["apgd-ce", "square"], steps=6,
                                           n_queries=30, seed=0),
        "pgd_early": lambda: A.PGD(eps=0.05, steps=6, seed=3, early_stop=True),
        "cw": lambda: A.CarliniWagnerL2(steps=8, binary_search_steps=2),
        "deepfool": lambda: A.DeepFool(steps=10),
        "deletion": lambda: A.DeletionAttack("saliency", k=6),
        "surrogate": lambda: A.SurrogateAttack(eps=0.05, steps=2, n_samples=16, seed=0),
        "uap": lambda: A.DataFreeUAP(eps=0.05, steps=4, seed=0),
    }


# --------------------------------------------------------------------------- dict / tuple / .logits outputs
@pytest.mark.parametrize("name", sorted(_attacks()))
def test_every_attack_runs_on_dict_outputs_as_on_the_logits(hf, name):
    m, x, y = hf
    snap = snapshot(m)
    ours = _attacks()[name]()(m, x, y)
    ref = _attacks()[name]()(Picks(m), x, y)
    assert unchanged(m, snap)
    assert_close(ours.x_adv, ref.x_adv, rtol=0, atol=0)
    assert torch.equal(ours.success, ref.success) and torch.equal(ours.queries, ref.queries)


@pytest.mark.parametrize("form", ["tuple", "object", "key", "callable"])
def test_output_forms_and_output_option(hf, form):
    m, x, y = hf
    atk = A.PGD(eps=0.05, steps=4, seed=0)
    ref = atk(Picks(m), x, y)
    if form == "tuple":
        res = atk(lambda z: (m(z)["logits"], m(z)["hidden_states"]), x, y)
    elif form == "object":
        res = atk(lambda z: Obj(m(z)["logits"]), x, y)
    elif form == "key":
        res = atk(lambda z: {"aux": z, "scores": m(z)["logits"]}, x, y, output="scores")
    else:
        res = atk(m, x, y, output=lambda out: out["logits"])
    assert_close(res.x_adv, ref.x_adv, rtol=0, atol=0)


def test_output_selects_another_head_and_forward_args_pass_through(hf):
    m, x, _ = hf
    y = m(x)["hidden_states"][:, :6].argmax(1)
    atk = A.PGD(eps=0.05, steps=4, step_size=0.02, random_start=False)
    head = lambda out: out["hidden_states"][:, :6]  # noqa: E731
    res = atk(m, x, y, output=head, forward_args={"scale": 3.0})
    ref = atk(lambda z: m(z, scale=3.0)["hidden_states"][:, :6], x, y)
    assert_close(res.x_adv, ref.x_adv, rtol=0, atol=0)
    assert res.success.any()


@pytest.mark.reference
def test_dict_outputs_equal_torchattacks_on_the_logits_module(hf):
    torchattacks = pytest.importorskip("torchattacks")
    m, x, y = hf
    pick = Picks(m).eval()
    pairs = [
        (A.FGSM(eps=0.05), torchattacks.FGSM(pick, eps=0.05)),
        (A.PGD(eps=0.05, steps=6, step_size=0.01, random_start=False),
         torchattacks.PGD(pick, eps=0.05, alpha=0.01, steps=6, random_start=False)),
        (A.APGD(eps=0.05, steps=6, seed=0), torchattacks.APGD(pick, eps=0.05, steps=6, seed=0)),
        (A.Square(eps=0.05, n_queries=40, seed=0), torchattacks.Square(pick, eps=0.05, n_queries=40, seed=0)),
    ]
    for ours, ref in pairs:
        same_as_torchattacks(ours(m, x, y), ref(x, y), pick, y)


# --------------------------------------------------------------------------- several inputs
@pytest.mark.reference
def test_image_and_side_input_equal_torchattacks_on_a_closure(two):
    torchattacks = pytest.importorskip("torchattacks")
    m, img, side, y = two
    close = Picks(m, side=side).eval()  # torchattacks puts a module in train mode back to train
    snap = snapshot(m)
    pairs = [
        (A.FGSM(eps=0.1), torchattacks.FGSM(close, eps=0.1)),
        (A.PGD(eps=0.1, steps=6, step_size=0.02, random_start=False),
         torchattacks.PGD(close, eps=0.1, alpha=0.02, steps=6, random_start=False)),
        (A.APGD(eps=0.1, steps=6, seed=0), torchattacks.APGD(close, eps=0.1, steps=6, seed=0)),
    ]  # torchattacks' Square calls the model on sub-batches, which a closure cannot follow
    for ours, ref in pairs:
        res = ours(m, (img, side), y, perturb=0)
        same_as_torchattacks(res, ref(img, y), close, y)
        assert torch.equal(res.extras["inputs_adv"][1], side)
        assert_close(res.x, img, rtol=0, atol=0)
    assert unchanged(m, snap)


@pytest.mark.parametrize("name", sorted(set(_attacks()) - {"uap"}))
def test_every_attack_with_a_side_input_gives_each_row_its_own_side_input(two, name):
    """Engines that call the model on sub-batches (early stopping, AutoAttack's stages,
    Square's active points) run sample by sample: every row gets its own side input
    (checked against per-sample runs on closures); the others equal the batch closure."""
    m, img, side, y = two
    res = _attacks()[name]()(m, (img, side), y, perturb=0)
    try:  # an engine that never sub-batches runs on the whole batch: equal to the batch closure
        ref = _attacks()[name]()(Picks(m, side=side).eval(), img, y)
    except RuntimeError:  # the closure cannot follow sub-batches: per-sample references
        ref = None
    if ref is not None:
        assert name not in ("pgd_early", "autoattack")  # these do sub-batch
        assert_close(res.x_adv, ref.x_adv, rtol=0, atol=0)
        return
    for i in range(img.shape[0]):
        ref = _attacks()[name]()(Picks(m, side=side[i:i + 1]), img[i:i + 1], y[i:i + 1])
        assert_close(res.x_adv[i:i + 1], ref.x_adv, rtol=0, atol=1e-12)
        assert bool(res.success[i]) == bool(ref.success[0])
    pred = m(*res.extras["inputs_adv"])["logits"].argmax(1)
    assert torch.equal(pred, res.pred_adv)


def test_per_sample_forward_args_follow_their_rows(two):
    m, img, side, y = two
    atk = A.PGD(eps=0.05, steps=6, seed=0, early_stop=True)
    scale = torch.linspace(0.5, 2.0, img.shape[0], dtype=img.dtype)[:, None]
    res = atk(lambda a, b, s: {"logits": m(a, b)["logits"] * s}, img, y, forward_args=(side, scale))
    for i in (0, 5):
        ref = atk(lambda a: m(a, side[i:i + 1])["logits"] * scale[i:i + 1], img[i:i + 1], y[i:i + 1])
        assert_close(res.x_adv[i:i + 1], ref.x_adv, rtol=0, atol=1e-12)


def test_perturb_every_input_and_per_input_eps_fgsm_formula(two):
    """FGSM with eps=(e_img, e_side): x_i' = clip(x_i + e_i sign(grad_i CE)), per input."""
    m, img, side, y = two
    res = A.FGSM(eps=0.1)(m, (img, side), y, eps=(0.05, 0.2))
    a, b = img.clone().requires_grad_(), side.clone().requires_grad_()
    loss = nn.functional.cross_entropy(m(a, b)["logits"], y, reduction="sum")
    ga, gb = torch.autograd.grad(loss, (a, b))
    ia, ib = res.extras["inputs_adv"]
    assert_close(ia, (img + 0.05 * ga.sign()).clamp(0, 1), rtol=0, atol=1e-12)
    assert_close(ib, (side + 0.2 * gb.sign()).clamp(0, 1), rtol=0, atol=1e-12)
    assert res.x_adv.shape == (8, 64 + 3)  # the perturbed inputs, packed
    n = res.extras["norms_per_input"]
    assert float(n[0]["linf"].max()) <= 0.05 + 1e-12 and float(n[1]["linf"].max()) <= 0.2 + 1e-12


def test_per_input_eps_l2_is_one_joint_ellipsoid(two):
    m, img, side, y = two
    res = A.PGD(norm="l2", eps=1.0, steps=8, seed=0)(m, (img, side), y, eps=(0.5, 0.1))
    n = res.extras["norms_per_input"]
    joint = (n[0]["l2"] / 0.5) ** 2 + (n[1]["l2"] / 0.1) ** 2
    assert float(joint.max()) <= 1 + 1e-9 and float(joint.max()) > 0.5
    for t in res.extras["inputs_adv"]:
        assert float(t.min()) >= 0 and float(t.max()) <= 1


def test_perturb_only_the_side_input(two):
    m, img, side, y = two
    res = A.PGD(eps=0.2, steps=6, step_size=0.05, random_start=False)(m, (img, side), y, perturb=[1])
    ref = A.PGD(eps=0.2, steps=6, step_size=0.05, random_start=False)(lambda s: m(img, s)["logits"], side, y)
    assert_close(res.x_adv, ref.x_adv, rtol=0, atol=0)
    assert torch.equal(res.extras["inputs_adv"][0], img)


def test_transfer_attack_with_a_side_input(two):
    m, img, side, y = two
    sub = HFStyle(side=3, seed=5).double().eval()
    res = A.TransferAttack(A.FGSM(eps=0.05), sub)(m, (img, side), y, perturb=0)
    ref = A.FGSM(eps=0.05)(Picks(sub, side=side), img, y)
    assert_close(res.x_adv, ref.x_adv, rtol=0, atol=0)
    assert res.queries.sum() == 0


def test_universal_attack_on_dict_outputs_and_clear_error_with_side_inputs(hf, two):
    m, x, y = hf
    assert_close(A.DataFreeUAP(eps=0.05, steps=4, seed=0)(m, x).x_adv,
                 A.DataFreeUAP(eps=0.05, steps=4, seed=0)(Picks(m), x).x_adv, rtol=0, atol=0)
    m2, img, side, y2 = two
    with pytest.raises(ValueError, match="perturbs the whole batch jointly"):
        A.DataFreeUAP(eps=0.05, steps=4, seed=0)(m2, (img, side), perturb=0)
    # every input perturbed: one universal perturbation of the packed inputs
    r = A.DataFreeUAP(eps=0.05, steps=4, seed=0)(m2, (img, side))
    ad = xadv.adapt(m2, inputs=(img, side))
    ref = A.DataFreeUAP(eps=0.05, steps=4, seed=0)(ad, ad.pack(img, side))
    assert r.x_adv.shape == (8, 67)
    assert_close(r.x_adv, ref.x_adv, rtol=0, atol=0)


def test_bad_several_input_options_are_clear(two):
    m, img, side, y = two
    atk = A.PGD(eps=0.05, steps=2)
    with pytest.raises(ValueError, match="valid indices 0..1"):
        atk(m, (img, side), y, perturb=2)
    with pytest.raises(ValueError, match="not perturbed"):
        atk(m, (img, side), y, perturb=0, eps=(0.05, 0.1))
    with pytest.raises(ValueError, match="one budget per input"):
        atk(m, (img, side), y, eps=(0.05,))
    with pytest.raises(ValueError, match="has none"):
        A.DeepFool()(m, (img, side), y, eps=(0.05, 0.1))
    with pytest.raises(ValueError, match="pass x as a tuple"):
        atk(Picks(m, side=side), img, y, perturb=0)
    with pytest.raises(ValueError, match="outside bounds"):
        atk(m, (img, side * 3), y)
    with pytest.raises(ValueError, match="different batch sizes"):
        atk(m, (img, side[:3]), y)
    with pytest.raises(TypeError, match="cannot be perturbed"):
        atk(lambda a, t: m(a, side)["logits"], (img, torch.zeros(8, 2, dtype=torch.long)), y)
    with pytest.raises(TypeError, match="forward_args"):
        atk(m, img, y, forward_args=side)


# --------------------------------------------------------------------------- real architectures
def test_resnet_with_side_input_and_dict_output():
    torch.manual_seed(0)
    net = xadv.zoo.resnet18(num_classes=3, width=4, small_input=True).eval()
    with torch.no_grad():
        net.fc.bias.zero_()
        net.fc.weight.mul_(50)
    tab = nn.Linear(2, 3)

    def model(image, side):
        return {"logits": net(image) + tab(side), "hidden_states": None}

    x = torch.rand(3, 3, 32, 32)
    side = torch.rand(3, 2)
    y = model(x, side)["logits"].argmax(1)
    snap = snapshot(net)
    atk = A.PGD(eps=8 / 255, steps=3, step_size=2 / 255, random_start=False)
    res = atk(model, (x, side), y, perturb=0)
    ref = atk(lambda z: net(z) + tab(side), x, y)
    assert_close(res.x_adv, ref.x_adv, rtol=0, atol=0)
    auto = A.AutoAttack(eps=8 / 255, version="custom", attacks=["apgd-ce"], seed=0)(model, (x, side), y, perturb=0)
    assert float(auto.norms["linf"].max()) <= 8 / 255 + 1e-6
    assert unchanged(net, snap)


def test_token_model_side_features_attacked_ids_passed_through():
    text = xadv.zoo.text_classifier()
    ids = torch.tensor([[2, 7, 9, 0, 5, 5], [4, 8, 8, 0, 1, 3], [3, 3, 6, 6, 2, 1]])
    w = torch.tensor([[1.0, -1.0]])

    def model(tokens, bias):
        return {"logits": text(tokens) + 4 * bias * w}

    bias = torch.full((3, 1), 0.5)
    y = model(ids, bias)["logits"].argmax(1)
    atk = A.PGD(eps=3.0, steps=5, step_size=1.0, random_start=False, bounds=(-4, 4))
    res = atk(model, (ids, bias), y, perturb=1)
    ref = atk(lambda b: model(ids, b)["logits"], bias, y)
    assert_close(res.x_adv, ref.x_adv, rtol=0, atol=0)
    assert torch.equal(res.extras["inputs_adv"][0], ids)
    assert res.success.all()
    # embeddings: the layer head of the token model (attacks in embedding space), dict output
    emb, head = xadv.layer_head(text, "embedding", ids)
    lo, hi = float(emb.min()) - 1, float(emb.max()) + 1
    r = A.PGD(eps=0.5, steps=5, seed=0, bounds=(lo, hi))(lambda e: {"logits": head(e)}, emb, y)
    assert r.x_adv.shape == emb.shape and float(r.norms["linf"].max()) <= 0.5 + 1e-6


# --------------------------------------------------------------------------- metrics that call the model
def test_robustness_metrics_on_dict_outputs_and_adapted_two_input_models(hf, two):
    from xadv.metrics import infidelity, max_sensitivity
    m, x, y = hf
    for fn, kw in ((infidelity, dict(n_samples=4, seed=0)), (max_sensitivity, dict(n_samples=3, seed=0))):
        assert_close(fn("saliency", m, x[:4], y[:4], **kw), fn("saliency", Picks(m), x[:4], y[:4], **kw))
    m2, img, side, y2 = two
    ad = xadv.adapt(m2, inputs=(img, side))
    z = ad.pack(img, side)
    flat = FlatTwo(m2)
    for fn, kw in ((infidelity, dict(n_samples=4, seed=0)), (max_sensitivity, dict(n_samples=3, seed=0))):
        v = fn("saliency", ad, z[:4], y2[:4], **kw)
        assert v.shape == (4,) and torch.isfinite(v).all()
        assert_close(v, fn("saliency", flat, z[:4], y2[:4], **kw))


class FlatTwo(nn.Module):
    """The two-input model on one flat (N, 64 + 3) tensor, written out by hand."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, z):
        return self.model(z[:, :64].reshape(-1, 1, 8, 8), z[:, 64:])["logits"]


def test_several_input_results_slice_and_save(two, tmp_path):
    m, img, side, y = two
    res = A.PGD(eps=0.1, steps=3, seed=0)(m, (img, side), y, eps=(0.1, 0.05))
    part = res[2:5]
    assert [t.shape[0] for t in part.extras["inputs_adv"]] == [3, 3]
    assert torch.equal(part.extras["inputs_adv"][1], res.extras["inputs_adv"][1][2:5])
    assert torch.equal(part.extras["norms_per_input"][0]["linf"], res.extras["norms_per_input"][0]["linf"][2:5])
    back = type(res).load(res.save(tmp_path / "r.safetensors"))
    for a, b in zip(back.extras["inputs_adv"], res.extras["inputs_adv"]):
        assert torch.equal(a, b)


def test_the_attacks_docs_example_for_own_models_runs():
    import re
    from pathlib import Path
    text = (Path(__file__).resolve().parents[1] / "docs" / "attacks.md").read_text()
    part = text[text.index("## Your own models"):text.index("## Correctness (tests)")]
    g: dict = {}
    exec(compile("\n".join(re.findall(r"```python\n(.*?)```", part, re.S)), "docs/attacks.md", "exec"), g)
    assert torch.equal(g["model_out"].argmax(1), g["res"].pred_adv)
    assert float(g["res2"].extras["norms_per_input"][1]["linf"].max()) <= 0.02 + 1e-6


def test_every_model_metric_reads_dict_outputs_like_the_logits():
    """Every metric of the registry that calls the model gives on a dict-output model
    what it gives on a module returning the logits."""
    import inspect
    import xadv.metrics as M
    torch.manual_seed(0)
    m = HFStyle().double().eval()
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    pick = Picks(m).eval()
    y = pick(x).argmax(1)
    a = xadv.explain(pick, x, method="saliency", target=y).attributions
    checked = []
    for name, fn in M.REGISTRY.items():
        sig = inspect.signature(fn)
        if list(sig.parameters)[0] != "model" or name in ("data_randomisation", "focus"):
            continue
        kw = {k: v for k, v in dict(a=a, explainer="saliency", seed=0, n_samples=3, subset_size=8).items()
              if k in sig.parameters}
        extra_ref, extra = ({"layers": ["model.conv"]}, {"layers": ["conv"]}) \
            if name == "relative_representation_stability" else ({}, {})
        want = fn(pick, x, y, **kw, **extra_ref)
        got = fn(m, x, y, **kw, **extra)
        assert_close(torch.as_tensor(got), torch.as_tensor(want), equal_nan=True, msg=name)
        checked.append(name)
    assert len(checked) >= 20


@pytest.mark.parametrize("explainer", ["ig", "smoothgrad"])
def test_explainer_attacks_expand_rows_with_the_right_side_inputs(two, explainer):
    """IG steps and SmoothGrad copies declare their rows: the side input follows them
    (equal to the same attack on xadv.adapt with the side input as a per-sample argument)."""
    from xadv.explainers import IntegratedGradients, SmoothGrad
    m, img, side, y = two
    ex = IntegratedGradients(steps=4) if explainer == "ig" else SmoothGrad(n_samples=3, seed=0)
    res = A.ExplainerPGD(ex, eps=0.05, steps=3)(m, (img, side), y, perturb=0)
    ref = A.ExplainerPGD(ex, eps=0.05, steps=3)(xadv.adapt(m, forward_args=(side,)), img, y)
    assert_close(res.x_adv, ref.x_adv, rtol=0, atol=0)
    assert (res.x_adv != img).any()


def test_per_input_eps_keeps_every_input_in_bounds_and_image_attacks_need_one_image(two):
    """With eps=(0.1, 0.03) the engine's box is the hull of the scaled inputs; each input
    is still clamped to the attack's bounds (the APGD step of 2 * eps reaches them)."""
    m, img, side, y = two
    res = A.APGD(eps=0.1, steps=6, seed=0)(m, (img, side), y, eps=(0.1, 0.03))
    n = res.extras["norms_per_input"]
    assert float(n[0]["linf"].max()) <= 0.1 + 1e-12 and float(n[1]["linf"].max()) <= 0.03 + 1e-12
    for t in res.extras["inputs_adv"]:
        assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    pred = m(*res.extras["inputs_adv"])["logits"].argmax(1)
    assert torch.equal(pred, res.pred_adv) and res.success.any()
    for atk in (A.Square(eps=0.1, n_queries=10), A.AutoAttack(eps=0.1)):
        with pytest.raises(ValueError, match="perturb one image input"):
            atk(m, (img, side), y)


def test_per_sample_runs_aggregate_the_batch_extras(two):
    """AutoAttack run sample by sample (a per-sample side input) reports batch-level
    robust accuracy and per-attack counts, not the first sample's."""
    m, img, side, y = two
    res = A.AutoAttack(eps=0.1, version="custom", attacks=["apgd-ce", "apgd-dlr"], steps=4, seed=0)(
        m, (img, side), y, perturb=0)
    acc, per = res.extras["robust_accuracy"], res.extras["per_attack"]
    assert acc["clean"] == 1.0 and per["apgd-ce"]["ran_on"] == img.shape[0]
    assert abs(acc["apgd-dlr"] - (1 - float(res.success.double().mean()))) < 1e-12
    fooled = sum(p["fooled"] for p in per.values())
    assert fooled == int(res.success.sum()) and res.extras["fooled_by"].shape == (img.shape[0],)
    assert int(res.queries.sum()) == sum(p["queries"] for p in per.values())
