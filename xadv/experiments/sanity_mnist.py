"""Survey section 5.1, the sanity-check half: do an adversarially trained model's maps pass
Adebayo et al.'s randomisation tests better than a standard model's?

On real MNIST (``xadv.zoo.mnist_cnn``, standard training, and ``xadv.zoo.mnist_cnn_pgd``,
the same CNN PGD-7 adversarially trained at L-inf 0.1) and the first ``n`` test digits:

* **MPRT** (model-parameter randomisation, cascading from the output layer down,
  Spearman of |maps| with every layer re-initialised; :func:`xadv.metrics.mprt`) and the
  same after the top layer only (the first step of the cascade);
* **data randomisation** (Spearman of |maps| between the model and a copy of the same CNN
  trained on permuted training labels; :func:`xadv.metrics.data_randomisation`).

Lower is better in both (a map that depends on the weights and on the labels changes
when they are randomised); a test is passed below 0.5, as in
``xadv.experiments.evaluation``. The random-label model is trained once, without
augmentation and without adversarial training, and serves both models (its training
accuracy on the permuted labels is reported).

``python -m xadv.experiments.sanity_mnist [--n 32] [--epochs 20] [--out DIR]``
"""
from __future__ import annotations

import argparse
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .. import zoo
from ..metrics import data_randomisation, model_parameter_randomisation

EXPLAINERS = ("saliency", "integrated_gradients", "smoothgrad", "gradcam")
MODELS = ("mnist_cnn", "mnist_cnn_pgd")
PASS_BELOW = 0.5


def _explainer(name: str, seed: int = 0):
    from ..explainers import get
    if name == "integrated_gradients":
        return get(name, steps=16)
    if name == "smoothgrad":
        return get(name, n_samples=8, seed=seed)
    return get(name)


def train_random_labels(epochs: int = 20, seed: int = 0, n_train: Optional[int] = None
                        ) -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """The zoo's MNIST CNN trained on the MNIST training split with permuted labels.

    Same architecture and optimiser as ``python -m xadv.zoo.train mnist`` (Adam, one-cycle
    learning rate 3e-3), no augmentation (so that it can fit the random labels).
    ``n_train`` keeps only the first rows (for quick runs). Returns the model (eval mode)
    and ``{"epochs", "n_train", "train_accuracy_random_labels", "seconds"}``.
    """
    from ..data import load_mnist
    from ..zoo.models import DigitsCNN
    from ..zoo.train import _fit, accuracy

    x, y = load_mnist(split="train")
    if n_train is not None:
        x, y = x[:n_train], y[:n_train]
    g = torch.Generator().manual_seed(seed + 1)
    y_perm = y[torch.randperm(len(y), generator=g)]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = DigitsCNN()
    t0 = time.perf_counter()
    _fit(model, x, y_perm, epochs=epochs, lr=3e-3, batch_size=64, weight_decay=0.0, seed=seed, max_shift=0,
         progress=False)
    return model, {"epochs": epochs, "n_train": len(x), "train_accuracy_random_labels": accuracy(model, x, y_perm),
                   "seconds": round(time.perf_counter() - t0, 1)}


def sanity_rows(models: Dict[str, torch.nn.Module], x: torch.Tensor, y: torch.Tensor,
                random_label_model: torch.nn.Module, explainers: Sequence[str] = EXPLAINERS,
                seed: int = 0) -> List[Dict[str, Any]]:
    """One row per (model, explainer): mean MPRT (full cascade), after the top layer, data randomisation."""
    rows = []
    for mname, model in models.items():
        for e in explainers:
            t = time.perf_counter()
            ex = _explainer(e, seed)
            r = model_parameter_randomisation(model, x, y, explainer=ex, abs=True)
            dr = data_randomisation(model, x, y, explainer=ex, retrain=lambda: random_label_model)
            full, top = float(r.last().nanmean()), float(r.scores[0].nanmean())
            rows.append({"model": mname, "explainer": e, "n": len(x), "mprt": full, "mprt_top_layer": top,
                         "data_randomisation": float(dr.nanmean()), "passes_mprt": full < PASS_BELOW,
                         "passes_data": float(dr.nanmean()) < PASS_BELOW, "seconds": time.perf_counter() - t})
    return rows


def to_markdown(rows: List[Dict[str, Any]]) -> str:
    out = ["| explainer | model | MPRT (all layers) | MPRT (top layer) | data randomisation | passes (MPRT / data) |",
           "|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (EXPLAINERS.index(r["explainer"]) if r["explainer"] in EXPLAINERS else 99,
                                         r["model"])):
        ok = lambda b: "yes" if b else "no"  # noqa: E731
        out.append(f"| {r['explainer']} | `{r['model']}` | {r['mprt']:.3f} | {r['mprt_top_layer']:.3f} | "
                   f"{r['data_randomisation']:.3f} | {ok(r['passes_mprt'])} / {ok(r['passes_data'])} |")
    return "\n".join(out)


def run(n: int = 32, epochs: int = 20, seed: int = 0, explainers: Sequence[str] = EXPLAINERS,
        models: Sequence[str] = MODELS, n_train: Optional[int] = None) -> Dict[str, Any]:
    """Returns ``{"rows", "markdown", "random_label_model": info dict, "seconds"}``."""
    from ..data import load_mnist

    t0 = time.perf_counter()
    x, y = load_mnist(split="test")
    x, y = x[:n], y[:n]
    nets = {m: zoo.get_model(m) for m in models}
    rand, info = train_random_labels(epochs, seed, n_train)
    rows = sanity_rows(nets, x, y, rand, explainers, seed)
    secs = {"total": round(time.perf_counter() - t0, 1), "random_label_training": info["seconds"]}
    text = (to_markdown(rows) + f"\n\n{n} MNIST test digits; random-label CNN: {info['epochs']} epochs on "
            f"{info['n_train']} digits, {info['train_accuracy_random_labels']:.1%} training accuracy on the "
            f"permuted labels")
    return {"rows": rows, "markdown": text, "random_label_model": info, "seconds": secs}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xadv.experiments.sanity_mnist", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=32, help="test digits (default 32)")
    p.add_argument("--epochs", type=int, default=20, help="epochs of the random-label model (default 20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder for sanity_mnist.md / .json")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(max(1, a.threads))
    res = run(n=a.n, epochs=a.epochs, seed=a.seed)
    print(res["markdown"])
    print("seconds:", res["seconds"])
    from . import write_outputs
    write_outputs(a.out, "sanity_mnist", res["markdown"], res)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
