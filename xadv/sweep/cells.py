"""Cells: pure functions of their parameters that return rows (dicts of metrics).

:func:`execute` is what every backend runs, in the driver, a pool worker or a Ray
task: it builds the model, data, explainer and attack from the cell's JSON
parameters, seeds torch, runs the cell with a fixed number of torch threads and
returns its rows, or the error and traceback (it never raises).
"""
from __future__ import annotations

import importlib
import inspect
import math
import platform
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Tuple

Row = Dict[str, Any]

_ATTACK_ALIASES = {"pgd": "PGD", "fgsm": "FGSM", "rfgsm": "RFGSM", "r+fgsm": "RFGSM", "explainer-pgd": "ExplainerPGD",
                   "explainerpgd": "ExplainerPGD", "deepfool": "DeepFool", "cw": "CarliniWagnerL2",
                   "deletion": "DeletionAttack", "jsma": "JSMA"}
_FOOLING_ALIASES = {"topk": "TopKAttack", "top-k": "TopKAttack", "mass-center": "MassCenterAttack",
                    "mass_center": "MassCenterAttack", "center-of-mass": "MassCenterAttack",
                    "random-sign": "RandomSignAttack", "random_sign": "RandomSignAttack"}
_DETECTOR_ALIASES = {"saliency": "SaliencyDetector", "ml-loo": "LOODetector", "loo": "LOODetector",
                     "xensemble": "XEnsemble", "mahalanobis": "MahalanobisDetector", "kdbu": "KDBUDetector"}


def _split(spec: Mapping[str, Any]) -> Tuple[str, Dict[str, Any]]:
    spec = dict(spec)
    return spec.pop("name"), spec


def _lookup(module, name: str, aliases: Mapping[str, str], what: str):
    cand = aliases.get(name.lower(), name)
    obj = getattr(module, cand, None)
    if obj is None:
        low = {k.lower(): k for k in getattr(module, "__all__", dir(module))}
        obj = getattr(module, low.get(name.lower(), ""), None) if name.lower() in low else None
    if obj is None or not callable(obj):
        known = sorted(set(getattr(module, "__all__", [])) | set(aliases))
        raise ValueError(f"unknown {what} {name!r}; known: {', '.join(known)}")
    return obj


def _build(cls: Callable, params: Dict[str, Any], **extra):
    """``cls(**params, **extra)`` with the ``extra`` entries the signature accepts."""
    sig = inspect.signature(cls)
    has_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    kw = dict(params)
    for k, v in extra.items():
        if v is not None and (k in sig.parameters or has_kw) and k not in kw:
            kw[k] = v
    return cls(**kw)


def build_model(spec: Any):
    """A model from a zoo name, ``module:factory``, a TorchScript file or ``{factory, weights}``."""
    import torch

    from .. import zoo

    weights = None
    if isinstance(spec, Mapping):
        weights = spec.get("weights")
        spec = spec.get("factory") or spec.get("zoo") or spec.get("file")
    if not isinstance(spec, str):
        raise ValueError(f"a model is a zoo name, 'module:factory' or a file, got {spec!r}")
    name = {"digits": "digits_cnn", "tabular": "tabular_mlp"}.get(spec, spec)
    if ":" not in name and hasattr(zoo, name) and callable(getattr(zoo, name)):
        fn = getattr(zoo, name)
        return fn(weights=weights) if weights else fn()
    if ":" in name and not Path(name).exists():
        mod_name, _, fn_name = name.partition(":")
        try:
            mod = importlib.import_module(mod_name)
        except ImportError as e:
            raise ValueError(f"model {spec!r}: cannot import {mod_name!r} ({e}); put it on PYTHONPATH") from None
        fn = getattr(mod, fn_name, None)
        if not callable(fn):
            raise ValueError(f"model {spec!r}: {mod_name} has no callable {fn_name!r}")
        model = fn()
        if weights:
            from .._io import load_state_dict_file

            model.load_state_dict(load_state_dict_file(weights, map_location="cpu"))  # runs no code
        return model.eval()
    if Path(name).is_file():
        return torch.jit.load(name, map_location="cpu").eval()
    raise ValueError(f"model {spec!r}: not a zoo model ({', '.join(n for n in zoo.__all__ if n.islower())}), "
                     f"not module:factory, not an existing TorchScript file")


