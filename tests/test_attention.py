"""The batch-first self-attention shortcut (xadv.explainers._attention): the same
function and input gradient as the stock nn.MultiheadAttention, taken only for the calls
it computes exactly, and the module put back after every call."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import xadv
from xadv.explainers import IntegratedGradients, Saliency, SmoothGrad, fast_attention
from xadv.explainers._attention import fast_self_attention
from xadv.zoo.architectures import vit_tiny


def _vit(dtype=torch.float64):
    model = vit_tiny(num_classes=5, image_size=32, patch_size=8, num_layers=2, hidden_dim=24, mlp_dim=48).to(dtype)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # attention biases start at zero: make them count
        for m in model.modules():
            if isinstance(m, nn.MultiheadAttention):
                m.in_proj_bias.copy_(torch.randn(m.in_proj_bias.shape, generator=g, dtype=dtype))
                m.out_proj.bias.copy_(torch.randn(m.out_proj.bias.shape, generator=g, dtype=dtype))
    return model


class _Tokens(nn.Module):
    """Token model with one MultiheadAttention called as given by ``mode``."""

    def __init__(self, mode, batch_first=True, dim=12, heads=3):
        super().__init__()
        torch.manual_seed(0)
        self.mode, self.batch_first = mode, batch_first
        self.proj = nn.Linear(4, dim)
        self.att = nn.MultiheadAttention(dim, heads, batch_first=batch_first)
        self.head = nn.Linear(dim, 3)

    def forward(self, x):                       # x (N, L, 4)
        h = self.proj(x)
        if not self.batch_first:
            h = h.transpose(0, 1)
        L = h.shape[1] if self.batch_first else h.shape[0]
        if self.mode == "self":
            y, _ = self.att(h, h, h, need_weights=False)
        elif self.mode == "causal_mask":
            mask = torch.triu(torch.ones(L, L, dtype=torch.bool), 1)
            y, _ = self.att(h, h, h, attn_mask=mask, need_weights=False)
        elif self.mode == "padding_mask":
            pad = torch.zeros(h.shape[0], L, dtype=torch.bool)
            pad[:, -2:] = True
            y, _ = self.att(h, h, h, key_padding_mask=pad, need_weights=False)
        elif self.mode == "cross":
            y, _ = self.att(h, h.flip(1), h.flip(1), need_weights=False)
        else:  # weights asked for
            y, w = self.att(h, h, h, need_weights=True)
            y = y + w.sum(-1, keepdim=True)[..., :1]
        if not self.batch_first:
            y = y.transpose(0, 1)
        return self.head(y.mean(1))


@pytest.mark.parametrize("make", [
    lambda: Saliency(), lambda: IntegratedGradients(steps=6), lambda: SmoothGrad(n_samples=4, seed=0)],
    ids=["saliency", "ig", "smoothgrad"])
def test_vit_maps_equal_the_stock_attention_in_float64(make):
    model = _vit().eval()
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64)
    fast = make()(model, x, target=1).attributions
    with fast_attention(False):
        stock = make()(model, x, target=1).attributions
    assert torch.allclose(fast, stock, atol=1e-12, rtol=0), (fast - stock).abs().max()
    assert stock.abs().max() > 0


def test_the_shortcut_runs_and_computes_the_module():
    """Inside the block the module's forward is the shortcut, and its output and input
    gradient equal the stock module's; outside, the module is as it was."""
    model = _vit().eval()
    att = model.encoder.layers[0].self_attention
    h = torch.rand(2, 17, 24, dtype=torch.float64, requires_grad=True)
    y0, _ = att(h, h, h, need_weights=False)
    (g0,) = torch.autograd.grad(y0.square().sum(), h)
    with fast_self_attention(model):
        assert getattr(att.forward, "_xadv_attention", False)
        y1, w = att(h, h, h, need_weights=False)
        (g1,) = torch.autograd.grad(y1.square().sum(), h)
    assert w is None and "forward" not in att.__dict__
    assert torch.allclose(y1, y0, atol=1e-12) and torch.allclose(g1, g0, atol=1e-12)


@pytest.mark.parametrize("mode", ["causal_mask", "padding_mask", "cross", "weights"])
def test_calls_it_cannot_take_go_to_the_stock_forward(mode):
    """Masks, cross-attention and attention weights: the shortcut would compute another
    function (it ignores masks), so equality with the stock module shows it stood aside."""
    model = _Tokens(mode).double().eval()
    x = torch.rand(2, 6, 4, dtype=torch.float64)
    fast = Saliency()(model, x, target=0).attributions
    with fast_attention(False):
        stock = Saliency()(model, x, target=0).attributions
    assert torch.allclose(fast, stock, atol=1e-12, rtol=0)
    if mode in ("causal_mask", "padding_mask"):  # the shortcut on these calls would be wrong
        unmasked = _Tokens("self").double().eval()
        unmasked.load_state_dict(model.state_dict())
        assert not torch.allclose(Saliency()(unmasked, x, target=0).attributions, stock, atol=1e-6)


def test_ineligible_modules_are_not_patched():
    seq_first = _Tokens("self", batch_first=False)
    sub = _Tokens("self")
    sub.att.__class__ = type("MyAttention", (nn.MultiheadAttention,), {})
    own = _Tokens("self")
    own.att.forward = lambda *a, **k: nn.MultiheadAttention.forward(own.att, *a, **k)
    dropout = _Tokens("self").train()
    dropout.att.dropout = 0.1
    for model in (seq_first, sub, own, dropout):
        with fast_self_attention(model):
            assert not getattr(model.att.forward, "_xadv_attention", False)
    m = _Tokens("self")
    with fast_attention(False), fast_self_attention(m):
        assert "forward" not in m.att.__dict__


def test_module_put_back_after_an_error_and_pgd_iterates_unchanged():
    model = _vit(torch.float32).eval()
    atts = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]

    class Boom(Exception):
        pass

    def raising(module, inp, out):
        raise Boom

    handle = model.heads.register_forward_hook(raising)
    with pytest.raises(Boom):
        Saliency()(model, torch.rand(2, 3, 32, 32), target=0)
    handle.remove()
    assert all("forward" not in m.__dict__ for m in atts)
    x = torch.rand(4, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 3])
    pgd = xadv.attacks.PGD(eps=8 / 255, steps=5, seed=0)
    a = pgd(model, x, y).x_adv
    with fast_attention(False):
        b = pgd(model, x, y).x_adv
    assert torch.allclose(a, b, atol=1e-6)
    assert all("forward" not in m.__dict__ for m in atts)
