"""The HTML report, opened in headless Chromium, shows its plots and failing cases."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image

from featurelm.evals.reports import plots, write_reports
from featurelm.evals.results import SuiteResult

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
