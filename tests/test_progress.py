"""The one progress helper: integer counts, off in tests, switchable, stderr when forced on."""
import pytest
import torch

import xadv
from xadv import _progress as P
from xadv.explainers import LIME, Occlusion


@pytest.fixture(autouse=True)
def _auto(monkeypatch):
    monkeypatch.delenv("XADV_PROGRESS", raising=False)
    yield
    xadv.set_progress(None)


def test_off_in_tests_and_switches(monkeypatch):
    assert P.progress_enabled(None) is False  # under pytest
    assert P.progress_enabled(True) is True
    xadv.set_progress(True)
    assert P.progress_enabled(None) is True
    assert P.progress_enabled(False) is False  # the call wins
    xadv.set_progress(False)
    assert P.progress_enabled(None) is False
    assert P.progress_enabled(True) is True
    xadv.set_progress(None)
    monkeypatch.delenv("PYTEST_CURRENT_TEST")
    monkeypatch.setenv("XADV_PROGRESS", "1")
    assert P.progress_enabled(None) is True
    monkeypatch.setenv("XADV_PROGRESS", "off")
    assert P.progress_enabled(None) is False
    monkeypatch.setenv("XADV_PROGRESS", "maybe")
    with pytest.raises(ValueError, match="XADV_PROGRESS"):
        P.progress_enabled(None)
    with pytest.raises(TypeError):
        xadv.set_progress("yes")
    with pytest.raises(TypeError):
        P.progress_enabled(1)


def test_counts_are_whole_numbers():
    b = P.bar(5, "x", progress=False)
    b.update(2)
    b.update()
    assert b.n == 3 and isinstance(b.n, int)
    with pytest.raises(ValueError, match="whole number"):
        b.update(0.5)
    with pytest.raises(ValueError, match="whole number"):
        P.bar(2.5, "x", progress=False)


def test_forced_bar_writes_to_stderr(capsys):
    with P.bar(4, "demo", progress=True, leave=True) as b:
        for _ in range(4):
            b.update(1)
    err = capsys.readouterr().err
    assert "demo" in err and "4/4" in err
    assert list(P.track(range(3), "tr", progress=True, leave=True)) == [0, 1, 2]
    assert "3/3" in capsys.readouterr().err


def test_min_total_only_with_auto(capsys):
    xadv.set_progress(True)
    P.bar(10, "small", min_total=100).close()
    assert "small" not in capsys.readouterr().err
    P.bar(10, "forced", progress=True, min_total=100).close()
    assert "forced" in capsys.readouterr().err


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 8 * 8, 3)).eval()


def test_lime_and_occlusion_bars_count_rows(capsys):
    net, x = _net(), torch.rand(1, 3, 8, 8)
    LIME(n_samples=37, seed=0, progress=True)(net, x)
    err = capsys.readouterr().err
    assert "LIME" in err and "0/36" in err  # samples, whole numbers (was "0.111/1" images)
    Occlusion(window=4, stride=2, progress=True)(net, x, target=0)
    err = capsys.readouterr().err
    assert "Occlusion" in err and "/9 " in err
    LIME(n_samples=37, seed=0)(net, x)  # default: no bar in tests
    Occlusion(window=4, stride=2)(net, x, target=0)
    assert capsys.readouterr().err == ""


def test_fooling_bar_counts_steps_times_restarts(capsys):
    from xadv.fooling import TopKAttack

    net, x = _net(), torch.rand(2, 3, 8, 8)
    TopKAttack(eps=0.05, steps=3, restarts=2, progress=True)(net, x)
    assert "TopKAttack" in (err := capsys.readouterr().err) and "/6 " in err
    TopKAttack(eps=0.05, steps=3)(net, x)
    assert capsys.readouterr().err == ""
