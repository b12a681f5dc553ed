"""Count how xadv treats bad input: clear errors, silent acceptance, internal crashes.

Run from a checkout: ``PYTHONPATH=. python bench/probe_bad_inputs.py``. A *clear* error is a
TypeError/ValueError/IndexError/RuntimeError/FileNotFoundError raised by xadv's own code
(the innermost frame is in the xadv package); an exception raised inside torch, numpy or
scikit-learn counts as an *internal crash*; no exception at all is *silent*. Crafted
files are pickles whose ``__reduce__`` writes a marker: *executed* counts markers written.
"""
from __future__ import annotations

import math
import os
import pickle
import sys
import tempfile
import traceback
from pathlib import Path

import torch
from torch import nn

import xadv

CLEAR = (TypeError, ValueError, IndexError, RuntimeError, FileNotFoundError)
counts = {"tried": 0, "clear": 0, "silent": 0, "crash": 0}
silent, crashes = [], []


def probe(label, fn):
    counts["tried"] += 1
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        tb = traceback.extract_tb(e.__traceback__)
        inner = tb[-1].filename if tb else ""
        if isinstance(e, CLEAR) and "/xadv/" in inner and "/torch/" not in inner:
            counts["clear"] += 1
        else:
            counts["crash"] += 1
            crashes.append(f"{label}: {type(e).__name__}: {str(e)[:80]}")
        return
    counts["silent"] += 1
    silent.append(label)


def net(k=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 36, k)).eval()


X = torch.rand(4, 1, 6, 6)
SMALL = {"smoothgrad": {"n_samples": 2, "seed": 0}, "integrated_gradients": {"steps": 2},
         "lime": {"n_samples": 8, "seed": 0}, "gradient_shap": {"n_samples": 2, "seed": 0},
         "expected_gradients": {"n_samples": 2, "seed": 0}}
BAD_X = {"nan": X.clone().index_fill_(0, torch.tensor([1]), math.nan), "inf": X.clone().fill_(math.inf),
         "int": (X * 255).long(), "rank": X[0, 0, 0], "empty": X[:0], "5-D": X[:, None], "numpy": X.numpy()}
BAD_T = {"t=7": 7, "t=-1": -1, "t mismatch": torch.tensor([0, 1]), "t float": torch.tensor([0.5] * 4),
         "t str": "cat"}
names = [n for n in xadv.explainers.names() if n != "tabular_lime"]
for n in names:
    ex = xadv.explainers.get(n, **SMALL.get(n, {}))
    for k, x in BAD_X.items():
        probe(f"{n} x={k}", lambda: ex(net(), x))
    for k, t in BAD_T.items():
        probe(f"{n} {k}", lambda: ex(net(), X, t))

    def inf_mode():
        with torch.inference_mode():
            e = ex(net(), X)
        if not torch.isfinite(e.attributions).all():
            raise AssertionError("non-finite")
    if n not in ("lime", "occlusion"):
        probe(f"{n} inference_mode", inf_mode)
from xadv.explainers import GradientSHAP, IntegratedGradients, LIME, Occlusion, SmoothGrad  # noqa: E402

PARAMS = {
    "IG baseline=nan": lambda: IntegratedGradients(steps=2, baseline=math.nan)(net(), X),
    "IG baseline=inf tensor": lambda: IntegratedGradients(steps=2, baseline=torch.full((1, 1, 6, 6), math.inf))(net(), X),
    "GradientSHAP background nan": lambda: GradientSHAP(background=torch.full((2, 1, 6, 6), math.nan), n_samples=2)(net(), X),
    "GradientSHAP noise inf": lambda: GradientSHAP(noise=math.inf, n_samples=2)(net(), X),
    "Occlusion baseline inf": lambda: Occlusion(baseline=math.inf)(net(), X),
    "LIME fill nan": lambda: LIME(fill=math.nan, n_samples=8)(net(), X),
    "SmoothGrad noise inf": lambda: SmoothGrad(noise=math.inf, n_samples=2)(net(), X),
    "SmoothGrad noise nan": lambda: SmoothGrad(noise=math.nan, n_samples=2)(net(), X),
    "IG steps=2.5": lambda: IntegratedGradients(steps=2.5),
    "IG steps=-3": lambda: IntegratedGradients(steps=-3),
    "unknown explainer": lambda: xadv.explainers.get("nope"),
    "Explanation[17] of 4": lambda: len(xadv.explain(net(), X, method="saliency")[17]) or None,
    "Explanation[-5] of 4": lambda: len(xadv.explain(net(), X, method="saliency")[-5]) or None,
}
for k, fn in PARAMS.items():
    probe(k, fn)

from xadv.detectors import MahalanobisDetector, SaliencyDetector  # noqa: E402

g = torch.Generator().manual_seed(0)
xc, xa = torch.rand(40, 1, 6, 6, generator=g) * 0.5, torch.rand(40, 1, 6, 6, generator=g)
det = MahalanobisDetector(seed=0).fit(net(), xc, xa)
for k, fn in {"detector other class count": lambda: det.score(net(5), X),
              "detector other shape": lambda: det.score(net(), torch.rand(2, 1, 5, 5)),
              "predict threshold=nan": lambda: det.predict(net(), X, threshold=math.nan),
              "predict before fit": lambda: SaliencyDetector().predict(net(), X),
              "detector x nan": lambda: det.score(net(), BAD_X["nan"]),
              "detector x int": lambda: det.score(net(), BAD_X["int"])}.items():
    probe(k, fn)

# crafted files
tmp = Path(tempfile.mkdtemp())
executed = 0
crafted = 0


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


from xadv.defenses.training import TrainingResult  # noqa: E402
from xadv.detectors import Detector  # noqa: E402
from xadv.explanation import Explanation  # noqa: E402
from xadv.results import AttackResult, DetectionReport, FoolingResult  # noqa: E402

loaders = {"Explanation": Explanation.load, "AttackResult": AttackResult.load, "FoolingResult": FoolingResult.load,
           "DetectionReport": DetectionReport.load, "TrainingResult": TrainingResult.load, "Detector": Detector.load,
           "zoo weights": lambda p: xadv.zoo.digits_cnn(weights=p)}
for name, fn in loaders.items():
    for fmt in ("torch", "pickle"):
        crafted += 1
        marker = tmp / f"{name}-{fmt}".replace(" ", "_")
        payload = {"__xadv__": name, "__xadv_detector__": "SaliencyDetector", "params": {}, "state": {},
                   "x": Payload(marker)}
        p = tmp / f"{marker.name}.pt"
        if fmt == "torch":
            torch.save(payload, p)
        else:
            p.write_bytes(pickle.dumps(payload, protocol=2))
        try:
            fn(p)
        except Exception:  # noqa: BLE001
            pass
        executed += marker.exists()

print(f"bad inputs tried {counts['tried']}, clear errors {counts['clear']}, silent {counts['silent']}, "
      f"internal crashes {counts['crash']}; crafted files {crafted}, executed {executed}")
if "-v" in sys.argv:
    print("silent:", *silent, sep="\n  ")
    print("crashes:", *crashes, sep="\n  ")
