"""The evaluation protocol: fit on some attacks, test on held-out attacks and budgets,
report adaptive-attack numbers next to the non-adaptive ones."""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from .._model import preserved
from .._validation import check_inputs, check_model
from ..explainers.base import forward
from ..results import DetectionReport
from .adaptive import AdaptiveAttack
from .base import Detector
from .metrics import aupr, auroc, detection_accuracy, roc_curve, tpr_at_fpr

Key = Tuple[str, str]

METRIC_DEFINITIONS = {
    "auroc": "area under the ROC curve, adversarial = positive (ties count 1/2)",
    "aupr": "average precision with adversarial as the positive class",
    "tpr_at_1fpr": "largest TPR at FPR <= 1% (ROC operating points on the test scores)",
    "tpr_at_5fpr": "largest TPR at FPR <= 5%",
    "accuracy": "balanced detection accuracy (TPR + TNR) / 2 at the detector's fitted threshold",
    "clean_accuracy": "fraction of ALL clean test inputs that the model classifies correctly and the detector "
                      "accepts at its threshold (model + detector accuracy)",
    "success_rate": "fraction of attacked (correctly classified clean) inputs the attack made misclassified",
    "evasion_rate": "fraction of attacked inputs that are misclassified AND not flagged at the threshold",
    "n_clean": "correctly classified clean test inputs (the negatives)",
    "n_adv": "successful adversarial examples (the positives); failed attacks are not counted",
}


def _key(k) -> Key:
    if isinstance(k, tuple) and len(k) == 2:
        return str(k[0]), str(k[1])
    if isinstance(k, str):
        name, _, budget = k.partition("@")
        return name, budget
    raise TypeError(f"attack keys must be 'name', 'name@budget' or (name, budget) tuples, got {k!r}")


def _norm_attacks(attacks, what: str) -> Dict[Key, Callable]:
    if attacks is None:
        return {}
    if not isinstance(attacks, Mapping):
        raise TypeError(f"{what} must be a mapping from (name, budget) to an attack callable")
    out = {}
    for k, a in attacks.items():
        if not callable(a):
            raise TypeError(f"{what}[{k!r}] is not callable: attacks are called as attack(model, x, y)")
        out[_key(k)] = a
    return out


def _run_attack(attack, model, x, y, batch_size):
    xs, ok = [], []
    for i in range(0, len(x), batch_size):
        res = attack(model, x[i:i + batch_size], y[i:i + batch_size])
        xs.append(res.x_adv.detach())
        ok.append(res.success.detach().to(x.device))
    return torch.cat(xs), torch.cat(ok).bool()


def _metrics(s_clean: torch.Tensor, s_adv: torch.Tensor, thr: float) -> Dict[str, Any]:
    lab = np.r_[np.zeros(len(s_clean)), np.ones(len(s_adv))]
    sc = np.r_[s_clean.double().numpy(force=True), s_adv.double().numpy(force=True)]
    fpr, tpr, _ = roc_curve(lab, sc)
    return {"auroc": auroc(lab, sc), "aupr": aupr(lab, sc), "tpr_at_1fpr": tpr_at_fpr(lab, sc, 0.01),
            "tpr_at_5fpr": tpr_at_fpr(lab, sc, 0.05), "accuracy": detection_accuracy(lab, sc, thr),
            "_roc": (fpr, tpr)}


def config_label(kw: Mapping[str, Any]) -> str:
    """Short text naming an adaptive configuration (its keyword arguments except eps, seed,
    batch_size and progress), e.g. ``"steps=100, restarts=5, mode='weighted', lam=3"``."""
    skip = ("eps", "seed", "batch_size", "progress")
    parts = [f"{k}={v!r}" if isinstance(v, str) else f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
             for k, v in kw.items() if k not in skip]
    return ", ".join(parts) or "defaults"


