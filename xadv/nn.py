"""Small modules and model transforms: ``Normalize``, ``smooth_relu`` / ``smoothed`` and
``count_functional_relus``."""
from __future__ import annotations

import contextlib
import copy
from typing import Iterator, Sequence, Union

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ._model import preserved


@torch.fx.wrap
def normalized(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / std`` per channel (dim 1) of ``x`` (N, C, ...); ``mean``, ``std`` (C,).
    One call in a ``torch.fx`` trace (``torch.fx.wrap``), so a model that starts with
    :class:`Normalize` can be traced (BatchNorm folding, incremental Occlusion)."""
    if x.dim() < 2 or x.shape[1] != mean.numel():
        raise ValueError(f"Normalize expects {mean.numel()} channels in dim 1, got shape {tuple(x.shape)}")
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return (x - mean.to(x.dtype).view(shape)) / std.to(x.dtype).view(shape)


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
        return normalized(x, self.mean, self.std)

    def extra_repr(self) -> str:
        return f"mean={self.mean.tolist()}, std={self.std.tolist()}"


class SoftplusReLU6(nn.Module):
    """``softplus_beta(x) - softplus_beta(x - 6)``: a smooth ``ReLU6`` (``min(max(x, 0), 6)``).

    The difference of two softplus curves has both of ReLU6's kinks rounded off and
    tends to ``ReLU6`` as ``beta`` grows, as ``Softplus(beta)`` tends to ``ReLU``.
    :func:`smooth_relu` puts it in place of every ``nn.ReLU6`` (MobileNetV2).

    Parameters
    ----------
    beta : float, default 10.0
    threshold : float, default 20.0
        As in ``nn.Softplus``: linear above ``beta * x > threshold``.

    Examples
    --------
    >>> import torch
    >>> f = SoftplusReLU6(beta=100.0)
    >>> [round(v, 3) for v in f(torch.tensor([-1.0, 3.0, 9.0])).tolist()]
    [0.0, 3.0, 6.0]
    """

    def __init__(self, beta: float = 10.0, threshold: float = 20.0):
        super().__init__()
        self.beta = float(beta)
        self.threshold = float(threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softplus(x, self.beta, self.threshold) - F.softplus(x - 6.0, self.beta, self.threshold)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, threshold={self.threshold}"


#: module types :func:`smooth_relu` replaces (exact types, not subclasses), and by what
SMOOTHED_TYPES = (nn.ReLU, nn.ReLU6)


def _smooth_twin(child: nn.Module, beta: float) -> nn.Module:
    new = nn.Softplus(beta=beta) if type(child) is nn.ReLU else SoftplusReLU6(beta)
    new._xadv_smoothed_relu = True  # tells it from the model's own Softplus modules
    # a new module is built in train mode: keep the replaced module's mode, so
    # ``preserved`` and the user see the model's mode unchanged
    return new.train(child.training)


def is_smoothed_relu(module: nn.Module) -> bool:
    """Whether ``module`` was put in place of a relu by :func:`smooth_relu` / :func:`smoothed`
    (its ``beta`` can be changed; the model's own ``Softplus`` modules are not)."""
    return bool(getattr(module, "_xadv_smoothed_relu", False))


def _replace_relus(module: nn.Module, beta: float, record=None) -> int:
    count = 0
    for name, child in module.named_children():
        if type(child) in SMOOTHED_TYPES:
            if record is not None:
                record.append((module, name, child))
            setattr(module, name, _smooth_twin(child, beta))
            count += 1
        else:
            count += _replace_relus(child, beta, record)
    return count


def has_smoothable(model: nn.Module) -> bool:
    """Whether ``model`` has a module that :func:`smooth_relu` replaces (``nn.ReLU``, ``nn.ReLU6``)."""
    return any(type(m) in SMOOTHED_TYPES for m in model.modules())


class SmoothingWarning(UserWarning):
    """A part of the model could not be smoothed (functional relu in ``forward``)."""


#: functions that apply a relu without a module (``nn.ReLU`` and ``nn.ReLU6`` call
#: ``F.relu`` and ``F.hardtanh`` themselves; those calls are not counted)
_FUNCTIONAL_RELUS = (F.relu, F.relu_, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_,
                     F.relu6, F.hardtanh, F.hardtanh_)


class _ReluCounter(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.count = 0
        self.depth = 0  # > 0 while inside an nn.ReLU / nn.ReLU6 module

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if self.depth == 0 and func in _FUNCTIONAL_RELUS:
            self.count += 1
        return func(*args, **(kwargs or {}))


def count_functional_relus(model: nn.Module, x: torch.Tensor) -> int:
    """Relu calls in one forward pass of ``model`` on ``x`` that no module makes.

    ``F.relu``, ``torch.relu``, ``Tensor.relu`` (and their in-place forms), ``F.relu6``
    and ``F.hardtanh`` called directly in a ``forward`` cannot be swapped by
    :func:`smooth_relu` / :func:`smoothed`; calls made by ``nn.ReLU`` and
    ``nn.ReLU6`` modules are not counted. Runs the model once without gradients;
    the model is not changed.

    Parameters
    ----------
    model : nn.Module
    x : Tensor (N, ...)
        A batch the model accepts (one sample is enough).

    Returns
    -------
    int

    Examples
    --------
    >>> import torch
    >>> class Net(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.fc, self.act = nn.Linear(3, 3), nn.ReLU()
    ...     def forward(self, x):
    ...         return torch.relu(self.act(self.fc(x)))
    >>> count_functional_relus(Net(), torch.rand(1, 3))
    1
    """
    counter = _ReluCounter()

    def enter(_m, _args):
        counter.depth += 1

    def leave(_m, _args, _out):
        counter.depth -= 1

    handles = []
    with preserved(model):  # a model in train mode: BatchNorm statistics are put back
        try:
            for m in model.modules():
                if type(m) in SMOOTHED_TYPES:
                    handles += [m.register_forward_pre_hook(enter), m.register_forward_hook(leave)]
            with torch.no_grad(), counter:
                model(x)
        finally:
            for h in handles:
                h.remove()
    return counter.count


def smooth_relu(model: nn.Module, beta: float = 10.0) -> nn.Module:
    """A deep copy of ``model`` with every ``nn.ReLU`` replaced by ``Softplus(beta)``
    and every ``nn.ReLU6`` by :class:`SoftplusReLU6` ``(beta)``.

    ReLU networks have zero second derivative almost everywhere, so the gradient
    of a gradient explanation w.r.t. the input vanishes; explanation attacks
    differentiate through this smooth copy and evaluate on the original model
    (Dombrowski et al., 2019). As ``beta`` grows the copy approaches the original.
    The original model is not changed.

    What is replaced, and what is not:

    * ``nn.ReLU`` modules, also ``inplace=True`` ones (the softplus is not in place)
      and one module object called several times in ``forward`` (torchvision's
      ResNet blocks call ``self.relu`` twice): the attribute is swapped, so every
      call goes through the softplus.
    * ``nn.ReLU6`` (MobileNetV2): ``softplus(x) - softplus(x - 6)``, which rounds
      both kinks and tends to ``ReLU6``.
    * Not replaced: relus applied functionally (``F.relu``, ``torch.relu``,
      ``x.relu()`` in ``forward``) since there is no module to swap (count them with
      :func:`count_functional_relus`; fooling attacks warn with a
      :class:`SmoothingWarning`), subclasses of these modules, and other
      activations (LeakyReLU, Hardtanh, Hardswish, GELU, ...) which are kept as they
      are. A ``ValueError`` is raised when the model has nothing to replace.

    Parameters
    ----------
    model : nn.Module
    beta : float, default 10.0

    Returns
    -------
    nn.Module
        The copy, in the same train/eval mode (every module), on the same device.

    References
    ----------
    Dombrowski et al. Explanations can be manipulated and geometry is to blame.
    NeurIPS 2019.

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
        raise ValueError("the model has no nn.ReLU module (nor nn.ReLU6) to replace (functional relu "
                         "cannot be swapped: use nn.ReLU modules in the model's forward)")
    return twin


@contextlib.contextmanager
def smoothed(model: nn.Module, beta: float = 10.0) -> Iterator[nn.Module]:
    """Context manager: swap ``nn.ReLU`` for ``Softplus(beta)`` (and ``nn.ReLU6`` for
    :class:`SoftplusReLU6`) in place, restore the original modules on exit.

    Unlike :func:`smooth_relu` the parameters are shared, so training inside the
    context (model manipulation) updates the original model's weights. The same
    modules are replaced as there (functional relus are not).

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
    try:
        _replace_relus(model, float(beta), record)
        yield model
    finally:
        for parent, name, child in reversed(record):
            setattr(parent, name, child)
