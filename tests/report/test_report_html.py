"""`pseudolabel report`: the static HTML report, checked as parsed HTML and rendered in headless Chromium."""
import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from PIL import Image

from output_fixture import FakeSample, synthetic_sample, write_output_dir
from pipeline.cli import main as cli_main
from pipeline.evaluation import evaluate_output
from pipeline.report import ReportOptions, build_report

pytestmark = pytest.mark.timeout(90)

NAMES = ["background", "cat", "dog", "bird"]
VOID = {"img", "meta", "br", "hr", "link", "input", "source", "wbr", "col", "area", "base", "embed", "track"}


class Dom(HTMLParser):
    """Flat list of elements with the ids of their ancestors (enough to count images per section)."""

    def __init__(self, text: str):
        super().__init__()
        self.elements: list[tuple[str, dict, tuple[str, ...]]] = []
        self._stack: list[tuple[str, str]] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.elements.append((tag, attrs, tuple(i for _t, i in self._stack if i)))
        if tag not in VOID:
            self._stack.append((tag, attrs.get("id", "")))

    def handle_startendtag(self, tag, attrs):
        self.elements.append((tag, dict(attrs), tuple(i for _t, i in self._stack if i)))

    def handle_endtag(self, tag):
        for pos in range(len(self._stack) - 1, -1, -1):
            if self._stack[pos][0] == tag:
                del self._stack[pos:]
                break

    def by_id(self, ident):
        found = [e for e in self.elements if e[1].get("id") == ident]
        return found[0] if found else None

    def inside(self, ident, tag, cls=None):
        return [e for e in self.elements if e[0] == tag and ident in e[2]
                and (cls is None or cls in (e[1].get("class") or "").split())]


def _make_output(tmp_path: Path, with_eval: bool = True):
    rng = np.random.default_rng(7)
    shards = {
        "part-0": [synthetic_sample(rng, f"p0_{i}", (48, 64), len(NAMES)) for i in range(6)],
        "part-1": [synthetic_sample(rng, f"p1_{i}", (40, 40), len(NAMES)) for i in range(5)],
    }
    shards["part-0"][2].conf = shards["part-0"][2].conf * 0.2  # clearly the lowest confidence
    shards["part-1"].insert(1, FakeSample("p1_bad", None, error="DecodeError: cannot identify image file"))
    shards["part-1"].append(FakeSample("p1_huge", None, error="ImageTooLarge: 100000x100000 exceeds io.max_image_pixels"))
    out = write_output_dir(tmp_path / "out", shards, NAMES)
    if with_eval:
        gt_dir = tmp_path / "gt"
        gt_dir.mkdir()
        for samples in shards.values():
            for s in samples:
                if s.label is not None:
                    gt = np.where(s.label == 255, 0, s.label).astype(np.uint8)
                    Image.fromarray(gt).save(gt_dir / f"{s.key}.png")
        evaluate_output(out.root, gt_dir, sweep_thresholds=[0, 0.5, 0.9]).write_json(out.root / "eval.json")
    return out


def _check_images_exist(dom: Dom, folder: Path):
    srcs = [e[1].get("src") for e in dom.elements if e[0] == "img"]
    assert srcs, "no <img> at all"
    for src in srcs:
        assert src and not urlparse(src).scheme and not src.startswith("/"), f"not a relative path: {src}"
        assert (folder / unquote(src)).is_file(), f"missing image file {src}"
    return srcs


def test_report_contents_as_parsed_html(tmp_path):
    out = _make_output(tmp_path)
    index = build_report(out.root, options=ReportOptions(grid_samples=6, extremes=3, stats_samples=4))
    assert index == out.root / "report" / "index.html"
    text = index.read_text()
    dom = Dom(text)
    assert "<script" not in text.lower() and "<link" not in text.lower()  # no JS, CSS inline, offline
    assert "http://" not in text and "https://" not in text
    assert len(dom.inside("legend", "li", "legend-item")) == len(NAMES) + 1  # + ignore
    assert len(dom.inside("overlay-grid", "img", "overlay")) == 6
    assert len(dom.inside("lowest-confidence", "img", "overlay")) == 3
    assert len(dom.inside("highest-confidence", "img", "overlay")) == 3
    lowest_first = dom.inside("lowest-confidence", "img", "overlay")[0][1]["alt"]
    assert lowest_first == "p0_2"
    assert len(dom.inside("class-stats", "tr")) == len(NAMES) + 1  # header + one row per class
    assert len(dom.inside("failures-table", "tr", "failure")) == 2
    assert "ImageTooLarge" in text and "DecodeError" in text
    for ident in ("confidence-histogram", "class-share-chart", "iou-chart", "sweep-chart", "eval-summary"):
        assert dom.by_id(ident) is not None, ident
    _check_images_exist(dom, index.parent)
    # the overlay really blends class colours: a thumbnail is neither the raw image nor empty
    thumb = np.asarray(Image.open(index.parent / dom.inside("overlay-grid", "img")[0][1]["src"]))
    assert thumb.ndim == 3 and thumb.std() > 5


