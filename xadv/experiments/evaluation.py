"""Evaluating explanations: sanity checks and metric tables for every explainer.

Runs on the digits CNN (shipped weights) and on a small ResNet (basic residual
blocks, seeded initialisation, 3x32x32 inputs) and prints

* the sanity table: MPRT (Spearman of |maps| with every layer random; passed below
  0.5), smooth MPRT, random logit and input invariance (relative L1 change under a
  constant shift compensated by the model; passed below 1e-3);
* the report card of the metric families (faithfulness, robustness, complexity,
  localisation against the digit strokes as planted evidence);
* Warnecke's criteria and Bhatt's lowest-sensitivity aggregation.

``python -m xadv.experiments.evaluation [--n 16] [--models digits_cnn small_resnet] [--out DIR]``
"""
from __future__ import annotations

import argparse
import time
from typing import Dict, Optional, Sequence

import torch
from torch import nn

from .. import data, zoo
from ..metrics import (bhatt_aggregate, evaluate, input_invariance, mprt, random_logit, smooth_mprt,
                       warnecke_criteria)
from ..metrics.report import ReportCard

EXPLAINERS = ("saliency", "input_x_gradient", "smoothgrad", "integrated_gradients", "gradient_shap",
              "gradcam", "occlusion")
METRICS = ("faithfulness_correlation", "faithfulness_estimate", "pixel_flipping", "region_perturbation",
           "avg_sensitivity", "sparseness", "complexity", "pointing_game", "relevance_mass_accuracy",
           "relevance_rank_accuracy", "auc")


class _Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                      if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        return self.relu2(self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))) + self.short(x))


class SmallResNet(nn.Module):
    """ResNet-18-style network (basic blocks, widths 16-32-64-128, one block per stage), 3x32x32 -> 10."""

    def __init__(self, num_classes: int = 10, widths=(16, 32, 64, 128)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            blocks.append(_Block(cin, w, 1 if i == 0 else 2))
            cin = w
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.layers(self.stem(x))).flatten(1))


