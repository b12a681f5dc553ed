"""One fooling step (a double backward) in xadv vs plain torch, side by side.

xadv: ``TopKAttack.candidate`` — the saliency map of the softplus copy with
``create_graph=True``, the top-k loss, its gradient w.r.t. the input and the
sign step. Reference: hand-written torch double backprop of ``||saliency||^2``
on the same softplus model and batch. Also shown: one plain forward+backward.
Runs are interleaved; medians of ``--repeats`` are reported.

    python bench/fooling.py [--batch 64] [--repeats 30]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import xadv
import xadv.data
import xadv.zoo
from xadv.fooling import TopKAttack
from xadv.fooling._engine import make_twin


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    model = xadv.zoo.digits_cnn(pretrained=True)
    x, _ = xadv.data.load_digits("test")
    x = x[: a.batch].contiguous()
    y = model(x).argmax(1)

    attack = TopKAttack("saliency", beta=10.0, pool_beta=None)
    e0 = attack.explainer(model, x, y).detach()
    ctx = attack.setup(model, x, y, e0)
    ctx["pred0"] = y
    twin, _ = make_twin(model, attack.explainer, 10.0, None)
    step = torch.full((a.batch,), 1e-3)

    def xadv_step():
        return attack.candidate(model, twin, x, step, 0, ctx, {})

    def torch_step():
        xi = x.detach().requires_grad_(True)
        out = twin(xi)
        (g,) = torch.autograd.grad(out.gather(1, y[:, None]).sum(), xi, create_graph=True)
        (h,) = torch.autograd.grad(g.pow(2).sum(), xi)
        return x - 1e-3 * h.sign()

    def fwd_bwd():
        xi = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(twin(xi).gather(1, y[:, None]).sum(), xi)
        return g

    fns = {"xadv TopKAttack step": xadv_step, "torch double backprop of sum(saliency^2)": torch_step,
           "one forward+backward": fwd_bwd}
    for f in fns.values():  # warm up
        f()
    times = {k: [] for k in fns}
    for _ in range(a.repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    ref = med["torch double backprop of sum(saliency^2)"]
    print(f"batch {a.batch} digits (1x28x28), softplus(beta=10) copy of xadv.zoo.digits_cnn, "
          f"{a.threads} thread(s), median of {a.repeats}\n")
    print("| step | ms | vs torch double backprop |")
    print("|---|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v:.2f} | {v / ref:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
