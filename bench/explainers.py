"""Time xadv's gradient explainers against captum on the same model and batch.

Usage::

    python bench/explainers.py                 # digits CNN, batch 64, 2 threads, 5 repeats
    python bench/explainers.py --repeats 9 --threads 1
    python bench/explainers.py --sweep         # xadv IG / SmoothGrad time for several batch_size
    python bench/explainers.py --memory        # peak RSS for 50 and 200 steps (fresh processes)
    python bench/explainers.py --more          # Occlusion and GradientSHAP against captum

Every configuration is timed once per round and the rounds are interleaved, so a
busy machine slows all of them alike; the table reports medians and ratios
against captum. Not a test: numbers go to docs/explainers.md.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

import xadv
from xadv.explainers import GradCAM, GradientSHAP, IntegratedGradients, Occlusion, SmoothGrad


def load(batch: int):
    """The embedded digits CNN and ``batch`` held-out digits (float32, CPU)."""
    from xadv.data import load_digits
    from xadv.zoo import digits_cnn
    try:
        model = digits_cnn(pretrained=True).eval()
    except ValueError as e:  # shipped weights being retrained: same architecture, same cost
        print(f"note: random weights ({str(e).splitlines()[0][:80]}...)")
        model = digits_cnn(pretrained=False).eval()
    x, y = load_digits(split="test")
    reps = (batch + x.shape[0] - 1) // x.shape[0]
    return model, x.repeat(reps, 1, 1, 1)[:batch].contiguous(), y.repeat(reps)[:batch].contiguous()


def configs(model, x, y, steps: int, n_samples: int):
    from captum.attr import IntegratedGradients as CIG
    from captum.attr import LayerAttribution, LayerGradCam, NoiseTunnel, Saliency
    n = x.shape[0]

    def fwd_bwd():
        xi = x.detach().requires_grad_()
        out = model(xi)
        torch.autograd.grad(out.gather(1, y[:, None]).sum(), xi)

    def captum_ig(ibs):
        return lambda: CIG(model).attribute(x, target=y, n_steps=steps, internal_batch_size=ibs)

    def captum_nt(k):
        return lambda: NoiseTunnel(Saliency(model)).attribute(
            x, nt_type="smoothgrad", nt_samples=n_samples, nt_samples_batch_size=k, stdevs=0.15, target=y,
            abs=False)

    conv = model.features.conv3

    def captum_cam():
        a = LayerGradCam(model, conv).attribute(x, target=y, relu_attributions=True)
        return LayerAttribution.interpolate(a, tuple(x.shape[-2:]), interpolate_mode="bilinear")

    ig = IntegratedGradients(steps=steps)
    sg = SmoothGrad(n_samples=n_samples, noise=0.15, seed=0)
    cam = GradCAM()
    tuned_ig = {f"captum IG ibs={b}": captum_ig(b) for b in (n, 2 * n, 4 * n)}
    tuned_nt = {f"captum SG nt_batch={k}": captum_nt(k) for k in (1, 2, 4)}
    return {
        "forward+backward": fwd_bwd,
        "captum IG default": captum_ig(None),
        **tuned_ig,
        "xadv IG default": lambda: ig(model, x, y),
        "captum SG default": captum_nt(None),
        **tuned_nt,
        "xadv SG default": lambda: sg(model, x, y),
        "captum GradCAM+interp": captum_cam,
        "xadv GradCAM": lambda: cam(model, x, y),
    }


def more_configs(model, x, y, n_samples: int, window: int = 4, stride: int = 2):
    """Occlusion (window x window, stride) and GradientSHAP (``n_samples`` draws from 100
    training digits) in xadv and captum, same model, batch and parameters."""
    from captum.attr import GradientShap
    from captum.attr import Occlusion as COcc

    from xadv.data import load_digits
    background = load_digits(split="train")[0][:100]
    occ = Occlusion(window=window, stride=stride)
    gs = GradientSHAP(background, n_samples=n_samples, seed=0)
    w, s = (1, window, window), (1, stride, stride)

    def captum_occ(ppe):
        return lambda: COcc(model).attribute(x, sliding_window_shapes=w, strides=s, target=y,
                                             perturbations_per_eval=ppe)

    return {
        "captum Occlusion default": captum_occ(1),
        **{f"captum Occlusion ppe={k}": captum_occ(k) for k in (4, 16)},
        "xadv Occlusion default": lambda: occ(model, x, y),
        "captum GradientShap": lambda: GradientShap(model).attribute(x, background, n_samples=n_samples, target=y),
        "xadv GradientSHAP default": lambda: gs(model, x, y),
    }


def more_report(med: dict) -> str:
    best = min(v for k, v in med.items() if k.startswith("captum Occlusion ppe"))
    lines = [f"{'configuration':<28}{'median ms':>11}  ratio"]
    for k, v in med.items():
        extra = ""
        if k == "xadv Occlusion default":
            extra = (f"  captum default / xadv = {med['captum Occlusion default'] / v:.2f}x, "
                     f"captum best tuned / xadv = {best / v:.2f}x")
        elif k == "xadv GradientSHAP default":
            extra = f"  captum / xadv = {med['captum GradientShap'] / v:.2f}x"
        lines.append(f"{k:<28}{1000 * v:>11.1f}{extra}")
    return "\n".join(lines)


def timeit(fns: dict, repeats: int) -> dict:
    for f in fns.values():  # warm-up
        f()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def report(med: dict) -> str:
    best_ig = min(v for k, v in med.items() if k.startswith("captum IG ibs"))
    best_sg = min(v for k, v in med.items() if k.startswith("captum SG nt_batch"))
    ref = {
        "xadv IG default": ("captum IG default", best_ig),
        "xadv SG default": ("captum SG default", best_sg),
        "xadv GradCAM": ("captum GradCAM+interp", med["captum GradCAM+interp"]),
    }
    lines = [f"{'configuration':<26}{'median ms':>11}  ratio"]
    for k, v in med.items():
        extra = ""
        if k in ref:
            default_key, best = ref[k]
            extra = f"  captum default / xadv = {med[default_key] / v:.2f}x"
            if k != "xadv GradCAM":
                extra += f", captum best tuned / xadv = {best / v:.2f}x"
            else:
                extra = f"  captum / xadv = {med[default_key] / v:.2f}x"
        lines.append(f"{k:<26}{1000 * v:>11.1f}{extra}")
    return "\n".join(lines)


def sweep(model, x, y, steps, n_samples, repeats):
    fns = {}
    for b in (64, 128, 256, 512, 1024):
        fns[f"xadv IG batch_size={b}"] = (lambda b=b: IntegratedGradients(steps=steps, batch_size=b)(model, x, y))
        fns[f"xadv SG batch_size={b}"] = (lambda b=b: SmoothGrad(n_samples=n_samples, batch_size=b, seed=0)(
            model, x, y))
    fns["xadv IG default"] = lambda: IntegratedGradients(steps=steps)(model, x, y)
    fns["xadv SG default"] = lambda: SmoothGrad(n_samples=n_samples, seed=0)(model, x, y)
    med = timeit(fns, repeats)
    for k, v in med.items():
        print(f"{k:<28}{1000 * v:>9.1f} ms")


def memory_child(which: str, steps: int, batch: int) -> None:
    """Peak RSS growth (MiB) of one call, in this fresh process."""
    model, x, y = load(batch)
    with torch.no_grad():
        model(x)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if which == "xadv":
        IntegratedGradients(steps=steps)(model, x, y)
    elif which == "captum":
        from captum.attr import IntegratedGradients as CIG
        CIG(model).attribute(x, target=y, n_steps=steps)
    elif which == "xadv_sg":
        SmoothGrad(n_samples=steps, seed=0)(model, x, y)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"mib": (peak - base) / 1024}))


def memory(batch: int) -> None:
    print(f"peak RSS growth of one call (MiB), batch {batch}, fresh process each")
    for which in ("xadv", "xadv_sg", "captum"):
        row = []
        for steps in (50, 200):
            out = subprocess.run([sys.executable, __file__, "--memory-child", which, "--steps", str(steps),
                                  "--batch", str(batch), "--threads", "1"],
                                 capture_output=True, text=True, check=True)
            row.append(json.loads(out.stdout.strip().splitlines()[-1])["mib"])
        label = {"xadv": "xadv IG default", "xadv_sg": "xadv SG default",
                 "captum": "captum IG default"}[which]
        print(f"{label:<22} steps/samples=50: {row[0]:7.1f}   200: {row[1]:7.1f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=50, help="IG steps and SmoothGrad samples")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sweep", action="store_true")
    p.add_argument("--memory", action="store_true")
    p.add_argument("--more", action="store_true", help="Occlusion (4x4, stride 2) and GradientSHAP vs captum")
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.memory_child:
        return memory_child(a.memory_child, a.steps, a.batch)
    if a.memory:
        return memory(a.batch)
    model, x, y = load(a.batch)
    print(f"xadv {xadv.__version__}, torch {torch.__version__}, threads {a.threads}, "
          f"digits CNN, batch {a.batch}, steps/samples {a.steps}, repeats {a.repeats}, "
          f"cpus {os.cpu_count()}")
    if a.sweep:
        return sweep(model, x, y, a.steps, a.steps, a.repeats)
    if a.more:
        return print(more_report(timeit(more_configs(model, x, y, a.steps), a.repeats)))
    med = timeit(configs(model, x, y, a.steps, a.steps), a.repeats)
    print(report(med))


if __name__ == "__main__":
    main()
