"""Comparing two runs: which cases changed, and how pass rate, latency and cost moved."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest

from featurelm.evals.compare import compare, render_markdown
from featurelm.evals.results import CaseResult, RunResult, SuiteResult

MakeRun = Callable[..., RunResult]


def test_identical_runs_have_no_changes_and_pass_when_thresholds_hold(
        suite: SuiteResult) -> None:
    suite.features = suite.features[1:]  # only the passing feature
    comparison = compare(suite, copy.deepcopy(suite))
    assert comparison.regressions == []
    assert comparison.passed
    assert comparison.features[0].pass_rate_delta == 0


def test_per_case_changes_and_deltas_are_reported(suite: SuiteResult, run: MakeRun) -> None:
    after = copy.deepcopy(suite)
    classify = after.features[0]
    classify.cases[0].runs = [run(False, latency=400)]  # refund: pass -> fail
    classify.cases[3].runs = [run(True, latency=50, cost=0.0002)]  # outage: fail -> pass
    classify.cases.append(CaseResult("new-case", {}, runs=[run(True)]))
    del classify.cases[1]  # crash: removed
    comparison = compare(suite, after, label_a="base", label_b="tenant:acme")
    changes = {(c.case, c.change) for c in comparison.features[0].changes}
    assert changes == {("refund", "pass->fail"), ("outage", "fail->pass"),
                       ("crash", "removed"), ("new-case", "added")}
    delta = comparison.features[0]
    assert delta.pass_rate_a == 0.5 and delta.pass_rate_b == 0.5
    assert delta.latency_delta_ms == pytest.approx((400 + 300 + 50 + 120) / 4 - 650 / 4)
    assert delta.cost_delta_usd == pytest.approx(0.0002 - 0.0002)
    assert not comparison.passed
    assert [c.case for c in comparison.regressions] == ["refund"]

    text = render_markdown(comparison)
    assert text.startswith("## ❌ featurelm eval comparison: base → tenant:acme")
    assert "- classify_ticket / refund: **pass->fail**" in text
    assert "| classify_ticket | 50.0% | 50.0% | +0.0% | +55 ms |" in text

    data = comparison.to_json()
    assert data["passed"] is False
    assert data["features"][0]["latency_delta_ms"] == pytest.approx(55.0)


def test_a_feature_below_threshold_in_the_second_run_fails_the_comparison(
        suite: SuiteResult, run: MakeRun) -> None:
    before = copy.deepcopy(suite)
    before.features = before.features[1:]
    after = copy.deepcopy(before)
    after.features[0].threshold = 1.0
    after.features[0].cases[0].runs.append(run(False))
    comparison = compare(before, after)
    assert comparison.regressions[0].case == "simple"
    assert comparison.features[0].passed_b is False
    assert not comparison.passed


def test_features_present_in_only_one_run_are_listed(suite: SuiteResult) -> None:
    after = copy.deepcopy(suite)
    after.features = after.features[1:]
    comparison = compare(suite, after)
    only_a = comparison.features[0]
    assert only_a.name == "classify_ticket" and only_a.pass_rate_b is None
    assert only_a.pass_rate_delta is None
    assert {c.change for c in only_a.changes} == {"removed"}
    assert "| classify_ticket | 50.0% | - | - |" in render_markdown(comparison)
