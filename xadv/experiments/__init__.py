"""Reproducible experiments that produce the results tables in the docs.

Each module has ``run(...) -> dict`` (rows plus a markdown table) and ``main(argv)`` so it
runs as ``python -m xadv.experiments.<name>`` and from the ``xadv`` command.
"""

import sys
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

#: options that do not change an experiment's numbers (left out of the manifest's settings)
_NOT_SETTINGS = ("out", "json", "progress", "threads", "latex")


def run_in_folder(name: str, args: Any, body: Callable[[], int]) -> int:
    """Run an experiment's ``body()`` with its ``--out`` folder taken like the ``xadv`` commands take theirs.

    With ``args.out`` set, the folder gets ``manifest.json`` (command, xadv version, seed,
    settings, per-file sha256, ``complete``) and a lock (:class:`xadv._io.OutputFolder`)
    *before* the experiment starts: a second concurrent run into the folder, a folder
    holding results of another seed or other settings, ``--out`` naming a file, a full
    disk or a read-only folder end with one line on stderr and exit status 2, not a
    traceback after minutes of work. The settings are the parsed options except
    ``--out``, ``--json``, ``--progress``, ``--threads`` and ``--latex``.
    """
    from .._io import FolderError, OutputFolder, os_error_message

    prog = f"python -m xadv.experiments.{name}"
    out = getattr(args, "out", None)
    try:
        if not out:
            return int(body() or 0)
        settings = {k: v for k, v in sorted(vars(args).items()) if k not in _NOT_SETTINGS}
        with OutputFolder(out, prog, seed=getattr(args, "seed", None), settings=settings):
            return int(body() or 0)
    except FolderError as err:
        print(f"{prog}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"{prog}: error: {os_error_message(err)}", file=sys.stderr)
        return 2


def write_outputs(out: Optional[Union[str, Path]], name: str, text: str, res: Dict[str, Any]) -> None:
    """Write ``<out>/<name>.md`` (the printed report), ``<out>/<name>.html`` (the same, self-contained) and ``<out>/<name>.json`` (rows and
    per-section seconds of ``res``); nothing when ``out`` is None."""
    if not out:
        return
    import json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from .._io import write_text

    write_text(out / f"{name}.md", text)
    from ..plot import html_report

    html_report(text, out / f"{name}.html", title=f"xadv experiment: {name}")
    write_text(out / f"{name}.json", json.dumps({"rows": res["rows"], "seconds": res["seconds"]}, indent=1))


def strength(run, steps: int, metric: float, *, higher_is_stronger: bool, tol: float) -> Dict[str, Any]:
    """The strength column of an experiment row: does a stronger attack move the metric?

    ``run(steps, restarts) -> float`` repeats the row's attack with ``2 * steps`` steps and
    2 restarts; if that improves the attacker's side of ``metric`` by more than ``tol``,
    the row's number is only a bound on what the attack can do (``"bound"``), otherwise it
    has converged within ``tol`` (``"converged"``).

    Returns ``{"strength": str, "strength_delta": float}`` (delta > 0: the stronger run
    was stronger by that much).
    """
    stronger = float(run(2 * steps, 2))
    delta = (stronger - metric) if higher_is_stronger else (metric - stronger)
    label = (f"converged (2x steps, 2 restarts: {delta:+.3f}, tol {tol:g})" if delta <= tol else
             f"bound (2x steps, 2 restarts: {delta:+.3f} > {tol:g})")
    return {"strength": label, "strength_delta": delta}
