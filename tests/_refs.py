"""Import the reference libraries that declare torchvision (zennit, Quantus, pytorch-grad-cam).

PyPI's torchvision does not import beside the CPU build of torch that CI uses, and xadv does
not need it. The reference libraries only touch torchvision for things the tests do not use
(torchvision-specific canonizers, image transforms, dataset examples), so when the real
package is missing a placeholder module with those names is registered before the import.
Nothing of xadv itself sees the placeholder: it is installed only by these helpers.
"""
from __future__ import annotations

import importlib
import sys
import types

import pytest


class _Unavailable:
    """Stands in for a torchvision class; any use says that torchvision is absent."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError("torchvision is not installed; this reference feature is unavailable")


def _install_placeholder() -> None:
    try:
        import torchvision  # noqa: F401
        return
    except Exception:
        pass
    for key in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
        del sys.modules[key]
    names = {
        "torchvision": [],
        "torchvision.models": [],
        "torchvision.models.resnet": ["Bottleneck", "BasicBlock", "ResNet"],
        "torchvision.models.vgg": ["VGG"],
        "torchvision.transforms": ["Compose", "Normalize", "ToTensor", "Resize"],
        "torchvision.transforms.functional": ["resize"],
        "torchvision.datasets": [],
    }
    for name, attrs in names.items():
        mod = types.ModuleType(name)
        mod.__dict__["__xadv_placeholder__"] = True
        for attr in attrs:
            setattr(mod, attr, type(attr, (_Unavailable,), {}))
        sys.modules[name] = mod
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, mod)


def import_reference(name: str):
    """Import a reference library (``"zennit"``, ``"quantus"``, ``"pytorch_grad_cam"``) or skip."""
    _install_placeholder()
    try:
        return importlib.import_module(name)
    except Exception as exc:  # pragma: no cover - depends on the environment
        pytest.skip(f"{name} does not import here: {exc}")
