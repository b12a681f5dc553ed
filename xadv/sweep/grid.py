"""Declarative experiment grids: a dict, TOML or YAML file expanded into cells.

A grid is a mapping with a ``name`` and one or more ``blocks``; every key outside
``blocks`` is a default for each block (a grid without ``blocks`` is one block). A
block names a cell ``kind`` and its axes; the cells are the Cartesian product of the
axes that apply to the kind:

===============  =====================================================================
axis             values
===============  =====================================================================
``models``       zoo names (``"digits_cnn"``), ``"module:factory"``, a TorchScript file,
                 or ``{factory = "module:factory", weights = "state_dict.pt"}``
``data``         ``{name = "digits", split = "test", n = 64, correct = true}`` (a loader
                 of :mod:`xadv.data`, ``load_<name>`` with its options), or a list of them
``explainers``   registry names or ``{name = "ig", steps = 16}``
``attacks``      :mod:`xadv.attacks` / :mod:`xadv.fooling` class names (case-insensitive;
                 ``"pgd"``, ``"topk"``...) or ``{name = "PGD", steps = 10}``
``detectors``    :mod:`xadv.detectors` class names or ``{name = ..., params}``
``metrics``      :mod:`xadv.metrics` function names or ``{name = ..., params}``
``budgets``      ``eps`` values given to the attack (or fooling attack, or detector attack)
``seeds``        integers
``parts``        ``experiment`` blocks: parts of the experiment (default all of them)
===============  =====================================================================

An ``experiment`` block (``experiment = "attacks"``, ``"fooling"`` or ``"detection"``)
runs parts of :mod:`xadv.experiments` (sections, one explainer's rows, one detector) with
the ``settings`` table passed to the experiment's ``run``; the rows are the experiment's.

Each cell's parameters are plain JSON; its key is the SHA-256 of their canonical
JSON (sorted keys), so the same cell has the same key in every grid and every run.
"""
from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

KINDS = ("attack", "fooling", "detection", "explain-metric", "experiment")

#: axes each kind expands over (others are ignored for the kind, with an error if given)
_AXES = {
    "attack": ("models", "data", "attacks", "explainers", "budgets", "seeds"),
    "fooling": ("models", "data", "attacks", "explainers", "budgets", "seeds"),
    "detection": ("models", "data", "detectors", "explainers", "attacks", "budgets", "seeds"),
    "explain-metric": ("models", "data", "explainers", "metrics", "seeds"),
    "experiment": ("parts", "seeds"),
}
_REQUIRED = {"attack": ("attacks",), "fooling": ("attacks", "explainers"), "detection": ("detectors",),
             "explain-metric": ("explainers", "metrics"), "experiment": ("experiment",)}
_SINGULAR = {"models": "model", "data": "data", "attacks": "attack", "explainers": "explainer",
             "detectors": "detector", "metrics": "metric", "budgets": "eps", "seeds": "seed", "parts": "part"}
_BLOCK_KEYS = set(_SINGULAR) | {"kind", "name", "label", "options", "experiment", "settings"}


class GridError(ValueError):
    """A grid that cannot be expanded: the message says which key is wrong and what it expects."""


