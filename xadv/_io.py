"""Safe persistence: files that cannot run code when read, and writes that never leave half a file.

Every xadv file (results, explanations, detectors) is one `safetensors
<https://huggingface.co/docs/safetensors>`_ file: the tensors in the safetensors
body, everything else as JSON in its header metadata. Reading it parses JSON and
copies bytes into tensors; no pickle is involved, so a crafted file cannot execute
code. Objects that are not tensors or plain data are stored as a *recipe* from a
fixed allowlist (a few ``torch.nn`` layers and xadv's own modules, explainers by
class name and parameters, scikit-learn random forests as their tree arrays) and
rebuilt on load.

Files written by xadv before this format (``torch.save`` pickles) are read only with
``trust=True``: unpickling can run arbitrary code.

Every writer goes through :func:`atomic_write`: the data goes to a temporary file in
the same folder, is flushed and fsynced, then renamed over the destination
(``os.replace``), so an interrupted write leaves the old file intact.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

PathLike = Union[str, Path]
FORMAT = "xadv-safetensors-1"


# ----------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb", encoding: Optional[str] = None) -> Iterator[Any]:
    """Open a temporary file beside ``path``; on success fsync it and rename it to ``path``.

    On any exception (or if the process dies) ``path`` keeps its old content and the
    temporary file is removed (a killed process can leave a ``.<name>.*.tmp`` file,
    never a truncated ``path``).

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> with atomic_write(p, "w") as f:
    ...     _ = f.write("hello")
    >>> p.read_text()
    'hello'
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"{path} is a folder, not a file", str(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        try:
            os.chmod(tmp, 0o666 & ~_umask())
        except OSError:
            pass
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename durable
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def write_bytes(path: PathLike, data: bytes) -> Path:
    """Atomically write ``data`` to ``path``."""
    with atomic_write(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_text(path: PathLike, text: str) -> Path:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    return write_bytes(path, text.encode("utf-8"))


def sha256(path: PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------- the codec
class _Encoder:
    def __init__(self):
        self.tensors: Dict[str, torch.Tensor] = {}

    def tensor(self, t: torch.Tensor) -> str:
        key = f"t{len(self.tensors)}"
        self.tensors[key] = t.detach().to("cpu").contiguous().clone()
        return key

    def __call__(self, v: Any, where: str) -> Any:
        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, int):
            return v
        if isinstance(v, float):
            return v
        if isinstance(v, (np.bool_, np.integer, np.floating)):
            return v.item()
        if isinstance(v, torch.Tensor):
            if v.is_complex() or v.is_sparse or v.is_quantized:
                raise TypeError(f"cannot save the {v.dtype}/{v.layout} tensor at {where}")
            return {"__tensor__": self.tensor(v)}
        if isinstance(v, np.ndarray):
            if v.dtype == object:
                raise TypeError(f"cannot save an object array at {where}")
            return {"__ndarray__": self.tensor(torch.from_numpy(np.ascontiguousarray(v)))}
        if isinstance(v, tuple):
            return {"__tuple__": [self(w, f"{where}[{i}]") for i, w in enumerate(v)]}
        if isinstance(v, list):
            return [self(w, f"{where}[{i}]") for i, w in enumerate(v)]
        if isinstance(v, dict):
            if all(isinstance(k, str) for k in v):
                return {"__dict__": {k: self(w, f"{where}[{k!r}]") for k, w in v.items()}}
            return {"__pairs__": [[self(k, where), self(w, f"{where}[{k!r}]")] for k, w in v.items()]}
        for kind, (test, enc, _dec) in _KINDS.items():
            if test(v):
                return {"__obj__": kind, "data": enc(v, self, where)}
        raise TypeError(
            f"cannot save a {type(v).__module__}.{type(v).__name__} at {where}: xadv files hold tensors, "
            f"numbers, strings, lists/tuples/dicts of them and a fixed set of modules "
            f"(pass layers by name, not as module objects)"
        )


def _decode(v: Any, tensors: Dict[str, torch.Tensor], map_location) -> Any:
    if isinstance(v, list):
        return [_decode(w, tensors, map_location) for w in v]
    if not isinstance(v, dict):
        return v
    if "__tensor__" in v:
        t = tensors[v["__tensor__"]]
        return t if map_location is None else t.to(map_location)
    if "__ndarray__" in v:
        return tensors[v["__ndarray__"]].numpy()
    if "__tuple__" in v:
        return tuple(_decode(w, tensors, map_location) for w in v["__tuple__"])
    if "__dict__" in v:
        return {k: _decode(w, tensors, map_location) for k, w in v["__dict__"].items()}
    if "__pairs__" in v:
        return {_hashable(_decode(k, tensors, map_location)): _decode(w, tensors, map_location)
                for k, w in v["__pairs__"]}
    if "__obj__" in v:
        kind = v["__obj__"]
        if kind not in _KINDS:
            raise ValueError(f"unknown object kind {kind!r} in the file")
        return _KINDS[kind][2](v["data"], lambda w: _decode(w, tensors, map_location))
    raise ValueError(f"malformed xadv file entry with keys {sorted(v)}")


def _hashable(k):
    return tuple(k) if isinstance(k, list) else k


# --- modules: classes from torch.nn and xadv's own modules, rebuilt attribute by attribute
_XADV_MODULE_HOMES = ("xadv.zoo.models", "xadv.zoo.architectures", "xadv.zoo.text", "xadv.nn", "xadv.detectors.base", "xadv.detectors.shap_signature")


def _module_class(qualname: str):
    """The class named ``module:Name`` if it is on the allowlist, else None."""
    import importlib
    import sys

    mod, _, name = qualname.partition(":")
    ok = mod.startswith("torch.nn.modules.") or mod in _XADV_MODULE_HOMES
    if not ok or "." in name:
        return None
    m = sys.modules.get(mod) or importlib.import_module(mod)
    klass = getattr(m, name, None)
    return klass if isinstance(klass, type) and issubclass(klass, nn.Module) else None


def _plain(v) -> bool:
    if v is None or isinstance(v, (bool, int, float, str)):
        return True
    if isinstance(v, (tuple, list)):
        return all(_plain(w) for w in v)
    return False


def _module_test(m) -> bool:
    return isinstance(m, nn.Module)


def _module_enc(m: nn.Module, enc: _Encoder, where: str):
    qual = f"{type(m).__module__}:{type(m).__name__}"
    if _module_class(qual) is not type(m):
        raise TypeError(
            f"cannot save the module {type(m).__module__}.{type(m).__name__} at {where}: xadv files rebuild only "
            f"torch.nn layers and xadv's own modules; save model.state_dict() with safetensors instead")
    attrs = {}
    for k, v in vars(m).items():
        if k.startswith("_"):
            continue
        if k == "training":
            continue
        if isinstance(v, torch.Tensor):
            attrs[k] = v
        elif _plain(v):
            attrs[k] = v
        else:
            raise TypeError(f"cannot save the attribute {k!r} ({type(v).__name__}) of the module at {where}")
    return {"class": qual, "training": m.training, "attrs": enc(attrs, where),
            "non_persistent": sorted(m._non_persistent_buffers_set),
            "params": [[k, None if p is None else {"t": enc(p, where), "rg": p.requires_grad}]
                       for k, p in m._parameters.items()],
            "buffers": [[k, None if b is None else enc(b, where)] for k, b in m._buffers.items()],
            "children": [[k, None if c is None else _module_enc(c, enc, f"{where}.{k}")]
                         for k, c in m._modules.items()]}


def _module_dec(d, dec) -> nn.Module:
    klass = _module_class(str(d["class"]))
    if klass is None:
        raise ValueError(f"the file names a module class {d['class']!r} that xadv does not rebuild")
    m = klass.__new__(klass)
    nn.Module.__init__(m)
    for k, p in d["params"]:
        m._parameters[k] = None if p is None else nn.Parameter(dec(p["t"]), requires_grad=bool(p["rg"]))
    for k, b in d["buffers"]:
        m._buffers[k] = None if b is None else dec(b)
    m._non_persistent_buffers_set = set(d["non_persistent"])
    for k, c in d["children"]:
        m._modules[k] = None if c is None else _module_dec(c, dec)
    for k, v in dec(d["attrs"]).items():
        if k == "_non_persistent_buffers_set":
            continue
        object.__setattr__(m, k, v)
    m.train(bool(d["training"]))
    return m


# --- explainers: class name (from xadv's own explainer classes) and parameters
def _explainer_classes() -> Dict[str, type]:
    from . import explainers
    from .detectors.base import InputMap
    from .explainers.base import Explainer

    out = {n: c for n, c in vars(explainers).items() if isinstance(c, type) and issubclass(c, Explainer)}
    out["InputMap"] = InputMap
    return out


def _explainer_test(v) -> bool:
    from .explainers.base import Explainer

    return isinstance(v, Explainer)


def _explainer_enc(e, enc: _Encoder, where: str):
    name = type(e).__name__
    classes = _explainer_classes()
    if classes.get(name) is not type(e):
        raise TypeError(f"cannot save the explainer {type(e).__module__}.{name} at {where}: only xadv's own "
                        f"explainer classes are stored by name")
    return {"class": name, "params": enc(e.get_params(), where)}


def _explainer_dec(d, dec):
    classes = _explainer_classes()
    if d["class"] not in classes:
        raise ValueError(f"the file names an unknown explainer class {d['class']!r}")
    return classes[d["class"]](**dec(d["params"]))


# --- scikit-learn random forests: their tree arrays
def _forest_test(v) -> bool:
    return type(v).__name__ == "RandomForestClassifier" and type(v).__module__.startswith("sklearn.")


def _forest_enc(f, enc: _Encoder, where: str):
    trees = []
    for est in f.estimators_:
        st = est.tree_.__getstate__()
        nodes = st["nodes"]
        trees.append({"max_depth": int(st["max_depth"]), "node_count": int(st["node_count"]),
                      "fields": {n: enc(np.ascontiguousarray(nodes[n]), where) for n in nodes.dtype.names},
                      "values": enc(np.ascontiguousarray(st["values"]), where),
                      "random_state": int(est.random_state) if est.random_state is not None else None})
    params = {k: v for k, v in f.get_params().items() if k != "estimator"}
    return {"params": enc(params, where), "classes": enc(np.asarray(f.classes_), where),
            "n_features_in": int(f.n_features_in_), "n_outputs": int(f.n_outputs_), "trees": trees}


def _forest_dec(d, dec):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.tree import DecisionTreeClassifier
    from sklearn.tree._tree import NODE_DTYPE, Tree

    params = dec(d["params"])
    params = {k: (dict(v) if isinstance(v, dict) else v) for k, v in params.items()}
    f = RandomForestClassifier(**params)
    classes = dec(d["classes"])
    n_feat, n_out = int(d["n_features_in"]), int(d["n_outputs"])
    n_classes = np.array([len(classes)], dtype=np.intp)
    ests = []
    for t in d["trees"]:
        nodes = np.zeros(int(t["node_count"]), dtype=NODE_DTYPE)
        for name in NODE_DTYPE.names:
            if name not in t["fields"]:
                raise ValueError(f"the stored forest lacks the tree field {name!r} this scikit-learn needs")
            nodes[name] = dec(t["fields"][name])
        tree = Tree(n_feat, n_classes, n_out)
        tree.__setstate__({"max_depth": int(t["max_depth"]), "node_count": int(t["node_count"]),
                           "nodes": nodes, "values": np.ascontiguousarray(dec(t["values"]), dtype=np.float64)})
        est = DecisionTreeClassifier(**{k: v for k, v in f.estimator.get_params().items()})
        est.set_params(**{k: params[k] for k in f.estimator_params if k in params})
        est.random_state = t["random_state"]
        est.tree_, est.n_outputs_, est.classes_, est.n_classes_ = tree, n_out, classes, len(classes)
        est.n_features_in_, est.max_features_ = n_feat, n_feat
        ests.append(est)
    f.estimators_, f.classes_, f.n_classes_ = ests, classes, len(classes)
    f.n_features_in_, f.n_outputs_, f.estimator_ = n_feat, n_out, DecisionTreeClassifier()
    return f


# --- detectors nested in detectors (XEnsemble's members)
def _detector_test(v) -> bool:
    from .detectors.base import Detector

    return isinstance(v, Detector)


def _detector_enc(det, enc: _Encoder, where: str):
    return {"class": type(det).__name__, "params": enc(det.get_params(), where), "state": enc(det._state(), where)}


def _detector_dec(d, dec):
    from .detectors.base import _REGISTRY

    klass = _REGISTRY.get(d["class"])
    if klass is None:
        raise ValueError(f"the file holds an unknown detector type {d['class']!r}")
    obj = klass(**dec(d["params"]))
    for k, v in dec(d["state"]).items():
        setattr(obj, k, v)
    return obj


def _explanation_test(v) -> bool:
    from .explanation import Explanation

    return isinstance(v, Explanation)


def _explanation_enc(e, enc: _Encoder, where: str):
    import dataclasses

    return enc({f.name: getattr(e, f.name) for f in dataclasses.fields(e)}, where)


def _explanation_dec(d, dec):
    from .explanation import Explanation

    return Explanation(**dec(d))


_KINDS: Dict[str, tuple] = {
    "explanation": (_explanation_test, _explanation_enc, _explanation_dec),
    "detector": (_detector_test, _detector_enc, _detector_dec),
    "explainer": (_explainer_test, _explainer_enc, _explainer_dec),
    "module": (_module_test, _module_enc, _module_dec),
    "forest": (_forest_test, _forest_enc, _forest_dec),
}


# ----------------------------------------------------------------- files
def dumps(kind: str, payload: Dict[str, Any]) -> bytes:
    """Serialise ``payload`` (a dict of storable values) as safetensors bytes tagged ``kind``."""
    from safetensors.torch import save

    enc = _Encoder()
    body = enc(payload, kind)
    meta = json.dumps({"format": FORMAT, "kind": kind, "payload": body}, allow_nan=True)
    return save(enc.tensors, metadata={"xadv": meta})


def save(path: PathLike, kind: str, payload: Dict[str, Any]) -> Path:
    """Atomically write ``payload`` to ``path`` in the safe format."""
    return write_bytes(path, dumps(kind, payload))


def _read_header(data: bytes) -> Optional[dict]:
    if len(data) < 8:
        return None
    (n,) = struct.unpack("<Q", data[:8])
    if n <= 0 or 8 + n > len(data) or data[8:9] != b"{":
        return None
    try:
        return json.loads(data[8:8 + n])
    except ValueError:
        return None


def load(path: PathLike, kind: str, *, map_location=None, trust: bool = False,
         legacy: Optional[Callable[[Any], Dict[str, Any]]] = None) -> Dict[str, Any]:
    """Read a file written by :func:`save` and return its payload dict.

    Files in the old ``torch.save`` format are read with ``torch.load(weights_only=True)``
    when they hold only tensors and plain data; otherwise only with ``trust=True``
    (full unpickling, which can run code). ``legacy`` turns an old payload into the
    new form; it should raise ``ValueError`` for a file of another kind.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"{path} is a folder, not an xadv {kind} file", str(path))
    data = path.read_bytes()
    head = _read_header(data)
    if head is not None:
        meta = (head.get("__metadata__") or {}).get("xadv")
        if meta is None:
            raise ValueError(f"{path} is a safetensors file but not an xadv {kind} file")
        info = json.loads(meta)
        if info.get("format") != FORMAT:
            raise ValueError(f"{path} has an unknown xadv format {info.get('format')!r}; upgrade xadv")
        if info.get("kind") != kind:
            raise ValueError(f"{path} is an xadv {info.get('kind')} file, not an xadv {kind} file")
        from safetensors.torch import load as st_load

        tensors = st_load(data)
        return _decode(info["payload"], tensors, map_location)
    if data[:2] == b"PK" or data[:1] == b"\x80":
        import io
        import pickle

        try:
            old = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
        except pickle.UnpicklingError:
            if not trust:
                raise ValueError(
                    f"{path} is a pickle file (torch.save, the format of older xadv versions) that holds "
                    f"objects beyond tensors; reading it can run arbitrary code. If you wrote it yourself or "
                    f"trust its source, load it with trust=True and save it again to convert it to the safe format"
                ) from None
            old = torch.load(io.BytesIO(data), map_location=map_location, weights_only=False)
        if legacy is None:
            raise ValueError(f"{path} is not an xadv {kind} file")
        return legacy(old)
    raise ValueError(f"{path} is not an xadv {kind} file (neither the safe format nor an old torch.save file)")


def load_state_dict_file(path: PathLike, map_location=None) -> Dict[str, torch.Tensor]:
    """A ``state_dict`` from a safetensors file or a ``torch.save`` file, without running code.

    ``torch.save`` files are read with ``torch.load(weights_only=True)``, which refuses
    anything but tensors and plain containers.
    """
    import pickle

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    with open(path, "rb") as f:
        start = f.read(1 << 16)
    head = _read_header(start) if len(start) >= 8 else None
    if head is not None or path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device=str(map_location) if map_location is not None else "cpu")
    else:
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
            raise ValueError(
                f"{path} is not a plain state_dict file: torch.load(weights_only=True) refused it "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                f"save the weights with torch.save(model.state_dict(), path) or safetensors") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state_dict")
    return state


def load_tensor_file(path: PathLike, map_location=None) -> torch.Tensor:
    """One tensor from a ``torch.save`` file (``weights_only=True``) or a one-tensor safetensors file."""
    import pickle

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input file {str(path)!r} does not exist")
    with open(path, "rb") as f:
        start = f.read(1 << 16)
    if _read_header(start) is not None:
        from safetensors.torch import load_file

        d = load_file(str(path))
        if len(d) != 1:
            raise ValueError(f"{path} holds {len(d)} tensors; save exactly one")
        return next(iter(d.values()))
    try:
        x = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise ValueError(f"{path} is not a plain tensor file: torch.load(weights_only=True) refused it "
                         f"({type(e).__name__})") from None
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{path} must hold a tensor (N, C, H, W) saved with torch.save, got {type(x).__name__}")
    return x


# ----------------------------------------------------------------- output folders
class FolderError(Exception):
    """An output folder cannot be used (locked, another run's results, not a folder)."""


class OutputFolder:
    """An output folder with a manifest (``manifest.json``) and a lock (``.xadv.lock``).

    ``with OutputFolder(out, command, seed=0, settings={...}) as folder:`` creates the
    folder, refuses a second concurrent writer, refuses a folder that holds results of
    another seed or settings (the message says to pick a new ``--out`` or delete the
    folder), and on success records every file's sha256 and ``complete: true``.

    Stages: ``folder.mark(stage, files=[...], record={...}, key={...})`` records a
    finished stage with the sha256 of the files it wrote, a JSON ``record`` (what a
    rerun needs to skip the stage) and a ``key`` (options that must be equal for the
    stage to be reused, e.g. figure formats). ``folder.completed(stage, key)`` returns
    that record on a rerun into the same folder with the same settings when every file
    is still there with the same hash, the xadv version is the same and ``key`` is
    equal; otherwise None (the stage must be redone). ``fresh=True`` forgets all
    finished stages. The names of finished stages are in ``folder.done``.

    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "run"
    >>> with OutputFolder(out, "my-run", seed=0) as f:
    ...     _ = write_text(out / "a.txt", "A")
    ...     f.mark("first", files=["a.txt"], record={"n": 1})
    >>> with OutputFolder(out, "my-run", seed=0) as f:
    ...     f.completed("first")
    {'n': 1}
    """

    MANIFEST = "manifest.json"
    LOCK = ".xadv.lock"

    def __init__(self, out: PathLike, command: str, *, seed=None, settings: Optional[Dict[str, Any]] = None,
                 fresh: bool = False):
        self.out = Path(out)
        self.command, self.seed = command, seed
        self.settings = json.loads(json.dumps(settings or {}, default=str))
        self.done: list = []
        self.stages: Dict[str, dict] = {}
        self.forget = bool(fresh)
        self._lock_fd = None
        self._fresh = True

    def __enter__(self) -> "OutputFolder":
        if self.out.exists() and not self.out.is_dir():
            raise FolderError(f"--out {self.out} is a file, not a folder; pass a folder path")
        self.out.mkdir(parents=True, exist_ok=True)
        lock = self.out / self.LOCK
        try:
            self._lock_fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            pid = None
            with contextlib.suppress(Exception):
                pid = int(lock.read_text().strip() or 0)
            if pid and _alive(pid):
                raise FolderError(f"{self.out} is in use by another xadv process (pid {pid}); wait for it to "
                                  f"finish or pass another --out") from None
            lock.unlink(missing_ok=True)  # stale lock of a killed run
            self._lock_fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        os.write(self._lock_fd, str(os.getpid()).encode())
        old = self.read()
        if old is not None and not old.get("complete") and not old.get("done") and not self._results():
            old = None  # an earlier run that stopped before writing anything: nothing to mix with
        self._fresh = old is None
        if old is not None:
            if old.get("seed") != self.seed or old.get("settings") != self.settings or old.get("command") != self.command:
                self._release()
                raise FolderError(
                    f"{self.out} holds results of another run ({old.get('command')}, seed {old.get('seed')}, "
                    f"settings {old.get('settings')}); pass a new --out or delete the folder to start over")
            if not self.forget:
                self.done = list(old.get("done", []))
                stages = old.get("stages")
                self.stages = dict(stages) if isinstance(stages, dict) else {}
        self._write(complete=False)
        return self

    def read(self) -> Optional[dict]:
        p = self.out / self.MANIFEST
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except ValueError:
            return None

    def mark(self, stage: str, files: Sequence[PathLike] = (), record: Optional[Dict[str, Any]] = None,
             key: Optional[Dict[str, Any]] = None) -> None:
        """Record ``stage`` as finished: the sha256 of ``files`` (paths in the folder), ``record`` and ``key``."""
        from . import __version__

        hashes = {}
        for f in files:
            p = Path(f)
            p = p if p.is_absolute() else self.out / p
            hashes[p.relative_to(self.out).as_posix()] = sha256(p)
        self.stages[stage] = {"xadv_version": __version__, "files": hashes,
                              "key": json.loads(json.dumps(key or {}, default=str)),
                              "record": json.loads(json.dumps(record or {}, default=str))}
        if stage not in self.done:
            self.done.append(stage)
        self._write(complete=False)

    def completed(self, stage: str, key: Optional[Dict[str, Any]] = None) -> Optional[Dict[str, Any]]:
        """The record of ``stage`` if it can be reused as it is, else None (see the class docs)."""
        from . import __version__

        s = self.stages.get(stage)
        if not isinstance(s, dict) or s.get("xadv_version") != __version__:
            return None
        if s.get("key") != json.loads(json.dumps(key or {}, default=str)):
            return None
        for rel, h in (s.get("files") or {}).items():
            p = self.out / rel
            if not p.is_file() or sha256(p) != h:
                return None
        return s.get("record")

    def forget_stage(self, stage: str) -> None:
        """Drop ``stage`` from the finished stages (it is being redone)."""
        self.stages.pop(stage, None)
        if stage in self.done:
            self.done.remove(stage)
        self._write(complete=False)

    def _results(self) -> list:
        """The result files in the folder (everything but the manifest, the lock and temporaries)."""
        return [p for p in sorted(self.out.rglob("*"))
                if p.is_file() and p.name not in (self.MANIFEST, self.LOCK) and not p.name.endswith(".tmp")]

    def _write(self, complete: bool) -> None:
        from . import __version__

        files = {}
        if complete:
            for p in self._results():
                files[str(p.relative_to(self.out))] = sha256(p)
        man = {"command": self.command, "xadv_version": __version__, "seed": self.seed, "settings": self.settings,
               "done": self.done, "complete": complete, "files": files, "stages": self.stages}
        write_text(self.out / self.MANIFEST, json.dumps(man, indent=1) + "\n")

    def _release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
            with contextlib.suppress(OSError):
                (self.out / self.LOCK).unlink()

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._write(complete=True)
            elif self._fresh and not self.done and not self._results():
                # refused or failed before writing anything: leave no claim on the folder
                with contextlib.suppress(OSError):
                    (self.out / self.MANIFEST).unlink()
        finally:
            self._release()


def os_error_message(err: OSError) -> str:
    """One line for a failed write: what went wrong, where, and what to do."""
    what = {errno.ENOSPC: "no space left on the device", errno.EROFS: "read-only file system",
            errno.EACCES: "permission denied", errno.ENOTDIR: "a path component is a file, not a folder",
            errno.EEXIST: "a file is in the way", errno.EISDIR: "a folder is in the way",
            errno.EDQUOT: "disk quota exceeded"}.get(err.errno, err.strerror or type(err).__name__)
    where = f" ({err.filename})" if getattr(err, "filename", None) else ""
    return f"cannot write output: {what}{where}; free space or pick another --out"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
