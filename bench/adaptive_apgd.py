"""AdaptiveAttack step control: cosine steps of eps/10 vs APGD's checkpoints (schedule="apgd").

Fits the detectors of ``xadv.experiments.detection`` (digits CNN, FGSM/PGD at eps 0.1 on
the training split) and attacks each one adaptively on the first ``--n`` correctly
classified test digits at eps 0.1 and 0.2 with both step rules, at 1x and 2x steps and
with 2 restarts (the convergence check). Prints one markdown table: AUROC (lower =
stronger attack), success rate (misclassified) and evasion rate (misclassified AND not
flagged; higher = stronger attack).

``python bench/adaptive_apgd.py [--quick] [--n 40] [--steps 100] [--detectors ...] [--json F]``
(``--quick``: 16 digits, 50 steps, Saliency-CNN and ML-LOO only).
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from xadv.data import load_digits
from xadv.detectors import evaluate
from xadv.experiments.detection import default_attacks, default_detectors
from xadv.zoo import digits_cnn


def configs(eps: float, steps: int, seed: int = 0):
    old = {"eps": eps, "steps": steps, "step_size": eps / 10, "schedule": "cosine", "seed": seed}
    new = {"eps": eps, "steps": steps, "schedule": "apgd", "seed": seed}
    out = []
    for name, base in (("cosine eps/10", old), ("apgd", new)):
        out += [(name, "1x", dict(base)), (name, "2x steps", dict(base, steps=2 * steps)),
                (name, "2 restarts", dict(base, restarts=2))]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--eps", type=float, nargs="*", default=[0.1, 0.2])
    p.add_argument("--detectors", nargs="*", default=None)
    p.add_argument("--json", default=None)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    if a.quick:
        a.n, a.steps = 16, 50
        a.detectors = a.detectors or ["Saliency-CNN", "ML-LOO"]
    dets = default_detectors(a.seed)
    names = a.detectors or [k for k in dets if k != "XEnsemble"]
    dets = {k: dets[k] for k in names}
    model = digits_cnn()
    xtr, ytr = load_digits("train")
    xte, yte = load_digits("test")
    g = torch.Generator().manual_seed(a.seed)
    itr = torch.randperm(len(xtr), generator=g)[:450]
    ite = torch.randperm(len(xte), generator=g)[:150]
    train_attacks, _ = default_attacks(a.seed)
    cfg = {f"eps={e:g}": [c for _, _, c in configs(e, a.steps, a.seed)] for e in a.eps}
    labels = {f"eps={e:g}": [(n, k) for n, k, _ in configs(e, a.steps, a.seed)] for e in a.eps}
    t0 = time.perf_counter()
    rep = evaluate(dets, model, (xtr[itr], ytr[itr]), (xte[ite], yte[ite]), train_attacks=train_attacks,
                   test_attacks={}, adaptive=cfg, n_adaptive=a.n, progress=True)
    rows = []
    for key, tried in rep.meta["adaptive_configs"].items():
        det, budget = key.split("|")
        for (rule, knob), t in zip(labels[budget], tried):
            rows.append({"detector": det, "budget": budget, "rule": rule, "check": knob, "auroc": t["auroc"],
                         "success": t["success_rate"], "evasion": t["evasion_rate"], "seconds": t["seconds"]})
    print(f"| detector | budget | step rule | 1x: AUROC (evasion) | 2x steps | 2 restarts | success 1x |")
    print("|---|---|---|---|---|---|---|")
    for det in dets:
        for budget in cfg:
            for rule in ("cosine eps/10", "apgd"):
                r = {x["check"]: x for x in rows if x["detector"] == det and x["budget"] == budget
                     and x["rule"] == rule}
                cell = [f"{r[k]['auroc']:.3f} ({r[k]['evasion']:.0%})" for k in ("1x", "2x steps", "2 restarts")]
                print(f"| {det} | {budget} | {rule} | " + " | ".join(cell) + f" | {r['1x']['success']:.0%} |")
    print(f"\n{a.n} digits, {a.steps} steps, {time.perf_counter() - t0:.0f} s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"n": a.n, "steps": a.steps, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
