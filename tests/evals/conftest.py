"""Shared builders for eval suite tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from featurelm.evals.assertions import Outcome
from featurelm.evals.results import CaseResult, FeatureResult, RunResult, SuiteResult


def make_run(passed: bool, *, latency: float = 120.0, cost: float = 0.0002,
        output: dict[str, Any] | None = None, message: str = "expected \"billing\", got \"x\"",
        error: str | None = None) -> RunResult:
    outcomes = [] if error else [
        Outcome("equals", passed, "equal" if passed else message, path="category")]
    return RunResult(outcomes=outcomes, output=None if error else (output or {"category": "x"}),
                     error=error, error_kind="backend" if error else None, latency_ms=latency,
                     cost_usd=cost, meta={"backend": "vllm", "model": "gemma"})


@pytest.fixture(name="run")
def run_builder() -> Callable[..., RunResult]:
    """Builds one run of a case: `run(passed, latency=..., cost=..., error=...)`."""
    return make_run


@pytest.fixture
def suite() -> SuiteResult:
    """Two features: one passing, one below threshold with a hostile case id and input."""
    classify = FeatureResult(name="classify_ticket", threshold=0.8, dataset="d.jsonl", version=1,
                             cases=[
        CaseResult("refund", {"text": "refund"}, runs=[make_run(True, latency=100)]),
        CaseResult("crash", {"text": "app crashes"}, runs=[make_run(True, latency=200)]),
        CaseResult("<script>alert('id')</script>",
                   {"text": "<img src=x onerror=alert(1)> & more"},
                   runs=[make_run(False, latency=300, cost=0.0009,
                             output={"category": "<b>bold</b>"})]),
        CaseResult("outage", {"text": "down"},
                   runs=[make_run(False, error="vllm: upstream 503", latency=50)]),
    ])
    extract = FeatureResult(name="extract_invoice", threshold=0.5, version=2, cases=[
        CaseResult("simple", {"doc": "INV-1"}, runs=[make_run(True, latency=80, cost=0.0001),
                                                      make_run(True, latency=90, cost=0.0001)]),
    ])
    return SuiteResult(features=[classify, extract],
                       meta={"mode": "replay", "tenant": "acme", "repeat": 1})
