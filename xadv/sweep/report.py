"""Tables and figures from a sweep database (queries of the store, nothing recomputed)."""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from .store import Store

_PARAM_COLS = ("model", "data", "explainer", "attack", "detector", "metric_fn", "eps", "seed")
#: headline metric per cell kind (figures)
HEADLINE = {"attack": "success_rate", "fooling": "topk_intersection", "detection": "auroc", "explain-metric": "value"}


def _metric_cols(rows: Sequence[Dict[str, Any]]) -> List[str]:
    skip = set(_PARAM_COLS) | {"cell", "row", "block", "kind", "budget_param", "_kind", "_budget"}
    cols: List[str] = []
    for r in rows:
        for k in r:
            if k not in skip and k not in cols:
                cols.append(k)
    return cols


def tables(db: Union[str, Path]) -> Dict[str, List[Dict[str, Any]]]:
    """``{block: rows}``: every done cell's rows with their parameter columns (constant columns dropped)."""
    with Store(db, read_only=True) as st:
        rows = st.rows()
    by: Dict[str, List[Dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by[str(r["block"])].append(r)
    out = {}
    for block, rs in by.items():
        params = [c for c in _PARAM_COLS if any(c in r for r in rs) and len({repr(r.get(c)) for r in rs}) > 1]
        cols = params + _metric_cols(rs)
        key = [c for c in _PARAM_COLS if any(c in r for r in rs)]
        def order(r):
            return tuple((0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v))
                         for v in (r.get(c) for c in key)) + (r["row"],)

        rs = sorted(rs, key=order)
        out[block] = [{c: r.get(c) for c in cols} | {"_kind": r["kind"], "_budget": r.get("budget_param")}
                      for r in rs]
    return out


def experiment_rows(db: Union[str, Path]) -> Dict[str, Dict[str, Any]]:
    """``{block: {"experiment": name, "rows": [...]}}`` for the ``experiment`` blocks of a sweep:
    the experiment's own rows, parts in the experiment's order (``PARTS``), then by seed."""
    from .cells import experiment_module

    with Store(db, read_only=True) as st:
        cells = st.cell_rows("experiment")
    by: Dict[str, List[Dict[str, Any]]] = defaultdict(list)
    for c in cells:
        by[str(c["params"].get("block"))].append(c)
    out: Dict[str, Dict[str, Any]] = {}
    for block, cs in by.items():
        name = cs[0]["params"]["experiment"]
        parts = list(experiment_module(name).PARTS)
        cs.sort(key=lambda c: (c["params"].get("seed") or 0, parts.index(c["params"]["part"])
                               if c["params"]["part"] in parts else len(parts)))
        out[block] = {"experiment": name, "rows": [r for c in cs for r in c["rows"]],
                      "seeds": sorted({c["params"].get("seed") for c in cs}, key=str)}
    return out


def experiment_markdown(name: str, rows: List[Dict[str, Any]]) -> str:
    """The tables of experiment ``name`` (``xadv.experiments.<name>.to_markdown``) from its rows."""
    from .cells import experiment_module

    mod = experiment_module(name)
    if name == "detection":
        from ..results import DetectionReport

        return mod.to_markdown(DetectionReport(rows=list(rows)))
    return mod.to_markdown(list(rows))


def _plot_budget(rows, metric: str, series: str, title: str, path: Path):
    import matplotlib.pyplot as plt

    from .. import plot as xp

    lines: Dict[str, Dict[float, List[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        v = r.get(metric)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v) and r.get("eps") is not None:
            lines[str(r.get(series))][float(r["eps"])].append(float(v))
    if not lines or all(len(d) < 2 for d in lines.values()):
        return None
    with xp.style("paper", columns=1):
        fig, ax = plt.subplots()
        for name, d in sorted(lines.items()):
            xs = sorted(d)
            ax.plot(xs, [sum(d[x]) / len(d[x]) for x in xs], marker="o", label=name)
        bp = next((r.get("_budget") for r in rows if r.get("_budget")), "eps")
        ax.set_xlabel("budget ε" if bp == "eps" else f"budget ({bp})")
        ax.set_ylabel(metric.replace("_", " "))
        ax.set_title(title)
        ax.legend(fontsize="x-small", frameon=False, loc="upper left", bbox_to_anchor=(1.02, 1.0))
        xp.save(fig, path)
        plt.close(fig)
    return path


def _plot_heatmap(rows, metric: str, title: str, path: Path):
    import matplotlib.pyplot as plt
    import numpy as np

    from .. import plot as xp

    cell: Dict[tuple, List[float]] = defaultdict(list)
    for r in rows:
        v = r.get(metric)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v):
            cell[(str(r.get("explainer")), str(r.get("attack")))].append(float(v))
    exps = sorted({k[0] for k in cell})
    atks = sorted({k[1] for k in cell})
    if len(exps) < 2 and len(atks) < 2:
        return None
    m = np.full((len(exps), len(atks)), np.nan)
    for (e, a), vs in cell.items():
        m[exps.index(e), atks.index(a)] = sum(vs) / len(vs)
    with xp.style("paper", columns=2):
        fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(atks), 0.8 + 0.45 * len(exps)))
        im = ax.imshow(m, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(atks)), atks, rotation=30, ha="right")
        ax.set_yticks(range(len(exps)), exps)
        for i in range(len(exps)):
            for j in range(len(atks)):
                if not np.isnan(m[i, j]):
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize="x-small",
                            color="white" if m[i, j] < np.nanmean(m) else "black")
        fig.colorbar(im, ax=ax, label=f"{metric.replace('_', ' ')} (mean over budgets, seeds)")
        ax.set_title(title)
        xp.save(fig, path)
        plt.close(fig)
    return path


