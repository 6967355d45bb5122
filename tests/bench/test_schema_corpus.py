"""Real-world schemas as output contracts: each is constrained, degraded with a reason, or
refused with one line, and none takes the process down (classified in a child process)."""

from __future__ import annotations

import pytest

from bench.schema_corpus import Outcome, classify_all, shares


@pytest.fixture(scope="module")
def outcomes() -> list[Outcome]:
    found, stderr = classify_all(k8s_step=2)
    assert "exit status" not in stderr, f"classifying crashed or failed:\n{stderr}"
    return found


def test_every_schema_has_an_outcome_and_refusals_and_degradations_say_why(
        outcomes: list[Outcome]) -> None:
    assert len(outcomes) > 300
    for outcome in outcomes:
        assert outcome.status in ("constrained", "degraded", "refused")
        if outcome.status != "constrained":
            assert outcome.reason and "\n" not in outcome.reason, outcome


def test_valid_object_schemas_are_accepted_and_constrained(outcomes: list[Outcome]) -> None:
    found = shares(outcomes)
    assert found.accepted_valid >= 0.95 * found.valid_objects, found
    assert found.constrained >= 0.90 * found.accepted, found


def test_the_cases_that_crashed_or_failed_are_constrained_now(outcomes: list[Outcome]) -> None:
    hard = {o.name.removeprefix("hard/"): o for o in outcomes if o.name.startswith("hard/")}
    for name in ("pattern-digit-class", "pattern-word-space-dot", "pattern-unanchored",
                 "description-only-property", "empty-items", "formats", "type-list-object",
                 "long-max-length"):
        assert hard[name].status == "constrained" and not hard[name].reason, hard[name]
    assert hard["draft-07-dependencies"].status == "constrained"
    assert "output.dependencies" in hard["draft-07-dependencies"].reason
    assert hard["typo-requierd"].status == "refused"
    assert "did you mean 'required'" in hard["typo-requierd"].reason
    assert hard["lookahead-pattern"].status == "refused"
