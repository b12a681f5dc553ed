"""Benchmark: xadv LIME vs the ``lime`` package, same model, segmentation and parameters.

Times, per model (the zoo digits CNN on 1x28x28 digits, and the CIFAR-sized CNN
``xadv.zoo.cifar_cnn`` on 3x32x32 images), with 1000 samples per image and the same
slic segmentation handed to both libraries:

(a) the 1000 forward passes themselves (batched, no LIME) on the very masked images LIME
    evaluates, in the plain NCHW layout and channels-last (xadv uses channels-last for
    multi-channel images on a CPU; lime's classifier_fn gets it for free from
    ``permute`` of its NHWC arrays); the faster one is the floor;
(b) xadv ``LIME`` on one image;
(c) ``lime_image.LimeImageExplainer.explain_instance`` on one image, at its default
    ``batch_size=10`` and at 100 and 1000 (one model call);
(d) 64 images: one xadv call vs the ``lime`` package looping over them at its fastest
    batch_size from (c).

Repetitions are interleaved and medians reported (the machine is shared), with the
median and quartiles of the per-repetition ratio xadv / floor. ``--clock cpu`` times
process CPU time instead of wall time (with one thread, less sensitive to other jobs
taking the cores; page faults still count).
Run: ``python bench/lime.py [--reps 5] [--batch-reps 3] [--threads 1] [--models digits,cifar] [--clock cpu]``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

# this file is named like the ``lime`` package: keep its folder off the import path
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

CLOCK = time.perf_counter


def timed(fn) -> float:
    t0 = CLOCK()
    fn()
    return CLOCK() - t0


def lime_runner(model, x, seg, targets, batch_size):
    from lime import lime_image

    lime_image.tqdm = lambda it, *a, **k: it  # no progress bar: only makes lime faster
    c = x.shape[1]

    def classifier_fn(imgs):
        with torch.no_grad():
            t = torch.as_tensor(imgs, dtype=torch.float32).permute(0, 3, 1, 2)
            if c == 1:
                t = t[:, :1]
            return torch.softmax(model(t), 1).numpy()

    def run(i):
        img = x[i].permute(1, 2, 0).double().numpy()
        if c == 1:
            img = img[..., 0]
        s = seg[i].numpy()
        ex = lime_image.LimeImageExplainer(random_state=i)
        return ex.explain_instance(img, classifier_fn, labels=(int(targets[i]),), top_labels=None,
                                   hide_color=None, num_samples=1000, batch_size=batch_size,
                                   segmentation_fn=lambda _im: s)

    return run


def bench_model(name, model, x, reps, batch_reps):
    from xadv.explainers import LIME
    from xadv.explainers.lime import segment

    n_samples = 1000
    seg_t0 = time.perf_counter()
    seg = segment(x, "slic")
    seg_ms = (time.perf_counter() - seg_t0) / x.shape[0] * 1e3
    with torch.no_grad():
        targets = model(x).argmax(1)
    lime_xadv = LIME(segmentation=seg[:1], n_samples=n_samples, seed=0)
    lime_batch = LIME(segmentation=seg, n_samples=n_samples, seed=0, progress=False)
    rows = lime_xadv._rows_per_batch(x)
    # the floor: the model on the very images LIME evaluates (1000 masked copies of x[0]),
    # built beforehand, in forward passes of the same size
    segs, counts = lime_xadv.segments_for(x[:1])
    fill = lime_xadv.fill_images(x[:1], segs, counts)
    z = lime_xadv.sample_masks(counts, torch.Generator().manual_seed(0), x.device)[0]
    pix = z[:, segs[0].reshape(-1)].to(x.dtype).reshape(n_samples, 1, *x.shape[2:])
    xb = fill + pix * (x[:1] - fill)

    # (for one channel ``.contiguous(memory_format=...)`` keeps the NCHW strides: copy instead)
    xb_cl = torch.empty_like(xb, memory_format=torch.channels_last).copy_(xb)

    def forwards(inp=xb):
        with torch.no_grad():
            for r0 in range(0, n_samples, rows):
                model(inp[r0:r0 + rows])

    lime_bs = (10, 100, 1000)  # 10 is lime's default
    refs = {bs: lime_runner(model, x, seg, targets, batch_size=bs) for bs in lime_bs}
    forwards(), lime_xadv(model, x[:1]), refs[100](0)  # warm-up
    t = {"forward": [], "forward_cl": [], "xadv": [], **{f"lime{bs}": [] for bs in lime_bs}}
    for _ in range(reps):
        t["forward"].append(timed(forwards))
        t["forward_cl"].append(timed(lambda: forwards(xb_cl)))
        t["xadv"].append(timed(lambda: lime_xadv(model, x[:1])))
        for bs in lime_bs:
            t[f"lime{bs}"].append(timed(lambda: refs[bs](0)))
    med = {k: statistics.median(v) * 1e3 for k, v in t.items()}
    med["floor"] = min(med["forward"], med["forward_cl"])
    per_rep = [xa / min(f, fc) for xa, f, fc in zip(t["xadv"], t["forward"], t["forward_cl"])]
    q1, q2, q3 = statistics.quantiles(per_rep, n=4) if len(per_rep) > 1 else (per_rep[0],) * 3
    best_bs = min(lime_bs, key=lambda bs: med[f"lime{bs}"])
    best_lime = med[f"lime{best_bs}"]
    nb = x.shape[0]
    tb = {"xadv": [], "lime": []}
    for _ in range(batch_reps):
        tb["xadv"].append(timed(lambda: lime_batch(model, x)) / nb)
        tb["lime"].append(timed(lambda: [refs[best_bs](i) for i in range(nb)]) / nb)
    medb = {k: statistics.median(v) * 1e3 for k, v in tb.items()}
    print(f"\n{name}: input {tuple(x.shape[1:])}, {n_samples} samples, slic segments "
          f"(mean {seg.reshape(nb, -1).max(1).values.float().add(1).mean():.1f}, {seg_ms:.1f} ms/image, "
          f"not timed below), rows per forward {rows}, medians of {reps} / {batch_reps} reps")
    print(f"{'measurement':<44}{'ms':>10}  ratio")
    print(f"{'(a) 1000 forward passes (batched, NCHW)':<44}{med['forward']:>10.1f}")
    print(f"{'(a) same, channels-last input':<44}{med['forward_cl']:>10.1f}  "
          f"{med['forward_cl'] / med['forward']:.2f}x NCHW")
    print(f"{'(b) xadv LIME, one image':<44}{med['xadv']:>10.1f}  {med['xadv'] / med['floor']:.2f}x "
          f"fastest forward (per repetition: median {statistics.median(per_rep):.2f}x, "
          f"quartiles {q1:.2f}-{q3:.2f}x)")
    for bs in lime_bs:
        label = f"(c) lime, one image, batch_size={bs}"
        print(f"{label:<44}{med[f'lime{bs}']:>10.1f}  {med[f'lime{bs}'] / med['xadv']:.2f}x xadv")
    label = f"(d) xadv LIME, {nb} images in one call / image"
    print(f"{label:<44}{medb['xadv']:>10.1f}  {medb['xadv'] / med['floor']:.2f}x fastest forward")
    label = f"(d) lime (batch_size={best_bs}) looping / image"
    print(f"{label:<44}{medb['lime']:>10.1f}  {medb['lime'] / medb['xadv']:.2f}x xadv")
    return {"forward": med["floor"], "xadv_one": med["xadv"], "lime_one_best": best_lime,
            "xadv_batch": medb["xadv"], "lime_batch": medb["lime"]}


def _digits_cnn():
    import xadv.zoo

    try:
        return xadv.zoo.digits_cnn()
    except (FileNotFoundError, ValueError):  # weights not shipped / being retrained: same cost
        torch.manual_seed(0)
        return xadv.zoo.digits_cnn(pretrained=False).eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--batch-reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--models", default="digits,cifar", help="comma-separated: digits, cifar")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    a = p.parse_args()
    global CLOCK
    CLOCK = time.perf_counter if a.clock == "wall" else time.process_time
    print(f"{a.threads} thread(s), {a.clock} clock")
    models = a.models.split(",")
    torch.set_num_threads(a.threads)
    import xadv.data
    import xadv.zoo

    res = {}
    if "digits" in models:
        x, _ = xadv.data.load_digits("test")
        res["digits_cnn"] = bench_model("digits CNN (xadv.zoo.digits_cnn)", _digits_cnn(),
                                        x[: a.images], a.reps, a.batch_reps)
    if "cifar" in models:
        _bench_cifar(a, res)
    print("\nTargets: xadv/fastest forward <= 1.15, lime(best)/xadv one image >= 1, "
          "lime/xadv per image (64) >= 1.5")
    for k, r in res.items():
        print(f"{k}: xadv/forward {r['xadv_one'] / r['forward']:.2f}, lime(best)/xadv one image "
              f"{r['lime_one_best'] / r['xadv_one']:.2f}, lime/xadv per image at 64 "
              f"{r['lime_batch'] / r['xadv_batch']:.2f}")


def _bench_cifar(a, res) -> None:
    import xadv.zoo

    torch.manual_seed(0)
    cifar = xadv.zoo.cifar_cnn(pretrained=False)
    # smooth random images so that slic finds colour regions, as in natural images
    g = torch.Generator().manual_seed(0)
    xc = torch.nn.functional.interpolate(torch.rand(a.images, 3, 8, 8, generator=g), size=32,
                                         mode="bilinear", align_corners=False).clamp(0, 1)
    res["cifar_cnn"] = bench_model("CIFAR-sized CNN (xadv.zoo.cifar_cnn, random weights)", cifar, xc,
                                   a.reps, a.batch_reps)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
