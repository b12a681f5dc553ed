"""Reproducible experiments that produce the results tables in the docs.

Each module has ``run(...) -> dict`` (rows plus a markdown table) and ``main(argv)`` so it
runs as ``python -m xadv.experiments.<name>`` and from the ``xadv`` command.
"""

from pathlib import Path
from typing import Any, Dict, Optional, Union


def write_outputs(out: Optional[Union[str, Path]], name: str, text: str, res: Dict[str, Any]) -> None:
    """Write ``<out>/<name>.md`` (the printed report) and ``<out>/<name>.json`` (rows and
    per-section seconds of ``res``); nothing when ``out`` is None."""
    if not out:
        return
    import json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from .._io import write_text

    write_text(out / f"{name}.md", text)
    write_text(out / f"{name}.json", json.dumps({"rows": res["rows"], "seconds": res["seconds"]}, indent=1))