def load_data(spec: Mapping[str, Any], model):
    """``(x, y)`` from an :mod:`xadv.data` loader; options ``n``, ``offset``, ``correct`` pick the samples."""
    import torch

    from .. import data

    name, opts = _split(spec)
    n = opts.pop("n", None)
    offset = int(opts.pop("offset", 0))
    correct = bool(opts.pop("correct", True))
    fn = getattr(data, name, None) if name.startswith("load_") else getattr(data, f"load_{name}", None)
    if not callable(fn):
        raise ValueError(f"unknown data set {name!r}; xadv.data has "
                         f"{', '.join(n[5:] for n in data.__all__ if n.startswith('load_'))}")
    out = fn(**opts)
    if isinstance(out, tuple) and len(out) == 2:
        x, y = out
    elif hasattr(out, "x") and hasattr(out, "y"):
        x, y = out.x, out.y
    else:
        raise ValueError(f"xadv.data.{fn.__name__} returned {type(out).__name__}; a sweep needs (x, y)")
    x, y = torch.as_tensor(x).float(), torch.as_tensor(y).long()
    if correct:
        with torch.no_grad():
            ok = model(x).argmax(1) == y
        x, y = x[ok], y[ok]
    stop = None if n is None else offset + int(n)
    return x[offset:stop], y[offset:stop]


def build_explainer(spec: Any):
    from .. import explainers as E

    if spec is None:
        return None
    name, params = _split(spec)
    if isinstance(params.get("base"), Mapping):          # SmoothGrad of a configured explainer
        params["base"] = build_explainer(params["base"])
    return E.get(name, **params)


def _f(v) -> float:
    v = float(v)
    return v if math.isfinite(v) else float("nan")


def _mean(t) -> float:
    import torch

    t = torch.as_tensor(t).detach().double()
    return _f(t.mean()) if t.numel() else float("nan")


def attack_cell(p: Mapping[str, Any], model, x, y) -> List[Row]:
    """Success rate, robust accuracy, mean norms (over successes) and queries of one attack."""
    from .. import attacks as A

    name, params = _split(p["attack"])
    cls = _lookup(A, name, _ATTACK_ALIASES, "attack")
    ex = build_explainer(p.get("explainer"))
    budget = (p.get("options") or {}).get("budget_param", "eps")     # e.g. "k" for DeletionAttack
    atk = _build(cls, params, seed=p.get("seed"), explainer=ex, **{budget: p.get("eps")})
    res = atk(model, x, y)
    s = res.success.bool()
    row: Row = {"n": int(s.numel()), "success_rate": _f(res.success_rate),
                "robust_accuracy": _mean(res.pred_adv == y) if not res.targeted else float("nan")}
    for k in ("l2", "linf", "l0"):
        v = res.norms[k][s] if k in res.norms else []
        row[f"mean_{k}"] = _mean(v)
    row["mean_queries"] = _mean(res.queries.float()) if res.queries is not None else float("nan")
    return [row]


def fooling_cell(p: Mapping[str, Any], model, x, y) -> List[Row]:
    """Kept-prediction rate and every similarity metric (means) of one fooling attack."""
    from .. import fooling as F

    name, params = _split(p["attack"])
    cls = _lookup(F, name, _FOOLING_ALIASES, "fooling attack")
    ex = build_explainer(p.get("explainer"))
    atk = _build(cls, params, eps=p.get("eps"), seed=p.get("seed"), explainer=ex)
    res = atk(model, x, y)
    row: Row = {"n": int(res.kept.numel()), "kept": _mean(res.kept.float())}
    for k, v in sorted(res.similarity.items()):
        row[k] = _mean(v)
    for k, v in sorted(res.norms.items()):
        row[f"mean_{k}"] = _mean(v)
    return [row]