def canonical(obj: Any) -> str:
    """Canonical JSON text of ``obj`` (sorted keys, no spaces): the input of :func:`cell_key`."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def cell_key(params: Mapping[str, Any]) -> str:
    """Stable key of a cell: the first 16 hex digits of SHA-256 of its canonical parameters.

    Examples
    --------
    >>> cell_key({"kind": "attack", "seed": 0}) == cell_key({"seed": 0, "kind": "attack"})
    True
    """
    return hashlib.sha256(canonical(params).encode()).hexdigest()[:16]


def load_grid(source: Union[str, Path, Mapping[str, Any]]) -> Dict[str, Any]:
    """Read a grid from a dict, a ``.toml`` file or a ``.yaml``/``.yml`` file (PyYAML's safe loader).

    A bare name such as ``"attacks"`` is a grid shipped in ``xadv/sweep/grids/``.
    """
    if isinstance(source, Mapping):
        return json.loads(canonical(dict(source)))          # a JSON-only deep copy; rejects objects early
    path = Path(source)
    if not path.exists() and not path.suffix:
        shipped = Path(__file__).parent / "grids" / f"{source}.toml"
        if shipped.is_file():
            path = shipped
    if not path.is_file():
        known = sorted(p.stem for p in (Path(__file__).parent / "grids").glob("*.toml"))
        raise GridError(f"grid file {str(source)!r} does not exist (shipped grids: {', '.join(known)})")
    ext = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    if ext == ".toml":
        import tomllib

        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise GridError(f"{path}: not valid TOML: {e}") from None
    if ext in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise GridError(f"{path}: reading YAML grids needs PyYAML: pip install 'xadv[sweep]' (or pyyaml); "
                            f"or write the grid as TOML or JSON") from None
        try:
            data = yaml.safe_load(text)     # the safe loader only: no tags that build Python objects
        except yaml.YAMLError as e:
            raise GridError(f"{path}: not a valid YAML grid (only plain YAML is read; tags such as "
                            f"!!python/... are refused): {str(e).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise GridError(f"{path}: a grid is a mapping at the top level, got {type(data).__name__}")
        return data
    if ext == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise GridError(f"{path}: not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise GridError(f"{path}: a grid is a mapping at the top level, got {type(data).__name__}")
        return data
    raise GridError(f"{path}: grids are .toml, .yaml/.yml or .json files, got {ext or 'no extension'!r}")


def _spec(v: Any, axis: str) -> Any:
    """Normalise one axis value: names stay strings, dicts must carry a name (not for data/models)."""
    if axis in ("budgets",):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise GridError(f"budgets must be numbers (eps values), got {v!r}")
        return v
    if axis == "parts":
        if not isinstance(v, str):
            raise GridError(f"parts are names of parts of the experiment, got {v!r}")
        return v
    if axis == "seeds":
        if isinstance(v, bool) or not isinstance(v, int):
            raise GridError(f"seeds must be integers, got {v!r}")
        return v
    if isinstance(v, str):
        return {"name": v} if axis in ("attacks", "explainers", "detectors", "metrics", "data") else v
    if isinstance(v, Mapping):
        d = dict(v)
        if axis in ("attacks", "explainers", "detectors", "metrics", "data") and not isinstance(d.get("name"), str):
            raise GridError(f"each entry of {axis} needs a 'name', got {d!r}")
        if axis == "models" and not ({"factory", "zoo", "file"} & set(d)):
            raise GridError(f"a model entry is a string or a table with 'factory' (module:fn), 'zoo' or 'file', "
                            f"got {d!r}")
        return d
    raise GridError(f"{axis} entries must be names or tables of parameters, got {v!r}")


def _as_list(v: Any, axis: str) -> List[Any]:
    vals = v if isinstance(v, list) else [v]
    if not vals:
        raise GridError(f"axis {axis!r} is empty")
    return [_spec(x, axis) for x in vals]


def expand(grid: Union[str, Path, Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """The cells of a grid, in a deterministic order: ``[{"key": ..., "params": {...}}, ...]``.

    Examples
    --------
    >>> cells = expand({"name": "g", "kind": "attack", "models": ["digits_cnn"], "attacks": ["FGSM", "PGD"],
    ...                 "budgets": [0.1, 0.2], "seeds": [0], "data": {"name": "digits", "n": 8}})
    >>> len(cells), cells[0]["params"]["attack"], cells[0]["params"]["eps"]
    (4, {'name': 'FGSM'}, 0.1)
    """
    g = load_grid(grid)
    if not isinstance(g.get("name", "grid"), str):
        raise GridError("the grid's 'name' must be a string")
    defaults = {k: v for k, v in g.items() if k not in ("blocks", "description")}
    blocks = g.get("blocks") or [{}]
    if not isinstance(blocks, list) or not all(isinstance(b, Mapping) for b in blocks):
        raise GridError("'blocks' must be a list of tables (TOML: [[blocks]])")
    cells: List[Dict[str, Any]] = []
    seen = set()
    for bi, b in enumerate(blocks):
        kind0 = b.get("kind", defaults.get("kind"))
        # grid-level axes are defaults for the blocks they apply to (models do not apply to experiment cells)
        blk = {**{k: v for k, v in defaults.items() if k != "name" and not (
            g.get("blocks") and k in _SINGULAR and kind0 in _AXES and k not in _AXES[kind0])}, **b}
        unknown = set(blk) - _BLOCK_KEYS
        if unknown:
            raise GridError(f"block {bi}: unknown keys {sorted(unknown)}; a block has "
                            f"{', '.join(sorted(_BLOCK_KEYS))}")
        kind = blk.get("kind")
        if kind not in KINDS:
            raise GridError(f"block {bi}: 'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
        for req in _REQUIRED[kind]:
            if req not in blk:
                raise GridError(f"block {bi} ({kind}): needs {req!r}")
        axes = _AXES[kind]
        extra = [a for a in _SINGULAR if a in blk and a not in axes]
        if extra:
            raise GridError(f"block {bi} ({kind}): {extra} do not apply to {kind} cells (axes: {', '.join(axes)})")
        if kind == "experiment":
            _check_experiment(blk, bi)
        else:
            blk.setdefault("models", ["digits_cnn"])
            blk.setdefault("data", {"name": "digits"})
        blk.setdefault("seeds", [0])
        present = [a for a in axes if a in blk]
        values = [_as_list(blk[a], a) for a in present]
        label = blk.get("label", blk.get("name", f"block{bi}"))
        options = blk.get("options", {})
        if not isinstance(options, Mapping):
            raise GridError(f"block {bi}: 'options' must be a table of cell options")
        for combo in itertools.product(*values):
            params = {"kind": kind, "block": label, **{_SINGULAR[a]: v for a, v in zip(present, combo)}}
            if kind == "experiment":
                params["experiment"] = blk["experiment"]
                params["settings"] = dict(blk.get("settings") or {})
            if options:
                params["options"] = dict(options)
            key = cell_key(params)
            if key in seen:
                continue
            seen.add(key)
            cells.append({"key": key, "params": json.loads(canonical(params))})
    return cells


def _check_experiment(blk: Dict[str, Any], bi: int) -> None:
    """An ``experiment`` block: a known experiment, known parts (default: all), known settings."""
    import inspect

    from .cells import EXPERIMENTS, experiment_module

    name = blk.get("experiment")
    if name not in EXPERIMENTS:
        raise GridError(f"block {bi} (experiment): 'experiment' must be one of {', '.join(EXPERIMENTS)}, got {name!r}")
    mod = experiment_module(name)
    blk.setdefault("parts", list(mod.PARTS))
    parts = blk["parts"] if isinstance(blk["parts"], list) else [blk["parts"]]
    bad = [p for p in parts if p not in mod.PARTS]
    if bad:
        raise GridError(f"block {bi} (experiment {name}): unknown parts {bad}; parts: {', '.join(mod.PARTS)}")
    settings = blk.get("settings") or {}
    if not isinstance(settings, Mapping):
        raise GridError(f"block {bi} (experiment {name}): 'settings' must be a table of run() settings")
    bad = [k for k in settings if k not in mod.SETTINGS]
    if bad:
        raise GridError(f"block {bi} (experiment {name}): unknown settings {bad}; settings: {', '.join(mod.SETTINGS)} "
                        f"(the seed is the 'seeds' axis)")


def grid_hash(cells: Sequence[Mapping[str, Any]]) -> str:
    """Hash of a grid's set of cell keys (order-independent)."""
    return hashlib.sha256("\n".join(sorted(c["key"] for c in cells)).encode()).hexdigest()[:16]
