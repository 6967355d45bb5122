"""The Markdown report, short enough for a pull-request comment."""

from __future__ import annotations

from featurelm.evals.results import CaseResult, FeatureResult, SuiteResult

MAX_FAILING_CASES = 30


def render(suite: SuiteResult) -> str:
    status = "passed" if suite.passed else "FAILED"
    icon = "✅" if suite.passed else "❌"
    cases = sum(len(f.cases) for f in suite.features)
    lines = [f"## {icon} featurelm eval {status}", "", _run_line(suite, cases), ""]
    for problem in suite.problems:
        lines.append(f"- ❌ {escape(problem)}")
    if suite.problems:
        lines.append("")
    lines += ["| feature | status | pass rate | threshold | cases passed | flaky "
              "| mean latency | cost |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for f in suite.features:
        latency = f"{f.mean_latency_ms:.0f} ms" if f.mean_latency_ms is not None else "-"
        flaky = sum(1 for c in f.cases if c.flaky)
        lines.append(f"| {escape(f.name)} | {'✅' if f.passed else '❌'} | {f.pass_rate:.1%} "
                     f"| {f.threshold:.0%} | {f.passed_cases}/{len(f.cases)} | {flaky} "
                     f"| {latency} | ${f.cost_usd:.6f} |")
    errors = [f for f in suite.features if f.error]
    if errors:
        lines += ["", "### Features not evaluated", ""]
        lines += [f"- **{escape(f.name)}**: {escape(f.error or '')}" for f in errors]
    failing = [(f, c) for f in suite.features for c in f.cases if not c.passed]
    if failing:
        lines += ["", f"### Failing cases ({len(failing)})", ""]
        for feature, case in failing[:MAX_FAILING_CASES]:
            lines += _failing_case(feature, case)
        if len(failing) > MAX_FAILING_CASES:
            lines.append(f"… and {len(failing) - MAX_FAILING_CASES} more in report.html")
    return "\n".join(lines) + "\n"


def _run_line(suite: SuiteResult, cases: int) -> str:
    meta = suite.meta
    parts = [f"mode **{escape(str(meta.get('mode', 'live')))}**"]
    for key in ("tenant", "route"):
        if meta.get(key):
            parts.append(f"{key} `{escape(str(meta[key]))}`")
    if meta.get("repeat", 1) != 1:
        parts.append(f"repeat {meta['repeat']}")
    parts.append(f"{len(suite.features)} feature(s), {cases} case(s)")
    return " · ".join(parts)


def _failing_case(feature: FeatureResult, case: CaseResult) -> list[str]:
    run = case.first_failure
    flaky = " (flaky)" if case.flaky else ""
    lines = [f"<details><summary>{escape(feature.name)} / {escape(case.id)}{flaky}</summary>",
             ""]
    if run is not None and run.error:
        lines.append(f"- error ({escape(run.error_kind or 'error')}): {escape(run.error)}")
    elif run is not None:
        for outcome in run.failed_outcomes:
            where = f" `{escape(outcome.path)}`" if outcome.path else ""
            lines.append(f"- {outcome.type}{where}: {escape(outcome.message)}")
    lines += ["", "</details>"]
    return lines


def escape(text: str, limit: int = 300) -> str:
    """Text safe inside a table cell or list item: no pipes, no raw HTML, one line."""
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("|", "\\|").replace("`", "'"))
