"""Reports: JSON for machines, Markdown for a pull request, an HTML page with plots."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from featurelm.evals.reports import write_reports
from featurelm.evals.reports.markdown import render as render_markdown
from featurelm.evals.results import (
    CaseResult,
    FeatureResult,
    SuiteResult,
    from_json,
    load_report,
    to_json,
)


def test_report_json_round_trips_and_carries_derived_scores(suite: SuiteResult,
                                                            tmp_path: Path) -> None:
    write_reports(suite, tmp_path)
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["passed"] is False
    classify = data["features"][0]
    assert (classify["pass_rate"], classify["passed"], classify["passed_cases"]) == (0.5, False, 2)
    assert classify["cases"][3]["runs"][0]["error"] == "vllm: upstream 503"
    assert classify["cases"][0]["runs"][0]["meta"] == {"backend": "vllm", "model": "gemma"}
    assert data["meta"]["tenant"] == "acme"
    back = load_report(tmp_path / "report.json")
    assert back == suite
    assert to_json(back) == data


def test_derived_fields_in_a_report_file_are_recomputed_not_trusted(suite: SuiteResult) -> None:
    data = to_json(suite)
    data["passed"] = True
    data["features"][0]["passed"] = True
    data["features"][0]["pass_rate"] = 1.0
    back = from_json(data)
    assert not back.passed and back.features[0].pass_rate == 0.5


def test_a_report_of_another_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "old.json"
    path.write_text('{"format": 0, "features": []}')
    with pytest.raises(ValueError, match="unsupported report format 0"):
        load_report(path)


def test_markdown_summarises_features_and_lists_failing_cases(suite: SuiteResult) -> None:
    text = render_markdown(suite)
    assert text.startswith("## ❌ featurelm eval FAILED")
    assert "mode **replay** · tenant `acme` · 2 feature(s), 5 case(s)" in text
    assert "| classify_ticket | ❌ | 50.0% | 80% | 2/4 | 0 | 162 ms |" in text
    assert "| extract_invoice | ✅ | 100.0% | 50% | 1/1 |" in text
    assert "### Failing cases (2)" in text
    assert "- error (backend): vllm: upstream 503" in text
    # Case ids are data: no raw HTML reaches the pull-request comment.
    assert "<script>" not in text
    assert "&lt;script&gt;alert('id')&lt;/script&gt;" in text


def test_html_is_self_contained_and_escapes_everything_from_the_run(suite: SuiteResult,
                                                                     tmp_path: Path) -> None:
    write_reports(suite, tmp_path)
    page = (tmp_path / "report.html").read_text()
    for plot in ("plot-pass-rate", "plot-latency", "plot-cost"):
        assert f'id="{plot}"' in page
    assert page.count('src="data:image/png;base64,') == 3
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "&lt;script&gt;alert(&#39;id&#39;)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt; &amp; more" in page
    assert "&lt;b&gt;bold&lt;/b&gt;" in page


def test_the_cost_plot_of_a_free_run_is_a_note_not_an_empty_axis() -> None:
    from matplotlib import image

    from featurelm.evals.reports import plots
    from tests.evals.conftest import make_run

    free = FeatureResult(name="local", threshold=0.5, cases=[
        CaseResult(f"c{i}", {}, runs=[make_run(True, cost=0.0)]) for i in range(16)])
    png = plots.cost_per_case([free])
    pixels = image.imread(io.BytesIO(png))
    assert pixels.shape[0] < 200  # a one-line note, not a 3.4-inch empty chart


def test_a_zero_pass_rate_still_draws_a_red_bar() -> None:
    import numpy as np
    from matplotlib import image

    from featurelm.evals.reports import plots
    from tests.evals.conftest import make_run

    zero = FeatureResult(name="broken", threshold=0.5,
                         cases=[CaseResult("a", {}, runs=[make_run(False)])])
    pixels = image.imread(io.BytesIO(plots.pass_rates([zero])))
    red = np.array([int(plots.FAIL_COLOR[i:i + 2], 16) / 255 for i in (1, 3, 5)])
    assert (np.abs(pixels[..., :3] - red).max(axis=-1) < 0.04).sum() > 20
