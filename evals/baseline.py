"""The recorded baseline: what the suite scored when its cassettes were recorded, and the gate.

`--record DIR` writes DIR/baseline.json (a report.json) next to the cassettes; `--replay DIR`
then fails on any case that passed in the baseline and fails now, naming the case, its input
and the assertions it failed. Together with the cassettes' own miss check and each feature's
`evals.replay_threshold`, this makes the replayed suite a regression gate whatever the quality
of the model the cassettes were recorded from.
"""

from __future__ import annotations

import json
from pathlib import Path

from featurelm.evals.results import CaseResult, SuiteResult, load_report, to_json

BASELINE_FILE = "baseline.json"
#: How much of a case's input a problem line quotes.
MAX_INPUT_CHARS = 160


def baseline_path(directory: Path) -> Path:
    return directory / BASELINE_FILE


def write_baseline(directory: Path, suite: SuiteResult) -> Path:
    """Save `suite` as the baseline; features recorded earlier and not in `suite` are kept."""
    path = baseline_path(directory)
    merged = SuiteResult(features=list(suite.features), meta=dict(suite.meta))
    if path.is_file():
        earlier = load_report(path)
        recorded = {f.name for f in suite.features}
        merged.features += [f for f in earlier.features if f.name not in recorded]
    merged.features.sort(key=lambda f: f.name)
    # Run-dependent fields would make every re-recording a diff of the whole file.
    for key in ("started_at", "duration_s", "config"):
        merged.meta.pop(key, None)
    data = to_json(merged)
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    return path


def regressions(baseline: SuiteResult, current: SuiteResult, *, source: Path,
                skip: set[tuple[str, str]] | frozenset[tuple[str, str]] = frozenset(),
                ) -> list[str]:
    """One problem line per case that passed in `baseline` and fails in `current`.

    `skip` holds (feature, case) pairs already reported otherwise (an unrecorded request)."""
    problems = []
    for feature in current.features:
        before = baseline.feature(feature.name)
        if before is None:
            continue
        passed_before = {c.id for c in before.cases if c.passed}
        for case in feature.cases:
            if case.passed or case.id not in passed_before or (feature.name, case.id) in skip:
                continue
            problems.append(f"regression: case {case.id!r} of feature {feature.name!r} passed "
                            f"in the baseline ({source}) and fails now: {describe_failure(case)}")
    return problems


def describe_failure(case: CaseResult) -> str:
    """The case's input and why it failed, on one line."""
    text = json.dumps(case.input, ensure_ascii=False, sort_keys=True)
    if len(text) > MAX_INPUT_CHARS:
        text = text[:MAX_INPUT_CHARS - 1] + "…"
    run = case.first_failure
    if run is None:
        why = "no run"
    elif run.error is not None:
        why = run.error
    else:
        why = "; ".join(f"{o.type}{f' at {o.path}' if o.path else ''}: {o.message}"
                        for o in run.failed_outcomes)
    return f"input {text}; {why}"
