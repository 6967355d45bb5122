"""What an eval run found, from one assertion up to the whole suite, and its JSON form.

Scoring rules live here: a case scores the passed share of its assertion weights and passes only
when every assertion passes in every repeat; a feature's pass rate is the weighted share of its
passing cases, and it passes when that rate reaches its threshold.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from featurelm.evals.assertions import Outcome

REPORT_FORMAT = 1


@dataclass
class RunResult:
    """One execution of one case."""

    outcomes: list[Outcome] = field(default_factory=list)
    output: dict[str, Any] | None = None
    #: Set when the feature call itself failed (OutputError, BackendError, ...).
    error: str | None = None
    error_kind: str | None = None
    latency_ms: float | None = None
    cost_usd: float | None = None
    #: The engine's meta for this call (backend, model, attempts, tokens, ...).
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.error is None and all(o.passed for o in self.outcomes)

    @property
    def score(self) -> float:
        if self.error is not None:
            return 0.0
        total = sum(o.weight for o in self.outcomes)
        if total == 0:
            return 1.0
        return sum(o.weight for o in self.outcomes if o.passed) / total

    @property
    def failed_outcomes(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.passed]


@dataclass
class CaseResult:
    id: str
    input: dict[str, Any]
    weight: float = 1.0
    runs: list[RunResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.runs) and all(r.passed for r in self.runs)

    @property
    def flaky(self) -> bool:
        """Passed in some repeats and failed in others."""
        return len({r.passed for r in self.runs}) > 1

    @property
    def score(self) -> float:
        return statistics.fmean(r.score for r in self.runs) if self.runs else 0.0

    @property
    def latency_ms(self) -> float | None:
        values = [r.latency_ms for r in self.runs if r.latency_ms is not None]
        return statistics.fmean(values) if values else None

    @property
    def cost_usd(self) -> float | None:
        values = [r.cost_usd for r in self.runs if r.cost_usd is not None]
        return statistics.fmean(values) if values else None

    @property
    def first_failure(self) -> RunResult | None:
        return next((r for r in self.runs if not r.passed), None)


@dataclass
class FeatureResult:
    name: str
    threshold: float
    dataset: str | None = None
    version: int | None = None
    cases: list[CaseResult] = field(default_factory=list)
    #: Set when the feature could not be evaluated at all (no dataset, dataset invalid, ...).
    error: str | None = None

    @property
    def pass_rate(self) -> float:
        total = sum(c.weight for c in self.cases)
        if total == 0:
            return 0.0
        return sum(c.weight for c in self.cases if c.passed) / total

    @property
    def passed(self) -> bool:
        return self.error is None and bool(self.cases) and self.pass_rate >= self.threshold

    @property
    def passed_cases(self) -> int:
        return sum(1 for c in self.cases if c.passed)

    @property
    def latencies_ms(self) -> list[float]:
        return [r.latency_ms for c in self.cases for r in c.runs if r.latency_ms is not None]

    @property
    def cost_usd(self) -> float:
        return sum(r.cost_usd or 0.0 for c in self.cases for r in c.runs)

    @property
    def mean_latency_ms(self) -> float | None:
        values = self.latencies_ms
        return statistics.fmean(values) if values else None

    def summary_line(self) -> str:
        status = "PASS" if self.passed else "FAIL"
        if self.error is not None:
            return f"{self.name}: {status} ({self.error})"
        flaky = sum(1 for c in self.cases if c.flaky)
        extra = f", {flaky} flaky" if flaky else ""
        return (f"{self.name}: {status} {self.passed_cases}/{len(self.cases)} cases passed, "
                f"pass rate {self.pass_rate:.1%} (threshold {self.threshold:.0%}){extra}")


@dataclass
class SuiteResult:
    features: list[FeatureResult] = field(default_factory=list)
    #: How the run was made: mode (live/record/replay), tenant, route, repeat, engine version...
    meta: dict[str, Any] = field(default_factory=dict)
    #: Problems that fail the run whatever the pass rates say (e.g. unrecorded requests in replay).
    problems: list[str] = field(default_factory=list)
    format: int = REPORT_FORMAT

    @property
    def passed(self) -> bool:
        return not self.problems and all(f.passed for f in self.features)

    def feature(self, name: str) -> FeatureResult | None:
        return next((f for f in self.features if f.name == name), None)


_ADAPTER = TypeAdapter(SuiteResult)


def to_json(suite: SuiteResult) -> dict[str, Any]:
    """The report.json document: the stored fields plus the derived scores, for other tools."""
    data: dict[str, Any] = _ADAPTER.dump_python(suite, mode="json")
    data["passed"] = suite.passed
    for feature, fdata in zip(suite.features, data["features"], strict=True):
        fdata.update(passed=feature.passed, pass_rate=feature.pass_rate,
                     passed_cases=feature.passed_cases, cost_usd=feature.cost_usd,
                     mean_latency_ms=feature.mean_latency_ms)
        for case, cdata in zip(feature.cases, fdata["cases"], strict=True):
            cdata.update(passed=case.passed, flaky=case.flaky, score=case.score,
                         latency_ms=case.latency_ms, cost_usd=case.cost_usd)
            for run, rdata in zip(case.runs, cdata["runs"], strict=True):
                rdata.update(passed=run.passed, score=run.score)
    return data


def from_json(data: dict[str, Any]) -> SuiteResult:
    """Read a report.json back; derived fields (pass rates, ...) are recomputed, not trusted."""
    if data.get("format") != REPORT_FORMAT:
        raise ValueError(f"unsupported report format {data.get('format')!r} "
                         f"(this version reads format {REPORT_FORMAT})")
    # Dataclass validation ignores the derived keys to_json added.
    return _ADAPTER.validate_python(data)


def load_report(path: Path) -> SuiteResult:
    try:
        return from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable eval report: {exc}") from None
