"""Time xadv's metrics against Quantus 0.6: one process, interleaved rounds, medians, ratios.

Two workloads, the same model, inputs, attributions (saliency) and metric parameters
for both libraries:

* ``digits``: the shipped digits CNN, ``--n`` test digits (default 32), 1x28x28;
* ``resnet18``: :func:`xadv.zoo.architectures.resnet18` (10 classes, seeded random
  weights), a batch of 8 random 3x64x64 images.

Each round times xadv, then Quantus, then the forward floor on one metric (so all see
the same machine load); the table reports the median seconds per call over the rounds
and the ratio Quantus / xadv (> 1: xadv is faster). Both run on the CPU with the threads
torch has (set ``OMP_NUM_THREADS`` to compare at one thread).

**Forward floor.** For a metric that calls the model, the rows of its model calls are
counted once (a forward hook on the model; the rows gradients flow back through are
counted by a hook on the output; the chunking and layout probes of xadv are left out),
for xadv and for Quantus, and the smaller count of each kind is taken. The floor is the
time of plain model passes over that many rows and nothing else: forward-only passes
without a graph for the rows that need no gradient, forward and backward (the gradient
of one logit with respect to the input, as saliency) for the others, each in the fastest
of a few rows per call (16, 64, 256; 8, 32, 128 with gradients) and, for images, of the
two memory layouts (contiguous, channels-last). No implementation of the metric can
beat it by more than the passes it skips; ``xadv / floor`` and ``Quantus / floor`` show
how close each library comes.

``python bench/metrics.py [--rounds 5] [--n 32] [--only NAME ...] [--models digits resnet18]``;
``--quick`` (a few minutes): 2 rounds, 16 digits, no MPRT on the ResNet.
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
from xadv.explainers.chunking import PROBING  # noqa: E402
from xadv.zoo.architectures import resnet18  # noqa: E402


def _explain(model, inputs, targets, **kw):
    xt = torch.as_tensor(inputs, dtype=torch.float32)
    return xadv.explain(model, xt, method="saliency", target=torch.as_tensor(targets).long()).attributions.numpy()


def cases(quantus, p):
    """name -> (xadv call (m, x, y, a, s), Quantus metric, extra Quantus keywords, needs a mask)."""
    no = dict(abs=False, normalise=False, disable_warnings=True)
    step, runs, size, patch, regions, samples = p["step"], p["runs"], p["subset"], p["patch"], p["regions"], 5
    ex = {"explain_func": _explain}
    return {
        "faithfulness_correlation": (
            lambda m, x, y, a, s: M.faithfulness_correlation(m, x, y, a, n_runs=runs, subset_size=size, seed=0),
            quantus.FaithfulnessCorrelation(nr_runs=runs, subset_size=size, perturb_baseline=0.0,
                                            return_aggregate=False, **no), {}),
        "faithfulness_estimate": (
            lambda m, x, y, a, s: M.faithfulness_estimate(m, x, y, a, features_in_step=step),
            quantus.FaithfulnessEstimate(features_in_step=step, perturb_baseline=0.0, **no), {}),
        "pixel_flipping": (
            lambda m, x, y, a, s: M.pixel_flipping(m, x, y, a, features_in_step=step, return_curve=True),
            quantus.PixelFlipping(features_in_step=step, perturb_baseline=0.0, **no), {}),
        "monotonicity_correlation": (
            lambda m, x, y, a, s: M.monotonicity_correlation(m, x, y, a, features_in_step=step),
            quantus.MonotonicityCorrelation(nr_samples=1, features_in_step=step, perturb_baseline=0.0, **no), {}),
        "region_perturbation": (
            lambda m, x, y, a, s: M.region_perturbation(m, x, y, a, patch_size=patch, regions=regions,
                                                        return_curve=True),
            quantus.RegionPerturbation(patch_size=patch, regions_evaluation=regions, perturb_baseline=0.0, **no),
            {}),
        "selectivity": (
            lambda m, x, y, a, s: M.selectivity(m, x, y, a, patch_size=2 * patch, return_curve=True),
            quantus.Selectivity(patch_size=2 * patch, perturb_baseline=0.0, **no), {}),
        "avg_sensitivity": (
            lambda m, x, y, a, s: M.avg_sensitivity(m, x, y, a, explainer="saliency", n_samples=samples, seed=0),
            quantus.AvgSensitivity(nr_samples=samples, lower_bound=0.2, **no), ex),
        "max_sensitivity": (
            lambda m, x, y, a, s: M.max_sensitivity("saliency", m, x, y, n_samples=samples, radius=0.2, seed=0),
            quantus.MaxSensitivity(nr_samples=samples, lower_bound=0.2, **no), ex),
        "local_lipschitz": (
            lambda m, x, y, a, s: M.local_lipschitz("saliency", m, x, y, n_samples=samples, radius=0.1, seed=0),
            quantus.LocalLipschitzEstimate(nr_samples=samples, **no), ex),
        "relative_input_stability": (
            lambda m, x, y, a, s: M.relative_input_stability(m, x, y, a, explainer="saliency", n_samples=samples,
                                                             seed=0),
            quantus.RelativeInputStability(nr_samples=samples, **no), ex),
        "mprt": (
            lambda m, x, y, a, s: M.model_parameter_randomisation(m, x, y, a, explainer="saliency").scores,
            quantus.MPRT(**no), ex),
        "random_logit": (
            lambda m, x, y, a, s: M.random_logit(m, x, y, a, explainer="saliency", abs=False),
            quantus.RandomLogit(num_classes=10, **no), ex),
        "sparseness": (lambda m, x, y, a, s: M.sparseness(a.abs()), quantus.Sparseness(**no), {}),
        "complexity": (lambda m, x, y, a, s: M.complexity(a.abs()), quantus.Complexity(**no), {}),
        "pointing_game": (lambda m, x, y, a, s: M.pointing_game(a, s), quantus.PointingGame(**no), {"mask": 1}),
        "attribution_localisation": (
            lambda m, x, y, a, s: M.attribution_localisation(a, s),
            quantus.AttributionLocalisation(positive_attributions=True, **no), {"mask": 1}),
        "top_k_intersection": (lambda m, x, y, a, s: M.top_k_intersection(a, s, k=50),
                               quantus.TopKIntersection(k=50, **no), {"mask": 1}),
        "relevance_rank_accuracy": (lambda m, x, y, a, s: M.relevance_rank_accuracy(a, s),
                                    quantus.RelevanceRankAccuracy(**no), {"mask": 1}),
        "relevance_mass_accuracy": (lambda m, x, y, a, s: M.relevance_mass_accuracy(a.abs(), s),
                                    quantus.RelevanceMassAccuracy(**no), {"mask": 1}),
        "auc": (lambda m, x, y, a, s: M.auc(a, s), quantus.AUC(**no), {"mask": 1}),
    }


def workloads(names, n):
    out = {}
    if "digits" in names:
        x, _ = xadv.data.load_digits("test")
        out["digits"] = (xadv.zoo.digits_cnn(), x[:n].contiguous(),
                         dict(step=28, runs=50, subset=64, patch=4, regions=20))
    if "resnet18" in names:
        g = torch.Generator().manual_seed(0)
        out["resnet18"] = (resnet18(num_classes=10, seed=0), torch.rand(8, 3, 64, 64, generator=g),
                           dict(step=1024, runs=20, subset=256, patch=8, regions=16))
    return out


def _time(fn, least=0.2):
    """Seconds per call: repeated until ``least`` seconds passed (millisecond metrics)."""
    k, t0 = 0, time.perf_counter()
    while True:
        fn()
        k += 1
        el = time.perf_counter() - t0
        if el >= least:
            return el / k


def count_rows(model, fn):
    """(forward rows, rows gradients flowed back through) of the model calls of ``fn()``.

    A plain function as hook survives the deep copies the randomisation metrics make;
    xadv's probe passes (rows per call, memory layout) are not counted."""
    rec = {"fwd": 0, "bwd": 0}

    def hook(_m, inp, out):
        if PROBING.get() or not isinstance(out, torch.Tensor):
            return
        n = out.shape[0]
        rec["fwd"] += n
        if out.requires_grad:
            out.register_hook(lambda g, n=n: rec.__setitem__("bwd", rec["bwd"] + n))

    h = model.register_forward_hook(hook)
    try:
        fn()
    finally:
        h.remove()
    return rec["fwd"], rec["bwd"]


