"""Every figure type is rendered and checked: no legend over the data, no text over another text."""
from __future__ import annotations

import itertools
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.text import Text  # noqa: E402

import xadv  # noqa: E402
import xadv.plot as xp  # noqa: E402
from xadv import DetectionReport  # noqa: E402


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3, padding=1),
                               torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 10 * 10, 3)).eval()


@pytest.fixture(scope="module")
def data():
    return make_data()


def make_data():
    from xadv import attacks as A
    from xadv import fooling as Fo

    net = _net()
    x = torch.rand(4, 1, 10, 10, generator=torch.Generator().manual_seed(0))
    y = net(x).argmax(1)
    exps = {m: xadv.explain(net, x, method=m) for m in ("saliency", "input_x_gradient", "gradcam")}
    exps["integrated_gradients"] = xadv.explain(net, x, method="ig", steps=4)
    atk = A.PGD(eps=0.1, steps=2, seed=0)(net, x, y)
    fool = Fo.TopKAttack(xadv.explainers.get("saliency"), eps=0.05, steps=2, seed=0)(net, x, y)
    rng = np.random.default_rng(0)
    rows, roc = [], {}
    for det, atk_name, b in itertools.product(["saliency", "ml-loo", "mahalanobis"], ["FGSM", "PGD"], ["0.1", "0.2"]):
        s = np.r_[rng.normal(0, 1, 60), rng.normal(1.5, 1, 60)]
        from sklearn.metrics import roc_auc_score, roc_curve

        lab = np.r_[np.zeros(60), np.ones(60)]
        fpr, tpr, _ = roc_curve(lab, s)
        k = f"{det}|{atk_name}|eps={b}|False"
        roc[k] = (fpr, tpr)
        rows.append({"detector": det, "attack": atk_name, "budget": f"eps={b}", "adaptive": False,
                     "auroc": float(roc_auc_score(lab, s))})
    return net, x, exps, atk, fool, DetectionReport(rows=rows, roc=roc)


def _figures(data):
    net, x, exps, atk, fool, rep = data
    f = np.linspace(0, 1, 11)
    curves = {n: np.clip(1 - f[None] * (i + 1) / 2 + 0.05 * np.random.default_rng(i).normal(size=(4, 11)), 0, 1)
              for i, n in enumerate(["Saliency", "Input×Grad", "SmoothGrad", "IG", "Grad-CAM", "Grad-CAM++", "LIME"])}
    yield "explanation_grid", xp.explanation_grid(exps, n=4)
    yield "attack_grid", xp.attack_grid(atk, exps["saliency"], exps["saliency"], n=4)
    yield "fooling_grid", xp.fooling_grid(fool, n=4)
    yield "heatmap", xp.heatmap(exps["integrated_gradients"], colorbar=True, title="IG · class 1")
    yield "overlay", xp.overlay(exps["integrated_gradients"])
    yield "deletion_curve", xp.deletion_curve(f, curves, kind="deletion")
    yield "insertion_curve", xp.deletion_curve(f, {k: 1 - v for k, v in curves.items()}, kind="insertion")
    rates = {n: [0.1 * i, 0.3 + 0.1 * i, 0.6 + 0.05 * i, 0.9] for i, n in
             enumerate(["FGSM", "PGD-10", "ExplainerPGD[IG]-10", "ExplainerPGD[Grad-CAM]-10"])}
    yield "success_curve", xp.success_curve([0.05, 0.1, 0.2, 0.3], rates, norm="linf")
    yield "fooling_curve", xp.fooling_curve([0.02, 0.05, 0.1], {"Saliency": [0.6, 0.4, 0.2], "IG": [0.8, 0.6, 0.5]},
                                            key="topk_intersection")
    yield "roc_curve", xp.roc_curve(rep)
    yield "roc_curve_log", xp.roc_curve(rep, log_fpr=True)
    yield "bar", xp.bar(torch.randn(1, 12), feature_names=[f"feature {i}" for i in range(12)])


