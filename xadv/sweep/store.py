"""The results database: a DuckDB file with a table of cells and a long table of results.

Schema
------
``meta(key TEXT PRIMARY KEY, value TEXT)``
    ``grid_name``, ``grid_hash`` (hash of the set of cell keys), ``grid`` (the grid as
    JSON), ``xadv_version``, ``created``.
``cells``
    ``key`` (primary key), ``block``, ``kind``, ``params`` (JSON), ``status`` (``pending``,
    ``running``, ``done``, ``failed``, ``interrupted``), ``seed``, ``attempts``,
    ``started``/``finished`` (UTC timestamps), ``duration`` (seconds in the cell),
    ``xadv_version``, ``torch_version``, ``host``, ``n_rows``, ``error``, ``traceback``.
``results(cell_key, row, metric, value DOUBLE, text TEXT)``
    One line per (cell, row index, metric): numbers in ``value`` (``text`` is ``int`` for
    integers, ``nan`` for NaN/Inf with ``value`` NULL), strings and booleans (as
    ``true``/``false``) in ``text``.

The driver is the only writer. A finished cell is written in one transaction (its
results and its status together), so a crash leaves either all of a cell's rows or
none of them.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)",
    """CREATE TABLE IF NOT EXISTS cells (
        key TEXT PRIMARY KEY, block TEXT, kind TEXT, params TEXT, status TEXT, seed BIGINT,
        attempts INTEGER DEFAULT 0, started TIMESTAMP, finished TIMESTAMP, duration DOUBLE,
        xadv_version TEXT, torch_version TEXT, host TEXT, n_rows INTEGER, error TEXT, traceback TEXT)""",
    """CREATE TABLE IF NOT EXISTS results (
        cell_key TEXT, row INTEGER, metric TEXT, value DOUBLE, text TEXT,
        PRIMARY KEY (cell_key, row, metric))""",
]


class StoreLocked(RuntimeError):
    """The database file is held by another process (DuckDB allows one writer)."""


def _duckdb():
    try:
        import duckdb
    except ImportError:
        raise ImportError("the sweep results database needs duckdb: pip install 'xadv[sweep]'") from None
    return duckdb


class Store:
    """A sweep's DuckDB database (one writer: the driver process).

    Parameters
    ----------
    path : str or Path
        The database file (created if missing).
    read_only : bool, default False

    Examples
    --------
    >>> import tempfile, os
    >>> with Store(os.path.join(tempfile.mkdtemp(), "s.duckdb")) as st:
    ...     st.counts()
    {}
    """

    def __init__(self, path: Union[str, Path], read_only: bool = False):
        duckdb = _duckdb()
        self.path = Path(path)
        if read_only and not self.path.is_file():
            raise FileNotFoundError(f"sweep database {str(path)!r} does not exist")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.con = duckdb.connect(str(self.path), read_only=read_only)
        except duckdb.IOException as e:
            if "lock" not in str(e).lower():
                raise
            raise StoreLocked(f"{self.path} is open in another process (a running sweep is the only writer; "
                              f"wait for it to finish, or copy the file to read it): {e}") from None
        if not read_only:
            for s in _SCHEMA:
                self.con.execute(s)

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ meta
    def meta(self) -> Dict[str, str]:
        return dict(self.con.execute("SELECT key, value FROM meta").fetchall())

    def set_meta(self, **kv: str) -> None:
        self.con.execute("BEGIN TRANSACTION")
        for k, v in kv.items():
            self.con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [k, str(v)])
        self.con.execute("COMMIT")

    # ------------------------------------------------------------ cells
    def keys(self) -> Dict[str, str]:
        """``{cell key: status}``."""
        return dict(self.con.execute("SELECT key, status FROM cells").fetchall())

    def add_cells(self, cells: Sequence[Mapping[str, Any]]) -> int:
        """Insert cells not yet in the table as ``pending``; returns how many were new."""
        have = set(self.keys())
        new = [c for c in cells if c["key"] not in have]
        self.con.execute("BEGIN TRANSACTION")
        for c in new:
            p = c["params"]
            self.con.execute("INSERT INTO cells (key, block, kind, params, status, seed, attempts) "
                             "VALUES (?, ?, ?, ?, 'pending', ?, 0)",
                             [c["key"], p.get("block"), p.get("kind"), json.dumps(p, sort_keys=True), p.get("seed")])
        self.con.execute("COMMIT")
        return len(new)

    def mark_running(self, keys: Sequence[str]) -> None:
        self.con.execute("BEGIN TRANSACTION")
        for k in keys:
            self.con.execute("UPDATE cells SET status = 'running', attempts = attempts + 1, "
                             "started = now()::TIMESTAMP WHERE key = ?", [k])
        self.con.execute("COMMIT")

    def mark(self, keys: Sequence[str], status: str) -> None:
        self.con.execute("BEGIN TRANSACTION")
        for k in keys:
            self.con.execute("UPDATE cells SET status = ? WHERE key = ? AND status = 'running'", [status, k])
        self.con.execute("COMMIT")

    def commit_cell(self, out: Mapping[str, Any]) -> None:
        """Write one finished cell (``cells.execute`` output) and its rows in one transaction."""
        key = out["key"]
        v = out.get("versions", {})
        rows = out.get("rows") or []
        lines = []
        for i, r in enumerate(rows):
            for m, val in r.items():
                if isinstance(val, bool):
                    lines.append((key, i, m, None, "true" if val else "false"))
                elif isinstance(val, int):
                    lines.append((key, i, m, float(val), "int"))
                elif isinstance(val, float):
                    f = float(val)
                    lines.append((key, i, m, f if math.isfinite(f) else None, None if math.isfinite(f) else "nan"))
                else:
                    lines.append((key, i, m, None, None if val is None else str(val)))
        self.con.execute("BEGIN TRANSACTION")
        try:
            self.con.execute("DELETE FROM results WHERE cell_key = ?", [key])
            if lines:
                self.con.executemany("INSERT INTO results VALUES (?, ?, ?, ?, ?)", lines)
            self.con.execute(
                "UPDATE cells SET status = ?, started = ?::TIMESTAMP, finished = ?::TIMESTAMP, duration = ?, "
                "xadv_version = ?, torch_version = ?, host = ?, n_rows = ?, error = ?, traceback = ? WHERE key = ?",
                [out["status"], out.get("started"), out.get("finished"), out.get("duration"), v.get("xadv"),
                 v.get("torch"), out.get("host"), len(rows), out.get("error"), out.get("traceback"), key])
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise

    def counts(self) -> Dict[str, int]:
        """``{status: number of cells}``."""
        return dict(self.con.execute("SELECT status, count(*) FROM cells GROUP BY status ORDER BY status").fetchall())

    def cells(self, status: Optional[str] = None) -> List[Dict[str, Any]]:
        """The cells table as dicts (``params`` parsed)."""
        q = "SELECT * FROM cells" + (" WHERE status = ?" if status else "") + " ORDER BY key"
        cur = self.con.execute(q, [status] if status else [])
        cols = [d[0] for d in cur.description]
        out = []
        for r in cur.fetchall():
            d = dict(zip(cols, r))
            d["params"] = json.loads(d["params"])
            out.append(d)
        return out

    def rows(self, kind: Optional[str] = None) -> List[Dict[str, Any]]:
        """Every result row of the done cells, flattened with the cell's parameters.

        Columns: ``cell``, ``row``, ``block``, ``kind``, ``model``, ``data``,
        ``explainer``, ``attack``, ``detector``, ``metric_fn``, ``eps``, ``seed`` (names of
        the specs; their parameters in ``*_params``) and the row's metrics.
        """
        q = ("SELECT c.key, c.params, r.row, r.metric, r.value, r.text FROM results r JOIN cells c "
             "ON c.key = r.cell_key WHERE c.status = 'done'" + (" AND c.kind = ?" if kind else "") +
             " ORDER BY c.key, r.row, r.metric")
        out: Dict[Any, Dict[str, Any]] = {}
        for key, params, row, metric, value, text in self.con.execute(q, [kind] if kind else []).fetchall():
            d = out.get((key, row))
            if d is None:
                d = out[(key, row)] = {"cell": key, "row": row, **flatten_params(json.loads(params))}
            d[metric] = _value(value, text)
        return list(out.values())


    def cell_rows(self, kind: Optional[str] = None) -> List[Dict[str, Any]]:
        """Every done cell with its own rows (no parameter columns): ``[{"key", "params", "rows"}]``,
        ordered by key; the rows of a cell in their order."""
        q = ("SELECT c.key, c.params, r.row, r.metric, r.value, r.text FROM cells c LEFT JOIN results r "
             "ON c.key = r.cell_key WHERE c.status = 'done'" + (" AND c.kind = ?" if kind else "") +
             " ORDER BY c.key, r.row, r.metric")
        cells: Dict[str, Dict[str, Any]] = {}
        for key, params, row, metric, value, text in self.con.execute(q, [kind] if kind else []).fetchall():
            c = cells.setdefault(key, {"key": key, "params": json.loads(params), "rows": {}})
            if row is None:
                continue
            c["rows"].setdefault(row, {})[metric] = _value(value, text)
        return [{**c, "rows": [c["rows"][i] for i in sorted(c["rows"])]} for c in cells.values()]


def _value(value, text):
    if text is None:
        return value
    if text == "int":
        return int(value)
    if text in ("true", "false"):
        return text == "true"
    if text == "nan":
        return float("nan")
    return text


def _label(spec: Any) -> Optional[str]:
    if spec is None:
        return None
    if isinstance(spec, str):
        return spec
    if isinstance(spec, Mapping):
        name = spec.get("name") or spec.get("factory") or spec.get("zoo") or spec.get("file")
        extra = {k: v for k, v in spec.items() if k not in ("name",)}
        args = ", ".join(f"{k}={_label(v) if isinstance(v, Mapping) else v}" for k, v in sorted(extra.items()))
        return f"{name}({args})" if extra else str(name)
    return str(spec)


def flatten_params(p: Mapping[str, Any]) -> Dict[str, Any]:
    """Cell parameters as flat columns: spec labels such as ``PGD(steps=10)``, ``eps``, ``seed``."""
    out = {"block": p.get("block"), "kind": p.get("kind"), "model": _label(p.get("model")),
           "data": _label(p.get("data"))}
    for k, col in (("explainer", "explainer"), ("attack", "attack"), ("detector", "detector"),
                   ("metric", "metric_fn")):
        if k in p:
            out[col] = _label(p[k])
    if "eps" in p:
        out["eps"] = p["eps"]
    out["seed"] = p.get("seed")
    out["budget_param"] = (p.get("options") or {}).get("budget_param", "eps")
    return out
