"""Attacks on models with several inputs, pass-through arguments and dict/tuple outputs.

One helper used by :meth:`xadv.attacks.Attack.__call__`: it turns the user's model, its
inputs and the call options (``forward_args``, ``output``, ``perturb``, ``eps``) into
"one tensor in, (N, K) scores out" for the attack engines, and turns the engine's result
back into the user's inputs. The engines never see the forms themselves.

* The attacked tensor is the one perturbed input in its own shape (so image attacks such
  as Square or the patch keep their image), or the perturbed inputs packed into one flat
  (N, D1 + D2 + ...) tensor (:class:`xadv._adapter.Packing`).
* Per-input budgets ``eps=(e1, e2, ...)``: input ``i`` is attacked in the coordinates
  ``u_i = x_i / s_i`` with ``s_i = e_i / attack.eps``, so the attack's own ball of radius
  ``eps`` becomes ``|d_i| <= e_i`` (Linf) or ``sum_i (||d_i|| / e_i)^2 <= 1`` (L2). Every
  input stays inside the attack's ``bounds`` (clamped in the model's coordinates).
* Inputs that are not perturbed, and per-sample tensors among ``forward_args`` (first
  dimension N), are passed through with the rows they belong to. An engine that calls
  the model on a sub-batch (early stopping, AutoAttack's stages) gives no row indices;
  then the attack is run sample by sample, which is exact (a sample's side inputs
  broadcast to any number of rows).
"""
from __future__ import annotations

import copy
from typing import Any, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .._adapter import _ROWS, Packing, select_output
from .._validation import check_inputs


class RowsUnknown(Exception):
    """Internal: a model call on rows whose side inputs are unknown (a sub-batch).

    Not a RuntimeError, so no engine's layout fallback catches it."""


def _slice_rows(v, i0: int, i1: int, n: int):
    if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n:
        return v[i0:i1]
    return v


class InputsModel(nn.Module):
    """The model as the attack engines see it: the attacked tensor in, (N, K) scores out."""

    def __init__(self, model, inputs: Tuple[torch.Tensor, ...], perturb: List[int], scales: List[float],
                 bounds: Tuple[float, float], forward_args=None, output=None):
        super().__init__()
        if isinstance(model, nn.Module):
            self.model = model
        else:
            object.__setattr__(self, "model", model)
        self.training = getattr(model, "training", False)
        self.inputs = inputs
        self.perturb = perturb
        self.scales = scales
        self.bounds = bounds
        self.forward_args = forward_args
        self.output = output
        self.n = inputs[0].shape[0]
        self.single = len(perturb) == 1
        self.packing = None if self.single else Packing([inputs[i] for i in perturb])
        fixed = [t for i, t in enumerate(inputs) if i not in perturb]
        fa = forward_args.values() if isinstance(forward_args, dict) else (forward_args or ())
        #: whether some pass-through tensor belongs to the samples (rows must be known)
        self.per_sample = any(isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == self.n
                              for v in list(fixed) + list(fa))

    # ----------------------------------------------------------- coordinates
    def encode(self) -> torch.Tensor:
        """The attacked tensor of the clean inputs."""
        parts = [self.inputs[i] / s if s != 1.0 else self.inputs[i] for i, s in zip(self.perturb, self.scales)]
        return parts[0].detach().clone() if self.single else self.packing.pack(parts).detach()

    def decode(self, u: torch.Tensor) -> List[torch.Tensor]:
        """The perturbed inputs (in the model's coordinates) from the attacked tensor."""
        parts = (u,) if self.single else self.packing.unpack(u)
        if all(s == 1.0 for s in self.scales):  # the engine clamps to the attack's bounds itself
            return list(parts)
        lo, hi = self.bounds  # the engine's box is wider (the hull over the inputs): clamp each input
        return [(p * s).clamp(lo, hi) for p, s in zip(parts, self.scales)]

    # -------------------------------------------------------------- forward
    def _rows(self, rows: int) -> Optional[torch.Tensor]:
        """Sample index of each row (None: the rows are the batch itself)."""
        if not self.per_sample:
            return None
        cur = _ROWS.get()
        if self.n == 1:
            return torch.zeros(rows, dtype=torch.long, device=self.inputs[0].device)
        if cur is not None:
            idx, n = cur
            if n == self.n and idx.shape[0] == rows:
                return idx
            raise RowsUnknown
        if rows == self.n:
            return None
        raise RowsUnknown

    def _pick(self, v, idx):
        if idx is None or not isinstance(v, torch.Tensor) or v.dim() == 0 or v.shape[0] != self.n:
            return v
        return v[idx.to(v.device)]

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        idx = self._rows(u.shape[0])
        perturbed = iter(self.decode(u))
        xs = [next(perturbed) if i in self.perturb else self._pick(t, idx) for i, t in enumerate(self.inputs)]
        fa = self.forward_args
        args, kwargs = (), {}
        if isinstance(fa, dict):
            kwargs = {k: self._pick(v, idx) for k, v in fa.items()}
        elif fa is not None:
            args = tuple(self._pick(v, idx) for v in fa)
        return select_output(self.model(*xs, *args, **kwargs), self.output)

    def with_model(self, model) -> "InputsModel":
        """The same view of another model taking the same inputs (e.g. a substitute)."""
        other = copy.copy(self)
        other._modules = dict(self._modules)
        if isinstance(model, nn.Module):
            other._modules["model"] = model
        else:
            other._modules.pop("model", None)
            object.__setattr__(other, "model", model)
        return other

    def extra_repr(self) -> str:
        return f"inputs={len(self.inputs)}, perturb={self.perturb}"


