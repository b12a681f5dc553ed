"""Result objects in a shell and a notebook: short reprs, HTML with thumbnails, indexing, per-sample frames."""
from __future__ import annotations

import re

import pytest
import torch

import xadv
from xadv import AttackResult, DetectionReport, Explanation, FoolingResult


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(3 * 8 * 8, 4)).eval()


@pytest.fixture(scope="module")
def results():
    from xadv import attacks as A
    from xadv import fooling as Fo

    net = _net()
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = net(x).argmax(1)
    atk = A.PGD(eps=0.1, steps=3, seed=0)(net, x, y)
    fool = Fo.TopKAttack(xadv.explainers.get("saliency"), eps=0.05, steps=2, seed=0)(net, x[:6], y[:6])
    e = xadv.explain(net, x, method="ig", steps=4)
    return atk, fool, e


def test_reprs_are_short_and_say_shapes_rates_settings(results):
    atk, fool, e = results
    for r, words in ((atk, ["n=16", "16x1x8x8", "success_rate=", "PGD("]),
                     (fool, ["n=6", "kept_rate=", "method='saliency'", "TopKAttack("]),
                     (e, ["integrated_gradients", "(16, 1, 8, 8)", "steps=4"])):
        s = repr(r)
        assert len(s) < 500, (type(r).__name__, len(s))
        for w in words:
            assert w in s, (w, s)


def test_html_has_a_table_and_inline_png_thumbnails(results):
    for r in results:
        h = r._repr_html_()
        assert "<table" in h and h.count("data:image/png;base64,") >= 6
        assert len(h) < 200_000


@pytest.mark.parametrize("which", [0, 1, 2])
def test_indexing_and_slicing_every_result(results, which):
    r = results[which]
    n = len(r)
    assert len(r[0]) == 1 and len(r[-1]) == 1 and len(r[1:4]) == 3 and len(r[[0, 2]]) == 2
    mask = torch.zeros(n, dtype=torch.bool)
    mask[[1, 3]] = True
    sub = r[mask]
    assert len(sub) == 2
    x = r.inputs if isinstance(r, Explanation) else r.x
    xs = sub.inputs if isinstance(sub, Explanation) else sub.x
    assert torch.equal(xs, x[[1, 3]])
    if isinstance(r, AttackResult):
        assert torch.equal(sub.norms["l2"], r.norms["l2"][[1, 3]]) and sub.attack == r.attack
    if isinstance(r, FoolingResult):
        assert torch.equal(sub.explanation_adv.attributions, r.explanation_adv.attributions[[1, 3]])
        assert torch.equal(sub.similarity["spearman"], r.similarity["spearman"][[1, 3]])
    with pytest.raises(IndexError, match=re.escape(f"valid: 0..{n - 1}")):
        r[n]
    with pytest.raises(IndexError, match="valid"):
        r[[0, -n - 1]]
    with pytest.raises(IndexError, match="mask"):
        r[torch.ones(n + 1, dtype=torch.bool)]


def test_to_frame_one_row_per_sample(results):
    pytest.importorskip("pandas")
    atk, fool, e = results
    f = atk.to_frame()
    assert len(f) == 16 and {"y", "pred_adv", "success", "l2", "linf", "queries"} <= set(f.columns)
    assert f["success"].mean() == pytest.approx(atk.success_rate)
    g = fool.to_frame()
    assert len(g) == 6 and {"kept", "spearman", "topk_intersection"} <= set(g.columns)
    h = e.to_frame()
    assert len(h) == 16 and {"target", "pred", "delta", "attribution_sum"} <= set(h.columns)
    assert h["attribution_sum"].to_numpy() == pytest.approx(e.attributions.sum((1, 2, 3)).numpy(), rel=1e-5)


def test_detection_report_rows_by_position_and_detector():
    rep = DetectionReport(rows=[{"detector": "a", "attack": "PGD", "budget": "eps=0.1", "adaptive": False,
                                 "auroc": 0.9},
                                {"detector": "b", "attack": "PGD", "budget": "eps=0.1", "adaptive": False,
                                 "auroc": 0.7}],
                          roc={"a|PGD|eps=0.1|False": ([0, 1], [0, 1]), "b|PGD|eps=0.1|False": ([0, 1], [0, 1])})
    assert len(rep) == 2 and "auroc=0.700..0.900" in repr(rep)
    assert rep["b"].rows[0]["auroc"] == 0.7 and list(rep["b"].roc) == ["b|PGD|eps=0.1|False"]
    assert rep[0].rows[0]["detector"] == "a"
    with pytest.raises(KeyError, match="detectors: a, b"):
        rep["c"]
    with pytest.raises(IndexError, match="valid: 0..1"):
        rep[2]
    assert "<table" in rep._repr_html_()


def test_dir_shows_only_the_public_api():
    names = dir(xadv)
    for private in ("Any", "annotations", "importlib", "_LAZY"):
        assert private not in names
    for public in ("explain", "Explanation", "AttackResult", "plot", "attacks"):
        assert public in names
