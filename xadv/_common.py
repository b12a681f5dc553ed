"""Small pieces shared by explainers, attacks and the other consumers."""
from __future__ import annotations

import contextlib
import inspect
from typing import Any, Dict, Iterator, List, Optional

import torch


def make_generator(seed: Optional[int], generator: Optional[torch.Generator], device) -> Optional[torch.Generator]:
    """A fresh generator for ``seed`` (same draws on every call), the user's
    ``generator`` (advances between calls), or None (torch's global RNG)."""
    if generator is not None:
        return generator
    if seed is None:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


class ParamsMixin:
    """scikit-learn style ``get_params``: the constructor's parameters as stored on ``self``."""

    def get_params(self) -> Dict[str, Any]:
        """The constructor's parameters (scikit-learn style)."""
        sig = inspect.signature(type(self).__init__)
        out = {}
        for p in list(sig.parameters)[1:]:
            if sig.parameters[p].kind in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL):
                continue
            if hasattr(self, p):
                out[p] = getattr(self, p)
        return out


@contextlib.contextmanager
def switched(cell: List[bool], enabled: bool) -> Iterator[None]:
    """Set the one-element switch ``cell`` to ``enabled`` (a bool: anything else raises
    ``TypeError``) inside the block and put the old value back on exit (the module
    switches ``folding``, ``fast_pooling``, ``entry_factoring``, ``fast_attention``,
    ``class_token_pruning``, ``incremental_occlusion``)."""
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
    old = cell[0]
    cell[0] = enabled
    try:
        yield
    finally:
        cell[0] = old
