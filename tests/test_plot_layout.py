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


# ---------------------------------------------------------------------------- style= on every figure function
def _calls(data):
    """Every public figure function of xadv.plot with small valid arguments."""
    net, x, exps, atk, fool, rep = data
    f = np.linspace(0, 1, 5)
    return {
        "heatmap": lambda **k: xp.heatmap(exps["integrated_gradients"], colorbar=True, title="IG", **k),
        "overlay": lambda **k: xp.overlay(exps["integrated_gradients"], colorbar=True, title="IG", **k),
        "bar": lambda **k: xp.bar(torch.randn(1, 5), title="tabular", **k),
        "grid": lambda **k: xp.grid([xp.Column(x[:2], "image", "input"), xp.Column(exps["saliency"][:2], "map", "S")],
                                    **k),
        "explanation_grid": lambda **k: xp.explanation_grid(exps, n=2, **k),
        "attack_grid": lambda **k: xp.attack_grid(atk, exps["saliency"], exps["saliency"], n=2, **k),
        "fooling_grid": lambda **k: xp.fooling_grid(fool, n=2, **k),
        "budget_curve": lambda **k: xp.budget_curve([0.1, 0.2], {"a": [0.1, 0.5]}, title="t", **k),
        "success_curve": lambda **k: xp.success_curve([0.1, 0.2], {"PGD": [0.3, 0.9]}, **k),
        "fooling_curve": lambda **k: xp.fooling_curve([0.1, 0.2], {"S": [0.8, 0.4]}, **k),
        "deletion_curve": lambda **k: xp.deletion_curve(f, {"S": 1 - f}, **k),
        "roc_curve": lambda **k: xp.roc_curve(rep, log_fpr=True, **k),
        "text": lambda **k: xp.text(["a", "great", "film"], [0.1, 2.0, -0.3], **k),
    }


def test_every_public_figure_function_takes_style(data):
    import inspect

    figure_functions = {n for n in xp.__all__ if n not in {
        "style", "resolve_style", "figure", "save", "export_attributions", "COLUMN_WIDTHS", "Column", "to_image",
        "to_map", "color_limit", "norm_for", "default_reduce", "DIVERGING", "SEQUENTIAL", "to_latex",
        "to_markdown", "save_table", "latex_escape", "text_html", "html_report", "markdown_to_html"}}
    assert figure_functions == set(_calls(data))        # a new figure function must be added to this test
    for name in figure_functions:
        p = inspect.signature(getattr(xp, name)).parameters
        assert "style" in p and p["style"].default is None, name
        assert "style :" in getattr(xp, name).__doc__ or "style" in getattr(xp, name).__doc__, name


def _state():
    import matplotlib as mpl
    from xadv.plot import _style

    return {k: v for k, v in mpl.rcParams.items()}, dict(_style._CURRENT_CMAPS)


def _text_sizes(fig, pred):
    return {round(t.get_fontsize(), 2) for t in fig.findobj(Text) if t.get_text().strip() and pred(t)}


@pytest.mark.parametrize("name", [
    "heatmap", "overlay", "bar", "grid", "explanation_grid", "attack_grid", "fooling_grid", "budget_curve",
    "success_curve", "fooling_curve", "deletion_curve", "roc_curve", "text"])
def test_style_applies_to_the_figure_and_leaves_the_global_settings(data, name):
    import matplotlib as mpl

    call = _calls(data)[name]
    before = _state()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fig = call(style="dark")
    assert _state() == before, "style= changed the global rcParams or colour maps"
    # the figure was built with the dark style: black figure, white text, notebook dpi
    assert fig.get_facecolor()[:3] == (0.0, 0.0, 0.0)
    assert fig.dpi == 100
    # drawn later, outside the style, tick labels keep the style's colour (they are created lazily)
    fig.canvas.draw()
    ticks = [t for ax in fig.axes for a in [ax] + list(ax.child_axes)
             for t in a.get_xticklabels() + a.get_yticklabels() if t.get_text().strip()]
    texts = [t for t in fig.findobj(Text) if t.get_text().strip() and t.get_visible()]
    assert texts
    white = [t for t in texts if mpl.colors.to_rgb(t.get_color()) == (1.0, 1.0, 1.0)]
    # every text is white except words drawn on light boxes (xp.text tokens, "constant" marks)
    assert len(white) >= len(texts) // 2, (name, len(white), len(texts))
    for t in ticks:
        assert mpl.colors.to_rgb(t.get_color()) == (1.0, 1.0, 1.0), (name, t.get_text())
    # maps use the dark style's colour maps (black at zero)
    for im in [im for ax in fig.axes for im in ax.images if im.get_cmap().name not in ("gray", "Greys_r")]:
        assert im.get_cmap().name in ("berlin", "inferno"), (name, im.get_cmap().name)
    plt.close(fig)
    # a dict of rcParams: the font size reaches the axes titles and, lazily drawn, the tick labels
    fig = call(style={"base": "paper", "font_size": 11, "axes.titlesize": 13})
    assert _state() == before
    fig.canvas.draw()
    titles = [ax.title for ax in fig.axes if ax.title.get_text()]
    assert all(t.get_fontsize() == 13 for t in titles), name
    ticks = [t for ax in fig.axes for t in ax.get_xticklabels() + ax.get_yticklabels() if t.get_text().strip()]
    if name not in ("text",) and ticks:
        assert {t.get_fontsize() for t in ticks} == {10.0}, name      # font_size - 1
    plt.close(fig)


