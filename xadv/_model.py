"""Keep the user's model exactly as it was: mode, requires_grad and hooks."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch


def _hook_dicts(m: torch.nn.Module):
    names = [
        "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
        "_state_dict_hooks", "_load_state_dict_pre_hooks",
    ]
    return {n: dict(getattr(m, n)) for n in names if hasattr(m, n)}


@contextlib.contextmanager
def preserved(model) -> Iterator[None]:
    """Context manager that restores train/eval mode, ``requires_grad`` flags, hooks
    and (for models with a module in train mode) buffers such as BatchNorm statistics.

    Whatever happens inside (including an exception), the model leaves with the
    modes, gradient flags and hook dictionaries it had on entry. Parameters are
    never written by explainers; ``.grad`` fields are restored too because
    xadv only uses ``torch.autograd.grad`` and never accumulates into them.
    """
    if not isinstance(model, torch.nn.Module):
        yield
        return
    modules = list(model.modules())
    modes = [m.training for m in modules]
    hooks = [_hook_dicts(m) for m in modules]
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    # forward passes in train mode update buffers (BatchNorm running statistics):
    # keep a copy to put back, only when some module is training
    buffers = [(b, b.detach().clone()) for b in model.buffers()] if any(modes) else []
    try:
        yield
    finally:
        for m, mode, h in zip(modules, modes, hooks):
            m.training = mode
            for name, d in h.items():
                current = getattr(m, name)
                if dict(current) != d:
                    current.clear()
                    current.update(d)
        for p, f, g in zip(params, flags, grads):
            if p.requires_grad != f:
                p.requires_grad_(f)
            if p.grad is not g:
                p.grad = g
        if buffers:
            with torch.no_grad():
                for b, saved in buffers:
                    if not torch.equal(b, saved):
                        # through ``.data``: a graph built inside (``create_graph=True``) saved
                        # these buffers (BatchNorm's running statistics), and a version bump
                        # would make its double backward fail; the train-mode gradient does
                        # not use the running statistics, so putting the values back is safe
                        b.data.copy_(saved)
