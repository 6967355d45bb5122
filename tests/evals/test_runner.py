"""The runner calls every case, scores it, repeats it, and gates each feature on its threshold."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from featurelm.engine.errors import Attempt, BackendError, OutputError
from featurelm.evals.results import FeatureResult
from featurelm.evals.runner import FeatureTarget, Invocation, run_suite

SCHEMA = {"type": "object", "properties": {"category": {"type": "string"}},
          "required": ["category"]}


def dataset(tmp_path: Path, name: str, cases: list[dict[str, Any]]) -> Path:
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in cases))
    return path


def case(case_id: str, expected: str, **extra: Any) -> dict[str, Any]:
    return {"id": case_id, "input": {"text": case_id},
            "assert": [{"type": "equals", "path": "category", "value": expected}], **extra}


class FakeFeature:
    """Answers each case from a table; counts calls and the most calls in flight at once."""

    def __init__(self, answers: dict[str, Any], delay: float = 0.0):
        self.answers = answers
        self.delay = delay
        self.calls: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0

    async def __call__(self, feature: str, input: dict[str, Any], *,
                       case_id: str) -> Invocation:
        self.calls[case_id] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
            answer = self.answers[case_id]
            if callable(answer):
                answer = answer(self.calls[case_id])
            if isinstance(answer, BaseException):
                raise answer
            return Invocation(output=answer, latency_ms=10.0 * self.calls[case_id],
                              cost_usd=0.001, meta={"backend": "fake"})
        finally:
            self.in_flight -= 1


def target(path: Path | None, threshold: float = 0.8, name: str = "classify") -> FeatureTarget:
    return FeatureTarget(name=name, threshold=threshold, output_schema=SCHEMA, dataset=path)


async def test_pass_rate_is_the_share_of_passing_cases_against_the_threshold(
        tmp_path: Path) -> None:
    path = dataset(tmp_path, "classify", [case(f"c{i}", "billing") for i in range(5)])
    answers = {f"c{i}": {"category": "billing"} for i in range(4)} | {"c4": {"category": "x"}}
    [result] = await run_suite([target(path, 0.8)], FakeFeature(answers))
    assert result.passed_cases == 4 and result.pass_rate == pytest.approx(0.8)
    assert result.passed
    [strict] = await run_suite([target(path, 0.9)], FakeFeature(answers))
    assert not strict.passed
    assert "FAIL 4/5 cases passed, pass rate 80.0% (threshold 90%)" in strict.summary_line()


async def test_case_score_is_the_passed_share_of_assertion_weights(tmp_path: Path) -> None:
    weighted = {"id": "w", "input": {},
                "assert": [{"type": "equals", "path": "category", "value": "billing",
                            "weight": 3},
                           {"type": "contains", "path": "category", "value": "zzz"}]}
    path = dataset(tmp_path, "classify", [weighted])
    [result] = await run_suite([target(path)], FakeFeature({"w": {"category": "billing"}}))
    [scored] = result.cases
    assert scored.score == pytest.approx(0.75)
    assert not scored.passed


async def test_case_weights_weigh_the_pass_rate(tmp_path: Path) -> None:
    path = dataset(tmp_path, "classify", [case("heavy", "billing", weight=3),
                                          case("light", "billing")])
    answers = {"heavy": {"category": "billing"}, "light": {"category": "other"}}
    [result] = await run_suite([target(path)], FakeFeature(answers))
    assert result.pass_rate == pytest.approx(0.75)


async def test_a_failed_call_is_a_failed_case_with_the_error_recorded(tmp_path: Path) -> None:
    path = dataset(tmp_path, "classify", [case("ok", "billing"), case("down", "billing"),
                                          case("garbled", "billing"), case("bug", "billing")])
    answers: dict[str, Any] = {
        "ok": {"category": "billing"},
        "down": BackendError("upstream 503", backend="vllm", provider_status=503),
        "garbled": OutputError("no schema-valid output after 3 attempt(s)",
                               [Attempt(backend="vllm", raw="nope")]),
        "bug": KeyError("surprise"),
    }
    [result] = await run_suite([target(path, 0.25)], FakeFeature(answers))
    runs = {c.id: c.runs[0] for c in result.cases}
    assert runs["ok"].passed
    assert (runs["down"].error_kind, runs["down"].error) == ("backend", "upstream 503")
    assert runs["garbled"].error_kind == "output"
    assert runs["bug"].error_kind == "crash" and "KeyError" in (runs["bug"].error or "")
    assert all(not runs[k].passed and runs[k].score == 0 for k in ("down", "garbled", "bug"))
    assert result.passed  # 1 of 4 meets a 25% threshold


async def test_output_that_breaks_the_schema_fails_the_case(tmp_path: Path) -> None:
    path = dataset(tmp_path, "classify", [{"id": "c", "input": {}}])
    [result] = await run_suite([target(path)], FakeFeature({"c": {"category": 7}}))
    [run] = result.cases[0].runs
    assert run.error_kind == "schema"
    assert "$.category: 7 is not of type 'string'" in (run.error or "")


async def test_with_repeat_a_case_passes_only_if_every_run_passes(tmp_path: Path) -> None:
    path = dataset(tmp_path, "classify", [case("steady", "billing"), case("flaky", "billing")])
    answers = {"steady": {"category": "billing"},
               "flaky": lambda n: {"category": "billing" if n != 2 else "other"}}
    fake = FakeFeature(answers)
    [result] = await run_suite([target(path, 0.5)], fake, repeat=3)
    assert fake.calls == {"steady": 3, "flaky": 3}
    steady, flaky = result.cases
    assert steady.passed and not steady.flaky
    assert not flaky.passed and flaky.flaky
    assert len(flaky.runs) == 3 and [r.passed for r in flaky.runs] == [True, False, True]
    assert flaky.latency_ms == pytest.approx(20.0)  # mean of 10, 20, 30
    assert "1 flaky" in result.summary_line()


async def test_no_more_calls_than_the_concurrency_limit_are_in_flight(tmp_path: Path) -> None:
    path = dataset(tmp_path, "classify", [case(f"c{i}", "billing") for i in range(12)])
    fake = FakeFeature({f"c{i}": {"category": "billing"} for i in range(12)}, delay=0.01)
    await run_suite([target(path)], fake, concurrency=3)
    assert fake.max_in_flight == 3
    assert sum(fake.calls.values()) == 12


async def test_a_feature_without_a_usable_dataset_fails_with_the_reason(
        tmp_path: Path) -> None:
    bad = tmp_path / "broken.jsonl"
    bad.write_text("{not json\n")
    good = dataset(tmp_path, "good", [case("c", "billing")])
    results = await run_suite(
        [target(None, name="nodata"), target(bad, name="broken"), target(good, name="good")],
        FakeFeature({"c": {"category": "billing"}}))
    by_name = {r.name: r for r in results}
    assert not by_name["nodata"].passed
    assert "no eval dataset" in (by_name["nodata"].error or "")
    assert not by_name["broken"].passed
    assert "line 1: invalid JSON" in (by_name["broken"].error or "")
    assert by_name["good"].passed


async def test_progress_hears_every_run_and_every_finished_feature(tmp_path: Path) -> None:
    path = dataset(tmp_path, "classify", [case("a", "billing"), case("b", "billing")])

    class Recorder:
        def __init__(self) -> None:
            self.total = 0
            self.advanced = 0
            self.done: list[str] = []

        def start(self, total_runs: int) -> None:
            self.total = total_runs

        def advance(self) -> None:
            self.advanced += 1

        def feature_done(self, result: FeatureResult) -> None:
            self.done.append(result.name)

    progress = Recorder()
    await run_suite([target(path)], FakeFeature({"a": {"category": "billing"},
                                                 "b": {"category": "billing"}}),
                    repeat=2, progress=progress)
    assert (progress.total, progress.advanced, progress.done) == (4, 4, ["classify"])
