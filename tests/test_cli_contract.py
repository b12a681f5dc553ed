"""The CLI's option contract: every option applies or is refused with exit 2 and one line naming the fix."""
from __future__ import annotations

import json
import textwrap

import matplotlib

matplotlib.use("Agg")
import pytest  # noqa: E402
import torch  # noqa: E402

from xadv import explainers as E  # noqa: E402
from xadv.cli import build_parser, main, resolve_method  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    torch.save(torch.rand(3, 3, 12, 12), d / "rgb.pt")
    torch.save({"not": "a tensor"}, d / "dict.pt")
    (d / "junk.pt").write_bytes(b"not a torch file")
    (d / "usermodels.py").write_text(textwrap.dedent("""
        import torch
        def make():
            return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                       torch.nn.Linear(4 * 12 * 12, 5))
    """))
    return d


# (arguments, a phrase the one-line message must contain); {d} is the fixture folder
USER_ERRORS = [
    (["attack", "--attack", "deepfool", "--eps", "0.1"], "has no budget"),
    (["attack", "--attack", "cw", "--eps", "0.1"], "has no budget"),
    (["attack", "--attack", "fgsm", "--steps", "5"], "single step"),
    (["attack", "--attack", "rfgsm", "--norm", "l2"], "linf only"),
    (["attack", "--attack", "deepfool", "--norm", "linf"], "l2 only"),
    (["attack", "--attack", "deletion", "--norm", "linf"], "l0 only"),
    (["attack", "--attack", "deletion", "--eps", "2.5"], "number of pixels"),
    (["attack", "--table", "--eps", "0.1"], "--eps do not apply"),
    (["fool", "--target", "other"], "--attack targeted only"),
    (["fool", "--sections", "patch"], "--table only"),
    (["fool", "--table", "--eps", "0.1"], "--eps do not apply"),
    (["explain", "--out", "{d}/fig.bmp"], "cannot write a .bmp"),
    (["explain", "--out", "{d}/fig"], "suffix-less"),
    (["explain", "--device", "cuda:0"], "CUDA is not available"),
    (["explain", "--device", "nodevice"], "not a torch device"),
    (["explain", "--weights", "{d}/missing.pt"], "no such file"),
    (["explain", "--weights", "{d}/junk.pt"], "state_dict file"),
    (["explain", "--method", "nope"], "unknown explainer"),
    (["explain", "--index", "99999"], "--index must be in [0, 449]"),
    (["explain", "--input", "{d}/rgb.pt"], "does not accept inputs of shape (3, 12, 12)"),
    (["explain", "--input", "{d}/rgb.pt", "--index", "3", "--model", "usermodels:make"], "--index must be in [0, 2]"),
    (["explain", "--input", "{d}/dict.pt"], "must hold one tensor"),
    (["explain", "--input", "{d}/missing.pt"], "no such file"),
    (["explain", "--model", "usermodels:make"], "needs inputs"),
    (["explain", "--model", "no_such_module:f"], "cannot import"),
    (["explain", "--model", "cifar_cnn", "--input", "{d}/rgb.pt"], "no shipped weights"),
    (["explain", "--model", "no-such-model"], "not a zoo model"),
    (["attack", "--model", "usermodels:make", "--input", "{d}/rgb.pt", "--labels", "{d}/dict.pt"], "--labels"),
    (["attack", "--attack", "pgd", "--input", "{d}/rgb.pt"], "does not accept inputs"),
    (["detect", "--model", "usermodels:make", "--input", "{d}/rgb.pt", "--n-train", "4", "--n-test", "4"],
     "fewer than --n-train"),
]


@pytest.mark.parametrize("args,phrase", USER_ERRORS, ids=[" ".join(a[:3]) for a, _ in USER_ERRORS])
def test_user_error_exits_2_with_one_line(args, phrase, files, capsys, monkeypatch):
    monkeypatch.chdir(files)
    args = [a.format(d=files) for a in args]
    if "--out" not in args:
        args += ["--out", str(files / ("o.png" if args[0] == "explain" else "o"))]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"xadv {args[0]}: error: "), err
    assert phrase in err, err
    assert "Traceback" not in err