def small_resnet(seed: int = 0) -> SmallResNet:
    """A seeded, untrained :class:`SmallResNet` in eval mode (BatchNorm statistics set
    from one seeded batch so activations are well scaled)."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        m = SmallResNet()
    m.train()
    with torch.no_grad():
        m(torch.rand(64, 3, 32, 32, generator=g))
    return m.eval()


def planted_evidence(n: int = 16, seed: int = 0):
    """Held-out digits with their stroke pixels (``x > 0.25``, dilated by one pixel) as the
    ground-truth evidence mask: ``(x (n, 1, 28, 28), y (n,), mask (n, 1, 28, 28) bool)``."""
    x, y = data.load_digits("test")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(x.shape[0], generator=g)[:n]
    x, y = x[idx].contiguous(), y[idx].clone()
    mask = torch.nn.functional.max_pool2d((x > 0.25).float(), 3, 1, 1) > 0
    return x, y, mask


def sanity_table(model, x, y, explainers: Sequence[str]) -> ReportCard:
    rows: Dict[str, Dict[str, float]] = {}
    from ..metrics import explanation_fn

    for e in explainers:
        a = explanation_fn(e)(model, x, y)  # explained once, shared by the checks
        ii = float(input_invariance(model, x, y, a, explainer=e).mean())
        rows[e] = {
            "mprt": float(mprt(model, x, y, a, explainer=e).nanmean()),
            "smooth_mprt": float(smooth_mprt(model, x, y, explainer=e, n_samples=4).nanmean()),
            "random_logit": float(random_logit(model, x, y, explainer=e).nanmean()),
            "input_invariance": ii,
        }
        rows[e]["passes_mprt"] = float(rows[e]["mprt"] < 0.5)
        rows[e]["passes_invariance"] = float(ii < 1e-3)
    dirs = {"mprt": "lower", "smooth_mprt": "lower", "random_logit": "lower", "input_invariance": "lower",
            "passes_mprt": "higher", "passes_invariance": "higher"}
    return ReportCard(rows, dirs)


def _explainers(names, model_name):
    from ..explainers import get
    out = {}
    for n in names:
        if n == "gradient_shap":
            out[n] = get(n, n_samples=8, seed=0)
        elif n == "smoothgrad":
            out[n] = get(n, n_samples=8, seed=0)
        elif n == "integrated_gradients":
            out[n] = get(n, steps=16)
        elif n == "occlusion":
            out[n] = get(n, window=4, stride=4) if model_name == "digits_cnn" else get(n, window=8, stride=8)
        else:
            out[n] = get(n)
    return out


def run(n: int = 16, seed: int = 0, explainers: Sequence[str] = EXPLAINERS, models: Sequence[str] = ("digits_cnn",
        "small_resnet")) -> dict:
    torch.manual_seed(seed)
    text, rows, secs = [], {}, {}
    for mname in models:
        t0 = time.perf_counter()
        if mname == "digits_cnn":
            model = zoo.digits_cnn()
            x, y, mask = planted_evidence(n, seed)
            metrics = METRICS
        else:
            model = small_resnet(seed)
            x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
            y = model(x).argmax(1)
            mask = None
            metrics = [m for m in METRICS if m not in ("pointing_game", "relevance_mass_accuracy",
                                                       "relevance_rank_accuracy", "auc")]
        ex = _explainers(explainers, mname)
        sanity = sanity_table(model, x, y, list(ex.values()))
        sanity.values = {k: v for k, v in zip(ex, sanity.values.values())}
        params = {"faithfulness_estimate": {"features_in_step": 28 if mname == "digits_cnn" else 96},
                  "pixel_flipping": {"features_in_step": 28 if mname == "digits_cnn" else 96},
                  "region_perturbation": {"patch_size": 4, "regions": 20},
                  "faithfulness_correlation": {"n_runs": 50, "subset_size": 64, "seed": seed},
                  "avg_sensitivity": {"radius": 0.05, "seed": seed, "n_samples": 5}}
        card = evaluate(model, x, y, ex, metrics, mask=mask, params=params)
        warn = warnecke_criteria(model, x, y, list(ex.values()), seed=seed)
        warn.values = {k: v for k, v in zip(ex, warn.values.values())}
        best, bhatt = bhatt_aggregate(model, x, y, [ex[k] for k in ("saliency", "smoothgrad",
                                                                    "integrated_gradients") if k in ex],
                                      radius=0.05, n_samples=3)
        secs[mname] = time.perf_counter() - t0
        rows[mname] = {"sanity": sanity.values, "metrics": card.values, "warnecke": warn.values,
                       "bhatt": bhatt.values, "ranking": card.ranking()}
        text += [f"## {mname} (n={n})", "", "### Sanity checks", "", sanity.to_markdown(), "",
                 "### Metric families", "", card.to_markdown(), "", "ranking: " + ", ".join(card.ranking()), "",
                 "### Warnecke's criteria", "", warn.to_markdown(), "",
                 "### Bhatt aggregation (avg-sensitivity of averaged normalised maps)", "", bhatt.to_markdown(), "",
                 f"lowest sensitivity: {' + '.join(b for b in best)}", ""]
        rows[mname]["cards"] = (sanity, card, warn, bhatt)
    return {"rows": {k: {kk: vv for kk, vv in v.items() if kk != "cards"} for k, v in rows.items()},
            "cards": {k: v["cards"] for k, v in rows.items()}, "seconds": secs, "markdown": "\n".join(text)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xadv.experiments.evaluation", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=16, help="samples per model (default 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder for evaluation.md / evaluation.json")
    p.add_argument("--models", nargs="+", default=["digits_cnn", "small_resnet"], choices=["digits_cnn", "small_resnet"],
                   help="which halves to run (default both)")
    a = p.parse_args(argv)
    from . import run_in_folder

    return run_in_folder("evaluation", a, lambda: _main(a))


def _main(a) -> int:
    res = run(n=a.n, seed=a.seed, models=tuple(a.models))
    print(res["markdown"])
    print("seconds:", {k: round(v, 1) for k, v in res["seconds"].items()})
    from . import write_outputs
    write_outputs(a.out, "evaluation", res["markdown"], res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