def _adaptive_configs(adaptive) -> Dict[str, List[Dict[str, Any]]]:
    if not isinstance(adaptive, Mapping):
        raise TypeError("adaptive must be a mapping budget label -> AdaptiveAttack keyword arguments "
                        "(a dict, or a list of dicts for the worst case over configurations)")
    out = {}
    for label, v in adaptive.items():
        kws = [v] if isinstance(v, Mapping) else list(v) if isinstance(v, (list, tuple)) else None
        if not kws or not all(isinstance(k, Mapping) for k in kws):
            raise TypeError(f"adaptive[{label!r}] must be a dict of AdaptiveAttack keyword arguments or a non-empty "
                            f"list of them, got {v!r}")
        out[str(label)] = [dict(k) for k in kws]
    return out


def _applicable(detector: Detector, kw: Mapping[str, Any]) -> bool:
    """A configuration applies unless it names a surrogate the detector does not have."""
    if kw.get("surrogate") == "soft_forest":
        return hasattr(detector, "forest_") and hasattr(detector, "sub_scores")
    return True


#: name of the extra candidate built from all configurations of a budget (best per input)
PER_INPUT_BEST = "per-input best of all configurations"

#: a configuration is a worst-case candidate only if it fools the classifier on at least this
#: fraction of the inputs the most successful configuration fools (AUROC is computed on
#: successful examples only: a run that fools 4 of 40 inputs gets a low AUROC from those 4
#: without being a stronger attack)
MIN_RELATIVE_SUCCESS = 0.5


def _adaptive_summary(label, kwargs, score, ok, s_clean, thr, seconds, note) -> Dict[str, Any]:
    s_adv = score[ok]
    auc = _metrics(s_clean, s_adv, thr)["auroc"] if len(s_adv) and len(s_clean) else float("nan")
    n = max(len(score), 1)
    return {"config": label, "kwargs": kwargs, "auroc": auc, "success_rate": float(ok.sum()) / n,
            "evasion_rate": float((s_adv <= thr).sum()) / n, "seconds": seconds, "_score": score, "_ok": ok,
            "_note": note}


