"""report.html renders in a real browser: headless Chromium (Debian's package), when it is installed."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.image  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from xadv.plot import html_report, markdown_to_html  # noqa: E402

CHROMIUM = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--virtual-time-budget=5000"]

# counts console errors, uncaught exceptions and images that did not load; the result lands in the DOM
_PROBE = """<script>
window.__errors = [];
const _ce = console.error; console.error = function(...a) { window.__errors.push(a.join(' ')); _ce.apply(console, a); };
window.addEventListener('error', e => window.__errors.push('error: ' + (e.message || (e.target && e.target.src || '').slice(0, 40))), true);
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.setAttribute('data-probe', `images=${ok}/${imgs.length};errors=${window.__errors.length};` + window.__errors.join('|'));
});
</script>"""


def _chromium(args, timeout=120):
    with tempfile.TemporaryDirectory() as profile:
        cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "HOME": profile})


def _check_renders(page: Path, tmp: Path, n_images: int):
    probed = tmp / "probed.html"
    probed.write_text(page.read_text(encoding="utf-8").replace("<head>", "<head>" + _PROBE, 1), encoding="utf-8")
    dom = _chromium(["--dump-dom", probed.as_uri()])
    m = re.search(r'data-probe="images=(\d+)/(\d+);errors=(\d+);([^"]*)"', dom.stdout)
    assert m, dom.stderr[-2000:]
    ok, total, errors, what = int(m[1]), int(m[2]), int(m[3]), m[4]
    assert total == n_images and ok == total, f"{ok}/{total} images loaded"
    assert errors == 0, what
    shot = tmp / "shot.png"
    r = _chromium([f"--screenshot={shot}", "--window-size=1000,1400", page.as_uri()])
    assert shot.is_file(), r.stderr[-2000:]
    px = matplotlib.image.imread(str(shot))[..., :3]
    assert px.std() > 0.05 and (px.mean(-1) < 0.5).mean() > 0.002     # text and figures, not a blank page


@pytest.fixture()
def small_report(tmp_path):
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1, 2], [0, 1, 0.5], label="PGD")
    ax.legend()
    fig.savefig(tmp_path / "curve.png", dpi=80)
    plt.close(fig)
    md = ("# A report\n\nSome *text* with `code` and **bold**.\n\n![a curve](curve.png)  \n[curve.pdf](curve.pdf)\n\n"
          "| method | auroc |\n|:--|--:|\n| Saliency | 0.91 |\n| IG | **0.95** |\n")
    return tmp_path, md


def test_markdown_subset_to_html(small_report):
    folder, md = small_report
    body = markdown_to_html(md, folder)
    assert "<h1>A report</h1>" in body and "<i>text</i>" in body and "<code>code</code>" in body
    assert body.count("data:image/png;base64,") == 1 and '<a href="curve.pdf">' in body
    assert "<td class=num><b>0.95</b></td>" in body
    page = html_report(md, folder / "report.html", settings={"seed": 0}).read_text()
    assert page.startswith("<!DOCTYPE html>") and "setting: seed" in page and "torch" in page
    assert "src=\"curve.png\"" not in page          # self-contained: no file references for images


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_small_report_renders_in_chromium(small_report):
    folder, md = small_report
    _check_renders(html_report(md, folder / "report.html"), folder, 1)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_a_broken_image_is_caught(small_report):
    folder, md = small_report
    page = html_report(md, folder / "report.html")
    page.write_text(page.read_text().replace("data:image/png;base64,", "data:image/png;base64,AAAA", 1))
    with pytest.raises(AssertionError, match="0/1 images loaded"):
        _check_renders(page, folder, 1)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_demo_report_renders_in_chromium(tmp_path):
    from xadv.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--fast", "--no-progress", "--formats", "png",
                 "--stages", "explain", "attack"]) == 0
    page = out / "report.html"
    n_img = len(re.findall(r"!\[[^\]]*\]\([^)]+\.png\)", (out / "report.md").read_text()))
    assert n_img >= 4
    _check_renders(page, tmp_path, n_img)
