"""The benchmark suite: xadv's defaults against the reference libraries at several model sizes.

Workloads (random-init zoo architectures: the cost does not depend on the weights)::

    digits    xadv.zoo.digits_cnn, 1x28x28, batch 32
    resnet18  xadv.zoo.architectures.resnet18, 3x64x64, batch 8
    resnet50  xadv.zoo.architectures.resnet50, 3x224x224, batch 2
    vit_tiny  xadv.zoo.architectures.vit_tiny, 3x224x224, batch 2
    text      xadv.zoo.text_classifier, 16 token ids, batch 32 (layer methods on the embedding)

Methods: ``ig``, ``smoothgrad``, ``gradient_shap``, ``occlusion`` (xadv defaults against
captum's default and captum's best tuned setting: ``internal_batch_size`` /
``nt_samples_batch_size`` / ``perturbations_per_eval`` over a few values, the fastest
taken), ``gradcam`` (captum ``LayerGradCam`` + upsampling, pytorch-grad-cam ``GradCAM``),
``lime`` (one image: the ``lime`` package and ``n_samples`` plain forward passes),
``pgd`` (torchattacks ``PGD``, same settings; also torchattacks followed by the two
forward passes that give the clean and adversarial predictions xadv's result holds),
``quantus`` (sparseness and faithfulness
correlation, Quantus against ``xadv.metrics``).

Every configuration of a workload runs once per round (a call shorter than 0.25 s several
times in a row, up to 20, the round taking their mean), rounds interleaved (in a new
shuffled order each round, seeded), after one warm-up call each (which also fills xadv's chunking cache); medians are reported with
the ratio xadv / reference (below 1: xadv faster). A fixed 512x512 matmul is timed
between configurations as a noise probe: its spread (max/min over the run) says how
steady the machine was.

Usage::

    python bench/suite.py                       # everything, 5 rounds
    python bench/suite.py --quick               # 3 rounds, fewer steps on the big models
    python bench/suite.py --workloads digits,resnet18 --methods ig,smoothgrad
    python bench/suite.py --quick --markdown docs/_speed.md --json out.json
    python bench/suite.py --memory              # peak RSS of IG over 1,000-10,000 digits

``--memory`` runs each measurement in a fresh subprocess (``resource.getrusage``
``ru_maxrss``): Integrated Gradients (16 steps) over N digits with ``batch_size=256`` and
with the default policy.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
import warnings
from typing import Callable, Dict, List, Optional, Tuple

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
# bench/lime.py is named like the ``lime`` package: keep this folder off the import path
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
sys.path.insert(0, os.path.join(_HERE, "..", "tests"))

import xadv  # noqa: E402
from xadv.explainers import GradCAM, GradientSHAP, IntegratedGradients, LIME, Occlusion, SmoothGrad  # noqa: E402

WORKLOADS = ("digits", "resnet18", "resnet50", "vit_tiny", "text")
#: a call shorter than ROUND_SECONDS runs several times in a row within its round (at
#: most MAX_REPS), and the round records the mean: one 4-50 ms call moved its median by
#: 10-15% between runs (Grad-CAM at ResNet-18, PGD on digits)
ROUND_SECONDS = 0.25
MAX_REPS = 20
METHODS = ("ig", "smoothgrad", "gradient_shap", "occlusion", "gradcam", "lime", "pgd", "quantus")


def reference(name: str):
    """Import a reference library that declares torchvision (placeholder as in tests/_refs.py)."""
    from _refs import _install_placeholder
    import importlib
    _install_placeholder()
    return importlib.import_module(name)


# ----------------------------------------------------------------------------- workloads
def load(name: str):
    """``(model, x, y, info)`` for a workload; ``info`` holds the Grad-CAM layer and sizes."""
    from xadv.zoo import architectures as A
    g = torch.Generator().manual_seed(0)
    if name == "digits":
        from xadv.data import load_digits
        from xadv.zoo import digits_cnn
        model = digits_cnn(pretrained=False).eval()
        x = load_digits(split="test")[0][:32].contiguous()
        return model, x, model(x).argmax(1), {"layer": model.features.conv3, "window": 4, "stride": 2}
    if name == "resnet18":
        model = A.resnet18(num_classes=10).eval()
        x = torch.rand(8, 3, 64, 64, generator=g)
        return model, x, torch.arange(8) % 10, {"layer": model.layer4, "window": 8, "stride": 8}
    if name == "resnet50":
        model = A.resnet50(num_classes=1000).eval()
        x = torch.rand(2, 3, 224, 224, generator=g)
        return model, x, torch.tensor([3, 7]), {"layer": model.layer4, "window": 32, "stride": 32}
    if name == "vit_tiny":
        model = A.vit_tiny(num_classes=1000).eval()
        x = torch.rand(2, 3, 224, 224, generator=g)
        return model, x, torch.tensor([3, 7]), {"layer": None, "window": 32, "stride": 32}
    if name == "text":
        from xadv.zoo import text_classifier
        from xadv.zoo.text import planted_tokens
        model = text_classifier(pretrained=False).eval()
        ids = planted_tokens(32, seed=3)[0]
        return model, ids, model(ids).argmax(1), {"layer": model.embedding, "window": 1, "stride": 1}
    raise ValueError(f"unknown workload {name!r}; choose from {WORKLOADS}")


def switched_off(switch, fn):
    """``fn`` with one of xadv's shortcuts off: ``switch`` is its context manager
    (``xadv.explainers.entry_factoring``, ``fast_attention``, ``class_token_pruning``,
    ``incremental_occlusion``, ``fast_pooling``)."""
    def run():
        with switch(False):
            return fn()
    return run


def noise_probe() -> Callable[[], None]:
    a = torch.rand(512, 512, generator=torch.Generator().manual_seed(0))
    return lambda: a @ a


# ----------------------------------------------------------------------------- configurations
Row = Tuple[str, str, Dict[str, Callable[[], object]]]


def configs(work: str, methods, quick: bool) -> Tuple[List[Row], dict]:
    """Per method: (method, xadv label, {label: callable}); the xadv default is labelled
    ``xadv``, references ``captum default``, ``captum <setting>``, ``pytorch-grad-cam``...
    """
    model, x, y, info = load(work)
    n = x.shape[0]
    big = work in ("resnet50", "vit_tiny")
    steps = 16 if quick and big else 32
    samples = 16 if quick and big else 32
    text = work == "text"
    rows: List[Row] = []
    import captum.attr as C

    def tuned(make, values):
        return {f"captum {k}": make(v) for k, v in values}

    if "ig" in methods:
        if text:
            xa = IntegratedGradients(steps=steps, layer=info["layer"])
            def cig(ibs):
                return lambda: C.LayerIntegratedGradients(model, info["layer"]).attribute(
                    x, baselines=torch.zeros_like(x), target=y, n_steps=steps, internal_batch_size=ibs)
        else:
            xa = IntegratedGradients(steps=steps)
            def cig(ibs):
                return lambda: C.IntegratedGradients(model).attribute(x, target=y, n_steps=steps,
                                                                      internal_batch_size=ibs)
        cfg = {"xadv": lambda: xa(model, x, y), "captum default": cig(None)}
        cfg.update(tuned(cig, [(f"internal_batch_size={k * n}", k * n) for k in (1, 2, 4, 8) if k * n < steps * n]))
        if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            def unfolded():
                with xadv.explainers.folding(False):
                    return xa(model, x, y)
            cfg["xadv, BatchNorm not folded"] = unfolded
        if not text:
            cfg["xadv, entry not factored"] = switched_off(xadv.explainers.entry_factoring, lambda: xa(model, x, y))
        if work == "vit_tiny":
            cfg["xadv, stock attention"] = switched_off(xadv.explainers.fast_attention, lambda: xa(model, x, y))
            cfg["xadv, whole last block"] = switched_off(xadv.explainers.class_token_pruning, lambda: xa(model, x, y))
        rows.append(("ig", f"IG, {steps} steps", cfg))
    if "smoothgrad" in methods and not text:
        xs = SmoothGrad(n_samples=samples, noise=0.15, noise_mode="absolute", seed=0)

        def cnt(k):
            return lambda: C.NoiseTunnel(C.Saliency(model)).attribute(
                x, nt_type="smoothgrad", nt_samples=samples, nt_samples_batch_size=k, stdevs=0.15, target=y,
                abs=False)
        cfg = {"xadv": lambda: xs(model, x, y), "captum default": cnt(None)}
        cfg.update(tuned(cnt, [(f"nt_samples_batch_size={k}", k) for k in (1, 2, 4, 8, 16) if k < samples]))
        if work == "vit_tiny":
            cfg["xadv, stock attention"] = switched_off(xadv.explainers.fast_attention, lambda: xs(model, x, y))
        rows.append(("smoothgrad", f"SmoothGrad, {samples} samples", cfg))
    if "gradient_shap" in methods and not text:
        bg = torch.rand((16,) + tuple(x.shape[1:]), generator=torch.Generator().manual_seed(1))
        xg = GradientSHAP(bg, n_samples=samples, seed=0)
        # captum's GradientShap has no batching option: its default is its best
        cfg = {"xadv": lambda: xg(model, x, y),
               "captum default": lambda: C.GradientShap(model).attribute(x, bg, n_samples=samples, target=y)}
        rows.append(("gradient_shap", f"GradientSHAP, {samples} samples", cfg))
    if "occlusion" in methods and not text:
        c = x.shape[1]
        w, s = info["window"], info["stride"]
        xo = Occlusion(window=w, stride=s)

        def cocc(ppe):
            return lambda: C.Occlusion(model).attribute(x, sliding_window_shapes=(c, w, w), strides=(c, s, s),
                                                        target=y, perturbations_per_eval=ppe)
        cfg = {"xadv": lambda: xo(model, x, y), "captum default": cocc(1)}
        cfg.update(tuned(cocc, [(f"perturbations_per_eval={k}", k) for k in (4, 16, 64)]))
        if work in ("resnet18", "resnet50"):
            cfg["xadv, not incremental"] = switched_off(xadv.explainers.incremental_occlusion, lambda: xo(model, x, y))
        else:
            cfg["xadv, entry not factored"] = switched_off(xadv.explainers.entry_factoring, lambda: xo(model, x, y))
        if work == "digits":
            cfg["xadv, plain pooling"] = switched_off(xadv.explainers.fast_pooling, lambda: xo(model, x, y))
        if work == "vit_tiny":
            cfg["xadv, whole last block"] = switched_off(xadv.explainers.class_token_pruning, lambda: xo(model, x, y))
        rows.append(("occlusion", f"Occlusion {w}x{w}/{s}", cfg))
    if "gradcam" in methods and info["layer"] is not None and not text:
        layer = info["layer"]
        xc = GradCAM(layer=layer)

        def ccam():
            a = C.LayerGradCam(model, layer).attribute(x, target=y, relu_attributions=True)
            return C.LayerAttribution.interpolate(a, tuple(x.shape[-2:]), interpolate_mode="bilinear")
        cfg = {"xadv": lambda: xc(model, x, y), "captum default": ccam,
               # the model itself, not the traced copy (BatchNorm folding, fast pooling)
               "xadv, model itself": switched_off(xadv.explainers.folding, switched_off(
                   xadv.explainers.fast_pooling, lambda: xc(model, x, y)))}
        try:
            pgc = reference("pytorch_grad_cam")
            from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
            targets = [ClassifierOutputTarget(int(t)) for t in y]

            def pgc_cam():
                # a fresh object per call, released on exit: its hooks would otherwise stay
                # on the model and slow every later configuration of the workload
                with pgc.GradCAM(model=model, target_layers=[layer]) as cam:
                    return cam(input_tensor=x, targets=targets)
            cfg["pytorch-grad-cam"] = pgc_cam
        except Exception as e:  # pragma: no cover - environment dependent
            print(f"note: pytorch-grad-cam unavailable: {e}")
        rows.append(("gradcam", "Grad-CAM", cfg))
    if "lime" in methods and not text and not (quick and big):
        ns = 100 if big else (300 if quick else 500)
        x1, y1 = x[:1], y[:1]
        from xadv.explainers.lime import segment
        seg = segment(x1, "slic")
        xl = LIME(n_samples=ns, segmentation=seg[0], seed=0)
        masks = xl.sample_masks(torch.tensor([int(seg.max()) + 1]), torch.Generator().manual_seed(0), x.device)

        def plain():
            # n_samples forward passes of masked images, in one call (the floor)
            with torch.no_grad():
                z = masks[0].to(x.dtype)[:, seg[0].reshape(-1)].reshape(ns, 1, *x.shape[-2:])
                return model(x1 * z)
        cfg = {"xadv": lambda: xl(model, x1, y1), "forwards": plain}
        try:
            from lime import lime_image
            lime_image.tqdm = lambda it, *a, **k: it
            img = x1[0].permute(1, 2, 0).double().numpy()
            s_np = seg[0].numpy()
            ch = x.shape[1]

            def classifier_fn(imgs):
                with torch.no_grad():
                    t = torch.as_tensor(imgs, dtype=torch.float32).permute(0, 3, 1, 2)
                    return torch.softmax(model(t[:, :1] if ch == 1 else t), 1).numpy()
            im = img[..., 0] if ch == 1 else img
            cfg["lime package"] = lambda: lime_image.LimeImageExplainer(random_state=0).explain_instance(
                im, classifier_fn, labels=(int(y1[0]),), top_labels=None, hide_color=None, num_samples=ns,
                batch_size=100, segmentation_fn=lambda _i: s_np)
        except Exception as e:  # pragma: no cover
            print(f"note: lime unavailable: {e}")
        rows.append(("lime", f"LIME, 1 image, {ns} samples", cfg))
    if "pgd" in methods and not text and not big:
        import torchattacks
        xp = xadv.attacks.PGD(eps=8 / 255, steps=10, step_size=2 / 255, seed=0)
        ta = torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=10, random_start=True)

        def ta_eval():
            # what xadv's result holds besides x_adv: clean and adversarial predictions
            adv = ta(x, y)
            with torch.no_grad():
                return adv, model(x).argmax(1), model(adv).argmax(1)
        rows.append(("pgd", "PGD L-inf, 10 steps", {"xadv": lambda: xp(model, x, y), "torchattacks": lambda: ta(x, y),
                                                    "torchattacks + evaluation": ta_eval,
                                                    "xadv, entry not factored": switched_off(
                                                        xadv.explainers.entry_factoring, lambda: xp(model, x, y)),
                                                    "xadv, plain pooling": switched_off(
                                                        xadv.explainers.fast_pooling, lambda: xp(model, x, y))}))
    if "quantus" in methods and work in ("digits", "resnet18"):
        try:
            quantus = reference("quantus")
            import numpy as np
            import xadv.metrics as M
            a = xadv.explain(model, x, method="saliency", target=y).attributions
            xn, yn, an = x.numpy(), y.numpy(), a.numpy()
            no = dict(abs=False, normalise=False, disable_warnings=True)
            qs = quantus.Sparseness(**no)
            rows.append(("quantus_sparseness", "sparseness", {
                "xadv": lambda: M.sparseness(a),
                "Quantus": lambda: qs(model=model, x_batch=xn, y_batch=yn, a_batch=an, device="cpu")}))
            qf = quantus.FaithfulnessCorrelation(nr_runs=20, subset_size=64, perturb_baseline=0.0,
                                                 return_aggregate=False, **no)

            def qfc():
                np.random.seed(0)
                return qf(model=model, x_batch=xn, y_batch=yn, a_batch=an, device="cpu")
            rows.append(("quantus_faithfulness", "faithfulness correlation, 20 runs", {
                "xadv": lambda: M.faithfulness_correlation(model, x, y, a, n_runs=20, subset_size=64, seed=0),
                "Quantus": qfc}))
        except Exception as e:  # pragma: no cover
            print(f"note: Quantus unavailable: {e}")
    return rows, {"n": n, "shape": tuple(x.shape[1:])}


# ----------------------------------------------------------------------------- timing
def run_workload(work: str, methods, rounds: int, quick: bool, log) -> dict:
    rows, meta = configs(work, methods, quick)
    probe = noise_probe()
    flat = [(m, label, k, fn) for m, label, cfg in rows for k, fn in cfg.items()]
    times: Dict[Tuple[str, str], List[float]] = {(m, k): [] for m, _, k, _ in flat}
    probes: List[float] = []
    reps: Dict[Tuple[str, str], int] = {}
    for m, _, k, fn in flat:  # warm-up (and xadv's chunking cache), then one timed call
        fn()
        t0 = time.perf_counter()
        fn()
        reps[(m, k)] = max(1, min(MAX_REPS, int(ROUND_SECONDS / max(time.perf_counter() - t0, 1e-6))))
    order = random.Random(0)
    for r in range(rounds):
        # a new order every round: a configuration that leaves the machine busy (BLAS
        # threads of the lime package spinning after its ridge fit) slows whatever runs
        # next, and a fixed order would charge that to one configuration every round
        order.shuffle(flat)
        for m, _, k, fn in flat:
            t0 = time.perf_counter()
            probe()
            probes.append(time.perf_counter() - t0)
            n_rep = reps[(m, k)]
            t0 = time.perf_counter()
            for _ in range(n_rep):
                fn()
            times[(m, k)].append((time.perf_counter() - t0) / n_rep)
        log(f"  {work}: round {r + 1}/{rounds} done")
    out = {"workload": work, **meta, "methods": []}
    for m, label, cfg in rows:
        med = {k: statistics.median(times[(m, k)]) for k in cfg}
        refs = {k: v for k, v in med.items() if k != "xadv"}
        captum = {k: v for k, v in refs.items() if k.startswith("captum")}
        entry = {"method": m, "label": label, "median_s": med}
        if captum:
            best = min(captum, key=captum.get)
            entry["captum_best"] = best
            entry["ratio_captum_default"] = med["xadv"] / med["captum default"]
            entry["ratio_captum_best"] = med["xadv"] / captum[best]
        for k in refs:
            if not k.startswith("captum"):
                entry[f"ratio_{k}"] = med["xadv"] / refs[k]
        out["methods"].append(entry)
    out["noise_probe_ms"] = {"median": 1e3 * statistics.median(probes), "min": 1e3 * min(probes),
                             "max": 1e3 * max(probes)}
    return out


#: per method: the reference the issue's target is set against, and the target ratio
TARGETS = {"ig": ("captum best", 0.95), "smoothgrad": ("captum best", 0.95), "gradient_shap": ("captum best", 0.95),
           "occlusion": ("captum best", 0.95), "gradcam": ("captum default", 1.0), "pgd": ("torchattacks", 1.02),
           "lime": ("forwards", 1.15)}


def merge(results: List[dict], more: List[dict]) -> None:
    """Add the workloads of a later run to ``results``; a method a later run measured
    again on a workload replaces the earlier measurement."""
    by_name = {r["workload"]: r for r in results}
    for r in more:
        old = by_name.get(r["workload"])
        if old is None:
            results.append(r)
            by_name[r["workload"]] = r
            continue
        again = {e["method"]: e for e in r["methods"]}
        kept = [again.pop(e["method"], e) for e in old["methods"]]   # in place, the order kept
        old["methods"] = kept + list(again.values())
        old.setdefault("noise_probe_runs", [old.get("noise_probe_ms")]).append(r.get("noise_probe_ms"))


def summary(results: List[dict], header: dict) -> str:
    """One row per method, one column per workload: xadv / the target's reference."""
    works = [r["workload"] for r in results]
    names = {"ig": "IG", "smoothgrad": "SmoothGrad", "gradient_shap": "GradientSHAP", "occlusion": "Occlusion",
             "gradcam": "Grad-CAM", "lime": "LIME", "pgd": "PGD", "quantus_sparseness": "sparseness",
             "quantus_faithfulness": "faithfulness correlation"}
    runs = header.get("runs", [header])
    said = " and ".join(f"`python bench/suite.py {h['args']}` ({h['when']}, {h['threads']} threads, load average "
                        f"{h['load']})" for h in runs)
    lines = [f"{said}: xadv defaults / reference, median of interleaved rounds (below 1: xadv faster).", "",
             "| method | reference (target) | " + " | ".join(works) + " |",
             "|:--|:--|" + "--:|" * len(works)]
    methods = []
    for r in results:
        for e in r["methods"]:
            if e["method"] not in methods:
                methods.append(e["method"])
    for m in methods:
        ref, target = TARGETS.get(m, ("Quantus", None))
        cells = []
        for r in results:
            e = next((e for e in r["methods"] if e["method"] == m), None)
            if e is None:
                cells.append("-")
                continue
            med = e["median_s"]
            if ref == "captum best":
                v = e.get("ratio_captum_best")
            else:
                v = med["xadv"] / med[ref] if ref in med else None
            cell = "-" if v is None else f"{v:.2f}"
            if m == "pgd" and "torchattacks + evaluation" in med:
                cell += f" ({med['xadv'] / med['torchattacks + evaluation']:.2f})"
            cells.append(cell)
        label = f"{ref} (<= {target})" if target else ref
        if m == "pgd":
            label += "; in brackets: torchattacks + the 2 evaluation forwards"
        lines.append(f"| {names.get(m, m)} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown(results: List[dict], header: dict) -> str:
    runs = header.get("runs", [header])
    said = " and ".join(f"`python bench/suite.py {h['args']}` ({h['when']}, {h['threads']} threads, torch "
                        f"{h['torch']}, load average {h['load']})" for h in runs)
    lines = [f"Measured by {said}; ratios are xadv / reference "
             f"(below 1: xadv faster); noise probe = spread max/min of a fixed matmul timed between runs.", "",
             "| workload | method | xadv ms | reference | ref ms | xadv / ref |", "|:--|:--|--:|:--|--:|--:|"]
    for res in results:
        w = f"{res['workload']} {'x'.join(map(str, res['shape']))}, batch {res['n']}"
        for e in res["methods"]:
            med = e["median_s"]
            first = True
            for k, v in med.items():
                if k == "xadv":
                    continue
                tag = k + (" (best)" if k == e.get("captum_best") and k != "captum default" else "")
                if k.startswith("captum") and k not in ("captum default", e.get("captum_best")):
                    continue
                lines.append(f"| {w if first else ''} | {e['label'] if first else ''} | "
                             f"{1e3 * med['xadv']:.0f} | {tag} | {1e3 * v:.0f} | {med['xadv'] / v:.2f} |")
                first = False
        p = res["noise_probe_ms"]
        lines.append(f"| | noise probe | | matmul 512 | {p['median']:.1f} | spread {p['max'] / p['min']:.1f}x |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- memory
def memory_child(n: int, batch_size: int) -> None:
    torch.set_num_threads(1)
    from xadv.data import load_digits
    from xadv.zoo import digits_cnn
    model = digits_cnn(pretrained=False).eval()
    x = load_digits(split="test")[0]
    x = x.repeat(-(-n // x.shape[0]), 1, 1, 1)[:n].contiguous()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    e = IntegratedGradients(steps=16, batch_size=batch_size or None)(model, x, target=0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out_mib = (e.attributions.numel() * 4) / 2 ** 20
    print(json.dumps({"n": n, "batch_size": batch_size or None, "before_mib": before / 1024,
                      "peak_mib": peak / 1024, "increase_mib": (peak - before) / 1024, "result_mib": out_mib}))


def memory(ns=(1000, 3000, 10000)) -> List[dict]:
    res = []
    for bs in (256, 0):
        for n in ns:
            cmd = [sys.executable, os.path.abspath(__file__), "--_memory-child", str(n), str(bs)]
            p = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
            if p.returncode:
                raise RuntimeError(p.stderr)
            res.append(json.loads(p.stdout.strip().splitlines()[-1]))
            print(res[-1], flush=True)
    return res


def memory_markdown(res: List[dict]) -> str:
    lines = ["| N digits | batch_size | peak RSS MiB | increase over loaded data MiB | result tensor MiB |",
             "|--:|:--|--:|--:|--:|"]
    for r in res:
        lines.append(f"| {r['n']:,} | {r['batch_size'] or 'default policy'} | {r['peak_mib']:.0f} | "
                     f"{r['increase_mib']:.0f} | {r['result_mib']:.0f} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main
def _write(path: Optional[str], text: str) -> None:
    """Write ``text`` to ``path`` when one was given (atomically: a cut-off run leaves the
    previous file or the new one, never half of it)."""
    if path:
        from xadv._io import write_text
        write_text(path, text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="3 rounds, 16 steps/samples on ResNet-50 and ViT")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--markdown", default=None, help="write the table(s) to this markdown file")
    p.add_argument("--json", default=None, help="write the raw results to this JSON file")
    p.add_argument("--summary", default=None, help="write the one-row-per-method summary table here")
    p.add_argument("--from-json", default=None,
                   help="print (and with --markdown/--summary write) the tables of saved --json runs, "
                        "comma-separated for one table over several runs (no timing; a method measured "
                        "again on a workload in a later file replaces the earlier entry)")
    p.add_argument("--memory", action="store_true", help="peak RSS of IG over 1k-10k digits (subprocesses)")
    p.add_argument("--_memory-child", nargs=2, type=int, help=argparse.SUPPRESS, dest="child")
    args = p.parse_args(argv)
    if args.child:
        memory_child(*args.child)
        return 0
    if args.from_json:  # one file, or several (comma-separated): one table over their workloads
        results, runs = [], []
        for path in args.from_json.split(","):
            with open(path) as f:
                saved = json.load(f)
            merge(results, saved["results"])
            runs.append(saved["header"])
        header = {"runs": runs}
        md, sm = markdown(results, header), summary(results, header)
        print(md)
        print(sm)
        _write(args.markdown, md)
        _write(args.summary, sm)
        return 0
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    given = list(argv if argv is not None else sys.argv[1:])
    shown, skip = [], False
    for a in given:  # the command as it reproduces the run: without where its output went
        if skip:
            skip = False
        elif a in ("--json", "--markdown", "--summary"):
            skip = True
        elif not a.startswith(("--json=", "--markdown=", "--summary=")):
            shown.append(a)
    header = {"args": " ".join(shown), "threads": args.threads,
              "torch": torch.__version__, "when": time.strftime("%Y-%m-%d %H:%M"),
              "load": "%.1f" % os.getloadavg()[0], "machine": platform.machine()}
    if args.memory:
        res = memory((1000, 3000) if args.quick else (1000, 3000, 10000))
        md = memory_markdown(res)
        print(md)
        _write(args.markdown, md)
        _write(args.json, json.dumps({"header": header, "memory": res}, indent=1))
        return 0
    works = [w for w in args.workloads.split(",") if w]
    methods = set(m for m in args.methods.split(",") if m)
    bad = [w for w in works if w not in WORKLOADS] + [m for m in methods if m not in METHODS]
    if bad:
        p.error(f"unknown workload/method {bad}; workloads {WORKLOADS}, methods {METHODS}")
    rounds = args.rounds or (3 if args.quick else 5)
    results = []
    for w in works:
        print(f"workload {w} ...", flush=True)
        results.append(run_workload(w, methods, rounds, args.quick, lambda s: print(s, flush=True)))
        print(markdown(results[-1:], header), flush=True)
        # after every workload, so a cut-off run keeps what it measured
        _write(args.markdown, markdown(results, header))
        _write(args.json, json.dumps({"header": header, "results": results}, indent=1, default=str))
    header["load_end"] = "%.1f" % os.getloadavg()[0]
    header["load"] = f"{header['load']}-{header['load_end']}"
    md, sm = markdown(results, header), summary(results, header)
    print(md)
    print(sm)
    _write(args.markdown, md)
    _write(args.summary, sm)
    _write(args.json, json.dumps({"header": header, "results": results}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