def _pick_worst(tried: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """The strongest run for the detector: among runs whose success rate is at least
    ``MIN_RELATIVE_SUCCESS`` times the best one, the lowest AUROC (NaN = weakest), then
    the highest evasion rate; the first such run on ties."""
    top = max(t["success_rate"] for t in tried)
    ok = [t for t in tried if t["success_rate"] >= MIN_RELATIVE_SUCCESS * top - 1e-12]

    def key(t):
        auc = t["auroc"]
        return (2.0 if auc != auc else auc, -t["evasion_rate"])

    return min(ok, key=key)


def evaluate(detectors: Mapping[str, Detector], model, train: Tuple[torch.Tensor, torch.Tensor],
             test: Tuple[torch.Tensor, torch.Tensor], *, train_attacks: Mapping, test_attacks: Mapping,
             adaptive: Optional[Mapping[str, Dict[str, Any]]] = None, n_adaptive: Optional[int] = None,
             fit: bool = True, attack_batch_size: int = 256, progress: Optional[bool] = None) -> DetectionReport:
    """Fit detectors on some attacks and evaluate them on held-out attacks, budgets and an adaptive attack.

    Protocol
    --------
    1. Clean training inputs the model misclassifies are dropped; every train attack is
       run on the rest and only its successful adversarial examples are kept. Each
       detector is fitted on (correct clean, successful adversarial) with ``fit=True``.
    2. On the test split, clean inputs the model misclassifies are set aside and
       reported in ``meta["misclassified_clean"]`` (count and fraction each detector
       flags); the correctly classified ones are the negatives and the inputs attacked.
    3. For every test attack the positives are its successful adversarial examples;
       a row is ``held_out`` when the (attack, budget) key was not a train attack.
    4. For every detector and every entry of ``adaptive`` an :class:`AdaptiveAttack` with
       those parameters is run against that detector on (the first ``n_adaptive``)
       correctly classified test inputs; its rows have ``adaptive=True`` and a ``note``
       naming any surrogate. An entry that lists several configurations gives one row,
       the worst case for the detector (lowest AUROC) over them.

    Parameters
    ----------
    detectors : mapping name -> Detector
    model : nn.Module or callable
    train, test : (x (N, ...), y (N,)) pairs of clean inputs and true labels
    train_attacks, test_attacks : mapping key -> attack
        ``attack(model, x, y) -> AttackResult`` (``x_adv``, ``success``), e.g. from
        ``xadv.attacks``. Keys: ``(name, budget)`` tuples or ``"name@budget"`` strings.
        Put the train attacks among the test attacks too to get their (not held-out)
        test rows.
    adaptive : mapping budget label -> AdaptiveAttack keyword arguments (or a list of them), optional
        E.g. ``{"eps=0.1": {"eps": 0.1, "steps": 40}}``. A list of dicts is the worst
        case over adaptive configurations: every configuration that applies to the
        detector is run (``surrogate="soft_forest"`` only on forest detectors) and the
        row reports the strongest run, named in the row's ``note`` and ``config``: the
        lowest AUROC (ties: highest evasion) among the configurations and the per-input
        best of all of them (``PER_INPUT_BEST``: each input's misclassified output with the
        lowest exact score, as an attacker who runs every configuration would keep),
        counting only runs that fool the classifier on at least ``MIN_RELATIVE_SUCCESS``
        (half) as many inputs as the most successful one (AUROC is computed on
        successful examples, so a run that rarely succeeds can score a low AUROC without
        being stronger). Every run is in ``meta["adaptive_configs"]["detector|label"]``
        (config, AUROC, success and evasion rates, seconds).
    n_adaptive : int, optional
        Test inputs attacked adaptively (all by default).
    fit : bool, default True
        Fit the detectors (False: use them as already fitted).
    attack_batch_size : int, default 256
    progress : bool or None, default None

    Returns
    -------
    DetectionReport
        ``rows`` (see ``METRIC_DEFINITIONS`` for the metrics), ``roc`` keyed
        ``"detector|attack|budget|adaptive"``, ``meta`` with the protocol.

    Examples
    --------
    >>> import torch
    >>> from xadv.attacks import FGSM, PGD
    >>> from xadv.detectors import LOODetector, evaluate, to_markdown
    >>> torch.manual_seed(1)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> x = torch.rand(120, 1, 4, 4)
    >>> y = net(x).argmax(1)
    >>> rep = evaluate({"LOO": LOODetector(patch=2)}, net, (x[:80], y[:80]), (x[80:], y[80:]),
    ...                train_attacks={"FGSM@eps=0.3": FGSM(eps=0.3)},
    ...                test_attacks={"PGD@eps=0.3": PGD(eps=0.3, steps=5, seed=0)})
    >>> rep.rows[0]["attack"], rep.rows[0]["held_out"]
    ('PGD', True)
    >>> to_markdown(rep).splitlines()[0][:30]
    '| detector | attack | budget |'
    """
    check_model(model)
    if not isinstance(detectors, Mapping) or not detectors:
        raise TypeError("detectors must be a non-empty mapping name -> Detector")
    for name, d in detectors.items():
        if not isinstance(d, Detector):
            raise TypeError(f"detectors[{name!r}] is not an xadv Detector ({type(d).__name__})")
    (xtr, ytr), (xte, yte) = train, test
    check_inputs(xtr, model, name="train x")
    check_inputs(xte, model, name="test x")
    for x, y, w in ((xtr, ytr, "train"), (xte, yte, "test")):
        if not isinstance(y, torch.Tensor) or y.shape != (len(x),):
            raise ValueError(f"{w} labels must be a LongTensor of shape ({len(x)},)")
    tr_att = _norm_attacks(train_attacks, "train_attacks")
    te_att = _norm_attacks(test_attacks, "test_attacks")
    if fit and not tr_att:
        raise ValueError("train_attacks is empty: supervised detectors need adversarial examples to fit")
    if not te_att and not adaptive:
        raise ValueError("nothing to evaluate: give test_attacks and/or adaptive")
    from .._progress import bar as progress_bar

    n_adaptive_units = 0
    if adaptive:
        n_adaptive_units = len(detectors) * sum(len(v) for v in _adaptive_configs(adaptive).values())
    bar = progress_bar(len(tr_att) + (len(detectors) if fit else 0) + len(te_att) + n_adaptive_units,
                       "evaluate", progress=progress, unit="stage")

    def log(msg):  # one finished stage: the bar moves and shows what was done
        bar.update(1)
        bar.set_postfix_str(msg)

    meta: Dict[str, Any] = {"metrics": METRIC_DEFINITIONS, "train_attacks": [f"{a}@{b}" for a, b in tr_att],
                            "timing_s": {}}

    def pred(x):
        with preserved(model), torch.no_grad():
            return torch.cat([forward(model, x[i:i + 512]).argmax(1) for i in range(0, len(x), 512)])

    # ---- training data
    t0 = time.perf_counter()
    ok_tr = pred(xtr) == ytr.to(xtr.device)
    xc_tr, yc_tr = xtr[ok_tr], ytr[ok_tr]
    adv_tr, n_adv_tr = [], {}
    for (a, b), att in tr_att.items():
        xa, ok = _run_attack(att, model, xc_tr, yc_tr, attack_batch_size)
        adv_tr.append(xa[ok])
        n_adv_tr[f"{a}@{b}"] = int(ok.sum())
        log(f"train attack {a}@{b}: {int(ok.sum())}/{len(ok)} successful")
    meta["timing_s"]["train_attacks"] = time.perf_counter() - t0
    meta["n_train_clean"] = int(len(xc_tr))
    meta["n_train_adv"] = n_adv_tr
    xa_tr = torch.cat(adv_tr) if adv_tr else None
    if fit:
        for name, d in detectors.items():
            t0 = time.perf_counter()
            d.fit(model, xc_tr, xa_tr)
            meta["timing_s"][f"fit {name}"] = time.perf_counter() - t0
            log(f"fit {name}: {meta['timing_s'][f'fit {name}']:.1f} s")
    meta["thresholds"] = {n: float(d.threshold_) for n, d in detectors.items()}
    meta["fpr_target"] = {n: d.fpr for n, d in detectors.items()}
    meta["val_auroc"] = {n: d.fit_info_.get("val_auroc") for n, d in detectors.items()}
    meta["detectors"] = {n: repr(d) for n, d in detectors.items()}

    # ---- test clean
    yte = yte.to(xte.device)
    ok_te = pred(xte) == yte
    xc, yc = xte[ok_te], yte[ok_te]
    xm = xte[~ok_te]
    s_clean = {n: d.score(model, xc) for n, d in detectors.items()}
    clean_acc = {}
    mis = {"n": int((~ok_te).sum()), "n_test": int(len(xte)), "flagged": {}}
    for n, d in detectors.items():
        accepted_correct = int((s_clean[n] <= d.threshold_).sum())
        clean_acc[n] = accepted_correct / len(xte)
        if len(xm):
            mis["flagged"][n] = float((d.score(model, xm) > d.threshold_).float().mean())
    meta["misclassified_clean"] = mis

    rows: List[Dict[str, Any]] = []
    roc: Dict[str, Any] = {}

    def add_row(n, d, attack, budget, held_out, is_adaptive, s_adv, n_attacked, note=""):
        row: Dict[str, Any] = {"detector": n, "attack": attack, "budget": budget, "held_out": held_out,
                               "adaptive": is_adaptive, "n_clean": int(len(xc)), "n_adv": int(len(s_adv)),
                               "clean_accuracy": clean_acc[n], "success_rate": len(s_adv) / max(n_attacked, 1),
                               "evasion_rate": float((s_adv <= d.threshold_).sum()) / max(n_attacked, 1)}
        if len(s_adv) and len(s_clean[n]):
            m = _metrics(s_clean[n], s_adv, d.threshold_)
            roc[f"{n}|{attack}|{budget}|{is_adaptive}"] = m.pop("_roc")
            row.update(m)
        else:
            row.update({k: float("nan") for k in ("auroc", "aupr", "tpr_at_1fpr", "tpr_at_5fpr", "accuracy")})
            note = (note + "; " if note else "") + "no successful adversarial examples"
        if note:
            row["note"] = note
        rows.append(row)

    # ---- non-adaptive test attacks
    t0 = time.perf_counter()
    for (a, b), att in te_att.items():
        xa, ok = _run_attack(att, model, xc, yc, attack_batch_size)
        xa = xa[ok]
        log(f"test attack {a}@{b}: {int(ok.sum())}/{len(ok)} successful ({time.perf_counter() - t0:.1f} s)")
        for n, d in detectors.items():
            s_adv = d.score(model, xa) if len(xa) else torch.zeros(0)
            add_row(n, d, a, b, (a, b) not in tr_att, False, s_adv, len(xc))
        bar.set_postfix_str(f"scored {a}@{b} ({time.perf_counter() - t0:.1f} s)")
    meta["timing_s"]["test_attacks_and_scoring"] = time.perf_counter() - t0

    # ---- adaptive attacks
    if adaptive:
        configs = _adaptive_configs(adaptive)
        meta["adaptive"] = {k: (dict(v[0]) if len(v) == 1 else [dict(c) for c in v]) for k, v in configs.items()}
        meta["surrogates"] = {}
        meta["adaptive_configs"] = {}
        xs, ys = (xc, yc) if n_adaptive is None else (xc[:n_adaptive], yc[:n_adaptive])
        for n, d in detectors.items():
            for label, kws in configs.items():
                tried = []
                for kw in kws:
                    if not _applicable(d, kw):
                        bar.update(1)
                        continue
                    t0 = time.perf_counter()
                    att = AdaptiveAttack(d, **kw)
                    res = att(model, xs, ys)
                    ok = res.success.to(xs.device)
                    tried.append(_adaptive_summary(config_label(kw), dict(kw), res.extras["score_adv"], ok,
                                                   s_clean[n], d.threshold_, time.perf_counter() - t0, att.surrogate))
                    t = tried[-1]
                    log(f"adaptive {n} {label} [{t['config']}]: {t['seconds']:.1f} s, AUROC {t['auroc']:.3f}, "
                        f"evasion {t['evasion_rate']:.3f}")
                if not tried:
                    raise ValueError(f"no adaptive configuration of {label!r} applies to detector {n!r} "
                                     f"(surrogate='soft_forest' needs a forest detector such as XEnsemble)")
                if len(tried) > 1:  # per input, the best of all configurations (an attacker runs them all)
                    sc = torch.stack([t["_score"] for t in tried])
                    okk = torch.stack([t["_ok"] for t in tried])
                    best = torch.where(okk, sc, torch.full_like(sc, float("inf"))).min(0).values
                    notes = sorted({t["_note"] for t in tried if t["_note"]})
                    tried.append(_adaptive_summary(PER_INPUT_BEST, None, best, okk.any(0), s_clean[n], d.threshold_,
                                                   sum(t["seconds"] for t in tried), " | ".join(notes)))
                w = _pick_worst(tried)
                note = w["_note"]
                if len(kws) > 1:
                    note = (f"worst of {len(tried)} configurations: {w['config']}" + ("; " + note if note else ""))
                meta["surrogates"][n] = w["_note"] or "none (exact gradients)"
                meta["adaptive_configs"][f"{n}|{label}"] = [
                    {k: v for k, v in t.items() if not k.startswith("_")} for t in tried]
                w["_s_adv"] = w["_score"][w["_ok"]]
                add_row(n, d, "adaptive PGD", label, True, True, w["_s_adv"], len(xs), note)
                rows[-1]["config"] = w["config"]
                meta["timing_s"][f"adaptive {n} {label}"] = sum(t["seconds"] for t in tried
                                                                if t["config"] != PER_INPUT_BEST)
    bar.close()
    return DetectionReport(rows=rows, roc=roc, meta=meta)


# ---------------------------------------------------------------------- views
_COLUMNS = (("detector", "detector"), ("attack", "attack"), ("budget", "budget"), ("held_out", "held-out"),
            ("adaptive", "adaptive"), ("auroc", "AUROC"), ("aupr", "AUPR"), ("tpr_at_1fpr", "TPR@1%"),
            ("tpr_at_5fpr", "TPR@5%"), ("accuracy", "det. acc"), ("clean_accuracy", "clean acc"),
            ("evasion_rate", "evasion"), ("n_adv", "n adv"))


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else ""
    if isinstance(v, float):
        return "nan" if v != v else f"{v:.3f}"
    return str(v)


def _check_report(report) -> DetectionReport:
    if not isinstance(report, DetectionReport):
        raise TypeError(f"expected a DetectionReport, got {type(report).__name__}")
    return report


def to_dict(report: DetectionReport) -> Dict[str, Any]:
    """Plain Python (JSON-ready) form: ``{"rows": [...], "roc": {key: {"fpr": [...], "tpr": [...]}}, "meta": {...}}``."""
    _check_report(report)

    def plain(v):
        if isinstance(v, dict):
            return {str(k): plain(w) for k, w in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(w) for w in v]
        if isinstance(v, (np.floating, np.integer)):
            return v.item()
        if isinstance(v, np.ndarray):
            return v.tolist()
        if isinstance(v, torch.Tensor):
            return v.tolist()
        return v

    roc = {k: {"fpr": np.asarray(f).tolist(), "tpr": np.asarray(t).tolist()} for k, (f, t) in report.roc.items()}
    return {"rows": plain(report.rows), "roc": roc, "meta": plain(report.meta)}


def to_markdown(report: DetectionReport, columns: Optional[Sequence[str]] = None) -> str:
    """A markdown table of the rows (held-out and adaptive rows marked).

    ``columns``: row keys to show (default: detector, attack, budget, held-out,
    adaptive, AUROC, AUPR, TPR@1%, TPR@5%, detection accuracy, clean accuracy,
    evasion rate, number of adversarial examples)."""
    _check_report(report)
    cols = [(k, h) for k, h in _COLUMNS if columns is None or k in columns]
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in report.rows:
        lines.append("| " + " | ".join(_fmt(r.get(k, "")) for k, _ in cols) + " |")
    return "\n".join(lines)


def to_latex(report: DetectionReport, columns: Optional[Sequence[str]] = None, caption: str = "") -> str:
    """A booktabs ``tabular`` of the rows (``\\usepackage{booktabs}``)."""
    _check_report(report)
    cols = [(k, h) for k, h in _COLUMNS if columns is None or k in columns]

    def esc(s: str) -> str:
        return s.replace("\\", "\\textbackslash{}").replace("%", "\\%").replace("_", "\\_").replace("&", "\\&") \
            .replace("#", "\\#")

    align = "".join("l" if k in ("detector", "attack", "budget", "held_out", "adaptive") else "r" for k, _ in cols)
    out = ["\\begin{table}[t]", "\\centering", f"\\begin{{tabular}}{{{align}}}", "\\toprule",
           " & ".join(esc(h) for _, h in cols) + " \\\\", "\\midrule"]
    for r in report.rows:
        out.append(" & ".join(esc(_fmt(r.get(k, ""))) for k, _ in cols) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}"]
    if caption:
        out.append(f"\\caption{{{esc(caption)}}}")
    out.append("\\end{table}")
    return "\n".join(out)
