"""The class-token shortcut (xadv._tokens): the traced copy runs a class-token
classifier's last block for token 0 alone, computes the model's function and input
gradient, does fewer multiply-adds, and leaves every other model whole."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.utils.flop_counter import FlopCounterMode

import xadv
from xadv._fold import folded
from xadv._tokens import FirstToken, prune_class_token
from xadv.explainers import class_token_pruning
from xadv.zoo.architectures import vit_tiny

_FIRST = (FirstToken,)


def _vit(layers=3, dtype=torch.float64):
    model = vit_tiny(num_classes=5, image_size=32, patch_size=8, num_layers=layers, hidden_dim=24,
                     mlp_dim=48).to(dtype)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():   # biases and the class token start at zero: make them count
        for m in model.modules():
            if isinstance(m, nn.MultiheadAttention):
                m.in_proj_bias.copy_(torch.randn(m.in_proj_bias.shape, generator=g, dtype=dtype))
                m.out_proj.bias.copy_(torch.randn(m.out_proj.bias.shape, generator=g, dtype=dtype))
        model.class_token.copy_(torch.randn(model.class_token.shape, generator=g, dtype=dtype))
    return model


def _hand_pruned(m, x):
    """The ViT with its last block written out for the class token (the reference)."""
    n = x.shape[0]
    h = m.conv_proj(x).reshape(n, m.hidden_dim, -1).permute(0, 2, 1)
    h = torch.cat([m.class_token.expand(n, -1, -1), h], 1) + m.encoder.pos_embedding
    blocks = list(m.encoder.layers)
    for b in blocks[:-1]:
        h = b(h)
    b = blocks[-1]
    y = b.ln_1(h)
    h0 = h[:, :1] + b.self_attention(y[:, :1], y, y, need_weights=False)[0]
    h0 = h0 + b.mlp(b.ln_2(h0))
    return m.heads(m.encoder.ln(h0)[:, 0])


def _flops(fn, x):
    with FlopCounterMode(display=False) as c:
        fn(x)
    return c.get_total_flops()


def _analysis(model, x):
    """The rewrite alone (no check pass): the new modules prune_class_token adds."""
    gm = fx.symbolic_trace(model)
    with torch.no_grad():
        ShapeProp(gm).propagate(x)
    return prune_class_token(copy.deepcopy(gm.graph), dict(gm.named_modules()))


def _pruned(model, x) -> bool:
    copy_ = folded(model, x)
    return copy_ is not model and any(isinstance(m, _FIRST) for m in copy_.modules())


def test_vit_last_block_runs_for_the_class_token():
    m = _vit()
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64)
    c = folded(m, x)
    assert _pruned(m, x)
    with torch.no_grad():
        assert torch.allclose(c(x), m(x), rtol=0, atol=1e-12)
        assert torch.allclose(_hand_pruned(m, x), m(x), rtol=0, atol=1e-12)
    # the same multiply-adds as the hand-written reference, fewer than the whole model
    assert _flops(c, x) == _flops(lambda z: _hand_pruned(m, z), x) < _flops(m, x)
    # one attention with a token-0 query: the last block of three
    assert sum(isinstance(mod, FirstToken) and isinstance(mod.inner, nn.MultiheadAttention)
               for mod in c.modules()) == 1


def test_user_model_untouched():
    m = _vit()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    attrs = {id(mod): set(vars(mod)) for mod in m.modules()}
    xadv.explain(m, x, method="integrated_gradients", target=0, steps=4)
    assert all(torch.equal(state[k], v) for k, v in m.state_dict().items())
    assert all(set(vars(mod)) == attrs[id(mod)] for mod in m.modules())
    assert [type(mod) for mod in m.modules() if isinstance(mod, _FIRST)] == []


@pytest.mark.parametrize("method,kw", [
    ("saliency", {}), ("integrated_gradients", {"steps": 8}), ("smoothgrad", {"n_samples": 6, "seed": 0}),
    ("gradient_shap", {"n_samples": 6, "seed": 0}), ("input_x_gradient", {}),
    ("occlusion", {"window": 8, "stride": 8}),
])
def test_explainers_equal_with_and_without(method, kw):
    m = _vit()
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64)
    a = xadv.explain(m, x, method=method, target=1, **kw).attributions
    with class_token_pruning(False):
        assert folded(m, x) is m
        b = xadv.explain(m, x, method=method, target=1, **kw).attributions
    assert a.abs().max() > 0
    assert torch.allclose(a, b, rtol=0, atol=1e-10 * float(b.abs().max()))


def test_pgd_iterates_equal():
    m = _vit()
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64)
    atk = xadv.attacks.PGD(eps=0.03, steps=5, random_start=False)
    a = atk(m, x).x_adv
    with class_token_pruning(False):
        b = atk(m, x).x_adv
    assert (a - x).abs().max() > 0.01
    assert torch.allclose(a, b, rtol=0, atol=1e-10)


class _EncoderCls(nn.Module):
    """Class token + nn.TransformerEncoder (or a list of its layers) + a head on token 0."""

    def __init__(self, kind="encoder", norm_first=False, activation="gelu", batch_first=True, norm=True,
                 select="getitem"):
        super().__init__()
        torch.manual_seed(0)
        d, self.batch_first, self.kind, self.select = 12, batch_first, kind, select
        self.proj = nn.Linear(4, d)
        self.cls = nn.Parameter(torch.randn(1, 1, d))
        layer = nn.TransformerEncoderLayer(d, 3, 24, dropout=0.1, activation=activation, batch_first=batch_first,
                                           norm_first=norm_first)
        if kind == "encoder":
            self.enc = nn.TransformerEncoder(layer, 3, norm=nn.LayerNorm(d) if norm else None,
                                             enable_nested_tensor=False)
        else:
            self.enc = nn.Sequential(*[copy.deepcopy(layer) for _ in range(3)])
        for p in self.enc.parameters():   # non-zero biases everywhere
            with torch.no_grad():
                p.add_(0.1 * torch.randn(p.shape))
        self.head = nn.Linear(d, 3)
        self.eval()

    def forward(self, x):                                  # (N, L, 4)
        h = self.proj(x)
        h = torch.cat([self.cls.expand(h.shape[0], -1, -1), h], 1)
        if not self.batch_first:
            return self.head(self.enc(h.transpose(0, 1))[0])
        h = self.enc(h)
        return self.head(h.select(1, 0) if self.select == "select" else h[:, 0, :])


@pytest.mark.parametrize("kw", [
    dict(kind="encoder"), dict(kind="encoder", norm_first=True), dict(kind="encoder", norm=False),
    dict(kind="encoder", activation=torch.nn.functional.relu), dict(kind="layers", norm_first=True),
    dict(kind="layers", select="select"),
])
def test_transformer_encoder_modules(kw):
    m = _EncoderCls(**kw).double()
    x = torch.randn(4, 9, 4, dtype=torch.float64)
    assert _pruned(m, x)
    c = folded(m, x)
    assert _flops(c, x) < _flops(m, x)
    xa = x.clone().requires_grad_(True)
    xb = x.clone().requires_grad_(True)
    ya, yb = c(xa), m(xb)
    assert torch.allclose(ya, yb, rtol=0, atol=1e-12)
    ga, = torch.autograd.grad(ya[:, 1].sum(), xa)
    gb, = torch.autograd.grad(yb[:, 1].sum(), xb)
    assert torch.allclose(ga, gb, rtol=0, atol=1e-12)


class _Block(nn.Module):
    """One attention block whose output feeds ``mode``."""

    def __init__(self, mode, d=12, t=7):
        super().__init__()
        torch.manual_seed(0)
        self.mode = mode
        self.proj = nn.Linear(4, d)
        self.att = nn.MultiheadAttention(d, 3, batch_first=True)
        self.ln = nn.LayerNorm(d) if mode != "ln_over_tokens" else nn.LayerNorm((t, d))
        self.pos = nn.Parameter(torch.randn(1, t, d))
        self.bias = nn.Parameter(torch.randn(d))
        self.fc = nn.Linear(d, d)
        self.head = nn.Linear(2 * d if mode == "cls_and_mean" else d, 3)

    def forward(self, x):                                  # (N, 7, 4)
        h = self.proj(x)
        if self.mode == "padding_mask":
            pad = (x[..., 0] * 0 + torch.arange(x.shape[1])) >= 5     # the last two keys (N, T)
            a = self.att(h, h, h, key_padding_mask=pad, need_weights=False)[0]
        else:
            a = self.att(h, h, h, need_weights=False)[0]
        gate = torch.sigmoid(x[..., :1])                  # (N, T, 1): varies along the tokens
        h = self.ln(h + a * gate + self.pos) + self.bias
        h = h + torch.relu(self.fc(h))
        if self.mode == "cls_and_mean":
            return self.head(torch.cat([h[:, 0], h.mean(1)], 1))
        if self.mode == "token_1":
            return self.head(h[:, 1])
        if self.mode == "mix_after":
            h = h + h.flip(1)
        return self.head(h[:, 0])


@pytest.mark.parametrize("mode", ["plain"])
def test_operands_along_and_across_tokens(mode):
    # the residual, a (N, T, 1) gate and a (1, T, D) embedding are sliced, a (D,) bias kept
    m = _Block(mode).double().eval()
    x = torch.randn(3, 7, 4, dtype=torch.float64)
    assert [type(w.inner) for w in _analysis(m, x).values()] == [nn.MultiheadAttention]
    assert _pruned(m, x)
    with torch.no_grad():
        assert torch.allclose(folded(m, x)(x), m(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", ["cls_and_mean", "token_1", "mix_after", "padding_mask", "ln_over_tokens"])
def test_left_whole(mode):
    # the last block also feeds a mean, another token is read, tokens mix after the
    # attention, a padding mask, a LayerNorm over the tokens: no rewrite
    m = _Block(mode).double().eval()
    x = torch.randn(3, 7, 4, dtype=torch.float64)
    assert _analysis(m, x) == {}
    assert folded(m, x) is m


def test_sequence_first_encoder_left_whole():
    m = _EncoderCls(batch_first=False).double()
    x = torch.randn(2, 9, 4, dtype=torch.float64)
    assert not _pruned(m, x)


def test_copy_follows_replaced_module():
    m = _vit()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    assert _pruned(m, x)
    last = m.encoder.layers[-1]
    last.mlp = nn.Sequential(nn.Linear(24, 24), nn.Tanh()).double()   # a new module: the copy is rebuilt
    with torch.no_grad():
        assert torch.allclose(folded(m, x)(x), m(x), rtol=0, atol=1e-12)


def test_switch_rejects_non_bool():
    with pytest.raises(TypeError, match="bool"):
        with class_token_pruning(1):
            pass
