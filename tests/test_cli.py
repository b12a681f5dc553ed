"""The xadv command: demo on the fast setting, explain for the digits model and for user models."""
from __future__ import annotations

import json
import sys
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.image  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from xadv.cli import build_parser, load_image, main  # noqa: E402


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--out", str(out), "--fast", "--no-progress", "--threads", "1"]) == 0
    return out


def test_demo_writes_figures_report_and_metrics(demo_out):
    report = (demo_out / "report.md").read_text()
    for section in ("## 1. Explanations", "## 2. Attacks from explanations", "## 3. Fooling explanations",
                    "## 4. Detecting adversarial inputs"):
        assert section in report
    m = json.loads((demo_out / "metrics.json").read_text())
    assert m["skipped"] == {}
    methods = {r["method"] for r in m["explain"]["rows"]}
    assert {"Saliency", "IG", "SmoothGrad", "Grad-CAM", "LIME"} <= methods
    # attack success is monotone in the budget for PGD, and it succeeds at eps=0.2
    pgd = [v for k, v in m["attack"]["success_rate"].items() if k.startswith("PGD")][0]
    assert pgd == sorted(pgd) and pgd[-1] > 0.9
    assert all(r["kept_rate"] == 1.0 for r in m["fool"]["rows"])
    assert all(0.0 <= r["auroc"] <= 1.0 for r in m["detect"]["rows"])
    for stem in ("explanations", "deletion_insertion", "attack_success", "attack_examples", "fooling_examples",
                 "detection_roc"):
        assert (demo_out / f"{stem}.png").read_bytes()[:4] == b"\x89PNG"
        assert b"/FontFile2" in (demo_out / f"{stem}.pdf").read_bytes()
        assert f"({stem}.png)" in report
    tex = (demo_out / "tables.tex").read_text()
    assert tex.count(r"\toprule") == 2 and r"\label{tab:attack}" in tex
    z = np.load(demo_out / "explanations.npz")
    assert z["IG/attributions"].shape == (4, 1, 28, 28)


def test_help_reads_well(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for cmd in ("demo", "explain", "attack", "fool", "detect", "examples:", "xadv demo --out demo-out"):
        assert cmd in text
    for sub in ("demo", "explain", "attack", "fool", "detect"):
        h = build_parser()._subparsers._group_actions[0].choices[sub].format_help()
        assert "example" in h and "--out" in h


def test_explain_digits_to_pdf(tmp_path, capsys):
    out = tmp_path / "fig.pdf"
    assert main(["explain", "--model", "digits", "--method", "ig", "--index", "0", "--out", str(out), "--npz",
                 "--param", "steps=8"]) == 0
    assert out.read_bytes()[:5] == b"%PDF-" and b"/FontFile2" in out.read_bytes()
    z = np.load(tmp_path / "fig.npz")
    assert z["attributions"].shape == (1, 1, 28, 28) and str(z["method"]) == "integrated_gradients"
    assert "predicted class" in capsys.readouterr().out


def _user_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 12 * 12, 5)).eval()


def test_explain_torchscript_model_and_png_image(tmp_path):
    net = _user_net()
    ts = tmp_path / "net.ts"
    torch.jit.save(torch.jit.script(net), str(ts))
    img = tmp_path / "x.png"
    rng = np.random.default_rng(0)
    matplotlib.image.imsave(str(img), rng.random((20, 16, 3)))
    x = load_image(str(img), size=12)
    assert x.shape == (1, 3, 12, 12) and 0 <= float(x.min()) and float(x.max()) <= 1
    out = tmp_path / "ts.svg"
    assert main(["explain", "--model", str(ts), "--image", str(img), "--size", "12", "--method", "saliency",
                 "--out", str(out), "--overlay"]) == 0
    assert "<text" in out.read_text()


def test_explain_module_factory_with_weights(tmp_path, monkeypatch):
    (tmp_path / "usermodels.py").write_text(textwrap.dedent("""
        import torch
        def make():
            return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                       torch.nn.Linear(4 * 12 * 12, 5))
    """))
    net = _user_net()
    torch.save(net.state_dict(), tmp_path / "w.pt")
    torch.save(torch.rand(2, 3, 12, 12), tmp_path / "inputs.pt")
    monkeypatch.chdir(tmp_path)
    assert main(["explain", "--model", "usermodels:make", "--weights", "w.pt", "--input", "inputs.pt", "--index",
                 "1", "--method", "gradcam", "--out", "cam.png"]) == 0
    assert (tmp_path / "cam.png").stat().st_size > 1000


def test_user_errors_exit_2_with_a_message(tmp_path, capsys):
    assert main(["explain", "--model", "no_such_module:f", "--image", "x.png", "--out", str(tmp_path / "a.png")]) == 2
    assert "cannot import" in capsys.readouterr().err
    assert main(["explain", "--model", "digits", "--index", "99999", "--out", str(tmp_path / "a.png")]) == 2
    assert "--index" in capsys.readouterr().err
    assert main(["explain", "--model", "digits", "--method", "nope", "--out", str(tmp_path / "a.png")]) == 2
    assert "unknown explainer" in capsys.readouterr().err


