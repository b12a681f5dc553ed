"""The last transformer block computed for the class token alone.

A classifier that reads a transformer's class token (torchvision's and timm's ViT,
``x[:, 0]`` before the head) uses one of the last block's T output tokens. In that block
only the attention's keys and values need every token: the query, the attention output,
the residual adds, the MLP and any norm after it are per token, and their other T - 1
rows are computed and then dropped (and, in a backward pass, differentiated with a zero
gradient). Computed for the class token alone, ViT-Tiny at 224 px (197 tokens, 12
blocks) does about 7% fewer multiply-adds in a forward and in a backward pass; a 6-block
model about 14%.

:func:`prune_class_token` rewrites a ``torch.fx`` graph of the model (the copy that
:mod:`xadv._fold` traces for input-gradient and forward-only explainers, and for the
loss-gradient attacks) so that:

* a chain of per-token operations ending in a selection of token 0 (``x[:, 0]``,
  ``x[:, 0, :]``, ``x.select(1, 0)``) runs on token 0 only (a (N, 1, ...) slice). The
  per-token operations: ``LayerNorm`` over the last dimension, ``Linear``, ``Dropout``
  (the model is in eval mode), ``Identity``, elementwise activations, and ``+ - * /``
  between such tensors or with a tensor that does not vary along the token dimension;
* where the chain starts at ``nn.MultiheadAttention`` self-attention (``batch_first``,
  no masks), that call gets token 0 as its query and every token as keys and values;
* where it starts at an ``nn.TransformerEncoderLayer`` or ``nn.TransformerEncoder``
  (``batch_first``, no masks), the last layer runs with a token-0 query.

Every node of the chain must feed only the chain or the selection (a last block that
also feeds a mean over its tokens is left whole), and every operand's shape is checked
on the probe pass. The copy computes the model's function; :mod:`xadv._fold` compares it
with the model on the probe rows before using it. Results agree with the whole model to
float rounding (the class token's row is computed by the same operations on fewer rows).
Off inside ``class_token_pruning(False)``.
"""
from __future__ import annotations

import contextlib
import operator
from typing import Dict, Iterator, Optional, Set

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._common import switched

_ENABLED = [True]

#: Modules whose output row for a token depends only on that token's input row
#: (exact types: a subclass may compute something else).
_TOKENWISE_MODULES = frozenset({
    nn.LayerNorm, nn.Linear, nn.Dropout, nn.Identity, nn.GELU, nn.ReLU, nn.ReLU6, nn.SiLU, nn.Tanh,
    nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.Softplus, nn.Mish, nn.Hardswish,
    nn.Hardsigmoid, nn.Hardtanh,
})
_TOKENWISE_FUNCTIONS = frozenset({
    operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub, torch.mul,
    torch.div, torch.relu, torch.tanh, torch.sigmoid, F.gelu, F.relu, F.silu, F.mish, F.elu,
    F.leaky_relu, F.hardswish, F.softplus,
})
_TOKENWISE_METHODS = frozenset({"add", "sub", "mul", "div", "relu", "tanh", "sigmoid", "contiguous"})
#: Module types whose presence makes the rewrite worth a try.
CANDIDATES = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerEncoder)


@contextlib.contextmanager
def class_token_pruning(enabled: bool = True) -> Iterator[None]:
    """Turn the class-token shortcut (:mod:`xadv._tokens`: a ViT's last block computed
    for the class token alone) on or off inside the block; on by default. Results agree
    either way to float rounding.

    >>> import torch, xadv
    >>> from xadv.zoo.architectures import vit_tiny
    >>> vit = vit_tiny(num_classes=10, image_size=32, patch_size=8, num_layers=2)
    >>> x = torch.rand(2, 3, 32, 32)
    >>> with xadv.explainers.class_token_pruning(False):
    ...     whole = xadv.explain(vit, x, method="saliency", target=0).attributions
    >>> torch.allclose(xadv.explain(vit, x, method="saliency", target=0).attributions, whole, atol=1e-6)
    True
    """
    with switched(_ENABLED, enabled):
        yield


def enabled() -> bool:
    """Whether the shortcut is on (see :func:`class_token_pruning`)."""
    return _ENABLED[0]


