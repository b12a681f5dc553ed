"""Time xadv's metric families against Quantus 0.6 in one process, interleaved rounds.

``python bench/metrics.py [--rounds 3] [--n 32]`` prints seconds per call (median over
rounds) and the ratio Quantus / xadv on the digits CNN and a ResNet-18-style model
(:class:`xadv.experiments.evaluation.SmallResNet`), same inputs, attributions and
metric parameters.
"""
import argparse
import os
import statistics
import sys
import time
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from _refs import import_reference  # noqa: E402

import xadv  # noqa: E402
import xadv.metrics as M  # noqa: E402
from xadv.experiments.evaluation import small_resnet  # noqa: E402


def _explain(model, inputs, targets, **kw):
    xt = torch.as_tensor(inputs, dtype=torch.float32)
    return xadv.explain(model, xt, method="saliency", target=torch.as_tensor(targets).long()).attributions.numpy()


def cases(quantus, step):
    no = dict(abs=False, normalise=False, disable_warnings=True)
    return {
        "faithfulness_correlation": (
            lambda m, x, y, a: M.faithfulness_correlation(m, x, y, a, n_runs=50, subset_size=64, seed=0),
            quantus.FaithfulnessCorrelation(nr_runs=50, subset_size=64, perturb_baseline=0.0,
                                            return_aggregate=False, **no), {}),
        "faithfulness_estimate": (
            lambda m, x, y, a: M.faithfulness_estimate(m, x, y, a, features_in_step=step),
            quantus.FaithfulnessEstimate(features_in_step=step, perturb_baseline=0.0, **no), {}),
        "pixel_flipping": (
            lambda m, x, y, a: M.pixel_flipping(m, x, y, a, features_in_step=step, return_curve=True),
            quantus.PixelFlipping(features_in_step=step, perturb_baseline=0.0, **no), {}),
        "region_perturbation": (
            lambda m, x, y, a: M.region_perturbation(m, x, y, a, patch_size=4, regions=20, return_curve=True),
            quantus.RegionPerturbation(patch_size=4, regions_evaluation=20, perturb_baseline=0.0, **no), {}),
        "avg_sensitivity": (
            lambda m, x, y, a: M.avg_sensitivity(m, x, y, a, explainer="saliency", n_samples=5, seed=0),
            quantus.AvgSensitivity(nr_samples=5, lower_bound=0.2, **no), {"explain_func": _explain}),
        "relative_input_stability": (
            lambda m, x, y, a: M.relative_input_stability(m, x, y, a, explainer="saliency", n_samples=5, seed=0),
            quantus.RelativeInputStability(nr_samples=5, **no), {"explain_func": _explain}),
        "mprt": (
            lambda m, x, y, a: M.model_parameter_randomisation(m, x, y, a, explainer="saliency").scores,
            quantus.MPRT(**no), {"explain_func": _explain}),
        "sparseness": (lambda m, x, y, a: M.sparseness(a), quantus.Sparseness(**no), {}),
    }


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--only", nargs="*", default=None)
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    quantus = import_reference("quantus")
    torch.manual_seed(0)
    x28, _ = xadv.data.load_digits("test")
    models = {"digits_cnn": (xadv.zoo.digits_cnn(), x28[:args.n].contiguous(), 28),
              "small_resnet": (small_resnet(0), torch.rand(args.n, 3, 32, 32), 128)}
    print("| model | metric | xadv s | Quantus s | ratio |")
    print("|:--|:--|--:|--:|--:|")
    for mname, (model, x, step) in models.items():
        y = model(x).argmax(1)
        a = xadv.explain(model, x, method="saliency", target=y).attributions
        xn, yn, an = x.numpy(), y.numpy(), a.numpy()
        for name, (ours, ref, kw) in cases(quantus, step).items():
            if args.only and name not in args.only:
                continue
            to, tq = [], []
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                ours(model, x, y, a)
                to.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                np.random.seed(0)
                ref(model=model, x_batch=xn, y_batch=yn, a_batch=an, device="cpu", **kw)
                tq.append(time.perf_counter() - t0)
            o, q = statistics.median(to), statistics.median(tq)
            print(f"| {mname} | {name} | {o:.4f} | {q:.4f} | {q / o:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