def _texts(fig):
    r = fig.canvas.get_renderer()
    out = []
    for t in fig.findobj(Text):
        if not t.get_visible() or not t.get_text().strip() or t.axes is not None and not t.axes.get_visible():
            continue
        if t.get_alpha() == 0:
            continue
        out.append((t.get_text(), t.get_window_extent(r)))
    return out


def _overlap(a, b, tol=0.5):
    return (min(a.x1, b.x1) - max(a.x0, b.x0)) > tol and (min(a.y1, b.y1) - max(a.y0, b.y0)) > tol


def check_layout(fig):
    """Problems of a drawn figure: legends over plotted points, texts over texts."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    problems = []
    for ax in fig.axes:
        leg = ax.get_legend()
        if leg is None:
            continue
        box = leg.get_window_extent(r)
        for line in ax.get_lines():
            xy = line.get_xydata()
            if not len(xy):
                continue
            pts = ax.transData.transform(np.asarray(xy, dtype=float))
            # dense samples along the segments, not only the vertices
            seg = np.concatenate([np.linspace(p, q, 12) for p, q in zip(pts[:-1], pts[1:])]) if len(pts) > 1 else pts
            inside = (seg[:, 0] > box.x0) & (seg[:, 0] < box.x1) & (seg[:, 1] > box.y0) & (seg[:, 1] < box.y1)
            if inside.any():
                problems.append(f"legend covers line {line.get_label()!r}")
    texts = _texts(fig)
    for (s, a), (t, b) in itertools.combinations(texts, 2):
        if _overlap(a, b):
            problems.append(f"text {s!r} overlaps {t!r}")
    return problems


def test_checker_catches_a_legend_over_a_line_and_overlapping_texts():
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1], [0.95, 0.95], label="a long legend label over the line")
    ax.plot([0, 1], [0.0, 0.0], label="b")
    ax.legend(loc="upper left")
    ax.text(0.5, 0.5, "some text")
    ax.text(0.52, 0.5, "other text")
    p = check_layout(fig)
    plt.close(fig)
    assert any("legend covers" in q for q in p) and any("overlaps" in q for q in p)


@pytest.mark.parametrize("style", ["paper", "notebook"])
def test_every_figure_type_is_laid_out_cleanly(data, style):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # constant-map warnings are tested elsewhere
        with xp.style(style, columns=2):
            bad = {}
            for name, fig in _figures(data):
                p = check_layout(fig)
                if p:
                    bad[name] = p[:3]
                plt.close(fig)
    assert not bad, bad


def test_constant_maps_warn_and_are_marked():
    from xadv import Explanation

    x = torch.rand(2, 1, 6, 6)
    flat = Explanation(torch.zeros_like(x), x, torch.tensor([0, 1]), method="gradcam")
    with pytest.warns(UserWarning, match="constant"):
        fig = xp.heatmap(flat, title="Grad-CAM")
    assert any("constant" in t.get_text() for t in fig.findobj(Text))
    plt.close(fig)
    real = Explanation(torch.randn_like(x), x, torch.tensor([0, 1]), method="saliency")
    with pytest.warns(UserWarning, match="constant"):
        fig = xp.explanation_grid([real, flat], n=2)
    marks = [t for t in fig.findobj(Text) if "constant" in t.get_text()]
    assert len(marks) == 2             # both samples of the flat column, none of the real one
    titles = {t.get_text() for t in fig.findobj(Text)}
    assert {"Saliency", "Grad-CAM"} <= titles
    plt.close(fig)


def test_plot_functions_take_one_explanation_a_list_or_a_dict():
    from xadv import Explanation

    x = torch.rand(2, 1, 6, 6)
    e = Explanation(torch.randn_like(x), x, torch.tensor([0, 1]), method="integrated_gradients")
    for arg in (e, [e, e], {"mine": e}):
        fig = xp.explanation_grid(arg, n=2)
        plt.close(fig)
    with pytest.raises(TypeError, match="Explanation, a list or a dict"):
        xp.explanation_grid(42)