# ----------------------------------------------------------------- token-0 modules
def _query_first(attn: nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    return attn(x[:, :1], x, x, need_weights=False)[0]


def _encoder_layer_first(layer: nn.TransformerEncoderLayer, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)[:, :1]`` with only token 0's query (batch-first, no masks, eval)."""
    def ff(h):
        return layer.dropout2(layer.linear2(layer.dropout(layer.activation(layer.linear1(h)))))
    if layer.norm_first:
        h = layer.norm1(x)
        x0 = x[:, :1] + layer.dropout1(_query_first(layer.self_attn, h))
        return x0 + ff(layer.norm2(x0))
    x0 = layer.norm1(x[:, :1] + layer.dropout1(_query_first(layer.self_attn, x)))
    return layer.norm2(x0 + ff(x0))


class FirstToken(nn.Module):
    """``module(x)[:, :1]`` computed with token 0's query alone, for the user's own
    ``nn.MultiheadAttention`` (self-attention), ``nn.TransformerEncoderLayer`` or
    ``nn.TransformerEncoder`` (every layer but the last on all tokens, the last with
    token 0's query, then the norm)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.inner = module

    def forward(self, x):
        m = self.inner
        if isinstance(m, nn.MultiheadAttention):
            return _query_first(m, x)
        if isinstance(m, nn.TransformerEncoderLayer):
            return _encoder_layer_first(m, x)
        for layer in m.layers[:-1]:
            x = layer(x)
        x = _encoder_layer_first(m.layers[-1], x)
        return x if m.norm is None else m.norm(x)


# ----------------------------------------------------------------- the analysis
_ALL = slice(None, None, None)


def _is_selection(node) -> bool:
    """``x[:, 0]``, ``x[:, 0, :]``, ``x[:, 0, ...]``, ``x.select(1, 0)``, ``torch.select(x, 1, 0)``."""
    if node.op == "call_function" and node.target is operator.getitem and len(node.args) == 2:
        idx = node.args[1]
        return (isinstance(idx, tuple) and len(idx) in (2, 3) and idx[0] == _ALL
                and type(idx[1]) is int and idx[1] == 0 and (len(idx) == 2 or idx[2] in (_ALL, Ellipsis)))
    if node.op in ("call_method", "call_function") and not node.kwargs and len(node.args) == 3:
        if (node.op == "call_method" and node.target == "select") or node.target is torch.select:
            return node.args[1] == 1 and node.args[2] == 0
    return False


def _meta(node):
    m = node.meta.get("tensor_meta") if hasattr(node, "meta") else None
    return m if m is not None and hasattr(m, "shape") else None


def _attention_args(node, mod) -> Optional[object]:
    """The input node of a plain self-attention call of ``mod``, or None."""
    if type(mod) is not nn.MultiheadAttention or not mod.batch_first or "forward" in mod.__dict__:
        return None
    names = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask",
             "average_attn_weights", "is_causal")
    bound = dict(zip(names, node.args))
    for k, v in node.kwargs.items():
        if k not in names or k in bound:
            return None
        bound[k] = v
    q = bound.get("query")
    if q is None or bound.get("key") is not q or bound.get("value") is not q:
        return None
    if any(bound.get(k) is not None for k in ("key_padding_mask", "attn_mask")) or bound.get("is_causal", False):
        return None
    return q


def _encoder_ok(node, mod) -> bool:
    if node.kwargs or len(node.args) != 1:
        return False

    def layer_ok(layer):
        return (type(layer) is nn.TransformerEncoderLayer and layer.self_attn.batch_first
                and "forward" not in layer.__dict__ and "forward" not in layer.self_attn.__dict__)
    if type(mod) is nn.TransformerEncoderLayer:
        return layer_ok(mod)
    if type(mod) is nn.TransformerEncoder:
        return ("forward" not in mod.__dict__ and len(mod.layers) > 0 and all(layer_ok(l) for l in mod.layers))
    return False


def prune_class_token(graph, named: Dict[str, nn.Module]) -> Dict[str, nn.Module]:
    """Rewrite ``graph`` (shapes recorded by ``ShapeProp``) so that the chains described
    in the module docstring run on token 0 only; returns the new submodules by target
    (empty when nothing was rewritten)."""
    import torch.fx as fx

    nodes = list(graph.nodes)
    chain: Set[fx.Node] = set()
    kind: Dict[fx.Node, str] = {}
    tokens: Dict[fx.Node, int] = {}   # T of the selection each chain node feeds

    def sliceable(a, t) -> Optional[bool]:
        """True: operand varies along the T tokens (to be sliced); False: broadcasts over
        them (kept); None: anything else (the node stays whole)."""
        if not isinstance(a, fx.Node):
            return False if isinstance(a, (int, float, bool)) else None
        if a in chain:
            return True
        m = _meta(a)
        if m is None:
            return None
        s = tuple(m.shape)
        if len(s) == 3 and s[1] == t:
            return True
        if len(s) <= 1 or (len(s) == 3 and s[1] == 1) or (len(s) == 2 and s[0] == 1):
            return False
        return None

    for node in reversed(nodes):
        if not node.users:
            continue
        t = None
        ok = True
        for u in node.users:
            if _is_selection(u) and u.args[0] is node:
                tt = _meta(node).shape[1] if _meta(node) is not None and len(_meta(node).shape) == 3 else None
            elif u in chain and kind[u] == "tokenwise":   # a start needs every token of its input
                tt = tokens[u]
            else:
                ok = False
                break
            if tt is None or (t is not None and tt != t):
                ok = False
                break
            t = tt
        m = _meta(node)
        if not ok or t is None or t < 2 or m is None or tuple(m.shape)[1:2] != (t,) or len(m.shape) != 3:
            continue
        k = None
        if node.op == "call_function" and node.target is operator.getitem and node.args[1] == 0:
            src = node.args[0]
            if isinstance(src, fx.Node) and src.op == "call_module":
                q = _attention_args(src, named.get(src.target))
                others = [u for u in src.users if u is not node]
                if (q is not None and all(u.op == "call_function" and u.target is operator.getitem
                                          and not u.users for u in others)):
                    k = "attention"
        elif node.op == "call_module":
            mod = named.get(node.target)
            if type(mod) in _TOKENWISE_MODULES and len(node.args) == 1 and not node.kwargs:
                if type(mod) is nn.LayerNorm and len(mod.normalized_shape) != 1:
                    pass
                elif sliceable(node.args[0], t) is not None:
                    k = "tokenwise"
            elif isinstance(mod, CANDIDATES) and type(mod) is not nn.MultiheadAttention and _encoder_ok(node, mod):
                k = "encoder"
        elif (node.op == "call_function" and node.target in _TOKENWISE_FUNCTIONS) or (
                node.op == "call_method" and node.target in _TOKENWISE_METHODS):
            operands = list(node.args) + list(node.kwargs.values())
            flags = [sliceable(a, t) if isinstance(a, fx.Node)
                     else (False if isinstance(a, (int, float, bool, str, type(None))) else None) for a in operands]
            if isinstance(node.args[0], fx.Node) and all(f is not None for f in flags) and any(flags):
                k = "tokenwise"
        if k is not None:
            chain.add(node)
            kind[node] = k
            tokens[node] = t
    starts = [n for n in chain if kind[n] in ("attention", "encoder")]
    if not starts:   # per-token work only: nothing is saved by slicing the model's own rows
        return {}
    # keep only the chain that hangs from an attention start (per-token nodes fed by no
    # start would just move the slice, not save the attention's other queries)
    fed: Set = set()
    for node in nodes:
        if node in chain and (kind[node] != "tokenwise" or any(
                isinstance(a, fx.Node) and a in fed for a in node.all_input_nodes)):
            fed.add(node)
    chain &= fed
    new: Dict[str, nn.Module] = {}
    slices: Dict = {}

    def slice_of(a):
        if a not in slices:
            with graph.inserting_after(a):
                slices[a] = graph.call_function(operator.getitem, (a, (_ALL, slice(0, 1, None))))
        return slices[a]

    for node in nodes:
        if node not in chain:
            continue
        if kind[node] == "attention":
            src = node.args[0]
            q = _attention_args(src, named[src.target])
            target = f"_xadv_first_token_{len(new)}"
            new[target] = FirstToken(named[src.target])
            with graph.inserting_before(node):
                call = graph.call_module(target, (q,))
            node.replace_all_uses_with(call)
            graph.erase_node(node)
            for u in list(src.users):
                graph.erase_node(u)
            graph.erase_node(src)
            chain.discard(node)
            chain.add(call)
        elif kind[node] == "encoder":
            mod = named[node.target]
            target = f"_xadv_first_token_{len(new)}"
            new[target] = FirstToken(mod)
            node.target = target
        else:
            def fix(a):
                if isinstance(a, fx.Node) and a not in chain and sliceable(a, tokens[node]):
                    return slice_of(a)
                return a
            node.args = tuple(fix(a) for a in node.args)
            node.kwargs = {k: fix(v) for k, v in node.kwargs.items()}
    return new
