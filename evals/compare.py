"""Two eval runs side by side: per-case changes, pass-rate delta, latency and cost delta.

The runs are two report files, or two versions of the suite run now (the base features and a
tenant's overrides, or two routes). The comparison fails when the second run regresses: a case
that passed now fails, or a feature falls below its threshold.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from featurelm.evals.reports.markdown import escape
from featurelm.evals.results import FeatureResult, SuiteResult


@dataclass
class CaseChange:
    feature: str
    case: str
    #: "pass->fail", "fail->pass", "added" (only in B) or "removed" (only in A).
    change: str


@dataclass
class FeatureDelta:
    name: str
    pass_rate_a: float | None
    pass_rate_b: float | None
    passed_b: bool | None
    mean_latency_ms_a: float | None
    mean_latency_ms_b: float | None
    cost_usd_a: float | None
    cost_usd_b: float | None
    changes: list[CaseChange] = field(default_factory=list)

    @property
    def pass_rate_delta(self) -> float | None:
        return _delta(self.pass_rate_a, self.pass_rate_b)

    @property
    def latency_delta_ms(self) -> float | None:
        return _delta(self.mean_latency_ms_a, self.mean_latency_ms_b)

    @property
    def cost_delta_usd(self) -> float | None:
        return _delta(self.cost_usd_a, self.cost_usd_b)


@dataclass
class Comparison:
    label_a: str
    label_b: str
    features: list[FeatureDelta]

    @property
    def regressions(self) -> list[CaseChange]:
        return [c for f in self.features for c in f.changes if c.change == "pass->fail"]

    @property
    def passed(self) -> bool:
        """B keeps every case A passed, and every feature B ran meets its threshold."""
        return not self.regressions and all(f.passed_b is not False for f in self.features)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["passed"] = self.passed
        for delta, fdata in zip(self.features, data["features"], strict=True):
            fdata.update(pass_rate_delta=delta.pass_rate_delta,
                         latency_delta_ms=delta.latency_delta_ms,
                         cost_delta_usd=delta.cost_delta_usd)
        return data


def compare(a: SuiteResult, b: SuiteResult, *, label_a: str = "A",
            label_b: str = "B") -> Comparison:
    names = [f.name for f in a.features]
    names += [f.name for f in b.features if f.name not in names]
    return Comparison(label_a, label_b, [_feature(name, a.feature(name), b.feature(name))
                                         for name in names])


def _feature(name: str, a: FeatureResult | None, b: FeatureResult | None) -> FeatureDelta:
    delta = FeatureDelta(
        name=name,
        pass_rate_a=a.pass_rate if a else None, pass_rate_b=b.pass_rate if b else None,
        passed_b=b.passed if b else None,
        mean_latency_ms_a=a.mean_latency_ms if a else None,
        mean_latency_ms_b=b.mean_latency_ms if b else None,
        cost_usd_a=a.cost_usd if a else None, cost_usd_b=b.cost_usd if b else None)
    before = {c.id: c.passed for c in a.cases} if a else {}
    after = {c.id: c.passed for c in b.cases} if b else {}
    for case in [*before, *(c for c in after if c not in before)]:
        if case not in after:
            change = "removed"
        elif case not in before:
            change = "added"
        elif before[case] and not after[case]:
            change = "pass->fail"
        elif after[case] and not before[case]:
            change = "fail->pass"
        else:
            continue
        delta.changes.append(CaseChange(name, case, change))
    return delta


def render_markdown(comparison: Comparison) -> str:
    icon = "✅" if comparison.passed else "❌"
    a, b = escape(comparison.label_a), escape(comparison.label_b)
    lines = [f"## {icon} featurelm eval comparison: {a} → {b}", "",
             f"| feature | pass rate {a} | pass rate {b} | Δ pass rate | Δ mean latency "
             "| Δ cost | pass→fail | fail→pass |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for f in comparison.features:
        worse = sum(1 for c in f.changes if c.change == "pass->fail")
        better = sum(1 for c in f.changes if c.change == "fail->pass")
        lines.append(
            f"| {escape(f.name)} | {_pct(f.pass_rate_a)} | {_pct(f.pass_rate_b)} "
            f"| {_signed(f.pass_rate_delta, '{:+.1%}')} "
            f"| {_signed(f.latency_delta_ms, '{:+.0f} ms')} "
            f"| {_signed(f.cost_delta_usd, '{:+.6f} $')} | {worse} | {better} |")
    changes = [c for f in comparison.features for c in f.changes]
    if changes:
        lines += ["", "### Case changes", ""]
        lines += [f"- {escape(c.feature)} / {escape(c.case)}: **{c.change}**" for c in changes]
    return "\n".join(lines) + "\n"


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _signed(value: float | None, template: str) -> str:
    return "-" if value is None else template.format(value)
