"""HiResCAM, XGrad-CAM, LayerCAM, Score-CAM, Ablation-CAM, Eigen-CAM: pytorch-grad-cam's raw
maps (before its min-max scaling and resizing) on the digits CNN and a ResNet-style net,
gradcheck of the differentiable ones, flags, consumers."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import xadv
import xadv.data
import xadv.zoo
from _refs import import_reference
from xadv.explainers import AblationCAM, EigenCAM, HiResCAM, LayerCAM, ScoreCAM, XGradCAM

PAIRS = {"hirescam": (HiResCAM, "HiResCAM"), "xgradcam": (XGradCAM, "XGradCAM"), "layercam": (LayerCAM, "LayerCAM"),
         "scorecam": (ScoreCAM, "ScoreCAM"), "ablationcam": (AblationCAM, "AblationCAM"),
         "eigencam": (EigenCAM, "EigenCAM")}


def _resnet():
    from test_propagation import resnet_style
    return resnet_style().float()


def _reference_raw(pgc, cls_name, model, layer, x, y):
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    cam = getattr(pgc, cls_name)(model=model, target_layers=[layer])
    if hasattr(cam, "batch_size"):
        cam.batch_size = 8
    targets = [ClassifierOutputTarget(int(c)) for c in y]
    outputs = cam.activations_and_grads(x)
    if cam.uses_gradients:
        model.zero_grad()
        sum(t(o) for t, o in zip(targets, outputs)).backward(retain_graph=True)
    acts = cam.activations_and_grads.activations[-1].cpu().numpy()
    grads = cam.activations_and_grads.gradients[-1].cpu().numpy() if cam.uses_gradients else None
    raw = cam.get_cam_image(x, layer, targets, acts, grads, False)
    cam.activations_and_grads.release()
    model.zero_grad(set_to_none=True)
    return np.maximum(raw, 0)


@pytest.mark.reference
@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("arch", ["digits", "resnet"])
@pytest.mark.parametrize("name", list(PAIRS))
def test_cams_match_pytorch_grad_cam(arch, name, monkeypatch):
    pgc = import_reference("pytorch_grad_cam")
    import pytorch_grad_cam.score_cam as sc
    import pytorch_grad_cam.ablation_cam as ac
    monkeypatch.setattr(sc.tqdm, "tqdm", lambda it, *a, **k: it)
    monkeypatch.setattr(ac.tqdm, "tqdm", lambda it, *a, **k: it)
    if arch == "digits":
        model = xadv.zoo.digits_cnn(pretrained=True).eval()
        x, y = xadv.data.load_digits(split="test")
        x, y = x[:3], y[:3]
        layer, lname = model.features.relu3, "features.relu3"
    else:
        model = _resnet()
        x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
        y = torch.tensor([1, 3])
        layer, lname = model[4].relu1, "4.relu1"
    cls, ref_name = PAIRS[name]
    ref = _reference_raw(pgc, ref_name, model, layer, x, y)
    ours = cls(layer=lname)(model, x, y).raw.detach().numpy()
    if name == "eigencam":
        # the singular vector's sign is arbitrary: pytorch-grad-cam keeps NumPy's, xadv orients the
        # map along the channel sum; compare the signed projections up to that sign
        from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection
        with torch.no_grad():
            acts = []
            h = layer.register_forward_hook(lambda m, i, o: acts.append(o))
            model(x)
            h.remove()
        ref = get_2d_projection(acts[0].numpy())
        ours = cls(layer=lname, relu=False)(model, x, y).raw.numpy()
        flip = np.sign((ours * ref).sum((1, 2)))
        assert (flip != 0).all()
        ref = ref * flip[:, None, None]
    scale = max(np.abs(ref).max(), 1e-12)
    assert scale > 1e-6
    # pytorch-grad-cam computes in float32 (NumPy); measured max differences in docs/explainers.md
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-5 * scale)


@pytest.mark.parametrize("cls", [HiResCAM, XGradCAM, LayerCAM, EigenCAM])
def test_gradcheck_create_graph(cls):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Softplus(beta=2.0), nn.Conv2d(3, 4, 3, padding=1),
                        nn.Softplus(beta=2.0), nn.Flatten(), nn.Linear(4 * 25, 3)).double().eval()
    x = torch.rand(2, 1, 5, 5, dtype=torch.float64)
    ex = cls(layer="2", relu=False)
    assert ex.differentiable
    plain = ex(net, x, 1).attributions
    graph = ex(net, x.clone().requires_grad_(), 1, create_graph=True).attributions
    torch.testing.assert_close(graph.detach(), plain, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(lambda xx: ex(net, xx, 1, create_graph=True).attributions,
                                    (x.clone().requires_grad_(),))


def test_sampling_cams_are_not_differentiable():
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 25, 3))
    for cls in (ScoreCAM, AblationCAM):
        assert not cls.differentiable
        with pytest.raises(TypeError, match="not differentiable"):
            cls()(net, torch.rand(1, 1, 5, 5), create_graph=True)


def test_ablation_cam_weight_is_the_relative_score_drop():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(3, 2)).double().eval()
    x = torch.rand(1, 1, 5, 5, dtype=torch.float64)
    e = AblationCAM(layer="1", relu=False)(net, x, 0)
    a = net[1](net[0](x)).mean((2, 3))[0]          # pooled channels
    w, b = net[4].weight[0], net[4].bias[0]
    y = (w * a).sum() + b
    weights = (w * a) / y                           # dropping channel k removes w_k a_k
    expected = (weights[:, None, None] * net[1](net[0](x))[0]).sum(0)
    torch.testing.assert_close(e.raw[0], expected.detach(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("cls", [xadv.explainers.GradCAM, HiResCAM, XGradCAM, LayerCAM])
def test_layers_before_the_cam_layer_record_no_graph(cls):
    """Without create_graph the gradient starts at the hooked layer: the layers before it
    record no graph (the same map as with a differentiable input), and with create_graph
    they do."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 3, padding=1),
                        nn.ReLU(), nn.Flatten(), nn.Linear(4 * 25, 3)).double().eval()
    seen = []
    net[1].register_forward_hook(lambda m, i, o: seen.append(o.requires_grad))
    x = torch.rand(2, 1, 5, 5, dtype=torch.float64)
    plain = cls(layer="2")(net, x, 1)
    assert seen == [False]
    graph = cls(layer="2")(net, x.clone().requires_grad_(), 1, create_graph=True)
    assert seen == [False, True]
    torch.testing.assert_close(graph.attributions.detach(), plain.attributions, rtol=0, atol=1e-12)
    assert all(p.requires_grad for p in net.parameters())
