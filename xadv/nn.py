"""Small modules and model transforms: ``Normalize`` and ``smooth_relu``."""
from __future__ import annotations

import contextlib
import copy
from typing import Iterator, Sequence, Union

import torch
from torch import nn


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` as the model's first layer.

    Keeping normalisation inside the model lets attacks work and clip in pixel
    space (bounds (0, 1)).

    Parameters
    ----------
    mean, std : sequence of float or Tensor, one value per channel (dim 1)

    Examples
    --------
    >>> import torch
    >>> n = Normalize([0.5], [0.25])
    >>> n(torch.ones(1, 1, 2, 2)).flatten().tolist()
    [2.0, 2.0, 2.0, 2.0]
    """

    def __init__(self, mean: Union[Sequence[float], torch.Tensor], std: Union[Sequence[float], torch.Tensor]):
        super().__init__()
        mean = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean.shape != std.shape:
            raise ValueError(f"mean and std must have the same length, got {mean.numel()} and {std.numel()}")
        if (std <= 0).any():
            raise ValueError("std must be positive")
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.mean.numel():
            raise ValueError(f"Normalize expects {self.mean.numel()} channels in dim 1, got shape {tuple(x.shape)}")
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean.to(x.dtype).view(shape)) / self.std.to(x.dtype).view(shape)

    def extra_repr(self) -> str:
        return f"mean={self.mean.tolist()}, std={self.std.tolist()}"


def _replace_relus(module: nn.Module, beta: float, record=None) -> int:
    count = 0
    for name, child in module.named_children():
        if type(child) is nn.ReLU:
            if record is not None:
                record.append((module, name, child))
            setattr(module, name, nn.Softplus(beta=beta))
            count += 1
        else:
            count += _replace_relus(child, beta, record)
    return count


def smooth_relu(model: nn.Module, beta: float = 10.0) -> nn.Module:
    """A deep copy of ``model`` with every ``nn.ReLU`` module replaced by ``Softplus(beta)``.

    ReLU networks have zero second derivative almost everywhere, so the gradient
    of a gradient explanation w.r.t. the input vanishes; explanation attacks
    differentiate through this smooth copy and evaluate on the original model
    (Dombrowski et al., 2019). As ``beta`` grows the copy approaches the original.
    The original model is not changed. ReLUs applied functionally (``F.relu`` in
    ``forward``) cannot be replaced: a ``ValueError`` is raised when the model has no
    ``nn.ReLU`` module at all.

    Parameters
    ----------
    model : nn.Module
    beta : float, default 10.0

    Returns
    -------
    nn.Module
        The copy, in the same train/eval mode, on the same device.

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> smooth_relu(net, beta=5.0)[1]
    Softplus(beta=5.0, threshold=20.0)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not float(beta) > 0:
        raise ValueError(f"beta must be positive, got {beta!r}")
    twin = copy.deepcopy(model)
    if _replace_relus(twin, float(beta)) == 0:
        raise ValueError("the model has no nn.ReLU module to replace (functional relu cannot be swapped)")
    return twin


@contextlib.contextmanager
def smoothed(model: nn.Module, beta: float = 10.0) -> Iterator[nn.Module]:
    """Context manager: swap ``nn.ReLU`` for ``Softplus(beta)`` in place, restore on exit.

    Unlike :func:`smooth_relu` the parameters are shared, so training inside the
    context (model manipulation) updates the original model's weights.

    >>> net = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> with smoothed(net, 5.0) as m:
    ...     isinstance(m[1], nn.Softplus)
    True
    >>> isinstance(net[1], nn.ReLU)
    True
    """
    if not float(beta) > 0:
        raise ValueError(f"beta must be positive, got {beta!r}")
    record: list = []
    _replace_relus(model, float(beta), record)
    try:
        yield model
    finally:
        for parent, name, child in record:
            setattr(parent, name, child)