def report(db: Union[str, Path], out: Union[str, Path], *, digits: int = 3) -> Dict[str, Any]:
    """Write ``report.md``, ``tables.tex`` and figures (PNG) of a sweep database into ``out``.

    Figures per block: the headline metric against the budget, one line per explainer
    (or per attack when the block has no explainer axis), and an explainer x attack
    heatmap where a block has both axes.

    Returns
    -------
    dict ``{"markdown": path, "latex": path, "figures": [paths], "blocks": [names]}``
    """
    from .. import plot as xp
    from .run import status

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    st = status(db)
    tabs = tables(db)
    md = [f"# Sweep {st['grid']}\n",
          f"Database `{Path(db).name}`: cells {st['counts']}, written by xadv {st['xadv_version']}; "
          f"{(st['cell_seconds'] or 0):.1f} s of cell time.\n"]
    tex = ["% needs \\usepackage{booktabs}"]
    figs: List[str] = []
    experiments = experiment_rows(db)
    for block, rows in tabs.items():
        kind = rows[0]["_kind"]
        if kind == "experiment":        # the experiment's own tables, as python -m xadv.experiments.<name> prints
            ex = experiments[block]
            seeds = ", ".join(str(s) for s in ex["seeds"])
            md += [f"## {block} (experiment {ex['experiment']}, seed {seeds})\n",
                   experiment_markdown(ex["experiment"], ex["rows"]), ""]
            continue
        shown = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
        md += [f"## {block} ({kind})\n", xp.to_markdown(shown, digits=digits), ""]
        tex += [xp.to_latex(shown, digits=digits, caption=f"{block} ({kind})"), ""]
        metric = HEADLINE.get(kind)
        if metric not in _metric_cols(rows):
            continue
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in block)
        series = "explainer" if any(r.get("explainer") for r in rows) and \
            len({r.get("explainer") for r in rows}) > 1 else "attack"
        p = _plot_budget(rows, metric, series, f"{block}: {metric} vs budget", out / f"{safe}_budget.png")
        if p:
            figs.append(str(p))
        if any("explainer" in r for r in rows) and any("attack" in r for r in rows):
            p = _plot_heatmap(rows, metric, f"{block}: {metric}", out / f"{safe}_heatmap.png")
            if p:
                figs.append(str(p))
    for f in figs:
        md.insert(2, f"![{Path(f).stem}]({Path(f).name})\n")
    if st["failed"]:
        md += ["## Failed cells\n"] + [f"- `{f['key']}`: {f['error']}" for f in st["failed"]] + [""]
    (out / "report.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    (out / "tables.tex").write_text("\n".join(tex) + "\n", encoding="utf-8")
    return {"markdown": str(out / "report.md"), "latex": str(out / "tables.tex"), "figures": figs,
            "blocks": list(tabs)}
