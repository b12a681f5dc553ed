"""Every docstring example of the package runs and prints what it says (the public API's
examples are part of its documentation, so they are tested like code)."""
import doctest
import importlib
import pkgutil

import matplotlib
import pytest

import xadv

matplotlib.use("Agg")

MODULES = sorted(m.name for m in pkgutil.walk_packages(xadv.__path__, "xadv.")
                 if not m.name.endswith("__main__"))


def test_the_package_has_docstring_examples():
    found = sum(len(t.examples) for name in MODULES for t in doctest.DocTestFinder().find(importlib.import_module(name)))
    assert found > 150


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    import matplotlib.pyplot as plt
    import torch

    module = importlib.import_module(name)
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    try:
        res = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False,
                              report=False)
    finally:
        torch.set_num_threads(threads)
        plt.close("all")
    assert res.failed == 0, f"{res.failed} of {res.attempted} docstring examples failed in {name} (run " \
                            f"`python -m pytest --doctest-modules {module.__file__}` to see them)"