def _check_perturb(perturb, k: int) -> List[int]:
    if perturb is None or (isinstance(perturb, str) and perturb == "all"):
        return list(range(k))
    items = [perturb] if isinstance(perturb, int) else perturb
    if isinstance(items, (str, bool)) or not isinstance(items, (list, tuple)) or not items:
        raise TypeError(f"perturb must be an input index, a sequence of indices or 'all', got {perturb!r}")
    out = []
    for p in items:
        if isinstance(p, bool) or not isinstance(p, int):
            raise TypeError(f"perturb must hold input indices (ints), got {p!r}")
        if not -k <= p < k:
            raise ValueError(f"perturb={perturb!r}: the model takes {k} input(s), valid indices 0..{k - 1}")
        out.append(p % k)
    if len(set(out)) != len(out):
        raise ValueError(f"perturb={perturb!r} names an input twice")
    return sorted(out)


def _check_eps(eps, attack, k: int, perturb: List[int]) -> List[float]:
    if eps is None:
        return [1.0] * len(perturb)
    ref = getattr(attack, "eps", None)
    norm = getattr(attack, "norm", None)
    if not isinstance(ref, (int, float)) or isinstance(ref, bool) or norm not in ("linf", "l2"):
        raise ValueError(f"eps= per input needs an attack with an Linf or L2 budget eps; "
                         f"{type(attack).__name__} has none")
    if not ref > 0:
        raise ValueError("eps= per input needs an attack built with eps > 0")
    if not isinstance(eps, (tuple, list)) or len(eps) != k:
        raise ValueError(f"eps must be one budget per input ({k} values; None or 0 for inputs that are not "
                         f"perturbed), got {eps!r}")
    scales = []
    for i, e in enumerate(eps):
        if i not in perturb:
            if e not in (None, 0, 0.0):
                raise ValueError(f"eps[{i}]={e!r} but input {i} is not perturbed (perturb={perturb}); "
                                 f"give None or 0, or add it to perturb")
            continue
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not e > 0 or e == float("inf"):
            raise ValueError(f"eps[{i}] must be a finite number > 0 for a perturbed input, got {e!r}")
        scales.append(float(e) / float(ref))
    return scales


def _needs_images(attack) -> bool:
    from .autoattack import AutoAttack
    from .square import Square
    from .universal import AdversarialPatch
    if isinstance(attack, AutoAttack):
        return "square" in attack.attack_list()
    return isinstance(attack, (Square, AdversarialPatch))


