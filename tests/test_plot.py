"""xadv.plot: every plot type to PNG/PDF/SVG, embedded fonts, byte-for-byte reproducible files,
diverging maps white at zero, shared colour scales, tables and array export."""
from __future__ import annotations

import hashlib
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import xadv  # noqa: E402
import xadv.plot as xp  # noqa: E402
from xadv.results import AttackResult, DetectionReport, FoolingResult  # noqa: E402

FORMATS = ("png", "pdf", "svg")


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = xadv.zoo.digits_cnn()
    x, y = xadv.data.load_digits("test")
    x, y = x[:3], y[:3]
    ig = xadv.explain(model, x, method="ig", target=y, steps=8)
    cam = xadv.explain(model, x, method="gradcam", target=y)
    sal = xadv.explain(model, x, method="saliency", target=y)
    x_adv = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).sign()).clamp(0, 1)
    with torch.no_grad():
        pc, pa = torch.softmax(model(x), 1), torch.softmax(model(x_adv), 1)
    res = AttackResult(x_adv, x, y, pa.argmax(1) != y, pc.argmax(1), pa.argmax(1), pc.max(1).values,
                       pa.max(1).values, norms={"linf": (x_adv - x).abs().flatten(1).max(1).values})
    ig_adv = xadv.explain(model, x_adv, method="ig", target=y, steps=8)
    fool = FoolingResult(x_adv, x, y, ig, ig_adv, pc.argmax(1), pa.argmax(1), torch.ones(3, dtype=torch.bool),
                         similarity={"spearman": torch.tensor([0.5, 0.4, 0.3])})
    rng = np.random.default_rng(0)
    s = np.r_[rng.normal(0, 1, 60), rng.normal(1.5, 1, 60)]
    lab = np.r_[np.zeros(60), np.ones(60)]
    from sklearn.metrics import roc_auc_score, roc_curve

    fpr, tpr, _ = roc_curve(lab, s)
    report = DetectionReport(rows=[{"detector": "d", "attack": "PGD", "budget": "eps=0.1", "adaptive": False,
                                    "auroc": roc_auc_score(lab, s)}],
                             roc={"d|PGD|eps=0.1|False": (fpr, tpr)})
    mlp = torch.nn.Sequential(torch.nn.Linear(10, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
    tab = xadv.explain(mlp, torch.randn(4, 10, generator=torch.Generator().manual_seed(3)), method="ig", steps=16)
    return dict(tab=tab, model=model, x=x, y=y, ig=ig, cam=cam, sal=sal, res=res, ig_adv=ig_adv, fool=fool,
                report=report, scores=(s, lab))


def _makers(d):
    f = np.linspace(0, 1, 11)
    return {
        "heatmap": lambda: xp.heatmap(d["ig"], colorbar=True, title="IG"),
        "overlay": lambda: xp.overlay(d["cam"], colorbar=True, title="Grad-CAM"),
        "explanation_grid": lambda: xp.explanation_grid({"IG": d["ig"], "Grad-CAM": d["cam"]}, n=2),
        "attack_grid": lambda: xp.attack_grid(d["res"], d["ig"], d["ig_adv"], n=2),
        "fooling_grid": lambda: xp.fooling_grid(d["fool"], n=2, kind="overlay"),
        "success_curve": lambda: xp.success_curve([0.1, 0.2], {"PGD": [0.5, 0.9], "FGSM": [0.3, 0.7]}, norm="linf"),
        "deletion_curve": lambda: xp.deletion_curve(f, {"IG": np.exp(-3 * f)[None].repeat(4, 0) + 0.01 * np.arange(4)[:, None]}),
        "roc_curve": lambda: xp.roc_curve(d["report"]),
        "fooling_curve": lambda: xp.fooling_curve([0.01, 0.02], {"IG": [0.8, 0.4]}, key="spearman"),
        "bar": lambda: xp.bar(d["tab"], index=1, feature_names=[f"feature {i}" for i in range(10)], top=6),
    }


KINDS = ["heatmap", "overlay", "explanation_grid", "attack_grid", "fooling_grid", "success_curve",
         "deletion_curve", "roc_curve", "fooling_curve", "bar"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_plot_renders_reproducibly_with_embedded_fonts(setup, kind, tmp_path):
    make = _makers(setup)[kind]
    digests = {}
    for rep in range(2):
        with xp.style("paper", columns=2, dpi=100):
            fig = make()
            for ext in FORMATS:
                p = xp.save(fig, tmp_path / f"{kind}.{ext}")
                digests.setdefault(ext, []).append(hashlib.sha256(p.read_bytes()).hexdigest())
            plt.close(fig)
    for ext in FORMATS:  # a fresh figure from the same inputs gives the same bytes
        assert digests[ext][0] == digests[ext][1], f"{kind}.{ext} is not reproducible"
    pdf = (tmp_path / f"{kind}.pdf").read_bytes()
    assert b"/FontFile2" in pdf, "TrueType (Type 42) fonts must be embedded in the PDF"
    assert b"/Subtype /Type3" not in pdf
    assert b"CreationDate" not in pdf and b"Producer" not in pdf
    svg = (tmp_path / f"{kind}.svg").read_text()
    assert "<text" in svg, "SVG text must stay text"
    assert "<dc:date>" not in svg
    png = (tmp_path / f"{kind}.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and b"Software" not in png
    from PIL import Image

    with Image.open(tmp_path / f"{kind}.png") as im:
        assert im.size[0] > 150 and im.size[1] > 100


def test_diverging_map_is_white_at_zero_and_symmetric(setup):
    assert xp.DIVERGING(0.5)[:3] == pytest.approx((1.0, 1.0, 1.0), abs=1e-3)
    m = np.array([[-1.0, 0.0], [0.25, 3.0]])
    fig = xp.heatmap(m, percentile=100)
    im = fig.axes[0].images[0]
    assert im.norm.vmin == -im.norm.vmax == -3.0
    assert np.allclose(im.to_rgba(np.array([[0.0]]))[0, 0, :3], 1.0, atol=2e-3)
    assert im.to_rgba(np.array([[3.0]]))[0, 0, 0] > 0.3 > im.to_rgba(np.array([[3.0]]))[0, 0, 2]  # red
    assert im.to_rgba(np.array([[-3.0]]))[0, 0, 2] > 0.3 > im.to_rgba(np.array([[-3.0]]))[0, 0, 0]  # blue
    plt.close(fig)
    # absolute maps: sequential, starting at white
    fig = xp.heatmap(setup["sal"])
    im = fig.axes[0].images[0]
    assert im.norm.vmin == 0 and np.allclose(im.to_rgba(np.array([[0.0]]))[0, 0, :3], 1.0, atol=1e-3)
    plt.close(fig)


def test_percentile_clipping_and_sign_handling():
    m = np.zeros((10, 10))
    m[0, 0] = 100.0  # one outlier
    m[1:, :] = np.linspace(-1, 1, 90).reshape(9, 10)
    lim = xp.color_limit([m], signed=True, percentile=99)
    assert lim == pytest.approx(np.percentile(np.abs(m), 99))
    assert lim < 100
    fig = xp.heatmap(m, percentile=99)
    assert fig.axes[0].images[0].norm.vmax == pytest.approx(lim)
    plt.close(fig)
    fig = xp.heatmap(m, sign="absolute", percentile=100)
    assert fig.axes[0].images[0].norm.vmin == 0 and fig.axes[0].images[0].norm.vmax == 100
    plt.close(fig)
    with pytest.raises(ValueError, match="sign"):
        xp.heatmap(m, sign="both")


def test_grid_shares_one_scale_per_column_group_and_labels(setup):
    fig = xp.attack_grid(setup["res"], setup["ig"], setup["ig_adv"], n=3)
    # columns: input, adversarial, perturbation, map before, map after (3 rows) + 1 shared colorbar
    map_axes = [ax for ax in fig.axes if ax.images and isinstance(ax.images[-1].norm, matplotlib.colors.TwoSlopeNorm)]
    limits = {round(ax.images[-1].norm.vmax, 12) for ax in map_axes}
    assert len(map_axes) == 6 and len(limits) == 1, "before and after must share one colour scale"
    both = np.concatenate([np.abs(setup["ig"].numpy("sum")).ravel(), np.abs(setup["ig_adv"].numpy("sum")).ravel()])
    assert limits.pop() == pytest.approx(np.percentile(both, 99.5))
    titles = [ax.get_title() for ax in fig.axes]
    # the explainer is named, the budget when the result has an attack repr (titles may wrap to two lines)
    assert any(re.fullmatch(r"perturbation(\sε=[0-9.]+)?\s\(×\d+(\.\d+)?\)", " ".join(t.split())) for t in titles), titles
    assert "IG before" in [" ".join(t.split()) for t in titles]
    # before and after share one scale, so they share one colour bar spanning both columns
    assert sum(len(ax.child_axes) for ax in fig.axes) == 1
    labels = [ax.get_xlabel() for ax in fig.axes if ax.get_xlabel()]
    p, c = int(setup["res"].pred_clean[0]), float(setup["res"].conf_clean[0])
    assert f"{p} ({100 * c:.0f}%)" in labels
    plt.close(fig)
    # each panel on its own scale when not shared
    fig = xp.attack_grid(setup["res"], setup["ig"], setup["ig_adv"], n=3, share="none")
    lims = {round(ax.images[-1].norm.vmax, 12) for ax in fig.axes
            if ax.images and isinstance(ax.images[-1].norm, matplotlib.colors.TwoSlopeNorm)}
    assert len(lims) == 6
    plt.close(fig)


def test_perturbation_amplification_factor():
    from xadv.plot._style import nice_factor

    assert nice_factor(0.1)[0] == 5 and nice_factor(0.03)[0] == 10 and nice_factor(0.2)[0] == 2
    assert nice_factor(0.9)[0] == 1 and nice_factor(0.0)[0] == 1


def test_images_and_maps_conversion(setup):
    rgb = torch.rand(3, 16, 12)
    assert xp.to_image(rgb).shape == (16, 12, 3)
    assert xp.to_image(rgb.permute(1, 2, 0).numpy()).shape == (16, 12, 3)
    assert xp.to_image(torch.rand(1, 1, 8, 8)).shape == (8, 8)
    norm = xp.to_image(torch.randn(3, 8, 8) * 3)  # normalised inputs are rescaled for display
    assert norm.min() == 0 and norm.max() == 1
    # Grad-CAM's low-resolution map upsampled to the image
    raw = setup["cam"].raw[0]
    assert xp.to_map(raw, shape=(28, 28)).shape == (28, 28)
    fig = xp.overlay(setup["x"][0], raw, sign="absolute")
    assert fig.axes[0].images[-1].get_array().shape == (28, 28)
    plt.close(fig)
    fig = xp.overlay(rgb, torch.randn(3, 16, 12), colorbar=True)  # RGB input, signed map
    assert len(fig.axes) == 2
    plt.close(fig)
    with pytest.raises(ValueError, match="batch"):
        xp.to_image(torch.rand(2, 1, 8, 8))
    with pytest.raises(TypeError, match="attributions"):
        xp.overlay(torch.rand(8, 8))


def test_style_sets_paper_settings_and_restores():
    before = dict(matplotlib.rcParams)
    with xp.style("paper", columns=2) as s:
        assert s.width == pytest.approx(7.0)
        assert matplotlib.rcParams["pdf.fonttype"] == 42
        assert matplotlib.rcParams["svg.fonttype"] == "none"
        assert matplotlib.rcParams["font.size"] == 8
        assert xp.figure(columns=1, aspect=0.5).get_size_inches() == pytest.approx((3.4, 1.7))
    plt.close("all")
    assert matplotlib.rcParams["figure.figsize"] == before["figure.figsize"]
    assert matplotlib.rcParams["pdf.fonttype"] == before["pdf.fonttype"]
    with pytest.raises(ValueError, match="columns"):
        xp.style("paper", columns=3)
    with pytest.raises(ValueError, match="style"):
        xp.style("poster")


def test_save_picks_format_and_exports_attributions(setup, tmp_path):
    fig = xp.heatmap(setup["ig"])
    p = xp.save(fig, tmp_path / "sub" / "fig.pdf", attributions=setup["ig"])
    assert p.read_bytes()[:5] == b"%PDF-"
    z = np.load(tmp_path / "sub" / "fig.npz")
    assert np.array_equal(z["attributions"], setup["ig"].numpy())
    assert str(z["method"]) == "integrated_gradients" and z["target"].tolist() == setup["y"].tolist()
    with pytest.raises(ValueError, match="extension"):
        xp.save(fig, tmp_path / "fig.docx")
    plt.close(fig)
    a = xp.export_attributions(tmp_path / "a.npz", {"IG": setup["ig"], "m": np.ones(3)}).read_bytes()
    b = xp.export_attributions(tmp_path / "b", {"IG": setup["ig"], "m": np.ones(3)}).read_bytes()
    assert a == b  # no time stamps in the archive
    assert set(np.load(tmp_path / "b.npz").files) >= {"IG/attributions", "IG/inputs", "m"}


def test_tables_latex_and_markdown(tmp_path):
    rows = [{"attack": "PGD_10", "success": 0.912, "n": 128}, {"attack": "FGSM & co", "success": float("nan"),
                                                               "n": 128}]
    tex = xp.to_latex(rows, best={"success": "max"}, caption="Success 100%", label="tab:s")
    assert tex.splitlines()[:2] == [r"\begin{table}[t]", r"\centering"]
    for cmd in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}{lrr}"):
        assert cmd in tex
    assert r"PGD\_10 & \textbf{0.912} & 128 \\" in tex
    assert r"FGSM \& co & -- & 128 \\" in tex and r"Success 100\%" in tex
    assert xp.latex_escape("Input×Grad ε=0.1") == r"Input$\times$Grad $\varepsilon$=0.1"
    md = xp.to_markdown(rows, best={"success": "max"})
    assert md.splitlines() == ["| attack | success | n |", "|:--|--:|--:|", "| PGD_10 | **0.912** | 128 |",
                               "| FGSM & co | – | 128 |"]
    assert xp.to_markdown({"a": {"x": 1.0}}, index_name="row").splitlines()[2] == "| a | 1.000 |"
    # values that would print as 0.000 keep their significant digits; zero stays 0.000
    assert xp.to_markdown([{"mse": 3.32e-06, "z": 0.0, "s": 0.0004}]).splitlines()[2] == "| 3.32e-06 | 0.000 | 4.00e-04 |"
    assert xp.save_table(rows, tmp_path / "t.tex").read_text().startswith(r"\begin{tabular}")
    with pytest.raises(ValueError, match=".tex or .md"):
        xp.save_table(rows, tmp_path / "t.csv")


def test_curves_accept_result_objects_and_check_shapes(setup):
    fig = xp.success_curve([0.1, 0.2], {"noise": [setup["res"], setup["res"]]})
    line = fig.axes[0].lines[0]
    assert line.get_ydata().tolist() == [setup["res"].success_rate] * 2
    plt.close(fig)
    fig = xp.fooling_curve([0.1], {"IG": [setup["fool"]]}, key="spearman")
    assert fig.axes[0].lines[0].get_ydata()[0] == pytest.approx(0.4)
    plt.close(fig)
    with pytest.raises(ValueError, match="budgets"):
        xp.success_curve([0.1, 0.2, 0.3], [0.5, 0.6])
    with pytest.raises(ValueError, match="S="):
        xp.deletion_curve([0, 0.5, 1], np.ones((2, 4)))
    s, lab = setup["scores"]
    fig = xp.roc_curve({"det": (s, lab)})
    from sklearn.metrics import roc_auc_score

    assert f"AUROC {roc_auc_score(lab, s):.3f}" in fig.axes[0].get_legend().get_texts()[0].get_text()
    plt.close(fig)
    with pytest.raises(KeyError, match="available"):
        xp.roc_curve(setup["report"], keys=["nope"])


def test_grid_input_errors(setup):
    with pytest.raises(ValueError, match="same number"):
        xp.grid([xp.Column(setup["x"], "image"), xp.Column(setup["x"][:2], "image")])
    with pytest.raises(TypeError, match="Column"):
        xp.grid([setup["x"]])
    with pytest.raises(ValueError, match="kind"):
        xp.Column(setup["x"], "histogram")
    with pytest.raises(ValueError, match="share"):
        xp.grid([xp.Column(setup["x"], "image")], share="rows")


def test_bar_orders_by_magnitude_and_colours_by_sign(setup):
    a = np.array([0.1, -0.5, 0.3, 0.0])
    fig = xp.bar(a, feature_names=["a", "b", "c", "d"], top=3)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "c", "b"]  # largest |value| on top
    widths = [p.get_width() for p in ax.patches]
    assert widths == [0.1, 0.3, -0.5]
    red, blue = ax.patches[0].get_facecolor(), ax.patches[2].get_facecolor()
    assert red[0] > red[2] and blue[2] > blue[0]
    plt.close(fig)
    with pytest.raises(ValueError, match="heatmap"):
        xp.bar(setup["ig"])
    with pytest.raises(ValueError, match="names"):
        xp.bar(a, feature_names=["a"])


def test_fooling_grid_of_a_targeted_manipulation_shows_the_target_on_the_maps_scale():
    import torch
    from xadv.fooling import TargetedManipulation

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 64, 3))
    x = torch.rand(2, 1, 8, 8)
    res = TargetedManipulation(torch.rand(8, 8), eps=0.1, steps=3)(net, x)
    fig = xp.fooling_grid(res, n=2)
    titles = [" ".join(ax.get_title().split()) for ax in fig.axes if ax.get_title()]
    # the explainer and the budget are named in the titles
    assert titles[-1] == "target map" and "Saliency after" in titles
    assert any(re.fullmatch(r"perturbation ε=0\.1 \(×\d+\)", t) for t in titles), titles
    map_axes = [ax for ax in fig.axes if ax.images and " ".join(ax.get_title().split()) in
                ("", "Saliency before", "Saliency after", "target map")
                and ax.images[-1].get_array().ndim == 2 and ax.images[-1].get_cmap().name != "gray"]
    # before, after and target: unit-sum maps on one colour scale
    assert len({round(ax.images[-1].norm.vmax, 12) for ax in map_axes}) == 1
    for ax in map_axes:
        assert float(np.asarray(ax.images[-1].get_array()).sum()) == pytest.approx(1.0, rel=1e-5)
    plt.close(fig)


def test_long_column_titles_wrap_to_the_panel_width():
    from xadv.plot._maps import _wrap_title

    assert _wrap_title("input", 1.2) == "input"
    wrapped = _wrap_title("map after the attack", 1.0)
    assert "\n" in wrapped and wrapped.replace("\n", " ") == "map after the attack"
    assert _wrap_title("a rather long column title for a narrow panel", 0.8).count("\n") == 2   # at most 3 lines
