"""The HTML report: one self-contained file whose plots draw what the compression did, checked as
text and, where Chromium is installed (.ci/run installs it), as a rendered screenshot."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import MEASUREMENTS, MODELS, WEIGHT_NAMES, rename_weight
from hypothesis import given
from hypothesis import strategies as st

import onnxq
from onnxq.check.report import LevelPicture
from onnxq.errors import OnnxqError
from onnxq.quant.codebooks import CODEBOOKS
from onnxq.quant.quantize import quantize

pytest.importorskip("matplotlib", reason="the HTML report needs the report extra: pip install -e '.[report]'")
from onnxq.check import html

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NEEDS_CHROMIUM = pytest.mark.skipif(
    CHROMIUM is None, reason="needs headless Chromium (Debian: apt-get install chromium; .ci/run installs it)"
)
HOSTILE = 'w<script>alert("x")</script>&'


@pytest.fixture
def hostile_path(tiny, tmp_path) -> Path:
    """The tiny model with a weight named like markup: the page must show it as text."""
    model = tiny[0]
    rename_weight(model, "mm.b", HOSTILE)
    path = tmp_path / "tiny.onnx"
    onnx.save(model, path)
    return path


def test_page_is_self_contained_and_escaped(hostile_path, tmp_path):
    report = onnxq.compress(hostile_path, tmp_path / "out.onnx", bits=4, samples=2, pictures=True)
    page = html.to_html(report)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    # Four plots: per layer, levels, bytes, output error; each an inline SVG.
    assert page.count("<svg") == 4
    # Nothing is fetched when it opens: no script, no external source or stylesheet.
    assert "<script" not in page.replace("&lt;script", "")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)
    assert "w&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;" in page
    # The summary says what ran, where and with which onnxq.
    assert f"onnxq {onnxq.__version__}" in page and str(hostile_path) in page
    assert "not checked against real data" in page and "class='warn'" in page


def test_every_weight_keeps_its_picture(tiny_path, tmp_path):
    """The weights are let go as they are quantized (jobs.run release): each picture is taken
    before that, for every weight, with its worst group and its levels."""
    report = onnxq.compress(tiny_path, tmp_path / "out.onnx", bits=3, validate=False, pictures=True)
    assert set(report.pictures) == set(WEIGHT_NAMES)
    for w in report.weights:
        pic = report.pictures[w.name]
        assert 0 <= pic.group < w.groups
        assert len(pic.levels) <= 2**w.bits
        assert sum(pic.counts) == w.elements // w.groups
        assert pic.sqnr_db <= w.sqnr_db + 1e-6  # the worst group is no better than the whole
    assert onnxq.compress(tiny_path, tmp_path / "b.onnx", bits=3, validate=False).pictures is None


@given(
    seed=st.integers(0, 2**16),
    groups=st.integers(1, 6),
    n=st.integers(8, 300),
    bits=st.integers(2, 6),
)
def test_picture_is_the_worst_group(seed, groups, n, bits):
    rows = np.random.default_rng(seed).standard_t(3, (groups, n)).astype(np.float32)
    q = quantize(rows, CODEBOOKS["linear"], bits, "variance")
    restored = q.dequantized
    pic = LevelPicture.of(rows, q.level_table(), restored)
    noise = ((rows.astype(np.float64) - restored) ** 2).sum(1)
    signal = (rows.astype(np.float64) ** 2).sum(1)
    with np.errstate(divide="ignore"):
        sqnr = 10 * np.log10(signal / noise)
    assert sqnr[pic.group] == pytest.approx(sqnr.min(), abs=1e-4)
    assert sum(pic.counts) == n and len(pic.edges) == len(pic.counts) + 1
    # Every value the group's codes rebuild is one of the levels drawn.
    assert set(np.unique(restored[pic.group]).tolist()) <= set(pic.levels)


def test_missing_extra_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(OnnxqError, match=r"pip install 'onnxq\[report\]'"):
        html.require()


def screenshot(page: Path, png: Path, height: int = 2400) -> np.ndarray:
    """page rendered by headless Chromium at 1100 px wide, as an (h, w, 3) array."""
    Image = pytest.importorskip("PIL.Image", reason="reading the screenshot needs Pillow (the test extra)")
    profile = png.parent / "chromium-profile"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"]
    flags += ["--disable-background-networking", "--disable-component-update", "--disable-sync"]
    flags += [f"--user-data-dir={profile}", "--hide-scrollbars", f"--window-size=1100,{height}"]
    subprocess.run(
        [CHROMIUM, *flags, f"--screenshot={png}", page.as_uri()], capture_output=True, timeout=120, check=True
    )
    return np.asarray(Image.open(png).convert("RGB"))


def drawn(pixels: np.ndarray) -> tuple[float, float]:
    """The share of pixels that are not page white, and of those in the plots' bar blue."""
    ink = (pixels < 235).any(axis=2).mean()
    blue = (np.abs(pixels.astype(int) - [0x2E, 0x86, 0xC1]).sum(axis=2) < 30).mean()
    return float(ink), float(blue)


@NEEDS_CHROMIUM
def test_chromium_renders_the_plots(tiny_path, tmp_path):
    page = tmp_path / "report.html"
    report = onnxq.compress(tiny_path, tmp_path / "out.onnx", bits=4, samples=2, pictures=True)
    page.write_text(html.to_html(report), encoding="utf-8")
    pixels = screenshot(page, tmp_path / "report.png", height=1600)
    assert pixels.shape == (1600, 1100, 3)
    ink, blue = drawn(pixels)
    assert ink > 0.03 and blue > 0.005, (ink, blue)  # text, axes and the SQNR bars are drawn


@pytest.mark.heavy
@NEEDS_CHROMIUM
def test_lite0_target_bits_report_screenshot(tmp_path):
    """The issue's picture: EfficientNet-Lite0 at --target-bits 5 through the command line, its
    HTML report rendered by Chromium."""
    model = ROOT / "models" / "efficientnet_lite0.onnx"
    if not model.exists():
        model = MODELS / "efficientnet_lite0.onnx"
    page, png = tmp_path / "lite0.html", tmp_path / "lite0.png"
    cmd = [sys.executable, "-m", "onnxq", "compress", str(model), str(tmp_path / "out.onnx")]
    done = subprocess.run(
        [*cmd, "--target-bits", "5", "--report", str(page)], check=False, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    text = page.read_text(encoding="utf-8")
    assert text.count("<svg") == 4 and "widths: " in text
    pixels = screenshot(page, png)
    ink, blue = drawn(pixels)
    assert ink > 0.05 and blue > 0.005, (ink, blue)
    MEASUREMENTS["Lite0 --target-bits 5 report screenshot"] = str(png)