def prepare(attack, model, x, forward_args=None, output=None, perturb=None, eps=None):
    """``(engine attack, InputsModel, attacked tensor)`` for one call."""
    if forward_args is not None and not isinstance(forward_args, (tuple, list, dict)):
        raise TypeError("forward_args must be a tuple/list of extra positional arguments or a dict of "
                        f"keyword arguments, got {type(forward_args).__name__}")
    if output is not None and (isinstance(output, bool) or not (isinstance(output, (int, str)) or callable(output))):
        raise TypeError(f"output must be None, an int, a str or a callable, got {type(output).__name__}")
    multi = isinstance(x, (tuple, list))
    inputs = tuple(x) if multi else (x,)
    if not inputs:
        raise ValueError("x is an empty tuple; give one tensor or one tensor per model input")
    for i, t in enumerate(inputs):
        check_inputs(t, model, min_dim=1 if multi else 2, name=f"x[{i}]" if multi else "x", allow_integer=multi)
    if len({t.shape[0] for t in inputs}) > 1:
        raise ValueError(f"the inputs have different batch sizes {[t.shape[0] for t in inputs]}")
    if perturb is not None and not multi:
        raise ValueError("perturb= chooses among several inputs; x is one tensor (pass x as a tuple)")
    k = len(inputs)
    pert = _check_perturb(perturb, k)
    for i in pert:
        t = inputs[i]
        if not t.is_floating_point():
            raise TypeError(f"x[{i}] has dtype {t.dtype} and cannot be perturbed; leave it out of perturb= "
                            f"(token ids are attacked through their embedding: xadv.layer_head)")
        if t.dim() < 2:
            raise ValueError(f"x[{i}] must be batch-first with at least 2 dimensions (N, ...), got shape "
                             f"{tuple(t.shape)}")
    scales = _check_eps(eps, attack, k, pert)
    if len(pert) > 1 and _needs_images(attack):
        raise ValueError(f"{type(attack).__name__} needs an image input (N, C, H, W), but several perturbed inputs "
                         f"are attacked as one packed vector (N, D); perturb one image input (perturb=i) or use a "
                         f"gradient attack (PGD, APGD) for several inputs")
    lo, hi = attack.bounds
    for i in pert:
        t = inputs[i]
        tol = 1e-6 * (hi - lo)
        if float(t.min()) < lo - tol or float(t.max()) > hi + tol:
            raise ValueError(f"x[{i}] has values in [{float(t.min()):.4g}, {float(t.max()):.4g}] outside "
                             f"bounds=({lo}, {hi}); every perturbed input must lie in the attack's bounds "
                             f"(put scaling inside the model)")
    im = InputsModel(model, tuple(t.detach() for t in inputs), pert, scales, (lo, hi), forward_args, output)
    engine = attack
    if any(s != 1.0 for s in scales):  # the attacked coordinates u_i = x_i / s_i span a wider box
        engine = copy.copy(attack)
        engine.bounds = (min(lo / s for s in scales), max(hi / s for s in scales))
    return engine, im, im.encode()


def run(attack, engine, im: InputsModel, u: torch.Tensor, model, x, y, forward_args, output, perturb, eps):
    """The engine's result on the whole batch, or, when it calls the model on sub-batches
    while some passed-through tensor is per sample, sample by sample (each sample's side
    inputs then broadcast to any rows). Attacks known to sub-batch (``sub_batches = True``)
    go sample by sample at once."""
    if not (im.per_sample and getattr(attack, "sub_batches", False) and im.n > 1):
        try:
            return engine._call_tensor(im, u, y)
        except RowsUnknown:
            pass
    if not getattr(attack, "per_sample_runs", True):
        raise ValueError(f"{type(attack).__name__} perturbs the whole batch jointly and cannot pass per-sample "
                         f"side inputs (forward_args or inputs outside perturb=) through its sub-batches; "
                         f"perturb every input or use xadv.adapt")
    from .._validation import resolve_target
    multi = isinstance(x, (tuple, list))
    inputs = tuple(x) if multi else (x,)
    n = inputs[0].shape[0]
    yt = None if y is None else resolve_target(y, inputs[0].new_zeros(1, 1).expand(n, 1 << 30))
    parts = []
    for i in range(n):
        sub = tuple(t[i:i + 1] for t in inputs)
        e2, im2, u2 = prepare(attack, model, sub if multi else sub[0], per_sample_args(forward_args, i, n), output,
                              perturb, eps)
        parts.append(e2._call_tensor(im2, u2, None if yt is None else yt[i:i + 1]))
    return concat_results(parts, attack)


