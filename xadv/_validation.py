"""Input checks and the single target resolver shared by every part of xadv."""
from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Iterator, Optional, Sequence, Union

import torch

TargetLike = Union[None, int, Sequence[int], torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]


# inside a step loop whose inputs and targets were checked once before the loop
_CHECKED: contextvars.ContextVar = contextvars.ContextVar("xadv_checked_inputs", default=False)


@contextlib.contextmanager
def checked_inputs() -> Iterator[None]:
    """Inside: the value checks that need the host (NaN/Inf in inputs, target range) are
    skipped; for step loops whose inputs (clamped iterates of checked inputs) and targets
    (validated LongTensors) were checked before the loop, so a GPU step does not wait.
    Shapes, dtypes and devices are still checked."""
    token = _CHECKED.set(True)
    try:
        yield
    finally:
        _CHECKED.reset(token)


def check_model(model) -> None:
    if not isinstance(model, torch.nn.Module) and not callable(model):
        raise TypeError(f"model must be a torch.nn.Module or a callable, got {type(model).__name__}")


def model_device(model) -> Optional[torch.device]:
    """Device of the model's first parameter or buffer, None when it has neither."""
    if isinstance(model, torch.nn.Module):
        for t in model.parameters():
            return t.device
        for t in model.buffers():
            return t.device
    return None


def all_finite(t: torch.Tensor) -> bool:
    """Whether every element of ``t`` is finite (no NaN, no +-Inf).

    Decided by the sum: any NaN or infinity makes the sum NaN or infinite, so a finite sum
    proves every element finite. Only a non-finite sum (a bad value, or finite values
    whose sum overflows) pays for the elementwise check. The sum reads the tensor once
    without writing a mask: 15x faster than ``torch.isfinite(t).all()`` on a 2x3x224x224
    batch (0.03 vs 0.45 ms, 2 CPU threads).

    >>> all_finite(torch.tensor([1.0, 2.0])), all_finite(torch.tensor([1.0, float("nan")]))
    (True, False)
    """
    if not (t.is_floating_point() or t.is_complex()) or t.numel() == 0:
        return True
    if bool(torch.isfinite(t.detach().sum())):  # no graph node on a tensor that requires grad
        return True
    return bool(torch.isfinite(t).all())