def detection_cell(p: Mapping[str, Any], model, x, y) -> List[Row]:
    """:func:`xadv.detectors.evaluate` of one detector: one row per (attack, budget) it reports.

    The data are split in half (train / test); the detector is fitted on PGD examples at
    the cell's ``eps`` (or the ``attack`` given) and tested on them and on FGSM.
    """
    from .. import attacks as A
    from .. import detectors as D

    name, params = _split(p["detector"])
    cls = _lookup(D, name, _DETECTOR_ALIASES, "detector")
    ex = build_explainer(p.get("explainer"))
    det = _build(cls, params, explainer=ex, seed=p.get("seed"))
    eps = p.get("eps", 0.2)
    seed = p.get("seed")
    if p.get("attack") is not None:
        aname, aparams = _split(p["attack"])
        train_atk = _build(_lookup(A, aname, _ATTACK_ALIASES, "attack"), aparams, eps=eps, seed=seed)
        label = aname
    else:
        train_atk, label = A.PGD(eps=eps, steps=10, seed=seed), "PGD"
    half = len(x) // 2
    test_atk = {(label, f"eps={eps:g}"): train_atk, ("FGSM", f"eps={eps:g}"): A.FGSM(eps=eps)}
    rep = D.evaluate({name: det}, model, (x[:half], y[:half]), (x[half:], y[half:]),
                     train_attacks={(label, f"eps={eps:g}"): train_atk}, test_attacks=test_atk, progress=False)
    rows = []
    for r in rep.rows:
        rows.append({k: (v if isinstance(v, (str, bool)) else _f(v) if isinstance(v, float) else v)
                     for k, v in r.items() if k in ("attack", "budget", "held_out", "auroc", "aupr", "tpr_at_1fpr",
                                                    "tpr_at_5fpr", "accuracy", "clean_accuracy", "n_clean", "n_adv")})
    return rows


def metric_cell(p: Mapping[str, Any], model, x, y) -> List[Row]:
    """The mean (and std) of one :mod:`xadv.metrics` function on one explainer.

    Functions whose first parameter is ``explainer`` (robustness metrics) get the
    explainer; the others (``deletion_auc``, ``insertion_auc``, ``aopc``) get
    ``(model, x, explanation, target)``.
    """
    import torch

    from .. import metrics as M

    name, params = _split(p["metric"])
    fn = getattr(M, name, None)
    if name not in M.__all__ or not callable(fn):
        raise ValueError(f"unknown metric {name!r}; xadv.metrics has {', '.join(M.__all__)}")
    ex = build_explainer(p["explainer"])
    first = next(iter(inspect.signature(fn).parameters))
    seed = p.get("seed")
    if "seed" in inspect.signature(fn).parameters and "seed" not in params:
        params["seed"] = seed
    if first == "explainer":
        v = fn(ex, model, x, y, **params)
    else:
        v = fn(model, x, ex(model, x, y), y, **params)
    v = torch.as_tensor(v).detach().double().flatten()
    return [{"n": int(len(x)), "metric": name, "value": _mean(v), "std": _f(v.std()) if v.numel() > 1 else 0.0}]


#: experiments of :mod:`xadv.experiments` that run as ``experiment`` cells
EXPERIMENTS = ("attacks", "fooling", "detection")


