"""Experiment grids with a results database, resume, and local or Ray backends.

A grid (dict, TOML or YAML) expands into cells, each a pure function of its JSON
parameters that returns rows of metrics (:mod:`xadv.sweep.cells`). :func:`run`
executes the cells not yet done in a DuckDB database (:class:`Store`), in this
process, a process pool or on a Ray cluster; :func:`report` writes tables and
figures from the database. ``duckdb`` (and ``ray`` for the Ray backend) come with
``pip install 'xadv[sweep]'``.

>>> import tempfile, os
>>> import xadv.sweep as sw
>>> db = os.path.join(tempfile.mkdtemp(), "tiny.duckdb")
>>> grid = {"name": "tiny", "kind": "attack", "attacks": ["FGSM"], "budgets": [0.1, 0.2],
...         "data": {"name": "digits", "n": 16}}
>>> sw.run(grid, db, progress=False)["done"]
2
>>> sorted(r["eps"] for r in sw.Store(db, read_only=True).rows())
[0.1, 0.2]
"""
from .cells import execute, run_cell
from .grid import GridError, canonical, cell_key, expand, grid_hash, load_grid
from .report import report, tables
from .run import SweepError, run, status
from .store import Store

__all__ = ["run", "status", "report", "tables", "expand", "load_grid", "cell_key", "canonical", "grid_hash",
           "Store", "execute", "run_cell", "GridError", "SweepError"]