def test_style_forms_and_errors(tmp_path, data):
    import matplotlib as mpl
    from PIL import Image

    e = data[2]["integrated_gradients"]
    before = _state()
    # a .mplstyle file (read as key: value pairs, nothing is executed), a matplotlib style name, a style object
    f = tmp_path / "mine.mplstyle"
    f.write_text("axes.titlesize: 17\nfigure.dpi: 60\nsavefig.dpi: 40\n")
    fig = xp.heatmap(e, title="t", style=f)
    assert fig.axes[0].title.get_fontsize() == 17 and fig.dpi == 60
    # xp.save writes at the figure's style dpi, not the global one
    out = xp.save(fig, tmp_path / "a.png")
    with Image.open(out) as im:
        w = im.size[0]
    fig2 = xp.heatmap(e, title="t")
    with Image.open(xp.save(fig2, tmp_path / "b.png")) as im:
        w2 = im.size[0]
    assert w < w2 * 0.5, (w, w2)
    fig = xp.heatmap(e, title="t", style="ggplot")
    assert fig.axes[0].get_facecolor()[:3] != (1.0, 1.0, 1.0)
    fig = xp.heatmap(e, style={"cmap_signed": "PuOr"})
    assert fig.axes[0].images[0].get_cmap().name == "PuOr"
    assert _state() == before
    plt.close("all")
    with pytest.raises(ValueError, match="not matplotlib rcParams"):
        xp.heatmap(e, style={"font.sise": 3})
    with pytest.raises(ValueError, match="unknown style 'poster'"):
        xp.heatmap(e, style="poster")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        xp.heatmap(e, style=tmp_path / "missing.mplstyle")
    with pytest.raises(ValueError, match="unknown colour map"):
        xp.heatmap(e, style={"cmap_absolute": "no-such-map"})
    with pytest.raises(TypeError, match="style must be"):
        xp.heatmap(e, style=3)
    assert _state() == before
    assert mpl.rcParams["axes.titlesize"] == before[0]["axes.titlesize"]


# ---------------------------------------------------------------------------- labelled shared colour bars
def _colorbars(fig):
    caxes = [c for ax in fig.axes for c in [ax] + list(ax.child_axes)]
    return [c._colorbar for c in caxes if getattr(c, "_colorbar", None) is not None]


def _panels(fig):
    return [ax for ax in fig.axes if ax.images]


@pytest.mark.parametrize("share,expected", [("column", 4), ("all", 1), ("row", 3), ("none", 0)])
def test_shared_scales_get_one_labelled_colour_bar_each(data, share, expected):
    exps = data[2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with xp.style("paper", columns=2):
            fig = xp.explanation_grid(exps, n=3, share=share)
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    bars = _colorbars(fig)
    assert len(bars) == expected
    panels = [ax.get_window_extent(r) for ax in _panels(fig)]
    for cb in bars:
        label = cb.ax.xaxis.get_label() if cb.orientation == "horizontal" else cb.ax.yaxis.get_label()
        assert "attribution" in label.get_text()
        assert {"all": "one scale for all panels", "row": "per row", "column": "shared scale"}[share] in \
            label.get_text().replace("\n", " ")
        for box in (cb.ax.get_window_extent(r), label.get_window_extent(r), cb.ax.get_tightbbox(r)):
            for p in panels:
                assert not _overlap(box, p), f"colour bar of {label.get_text()!r} overlaps a panel"
    assert not check_layout(fig)
    # the bar's colour limits are those of the panels it describes
    if share == "all":
        lims = {round(im.norm.vmax, 12) for ax in _panels(fig) for im in ax.images if im.get_cmap().name != "gray"}
        assert lims == {round(bars[0].norm.vmax, 12)}
    plt.close(fig)


def test_fooling_and_attack_grids_label_their_bars(data):
    _, _, exps, atk, fool, _ = data
    fig = xp.fooling_grid(fool, n=2)
    labels = [cb.ax.xaxis.get_label().get_text().replace("\n", " ") for cb in _colorbars(fig)]
    assert labels == ["|attribution| (absolute, shared scale)", "after − before (maps at unit max)"]
    plt.close(fig)
    fig = xp.attack_grid(atk, exps["saliency"], exps["saliency"], n=2)
    assert len(_colorbars(fig)) == 1          # before and after share one scale and one bar
    plt.close(fig)
    fig = xp.heatmap(exps["integrated_gradients"], colorbar=True)
    assert [cb.ax.yaxis.get_label().get_text() for cb in _colorbars(fig)] == ["attribution"]
    plt.close(fig)
