"""Running a grid: the driver, the local and the Ray backends, resume and change detection."""
from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

from .cells import execute, versions
from .grid import canonical, expand, grid_hash, load_grid
from .store import Store

BACKENDS = ("local", "ray")


class SweepError(RuntimeError):
    """The database and the requested run do not fit (changed grid or version, existing results)."""


def _check(store: Store, g: Mapping[str, Any], cells: Sequence[Mapping[str, Any]], resume: bool,
           allow_changes: bool) -> List[str]:
    """Compare the database with the grid and the installed xadv; returns notes (raises if refused)."""
    meta = store.meta()
    notes: List[str] = []
    if not meta:
        return notes
    if not resume:
        n = sum(store.counts().values())
        raise SweepError(f"{store.path} already holds a sweep ({meta.get('grid_name')!r}, {n} cells); "
                         f"pass resume=True (--resume) to continue it, or use a new database file")
    old_v, new_v = meta.get("xadv_version"), versions()["xadv"]
    if old_v != new_v:
        notes.append(f"xadv version changed: the database was written by xadv {old_v}, this is xadv {new_v}")
    if meta.get("grid_hash") != grid_hash(cells):
        have = set(store.keys())
        want = {c["key"] for c in cells}
        notes.append(f"grid changed: {len(want - have)} new cell(s), {len(have - want)} cell(s) in the database "
                     f"not in the grid (kept, not run)")
    if notes and not allow_changes:
        raise SweepError("; ".join(notes) + ". Pass allow_changes=True (--allow-changes) to resume anyway, or "
                         "use a new database file")
    return notes


def _local(todo, workers: int, on_result, on_submit) -> None:
    if workers <= 1:
        for c in todo:
            on_submit([c["key"]])
            on_result(execute(c["key"], c["params"]))
        return
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = mp.get_context("spawn")          # no fork of a process holding torch threads and the database
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        pending = {}
        try:
            for c in todo:
                pending[pool.submit(execute, c["key"], c["params"])] = c["key"]
            on_submit(list(pending.values()))
            while pending:
                done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                for f in done:
                    pending.pop(f)
                    on_result(f.result())
        except BaseException:
            for f in pending:
                f.cancel()
            raise


def _ray(todo, address: Optional[str], num_gpus: float, max_retries: int, on_result, on_submit,
         num_cpus: float = 1) -> None:
    try:
        import ray
    except ImportError:
        raise ImportError("backend='ray' needs ray: pip install 'xadv[sweep]'") from None
    started_here = False
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
        started_here = True
    try:
        task = ray.remote(execute).options(num_cpus=num_cpus, num_gpus=num_gpus or 0, max_retries=max_retries,
                                          retry_exceptions=False)
        refs = {task.remote(c["key"], c["params"]): c["key"] for c in todo}
        on_submit(list(refs.values()))
        try:
            while refs:
                done, _ = ray.wait(list(refs), num_returns=1)
                for r in done:
                    key = refs.pop(r)
                    try:
                        out = ray.get(r)
                    except ray.exceptions.RayError as e:     # worker died beyond max_retries, task cancelled...
                        out = {"key": key, "status": "failed", "rows": [], "error": f"{type(e).__name__}: {e}",
                               "traceback": str(e), "versions": versions()}
                    on_result(out)
        except BaseException:
            for r in refs:
                ray.cancel(r, force=True)
            raise
    finally:
        if started_here:
            ray.shutdown()