def test_report_without_eval_or_original_images(tmp_path, caplog):
    out = _make_output(tmp_path, with_eval=False)
    shutil.rmtree(out.input_dir)  # originals gone: masks are drawn alone, with a note
    report_dir = tmp_path / "elsewhere"
    rc = cli_main(["report", str(out.root), "--out", str(report_dir), "--samples", "4", "--extremes", "2"])
    assert rc == 0
    text = (report_dir / "index.html").read_text()
    dom = Dom(text)
    assert dom.by_id("iou-chart") is None and dom.by_id("evaluation") is None
    assert len(dom.inside("overlay-grid", "img", "overlay")) == 4
    assert "original image unavailable" in text
    _check_images_exist(dom, report_dir)
    assert "unavailable" in caplog.text


def _chromium():
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    message = "chromium is not installed: run tests/setup_browser.sh"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def _run_chromium(browser, profile, *args):
    cmd = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--enable-logging=stderr", "--v=0", f"--user-data-dir={profile}", *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_report_renders_in_headless_chromium(tmp_path):
    browser = _chromium()
    out = _make_output(tmp_path)
    index = build_report(out.root, options=ReportOptions(grid_samples=8, extremes=3, stats_samples=6))
    url = index.resolve().as_uri()
    dumped = _run_chromium(browser, tmp_path / "profile", "--dump-dom", url)
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    dom = Dom(dumped.stdout)
    assert dom.by_id("legend") is not None
    assert len(dom.inside("overlay-grid", "img", "overlay")) == 8
    assert dom.by_id("confidence-histogram")[0] == "img"
    assert len(dom.inside("failures-table", "tr", "failure")) == 2
    assert dom.by_id("iou-chart")[0] == "img"
    assert not [e for e in dom.elements if e[0] == "script"]
    _check_images_exist(dom, index.parent)
    console_errors = [line for line in dumped.stderr.splitlines()
                      if "CONSOLE" in line or "Uncaught" in line or "Not allowed to load local resource" in line]
    assert not console_errors, console_errors
    shot = tmp_path / "report.png"
    taken = _run_chromium(browser, tmp_path / "profile2", f"--screenshot={shot}", "--window-size=1280,2000", url)
    assert taken.returncode == 0 and shot.is_file(), taken.stderr[-2000:]
    with Image.open(shot) as img:
        assert img.size == (1280, 2000)
        pixels = np.asarray(img.convert("RGB"))
    assert pixels.std() > 10  # not a blank page
    if os.environ.get("REPORT_SCREENSHOT"):
        shutil.copy(shot, os.environ["REPORT_SCREENSHOT"])
    meta = json.loads((out.root / "eval.json").read_text())
    assert meta["miou"] is not None


def test_report_leads_with_samples_and_lists_only_classes_that_occur(tmp_path):
    """Issue 21 (readable output) and issue 20 item 9 (class names are text, never matplotlib math)."""
    names = ["background", "price $\\foo$ tag", "dog", "a_b^c", *(f"unused {i}" for i in range(20))]
    rng = np.random.default_rng(3)
    shards = {"part-0": [synthetic_sample(rng, f"k{i}", (48, 64), 4, classes=[1, 2, 3]) for i in range(4)]}
    out = write_output_dir(tmp_path / "out", shards, names)
    rc = cli_main(["report", str(out.root), "--samples", "2", "--extremes", "1"])
    assert rc == 0
    text = (out.root / "report" / "index.html").read_text()
    dom = Dom(text)
    # the samples, confidence and failures come before the legend and the class table
    assert text.index('id="overlay-grid"') < text.index('id="confidence-histogram"') < text.index('id="failures"')
    assert text.index('id="failures"') < text.index('id="legend"') < text.index('id="class-stats"')
    legend = [e for e in dom.inside("legend", "li", "legend-item")]
    assert len(legend) == 4 + 1  # the four classes that occur, + ignore
    assert "price $\\foo$ tag" in text and "20 of 24 classes never labelled" in text
    assert len(dom.inside("class-stats", "tr")) == 4 + 1
    # each tile: a thumbnail of image | labels | confidence, linking to the larger view
    links = [e for e in dom.inside("overlay-grid", "a")]
    assert len(links) == 2 and all(e[1]["href"].startswith("img/full/") for e in links)
    for link in links:
        full = Image.open(out.root / "report" / link[1]["href"])
        assert full.size == (3 * 64, 48)  # three panels at the image's size
    _check_images_exist(dom, out.root / "report")
