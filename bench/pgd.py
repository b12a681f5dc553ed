"""Benchmark: xadv PGD against torchattacks.PGD, same model, inputs, eps, alpha, steps, random start.

Workloads: the zoo ResNet-18 (BatchNorm, 3x64x64, 10 classes) on a batch of 8, and the
digits CNN on 64 digits (1x28x28). Linf eps 8/255, alpha 2/255, 10 steps, random start.
Both attacks run in one process, interleaved per round (xadv, torchattacks, xadv with
``memory_format="auto"``); medians over rounds and the per-round ratio xadv / torchattacks.

Run: ``python bench/pgd.py [--rounds 9] [--threads 2] [--quick]``.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def workloads(quick: bool):
    from xadv.zoo.architectures import resnet18

    torch.manual_seed(0)
    net = resnet18(num_classes=10).eval()
    x = torch.rand(8, 3, 64, 64)
    out = [("resnet18 3x64x64 b8", net, x)]
    try:
        from xadv.data import load_digits
        from xadv.zoo import digits_cnn

        dx, _ = load_digits(split="test")
        out.append(("digits CNN b64", digits_cnn().eval(), dx[:64].float()))
    except Exception as err:  # pragma: no cover - a zoo without the digits model
        print(f"(digits workload skipped: {err})")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--quick", action="store_true", help="3 rounds (a minute or two)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    rounds = 3 if a.quick else a.rounds
    import torchattacks

    import xadv.attacks as A

    eps, alpha = 8 / 255, 2 / 255
    print(f"threads {a.threads}, rounds {rounds}, steps {a.steps}; load average "
          f"{open('/proc/loadavg').read().split()[0] if __import__('os').path.exists('/proc/loadavg') else '?'}")
    print("| workload | xadv ms | torchattacks ms | xadv auto layout ms | ratio (median of rounds) | auto ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, net, x in workloads(a.quick):
        with torch.no_grad():
            y = net(x).argmax(1)
        ours = A.PGD(eps=eps, step_size=alpha, steps=a.steps, random_start=True, seed=0)
        auto = A.PGD(eps=eps, step_size=alpha, steps=a.steps, random_start=True, seed=0, memory_format="auto")
        ref = torchattacks.PGD(net, eps=eps, alpha=alpha, steps=a.steps, random_start=True)
        runs = {"xadv": lambda: ours(net, x, y), "ta": lambda: ref(x, y), "auto": lambda: auto(net, x, y)}
        for f in runs.values():  # warm-up
            f()
        times = {k: [] for k in runs}
        for _ in range(rounds):
            for k, f in runs.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        ratio = statistics.median(o / r for o, r in zip(times["xadv"], times["ta"]))
        ratio_auto = statistics.median(o / r for o, r in zip(times["auto"], times["ta"]))
        print(f"| {name} | {med['xadv']:.1f} | {med['ta']:.1f} | {med['auto']:.1f} | {ratio:.3f} | {ratio_auto:.3f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
