"""`featurelm dataset from-calls`: eval cases from traced production calls.

A call with a correction becomes a case asserting the corrected output; a call scored low
without one becomes a `review-` case with no assertions (a person writes them); any other
call asserts the output it gave (a regression snapshot). The file loads in `featurelm eval`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from featurelm.engine.store import Feedback, Store

#: A score below this marks a case for review.
LOW_SCORE = 0.5


@dataclass(frozen=True)
class Built:
    cases: list[dict[str, Any]]
    corrected: int
    review: int


def _assertions(output: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"type": "equals", "path": key, "value": value} for key, value in output.items()]


def build_cases(traces: Sequence[Mapping[str, Any]],
                feedback: Mapping[str, Sequence[Feedback]], *,
                with_feedback: bool = False) -> Built:
    """Cases from `traces` (oldest first), with each call's feedback (newest counts)."""
    cases: list[dict[str, Any]] = []
    corrected = review = 0
    seen: set[str] = set()
    for trace in traces:
        rid = str(trace.get("request_id"))
        given = list(feedback.get(rid, ()))
        if trace.get("status") != "ok" and not given:
            continue  # a failed call has no output to keep; feedback may still correct it
        if with_feedback and not given:
            continue
        if trace.get("truncated") or not isinstance(trace.get("input"), dict):
            continue  # a cut trace no longer holds the real input
        correction = next((json.loads(f.correction) for f in reversed(given)
                           if f.correction), None)
        scores = [f.score for f in given if f.score is not None]
        case_id = rid if rid not in seen else f"{rid}-{len(seen)}"
        seen.add(case_id)
        if correction is not None:
            corrected += 1
            case = {"id": case_id, "input": trace["input"], "assert": _assertions(correction)}
        elif (scores and scores[-1] < LOW_SCORE) or trace.get("status") != "ok":
            review += 1
            case = {"id": f"review-{case_id}", "input": trace["input"], "assert": []}
        else:
            output = trace.get("output")
            case = {"id": case_id, "input": trace["input"],
                    "assert": _assertions(output if isinstance(output, dict) else {})}
        cases.append(case)
    return Built(cases, corrected, review)


async def collect(store: Store, feature: str, *, tenant: str | None, since: datetime | None,
                  limit: int = 10_000) -> tuple[list[dict[str, Any]], dict[str, list[Feedback]]]:
    """Traces of `feature` (oldest first) and the feedback on them."""
    from featurelm.engine.store import ALL_TENANTS

    found = await store.calls(tenant=ALL_TENANTS if tenant is None else tenant,
                              feature=feature, since=since, limit=limit, data=True)
    traces = [json.loads(c.data or "{}") for c in reversed(found)]
    by_call: dict[str, list[Feedback]] = {}
    ids = sorted({str(t.get("request_id")) for t in traces})
    for start in range(0, len(ids), 500):
        scope: object = ALL_TENANTS if tenant is None else tenant
        for f in await store.feedback(ids[start:start + 500], tenant=scope):
            by_call.setdefault(f.request_id, []).append(f)
    return traces, by_call


async def dataset_command(args: argparse.Namespace) -> int:
    from featurelm.engine.engine import Engine
    from featurelm.engine.errors import NotFoundError
    from featurelm.engine.traces import parse_since

    engine = Engine.from_config(args.config)
    try:
        if engine.feature(args.feature) is None:
            raise NotFoundError(f"unknown feature {args.feature!r}")
        traces, feedback = await collect(
            await engine.store(), args.feature, tenant=args.tenant,
            since=parse_since(args.since) if args.since else None)
    finally:
        await engine.aclose()
    built = build_cases(traces, feedback, with_feedback=args.with_feedback)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in built.cases),
                   encoding="utf-8")
    print(f"wrote {len(built.cases)} case(s) to {out}: {built.corrected} from corrections, "
          f"{built.review} to review (ids starting review-)", file=sys.stderr)
    return 0


def add_commands(commands: Any, config: argparse.ArgumentParser) -> None:
    import asyncio

    dataset = commands.add_parser("dataset", help="build eval datasets from traced calls")
    sub = dataset.add_subparsers(dest="dataset_command", required=True)
    from_calls = sub.add_parser("from-calls", parents=[config],
                                help="eval cases (JSONL) from a feature's traced calls")
    from_calls.add_argument("feature")
    from_calls.add_argument("--tenant", help="only this tenant's calls")
    from_calls.add_argument("--since", help="7d, 24h, 30m, 90s or an ISO 8601 time")
    from_calls.add_argument("--with-feedback", action="store_true",
                            help="only calls that were given feedback")
    from_calls.add_argument("-o", "--output", required=True, help="the .jsonl file to write")
    dataset.set_defaults(handler=lambda a: asyncio.run(dataset_command(a)))
