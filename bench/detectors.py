"""Scoring throughput of every detector on the digits CNN, explainer / feature cost separated.

Run: ``python bench/detectors.py [--n 256] [--repeats 5]``. For each detector the table
gives milliseconds per image for (a) the classifier's own forward pass, (b) the
explanation / feature extraction the detector needs (explainer maps, occlusion
passes, SHAP signature, layer statistics), (c) the full ``score`` call, and the ratio
of (c) to (a). Medians over ``--repeats`` runs, all in the same process, so ratios
stay meaningful on a shared machine.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import xadv.detectors as D
from xadv.attacks import PGD
from xadv.data import load_digits
from xadv.zoo import digits_cnn


def _time(fn, repeats):
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def _feature_fn(name, det, net, x):
    if isinstance(det, D.SaliencyDetector):
        return lambda: det.maps(net, x)
    if isinstance(det, D.XEnsemble):
        return lambda: [s._raw_maps(net, x, False) for s in det.detectors_]
    if isinstance(det, D.LOODetector):
        return lambda: det.features(net, x)
    if isinstance(det, D.ShapSignatureDetector):
        return lambda: det.signature(net, x)
    if isinstance(det, D.ExplanationAutoencoder):
        return lambda: det._codes(net, x, False)
    if isinstance(det, D.MahalanobisDetector):
        return lambda: det.layer_scores(net, x)
    if isinstance(det, D.KDBUDetector):
        return lambda: det.features(net, x)
    raise TypeError(name)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    net = digits_cnn()
    xtr, ytr = load_digits("train")
    xte, _ = load_digits("test")
    xtr, ytr = xtr[:200], ytr[:200]
    res = PGD(eps=0.2, steps=10, seed=0)(net, xtr, ytr)
    xa = res.x_adv[res.success]
    from xadv.experiments.detection import default_detectors

    dets = default_detectors()
    for d in dets.values():  # throughput does not depend on how well the detector was trained
        if hasattr(d, "epochs"):
            d.epochs = 2
        for sub in getattr(d, "detectors_", []):
            sub.epochs = 2
    x = xte[: a.n]
    with torch.no_grad():
        t_fwd = _time(lambda: net(x), a.repeats) / len(x)
    rows = []
    for name, det in dets.items():
        det.fit(net, xtr, xa)
        t_feat = _time(_feature_fn(name, det, net, x), a.repeats) / len(x)
        t_score = _time(lambda: det.score(net, x), a.repeats) / len(x)
        rows.append((name, t_fwd, t_feat, t_score))
    print(f"digits CNN, batch {len(x)}, {a.threads} thread(s), median of {a.repeats}")
    print("| detector | forward ms/img | explainer/features ms/img | score ms/img | score / forward | images/s |")
    print("|---|---|---|---|---|---|")
    for name, f, e, s in rows:
        print(f"| {name} | {1e3 * f:.3f} | {1e3 * e:.3f} | {1e3 * s:.3f} | {s / f:.1f}x | {1 / s:.0f} |")


if __name__ == "__main__":
    main()