def run(grid: Union[str, Path, Mapping[str, Any]], db: Union[str, Path], *, backend: str = "local",
        workers: int = 1, address: Optional[str] = None, num_gpus: float = 0, max_retries: int = 2,
        resume: bool = False, allow_changes: bool = False, progress: Optional[bool] = None,
        callback: Optional[Callable[[Dict[str, Any]], None]] = None) -> Dict[str, Any]:
    """Run every cell of ``grid`` not yet done in ``db``; returns a summary.

    Parameters
    ----------
    grid : dict, or path of a TOML/YAML grid, or the name of a shipped grid (``"attacks"``)
    db : path of the DuckDB results database (created if missing)
    backend : {"local", "ray"}, default "local"
        ``local`` runs the cells in this process (``workers=1``) or in a pool of
        ``workers`` processes; ``ray`` submits one task per cell to a Ray cluster.
    workers : int, default 1
        Local processes (``backend="local"``).
    address : str, optional
        Ray cluster address (``"auto"``, ``"ray://head:10001"``); default: the running
        Ray instance, or a new local one.
    num_gpus : float, default 0
        GPUs requested per Ray task.
    max_retries : int, default 2
        Ray retries of a task whose worker died (a cell that raises is not retried: it is
        recorded as failed).
    resume : bool, default False
        Continue a database: done cells are skipped, failed and interrupted ones re-run.
        Without it an existing sweep in ``db`` is an error.
    allow_changes : bool, default False
        Resume even though the grid or the xadv version changed (reported in ``notes``).
    progress : bool or None, default None
        One bar over the cells (on stderr); None: shown in terminals and notebooks, off in
        pipes and tests (see :func:`xadv.set_progress`).
    callback : callable, optional
        Called with each finished cell's record after it is committed.

    Returns
    -------
    dict
        ``{"cells", "ran", "done", "failed", "skipped", "seconds", "notes", "backend"}``.

    Examples
    --------
    >>> import tempfile, os
    >>> g = {"name": "tiny", "kind": "attack", "attacks": ["FGSM"], "budgets": [0.1],
    ...      "data": {"name": "digits", "n": 8}}
    >>> s = run(g, os.path.join(tempfile.mkdtemp(), "s.duckdb"), progress=False)
    >>> s["done"], s["failed"]
    (1, 0)
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if int(workers) < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    g = load_grid(grid)
    cells = expand(g)
    t0 = time.perf_counter()
    with Store(db) as store:
        notes = _check(store, g, cells, resume, allow_changes)
        if not store.meta():
            store.set_meta(grid_name=g.get("name", "grid"), grid=canonical(g), grid_hash=grid_hash(cells),
                           xadv_version=versions()["xadv"],
                           created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        elif notes:
            store.set_meta(grid=canonical(g), grid_hash=grid_hash(cells), xadv_version=versions()["xadv"])
        store.add_cells(cells)
        status = store.keys()
        todo = [c for c in cells if status.get(c["key"]) != "done"]
        from .._progress import bar as progress_bar

        bar = progress_bar(len(cells), "sweep", progress=progress, unit="cell", leave=True,
                           initial=len(cells) - len(todo))
        counts = {"done": 0, "failed": 0}
        running: set = set()

        def on_submit(keys):
            store.mark_running(keys)
            running.update(keys)

        def on_result(out):
            store.commit_cell(out)
            running.discard(out["key"])
            counts[out["status"]] = counts.get(out["status"], 0) + 1
            bar.update(1)
            bar.set_postfix(failed=counts["failed"], refresh=False)
            if callback is not None:
                callback(out)

        try:
            if backend == "local":
                _local(todo, int(workers), on_result, on_submit)
            else:
                _ray(todo, address, num_gpus, max_retries, on_result, on_submit)
        except BaseException:
            store.mark(sorted(running), "interrupted")
            raise
        finally:
            bar.close()
    return {"cells": len(cells), "ran": len(todo), "done": counts["done"], "failed": counts["failed"],
            "skipped": len(cells) - len(todo), "seconds": time.perf_counter() - t0, "notes": notes,
            "backend": backend}


def status(db: Union[str, Path]) -> Dict[str, Any]:
    """Counts per status, the grid's name, versions and the failed cells' errors of a database."""
    with Store(db, read_only=True) as st:
        meta = st.meta()
        failed = [{"key": c["key"], "error": c["error"], "params": c["params"]} for c in st.cells("failed")]
        total = st.con.execute("SELECT sum(duration), min(started), max(finished) FROM cells").fetchone()
        return {"grid": meta.get("grid_name"), "grid_hash": meta.get("grid_hash"),
                "xadv_version": meta.get("xadv_version"), "installed_xadv": versions()["xadv"],
                "counts": st.counts(), "cell_seconds": total[0], "first_start": str(total[1]),
                "last_finish": str(total[2]), "failed": failed}
