"""The :class:`Explanation` result type."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch

_REDUCTIONS = ("abs", "sum", "max", "abs_max", "l2", "none")


def _first(v):
    return v[0] if isinstance(v, tuple) else v


def _map(v, fn):
    if isinstance(v, tuple):
        return tuple(_map(u, fn) for u in v)
    return fn(v) if isinstance(v, torch.Tensor) else v


@dataclass(frozen=True)
class Explanation:
    """Attributions of one batch, with everything needed to read them again.

    Attributes
    ----------
    attributions : Tensor, shape like ``inputs`` (N, C, H, W) or (N, D); or a tuple
        Raw, signed attributions. For CAM methods the map upsampled to the input
        and repeated over channels; the low-resolution map is in ``raw``. A model
        with several inputs gets a tuple, one tensor per input (``inputs`` is then
        the tuple of inputs). Layer attributions (``layer=``) are shaped like the
        layer's activations (a tuple for several layers) and ``extras["attribute_to"]``
        is ``"layer_output"`` or ``"layer_input"``; ``params["layer"]`` names the layer.
    inputs : Tensor or tuple of Tensor
        The explained inputs (detached unless ``create_graph=True`` was used).
    target : LongTensor (N,)
        The class each sample was explained for.
    output : Tensor (N, K)
        Model output (logits) of the forward pass on ``inputs``.
    method : str
        Registry name of the explainer.
    params : dict
        The explainer's parameters (JSON-friendly where possible).
    delta : Tensor (N,), optional
        Integrated Gradients completeness error ``sum(attr) - (f(x) - f(baseline))``.
    raw : Tensor, optional
        Method-specific raw map: Grad-CAM's (N, h, w) layer-resolution map.
    segments : LongTensor (N, H, W), optional
        LIME's superpixel labels per image.
    segment_weights : Tensor (N, S), optional
        LIME's surrogate coefficients per segment (features for tabular LIME).
    extras : dict
        Anything else a method reports (e.g. LIME's surrogate score / intercept).

    Examples
    --------
    >>> import torch, xadv
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> e = xadv.explain(net, torch.rand(2, 1, 2, 2), method="saliency")
    >>> e.saliency_map().shape
    torch.Size([2, 2, 2])
    """

    attributions: torch.Tensor
    inputs: torch.Tensor
    target: torch.Tensor
    output: Optional[torch.Tensor] = None
    method: str = ""
    params: Dict[str, Any] = field(default_factory=dict)
    delta: Optional[torch.Tensor] = None
    raw: Optional[torch.Tensor] = None
    segments: Optional[torch.Tensor] = None
    segment_weights: Optional[torch.Tensor] = None
    extras: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        a, x = self.attributions, self.inputs
        if self.extras.get("attribute_to") in ("layer_output", "layer_input"):
            return  # layer attributions: shaped like the layer's activations (a tuple for several layers)
        if isinstance(a, tuple) or isinstance(x, tuple):
            # a model with several inputs: one attribution tensor per input
            if not (isinstance(a, tuple) and isinstance(x, tuple) and len(a) == len(x)):
                raise ValueError("a model with several inputs needs one attribution tensor per input")
            pairs = list(zip(a, x))
        else:
            pairs = [(a, x)]
        for ai, xi in pairs:
            if ai.shape != xi.shape:
                raise ValueError(
                    f"attributions {tuple(ai.shape)} and inputs {tuple(xi.shape)} must have the same shape"
                )

    # ------------------------------------------------------------------ views
    def __len__(self) -> int:
        return _first(self.attributions).shape[0]

    @property
    def shape(self) -> torch.Size:
        """Shape of the attributions (of the first one when there are several)."""
        return _first(self.attributions).shape

    @property
    def layer(self) -> Optional[str]:
        """The layer(s) explained (dotted names), or None for input attributions."""
        return self.params.get("layer")

    def saliency_map(self, reduce: str = "abs") -> torch.Tensor:
        """Reduce the channel axis of image attributions to a 2-D map per sample.

        Parameters
        ----------
        reduce : {"abs", "sum", "max", "abs_max", "l2", "none"}, default "abs"
            ``abs``: sum of absolute values over channels; ``sum``: signed sum;
            ``max``: signed max; ``abs_max``: max of absolute values; ``l2``:
            Euclidean norm over channels. ``none`` returns the attributions as they are.

        Returns
        -------
        Tensor (N, H, W) for (N, C, H, W) inputs; (N, D) attributions come back as
        they are (or absolute for ``abs``/``abs_max``/``l2``).
        """
        a = self.attributions
        if isinstance(a, tuple):
            raise TypeError("this explanation holds one attribution per input (or layer); reduce one of them, "
                            "e.g. e.attributions[0]")
        if reduce not in _REDUCTIONS:
            raise ValueError(f"reduce must be one of {_REDUCTIONS}, got {reduce!r}")
        if reduce == "none":
            return a
        if a.dim() != 4:
            return a.abs() if reduce in ("abs", "abs_max", "l2") else a
        if self.method in ("gradcam", "gradcam_pp", "attention_rollout") and self.raw is not None:
            # every channel carries the same upsampled map
            m = a[:, 0]
            return m.abs() if reduce in ("abs", "abs_max", "l2") else m
        if reduce == "abs":
            return a.abs().sum(1)
        if reduce == "sum":
            return a.sum(1)
        if reduce == "max":
            return a.max(1).values
        if reduce == "abs_max":
            return a.abs().max(1).values
        return a.pow(2).sum(1).sqrt()

    def normalized(self, reduce: str = "abs", mode: str = "max", percentile: float = 100.0) -> torch.Tensor:
        """The 2-D map scaled per sample.

        ``mode="max"`` divides by the per-sample ``percentile`` of ``|map|`` (signed
        maps land in [-1, 1], absolute ones in [0, 1], clipped); ``mode="minmax"``
        maps to [0, 1]; ``mode="sum"`` makes ``|map|`` sum to one.
        """
        m = self.saliency_map(reduce)
        flat = m.reshape(m.shape[0], -1)
        eps = torch.finfo(m.dtype).tiny
        if mode == "max":
            s = torch.quantile(flat.abs().float(), percentile / 100.0, dim=1).to(m.dtype) if percentile < 100 \
                else flat.abs().max(1).values
            out = flat / s.clamp_min(eps)[:, None]
            out = out.clamp(-1, 1)
        elif mode == "minmax":
            lo, hi = flat.min(1).values[:, None], flat.max(1).values[:, None]
            out = (flat - lo) / (hi - lo).clamp_min(eps)
        elif mode == "sum":
            out = flat / flat.abs().sum(1, keepdim=True).clamp_min(eps)
        else:
            raise ValueError(f"mode must be 'max', 'minmax' or 'sum', got {mode!r}")
        return out.reshape(m.shape)

    def topk_mask(self, k: Union[int, float], reduce: str = "abs") -> torch.Tensor:
        """Boolean mask of the ``k`` largest entries of the 2-D map per sample.

        ``k`` is a count (int) or a fraction in (0, 1] (float). Ties are broken
        by position (stable).
        """
        m = self.saliency_map(reduce)
        flat = m.reshape(m.shape[0], -1)
        d = flat.shape[1]
        if isinstance(k, float):
            if not 0 < k <= 1:
                raise ValueError(f"a fractional k must be in (0, 1], got {k}")
            k = max(1, int(round(k * d)))
        if not isinstance(k, int) or not 1 <= k <= d:
            raise ValueError(f"k must be an int in [1, {d}] or a fraction, got {k!r}")
        idx = flat.topk(k, dim=1).indices
        mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, idx, True)
        return mask.reshape(m.shape)

    def numpy(self, reduce: Optional[str] = None) -> np.ndarray:
        """Attributions (or the reduced 2-D map) as a detached NumPy array."""
        t = self.attributions if reduce is None else self.saliency_map(reduce)
        return t.detach().cpu().numpy()

    def detach(self) -> "Explanation":
        """A copy with every tensor detached from the autograd graph."""
        kw = {}
        for f in dataclasses.fields(self):
            kw[f.name] = _map(getattr(self, f.name), lambda v: v.detach())
        return Explanation(**kw)

    def to(self, device) -> "Explanation":
        kw = {}
        for f in dataclasses.fields(self):
            kw[f.name] = _map(getattr(self, f.name), lambda v: v.to(device))
        return Explanation(**kw)

    def __getitem__(self, idx) -> "Explanation":
        """Select samples: ``e[0:4]``, ``e[mask]``, ``e[2]`` (keeps the batch axis).

        Per-sample tensors (first dimension N), including those in ``extras``, are
        indexed; everything else is kept as it is.
        """
        from . import _views as V

        n = len(self)
        idx = V.check_index(idx, n, "samples")

        def pick(v):
            if isinstance(v, tuple):
                return tuple(pick(u) for u in v)
            if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n:
                return v[idx.to(v.device) if isinstance(idx, torch.Tensor) else idx]
            return v

        kw = {f.name: pick(getattr(self, f.name)) for f in dataclasses.fields(self)}
        kw["extras"] = {k: pick(v) for k, v in self.extras.items()}
        return Explanation(**kw)

    # ------------------------------------------------------------- save/load
    def save(self, path: Union[str, Path]) -> Path:
        """Write the explanation to ``path`` (a safetensors file, any extension).

        Tensors are detached and moved to CPU, everything else is stored as JSON; the
        write is atomic (the old file survives an interrupted write). Reading the file
        back with :meth:`load` never executes code.
        """
        from ._io import save as _save

        return _save(path, "Explanation", {f.name: getattr(self, f.name) for f in dataclasses.fields(self)})

    @classmethod
    def load(cls, path: Union[str, Path], map_location=None, *, trust: bool = False) -> "Explanation":
        """Read an explanation written by :meth:`save`.

        ``trust=True`` is needed only for files written by older xadv versions
        (``torch.save`` pickles holding more than tensors), since unpickling can run code.
        """
        from ._io import load as _load

        names = {f.name for f in dataclasses.fields(cls)}

        def legacy(old):
            if not isinstance(old, dict) or old.get("__xadv__") != "Explanation":
                raise ValueError(f"{path} is not an xadv Explanation file")
            return {k: v for k, v in old.items() if k in names}

        payload = _load(path, "Explanation", map_location=map_location, trust=trust, legacy=legacy)
        return cls(**{k: v for k, v in payload.items() if k in names})

    def __repr__(self) -> str:
        t = self.target.tolist() if self.target.numel() <= 8 else f"{self.target[:8].tolist()[:-1]}+…"
        shape = tuple(tuple(a.shape) for a in self.attributions) if isinstance(self.attributions, tuple) \
            else tuple(self.attributions.shape)
        params = ", ".join(f"{k}={v!r}" for k, v in list(self.params.items())[:6])
        return f"Explanation(method={self.method!r}, shape={shape}, target={t}, " \
               f"params={{{params[:160]}}})"

    def to_frame(self):
        """One row per sample: target, predicted class, attribution sum / max |a| (and IG's delta) (pandas)."""
        from . import _views as V

        parts = self.attributions if isinstance(self.attributions, tuple) else (self.attributions,)
        flat = torch.cat([a.detach().reshape(len(self), -1).float() for a in parts], dim=1)
        cols = {"target": self.target, "attribution_sum": flat.sum(1), "attribution_abs_max": flat.abs().max(1).values}
        if self.output is not None:
            cols["pred"] = self.output.detach().argmax(1)
        if self.delta is not None:
            cols["delta"] = self.delta
        return V.frame(cols)

    def _repr_html_(self) -> str:
        from . import _views as V

        rows = []
        if isinstance(self.attributions, tuple) or not isinstance(self.inputs, torch.Tensor) \
                or self.attributions.shape != self.inputs.shape:
            return None  # several inputs or a layer: no image thumbnails, the plain repr
        maps = self.saliency_map("sum" if self.method not in ("saliency", "smoothgrad") else "abs")
        maps = maps.detach().float().cpu().numpy()
        for i in range(min(len(self), V._THUMBS)):
            img = V.image_np(self.inputs[i])
            if img is None or maps.ndim != 3:
                break
            rows.append([str(i), V.to_png(img), V.to_png(maps[i], signed=bool((maps[i] < 0).any())),
                         str(int(self.target[i]))])
        s = {"method": self.method, "samples": len(self), "shape": V.shape(self.attributions),
             **{k: V.short(repr(v), 60) for k, v in list(self.params.items())[:8]}}
        return V.html_table(f"Explanation ({self.method}, {len(self)} samples)", s, rows,
                            ["#", "input", "map", "target"])
