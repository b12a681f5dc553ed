"""Where xadv finds its shipped files (trained weights, processed tabular data)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import List

ENV_VAR = "XADV_ASSETS"


def asset_dirs() -> List[Path]:
    """Folders searched for shipped files, in order.

    1. ``$XADV_ASSETS`` when set;
    2. ``xadv/assets`` inside the installed package (a regular wheel install);
    3. ``<repository>/assets`` next to the ``xadv`` package (an editable install or a checkout).
    """
    import xadv

    pkg = Path(xadv.__file__).resolve().parent
    dirs = []
    env = os.environ.get(ENV_VAR)
    if env:
        dirs.append(Path(env).expanduser())
    dirs += [pkg / "assets", pkg.parent / "assets"]
    return dirs


def asset_path(name: str) -> Path:
    """Path of the shipped file ``name``; FileNotFoundError naming the folders searched."""
    dirs = asset_dirs()
    for d in dirs:
        p = d / name
        if p.is_file():
            return p
    searched = ", ".join(str(d) for d in dirs)
    raise FileNotFoundError(
        f"shipped file {name!r} not found (searched: {searched}). Reinstall xadv, set ${ENV_VAR} to a folder "
        f"holding it, or regenerate the weights with `python -m xadv.zoo.train all --out assets/`."
    )