def per_sample_args(forward_args, i: int, n: int):
    if isinstance(forward_args, dict):
        return {k: _slice_rows(v, i, i + 1, n) for k, v in forward_args.items()}
    if forward_args is not None:
        return type(forward_args)(_slice_rows(v, i, i + 1, n) for v in forward_args)
    return None


def _merge(vals: list, counts: bool = False):
    """One value from the per-sample runs' values: per-sample tensors concatenated, floats
    averaged (each run is one sample), equal values kept, lists united, otherwise the list of
    the per-sample values; ``counts``: ints are summed (AutoAttack's per-attack counts)."""
    v0 = vals[0]
    if isinstance(v0, torch.Tensor):
        if v0.dim() > 0 and v0.shape[0] == 1 and all(isinstance(v, torch.Tensor) and v.shape == v0.shape
                                                     for v in vals):
            return torch.cat(vals)
        return v0 if all(isinstance(v, torch.Tensor) and torch.equal(v, v0) for v in vals) else list(vals)
    if isinstance(v0, dict):
        keys = [k for k in v0 if all(isinstance(v, dict) and k in v for v in vals)]
        return {k: _merge([v[k] for v in vals], counts) for k in keys}
    if isinstance(v0, tuple) and v0 and all(isinstance(t, torch.Tensor) for t in v0):
        return tuple(torch.cat([v[j] for v in vals]) for j in range(len(v0)))
    if isinstance(v0, bool):
        return v0 if all(v == v0 for v in vals) else list(vals)
    if counts and isinstance(v0, int) and all(isinstance(v, int) for v in vals):
        return sum(vals)
    if isinstance(v0, float) and all(isinstance(v, (int, float)) for v in vals):
        return v0 if all(v == v0 for v in vals) else float(sum(vals) / len(vals))
    if isinstance(v0, list) and all(isinstance(v, list) for v in vals):
        out = []
        for v in vals:
            out += [w for w in v if w not in out]
        return out
    try:
        return v0 if all(v == v0 for v in vals) else list(vals)
    except Exception:  # pragma: no cover - values without equality
        return list(vals)


def concat_results(results: Sequence[Any], attack=None):
    """One AttackResult from per-sample results (see :func:`_merge` for ``extras``)."""
    import dataclasses
    from .autoattack import AutoAttack
    out = {}
    for f in dataclasses.fields(results[0]):
        vals = [getattr(r, f.name) for r in results]
        if f.name == "extras":
            ex = {k: _merge([v[k] for v in vals]) for k in vals[0] if all(k in v for v in vals)}
            if isinstance(attack, AutoAttack) and "per_attack" in ex:
                ex["per_attack"] = _merge([v["per_attack"] for v in vals], counts=True)
            out[f.name] = ex
        else:
            out[f.name] = _merge(vals)
    return type(results[0])(**out)


def finish(result, im: InputsModel, multi: bool):
    """The engine's result in the user's coordinates: ``x``/``x_adv`` are the perturbed
    input (one) or the perturbed inputs packed (several), in the model's coordinates;
    ``extras["inputs_adv"]`` holds every input (the others unchanged) for ``model(*inputs_adv)``."""
    import dataclasses
    from .base import perturbation_norms
    clean = [im.inputs[i] for i in im.perturb]
    adv = im.decode(result.x_adv)
    if im.single:
        x, x_adv = clean[0], adv[0].detach()
    else:
        x, x_adv = im.packing.pack(clean), im.packing.pack(adv).detach()
    extras = dict(result.extras)
    if multi:
        it = iter(adv)
        extras["inputs_adv"] = tuple(next(it).detach() if i in im.perturb else t for i, t in enumerate(im.inputs))
        extras["perturb"] = list(im.perturb)
        extras["norms_per_input"] = {i: perturbation_norms(a - c) for i, a, c in zip(im.perturb, adv, clean)}
    return dataclasses.replace(result, x=x.detach().clone(), x_adv=x_adv, norms=perturbation_norms(x_adv - x),
                               extras=extras)