def experiment_module(name: str):
    """The :mod:`xadv.experiments` module of an ``experiment`` cell (``PARTS``, ``SETTINGS``, ``part_rows``)."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; experiments that run as sweep cells: {', '.join(EXPERIMENTS)}")
    return importlib.import_module(f"..experiments.{name}", __package__)


def _scalar(v: Any) -> Any:
    """An experiment row value as a number, string, bool or None (lists and dicts as JSON text)."""
    import json

    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        v = v.item()
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, tuple):
        v = list(v)
    return json.dumps(v, sort_keys=True, default=str)


def experiment_cell(p: Mapping[str, Any]) -> List[Row]:
    """One part of an experiment of :mod:`xadv.experiments` (a section, one explainer's rows, one
    detector): ``part_rows(part, seed, **settings)`` of the module, the experiment's own rows.

    Rows drop the experiment's ``seconds`` (the cell's duration is recorded with the cell), so
    the same cell gives the same rows on every backend.
    """
    mod = experiment_module(p["experiment"])
    rows = mod.part_rows(p["part"], seed=int(p.get("seed") or 0), **dict(p.get("settings") or {}))
    return [{k: _scalar(v) for k, v in r.items() if k != "seconds"} for r in rows]


CELL_KINDS: Dict[str, Callable[..., List[Row]]] = {
    "attack": attack_cell, "fooling": fooling_cell, "detection": detection_cell, "explain-metric": metric_cell,
    "experiment": experiment_cell,
}


def versions() -> Dict[str, str]:
    import torch

    from .. import __version__

    return {"xadv": __version__, "torch": torch.__version__, "python": platform.python_version()}


def _clean(row: Mapping[str, Any]) -> Row:
    out = {}
    for k, v in row.items():
        if hasattr(v, "item") and not isinstance(v, (str, bytes)):
            v = v.item()
        if not isinstance(v, (bool, int, float, str)) and v is not None:
            raise TypeError(f"cell rows hold numbers and strings; {k!r} is {type(v).__name__}")
        out[str(k)] = v
    return out


def run_cell(params: Mapping[str, Any]) -> List[Row]:
    """Run one cell and return its rows (raises on error; :func:`execute` catches)."""
    import torch

    kind = params.get("kind")
    if kind not in CELL_KINDS:
        raise ValueError(f"unknown cell kind {kind!r}; known: {', '.join(CELL_KINDS)}")
    opts = dict(params.get("options") or {})
    threads = int(opts.get("threads", 1))
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        seed = params.get("seed")
        if seed is not None:
            torch.manual_seed(int(seed))
        if opts.get("fail"):
            raise RuntimeError(str(opts["fail"]))          # a deliberate failure, for tests of the machinery
        if kind == "experiment":                            # the experiment loads its own model and data
            return [_clean(r) for r in experiment_cell(params)]
        model = build_model(params.get("model", "digits_cnn"))
        with torch.random.fork_rng(devices=[]):
            x, y = load_data(params.get("data", {"name": "digits"}), model)
        if len(x) == 0:
            raise ValueError(f"no samples left for data {params.get('data')!r} (check n, offset, correct)")
        return [_clean(r) for r in CELL_KINDS[kind](params, model, x, y)]
    finally:
        torch.set_num_threads(old_threads)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")


def execute(key: str, params: Mapping[str, Any]) -> Dict[str, Any]:
    """Run a cell and report: ``{key, status ("done"/"failed"), rows, error, traceback, started, finished,
    duration, versions, host}``. Never raises (except KeyboardInterrupt / SystemExit)."""
    started, t0 = _now(), time.perf_counter()
    out: Dict[str, Any] = {"key": key, "versions": versions(), "host": platform.node(), "started": started}
    try:
        out.update(status="done", rows=run_cell(params), error=None, traceback=None)
    except Exception as e:  # noqa: BLE001 - a failing cell is recorded, the grid goes on
        out.update(status="failed", rows=[], error=f"{type(e).__name__}: {e}",
                   traceback="".join(traceback.format_exception(type(e), e, e.__traceback__)))
    out["finished"] = _now()
    out["duration"] = time.perf_counter() - t0
    sys.stdout.flush()
    return out