def test_attack_command(tmp_path):
    assert main(["attack", "--attack", "fgsm", "--eps", "0.2", "--n", "8", "--explainer", "saliency",
                 "--out", str(tmp_path), "--formats", "png"]) == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["success_rate"] > 0.5 and (tmp_path / "attack.png").exists()


def test_fool_command_targeted_towards_a_map_inside_the_ball(tmp_path, capsys):
    out = tmp_path / "t"
    assert main(["fool", "--attack", "targeted", "--target", "inside", "--eps", "0.0314", "--n", "4", "--steps", "30",
                 "--formats", "png", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["attack"].startswith("TargetedManipulation(") and m["kept_rate"] == 1.0
    # small MSEs keep their significant digits in metrics.json and in the printed table
    assert 0 < m["target_mse_after"] < m["target_mse_before"] < 1e-4 and m["target_mse_factor"] > 1.5
    assert "e-0" in capsys.readouterr().out
    assert (out / "fooling.png").exists() and (out / "fooling_result.pt").exists()


def test_python_dash_m_entry_point(monkeypatch, capsys):
    import runpy

    monkeypatch.setattr(sys, "argv", ["xadv", "--version"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_module("xadv", run_name="__main__")
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("xadv ")


def _demo_numbers(out):
    """metrics.json without the timings (and the list of reused stages)."""
    def strip(v):
        if isinstance(v, dict):
            return {k: strip(w) for k, w in v.items() if k not in ("seconds", "resumed", "ms_per_image")}
        return [strip(w) for w in v] if isinstance(v, list) else v
    m = strip(json.loads((out / "metrics.json").read_text()))
    assert m["explain"]["rows"] and m["detect"]["rows"]
    return m


def _stamps(out, names):
    return {n: ((out / n).stat().st_ino, (out / n).stat().st_mtime_ns, (out / n).read_bytes()) for n in names}


def test_demo_resumes_finished_stages_after_a_fault(demo_out, tmp_path, monkeypatch):
    """A fault in the last stage; the rerun reuses the three finished stages (files untouched, nothing
    recomputed) and ends with the numbers of an uninterrupted run (demo_out)."""
    from xadv import cli

    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--fast", "--no-progress", "--threads", "1"]
    calls = {s: 0 for s in cli._Demo.STAGES}
    real = {s: getattr(cli._Demo, s) for s in cli._Demo.STAGES}

    def counted(stage, fail=False):
        def run(self):
            calls[stage] += 1
            if fail:
                raise RuntimeError("simulated fault in the detect stage")
            return real[stage](self)
        return run

    for s in cli._Demo.STAGES:
        monkeypatch.setattr(cli._Demo, s, counted(s, fail=s == "detect"))
    with pytest.raises(RuntimeError, match="simulated fault"):
        main(argv)
    man = json.loads((out / "manifest.json").read_text())
    assert man["done"] == ["explain", "attack", "fool"] and not man["complete"]
    assert not (out / "report.md").exists() and not (out / ".xadv.lock").exists()
    finished = sorted(f for s in man["done"] for f in man["stages"][s]["files"])
    assert {"explanations.png", "explanations.pdf", "explanations.npz", "attack_success.png",
            "fooling_examples.pdf"} <= set(finished)
    before = _stamps(out, finished)

    monkeypatch.setattr(cli._Demo, "detect", counted("detect"))
    assert main(argv) == 0
    assert calls == {"explain": 1, "attack": 1, "fool": 1, "detect": 2}
    assert _stamps(out, finished) == before  # same inode, mtime and bytes: not rewritten
    m = json.loads((out / "metrics.json").read_text())
    assert m["resumed"] == ["explain", "attack", "fool"]
    assert _demo_numbers(out) == _demo_numbers(demo_out)
    assert "Reused from an earlier run" in (out / "report.md").read_text()
    man = json.loads((out / "manifest.json").read_text())
    assert man["complete"] and man["done"] == ["explain", "attack", "fool", "detect"]

    # a finished stage whose file changed is redone; the others are still reused
    (out / "fooling_examples.png").write_bytes(b"not the figure")
    assert main(argv) == 0
    assert calls == {"explain": 1, "attack": 1, "fool": 2, "detect": 2}
    assert (out / "fooling_examples.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "metrics.json").read_text())["resumed"] == ["explain", "attack", "detect"]
    assert _demo_numbers(out) == _demo_numbers(demo_out)


def test_demo_fresh_and_other_formats_redo_stages(tmp_path, monkeypatch):
    from xadv import cli

    out = tmp_path / "demo"
    calls = []
    monkeypatch.setattr(cli._Demo, "explain", lambda self: calls.append("explain"))
    argv = ["demo", "--out", str(out), "--fast", "--no-progress", "--stages", "explain", "--formats", "png"]
    assert main(argv) == 0 and main(argv) == 0
    assert calls == ["explain"]
    assert main(argv + ["--fresh"]) == 0
    assert calls == ["explain"] * 2
    assert main(argv[:-1] + ["svg"]) == 0  # other figure formats: the stage's files do not fit
    assert calls == ["explain"] * 3
    assert main(["demo", "--out", str(out), "--no-progress", "--stages", "explain"]) == 2  # other settings
