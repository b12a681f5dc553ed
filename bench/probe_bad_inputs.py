"""Count how xadv treats bad input: clear errors, silent acceptance, internal crashes.

Run from a checkout: ``PYTHONPATH=. python bench/probe_bad_inputs.py``. A *clear* error is a
TypeError/ValueError/IndexError/KeyError/RuntimeError/FileNotFoundError raised by xadv's own code
(the innermost frame is in the xadv package); an exception raised inside torch, numpy or
scikit-learn counts as an *internal crash*; no exception at all is *silent*. A few rows are
valid input (``ok=True``, e.g. a float16 model): they count as *correct* when they give a
correct result and as a crash otherwise. Crafted
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

CLEAR = (TypeError, ValueError, IndexError, KeyError, RuntimeError, FileNotFoundError)
counts = {"tried": 0, "clear": 0, "correct": 0, "silent": 0, "crash": 0}
silent, crashes = [], []


def probe(label, fn, ok=False):
    """``ok=True``: the input is valid (e.g. a float16 model) and a correct result is expected."""
    counts["tried"] += 1
    if ok:
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            counts["crash"] += 1
            crashes.append(f"{label}: {type(e).__name__}: {str(e)[:80]}")
        else:
            counts["correct"] += 1
        return
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
    if ex.differentiable:  # gradient methods need autograd; sampling methods run in inference_mode
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

# ---------------------------------------------------------------- attacks
import xadv.attacks as A  # noqa: E402
import xadv.fooling as Fo  # noqa: E402
from xadv import plot as xp  # noqa: E402


class WrongShape(nn.Module):
    """A model whose output has the wrong shape: ``kind`` picks how."""

    def __init__(self, kind):
        super().__init__()
        self.kind, self.body = kind, net()

    def forward(self, x):
        z = self.body(x)
        return {"1-d": z[:, 0], "3-d": z[:, :, None].expand(-1, -1, 2), "batch": z[:1]}[self.kind]


def linear(k=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, k)).eval()


Y = torch.tensor([0, 1, 2, 0])


def _finite(t):
    if not torch.isfinite(t).all():
        raise AssertionError("non-finite result")
    return t

ATTACKS = {
    "FGSM": lambda: A.FGSM(eps=0.1), "PGD": lambda: A.PGD(eps=0.1, steps=2, seed=0),
    "RFGSM": lambda: A.RFGSM(eps=0.1, seed=0), "ExplainerPGD": lambda: A.ExplainerPGD("saliency", eps=0.1, steps=2),
    "CW": lambda: A.CarliniWagnerL2(steps=2, binary_search_steps=1), "DeepFool": lambda: A.DeepFool(steps=2),
    "Deletion": lambda: A.DeletionAttack(k=3), "APGD": lambda: A.APGD(eps=0.1, steps=2),
    "Square": lambda: A.Square(eps=0.1, n_queries=4), "Surrogate": lambda: A.SurrogateAttack(steps=1, n_samples=4, patch=2, seed=0),
}
BAD_Y = {"y=7": 7, "y=-1": -1, "y mismatch": torch.tensor([0, 1]), "y float": torch.tensor([0.5] * 4)}
for n, mk in ATTACKS.items():
    for k, x in BAD_X.items():
        probe(f"{n} x={k}", lambda: mk()(net(), x, None if k != "empty" else Y[:0]))
    for k, y in BAD_Y.items():
        probe(f"{n} {k}", lambda: mk()(net(), X, y))
    for k in ("1-d", "3-d", "batch"):
        probe(f"{n} model output {k}", lambda: mk()(WrongShape(k), X, Y))
for k, fn in {
    "FGSM eps=-0.1": lambda: A.FGSM(eps=-0.1), "FGSM eps=nan": lambda: A.FGSM(eps=math.nan),
    "PGD eps=inf": lambda: A.PGD(eps=math.inf), "PGD steps=0": lambda: A.PGD(steps=0),
    "PGD steps=2.5": lambda: A.PGD(steps=2.5), "PGD norm=l3": lambda: A.PGD(norm="l3"),
    "PGD bounds reversed": lambda: A.PGD(bounds=(1.0, 0.0)),
    "JSMA target=7": lambda: A.JSMA(gamma=0.5)(linear(), X, torch.tensor([7, 7, 7, 7])),
    "JSMA target=-1": lambda: A.JSMA(gamma=0.5)(linear(), X, torch.tensor([-1, 0, 0, 0])),
    "Deletion k=-3": lambda: A.DeletionAttack(k=-3), "Deletion fraction=1.5": lambda: A.DeletionAttack(fraction=1.5),
    "DataFreeUAP float16 model, float32 x": lambda: A.DataFreeUAP(steps=2, n_samples=2, seed=0)(net().half(), X),
    "AdversarialPatch size=0": lambda: A.AdversarialPatch(size=0),
    "AdversarialPatch target=7": lambda: A.AdversarialPatch(size=2, target=7, steps=1, batch_size=4, seed=0)(net(), X, Y),
}.items():
    probe(k, fn)
# valid input that must give a correct (finite) result
probe("DataFreeUAP float16", lambda: _finite(A.DataFreeUAP(steps=2, n_samples=2, seed=0)(net().half(), X.half()).x_adv),
      ok=True)
probe("DataFreeUAP bfloat16", lambda: _finite(
    A.DataFreeUAP(steps=2, n_samples=2, seed=0)(net().bfloat16(), X.bfloat16()).x_adv), ok=True)


# ---------------------------------------------------------------- fooling attacks
FOOLING = {
    "TopK": lambda **kw: Fo.TopKAttack("saliency", eps=0.05, steps=2, seed=0, **kw),
    "MassCenter": lambda **kw: Fo.MassCenterAttack("saliency", eps=0.05, steps=2, seed=0, **kw),
    "RandomSign": lambda **kw: Fo.RandomSignAttack("saliency", eps=0.05, steps=2, seed=0, **kw),
}
for n, mk in FOOLING.items():
    for k, x in BAD_X.items():
        probe(f"{n} x={k}", lambda: mk()(net(), x))
    for k, y in BAD_Y.items():
        probe(f"{n} {k}", lambda: mk()(net(), X, y))
    probe(f"{n} model output 3-d", lambda: mk()(WrongShape("3-d"), X, Y))
    if n != "RandomSign":  # the random baseline needs no gradient: a linear model is valid input
        probe(f"{n} linear model", lambda: mk()(linear(), X, Y))
    for k, kw in {"eps=-1": {"eps": -1.0}, "eps=nan": {"eps": math.nan}, "k=0": {"k": 0}, "k=1.5": {"k": 1.5},
                  "k=1000": {"k": 1000}, "steps=0": {"steps": 0}}.items():
        probe(f"{n} {k}", lambda: getattr(Fo, mk().__class__.__name__)("saliency", **{"steps": 2, **kw})(net(), X))
for k, fn in {
    "Targeted map wrong shape": lambda: Fo.TargetedManipulation(torch.rand(4, 1, 5, 5), steps=2)(net(), X),
    "Targeted map NaN": lambda: Fo.TargetedManipulation(torch.full((4, 1, 6, 6), math.nan), steps=2)(net(), X),
    "Targeted map batch mismatch": lambda: Fo.TargetedManipulation(torch.rand(2, 1, 6, 6), steps=2)(net(), X),
}.items():
    probe(k, fn)

# ---------------------------------------------------------------- plots
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

E_ = xadv.explain(net(), X, method="saliency")
R_ = A.FGSM(eps=0.1)(net(), X, Y)
F_ = Fo.TopKAttack("saliency", eps=0.05, steps=2, seed=0)(net(), X, Y)


def _plot(fn):
    try:
        return fn()
    finally:
        plt.close("all")


for k, fn in {
    "heatmap index=17": lambda: xp.heatmap(E_, index=17), "heatmap index=-5": lambda: xp.heatmap(E_, index=-5),
    "heatmap index=1.5": lambda: xp.heatmap(E_, index=1.5),
    "heatmap array index=9": lambda: xp.heatmap(E_.attributions.numpy(), index=9),
    "overlay index=17": lambda: xp.overlay(E_, index=17), "bar index=9": lambda: xp.bar(E_, index=9),
    "heatmap NaN map": lambda: xp.heatmap(torch.full((1, 1, 6, 6), math.nan)),
    "heatmap 5-D": lambda: xp.heatmap(torch.rand(1, 1, 1, 6, 6)),
    "heatmap percentile=150": lambda: xp.heatmap(E_, percentile=150),
    "heatmap percentile=nan": lambda: xp.heatmap(E_, percentile=math.nan),
    "explanation_grid n=0": lambda: xp.explanation_grid({"a": E_}, n=0),
    "explanation_grid n=-1": lambda: xp.explanation_grid({"a": E_}, n=-1),
    "explanation_grid empty": lambda: xp.explanation_grid({}),
    "attack_grid n=-1": lambda: xp.attack_grid(R_, n=-1),
    "attack_grid before batch mismatch": lambda: xp.attack_grid(R_, E_[:2], E_, n=4),
    "fooling_grid n=0": lambda: xp.fooling_grid(F_, n=0),
    "success_curve length mismatch": lambda: xp.success_curve([0.1, 0.2], {"PGD": [0.5]}),
    "success_curve NaN budget": lambda: xp.success_curve([math.nan, 0.2], {"PGD": [0.5, 0.6]}),
    "roc_curve unknown key": lambda: xp.roc_curve({"a": ([0, 1], [0, 1])}, keys=["b"]),
    "deletion_curve length mismatch": lambda: xp.deletion_curve([0, 0.5, 1], {"IG": torch.rand(2, 4)}),
    "text tokens/scores mismatch": lambda: xp.text(["a", "b"], [0.1, 0.2, 0.3]),
}.items():
    probe(k, lambda: _plot(fn))

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

print(f"inputs tried {counts['tried']}: clear errors {counts['clear']}, correct results {counts['correct']} "
      f"(valid input), silent {counts['silent']}, internal crashes or wrong results {counts['crash']}; "
      f"crafted files {crafted}, executed {executed}")
if "-v" in sys.argv:
    print("silent:", *silent, sep="\n  ")
    print("crashes:", *crashes, sep="\n  ")
