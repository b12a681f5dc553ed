"""Progress bars for long calls, in one place.

Every call of xadv that can take more than a few seconds (LIME and Occlusion on one
image, fooling attacks, AutoAttack, detector fit and evaluate, adversarial training,
experiments, sweeps, the demo) shows a tqdm bar on stderr through :func:`bar` or
:func:`track`. Whether a bar is shown is decided, in this order, by

1. the call's own ``progress=True/False`` (``None`` defers to the next rules);
2. :func:`set_progress` (``xadv.set_progress(False)`` switches every bar off);
3. the environment variable ``XADV_PROGRESS`` (``0``/``false``/``off`` or ``1``/``true``/``on``);
4. the session: off under pytest and when stderr is not a terminal (pipes, log files,
   CI), on in a terminal and in a Jupyter notebook.

Counts are whole numbers: totals and updates are integers.

Examples
--------
>>> import xadv
>>> from xadv._progress import bar, progress_enabled
>>> progress_enabled(False)
False
>>> with bar(3, "demo", progress=False) as b:
...     for _ in range(3):
...         b.update()
>>> b.n
3
"""
from __future__ import annotations

import os
import sys
from typing import Iterable, Iterator, Optional, TypeVar

_STATE: dict = {"enabled": None}
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")

T = TypeVar("T")


def set_progress(enabled: Optional[bool]) -> None:
    """Switch every progress bar on (True), off (False) or back to automatic (None).

    A call's own ``progress=`` argument still wins.

    Examples
    --------
    >>> import xadv
    >>> xadv.set_progress(False)   # no bars anywhere
    >>> xadv.set_progress(None)    # automatic again (terminals and notebooks)
    """
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"set_progress takes True, False or None, got {type(enabled).__name__}")
    _STATE["enabled"] = enabled


def _in_notebook() -> bool:
    ip = sys.modules.get("IPython")
    if ip is None or "ipykernel" not in sys.modules:
        return False
    try:
        shell = ip.get_ipython()
    except Exception:  # pragma: no cover - IPython without a shell
        return False
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def progress_enabled(progress: Optional[bool] = None) -> bool:
    """Whether a bar is shown for a call given its ``progress`` argument (see the module doc)."""
    if progress is not None:
        if not isinstance(progress, bool):
            raise TypeError(f"progress must be True, False or None, got {type(progress).__name__}")
        return progress
    if _STATE["enabled"] is not None:
        return _STATE["enabled"]
    env = os.environ.get("XADV_PROGRESS")
    if env is not None:
        v = env.strip().lower()
        if v in _TRUE:
            return True
        if v in _FALSE:
            return False
        raise ValueError(f"XADV_PROGRESS must be one of {_TRUE + _FALSE[:-1]}, got {env!r}")
    if "PYTEST_CURRENT_TEST" in os.environ:
        return False
    if _in_notebook():
        return True
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # a closed or replaced stderr
        return False


def _count(v, name: str) -> int:
    if isinstance(v, bool) or int(v) != v:
        raise ValueError(f"progress {name} must be a whole number, got {v!r}")
    return int(v)


class _Off:
    """The bar when progress is off: counts, prints nothing."""

    def __init__(self, total: Optional[int]):
        self.total = total
        self.n = 0

    def update(self, n: int = 1) -> None:
        self.n += _count(n, "update")

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def set_postfix(self, refresh: bool = True, **values) -> None:
        pass

    def set_description_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _On(_Off):
    def __init__(self, total, desc, unit, leave, initial, **kwargs):
        super().__init__(total)
        self.n = initial
        if _in_notebook():
            try:
                import ipywidgets  # noqa: F401
                from tqdm.notebook import tqdm
            except ImportError:
                from tqdm.std import tqdm
        else:
            from tqdm.std import tqdm
        self._bar = tqdm(total=total, desc=desc, unit=unit, leave=leave, initial=initial, file=sys.stderr,
                         dynamic_ncols=True, **kwargs)

    def update(self, n: int = 1) -> None:
        n = _count(n, "update")
        self.n += n
        self._bar.update(n)

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self._bar.set_postfix_str(s, refresh=refresh)

    def set_postfix(self, refresh: bool = True, **values) -> None:
        self._bar.set_postfix(refresh=refresh, **values)

    def set_description_str(self, s: str = "", refresh: bool = True) -> None:
        self._bar.set_description_str(s, refresh=refresh)

    def close(self) -> None:
        self._bar.close()


def bar(total: Optional[int], desc: str = "", *, progress: Optional[bool] = None, unit: str = "it",
        leave: bool = False, initial: int = 0, min_total: int = 0, bar_format: Optional[str] = None):
    """A progress bar over ``total`` whole units (a no-op object when progress is off).

    Parameters
    ----------
    total : int or None
        Number of units (None: unknown).
    desc : str
        Label in front of the bar.
    progress : bool or None, default None
        True/False force the bar on/off; None decides automatically (module doc).
    unit : str, default "it"
    leave : bool, default False
        Keep the finished bar on screen.
    initial : int, default 0
        Units already done (a resumed run).
    min_total : int, default 0
        With ``progress=None``, no bar for less work than this (quick calls stay quiet).
    bar_format : str, optional
        tqdm's ``bar_format``.

    Returns
    -------
    An object with ``update(n=1)``, ``set_postfix_str(s)``, ``close()`` and ``n`` (units
    counted), usable as a context manager.
    """
    total = None if total is None else _count(total, "total")
    initial = _count(initial, "initial")
    small = progress is None and total is not None and total < min_total
    if not small and progress_enabled(progress):
        return _On(total, desc, unit, leave, initial, **({} if bar_format is None else {"bar_format": bar_format}))
    b = _Off(total)
    b.n = initial
    return b


def track(iterable: Iterable[T], desc: str = "", *, total: Optional[int] = None, progress: Optional[bool] = None,
          unit: str = "it", leave: bool = False) -> Iterator[T]:
    """Iterate over ``iterable`` with a bar (one unit per item)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if not progress_enabled(progress):
        yield from iterable
        return
    with bar(total, desc, progress=True, unit=unit, leave=leave) as b:
        for item in iterable:
            yield item
            b.update(1)
