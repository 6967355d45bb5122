"""The HTML report, opened in headless Chromium, shows its plots and failing cases."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image

from featurelm.evals.reports import plots, write_reports
from featurelm.evals.results import CaseResult, FeatureResult, SuiteResult
from tests.evals.conftest import make_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is not installed (apt-get install -y chromium) so the report cannot be "
           "rendered in a browser")


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run", "--hide-scrollbars",
               f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=90, check=True)


def colour_share(pixels: np.ndarray, hex_colour: str) -> float:
    """Share of the screenshot's pixels within a small distance of `hex_colour`."""
    target = np.array([int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)])
    distance = np.abs(pixels[..., :3] - target).max(axis=-1)
    return float((distance < 0.04).mean())


def test_chromium_renders_the_plots_and_the_failing_cases(suite: SuiteResult,
                                                          tmp_path: Path) -> None:
    report = tmp_path / "report"
    write_reports(suite, report)
    url = (report / "report.html").as_uri()

    dom = chromium(tmp_path, "--dump-dom", url).stdout
    assert dom.count('src="data:image/png;base64,') == 3
    assert "<h2>Failing cases (2)</h2>" in dom
    assert "vllm: upstream 503" in dom
    # The hostile case id stayed text: no element was created from it.
    assert "&lt;script&gt;alert('id')&lt;/script&gt;" in dom
    assert "<script" not in dom

    shot = tmp_path / "shot.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,2600", url)
    pixels = image.imread(shot)
    # The pass-rate bars are drawn in these colours and nothing else on the page uses them in
    # bulk, so a visible share of each proves the plot images decoded and were laid out.
    assert colour_share(pixels, plots.FAIL_COLOR) > 0.004
    assert colour_share(pixels, plots.PASS_COLOR) > 0.004
    assert colour_share(pixels, plots.SERIES_COLORS[0]) > 0.004  # latency and cost bars


def test_a_free_run_with_a_zero_feature_shows_the_note_and_the_zero_bar(
        tmp_path: Path) -> None:
    """All costs $0 (a local model) and one feature at 0%: the cost plot is the note, not an
    empty axis, and the 0% feature still has a red bar beside the green one. The screenshot
    stays in the test's tmp dir for a person to look at."""
    suite = SuiteResult(features=[
        FeatureResult(name="classify_ticket", threshold=0.5, cases=[
            CaseResult(f"c{i}", {"text": str(i)}, runs=[make_run(True, cost=0.0)])
            for i in range(3)]),
        FeatureResult(name="detect_language", threshold=0.5, cases=[
            CaseResult(f"d{i}", {"text": str(i)}, runs=[make_run(False, cost=0.0)])
            for i in range(2)]),
    ], meta={"mode": "replay"})
    report = tmp_path / "report"
    write_reports(suite, report)
    url = (report / "report.html").as_uri()

    dom = chromium(tmp_path, "--dump-dom", url).stdout
    sizes = {m["id"]: (int(m["w"]), int(m["h"])) for m in re.finditer(
        r'<img id="(?P<id>plot-[a-z-]+)" alt="[^"]*" width="(?P<w>\d+)"\s+height="(?P<h>\d+)"',
        dom)}
    assert set(sizes) == {"plot-pass-rate", "plot-latency", "plot-cost"}, dom
    width, height = sizes["plot-cost"]
    assert height * 4 < width, "the cost plot is an axis, not the one-line $0 note"

    shot = tmp_path / "report.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,2600", url)
    pixels = image.imread(shot)
    green = np.abs(pixels[..., :3] - rgb(plots.PASS_COLOR)).max(axis=-1) < 0.04
    red = np.abs(pixels[..., :3] - rgb(plots.FAIL_COLOR)).max(axis=-1) < 0.04
    bar_rows = np.flatnonzero(green.sum(axis=1) > 150)
    assert bar_rows.size, "no green pass-rate bar on the page"
    left = int(np.flatnonzero(green[bar_rows].any(axis=0)).min())
    # The 0% feature's stub starts where the green bar does, a row or two away.
    near = red[max(int(bar_rows.min()) - 200, 0):int(bar_rows.max()) + 200, left:left + 12]
    assert near.sum() > 30, "the 0% bar is not visible"


def rgb(hex_colour: str) -> np.ndarray:
    return np.array([int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)])
