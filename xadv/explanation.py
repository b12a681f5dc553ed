"""The :class:`Explanation` result type."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch

_REDUCTIONS = ("abs", "sum", "max", "abs_max", "l2", "none")


@dataclass(frozen=True)
class Explanation:
    """Attributions of one batch, with everything needed to read them again.

    Attributes
    ----------
    attributions : Tensor, shape like ``inputs`` (N, C, H, W) or (N, D)
        Raw, signed attributions. For CAM methods the map upsampled to the input
        and repeated over channels; the low-resolution map is in ``raw``.
    inputs : Tensor, same shape
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
        if self.attributions.shape != self.inputs.shape:
            raise ValueError(
                f"attributions {tuple(self.attributions.shape)} and inputs "
                f"{tuple(self.inputs.shape)} must have the same shape"
            )

    # ------------------------------------------------------------------ views
    def __len__(self) -> int:
        return self.attributions.shape[0]

    @property
    def shape(self) -> torch.Size:
        return self.attributions.shape

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
        if reduce not in _REDUCTIONS:
            raise ValueError(f"reduce must be one of {_REDUCTIONS}, got {reduce!r}")
        if reduce == "none":
            return a
        if a.dim() != 4:
            return a.abs() if reduce in ("abs", "abs_max", "l2") else a
        if self.method in ("gradcam", "gradcam_pp") and self.raw is not None:
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
            v = getattr(self, f.name)
            kw[f.name] = v.detach() if isinstance(v, torch.Tensor) else v
        return Explanation(**kw)

    def to(self, device) -> "Explanation":
        kw = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            kw[f.name] = v.to(device) if isinstance(v, torch.Tensor) else v
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
            if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n:
                return v[idx.to(v.device) if isinstance(idx, torch.Tensor) else idx]
            return v

        kw = {f.name: pick(getattr(self, f.name)) for f in dataclasses.fields(self)}
        kw["extras"] = {k: pick(v) for k, v in self.extras.items()}
        return Explanation(**kw)

    # ------------------------------------------------------------- save/load
    def save(self, path: Union[str, Path]) -> Path:
        """Write the explanation to ``path`` (a ``torch.save`` file, any extension).

        Tensors are detached and moved to CPU; ``Explanation.load`` reads it back.
        """
        path = Path(path)
        payload = {"__xadv__": "Explanation", "version": 1}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            payload[f.name] = v.detach().cpu() if isinstance(v, torch.Tensor) else v
        torch.save(payload, path)
        return path

    @classmethod
    def load(cls, path: Union[str, Path], map_location=None) -> "Explanation":
        """Read an explanation written by :meth:`save`."""
        payload = torch.load(Path(path), map_location=map_location, weights_only=False)
        if not isinstance(payload, dict) or payload.get("__xadv__") != "Explanation":
            raise ValueError(f"{path} is not an xadv Explanation file")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in payload.items() if k in names})

    def __repr__(self) -> str:
        t = self.target.tolist() if self.target.numel() <= 8 else f"{self.target[:8].tolist()[:-1]}+…"
        params = ", ".join(f"{k}={v!r}" for k, v in list(self.params.items())[:6])
        return f"Explanation(method={self.method!r}, shape={tuple(self.attributions.shape)}, target={t}, " \
               f"params={{{params[:160]}}})"

    def to_frame(self):
        """One row per sample: target, predicted class, attribution sum / max |a| (and IG's delta) (pandas)."""
        from . import _views as V

        flat = self.attributions.detach().reshape(len(self), -1).float()
        cols = {"target": self.target, "attribution_sum": flat.sum(1), "attribution_abs_max": flat.abs().max(1).values}
        if self.output is not None:
            cols["pred"] = self.output.detach().argmax(1)
        if self.delta is not None:
            cols["delta"] = self.delta
        return V.frame(cols)

    def _repr_html_(self) -> str:
        from . import _views as V

        rows = []
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
