"""Self-attention without the sequence-first detour, for input-gradient work.

``nn.MultiheadAttention`` with ``batch_first=True`` outside its inference fast path (that
is, whenever a gradient is recorded) transposes its (N, L, E) input to (L, N, E), projects,
moves the heads around twice and transposes back: copies and batched matrix products
that a batch-first computation does not need. :func:`fast_self_attention` gives each
eligible module, for the duration of the block, a forward that computes the same function
batch-first: one packed input projection on (N, L, E), ``scaled_dot_product_attention``
on (N, H, L, E/H), the output projection. A forward+backward input gradient of ViT-Tiny
(16 rows, 224 px, 2 threads) takes 0.92x the time, with gradients equal to the stock
module's (max difference 0 in float32 there; in general equal to float rounding).

The shortcut takes only the calls it computes exactly: self-attention (query, key and
value the same tensor) on a 3-d batch-first input, no masks, ``need_weights=False``, not
causal, while a gradient is recorded; the module an ``nn.MultiheadAttention`` itself (not
a subclass), with packed projection weights, no ``bias_k``/``bias_v``, no
``add_zero_attn``, and in eval mode or with dropout 0. Every other call (and a module
whose ``forward`` a user replaced) goes to the module's own forward. Without a gradient
the stock module already takes PyTorch's fused inference path, which is left alone.

Used with the entry shortcuts (:func:`xadv.explainers._entry.fast_input_gradient`) by the
gradient explainers without ``create_graph`` and by the loss-gradient attacks; off inside
``fast_attention(False)``.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._common import switched

_ENABLED = [True]


@contextlib.contextmanager
def fast_attention(enabled: bool = True) -> Iterator[None]:
    """Turn the batch-first self-attention shortcut (:mod:`xadv.explainers._attention`)
    on or off inside the block; on by default. Results agree either way to float rounding.

    >>> import torch, xadv
    >>> from xadv.zoo.architectures import vit_tiny
    >>> vit = vit_tiny(num_classes=10, image_size=32, patch_size=8, num_layers=2)
    >>> x = torch.rand(2, 3, 32, 32)
    >>> with xadv.explainers.fast_attention(False):
    ...     plain = xadv.explain(vit, x, method="saliency", target=0).attributions
    >>> torch.allclose(xadv.explain(vit, x, method="saliency", target=0).attributions, plain, atol=1e-6)
    True
    """
    with switched(_ENABLED, enabled):
        yield


def _eligible(m: nn.Module) -> bool:
    return (type(m) is nn.MultiheadAttention and m.batch_first and m._qkv_same_embed_dim
            and m.in_proj_weight is not None and m.bias_k is None and m.bias_v is None
            and not m.add_zero_attn and (not m.training or m.dropout == 0.0)
            and "forward" not in m.__dict__)


def _patch(m: nn.MultiheadAttention):
    original = type(m).forward.__get__(m)
    heads = m.num_heads

    def forward(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if (need_weights or key_padding_mask is not None or attn_mask is not None or is_causal
                or not (query is key and key is value) or not isinstance(query, torch.Tensor)
                or query.dim() != 3 or not torch.is_grad_enabled()
                or query.dtype != m.in_proj_weight.dtype):
            return original(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                            attn_mask=attn_mask, average_attn_weights=average_attn_weights, is_causal=is_causal)
        n, length, e = query.shape
        qkv = F.linear(query, m.in_proj_weight, m.in_proj_bias)
        qkv = qkv.view(n, length, 3, heads, e // heads).permute(2, 0, 3, 1, 4)   # (3, N, H, L, E/H)
        o = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        o = o.transpose(1, 2).reshape(n, length, e)
        return F.linear(o, m.out_proj.weight, m.out_proj.bias), None

    forward._xadv_attention = True
    m.forward = forward

    def undo():
        m.__dict__.pop("forward", None)
    return undo


@contextlib.contextmanager
def fast_self_attention(model) -> Iterator[None]:
    """Inside the block, every eligible ``nn.MultiheadAttention`` of ``model`` computes
    self-attention batch-first (see the module docstring); put back on exit, also after an
    error. A model that is not an ``nn.Module`` or has no such module is left alone."""
    if not _ENABLED[0] or not isinstance(model, nn.Module):
        yield
        return
    undo = [_patch(m) for m in model.modules() if _eligible(m)]
    try:
        yield
    finally:
        for u in undo:
            u()
