"""A self-contained HTML page from a report in markdown: figures inline (base64), tables, settings, versions."""
from __future__ import annotations

import base64
import html
import platform
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}
_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;max-width:980px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1,h2,h3{font-weight:600}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.8em 0;font-size:13px}th,td{border:1px solid #ccc;padding:3px 8px}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;height:auto;display:block;margin:.6em 0}code{background:#f4f4f4;padding:0 3px}
.meta{font-size:12px;color:#555}
"""


def _inline(text: str) -> str:
    s = html.escape(text, quote=False)
    s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
    s = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", s)
    s = re.sub(r"(?<![\w*])\*([^*\s][^*]*)\*(?![\w*])", r"<i>\1</i>", s)
    return s


def _image(alt: str, src: str, folder: Path) -> str:
    p = folder / src
    mime = _MIME.get(p.suffix.lower())
    if mime is None or not p.is_file():
        return f'<p>[{html.escape(alt)}: {html.escape(src)}]</p>'
    b64 = base64.b64encode(p.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:{mime};base64,{b64}">'


def _links(s: str, folder: Path) -> str:
    out, pos = [], 0
    for m in re.finditer(r"!\[([^\]]*)\]\(([^)]+)\)|\[([^\]]+)\]\(([^)]+)\)", s):
        out.append(_inline(s[pos:m.start()]))
        if m.group(2) is not None:
            out.append(_image(m.group(1), m.group(2), folder))
        else:
            out.append(f'<a href="{html.escape(m.group(4))}">{_inline(m.group(3))}</a>')
        pos = m.end()
    out.append(_inline(s[pos:]))
    return "".join(out)


def _cell(c: str, folder: Path, tag: str) -> str:
    c = c.strip()
    num = re.fullmatch(r"[-+−]?[\d.]+(e[-+]?\d+)?%?|\*\*[-\d.]+\*\*|nan|—", c) is not None
    return f'<{tag}{" class=num" if num and tag == "td" else ""}>{_links(c, folder)}</{tag}>'


def _table(lines: List[str], folder: Path) -> str:
    rows = [ln.strip().strip("|").split("|") for ln in lines]
    head, body = rows[0], [r for r in rows[2:]]
    s = ["<table><thead><tr>" + "".join(_cell(c, folder, "th") for c in head) + "</tr></thead><tbody>"]
    s += ["<tr>" + "".join(_cell(c, folder, "td") for c in r) + "</tr>" for r in body]
    return "\n".join(s + ["</tbody></table>"])


def markdown_to_html(text: str, folder: Union[str, Path] = ".") -> str:
    """The HTML body of a report in the markdown subset xadv writes.

    Headings, paragraphs, pipe tables, ``![alt](figure.png)`` images (read from
    ``folder`` and inlined as base64), links, inline code, bold and italics.
    """
    folder = Path(folder)
    out: List[str] = []
    lines = text.splitlines()
    i = 0
    para: List[str] = []

    def flush():
        if para:
            out.append("<p>" + "<br>".join(_links(p.rstrip(), folder) for p in para) + "</p>")
            para.clear()

    while i < len(lines):
        ln = lines[i]
        if not ln.strip():
            flush()
        elif ln.startswith("#"):
            flush()
            level = len(ln) - len(ln.lstrip("#"))
            out.append(f"<h{level}>{_inline(ln[level:].strip())}</h{level}>")
        elif ln.lstrip().startswith("|") and i + 1 < len(lines) and re.match(r"^\s*\|[\s:|-]+\|\s*$", lines[i + 1]):
            flush()
            j = i
            while j < len(lines) and lines[j].lstrip().startswith("|"):
                j += 1
            out.append(_table(lines[i:j], folder))
            i = j
            continue
        elif ln.startswith("```"):
            flush()
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            out.append("<pre>" + html.escape("\n".join(lines[i + 1:j])) + "</pre>")
            i = j + 1
            continue
        else:
            para.append(ln)
        i += 1
    flush()
    return "\n".join(out)


def versions() -> Dict[str, str]:
    """Python, platform and the versions of xadv and its main dependencies."""
    import importlib

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for m in ("xadv", "torch", "numpy", "matplotlib", "sklearn"):
        try:
            out[m] = getattr(importlib.import_module(m), "__version__", "?")
        except ImportError:
            pass
    return out


def html_report(markdown: str, path: Union[str, Path], *, folder: Optional[Union[str, Path]] = None,
                title: str = "xadv report", settings: Optional[Mapping[str, Any]] = None) -> Path:
    """Write a self-contained HTML page of a markdown report (figures inlined, settings and versions appended).

    Parameters
    ----------
    markdown : str
        The report text (the subset xadv writes: headings, paragraphs, pipe tables, images).
    path : str or Path
        The ``.html`` file to write.
    folder : path, optional
        Where the images the report names are (default: the folder of ``path``).
    title : str, default "xadv report"
    settings : dict, optional
        Shown in a table at the end with the software versions.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = html_report("# Demo\\n\\n| a | b |\\n|---|---|\\n| 1 | 2 |\\n", pathlib.Path(tempfile.mkdtemp()) / "r.html")
    >>> "<table>" in p.read_text()
    True
    """
    path = Path(path)
    folder = Path(folder) if folder is not None else path.parent
    meta = [("setting: " + str(k), str(v)) for k, v in (settings or {}).items()] + list(versions().items())
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in meta)
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
            f"{markdown_to_html(markdown, folder)}\n"
            f'<h2>Settings and versions</h2><table class="meta"><tbody>{rows}</tbody></table>\n</body></html>\n')
    from .._io import write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text(path, page)
