"""Reproducible experiments that produce the results tables in the docs.

Each module has ``run(...) -> dict`` (rows plus a markdown table) and ``main(argv)`` so it
runs as ``python -m xadv.experiments.<name>`` and from the ``xadv`` command.
"""

from pathlib import Path
from typing import Any, Dict, Optional, Union


def write_outputs(out: Optional[Union[str, Path]], name: str, text: str, res: Dict[str, Any]) -> None:
    """Write ``<out>/<name>.md`` (the printed report), ``<out>/<name>.html`` (the same, self-contained) and ``<out>/<name>.json`` (rows and
    per-section seconds of ``res``); nothing when ``out`` is None."""
    if not out:
        return
    import json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(text)
    from ..plot import html_report

    html_report(text, out / f"{name}.html", title=f"xadv experiment: {name}")
    (out / f"{name}.json").write_text(json.dumps({"rows": res["rows"], "seconds": res["seconds"]}, indent=1))