def test_every_option_has_help_and_shows_its_default():
    p = build_parser()
    for name, sp in p._subparsers._group_actions[0].choices.items():
        text = sp.format_help()
        for act in sp._actions:
            if not act.option_strings or act.dest == "help":
                continue
            assert act.help, f"{name} {act.option_strings} has no help"
            if act.default not in (None, False) and not isinstance(act.default, bool):
                shown = " ".join(map(str, act.default)) if isinstance(act.default, list) else str(act.default)
                assert f"default: {shown}" in " ".join(text.split()), (name, act.dest)


def test_explain_method_help_lists_every_registered_explainer(monkeypatch):
    monkeypatch.setitem(E._REGISTRY, "brand_new", E.Saliency)
    sp = build_parser()._subparsers._group_actions[0].choices["explain"]
    text = " ".join(sp.format_help().split())
    for name in E.names():
        assert name in text
    assert resolve_method("Brand-New") == "brand_new"


@pytest.mark.parametrize("label,name", [("Grad-CAM", "gradcam"), ("Grad-CAM++", "gradcam_pp"),
                                        ("SmoothGrad", "smoothgrad"), ("IG", "integrated_gradients"),
                                        ("Input×Grad", "input_x_gradient"), ("LIME", "lime"),
                                        ("Saliency", "saliency"), ("grad_cam", "gradcam")])
def test_figure_labels_are_accepted_as_methods(label, name):
    assert resolve_method(label) == name


def _metrics(out):
    return json.loads((out / "metrics.json").read_text())


def test_fgsm_l2_runs_l2_and_stays_in_the_l2_ball(tmp_path):
    assert main(["attack", "--attack", "fgsm", "--norm", "l2", "--eps", "1.0", "--n", "8", "--explainer",
                 "saliency", "--formats", "png", "--out", str(tmp_path)]) == 0
    m = _metrics(tmp_path)
    assert "norm='l2'" in m["attack"] and m["mean_l2"] <= 1.0 + 1e-4
    # L-inf FGSM at eps 1 moves every pixel to a bound; L2 FGSM at eps 1 moves far less per pixel
    assert m["mean_linf"] < 1.0


def test_deletion_eps_is_a_fraction_or_a_count(tmp_path):
    for eps, want in (("0.5", "fraction=0.5"), ("20", "k=20")):
        out = tmp_path / eps
        assert main(["attack", "--attack", "deletion", "--eps", eps, "--n", "4", "--explainer", "saliency",
                     "--formats", "png", "--out", str(out)]) == 0
        m = _metrics(out)
        assert want in m["attack"]
    assert _metrics(tmp_path / "20")["mean_l0"] <= 20


def test_deepfool_applies_steps(tmp_path):
    assert main(["attack", "--attack", "deepfool", "--steps", "3", "--n", "4", "--explainer", "saliency",
                 "--formats", "png", "--out", str(tmp_path)]) == 0
    assert "steps=3" in _metrics(tmp_path)["attack"]


def test_attack_and_fool_take_a_user_model_and_input(tmp_path, files, monkeypatch):
    monkeypatch.chdir(files)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 12 * 12, 5))
    torch.save(net.state_dict(), tmp_path / "w.pt")
    assert main(["attack", "--model", "usermodels:make", "--weights", str(tmp_path / "w.pt"), "--input", "rgb.pt",
                 "--attack", "pgd", "--eps", "0.1", "--steps", "3", "--explainer", "saliency", "--formats", "png",
                 "--out", str(tmp_path / "a")]) == 0
    assert _metrics(tmp_path / "a")["n"] == 3
    assert main(["fool", "--model", "usermodels:make", "--weights", str(tmp_path / "w.pt"), "--input", "rgb.pt",
                 "--n", "2", "--steps", "3", "--formats", "png", "--out", str(tmp_path / "f")]) == 0
    assert _metrics(tmp_path / "f")["n"] == 2
