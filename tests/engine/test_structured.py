"""Output that violates the schema is repaired or re-asked, and never returned."""

from __future__ import annotations

from typing import Any

import pytest

from featurelm.engine.backends.scripted import ScriptedBackend
from featurelm.engine.errors import BackendError, OutputError
from featurelm.engine.structured import generate_structured, parse_output
from featurelm.engine.types import CompletionRequest, Message

SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["label", "score"],
    "properties": {"label": {"type": "string", "enum": ["spam", "ham"]},
                   "score": {"type": "number", "minimum": 0, "maximum": 1}},
}
REQUEST = CompletionRequest(messages=(Message("user", "classify"),), output_schema=SCHEMA)


@pytest.mark.parametrize(("text", "expected", "repaired"), [
    ('{"label": "spam", "score": 0.9}', {"label": "spam", "score": 0.9}, False),
    ('```json\n{"label": "ham", "score": 0.1}\n```', {"label": "ham", "score": 0.1}, False),
    ('Sure! Here it is: {"label": "ham", "score": 0.2} Hope that helps.',
     {"label": "ham", "score": 0.2}, False),
    ("{'label': 'spam', 'score': 0.5,}", {"label": "spam", "score": 0.5}, True),
    ('{"label": "spam", "score": 0.5', {"label": "spam", "score": 0.5}, True),
])
def test_parse_is_tolerant_of_fences_prose_and_malformed_json(
        text: str, expected: dict[str, Any], repaired: bool) -> None:
    parsed = parse_output(text)
    assert parsed is not None
    assert parsed.value == expected
    assert parsed.repaired is repaired


@pytest.mark.parametrize("text", ["", "I cannot help with that."])
def test_parse_finds_nothing_in_objectless_text(text: str) -> None:
    assert parse_output(text) is None


async def test_valid_first_reply_takes_one_attempt() -> None:
    backend = ScriptedBackend(['{"label": "spam", "score": 0.9}'])
    result = await generate_structured(backend.complete, REQUEST, SCHEMA, max_attempts=3)
    assert result.output == {"label": "spam", "score": 0.9}
    assert result.attempts == 1
    assert backend.calls == 1


async def test_invalid_then_valid_reasks_with_the_validation_errors() -> None:
    backend = ScriptedBackend(['{"label": "eggs", "score": 3}', '{"label": "ham", "score": 0.3}'])
    result = await generate_structured(backend.complete, REQUEST, SCHEMA, max_attempts=3)
    assert result.output == {"label": "ham", "score": 0.3}
    assert result.attempts == 2
    reask = backend.requests[1].messages
    assert reask[-2].role == "assistant" and "eggs" in reask[-2].content
    assert reask[-1].role == "user"
    assert "$.label" in reask[-1].content and "$.score" in reask[-1].content


async def test_always_invalid_raises_output_error_with_every_attempt() -> None:
    backend = ScriptedBackend(['{"label": "spam"}'])
    with pytest.raises(OutputError) as caught:
        await generate_structured(backend.complete, REQUEST, SCHEMA, max_attempts=3)
    assert backend.calls == 3
    assert len(caught.value.attempts) == 3
    # What a caller may see: the path and the rule broken, never the model's values.
    assert all(a.errors == ["$: fails 'required'"] for a in caught.value.attempts)
    # The model itself was told exactly what was missing.
    assert "'score' is a required property" in backend.requests[-1].messages[-1].content


async def test_extra_fields_the_schema_forbids_never_pass() -> None:
    backend = ScriptedBackend(['{"label": "spam", "score": 1, "admin": true}'])
    with pytest.raises(OutputError):
        await generate_structured(backend.complete, REQUEST, SCHEMA, max_attempts=2)


async def test_a_json_array_is_not_an_object() -> None:
    backend = ScriptedBackend(['[1, 2]'])
    with pytest.raises(OutputError) as caught:
        await generate_structured(backend.complete, REQUEST, SCHEMA, max_attempts=1)
    assert caught.value.attempts[0].errors == ["the reply must be a JSON object"]


async def test_backend_errors_propagate_unchanged() -> None:
    backend = ScriptedBackend([BackendError("boom", backend="scripted", provider_status=500)])
    with pytest.raises(BackendError, match="boom"):
        await generate_structured(backend.complete, REQUEST, SCHEMA, max_attempts=3)
