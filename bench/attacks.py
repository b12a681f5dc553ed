"""Time xadv's attacks against torchattacks and captum.robust on the same model and batch.

Usage::

    python bench/attacks.py                    # digits CNN, batch 128, 1 thread, 7 rounds
    python bench/attacks.py --repeats 11 --threads 2
    python bench/attacks.py --pgd-only --repeats 41 --clock cpu   # PGD rows only, process CPU time

* PGD (10 steps, Linf, no random start): xadv vs torchattacks.PGD vs captum.robust.PGD,
  each also relative to one forward+backward of the batch. xadv's call includes the
  evaluation of the adversarial batch (one forward: predictions and confidences of the
  AttackResult); "torchattacks PGD + eval" adds that forward to torchattacks.
  xadv runs with its default ``memory_format="contiguous"`` (NCHW, as torchattacks;
  bit-identical to torchattacks) and with ``memory_format="channels_last"`` (channels-last
  iterates); "torchattacks PGD, channels-last input" feeds torchattacks a channels-last
  copy of the batch, the like-for-like comparison of the latter.
* ExplainerPGD with an Integrated Gradients direction (IG steps s): cost against
  ``steps x`` (one IG explanation of the batch).
* SurrogateAttack: queries per success (and seconds) on the same batch.

Every configuration is timed once per round and the rounds are interleaved, so a
busy machine slows all of them alike; the table reports medians and ratios. Not a
test: numbers go to docs/attacks.md.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import xadv.attacks as A
from xadv.explainers import IntegratedGradients


def load(batch: int):
    from xadv.data import load_digits
    from xadv.zoo import digits_cnn

    model = digits_cnn(pretrained=True).eval()
    x, y = load_digits(split="test")
    reps = (batch + x.shape[0] - 1) // x.shape[0]
    return model, x.repeat(reps, 1, 1, 1)[:batch].contiguous(), y.repeat(reps)[:batch].contiguous()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ig-steps", type=int, default=16)
    p.add_argument("--pgd-only", action="store_true", help="only the PGD rows (more rounds in the same time)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall: perf_counter; cpu: process CPU time (less sensitive to other jobs "
                        "on a shared machine; meaningful with 1 thread)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    model, x, y = load(a.batch)
    eps, alpha, steps = 0.1, 0.02, 10

    import torchattacks
    from captum.robust import PGD as CaptumPGD

    ta = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=False)
    cap = CaptumPGD(model, torch.nn.CrossEntropyLoss(reduction="none"), lower_bound=0.0, upper_bound=1.0)
    ours = A.PGD(eps=eps, step_size=alpha, steps=steps, random_start=False)
    ours_cl = A.PGD(eps=eps, step_size=alpha, steps=steps, random_start=False, memory_format="channels_last")
    x_cl = x.clone(memory_format=torch.channels_last)
    ig = IntegratedGradients(steps=a.ig_steps)
    eig = A.ExplainerPGD(ig, eps=eps, step_size=alpha, steps=steps)

    def _eval(m, xa):  # what xadv's result includes: predictions on the adversarial batch
        with torch.no_grad():
            return m(xa).softmax(1).max(1)

    def fwd_bwd():
        xi = x.detach().requires_grad_()
        loss = torch.nn.functional.cross_entropy(model(xi), y)
        torch.autograd.grad(loss, xi)

    configs = {
        "forward+backward": fwd_bwd,
        "xadv PGD": lambda: ours(model, x, y),
        "xadv PGD, channels-last": lambda: ours_cl(model, x, y),
        "torchattacks PGD": lambda: ta(x, y),
        "torchattacks PGD + eval": lambda: _eval(model, ta(x, y)),
        "torchattacks PGD, channels-last input": lambda: ta(x_cl, y),
        "captum.robust PGD": lambda: cap.perturb(x, radius=eps, step_size=alpha, step_num=steps, target=y),
        "IG explanation": lambda: ig(model, x, y),
        "xadv ExplainerPGD[IG]": lambda: eig(model, x, y),
    }
    # the PGD implementations agree (no random start): in NCHW bit for bit; channels-last
    # convolutions round differently, which can flip the sign of a near-zero gradient entry
    ref = ta(x, y)
    assert torch.equal(ours(model, x, y).x_adv, ref)
    same = (ours_cl(model, x, y).x_adv - ref).flatten(1).abs().max(1).values <= 1e-6
    agree = f"{int(same.sum())}/{len(same)} samples of the channels-last x_adv equal torchattacks' (1e-6)"
    if a.pgd_only:
        for k in ("captum.robust PGD", "IG explanation", "xadv ExplainerPGD[IG]"):
            del configs[k]
    clock = time.perf_counter if a.clock == "wall" else time.process_time
    times = {k: [] for k in configs}
    keys = list(configs)
    for i in range(a.repeats):
        for k in keys[i % len(keys):] + keys[:i % len(keys)]:  # rotate the order every round
            t = clock()
            configs[k]()
            times[k].append(clock() - t)
    med = {k: statistics.median(v) for k, v in times.items()}

    def ratio(k, ref):  # median of the per-round ratios (robust to a busy machine)
        return statistics.median(u / v for u, v in zip(times[k], times[ref]))

    print(f"batch {a.batch}, {a.threads} thread(s), {a.repeats} interleaved rounds (order rotated), "
          f"{a.clock} clock, median seconds and median per-round ratios\n")
    print("| configuration | median s | x forward+backward | ratio |")
    print("|---|---|---|---|")
    extras = {"xadv PGD": ("torchattacks PGD + eval", "torchattacks + eval"),
              "xadv PGD, channels-last": ("torchattacks PGD, channels-last input", "torchattacks channels-last")}
    for k in ("forward+backward", "xadv PGD", "xadv PGD, channels-last", "torchattacks PGD",
              "torchattacks PGD + eval", "torchattacks PGD, channels-last input", "captum.robust PGD"):
        if k not in times:
            continue
        extra = f", {ratio(k, extras[k][0]):.2f}x {extras[k][1]}" if k in extras else ""
        print(f"| {k} | {med[k]:.4f} | {ratio(k, 'forward+backward'):.1f} | "
              f"{ratio(k, 'torchattacks PGD'):.2f}x torchattacks{extra} |")
    spread = [u / v for u, v in zip(times["xadv PGD"], times["torchattacks PGD"])]
    q1, _, q3 = statistics.quantiles(spread, n=4)
    print(f"\nxadv PGD / torchattacks PGD per round: quartiles {q1:.3f}-{q3:.3f}x, "
          f"min {min(spread):.3f}x, max {max(spread):.3f}x; {agree}")
    if a.pgd_only:
        return 0
    r = statistics.median(u / (steps * v) for u, v in zip(times["xadv ExplainerPGD[IG]"], times["IG explanation"]))
    fb = med["forward+backward"]
    print(f"| IG explanation ({a.ig_steps} steps) | {med['IG explanation']:.4f} | "
          f"{med['IG explanation'] / fb:.1f} | |")
    print(f"| xadv ExplainerPGD[IG], {steps} steps | {med['xadv ExplainerPGD[IG]']:.4f} | "
          f"{med['xadv ExplainerPGD[IG]'] / fb:.1f} | {r:.2f}x ({steps} x IG) |")


    n_sur = min(64, a.batch)
    t = time.perf_counter()
    res = A.SurrogateAttack(eps=0.2, steps=20, n_samples=64, seed=0)(model, x[:n_sur], y[:n_sur])
    dt = time.perf_counter() - t
    q = res.queries[res.success].float()
    print(f"\nSurrogateAttack (Linf 0.2, 64 samples/refit, 4x4 patches) on {n_sur} digits: success "
          f"{res.success_rate:.3f}, queries per success mean {float(q.mean()):.0f} / median {float(q.median()):.0f}, "
          f"{dt:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