def check_inputs(x, model=None, *, min_dim: int = 2, name: str = "x", allow_integer: bool = False,
                 whole_input: bool = True) -> torch.Tensor:
    """Check a batch-first float tensor: rank, dtype, finiteness and device.

    Raises
    ------
    TypeError
        ``x`` is not a tensor or not floating point.
    ValueError
        Rank below ``min_dim``, empty batch, NaN/Inf values, a device different
        from the model's, or (``whole_input=True``, ``x`` being the model's only
        input) a shape or dtype the model's first layer cannot take
        (:func:`check_fits_model`).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, ...), got {type(x).__name__}")
    if allow_integer and not x.is_floating_point() and not x.is_complex() and x.dtype != torch.bool:
        pass  # token ids: attributed through a layer (the embedding), or replaced by a baseline id
    elif not x.is_floating_point():
        raise TypeError(
            f"{name} must be a floating point tensor, got dtype {x.dtype}; "
            f"convert it with {name}.float() (and scale images to the model's bounds, e.g. [0, 1]); "
            f"integer token ids are explained through the embedding: pass layer=<the embedding module or name>"
        )
    if x.dim() < min_dim:
        raise ValueError(
            f"{name} must be batch-first with at least {min_dim} dimensions (N, ...), got shape "
            f"{tuple(x.shape)}; add a batch dimension with {name}.unsqueeze(0)"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)})")
    if model is not None:
        dev = model_device(model)
        if dev is not None and dev != x.device:
            raise ValueError(
                f"{name} is on {x.device} but the model is on {dev}; move one of them, e.g. "
                f"{name}.to({str(dev)!r})"
            )
    if x.is_floating_point() and not _CHECKED.get() and not all_finite(x):
        raise ValueError(f"{name} contains NaN or Inf values")
    if whole_input and isinstance(model, torch.nn.Module):
        check_fits_model(x, model, name)
    return x


def _first_layer(model: torch.nn.Module):
    """(qualified name, module) of the first leaf module that holds parameters, or (None, None)."""
    for qn, m in model.named_modules():
        if next(m.children(), None) is None and next(m.parameters(recurse=False), None) is not None:
            return qn, m
    return None, None


def _autocast_on() -> bool:
    for dev in ("cuda", "cpu"):
        try:
            if torch.is_autocast_enabled(dev):
                return True
        except TypeError:  # older torch: no device argument
            return bool(torch.is_autocast_enabled())
    return False


def check_fits_model(x: torch.Tensor, model: torch.nn.Module, name: str = "x") -> None:
    """A clear error when ``x`` cannot go into ``model``'s first layer (rank or dtype).

    Only when the first layer holding parameters is a convolution and ``x`` has another
    rank (e.g. 5-D input to a ``Conv2d`` model) or is an integer tensor, or when ``x``'s
    floating dtype differs from the parameters' (a float16 model and float32 input), the
    model is run once on ``x[:1]`` (no gradients, the model left as it was): if that
    fails, a ``ValueError`` names the expected shape or dtype and the model's own error.
    A model that reshapes or casts its input itself passes.
    """
    if getattr(model, "_xadv_wrapper", False):  # adapters: x need not be the first layer's input
        return
    qn, first = _first_layer(model)
    if first is None:
        return
    w = next(first.parameters(recurse=False))
    problems = []
    conv = isinstance(first, torch.nn.modules.conv._ConvNd)
    if conv:
        rank = w.dim()
        spatial = {3: "L", 4: "H, W", 5: "D, H, W"}.get(rank, "...")
        shape = f"(N, {first.in_channels}, {spatial})"
        if x.dim() != rank:
            problems.append(f"{name} has shape {tuple(x.shape)} ({x.dim()}-D) but the model's first layer "
                            f"{qn or 'model'} ({type(first).__name__}) takes {rank}-D batches {shape}; "
                            f"reshape {name} to {shape}")
        if not x.is_floating_point():
            problems.append(f"{name} is an integer tensor ({x.dtype}) but the model's first layer {qn or 'model'} "
                            f"({type(first).__name__}) takes floating point input; convert it with {name}.float() "
                            f"(integer token ids need a model that starts with an embedding)")
    if (x.is_floating_point() and w.is_floating_point() and x.dtype != w.dtype and not problems
            and not _autocast_on()):
        problems.append(f"{name} is {x.dtype} but the model's parameters are {w.dtype}; convert one of them, "
                        f"e.g. {name}.to({str(w.dtype)}) or model.to({str(x.dtype)})")
    if not problems:
        return
    from ._model import preserved

    try:
        with preserved(model), torch.no_grad():
            model(x[:1])
    except Exception as err:  # noqa: BLE001 - reported with the model's own message
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ValueError(f"{'; '.join(problems)} (the model fails on it: {first_line})") from err


def resolve_target(target: TargetLike, output: torch.Tensor) -> torch.Tensor:
    """Turn any accepted target form into a LongTensor of shape (N,) on ``output.device``.

    Parameters
    ----------
    target : None, int, sequence of int, LongTensor (N,) or (), or callable
        ``None`` takes the predicted class (argmax of ``output``); an int is used for
        every sample; a callable receives ``output`` and returns one of the above.
    output : Tensor (N, K)
        The model's output for the batch.
    """
    if output.dim() != 2:
        raise ValueError(
            f"the model must return a (N, K) tensor of class scores, got shape {tuple(output.shape)}"
        )
    n, k = output.shape
    if callable(target) and not isinstance(target, torch.Tensor):
        target = target(output)
    if target is None:
        t = output.detach().argmax(dim=1)
    elif isinstance(target, bool):
        raise TypeError("target must be an int, a sequence of ints or a LongTensor, got bool")
    elif isinstance(target, int):
        t = torch.full((n,), target, dtype=torch.long, device=output.device)
    elif isinstance(target, torch.Tensor):
        if target.is_floating_point() or target.dtype == torch.bool or target.is_complex():
            raise TypeError(f"target must be an integer tensor, got dtype {target.dtype}")
        t = target.to(device=output.device, dtype=torch.long).reshape(-1)
        if target.dim() == 0 or (t.shape[0] == 1 and n > 1):
            t = t.expand(n)  # one target for the whole batch
    else:
        try:
            vals = [int(v) for v in target]  # type: ignore[union-attr]
        except (TypeError, ValueError):
            raise TypeError(
                f"target must be None, an int, a sequence of ints, a LongTensor or a callable, "
                f"got {type(target).__name__}"
            ) from None
        t = torch.tensor(vals, dtype=torch.long, device=output.device)
        if t.shape[0] == 1 and n > 1:
            t = t.expand(n)  # one target for the whole batch
    if t.shape[0] != n:
        raise ValueError(f"target has {t.shape[0]} entries but the batch has {n} samples")
    if n and not _CHECKED.get() and (int(t.min()) < 0 or int(t.max()) >= k):
        raise ValueError(f"target out of range: the model has {k} classes (0..{k - 1}), got {t.tolist()}")
    return t.clone()


def check_bounds(bounds) -> tuple:
    try:
        lo, hi = float(bounds[0]), float(bounds[1])
    except Exception:
        raise TypeError(f"bounds must be a pair (low, high), got {bounds!r}") from None
    if not lo < hi:
        raise ValueError(f"bounds must satisfy low < high, got {bounds!r}")
    return lo, hi


class ParameterTypeError(TypeError, ValueError):
    """A parameter of the wrong type. A TypeError; also a ValueError for code written against
    older xadv versions, which raised ValueError here."""


def check_positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParameterTypeError(f"{name} must be an integer >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_finite(value, name: str):
    """``value`` (a number or a tensor; strings pass through) must be finite: no NaN or Inf.

    >>> check_finite(0.5, "noise")
    0.5
    """
    if isinstance(value, str) or value is None:
        return value
    if isinstance(value, (tuple, list)):  # one value per model input
        for i, v in enumerate(value):
            check_finite(v, f"{name}[{i}]")
        return value
    if callable(value) and not isinstance(value, torch.Tensor):  # checked when called
        return value
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.is_complex():
            if not all_finite(value):
                raise ValueError(f"{name} contains NaN or Inf values; pass finite numbers")
        return value
    if isinstance(value, bool):
        raise ParameterTypeError(f"{name} must be a number or a tensor, got bool")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ParameterTypeError(f"{name} must be a number or a tensor, got {type(value).__name__}") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return value


def find_module(model: torch.nn.Module, layer) -> torch.nn.Module:
    """Return ``layer`` itself if it is a submodule, else the submodule with that dotted name."""
    from ._adapter import unwrap

    model = unwrap(model)
    if isinstance(layer, torch.nn.Module):
        if not any(m is layer for m in model.modules()):
            raise ValueError("the given layer module is not a submodule of the model")
        return layer
    if not isinstance(layer, str):
        raise TypeError(f"layer must be a dotted name or a module, got {type(layer).__name__}")
    named = dict(model.named_modules())
    if layer not in named or layer == "":
        cands = [n for n in named if n]
        raise ValueError(f"unknown layer {layer!r}; the model's layers are: {', '.join(cands)}")
    return named[layer]