FWD_SIZES, BWD_SIZES = (16, 64, 256), (8, 32, 128)


def floor_time(model, x, fwd, bwd):
    """Seconds of plain passes: ``fwd - bwd`` rows forward-only (no graph) and ``bwd`` rows
    forward and backward (gradient of logit 0 with respect to the input), each in the
    fastest of a few rows per call and (images) memory layouts."""
    pool = x.repeat((-(-max(FWD_SIZES + BWD_SIZES) // x.shape[0]),) + (1,) * (x.dim() - 1))
    layouts = [torch.contiguous_format] + ([torch.channels_last] if x.dim() == 4 else [])

    def passes(rows, size, layout, grad):
        full, rest = divmod(rows, size)
        batches = [pool[:size].contiguous(memory_format=layout)] * full
        if rest:
            batches.append(pool[:rest].contiguous(memory_format=layout))

        def run():
            for b in batches:
                if grad:
                    b = b.detach().requires_grad_(True)
                    torch.autograd.grad(model(b)[:, 0].sum(), b)
                else:
                    with torch.no_grad():
                        model(b)
        return run

    total = 0.0
    for rows, sizes, grad in ((fwd - bwd, FWD_SIZES, False), (bwd, BWD_SIZES, True)):
        if rows <= 0:
            continue
        best = float("inf")
        for size in sorted({min(c, rows) for c in sizes}):
            for layout in layouts:
                run = passes(rows, size, layout, grad)
                run()  # warm-up at this size and layout
                best = min(best, _time(run))
        total += best
    return total


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--n", type=int, default=32, help="digits per call (the ResNet batch is 8)")
    p.add_argument("--only", nargs="*", default=None, help="metric names")
    p.add_argument("--models", nargs="*", default=["digits", "resnet18"])
    p.add_argument("--quick", action="store_true", help="2 rounds, 16 digits, no MPRT on the ResNet")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.n = 2, 16
    warnings.simplefilter("ignore")
    quantus = import_reference("quantus")
    torch.manual_seed(0)
    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}, "
          f"rounds {args.rounds}", flush=True)
    print("| workload | metric | rows (fwd / bwd) | xadv s | Quantus s | floor s | Quantus / xadv | xadv / floor "
          "| Quantus / floor |")
    print("|:--|:--|--:|--:|--:|--:|--:|--:|--:|")
    for wname, (model, x, params) in workloads(args.models, args.n).items():
        with torch.no_grad():
            y = model(x).argmax(1)
        a = xadv.explain(model, x, method="saliency", target=y).attributions
        a2 = a.sum(1, keepdim=True)  # one map per image for the localisation metrics
        g = torch.Generator().manual_seed(1)
        s = (torch.rand(a2.shape, generator=g) > 0.6).float()
        xn, yn = x.numpy(), y.numpy()
        for name, (ours, ref, kw) in cases(quantus, params).items():
            if args.only and name not in args.only:
                continue
            if args.quick and wname == "resnet18" and name == "mprt":
                continue
            kw = dict(kw)
            mask = kw.pop("mask", None)
            am = a2 if mask else (a.abs() if name in ("sparseness", "complexity") else a)
            qkw = dict(model=model, x_batch=xn, y_batch=yn, a_batch=am.numpy(), device="cpu", **kw)
            if mask:
                qkw["s_batch"] = s.numpy()
            call_o = lambda: ours(model, x, y, am if mask else a, s)  # noqa: E731

            def call_q():
                np.random.seed(0)
                return ref(**qkw)

            # the first call of each warms up (xadv's probes, caches) and counts the rows
            rows_o, rows_q = count_rows(model, call_o), count_rows(model, call_q)
            fwd, bwd = min(rows_o[0], rows_q[0]), min(rows_o[1], rows_q[1])
            to, tq, tf = [], [], []
            for _ in range(args.rounds):
                to.append(_time(call_o))
                tq.append(_time(call_q))
                if fwd:
                    tf.append(floor_time(model, x, fwd, bwd))
            o, q = statistics.median(to), statistics.median(tq)
            if fwd:
                f = statistics.median(tf)
                cols = f"{fwd} / {bwd} | {o:.4f} | {q:.4f} | {f:.4f} | {q / o:.1f}x | {o / f:.2f} | {q / f:.2f}"
            else:
                cols = f"- | {o:.4f} | {q:.4f} | - | {q / o:.1f}x | - | -"
            print(f"| {wname} | {name} | {cols} |", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
