"""``xadv sweep run|status|report``: the sweep sub-commands (registered by :mod:`xadv.cli`)."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

_EPILOG = """\
examples:
  xadv sweep run attacks --db attacks.duckdb                 the shipped grid xadv/sweep/grids/attacks.toml
  xadv sweep run my_grid.toml --db s.duckdb --workers 2      a local pool of 2 processes
  xadv sweep run my_grid.toml --db s.duckdb --backend ray --address auto
  xadv sweep run my_grid.toml --db s.duckdb --resume         skip done cells, re-run failed/interrupted
  xadv sweep status --db s.duckdb
  xadv sweep report --db s.duckdb --out report/
"""


def register(sub) -> None:
    """Add the ``sweep`` parser (with ``run``, ``status``, ``report``) to ``sub``."""
    fmt = argparse.RawDescriptionHelpFormatter
    sp = sub.add_parser("sweep", help="run experiment grids into a results database (local or Ray)",
                        formatter_class=fmt, epilog=_EPILOG,
                        description="Experiment grids: every cell is recorded in a DuckDB database, runs resume, "
                                    "tables and figures are queries of the database. Needs pip install "
                                    "'xadv[sweep]'.")
    ss = sp.add_subparsers(dest="sweep_command", metavar="SWEEP_COMMAND")
    r = ss.add_parser("run", help="run the cells of a grid not yet done", formatter_class=fmt, epilog=_EPILOG)
    r.add_argument("grid", help="grid file (.toml, .yaml) or the name of a shipped grid (attacks)")
    r.add_argument("--db", required=True, help="DuckDB results database (created if missing)")
    r.add_argument("--backend", default="local", choices=["local", "ray"])
    r.add_argument("--address", default=None, help="Ray cluster address (default: a local Ray instance)")
    r.add_argument("--workers", type=int, default=1, help="local worker processes (default 1: in this process)")
    r.add_argument("--num-gpus", type=float, default=0, help="GPUs per Ray task (default 0)")
    r.add_argument("--max-retries", type=int, default=2, help="Ray retries of a task whose worker died")
    r.add_argument("--resume", action="store_true", help="continue the database: skip done cells")
    r.add_argument("--allow-changes", action="store_true",
                   help="resume even if the grid or the xadv version changed")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    s = ss.add_parser("status", help="cell counts, versions and errors of a database")
    s.add_argument("--db", required=True)
    s.add_argument("--json", action="store_true", help="print JSON")
    p = ss.add_parser("report", help="markdown/LaTeX tables and PNG figures from a database")
    p.add_argument("--db", required=True)
    p.add_argument("--out", required=True, help="output directory")
    sp.set_defaults(func=main_args, _sweep_parser=sp)


def main_args(a) -> int:
    """Run a parsed ``xadv sweep`` command; user errors print one line and return 2."""
    from .grid import GridError
    from .run import SweepError
    from .store import StoreLocked

    if not getattr(a, "sweep_command", None):
        a._sweep_parser.print_help()
        return 0
    try:
        if a.sweep_command == "run":
            from .run import run

            s = run(a.grid, a.db, backend=a.backend, workers=a.workers, address=a.address, num_gpus=a.num_gpus,
                    max_retries=a.max_retries, resume=a.resume, allow_changes=a.allow_changes, progress=False if a.quiet else None)
            for n in s["notes"]:
                print(f"note: {n}")
            print(f"{s['cells']} cells: {s['done']} done, {s['failed']} failed, {s['skipped']} already done; "
                  f"{s['seconds']:.1f} s on backend {s['backend']} -> {a.db}")
            return 1 if s["failed"] else 0
        if a.sweep_command == "status":
            from .run import status

            st = status(a.db)
            if a.json:
                print(json.dumps(st, indent=1, default=str))
                return 0
            print(f"grid {st['grid']} ({st['grid_hash']}), written by xadv {st['xadv_version']} "
                  f"(installed {st['installed_xadv']})")
            print("cells: " + ", ".join(f"{k} {v}" for k, v in st["counts"].items()) +
                  f"; {st['cell_seconds'] or 0:.1f} s of cell time")
            for f in st["failed"]:
                print(f"failed {f['key']}: {f['error']}")
            return 0
        from .report import report

        r = report(a.db, a.out)
        print(f"wrote {r['markdown']}, {r['latex']} and {len(r['figures'])} figure(s)")
        return 0
    except (GridError, SweepError, StoreLocked, FileNotFoundError, ImportError) as e:
        print(f"xadv sweep {a.sweep_command}: error: {e}", file=sys.stderr)
        return 2


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m xadv.sweep.cli ...`` (the same as ``xadv sweep ...``)."""
    p = argparse.ArgumentParser(prog="xadv")
    register(p.add_subparsers(dest="command"))
    return main_args(p.parse_args(["sweep", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
